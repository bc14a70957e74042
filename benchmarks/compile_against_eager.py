"""``torch.compile`` of models that take the fused operators, against eager: training steps
(forward, loss, backward, an SGD step) on random images, compiled and eager side by side from
the same weights, and the largest relative differences of the outputs and of the gradients over
the steps (docs/performance.md, "One graph: `fullgraph=True` is refused")::

    python benchmarks/compile_against_eager.py --backend aot_eager --dtype float64
    python benchmarks/compile_against_eager.py --backend inductor --dynamic --dtype float32

Models: ``layer`` (``PDELayer.paper()`` on 9x7 images, its states' mean as ten logits),
``eqpdenet`` (``EqPdeNet(hidden=8)``), ``lifted`` and ``lifted-nh`` (``LiftedPDENet``, 4
orientations, channels [2, 3], one block per stage; ``-nh`` with ``normalize_hidden``, which
takes the ``m2_update`` operator rather than ``m2_euler_step``), on 28x28 images. Steps at batch
sizes 3, 3, 5, 2 (a recompile for the new sizes, or one dynamic graph with ``--dynamic``). Also
printed: dynamo's graph breaks, counted over the whole run. The compile time is part of the
first step; Inductor takes minutes on two cores.
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
from _args import run
from torch import nn

from eqpdenet import EqPdeNet, PDELayer
from eqpdenet.models.lifted_pde import LiftedPDEConfig, LiftedPDENet

MODELS = ("layer", "eqpdenet", "lifted", "lifted-nh")
BATCHES = (3, 3, 5, 2)


class _Logits(nn.Module):
    """A layer's states as ten logits (their mean, repeated): a model of the layer alone."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, images):
        return self.layer(images).flatten(1).mean(1, keepdim=True).expand(-1, 10)


def build(name: str) -> tuple[nn.Module, tuple[int, int]]:
    torch.manual_seed(0)
    if name == "layer":
        return _Logits(PDELayer.paper()), (9, 7)
    if name == "eqpdenet":
        return EqPdeNet(hidden=8), (28, 28)
    config = LiftedPDEConfig(channels=[2, 3], blocks=[1, 1], orientations=4,
                             normalize_hidden=name == "lifted-nh")
    return LiftedPDENet(config), (28, 28)


def largest_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def compare(name: str, backend: str, dynamic: bool, dtype: torch.dtype) -> tuple[float, float]:
    """(outputs, gradients): the largest relative differences, compiled against eager."""
    eager, size = build(name)
    eager = eager.to(dtype).train()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, backend=backend, dynamic=dynamic or None)
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, twin)]
    generator = torch.Generator().manual_seed(1)
    outputs = gradients = 0.0
    for batch in BATCHES:
        images = torch.rand(batch, 1, *size, generator=generator, dtype=torch.float64).to(dtype)
        results = []
        for model, optimiser in ((eager, optimisers[0]), (compiled, optimisers[1])):
            optimiser.zero_grad()
            logits = model(images)
            logits.square().mean().backward()
            results.append(logits.detach())
        outputs = max(outputs, largest_relative(results[1], results[0]))
        scale = max(float(p.grad.abs().max()) for p in eager.parameters() if p.grad is not None)
        gradients = max(gradients, max(
            float((a.grad - b.grad).abs().max()) / max(scale, 1e-30)
            for a, b in zip(twin.parameters(), eager.parameters(), strict=True)
            if b.grad is not None))
        for optimiser in optimisers:
            optimiser.step()
    return outputs, gradients


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--backend", choices=("eager", "aot_eager", "inductor"),
                        default="aot_eager")
    parser.add_argument("--dynamic", action="store_true", help="compile with dynamic=True")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    shapes = "dynamic=True" if args.dynamic else "default"
    print("| model | backend | shapes | dtype | outputs | gradients | graph breaks |")
    print("|---|---|---|---|---:|---:|---:|")
    for name in args.models:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        with warnings.catch_warnings():  # dynamo's notes on each graph break, counted instead
            warnings.simplefilter("ignore")
            outputs, gradients = compare(name, args.backend, args.dynamic, dtype)
        breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
        print(f"| {name} | {args.backend} | {shapes} | {args.dtype} | {outputs:.1e} | "
              f"{gradients:.1e} | {breaks} |", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
