"""EqPdeNet (PDE layer -> reduction -> 784-h-h-10 perceptron) and the FCNN baseline (784-h-h-10).

Parameter counts with the paper's layer (2 ``se2`` + 2 ``scaling`` PDEs, linear F, linear
combination): FCNN ``784h + h + h^2 + h + 10h + 10`` = 13002, 26506, 55050, 118282, 269322 for
h = 16 ... 256, and EqPdeNet 31 more (2 x 6 + 2 x 7 + 5) = 13033, 26537, 55081, 118313, 269353.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import LayerConfig, ModelConfig
from .geometry import check_images
from .pde import PDELayer

__all__ = ["EqPdeNet", "FCNN", "Standardize", "build_model", "count_parameters", "perceptron"]


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
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: Tensor) -> Tensor:
        if self.mean == 0.0 and self.std == 1.0:
            return x
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class FCNN(nn.Module):
    """The baseline: images ``(B, C, H, W)`` flattened into a ``CHW-h-h-classes`` perceptron.

    Returns logits ``(B, classes)``.
    """

    def __init__(self, hidden: int = 256, image_size: int = 28, in_channels: int = 1,
                 classes: int = 10, input_mean: float = 0.0, input_std: float = 1.0):
        super().__init__()
        self.image_size, self.in_channels = image_size, in_channels
        self.standardize = Standardize(input_mean, input_std)
        self.mlp = perceptron(in_channels * image_size**2, hidden, classes)

    def forward(self, images: Tensor) -> Tensor:
        _check_input(images, self.in_channels, self.image_size)
        return self.mlp(self.standardize(images).flatten(1))


class EqPdeNet(nn.Module):
    """EqPdeNet (eq. (7)): ``logits = N_omega(phi_delta(u_T^theta_1(f), ..., u_T^theta_ne(f)))``.

    Args:
        hidden: width of the two hidden layers.
        layer: a :class:`PDELayer`, or a :class:`LayerConfig` to build one; default the paper's.
        image_size, in_channels, classes: input and output sizes.
        input_mean, input_std: fixed input standardisation (applied before the PDE layer).

    ``forward``: images ``(B, C, H, W)`` -> logits ``(B, classes)``.
    """

    def __init__(self, hidden: int = 256, layer: PDELayer | LayerConfig | None = None,
                 image_size: int = 28, in_channels: int = 1, classes: int = 10,
                 input_mean: float = 0.0, input_std: float = 1.0):
        super().__init__()
        if layer is None:
            layer = LayerConfig()
        if isinstance(layer, LayerConfig):
            layer = pde_layer_from_config(layer)
        self.image_size, self.in_channels = image_size, in_channels
        self.standardize = Standardize(input_mean, input_std)
        self.pde_layer = layer
        self.mlp = perceptron(layer.out_channels(in_channels) * image_size**2, hidden, classes)

    def features(self, images: Tensor) -> Tensor:
        """The reduced PDE output fed to the perceptron, ``(B, C', H, W)``."""
        _check_input(images, self.in_channels, self.image_size)
        return self.pde_layer(self.standardize(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.mlp(self.features(images).flatten(1))


def _check_input(images: Tensor, channels: int, size: int) -> None:
    check_images(images, "images")
    if images.shape[1:] != (channels, size, size):
        raise ValueError(f"expected images of shape (batch, {channels}, {size}, {size}), "
                         f"got {tuple(images.shape)}")


def pde_layer_from_config(config: LayerConfig) -> PDELayer:
    return PDELayer.build(
        config.invariants, rhs=config.rhs, degree=config.degree, T=config.T, dt=config.dt,
        stencil=config.stencil, spacing=config.spacing, boundary=config.boundary,
        ratio_eps=config.ratio_eps, reduction=config.reduction, init=config.init,
        init_scale=config.init_scale, init_noise=config.init_noise,
        check_finite=config.check_finite,
    )


def build_model(config: ModelConfig) -> nn.Module:
    """The model a :class:`ModelConfig` describes (parameters initialised by torch's RNG)."""
    common = dict(hidden=config.hidden, image_size=config.image_size, classes=config.classes,
                  input_mean=config.input_mean, input_std=config.input_std)
    if config.kind == "fcnn":
        return FCNN(**common)
    return EqPdeNet(layer=config.layer, **common)

