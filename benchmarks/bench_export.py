"""Inference speed of an exported model against eager PyTorch: images/s at batch 1, 64 and 1024.

Run by hand (not in CI)::

    python benchmarks/bench_export.py                      # the paper's EqPdeNet (h = 256)
    python benchmarks/bench_export.py --checkpoint results/benchmark/checkpoints/gcnn-seed0.pt
    python benchmarks/bench_export.py --batches 1024 --profile    # + onnxruntime's time per op

Variants, all in this process and interleaved over ``--rounds`` rounds (the median images/s of
each; ratios between medians, so load from other processes affects every variant alike):

* ``eager, C++ kernel``: the model as trained (``backend="auto"``: the fused C++ kernel where
  the layer declares it; for a family without a PDE layer, plain eager PyTorch);
* ``eager, reference``: the same model with the plain PyTorch reference path on every part
  that has a fused one (the PDE layer; a lifted model's lift and M2 right-hand sides), checked
  to run no fused operator (``eqpdenet::*``) before timing;
* ``exported program``: ``torch.export.load`` of the ``exported-program`` file;
* ``onnxruntime``: the ``onnx`` file in an onnxruntime session (CPU, ``--threads`` intra-op
  threads, like torch).

Both files are written by :func:`eqpdenet.export.export_model` (so verified, on the benchmark's
batch of 64 images) into a temporary folder, removed at the end (also on an error). Prints a
header (versions, load, the export reports, the fused operators each eager row runs), then one
table row per batch and variant: images/s and the ratio to ``eager, C++ kernel``; with
``--profile``, onnxruntime's share of time per operator type. Inputs are uniform random
images: speed does not depend on the pixels. ``OMP_WAIT_POLICY`` defaults to ``PASSIVE``
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _args import existing_files, nonnegative_float, positive_int, run  # noqa: E402

from eqpdenet.app.training import load_checkpoint  # noqa: E402
from eqpdenet.export import export_model, load_exported  # noqa: E402
from eqpdenet.kernels import BACKENDS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "results/paper/checkpoints/eqpdenet-h256-seed0.pt"


def images(batch: int) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))


def onnx_runner(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})[0]


def profile_onnx(path: Path, threads: int, batch: int) -> None:
    """Print the share of onnxruntime's time per operator type over two runs at ``batch``."""
    import json
    from collections import Counter

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "profile")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(2):
        session.run(None, {"images": images(batch).numpy()})
    events = json.loads(Path(session.end_profiling()).read_text())
    time_of, calls = Counter(), Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            time_of[event["args"]["op_name"]] += event["dur"]
            calls[event["args"]["op_name"]] += 1
    total = sum(time_of.values())
    print(f"\n## onnxruntime's time per operator type (batch {batch}, 2 runs)\n")
    print("| operator | share of the time | nodes run |")
    print("|---|---:|---:|")
    for op, spent in time_of.most_common(8):
        print(f"| {op} | {100 * spent / total:.0f} % | {calls[op] // 2} |")


def measure(variants: dict, batch: int, rounds: int, min_seconds: float) -> dict:
    """Median images/s per variant; each round runs every variant once (interleaved)."""
    x = images(batch)
    inputs = {name: (x.numpy() if name == "onnxruntime" else x) for name in variants}
    results = {name: [] for name in variants}
    for name, fn in variants.items():
        fn(inputs[name])  # warm-up
    for _ in range(rounds):
        for name, fn in variants.items():
            count, start = 0, time.perf_counter()
            while True:
                fn(inputs[name])
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            results[name].append(batch * count / elapsed)
    return {name: statistics.median(v) for name, v in results.items()}


def reference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` on the plain-PyTorch reference path: every part with a kernel
    ``backend`` (a PDE layer; a lifted model's ``M2Lift`` and ``M2SystemRHS`` blocks, which the
    model itself does not expose) switched to ``"reference"``. The parts read ``backend`` at
    each call, so switching a built model is enough."""
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(getattr(module, "backend", None), str) and module.backend in BACKENDS:
            module.backend = "reference"
    return reference


def fused_operators(module: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """The package's fused operators (``eqpdenet::*``) that one forward of ``module`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "eqpdenet":
                seen.add(f"eqpdenet::{func._opname}")
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        module(x)
    return sorted(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--min-seconds", type=nonnegative_float, default=0.3)
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--profile", action="store_true",
                        help="also onnxruntime's time per operator type at the largest batch")
    args = parser.parse_args()
    existing_files(parser, [args.checkpoint])
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    import onnxruntime

    print(f"# eqpdenet export benchmark ({time.strftime('%Y-%m-%d %H:%M')}): {args.checkpoint}")
    print(f"# torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')},"
          f" {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    print(f"# load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    model, _, _ = load_checkpoint(args.checkpoint)
    model.eval()
    reference = reference_copy(model)
    for name, module in (("eager, C++ kernel", model), ("eager, reference", reference)):
        fused = fused_operators(module, images(2))
        print(f"# {name}: fused operators run: {', '.join(fused) or 'none'}")
        if module is reference and fused:  # the row would time the kernel under the wrong name
            raise RuntimeError(f"the reference copy still runs {', '.join(fused)}")
    # removed also when an export or a measurement fails; --profile reads the ONNX file first
    with tempfile.TemporaryDirectory(prefix="bench-export-") as name:
        measure_exports(args, model, reference, Path(name), began)


def measure_exports(args, model, reference, folder: Path, began: float) -> None:
    """Export ``model`` into ``folder``, time the four variants, print the table (and the
    profile)."""
    seconds = {}
    for format, name in (("exported-program", "model.pt2"), ("onnx", "model.onnx")):
        start = time.perf_counter()
        report = export_model(model, folder / name, format, images=images(64))
        seconds[format] = time.perf_counter() - start
        print(f"# {report.summary()}")
    print("# export + verification: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))

    def eager(module):
        def run(x):
            with torch.no_grad():
                return module(x)
        return run

    variants = {
        "eager, C++ kernel": eager(model),
        "eager, reference": eager(reference),
        "exported program": load_exported(folder / "model.pt2"),
        "onnxruntime": onnx_runner(folder / "model.onnx", args.threads),
    }
    rows = [(batch, measure(variants, batch, args.rounds, args.min_seconds))
            for batch in args.batches]
    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{time.perf_counter() - began:.0f} s in all")
    print("\n| batch | variant | images/s | vs eager, C++ kernel |")
    print("|---:|---|---:|---:|")
    for batch, result in rows:
        base = result["eager, C++ kernel"]
        for name, value in result.items():
            print(f"| {batch} | {name} | {value:,.0f} | {value / base:.2f} |")
    if args.profile:
        profile_onnx(folder / "model.onnx", args.threads, max(args.batches))

if __name__ == "__main__":
    run(main)
