"""A trained classifier's logits and predictions over many images, where its PDEs may blow up on
a few of them.

An explicit Euler scheme that is stable on the training images can still overflow on an image
far from them (a learned ``F`` of degree 2 or 3 grows without bound). The models then raise
:class:`~eqpdenet.errors.NonFiniteStateError` for the whole batch, rightly: their logits would be
NaN. A measurement over thousands of images should neither stop there nor score NaN logits as
some class: the images whose state blows up are found (by halving the failing batch, which in
evaluation mode changes no image's logits: every image is computed on its own) and given no
prediction, :data:`NO_PREDICTION`, which no label equals. Callers count them as errors and say
how many (``evaluate``, ``train`` and the sweeps record ``non_finite_images``). Logits that are
NaN or infinite without an error (a model without PDEs whose weights grew huge) are treated the
same way.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> predicted, failed = predictions(model, torch.rand(5, 1, 2, 2))
    >>> predicted.shape, int(failed.sum())
    (torch.Size([5]), 0)
"""

from __future__ import annotations

import itertools
import numbers

import torch
from torch import Tensor, nn

from ..errors import ConfigError, NonFiniteStateError

__all__ = ["EVALUATION_BATCH", "NO_PREDICTION", "logits_by_image", "predictions"]

#: Images per forward pass when a model is evaluated. Small on purpose: at 1,000 images the
#: intermediate maps of the deep models are tens of MB each, allocated afresh by every operation
#: and page-faulted in by the kernel (more system time than computing, for ``invariant_pde``). At
#: 128 the same predictions took 0.21-0.66 of the CPU time, and the same logits bit for bit but
#: for ``invariant_pde`` (3e-5 apart on random images), for the seed-0 checkpoints of
#: ``results/benchmark-full`` (``benchmarks/evaluation_batch.py``, docs/performance.md).
EVALUATION_BATCH = 128

#: The prediction of an image whose logits are not finite (no class is ``-1``).
NO_PREDICTION = -1


def _blocks(model: nn.Module, batch: Tensor, errors: list) -> list[Tensor | None]:
    """Logits of ``batch`` as consecutive blocks, ``None`` for each single image on which the
    model raised :class:`NonFiniteStateError` (the errors appended to ``errors``)."""
    try:
        return [model(batch)]
    except NonFiniteStateError as error:
        if len(batch) == 1:
            errors.append(error)
            return [None]
        half = len(batch) // 2
        return _blocks(model, batch[:half], errors) + _blocks(model, batch[half:], errors)


def _check_batch_size(batch_size) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` unless ``batch_size`` is a whole number >= 1 (0
    gave a bare error of ``range()``, a negative one no batch at all)."""
    if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1):
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")


def _device_of(model: nn.Module, images: Tensor) -> torch.device:
    """Where ``model`` computes: the device of its first parameter or buffer; a model with
    neither (``nn.Flatten()``, a fixed classifier) computes wherever its input is."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return images.device if tensor is None else tensor.device


@torch.no_grad()
def logits_by_image(model: nn.Module, images: Tensor,
                    batch_size: int = EVALUATION_BATCH) -> tuple[Tensor, Tensor]:
    """Logits ``(N, K)`` of ``model`` in evaluation mode on ``images`` ``(N, C, H, W)`` (moved
    to the model's device: that of its first parameter or buffer, else the images' own; in
    batches of ``batch_size >= 1``; returned on the CPU) and a boolean mask ``(N,)`` of the
    images whose logits are not finite: those on which the model raised
    :class:`~eqpdenet.errors.NonFiniteStateError` (their rows are NaN) or returned NaN or inf.

    Raises the model's :class:`~eqpdenet.errors.NonFiniteStateError` if it blew up on every
    image (there are then no logits, not even their number). The model's training mode is
    restored afterwards.
    """
    _check_batch_size(batch_size)
    device = _device_of(model, images)
    was_training = model.training
    model.eval()
    errors: list[NonFiniteStateError] = []
    try:
        blocks = [block for i in range(0, len(images), batch_size)
                  for block in _blocks(model, images[i:i + batch_size].to(device), errors)]
    finally:
        model.train(was_training)
    computed = [b for b in blocks if b is not None]
    if errors and not computed:
        raise errors[0]
    if not computed:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.bool)
    width, dtype = computed[0].shape[1], computed[0].dtype
    nan = torch.full((1, width), float("nan"), dtype=dtype)
    logits = torch.cat([nan if b is None else b.cpu() for b in blocks])
    return logits, ~torch.isfinite(logits).all(1)


@torch.no_grad()
def predictions(model: nn.Module, images: Tensor,
                batch_size: int = EVALUATION_BATCH) -> tuple[Tensor, Tensor]:
    """Predicted classes ``(N,)`` (int64) of ``model`` in evaluation mode on ``images``
    ``(N, C, H, W)``, and the mask ``(N,)`` of images without a prediction
    (:data:`NO_PREDICTION` there); errors as :func:`logits_by_image` (a model that blows up on
    every image has no predictions to give: its error)."""
    logits, failed = logits_by_image(model, images, batch_size)
    if not len(images):
        return torch.zeros(0, dtype=torch.int64), failed
    return torch.where(failed, NO_PREDICTION, logits.argmax(1)), failed
