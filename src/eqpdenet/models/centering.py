"""Translations handled by canonicalisation: every image moved so that its centre of mass sits at
the frame's centre, by whole pixels.

Why: a model whose layers are translation equivariant still sees where a digit sits in its
frame (the border crops its fields, the downsamplings sample a fixed grid). Trained on digits
that are all centred alike (MNIST centres each by its centre of mass), a rotation-invariant model
learns to use that placement: ``benchmarks/confusions.py`` finds that the lifted models and the
G-CNN tell an upright 6 from a 9 (the same shape turned by 180 degrees) through it, and a shift
by one pixel turns most of their errors into 6-9 confusions. Centring every image the same way,
in training and at test, removes the placement from what the model can see.

The map, for an image ``f`` of ``H x W`` pixels (``C`` channels): the weights
``w(p) = sum_c max(f_c(p), 0)`` (the raw input's zero is the blank background, as for
``lifted_pde.margin``), the centre of mass ``m = sum_p w(p) p / sum_p w(p)`` (rows and columns
numbered from 0), the shift ``s = round(((H - 1) / 2, (W - 1) / 2) - m)`` (half to even), and the
output ``f(p - s)``, zero where ``p - s`` falls outside the frame. A blank image is left as it is.

What is exact: ``m`` moves with the image, so every whole-pixel shift of an image that keeps its
content inside the frame gives the same output; quarter turns about the frame's centre commute
with the map (the centre of mass turns with the image, and rounding half to even is odd), but
for a centre of mass within float64 rounding (about 1e-15 px) of a half-pixel tie, where the
image and its turned copy may round apart (the sums run in float64 for this). What is not: a
shift by a fraction of a pixel leaves a residual of at most half a pixel per axis, and a rotation
by another angle resamples the image (its centre of mass moves by what the resampling changes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import center_of_mass

__all__ = ["CenterOfMass", "center_of_mass", "centering_shift", "recenter"]


def centering_shift(images: Tensor) -> Tensor:
    """``(B, 2)`` int64: the whole-pixel (row, column) shift that brings each image's centre of
    mass nearest the frame's centre (0 for a blank image)."""
    height, width = images.shape[-2:]
    mass = center_of_mass(images)
    # The centre enters as Python numbers: a tensor made from them would be a host-to-device
    # copy, which a CUDA graph cannot capture (the training step is captured on a GPU).
    offset = torch.round(torch.stack([(height - 1) / 2 - mass[:, 0],
                                      (width - 1) / 2 - mass[:, 1]], dim=1))
    return torch.nan_to_num(offset, nan=0.0).to(torch.int64)


def recenter(images: Tensor) -> Tensor:
    """``images`` ``(B, C, H, W)`` moved by :func:`centering_shift`, zero filled: the module
    doc's map. Differentiable in ``images`` (the shift itself is piecewise constant)."""
    batch, channels, height, width = images.shape
    shift = centering_shift(images)
    # Every shift is at most half the frame: padding by that much keeps every read inside.
    pad_rows, pad_cols = height // 2 + 1, width // 2 + 1
    padded = F.pad(images, (pad_cols, pad_cols, pad_rows, pad_rows))
    rows = (pad_rows - shift[:, :1]) + torch.arange(height, device=images.device)  # (B, H)
    cols = (pad_cols - shift[:, 1:]) + torch.arange(width, device=images.device)   # (B, W)
    index = rows[:, :, None] * padded.shape[-1] + cols[:, None, :]                 # (B, H, W)
    index = index.view(batch, 1, height * width).expand(batch, channels, height * width)
    return padded.flatten(2).gather(2, index).view(batch, channels, height, width)


class CenterOfMass(nn.Module):
    """:func:`recenter` as a layer: ``(B, C, H, W) -> (B, C, H, W)``, no parameters."""

    def forward(self, images: Tensor) -> Tensor:
        return recenter(images)
