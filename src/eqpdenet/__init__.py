"""eqpdenet: neural networks built from equivariant PDEs (Lagrave & Riou, 2021, and beyond).

Images are tensors ``(batch, channels, height, width)``; axis and angle conventions are stated
once in :mod:`eqpdenet.geometry` (x = column to the right, y = up, angles counterclockwise).

The path of an image through the library (``docs/architecture.md``)::

    image -> jet (pde.stencils) -> invariants (pde.invariants) -> F_theta (pde.rhs)
          -> Euler update (pde.integrators; kernels for the fused operator)
          -> reduction (pde.layer) -> head (models) -> logits

Subpackages: :mod:`eqpdenet.pde` (the mathematics), :mod:`eqpdenet.kernels` (compiled
operators), :mod:`eqpdenet.models`, :mod:`eqpdenet.data`, :mod:`eqpdenet.analysis`. The
application (configuration files, training, sweeps, reports, figures, the command line) is
:mod:`eqpdenet.app`; importing :mod:`eqpdenet` does not import it.
"""

from .data import RotMNIST, apply_scenario, available_scenarios, load_mnist, load_rotmnist, register_scenario
from .errors import (
    CheckpointError,
    ConfigError,
    DataFileError,
    EqPdeNetError,
    InputError,
    NonFiniteStateError,
)
from .models import FCNN, MODELS, EqPdeNet, build_model, count_parameters
from .pde import (
    ConvInt,
    EulerConv,
    EulerFlow,
    EulerStep,
    Invariant,
    InvariantRHS,
    InvariantSet,
    Jet,
    LayerConfig,
    LinearF,
    PDELayer,
    PolynomialF,
    available_invariant_sets,
    available_stencils,
    derivative_names,
    get_invariant_set,
    jet,
    register_invariant_set,
    register_stencil,
    safe_ratio,
)
from .registry import Registry

__version__ = "0.2.0"

__all__ = [
    "FCNN",
    "MODELS",
    "CheckpointError",
    "ConfigError",
    "ConvInt",
    "DataFileError",
    "EqPdeNet",
    "EqPdeNetError",
    "EulerConv",
    "EulerFlow",
    "EulerStep",
    "InputError",
    "Invariant",
    "InvariantRHS",
    "InvariantSet",
    "Jet",
    "LayerConfig",
    "LinearF",
    "NonFiniteStateError",
    "PDELayer",
    "PolynomialF",
    "Registry",
    "RotMNIST",
    "__version__",
    "apply_scenario",
    "available_invariant_sets",
    "available_scenarios",
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
