"""Axis and angle conventions of eqpdenet, stated once, and group actions on images.

Conventions (every module follows these; ``tests/test_geometry.py`` pins them down):

* Images are tensors of shape ``(batch, channels, height, width)``.
* Pixel ``(row i, column j)`` of an ``H x W`` image with grid spacing ``h`` sits at

      x = (j - (W - 1) / 2) * h,        y = ((H - 1) / 2 - i) * h,

  so ``x`` grows to the right along a row, ``y`` grows *upwards* (against the row index), and
  the origin is the centre of the image. ``(x, y)`` is right-handed as the image is displayed.
* Angles are in radians; a positive angle rotates counterclockwise as displayed. A rotation by
  ``+pi/2`` is exactly ``torch.rot90(u, k=1, dims=(-2, -1))`` for square images.
* A group element ``g: p -> A p + t`` (``A`` a 2x2 matrix, ``t`` in pixels) acts on an image by
  push-forward, ``(g . f)(p) = f(g^{-1} p)``: the content moves with ``g``. A translation
  ``t = (1, 0)`` moves the content one pixel to the right, ``t = (0, 1)`` one pixel up.
* Resampling uses :func:`torch.nn.functional.grid_sample` with ``align_corners=False``, bilinear
  interpolation and zero fill by default. With ``align_corners=False`` the normalised point
  ``(0, 0)`` is the pixel-grid centre ``((W - 1) / 2, (H - 1) / 2)``, which is the centre above,
  so rotations by multiples of ``pi/2`` of square images map pixel centres onto pixel centres.

Every public function checks its group parameters once, where it is called: an angle, a factor, a
shift, a matrix or a translation of another shape than its docstring states, one that is not
finite (NaN or inf, also one that overflows the images' working dtype), a zero scale factor or a
singular matrix is an :class:`~eqpdenet.errors.InputError` naming the argument as the caller
passed it (:class:`~eqpdenet.errors.InputTypeError` for a value that is not a number,
:class:`~eqpdenet.errors.SingularMapError` for a map without an inverse). Without the checks
such a value gave an all-NaN image, or a raw ``torch.linalg`` error. The checks read the values
on the host once per call (one synchronisation on a GPU, as ``torch.linalg.inv``'s own); where
no value can be read (inside ``torch.func.vmap``, ``torch.compile`` or an export, while a CUDA
graph is captured) they are skipped, as :func:`~eqpdenet.checks.check_values`'s are, and the
warps compute as unchecked.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_images, exporting, vmapped
from .errors import InputError, InputTypeError, SingularMapError

__all__ = [
    "halvings_stay_even",
    "pixel_coordinates",
    "affine_warp",
    "rotate",
    "rotate_about_mass",
    "center_of_mass",
    "scale",
    "translate",
    "rotation_matrix",
    "degrees",
    "working_dtype",
]


def _readable(tensor: Tensor) -> bool:
    """Whether the values of ``tensor`` can be read on the host now (see the module docstring)."""
    return not (tensor.is_meta or (tensor.is_cuda and torch.cuda.is_current_stream_capturing())
                or exporting() or torch.compiler.is_compiling() or vmapped(tensor))


def _not_finite(name: str, values: Tensor, shape: tuple | None) -> str | None:
    """The message for ``values`` if any is not finite, else None. ``shape``: that of one value
    shared by every image (``values`` of a longer shape holds one per image, and the message names
    the first image at fault); None for any shape (the message names the first entry)."""
    bad = ~torch.isfinite(values.detach())
    if not bool(bad.any()):
        return None
    if values.dim() == (0 if shape is None else len(shape)):
        return f"{name} must be finite, got {values.detach().tolist()}"
    if shape is not None:
        bad = bad.reshape(len(bad), -1).any(1)
        first = int(bad.nonzero()[0, 0])
        return (f"{name} must be finite, got {values[first].detach().tolist()} for image "
                f"{first} ({int(bad.sum())} of {len(bad)} images)")
    first = tuple(int(i) for i in bad.nonzero()[0])
    return (f"{name} must be finite, got {values[first].item()} at index {first} "
            f"({int(bad.sum())} of {bad.numel()} values)")


def _in_working(value, dtype, fine) -> str:
    """A note for the message on ``value`` where only its copy in the working ``dtype`` is at fault
    (``fine`` of it read in float64 holds): one beyond float32's range, one that rounds to 0 or to
    a singular matrix. Without it the message showed a value other than the one passed."""
    if dtype != torch.float32:
        return ""
    wide = (value.detach() if isinstance(value, Tensor)
            else torch.as_tensor(value, dtype=torch.float64)).to(device="cpu", dtype=torch.float64)
    return " (in float32, the images' working dtype)" if bool(fine(wide)) else ""


def _parameter(value, name: str, batch: int | None, shape: tuple | None, *, dtype=None,
               device=None, finite: bool = True) -> Tensor:
    """``value`` as a tensor, checked: real numbers of shape ``shape`` (one for every image) or
    ``(batch, *shape)`` (one per image), or of any shape where ``shape`` is None; finite. Converted
    as :func:`torch.as_tensor` converts, to ``dtype`` where given (a number without one is read in
    float64, as :func:`rotation_matrix` reads it), so that a value that overflows ``dtype`` is
    refused as well. ``finite=False``: the shape and type only (a caller that reads finiteness
    together with its own check, in one host read)."""
    try:
        kind = value.dtype if isinstance(value, Tensor) else torch.as_tensor(value).dtype
        if dtype is None and not isinstance(value, Tensor) and kind.is_floating_point:
            dtype = torch.float64
        tensor = torch.as_tensor(value, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise InputTypeError(f"{name} must be a number or a tensor of numbers, got "
                             f"{repr(value)[:100]}") from None
    if kind == torch.bool or kind.is_complex:
        raise InputTypeError(f"{name} must hold real numbers, got dtype {kind}")
    if shape is not None and tuple(tensor.shape) not in (shape, (batch, *shape)):
        raise InputError(f"{name} must have shape {shape} or {(batch, *shape)}, got "
                         f"{tuple(tensor.shape)}")
    if finite and _readable(tensor):
        message = _not_finite(name, tensor, shape)
        if message:
            raise InputError(message + _in_working(value, dtype, lambda v: v.isfinite().all()))
    return tensor


def _size(value, name: str) -> int:
    """``value`` as an integer ``>= 0`` (anything :func:`operator.index` takes, not a ``bool``)."""
    try:
        size = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        size = None
    if size is None or size < 0:
        raise InputError(f"{name} must be an integer >= 0, got {value!r}")
    return size


def pixel_coordinates(
    height: int,
    width: int,
    spacing: float = 1.0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Return ``(x, y)``, each of shape ``(height, width)``: the coordinates of the pixel centres.

    ``x`` grows along columns (to the right), ``y`` grows against the row index (upwards); both
    are zero at the image centre and measured in units of ``spacing`` per pixel.

    ``height`` and ``width`` are integers ``>= 0``, ``spacing`` a finite number ``> 0``; anything
    else is an :class:`~eqpdenet.errors.InputError` naming it (a size of 4.5 gave 5 pixels, a NaN
    spacing NaN coordinates).
    """
    height, width = _size(height, "height"), _size(width, "width")
    if isinstance(spacing, bool) or not isinstance(spacing, numbers.Real) or not (
            math.isfinite(spacing) and spacing > 0):
        raise InputError(f"spacing must be a finite number > 0, got {spacing!r}")
    dtype = dtype or torch.get_default_dtype()
    cols = (torch.arange(width, dtype=dtype, device=device) - (width - 1) / 2) * spacing
    rows = ((height - 1) / 2 - torch.arange(height, dtype=dtype, device=device)) * spacing
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    return x, y


def rotation_matrix(angle: Tensor | float, *, dtype=None, device=None) -> Tensor:
    """Counterclockwise rotation matrices, shape ``(*angle.shape, 2, 2)``; ``angle`` in radians
    (any real value: one beyond a full turn is reduced modulo 2π in float64 first, so that 37° +
    10⁵ turns gives 37°'s matrix rather than float32's rounding of a 6e5-radian angle).

    A non-finite ``angle`` (NaN, inf) is an :class:`~eqpdenet.errors.InputError`: its matrix
    would be NaN."""
    _parameter(angle, "angle", None, None)
    return _rotation_matrix(angle, dtype=dtype, device=device)


def _rotation_matrix(angle: Tensor | float, *, dtype=None, device=None) -> Tensor:
    """:func:`rotation_matrix` of an ``angle`` already checked."""
    dtype = dtype or torch.get_default_dtype()
    angle = (angle.to(device) if isinstance(angle, Tensor) and device is not None
             else torch.as_tensor(angle, device=device) if isinstance(angle, Tensor)
             else torch.as_tensor(angle, dtype=torch.float64, device=device))
    if angle.device.type in ("cpu", "cuda"):  # float64 there; an angle within a turn is unchanged
        wide = angle.to(torch.float64)
        angle = torch.where(wide.abs() > 2 * math.pi, torch.remainder(wide, 2 * math.pi), wide)
    angle = angle.to(dtype)
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def affine_warp(
    images: Tensor,
    matrix: Tensor,
    translation: Tensor | None = None,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> Tensor:
    """Push images forward by ``p -> A p + t`` about the image centre: ``out(p) = in(A^{-1}(p - t))``.

    Args:
        images: ``(B, C, H, W)`` floating-point tensor.
        matrix: ``A``, shape ``(2, 2)`` (shared) or ``(B, 2, 2)`` (one per image), in ``(x, y)``
            coordinates as defined in this module (``y`` up).
        translation: ``t`` in pixels, shape ``(2,)`` or ``(B, 2)``, as ``(t_x, t_y)``; default 0.
        mode, padding_mode: passed to :func:`torch.nn.functional.grid_sample`
            (``align_corners=False``).

    Returns:
        ``(B, C, H, W)`` tensor of the same dtype and device (an empty one for ``B = 0``, its
        ``matrix`` and ``translation`` checked all the same). float16 and bfloat16 images are
        warped in float32 (:func:`working_dtype`: the matrix inverse has no half-precision kernel,
        and a sampling grid in float16 is off by up to 0.01 pixel) and returned in their dtype;
        float32 and float64 images are warped in their own. The autograd graph is kept.

    Raises :class:`~eqpdenet.errors.InputError` (a ``ValueError``) where ``matrix`` or
    ``translation`` has another shape or is not finite in the working dtype, or where ``matrix``
    is singular there (:class:`~eqpdenet.errors.InputTypeError` where one is not numbers).
    """
    check_images(images)
    return _affine_warp(images, matrix, translation, mode=mode, padding_mode=padding_mode)


def _affine_warp(images: Tensor, matrix, translation, *, mode: str = "bilinear",
                 padding_mode: str = "zeros", explain=None) -> Tensor:
    """:func:`affine_warp` of checked ``images``. ``explain``: where the warp's one host read
    finds a matrix that is not finite or not invertible, or a translation that is not finite, a
    function that raises the error naming the caller's own parameter (``angle``, ``factor``,
    ``shift``) where that parameter is at fault; called before the errors naming ``matrix`` and
    ``translation``. So a public warp reads the host once per call, its parameter's checks
    included, and works out its messages only where it fails."""
    batch, _, height, width = images.shape
    dtype, device = working_dtype(images.dtype), images.device
    given, given_translation = matrix, translation
    shared = _parameter(matrix, "matrix", batch, (2, 2), dtype=dtype, device=device, finite=False)
    matrix = shared.expand(batch, 2, 2)
    if translation is None:
        translation = torch.zeros(batch, 2, dtype=dtype, device=device)
    own_translation = _parameter(translation, "translation", batch, (2,), dtype=dtype,
                                 device=device, finite=False)
    translation = own_translation.expand(batch, 2)
    # Normalised grid coordinates of affine_grid (align_corners=False) are q = D p with
    # D = diag(2/W, -2/H): x/W-scaled to the right, and the sign flip because rows grow downwards.
    d = torch.tensor([2.0 / width, -2.0 / height], dtype=dtype, device=device)
    if _readable(matrix):
        # inv_ex: the same inverse as linalg.inv, but a singular matrix is ours to name. One host
        # read for the whole check (one synchronisation per warp on a GPU, as linalg.inv's own);
        # the messages are worked out only where it fails.
        # An empty batch expands a shared matrix to none: its own is checked instead, so that a
        # singular one is refused there too (as are non-finite ones: the values as given).
        inverse, info = torch.linalg.inv_ex(matrix if batch else shared.reshape(-1, 2, 2))
        singular = (info != 0) | ~torch.isfinite(inverse).flatten(1).all(1)
        if not bool(torch.isfinite(shared).all() & torch.isfinite(own_translation).all()
                    & ~singular.any()):
            if explain is not None:
                explain()
            _parameter(given, "matrix", batch, (2, 2), dtype=dtype, device=device)
            if given_translation is not None:
                _parameter(given_translation, "translation", batch, (2,), dtype=dtype,
                           device=device)
            first = int(singular.nonzero()[0, 0])
            got = (f"{shared.tolist()}" if shared.dim() == 2 else f"{shared[first].tolist()} for "
                   f"image {first} ({int(singular.sum())} of {batch} images)")
            note = _in_working(given, dtype, lambda m: (torch.linalg.inv_ex(m)[1] == 0).all())
            raise SingularMapError(f"matrix must be invertible (the warp samples the input at "
                             f"A^-1 (p - t)), got {got}{note}")
    else:
        inverse = torch.linalg.inv(matrix)
    if batch == 0:  # nothing to warp; F.affine_grid refuses an empty output size (a raw
        # ValueError), where apply_scenario and BlurConsistency return the empty batch
        return images.clone()
    theta_linear = d[:, None] * inverse / d[None, :]
    theta_shift = -(d * (inverse @ translation[..., None])[..., 0])
    theta = torch.cat([theta_linear, theta_shift[..., None]], dim=-1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.to(dtype), grid, mode=mode, padding_mode=padding_mode,
                        align_corners=False)
    return out.to(images.dtype)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the warps compute in for images of ``dtype``: float32 for float16 and bfloat16,
    else ``dtype`` itself.

    Example:
        >>> working_dtype(torch.float16), working_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def rotate(images: Tensor, angle: Tensor | float, **kwargs) -> Tensor:
    """Rotate images counterclockwise (as displayed) by ``angle`` radians about their centre.

    ``angle`` is a float or a ``(B,)`` tensor (one angle per image), finite; anything else is an
    :class:`~eqpdenet.errors.InputError` naming ``angle``. ``kwargs`` go to :func:`affine_warp`.
    """
    check_images(images)
    batch = images.shape[0]
    _parameter(angle, "angle", batch, (), finite=False)
    return _affine_warp(images, _rotation_matrix(angle, dtype=working_dtype(images.dtype),
                                                 device=images.device),
                        None, explain=lambda: _parameter(angle, "angle", batch, ()), **kwargs)


def center_of_mass(images: Tensor) -> Tensor:
    """``(B, 2)`` float64: the (row, column) of each image's centre of mass, of the weights
    ``sum_c max(f_c, 0)`` (zero is the blank value), rows and columns numbered from 0; NaN for an
    image without weight. ``images``: ``(B, C, H, W)``. The sums run in float64."""
    if not isinstance(images, Tensor) or images.dim() != 4:  # a 3-D tensor summed the wrong axes
        raise InputError(f"images must be a (B, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    weights = images.detach().to(torch.float64).clamp_min(0).sum(1)          # (B, H, W)
    rows = torch.arange(images.shape[-2], dtype=torch.float64, device=images.device)
    cols = torch.arange(images.shape[-1], dtype=torch.float64, device=images.device)
    mass = weights.sum((-2, -1))
    return torch.stack([(weights.sum(-1) * rows).sum(-1) / mass,
                        (weights.sum(-2) * cols).sum(-1) / mass], dim=1)


def rotate_about_mass(images: Tensor, angle: Tensor | float, **kwargs) -> Tensor:
    """Rotate images counterclockwise by ``angle`` radians, each about its own centre of mass
    (:func:`center_of_mass`; the image centre for an image without weight): ``p -> R (p - c) +
    c``, so the centre of mass stays where it was (up to the resampling) and the image's place in
    its frame says nothing about the angle.

    ``angle`` is a float or a ``(B,)`` tensor, finite, as for :func:`rotate`."""
    check_images(images)
    batch, _, height, width = images.shape
    _parameter(angle, "angle", batch, (), finite=False)
    rows_cols = center_of_mass(images)
    frame_centre = torch.full_like(rows_cols, (height - 1) / 2)
    frame_centre[:, 1] = (width - 1) / 2  # no host-to-device copy (see recenter)
    rows_cols = torch.where(torch.isfinite(rows_cols), rows_cols, frame_centre)
    dtype = working_dtype(images.dtype)
    centre = torch.stack([rows_cols[:, 1] - (width - 1) / 2, (height - 1) / 2 - rows_cols[:, 0]],
                         dim=1).to(dtype)                                    # (x, y) about the centre
    matrix = _rotation_matrix(angle, dtype=dtype, device=images.device)
    matrix = matrix.expand(batch, 2, 2) if matrix.dim() == 2 else matrix
    translation = centre - (matrix @ centre[..., None])[..., 0]
    return _affine_warp(images, matrix, translation,
                        explain=lambda: _parameter(angle, "angle", batch, ()), **kwargs)


def scale(images: Tensor, factor: Tensor | float, **kwargs) -> Tensor:
    """Scale images about their centre, ``(x, y) -> (factor x, factor y)``; float or ``(B,)``.

    ``factor`` must be finite and non-zero, with a finite reciprocal (in the images' working
    dtype); anything else is an :class:`~eqpdenet.errors.InputError` naming ``factor`` (0 maps
    every point onto the centre and has no inverse; a subnormal float32 factor has none the warp
    can compute). A negative factor is allowed: ``-I`` is the rotation by ``pi`` in the plane
    (not a reflection), so ``scale(u, -s)`` is ``scale(u, s)`` turned by a half turn, as
    :class:`eqpdenet.analysis.Transform` and :func:`eqpdenet.analysis.robustness.scale_curve`
    use it. ``kwargs`` go to :func:`affine_warp`."""
    check_images(images)
    dtype = working_dtype(images.dtype)
    given, batch = factor, images.shape[0]
    factor = _parameter(factor, "factor", batch, (), dtype=dtype, device=images.device,
                        finite=False)

    def explain():
        _parameter(given, "factor", batch, (), dtype=dtype, device=images.device)
        if not bool(factor.all()):
            zero = (factor == 0).nonzero()
            where = "" if factor.dim() == 0 else f" for image {int(zero[0, 0])}"
            note = _in_working(given, dtype, lambda f: f.all())
            raise SingularMapError(f"factor must be non-zero (a scaling by 0 maps every point "
                                   f"onto the centre and has no inverse), got 0{where}{note}")
        # A factor so small that 1/factor overflows (a subnormal float32) has no inverse the
        # warp can compute either; the message names `factor`, which the caller passed, rather
        # than the `matrix` built from it.
        overflowing = ~torch.isfinite(1 / factor)
        if bool(overflowing.any()):
            first = () if factor.dim() == 0 else (int(overflowing.nonzero()[0, 0]),)
            where = "" if factor.dim() == 0 else f" for image {first[0]}"
            note = _in_working(given, dtype, lambda f: torch.isfinite(1 / f).all())
            raise SingularMapError(f"factor must have a finite reciprocal (the warp samples the "
                                   f"input at p / factor), got {factor[first].item():g}{where}"
                                   f"{note}")

    eye = torch.eye(2, dtype=dtype, device=images.device)
    return _affine_warp(images, factor[..., None, None] * eye, None, explain=explain, **kwargs)


def translate(images: Tensor, shift: Tensor, **kwargs) -> Tensor:
    """Translate images by ``shift = (t_x, t_y)`` pixels (``(2,)`` or ``(B, 2)``; ``t_y`` upwards).

    ``shift`` of another shape, or not finite, is an :class:`~eqpdenet.errors.InputError` naming
    ``shift``. ``kwargs`` go to :func:`affine_warp`."""
    check_images(images)
    dtype = working_dtype(images.dtype)
    given, batch = shift, images.shape[0]
    shift = _parameter(shift, "shift", batch, (2,), dtype=dtype, device=images.device,
                       finite=False)
    eye = torch.eye(2, dtype=dtype, device=images.device)
    return _affine_warp(images, eye, shift, explain=lambda: _parameter(
        given, "shift", batch, (2,), dtype=dtype, device=images.device), **kwargs)


def degrees(angle_radians: float) -> float:
    """Radians to degrees (kept here so that every conversion goes through one place)."""
    return angle_radians * 180.0 / math.pi


def halvings_stay_even(size: int, poolings: int) -> bool:
    """Whether a square map of ``size`` pixels has an even size before each of ``poolings``
    2x2 poolings (each halving it, rounding down). A 2x2 pooling commutes with quarter turns
    only then: on an odd size it drops the last row and column, which a turn moves elsewhere.

    Example:
        >>> halvings_stay_even(28, 2), halvings_stay_even(28, 3)
        (True, False)
    """
    for _ in range(poolings):
        if size % 2:
            return False
        size //= 2
    return True
