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
from _args import check_output, existing_files, nonnegative_int, positive_int, run

from eqpdenet.analysis.robustness import axis_shift
from eqpdenet.app.files import atomic_write
from eqpdenet.app.training import load_checkpoint, prepare_data

SHIFTS = [0, 1, 2, 3, 4]
CANVAS_SHIFTS = [1, 2, 4, 8]


def diagonal_shift(images: torch.Tensor, d: int) -> torch.Tensor:
    """``images`` moved by ``d`` whole pixels right and down, the vacated pixels zero
    (:func:`eqpdenet.analysis.robustness.axis_shift`, whose ``t_y`` points up)."""
    return axis_shift(images, (d, -d))


def _predict(model, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    model.image_size = images.shape[-1]  # the entry check's size; the network takes any size
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])


def shift_accuracies(model, images, labels, frame: int) -> list[float]:
    out = []
    for d in SHIFTS:
        moved = F.pad(diagonal_shift(images, d), (frame,) * 4)
        out.append(100.0 * float((_predict(model, moved).argmax(1) == labels).double().mean()))
    return out


def canvas_changes(model) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    strokes = torch.zeros(4, 1, 28, 28)
    strokes[:, :, 10:18, 12:15] = torch.rand(4, 1, 8, 3, generator=generator)
    canvas = F.pad(strokes, (16,) * 4)  # 60x60, the strokes 26 pixels from every side
    base = _predict(model, canvas)
    return [float((_predict(model, torch.roll(canvas, (d, d), (-2, -1))) - base).norm()
                  / base.norm()) for d in CANVAS_SHIFTS]


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
    records = []
    for path in args.checkpoints:
        start = time.perf_counter()
        model, config, _ = load_checkpoint(path)
        model.eval()
        data = prepare_data(config.data)
        images, labels = data["test"].images[:args.images], data["test"].labels[:args.images]
        record = {"checkpoint": str(path), "model": config.model.kind, "images": len(images),
                  "shifts": SHIFTS, "frame": args.frame,
                  "accuracy": shift_accuracies(model, images, labels, 0),
                  "accuracy_framed": shift_accuracies(model, images, labels, args.frame),
                  "canvas_shifts": CANVAS_SHIFTS, "canvas_logit_change": canvas_changes(model),
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
        atomic_write(args.out / "border.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    run(main)
