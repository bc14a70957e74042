"""Models: the paper's EqPdeNet and its FCNN baseline, in a registry by name.

:data:`MODELS` maps a model kind (the configuration's ``model.kind``) to its class;
:func:`build_model` builds one from keyword arguments, passing each class only the arguments its
constructor takes (so one configuration table can describe every kind).
"""

from __future__ import annotations

import inspect

from torch import nn

from ..registry import Registry
from .eqpdenet import EqPdeNet
from .perceptron import FCNN, Standardize, count_parameters, perceptron

__all__ = ["FCNN", "MODELS", "EqPdeNet", "Standardize", "build_model", "count_parameters",
           "perceptron"]

#: Model kinds: name -> class (``kind(**options)`` builds one).
MODELS: Registry[type[nn.Module]] = Registry("model")
MODELS.register("eqpdenet", EqPdeNet)
MODELS.register("fcnn", FCNN)


def build_model(kind: str, **options) -> nn.Module:
    """A model of a registered ``kind``; options its constructor does not take are ignored.

    Example:
        >>> type(build_model("fcnn", hidden=16, layer=None)).__name__
        'FCNN'
    """
    cls = MODELS.get(kind)
    accepted = inspect.signature(cls).parameters
    return cls(**{name: value for name, value in options.items() if name in accepted})
