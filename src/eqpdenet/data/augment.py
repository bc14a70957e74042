"""Random affine augmentation of training batches, reproducible from a seed; and the blurred
copies of the blur-consistency penalty (:class:`BlurConsistency`).

Each training image is pushed forward by its own similarity ``p -> s R(theta) p + t`` about the
image centre (conventions of :mod:`eqpdenet.geometry`: pixels, ``y`` up, bilinear resampling with
zero fill), with

    t_x, t_y ~ U(-max_shift, max_shift) px,  theta ~ U(-a, a) degrees,  s ~ U(min_scale, max_scale).

The draws come from a CPU :class:`torch.Generator` in a fixed order (``shift_x``, ``shift_y``,
``angle``, ``scale``, all in float64, all ``B`` draws of one kind at once), so the same generator
state gives bit-identical batches on any device. The warp runs without gradient in the images'
dtype on their device.

Why a data module: augmentation shows a model the perturbations it should be robust to, which is
the opposite of robustness *by construction*; the benchmark keeps both kinds of entry and names
them (docs/benchmark.md), so a reader can tell what the architecture gives from what the data
gives.

Example:
    >>> import torch
    >>> augment = AffineAugmentation(max_shift=2.0)
    >>> images = torch.zeros(4, 1, 28, 28)
    >>> augment(images, torch.Generator().manual_seed(0)).shape
    torch.Size([4, 1, 28, 28])
    >>> AffineAugmentation().is_identity
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import check_images, require, require_int, require_nonnegative, require_positive
from ..geometry import affine_warp, rotation_matrix
from .scenarios import hashed_generator

__all__ = ["AffineAugmentation", "BlurConsistency", "augment_generator", "blur_generator", "gaussian_blur",
           "relative_change"]


def augment_generator(seed: int) -> torch.Generator:
    """The augmentation's stream for training seed ``seed``: derived from it, independent of the
    stream that orders the batches (and of the scenarios')."""
    return hashed_generator(f"eqpdenet.augment:{require_int(seed, 'seed')}")


def blur_generator(seed: int) -> torch.Generator:
    """The blur-consistency penalty's stream for training seed ``seed`` (:class:`BlurConsistency`):
    independent of the batch order's and the augmentation's, so turning the penalty on leaves
    both unchanged."""
    return hashed_generator(f"eqpdenet.blur:{require_int(seed, 'seed')}")


@dataclass(frozen=True)
class AffineAugmentation:
    """Random similarities of training images (module docstring); the defaults change nothing.

    Attributes:
        max_shift: largest translation along each axis, in pixels (``>= 0``).
        max_angle_degrees: largest rotation either way, in degrees (``0 <= a <= 180``).
        min_scale, max_scale: range of the scale factor (``0 < min_scale <= max_scale``); a factor
            below 1 shrinks the digit.
    """

    max_shift: float = 0.0
    max_angle_degrees: float = 0.0
    min_scale: float = 1.0
    max_scale: float = 1.0

    def __post_init__(self):
        require_nonnegative(self.max_shift, "train.augment.max_shift")
        angle = require_nonnegative(self.max_angle_degrees, "train.augment.max_angle_degrees")
        require(angle <= 180, "train.augment.max_angle_degrees", f"must be <= 180 degrees, got {angle}")
        low = require_positive(self.min_scale, "train.augment.min_scale")
        high = require_positive(self.max_scale, "train.augment.max_scale")
        require(low <= high, "train.augment.min_scale",
                f"must be <= train.augment.max_scale, got [{low}, {high}]")

    @property
    def is_identity(self) -> bool:
        """True when every draw is the identity map (no warp, no draw consumed)."""
        return self.max_shift == 0 and self.max_angle_degrees == 0 \
            and self.min_scale == 1 and self.max_scale == 1

    def draw(self, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(matrix (num, 2, 2), translation (num, 2))`` in float64 on the CPU: ``A = s R``, ``t``."""
        def uniform(low: float, high: float) -> Tensor:
            return low + (high - low) * torch.rand(num, generator=generator, dtype=torch.float64)

        shift = torch.stack([uniform(-self.max_shift, self.max_shift),
                             uniform(-self.max_shift, self.max_shift)], -1)
        angle = uniform(-self.max_angle_degrees, self.max_angle_degrees) * (math.pi / 180.0)
        factor = uniform(self.min_scale, self.max_scale)
        return factor[:, None, None] * rotation_matrix(angle, dtype=torch.float64), shift

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The batch ``(B, C, H, W)``, each image warped by its own draw (``B = 0``: an empty
        batch); the identity augmentation returns ``images`` itself and consumes no draw."""
        if self.is_identity:
            return images
        check_images(images)
        matrix, shift = self.draw(images.shape[0], generator)
        with torch.no_grad():
            return affine_warp(images, matrix.to(images.device), shift.to(images.device))


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Each image of ``images`` ``(B, C, H, W)`` convolved with a Gaussian of its own standard
    deviation ``sigma[b]`` (pixels, ``(B,)``, each ``> 0``), separably, with a zero boundary (the
    blank background of the scenarios and :mod:`eqpdenet.geometry`).

    The kernels are sampled Gaussians on ``-R .. R``, ``R = ceil(4 max(sigma))`` (what is cut
    off carries 6e-5 of the largest one's mass), normalised to sum 1, so a constant image away
    from the border is unchanged and the blur keeps each image's mass and centre of mass (up to
    what falls off the frame). Differentiable in ``images``. An empty batch (``B = 0``,
    ``sigma`` of shape ``(0,)``) gives an empty result of the same shape and dtype.

    Example (a point blurred at ``sigma = 1``: the peak is ``1 / (2 pi)`` to 5 digits, because
    the sampled Gaussian's sum is ``sqrt(2 pi)`` to 9):
        >>> point = torch.zeros(1, 1, 9, 9, dtype=torch.float64); point[0, 0, 4, 4] = 1
        >>> out = gaussian_blur(point, torch.tensor([1.0]))
        >>> round(float(out.sum()), 6), round(float(out[0, 0, 4, 4]), 4)
        (1.0, 0.1592)
    """
    check_images(images)
    require(sigma.shape == (images.shape[0],), "sigma",
            f"needs one standard deviation per image, shape ({images.shape[0]},), got {tuple(sigma.shape)}")
    require(bool((sigma > 0).all()) and bool(torch.isfinite(sigma).all()), "sigma",
            "every standard deviation must be a finite number of pixels > 0")
    batch, channels, height, width = images.shape
    if batch == 0:  # no sigma to take the largest of (sigma.max() of nothing is a raw error)
        return images.clone()
    radius = max(1, math.ceil(4.0 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=sigma.device)
    weights = torch.exp(-0.5 * (offsets / sigma.to(torch.float64)[:, None]) ** 2)
    weights = (weights / weights.sum(1, keepdim=True)).to(images.dtype).to(images.device)
    # One group per (image, channel): each image meets its own kernel.
    weights = weights.repeat_interleave(channels, 0)
    flat = images.reshape(1, batch * channels, height, width)
    groups = batch * channels
    flat = torch.nn.functional.conv2d(flat, weights[:, None, None, :], padding=(0, radius), groups=groups)
    flat = torch.nn.functional.conv2d(flat, weights[:, None, :, None], padding=(radius, 0), groups=groups)
    return flat.reshape(batch, channels, height, width)


@dataclass(frozen=True)
class BlurConsistency:
    """A training penalty on how far a model's logits move when its input is slightly blurred.

    Every bilinear resampling (a rotation, a sub-pixel shift, a rescaling) attenuates an image's
    finest detail; a model whose logits hang on that detail changes its answer under resampling
    although nothing about the digit changed (docs/lifted.md, "Where the 37°-and-back change
    comes from"). Of each training batch of ``B`` images, the first ``k = max(1, round(fraction
    B))`` get a copy blurred by :func:`gaussian_blur` with ``sigma ~ U(0, max_sigma]`` drawn per
    copy; the copies go through the model in the same forward pass as the batch, and the loss
    becomes

        cross_entropy(z_1..z_B, y) + weight * mean_{i <= k} |z~_i - z_i|^2 / |z_i|^2,

    ``z`` the logits of an image and ``z~`` those of its blurred copy: the relative squared change,
    which does not reward merely shrinking the logits (the robustness measure of the benchmark is
    the same ratio). Gradients flow through both terms of the ratio. The copies count in the
    batch-norm statistics of the step; the cross-entropy, the training accuracy and the history's
    ``loss`` are the batch's alone (the history adds ``blur_consistency``, the epoch's mean
    penalty before ``weight``).

    This is a training-side remedy, as weight decay and averaged weights are: it shows the model
    no transformed digit of a scenario (a blur is not a resampling, nothing is turned, scaled or
    moved), and the architecture is unchanged. Its σ draws come from their own stream
    (:func:`blur_generator`), so turning it on leaves the batch order and the augmentation's
    draws unchanged. A training step costs about ``1 + fraction`` times as much.

    Attributes:
        weight: ``weight`` above (``0 <= weight <= 1e30``); 0, the default, turns the penalty
            off and draws nothing.
        max_sigma: the largest blur, in pixels (``0 < max_sigma <= 5``); the default, 0.71, is the
            strongest blur a bilinear round trip applies (half a pixel there and back:
            ``[1/4, 1/2, 1/4]`` along each axis, variance 1/2).
        fraction: the share of each batch that gets a blurred copy (``0 < fraction <= 1``).
    """

    weight: float = 0.0
    max_sigma: float = 0.71
    fraction: float = 0.25

    def __post_init__(self):
        weight = require_nonnegative(self.weight, "train.blur_consistency.weight")
        # as train.lr's bound (app.config.MAX_LR): 1e39 is inf in float32, and the loss it
        # made inf was reported as a divergence that a smaller lr would cure (round 17)
        require(weight <= 1e30, "train.blur_consistency.weight",
                f"must be at most 1e30 (the penalty's weight in a float32 loss), got {weight!r}")
        sigma = require_positive(self.max_sigma, "train.blur_consistency.max_sigma")
        # Beyond a few pixels the "blurred copy" of a 28-pixel digit is no longer the same digit.
        require(sigma <= 5, "train.blur_consistency.max_sigma",
                f"must be <= 5 pixels (a blur that wipes out the digit), got {sigma}")
        fraction = require_positive(self.fraction, "train.blur_consistency.fraction")
        require(fraction <= 1, "train.blur_consistency.fraction",
                f"is the share of a batch that gets a blurred copy, at most 1, got {fraction}")

    @property
    def is_off(self) -> bool:
        """True when the penalty does nothing (``weight == 0``: no copy, no draw)."""
        return self.weight == 0

    def copies(self, batch: int) -> int:
        """How many images of a batch of ``batch`` get a blurred copy (0 when off)."""
        return 0 if self.is_off or batch == 0 else max(1, round(self.fraction * batch))

    def draw(self, num: int, generator: torch.Generator) -> Tensor:
        """``num`` standard deviations ``~ U(0, max_sigma]`` in pixels, float64 on the CPU."""
        return self.max_sigma * (1.0 - torch.rand(num, generator=generator, dtype=torch.float64))

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The blurred copies ``(k, C, H, W)`` of the first ``k = copies(B)`` images of the
        batch ``images`` ``(B, C, H, W)``, without gradient; ``k = 0`` (off) draws nothing."""
        count = self.copies(images.shape[0])
        if count == 0:
            return images[:0]
        sigma = self.draw(count, generator).to(images.device)
        with torch.no_grad():
            return gaussian_blur(images[:count], sigma)


def relative_change(logits: Tensor, changed: Tensor) -> Tensor:
    """``|changed_i - logits_i|^2 / |logits_i|^2`` for each row ``i`` of ``(N, classes)``
    logits, ``(N,)``; the denominator is kept from 0 by the smallest normal number of the dtype."""
    scale = logits.pow(2).sum(1).clamp_min(torch.finfo(logits.dtype).tiny)
    return (changed - logits).pow(2).sum(1) / scale
