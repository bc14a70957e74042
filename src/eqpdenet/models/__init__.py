"""Models in a registry by name: the paper's EqPdeNet and FCNN, the deep InvariantPDENet, the
LiftedPDENet on position x orientation, and the CNN and G-CNN baselines.

Every family checks its input with the same entry check, :func:`check_model_input`, and declares
the smallest image it takes (``min_image_size``, checked in its constructor by
:func:`require_image_size`): see :mod:`eqpdenet.models.inputs`.

:data:`MODELS` maps a model kind (the configuration's ``model.kind``) to its class;
:func:`build_model` builds one from keyword arguments, passing each class only the arguments its
constructor takes (so one configuration table can describe every kind); an argument that no kind
takes is a ConfigError naming it. A family is checked when it is registered
(:class:`ModelRegistry`): a class or a factory, every parameter of which has a default.
"""

from __future__ import annotations

import difflib
import inspect

from torch import nn

from ..checks import require
from ..errors import ConfigError
from ..registry import Registry, call_own_code
from .cnn import CNN, CNNConfig
from .eqpdenet import EqPdeNet
from .gcnn import GCNN, GCNNConfig
from .inputs import ModelInput, check_model_input, min_image_size, require_image_size
from .invariant_pde import InvariantPDEConfig, InvariantPDENet
from .lifted_pde import LiftedPDEConfig, LiftedPDENet, M2Lift
from .perceptron import FCNN, Standardize, count_parameters, perceptron
from .pooling import AntiAliasedDownsample, OrientationMaxPool

__all__ = ["CNN", "FCNN", "GCNN", "MODELS", "AntiAliasedDownsample", "ModelRegistry", "CNNConfig", "EqPdeNet",
           "GCNNConfig", "InvariantPDEConfig", "InvariantPDENet", "LiftedPDEConfig", "LiftedPDENet",
           "M2Lift", "ModelInput", "OrientationMaxPool", "Standardize", "build_model",
           "check_model_input", "count_parameters", "min_image_size", "perceptron",
           "require_image_size"]

class ModelRegistry(Registry):
    """The registry of model families: each item is what :func:`build_model` calls with the
    options its constructor names, ``item(**options)`` (a class or a factory function). Refused
    when registered, in one :class:`~eqpdenet.errors.ConfigError` naming the family (not met as
    a raw ``TypeError`` when a run builds it): an ``nn.Module`` instance (register its class),
    and a parameter without a default (a configuration passes only the options of its model
    table that the constructor names, and ``build_model(kind)`` none, so such a parameter could
    be missing from every call; a family of one's own keeps its defaults), or a positional-only
    one (never passed). A callable whose signature Python cannot read is accepted unchecked."""

    def register(self, name: str, item=None, *, replace: bool = False):
        if item is not None and isinstance(name, str):
            _check_family(name, item)
        return super().register(name, item, replace=replace)


def _check_family(name: str, item) -> None:
    """The checks of :class:`ModelRegistry` of ``item`` registered as ``name``."""
    where = f"a model {name!r}"
    if isinstance(item, nn.Module):
        raise ConfigError(f"{where} must be a class or a factory that build_model calls with the "
                          f"options, got an instance of {type(item).__qualname__}: register the "
                          f"class ({type(item).__qualname__}) itself")
    if not callable(item):  # the registry's own check names it (Registry.check_item)
        return
    try:
        parameters = inspect.signature(item).parameters.values()
    except (TypeError, ValueError):  # no signature to read: accepted unchecked
        return
    shown = getattr(item, "__qualname__", None) or type(item).__name__
    for parameter in parameters:
        if parameter.kind == parameter.POSITIONAL_ONLY:
            raise ConfigError(f"{where} ({shown}): its parameter {parameter.name!r} is "
                              f"positional-only; build_model passes the options by name")
        if parameter.default is parameter.empty and parameter.kind in (
                parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise ConfigError(f"{where} ({shown}): its parameter {parameter.name!r} has no "
                              f"default; build_model passes only the options of the "
                              f"configuration's model table that the constructor names (none "
                              f"to build_model(kind)), so give it a default "
                              f"({parameter.name}=...)")


#: Model kinds: name -> class (``kind(**options)`` builds one).
MODELS: Registry[type[nn.Module]] = ModelRegistry("model")
MODELS.register("eqpdenet", EqPdeNet)
MODELS.register("fcnn", FCNN)
MODELS.register("cnn", CNN)
MODELS.register("gcnn", GCNN)  # needs the optional e2cnn when built
MODELS.register("invariant_pde", InvariantPDENet)
MODELS.register("lifted_pde", LiftedPDENet)
#: The built-in families: their constructors' errors are eqpdenet's own, said as they are
#: (:func:`build_model`); any other family's are named as the user's code.
BUILT_IN_FAMILIES = (EqPdeNet, FCNN, CNN, GCNN, InvariantPDENet, LiftedPDENet)


#: Options of the experiment configuration's model table that no constructor takes, and why:
#: :func:`eqpdenet.app.config.build_model` passes the whole table.
TABLE_ONLY_OPTIONS = {
    "standardize": "where input_mean and input_std came from, resolved into them before the "
                   "model is built",
}


def _constructor_options(cls: type) -> list[str]:
    return [name for name, parameter in inspect.signature(cls).parameters.items()
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]


def build_model(kind: str, /, **options) -> nn.Module:
    """A model of a registered ``kind`` built from keyword ``options``.

    One table of options can describe every kind: an option that only other registered kinds
    take (``layer`` for ``fcnn``) is not passed to this one. An option that no registered kind
    takes is a :class:`~eqpdenet.errors.ConfigError` naming it, with the nearest names (a
    misspelt ``hiden=16`` would otherwise build the default model). ``standardize`` (the
    configuration's record of where ``input_mean`` and ``input_std`` came from) is taken only
    beside both of them, and not used. An exception raised by the constructor of a family of
    the user's (any but :data:`BUILT_IN_FAMILIES`) is one ConfigError naming the kind, the
    class or factory and its module, with the original type and message
    (:func:`~eqpdenet.registry.call_own_code`; eqpdenet's own errors pass unchanged).

    Example:
        >>> type(build_model("fcnn", hidden=16, layer=None)).__name__
        'FCNN'
        >>> try:
        ...     build_model("fcnn", hiden=16)
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        invalid config: build_model('fcnn'): unknown option 'hiden' (did you mean 'hidden'?)
    """
    cls = MODELS.get(kind)
    accepted = _constructor_options(cls)
    known = {name for other in MODELS for name in _constructor_options(MODELS.get(other))}
    for name in options:
        if name in known:
            continue
        if name in TABLE_ONLY_OPTIONS:
            require(all(stat in options for stat in ("input_mean", "input_std")),
                    f"build_model({kind!r})", f"{name!r} is {TABLE_ONLY_OPTIONS[name]}: give "
                    f"input_mean and input_std themselves (it is not used)")
            continue
        close = difflib.get_close_matches(str(name), sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"invalid config: build_model({kind!r}): unknown option {name!r}{hint}; "
                          f"{kind} takes {', '.join(accepted)}")
    taken = {name: value for name, value in options.items() if name in accepted}
    if cls in BUILT_IN_FAMILIES:  # their errors are eqpdenet's, in their words (tests assert them)
        return cls(**taken)
    return call_own_code(cls, f"model {kind!r}", "class" if inspect.isclass(cls) else "factory",
                         **taken)
