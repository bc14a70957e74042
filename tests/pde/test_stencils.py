"""The jet: exactness on polynomials, sign and scale of every derivative, convergence order."""

import math

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
    gaussian_derivative_weights,
    jet,
    laplacian_max_eigenvalue,
    register_stencil,
    scale_normalised,
    stencil_has_scale,
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
    with pytest.raises(ValueError, match="unknown stencil 'sobel'; available: central, gaussian"):
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

# ----------------------------------------------------------------------------- gaussian


def _rotated_jet(d: torch.Tensor) -> torch.Tensor:
    """The jet of ``v = u o R^-1`` for R the quarter turn: grad v = R grad u, H_v = R H R^T."""
    u, ux, uy, uxx, uxy, uyy = d.unbind(-3)
    return torch.stack([u, -uy, ux, uyy, -uxy, uxx], dim=-3)


def _polynomial_jet(c: dict, x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact jet of ``G_sigma * p`` for ``p = sum c[i, j] x^i y^j`` of degree <= 3, where
    ``G_sigma * p = p + sigma^2 / 2 (p_xx + p_yy)`` (the heat semigroup on cubics)."""
    def derivative(i, j, a, b):
        if a > i or b > j:
            return torch.zeros_like(x)
        factor = math.factorial(i) // math.factorial(i - a) * math.factorial(j) // math.factorial(j - b)
        return factor * x ** (i - a) * y ** (j - b)

    out = []
    for a, b in derivative_multi_indices(2):
        value = torch.zeros_like(x)
        for (i, j), coefficient in c.items():
            value = value + coefficient * (derivative(i, j, a, b) + sigma**2 / 2
                                           * (derivative(i, j, a + 2, b) + derivative(i, j, a, b + 2)))
        out.append(value)
    return torch.stack(out)


MONOMIALS = [(i, j) for i in range(4) for j in range(4 - i)]


@settings(max_examples=20, deadline=None)
@given(c=st.lists(coefficient, min_size=len(MONOMIALS), max_size=len(MONOMIALS)),
       sigma=st.sampled_from([0.5, 1.0, 1.7]), spacing=st.sampled_from([1.0, 0.5]))
def test_gaussian_exact_on_cubics(c, sigma, spacing):
    """The Gaussian jet of a cubic is exactly the jet of the blurred cubic, with true scale and
    sign (never L1-normalised): the moments of every kernel are the continuous ones."""
    coefficients = dict(zip(MONOMIALS, c, strict=True))
    x, y = pixel_coordinates(21, 23, spacing, dtype=torch.float64)
    u = sum(v * x**i * y**j for (i, j), v in coefficients.items())
    d = jet(u[None, None], stencil="gaussian", sigma=sigma * spacing, spacing=spacing)[0, 0]
    radius = (stencil_kernels("gaussian", 2, sigma).shape[-1]) // 2
    inner = (slice(None), slice(radius, -radius), slice(radius, -radius))
    torch.testing.assert_close(d[inner], _polynomial_jet(coefficients, x, y, sigma * spacing)[inner],
                               rtol=1e-9, atol=1e-9)


def test_gaussian_moments_are_exact():
    """The derivative of x is 1, of x^2 / 2 is 1, of x^3 / 6 is 1; lower moments vanish; blurring
    adds sigma^2 / 2 to x^2 / 2."""
    for sigma in (0.5, 1.0, 2.5):
        for a in range(3):
            w = gaussian_derivative_weights(a, sigma, order=2)
            k = np.arange(len(w)) - len(w) // 2
            moments = [float(w @ (k**m)) / math.factorial(m) for m in range(4)]
            expected = [float(m == a) for m in range(4)]
            if a == 0:
                expected[2] = sigma**2 / 2
            if a == 1:
                expected[3] = sigma**2 / 2
            np.testing.assert_allclose(moments, expected, rtol=0, atol=1e-11)
        assert len(w) == 2 * max(math.ceil(4 * sigma), 2) + 1


@pytest.mark.parametrize("stencil", ["central", "isotropic", "gaussian"])
@pytest.mark.parametrize("boundary", ["replicate", "circular", "zeros"])
def test_rot90_rotates_the_jet_exactly(stencil, boundary):
    """Symmetric kernels: the jet of the quarter-turned image is the quarter-turned jet, with
    (u_x, u_y) -> (-u_y, u_x) and (u_xx, u_xy, u_yy) -> (u_yy, -u_xy, u_xx)."""
    sigma = 1.2 if stencil == "gaussian" else None
    u = torch.rand(2, 1, 15, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    d = jet(u, stencil=stencil, boundary=boundary, sigma=sigma)
    for k in (1, 2, 3):
        expected = d
        for _ in range(k):
            expected = _rotated_jet(torch.rot90(expected, 1, (-2, -1)))
        moved = jet(torch.rot90(u, k, (-2, -1)), stencil=stencil, boundary=boundary, sigma=sigma)
        torch.testing.assert_close(moved, expected, rtol=0, atol=1e-12)
    # Sanity of the test itself: the plain rot90 of the jet (no transform) is not the answer.
    assert (jet(torch.rot90(u, 1, (-2, -1)), stencil=stencil, boundary=boundary, sigma=sigma)
            - torch.rot90(d, 1, (-2, -1))).abs().max() > 1e-2


def _blurred_blob(t: torch.Tensor, width: float, sigma: float, centre: float) -> torch.Tensor:
    """``G_sigma * exp(-(t - c)^2 / (2 w^2))`` in 1-D: a Gaussian of variance ``w^2 + sigma^2``."""
    variance = width**2 + sigma**2
    return width / math.sqrt(variance) * torch.exp(-((t - centre) ** 2) / (2 * variance))


@pytest.mark.parametrize("sigma", [1.0, 1.5])
def test_gaussian_jet_is_the_derivative_of_the_blurred_image(sigma):
    """u = an anisotropic Gaussian blob; its exact blur by G_sigma is again one, so the exact
    derivatives of G_sigma * u are known (autograd of the closed form). The Gaussian jet agrees
    to 1e-3 of each derivative's largest value (measured: 6e-7 for u .. 9e-4 for u_yy at
    sigma = 1.5, the truncation at 4 sigma; the blur itself changes them by 4 .. 25 %)."""
    x, y = pixel_coordinates(45, 45, 1.0, dtype=torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    widths, centre = (6.0, 4.0), (0.7, -0.4)
    u = torch.exp(-((x - centre[0]) ** 2) / (2 * widths[0] ** 2)
                  - (y - centre[1]) ** 2 / (2 * widths[1] ** 2))

    def exact_jet(s):
        value = _blurred_blob(x, widths[0], s, centre[0]) * _blurred_blob(y, widths[1], s, centre[1])
        ux, uy = torch.autograd.grad(value.sum(), (x, y), create_graph=True)
        uxx, uxy = torch.autograd.grad(ux.sum(), (x, y), retain_graph=True)
        uyy = torch.autograd.grad(uy.sum(), y, retain_graph=True)[0]
        return torch.stack([value, ux, uy, uxx, uxy, uyy]).detach()[:, 12:-12, 12:-12]

    d = jet(u.detach()[None, None], stencil="gaussian", sigma=sigma, boundary="zeros")[0, 0]
    d = d[:, 12:-12, 12:-12]
    truth, unblurred = exact_jet(sigma), exact_jet(0.0)
    scale = truth.abs().amax((1, 2))
    error = (d - truth).abs().amax((1, 2)) / scale
    assert torch.all(error < 1e-3), error
    assert torch.all((unblurred - truth).abs().amax((1, 2)) / scale > 0.04)


def test_scale_normalised_jets_agree_across_spacings():
    """The same samples read with spacing 1 and sigma s, or with spacing 0.37 and sigma 0.37 s
    (the same image, shrunk): the scale-normalised jets agree to rounding, the plain ones differ
    by 0.37^-(a+b)."""
    u = torch.rand(1, 2, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    coarse = jet(u, stencil="gaussian", sigma=1.5, spacing=1.0)
    fine = jet(u, stencil="gaussian", sigma=1.5 * 0.37, spacing=0.37)
    torch.testing.assert_close(scale_normalised(fine, 1.5 * 0.37), scale_normalised(coarse, 1.5),
                               rtol=1e-12, atol=1e-14)
    powers = torch.tensor([0.37 ** -(a + b) for a, b in derivative_multi_indices(2)],
                          dtype=torch.float64)
    torch.testing.assert_close(fine, coarse * powers[:, None, None], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(scale_normalised(coarse, 2.0)[:, :, 5], 4.0 * coarse[:, :, 5])


def test_sigma_belongs_to_the_gaussian_family_only():
    assert stencil_has_scale("gaussian") and not stencil_has_scale("central")
    u = torch.rand(1, 1, 12, 12)
    with pytest.raises(ValueError, match="'gaussian' stencil needs sigma"):
        jet(u, stencil="gaussian")
    with pytest.raises(ValueError, match="'central' stencil has no scale"):
        jet(u, sigma=1.0)
    with pytest.raises(ValueError, match="at least 0.5 pixels"):
        jet(u, stencil="gaussian", sigma=0.4)
    with pytest.raises(ValueError, match="at least 0.5 pixels"):
        Jet(stencil="gaussian", sigma=0.4, spacing=1.0)
    module = Jet(stencil="gaussian", sigma=0.3, spacing=0.5)  # 0.6 pixels
    torch.testing.assert_close(module(u), jet(u, stencil="gaussian", sigma=0.3, spacing=0.5))
    assert module.state_dict() == {} and "sigma=0.3" in repr(module)


def test_gaussian_heat_bound_uses_its_sigma():
    """The symbol of -Δ(G_sigma * .) is |ω|² exp(-sigma² |ω|² / 2), largest at |ω|² = 2 / sigma²:
    2 / (e sigma²), far below the central stencil's 8 (and 4x smaller at half the spacing).
    The discrete stencil's value is within 0.6 % of it from sigma = 1 to 4 pixels, and not at
    0.5 pixel, where the sampled kernel is far from the continuous one (docs/symbolic.md)."""
    for sigma in (1.0, 1.5, 2.0, 3.0, 4.0):
        assert laplacian_max_eigenvalue("gaussian", 1.0, sigma) == pytest.approx(
            2 / (math.e * sigma**2), rel=6e-3)
    assert laplacian_max_eigenvalue("gaussian", 1.0, 0.5) / (2 / (math.e * 0.25)) == pytest.approx(
        1.285, abs=0.01)
    assert laplacian_max_eigenvalue("gaussian", 0.5, 1.0) == pytest.approx(
        4 * laplacian_max_eigenvalue("gaussian", 1.0, 2.0), rel=1e-12)
