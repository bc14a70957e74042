"""A plain CNN baseline in the spirit of Z2CNN (Cohen & Welling, 2016): no built-in symmetry.

``layers`` 3x3 convolutions with ``channels`` channels each ("same" padding, batch norm, ReLU),
a 2x2 max pooling after the second, then global pooling over space and a linear classifier. The
global pooling makes it translation-robust; rotations and scalings it can only learn from data.
With the defaults (7 layers, 20 channels) it has 22,270 parameters, like Z2CNN's 22k.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..checks import require, require_int
from .inputs import check_model_input, family_options, require_image_size
from .perceptron import Standardize

__all__ = ["CNN", "CNNConfig"]


#: The most convolutions a CNN may have (the baseline has 7).
MAX_LAYERS = 1000


@dataclass
class CNNConfig:
    """Options of :class:`CNN` (defaults: the 22k-parameter baseline).

    Attributes:
        channels: channels of every convolution.
        layers: number of 3x3 convolutions.
        pool_after: a 2x2 max pooling after this many convolutions (0: none; at most
            ``layers``).
        readout: global pooling over space: ``"max"`` or ``"mean"``.
    """

    channels: int = 20
    layers: int = 7
    pool_after: int = 2
    readout: str = "max"

    def __post_init__(self):
        require_int(self.channels, "cnn.channels", 1)
        require_int(self.layers, "cnn.layers", 1, maximum=MAX_LAYERS)
        # Beyond the last layer it meant no pooling, silently (gcnn.pool_after is refused there)
        require_int(self.pool_after, "cnn.pool_after", 0)
        require(self.pool_after <= self.layers, "cnn.pool_after",
                f"{self.pool_after} is after the last of the {self.layers} layers; 0 for no "
                f"pooling")
        require(self.readout in ("max", "mean"), "cnn.readout", "must be 'max' or 'mean'")


class CNN(nn.Module):
    """Images ``(B, in_channels, image_size, image_size)`` -> logits ``(B, classes)``.

    Example:
        >>> from eqpdenet.models import count_parameters
        >>> count_parameters(CNN())
        22270
    """

    def __init__(self, cnn: CNNConfig | None = None, image_size: int = 28, in_channels: int = 1,
                 classes: int = 10, input_mean: float = 0.0, input_std: float = 1.0):
        super().__init__()
        self.config = cnn = family_options(cnn, CNNConfig, "cnn")
        pools = int(1 <= cnn.pool_after <= cnn.layers)
        #: A 2x2 max pooling needs at least 2 pixels a side.
        self.min_image_size = 2**pools
        self.image_size = require_image_size(image_size, self.min_image_size,
                                             f"its 2x2 max pooling after layer {cnn.pool_after}")
        self.in_channels = require_int(in_channels, "in_channels", 1)
        self.standardize = Standardize(input_mean, input_std)
        layers: list[nn.Module] = []
        width = in_channels
        for index in range(cnn.layers):
            layers += [nn.Conv2d(width, cnn.channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(cnn.channels), nn.ReLU()]
            width = cnn.channels
            if index + 1 == cnn.pool_after:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cnn.channels, require_int(classes, "classes", 1))

    #: Not invariant under quarter turns (the tests show it); exporters check claims only.
    quarter_turn_invariant = False

    def backward_bytes(self, batch_size: int, element_size: int = 4) -> int:
        """The bytes one training step on ``batch_size`` images keeps for its backward pass (what
        the memory preflight of :mod:`eqpdenet.app.preflight` needs; the parameters aside).

        Per image, in values of ``element_size`` bytes: the first convolution's input
        (``in_channels`` maps), then per layer the convolution's output (kept by the batch norm)
        and the ReLU's output (the next layer's input), ``2 C`` maps at the layer's size; the
        max pooling keeps the indices of its maxima (int64, 8 bytes each), ``C`` maps at half
        the size, and its output where a layer or the ``max`` readout takes it; the readout
        its maxima. Once per step, the batch norms' statistics. Counted with
        ``torch.autograd.graph.saved_tensors_hooks``: tests/app/test_preflight_round6.py holds
        the estimate within 1 to 1.2 times what autograd saves.
        """
        cnn = self.config
        size = self.image_size
        values, indices = self.in_channels * size**2, 0
        for index in range(cnn.layers):
            values += 2 * cnn.channels * size**2
            if index + 1 == cnn.pool_after:
                size //= 2
                indices += cnn.channels * size**2
                if index + 1 < cnn.layers or cnn.readout == "max":
                    values += cnn.channels * size**2
        values += 2 * cnn.channels  # the readout's maxima, the classifier's input
        statistics = 2 * cnn.channels * cnn.layers
        return int(batch_size * (values * element_size + indices * 8)
                   + statistics * element_size)

    def forward(self, images: Tensor) -> Tensor:
        x = check_model_input(self, images).images
        maps = self.features(self.standardize(x))
        pooled = maps.amax(dim=(-2, -1)) if self.config.readout == "max" else maps.mean(dim=(-2, -1))
        return self.classifier(pooled).to(images.dtype)
