"""Training throughput of models on this CPU: images per second of a full training step
(forward, cross-entropy, backward, Adam step) at a fixed batch size, with 1 and 2 threads.

Variants are interleaved in one process (model x thread count, ``--repeats`` rounds), so that a
load that comes and goes on a shared machine hits them alike; the median of the rounds is
reported, the ratio of 2 threads to 1, and each model's images/s relative to the first model
listed (at each thread count, measured side by side in the same rounds). Random 28x28 images
(the speed does not depend on the pixel values)::

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
from _args import available_device, check_output, positive_int, run

from eqpdenet.app.config import BenchmarkConfig, apply_overrides, build_model, load_toml
from eqpdenet.errors import ConfigError
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
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[64],
                        help="batch sizes (each measured in every round)")
    parser.add_argument("--device", default="cpu", type=available_device, help="cpu or cuda (cuda:N)")
    parser.add_argument("--steps", type=positive_int, default=10,
                        help="timed steps per measurement")
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="divide by wall-clock time or by the process's CPU time")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    device = args.device
    if device.type == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu does not count a GPU's time: use --clock wall with --device cuda")
    check_output(parser, "--json", args.json, create_parents=False)
    labels = [label.partition(":")[0] for label in args.models]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:  # the models are kept by label: a second one would silently replace the first
        parser.error(f"model label {', '.join(repeated)} given twice: name each one "
                     f"(LABEL:ENTRY, e.g. {repeated[0]}-2:{repeated[0]})")
    unknown = sorted({m for m, _ in args.set if m not in labels})
    if unknown:
        parser.error(f"--set {', '.join(unknown)}: not among the models measured "
                     f"({', '.join(labels)})")
    if not args.recipe.is_file():
        parser.error(f"--recipe {args.recipe}: no such file")
    try:
        benchmark = load_toml(BenchmarkConfig, args.recipe)
    except ConfigError as error:
        parser.error(f"--recipe {args.recipe}: {error}")
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
        try:
            config = apply_overrides(benchmark.experiment(entry, 0), extra)
            torch.manual_seed(0)
            model = build_model(config.model).train().to(device)
        except ConfigError as error:
            parser.error(f"{label}: {error}")
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
    first = next(iter(built))
    several = len(args.threads) > 1
    for batch in batches:
        print(f"\nbatch {batch}\n")
        print("| model | params | " + " | ".join(f"{per}, {t} thread{'s' * (t > 1)}"
                                                   for t in args.threads)
              + (f" | {args.threads[-1]} : {args.threads[0]}" if several else "")
              + f" | : {first}" + (f" ({', '.join(map(str, args.threads))} threads)" if several
                                   else "") + " |")
        print("|---|---:|" + "---:|" * (len(args.threads) + several + 1))
        base = [statistics.median(rates[(first, t, batch)]) for t in args.threads]
        for name, (model, _, extra) in built.items():
            medians = [statistics.median(rates[(name, t, batch)]) for t in args.threads]
            ratio = f" | {medians[-1] / medians[0]:.2f}" if several else ""
            relative = " / ".join(f"{m / b:.2f}" for m, b in zip(medians, base, strict=True))
            print(f"| {name} | {count_parameters(model):,} | "
                  + " | ".join(f"{m:.0f}" for m in medians) + ratio + f" | {relative} |")
            out.append({"model": name, "overrides": extra, "clock": args.clock,
                        "device": str(device), "params": count_parameters(model),
                        "batch": batch, "images_per_second": {
                            str(t): rates[(name, t, batch)] for t in args.threads}})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    run(main)
