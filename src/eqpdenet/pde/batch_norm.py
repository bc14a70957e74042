"""Batch statistics of fields, and a batch norm as the per-channel affine map it applies.

The lifted model's Euler steps need, besides the normalised batch, what the batch norm does to
one more point (the fields of a blank image, ``boundary = "background"``), and its fused update
kernel takes the normalisation as a per-channel ``scale`` and ``shift``. Both need the batch's
mean and variance as differentiable tensors. ``torch.var_mean`` over the batch and length axes
of a ``(B, C, L)`` tensor is slow on the CPU (a Welford reduction across strided axes: 15 ms
for ``(64, 8, 6272)`` on one thread, where a sum takes 1): :func:`batch_statistics` computes
the same mean and biased variance by two passes (the mean, then the mean square deviation from
it, as accurate as Welford's for data far from zero) and its backward pass in one, about 4 times
faster forward and backward together (``benchmarks/bench_m2_batchnorm.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import batched, vmapped
from ..errors import InputError
from ..kernels.op import transform_reason

__all__ = ["batch_norm_affine", "batch_norm_affine_of", "batch_norm_at", "batch_statistics"]


class _BatchStatistics(torch.autograd.Function):
    """:func:`batch_statistics`'s mean and biased variance with a one-pass backward. A new-style
    Function (``setup_context``), with a generated vmap rule: ``torch.func`` transforms take it
    (``vmap`` computes the statistics of each sample's batch), and so does a batched gradient
    (``is_grads_batched``), through an out-of-place backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor):
        mean = x.mean(dim=(0, 2))
        # pow_(2), which square_ is, has a batching rule (square_ has none: a slow fallback)
        var = (x - mean[:, None]).pow_(2).mean(dim=(0, 2))
        return mean, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[0])

    @staticmethod
    def backward(ctx, grad_mean: Tensor | None, grad_var: Tensor | None):
        x, mean = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        # d mean / dx = 1 / n, d var / dx = 2 (x - mean) / n (the mean's own dependence on x
        # drops out: the deviations sum to zero)
        grad = (grad_mean / count)[:, None].expand_as(x) if grad_mean is not None else None
        if grad_var is None:
            return grad
        if torch.is_grad_enabled() or any(batched(t) for t in (x, mean, grad_mean, grad_var)):
            # create_graph=True: the same formula out of place, so that autograd differentiates
            # it (a gradient penalty); mean is this function's output, so its dependence on x
            # enters the second derivative through it. Batched (vmap, is_grads_batched): an
            # in-place update of an unbatched tensor by a batched one is what vmap cannot do.
            deviation = (x - mean[:, None]) * ((2.0 / count) * grad_var[:, None])
            return deviation if grad is None else deviation + grad
        deviation = (x - mean[:, None]).mul_((2.0 / count) * grad_var[:, None])
        return deviation if grad is None else deviation.add_(grad)


def _plain_batch_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """The same two passes in plain operators, differentiated by autograd: what a forward-mode
    derivative (``torch.func.jvp``, dual tensors) and higher derivatives under ``torch.func``
    go through."""
    mean = x.mean(dim=(0, 2))
    return mean, (x - mean[:, None]).square().mean(dim=(0, 2))


def batch_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of every channel of ``x`` ``(B, C, L)`` over its ``B L``
    values: ``(C,)`` and ``(C,)``, differentiable in ``x`` (what a training-mode batch norm
    normalises by; equal to ``torch.var_mean(x, dim=(0, 2), correction=0)`` to rounding). Under
    ``torch.func`` transforms and forward-mode AD, the same values through plain operators."""
    if x.dim() != 3:
        raise ValueError(f"batch_statistics needs a (B, C, L) tensor, got shape {tuple(x.shape)}")
    if transform_reason(x) is not None:
        return _plain_batch_statistics(x)
    return _BatchStatistics.apply(x)


def _uses_batch_statistics(norm: nn.modules.batchnorm._BatchNorm) -> bool:
    # torch.nn.modules.batchnorm's rule: batch statistics in training mode, and in evaluation
    # mode without running statistics
    return norm.training or (norm.running_mean is None and norm.running_var is None)


def batch_norm_affine(norm: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
    """The batch norm ``norm`` as the affine map it applies to ``batch`` ``(B, C, L)``:
    ``(scale, shift)``, each ``(C,)``, such that ``norm(batch) = scale batch + shift`` per channel
    (``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean scale``), differentiable as the
    module is; ``(1, 0)`` for an :class:`~torch.nn.Identity`. Like a call of the module, it
    updates the running statistics in training mode (momentum, the unbiased variance, the
    cumulative average for ``momentum=None``), so that ``norm`` then evaluates as if it had been
    called on ``batch``. An empty batch has no statistics: it is mapped as in evaluation mode
    and leaves the running statistics as they are."""
    channels = batch.shape[1]
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        one = torch.ones(channels, dtype=batch.dtype, device=batch.device)
        return one, torch.zeros_like(one)
    if _uses_batch_statistics(norm) and batch.numel():
        return batch_norm_affine_of(norm, *batch_statistics(batch), batch.numel() // channels)
    return _affine(norm, *_running_statistics(norm, batch))


def batch_norm_affine_of(norm: nn.Module, mean: Tensor, var: Tensor, count: int
                         ) -> tuple[Tensor, Tensor]:
    """:func:`batch_norm_affine` for a batch known by its statistics alone: ``mean`` and biased
    ``var`` ``(C,)`` of ``count`` values per channel (computed by the caller some other way, e.g.
    from the moments of what the batch is a linear map of). Used where the module would use
    batch statistics (training mode, or no running statistics) and ``count > 0``; else the
    running statistics, as :func:`batch_norm_affine`. Updates the running statistics in training
    mode as a call of the module on such a batch would."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        one = torch.ones_like(mean)
        return one, torch.zeros_like(one)
    if not (_uses_batch_statistics(norm) and count):
        return _affine(norm, *_running_statistics(norm, mean[None, :, None]))
    if norm.training and norm.track_running_stats and norm.running_mean is not None:
        _update_running_statistics(norm, mean.detach(), var.detach(), count)
    return _affine(norm, mean, var)


def _running_statistics(norm, batch: Tensor) -> tuple[Tensor, Tensor]:
    # (0, 1) where the module keeps none (track_running_stats=False) and the batch is empty
    if norm.running_mean is None or norm.running_var is None:
        return batch.new_zeros(batch.shape[1]), batch.new_ones(batch.shape[1])
    return norm.running_mean, norm.running_var


def _affine(norm, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
        return scale, norm.bias - mean * scale
    return scale, -mean * scale


@torch.no_grad()
def _update_running_statistics(norm, mean: Tensor, var: Tensor, count: int) -> None:
    if vmapped(mean) and not vmapped(norm.running_mean):
        # what torch's own batch norm refuses, with the way out named
        raise InputError("a batch norm in training mode under torch.func.vmap would update its "
                         "running statistics in place with per-sample values; evaluate the "
                         "model (model.eval()), or first call "
                         "torch.func.replace_all_batch_norm_modules_(model) so that it keeps none")
    norm.num_batches_tracked.add_(1)
    momentum = (1.0 / float(norm.num_batches_tracked) if norm.momentum is None
                else norm.momentum)
    unbiased = var * (count / max(count - 1, 1))
    norm.running_mean.mul_(1 - momentum).add_(mean.to(norm.running_mean.dtype), alpha=momentum)
    norm.running_var.mul_(1 - momentum).add_(unbiased.to(norm.running_var.dtype), alpha=momentum)


def batch_norm_at(norm: nn.Module, batch: Tensor, value: Tensor) -> Tensor:
    """What the batch norm ``norm`` maps the point ``value`` ``(C,)`` to when it normalises
    ``batch`` ``(B, C, L)``: with the batch's statistics (biased variance) in training mode or
    without running statistics, else with the running ones; ``value`` itself for an
    :class:`~torch.nn.Identity`. Differentiable in the statistics, as the batch norm is; it does
    not touch the running statistics (the module's own call on ``batch`` does that). An empty
    batch, as in :func:`batch_norm_affine`, is mapped with the running statistics."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return value
    if _uses_batch_statistics(norm) and batch.numel():
        mean, var = batch_statistics(batch)
    else:
        mean, var = _running_statistics(norm, batch)
    scale, shift = _affine(norm, mean, var)
    return value * scale + shift
