"""Fields on M2: the Gaussian jet, orientation differences, the left-invariant invariants, and
their symmetry under the group on the grid."""

import math

import pytest
import torch

from eqpdenet import ConfigError
from eqpdenet.pde import get_invariant_set
from eqpdenet.pde.m2 import (
    M2_DERIVATIVE_NAMES,
    M2_SE2,
    M2Jet,
    check_orientations,
    gaussian_jet,
    orientation_cos_sin,
    orientations,
    rotate_field,
    steered_jet,
    steering_matrices,
)
from eqpdenet.pde.stencils import jet

BOUNDARIES = ["replicate", "zeros", "reflect", "circular"]


def test_separable_gaussian_jet_equals_the_2d_stencil_jet():
    torch.manual_seed(0)
    u = torch.rand(2, 3, 15, 13, dtype=torch.float64)
    for sigma in (0.7, 1.0, 1.6):
        for boundary in BOUNDARIES:
            expected = jet(u, 2, "gaussian", boundary=boundary, sigma=sigma)
            torch.testing.assert_close(gaussian_jet(u, sigma, boundary, scale_normalised=False),
                                       expected, rtol=0, atol=1e-13)
        normalised = gaussian_jet(u, sigma, "replicate")
        scale = torch.tensor([1, sigma, sigma, sigma**2, sigma**2, sigma**2], dtype=torch.float64)
        torch.testing.assert_close(normalised, jet(u, 2, "gaussian", sigma=sigma)
                                   * scale.view(6, 1, 1), rtol=1e-13, atol=1e-13)


def _field(x, y, theta):
    """A polynomial of degree 2 in (x, y) times trigonometric functions of theta."""
    return ((1 + 0.3 * x - 0.2 * y + 0.05 * x * x - 0.04 * x * y + 0.07 * y * y) * torch.cos(theta)
            + (0.5 * x + 0.1 * y * y) * torch.sin(2 * theta))


def test_m2_jet_of_a_known_field():
    # Interior of a 21x21 grid, 8 orientations. Spatial derivatives of a degree-2 polynomial are
    # exact (the Gaussian adds sigma^2 / 2 Delta f to the value only); the orientation
    # differences of cos(m theta) are those of the discrete operator, sin(m d) / d and
    # 2 (cos(m d) - 1) / d^2 times the exact ones.
    n, size, sigma = 8, 21, 1.0
    theta = orientations(n).view(1, 1, n, 1, 1)
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = -coords.view(size, 1), coords.view(1, size)
    u = _field(x, y, theta)
    d = M2Jet(sigma, scale_normalised=False)(u)[0, 0][..., 10, 10]     # (10, N) at the centre
    t = theta.flatten()
    step = 2 * math.pi / n
    first = {1: math.sin(step) / step, 2: math.sin(2 * step) / step}
    second = {1: 2 * (math.cos(step) - 1) / step**2, 2: 2 * (math.cos(2 * step) - 1) / step**2}
    # at (0, 0): f1 = 1 + ..., f2 = 0.5 x + 0.1 y^2; u = f1 cos(t) + f2 sin(2t)
    lap_f1, lap_f2 = 2 * (0.05 + 0.07), 2 * 0.1
    expected = {
        "u": (1 + sigma**2 / 2 * lap_f1) * torch.cos(t) + sigma**2 / 2 * lap_f2 * torch.sin(2 * t),
        "u_x": 0.3 * torch.cos(t) + 0.5 * torch.sin(2 * t),
        "u_y": -0.2 * torch.cos(t),
        "u_θ": -(1 + sigma**2 / 2 * lap_f1) * first[1] * torch.sin(t)
        + sigma**2 / 2 * lap_f2 * 2 * first[2] / 2 * torch.cos(2 * t),
        "u_xx": 0.1 * torch.cos(t),
        "u_xy": -0.04 * torch.cos(t),
        "u_xθ": -0.3 * first[1] * torch.sin(t) + 0.5 * first[2] * torch.cos(2 * t),
        "u_yy": 0.14 * torch.cos(t) + 0.2 * torch.sin(2 * t),
        "u_yθ": 0.2 * first[1] * torch.sin(t),
        "u_θθ": (1 + sigma**2 / 2 * lap_f1) * second[1] * torch.cos(t)
        + sigma**2 / 2 * lap_f2 * second[2] * torch.sin(2 * t),
    }
    for index, name in enumerate(M2_DERIVATIVE_NAMES):
        torch.testing.assert_close(d[index], expected[name], rtol=0, atol=1e-9, msg=name)


def test_invariants_are_the_left_invariant_derivatives():
    # A3 A1 u = A1 A3 u + A2 u ([A1, A3] = -A2), so the symmetrised A13 = A1 A3 u + A2 u / 2;
    # likewise A23 = A2 A3 u - A1 u / 2. Checked on random jets against the frame directly.
    torch.manual_seed(0)
    n = 8
    d = torch.randn(2, 10, n, 3, 3, dtype=torch.float64)
    invariants = M2_SE2(d)
    cos, sin = orientation_cos_sin(n, torch.float64, None)
    u, ux, uy, ut, uxx, uxy, uxt, uyy, uyt, utt = d.unbind(1)
    a1, a2 = cos * ux + sin * uy, -sin * ux + cos * uy
    a1a3, a2a3 = cos * uxt + sin * uyt, -sin * uxt + cos * uyt
    hessian = torch.stack([torch.stack([uxx, uxy], -1), torch.stack([uxy, uyy], -1)], -2)
    e1 = torch.stack([cos, sin], -1).expand(*uxx.shape, 2)
    e2 = torch.stack([-sin, cos], -1).expand(*uxx.shape, 2)

    def quad(a, b):
        return (a[..., None, :] @ hessian @ b[..., :, None])[..., 0, 0]

    expected = [u, a1, a2, ut, quad(e1, e1), quad(e1, e2), a1a3 + a2 / 2, quad(e2, e2),
                a2a3 - a1 / 2, utt]
    assert M2_SE2.names == ("u", "A1u", "A2u", "A3u", "A11u", "A12u", "A13u", "A22u", "A23u",
                            "A33u")
    for index, value in enumerate(expected):
        torch.testing.assert_close(invariants[:, index], value, rtol=1e-12, atol=1e-12)
    assert get_invariant_set("m2") is M2_SE2 and M2_SE2.domain == "m2"


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("n", [4, 8, 12])
def test_invariants_commute_with_quarter_turns_exactly(boundary, n):
    torch.manual_seed(1)
    u = torch.rand(2, 3, n, 12, 12, dtype=torch.float64)
    jet_of = M2Jet(0.8, boundary)
    invariants = M2_SE2(jet_of(u))
    for k in (1, 2, 3):
        moved = M2_SE2(jet_of(rotate_field(u, k)))
        torch.testing.assert_close(moved, rotate_field(invariants, k), rtol=0, atol=1e-12)


def test_invariants_commute_with_translations():
    torch.manual_seed(2)
    u = torch.rand(1, 2, 8, 16, 16, dtype=torch.float64)
    jet_of = M2Jet(1.0, "circular")
    shifted = torch.roll(u, (3, -5), dims=(-2, -1))
    torch.testing.assert_close(M2_SE2(jet_of(shifted)),
                               torch.roll(M2_SE2(jet_of(u)), (3, -5), dims=(-2, -1)),
                               rtol=0, atol=1e-12)


def test_invariants_are_approximately_invariant_under_an_eighth_turn():
    # A smooth field sampled exactly on the grid and its copy rotated by 45 degrees (one
    # orientation step): at the centre of rotation the invariants agree up to the spatial
    # discretisation (the orientation axis is shifted exactly).
    n, size = 8, 33
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = -coords.view(size, 1), coords.view(1, size)
    theta = orientations(n).view(1, 1, n, 1, 1)

    def field(x, y, t):
        return (torch.exp(-((x - 1.5 * torch.cos(t)) ** 2 + (y - 0.5 * torch.sin(t)) ** 2) / 30)
                + 0.2 * torch.cos(0.2 * x - 0.1 * y + t))

    phi = math.pi / 4
    u = field(x, y, theta)
    # (g . U)(x, t) = U(R_-phi x, t - phi)
    xr, yr = math.cos(phi) * x + math.sin(phi) * y, -math.sin(phi) * x + math.cos(phi) * y
    moved = field(xr, yr, theta - phi)
    jet_of = M2Jet(1.2)
    a = M2_SE2(jet_of(u))[0, 0][..., 16, 16]                  # (10, N)
    b = torch.roll(M2_SE2(jet_of(moved))[0, 0][..., 16, 16], -1, dims=-1)
    assert float((a - b).abs().max()) < 2e-3 * float(a.abs().max())


def test_steered_lift_of_an_image_is_the_invariants_of_its_constant_field():
    torch.manual_seed(3)
    f = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    n = 8
    cos, sin = orientation_cos_sin(n, torch.float64, None)
    lifted = steered_jet(gaussian_jet(f, 1.0).unsqueeze(-4), cos, sin)     # (B, 1, N, 6, H, W)
    invariants = M2_SE2(M2Jet(1.0)(f.unsqueeze(2).expand(-1, -1, n, -1, -1)))
    keep = [M2_SE2.names.index(name) for name in ("u", "A1u", "A2u", "A11u", "A12u", "A22u")]
    torch.testing.assert_close(lifted.transpose(2, 3), invariants[:, :, keep], rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", [4, 8, 12])
def test_steering_matrices_are_the_steered_jet_as_a_matrix(n):
    """Row by row the frame (A1, A2) = (cos dx + sin dy, -sin dx + cos dy) and its products:
    S_k applied to a jet is steered_jet at theta_k; S_k is orthogonal on the first-order block
    and a rotation by 2 theta_k of (u_xx - u_yy, 2 u_xy)/2 leaves the Laplacian alone."""
    torch.manual_seed(n)
    cos, sin = orientation_cos_sin(n, torch.float64, None)
    matrices = steering_matrices(cos, sin)
    assert matrices.shape == (n, 6, 6)
    spatial = torch.randn(6, 5, 7, dtype=torch.float64)
    expected = steered_jet(spatial, cos, sin)                           # (N, 6, 5, 7)
    torch.testing.assert_close(torch.einsum("kij,jhw->kihw", matrices, spatial), expected,
                               rtol=0, atol=1e-14)
    first = matrices[:, 1:3, 1:3]
    torch.testing.assert_close(first @ first.transpose(1, 2), torch.eye(2, dtype=torch.float64)
                               .expand(n, 2, 2), rtol=0, atol=1e-15)
    laplacian = torch.tensor([0, 0, 0, 1, 0, 1], dtype=torch.float64)
    torch.testing.assert_close(laplacian @ matrices, laplacian.expand(n, 6), rtol=0, atol=1e-15)


def test_orientation_counts_must_be_positive_multiples_of_four():
    assert check_orientations(8) == 8
    for bad in (0, 6, -4, 8.0, True):
        with pytest.raises(ConfigError, match="orientations"):
            check_orientations(bad)


def test_the_image_pde_layer_refuses_the_m2_set_with_a_clear_error():
    from eqpdenet.pde import InvariantRHS, LayerConfig, available_invariant_sets

    assert "m2" in available_invariant_sets("m2") and "m2" not in available_invariant_sets("plane")
    with pytest.raises(ConfigError, match="fields on m2"):
        LayerConfig(invariants=["se2", "m2"])
    with pytest.raises(ConfigError, match="lifted_pde"):
        InvariantRHS("m2")


@pytest.mark.parametrize("n", [0, 1, 2, 6])
def test_the_jet_alone_refuses_orientations_that_are_not_a_positive_multiple_of_4(n):
    """N = 0 divided by zero in the orientation differences; 1, 2 and 6 were taken silently,
    where the model and the right-hand sides refuse them."""
    from eqpdenet.errors import InputError
    from eqpdenet.pde.m2 import M2Jet

    with pytest.raises(InputError, match=rf"positive multiple of 4 orientations .*got shape "
                                         rf"\(1, 2, {n}, 9, 9\)"):
        M2Jet(1.0)(torch.rand(1, 2, n, 9, 9))
