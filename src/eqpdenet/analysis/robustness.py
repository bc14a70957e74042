"""Robustness of a classifier: accuracy under one fixed rotation, scaling or shift of every test
image, and how much its logits change under rotations.

All transforms follow :mod:`eqpdenet.geometry` (about the image centre, push-forward, bilinear,
zero fill) and are those of :class:`eqpdenet.analysis.equivariance.Transform`: rotations by
multiples of 90 degrees of square images, and by multiples of 180 degrees of any image, are exact
(:func:`torch.rot90`); a quarter turn of a non-square image is resampled, which keeps its shape.
Every angle, factor and shift is checked before any image is moved: a NaN or infinite value, a
``bool`` (``True`` is no angle of 1 degree), a scale factor that is 0, infinite or without a
finite reciprocal in the images' working dtype (:func:`~eqpdenet.geometry.working_dtype`:
``1e-50`` is 0 in float32 and ``1e300`` infinite), a negative shift distance (it only reversed
the direction drawn), or a shift of at least the image's side (nothing of the image would be
left) is a :class:`~eqpdenet.errors.ConfigError` naming the argument and the entry
(``factors[1]``); so is a ``batch_size`` below 1, a ``seed`` that is not an integer, and a shift
of :func:`axis_shift` that is not whole pixels. An empty list of angles, factors or shifts gives
an empty curve, and a value listed twice is measured twice (the curve lists one point per value
given); the benchmark's ``curves`` section refuses both
(:class:`~eqpdenet.app.config.CurvesConfig`), where they would make a recorded curve's axis
empty or ambiguous.
``images`` must be ``(N, C, H, W)`` with ``N >= 1`` and ``labels`` one integer class per image,
shape ``(N,)``, each a class of the model (``0 ... K - 1`` for its logits ``(N, K)``), and the
model must return logits ``(n, K)`` for a batch of ``n`` (anything else is an
:class:`~eqpdenet.errors.InputError`: labels of shape ``(N, 1)`` or ``(1,)``, and logits
``(N, K, 1, 1)``, were broadcast against the predictions and scored ``N x N`` pairs;
:func:`~eqpdenet.analysis.predictions.correct_predictions`). Models are measured in evaluation
mode, every submodule's own mode restored afterwards
(:func:`~eqpdenet.analysis.predictions.evaluation_mode`). A shift of
``s`` pixels moves each image by ``s`` in a direction drawn uniformly per image from a generator
seeded by ``seed`` (the same directions for every model); a sub-pixel direction means bilinear
resampling. :func:`axis_shift_curve` moves by whole pixels along the axes instead (no
resampling), and :func:`round_trip_change` rotates and rotates back (resampling, no net
rotation): together they separate what a model does with translations and rotations from what
it does with resampled pixels.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    >>> images, labels = torch.rand(5, 1, 4, 4), torch.zeros(5, dtype=torch.long)
    >>> len(rotation_curve(model, images, labels, [0, 90, 180]))
    3
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..checks import require_int
from ..errors import ConfigError
from ..geometry import scale, translate, working_dtype
from .equivariance import Transform, _finite_number, _relative_change
from .predictions import (
    EVALUATION_BATCH,
    _check_batch_size,
    _logit_pairs,
    check_images,
    check_labels,
    correct_predictions,
)

__all__ = [
    "accuracy_under",
    "axis_shift",
    "axis_shift_curve",
    "logit_change",
    "round_trip_change",
    "rotation_curve",
    "scale_curve",
    "shift_curve",
]


def accuracy_under(model: nn.Module, images: Tensor, labels: Tensor,
                   transform: Callable[[Tensor], Tensor], batch_size: int = EVALUATION_BATCH) -> float:
    """Accuracy in percent of ``model`` on ``transform(images)`` ``(N, C, H, W)``, ``N >= 1``,
    against ``labels`` ``(N,)`` (integer classes of the model); an image on which the model's
    PDE blows up has no prediction and counts as an error
    (:func:`~eqpdenet.analysis.predictions.correct_predictions`)."""
    check_labels(images, labels)
    _check_batch_size(batch_size)
    moved = torch.cat([transform(images[i:i + batch_size])
                       for i in range(0, len(images), batch_size)])
    correct, _ = correct_predictions(model, moved, labels, batch_size)
    return 100.0 * float(correct.double().mean())


def _number(value, name: str) -> float:
    """``value`` as a float, or a :class:`~eqpdenet.errors.ConfigError` naming ``name`` unless it
    is a finite number other than a ``bool`` (:func:`float` took ``True`` for 1 silently; the
    benchmark's ``curves`` section refuses it too)."""
    # numpy's bool_ and a bool tensor convert to 1.0 as well; they are no number either
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        raise ConfigError(f"{name} must be a number, not a bool, got {value!r}")
    return _finite_number(value, name)


def _finite(values: Sequence[float], name: str) -> list[float]:
    """``values`` as floats, or a :class:`~eqpdenet.errors.ConfigError` naming ``name`` and the
    first value that is not a finite number (:func:`_number`)."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ConfigError(f"{name} must be a list of numbers, got {values!r}")
    return [_number(value, f"{name}[{index}]") for index, value in enumerate(values)]


def _distances(shifts: Sequence[float], name: str) -> None:
    """A shift is a distance in a direction drawn per image: a negative one only reversed the
    direction, and read as a smaller shift on the curve's axis (the benchmark's
    ``curves.shifts`` refuses it so)."""
    for index, s in enumerate(shifts):
        if s < 0:
            raise ConfigError(f"{name}[{index}] must be a distance >= 0 (the direction is drawn "
                              f"per image), got {s:g}")


def _within_frame(shifts: Sequence[float], images: Tensor, name: str) -> None:
    """A shift of at least the image's smaller side moves every pixel out of the frame: the
    model would be scored on blank images, whatever the direction."""
    side = min(images.shape[-2:])
    for index, s in enumerate(shifts):
        if abs(s) >= side:
            raise ConfigError(f"{name}[{index}] = {s:g} pixels moves the whole {images.shape[-2]}x"
                              f"{images.shape[-1]} image out of its frame; use shifts below {side}")


def _rotation(degrees: float) -> Callable[[Tensor], Tensor]:
    return Transform.rotation(degrees)


def rotation_curve(model: nn.Module, images: Tensor, labels: Tensor,
                   angles: Sequence[float]) -> list[float]:
    """Accuracy (percent) with every image rotated by each angle (degrees, counterclockwise)."""
    angles = _finite(angles, "angles")
    check_labels(images, labels)
    return [accuracy_under(model, images, labels, _rotation(a)) for a in angles]


def scale_curve(model: nn.Module, images: Tensor, labels: Tensor,
                factors: Sequence[float]) -> list[float]:
    """Accuracy (percent) with every image scaled by each factor about its centre (non-zero; a
    negative factor is also a half turn). Every factor is checked before any image is moved,
    also in the images' working dtype (:func:`~eqpdenet.geometry.working_dtype`; float32 for
    float32, float16 and bfloat16 images), where it must be finite and non-zero with a finite
    reciprocal: a :class:`~eqpdenet.errors.ConfigError` naming ``factors[i]`` otherwise."""
    factors = _finite(factors, "factors")
    for index, f in enumerate(factors):
        if f == 0:
            raise ConfigError(f"factors[{index}] must be non-zero, got 0 (a scaling by 0 maps "
                              f"every point onto the centre)")
    check_labels(images, labels)
    _scalable(factors, working_dtype(images.dtype))
    return [accuracy_under(model, images, labels, lambda x, f=f: scale(x, f)) for f in factors]


def _scalable(factors: Sequence[float], dtype: torch.dtype) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` naming the first factor that
    :func:`eqpdenet.geometry.scale` would refuse in ``dtype`` (the images' working dtype: 0,
    infinite, or without a finite reciprocal there)."""
    # checked in float64 only, 1e300 or 1e-50 passed: the curve scored the factors before it,
    # then scale() blamed an infinite or zero `factor` that the caller had not given
    where = f"in {str(dtype).removeprefix('torch.')}, the images' working dtype"
    for index, f in enumerate(factors):
        held = torch.tensor(f, dtype=dtype)
        if not bool(torch.isfinite(held)):
            problem = f"is infinite {where} (its largest number is {torch.finfo(dtype).max:g})"
        elif held == 0:
            problem = f"is 0 {where} (a scaling by 0 maps every point onto the centre)"
        elif not bool(torch.isfinite(1 / held)):
            problem = (f"has no finite reciprocal {where} (the warp samples the input at "
                       f"p / factor)")
        else:
            continue
        raise ConfigError(f"factors[{index}] = {f:g} {problem}")


def shift_curve(model: nn.Module, images: Tensor, labels: Tensor, shifts: Sequence[float],
                seed: int = 0) -> list[float]:
    """Accuracy (percent) with every image shifted by each distance (pixels, at least 0 and
    below the image's smaller side), in a direction drawn per image (seeded, the same for every
    distance).
    ``seed`` is an integer, ``-2**63 <= seed < 2**63``, as for
    :func:`~eqpdenet.data.scenarios.apply_scenario` (a :class:`~eqpdenet.errors.ConfigError`
    naming it otherwise)."""
    seed = require_int(seed, "seed")  # 2.5, None and True reached manual_seed: a raw RuntimeError
    shifts = _finite(shifts, "shifts")
    check_labels(images, labels)
    _within_frame(shifts, images, "shifts")
    _distances(shifts, "shifts")
    generator = torch.Generator().manual_seed(seed)
    theta = 2 * math.pi * torch.rand(len(images), generator=generator, dtype=torch.float64)
    # in the warp's dtype: float16 directions moved half-precision images up to 0.002 pixel off
    # (at 4 pixels) before the warp, which computes in float32 to avoid such errors
    direction = torch.stack([torch.cos(theta), torch.sin(theta)], 1).to(
        working_dtype(images.dtype))
    curve = []
    for s in shifts:
        shifted = translate(images, s * direction)
        curve.append(accuracy_under(model, shifted, labels, lambda x: x))
    return curve


def logit_change(model: nn.Module, images: Tensor, degrees: float,
                 batch_size: int = EVALUATION_BATCH) -> float:
    """Relative change of the logits under a rotation: ``||l(g f) - l(f)|| / ||l(f)||`` over the
    whole batch (0 for a rotation-invariant model), in float64
    (:func:`~eqpdenet.analysis.equivariance._relative_change`, shared with
    :func:`~eqpdenet.analysis.equivariance.model_invariance`: 0 where the logits are all 0 before
    and after, inf where they are all 0 only before), over the images on which the model gives
    finite logits before and after (:func:`~eqpdenet.analysis.predictions._logit_pairs`; NaN
    where there is none: nothing was compared). No image: an
    :class:`~eqpdenet.errors.InputError`."""
    degrees = _number(degrees, "degrees")
    check_images(images)
    _check_batch_size(batch_size)
    return _relative_change(*_logit_pairs(model, images, _rotation(degrees)(images), batch_size))


def round_trip_change(model: nn.Module, images: Tensor, degrees: float,
                      batch_size: int = EVALUATION_BATCH) -> float:
    """Relative change of the logits when every image is rotated by ``degrees`` and back:
    ``||l(g^-1 (g f)) - l(f)|| / ||l(f)||`` over the whole batch. There is no net rotation, only
    two bilinear resamplings (none for multiples of 90 degrees), so this is the part of
    :func:`logit_change` that is resampling, not rotation."""
    degrees = _number(degrees, "degrees")
    check_images(images)
    _check_batch_size(batch_size)
    back = _rotation(-degrees)(_rotation(degrees)(images))
    return _relative_change(*_logit_pairs(model, images, back, batch_size))


def _whole_pixels(shift, name: str) -> tuple[int, int]:
    """``shift`` as two Python integers, or a :class:`~eqpdenet.errors.ConfigError` naming
    ``name`` (and the entry at fault) unless it is a pair of finite whole numbers."""
    try:
        values = None if isinstance(shift, str | bytes) else list(shift)
    except TypeError:  # not iterable: a single number
        values = None
    if values is None or len(values) != 2:
        raise ConfigError(f"{name} must be a pair of whole pixels (t_x, t_y), got {shift!r}")
    for index, value in enumerate(values):
        number = _number(value, f"{name}[{index}]")
        if number != int(number):
            raise ConfigError(f"{name}[{index}]: axis_shift takes whole pixels; got a shift of "
                              f"{number:g}")
    return int(values[0]), int(values[1])


def axis_shift(images: Tensor, shift: tuple[int, int]) -> Tensor:
    """Images ``(..., H, W)`` moved by whole pixels ``shift = (t_x, t_y)`` (``t_y`` upwards, as in
    :func:`eqpdenet.geometry.translate`), zero fill: exact, no resampling. A shift of the
    image's side or more leaves a blank image.

    ``shift`` is a pair of whole numbers (``2`` or ``2.0``); anything else (``1.5``, NaN, inf, not
    a pair) is a :class:`~eqpdenet.errors.ConfigError` naming ``shift``: :func:`int` had cut
    1.5 to 1 pixel silently, and NaN was a raw ``ValueError``."""
    t_x, t_y = _whole_pixels(shift, "shift")
    height, width = images.shape[-2:]
    if abs(t_x) >= width or abs(t_y) >= height:  # F.pad cannot crop more than the image
        return torch.zeros_like(images)
    # F.pad's (left, right, top, bottom); a negative amount crops
    return torch.nn.functional.pad(images, (t_x, -t_x, -t_y, t_y))


#: The four axis directions of :func:`axis_shift_curve`: right, up, left, down.
AXIS_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def axis_shift_curve(model: nn.Module, images: Tensor, labels: Tensor, shifts: Sequence[int],
                     seed: int = 0) -> list[float]:
    """Accuracy (percent) with every image moved by each whole number of pixels along an axis
    direction (right, up, left or down, drawn per image from a generator seeded by ``seed``,
    the same for every distance): translations without resampling (:func:`axis_shift`), each
    at least 0 and below the image's smaller side. ``seed`` as for :func:`shift_curve`."""
    seed = require_int(seed, "seed")  # 2.5, None and True reached manual_seed: a raw RuntimeError
    shifts = _finite(shifts, "shifts")
    for index, s in enumerate(shifts):
        if s != int(s):
            raise ConfigError(f"shifts[{index}]: axis_shift_curve takes whole pixels; got a "
                              f"shift of {s:g}")
    check_labels(images, labels)
    _within_frame(shifts, images, "shifts")
    _distances(shifts, "shifts")
    generator = torch.Generator().manual_seed(seed)
    which = torch.randint(len(AXIS_DIRECTIONS), (len(images),), generator=generator)
    curve = []
    for s in shifts:
        moved = images.clone()
        for k, (d_x, d_y) in enumerate(AXIS_DIRECTIONS):
            chosen = which == k
            moved[chosen] = axis_shift(images[chosen], (int(s) * d_x, int(s) * d_y))
        curve.append(accuracy_under(model, moved, labels, lambda x: x))
    return curve
