"""The one entry check of every model family: what a model's ``forward`` does first.

Every model in :data:`eqpdenet.models.MODELS` starts its ``forward`` (and any other public method
that takes images) with :func:`check_model_input`::

    class MyFamily(nn.Module):
        def __init__(self, image_size=28, in_channels=1, classes=10, input_mean=0.0,
                     input_std=1.0):
            super().__init__()
            self.image_size = require_image_size(image_size, minimum=4, why="two 2x2 poolings")
            self.in_channels = require_int(in_channels, "in_channels", 1)
            self.standardize = Standardize(input_mean, input_std)
            ...

        def forward(self, images):
            x = check_model_input(self, images).images   # checked, in the model's dtype
            logits = ...                                   # of self.standardize(x)
            return logits.to(images.dtype)

What the model declares: ``image_size`` and ``in_channels`` (the input shape it takes),
``standardize`` (a :class:`~eqpdenet.models.perceptron.Standardize`, for the range warning; optional)
and, where its pooling or stencils need it, a ``min_image_size`` attribute, checked once in the
constructor by :func:`require_image_size` (a :class:`~eqpdenet.errors.ConfigError` naming the
minimum and why). What :func:`check_model_input` checks, in this order, each a one-line error that
names the cause (:mod:`eqpdenet.checks`):

* type and shape: a floating-point tensor ``(B, in_channels, image_size, image_size)``;
* device: the model's (:func:`~eqpdenet.checks.check_device`: an
  :class:`~eqpdenet.errors.InputError` naming both devices, before any work);
* values: NaN or inf is an :class:`~eqpdenet.errors.InputError` saying the input is at fault; an
  input far from the model's ``input_mean`` / ``input_std`` warns once per model
  (:class:`~eqpdenet.errors.InputRangeWarning`);
* a batch of one image in training mode when the model has batch normalisation: an
  :class:`~eqpdenet.errors.InputError` (batch statistics of one image are no statistics; PyTorch
  would fail deep inside the model, or normalise every feature to zero);
* dtype: lower precision than the model (float16, bfloat16 into float32) is computed in the
  model's dtype, higher precision (float64 into float32) is an
  :class:`~eqpdenet.errors.InputTypeError`.

``tests/models/test_entry_checks.py`` runs every check on every registered family, so a new family
that skips this function fails there.
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
from collections.abc import Mapping
from typing import NamedTuple

from torch import Tensor, nn

from ..checks import (
    check_device,
    check_images,
    check_values,
    match_dtype,
    module_dtype,
    require,
    require_int,
)
from ..errors import ConfigError, InputError

__all__ = ["ModelInput", "check_model_input", "family_options", "min_image_size",
           "require_bools", "require_image_size"]


class ModelInput(NamedTuple):
    """What :func:`check_model_input` returns.

    Attributes:
        images: the checked images in the model's dtype (not standardised).
        low, high: their smallest and largest value (to explain a
            :class:`~eqpdenet.errors.NonFiniteStateError` later without another host read).
    """

    images: Tensor
    low: float
    high: float


def min_image_size(model: nn.Module) -> int:
    """The smallest image side ``model`` takes (its ``min_image_size``, 1 if it declares none)."""
    return int(getattr(model, "min_image_size", 1))


def require_image_size(image_size, minimum: int = 1, why: str = "") -> int:
    """``image_size`` as an int, or a :class:`~eqpdenet.errors.ConfigError` if it is not an
    integer of at least ``minimum`` (``why``: what needs that size, e.g. ``"two 2x2 poolings"``)."""
    image_size = require_int(image_size, "image_size", 1)
    require(image_size >= minimum, "image_size",
            f"{image_size} pixels is too small for this model: it needs images of at least "
            f"{minimum}x{minimum}" + (f" ({why})" if why else ""))
    return image_size


def _batch_norm_in_training(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            return name or type(module).__name__
    return None


def check_model_input(model: nn.Module, images, what: str = "images") -> ModelInput:
    """The entry check of a model's ``forward`` (module docstring): one pass over ``images`` and
    one device-to-host read; returns the images in the model's dtype and their range."""
    check_images(images, what, channels=model.in_channels,
                 size=(model.image_size, model.image_size))
    check_device(images, model, what)
    low, high = check_values(images, what)
    standardize = getattr(model, "standardize", None)
    if standardize is not None:
        standardize.check_range(low, high)
    if images.shape[0] == 1 and model.training:
        norm = _batch_norm_in_training(model)
        if norm is not None:
            raise InputError(
                f"a batch of one image in training mode: {type(model).__name__} has batch "
                f"normalisation ({norm}), whose statistics need at least 2 images per batch; "
                f"give 2 or more, or call model.eval() to use its running statistics")
    return ModelInput(match_dtype(images, module_dtype(model), what), low, high)


def require_bools(config, prefix: str = "") -> None:
    """Every field of the dataclass ``config`` declared ``bool`` holds ``True`` or ``False``,
    else a :class:`~eqpdenet.errors.ConfigError` naming it (``prefix + name``): read by a truth
    test, the string ``"false"`` or the integer 1 would switch the option on without a word."""
    for spec in dataclasses.fields(config):
        if spec.type in (bool, "bool"):  # "bool" under ``from __future__ import annotations``
            value = getattr(config, spec.name)
            require(isinstance(value, bool), prefix + spec.name,
                    f"must be true or false, got {value!r}")


def _checked_copy(value):
    """A copy of the dataclass instance ``value`` built through its constructor, so that its
    ``__post_init__`` checks it again; its fields deep-copied, so that neither later changes to
    ``value`` reach the copy nor the checks' normalisations reach ``value``."""
    return dataclasses.replace(value, **{spec.name: copy.deepcopy(getattr(value, spec.name))
                                         for spec in dataclasses.fields(value) if spec.init})


def family_options(value, options_type: type, name: str):
    """A family's options (``cnn``, ``gcnn``, ``invariant_pde``, ``lifted_pde``) as its dataclass
    ``options_type``: None gives the defaults; an instance is checked again, as the dataclass
    checked it when it was made, and a checked copy returned (the instance itself is left as it
    is: a field set after construction, ``config.margin = -2``, skipped those checks, and was
    built into a model that cropped its images or failed deep inside); a mapping of its fields
    is checked as the dataclass checks them (an unknown field is a ConfigError naming it and the
    fields there are); anything else is a ConfigError naming ``name`` and the type, not an
    AttributeError from deep inside the constructor. In every case each field declared ``bool``
    must be ``True`` or ``False`` (:func:`require_bools`, a ConfigError naming
    ``name.field``), each declared ``int`` an integer, ``float`` a real number and ``str`` a
    string (the same error: a mapping's ``{"width": "8"}`` would otherwise reach the family as
    a string); and a field without a default that the mapping (or None) does not give is a
    ConfigError naming it, not a ``TypeError`` from the dataclass's constructor."""
    if value is None or isinstance(value, Mapping):
        _require_given(value or {}, options_type, name)
    if value is None:
        return options_type()
    if isinstance(value, options_type):
        options = _checked_copy(value) if dataclasses.is_dataclass(value) else value
    elif isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(options_type)}
        unknown = sorted(str(key) for key in value if key not in known)
        require(not unknown, name, f"unknown field(s) {', '.join(unknown)}; the fields are "
                f"{', '.join(sorted(known))}")
        options = options_type(**value)
    else:
        raise ConfigError(f"invalid config: {name}: must be a {options_type.__name__} or a "
                          f"mapping of its fields, got {type(value).__name__}")
    if dataclasses.is_dataclass(options):
        require_bools(options, f"{name}.")
        _require_scalar_types(options, f"{name}.")
    return options


def _require_given(value: Mapping, options_type: type, name: str) -> None:
    """A ConfigError naming the fields of the dataclass ``options_type`` that have no default
    and that ``value`` does not give."""
    if not dataclasses.is_dataclass(options_type):
        return
    missing = [spec.name for spec in dataclasses.fields(options_type)
               if spec.init and spec.name not in value
               and spec.default is dataclasses.MISSING
               and spec.default_factory is dataclasses.MISSING]
    many = len(missing) > 1
    require(not missing, name, f"{options_type.__name__}'s field{'s' * many} "
            f"{', '.join(missing)} {'have' if many else 'has'} no default: give "
            f"{'them' if many else 'it'} ("
            + ", ".join(f"{field} = ..." for field in missing) + ")")


#: The scalar field types :func:`_require_scalar_types` checks: declared type (the class or its
#: name, under ``from __future__ import annotations``) -> (accepted types, words).
_SCALAR_TYPES = {"int": ((numbers.Integral,), "an integer"),
                 "float": ((numbers.Real,), "a number"),
                 "str": ((str,), "a string")}


def _require_scalar_types(config, prefix: str) -> None:
    """Every field of the dataclass ``config`` declared ``int``, ``float`` or ``str`` holds one
    (``bool`` is not a number here), else a ConfigError naming ``prefix + name``."""
    for spec in dataclasses.fields(config):
        declared = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
        if declared not in _SCALAR_TYPES:
            continue
        accepted, words = _SCALAR_TYPES[declared]
        value = getattr(config, spec.name)
        numeric = declared != "str"
        require(isinstance(value, accepted) and not (numeric and isinstance(value, bool)),
                prefix + spec.name, f"must be {words}, got {type(value).__name__} {value!r}")
