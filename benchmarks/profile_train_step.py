"""Where a training step's time goes: ``torch.profiler`` over one step (forward, cross-entropy,
backward, Adam) of a benchmark entry, one thread, random 28x28 images, after two warm-up steps;
prints the images per CPU second of three timed steps and the operators by their own CPU time::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/profile_train_step.py lifted-centered \\
        --recipe configs/benchmark-full.toml

A profile is one sample on a machine that may be shared: compare variants with
``benchmarks/train_throughput.py`` (interleaved), not by two profiles.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from eqpdenet.app.config import BenchmarkConfig, build_model, load_toml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a benchmark entry of --recipe")
    parser.add_argument("--recipe", type=Path, default=Path("configs/benchmark-full.toml"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rows", type=int, default=20, help="operators to list")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = load_toml(BenchmarkConfig, args.recipe).experiment(args.model, 0)
    model = build_model(config.model)
    optimizer = torch.optim.Adam(model.parameters())
    images = torch.rand(args.batch, 1, 28, 28)
    labels = torch.randint(0, 10, (args.batch,))

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.process_time()
    for _ in range(3):
        step()
    print(f"{args.model}: {3 * args.batch / (time.process_time() - start):.0f} images per CPU "
          f"second, one thread")
    with torch.profiler.profile() as profile:
        step()
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
