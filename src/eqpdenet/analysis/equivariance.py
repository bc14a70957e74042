"""Measuring equivariance: how far ``Phi(g . f)`` is from ``g . Phi(f)``, and against what.

Protocol (``docs/equivariance.md`` states it with the measured numbers):

* **Error.** For a map ``Phi`` (one PDE, a PDE layer, a convolution), images ``f`` and a group
  element ``g`` acting by push-forward (:mod:`eqpdenet.geometry`), the *relative equivariance
  error* is

      E(Phi, g) = || M (Phi(g . f) - g . Phi(f)) || / || M Phi(f) ||

  with the Euclidean norm taken over the whole batch (all images, channels and pixels together)
  and ``M`` the indicator of the points of a *central disk* (radius ``0.35 x`` the image side by
  default) that the transform keeps on real pixels (:func:`filled_region`): where ``g`` or
  ``g^{-1}`` moves a point past the frame's outermost pixel centres, one side of the comparison
  is read from the zero fill of the resampling, not from the image or the map, so such points
  are left out (the corners of a rotation; for a scaling by ``lambda < 1`` everything past
  ``lambda x 13.5`` px of a 28-pixel image, for ``lambda > 1`` past ``13.5 / lambda`` px).
  Masking the fill, rather than filling with the map's value on a blank image, also keeps maps
  whose background is not 0 (a learned layer after its input standardisation) from being
  charged for it.
* **References.** The identity map has ``E = 0`` *exactly* for every ``g`` (both sides are the
  same resampling of ``f``), so it says nothing about interpolation. The *interpolation floor*
  is the round trip ``|| M (g^{-1} . (g . f) - f) || / || M f ||``: what one resampling forth and
  back costs on these inputs. The *non-equivariant reference* is a seeded random 3x3
  convolution (:mod:`eqpdenet.analysis.references`). A layer is as equivariant as the grid
  allows when its ``E`` is of the order of the interpolation floor and far below the random
  convolution's.
* **Exact group elements.** Rotations by multiples of 90 degrees (of square images; of any
  image, the half turn) map pixel centres onto pixel centres and are applied with
  :func:`torch.rot90`, which is exactly :func:`eqpdenet.geometry.rotate` there; at those angles
  no interpolation is involved, so an equivariant map must give ``E ~ 1e-7`` (float32
  round-off) and a non-equivariant one cannot hide behind interpolation error:
  :func:`quarter_turn_check` uses that to flag maps (a quarter turn of a non-square image is
  resampled, and flags only on images blank near the frame).
* **Modes.** A map or model that is an ``nn.Module`` is measured in evaluation mode, every
  submodule's own mode restored afterwards
  (:func:`~eqpdenet.analysis.predictions.evaluation_mode`): in training mode a batch norm
  normalises by the batch's statistics (which a transform changes) and a dropout draws from the
  global random generator, so a freshly built ``conv, BatchNorm2d, ReLU, Dropout2d`` scored 0.60
  (not equivariant) against 7e-8 after ``.eval()``, and the measurement moved its running
  statistics.

Everything here is deterministic (seeded generators, no data augmentation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..checks import check_values, require_int, require_nonnegative
from ..errors import ConfigError, InputError, InputTypeError
from ..geometry import affine_warp, pixel_coordinates, rotate, rotation_matrix, scale, translate
from .predictions import (
    EVALUATION_BATCH,
    _check_batch_size,
    _logit_pairs,
    _shape,
    check_images,
    evaluation_mode,
)

__all__ = [
    "DISK_FRACTION",
    "Similarity",
    "Transform",
    "central_disk",
    "equivariance_error",
    "filled_region",
    "interpolation_floor",
    "layer_quarter_turn_report",
    "model_invariance",
    "quarter_turn_check",
    "similarity",
]

#: Default radius of the measurement disk, as a fraction of the image side.
DISK_FRACTION = 0.35


# ----------------------------------------------------------------------------- group elements


def _finite_number(value, name: str) -> float:
    """``value`` as a float, or a :class:`~eqpdenet.errors.ConfigError` naming ``name``: a NaN or
    infinite group element would come back as an error about the images it was applied to."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {number:g}")
    return number


def _radians(degrees: float) -> float:
    """``degrees`` in radians, reduced modulo 360 first (:func:`math.fmod`, exact).
    :func:`eqpdenet.geometry.rotation_matrix` reduces an angle beyond a turn too, but in
    radians, where ``radians(37 + 360 k)`` is already rounded; here a transform by ``37 + 360 k``
    degrees is the one by 37, bit for bit, for ``k >= 0``. A negative angle keeps its sign
    (``-323`` is a rotation by ``-323``, whose radians round otherwise than 37's: the two
    differ by about 1e-6 of a pixel's value). Reducing to ``(-180, 180]`` instead was tried in
    round 17 and not kept: it changed the images of every angle between 180 and 360, so the
    committed benchmark curves (0 to 345 degrees) would no longer reproduce to the last digit."""
    return math.radians(math.fmod(degrees, 360.0))


def _relative_change(moved: Tensor, reference: Tensor) -> float:
    """``||moved - reference|| / ||reference||`` over all entries, in float64 (the float32 norm
    of entries above about 1e19 overflowed: NaN or inf for finite values). Where
    ``reference`` is all 0: 0 if ``moved`` is too (nothing changed), inf otherwise (any change
    is infinitely large relative to nothing). NaN only where an input is not finite, or where
    there is no entry (no image with finite logits before and after: nothing was compared; it
    read 0, "invariant"). The one rule of :func:`model_invariance` and of the logit changes of
    :mod:`eqpdenet.analysis.robustness`."""
    if reference.numel() == 0:
        return math.nan
    moved, reference = moved.double(), reference.double()
    change = float(torch.linalg.vector_norm(moved - reference))
    size = float(torch.linalg.vector_norm(reference))
    if size == 0.0:
        return 0.0 if change == 0.0 else math.inf
    return change / size


@dataclass(frozen=True)
class Transform:
    """A group element ``p -> A p + t`` acting on images, with a printable name.

    ``kind`` is ``"rotation"`` (``value`` in degrees), ``"scale"`` (``value`` = lambda, non-zero)
    or ``"translation"`` (``value`` = ``(t_x, t_y)`` in pixels of the *original* grid; on an image
    upsampled ``k`` times the shift is ``k`` times as many pixels). Every value must be finite
    (and a scale non-zero): anything else is a :class:`~eqpdenet.errors.ConfigError` naming it,
    when the transform is made.
    """

    kind: str
    value: float | tuple[float, float]
    label: str = ""

    def __post_init__(self):
        if self.kind == "rotation":
            _finite_number(self.value, "rotation: degrees")
        elif self.kind == "scale":
            if _finite_number(self.value, "scale: factor") == 0:
                raise ConfigError("scale: factor must be non-zero, got 0 (it maps every point "
                                  "onto the centre and has no inverse)")
        elif self.kind == "translation":
            if not isinstance(self.value, tuple) or len(self.value) != 2:
                raise ConfigError(f"translation: shift must be (t_x, t_y), got {self.value!r}")
            _finite_number(self.value[0], "translation: t_x")
            _finite_number(self.value[1], "translation: t_y")
        else:
            raise ConfigError(f"unknown transform kind {self.kind!r}: rotation, scale or "
                              f"translation")

    @staticmethod
    def rotation(degrees: float) -> Transform:
        degrees = _finite_number(degrees, "rotation: degrees")
        return Transform("rotation", degrees, f"rot {degrees:g}°")

    @staticmethod
    def scale(factor: float) -> Transform:
        factor = _finite_number(factor, "scale: factor")
        return Transform("scale", factor, f"scale {factor:g}")

    @staticmethod
    def translation(tx: float, ty: float) -> Transform:
        tx, ty = _finite_number(tx, "translation: t_x"), _finite_number(ty, "translation: t_y")
        return Transform("translation", (tx, ty), f"shift ({tx:g}, {ty:g})")

    @property
    def is_quarter_turn(self) -> bool:
        return self.kind == "rotation" and float(self.value) % 90.0 == 0.0

    def __call__(self, images: Tensor, *, pixels_per_unit: float = 1.0) -> Tensor:
        """Apply to ``(B, C, H, W)`` images; ``pixels_per_unit`` scales translations.

        A quarter turn of a square image and a half turn of any image map pixel centres onto
        pixel centres and are applied exactly (:func:`torch.rot90`); a quarter turn of a
        non-square image is resampled (:func:`eqpdenet.geometry.rotate`), which keeps its shape.
        """
        if self.kind == "rotation":
            turns = int(round(float(self.value) / 90.0)) % 4 if self.is_quarter_turn else None
            if turns is not None and (turns % 2 == 0 or images.shape[-1] == images.shape[-2]):
                return torch.rot90(images, k=turns, dims=(-2, -1))
            return rotate(images, _radians(float(self.value)))
        if self.kind == "scale":
            return scale(images, float(self.value))
        shift = torch.tensor(self.value, dtype=images.dtype) * pixels_per_unit
        return translate(images, shift)

    def inverse(self) -> Transform:
        if self.kind == "rotation":
            return Transform.rotation(-float(self.value))
        if self.kind == "scale":
            return Transform.scale(1.0 / float(self.value))
        return Transform.translation(-self.value[0], -self.value[1])

    def affine(self, pixels_per_unit: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(A, t)`` of ``p -> A p + t`` in float64, ``t`` in pixels (``(x, y)``, ``y`` up)."""
        eye = torch.eye(2, dtype=torch.float64)
        if self.kind == "rotation":
            return rotation_matrix(_radians(float(self.value)), dtype=torch.float64), \
                torch.zeros(2, dtype=torch.float64)
        if self.kind == "scale":
            return float(self.value) * eye, torch.zeros(2, dtype=torch.float64)
        return eye, torch.tensor(self.value, dtype=torch.float64) * pixels_per_unit


def similarity(images: Tensor, angle_degrees: float = 0.0, factor: float = 1.0,
               shift: Sequence[float] = (0.0, 0.0)) -> Tensor:
    """``p -> factor R(angle) p + shift`` by :func:`eqpdenet.geometry.affine_warp` (for figures)."""
    matrix = factor * rotation_matrix(_radians(float(angle_degrees)), dtype=images.dtype)
    return affine_warp(images, matrix, torch.tensor(shift, dtype=images.dtype))


@dataclass(frozen=True)
class Similarity:
    """The group element ``p -> factor R(angle) p + shift`` of :func:`similarity` (a figure's
    ``g``: rotation, scaling and shift at once), with what :func:`filled_region` and the
    measurement's refusal need of a :class:`Transform`: its :meth:`affine` map and a printable
    :attr:`label`. Calling it is :func:`similarity`; its values are checked there."""

    angle: float = 0.0
    factor: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    @property
    def description(self) -> str:
        """``"rotation 30°, scale 2, shift (1, 0) px"`` (scale and shift where they act)."""
        return (f"rotation {self.angle:g}°" + (f", scale {self.factor:g}" if self.factor != 1
                                               else "")
                + (f", shift ({self.shift[0]:g}, {self.shift[1]:g}) px" if any(self.shift)
                   else ""))

    @property
    def label(self) -> str:
        return f"g = {self.description}"

    def __call__(self, images: Tensor) -> Tensor:
        return similarity(images, self.angle, self.factor, self.shift)

    def affine(self, pixels_per_unit: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(A, t)`` of ``p -> A p + t`` in float64, ``t`` in pixels (``(x, y)``, ``y`` up)."""
        matrix = float(self.factor) * rotation_matrix(_radians(float(self.angle)),
                                                      dtype=torch.float64)
        return matrix, torch.tensor(self.shift, dtype=torch.float64) * pixels_per_unit


# ----------------------------------------------------------------------------- the measurement


def central_disk(height: int, width: int | None = None,
                 radius_fraction: float = DISK_FRACTION) -> Tensor:
    """Boolean ``(H, W)`` mask of the pixels within ``radius_fraction * min(H, W)`` of the centre.

    ``height`` and ``width`` (default: ``height``) whole numbers >= 1, ``radius_fraction`` a
    finite number >= 0; anything else is a :class:`~eqpdenet.errors.ConfigError` naming it (a
    negative radius was squared into a positive one, a NaN gave an empty mask, and a width of 0
    was read as "not given")."""
    height = require_int(height, "height", 1)
    width = height if width is None else require_int(width, "width", 1)
    radius_fraction = require_nonnegative(radius_fraction, "radius_fraction")
    x, y = pixel_coordinates(height, width, dtype=torch.float64)
    return x**2 + y**2 <= (radius_fraction * min(height, width)) ** 2


#: Slack, in pixels, for a point that lands on the frame's outermost pixel centres up to rounding
#: (a quarter turn computed with cos(pi/2) ~ 6e-17).
_FRAME_SLACK = 1e-9


def filled_region(transform: Transform | Similarity, height: int, width: int | None = None,
                  frame: tuple[int, int] | None = None, pixels_per_unit: float = 1.0) -> Tensor:
    """Boolean ``(H, W)`` mask of the pixels ``p`` of an ``H x W`` grid (centred as in
    :mod:`eqpdenet.geometry`) that ``transform`` (a :class:`Transform`, or a figure's
    :class:`Similarity`) keeps on real pixels both ways: ``g p`` and ``g^{-1} p`` lie within the
    rectangle of the pixel centres of ``frame`` (``(h, w)``, on the same centre and spacing;
    default ``(H, W)``), and so does ``p``.

    Within that rectangle bilinear resampling reads four real pixels; past it, it reads the zero
    fill. ``g . u`` at ``p`` reads ``u`` at ``g^{-1} p`` (the error's ``g . Phi(f)`` and the
    ``g . f`` that ``Phi(g . f)`` sees), and the round trip ``g^{-1} . (g . f)`` at ``p`` reads
    ``g . f`` at ``g p`` (the interpolation floor), so this is where both compare real values.
    ``width`` defaults to ``height`` (only where not given: a width of 0 is an empty grid, as a
    height of 0 is).
    """
    width = height if width is None else width
    frame_h, frame_w = frame or (height, width)
    half = torch.tensor([(min(width, frame_w) - 1) / 2, (min(height, frame_h) - 1) / 2],
                        dtype=torch.float64) + _FRAME_SLACK
    x, y = pixel_coordinates(height, width, dtype=torch.float64)
    points = torch.stack([x, y], -1)                                     # (H, W, 2)
    matrix, shift = transform.affine(pixels_per_unit)
    forward = points @ matrix.T + shift
    backward = (points - shift) @ torch.linalg.inv(matrix).T
    inside = [(q.abs() <= half).all(-1) for q in (points, forward, backward)]
    return inside[0] & inside[1] & inside[2]


def _masked_norm(t: Tensor, mask: Tensor | None) -> float:
    """The norm of ``t`` on ``mask``, in float64 (a float32 norm of values above about 1e19
    overflowed). Points off ``mask`` are set to 0, not multiplied by it: an inf there (a
    difference of two finite float32 maps that overflowed) times 0 was NaN, and made the whole
    norm NaN; on finite values the two are the same, bit for bit."""
    t = t.double()
    if mask is not None:
        t = torch.where(mask.to(device=t.device, dtype=torch.bool), t, 0.0)
    return float(torch.linalg.vector_norm(t.flatten()))


#: The cause named by every refusal of a non-finite map output: the images were checked.
_MAP_MADE_THEM = ("the images are finite, so the map made them (a PDE that blows up on these "
                  "images, a division by 0)")


def _non_finite(values: Tensor, where: Tensor | None = None) -> tuple[int, int, list[int]] | None:
    """``(NaN count, inf count, index of the first)`` of the non-finite entries of ``values``
    (``(B, ..., H, W)``) at the pixels of ``where`` (a boolean ``(H, W)`` mask; default: every
    pixel); None where there is none."""
    bad = ~torch.isfinite(values)
    if where is not None:
        bad = bad & where.to(device=values.device, dtype=torch.bool)
    if not bool(bad.any()):
        return None
    nan = int((bad & torch.isnan(values)).sum())
    return nan, int(bad.sum()) - nan, [int(i) for i in torch.nonzero(bad)[0].tolist()]


def _measured_count(values: Tensor, mask: Tensor) -> int:
    """How many entries of ``values`` (``(B, ..., H, W)``) lie on ``mask`` (``(H, W)``)."""
    return values.numel() // max(values.shape[-2] * values.shape[-1], 1) * int(mask.sum())


def _check_map_values(out: Tensor, what: str, mask: Tensor | None = None,
                      reason: str | None = None) -> None:
    """An :class:`~eqpdenet.errors.InputError` naming ``what`` (the map's output, on which
    images) where ``out`` holds NaN or inf at a pixel of ``mask`` (a boolean ``(H, W)``; default:
    anywhere in the frame): their counts and the index of the first. The images were checked to
    be finite, so the map made them.

    With a ``mask`` (:func:`equivariance_error`'s measured points) the message says that the
    error reads them (it would be NaN or inf, which says nothing of the map); a value off the
    mask is not refused here, as :func:`_masked_norm` sets it to 0 (see
    :func:`_check_carried_values` for one that the transform's resampling moves onto the mask).
    Without one, the whole frame is checked and ``reason`` says why a value anywhere is refused
    (the study's check of a checkpoint's maps before it measures them)."""
    if not isinstance(out, Tensor) or out.numel() == 0:
        return
    found = _non_finite(out, mask)
    if found is None:
        return
    nan, inf, first = found
    if mask is None:
        counted = f"of {out.numel()}"
        reason = reason or "a non-finite value anywhere in the map's output is refused"
    else:
        counted = (f"of the {_measured_count(out, mask)} values at the measured points, "
                   f"which the equivariance error reads")
        reason = "the error would be NaN or inf, which says nothing of the map"
    raise InputError(
        f"{what} holds non-finite values ({nan} NaN, {inf} inf {counted}; the first at index "
        f"{first}: {float(out[tuple(first)])}): {_MAP_MADE_THEM}, and {reason}; measure a map "
        f"that is finite on these images")


def _check_carried_values(out: Tensor, moved_out: Tensor, mask: Tensor, transform) -> None:
    """An :class:`~eqpdenet.errors.InputError` where ``moved_out = transform(out)`` (the error's
    ``g . Phi(f)``) is non-finite at a point of ``mask`` although ``out`` is finite there
    (:func:`_check_map_values` checked it): a NaN or inf of ``out`` off the measured disk that
    the transform's resampling reads for a measured point (bilinear interpolation reads the four
    pixels around ``g^{-1} p``, one of weight 0 too, and ``0 x inf`` is NaN). Checking
    ``moved_out`` itself is exact for any ``transform``, a :class:`Transform` or any callable:
    these are the values the error reads. Names the first such value of ``out``."""
    carried = _non_finite(moved_out, mask)
    if carried is None:
        return
    label = getattr(transform, "label", "") or "the transform g"
    found = _non_finite(out)
    if found is None:  # a finite output: the transform made them (a callable of one's own)
        _refuse_transform_values(moved_out, mask, getattr(transform, "label", "") or "g",
                                 "g . phi(f), the map's finite output on the images moved by it")
    nan, inf, first = found
    raise InputError(
        f"the map's output on the images holds non-finite values off the measured points"
        f" ({nan} NaN, {inf} inf of {out.numel()}; the first at index {first}: "
        f"{float(out[tuple(first)])}), and the resampling of {label} carries them onto "
        f"{carried[0] + carried[1]} of the {_measured_count(moved_out, mask)} values at the "
        f"measured points that the equivariance error reads: {_MAP_MADE_THEM}, and the error "
        f"would be NaN or inf, which says nothing of the map; measure a map that is finite on "
        f"these images, or a transform that does not read these points")


def _refuse_transform_values(moved: Tensor, mask: Tensor | None, label: str, what: str) -> None:
    """An :class:`~eqpdenet.errors.InputError` naming the transform ``label`` where its result
    ``moved`` (``what``: of which finite input) holds NaN or inf at a pixel of ``mask`` (any
    pixel without one): a transform of one's own (any callable) that makes them from finite
    values; the error would otherwise blame the map, which had finite input and output."""
    found = _non_finite(moved, mask)
    if found is None:
        return
    nan, inf, first = found
    where = (f"{_measured_count(moved, mask)} values at the measured points" if mask is not None
             else f"{moved.numel()} values")
    raise InputError(
        f"the transform {label} makes non-finite values from finite ones: {what} holds {nan} "
        f"NaN and {inf} inf of its {where} (the first at index {first}: "
        f"{float(moved[tuple(first)])}); the equivariance error would be NaN or inf, which says "
        f"nothing of the map; use a transform that keeps finite values finite")


def _require_points(mask: Tensor, transform, size: tuple[int, int]) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` where the measurement region has no point, naming
    ``transform`` where it is a :class:`Transform` or a :class:`Similarity`: the error would be
    ``0 / 0``, and was reported as 0 ("perfectly equivariant") for any map. The one rule of
    :func:`equivariance_error`, :func:`interpolation_floor` and the figure's
    :func:`~eqpdenet.app.figures.diagram_arrays`."""
    if bool(mask.any()):
        return
    height, width = size
    if isinstance(transform, Transform | Similarity):
        raise ConfigError(
            f"{transform.label}: no point of the measured region of the {height}x{width} grid "
            f"stays on real pixels both ways (p, g p and g^-1 p all within the frame): only the "
            f"zero fill would be compared, nothing to measure; use a smaller shift or a scale "
            f"factor nearer 1")
    raise ConfigError(f"mask selects no point of the {height}x{width} grid: nothing to measure")


def _measurement_mask(mask: Tensor | None, transform, size: tuple[int, int],
                      frame: tuple[int, int], **kwargs) -> Tensor:
    """``mask`` (default: the central disk of radius ``DISK_FRACTION x`` the side of ``frame``,
    the images' size, on a grid of ``size``, the output's), less the points that
    :func:`filled_region` excludes where ``transform`` is a :class:`Transform`."""
    height, width = size
    if mask is None:
        x, y = pixel_coordinates(height, width, dtype=torch.float64)
        mask = x**2 + y**2 <= (DISK_FRACTION * min(frame)) ** 2
    elif tuple(mask.shape) != (height, width):
        raise ConfigError(f"mask has shape {tuple(mask.shape)}, but the measured maps are "
                          f"{height}x{width}")
    if isinstance(transform, Transform):
        mask = mask.bool() & filled_region(transform, height, width, frame, **kwargs)
    return mask


def _check_output_grid(phi: Callable[[Tensor], Tensor], images: Tensor, out) -> None:
    """An error unless ``out = phi(images)`` holds maps ``(B, ..., H', W')`` on the images' pixel
    grid: the same spacing and centre, ``H' x W'`` the images' ``H x W`` or a frame grown or cut
    by a margin, a fixed number of pixels on each side.

    A margin is told from a change of spacing by the map itself where it takes smaller images:
    on one image one pixel smaller on every side, a margin returns maps one pixel smaller on
    every side (a valid convolution, a padding), a change of spacing does not (an ``AvgPool2d(2)``
    returns 13x13 for 26x26 as 14x14 for 28x28, an ``Upsample(scale_factor=2)`` 52x52 as
    56x56). A map that takes only its own size (a model that checks its input's shape) is held
    to the margin's sizes alone: as many pixels on top and bottom as on the left and right, which
    a change of spacing of a non-square image is not. Measured at the input's spacing, a map of
    another resolution compares pixels that are not the same points: a shift by (2, 0) through an
    ``AvgPool2d(2)``, exact, read 0.82."""
    if not isinstance(out, Tensor):
        raise InputTypeError(f"the map returned {_shape(out)} for images of shape "
                             f"{tuple(images.shape)}; expected a tensor of maps "
                             f"({len(images)}, C', H', W')")
    if out.dim() < 3 or out.shape[0] != len(images):
        raise InputError(f"the map returned a tensor of shape {tuple(out.shape)} for images of "
                         f"shape {tuple(images.shape)}; expected maps ({len(images)}, C', H', W'), "
                         f"one per image, whose last two dimensions are the pixel grid")
    (height, width), (out_h, out_w) = images.shape[-2:], out.shape[-2:]
    if (out_h, out_w) == (height, width):
        return
    where = f"the map returns {out_h}x{out_w} maps for {height}x{width} images"
    advice = ("; equivariance_error compares maps at the images' pixel spacing, so this map's "
              "output is on another grid (a pooling, a stride or an upsampling changes the "
              "spacing, and the group then acts on it at another scale): measure the map up to "
              "the change of resolution, or resample its output to the input's grid first")
    if min(height, width) >= 3:
        try:
            smaller = phi(images[:1, ..., 1:-1, 1:-1])
        except Exception:  # a map that takes only its own size: held to the sizes below
            smaller = None
        if isinstance(smaller, Tensor) and smaller.dim() >= 3:
            got = tuple(smaller.shape[-2:])
            if got == (out_h - 2, out_w - 2):
                return
            raise InputError(
                f"{where}, and {got[0]}x{got[1]} for {height - 2}x{width - 2} images (one pixel "
                f"less on every side), not the {out_h - 2}x{out_w - 2} of a margin of a fixed "
                f"number of pixels{advice}")
    if out_h - height != out_w - width:
        raise InputError(
            f"{where}: not a margin of as many pixels on each side ({out_h - height:+d} rows, "
            f"{out_w - width:+d} columns){advice}")


@torch.no_grad()
def equivariance_error(phi: Callable[[Tensor], Tensor], images: Tensor,
                       transform: Callable[[Tensor], Tensor],
                       mask: Tensor | None = None) -> float:
    """``|| M (phi(g f) - g phi(f)) || / || M phi(f) ||`` over the whole batch (see module doc).

    Args:
        phi: a map ``(B, C, H, W) -> (B, C', H', W')`` (a module or any callable) that keeps the
            pixel spacing and the centre: ``H' = H`` and ``W' = W``, or a frame grown or cut by
            as many pixels on each side (a lifted model's margin). A module is measured in
            evaluation mode, every submodule's own mode restored afterwards
            (:func:`~eqpdenet.analysis.predictions.evaluation_mode`).
        images: ``(B, C, H, W)``.
        transform: the group action ``g`` on images (a :class:`Transform` or any callable); it
            is applied to inputs and outputs alike, each about its own centre.
        mask: boolean ``(H', W')``, the region measured (default: the disk of radius
            :data:`DISK_FRACTION` ``x min(H, W)`` about the centre, the same pixels whatever
            ``phi``'s margin); for a :class:`Transform` only its points that
            :func:`filled_region` (with the images' frame) keeps count, so the zero fill of the
            resampling is never compared with the map. ``torch.ones(H', W', dtype=torch.bool)``
            measures the whole filled region. Any other callable ``transform`` is measured on
            ``mask`` as given.

    Norms in float64. Refused, rather than given a number that means nothing:

    * a region with no point (a shift past the frame, a scaling by 100 or by 1e-3 of a 28-pixel
      image, an all-False ``mask``): :class:`~eqpdenet.errors.ConfigError` naming the
      transform (the ratio would be 0 / 0, and read as "perfectly equivariant" for any map);
    * ``phi(f)`` 0 at every measured point (blank images, or a map that sends them to 0):
      :class:`~eqpdenet.errors.InputError`; the error has no scale to be relative to (0 / 0
      for the map that keeps 0, inf for any other), so these inputs cannot tell an equivariant
      map from another;
    * ``images`` not ``(B, C, H, W)`` with ``B >= 1``, or holding NaN or inf:
      :class:`~eqpdenet.errors.InputError` (:func:`~eqpdenet.checks.check_values`: the first
      non-finite value's index; the error was NaN, which says nothing of the map);
    * an output that is not maps ``(B, ..., H', W')`` on the images' pixel grid (a tuple, a
      classifier's ``(B, K)``, a pooling's or an upsampling's grid of another spacing):
      :class:`~eqpdenet.errors.InputError` naming the sizes (:func:`_check_output_grid`);
    * ``phi(f)`` or ``phi(g f)`` holding NaN or inf at a point the error reads (a PDE that
      blows up on these images): :class:`~eqpdenet.errors.InputError` naming which of the
      two, with the first such value's index (the error was NaN: a blank cell in the study's
      tables). The error reads both on the mask, and ``phi(f)`` also wherever the resampling
      ``g . phi(f)`` reads it for a point of the mask (a value off the mask that it carries
      onto it is refused too, naming ``g``); a NaN or inf that it does not read is not
      refused, as it does not reach the error (:func:`_masked_norm` sets it to 0);
    * a ``transform`` of one's own that makes NaN or inf from finite values, where the error
      would read them (in ``g . phi(f)`` on the mask, or in ``g f`` where ``phi(g f)`` is not
      finite on the mask or ``phi`` refuses it): :class:`~eqpdenet.errors.InputError` naming
      the transform, not the map.

    So the error returned is a number ``>= 0``, never NaN (``inf`` only where a difference of
    two finite float32 maps overflows).
    """
    check_images(images)
    check_values(images)
    with evaluation_mode(phi):
        out = phi(images)
        _check_output_grid(phi, images, out)
        mask = _measurement_mask(mask, transform, tuple(out.shape[-2:]),
                                 tuple(images.shape[-2:]))
        _require_points(mask, transform, tuple(out.shape[-2:]))
        # Only the points the error reads are checked: _masked_norm sets the others to 0.
        _check_map_values(out, "the map's output on the images", mask)
        denominator = _masked_norm(out, mask)
        if denominator == 0:
            raise InputError(
                f"the map's output is 0 at every measured point ({int(mask.sum())} of the "
                f"{out.shape[-2]}x{out.shape[-1]} grid): the relative equivariance error has no "
                f"scale (blank images, or a map that sends these images to 0); measure on "
                f"images the map does not send to 0")
        moved_out = transform(out)  # before phi(g f): a refusal comes before the long work
        _check_carried_values(out, moved_out, mask, transform)
        moved_images = transform(images)
        label = getattr(transform, "label", "") or "g"
        try:
            moved = phi(moved_images)
        except InputError:  # a map that checks its input (a PDE) refused the transform's NaN
            _refuse_transform_values(moved_images, None, label, "g f, the images moved by it")
            raise
        if _non_finite(moved, mask) is not None:
            # only where the error would read one: a transform of one's own that fills what it
            # brings in from outside the frame with NaN, off the disk, measures as before
            _refuse_transform_values(moved_images, None, label, "g f, the images moved by it")
            _check_map_values(moved, f"the map's output on the transformed images "
                                     f"({getattr(transform, 'label', '') or 'g f'})", mask)
        difference = moved - moved_out
    return _masked_norm(difference, mask) / denominator


@torch.no_grad()
def interpolation_floor(images: Tensor, transform: Transform, mask: Tensor | None = None,
                        **kwargs) -> float:
    """``|| M (g^{-1} (g f) - f) || / || M f ||``: the cost of resampling forth and back, on the
    points of :func:`equivariance_error`'s mask (the same default disk, less the points that
    :func:`filled_region` excludes), so that the two compare. ``kwargs`` go to ``transform``.

    Refused as :func:`equivariance_error` refuses: a region with no point
    (:class:`~eqpdenet.errors.ConfigError` naming the transform), images that are 0 at every
    measured point (blank images: :class:`~eqpdenet.errors.InputError`; the floor was NaN), no
    image, images holding NaN or inf (:class:`~eqpdenet.errors.InputError`)."""
    check_images(images)
    check_values(images)
    size = tuple(images.shape[-2:])
    mask = _measurement_mask(mask, transform, size, size, **kwargs)
    _require_points(mask, transform, size)
    denominator = _masked_norm(images, mask)
    if denominator == 0:
        raise InputError(
            f"the images are 0 at every measured point ({int(mask.sum())} of the "
            f"{size[0]}x{size[1]} grid): the interpolation floor has no scale (blank images)")
    back = transform.inverse()(transform(images, **kwargs), **kwargs)
    return _masked_norm(back - images, mask) / denominator


def quarter_turn_check(phi: Callable[[Tensor], Tensor], images: Tensor,
                       tolerance: float = 1e-4) -> dict:
    """Flag non-equivariant maps: ``E`` at the rotations by 90, 180, 270 degrees.

    On square images these map pixel centres onto pixel centres (:meth:`Transform.__call__`:
    :func:`torch.rot90`) and no interpolation is involved, so a rotation-equivariant map (on the
    pixel grid) has ``E ~ 1e-7``. On a non-square image only the half turn is exact: the quarter
    turns are resampled into the same ``H x W`` frame, and an equivariant map is charged for that
    interpolation wherever the image has content near the frame (the heat equation on 20x30
    uniform noise: ``E = 2e-3``, flagged; on a 20x30 blob blank at the frame: ``2e-6``); there
    the flag holds only for images blank near the frame. Returns
    ``{"error": max E, "equivariant": every E <= tolerance}``; a NaN ``E`` (which
    :func:`equivariance_error` refuses, but ``phi`` may be measured otherwise) makes the error
    NaN and the map not equivariant (Python's ``max`` kept its first argument against a NaN, so
    a NaN at 180 or 270 degrees was dropped and the map called equivariant). A module is
    measured in evaluation mode, as :func:`equivariance_error` measures it, and refused as it
    refuses (a map whose output holds NaN or inf: an
    :class:`~eqpdenet.errors.InputError`). ``tolerance`` a finite number >= 0, else a
    :class:`~eqpdenet.errors.ConfigError` before anything is measured (a negative or NaN one
    called an exactly equivariant map not equivariant).
    """
    tolerance = require_nonnegative(tolerance, "tolerance")
    errors = [equivariance_error(phi, images, Transform.rotation(a)) for a in (90, 180, 270)]
    worst = math.nan if any(math.isnan(e) for e in errors) else max(errors)
    return {"error": worst, "equivariant": all(e <= tolerance for e in errors)}


@torch.no_grad()
def model_invariance(model: nn.Module, images: Tensor, transform: Transform,
                     batch_size: int = EVALUATION_BATCH) -> dict:
    """Fraction of unchanged predictions and relative logit change ``||l(g f) - l(f)|| / ||l(f)||``
    (:func:`_relative_change`), both over the images on which the model gives finite logits
    before and after: the measure of :func:`eqpdenet.analysis.robustness.logit_change`, on the
    same logits (:func:`~eqpdenet.analysis.predictions.logits_by_image`: evaluation mode with
    every submodule's mode restored, in batches of ``batch_size`` on the model's device, logits
    checked to be ``(n, K)``). One image with NaN logits made the change NaN and its NaN row's
    argmax counted in ``unchanged``; no image with finite logits on both sides: NaN for both. No
    image: :class:`~eqpdenet.errors.InputError`."""
    check_images(images)
    _check_batch_size(batch_size)
    moved, logits = _logit_pairs(model, images, transform(images), batch_size)
    unchanged = (float((logits.argmax(1) == moved.argmax(1)).double().mean()) if len(logits)
                 else math.nan)
    return {"unchanged": unchanged, "logit_change": _relative_change(moved, logits)}


def layer_quarter_turn_report(layer: nn.Module, images: Tensor) -> list[dict]:
    """:func:`quarter_turn_check` of each PDE of a layer and of the layer.

    ``layer`` a PDE layer (:class:`~eqpdenet.pde.layer.PDELayer`, whose ``pdes`` are measured one
    by one), else an :class:`~eqpdenet.errors.InputTypeError` saying what is accepted (for a
    model, its PDE layer ``model.pde_layer``; :func:`model_invariance` measures a model's
    predictions)."""
    if getattr(layer, "pdes", None) is None:
        hint = (": for a model, pass its PDE layer (model.pde_layer); model_invariance measures "
                "a model's predictions" if isinstance(getattr(layer, "pde_layer", None), nn.Module)
                else "")
        raise InputTypeError(f"layer_quarter_turn_report takes a PDE layer (PDELayer: its PDEs "
                             f"are measured one by one), got {type(layer).__name__}{hint}")
    rows = [{"map": pde.name, **quarter_turn_check(pde, images)} for pde in layer.pdes]
    rows.append({"map": "layer", **quarter_turn_check(layer, images)})
    return rows
