"""The fully connected parts: the paper's ``in-h-h-classes`` perceptron and the FCNN baseline.

FCNN is the paper's baseline (Table 2): images flattened into a ``784-h-h-10`` perceptron with
biases and ReLU, ``784h + h + h^2 + h + 10h + 10`` parameters (13002, 26506, 55050, 118282, 269322
for h = 16 ... 256).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..checks import require_finite, require_int, require_positive
from ..errors import InputRangeWarning, InputTypeError, warn_at_caller
from .inputs import check_model_input

__all__ = ["FCNN", "RANGE_WARNING_STDS", "Standardize", "count_parameters", "perceptron"]

#: An input value further than this many ``input_std`` from ``input_mean`` is "far from what the
#: model was built for" (MNIST at 0-1 with the default statistics reaches 2.8; at 0-255, 827).
RANGE_WARNING_STDS = 20.0


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars (an :class:`~eqpdenet.errors.InputTypeError` unless
    ``module`` is an ``nn.Module``)."""
    if not isinstance(module, nn.Module):
        raise InputTypeError(f"count_parameters takes an nn.Module (a model or a layer), got "
                             f"{type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def perceptron(in_features: int, hidden: int, classes: int = 10) -> nn.Sequential:
    """``in-h-h-classes`` with biases and ReLU (the paper's fully connected part).

    Each width a whole number >= 1, else a :class:`~eqpdenet.errors.ConfigError` naming it, as
    :class:`FCNN` refuses them (a width of 0 built layers of no units, whose logits are the last
    bias whatever the input)."""
    in_features = require_int(in_features, "in_features", 1)
    hidden = require_int(hidden, "hidden", 1)
    classes = require_int(classes, "classes", 1)
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, classes),
    )


class Standardize(nn.Module):
    """Fixed ``(x - mean) / std``; no parameters (mean and std are configuration).

    :meth:`check_range` warns (:class:`~eqpdenet.errors.InputRangeWarning`, once per module) when
    inputs lie further than :data:`RANGE_WARNING_STDS` standard deviations from the mean.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.mean = require_finite(mean, "input_mean")
        self.std = require_positive(std, "input_std")
        self._range_warned = False

    def distance(self, low: float, high: float) -> float:
        """How many standard deviations the farthest of ``low``, ``high`` is from the mean."""
        return max(abs(low - self.mean), abs(high - self.mean)) / self.std

    def _describe(self, low: float, high: float) -> str:
        return (f"input values in [{low:.4g}, {high:.4g}], up to {self.distance(low, high):.3g} "
                f"standard deviations from the statistics the model was built for "
                f"(input_mean={self.mean:g}, input_std={self.std:g})")

    def _likely_cause(self, low: float, high: float) -> str:
        # Only values outside [0, 1] point at the scale; inside it, the statistics are what
        # does not fit. MNIST's defaults cannot be 20 stds from a pixel in [0, 1] (2.8 at
        # most), so a mean within [0, 1] and a std below 0.5 are the statistics of nearly
        # constant or sparse images: often the training split's own (model.standardize =
        # 'train', or 'auto' on a data set other than MNIST's), where recommending 'train'
        # named the setting already in force. Only a mean outside [0, 1] or a std above 0.5,
        # which no image in [0, 1] has, are certainly not the images' statistics.
        if high > 1.5 or low < -0.5:
            return "images at 0-255 instead of 0-1?"
        if 0.0 <= self.mean <= 1.0 and self.std < 0.5:
            return (f"the images lie in [0, 1] and input_std = {self.std:g} is small: the "
                    f"statistics of nearly constant or sparse images (most pixels at one value), "
                    f"as the training split's own are for such data (model.standardize = "
                    f"'train', or 'auto' on a data set other than MNIST's), put the rarer "
                    f"pixels that far out, which is expected of such data; statistics set by "
                    f"hand (model.standardize = 'fixed') that do not describe the images: "
                    f"model.standardize = 'train' takes the training split's")
        return ("the images lie in [0, 1] but input_mean/input_std do not describe them: "
                "model.standardize = 'train' takes the training split's")

    def check_range(self, low: float, high: float) -> None:
        """Warn once if inputs in ``[low, high]`` are far from ``mean`` and ``std``."""
        if not self._range_warned and self.distance(low, high) > RANGE_WARNING_STDS:
            self._range_warned = True
            warn_at_caller(f"eqpdenet: {self._describe(low, high)}: "
                           f"{self._likely_cause(low, high)} (warned once per model)",
                           InputRangeWarning)

    def explain(self, low: float, high: float) -> str | None:
        """The cause of a non-finite PDE state if it is the input's range, else None."""
        if self.distance(low, high) <= RANGE_WARNING_STDS:
            return None
        return (f"The input is at fault: {self._describe(low, high)}; rescale it "
                f"({self._likely_cause(low, high)}).")

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

    #: Not invariant under quarter turns (the tests show it); exporters check claims only.
    quarter_turn_invariant = False

    def forward(self, images: Tensor) -> Tensor:
        x = check_model_input(self, images).images
        return self.mlp(self.standardize(x).flatten(1)).to(images.dtype)
