"""Models in a registry by name: the paper's EqPdeNet and FCNN, the deep InvariantPDENet, the
LiftedPDENet on position x orientation, and the CNN and G-CNN baselines.

Every family checks its input with the same entry check, :func:`check_model_input`, and declares
the smallest image it takes (``min_image_size``, checked in its constructor by
:func:`require_image_size`): see :mod:`eqpdenet.models.inputs`.

:data:`MODELS` maps a model kind (the configuration's ``model.kind``) to its class;
:func:`build_model` builds one from keyword arguments, passing each class only the arguments its
constructor takes (so one configuration table can describe every kind).
"""

from __future__ import annotations

import inspect

from torch import nn

from ..registry import Registry
from .cnn import CNN, CNNConfig
from .eqpdenet import EqPdeNet
from .gcnn import GCNN, GCNNConfig
from .inputs import ModelInput, check_model_input, min_image_size, require_image_size
from .invariant_pde import InvariantPDEConfig, InvariantPDENet
from .lifted_pde import LiftedPDEConfig, LiftedPDENet, M2Lift
from .perceptron import FCNN, Standardize, count_parameters, perceptron
from .pooling import AntiAliasedDownsample, OrientationMaxPool

__all__ = ["CNN", "FCNN", "GCNN", "MODELS", "AntiAliasedDownsample", "CNNConfig", "EqPdeNet",
           "GCNNConfig", "InvariantPDEConfig", "InvariantPDENet", "LiftedPDEConfig", "LiftedPDENet",
           "M2Lift", "ModelInput", "OrientationMaxPool", "Standardize", "build_model",
           "check_model_input", "count_parameters", "min_image_size", "perceptron",
           "require_image_size"]

#: Model kinds: name -> class (``kind(**options)`` builds one).
MODELS: Registry[type[nn.Module]] = Registry("model")
MODELS.register("eqpdenet", EqPdeNet)
MODELS.register("fcnn", FCNN)
MODELS.register("cnn", CNN)
MODELS.register("gcnn", GCNN)  # needs the optional e2cnn when built
MODELS.register("invariant_pde", InvariantPDENet)
MODELS.register("lifted_pde", LiftedPDENet)


def build_model(kind: str, **options) -> nn.Module:
    """A model of a registered ``kind``; options its constructor does not take are ignored.

    Example:
        >>> type(build_model("fcnn", hidden=16, layer=None)).__name__
        'FCNN'
    """
    cls = MODELS.get(kind)
    accepted = inspect.signature(cls).parameters
    return cls(**{name: value for name, value in options.items() if name in accepted})
