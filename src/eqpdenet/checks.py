"""Argument checks, in one place, used once at each public entry point.

Images are checked by :func:`check_images` where they enter the library (a layer's or a model's
``forward``, :func:`~eqpdenet.pde.stencils.jet`), not again at every internal call. Numbers in
constructors and configurations go through :func:`require` and the helpers below, which raise
:class:`~eqpdenet.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import math
import numbers

from torch import Tensor

from .errors import ConfigError, InputError, InputTypeError

__all__ = [
    "check_images",
    "require",
    "require_finite",
    "require_int",
    "require_nonnegative",
    "require_positive",
]


def require(condition: bool, field: str, message: str) -> None:
    """Raise ``ConfigError("invalid config: <field>: <message>")`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"invalid config: {field}: {message}")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_finite(value, field: str) -> float:
    """A finite real number (``bool`` is not a number here)."""
    require(_is_real(value) and math.isfinite(value), field,
            f"must be a finite number, got {value!r}")
    return float(value)


def require_positive(value, field: str) -> float:
    """A finite number ``> 0``."""
    value = require_finite(value, field)
    require(value > 0, field, f"must be positive, got {value!r}")
    return value


def require_nonnegative(value, field: str) -> float:
    """A finite number ``>= 0``."""
    value = require_finite(value, field)
    require(value >= 0, field, f"must be >= 0, got {value!r}")
    return value


def require_int(value, field: str, minimum: int | None = None) -> int:
    """An integer (not a ``bool``), at least ``minimum`` if given."""
    require(isinstance(value, numbers.Integral) and not isinstance(value, bool), field,
            f"must be an integer, got {value!r}")
    if minimum is not None:
        require(value >= minimum, field, f"must be >= {minimum}, got {value!r}")
    return int(value)


def check_images(u, what: str = "images", *, channels: int | None = None,
                 size: tuple[int, int] | None = None) -> Tensor:
    """Raise a clear error unless ``u`` is a floating-point ``(B, C, H, W)`` tensor.

    ``channels`` and ``size`` (height, width), where given, must match as well.
    """
    if not isinstance(u, Tensor):
        raise InputTypeError(f"{what} must be a torch.Tensor, got {type(u).__name__}")
    if u.dim() != 4:
        raise InputError(
            f"{what} must have shape (batch, channels, height, width), got {tuple(u.shape)}"
        )
    if not u.is_floating_point():
        raise InputTypeError(f"{what} must be a floating-point tensor, got dtype {u.dtype}")
    expected = (channels if channels is not None else u.shape[1],
                *(size if size is not None else u.shape[2:]))
    if tuple(u.shape[1:]) != tuple(expected):
        raise InputError(f"expected {what} of shape (batch, {expected[0]}, {expected[1]}, "
                         f"{expected[2]}), got {tuple(u.shape)}")
    return u

