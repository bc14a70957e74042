"""Finite-difference stencils and the jet: every partial derivative of an image up to order n.

Axis convention (see :mod:`eqpdenet.geometry`): ``x`` runs along columns to the right, ``y`` runs
*up*, against the row index. So ``u_y ~ (u[i-1, j] - u[i+1, j]) / (2 h)``.

The jet of ``u`` is the stack of its partial derivatives ``d^{a+b} u / dx^a dy^b`` for all
``a + b <= order``, in the order given by :func:`derivative_multi_indices`: by total order, then by
the number of ``y`` derivatives, i.e. ``u, u_x, u_y, u_xx, u_xy, u_yy, u_xxx, ...``. It is computed
by a single :func:`torch.nn.functional.conv2d` call with a fixed bank of stencils (eq. (10) of the
paper, ``d_alpha U = K_alpha * U``).

Stencils come from a registry keyed by name:

``central``
    Products of 1-D central differences of accuracy order 2 (weights from the Vandermonde system
    of the offsets), any derivative order. Exact on polynomials of degree <= 2 (and, for each
    derivative of order k, on degree <= k + 1).
``isotropic``
    3x3 stencils, orders <= 2. The gradient and the diagonal of the Hessian have a
    rotation-covariant leading error, ``u_xy`` does not. Up to ``O(h^4)``:

    * ``u_x, u_y`` (central difference smoothed across by ``[1, 4, 1] / 6``, Scharr-like) are
      the gradient of ``(1 + h^2/6 Δ) u``;
    * ``u_xx, u_yy`` (``[1, -2, 1]`` smoothed across by ``[1, 10, 1] / 12``; their sum is the
      isotropic 9-point Laplacian ``[[1, 4, 1], [4, -20, 4], [1, 4, 1]] / 6``) are those of
      ``(1 + h^2/12 Δ) u``;
    * ``u_xy`` (the only 3x3 stencil odd in x and in y, ``[[-1, 0, 1], [0, 0, 0], [1, 0, -1]] /
      4``) is that of ``(1 + h^2/6 Δ) u``: leading error ``h^2/6 (u_xxxy + u_xyyy)``, not
      ``h^2/12`` (on ``u = x^3 y + x^4``: ``u_xy`` error / h^2 = 1, ``u_xx`` error / h^2 = 2).

    So the Hessian's leading error ``h^2/12 ∇∇Δu + h^2/12 (u_xxxy + u_xyyy) [[0, 1], [1, 0]]`` is
    not a tensor: rotation-invariant quantities of the gradient and of the Laplacian
    (``|∇u|^2``, ``Δu``) get a rotation error of ``O(h^4)``, those that involve ``u_xy``
    (``∇uᵀ H ∇u``, ``|H|^2``, ``det H``, every covariant ratio through its reference) only
    ``O(h^2)`` (measured in ``docs/equivariance.md``). No 3x3 stencil can do better: a 3x3
    ``u_xx`` has error ``h^2 (u_xxxx / 12 + c u_xxyy)`` and ``u_xy`` error ``h^2/6 (u_xxxy +
    u_xyyy)``, so ``u_xxxx`` and ``u_xxxy`` come with 1/12 and 1/6. Exact on polynomials of
    degree <= 2.
``isotropic5``
    ``isotropic`` with a 5x5 ``u_xy``: ``7/6`` of the 3x3 stencil minus ``1/6`` of the same
    stencil on the corners at distance 2 (spacing ``2h``), which is ``u_xy`` of ``(1 + h^2/12 Δ)
    u`` up to ``O(h^4)``. The whole 2-jet then has a rotation-covariant leading error
    (gradient of ``(1 + h^2/6 Δ) u``, Hessian of ``(1 + h^2/12 Δ) u``), so every invariant's
    rotation error is ``O(h^4)``. Not implemented by the fused kernel (3x3 only).
``gaussian``
    Derivatives of the image blurred by a Gaussian of standard deviation ``sigma``
    (:func:`gaussian_derivative_weights`): ``K_(a,b) u = d_x^a d_y^b (G_sigma * u)``. The only
    family with a scale: ``jet``, :class:`Jet` and ``LayerConfig`` take ``sigma`` (in the unit of
    ``x``, like ``spacing``) for it, and refuse a ``sigma`` for the others. Any order.

A family with a scale is registered with a builder ``builder(order, sigma)`` (``sigma`` in
pixels), the others with ``builder(order)``; :func:`stencil_has_scale` tells them apart.
:func:`scale_normalised` gives the scale-normalised jet ``sigma^(a+b) d_x^a d_y^b`` for
scale-space use.

Stencils are never normalised: they are derivative operators with their true scale and sign,
divided by ``h^{a+b}`` for the grid spacing ``h``.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_images, check_values, fixed_after_build, require, require_positive
from ..errors import ConfigError, InputError
from ..registry import Registry

__all__ = [
    "bank_second_order_symbol_range",
    "BOUNDARIES",
    "ConstantBuffers",
    "GAUSSIAN_TRUNCATE",
    "MIN_GAUSSIAN_SIGMA",
    "STENCILS",
    "Jet",
    "available_stencils",
    "check_order",
    "MAX_GAUSSIAN_SIGMA",
    "MAX_ORDER",
    "MAX_SPACING",
    "MIN_SPACING",
    "check_sigma",
    "check_spacing",
    "derivative_index",
    "derivative_multi_indices",
    "derivative_names",
    "finite_difference_weights",
    "gaussian_derivative_weights",
    "jet",
    "jet_order",
    "kernel_symbol",
    "laplacian_max_eigenvalue",
    "register_stencil",
    "scale_normalised",
    "second_order_symbol_range",
    "stencil_has_scale",
    "stencil_kernels",
    "boundary_min_size",
]

#: Boundary handling for the jet: name -> mode of :func:`torch.nn.functional.pad`.
BOUNDARIES: Registry[str] = Registry("boundary")
for _name, _mode in (("replicate", "replicate"), ("zeros", "constant"), ("reflect", "reflect"),
                     ("circular", "circular")):
    BOUNDARIES.register(_name, _mode)


def boundary_min_size(boundary: str, radius: int) -> int:
    """The smallest image side a stencil of ``radius`` takes with ``boundary``: ``reflect``
    mirrors ``radius`` pixels inside the image (``radius + 1``), ``circular`` wraps them once
    (``radius``); ``replicate`` and ``zeros`` take any size."""
    mode = BOUNDARIES.get(boundary)
    return {"reflect": radius + 1, "circular": max(radius, 1)}.get(mode, 1)


#: The highest jet order :func:`check_order` accepts: ``(n + 1)(n + 2) / 2`` stencils of width
#: ``n + 1`` or more each (the paper's jets have order 2, compiled invariant sets up to 4).
MAX_ORDER = 64


def check_order(order, field: str = "order") -> int:
    """``order`` as an int if it is a jet order (an integer, not a ``bool``, in ``0 ..``
    :data:`MAX_ORDER`), else a :class:`~eqpdenet.errors.ConfigError` naming ``field``, before
    any stencil is built (a stencil's name passed where the order goes, ``jet(u, "central")``,
    failed inside the stencil builder; ``True`` was order 1)."""
    hint = (f" ({order!r} is a stencil: pass it as stencil={order!r})"
            if isinstance(order, str) and order in STENCILS else "")
    require(isinstance(order, numbers.Integral) and not isinstance(order, bool)
            and 0 <= order <= MAX_ORDER, field,
            f"the jet order must be an integer in 0..{MAX_ORDER}, got {order!r}{hint}")
    return int(order)


def derivative_multi_indices(order: int) -> tuple[tuple[int, int], ...]:
    """Multi-indices ``(a, b)`` (``a`` x-derivatives, ``b`` y-derivatives) with ``a + b <= order``.

    Ordered by total order, then by ``b``: ``((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2), ...)``.
    """
    return _multi_indices(check_order(order))


@functools.cache  # bounded by check_order: at most MAX_ORDER + 1 entries
def _multi_indices(order: int) -> tuple[tuple[int, int], ...]:
    return tuple((n - b, b) for n in range(order + 1) for b in range(n + 1))


def derivative_names(order: int) -> tuple[str, ...]:
    """Names of the jet channels, e.g. ``("u", "u_x", "u_y", "u_xx", "u_xy", "u_yy")``."""
    return tuple(
        "u" if a + b == 0 else "u_" + "x" * a + "y" * b for a, b in derivative_multi_indices(order)
    )


def jet_order(size: int) -> int:
    """The order ``n`` of a jet of ``size = (n + 1)(n + 2) / 2`` derivatives (InputError if none)."""
    order = 0
    while (order + 1) * (order + 2) // 2 < size:
        order += 1
    if (order + 1) * (order + 2) // 2 != size:
        raise InputError(f"a jet has (n+1)(n+2)/2 channels for some order n, got {size}")
    return order


def derivative_index(name: str) -> int:
    """Position of a derivative (``"u_xy"``) in the jet; the same for every jet order."""
    if name == "u":
        return 0
    if not name.startswith("u_") or set(name[2:]) - {"x", "y"} or name[2:] != "".join(
        sorted(name[2:])
    ):
        raise ConfigError(f"not a derivative name: {name!r} (expected e.g. 'u', 'u_x', 'u_xy')")
    a, b = name.count("x"), name.count("y")
    return derivative_multi_indices(a + b).index((a, b))


def finite_difference_weights(derivative: int, offsets: tuple[int, ...]) -> np.ndarray:
    """Weights ``w`` with ``sum_k w_k f(offset_k) = f^{(derivative)}(0) + O(...)`` at unit spacing.

    Solves the Vandermonde system ``sum_k w_k offset_k^m / m! = [m == derivative]`` for
    ``m < len(offsets)``, so the rule is exact on polynomials of degree ``< len(offsets)``.
    """
    offsets = tuple(offsets)
    if derivative >= len(offsets):
        raise ValueError(f"{len(offsets)} points cannot approximate derivative {derivative}")
    m = np.arange(len(offsets))
    vandermonde = np.array(offsets, dtype=np.float64)[None, :] ** m[:, None]
    vandermonde /= np.array([math.factorial(int(k)) for k in m], dtype=np.float64)[:, None]
    rhs = (m == derivative).astype(np.float64)
    weights = np.linalg.solve(vandermonde, rhs)
    weights[np.abs(weights) < 1e-13] = 0.0
    return weights


def _central_1d(derivative: int, radius: int) -> np.ndarray:
    """Central difference of accuracy order 2 for ``derivative``, padded to ``2 radius + 1``."""
    half = max(1, (derivative + 1) // 2)
    weights = finite_difference_weights(derivative, tuple(range(-half, half + 1)))
    out = np.zeros(2 * radius + 1)
    out[radius - half : radius + half + 1] = weights
    return out


def _outer(wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """2-D kernel from 1-D weights along x (columns) and along y (up, so rows are reversed)."""
    return np.outer(wy[::-1], wx)


def _central(order: int) -> dict[tuple[int, int], np.ndarray]:
    radius = max(1, (order + 1) // 2)
    return {
        (a, b): _outer(_central_1d(a, radius), _central_1d(b, radius))
        for a, b in derivative_multi_indices(order)
    }


def _isotropic(order: int, name: str = "isotropic") -> dict[tuple[int, int], np.ndarray]:
    if order > 2:
        raise ConfigError(f"the {name!r} stencil supports jet order <= 2, got {order}")
    delta = np.array([0.0, 1.0, 0.0])
    d1 = np.array([-0.5, 0.0, 0.5])
    d2 = np.array([1.0, -2.0, 1.0])
    smooth_gradient = np.array([1.0, 4.0, 1.0]) / 6.0
    smooth_hessian = np.array([1.0, 10.0, 1.0]) / 12.0
    table = {
        (0, 0): _outer(delta, delta),
        (1, 0): _outer(d1, smooth_gradient),
        (0, 1): _outer(smooth_gradient, d1),
        (2, 0): _outer(d2, smooth_hessian),
        (1, 1): _outer(d1, d1),
        (0, 2): _outer(smooth_hessian, d2),
    }
    return {index: table[index] for index in derivative_multi_indices(order)}


def _isotropic5(order: int) -> dict[tuple[int, int], np.ndarray]:
    table = _isotropic(order, "isotropic5")
    if (1, 1) in table:
        near = np.zeros((5, 5))
        near[1:4, 1:4] = table[(1, 1)]
        # the corner stencil at spacing 2h: error 4 h^2/6; 7/6 h^2/6 - 1/6 4h^2/6 = h^2/12
        far = _outer(np.array([-0.5, 0, 0, 0, 0.5]), np.array([-0.5, 0, 0, 0, 0.5])) / 4.0
        table[(1, 1)] = 7.0 / 6.0 * near - 1.0 / 6.0 * far
    return table


#: Truncation radius of the ``gaussian`` family in standard deviations: the kernels have radius
#: ``max(ceil(GAUSSIAN_TRUNCATE * sigma), order // 2 + 1)`` pixels.
GAUSSIAN_TRUNCATE = 4.0

#: Smallest ``sigma`` of the ``gaussian`` family, in pixels: below it the sampled Gaussian is
#: hardly more than one tap and its moment system is ill-conditioned.
MIN_GAUSSIAN_SIGMA = 0.5

#: Largest ``sigma`` of the ``gaussian`` family that :func:`check_sigma` accepts, in pixels: its
#: kernels are ``8 sigma + 1`` pixels wide (1e4 asked for 48 GiB, 1e300 failed in NumPy).
MAX_GAUSSIAN_SIGMA = 100.0

#: The grid spacings ``h`` accepted (:func:`check_spacing`): the jet's weights scale by
#: ``h^-(a+b)``, and 1e300 or 1e-300 overflowed there (an OverflowError, not a message).
MIN_SPACING, MAX_SPACING = 1e-6, 1e6


def _gaussian_moment(derivative: int, power: int, sigma: float) -> float:
    """``int (-1)^a G^(a)(t) t^m / m! dt`` for the unit-mass Gaussian ``G`` of std ``sigma``.

    By parts, ``(1 / (m - a)!) E[t^(m - a)]`` for ``m >= a`` (0 below): 1 for ``m = a`` (the
    derivative of ``t^a / a!`` is 1), and ``sigma^2 / 2`` for ``a = 0, m = 2`` (blurring adds
    ``sigma^2 / 2`` to ``t^2 / 2``).
    """
    j = power - derivative
    if j < 0 or j % 2:
        return 0.0
    double_factorial = math.prod(range(j - 1, 0, -2)) if j else 1
    return sigma**j * double_factorial / math.factorial(j)


def gaussian_derivative_weights(derivative: int, sigma: float, order: int | None = None,
                                truncate: float = GAUSSIAN_TRUNCATE) -> np.ndarray:
    """1-D weights ``w_k`` (offsets ``k = -R .. R`` pixels) of ``d^a/dx^a (G_sigma * f)`` at 0.

    Used by cross-correlation, ``sum_k w_k f(k)``. The weights are the sampled
    ``(-1)^a G^(a)(k) = sigma^-a He_a(k / sigma) G(k)`` (``He`` the Hermite polynomials),
    truncated at ``R = max(ceil(truncate sigma), M // 2 + 1)``, times the even polynomial ``p``
    (of degree at most ``M = max(order, derivative) + 1``: ``w`` keeps the parity of ``G^(a)``)
    that makes the discrete moments exact:
    ``sum_k w_k k^m / m! = int (-1)^a G^(a)(t) t^m / m! dt`` for ``m = 0 .. M`` (1 for
    ``m = a``: the derivative of ``x^a / a!`` is 1; 0 below). So the stencil is exact on
    polynomials of degree ``<= M``: it gives the derivative of the blurred polynomial, which for
    degree ``<= a + 1`` is the derivative itself. ``p`` is 1 up to the small sampling and
    truncation errors (at ``sigma = 1``, its coefficients differ from ``(1, 0, ...)`` by < 1e-3).
    Never normalised otherwise: true scale and sign.
    """
    if not sigma >= MIN_GAUSSIAN_SIGMA:
        raise ConfigError(f"the gaussian stencil needs sigma >= {MIN_GAUSSIAN_SIGMA} pixels, "
                          f"got {sigma!r}")
    degree = max(derivative if order is None else order, derivative) + 1
    radius = max(math.ceil(truncate * sigma), degree // 2 + 1)
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    z = k / sigma
    hermite = np.polynomial.hermite_e.hermeval(z, [0.0] * derivative + [1.0])
    shape = hermite * np.exp(-0.5 * z**2) / (math.sqrt(2 * math.pi) * sigma**(derivative + 1))
    # The weights keep the parity of G^(a) (even or odd in k), so p has even powers only, and
    # the moments of the other parity vanish by symmetry: only those of parity a are solved for,
    # as many as there are (m = a mod 2, ..., <= M), in as many even powers of z. The whole
    # system in every power z^0 .. z^M was singular for an odd a and an even M (an odd jet
    # order): solve returned an arbitrary member of its solutions, with exact moments but a
    # kernel far from the derivative (u_x of the wrong sign at order 1; round 13).
    rows = np.arange(derivative % 2, degree + 1, 2)
    even = np.arange(0, 2 * len(rows), 2)
    factorial = np.array([math.factorial(int(m)) for m in rows], dtype=np.float64)
    # A[m, j] = sum_k shape_k z_k^j k^m / m!; solve A c = moments for p(k) = sum_j c_j z_k^j.
    basis = z[None, :] ** even[:, None]
    system = ((k[None, :] ** rows[:, None]) / factorial[:, None] * shape[None, :]) @ basis.T
    target = np.array([_gaussian_moment(derivative, int(m), sigma) for m in rows])
    coefficients = np.linalg.solve(system, target)
    weights = shape * (coefficients @ basis)
    powers = np.arange(degree + 1)  # every moment up to M, both parities, checked
    moments_of = (k[None, :] ** powers[:, None]) / np.array(
        [math.factorial(int(m)) for m in powers], dtype=np.float64)[:, None]
    wanted = np.array([_gaussian_moment(derivative, int(m), sigma) for m in powers])
    residual = np.abs(moments_of @ weights - wanted).max()
    if not residual <= 1e-9 * max(1.0, sigma**degree):
        # high orders at a small sigma: the moment system is too ill-conditioned in float64
        # (order 6 at sigma 0.5, order 8 below 0.65); an AssertionError said "a bug" before
        raise ConfigError(f"the gaussian stencil's kernel of derivative order {derivative} for a "
                          f"jet of order {degree - 1} cannot be made exact at sigma = {sigma:g} "
                          f"pixels (its moments are off by {residual:.2g}); use a larger sigma "
                          f"or a lower order")
    return weights


def _gaussian(order: int, sigma: float) -> dict[tuple[int, int], np.ndarray]:
    one_d = [gaussian_derivative_weights(a, sigma, order) for a in range(order + 1)]
    return {(a, b): _outer(one_d[a], one_d[b]) for a, b in derivative_multi_indices(order)}


#: Stencil families: name -> ``builder(order)`` (or ``builder(order, sigma)`` for a family with a
#: scale) returning ``{(a, b): kernel}`` at unit spacing.
STENCILS: Registry[Callable[..., dict[tuple[int, int], np.ndarray]]] = Registry("stencil")
STENCILS.register("central", _central)
STENCILS.register("isotropic", _isotropic)
STENCILS.register("isotropic5", _isotropic5)
STENCILS.register("gaussian", _gaussian)


def register_stencil(name: str, builder: Callable[..., dict[tuple[int, int], np.ndarray]], *,
                     replace: bool = False):
    """Add a stencil family: ``builder(order)`` returns ``{(a, b): kernel}`` at unit spacing.

    Kernels are square with odd size, indexed ``[row offset, column offset]`` (rows grow
    downwards, so ``y`` derivatives use reversed rows) and are used by cross-correlation. A
    family with a scale takes it as a second argument named ``sigma`` (in pixels):
    ``builder(order, sigma)``.
    """
    require(callable(builder), "builder", f"a stencil family is registered with its builder, a "
            f"function builder(order) -> {{(a, b): kernel}}, got {type(builder).__name__}")
    return STENCILS.register(name, builder, replace=replace)


def available_stencils() -> tuple[str, ...]:
    """Names of the registered stencil families."""
    return STENCILS.names()


def stencil_has_scale(name: str) -> bool:
    """Whether the family ``name`` takes a scale ``sigma`` (its builder has a ``sigma`` argument)."""
    return "sigma" in inspect.signature(STENCILS.get(name)).parameters


def check_sigma(stencil: str, sigma: float | None, spacing: float = 1.0,
                field: str = "sigma") -> float | None:
    """``sigma`` for ``stencil``: required (positive, at least :data:`MIN_GAUSSIAN_SIGMA` pixels,
    i.e. ``spacing * MIN_GAUSSIAN_SIGMA``) for a family with a scale, ``None`` for the others."""
    spacing = check_spacing(spacing, field.rpartition("sigma")[0] + "spacing")
    if not stencil_has_scale(stencil):
        require(sigma is None, field, f"the {stencil!r} stencil has no scale; leave sigma out "
                f"(only {', '.join(n for n in available_stencils() if stencil_has_scale(n))} "
                f"take one)")
        return None
    require(sigma is not None, field, f"the {stencil!r} stencil needs sigma, the standard "
            f"deviation of its Gaussian in the unit of x (like spacing)")
    sigma = require_positive(sigma, field)
    require(sigma / spacing >= MIN_GAUSSIAN_SIGMA, field,
            f"must be at least {MIN_GAUSSIAN_SIGMA} pixels ({MIN_GAUSSIAN_SIGMA * spacing:.3g} "
            f"at spacing {spacing:.3g}), got {sigma:.3g}")
    require(sigma / spacing <= MAX_GAUSSIAN_SIGMA, field,
            f"must be at most {MAX_GAUSSIAN_SIGMA:g} pixels ({MAX_GAUSSIAN_SIGMA * spacing:.3g} "
            f"at spacing {spacing:.3g}; its kernels are 8 sigma + 1 pixels wide), got {sigma:.3g}")
    return sigma


def check_spacing(spacing: float, field: str = "spacing") -> float:
    """``spacing`` as a float if it is a grid spacing the jet's weights ``h^-(a+b)`` can take
    (between :data:`MIN_SPACING` and :data:`MAX_SPACING`), else a ConfigError naming ``field``."""
    spacing = require_positive(spacing, field)
    require(MIN_SPACING <= spacing <= MAX_SPACING, field,
            f"must be between {MIN_SPACING:g} and {MAX_SPACING:g} (the derivatives scale by "
            f"spacing^-order), got {spacing:.3g}")
    return spacing


def stencil_kernels(name: str, order: int, sigma: float | None = None) -> np.ndarray:
    """Kernels of a stencil family at unit spacing, shape ``(D, k, k)`` in jet order (read-only).

    ``sigma`` (in pixels) is the scale of a family that has one (:func:`stencil_has_scale`).
    The family is looked up by name now: a module built with it keeps the kernels it got
    (:class:`Jet`), whatever is registered under the name later.
    """
    # checked before the cache, which takes True for 1
    return _stencil_kernels(name, check_order(order), sigma)


# Entries of each module-level cache of this module (stencil banks, symbol ranges): keyed by a
# continuous ``sigma``, an unbounded cache grew by every value a hyper-parameter search tried
# (+550 MB per 1,000 Gaussian scales). An evicted entry is computed again, to the same bits.
_CACHE_SIZE = 64


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _stencil_kernels(name: str, order: int, sigma: float | None = None) -> np.ndarray:
    sigma = check_sigma(name, sigma)
    builder = STENCILS.get(name)
    table = builder(order) if sigma is None else builder(order, sigma)
    indices = derivative_multi_indices(order)
    missing = [index for index in indices if index not in table]
    if missing:
        raise ConfigError(f"stencil {name!r} does not define derivatives {missing}")
    size = max(kernel.shape[0] for kernel in table.values())
    bank = np.zeros((len(indices), size, size))
    for row, index in enumerate(indices):
        kernel = np.asarray(table[index], dtype=np.float64)
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 != 1:
            raise ConfigError(f"stencil {name!r}: kernel {index} must be square with odd size")
        pad = (size - kernel.shape[0]) // 2
        bank[row, pad : pad + kernel.shape[0], pad : pad + kernel.shape[0]] = kernel
    bank.setflags(write=False)
    return bank


# A replaced stencil family must not be served from the caches.
STENCILS.on_change(lambda: (_stencil_kernels.cache_clear(), laplacian_max_eigenvalue.cache_clear(),
                             second_order_symbol_range.cache_clear()))


def jet_weight(
    order: int, stencil: str, spacing: float, dtype: torch.dtype, device=None,
    sigma: float | None = None,
) -> Tensor:
    """Convolution weight ``(D, 1, k, k)`` of the jet, scaled by ``spacing^-(a+b)``.

    ``sigma`` (in the unit of ``x``) is the scale of a family that has one.
    """
    return _scaled_weight(_unit_bank(order, stencil, spacing, sigma), spacing, dtype, device)


def _unit_bank(order: int, stencil: str, spacing: float, sigma: float | None) -> np.ndarray:
    """The checked arguments' stencils at unit spacing, ``(D, k, k)`` float64, read-only."""
    order = check_order(order)
    sigma = check_sigma(stencil, sigma, spacing)  # and spacing (check_spacing)
    return stencil_kernels(stencil, order, None if sigma is None else sigma / spacing)


def _scaled_weight(bank: np.ndarray, spacing: float, dtype: torch.dtype, device) -> Tensor:
    """The jet's weight ``(D, 1, k, k)`` from its stencils at unit spacing ``bank``."""
    order = jet_order(bank.shape[0])
    scales = np.array([spacing ** -(a + b) for a, b in derivative_multi_indices(order)])
    weight = torch.tensor(bank * scales[:, None, None], dtype=dtype, device=device)
    return weight[:, None]


def check_jet_image_size(height: int, width: int, boundary: str, radius: int) -> None:
    """An :class:`~eqpdenet.errors.InputError` naming the boundary, the radius and the size
    unless images of ``height x width`` pixels are at least :func:`boundary_min_size` on each
    side (1 x 1 for every boundary: an image without pixels has no jet). The one size rule of
    the jets, applied by :func:`apply_jet_weight` and, before its fused kernel, by the PDE layer
    (whose kernel returned an empty result for a 0 x W image where the reference refused it)."""
    smallest = boundary_min_size(boundary, radius)
    if min(height, width) < smallest:
        raise InputError(f"the {boundary!r} boundary of a stencil of radius {radius} needs images "
                         f"of at least {smallest}x{smallest} pixels, got {height}x{width}")


def apply_jet_weight(u: Tensor, weight: Tensor, boundary: str) -> Tensor:
    """Jet of ``u`` ``(B, C, H, W)`` with a prepared weight ``(D, 1, k, k)``: ``(B, C, D, H, W)``.

    ``u`` is not checked here (the public entry points check it once).
    """
    mode = BOUNDARIES.get(boundary)
    batch, channels, height, width = u.shape
    radius = weight.shape[-1] // 2
    check_jet_image_size(height, width, boundary, radius)
    flat = u.reshape(batch * channels, 1, height, width)
    if radius:
        flat = F.pad(flat, (radius,) * 4, mode=mode)
    out = F.conv2d(flat, weight.to(dtype=u.dtype, device=u.device))
    return out.reshape(batch, channels, weight.shape[0], height, width)


def jet(
    u: Tensor,
    order: int = 2,
    stencil: str = "central",
    spacing: float = 1.0,
    boundary: str = "replicate",
    sigma: float | None = None,
) -> Tensor:
    """All partial derivatives of ``u`` up to ``order``, by one convolution (eq. (10)).

    Args:
        u: images ``(B, C, H, W)``; each channel is differentiated independently.
        order: highest total derivative order (2 gives ``u, u_x, u_y, u_xx, u_xy, u_yy``).
        stencil: a name from :func:`available_stencils`.
        spacing: grid spacing ``h`` (same unit as ``x`` and ``y``).
        boundary: ``replicate`` (default), ``zeros``, ``reflect`` or ``circular``.
        sigma: for ``gaussian`` (a family with a scale), the standard deviation of the
            Gaussian, in the unit of ``x`` (``sigma / spacing`` pixels); None for the others.

    Returns:
        ``(B, C, D, H, W)`` with ``D = (order + 1)(order + 2) / 2`` in the order of
        :func:`derivative_names`, in the dtype of ``u``. A ``u`` with NaN or inf is an
        :class:`~eqpdenet.errors.InputError` (:func:`~eqpdenet.checks.check_values`).

    Example:
        >>> u = torch.rand(8, 1, 28, 28)
        >>> jet(u).shape
        torch.Size([8, 1, 6, 28, 28])
        >>> jet(u, stencil="gaussian", sigma=1.0).shape  # derivatives of the blurred image
        torch.Size([8, 1, 6, 28, 28])
    """
    check_images(u, "u")
    check_values(u, "u")  # a NaN would spread over the stencil's neighbourhood, silently
    return apply_jet_weight(u, jet_weight(order, stencil, spacing, u.dtype, u.device, sigma),
                            boundary)


class ConstantBuffers(nn.Module):
    """Base of the modules that keep constants (stencils, index tables, an identity matrix) as
    non-persistent buffers: they follow the module to its device and dtype, and are not in
    ``state_dict`` (checkpoints hold what training changes; their keys do not change).

    Nothing loads such a buffer, so a subclass computes its values itself,
    :meth:`_constant`, exactly as at construction, and they are computed again after every move
    (``_apply``: ``.to``, ``.double()``, ``.cuda()``, ``to_empty``) at the buffer's new dtype and
    device, and copied in again by ``load_state_dict``. A module built on the ``meta`` device and
    materialised by ``to_empty`` (PyTorch's deferred initialisation) had uninitialised memory in
    them, and wrong outputs without an error; a cast was for good (a float64 module once moved
    to float32 and back kept the rounded values).

    :meth:`_constant` computes from what the module kept when it was built, never from a
    registry looked up by name at that moment (:class:`Jet` keeps its float64 stencils): a
    stencil re-registered under the module's name (``register_stencil(name, ...,
    replace=True)``) changed a built model's outputs at its next ``.cpu()``, ``.to()``,
    ``.double()`` or ``load_state_dict``, with the same weights.
    """

    def _constant(self, name: str, dtype: torch.dtype, device) -> Tensor | None:
        """The constant buffer ``name``, computed as at construction, in ``dtype`` on ``device``
        (None: the default device, at construction); None for a buffer that is not one of this
        class's constants (a subclass's own is left as it is)."""
        raise NotImplementedError

    def _constants(self):
        """``(name, buffer, value)`` of every constant buffer, the value at the buffer's dtype
        and device."""
        for name in sorted(self._non_persistent_buffers_set):
            buffer = self._buffers.get(name)
            value = None if buffer is None else self._constant(name, buffer.dtype, buffer.device)
            if value is not None:
                yield name, buffer, value

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, _, value in list(self._constants()):
            self._buffers[name] = value
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
        with torch.no_grad():  # in place, as the loaded buffers (inference mode may be on)
            for name, buffer, value in list(self._constants()):
                if buffer.is_meta and local_metadata.get("assign_to_params_buffers", False):
                    # load_state_dict(..., assign=True) into a module built on the meta device
                    # assigns the loaded tensors, but a constant is in no state_dict: computed
                    # on the device of the loaded tensors (the default device where this module
                    # has none), as to_empty would.
                    device = next((t.device for t in state_dict.values()
                                   if isinstance(t, Tensor) and not t.is_meta),
                                  torch.get_default_device())
                    self._buffers[name] = self._constant(name, buffer.dtype, device)
                else:
                    buffer.copy_(value)


class Jet(ConstantBuffers):
    """Module form of :func:`jet`; its stencils are a non-persistent buffer (not in state_dict).

    The buffer is built in float64 and cast to the input's dtype at each call, so a module moved
    to float64 (``.double()``) keeps stencils exact to float64 (the ``gaussian`` and
    ``isotropic`` weights are not representable in float32). They are rebuilt from their float64
    definition at whatever dtype and device a move gives them (:class:`ConstantBuffers`), so that
    a float64 module's stencil is exact whatever its history.

    That definition is the stencil family's kernels as they were when the module was built
    (:attr:`bank`): a family re-registered under its name later (``replace=True``) reaches the
    modules built after, never this one. So ``order``, ``stencil``, ``spacing`` and ``sigma``
    are read-only (setting one is a :class:`~eqpdenet.errors.ConfigError`: build a new
    ``Jet``); ``boundary`` is read at each call and may be set.
    """

    #: The hyper-parameters its stencils are built from, fixed at construction: one set later
    #: was half applied (the cached bank kept the old order, stencil and sigma for good, and
    #: the weight kept the old spacing until the next .to() or load_state_dict rebuilt it).
    _FIXED = ("order", "stencil", "spacing", "sigma")

    def __init__(self, order: int = 2, stencil: str = "central", spacing: float = 1.0,
                 boundary: str = "replicate", sigma: float | None = None):
        super().__init__()
        BOUNDARIES.get(boundary)
        self._order, self._stencil, self._spacing, self._sigma = order, stencil, spacing, sigma
        self.boundary = boundary
        self._bank = _unit_bank(order, stencil, spacing, sigma)
        self.register_buffer("weight", self._constant("weight", torch.float64, None),
                             persistent=False)

    def __setstate__(self, state: dict) -> None:
        # a Jet pickled whole before round 20 held them as plain attributes
        state = {("_" + key if key in self._FIXED else key): value
                 for key, value in state.items()}
        super().__setstate__(state)

    def _fixed(self, name: str):
        raise ConfigError(f"Jet.{name} is fixed when the jet is built (its stencils and weight "
                          f"are made from it): build a new Jet(order, stencil, spacing, "
                          f"boundary, sigma) instead")

    order = fixed_after_build("order", "The highest derivative order of the jet (read-only).")
    stencil = fixed_after_build("stencil", "The stencil family's name (read-only).")
    spacing = fixed_after_build("spacing", "The grid spacing h, in the image's length unit "
                                           "(read-only).")
    sigma = fixed_after_build("sigma", "The Gaussian stencil's scale in pixels, or None "
                                       "(read-only).")

    @property
    def bank(self) -> np.ndarray:
        """The stencils this jet was built with, at unit spacing: ``(D, k, k)`` float64,
        read-only (:func:`stencil_kernels` at construction); its weight is this bank divided by
        the spacing powers."""
        bank = self.__dict__.get("_bank")
        if bank is None:  # a Jet pickled whole before it kept its stencils: they are now kept
            bank = self._bank = _unit_bank(self.order, self.stencil, self.spacing, self.sigma)
        return bank

    def _constant(self, name: str, dtype: torch.dtype, device) -> Tensor | None:
        if name != "weight":
            return None
        return _scaled_weight(self.bank, self.spacing, dtype, device)

    @property
    def min_image_size(self) -> int:
        """The smallest image side this jet takes (:func:`boundary_min_size`)."""
        return boundary_min_size(self.boundary, self.weight.shape[-1] // 2)

    def forward(self, u: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, D, H, W)``, in the dtype of ``u``.

        ``u`` is checked as :func:`jet` checks it, with the same errors: a ``torch.Tensor``
        (else an :class:`~eqpdenet.errors.InputTypeError`), of shape ``(B, C, H, W)`` (else an
        :class:`~eqpdenet.errors.InputError`), floating point (else an ``InputTypeError``), and
        at least :attr:`min_image_size` on each side. Its values are not read (no host read:
        this module runs at every Euler step of a layer, which checked them once where ``u``
        entered; :func:`jet` alone checks for NaN and inf)."""
        # An integer u cast the stencil to its dtype: the weights +-0.5 became 0, a wrong jet
        # without an error (round 18).
        check_images(u, "u")
        return apply_jet_weight(u, self.weight, self.boundary)

    def extra_repr(self) -> str:
        return (f"order={self.order}, stencil={self.stencil!r}, spacing={self.spacing}, "
                f"boundary={self.boundary!r}" + ("" if self.sigma is None
                                                 else f", sigma={self.sigma}"))


def scale_normalised(jet: Tensor, sigma: float) -> Tensor:
    """The scale-normalised jet ``sigma^(a+b) d_x^a d_y^b u`` of a jet ``(..., D, H, W)``.

    Lindeberg's normalisation (``gamma = 1``) for scale-space use: for a Gaussian jet at scale
    ``sigma``, the normalised derivatives of ``u(p / lambda)`` at scale ``lambda sigma`` equal
    those of ``u`` at scale ``sigma`` at the corresponding point. ``sigma`` in the unit of ``x``.
    """
    sigma = require_positive(sigma, "sigma")
    order = jet_order(jet.shape[-3])
    # Order n holds the n + 1 channels from n (n + 1) / 2 on; its factor enters as a Python
    # number (a tensor of factors would be a host-to-device copy, which a CUDA graph cannot take).
    return torch.cat([jet[..., n * (n + 1) // 2:(n + 1) * (n + 2) // 2, :, :] * sigma**n
                      for n in range(order + 1)], dim=-3)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def laplacian_max_eigenvalue(stencil: str, spacing: float = 1.0,
                             sigma: float | None = None) -> float:
    """Largest eigenvalue of ``-(u_xx + u_yy)`` for a stencil on an infinite/periodic grid.

    Forward Euler for the heat equation ``u_t = a (u_xx + u_yy)`` is stable iff
    ``0 <= a dt <= 2 / lambda_max``; for ``central`` ``lambda_max = 8 / h^2`` (``dt <= h^2 / 4a``),
    for ``isotropic`` ``16 / (3 h^2)``. ``sigma`` (unit of ``x``) for a family with a scale.
    The ``gaussian`` Laplacian's symbol is slightly positive at the highest frequencies from
    about ``sigma = 1.7`` pixels (at most 6.9e-5, at 2: its moment correction), so there
    "stable" means a growth of at most ``1 + 6.9e-5 a dt`` per step (docs/symbolic.md).
    """
    return -second_order_symbol_range(stencil, spacing, sigma, (1.0, 0.0, 1.0))[0]


@functools.lru_cache(maxsize=_CACHE_SIZE)
def second_order_symbol_range(stencil: str, spacing: float = 1.0, sigma: float | None = None,
                              coefficients: tuple[float, float, float] = (1.0, 0.0, 1.0),
                              ) -> tuple[float, float]:
    """``(min, max)`` over all frequencies of the symbol of the discrete operator
    ``c_xx u_xx + c_xy u_xy + c_yy u_yy`` (``coefficients = (c_xx, c_xy, c_yy)``) of a stencil,
    on an infinite/periodic grid, in ``1 / unit of x^2``.

    Forward Euler for ``u_t = c_xx u_xx + c_xy u_xy + c_yy u_yy`` multiplies the Fourier mode
    of frequency ``omega`` by ``1 + dt sigma(omega)`` per step, so it is stable iff
    ``-2 <= dt sigma(omega) <= 0`` at every frequency: the symbol's range decides. The symbol
    is evaluated on a 257 x 257 grid of frequencies in ``[-pi, pi]^2`` (both ends included, so
    the highest frequency, where central differences peak, is on it) and its real part is taken
    (the kernels of every built-in stencil are point-symmetric, so their symbols are real).
    """
    sigma = check_sigma(stencil, sigma, spacing)
    bank = stencil_kernels(stencil, 2, None if sigma is None else sigma / spacing)
    return bank_second_order_symbol_range(bank, spacing, coefficients)


def bank_second_order_symbol_range(bank: np.ndarray, spacing: float,
                                   coefficients: tuple[float, float, float] = (1.0, 0.0, 1.0),
                                   ) -> tuple[float, float]:
    """:func:`second_order_symbol_range` of the stencils ``bank`` (``(D, k, k)`` at unit spacing,
    order >= 2, e.g. a :class:`Jet`'s :attr:`~Jet.bank`) rather than of a family looked up by
    name: what a built module computes, whatever is registered under its stencil's name now."""
    if bank.shape[0] < 6:
        raise ValueError(f"a stencil bank of order >= 2 (6 kernels or more) is needed for the "
                         f"second-order symbol, got {bank.shape[0]} kernels")
    c_xx, c_xy, c_yy = (float(c) for c in coefficients)
    kernel = (c_xx * bank[derivative_index("u_xx")] + c_xy * bank[derivative_index("u_xy")]
              + c_yy * bank[derivative_index("u_yy")])
    symbol = kernel_symbol(kernel, 257).real
    return float(symbol.min()) / spacing**2, float(symbol.max()) / spacing**2


def kernel_symbol(kernel: np.ndarray, points: int) -> np.ndarray:
    """The symbol ``sum_(r, c) kernel[r, c] exp(i (theta_a r + theta_b c))`` of a ``(k, k)``
    kernel (offsets ``-k // 2 .. k // 2``) on a ``points x points`` grid of frequencies in
    ``[-pi, pi]^2`` (both ends included), complex ``(points, points)``."""
    radius = kernel.shape[0] // 2
    theta = np.linspace(-np.pi, np.pi, points)
    phase = np.exp(1j * np.outer(theta, np.arange(-radius, radius + 1)))  # (frequency, offset)
    # two products rather than one einsum, which loops over all four indices (a 25 x 25
    # Gaussian kernel: 4e7 terms per call)
    return phase @ kernel @ phase.T
