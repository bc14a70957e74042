"""``describe --out`` says whether a checkpoint's PDEs were printed from the modules found, not
from its model kind: a family of one's own holding PDEs was told "it has no PDEs" right under
its printed PDEs."""

from __future__ import annotations

from torch import nn

from eqpdenet.analysis.describe import describe_model, describes_pdes
from eqpdenet.models import LiftedPDEConfig, LiftedPDENet
from eqpdenet.pde import PDELayer


class OwnFamily(nn.Module):  # a user's model kind: a lifted network inside
    def __init__(self):
        super().__init__()
        self.body = LiftedPDENet(LiftedPDEConfig(channels=[2], blocks=[1]))

    def forward(self, images):
        return self.body(images)


def test_pdes_are_found_by_module_in_any_model():
    own = OwnFamily()
    assert describes_pdes(own) and "Euler steps of PDE systems on M2" in describe_model(own)
    layer = nn.Sequential(PDELayer.build(["se2"]), nn.Flatten(), nn.LazyLinear(10))
    assert describes_pdes(layer) and describes_pdes(nn.Sequential(own))


def test_a_network_without_pdes_has_none():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert not describes_pdes(plain)
    assert describe_model(plain) == "Sequential: no PDE layer to describe"
