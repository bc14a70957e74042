"""EqPdeNet (eq. (7)): PDE layer -> reduction -> the paper's ``784-h-h-10`` perceptron.

Parameter counts with the paper's layer (2 ``se2`` + 2 ``scaling`` PDEs, linear F, linear
combination): FCNN's ``784h + h + h^2 + h + 10h + 10`` plus 31 (2 x 6 + 2 x 7 + 5), i.e. 13033,
26537, 55081, 118313, 269353 for h = 16 ... 256.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..checks import check_images, check_values, match_dtype, module_dtype, require_int
from ..errors import NonFiniteStateError
from ..pde.integrators import input_range_hint
from ..pde.layer import LayerConfig, PDELayer
from .perceptron import Standardize, perceptron

__all__ = ["EqPdeNet"]


class EqPdeNet(nn.Module):
    """EqPdeNet (eq. (7)): ``logits = N_omega(phi_delta(u_T^theta_1(f), ..., u_T^theta_ne(f)))``.

    Args:
        hidden: width of the two hidden layers.
        layer: a :class:`~eqpdenet.pde.PDELayer`, or a :class:`~eqpdenet.pde.LayerConfig` to
            build one (its ``backend`` and ``recompute`` included); default the paper's layer
            (:meth:`~eqpdenet.pde.LayerConfig.paper`, the paper's absolute ratio regularisation).
        image_size, in_channels, classes: input and output sizes.
        input_mean, input_std: fixed input standardisation (applied before the PDE layer).

    ``forward``: images ``(B, in_channels, image_size, image_size)`` -> logits ``(B, classes)``.

    Example:
        >>> from eqpdenet import count_parameters
        >>> count_parameters(EqPdeNet(hidden=16))
        13033
    """

    def __init__(self, hidden: int = 256, layer: PDELayer | LayerConfig | None = None,
                 image_size: int = 28, in_channels: int = 1, classes: int = 10,
                 input_mean: float = 0.0, input_std: float = 1.0):
        super().__init__()
        if layer is None:
            layer = LayerConfig.paper()
        if isinstance(layer, LayerConfig):
            layer = PDELayer.from_config(layer)
        self.image_size = require_int(image_size, "image_size", 1)
        self.in_channels = require_int(in_channels, "in_channels", 1)
        self.standardize = Standardize(input_mean, input_std)
        self.pde_layer = layer
        self.mlp = perceptron(layer.out_channels(in_channels) * image_size**2,
                              require_int(hidden, "hidden", 1), require_int(classes, "classes", 1))

    def features(self, images: Tensor) -> Tensor:
        """The reduced PDE output fed to the perceptron, ``(B, C', H, W)``."""
        return self._features(self._enter(images)).to(images.dtype)

    def forward(self, images: Tensor) -> Tensor:
        return self.mlp(self._features(self._enter(images)).flatten(1)).to(images.dtype)

    def _enter(self, images: Tensor) -> tuple[Tensor, tuple[float, float]]:
        """The checks of the entry points (:mod:`eqpdenet.checks`), once per call: shape, finite
        values, the range against the input statistics (one warning per model), dtype."""
        check_images(images, "images", channels=self.in_channels,
                     size=(self.image_size, self.image_size))
        values = check_values(images, "images")
        self.standardize.check_range(*values)
        return match_dtype(images, module_dtype(self), "images"), values

    def _features(self, entered: tuple[Tensor, tuple[float, float]]) -> Tensor:
        x, values = entered
        try:
            states = self.pde_layer._evolve(self.standardize(x))
        except NonFiniteStateError as error:
            hint = self.standardize.explain(*values) or input_range_hint(*values)
            raise error.with_hint(hint) from None
        return self.pde_layer.reduction(states)
