"""Round 11: a built right-hand side's stability report (the Laplacian's largest eigenvalue, the
second-order symbol range, the linear symbol) is computed with the stencils its jet was built
with, not with whatever is registered under the stencil's name later."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eqpdenet.errors import ConfigError
from eqpdenet.pde import stencils
from eqpdenet.pde.rhs import InvariantRHS
from eqpdenet.pde.stencils import (
    STENCILS,
    bank_second_order_symbol_range,
    kernel_symbol,
    laplacian_max_eigenvalue,
    register_stencil,
    second_order_symbol_range,
    stencil_kernels,
)
from helpers import central_stencil

NAME = "round11-central"


_central = central_stencil


def _doubled(order):
    return {index: 2 * kernel for index, kernel in _central(order).items()}


@pytest.fixture
def family():
    register_stencil(NAME, _central)
    yield
    STENCILS._items.pop(NAME, None)
    for cache in (stencils._stencil_kernels, laplacian_max_eigenvalue, second_order_symbol_range):
        cache.cache_clear()


def test_the_report_of_a_built_rhs_follows_its_kept_stencils(family):
    rhs = InvariantRHS("se2", degree=1, stencil=NAME, spacing=0.5)
    # -(u_xx + u_yy) of central differences peaks at 8 / h^2 (the checkerboard mode)
    assert rhs.laplacian_max_eigenvalue() == pytest.approx(8 / 0.25, rel=1e-12)
    low, high = rhs.second_order_symbol_range((1.0, 0.0, 1.0))
    assert (low, high) == pytest.approx((-32.0, 0.0), abs=1e-9)
    symbol = rhs.linear_symbol({"u_xx": 1.0})
    assert float(symbol.real.min()) == pytest.approx(-4 / 0.25, rel=1e-12)
    register_stencil(NAME, _doubled, replace=True)  # a notebook cell edited and run again
    assert laplacian_max_eigenvalue(NAME, 0.5) == pytest.approx(64.0, rel=1e-12)  # the new family
    assert rhs.laplacian_max_eigenvalue() == pytest.approx(32.0, rel=1e-12)       # the built rhs
    assert rhs.second_order_symbol_range((1.0, 0.0, 1.0)) == pytest.approx((low, high), abs=1e-9)
    np.testing.assert_array_equal(rhs.linear_symbol({"u_xx": 1.0}), symbol)


def test_the_bank_symbol_is_the_named_familys_symbol():
    for coefficients in ((1.0, 0.0, 1.0), (2.0, 0.5, 1.0), (1.0, -3.0, 0.25)):
        assert bank_second_order_symbol_range(stencil_kernels("isotropic", 2), 0.5, coefficients) \
            == second_order_symbol_range("isotropic", 0.5, None, coefficients)
    assert bank_second_order_symbol_range(stencil_kernels("isotropic", 2), 1.0)[0] \
        == pytest.approx(-16 / 3, rel=1e-12)


def test_kernel_symbol_of_known_kernels():
    delta = np.zeros((3, 3))
    delta[1, 1] = 1.0
    np.testing.assert_allclose(kernel_symbol(delta, 9), np.ones((9, 9)), atol=1e-15)
    second = np.zeros((3, 3))
    second[1] = [1.0, -2.0, 1.0]  # u_xx along the columns: 2 cos(theta_b) - 2
    theta = np.linspace(-math.pi, math.pi, 9)
    np.testing.assert_allclose(kernel_symbol(second, 9),
                               np.broadcast_to(2 * np.cos(theta) - 2, (9, 9)), atol=1e-14)


def test_a_bank_below_order_two_is_refused_with_its_reason():
    with pytest.raises(ValueError, match="order >= 2"):
        bank_second_order_symbol_range(stencil_kernels("central", 1), 1.0)


def test_a_symbol_of_a_derivative_the_jet_does_not_compute_is_refused_naming_it():
    rhs = InvariantRHS("se2", degree=1)  # an order-2 jet
    with pytest.raises(ConfigError, match=r"coefficients \['u_xxx'\]: a derivative of order 3, "
                                          r"above the jet's order 2"):
        rhs.linear_symbol({"u_xxx": 1.0})
