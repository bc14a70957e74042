"""Argument checks, in one place, used once at each public entry point.

Images are checked by :func:`check_images` where they enter the library (a layer's or a model's
``forward``, :func:`~eqpdenet.pde.stencils.jet`), not again at every internal call. Layers and
models also check the values (:func:`check_values`: one pass over the input, one host
synchronisation per call, an :class:`~eqpdenet.errors.InputError` for NaN or inf saying the input
is at fault) and the dtype (:func:`match_dtype`). Numbers in constructors and configurations go
through :func:`require` and the helpers below, which raise :class:`~eqpdenet.errors.ConfigError`
naming the field.

Dtypes. A module computes in the dtype of its parameters. An input of lower precision (float16 or
bfloat16 into a float32 module, float32 into a float64 one) is computed in the module's dtype and
the result returned in the input's dtype: explicit Euler steps ``u + dt F(u)`` in float16 would
lose most of each small update. An input of higher precision than the module (float64 into a
float32 module) is an error rather than a silent loss of the precision asked for.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from .errors import ConfigError, InputError, InputTypeError

__all__ = [
    "check_images",
    "check_values",
    "match_dtype",
    "module_dtype",
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



def check_values(u: Tensor, what: str = "images") -> tuple[float, float]:
    """``(min, max)`` of ``u``; :class:`~eqpdenet.errors.InputError` if ``u`` holds NaN or inf.

    One pass over ``u`` and one device-to-host read (both extremes together); ``(0.0, 0.0)`` for
    an empty tensor.
    """
    if u.numel() == 0:
        return 0.0, 0.0
    with torch.no_grad():
        low, high = torch.stack(torch.aminmax(u.detach())).tolist()  # NaN propagates into both
    if math.isfinite(low) and math.isfinite(high):
        return low, high
    with torch.no_grad():  # the error path only: count what is wrong
        nan = int(torch.isnan(u).sum())
        inf = int(torch.isinf(u).sum())
    raise InputError(f"{what} contains non-finite values ({nan} NaN, {inf} inf of {u.numel()}): "
                     f"the input is at fault, not the PDE scheme; check how it was produced")


def module_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype a module computes in: that of its first floating-point parameter or buffer."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _finer(a: torch.dtype, b: torch.dtype) -> bool:
    """Whether dtype ``a`` represents every value of ``b`` (more precision, no less range)."""
    fa, fb = torch.finfo(a), torch.finfo(b)
    return fa.eps < fb.eps and fa.max >= fb.max


def match_dtype(u: Tensor, dtype: torch.dtype | None, what: str = "images") -> Tensor:
    """``u`` in the module's ``dtype`` (see the module docstring): lower precision is converted
    up, higher precision is an :class:`~eqpdenet.errors.InputTypeError`."""
    if dtype is None or u.dtype == dtype:
        return u
    if _finer(dtype, u.dtype):
        return u.to(dtype)
    raise InputTypeError(
        f"{what} is {u.dtype} but the module computes in {dtype}: convert the module "
        f"(module.to({u.dtype})) to compute in {u.dtype}, or the input ({what}.to({dtype}))")
