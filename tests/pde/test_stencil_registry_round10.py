"""Round 10: a built module keeps the stencils it was built with, whatever is registered under
their name later; the module-level caches keyed by a scale are bounded and give the same bits
after an eviction."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch

from eqpdenet.kernels.m2_op import constant_cache
from eqpdenet.models import build_model
from eqpdenet.pde import m2, stencils
from eqpdenet.pde.stencils import (
    STENCILS,
    Jet,
    laplacian_max_eigenvalue,
    register_stencil,
    second_order_symbol_range,
    stencil_kernels,
)
from helpers import central_stencil

PLAIN, SCALED = "round10-mine", "round10-blur"


_central = central_stencil


def _central_doubled(order):
    return {index: 2 * kernel for index, kernel in _central(order).items()}


def _blur(order, sigma):
    return stencils._gaussian(order, sigma)


def _blur_changed(order, sigma):
    return {index: 1.5 * kernel for index, kernel in stencils._gaussian(order, sigma).items()}


FAMILIES = {PLAIN: (_central, _central_doubled, None), SCALED: (_blur, _blur_changed, 1.5)}


@contextlib.contextmanager
def _family(name, builder):
    """``builder`` registered as ``name`` for the block; afterwards the name is gone and nothing
    is cached under it."""
    register_stencil(name, builder)
    try:
        yield
    finally:
        STENCILS._items.pop(name, None)
        for cache in (stencils._stencil_kernels, laplacian_max_eigenvalue,
                      second_order_symbol_range):
            cache.cache_clear()


def _move(module, how):
    if how == "cpu":
        module.cpu()  # already on the CPU
    elif how == "to_cpu":
        module.to("cpu")
    elif how == "double_float":
        module.double().float()
    elif how == "load_state_dict":
        module.load_state_dict(module.state_dict())
    elif how == "to_empty":
        module.to_empty(device="cpu")
    elif how == "deepcopy":
        module = copy.deepcopy(module).to("cpu")
    return module


@pytest.mark.parametrize("how", ["cpu", "to_cpu", "double_float", "load_state_dict", "to_empty",
                                 "deepcopy"])
@pytest.mark.parametrize("name", [PLAIN, SCALED])
def test_a_built_jet_keeps_its_stencils_when_the_family_is_replaced(name, how):
    old, new, sigma = FAMILIES[name]
    u = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    with _family(name, old):
        jet = Jet(2, name, spacing=0.5, sigma=sigma)
        kept = stencil_kernels(name, 2, None if sigma is None else sigma / 0.5)
        before = jet(u)
        register_stencil(name, new, replace=True)  # a notebook cell edited and run again
        jet = _move(jet, how)
        torch.testing.assert_close(jet(u), before, rtol=0, atol=0)
        assert np.array_equal(jet.bank, kept)
        # the replaced family reaches the jets built after it
        fresh = Jet(2, name, spacing=0.5, sigma=sigma)
        factor = 2.0 if name == PLAIN else 1.5
        torch.testing.assert_close(fresh(u), factor * before)


def test_a_jet_built_on_the_meta_device_is_materialised_with_the_stencils_it_was_built_with():
    u = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    with _family(PLAIN, _central):
        expected = Jet(2, PLAIN)(u)
        with torch.device("meta"):
            jet = Jet(2, PLAIN)
        register_stencil(PLAIN, _central_doubled, replace=True)
        jet.to_empty(device="cpu")
        torch.testing.assert_close(jet(u), expected, rtol=0, atol=0)


def test_a_built_model_keeps_its_stencil_when_the_family_is_replaced():
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with _family(PLAIN, _central):
        torch.manual_seed(0)
        model = build_model("eqpdenet", hidden=8, image_size=12,
                            layer={"stencil": PLAIN}).eval().double()
        with torch.no_grad():
            before = model(x)
        register_stencil(PLAIN, _central_doubled, replace=True)
        model.double()  # already float64
        model.cpu()
        model.load_state_dict(model.state_dict())
        model.float().double()
        with torch.no_grad():
            torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_a_jet_pickled_before_it_kept_its_stencils_still_moves():
    """A Jet saved whole (``torch.save(model)``) by an earlier version has no kept bank: it takes
    the family's stencils at its first move and keeps them from then on."""
    jet = Jet(2, "central")
    expected = jet.weight.clone()
    del jet.__dict__["_bank"]
    jet.cpu()
    torch.testing.assert_close(jet.weight, expected, rtol=0, atol=0)
    assert np.array_equal(jet.bank, stencil_kernels("central", 2))


def test_the_stencil_caches_are_bounded_and_give_the_same_bits_after_an_eviction():
    """A hyper-parameter search over a continuous sigma grew each cache by every value tried."""
    first = stencil_kernels("gaussian", 2, 0.75)
    symbol = second_order_symbol_range("gaussian", 1.0, 0.75)
    eigenvalue = laplacian_max_eigenvalue("gaussian", 1.0, 0.75)
    for k in range(100):
        laplacian_max_eigenvalue("gaussian", 1.0, 0.8 + k * 1e-3)  # and the other two
    again = stencil_kernels("gaussian", 2, 0.75)
    evicted = again is not first
    assert evicted, "an unbounded cache: the first sigma was never evicted"
    assert np.array_equal(again, first)
    assert second_order_symbol_range("gaussian", 1.0, 0.75) == symbol
    assert laplacian_max_eigenvalue("gaussian", 1.0, 0.75) == eigenvalue
    for cache in (stencils._stencil_kernels, laplacian_max_eigenvalue, second_order_symbol_range):
        info = cache.cache_info()
        assert info.maxsize is not None and info.currsize <= info.maxsize <= 64


def test_the_m2_constant_caches_are_bounded_and_give_the_same_bits_after_an_eviction():
    first = m2.separable_stencils((0.75,))
    frame = m2.orientation_frame(4)
    for k in range(100):
        m2.separable_stencils((0.8 + k * 1e-3, 1.2))
        m2.orientation_frame(8 + 4 * k)
    again = m2.separable_stencils((0.75,))
    evicted = again is not first
    assert evicted, "an unbounded cache: the first sigmas were never evicted"
    assert torch.equal(again, first)
    assert m2.orientation_frame(4) is not frame and torch.equal(m2.orientation_frame(4), frame)
    assert m2.separable_stencils.cache_size() <= 64 and m2.orientation_frame.cache_size() <= 64
    with pytest.raises(ValueError, match="positive integer"):
        constant_cache(maxsize=None)
