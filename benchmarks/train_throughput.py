"""Training throughput of models on this CPU: images per second of a full training step
(forward, cross-entropy, backward, Adam step) at a fixed batch size, with 1 and 2 threads.

Variants are interleaved in one process (model x thread count, ``--repeats`` rounds), so that a
load that comes and goes on a shared machine hits them alike; the median of the rounds is
reported, and the ratio of 2 threads to 1. Random 28x28 images (the speed does not depend on the
pixel values)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_throughput.py gcnn
    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_throughput.py gcnn invariant-pde \
        --set gcnn "model.gcnn.channels=[8, 11, 13, 15, 15]"

A model is a benchmark entry of ``--recipe`` (its ``model.*`` overrides are used; the
training recipe is irrelevant here beyond the batch size, which is ``--batch``). ``LABEL:ENTRY``
measures an entry under another label, so that one entry can be compared with itself under
``--set`` overrides (the fused M2 kernel against the plain PyTorch reference)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_throughput.py gcnn lifted \
        lifted-reference:lifted --set lifted-reference "model.lifted_pde.backend='reference'" \
        --recipe configs/benchmark-full.toml --threads 1 --clock cpu

``--clock cpu`` divides by the process's CPU time instead of the wall clock: on a machine shared
with other jobs the wall clock counts their time too, the CPU time does not (with one thread it
is the single-thread cost; with several it is their sum, not a wall time).

``--device cuda`` measures on the GPU (eager mode, no CUDA graphs, for every model alike; the
clock is read after a synchronisation; ``--threads`` then only sets the host's threads)::

    python benchmarks/train_throughput.py gcnn lifted-centered --recipe configs/benchmark-full.toml \
        --device cuda --threads 1 --batch 64 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from eqpdenet.app.config import BenchmarkConfig, apply_overrides, build_model, load_toml
from eqpdenet.models import count_parameters


def steps_per_second(model, optimizer, images, labels, steps: int, clock=time.perf_counter
                     ) -> float:
    """Training steps per second of ``clock`` over ``steps`` steps (after one warm-up step).

    On a GPU the work is queued asynchronously: the clock is read after a synchronisation, so
    that it counts the device's work, not only the host's launches."""
    synchronize = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    for step in range(steps + 1):
        if step == 1:
            synchronize()
            start = clock()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize()
    return steps / (clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="benchmark entries of --recipe (LABEL:ENTRY "
                        "to measure an entry under another label)")
    parser.add_argument("--recipe", type=Path, default=Path("configs/benchmark-cpu.toml"))
    parser.add_argument("--set", nargs=2, action="append", default=[],
                        metavar=("MODEL", "OVERRIDE"), help="an extra override of one model")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[64],
                        help="batch sizes (each measured in every round)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="divide by wall-clock time or by the process's CPU time")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    if device.type == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu does not count a GPU's time: use --clock wall with --device cuda")
    benchmark = load_toml(BenchmarkConfig, args.recipe)
    generator = torch.Generator().manual_seed(0)
    batches = {}
    for batch in args.batch:
        batches[batch] = (torch.rand(batch, 1, 28, 28, generator=generator).to(device),
                          torch.randint(10, (batch,), generator=generator).to(device))
    built = {}
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    for label in args.models:
        name, _, entry = label.partition(":")
        entry = entry or name
        if entry not in benchmark.models:
            parser.error(f"{entry!r} is not an entry of {args.recipe} "
                         f"(entries: {', '.join(benchmark.models)})")
        extra = [o for m, o in args.set if m == name]
        config = apply_overrides(benchmark.experiment(entry, 0), extra)
        torch.manual_seed(0)
        model = build_model(config.model).train().to(device)
        built[name] = (model, torch.optim.Adam(model.parameters(), 1e-3), extra)
    rates = {(name, t, b): [] for name in built for t in args.threads for b in batches}
    for _ in range(args.repeats):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch, (images, labels) in batches.items():
                for name, (model, optimizer, _) in built.items():
                    rate = steps_per_second(model, optimizer, images, labels, args.steps, clock)
                    rates[(name, threads, batch)].append(rate * batch)
    per = "images/s" if args.clock == "wall" else "images per CPU second"
    where = "" if device.type == "cpu" else f" ({torch.cuda.get_device_name(device)})"
    print(f"device {device}{where}")
    out = []
    for batch in batches:
        print(f"\nbatch {batch}\n")
        print("| model | params | " + " | ".join(f"{per}, {t} thread{'s' * (t > 1)}"
                                                   for t in args.threads)
              + (f" | {args.threads[-1]} : {args.threads[0]} |" if len(args.threads) > 1 else " |"))
        print("|---|---:|" + "---:|" * (len(args.threads) + (len(args.threads) > 1)))
        for name, (model, _, extra) in built.items():
            medians = [statistics.median(rates[(name, t, batch)]) for t in args.threads]
            ratio = f" | {medians[-1] / medians[0]:.2f} |" if len(medians) > 1 else " |"
            print(f"| {name} | {count_parameters(model):,} | "
                  + " | ".join(f"{m:.0f}" for m in medians) + ratio)
            out.append({"model": name, "overrides": extra, "clock": args.clock,
                        "device": str(device), "params": count_parameters(model),
                        "batch": batch, "images_per_second": {
                            str(t): rates[(name, t, batch)] for t in args.threads}})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
