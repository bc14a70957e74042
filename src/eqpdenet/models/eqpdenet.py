"""EqPdeNet (eq. (7)): PDE layer -> reduction -> the paper's ``784-h-h-10`` perceptron.

Parameter counts with the paper's layer (2 ``se2`` + 2 ``scaling`` PDEs, linear F, linear
combination): FCNN's ``784h + h + h^2 + h + 10h + 10`` plus 31 (2 x 6 + 2 x 7 + 5), i.e. 13033,
26537, 55081, 118313, 269353 for h = 16 ... 256.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import (
    check_images,
    check_values,
    match_dtype,
    module_dtype,
    require,
    require_int,
)
from ..errors import NonFiniteStateError
from ..pde.integrators import input_range_hint
from ..pde.invariants import get_invariant_set
from ..pde.layer import LayerConfig, PDELayer
from ..pde.stencils import Jet
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
        head: ``"perceptron"`` (the paper's: the layer's output maps flattened into an
            ``in-h-h-classes`` perceptron) or ``"invariant"``: the ``se2`` invariants of each
            output map (the map itself, |∇u|², Δu, ∇uᵀH∇u, |H|²), each pooled over the whole
            image by its mean and its maximum, batch-normalised, into the same kind of
            perceptron. Global pooling
            of invariants makes the head insensitive to where the digit is and how it is turned;
            with ``reduction="concat"`` every PDE's output feeds the head.

    ``forward``: images ``(B, in_channels, image_size, image_size)`` -> logits ``(B, classes)``.

    Example:
        >>> from eqpdenet import count_parameters
        >>> count_parameters(EqPdeNet(hidden=16))
        13033
    """

    def __init__(self, hidden: int = 256, layer: PDELayer | LayerConfig | None = None,
                 image_size: int = 28, in_channels: int = 1, classes: int = 10,
                 input_mean: float = 0.0, input_std: float = 1.0, head: str = "perceptron"):
        super().__init__()
        if layer is None:
            layer = LayerConfig.paper()
        if isinstance(layer, LayerConfig):
            layer = PDELayer.from_config(layer)
        require(head in ("perceptron", "invariant"), "head", "must be 'perceptron' or 'invariant'")
        self.image_size = require_int(image_size, "image_size", 1)
        self.in_channels = require_int(in_channels, "in_channels", 1)
        self.head = head
        self.standardize = Standardize(input_mean, input_std)
        self.pde_layer = layer
        maps = layer.out_channels(in_channels)
        if head == "invariant":
            self.head_invariants = get_invariant_set("se2")
            stencil = layer.pdes[0].step.rhs.jet if hasattr(layer.pdes[0].step, "rhs") else None
            self.head_jet = Jet(2, stencil.stencil if stencil else "central",
                                stencil.spacing if stencil else 1.0, "replicate")
            in_features = 2 * len(self.head_invariants) * maps
            # The pooled invariants differ in scale by orders of magnitude (u against |H|²):
            # normalised before the perceptron, as the deep model's invariants must be.
            self.head_norm = nn.BatchNorm1d(in_features)
        else:
            in_features = maps * image_size**2
        self.mlp = perceptron(in_features, require_int(hidden, "hidden", 1),
                              require_int(classes, "classes", 1))

    @property
    def quarter_turn_invariant(self) -> bool:
        """Whether the logits are invariant under quarter turns of the input (to rounding): the
        invariant head on PDEs whose invariant sets are all rotation invariant (``se2``,
        ``sim2``); the perceptron head sees where every pixel is."""
        sets = [getattr(getattr(pde, "step", None), "rhs", None) for pde in self.pde_layer.pdes]
        return self.head == "invariant" and all(
            "rotations" in getattr(getattr(rhs, "invariant_set", None), "invariant_under", ())
            for rhs in sets)

    def features(self, images: Tensor) -> Tensor:
        """The reduced PDE output fed to the perceptron, ``(B, C', H, W)``."""
        return self._features(self._enter(images)).to(images.dtype)

    def forward(self, images: Tensor) -> Tensor:
        maps = self._features(self._enter(images))
        if self.head == "perceptron":
            return self.mlp(maps.flatten(1)).to(images.dtype)
        invariants = self.head_invariants(self.head_jet(maps)).flatten(1, 2)  # (B, 5 C', H, W)
        pooled = torch.cat([invariants.mean(dim=(-2, -1)), invariants.amax(dim=(-2, -1))], 1)
        return self.mlp(self.head_norm(pooled)).to(images.dtype)

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
