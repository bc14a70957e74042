"""The mathematics of the layer: image -> jet -> invariants -> F_theta -> Euler update -> reduction.

* :mod:`~eqpdenet.pde.stencils`: finite-difference stencils and the jet (eq. (10)).
* :mod:`~eqpdenet.pde.invariants`: differential invariants in named sets (eqs. (4), (5), SIM(2))
  and the regularisation of their ratios.
* :mod:`~eqpdenet.pde.joint`: joint SE(2) / SIM(2) invariants of several channels.
* :mod:`~eqpdenet.pde.symbolic`: invariants of any Lie group from its generators (needs SymPy;
  not imported here).
* :mod:`~eqpdenet.pde.rhs`: ``F_theta`` and the right-hand side ``u -> F_theta(I(jet(u)))``.
* :mod:`~eqpdenet.pde.integrators`: explicit Euler steps and flows (eq. (9)).
* :mod:`~eqpdenet.pde.layer`: the PDE layer and its configuration (eq. (7)).
* :mod:`~eqpdenet.pde.m2` and :mod:`~eqpdenet.pde.m2_rhs`: fields on position x orientation
  (M2), their left-invariant jet and SE(2) invariants, and the systems ``dU/dt = F(I(U))`` on them.
"""

from .integrators import ConvInt, EulerConv, EulerFlow, EulerStep, steps_for
from .invariants import (
    DEFAULT_RATIO_EPS,
    DEFAULT_RATIO_REGULARISATION,
    INVARIANT_SETS,
    RATIO_REGULARISATIONS,
    Invariant,
    InvariantSet,
    RatioRegularisation,
    available_invariant_sets,
    get_invariant_set,
    register_invariant_set,
    safe_ratio,
)
from .joint import JOINT_GROUPS, JointInvariants
from .layer import INITS, LAYER_PRESETS, REDUCTIONS, LayerConfig, PDELayer, make_reduction
from .m2 import M2_SE2, M2Jet
from .m2_rhs import M2_TERMS, M2SystemRHS
from .rhs import (
    RIGHT_HAND_SIDES,
    InvariantRHS,
    InvariantSystemRHS,
    LinearF,
    MonomialF,
    PolynomialF,
    make_rhs,
)
from .stencils import (
    BOUNDARIES,
    STENCILS,
    Jet,
    available_stencils,
    derivative_names,
    jet,
    register_stencil,
)

__all__ = [
    "BOUNDARIES",
    "DEFAULT_RATIO_EPS",
    "DEFAULT_RATIO_REGULARISATION",
    "INITS",
    "INVARIANT_SETS",
    "JOINT_GROUPS",
    "LAYER_PRESETS",
    "M2_SE2",
    "M2_TERMS",
    "RATIO_REGULARISATIONS",
    "REDUCTIONS",
    "RIGHT_HAND_SIDES",
    "STENCILS",
    "ConvInt",
    "EulerConv",
    "EulerFlow",
    "EulerStep",
    "Invariant",
    "InvariantRHS",
    "InvariantSystemRHS",
    "InvariantSet",
    "Jet",
    "JointInvariants",
    "LayerConfig",
    "LinearF",
    "M2Jet",
    "M2SystemRHS",
    "MonomialF",
    "PDELayer",
    "PolynomialF",
    "RatioRegularisation",
    "available_invariant_sets",
    "available_stencils",
    "derivative_names",
    "get_invariant_set",
    "jet",
    "make_reduction",
    "make_rhs",
    "register_invariant_set",
    "register_stencil",
    "safe_ratio",
    "steps_for",
]
