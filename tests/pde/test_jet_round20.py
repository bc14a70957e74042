"""Jet's order, stencil, spacing and sigma are fixed when it is built (round 20: one set later
was half applied, the cached bank kept the old stencils and the weight the old spacing until the
next .to() rebuilt it), as M2Jet's scales and AntiAliasedDownsample's low-pass are."""

import copy
import pickle

import pytest
import torch

from eqpdenet.errors import ConfigError
from eqpdenet.pde.stencils import Jet


@pytest.mark.parametrize("name, value", [("order", 1), ("stencil", "isotropic"),
                                         ("spacing", 2.0), ("sigma", 1.0)])
def test_the_stencils_hyperparameters_are_read_only(name, value):
    jet = Jet(2, "central", 1.0)
    u = torch.rand(1, 1, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = jet.double()(u)
    with pytest.raises(ConfigError) as caught:
        setattr(jet, name, value)
    assert str(caught.value) == (f"Jet.{name} is fixed when the jet is built (its stencils and "
                                 f"weight are made from it): build a new Jet(order, stencil, "
                                 f"spacing, boundary, sigma) instead")
    torch.testing.assert_close(jet.cpu()(u), before, rtol=0, atol=0)  # a move rebuilds it


def test_a_jet_pickled_with_plain_attributes_loads_with_them():
    jet = Jet(2, "central", 0.5, "reflect")
    state = {key.removeprefix("_") if key in ("_order", "_stencil", "_spacing", "_sigma")
             else key: value for key, value in jet.__dict__.items()}  # the layout before
    old = Jet.__new__(Jet)
    old.__setstate__(state)
    assert (old.order, old.stencil, old.spacing, old.sigma) == (2, "central", 0.5, None)
    u = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    for other in (old, copy.deepcopy(jet), pickle.loads(pickle.dumps(jet))):
        torch.testing.assert_close(other(u), jet(u), rtol=0, atol=0)
    jet.boundary = "zeros"  # read at each call: it may be set
    assert jet.boundary == "zeros"
