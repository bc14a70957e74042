"""EqPdeNet (eq. (7)): PDE layer -> reduction -> the paper's ``784-h-h-10`` perceptron.

Parameter counts with the paper's layer (2 ``se2`` + 2 ``scaling`` PDEs, linear F, linear
combination): FCNN's ``784h + h + h^2 + h + 10h + 10`` plus 31 (2 x 6 + 2 x 7 + 5), i.e. 13033,
26537, 55081, 118313, 269353 for h = 16 ... 256.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..checks import non_finite_hint, require, require_int
from ..errors import ConfigError, NonFiniteStateError
from ..pde.integrators import input_checked, input_range_hint
from ..pde.invariants import get_invariant_set
from ..pde.layer import LAYER_PRESETS, LayerConfig, PDELayer
from ..pde.stencils import Jet
from .inputs import ModelInput, check_model_input, require_image_size
from .perceptron import Standardize, perceptron

__all__ = ["EqPdeNet"]


class EqPdeNet(nn.Module):
    """EqPdeNet (eq. (7)): ``logits = N_omega(phi_delta(u_T^theta_1(f), ..., u_T^theta_ne(f)))``.

    Args:
        hidden: width of the two hidden layers.
        layer: a :class:`~eqpdenet.pde.PDELayer`, or a :class:`~eqpdenet.pde.LayerConfig` to
            build one (its ``backend`` and ``recompute`` included), or a mapping of
            ``LayerConfig``'s fields overriding the paper's layer (``{"T": 0.2}``, as the
            configuration's ``model.layer`` table), or a preset's name
            (:data:`~eqpdenet.pde.layer.LAYER_PRESETS`: ``"paper"``, ``"se2_sim2"``); anything
            else is a ConfigError naming ``layer``. Default the paper's layer
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
        layer = _pde_layer(layer)
        require(head in ("perceptron", "invariant"), "head", "must be 'perceptron' or 'invariant'")
        head_jet = _head_jet(layer) if head == "invariant" else None
        jets = [m for m in layer.modules() if isinstance(m, Jet)] + ([head_jet] if head_jet else [])
        #: The smallest image side the PDE layer's stencils (and the head's) take with their
        #: boundary.
        self.min_image_size = max([jet.min_image_size for jet in jets] + [1])
        self.image_size = require_image_size(image_size, self.min_image_size,
                                             "the stencils of the PDE layer with their boundary")
        self.in_channels = require_int(in_channels, "in_channels", 1)
        self.head = head
        self.standardize = Standardize(input_mean, input_std)
        self.pde_layer = layer
        maps = layer.out_channels(in_channels)
        if head == "invariant":
            self.head_invariants = get_invariant_set("se2")
            self.head_jet = head_jet
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
        return self._features(check_model_input(self, images)).to(images.dtype)

    def forward(self, images: Tensor) -> Tensor:
        maps = self._features(check_model_input(self, images))
        if self.head == "perceptron":
            return self.mlp(maps.flatten(1)).to(images.dtype)
        invariants = self.head_invariants(self.head_jet(maps)).flatten(1, 2)  # (B, 5 C', H, W)
        pooled = torch.cat([invariants.mean(dim=(-2, -1)), invariants.amax(dim=(-2, -1))], 1)
        return self.mlp(self.head_norm(pooled)).to(images.dtype)

    def _features(self, entered: ModelInput) -> Tensor:
        # The layer called as a module (its hooks fire; it takes the reference path where a
        # hook is registered inside it), without its entry checks: the model checked.
        try:
            with input_checked(self.pde_layer):
                return self.pde_layer(self.standardize(entered.images))
        except NonFiniteStateError as error:
            values = (entered.low, entered.high)
            hint = self.standardize.explain(*values) or input_range_hint(
                *values, self.pde_layer, (self.standardize.mean, self.standardize.std))
            # only batch norms the PDE's input went through (none in the paper's layer)
            raise error.with_hint(non_finite_hint(self, hint, within=(self.pde_layer,))) from None


def _pde_layer(layer) -> PDELayer:
    """EqPdeNet's ``layer`` argument as a :class:`PDELayer` (see the class doc); a ConfigError
    naming ``layer`` for anything else (an AttributeError from deep inside before)."""
    if isinstance(layer, PDELayer):
        return layer
    if layer is None:
        layer = LayerConfig.paper()
    elif isinstance(layer, str):
        LAYER_PRESETS.check(layer, "layer")
        layer = LayerConfig.preset(layer)
    elif isinstance(layer, Mapping):
        known = {spec.name for spec in dataclasses.fields(LayerConfig)}
        unknown = sorted(str(key) for key in layer if key not in known)
        require(not unknown, "layer", f"unknown field(s) {', '.join(unknown)}; the fields are "
                f"{', '.join(sorted(known))}")
        layer = LayerConfig.paper(**layer)
    elif not isinstance(layer, LayerConfig):
        raise ConfigError(f"invalid config: layer: must be a PDELayer, a LayerConfig, a mapping "
                          f"of LayerConfig's fields or a preset's name "
                          f"({', '.join(LAYER_PRESETS.names())}), got {type(layer).__name__}")
    return PDELayer.from_config(layer)


def _head_jet(layer: PDELayer) -> Jet:
    """The invariant head's jet: the first PDE's stencil family, spacing and scale, with the
    replicate boundary (central differences where the first PDE has no jet)."""
    jet = getattr(getattr(layer.pdes[0], "step", None), "rhs", None)
    jet = getattr(jet, "jet", None)
    if not isinstance(jet, Jet):
        return Jet(2, "central", 1.0, "replicate")
    return Jet(2, jet.stencil, jet.spacing, "replicate", jet.sigma)
