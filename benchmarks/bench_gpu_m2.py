"""The lifted model (LiftedPDENet, fields on M2) on a GPU: the Triton kernels of the M2 operators
against the plain-PyTorch reference on the same GPU, and the C++ kernel on the host's CPU.

One process, variants interleaved over ``--rounds`` rounds (median reported), the results
written after each section (``m2.md``, ``m2.json`` in ``--out``), so that a run stopped by its
time limit keeps what it measured::

    python benchmarks/bench_gpu_m2.py --out results/gpu --cpu     # on a CUDA GPU, ~2-3 minutes
    python benchmarks/bench_gpu_m2.py --device cpu --smoke         # checks the script on the CPU

A run on a CUDA GPU writes into ``results/gpu`` unless ``--out`` says otherwise; a ``--smoke``
run or a run on the CPU writes no file unless ``--out`` is given (it prints its report).

Measured:

1. agreement on the device, float32, at the first stage's shape (8 images, 8 channels, N = 8,
   28 x 28, sigma 1): the fused right-hand side against the reference, for the mixing
   (``eqpdenet::m2_mix_invariants``: the default network term, batch-normalised hidden layer)
   and the whole Euler step (``eqpdenet::m2_euler_step``: no normalisation): the states after
   one Euler step and the gradients of the input and of every parameter, max relative
   difference;
2. images/s of forward+backward (the gradients of every parameter) of ``LiftedPDENet`` at batch
   64 and 1024 (``--batches``) on the device, the default configuration (``mixing``) and
   ``normalize_hidden=False`` (``fused step``: every Euler step one operator), with the fused
   operators (``auto``: Triton on CUDA) and with the reference, and the peak memory of one
   forward+backward (``torch.cuda.max_memory_allocated`` over what was allocated before);
3. with ``--cpu``: the same two models at batch 64 on the host's CPU (all its cores) with the
   C++ kernel (built on first use, about a minute): the Triton/C++ comparison;
4. with ``--sweep`` (on a CUDA GPU only): the launch configuration of the Triton kernels
   (:mod:`eqpdenet.kernels.triton_m2`'s ``PROGRAMS_PER_SM``, ``BLOCK``, ``OUT_BLOCK``,
   ``GRAD_BLOCK``, one changed at a time from the defaults), the default model's
   forward+backward images/s at each batch, interleaved with the defaults, and its logits' max
   relative difference from the defaults' (values must not depend on the launch beyond
   rounding)::

       python benchmarks/bench_gpu_m2.py --out /tmp/g --sweep --skip-throughput   # ~3 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _args import available_device, check_output, nonnegative_float, positive_int, run  # noqa: E402
from bench_gpu import (  # noqa: E402
    GPU_RESULTS,
    agreement_failures,
    environment,
    fallbacks_recorded,
    measure,
    output_folder,
    peak_mib,
    synchronize,
)

from eqpdenet.models import LiftedPDEConfig, LiftedPDENet  # noqa: E402
from eqpdenet.pde import EulerStep  # noqa: E402
from eqpdenet.pde.m2_rhs import M2SystemRHS  # noqa: E402

CONFIGURATIONS = {"mixing": {}, "fused step": {"normalize_hidden": False}}


def lifted(backend: str, device, smoke: bool, **options) -> LiftedPDENet:
    torch.manual_seed(0)
    if smoke:
        options.update(channels=[2, 3], blocks=[1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LiftedPDENet(LiftedPDEConfig(backend=backend, **options)).to(device)


def forward_backward(model, x):
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        torch.autograd.grad(model(x).float().square().mean(), params)

    return run


def agreement(device, smoke: bool) -> tuple[dict, list[str]]:
    """Max relative difference, fused vs reference, of one Euler step and every gradient, and
    :func:`bench_gpu.agreement_failures`."""
    results = {}
    fallbacks: list[str] = []
    size, channels = (10, 2) if smoke else (28, 8)
    generator = torch.Generator().manual_seed(1)
    u = torch.randn(8, channels, 8, size, size, generator=generator).to(device)
    probe = torch.randn(u.shape, generator=generator).to(device)
    for name, options in CONFIGURATIONS.items():
        kwargs = dict(hidden=channels, sigma=1.0, normalize_invariants=False,
                      normalize_hidden=options.get("normalize_hidden", True))
        torch.manual_seed(2)
        fused = M2SystemRHS(channels, ("network",), **kwargs).to(device)
        for parameter in fused.parameters():  # W2 and the biases start at zero
            parameter.data.normal_(0.0, 0.3)
        reference = M2SystemRHS(channels, ("network",), backend="reference", **kwargs).to(device)
        reference.load_state_dict(fused.state_dict())
        outputs = []
        for rhs in (fused, reference):
            x = u.clone().requires_grad_(True)
            with fallbacks_recorded(fallbacks) if rhs is fused else contextlib.nullcontext():
                out = EulerStep(rhs, 0.5)(x)
                grads = torch.autograd.grad((out * probe).sum(), [x, *rhs.parameters()])
            outputs.append([out.detach(), *grads])
        names = ["u_next", "grad u"] + [f"grad {n}" for n, _ in fused.named_parameters()]
        for what, a, b in zip(names, *outputs, strict=True):
            results[f"{name}: {what}"] = float((a - b).abs().max()
                                              / b.abs().max().clamp_min(1e-30))
    return results, agreement_failures(results, fallbacks)


def throughput(device, batches, rounds, min_seconds, smoke, backends) -> list[dict]:
    rows = []
    for batch in batches:
        x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        x = x.to(device)
        variants = {}
        for name, options in CONFIGURATIONS.items():
            for backend in backends:
                model = lifted(backend, device, smoke, **options)
                variants[f"{name}, {backend}"] = (forward_backward(model, x), batch)
        for label, (fn, _) in variants.items():
            start = time.perf_counter()
            fn()  # compiles the kernels, fills the caches
            synchronize(device)
            print(f"warm-up {label}, batch {batch}: {time.perf_counter() - start:.1f} s",
                  flush=True)
        speeds = measure(variants, rounds, min_seconds, device)
        for label, (fn, _) in variants.items():
            row = {"device": device.type, "batch": batch, "variant": label,
                   "images_per_s": speeds[label], "peak_mib": peak_mib(fn, device)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


#: One launch setting changed at a time from the defaults (``--sweep``).
LAUNCHES = {"defaults": {}, "programs/SM 2": {"PROGRAMS_PER_SM": 2},
            "programs/SM 8": {"PROGRAMS_PER_SM": 8}, "programs/SM 16": {"PROGRAMS_PER_SM": 16},
            "block 128": {"BLOCK": 128}, "block 512": {"BLOCK": 512},
            "out block 8": {"OUT_BLOCK": 8}, "out block 32": {"OUT_BLOCK": 32},
            "grad block 4": {"GRAD_BLOCK": 4}, "grad block 16": {"GRAD_BLOCK": 16}}


def under_launch(fn, settings: dict):
    """``fn`` run with the Triton module's launch constants set to ``settings`` (read at every
    call, so interleaved variants each see their own)."""
    from eqpdenet.kernels import triton_m2  # needs Triton: imported only for the sweep

    def run():
        saved = {name: getattr(triton_m2, name) for name in settings}
        for name, value in settings.items():
            setattr(triton_m2, name, value)
        try:
            return fn()
        finally:
            for name, value in saved.items():
                setattr(triton_m2, name, value)

    return run


def sweep(device, batches, rounds, min_seconds, smoke) -> list[dict]:
    rows = []
    for batch in batches:
        x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        x = x.to(device)
        model = lifted("auto", device, smoke)
        with torch.no_grad():
            expected = model(x)
        variants, differences = {}, {}
        for label, settings in LAUNCHES.items():
            start = time.perf_counter()
            with torch.no_grad():
                got = under_launch(functools.partial(model, x), settings)()
            differences[label] = float((got - expected).abs().max() / expected.abs().max())
            variants[label] = (under_launch(forward_backward(model, x), settings), batch)
            variants[label][0]()  # compiles this launch's kernels
            synchronize(device)
            print(f"warm-up {label}, batch {batch}: {time.perf_counter() - start:.1f} s", flush=True)
        speeds = measure(variants, rounds, min_seconds, device)
        for label in LAUNCHES:
            row = {"device": device.type, "batch": batch, "variant": f"launch: {label}",
                   "images_per_s": speeds[label], "peak_mib": float("nan"),
                   "logits_vs_defaults": differences[label]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def report(results: dict) -> str:
    env = results["environment"]
    lines = [f"# LiftedPDENet on {env.get('gpu', env['device'])} ({env['date']})", "",
             f"torch {env['torch']}, triton {env.get('triton')}, python {env['python']}, "
             f"wall time {results.get('seconds', float('nan')):.0f} s; "
             "`python benchmarks/bench_gpu_m2.py`", ""]
    if results.get("agreement"):
        lines += ["## fused vs reference on the device, float32 (max relative difference)", ""]
        lines += [f"- {k}: {v:.2e}" for k, v in results["agreement"].items()] + [""]
    if results.get("agreement_failures"):
        lines += ["**FAILED: the fused kernels were not timed**:", ""]
        lines += [f"- {failure}" for failure in results["agreement_failures"]] + [""]
    measured = results.get("throughput", []) + results.get("cpu", [])
    if measured:
        lines += ["## forward+backward images per second (median of interleaved rounds)", "",
                  "| device | batch | configuration, backend | images/s | peak MiB |",
                  "|---|---:|---|---:|---:|"]
    for row in measured:
        peak = row.get("peak_mib")
        peak = "" if peak is None or peak != peak else f"{peak:,.0f}"
        lines.append(f"| {row['device']} | {row['batch']} | {row['variant']} | "
                     f"{row['images_per_s']:,.0f} | {peak} |")
    if results.get("sweep"):
        lines += [""] * bool(measured)
        lines += ["## launch configurations: forward+backward images per second, the default "
                  "model (one setting changed from the defaults; logits against the defaults')", "",
                  "| batch | launch | images/s | ratio to defaults | logits, max relative difference |",
                  "|---:|---|---:|---:|---:|"]
        base = {row["batch"]: row["images_per_s"] for row in results["sweep"]
                if row["variant"] == "launch: defaults"}
        for row in results["sweep"]:
            lines.append(f"| {row['batch']} | {row['variant'][8:]} | {row['images_per_s']:,.0f} | "
                         f"{row['images_per_s'] / base[row['batch']]:.2f} | "
                         f"{row['logits_vs_defaults']:.1e} |")
    return "\n".join(lines) + "\n"


def save(results: dict, out: Path | None, start: float) -> None:
    results["seconds"] = time.perf_counter() - start
    if out is None:  # a smoke or CPU run without --out: the report is printed at the end
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "m2.json").write_text(json.dumps(results, indent=1))
    (out / "m2.md").write_text(report(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", type=available_device,
                        help="cuda (cuda:N) or cpu (with --smoke: checks the script without a GPU)")
    parser.add_argument("--out", default=None,
                        help=f"folder for m2.md, m2.json (default: {GPU_RESULTS} for a full run "
                        "on a CUDA GPU; a --smoke or --device cpu run writes no file unless "
                        "--out is given)")
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[64, 1024])
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--min-seconds", type=nonnegative_float, default=0.5)
    parser.add_argument("--cpu", action="store_true",
                        help="also the C++ kernel on the host's CPU at the smallest batch")
    parser.add_argument("--sweep", action="store_true",
                        help="also the Triton kernels' launch configurations (section 4)")
    parser.add_argument("--skip-throughput", action="store_true",
                        help="leave out section 2 (with --sweep: the sweep alone)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models and sizes: checks that the script runs")
    args = parser.parse_args()
    out = output_folder(args)
    check_output(parser, "--out", out, folder=True)
    device = args.device
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {device}: cuda or cpu")
    if args.sweep and device.type != "cuda":
        # off CUDA the sweep would time the C++ kernel and print its noise as Triton's effects
        parser.error("--sweep: the Triton launch configurations need --device cuda")
    start = time.perf_counter()
    batches = [4, 8] if args.smoke else args.batches
    rounds, min_seconds = (1, 0.05) if args.smoke else (args.rounds, args.min_seconds)
    results = {"environment": environment(device)}
    print(json.dumps(results["environment"]), flush=True)
    results["agreement"], results["agreement_failures"] = agreement(device, args.smoke)
    print(json.dumps({"agreement": results["agreement"]}), flush=True)
    save(results, out, start)
    if results["agreement_failures"]:
        print(report(results))
        return 1
    if not args.skip_throughput:
        results["throughput"] = throughput(device, batches, rounds, min_seconds, args.smoke,
                                           ("auto", "reference"))
        save(results, out, start)
    if args.sweep:
        results["sweep"] = sweep(device, batches, rounds, min_seconds, args.smoke)
        save(results, out, start)
    if args.cpu and device.type == "cuda":
        torch.set_num_threads(os.cpu_count() or 1)
        results["cpu"] = throughput(torch.device("cpu"), batches[:1], rounds, min_seconds,
                                    args.smoke, ("auto",))
        save(results, out, start)
    print(report(results))
    return 0


if __name__ == "__main__":
    run(main)
