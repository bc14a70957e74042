"""Batch statistics and the batch norm as an affine map (eqpdenet.pde.batch_norm)."""

import copy

import pytest
import torch
from torch import nn

from eqpdenet.pde.batch_norm import batch_norm_affine, batch_norm_at, batch_statistics


def test_batch_statistics_are_the_mean_and_biased_variance_over_batch_and_length():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 50, dtype=torch.float64, generator=generator)
    mean, var = batch_statistics(x)
    flat = x.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(mean, flat.sum(1) / flat.shape[1], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(var, ((flat - flat.mean(1, keepdim=True)) ** 2).mean(1),
                               rtol=1e-13, atol=1e-14)


def test_batch_statistics_stay_accurate_far_from_zero():
    # sum of squares minus the squared mean would lose every digit here in float32 (mean 1e4,
    # std 1: the variance is 1e-8 of the mean square); the two-pass form keeps about 6
    generator = torch.Generator().manual_seed(1)
    x64 = 1e4 + torch.randn(8, 3, 400, dtype=torch.float64, generator=generator)
    mean, var = batch_statistics(x64.float())
    want_var, want_mean = torch.var_mean(x64, dim=(0, 2), correction=0)
    torch.testing.assert_close(mean.double(), want_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), want_var, rtol=1e-3, atol=0)


def test_batch_statistics_gradient_is_exact():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(batch_statistics, (x,))
    # one of the two outputs unused: its gradient is None in the backward pass
    assert torch.autograd.gradcheck(lambda t: batch_statistics(t)[0], (x,))
    assert torch.autograd.gradcheck(lambda t: batch_statistics(t)[1], (x,))


def test_batch_statistics_second_derivatives_are_exact():
    # a gradient penalty differentiates the backward pass (create_graph=True)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradgradcheck(batch_statistics, (x,))
    assert torch.autograd.gradgradcheck(lambda t: batch_statistics(t)[1], (x,))


def test_batch_statistics_refuse_other_shapes():
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        batch_statistics(torch.zeros(2, 3))


@pytest.mark.parametrize("options", [
    {}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
])
@pytest.mark.parametrize("training", [True, False])
def test_affine_map_is_what_the_module_applies_and_updates_the_same_statistics(options, training):
    generator = torch.Generator().manual_seed(3)
    norm = nn.BatchNorm1d(4, **options).double()
    if norm.affine:
        norm.weight.data.normal_(generator=generator)
        norm.bias.data.normal_(generator=generator)
    if norm.track_running_stats:
        norm.running_mean.uniform_(-1, 1, generator=generator)
        norm.running_var.uniform_(0.5, 2, generator=generator)
        norm.num_batches_tracked.fill_(3)
    norm.train(training)
    module = copy.deepcopy(norm)
    for _ in range(2):  # twice: the running statistics are used and updated in turn
        batch = 2 + 3 * torch.randn(5, 4, 7, dtype=torch.float64, generator=generator)
        batch.requires_grad_(True)
        scale, shift = batch_norm_affine(norm, batch)
        got = scale[:, None] * batch + shift[:, None]
        want = module(batch)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        weights = torch.randn(want.shape, dtype=torch.float64, generator=generator)
        parameters, module_parameters = list(norm.parameters()), list(module.parameters())
        grads = torch.autograd.grad((got * weights).sum(), [batch, *parameters])
        want_grads = torch.autograd.grad((want * weights).sum(), [batch, *module_parameters])
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for (name, a), (_, b) in zip(norm.named_buffers(), module.named_buffers(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0, msg=name)


def test_identity_is_the_unit_affine_map():
    scale, shift = batch_norm_affine(nn.Identity(), torch.zeros(2, 3, 4))
    assert torch.equal(scale, torch.ones(3)) and torch.equal(shift, torch.zeros(3))


def test_batch_norm_at_the_shift_point_leaves_the_running_statistics_alone():
    norm = nn.BatchNorm1d(3)
    batch = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(4))
    before = [b.clone() for b in norm.buffers()]
    _, shift = batch_norm_affine(copy.deepcopy(norm), batch)
    torch.testing.assert_close(batch_norm_at(norm, batch, torch.zeros(3)), shift)
    for a, b in zip(norm.buffers(), before, strict=True):
        assert torch.equal(a, b)
