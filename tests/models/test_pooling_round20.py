"""AntiAliasedDownsample's sigma and boundary are fixed when it is built (round 20: its weight
buffer and cached per-size matrices were made from them, so one set after a call was half
applied, silently)."""

import copy
import pickle

import pytest
import torch

from eqpdenet.errors import ConfigError
from eqpdenet.models.pooling import AntiAliasedDownsample


@pytest.mark.parametrize("name, value", [("sigma", 2.0), ("boundary", "zeros")])
def test_sigma_and_boundary_are_read_only(name, value):
    down = AntiAliasedDownsample(1.0, "replicate")
    u = torch.rand(1, 1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = down(u)
    with pytest.raises(ConfigError) as caught:
        setattr(down, name, value)
    assert str(caught.value) == (
        f"AntiAliasedDownsample.{name} is fixed when the module is built (its low-pass weights "
        f"and cached matrices are made from it): build a new AntiAliasedDownsample(sigma, "
        f"boundary) instead")
    assert (down.sigma, down.boundary) == (1.0, "replicate")
    torch.testing.assert_close(down(u), before, rtol=0, atol=0)


def test_a_module_pickled_with_plain_attributes_loads_with_them():
    down = AntiAliasedDownsample(1.5, "reflect")
    state = dict(down.__dict__)  # the layout before round 20: sigma and boundary as attributes
    state["sigma"], state["boundary"] = state.pop("_sigma"), state.pop("_boundary")
    old = AntiAliasedDownsample.__new__(AntiAliasedDownsample)
    old.__setstate__(state)
    assert (old.sigma, old.boundary) == (1.5, "reflect")
    u = torch.rand(2, 3, 11, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(old(u), down(u), rtol=0, atol=0)
    for clone in (copy.deepcopy(down), pickle.loads(pickle.dumps(down))):
        assert (clone.sigma, clone.boundary) == (1.5, "reflect")
        torch.testing.assert_close(clone(u), down(u), rtol=0, atol=0)
