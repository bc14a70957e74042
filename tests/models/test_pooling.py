"""Anti-aliased downsampling: exact symmetry on the grid, its frequency response, sizes."""

import math

import pytest
import torch

from eqpdenet.models import InvariantPDEConfig, InvariantPDENet
from eqpdenet.models.pooling import (
    AntiAliasedDownsample,
    OrientationMaxPool,
    downsampled_size,
    gaussian_lowpass_weights,
)
from helpers import assert_equivariant


@pytest.mark.parametrize("size", [6, 7, 14, 15])
@pytest.mark.parametrize("boundary", ["replicate", "zeros", "reflect", "circular"])
def test_commutes_with_quarter_turns_and_flips(size, boundary):
    torch.manual_seed(0)
    down = AntiAliasedDownsample(1.0, boundary)
    u = torch.rand(2, 3, 4, size, size, dtype=torch.float64)
    out = down(u)
    assert out.shape[-2:] == (downsampled_size(size),) * 2 == ((size + 1) // 2,) * 2
    for k in (1, 2, 3):
        torch.testing.assert_close(down(torch.rot90(u, k, (-2, -1))),
                                   torch.rot90(out, k, (-2, -1)), rtol=0, atol=1e-13)
    torch.testing.assert_close(down(u.flip(-1)), out.flip(-1), rtol=0, atol=1e-13)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.5])
def test_frequency_response_is_the_gaussians_times_the_cell_average(sigma):
    # u = cos(w x) along the columns of an even-sized image: away from the border the output is
    # cos(w x') scaled by sum_k g_k cos(w k) (the sampled Gaussian's response, within 1 % of the
    # continuous exp(-sigma^2 w^2 / 2) from sigma = 1 on; at 0.7 the sampling aliases) times
    # cos(w / 2) (the 2x2 average of samples half a pixel either side of the cell centre x').
    down = AntiAliasedDownsample(sigma)
    weights = gaussian_lowpass_weights(sigma)
    offsets = torch.arange(weights.numel(), dtype=torch.float64) - weights.numel() // 2
    x = torch.arange(64, dtype=torch.float64)
    for w in (0.3, 1.0, math.pi / 2, 2.5):
        response = float((weights * torch.cos(w * offsets)).sum())
        assert sigma < 1 or abs(response - math.exp(-0.5 * (sigma * w) ** 2)) < 0.01
        u = torch.cos(w * x).expand(64, 64)[None]
        out = down(u)[0, 16, 8:24]
        centres = 2 * torch.arange(8, 24, dtype=torch.float64) + 0.5
        expected = response * math.cos(w / 2) * torch.cos(w * centres)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    if sigma == 1.0:  # what the default is for: the band above the new Nyquist frequency damped
        assert (weights * torch.cos(math.pi / 2 * offsets)).sum() < 0.3


def test_constants_pass_unchanged_and_there_are_no_parameters():
    down = AntiAliasedDownsample(1.3)
    for size in (5, 8):
        torch.testing.assert_close(down(torch.full((1, size, size), 2.5, dtype=torch.float64)),
                                   torch.full((1, (size + 1) // 2, (size + 1) // 2), 2.5,
                                              dtype=torch.float64))
    assert list(down.parameters()) == [] and list(down.state_dict()) == []


def test_rejects_a_non_positive_sigma_and_an_unknown_boundary():
    with pytest.raises(ValueError, match="sigma"):
        AntiAliasedDownsample(0.0)
    with pytest.raises(ValueError, match="boundary"):
        AntiAliasedDownsample(1.0, "mirror")


def test_a_low_pass_wider_than_any_map_is_refused_before_its_filter_is_built():
    """sigma = 1e7 built a filter of 6e7 taps (seconds, then minutes and out of memory per map
    size); every model names its own field."""
    from eqpdenet.errors import ConfigError
    from eqpdenet.models import LiftedPDEConfig
    from eqpdenet.models.pooling import MAX_LOWPASS_SIGMA

    with pytest.raises(ConfigError, match=r"downsample sigma: must be at most 10000 pixels.*1e\+07"):
        AntiAliasedDownsample(1e7)
    widest = AntiAliasedDownsample(MAX_LOWPASS_SIGMA)  # the bound itself is taken
    ones = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(widest(ones), torch.ones(1, 1, 3, 3, dtype=torch.float64))
    for make, field in ((InvariantPDEConfig, "invariant_pde.downsample_sigma"),
                        (LiftedPDEConfig, "lifted_pde.downsample_sigma")):
        with pytest.raises(ConfigError, match=rf"{field}: must be at most 10000 pixels"):
            make(downsample_sigma=2e4)


def test_deep_model_with_blur_pooling_keeps_quarter_turn_invariance():
    torch.manual_seed(0)
    net = InvariantPDENet(InvariantPDEConfig(channels=[4, 6, 6], blocks=[1, 1, 1],
                                             downsample="blur")).double().eval()
    assert sum(isinstance(m, AntiAliasedDownsample) for m in net.modules()) == 2
    assert_equivariant(net, torch.rand(2, 1, 28, 28, dtype=torch.float64), invariant=True)


@pytest.mark.parametrize("ratio, n", [(1, 8), (2, 8), (3, 12), (4, 16), (2, 4), (4, 4), (5, 20)])
def test_orientation_pooling_is_the_maximum_over_half_a_new_bin(ratio, n):
    # new orientation j is old orientation j r; the window is every old orientation within r / 2
    # old steps of it (both ends for even r), periodic
    torch.manual_seed(0)
    u = torch.randn(2, 3, n, 5, 4, dtype=torch.float64)
    pool = OrientationMaxPool(ratio)
    out = pool(u)
    assert out.shape == (2, 3, n // ratio, 5, 4)
    for j in range(n // ratio):
        members = [(j * ratio + d) % n for d in range(-(ratio // 2), ratio // 2 + 1)]
        torch.testing.assert_close(out[:, :, j], u[:, :, members].amax(2), rtol=0, atol=0)
    assert torch.equal(pool.window(n)[-1], torch.tensor(members))


@pytest.mark.parametrize("ratio, n", [(2, 8), (4, 16), (3, 12)])
def test_orientation_pooling_commutes_with_quarter_turns_and_reflections(ratio, n):
    # a quarter turn: rot90 of the plane and a shift of the orientations by N / 4 (old) or
    # N / (4 r) (new); a reflection of the orientation axis (k -> -k) maps windows onto windows
    torch.manual_seed(1)
    u = torch.randn(2, 3, n, 6, 6, dtype=torch.float64)
    pool = OrientationMaxPool(ratio)
    turned = torch.rot90(u, 1, (-2, -1)).roll(n // 4, 2)
    expected = torch.rot90(pool(u), 1, (-2, -1)).roll(n // (4 * ratio), 2)
    assert torch.equal(pool(turned), expected)
    mirrored = u[:, :, (-torch.arange(n)) % n]
    assert torch.equal(pool(mirrored), pool(u)[:, :, (-torch.arange(n // ratio)) % (n // ratio)])


@pytest.mark.parametrize("ratio", [2, 3, 4])
def test_orientation_pooling_gradient_goes_to_the_maximiser(ratio):
    # the backward writes each output's gradient into its window's maximiser (distinct values:
    # no ties), what autograd gives for the gather-and-amax formulation, and passes gradcheck
    torch.manual_seed(2)
    n = 4 * ratio
    u = torch.randn(2, 2, n, 3, 3, dtype=torch.float64, requires_grad=True)
    pool = OrientationMaxPool(ratio)
    window = pool.window(n)
    reference = u[:, :, window.flatten()].view(2, 2, *window.shape, 3, 3).amax(3)
    grad = torch.randn_like(reference)
    (expected,) = torch.autograd.grad(reference, u, grad)
    (got,) = torch.autograd.grad(pool(u), u, grad)
    assert torch.equal(got, expected)
    assert torch.autograd.gradcheck(pool, (u,))


@pytest.mark.parametrize("ratio", [2, 3])
def test_orientation_pooling_second_derivatives_are_exact(ratio):
    # a gradient penalty differentiates the backward pass (create_graph=True); distinct values
    u = torch.randperm(2 * 3 * 6 * 4 * 4, generator=torch.Generator().manual_seed(5)).to(
        torch.float64).view(2, 3, 6, 4, 4).requires_grad_(True)
    assert torch.autograd.gradgradcheck(OrientationMaxPool(ratio), (u,))



def test_orientation_pooling_ties_send_the_whole_gradient_to_one_member():
    u = torch.zeros(1, 1, 8, 1, 1, dtype=torch.float64, requires_grad=True)
    OrientationMaxPool(2)(u).sum().backward()
    assert float(u.grad.sum()) == 4.0 and set(u.grad.flatten().tolist()) <= {0.0, 1.0, 2.0}


def test_orientation_pooling_rejects_bad_ratios_and_shapes():
    for ratio in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            OrientationMaxPool(ratio)
    with pytest.raises(ValueError, match="multiple of 3"):
        OrientationMaxPool(3)(torch.zeros(1, 1, 8, 2, 2))


def test_orientation_pooling_compiles_into_one_graph_with_its_gradient():
    torch.manual_seed(3)
    pool = OrientationMaxPool(2)
    compiled = torch.compile(pool, backend="eager", fullgraph=True)  # no C++ build needed
    u = torch.randn(2, 3, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    out = compiled(u)
    assert torch.equal(out, pool(u))
    grad = torch.randn_like(out)
    assert torch.equal(torch.autograd.grad(out, u, grad)[0],
                       torch.autograd.grad(pool(u), u, grad)[0])
