"""Where a training step's time goes: ``torch.profiler`` over one step (forward, cross-entropy,
backward, Adam) of a benchmark entry, one thread, random 28x28 images, after two warm-up steps;
prints the images per CPU second of three timed steps and the operators by their own CPU time::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/profile_train_step.py lifted-centered \\
        --recipe configs/benchmark-full.toml

``--device cuda`` profiles on the GPU and lists the kernels by their own CUDA time (the wall
time per step is measured after a synchronisation)::

    python benchmarks/profile_train_step.py lifted-centered --device cuda --batch 64 1024

A profile is one sample on a machine that may be shared: compare variants with
``benchmarks/train_throughput.py`` (interleaved), not by two profiles.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _args import available_device, positive_int, run

from eqpdenet.app.config import BenchmarkConfig, build_model, load_toml
from eqpdenet.errors import ConfigError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a benchmark entry of --recipe")
    parser.add_argument("--recipe", type=Path, default=Path("configs/benchmark-full.toml"))
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[64])
    parser.add_argument("--device", default="cpu", type=available_device, help="cpu or cuda (cuda:N)")
    parser.add_argument("--rows", type=positive_int, default=20, help="operators to list")
    args = parser.parse_args()
    device = args.device
    cuda = device.type == "cuda"
    if not args.recipe.is_file():
        parser.error(f"--recipe {args.recipe}: no such file")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        config = load_toml(BenchmarkConfig, args.recipe).experiment(args.model, 0)
        model = build_model(config.model).to(device)
    except ConfigError as error:
        parser.error(str(error))
    optimizer = torch.optim.Adam(model.parameters())
    for batch in args.batch:
        images = torch.rand(batch, 1, 28, 28).to(device)
        labels = torch.randint(0, 10, (batch,)).to(device)

        def step(images=images, labels=labels) -> None:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(2):
            step()
        if cuda:
            torch.cuda.synchronize()
        clock = time.perf_counter if cuda else time.process_time
        start = clock()
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        per = "images/s on " + torch.cuda.get_device_name(device) if cuda else \
            "images per CPU second, one thread"
        print(f"{args.model}, batch {batch}: {3 * batch / (clock() - start):.0f} {per}")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profile:
            step()
            if cuda:
                torch.cuda.synchronize()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        print(profile.key_averages().table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    run(main)
