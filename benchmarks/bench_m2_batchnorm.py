"""The hidden batch norm of the lifted model's fused Euler step: PyTorch's own module against the
same statistics written out as tensor operations (what the step used before), side by side.

Both feed ``m2_update`` (``u + dt (W2 relu(scale z + shift) + b2)``): the module's output with
unit scale and zero shift, or ``z`` with the scale and shift computed from ``torch.var_mean`` of
the batch (differentiable, so autograd carries their dependence on ``z``). Forward and backward
at the default lifted model's stage shapes (batch 64, 8 orientations), interleaved, one thread,
CPU time, best of ``--repeats``; prints the ratio and the largest relative difference::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_m2_batchnorm.py
"""

from __future__ import annotations

import argparse
import time

import torch
from m2_kernel_versions import SHAPES, stage_fields
from torch import nn

from eqpdenet.kernels import cpu  # noqa: F401 - registers the CPU operators
from eqpdenet.kernels.m2_op import m2_update


def written_out(norm: nn.BatchNorm1d, z: torch.Tensor):
    """Training-mode batch statistics of ``z`` (B, O, ...) as tensor operations."""
    var, mean = torch.var_mean(z, dim=[0, *range(2, z.dim())], correction=0)
    scale = torch.rsqrt(var + norm.eps) * norm.weight
    return scale, norm.bias - mean * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    times: dict = {}
    outputs: dict = {}
    for _ in range(args.repeats):
        for channels, size in SHAPES:
            u, z0, grad = stage_fields(channels, size, generator, 3)
            norm = nn.BatchNorm1d(channels)
            w2 = torch.randn(channels, channels, generator=generator, requires_grad=True)
            b2 = torch.zeros(channels, requires_grad=True)
            for variant in ("written out", "module"):
                z = z0.clone().requires_grad_()
                start = time.process_time()
                if variant == "module":
                    y = norm(z.view(64, channels, -1)).view_as(z)
                    one = torch.ones(channels)
                    out = m2_update(u, y, one, torch.zeros_like(one), w2, b2, 1.0)
                else:
                    scale, shift = written_out(norm, z)
                    out = m2_update(u, z, scale, shift, w2, b2, 1.0)
                grads = torch.autograd.grad(out, [z, w2, norm.weight, norm.bias], grad)
                end = time.process_time()
                times.setdefault((channels, size, variant), []).append(end - start)
                outputs[(channels, size, variant)] = [out.detach(), *grads]
    print(f"forward + backward, ms of CPU time, best of {args.repeats}")
    for channels, size in SHAPES:
        old = min(times[(channels, size, "written out")])
        new = min(times[(channels, size, "module")])
        difference = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(
            outputs[(channels, size, "written out")], outputs[(channels, size, "module")],
            strict=True))
        print(f"C={channels:2d} {size:2d}x{size:<2d} written out {1e3 * old:6.1f}  module "
              f"{1e3 * new:6.1f}  ratio {new / old:.2f}  largest relative difference "
              f"{difference:.1e}")


if __name__ == "__main__":
    main()
