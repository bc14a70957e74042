"""Anti-aliased downsampling by 2 that commutes with quarter turns and flips of the grid.

Plain 2x2 average pooling is a poor low-pass: it lets through much of the band above the new
Nyquist frequency, so a one-pixel shift of the input changes the pooled map by far more than a
half-pixel shift of the output (the aliasing that makes a "translation equivariant" network
fragile to shifts; Zhang, *Making Convolutional Networks Shift-Invariant Again*, 2019).
:class:`AntiAliasedDownsample` first blurs with a Gaussian of standard deviation ``sigma``
(pixels of the input), then keeps one sample per 2x2 cell:

* on an even size ``n`` the 2x2 average (samples at the cell centres ``2i + 1/2``), ``n / 2``
  outputs;
* on an odd size ``n`` the pixels ``0, 2, ..., n - 1``, ``(n + 1) / 2`` outputs.

Both sample grids are symmetric about the image centre, so the whole operation commutes exactly
with ``torch.rot90`` and with flips, for every boundary of the jets
(:data:`~eqpdenet.pde.stencils.BOUNDARIES`: ``replicate``, the default, ``zeros``, ``reflect``,
``circular``). A 2x2 average on an odd size would drop the last row and column and
break that symmetry.

On fields over position x orientation, :class:`OrientationMaxPool` keeps every ``r``-th
orientation, each the maximum over the old orientations within half a new bin of it: the
orientation axis's counterpart, exact under quarter turns as long as both counts are multiples
of 4.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import batched, fixed_after_build, require, require_int, require_positive
from ..errors import ConfigError, InputError, InputTypeError
from ..kernels.m2_op import real_constants
from ..kernels.op import transform_reason
from ..pde.stencils import BOUNDARIES, ConstantBuffers

__all__ = ["MAX_LOWPASS_SIGMA", "AntiAliasedDownsample", "OrientationMaxPool", "downsampled_size",
           "gaussian_lowpass_weights", "lowpass_radius", "require_lowpass_sigma"]

#: Truncation radius of the low-pass Gaussian, in standard deviations.
LOWPASS_TRUNCATE = 3.0
#: The widest low-pass, in pixels: on any map it averages (wider only costs time and memory,
#: ``O(sigma)`` per filter and ``O(n sigma)`` per map size ``n``: minutes and then out of memory
#: from about 1e6).
MAX_LOWPASS_SIGMA = 1e4


def require_lowpass_sigma(sigma, field: str) -> float:
    """``sigma`` as a float if it is a usable low-pass width (positive, at most
    :data:`MAX_LOWPASS_SIGMA` pixels), else a ConfigError naming ``field``."""
    sigma = require_positive(sigma, field)
    require(sigma <= MAX_LOWPASS_SIGMA, field,
            f"must be at most {MAX_LOWPASS_SIGMA:g} pixels (a low-pass that wide is a map's mean "
            f"on any image; a wider one only costs time and memory), got {sigma:g}")
    return sigma


def downsampled_size(size: int) -> int:
    """Size after :class:`AntiAliasedDownsample`: ``ceil(size / 2)``."""
    return (size + 1) // 2


def lowpass_radius(sigma: float, truncate: float = LOWPASS_TRUNCATE) -> int:
    """``R = max(1, ceil(truncate sigma))``, the half-width of :func:`gaussian_lowpass_weights`
    in pixels, without building them (what a size check needs before any work)."""
    return max(1, math.ceil(truncate * sigma))


def require_lowpass_fits(sigma: float, sizes: list[int], field: str, image_size: int) -> None:
    """A ConfigError naming ``field`` where the ``blur`` low-pass of std ``sigma`` reaches as far
    as the maps it filters (``sizes``: the side of each stage's maps for images of
    ``image_size`` pixels, all but the last downsampled): such a low-pass only averages the map
    out, its cost grows with ``sigma`` (minutes and then out of memory from about 1e6), and
    ``reflect`` or ``circular`` padding would not be defined (:class:`AntiAliasedDownsample`)."""
    if len(sizes) < 2:
        return
    radius, size = lowpass_radius(sigma), min(sizes[:-1])
    # a 1x1 map (invariant_pde's stencils take one) has no std to suggest: "at most 0 px"
    fix = (f"use at most {(size - 1) / LOWPASS_TRUNCATE:g} px, or larger images" if size > 1
           else "no low-pass fits a 1x1 map (its radius is at least 1 px): use larger images")
    require(radius < size, field,
            f"the low-pass of std {sigma:g} px reaches {radius} px either side, as far as the "
            f"{size}x{size} maps it would filter (stage sizes {sizes} for images of "
            f"{image_size} px); {fix}")


def gaussian_lowpass_weights(sigma: float, truncate: float = LOWPASS_TRUNCATE) -> Tensor:
    """Sampled Gaussian of std ``sigma`` pixels on ``-R .. R``, ``R`` :func:`lowpass_radius`,
    normalised to sum 1 (so constants pass unchanged), float64, shape ``(2R + 1,)``."""
    radius = lowpass_radius(sigma, truncate)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


class AntiAliasedDownsample(ConstantBuffers):
    """Gaussian low-pass, then one sample per 2x2 cell (see the module doc).

    Args:
        sigma: standard deviation of the low-pass, in input pixels (default 1: the response at
            the new Nyquist frequency ``pi / 2`` is ``exp(-pi^2 / 8) = 0.29``, against 0.71 for the
            2x2 average alone).
        boundary: a name of :data:`~eqpdenet.pde.stencils.BOUNDARIES` (default ``replicate``).
            ``reflect`` and ``circular`` need a map larger than the low-pass's radius
            (:func:`lowpass_radius`); on one no larger, that axis is padded by ``replicate``
            instead (a blur of the map's own values, where the two would be undefined). The
            models refuse such a low-pass when they are built
            (:class:`~eqpdenet.models.lifted_pde.LiftedPDENet`: ``lifted_pde.downsample_sigma``,
            :class:`~eqpdenet.models.invariant_pde.InvariantPDENet`:
            ``invariant_pde.downsample_sigma``).

    ``forward``: ``(..., H, W) -> (..., ceil(H / 2), ceil(W / 2))``; every leading dimension
    (batch, channels, orientations) is filtered independently, and may be 0; ``H`` or ``W`` 0
    is an :class:`~eqpdenet.errors.InputError` (as for the jets: a map without pixels has
    nothing to blur). A tensor that is not floating point is an
    :class:`~eqpdenet.errors.InputTypeError`. No parameters; ``sigma`` and ``boundary`` are
    read-only (setting one is a :class:`~eqpdenet.errors.ConfigError`). Its matrices cost
    ``O(n (n + R))`` to build per map size ``n``: a ``sigma`` far wider than the map costs time
    and memory for nothing (the low-pass of a map much narrower than it is nearly its mean).

    Example:
        >>> down = AntiAliasedDownsample()
        >>> down(torch.rand(2, 3, 8, 28, 28)).shape
        torch.Size([2, 3, 8, 14, 14])
        >>> ones = torch.ones(1, 1, 7, 7, dtype=torch.float64)
        >>> down(ones).shape, round(float(down(ones).min()), 12)
        (torch.Size([1, 1, 4, 4]), 1.0)
    """

    def __init__(self, sigma: float = 1.0, boundary: str = "replicate"):
        super().__init__()
        sigma = require_lowpass_sigma(sigma, "downsample sigma")
        BOUNDARIES.check(boundary, "boundary")
        # Fixed here: the weight buffer and the per-size matrices are built from them, so a
        # sigma or boundary set after a call was half applied (the cached matrices kept the old
        # one, the radius another), silently; read-only as M2Jet's scales (round 20).
        self._sigma, self._boundary = sigma, boundary
        self.register_buffer("weight", gaussian_lowpass_weights(sigma), persistent=False)
        self._matrices: dict = {}

    def __setstate__(self, state: dict) -> None:
        # a module pickled before round 20 (torch.save of a whole model) held them as attributes
        if "sigma" in state:
            state = dict(state)
            state["_sigma"], state["_boundary"] = state.pop("sigma"), state.pop("boundary")
        super().__setstate__(state)

    sigma = fixed_after_build(
        "sigma", "The low-pass's standard deviation, in input pixels (read-only).")
    boundary = fixed_after_build(
        "boundary", "The low-pass's padding, a name of :data:`~eqpdenet.pde.stencils.BOUNDARIES` "
                    "(read-only).")

    def _fixed(self, name: str):
        raise ConfigError(f"AntiAliasedDownsample.{name} is fixed when the module is built (its "
                          f"low-pass weights and cached matrices are made from it): build a new "
                          f"AntiAliasedDownsample(sigma, boundary) instead")

    def _constant(self, name: str, dtype: torch.dtype, device) -> Tensor | None:
        if name != "weight":
            return None
        # as at construction: float64 on the CPU (whatever default device is set), then cast
        with torch.device("cpu"):
            weight = gaussian_lowpass_weights(self.sigma)
        return weight.to(dtype=dtype, device=device)

    @property
    def radius(self) -> int:
        return self.weight.numel() // 2

    def forward(self, u: Tensor) -> Tensor:
        if not isinstance(u, Tensor) or u.dim() < 2 or not u.is_floating_point():
            what = (f"shape {tuple(u.shape)}, dtype {u.dtype}" if isinstance(u, Tensor)
                    else type(u).__name__)
            error = InputError if isinstance(u, Tensor) and u.dim() < 2 else InputTypeError
            raise error(f"AntiAliasedDownsample takes floating-point maps (..., H, W) as a "
                        f"torch.Tensor, got {what}")
        *lead, height, width = u.shape
        if height == 0 or width == 0:
            # as the jets (stencils.check_jet_image_size): F.pad failed inside _axis_matrix with a
            # raw torch error (round 18); an empty batch or channel axis is fine
            raise InputError(f"AntiAliasedDownsample needs maps of at least 1x1 pixels, got "
                             f"shape {tuple(u.shape)} ({height}x{width})")
        rows = self._matrix(height, u.dtype, u.device)      # (ceil(H / 2), H)
        cols = self._matrix(width, u.dtype, u.device)       # (ceil(W / 2), W)
        out = torch.matmul(torch.matmul(rows, u.reshape(-1, height, width)), cols.T)
        return out.reshape(*lead, *out.shape[-2:])

    def _matrix(self, size: int, dtype: torch.dtype, device) -> Tensor:
        """The whole operation along one axis as a ``(ceil(n / 2), n)`` matrix: two small
        matrix products per map are much faster than a one-channel convolution on the CPU."""
        key = (size, dtype, device)
        matrix = self._matrices.get(key)
        if matrix is None:
            # Built on the CPU in float64 from sigma, not from the buffer, which follows the
            # module to its device (a CUDA buffer beside the CPU identity fails); outside
            # inference mode, so that a model evaluated under torch.inference_mode() first can
            # train after (an inference tensor cannot be saved for backward).
            # real_constants: a trace (torch.export) building it first must not leave a
            # FakeTensor here for every later call (the lifted model's caches did).
            with real_constants():
                weight = gaussian_lowpass_weights(self.sigma)
                matrix = _axis_matrix(size, weight, self.boundary).to(dtype=dtype, device=device)
            if type(matrix) is Tensor and not torch.compiler.is_dynamo_compiling():
                self._matrices[key] = matrix
        return matrix

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, boundary={self.boundary!r}"


def _axis_matrix(size: int, weight: Tensor, boundary: str) -> Tensor:
    """Blur (``weight``, padded by ``boundary``) then one sample per cell along an axis of
    ``size`` pixels, as a float64 ``(ceil(size / 2), size)`` matrix (applied to the identity).
    ``reflect`` and ``circular`` on a ``size`` no larger than the radius pad by ``replicate``
    (documented in :class:`AntiAliasedDownsample`)."""
    radius = weight.numel() // 2
    mode = BOUNDARIES.get(boundary)
    if mode != "constant" and size <= radius:
        mode = "replicate"  # reflect and circular padding need more pixels than the radius
    basis = torch.eye(size, dtype=torch.float64)[:, None, :]          # (size, 1, size)
    blurred = F.conv1d(F.pad(basis, (radius, radius), mode=mode), weight.view(1, 1, -1))[:, 0]
    if size % 2 == 0:
        sampled = 0.5 * (blurred[:, 0::2] + blurred[:, 1::2])
    else:
        sampled = blurred[:, 0::2]
    return sampled.T.contiguous()                                       # (out, size)


class OrientationMaxPool(nn.Module):
    """Fewer orientations on M2: ``(B, C, N, H, W) -> (B, C, N / r, H, W)``, the new orientation
    ``j`` (``theta_j = 2 pi j r / N``, the old orientation ``j r``) the maximum over the old
    orientations within half a new bin of it, ``j r + d`` for ``|d| <= r / 2`` (periodic; for
    even ``r`` both ends of the bin, so that every old orientation is seen and the window is
    symmetric about ``theta_j``).

    A quarter turn shifts the old orientations by ``N / 4``, which is ``r`` times the new shift
    ``N / (4 r)`` when both counts are multiples of 4: the pooling commutes with quarter turns
    exactly (and with reflections of the orientation axis, the window being symmetric). Other
    rotations are approximate, as the coarser grid is. No parameters.

    Args:
        ratio: ``r``, a positive integer (else a ConfigError); the fields' ``N`` must be a
            multiple of it (else an :class:`~eqpdenet.errors.InputError` naming both).
            ``r = 1`` is the identity.

    Example:
        >>> pool = OrientationMaxPool(2)
        >>> u = torch.arange(8.0).view(1, 1, 8, 1, 1)
        >>> pool(u).flatten().tolist()        # windows {7, 0, 1}, {1, 2, 3}, {3, 4, 5}, {5, 6, 7}
        [7.0, 3.0, 5.0, 7.0]
    """

    def __init__(self, ratio: int):
        super().__init__()
        require(isinstance(ratio, numbers.Integral) and not isinstance(ratio, bool)
                and 1 <= ratio < 2**63, "ratio", f"must be a positive integer, got {ratio!r}")
        self.ratio = int(ratio)

    def window(self, n: int) -> Tensor:
        """The old orientations pooled into each new one: ``(N / r, 2 floor(r / 2) + 1)``."""
        require_int(n, "n", 1)
        require(n % self.ratio == 0, "n", f"{n} orientations cannot be pooled by {self.ratio}: "
                f"not a multiple")
        half = self.ratio // 2
        centres = torch.arange(0, n, self.ratio)
        return (centres[:, None] + torch.arange(-half, half + 1)[None, :]) % n

    def forward(self, u: Tensor) -> Tensor:
        r = self.ratio
        if not isinstance(u, Tensor):
            raise InputTypeError(f"OrientationMaxPool takes fields (B, C, N, H, W) as a "
                                 f"torch.Tensor, got {type(u).__name__}")
        if r == 1:
            return u
        if u.dim() != 5 or u.shape[2] % r:
            raise InputError(f"OrientationMaxPool({r}) takes fields (B, C, N, H, W) with N a "
                             f"multiple of {r}, got shape {tuple(u.shape)}")
        # Plain operators under a torch.func transform or forward-mode AD (the Function has
        # no forward-mode derivative; every transform supports them), and where no gradient is
        # recorded (what tracing and export see).
        if torch.is_grad_enabled() and u.requires_grad and transform_reason(u) is None:
            return _OrientationMaxPool.apply(u, r)
        return _window_max(u, r)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"


def _window_members(u: Tensor, ratio: int) -> list[tuple[int, Tensor]]:
    """``(d, u_d)`` for the window's offsets ``|d| <= r / 2``, ``u_d[:, :, j] = u[:, :, j r + d]``
    (old orientation ``j r + d`` is entry ``(j, d)`` of the ``(N / r, r)`` view for ``d >= 0``,
    entry ``(j - 1, r + d)`` for ``d < 0``)."""
    batch, channels, n, height, width = u.shape
    blocks = u.view(batch, channels, n // ratio, ratio, height, width)
    half = ratio // 2
    return [(d, blocks[:, :, :, d] if d >= 0 else blocks[:, :, :, ratio + d].roll(1, dims=2))
            for d in range(-half, half + 1)]


def _window_max(u: Tensor, ratio: int) -> Tensor:
    members = [value for _, value in _window_members(u, ratio)]
    out = members[0]
    for value in members[1:]:
        out = torch.maximum(out, value)
    return out


class _OrientationMaxPool(torch.autograd.Function):
    """The window maximum with a backward that writes each output's gradient to its one
    maximiser (the first on ties): one zero-filled tensor and a select per window member.
    Autograd's composition (slices, rolls, pairwise maxima) allocates and fills a full-size
    gradient for every slice and splits ties: slower backwards (benchmarks/m2_orientation_costs.py
    times this one).

    The backward also runs batched (``torch.autograd.grad(..., is_grads_batched=True)``,
    ``torch.autograd.functional.jacobian(..., vectorize=True)``, and ``vmap`` over the Function
    itself: ``generate_vmap_rule``): a batched or ``torch.func``-wrapped gradient is routed out
    of place (:func:`_route_out_of_place`), since an in-place add of a batched gradient into an
    unbatched zero tensor is what vmap cannot do; the same values, but for the sign of zeros.
    (:class:`OrientationMaxPool` takes plain operators under ``torch.func`` transforms.)"""

    generate_vmap_rule = True

    @staticmethod
    def forward(u: Tensor, ratio: int) -> Tensor:
        return _window_max(u, ratio)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, ratio = inputs
        ctx.ratio = ratio
        ctx.save_for_backward(u, output)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Linear in grad, piecewise constant in u: recorded by autograd under create_graph=True,
        # its own derivative is the same routing of the gradient (a gradient penalty).
        u, output = ctx.saved_tensors
        ratio = ctx.ratio
        if batched(grad) or batched(u):
            return _route_out_of_place(grad, u, output, ratio), None
        batch, channels, n, height, width = u.shape
        grad_u = torch.zeros_like(u)
        blocks = grad_u.view(batch, channels, n // ratio, ratio, height, width)
        unclaimed = torch.ones_like(output, dtype=torch.bool)
        for d, value in _window_members(u, ratio):
            chosen = unclaimed & (value == output)
            unclaimed &= ~chosen
            part = grad * chosen  # (where and masked_fill were slower here)
            if d >= 0:
                blocks[:, :, :, d] += part
            else:
                blocks[:, :, :, ratio + d] += part.roll(-1, dims=2)
        return grad_u, None


def _route_out_of_place(grad: Tensor, u: Tensor, output: Tensor, ratio: int) -> Tensor:
    """:class:`_OrientationMaxPool`'s backward without in-place writes (for ``torch.func``):
    each output's gradient to its first maximiser, the ``r`` members of each block stacked."""
    slots: list[Tensor | None] = [None] * ratio
    unclaimed = torch.ones_like(output, dtype=torch.bool)
    for d, value in _window_members(u, ratio):
        chosen = unclaimed & (value == output)
        unclaimed = unclaimed & ~chosen
        part = grad * chosen
        if d < 0:
            part = part.roll(-1, dims=2)
        slot = d % ratio
        slots[slot] = part if slots[slot] is None else slots[slot] + part
    # every slot has a member (offsets -r/2 .. r/2 cover 0 .. r - 1); (B, C, N / r, r, H, W)
    return torch.stack(slots, dim=3).reshape(u.shape)
