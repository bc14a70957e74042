"""What one Euler block of the lifted model costs with 8 and with 4 orientations, stage by stage,
and what the orientation pooling between them costs (``lifted_pde.stage_orientations``).

For each stage of the default lifted model (8 channels at 28x28, 16 at 14x14, 24 at 7x7; batch
64) one block of the background model (``M2SystemRHS`` with the fused kernels, hidden batch
norm, ``relative``) and ``OrientationMaxPool(2)`` on the stage's output, forward and backward,
interleaved, one thread, CPU time, best of ``--repeats`` after one untimed call of each; prints
milliseconds and the ratios::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/m2_orientation_costs.py
"""

from __future__ import annotations

import argparse
import time

import torch
from _args import positive_int, run

from eqpdenet.models.pooling import OrientationMaxPool
from eqpdenet.pde.integrators import EulerStep
from eqpdenet.pde.m2_rhs import M2SystemRHS

STAGES = ((8, 28), (16, 14), (24, 7))  # (channels, size) of the default model's stages


def forward_backward(module, u: torch.Tensor) -> tuple[float, float]:
    start = time.process_time()
    out = module(u)
    middle = time.process_time()
    out.backward(torch.ones_like(out))
    return middle - start, time.process_time() - middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--repeats", type=positive_int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = {}
    for channels, size in STAGES:
        block = EulerStep(M2SystemRHS(channels, ["network"], channels, boundary="zeros",
                                      relative=True, normalize_invariants=False), 1.0)
        for n in (8, 4):
            cases[f"block C={channels} {size}x{size} N={n}"] = (
                block, torch.randn(args.batch, channels, n, size, size, requires_grad=True))
        cases[f"pool 8->4 C={channels} {size}x{size}"] = (
            OrientationMaxPool(2), torch.randn(args.batch, channels, 8, size, size,
                                               requires_grad=True))
    for module, u in cases.values():  # untimed: first-call costs would dominate a few repeats
        forward_backward(module, u)
    best = {name: (float("inf"), float("inf")) for name in cases}
    for _ in range(args.repeats):  # interleaved: every case once per round
        for name, (module, u) in cases.items():
            u.grad = None
            forward, backward = forward_backward(module, u)
            best[name] = (min(best[name][0], forward), min(best[name][1], backward))
    print("| case | forward ms | backward ms | total ms | against N=8 |")
    print("|---|---:|---:|---:|---:|")
    for channels, size in STAGES:
        eight = sum(best[f"block C={channels} {size}x{size} N=8"])
        for name in (f"block C={channels} {size}x{size} N=8", f"block C={channels} {size}x{size} N=4",
                     f"pool 8->4 C={channels} {size}x{size}"):
            forward, backward = best[name]
            print(f"| {name} | {forward * 1e3:.1f} | {backward * 1e3:.1f} | "
                  f"{(forward + backward) * 1e3:.1f} | {(forward + backward) / eight:.2f} |")


if __name__ == "__main__":
    run(main)
