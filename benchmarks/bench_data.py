"""Time the data pipeline: MNIST read, ROTMNIST generation and cache, scenarios over 50,000.

Usage: ``OMP_NUM_THREADS=1 EQPDENET_DATA=../shared/data python benchmarks/bench_data.py``
(numbers in docs/data.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _args import run

from eqpdenet.data.mnist import load_mnist, resolve_data_dir
from eqpdenet.data.rotmnist import generate_rotmnist, load_rotmnist
from eqpdenet.data.scenarios import apply_scenario


def timed(label, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - start:.2f} s")
    return result


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    data = resolve_data_dir()
    mnist = timed("load_mnist (read + verify MD5)", lambda: load_mnist(data, download=False))
    rot = timed("generate_rotmnist, 62,000 digits", lambda: generate_rotmnist(mnist, 0))
    with tempfile.TemporaryDirectory() as cache:
        timed("load_rotmnist, cold (read MNIST, generate, write cache)",
              lambda: load_rotmnist(data, cache_dir=cache, source="generated"))
        timed("load_rotmnist, warm (read cache, check hash)",
              lambda: load_rotmnist(data, cache_dir=cache, source="generated"))
    for name in ("test", "iso", "sca"):
        timed(f"apply_scenario({name!r}), 50,000 digits",
              lambda n=name: apply_scenario(n, rot.test_images, 0))


if __name__ == "__main__":
    run(main)
