"""The fully connected parts: the paper's ``in-h-h-classes`` perceptron and the FCNN baseline.

FCNN is the paper's baseline (Table 2): images flattened into a ``784-h-h-10`` perceptron with
biases and ReLU, ``784h + h + h^2 + h + 10h + 10`` parameters (13002, 26506, 55050, 118282, 269322
for h = 16 ... 256).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..checks import check_images, require_int, require_positive

__all__ = ["FCNN", "Standardize", "count_parameters", "perceptron"]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def perceptron(in_features: int, hidden: int, classes: int = 10) -> nn.Sequential:
    """``in-h-h-classes`` with biases and ReLU (the paper's fully connected part)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, classes),
    )


class Standardize(nn.Module):
    """Fixed ``(x - mean) / std``; no parameters (mean and std are configuration)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.mean, self.std = float(mean), require_positive(std, "input_std")

    def forward(self, x: Tensor) -> Tensor:
        if self.mean == 0.0 and self.std == 1.0:
            return x
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class FCNN(nn.Module):
    """The baseline: images ``(B, C, H, W)`` flattened into a ``CHW-h-h-classes`` perceptron.

    ``forward``: images ``(B, in_channels, image_size, image_size)`` -> logits ``(B, classes)``.

    Example:
        >>> count_parameters(FCNN(hidden=16))
        13002
    """

    def __init__(self, hidden: int = 256, image_size: int = 28, in_channels: int = 1,
                 classes: int = 10, input_mean: float = 0.0, input_std: float = 1.0):
        super().__init__()
        self.image_size = require_int(image_size, "image_size", 1)
        self.in_channels = require_int(in_channels, "in_channels", 1)
        self.standardize = Standardize(input_mean, input_std)
        self.mlp = perceptron(in_channels * image_size**2, require_int(hidden, "hidden", 1),
                              require_int(classes, "classes", 1))

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, "images", channels=self.in_channels,
                     size=(self.image_size, self.image_size))
        return self.mlp(self.standardize(images).flatten(1))
