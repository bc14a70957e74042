"""Export every committed checkpoint to both formats, verified on 1,000 test digits: the table of
docs/deployment.md.

Run by hand (not in CI; ~10 min on 2 loaded cores)::

    EQPDENET_DATA=../shared/data python benchmarks/export_checkpoints.py

Each export is what ``eqpdenet export CHECKPOINT --format F --out FILE`` does (the checkpoint's
own test split, its first ``--images`` digits); files go to a temporary folder, removed at the
end (also on an error). Prints one table row per checkpoint and format: the family, the
relative difference from eager PyTorch, the quarter-turn invariance, the bound, the seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _args import existing_files, positive_int, run  # noqa: E402

from eqpdenet.app.training import load_checkpoint, prepare_data  # noqa: E402
from eqpdenet.errors import ExportError  # noqa: E402
from eqpdenet.export import FORMATS, export_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ["results/paper/checkpoints/eqpdenet-h256-seed0.pt",
               *sorted(str(p.relative_to(ROOT))
                       for p in (ROOT / "results/benchmark/checkpoints").glob("*.pt"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=positive_int, default=1000)
    parser.add_argument("--formats", nargs="+", default=["onnx", "exported-program"],
                        choices=FORMATS.names())
    parser.add_argument("checkpoints", nargs="*", default=CHECKPOINTS,
                        help="paths relative to the repository's root, or absolute")
    args = parser.parse_args()
    existing_files(parser, [ROOT / c for c in args.checkpoints])
    with tempfile.TemporaryDirectory(prefix="export-checkpoints-") as name:
        export_all(args, Path(name))


def export_all(args, folder: Path) -> None:
    """Export every checkpoint of ``args`` in every format into ``folder``; print the table."""
    began = time.perf_counter()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("\n| checkpoint | family | format | difference | quarter-turn invariance | bound | "
          "seconds |")
    print("|---|---|---|---:|---:|---:|---:|")
    for checkpoint in args.checkpoints:
        model, config, _ = load_checkpoint(ROOT / checkpoint)
        images = prepare_data(config.data).test.images[:args.images]
        for format in args.formats:
            start = time.perf_counter()
            # named with the format's suffix (.onnx, .pt2), as the export command requires
            name = f"{Path(checkpoint).stem}{FORMATS.get(format).suffix}"
            try:
                r = export_model(model, folder / name, format, images=images)
            except ExportError as error:
                print(f"| {Path(checkpoint).name} | {type(model).__name__} | {format} | failed: "
                      f"{error} | | | {time.perf_counter() - start:.0f} |")
                continue
            turn = "-" if r.quarter_turn_error is None else f"{r.quarter_turn_error:.1e}"
            bound = (f"{r.bound:.1e} ({'ceiling' if r.bound < 2 * r.float32_noise else '2ε'})"
                     if r.float32_noise is not None and r.bound > r.tolerance
                     else f"{r.tolerance:g}")
            print(f"| {Path(checkpoint).name} | {r.family} | {format} | "
                  f"{r.relative_difference:.1e} | {turn} | {bound} | "
                  f"{time.perf_counter() - start:.0f} |", flush=True)
    print(f"\n# {time.perf_counter() - began:.0f} s in all; load average "
          f"{os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    run(main)
