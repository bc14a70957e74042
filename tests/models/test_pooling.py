"""Anti-aliased downsampling: exact symmetry on the grid, its frequency response, sizes."""

import math

import pytest
import torch

from eqpdenet.models import InvariantPDEConfig, InvariantPDENet
from eqpdenet.models.pooling import AntiAliasedDownsample, downsampled_size, gaussian_lowpass_weights
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


def test_deep_model_with_blur_pooling_keeps_quarter_turn_invariance():
    torch.manual_seed(0)
    net = InvariantPDENet(InvariantPDEConfig(channels=[4, 6, 6], blocks=[1, 1, 1],
                                             downsample="blur")).double().eval()
    assert sum(isinstance(m, AntiAliasedDownsample) for m in net.modules()) == 2
    assert_equivariant(net, torch.rand(2, 1, 28, 28, dtype=torch.float64), invariant=True)
