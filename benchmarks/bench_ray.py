"""Speed-up of the Ray executor: the same small sweep with 1 and with 2 local Ray workers.

Usage: ``OMP_NUM_THREADS=1 EQPDENET_DATA=../shared/data python benchmarks/bench_ray.py
[--seeds N] [--local]`` (numbers in docs/distributed.md). Each measurement starts a Ray instance
on 127.0.0.1 with 1 or 2 CPUs (one run per CPU at a time, one torch thread per run) and times
``reproduce --executor ray`` on EqPdeNet and FCNN, h=16, seeds 0 ... N-1 (default 4: 8 runs),
2,000 MNIST training digits, 1 epoch, 1,000 test digits (the PDE layer in plain PyTorch), Ray's
start-up apart, in the order 1, 2, 2, 1 workers so that a load that drifts during the measurement
weighs on both alike. ``--local`` also times the local executor (one process, one thread) first.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import ray
import torch
from _args import positive_int, run

from eqpdenet.app.config import ReproduceConfig, apply_overrides
from eqpdenet.app.distributed import Executor
from eqpdenet.app.files import read_jsonl
from eqpdenet.app.sweeps import reproduce

# The PDE layer in plain PyTorch ("reference"): a new worker process does not load (or wait for
# another process building) the C++ kernel, which on this shared machine made timings meaningless.
SWEEP = ["base.data.dataset='mnist'", "base.data.train_subset=2000", "base.data.test_subset=1000",
         "base.train.epochs=1", "hidden_sizes=[16]", "base.model.layer.backend='reference'"]


def sweep(out: str, executor: Executor, seeds: int) -> float:
    """Seconds of the sweep: EqPdeNet and FCNN with seeds 0 ... ``seeds - 1``."""
    config = apply_overrides(ReproduceConfig(), [*SWEEP, f"seeds={list(range(seeds))}"])
    start = time.perf_counter()
    reproduce(config, out, executor=executor, progress=False, echo=lambda line: None)
    seconds = time.perf_counter() - start
    assert len(read_jsonl(os.path.join(out, "results.jsonl"))) == 2 * seeds
    return seconds


def ray_sweep(folder: str, workers: int, seeds: int) -> tuple[float, float]:
    """(seconds of the sweep, seconds to start Ray) with ``workers`` local Ray workers."""
    start = time.perf_counter()
    ray.init(address="local", num_cpus=workers, include_dashboard=False,
             _node_ip_address="127.0.0.1", logging_level="WARNING")
    started = time.perf_counter() - start
    try:
        return sweep(folder, Executor("ray"), seeds), started
    finally:
        ray.shutdown()


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=positive_int, default=4,
                        help="the runs are EqPdeNet and FCNN with seeds 0 ... N-1 (default 4: 8 runs)")
    parser.add_argument("--local", action="store_true",
                        help="also time the local executor (one process, one thread) first")
    args = parser.parse_args()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load average {load()}")
    torch.set_num_threads(1)
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        if args.local:
            local = sweep(os.path.join(folder, "local"), Executor(), args.seeds)
            print(f"local executor, 1 process: {local:.1f} s")
        for number, workers in enumerate((1, 2, 2, 1)):
            seconds, started = ray_sweep(os.path.join(folder, f"ray{number}"), workers, args.seeds)
            times[workers].append(seconds)
            print(f"ray, {workers} worker(s): {seconds:.1f} s (+ {started:.1f} s to start Ray); "
                  f"load average {load()}")
    one, two = sum(times[1]), sum(times[2])
    print(f"speed-up of 2 Ray workers over 1: {one / two:.2f} (total {one:.1f} s / {two:.1f} s)")


if __name__ == "__main__":
    run(main)
