"""The hidden batch norm of the lifted model's fused Euler step, three ways, side by side.

All feed ``m2_update`` (``u + dt (W2 relu(scale z + shift) + b2)``) and, as in a relative system
(``boundary = "background"``), need what the batch norm maps a blank point to (``F(0)``):

* ``var_mean``: ``scale`` and ``shift`` from ``torch.var_mean`` of the batch (what the step used
  first; the blank point is ``shift``);
* ``module``: PyTorch's ``BatchNorm1d`` (native kernels) with unit scale and zero shift, and the
  blank point from ``torch.var_mean`` once more (what the step used next);
* ``affine``: :func:`eqpdenet.pde.batch_norm.batch_norm_affine` (two-pass statistics with a
  one-pass backward; the blank point is ``shift``): the current step.

Forward and backward at the default lifted model's stage shapes (batch 64, 8 orientations),
interleaved, one thread, CPU time, best of ``--repeats`` after one untimed round; prints each
time, the ratios to ``module`` and the largest relative difference of the outputs and gradients::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_m2_batchnorm.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _args import positive_int, run
from m2_kernel_versions import SHAPES, stage_fields
from torch import nn

from eqpdenet.kernels import cpu  # noqa: F401 - registers the CPU operators
from eqpdenet.kernels.m2_op import m2_update
from eqpdenet.pde.batch_norm import batch_norm_affine

VARIANTS = ("var_mean", "module", "affine")


def with_var_mean(norm: nn.BatchNorm1d, z: torch.Tensor):
    """Training-mode batch statistics of ``z`` (B, O, L) as ``torch.var_mean``."""
    var, mean = torch.var_mean(z, dim=(0, 2), correction=0)
    scale = torch.rsqrt(var + norm.eps) * norm.weight
    return scale, norm.bias - mean * scale


def step(variant: str, norm, u, z, w2):
    """``u + (W2 relu(BN(z)) - W2 relu(BN(0)))``: a relative Euler step with ``dt = 1``."""
    flat = z.view(z.shape[0], z.shape[1], -1)
    if variant == "module":
        y = norm(flat).view_as(z)
        one = torch.ones(z.shape[1])
        blank = with_var_mean(norm, flat)[1]
        return m2_update(u, y, one, torch.zeros_like(one), w2, -(w2 @ F.relu(blank)), 1.0)
    scale, shift = (with_var_mean if variant == "var_mean" else batch_norm_affine)(norm, flat)
    return m2_update(u, z, scale, shift, w2, -(w2 @ F.relu(shift)), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    times: dict = {}
    outputs: dict = {}
    # round -1 is untimed: first-call costs (allocations, lazy initialisation) made ratios of up
    # to 100 with one repeat; its own generator leaves the measured rounds' fields as they were
    for repeat in range(-1, args.repeats):
        fields = torch.Generator().manual_seed(1) if repeat < 0 else generator
        for channels, size in SHAPES:
            u, z0, grad = stage_fields(channels, size, fields, 3)
            norm = nn.BatchNorm1d(channels)
            w2 = torch.randn(channels, channels, generator=fields, requires_grad=True)
            for variant in VARIANTS:
                z = z0.clone().requires_grad_()
                start = time.process_time()
                out = step(variant, norm, u, z, w2)
                grads = torch.autograd.grad(out, [z, w2, norm.weight, norm.bias], grad)
                end = time.process_time()
                if repeat < 0:
                    continue
                times.setdefault((channels, size, variant), []).append(end - start)
                outputs[(channels, size, variant)] = [out.detach(), *grads]
    print(f"forward + backward of a relative step, ms of CPU time, best of {args.repeats}")
    for channels, size in SHAPES:
        best = {v: min(times[(channels, size, v)]) for v in VARIANTS}
        difference = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(
            outputs[(channels, size, "module")], outputs[(channels, size, "affine")],
            strict=True))
        print(f"C={channels:2d} {size:2d}x{size:<2d} "
              + "  ".join(f"{v} {1e3 * best[v]:6.1f}" for v in VARIANTS)
              + f"  ratios to module: var_mean {best['var_mean'] / best['module']:.2f}, affine "
              f"{best['affine'] / best['module']:.2f}  largest relative difference (affine, "
              f"module) {difference:.1e}")


if __name__ == "__main__":
    run(main)
