"""Random affine augmentation of training batches, reproducible from a seed.

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

from ..checks import check_images, require, require_nonnegative, require_positive
from ..geometry import affine_warp, rotation_matrix
from .scenarios import hashed_generator

__all__ = ["AffineAugmentation", "augment_generator"]


def augment_generator(seed: int) -> torch.Generator:
    """The augmentation's stream for training seed ``seed``: derived from it, independent of the
    stream that orders the batches (and of the scenarios')."""
    return hashed_generator(f"eqpdenet.augment:{int(seed)}")


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
        """The batch ``(B, C, H, W)``, each image warped by its own draw; the identity
        augmentation returns ``images`` itself and consumes no draw."""
        if self.is_identity:
            return images
        check_images(images)
        matrix, shift = self.draw(images.shape[0], generator)
        with torch.no_grad():
            return affine_warp(images, matrix.to(images.device), shift.to(images.device))
