"""Which digits a trained model confuses: the error pairs behind its test accuracy.

A model invariant to every rotation (the lifted models project over all orientations, the
G-CNN pools over its rotation group) sees a 6 and a 9 turned by 180 degrees as the same image:
only the writing (a 6's loop is rounder, a 9's stem straighter) tells them apart. This counts how
much of each checkpoint's error that costs, against the other pairs, on upright test digits
(``test``) and on a scenario (default ``iso``: rotations within 30 degrees, where the pair is not
ambiguous). A diagnostic of trained models, not a choice: nothing is selected on these digits::

    EQPDENET_DATA=../shared/data python benchmarks/confusions.py \\
        results/benchmark-full/checkpoints/lifted-background-seed0.pt \\
        results/benchmark-full/checkpoints/gcnn-seed0.pt --out results/confusions

For each checkpoint and scenario: the accuracy, the errors (of the first ``--images`` test
digits), the errors whose true and predicted classes are 6 and 9 (either way), and the five most
frequent (true, predicted) pairs. Besides the registered scenarios (``test``, ``iso``, ``shift``,
...), ``--scenarios`` takes two probes: ``move:DY,DX`` (every digit moved by whole pixels, zero
filled, no resampling) and ``turn180`` (a half turn about the frame's centre, exact on the
grid); a name followed by ``+center`` is that scenario's digits moved by whole pixels so that
their centre of mass sits at the frame's centre (:mod:`eqpdenet.models.centering`) before the
model sees them: whether a model depends on where MNIST placed its digits.

A digit on which the model's PDE blows up in any of the scenarios has no prediction there
(:func:`~eqpdenet.analysis.predictions.predictions`): it is left out of every scenario's counts,
so that the scenarios are compared on the same digits; ``images_without_logits`` (per scenario)
and ``left_out`` (the digits left out) say how many, and the Markdown table notes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from eqpdenet.analysis.predictions import predictions
from eqpdenet.analysis.robustness import axis_shift
from eqpdenet.app.files import atomic_write
from eqpdenet.app.training import load_checkpoint, prepare_data
from eqpdenet.data.scenarios import apply_scenario, get_scenario
from eqpdenet.errors import ConfigError, NonFiniteStateError
from eqpdenet.models.centering import recenter

# benchmarks/ itself: the shared argument checks, also when this file is loaded by path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import check_output, checkpoint_fields, existing_files, positive_int, run  # noqa: E402

#: The pair a rotation-invariant model cannot tell apart by shape alone.
AMBIGUOUS = {(6, 9), (9, 6)}


def confusion(predicted: torch.Tensor, labels: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """``(classes, classes)`` counts, row: true class, column: predicted class."""
    return torch.bincount(labels * classes + predicted, minlength=classes * classes).view(
        classes, classes)


def summarize(matrix: torch.Tensor, top: int = 5) -> dict:
    """Accuracy, errors, the 6-9 errors and the ``top`` most frequent error pairs of ``matrix``."""
    total = int(matrix.sum())
    errors = matrix.clone()
    errors.fill_diagonal_(0)
    pairs = sorted(((int(errors[t, p]), t, p) for t in range(len(matrix))
                    for p in range(len(matrix)) if errors[t, p] > 0), reverse=True)
    ambiguous = sum(int(errors[t, p]) for t, p in AMBIGUOUS)
    # No image left to count (the model blew up on every one): no accuracy, not a division by 0.
    accuracy = 100.0 * float(matrix.diagonal().sum()) / total if total else float("nan")
    return {"images": total, "accuracy": accuracy,
            "errors": int(errors.sum()), "errors_6_9": ambiguous,
            "top_pairs": [[t, p, n] for n, t, p in pairs[:top]]}


def move(images: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``images`` moved by whole pixels (down ``rows``, right ``cols``), zero filled
    (:func:`eqpdenet.analysis.robustness.axis_shift`, whose ``t_y`` points up)."""
    return axis_shift(images, (cols, -rows))


def transform(name: str, images: torch.Tensor, seed: int) -> torch.Tensor:
    """The digits of scenario or probe ``name`` (the module doc)."""
    if name.endswith("+center"):
        return recenter(transform(name.removesuffix("+center"), images, seed))
    if name == "turn180":
        return torch.rot90(images, 2, (-2, -1))
    if name.startswith("move:"):
        rows, cols = parse_move(name)
        return move(images, rows, cols)
    return apply_scenario(name, images, seed=seed)


def parse_move(name: str) -> tuple[int, int]:
    """``move:DY,DX`` -> ``(DY, DX)``; ValueError naming the probe otherwise."""
    try:
        rows, cols = (int(v) for v in name.removeprefix("move:").split(","))
    except ValueError:
        raise ValueError(f"{name!r}: a move is written move:DY,DX in whole pixels, e.g. "
                         "move:1,-1") from None
    return rows, cols


def check_name(name: str) -> None:
    """Fail at once on a scenario or probe this script does not know."""
    base = name.removesuffix("+center")
    if base.startswith("move:"):
        parse_move(base)
    elif base != "turn180":
        get_scenario(base)


def _predict(model, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes ``(N,)`` and the mask ``(N,)`` of the images without a prediction (the
    model's PDE blew up: :func:`~eqpdenet.analysis.predictions.predictions`), every image masked
    where it blew up on all of them."""
    try:
        return predictions(model, images, batch)
    except NonFiniteStateError:
        return torch.zeros(len(images), dtype=torch.int64), torch.ones(len(images), dtype=torch.bool)


def scenario_summaries(model, images: torch.Tensor, labels: torch.Tensor, names: list[str],
                       seed: int) -> dict:
    """Each scenario's :func:`summarize` over the digits predicted in every scenario,
    ``images_without_logits`` per scenario and ``left_out``: the digits left out of all."""
    predicted, failed = {}, {}
    for name in names:
        predicted[name], failed[name] = _predict(model, transform(name, images, seed))
    keep = ~torch.stack(list(failed.values())).any(0)
    out = {name: summarize(confusion(predicted[name][keep], labels[keep])) for name in names}
    out["images_without_logits"] = {name: int(failed[name].sum()) for name in names}
    out["left_out"] = int((~keep).sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--images", type=positive_int, default=10000)
    parser.add_argument("--scenarios", nargs="+", default=["test", "iso"],
                        help="registered scenarios and probes (the module doc)")
    parser.add_argument("--seed", type=int, default=0, help="the scenarios' draws")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--out", type=Path, help="write confusions.json and confusions.md here")
    args = parser.parse_args()
    for name in args.scenarios:  # a typo fails before any checkpoint is loaded
        try:
            check_name(name)
        except (ConfigError, ValueError) as error:
            parser.error(str(error))
    existing_files(parser, args.checkpoints)
    check_output(parser, "--out", args.out, folder=True)
    torch.set_num_threads(args.threads)
    records = []
    for path in args.checkpoints:
        start = time.perf_counter()
        model, config, _ = load_checkpoint(path)
        model.eval()
        test = prepare_data(config.data)["test"]
        images, labels = test.images[:args.images], test.labels[:args.images]
        record = {**checkpoint_fields(path), "model": config.model.kind, "seed": args.seed}
        record.update(scenario_summaries(model, images, labels, args.scenarios, args.seed))
        record["seconds"] = round(time.perf_counter() - start, 1)
        records.append(record)
        print(json.dumps(record), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / "confusions.json", (json.dumps(records, indent=1) + "\n").encode())
        lines = [f"Errors on the first {args.images:,} test digits per scenario (draws seeded by "
                 f"{args.seed}): all, those between 6 and 9 (either way), the most frequent "
                 "(true -> predicted: count). `python benchmarks/confusions.py`.", "",
                 "| checkpoint | scenario | accuracy | errors | 6-9 errors | accuracy without 6-9 "
                 "errors | most frequent |", "|---|---|---:|---:|---:|---:|---|"]
        for r in records:
            for name in args.scenarios:
                s = r[name]
                pairs = ", ".join(f"{t}->{p}: {n}" for t, p, n in s["top_pairs"])
                fixed = (100.0 * (s["images"] - s["errors"] + s["errors_6_9"]) / s["images"]
                         if s["images"] else float("nan"))
                lines.append(f"| {Path(r['checkpoint']).stem} | {name} | {s['accuracy']:.2f} | "
                             f"{s['errors']} | {s['errors_6_9']} | {fixed:.2f} | {pairs} |")
        lost = [f"{Path(r['checkpoint']).stem}: {r['left_out']}" for r in records if r["left_out"]]
        if lost:
            lines += ["", "Digits left out of every scenario (the model's PDE blew up on them in "
                      "at least one): " + ", ".join(lost) + "."]
        atomic_write(args.out / "confusions.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    run(main)
