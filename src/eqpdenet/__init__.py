"""eqpdenet: neural networks whose first layer is an equivariant PDE (Lagrave & Riou, 2021).

Images are tensors ``(batch, channels, height, width)``; axis and angle conventions are stated
once in :mod:`eqpdenet.geometry` (x = column to the right, y = up, angles counterclockwise).

The flow: image -> :func:`jet` -> invariants (:class:`InvariantSet`) -> F_theta ->
Euler update (:class:`EulerConv`, :class:`ConvInt`) -> reduction (:class:`PDELayer`) ->
perceptron (:class:`EqPdeNet`).
"""

from .config import ConfigError, LayerConfig, ModelConfig
from .invariants import (
    Invariant,
    InvariantSet,
    available_invariant_sets,
    get_invariant_set,
    register_invariant_set,
    safe_ratio,
)
from .models import FCNN, EqPdeNet, build_model, count_parameters
from .pde import ConvInt, EulerConv, NonFiniteStateError, PDELayer
from .stencils import Jet, available_stencils, derivative_names, jet, register_stencil

__version__ = "0.1.0"

__all__ = [
    "FCNN",
    "ConfigError",
    "ConvInt",
    "EqPdeNet",
    "EulerConv",
    "Invariant",
    "InvariantSet",
    "Jet",
    "LayerConfig",
    "ModelConfig",
    "NonFiniteStateError",
    "PDELayer",
    "__version__",
    "available_invariant_sets",
    "available_stencils",
    "build_model",
    "count_parameters",
    "derivative_names",
    "get_invariant_set",
    "jet",
    "register_invariant_set",
    "register_stencil",
    "safe_ratio",
]
