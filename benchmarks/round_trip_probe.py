"""Where the logit change under a rotation and back comes from, for trained checkpoints.

The benchmark's ``37° and back`` column (:func:`eqpdenet.analysis.robustness.round_trip_change`)
is ``||l(f') - l(f)|| / ||l(f)||`` over a batch, ``f'`` the image rotated by 37 degrees and back
(two bilinear resamplings, no net rotation). For a model with ``center = true``
(:mod:`eqpdenet.models.centering`) the resampling can move the centre of mass across a
half-pixel boundary: the whole-pixel centring then moves ``f'`` by one pixel more or less than
``f``, and a model that is not exactly invariant to one-pixel shifts (its downsamplings sample a
fixed grid) answers with a larger change. This splits the change into:

* ``logit_rms`` and ``change_rms``: the root mean square over images of ``||l(f)||`` and of
  ``||l(f') - l(f)||``, the ratio's two parts (weight decay, for one, shrinks the first);
* ``changed``: the images whose centring shift differs between ``f`` and ``f'``, and their share
  of the squared change (the measure is a norm over the batch: shares of squares add up);
* ``pinned``: the change with ``f'`` moved by ``f``'s centring shift (centring switched off in
  the model, both images moved by the same whole pixels first): what resampling alone costs;
* for every checkpoint, ``moved_1px``: the change when the (centred) image is moved by one
  whole pixel along an axis (right or down, half of the images each), to compare with the size
  of a centring flip's effect; ``half_px_and_back``: the change when the image is moved by half
  a pixel along both axes and back (two bilinear resamplings, together a ``[1/4, 1/2, 1/4]``
  blur along each axis, the strongest a bilinear round trip applies; nothing turned);
  ``blur_SIGMA``: the change under a Gaussian blur of ``SIGMA`` pixels (``--blur``): how much
  each model's logits hang on the finest detail, which every resampling attenuates.

An image on which the model's PDE blows up in any of these passes has no logits there
(:func:`~eqpdenet.analysis.predictions.logits_by_image`): it is left out of every measure, so
that all of them compare the same images, and ``images_without_logits`` says how many (every
measure NaN where no image is left).

A diagnostic of trained models on the first ``--images`` test digits; nothing is chosen on
them::

    EQPDENET_DATA=../shared/data python benchmarks/round_trip_probe.py \\
        results/benchmark-full/checkpoints/{lifted-centered,gcnn-centered}-seed0.pt --images 2000 \\
        --out results/round-trip-probe/probe.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from eqpdenet.analysis.predictions import logits_by_image
from eqpdenet.analysis.robustness import axis_shift
from eqpdenet.app.files import atomic_write
from eqpdenet.app.training import load_checkpoint, prepare_data
from eqpdenet.errors import NonFiniteStateError
from eqpdenet.geometry import rotate, translate
from eqpdenet.models.centering import centering_shift, recenter
from eqpdenet.models.pooling import gaussian_lowpass_weights

# benchmarks/ itself: the shared argument checks, also when this file is loaded by path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import (  # noqa: E402
    check_output,
    checkpoint_fields,
    existing_files,
    finite_float,
    positive_float,
    positive_int,
    run,
)


def _logits(model, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, K)`` in float64 and the mask ``(N,)`` of the images without logits
    (:func:`~eqpdenet.analysis.predictions.logits_by_image`); every image masked where the
    model blew up on all of them."""
    try:
        logits, failed = logits_by_image(model, images, batch)
    except NonFiniteStateError:
        return torch.zeros(len(images), 0, dtype=torch.float64), torch.ones(len(images), dtype=torch.bool)
    return logits.double(), failed


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    if not b.numel():  # no image compared: no change measured, not 0/0 read as a number
        return math.nan
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def moved_by(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each image moved by its own whole-pixel (row, column) ``shift``, zero filled."""
    out = torch.empty_like(images)
    for i, (rows, cols) in enumerate(shift.tolist()):
        out[i] = axis_shift(images[i:i + 1], (cols, -rows))[0]
    return out


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``images`` ``(B, 1, H, W)`` convolved with a Gaussian of ``sigma`` pixels, zero
    boundary (the blank background)."""
    weight = gaussian_lowpass_weights(sigma).to(images.dtype)
    radius = (len(weight) - 1) // 2
    x = torch.nn.functional.conv2d(images, weight.view(1, 1, 1, -1), padding=(0, radius))
    return torch.nn.functional.conv2d(x, weight.view(1, 1, -1, 1), padding=(radius, 0))


def probe(model, images: torch.Tensor, degrees: float, blur: float) -> dict:
    """The module doc's split of the round-trip change of ``model`` on ``images``, over the images
    with logits in every pass (``images_without_logits``: how many had none in some pass)."""
    back = rotate(rotate(images, math.radians(degrees)), math.radians(-degrees))
    passes = {"logits": _logits(model, images), "back": _logits(model, back)}
    config = getattr(model, "config", None)
    centred = bool(getattr(config, "center", False))
    shift, shift_back = centering_shift(images), centering_shift(back)
    # One pixel right (even images) or down (odd ones), after the centring where there is one.
    step = torch.zeros_like(shift)
    step[0::2, 1] = 1
    step[1::2, 0] = 1
    if centred:
        config.center = False
        try:
            passes["plain"] = _logits(model, recenter(images))
            passes["pinned"] = _logits(model, moved_by(back, shift))
            passes["moved_1px"] = _logits(model, moved_by(recenter(images), step))
        finally:
            config.center = True
    else:
        passes["moved_1px"] = _logits(model, moved_by(images, step))
    half = torch.full((len(images), 2), 0.5, dtype=images.dtype)
    passes["half_px_and_back"] = _logits(model, translate(translate(images, half), -half))
    passes["blur"] = _logits(model, blurred(images, blur))
    # Every measure over the same images: one left out of one pass is left out of all.
    keep = ~torch.stack([failed for _, failed in passes.values()]).any(0)
    # A pass that blew up on every image has logits of no class: nothing kept, of any width.
    width = max(logits.shape[1] for logits, _ in passes.values())
    kept = {name: logits[keep] if logits.shape[1] == width
            else torch.zeros(0, width, dtype=torch.float64) for name, (logits, _) in passes.items()}
    logits, logits_back = kept["logits"], kept["back"]
    squares = (logits_back - logits).pow(2).sum(1)
    record = {"round_trip": _relative(logits_back, logits),
              # The measure is relative: the same change of logits half as large counts double.
              "logit_rms": float(logits.pow(2).sum(1).mean().sqrt()),
              "change_rms": float(squares.mean().sqrt())}
    changed = (shift != shift_back).any(1)[keep]
    record["changed_images"] = int(changed.sum())
    record["changed_share_of_square"] = float(squares[changed].sum() / squares.sum())
    record["round_trip_unchanged_only"] = _relative(logits_back[~changed], logits[~changed])
    record["round_trip_changed_only"] = (_relative(logits_back[changed], logits[changed])
                                         if changed.any() else 0.0)
    plain = kept["plain"] if centred else logits
    if centred:
        record["pinned"] = _relative(kept["pinned"], plain)
    record["moved_1px"] = _relative(kept["moved_1px"], plain)
    record["half_px_and_back"] = _relative(kept["half_px_and_back"], logits)
    record[f"blur_{blur:g}"] = _relative(kept["blur"], logits)
    record["images_without_logits"] = int((~keep).sum())
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--images", type=positive_int, default=2000)
    parser.add_argument("--degrees", type=finite_float, default=37.0)
    # a blur of inf pixels is a kernel of infinite radius
    parser.add_argument("--blur", type=positive_float, default=0.5, help="pixels")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--out", type=Path, help="write the records here, one JSON line each")
    args = parser.parse_args()
    existing_files(parser, args.checkpoints)
    check_output(parser, "--out", args.out)
    torch.set_num_threads(args.threads)
    records = []
    for path in args.checkpoints:
        start = time.perf_counter()
        model, config, _ = load_checkpoint(path)
        model.eval()
        images = prepare_data(config.data)["test"].images[:args.images]
        record = {**checkpoint_fields(path), **probe(model, images, args.degrees, args.blur)}
        record["seconds"] = round(time.perf_counter() - start, 1)
        records.append(record)
        print(json.dumps(record), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, "".join(json.dumps(r) + "\n" for r in records).encode())


if __name__ == "__main__":
    run(main)
