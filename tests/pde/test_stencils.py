"""The jet: exactness on polynomials, sign and scale of every derivative, convergence order."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eqpdenet.geometry import pixel_coordinates
from eqpdenet.pde.stencils import (
    Jet,
    available_stencils,
    derivative_index,
    derivative_multi_indices,
    derivative_names,
    jet,
    laplacian_max_eigenvalue,
    register_stencil,
    stencil_kernels,
)
from helpers import bump, jet_at

STENCILS = ("central", "isotropic", "isotropic5")
coefficient = st.floats(-3, 3, allow_nan=False)


def test_names_and_layout():
    assert derivative_names(2) == ("u", "u_x", "u_y", "u_xx", "u_xy", "u_yy")
    assert derivative_names(3)[6:] == ("u_xxx", "u_xxy", "u_xyy", "u_yyy")
    assert len(derivative_multi_indices(4)) == 15
    assert derivative_index("u_xy") == 4 and derivative_index("u_yyy") == 9
    with pytest.raises(ValueError, match="not a derivative name"):
        derivative_index("u_yx")


@pytest.mark.parametrize("stencil", STENCILS)
@settings(max_examples=25, deadline=None)
@given(c=st.lists(coefficient, min_size=6, max_size=6),
       spacing=st.sampled_from([1.0, 0.5, 0.1]))
def test_exact_on_quadratics(stencil, c, spacing):
    """Every derivative, with its sign and scale, on u = c0 + c1 x + c2 y + c3 x^2 + c4 xy + c5 y^2."""
    x, y = pixel_coordinates(9, 11, spacing, dtype=torch.float64)
    u = c[0] + c[1] * x + c[2] * y + c[3] * x**2 + c[4] * x * y + c[5] * y**2
    d = jet(u[None, None], stencil=stencil, spacing=spacing)[0, 0, :, 2:-2, 2:-2]
    expected = [u, c[1] + 2 * c[3] * x + c[4] * y, c[2] + c[4] * x + 2 * c[5] * y,
                2 * c[3] + 0 * x, c[4] + 0 * x, 2 * c[5] + 0 * x]
    for index, truth in enumerate(expected):
        torch.testing.assert_close(d[index], truth[2:-2, 2:-2], rtol=1e-9, atol=1e-9)


@settings(max_examples=10, deadline=None)
@given(c=st.lists(coefficient, min_size=4, max_size=4))
def test_central_third_order_exact_on_cubics(c):
    x, y = pixel_coordinates(9, 9, 1.0, dtype=torch.float64)
    u = c[0] * x**3 + c[1] * x**2 * y + c[2] * x * y**2 + c[3] * y**3
    d = jet(u[None, None], order=3)[0, 0, :, 2:-2, 2:-2]
    truth = {"u_xxx": 6 * c[0], "u_xxy": 2 * c[1], "u_xyy": 2 * c[2], "u_yyy": 6 * c[3]}
    for name, value in truth.items():
        torch.testing.assert_close(d[derivative_index(name)], torch.full_like(d[0], value),
                                   rtol=1e-9, atol=1e-9)


def test_y_points_up():
    """u = y grows towards the top row: u_y = +1 (the documented convention)."""
    x, y = pixel_coordinates(5, 5, dtype=torch.float64)
    assert y[0, 0] > y[-1, 0] and x[0, -1] > x[0, 0]
    d = jet(y[None, None])[0, 0]
    assert torch.allclose(d[derivative_index("u_y")][1:-1, 1:-1], torch.ones(3, 3, dtype=torch.float64))
    assert torch.allclose(d[derivative_index("u_x")], torch.zeros(5, 5, dtype=torch.float64))


@pytest.mark.parametrize("stencil", STENCILS)
def test_second_order_convergence(stencil):
    """Halving h divides the error of every derivative of a smooth function by about 4."""
    points = torch.tensor([[0.1, -0.2], [-0.4, 0.3], [0.5, 0.5]], dtype=torch.float64)
    exact = jet_at(bump, points, 1e-4, stencil="central")  # reference: tiny h
    errors = []
    for h in (0.1, 0.05, 0.025):
        errors.append((jet_at(bump, points, h, stencil=stencil) - exact)[:, 1:].abs().amax(0))
    for coarse, fine in zip(errors, errors[1:], strict=False):
        rate = torch.log2(coarse / fine)
        assert torch.all((rate > 1.8) & (rate < 2.3)), rate


@pytest.mark.parametrize("boundary", ["replicate", "zeros", "reflect", "circular"])
def test_boundaries(boundary):
    u = torch.arange(16.0).reshape(1, 1, 4, 4)
    d = jet(u, boundary=boundary)[0, 0]
    # u = 4 row + col: interior u_x = 1, u_y = -4 (y points up, rows grow down)
    assert d[1, 1:3, 1:3].eq(1).all() and d[2, 1:3, 1:3].eq(-4).all()
    left_ux = d[1, 1, 0].item()
    assert left_ux == {"replicate": 0.5, "zeros": 2.5, "reflect": 0.0, "circular": -1.0}[boundary]


def test_periodic_shift_equivariance():
    u = torch.rand(2, 3, 10, 12, dtype=torch.float64)
    shifted = torch.roll(u, shifts=(3, -2), dims=(-2, -1))
    torch.testing.assert_close(jet(shifted, boundary="circular"),
                               torch.roll(jet(u, boundary="circular"), (3, -2), (-2, -1)))


def test_kernels_not_normalised_and_symmetric():
    """Odd derivatives are antisymmetric, even ones symmetric, and no L1 normalisation."""
    for name in STENCILS:
        bank = stencil_kernels(name, 2)
        for (a, b), kernel in zip(derivative_multi_indices(2), bank, strict=True):
            assert np.allclose(kernel[:, ::-1], (-1) ** a * kernel)
            assert np.allclose(kernel[::-1, :], (-1) ** b * kernel)
        assert np.isclose(bank[derivative_index("u_xx")].sum(), 0.0)
        centre = -2.0 * (10 / 12 if name.startswith("isotropic") else 1)
        middle = bank.shape[-1] // 2
        assert np.isclose(bank[derivative_index("u_xx")][middle, middle], centre)


def test_isotropic_laplacian_is_the_nine_point_one():
    bank = stencil_kernels("isotropic", 2)
    lap = bank[derivative_index("u_xx")] + bank[derivative_index("u_yy")]
    assert np.allclose(lap, np.array([[1, 4, 1], [4, -20, 4], [1, 4, 1]]) / 6)


def test_laplacian_bounds():
    assert laplacian_max_eigenvalue("central") == pytest.approx(8.0)
    assert laplacian_max_eigenvalue("central", 0.5) == pytest.approx(32.0)
    assert laplacian_max_eigenvalue("isotropic") == pytest.approx(16 / 3)


def test_module_matches_function_and_keeps_no_state():
    module = Jet(stencil="isotropic", spacing=0.5, boundary="reflect")
    u = torch.rand(2, 1, 7, 7)
    torch.testing.assert_close(module(u), jet(u, stencil="isotropic", spacing=0.5, boundary="reflect"))
    assert module.state_dict() == {}
    assert module.double()(u.double()).dtype == torch.float64


def test_clear_errors():
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        jet(torch.rand(7, 7))
    with pytest.raises(TypeError, match="floating-point"):
        jet(torch.zeros(1, 1, 5, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown stencil .sobel.; available: central, isot"):
        jet(torch.rand(1, 1, 5, 5), stencil="sobel")
    with pytest.raises(ValueError, match="unknown boundary"):
        jet(torch.rand(1, 1, 5, 5), boundary="mirror")
    with pytest.raises(ValueError, match="isotropic' stencil supports jet order <= 2"):
        jet(torch.rand(1, 1, 5, 5), order=3, stencil="isotropic")
    with pytest.raises(ValueError, match="spacing"):
        jet(torch.rand(1, 1, 5, 5), spacing=0.0)


def test_register_stencil():
    def forward_only(order):
        base = {idx: k for idx, k in zip(derivative_multi_indices(order), stencil_kernels("central", order),
                                          strict=True)}
        return base
    if "test-copy" not in available_stencils():
        register_stencil("test-copy", forward_only)
    u = torch.rand(1, 1, 6, 6)
    torch.testing.assert_close(jet(u, stencil="test-copy"), jet(u))
    with pytest.raises(ValueError, match="already registered"):
        register_stencil("test-copy", forward_only)


def test_spacing_scales_derivatives():
    u = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    powers = torch.tensor([2.0 ** (a + b) for a, b in derivative_multi_indices(2)], dtype=torch.float64)
    torch.testing.assert_close(jet(u, spacing=0.5), jet(u, spacing=1.0) * powers[:, None, None])


@pytest.mark.parametrize("h", [0.1, 0.05])
def test_leading_errors_of_the_isotropic_stencils(h):
    """On u = x^3 y + x^4 (u_xxxx = 24, u_xxxy = 6, the other 4th derivatives 0): isotropic's
    u_xx error is h^2/12 * 24 = 2 h^2 and its u_xy error h^2/6 * 6 = h^2 (not h^2/12: the
    issue's finding); isotropic5's u_xy error is h^2/12 * 6 = h^2 / 2, covariant with u_xx."""
    x0, y0 = 0.3, -0.2
    errors = {}
    for stencil in ("isotropic", "isotropic5"):
        d = jet_at(lambda x, y: x**3 * y + x**4, torch.tensor([[x0, y0]], dtype=torch.float64), h,
                   stencil)[0]
        errors[stencil] = ((d[derivative_index("u_xx")] - (6 * x0 * y0 + 12 * x0**2)) / h**2,
                           (d[derivative_index("u_xy")] - 3 * x0**2) / h**2)
    assert errors["isotropic"][0].item() == pytest.approx(2.0, abs=1e-6)
    assert errors["isotropic"][1].item() == pytest.approx(1.0, abs=1e-6)
    assert errors["isotropic5"][0].item() == pytest.approx(2.0, abs=1e-6)
    assert errors["isotropic5"][1].item() == pytest.approx(0.5, abs=1e-6)
