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
from .mnist import DataFileError, load_mnist
from .models import FCNN, EqPdeNet, build_model, count_parameters
from .pde import ConvInt, EulerConv, NonFiniteStateError, PDELayer
from .rotmnist import RotMNIST, load_rotmnist
from .scenarios import apply_scenario, available_scenarios, register_scenario
from .stencils import Jet, available_stencils, derivative_names, jet, register_stencil

__version__ = "0.1.0"

__all__ = [
    "FCNN",
    "ConfigError",
    "ConvInt",
    "DataFileError",
    "EqPdeNet",
    "EulerConv",
    "Invariant",
    "InvariantSet",
    "Jet",
    "LayerConfig",
    "ModelConfig",
    "NonFiniteStateError",
    "PDELayer",
    "RotMNIST",
    "__version__",
    "apply_scenario",
    "available_scenarios",
    "available_invariant_sets",
    "available_stencils",
    "build_model",
    "count_parameters",
    "derivative_names",
    "get_invariant_set",
    "jet",
    "load_mnist",
    "load_rotmnist",
    "register_invariant_set",
    "register_scenario",
    "register_stencil",
    "safe_ratio",
]
