"""Throughput and memory of the paper's PDE layer: reference vs fused kernel vs the FCNN baseline.

Run by hand (not in CI)::

    python benchmarks/bench_pde_layer.py                  # full table (a few minutes on 2 cores)
    python benchmarks/bench_pde_layer.py --quick          # fewer repeats, no batch-1000 reference
    python benchmarks/bench_pde_layer.py --compile        # also torch.compile of the reference

Every variant is measured in the same process, interleaved over ``--rounds`` rounds; the median
images/s of each is reported and ratios are taken between medians, so load from other processes
affects all variants alike. Peak memory of forward+backward is measured in fresh subprocesses
(peak RSS over the RSS before the step: the high-water mark is reset through
``/proc/self/clear_refs``, Linux only). The last block projects the wall time of the paper
protocol (Tables 1-2) from the measured throughputs.

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here: on a shared 2-core machine, spinning OpenMP
threads of a descheduled peer made the many small ops of the reference vary 30x between runs.
Set ``OMP_WAIT_POLICY=ACTIVE`` to override.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _args import nonnegative_float, positive_int, run  # noqa: E402

from eqpdenet import FCNN, EqPdeNet, PDELayer, count_parameters  # noqa: E402
from eqpdenet.kernels import (
    BACKENDS,  # noqa: E402
    cpu,  # noqa: E402
)

HIDDEN_SIZES = (16, 32, 64, 128, 256)
SEEDS, EPOCHS, TRAIN_IMAGES, EVAL_SCENARIOS, EVAL_IMAGES = 10, 30, 12_000, 3, 50_000


def paper_layer(backend: str, recompute: bool = False) -> PDELayer:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = PDELayer.paper(init="normal", init_scale=0.01, backend=backend,
                               recompute=recompute)
    return layer


def images(batch: int) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))


def step_fn(module, batch: int, train: bool):
    x = images(batch)
    if not train:
        def run():
            with torch.no_grad():
                module(x)
        return run
    params = [p for p in module.parameters() if p.requires_grad]

    def run():
        out = module(x.requires_grad_(False))
        loss = out.float().square().mean()
        torch.autograd.grad(loss, params)
    return run


def measure(variants: dict, rounds: int, min_seconds: float) -> dict:
    """Median images/s per variant; each round runs every variant once (interleaved)."""
    results = {name: [] for name in variants}
    for fn, _batch in variants.values():
        fn()  # warm-up (and build/compile)
    for _ in range(rounds):
        for name, (fn, batch) in variants.items():
            count, start = 0, time.perf_counter()
            while True:
                fn()
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            results[name].append(batch * count / elapsed)
    return {name: statistics.median(v) for name, v in results.items()}


def memory_probe(variant: str, batch: int) -> None:
    """(subprocess) Peak RSS increase of one forward+backward of the layer, in MiB."""
    torch.set_num_threads(2)
    backend, _, mode = variant.partition(":")
    layer = paper_layer(backend, recompute=mode == "recompute")
    step_fn(layer, 8, True)()  # warm-up: libraries, extension, allocator
    run = step_fn(layer, batch, True)

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])  # kB
        raise RuntimeError(key)

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = status("VmRSS:")
    run()
    peak = status("VmHWM:")
    print(json.dumps({"peak_mib": max(peak - before, 0) / 1024}))


def peak_memory(variant: str, batch: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-probe", variant, str(batch)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--min-seconds", type=nonnegative_float, default=0.3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (reference)")
    parser.add_argument("--memory-probe", nargs=2, metavar=("VARIANT", "BATCH"),
                        help="(internal) peak memory of one variant, BACKEND[:recompute]")
    args = parser.parse_args()
    if args.memory_probe:
        variant, batch = args.memory_probe
        backend, _, mode = variant.partition(":")
        if backend not in BACKENDS.names() or mode not in ("", "recompute"):
            parser.error(f"--memory-probe {variant}: a variant is BACKEND or BACKEND:recompute, "
                         f"BACKEND one of {', '.join(BACKENDS.names())}")
        try:
            batch = positive_int(batch)
        except argparse.ArgumentTypeError as error:
            parser.error(f"--memory-probe BATCH: {error}")
        memory_probe(variant, batch)
        return
    torch.set_num_threads(args.threads)
    print(f"# eqpdenet PDE layer benchmark  ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    start = time.perf_counter()
    cpu.load_extension()
    print(f"# fused extension build/load: {time.perf_counter() - start:.1f} s "
          f"(first build ~30-60 s, then cached)")
    fcnn = FCNN(hidden=256)
    eq = {b: EqPdeNet(hidden=256, layer=paper_layer(b)) for b in ("reference", "fused")}
    print(f"# #params: FCNN(256) {count_parameters(fcnn)}, EqPdeNet(256) "
          f"{count_parameters(eq['fused'])}, paper PDE layer {count_parameters(eq['fused'].pde_layer)}")

    rows = []
    for batch in (128, 1000):
        for train in (False, True):
            variants = {
                "reference": (step_fn(paper_layer("reference"), batch, train), batch),
                "fused": (step_fn(paper_layer("fused"), batch, train), batch),
                "fused+ckpt": (step_fn(paper_layer("fused", True), batch, train), batch),
                "FCNN(256)": (step_fn(fcnn, batch, train), batch),
                "EqPdeNet(256) fused": (step_fn(eq["fused"], batch, train), batch),
            }
            if not train:
                del variants["fused+ckpt"]
            rounds = args.rounds
            if args.quick:
                rounds = 2
                if batch == 1000:
                    del variants["reference"]
            if args.compile:
                layer = paper_layer("reference")
                compiled = torch.compile(layer.evolve_reference)
                module = torch.nn.Module()
                module.forward = lambda x, c=compiled, r=layer.reduction: r(c(x))
                module.parameters = layer.parameters
                t0 = time.perf_counter()
                step_fn(module, batch, train)()
                print(f"# torch.compile warm-up (batch {batch}, {'fwd+bwd' if train else 'fwd'}):"
                      f" {time.perf_counter() - t0:.1f} s")
                variants["reference compiled"] = (step_fn(module, batch, train), batch)
            result = measure(variants, rounds, args.min_seconds)
            rows.append((batch, train, result))

    print("\n## images per second (median of interleaved rounds) and ratios\n")
    print("| batch | pass | variant | images/s | vs reference | vs FCNN(256) |")
    print("|---:|---|---|---:|---:|---:|")
    for batch, train, result in rows:
        for name, ips in result.items():
            ref = result.get("reference")
            against = f"{ips / ref:.1f}x" if ref else "n/a"  # --quick skips the reference
            print(f"| {batch} | {'fwd+bwd' if train else 'fwd'} | {name} | {ips:,.0f} | "
                  f"{against} | {ips / result['FCNN(256)']:.2f}x |")

    print("\n## peak memory of one forward+backward of the PDE layer (RSS increase, MiB)\n")
    print("| batch | reference | reference+ckpt | fused (stored states) | fused+ckpt |")
    print("|---:|---:|---:|---:|---:|")
    for batch in (128,) if args.quick else (128, 1000):
        cells = [peak_memory(v, batch) for v in
                 ("reference", "reference:recompute", "fused", "fused:recompute")]
        print(f"| {batch} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")

    # Projection of Tables 1-2: training at batch 128, evaluation at batch 1000 (h = 256 used as
    # an upper bound for every hidden size).
    speeds = {(b, t): r for b, t, r in rows}
    eq_train, eq_eval = speeds[(128, True)]["EqPdeNet(256) fused"], speeds[(1000, False)][
        "EqPdeNet(256) fused"]
    fc_train, fc_eval = speeds[(128, True)]["FCNN(256)"], speeds[(1000, False)]["FCNN(256)"]
    per_run = lambda tr, ev: EPOCHS * TRAIN_IMAGES / tr + EVAL_SCENARIOS * EVAL_IMAGES / ev  # noqa: E731
    runs = SEEDS * len(HIDDEN_SIZES)
    total = runs * (per_run(eq_train, eq_eval) + per_run(fc_train, fc_eval))
    print("\n## projected wall time of the Tables 1-2 protocol\n")
    print(f"T = seeds x sizes x sum over models of (E x 12000 / train img/s + 3 x 50000 / eval "
          f"img/s)\n  = {SEEDS} x {len(HIDDEN_SIZES)} x [(E={EPOCHS} x {TRAIN_IMAGES} / "
          f"{eq_train:,.0f} + {EVAL_SCENARIOS} x {EVAL_IMAGES} / {eq_eval:,.0f})  (EqPdeNet, fused)"
          f"\n       + ({EPOCHS} x {TRAIN_IMAGES} / {fc_train:,.0f} + {EVAL_SCENARIOS} x "
          f"{EVAL_IMAGES} / {fc_eval:,.0f})  (FCNN)]\n  = {total / 60:.1f} min "
          f"(h = 256 throughput used for every size: an upper bound; data loading, optimizer "
          f"and Python overhead of the training loop not included)")
    if "reference" in speeds[(128, True)]:
        ref_train = speeds[(128, True)]["reference"]
        ref_total = runs * (EPOCHS * TRAIN_IMAGES / ref_train) * 1.0
        print(f"  (the PDE-layer training alone with the reference would take "
              f"{ref_total / 3600:.1f} h)")


if __name__ == "__main__":
    run(main)
