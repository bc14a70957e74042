"""Fields on position x orientation, M2 = R^2 x S^1, and their SE(2) differential invariants.

A field on M2 is a tensor ``(B, C, N, H, W)``: ``C`` channels, each a function ``U(x, y, theta)``
sampled at the pixels and at ``N`` orientations ``theta_k = 2 pi k / N`` (counterclockwise, ``y``
up; :mod:`eqpdenet.geometry`). ``N`` is a multiple of 4, so that a quarter turn maps the
orientation grid onto itself.

The group. SE(2) acts on M2 by ``(x, theta) -> (R_phi x + b, theta + phi)``, and on fields by
push-forward, ``(g . U)(x, theta) = U(R_phi^-1 (x - b), theta - phi)``. On the grid, a rotation by
``+pi/2`` is ``torch.rot90`` of the two spatial axes together with ``torch.roll`` of the
orientation axis by ``N / 4`` (:func:`rotate_field`).

The invariants. The action is free and transitive on M2 itself (M2 *is* the group), so the
left-invariant vector fields

    A1 = cos(theta) d_x + sin(theta) d_y,   A2 = -sin(theta) d_x + cos(theta) d_y,   A3 = d_theta

(the fields that commute with the action's generators) form a moving frame, and the derivatives
of ``U`` along them are differential invariants; those up to order ``n`` generate all others
(Olver's moving-frame theorem). Counting: ``J^(2)`` of one function of three variables has
dimension ``3 + 10``, the group's orbits there have dimension 3, so there are exactly 10
functionally independent invariants of order <= 2. Ours (:data:`M2_SE2`, registered as ``"m2"``):

    u, A1u, A2u, A3u, A11u, A12u, A13u, A22u, A23u, A33u

with ``Aiju = (Ai Aj + Aj Ai) u / 2``, the *symmetrised* second derivatives. ``A1`` and ``A2``
commute, but ``A3`` does not commute with them (``[A1, A3] = -A2``, ``[A2, A3] = A1``), so
``A1 A3 u`` and ``A3 A1 u`` differ by ``A2 u``; the symmetrised products are the ones that do not
depend on a choice of order (the frame's analogue of the Hessian). ``eqpdenet.pde.symbolic``
derives the count and these ten by the moving frame (``find_invariants("se2_m2", 2)``;
``docs/symbolic.md``, "Groups acting on M2") and checks that they are invariant, functionally
independent and equal to this set (``tests/pde/test_symbolic_m2.py``).

On the grid. Spatial derivatives are Gaussian derivatives at scale ``sigma`` pixels
(:func:`gaussian_jet`: separable, exact on polynomials of degree <= 3), by default
scale-normalised (``sigma^n d^n``: dimensionless, and the same for an image and its copy
magnified by ``lambda`` at scale ``lambda sigma``, to about 1e-3 relative for ``sigma >= 1``;
below one pixel the sampled stencils alias: 2e-2 at 0.71, docs/lifted.md). ``d_theta`` is a
periodic central difference
over the ``N`` orientations (:func:`orientation_derivatives`); it commutes with the spatial
derivatives exactly. Steering ``(d_x, d_y) -> (A1, A2)`` is exact arithmetic on the jet, so
quarter turns commute with the whole jet to rounding; other rotations only up to the grid and
the ``O(dtheta^2)`` error of the orientation differences.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import (
    check_values,
    fixed_after_build,
    is_input_checked,
    require,
    require_int,
    require_positive,
)
from ..errors import ConfigError, InputError, InputTypeError
from ..kernels.m2_op import constant_cache
from .invariants import Invariant, InvariantSet, check_jet, register_invariant_set
from .stencils import (
    BOUNDARIES,
    GAUSSIAN_TRUNCATE,
    MIN_GAUSSIAN_SIGMA,
    gaussian_derivative_weights,
)

__all__ = [
    "M2_DERIVATIVE_NAMES",
    "M2_SE2",
    "M2Derivatives",
    "M2InvariantSet",
    "M2Jet",
    "check_orientations",
    "gaussian_jet",
    "gaussian_radius",
    "orientation_cos_sin",
    "orientation_derivatives",
    "orientation_frame",
    "orientations",
    "rotate_field",
    "scale_levels",
    "separable_stencils",
    "steered_jet",
    "steering_matrices",
]

#: The Cartesian 2-jet of a field on M2, in this order along the jet axis (total order, then
#: x before y before theta): ``(B, C, 10, N, H, W)``, each derivative itself a field on M2.
M2_DERIVATIVE_NAMES = ("u", "u_x", "u_y", "u_θ", "u_xx", "u_xy", "u_xθ", "u_yy", "u_yθ", "u_θθ")


def check_orientations(n, field: str = "orientations") -> int:
    """``N``, a positive multiple of 4 (so that quarter turns are exact), else a ConfigError."""
    n = require_int(n, field, 4)
    require(n % 4 == 0, field, f"must be a multiple of 4 so that quarter turns map the "
            f"orientations onto themselves, got {n}")
    return n


def orientations(n: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """``theta_k = 2 pi k / N``, ``k = 0 .. N - 1``, radians, shape ``(N,)``."""
    return torch.arange(n, dtype=torch.float64, device=device).mul(2 * math.pi / n).to(dtype)


@constant_cache(maxsize=64)
def orientation_cos_sin(n: int, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    """``cos(theta_k), sin(theta_k)`` as ``(N, 1, 1)``. For ``N`` a multiple of 4 the first
    quadrant is computed and the others built from it by ``(cos, sin) -> (-sin, cos)``, so that
    steering commutes with quarter turns exactly, not only to the rounding of ``cos``.

    Cached per ``(n, dtype, device)`` (read-only; see :func:`_separable_weights` for why), never
    a value made while tracing (:func:`~eqpdenet.kernels.m2_op.constant_cache`)."""
    theta = orientations(n, device="cpu")
    if n % 4:
        cos, sin = torch.cos(theta), torch.sin(theta)
    else:
        c, s = torch.cos(theta[: n // 4]), torch.sin(theta[: n // 4])
        cos = torch.cat([c, -s, -c, s])
        sin = torch.cat([s, c, -s, -c])
    return (cos.to(dtype=dtype, device=device).view(n, 1, 1),
            sin.to(dtype=dtype, device=device).view(n, 1, 1))


def rotate_field(u: Tensor, quarter_turns: int = 1) -> Tensor:
    """The push-forward of a field ``(..., N, H, W)`` by a rotation of ``quarter_turns * pi/2``:
    the image plane rotated (``torch.rot90``), the orientations shifted by ``N / 4`` each.

    Refused (:class:`~eqpdenet.errors.InputError`) where ``quarter_turns * N / 4`` is not a
    whole number of orientations (``N = 6``: the plane turned by 90 degrees and the orientations
    by 60 was returned unsaid): the rotation does not map the grid's orientations onto
    themselves."""
    if not isinstance(u, Tensor) or u.dim() < 3:
        raise InputError(f"rotate_field takes a field (..., orientations, height, width), got "
                         f"{tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__}")
    try:
        if isinstance(quarter_turns, bool):
            raise TypeError
        quarter_turns = operator.index(quarter_turns)
    except TypeError:
        raise InputError(f"rotate_field: quarter_turns must be a whole number, got "
                         f"{quarter_turns!r}") from None
    n = u.shape[-3]
    if (quarter_turns * n) % 4:
        raise InputError(f"rotate_field: a rotation by {quarter_turns} quarter turn(s) does not "
                         f"map {n} orientations onto themselves ({quarter_turns} x {n} / 4 is not "
                         f"a whole number of orientations); fields on a multiple of 4 "
                         f"orientations turn by any number of quarter turns")
    return torch.roll(torch.rot90(u, quarter_turns, (-2, -1)), quarter_turns * n // 4, dims=-3)


# ----------------------------------------------------------------------------- the jet


def gaussian_radius(sigma: float) -> int:
    """Half-width in pixels of the Gaussian-derivative stencils at ``sigma`` (the same for
    every derivative up to order 2: :func:`~eqpdenet.pde.stencils.gaussian_derivative_weights`),
    ``max(ceil(GAUSSIAN_TRUNCATE sigma), 2)``.

    In closed form, by the stencils' own rule (radius ``max(ceil(truncate sigma), M // 2 + 1)``,
    ``M = 3`` for order 2; tests/pde/test_lifted_sizes.py holds the two equal): building the
    stencil to measure it costs time and memory in proportion to ``sigma``, and the size checks
    that call this must refuse a huge ``sigma`` at once. A ``sigma`` below
    :data:`~eqpdenet.pde.stencils.MIN_GAUSSIAN_SIGMA` (or not finite) is a ConfigError."""
    if not MIN_GAUSSIAN_SIGMA <= sigma < math.inf:
        raise ConfigError(f"the gaussian stencil needs a finite sigma >= {MIN_GAUSSIAN_SIGMA} "
                          f"pixels, got {sigma!r}")
    return max(math.ceil(GAUSSIAN_TRUNCATE * sigma), 3 // 2 + 1)


@constant_cache(maxsize=64)
def _separable_weights(sigma: float, dtype, device) -> tuple[Tensor, Tensor]:
    """x pass ``(3, 1, 1, k)``: ``G, G', G''`` along the columns; y pass ``(6, 3, k, 1)``: from
    those to ``u, u_x, u_y, u_xx, u_xy, u_yy`` (rows reversed: ``y`` points up).

    Cached per ``(sigma, dtype, device)``, read-only: built afresh, every forward pass would copy
    them from the host, which a CUDA graph cannot capture (the first GPU session found the lifted
    model's captured training step falling back to eager on such copies). Built outside
    inference mode, so that a model evaluated under ``torch.inference_mode()`` can train after;
    never a value made while tracing (:func:`~eqpdenet.kernels.m2_op.constant_cache`:
    ``torch.export`` of a model whose first pass it was left fake tensors here, which broke
    every later call)."""
    one_d = [torch.from_numpy(gaussian_derivative_weights(a, sigma, 2)) for a in range(3)]
    k = one_d[0].numel()
    x_pass = torch.stack(one_d).view(3, 1, 1, k)
    y_pass = torch.zeros(6, 3, k, 1, dtype=torch.float64, device="cpu")
    # (output, x-derivative map, y-derivative order)
    for out, (x_map, y_order) in enumerate(((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2))):
        y_pass[out, x_map, :, 0] = one_d[y_order].flip(0)
    return x_pass.to(dtype=dtype, device=device), y_pass.to(dtype=dtype, device=device)


@constant_cache(maxsize=64)
def separable_stencils(sigmas: tuple[float, ...], scale_normalised: bool = True) -> Tensor:
    """The 1-D stencils ``G, G', G''`` of each scale level, ``(S, 3, K)`` float64 (zero-padded
    to the widest ``K``), scale normalisation included: what the fused kernel
    (:mod:`eqpdenet.kernels.m2_op`) convolves with. Read-only.

    Cached per ``(sigmas, scale_normalised)``, the 64 latest (a hyper-parameter search over a
    continuous ``sigma`` grew an unbounded cache by every value; an evicted table is built again,
    to the same bits)."""
    rows = [[gaussian_derivative_weights(a, sigma, 2) * (sigma**a if scale_normalised else 1.0)
             for a in range(3)] for sigma in sigmas]
    width = max(row[0].size for row in rows)
    table = torch.zeros(len(sigmas), 3, width, dtype=torch.float64, device="cpu")
    for s, row in enumerate(rows):
        pad = (width - row[0].size) // 2
        for a in range(3):
            table[s, a, pad:pad + row[a].size] = torch.from_numpy(row[a])
    return table


@constant_cache(maxsize=64)
def orientation_frame(n: int) -> Tensor:
    """``(cos theta_k, sin theta_k)`` as ``(N, 2)`` float64 (the values of
    :func:`orientation_cos_sin`). Cached per ``N``, the 64 latest."""
    cos, sin = orientation_cos_sin(n, torch.float64, torch.device("cpu"))
    return torch.stack([cos.flatten(), sin.flatten()], 1)


def gaussian_jet(u: Tensor, sigma: float, boundary: str = "replicate",
                 scale_normalised: bool = True) -> Tensor:
    """The Gaussian 2-jet of every map of ``u`` ``(..., H, W)``: ``(..., 6, H, W)`` in the order
    ``u, u_x, u_y, u_xx, u_xy, u_yy`` of :func:`~eqpdenet.pde.stencils.derivative_names`.

    The same values as ``jet(u, 2, "gaussian", sigma=sigma)`` (its stencils are outer products
    of 1-D ones), by two 1-D passes: ``9 (2 R + 1)`` multiply-adds per pixel instead of
    ``6 (2 R + 1)^2``. ``sigma`` in pixels; with ``scale_normalised`` the derivatives of order
    ``n`` are multiplied by ``sigma^n`` (lengths measured in units of ``sigma``). Maps without
    a pixel (``H`` or ``W`` 0), or for a reflecting or periodic boundary not larger than the
    stencil radius, are an :class:`~eqpdenet.errors.InputError` naming the size.
    """
    *lead, height, width = u.shape
    if not height or not width:  # before the reshape, which failed on them with a raw error
        raise InputError(f"the Gaussian jet needs maps of at least 1x1 pixels, got "
                         f"{height}x{width}")
    x_pass, y_pass = _separable_weights(sigma, u.dtype, u.device)
    radius = x_pass.shape[-1] // 2
    mode = BOUNDARIES.get(boundary)
    if mode in ("reflect", "circular") and min(height, width) <= radius:
        raise InputError(f"the {boundary!r} boundary needs maps larger than the stencil radius "
                         f"{radius} (sigma = {sigma:g} pixels), got {height}x{width}")
    flat = F.pad(u.reshape(-1, 1, height, width), (radius,) * 4, mode=mode)
    out = F.conv2d(F.conv2d(flat, x_pass), y_pass)
    if scale_normalised:  # factors as Python numbers: no host-to-device copy in a CUDA graph
        out = torch.cat([out[:, :1], out[:, 1:3] * sigma, out[:, 3:] * sigma**2], dim=1)
    return out.reshape(*lead, 6, height, width)


def orientation_derivatives(v: Tensor, dim: int, order: int = 2) -> tuple[Tensor, ...]:
    """Periodic central differences along the orientation axis ``dim`` (spacing ``2 pi / N``):
    ``(v_theta,)`` or ``(v_theta, v_theta_theta)`` (``order`` 1 or 2), second-order accurate."""
    n = v.shape[dim]
    step = 2 * math.pi / n
    ahead, behind = torch.roll(v, -1, dims=dim), torch.roll(v, 1, dims=dim)
    first = (ahead - behind) / (2 * step)
    return (first,) if order == 1 else (first, (ahead - 2 * v + behind) / step**2)


def scale_levels(sigma: float, scales: int) -> tuple[float, ...]:
    """``sigma_s = sigma 2^(s/2)``, ``s = 0 .. scales - 1`` (pixels)."""
    return tuple(sigma * 2 ** (s / 2) for s in range(require_int(scales, "scales", 1)))


class M2Jet(nn.Module):
    """The Cartesian 2-jet of fields on M2: ``(B, C, N, H, W) -> (B, C, 10, N, H, W)``, in the
    order of :data:`M2_DERIVATIVE_NAMES` (see the module doc for how each is computed).

    Args:
        sigma: scale of the spatial Gaussian derivatives, in pixels (at least
            :data:`~eqpdenet.pde.stencils.MIN_GAUSSIAN_SIGMA`).
        boundary: a name of :data:`~eqpdenet.pde.stencils.BOUNDARIES` (default ``replicate``).
        scale_normalised: spatial derivatives of order ``n`` times ``sigma^n``.
        scales: with ``S > 1`` the batch holds ``S`` equal chunks, the copies of one batch at
            the scales :func:`scale_levels` ``(sigma, S)``: chunk ``s`` is differentiated at
            ``sigma 2^(s/2)`` (so that one right-hand side, its batch norms included, serves
            every scale in one call).

    ``sigma``, ``sigmas`` and ``scale_normalised`` are read-only (setting one is a
    :class:`~eqpdenet.errors.ConfigError`): every path, the reference and the fused kernels
    (:attr:`stencils`), reads them from one record, fixed when the jet is built.

    Example:
        >>> M2Jet(1.0)(torch.rand(2, 3, 8, 12, 12)).shape
        torch.Size([2, 3, 10, 8, 12, 12])
    """

    def __init__(self, sigma: float = 1.0, boundary: str = "replicate",
                 scale_normalised: bool = True, scales: int = 1):
        super().__init__()
        sigma = require_positive(sigma, "sigma")
        require(sigma >= MIN_GAUSSIAN_SIGMA, "sigma",
                f"must be at least {MIN_GAUSSIAN_SIGMA} pixels, got {sigma:g}")
        BOUNDARIES.check(boundary, "boundary")
        self.boundary = boundary
        # The one record of the scales: sigma, scale_normalised and the fused kernels' stencils
        # are read from these two. Before round 20 sigma, scale_normalised and sigmas were three
        # attributes, the reference reading the first two, the fused path the third (always
        # scale-normalised): setting one after building made the two paths differ silently.
        self._sigmas = scale_levels(sigma, scales)
        self._scale_normalised = bool(scale_normalised)

    def __setstate__(self, state: dict) -> None:
        # a jet pickled before round 20 (torch.save of a whole module) held the three apart
        if "sigmas" in state:
            state = dict(state)
            state["_sigmas"] = tuple(state.pop("sigmas"))
            state["_scale_normalised"] = bool(state.pop("scale_normalised"))
            state.pop("sigma", None)
        super().__setstate__(state)

    def _fixed(self, name: str):
        raise ConfigError(f"M2Jet.{name} is fixed when the jet is built (the reference and the "
                          f"fused kernels both derive their stencils from the scales): build a "
                          f"new M2Jet(sigma, boundary, scale_normalised, scales) instead")

    sigmas = fixed_after_build(
        "sigmas", "The scale levels :func:`scale_levels` ``(sigma, scales)``, in pixels "
                  "(read-only).")
    sigma = fixed_after_build(
        "sigma", "The scale of the first level, ``sigmas[0]``, in pixels (read-only).",
        lambda self: self._sigmas[0])
    scale_normalised = fixed_after_build(
        "scale_normalised", "Whether spatial derivatives of order ``n`` are multiplied by "
                            "``sigma^n`` (read-only).")

    @property
    def stencils(self) -> Tensor:
        """:func:`separable_stencils` of :attr:`sigmas`, scale-normalised as the jet is: what
        the fused kernels convolve with, the values the reference's :func:`gaussian_jet`
        applies. Read-only and shared: every jet of the same scales (and the stability checks)
        reads this one cached tensor, so an in-place change would alter them all; ``.clone()``
        it to edit a copy."""
        return separable_stencils(self._sigmas, self._scale_normalised)

    @property
    def radius(self) -> int:
        """Half-width of the widest stencil, in pixels (in closed form: no stencil built)."""
        return gaussian_radius(self.sigmas[-1])

    def check(self, u: Tensor) -> None:
        """What every path (the fused kernels' too) needs of the maps ``(B, ..., H, W)``, as one
        :class:`~eqpdenet.errors.InputError` naming the sizes: maps of at least one pixel, larger
        than the stencil radius for a reflecting or periodic boundary, a batch of whole scale
        copies."""
        height, width = u.shape[-2:]
        if not height or not width:  # the reference's reshape failed deep inside on them
            raise InputError(f"maps of at least 1x1 pixels, got {height}x{width}")
        if BOUNDARIES.get(self.boundary) in ("reflect", "circular") and min(height, width) <= self.radius:
            raise InputError(f"the {self.boundary!r} boundary needs maps larger than the stencil "
                             f"radius {self.radius} (sigma = {self.sigmas[-1]:g} pixels), got "
                             f"{height}x{width}")
        if len(self.sigmas) > 1 and u.shape[0] % len(self.sigmas):
            raise InputError(f"a batch of {len(self.sigmas)} scale copies must have a multiple "
                             f"of {len(self.sigmas)} entries, got {u.shape[0]}")

    def spatial(self, u: Tensor) -> Tensor:
        """The spatial Gaussian 2-jet ``(..., 6, H, W)`` of every map, chunk ``s`` of the batch
        at ``sigmas[s]``."""
        if len(self.sigmas) == 1:
            return gaussian_jet(u, self.sigma, self.boundary, self.scale_normalised)
        self.check(u)
        # unflatten, not chunk: torch.export would fix the batch size at the one traced (chunk
        # sizes are ceil(B S / S), a guard on B), and an exported multi-scale model could not run
        # on any other batch
        chunks = u.unflatten(0, (len(self.sigmas), -1)).unbind(0)
        return torch.cat([gaussian_jet(chunk, sigma, self.boundary, self.scale_normalised)
                          for chunk, sigma in zip(chunks, self.sigmas, strict=True)], dim=0)

    _input_checked = False  # while compiling only: see eqpdenet.checks.input_checked

    def forward(self, u: Tensor) -> Tensor:
        """Called alone (not inside :class:`~eqpdenet.pde.integrators.input_checked`, as
        :class:`~eqpdenet.pde.m2_rhs.M2SystemRHS` calls it), checks ``u`` first: a
        floating-point tensor with finite values (:func:`~eqpdenet.checks.check_values`: NaN
        or inf is an :class:`~eqpdenet.errors.InputError` saying the input is at fault; the
        Gaussian stencils would smear one NaN over its neighbourhood, silently)."""
        if not isinstance(u, Tensor):
            raise InputTypeError(f"M2Jet takes fields as a torch.Tensor (..., orientations, "
                                 f"height, width), got {type(u).__name__}")
        if not u.is_floating_point():
            raise InputTypeError(f"M2Jet takes floating-point fields, got dtype {u.dtype}")
        if u.dim() < 3 or u.shape[-3] < 4 or u.shape[-3] % 4:
            # the lifted model's rule (quarter turns exact); N = 0 divided by zero in the
            # orientation differences, and N = 1, 2, 6 were taken silently
            raise InputError(f"M2Jet takes fields (..., orientations, height, width) on a "
                             f"positive multiple of 4 orientations (so that quarter turns map "
                             f"them onto themselves), got shape {tuple(u.shape)}")
        if not is_input_checked(self):
            check_values(u, "M2Jet's fields")
        u0, ux, uy, uxx, uxy, uyy = self.spatial(u).unbind(-3)
        (gradient_t,) = orientation_derivatives(torch.stack([ux, uy], -4), dim=-3, order=1)
        ux_t, uy_t = gradient_t.unbind(-4)
        u_t, u_tt = orientation_derivatives(u0, dim=-3)
        return torch.stack([u0, ux, uy, u_t, uxx, uxy, ux_t, uyy, uy_t, u_tt], -4)

    def extra_repr(self) -> str:
        return (f"sigma={self.sigma}, boundary={self.boundary!r}, "
                f"scale_normalised={self.scale_normalised}"
                + (f", scales={len(self.sigmas)}" if len(self.sigmas) > 1 else ""))


# ----------------------------------------------------------------------------- the invariants


class M2Derivatives:
    """Read-only view of an M2 jet ``(..., 10, N, H, W)`` by name (``d.u_xθ`` is a field
    ``(..., N, H, W)``), with ``d.cos`` and ``d.sin``, the orientations, as ``(N, 1, 1)``."""

    def __init__(self, jet: Tensor):
        if jet.dim() < 4 or jet.shape[-4] != len(M2_DERIVATIVE_NAMES):
            raise InputError(f"expected an M2 jet of shape (..., {len(M2_DERIVATIVE_NAMES)}, N, "
                             f"H, W), got {tuple(jet.shape)}")
        for index, name in enumerate(M2_DERIVATIVE_NAMES):
            setattr(self, name, jet[..., index, :, :, :])
        self.cos, self.sin = orientation_cos_sin(jet.shape[-3], jet.dtype, jet.device)


def steered_jet(spatial: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """A Cartesian 2-jet ``(..., 6, H, W)`` steered to the frame ``(A1, A2)`` of each
    orientation: ``u, A1u, A2u, A11u, A12u, A22u`` stacked along ``-3``, every entry broadcast
    against ``cos, sin`` (e.g. a jet ``(B, C, 1, 6, H, W)`` and ``(N, 1, 1)`` give
    ``(B, C, N, 6, H, W)``: the lifting of images to M2)."""
    u, ux, uy, uxx, uxy, uyy = spatial.unbind(-3)
    cc, ss, cs = cos * cos, sin * sin, cos * sin
    a1 = cos * ux + sin * uy
    return torch.stack(torch.broadcast_tensors(
        u, a1, cos * uy - sin * ux, cc * uxx + 2 * cs * uxy + ss * uyy,
        cs * (uyy - uxx) + (cc - ss) * uxy, ss * uxx - 2 * cs * uxy + cc * uyy), -3)


def steering_matrices(cos: Tensor, sin: Tensor) -> Tensor:
    """``(N, 6, 6)``: the linear map of a Cartesian 2-jet ``(u, u_x, u_y, u_xx, u_xy, u_yy)`` to
    its steered jet ``(u, A1u, A2u, A11u, A12u, A22u)`` at each orientation, from ``cos, sin``
    of any shape holding ``N`` values: ``steering_matrices(cos, sin)[k] @ jet`` is
    :func:`steered_jet` at ``theta_k`` (the same products, as a matrix)."""
    c, s = cos.reshape(-1), sin.reshape(-1)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    cc, ss, cs = c * c, s * s, c * s
    rows = [[one, zero, zero, zero, zero, zero],
            [zero, c, s, zero, zero, zero],
            [zero, -s, c, zero, zero, zero],
            [zero, zero, zero, cc, 2 * cs, ss],
            [zero, zero, zero, -cs, cc - ss, cs],
            [zero, zero, zero, ss, -2 * cs, cc]]
    return torch.stack([torch.stack(row, -1) for row in rows], -2)


def _a1(d):
    return d.cos * d.u_x + d.sin * d.u_y


def _a2(d):
    return d.cos * d.u_y - d.sin * d.u_x


def _a11(d):
    return d.cos**2 * d.u_xx + 2 * d.cos * d.sin * d.u_xy + d.sin**2 * d.u_yy


def _a12(d):
    return d.cos * d.sin * (d.u_yy - d.u_xx) + (d.cos**2 - d.sin**2) * d.u_xy


def _a22(d):
    return d.sin**2 * d.u_xx - 2 * d.cos * d.sin * d.u_xy + d.cos**2 * d.u_yy


def _a13(d):  # (A1 A3 + A3 A1) u / 2 = A1 A3 u + A2 u / 2
    return d.cos * d.u_xθ + d.sin * d.u_yθ + 0.5 * _a2(d)


def _a23(d):  # (A2 A3 + A3 A2) u / 2 = A2 A3 u - A1 u / 2
    return d.cos * d.u_yθ - d.sin * d.u_xθ - 0.5 * _a1(d)


class M2InvariantSet(InvariantSet):
    """An :class:`~eqpdenet.pde.invariants.InvariantSet` of fields on M2 (``domain = "m2"``):
    called on an M2 jet ``(..., 10, N, H, W)`` (:class:`M2Jet`), it returns ``(..., K, N, H, W)``,
    each invariant a field on M2. Its functions take an :class:`M2Derivatives` view."""

    domain = "m2"

    def __call__(self, jet: Tensor, ratio_eps: float = 0.0,
                 ratio_regularisation: str = "covariant") -> Tensor:
        check_jet(jet)  # as the planar sets: an integer jet gave float maps silently (round 18)
        d = M2Derivatives(jet)
        return torch.stack([inv.function(d, None) for inv in self.invariants], dim=-4)


#: The SE(2) differential invariants of order <= 2 of a field on M2 (a complete set: see the
#: module doc). Registered as ``"m2"``.
M2_SE2 = register_invariant_set(M2InvariantSet(
    "m2", "SE(2) acting on M2 = R² × S¹ by (x, θ) -> (R_φ x + b, θ + φ)", 2, [
        Invariant("u", "u", "u", lambda d, r: d.u),
        Invariant("A1u", "cos θ u_x + sin θ u_y", r"\cos\theta\, u_x + \sin\theta\, u_y",
                  lambda d, r: _a1(d)),
        Invariant("A2u", "−sin θ u_x + cos θ u_y", r"-\sin\theta\, u_x + \cos\theta\, u_y",
                  lambda d, r: _a2(d)),
        Invariant("A3u", "u_θ", r"u_\theta", lambda d, r: d.u_θ),
        Invariant("A11u", "cos²θ u_xx + 2 cos θ sin θ u_xy + sin²θ u_yy",
                  r"\cos^2\theta\, u_{xx} + 2\cos\theta\sin\theta\, u_{xy} + \sin^2\theta\, u_{yy}",
                  lambda d, r: _a11(d)),
        Invariant("A12u", "cos θ sin θ (u_yy − u_xx) + (cos²θ − sin²θ) u_xy",
                  r"\cos\theta\sin\theta\,(u_{yy} - u_{xx}) + \cos 2\theta\, u_{xy}",
                  lambda d, r: _a12(d)),
        Invariant("A13u", "cos θ u_xθ + sin θ u_yθ + A2u / 2",
                  r"\cos\theta\, u_{x\theta} + \sin\theta\, u_{y\theta} + \tfrac12 A_2 u",
                  lambda d, r: _a13(d)),
        Invariant("A22u", "sin²θ u_xx − 2 cos θ sin θ u_xy + cos²θ u_yy",
                  r"\sin^2\theta\, u_{xx} - 2\cos\theta\sin\theta\, u_{xy} + \cos^2\theta\, u_{yy}",
                  lambda d, r: _a22(d)),
        Invariant("A23u", "−sin θ u_xθ + cos θ u_yθ − A1u / 2",
                  r"-\sin\theta\, u_{x\theta} + \cos\theta\, u_{y\theta} - \tfrac12 A_1 u",
                  lambda d, r: _a23(d)),
        Invariant("A33u", "u_θθ", r"u_{\theta\theta}", lambda d, r: d.u_θθ),
    ], equation="left-invariant derivatives (docs/lifted.md)",
    invariant_under=("translations", "rotations"),
))
