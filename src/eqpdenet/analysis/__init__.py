"""Reading models: equivariance measured (:mod:`~eqpdenet.analysis.equivariance`), reference maps
and inputs for it (:mod:`~eqpdenet.analysis.references`), learned PDEs as formulas
(:mod:`~eqpdenet.analysis.describe`).
"""

from .describe import describe_layer, describe_model, pde_formula
from .equivariance import (
    Transform,
    central_disk,
    equivariance_error,
    interpolation_floor,
    model_invariance,
    quarter_turn_check,
)

__all__ = [
    "Transform",
    "central_disk",
    "describe_layer",
    "describe_model",
    "equivariance_error",
    "interpolation_floor",
    "model_invariance",
    "pde_formula",
    "quarter_turn_check",
]
