"""How much each model's logits and gradients move when its input moves by a rounding error.

A GPU's convolutions sum in another order than the CPU's: where the CPU's jet of a flat
background is exactly 0, the GPU's is rounding noise (about 1e-17 in float64). A model that is
continuous at the rounding level gives the same numbers on both; one that is not gives numbers
set by that noise. This measures it on the CPU: float64, one training-mode forward+backward of 4
digit-like images (a random block on a blank background), then the same with ``delta`` times
unit Gaussian noise added; the relative change of the logits (over their largest) and of the
gradients (over the largest of all gradients)::

    python benchmarks/rounding_sensitivity.py          # about 10 s

The SIM(2) model's joint maps are invariant under scalings of the plane, hence discontinuous
at the zero jet unless they treat jets below a floor as flat (:mod:`eqpdenet.pde.joint`,
``invariant_pde.jet_floor``): with ``jet_floor = 0`` a flat region's maps are ratios of rounding
noise, O(1), where the exact 0 gives 0.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _args import run  # noqa: E402

from eqpdenet import LayerConfig  # noqa: E402
from eqpdenet.models import (  # noqa: E402
    CNN,
    EqPdeNet,
    InvariantPDEConfig,
    InvariantPDENet,
    LiftedPDEConfig,
    LiftedPDENet,
)

MODELS = {
    "EqPdeNet (paper layer)": lambda: EqPdeNet(hidden=16),
    "EqPdeNet (se2_sim2 layer, covariant ratios)": lambda: EqPdeNet(
        hidden=16, layer=LayerConfig.preset("se2_sim2")),
    "CNN": lambda: CNN(),
    "InvariantPDENet se2": lambda: InvariantPDENet(InvariantPDEConfig()),
    "InvariantPDENet sim2": lambda: InvariantPDENet(InvariantPDEConfig(group="sim2")),
    "InvariantPDENet sim2, jet_floor 0": lambda: InvariantPDENet(InvariantPDEConfig(
        group="sim2", jet_floor=0.0)),
    "LiftedPDENet": lambda: LiftedPDENet(LiftedPDEConfig()),
    "LiftedPDENet background, centred": lambda: LiftedPDENet(LiftedPDEConfig(
        boundary="background", center=True)),
}


def forward_backward(name: str, images: torch.Tensor):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MODELS[name]().double()
    logits = model(images)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(logits.square().mean(), params)
    return logits.detach(), grads


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    generator = torch.Generator().manual_seed(1)
    images = torch.zeros(4, 1, 28, 28, dtype=torch.float64)
    images[:, :, 6:22, 8:20] = torch.rand(4, 1, 16, 12, generator=generator, dtype=torch.float64)
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float64)
    deltas = (1e-15, 1e-13, 1e-10)
    print("| model | " + " | ".join(f"delta {d:g}: logits, grads" for d in deltas) + " |")
    print("|---|" + "---:|" * len(deltas))
    for name in MODELS:
        logits, grads = forward_backward(name, images)
        scale = max(float(g.abs().max()) for g in grads)
        cells = []
        for delta in deltas:
            moved, moved_grads = forward_backward(name, images + delta * noise)
            dl = float((moved - logits).abs().max() / logits.abs().max())
            dg = max(float((b - a).abs().max()) for a, b in zip(grads, moved_grads, strict=True))
            dg /= scale
            cells.append(f"{dl:.1e}, {dg:.1e}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    run(main)
