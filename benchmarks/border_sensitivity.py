"""Where a trained model's shift losses come from: the frame's border, or the sampling grid.

Two measurements per checkpoint (``eqpdenet benchmark`` checkpoints; fully convolutional models
with global pooling, such as ``lifted_pde`` and ``gcnn``, whose recorded image size is only the
entry check's, so that a framed image can be fed to them):

1. **Accuracy under whole-pixel diagonal shifts** ``(d, d)``, ``d = 0..4`` (zero fill, no
   interpolation), on the first ``--images`` test digits, as trained (``frame 0``) and with the
   shifted images framed by ``--frame`` more pixels of blank background on every side. A model
   that is translation invariant away from the border keeps its accuracy under shifts once the
   frame keeps the digit away from the border; a model whose features depend on where the digit
   sits in the frame does not.
2. **Translation invariance away from the border**: the relative logit change
   ``||l(T_d f) - l(f)|| / ||l(f)||`` for four random strokes in the middle of a 60-pixel canvas
   shifted by ``d = 1, 2, 4, 8`` pixels along the diagonal (circularly, the content never near
   the border): what the sampling grid of the downsamplings alone costs.

A checkpoint whose model does not take these larger images (a perceptron reads every pixel of
the trained size: ``fcnn``, ``eqpdenet`` with its perceptron head) is refused with one line
before any data are loaded: each model is first run on one blank image of every size the script
feeds it. An image (or stroke) on which the model's PDE blows up in any of its passes has no
logits (:func:`~eqpdenet.analysis.predictions.logits_by_image`): it is left out of all of that
measurement's passes, so that every accuracy (every change) compares the same images, and
``images_without_logits`` (``canvas_without_logits``) says how many.

A diagnostic of trained models, not a choice: nothing is selected on these test digits::

    EQPDENET_DATA=../shared/data python benchmarks/border_sensitivity.py \\
        results/benchmark-full/checkpoints/lifted-seed0.pt \\
        results/benchmark-full/checkpoints/gcnn-seed0.pt --out results/border
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _args import check_output, checkpoint_fields, existing_files, nonnegative_int, positive_int, run

from eqpdenet.analysis.predictions import logits_by_image
from eqpdenet.analysis.robustness import axis_shift
from eqpdenet.app.files import atomic_write
from eqpdenet.app.training import load_checkpoint, prepare_data
from eqpdenet.errors import InputError, NonFiniteStateError

SHIFTS = [0, 1, 2, 3, 4]
CANVAS_SHIFTS = [1, 2, 4, 8]
#: The side of the canvas of :func:`canvas_changes`.
CANVAS = 60


def diagonal_shift(images: torch.Tensor, d: int) -> torch.Tensor:
    """``images`` moved by ``d`` whole pixels right and down, the vacated pixels zero
    (:func:`eqpdenet.analysis.robustness.axis_shift`, whose ``t_y`` points up)."""
    return axis_shift(images, (d, -d))


def _predict(model, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, K)`` and the mask ``(N,)`` of the images without logits
    (:func:`~eqpdenet.analysis.predictions.logits_by_image`); every image masked where the model
    blew up on all of them."""
    model.image_size = images.shape[-1]  # the entry check's size; the network takes any size
    try:
        return logits_by_image(model, images, batch)
    except NonFiniteStateError:
        return torch.zeros(len(images), 0), torch.ones(len(images), dtype=torch.bool)


def larger_frames_refused(model, sizes: list[int]) -> str | None:
    """Why ``model`` cannot be measured here, or ``None``: it must give logits for images of
    every side of ``sizes``, which only a network without a layer sized for the trained images
    does (global pooling before the classifier). Tried on one blank image of each size: what
    the model is made of decides, whatever its family."""
    trained = model.image_size
    try:
        for size in sizes:
            try:
                _predict(model, torch.zeros(1, model.in_channels, size, size))
            except (RuntimeError, InputError) as error:
                return (f"its {type(model).__name__} takes only {trained}x{trained} images, not "
                        f"the {size}x{size} ones this script feeds it ({error}); this script "
                        f"needs a fully convolutional model with global pooling, such as "
                        f"lifted_pde or gcnn")
    finally:
        model.image_size = trained
    return None


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if not len(labels):  # no image left to score
        return float("nan")
    return 100.0 * float((logits.argmax(1) == labels).double().mean())


def shift_accuracies(model, images, labels, frames: list[int]) -> tuple[list[list[float]], int]:
    """Accuracy (%) per frame of ``frames`` and shift of :data:`SHIFTS`, over the images with
    logits in every one of these passes, and how many images had none in some pass."""
    passes = [[_predict(model, F.pad(diagonal_shift(images, d), (frame,) * 4)) for d in SHIFTS]
              for frame in frames]
    keep = ~torch.stack([failed for row in passes for _, failed in row]).any(0)
    return ([[_accuracy(logits[keep], labels[keep]) for logits, _ in row] for row in passes],
            int((~keep).sum()))


def canvas_changes(model) -> tuple[list[float], int]:
    """The relative logit change per shift of :data:`CANVAS_SHIFTS`, over the strokes with logits
    in every pass, and how many strokes had none in some pass."""
    generator = torch.Generator().manual_seed(0)
    strokes = torch.zeros(4, 1, 28, 28)
    strokes[:, :, 10:18, 12:15] = torch.rand(4, 1, 8, 3, generator=generator)
    canvas = F.pad(strokes, ((CANVAS - 28) // 2,) * 4)  # the strokes 26 pixels from every side
    base, base_failed = _predict(model, canvas)
    rolled = [_predict(model, torch.roll(canvas, (d, d), (-2, -1))) for d in CANVAS_SHIFTS]
    keep = ~torch.stack([base_failed, *(failed for _, failed in rolled)]).any(0)
    if not keep.any():
        return [float("nan")] * len(CANVAS_SHIFTS), int((~keep).sum())
    base = base[keep]
    return ([float((logits[keep] - base).norm() / base.norm()) for logits, _ in rolled],
            int((~keep).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--images", type=positive_int, default=2000)
    parser.add_argument("--frame", type=nonnegative_int, default=4)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--out", type=Path, help="write border.json and border.md here")
    args = parser.parse_args()
    existing_files(parser, args.checkpoints)
    check_output(parser, "--out", args.out, folder=True)
    torch.set_num_threads(args.threads)
    # Every model is checked before any data are loaded: a refusal comes at once, not after the
    # measurement of the checkpoints before it.
    loaded = []
    for path in args.checkpoints:
        start = time.perf_counter()
        model, config, _ = load_checkpoint(path)
        model.eval()
        why = larger_frames_refused(model, sorted({model.image_size + 2 * args.frame, CANVAS}))
        if why:
            parser.error(f"{path}: {why}")
        loaded.append((path, model, config, time.perf_counter() - start))
    records = []
    for path, model, config, loading in loaded:
        start = time.perf_counter() - loading
        data = prepare_data(config.data)
        images, labels = data["test"].images[:args.images], data["test"].labels[:args.images]
        (accuracy, framed), left_out = shift_accuracies(model, images, labels, [0, args.frame])
        changes, canvas_left_out = canvas_changes(model)
        record = {**checkpoint_fields(path), "model": config.model.kind, "images": len(images),
                  "shifts": SHIFTS, "frame": args.frame, "accuracy": accuracy,
                  "accuracy_framed": framed, "images_without_logits": left_out,
                  "canvas_shifts": CANVAS_SHIFTS, "canvas_logit_change": changes,
                  "canvas_without_logits": canvas_left_out,
                  "seconds": round(time.perf_counter() - start, 1)}
        records.append(record)
        print(json.dumps(record), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / "border.json", (json.dumps(records, indent=1) + "\n").encode())
        lines = [f"Accuracy (%) on the first {args.images:,} test digits under diagonal whole-pixel "
                 f"shifts (d, d), as trained and framed by {args.frame} px of blank background; "
                 "relative logit change for strokes in the middle of a 60-px canvas shifted by "
                 "(d, d). `python benchmarks/border_sensitivity.py`.", "",
                 "| checkpoint | frame | " + " | ".join(f"d={d}" for d in SHIFTS)
                 + " | canvas " + " | canvas ".join(f"d={d}" for d in CANVAS_SHIFTS) + " |",
                 "|---|---:|" + "---:|" * (len(SHIFTS) + len(CANVAS_SHIFTS))]
        for r in records:
            name = Path(r["checkpoint"]).stem
            changes = [f"{c:.4f}" for c in r["canvas_logit_change"]]
            for frame, key, tail in ((0, "accuracy", changes),
                                     (r["frame"], "accuracy_framed", [""] * len(changes))):
                cells = [name, str(frame), *(f"{a:.2f}" for a in r[key]), *tail]
                lines.append("| " + " | ".join(cells) + " |")
        lost = [f"{Path(r['checkpoint']).stem}: {r['images_without_logits']} digits, "
                f"{r['canvas_without_logits']} strokes" for r in records
                if r["images_without_logits"] or r["canvas_without_logits"]]
        if lost:
            lines += ["", "Left out of every pass of their measurement (the model's PDE blew up "
                      "on them in at least one): " + "; ".join(lost) + "."]
        atomic_write(args.out / "border.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    run(main)
