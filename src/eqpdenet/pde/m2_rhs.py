"""Right-hand sides of PDE systems on M2: ``dU/dt = F_theta(I(U))``, ``I`` the left-invariant
2-jet of every channel (:data:`~eqpdenet.pde.m2.M2_SE2`).

``F`` is a sum of *terms* (:data:`M2_TERMS`), each a map ``(U, I) -> (B, C, N, H, W)`` that is
pointwise in ``(x, theta)`` and shared over them, so that every choice is SE(2) equivariant (on
the grid: exactly under quarter turns). The terms:

``network``
    A pointwise network of the ``10 C`` invariant maps (batch-normalised, as their scales differ),
    ``10 C -> hidden -> C`` with batch norm and ReLU: the general ``F``.
``convection``
    ``-(v1 A1 + v2 A2 + v3 A3) u^c``, a learned left-invariant velocity per channel, modelled on
    the convection PDE of Smets et al. (*PDE-based group equivariant convolutional neural
    networks*, 2023). Like every invariant here, ``A_i u^c`` are those of the smoothed field
    ``G_sigma * U``, the spatial ones scale-normalised (``sigma A1``, ``sigma A2``): a centroid
    moves ``v1 sigma`` pixels per unit time along ``e_theta``, but structures near ``sigma`` are
    not transported unchanged (docs/lifted.md, "Units, and what the PDE-G-CNN terms compute").
``diffusion``
    ``D1 A11 u^c + D2 A22 u^c + D3 A33 u^c`` with ``D_i >= 0`` (softplus of a parameter): the
    left-invariant diffusion (Smets' diffusion with a diagonal metric).
``dilation`` / ``erosion``
    ``+-(sqrt(g1 (A1 u^c)^2 + g2 (A2 u^c)^2 + g3 (A3 u^c)^2 + eps^2) - eps)``, ``g_i >= 0``: the
    morphological PDEs ``du/dt = +-|grad u|_g`` (Smets' dilation and erosion with ``alpha = 1``;
    ``eps`` keeps the derivative finite where the gradient vanishes).
``linear``
    ``W u + b``: a pointwise linear map of the channels (Smets' channel mixing).

With ``relative=True`` the system is written for the deviation ``V = U - U_0`` of the fields
from those of a blank image, ``U_0`` (constant over ``x`` and ``theta``, so its jet is zero):
``dV/dt = F(I(V)) - F(0)``, each term's value at a zero jet subtracted (only ``network`` and
``linear`` have one; transport, diffusion and morphology vanish on constants), with the batch
statistics of the batch norms of the same pass. Zero padding of ``V`` is then padding of ``U``
by the blank image's own fields: the frame extended by background, whatever ``U_0`` is.

``("convection", "diffusion", "dilation", "erosion", "linear")`` is a PDE-G-CNN-like layer as one
explicit Euler step of the sum. Smets et al. solve the four PDEs for ``U`` one after the other,
each by its exact kernel; these terms act on ``G_sigma * U``, so the sum shares that evolution's
moments (exactly) but not the shapes of structures near ``sigma``: it is not a splitting of it.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import kernels
from ..checks import (
    check_device,
    check_values,
    hooks_registered,
    is_input_checked,
    match_dtype,
    module_dtype,
    non_finite_parameters,
    require,
    require_int,
)
from ..errors import ConfigError, InputError, InputTypeError
from ..kernels.m2_op import (
    M2_UPDATE_IMPLEMENTATIONS,
    m2_euler_step,
    m2_mix_invariants,
    m2_unsupported_reason,
    m2_update,
)
from ..registry import CallRegistry, Registry
from .batch_norm import batch_norm_affine, batch_norm_at
from .integrators import input_checked, keeps_state_dtype, non_finite_coefficients_reason
from .m2 import M2_SE2, M2Jet, check_orientations, orientation_frame

__all__ = ["M2_TERMS", "M2SystemRHS", "PDE_GCNN_TERMS", "Pointwise"]

#: The terms of a PDE-G-CNN layer (Smets et al.).
PDE_GCNN_TERMS = ("convection", "diffusion", "dilation", "erosion", "linear")
_A1, _A2, _A3, _A11, _A22, _A33 = (M2_SE2.names.index(n) for n in
                                   ("A1u", "A2u", "A3u", "A11u", "A22u", "A33u"))
_MORPHOLOGY_EPS = 1e-3
#: The growth per step below which the convection-diffusion check
#: (:meth:`M2SystemRHS.euler_stability`) counts a mode of its symbol as stable (1 % over 10
#: steps; a lifted model takes one step per block). Not 0: the Gaussian stencils, truncated at
#: 4 sigma, have slightly anti-diffusive symbols at high frequencies from sigma = 2 on (3e-4
#: for ``A11``, scale-normalised), whose modes grow by up to ``3e-4 D dt`` per step, which the
#: diffusion check leaves out too (and a tiny velocity beside them was called unstable); and
#: as ``k -> 0`` transport (``~ v k``) and damping (``~ D k^2``) vanish together.
_MODE_GROWTH = 1e-3
#: Frequencies below the convection-diffusion check's grid step ``pi / 32``: its bound is often
#: least at low ``k`` (the ratio of transport to damping grows as ``k`` falls, until the modes
#: grow by less than :data:`_MODE_GROWTH`).
_LOW_FREQUENCIES = (math.pi / 256, math.pi / 128, math.pi / 64)


def _report_break(report: dict, unknown: list[str], what: str, broken: str) -> None:
    """Record in :meth:`M2SystemRHS.euler_stability`'s ``report`` that ``what`` ("the diffusion
    term alone breaks") the explicit Euler bound (``broken`` says how): unstable, or, beside a
    term that is not linearised (``unknown``), a note to the reason, since that term's linear
    part might, in principle, offset it."""
    if unknown:
        report["reason"] += f"; {what} the bound: {broken}"
    else:
        report.update(stable=False, reason=broken)


def _inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))


def _stencil_symbols(stencils: Tensor, freq: Tensor) -> Tensor:
    """``(3, width)`` 1-D stencils ``G, G', G''`` (centred) -> their symbols ``(3, P)`` at the
    frequencies ``freq`` ``(P,)``: ``sum_j w_j exp(-i f j)``, the factor a convolution with them
    multiplies ``exp(i f x)`` by."""
    offsets = (torch.arange(stencils.shape[-1], dtype=torch.float64, device="cpu")
               - stencils.shape[-1] // 2)
    return stencils.to(torch.complex128) @ torch.exp(-1j * freq[:, None] * offsets[None, :]).T


def _m2_linear_symbol(along_x: Tensor, along_y: Tensor, d: list[float], v: list[float],
                      n: int) -> Tensor:
    """``(Px Py, N, N)``: the symbol ``M(k)`` of ``-(v1 A1 + v2 A2 + v3 A3) + D1 A11 + D2 A22 +
    D3 A33`` at ``N`` orientations on the fields ``exp(i (kx x + ky y)) w_theta``, ``k`` over
    the frequencies of ``along_x`` ``(3, Px)`` times those of ``along_y`` ``(3, Py)``
    (:func:`_stencil_symbols`; ``x`` major): diagonal in ``theta`` for ``A1, A2, A11, A22``
    (the Cartesian symbols steered to each orientation), the smoothing's symbol times the
    periodic central differences of :func:`~eqpdenet.pde.m2.orientation_derivatives` for
    ``A3`` and ``A33`` (both of ``G_sigma * U``). :class:`M2SystemRHS` on a periodic frame
    (``x`` the column, ``y`` the row index) multiplies ``exp(i (kx x + ky y)) w`` by ``M`` at
    ``(-kx, ky)`` (its x pass correlates; its y pass, rows reversed, convolves): a reflection of
    the frequency grid, which the checks' grids, symmetric, do not see
    (tests/test_round16_lifted_describe.py holds the two equal)."""
    (gx0, gx1, gx2), (gy0, gy1, gy2) = along_x, along_y

    def outer(a, b):
        return (a[:, None] * b[None, :]).flatten()[:, None]          # (K, 1)

    u, ux, uy = outer(gx0, gy0), outer(gx1, gy0), outer(gx0, gy1)
    uxx, uxy, uyy = outer(gx2, gy0), outer(gx1, gy1), outer(gx0, gy2)
    frame = orientation_frame(n).to(torch.complex128)
    cos, sin = frame[:, 0], frame[:, 1]                              # (N,)
    eye = torch.eye(n, dtype=torch.float64, device="cpu")
    ahead = torch.roll(eye, 1, 1)                                    # (ahead w)_j = w_{j+1}
    step = 2.0 * math.pi / n
    first = ((ahead - ahead.T) / (2.0 * step)).to(torch.complex128)
    second = ((ahead - 2.0 * eye + ahead.T) / step**2).to(torch.complex128)
    a1, a2 = cos * ux + sin * uy, cos * uy - sin * ux                # (K, N)
    a11 = cos**2 * uxx + 2 * cos * sin * uxy + sin**2 * uyy
    a22 = sin**2 * uxx - 2 * cos * sin * uxy + cos**2 * uyy
    (d1, d2, d3), (v1, v2, v3) = d, v
    return (torch.diag_embed(d1 * a11 + d2 * a22 - v1 * a1 - v2 * a2)
            + u[:, :, None] * (d3 * second - v3 * first))


class Pointwise(nn.Module):
    """A linear map of the channels at every point: ``(B, C_in, ...) -> (B, C_out, ...)``,
    ``y = W x + b`` (a 1x1 convolution, as one matrix product: about twice as fast as ``conv1d``
    with kernel 1 on the CPU). ``weight`` is ``(C_out, C_in)``, initialised as
    :class:`torch.nn.Linear`'s."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        layer = nn.Linear(in_channels, out_channels, bias=bias)
        self.weight = layer.weight
        self.bias = layer.bias

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, *rest = x.shape
        # matmul, not einsum: onnxruntime's Einsum divides by the batch size, and an exported
        # model then dies of SIGFPE on an empty batch
        y = torch.matmul(self.weight, x.reshape(batch, channels, math.prod(rest)))
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.view(batch, y.shape[1], *rest)

    def extra_repr(self) -> str:
        return (f"in_channels={self.weight.shape[1]}, out_channels={self.weight.shape[0]}, "
                f"bias={self.bias is not None}")


class NetworkTerm(nn.Module):
    """``F(I) = W2 relu(BN(W1 BN(I))) + b2``, pointwise: ``10 C`` invariants -> ``hidden`` ->
    ``C``. The first batch norm only with ``normalize_invariants``; without
    ``normalize_hidden`` the hidden layer is ``relu(W1 I + b1)`` and ``W2`` starts at zero (so that
    every Euler step starts as the identity, the initialisation that lets residual networks
    train without normalisation). ``relative``: ``F(I) - F(0)``, which has no ``b2``."""

    def __init__(self, channels: int, hidden: int, normalize_invariants: bool = False,
                 normalize_hidden: bool = True, *, relative: bool = False):
        super().__init__()
        maps = channels * len(M2_SE2)
        self.norm = nn.BatchNorm1d(maps) if normalize_invariants else nn.Identity()
        self.mix = Pointwise(maps, hidden, bias=not normalize_hidden)
        self.hidden_norm = nn.BatchNorm1d(hidden) if normalize_hidden else nn.Identity()
        self.out = Pointwise(hidden, channels, bias=not relative)  # F(I) - F(0) has no b2
        if not normalize_hidden:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.mix.bias)

    def forward(self, u: Tensor, system: M2SystemRHS) -> Tensor:
        batch, channels, n, height, width = u.shape
        maps = channels * len(M2_SE2)
        # F's input at a blank image's fields (relative systems): zero invariants, normalised
        blank = u.new_zeros(maps)
        if isinstance(self.norm, nn.Identity) and system.fused(
                u, weight := self.mix.weight.view(-1, channels, len(M2_SE2))):
            # W1 I(u) in one fused pass (never with a hook on mix: the fused operator reads its
            # weight without calling it)
            x = system.mixed_invariants(u, weight).flatten(2)
            if self.mix.bias is not None:
                x = x + self.mix.bias[:, None]
        else:  # the modules called, so that their hooks fire
            invariants = system.invariants(u).reshape(batch, maps, n * height * width)
            x = self.mix(self.norm(invariants))
            if system.relative:
                blank = batch_norm_at(self.norm, invariants, blank)
        out = self.out(F.relu(self.hidden_norm(x)))
        if system.relative:  # minus F at a zero jet, normalised by this batch's statistics
            hidden = batch_norm_at(self.hidden_norm, x, self.mix(blank[None, :, None])[0, :, 0])
            out = out - self.out(F.relu(hidden)[None, :, None])
        return out.view(batch, channels, n, height, width)

    def fused_out_bias(self, relative: bool, hidden_at_zero: Tensor | None = None) -> Tensor:
        """The output bias of a fused step: ``b2``, or for a relative system ``b2 - F(0) =
        -W2 relu(h0)``, ``h0`` the hidden layer at a zero jet (``b1`` without a hidden batch
        norm; with one, the batch norm's image of 0, its ``shift``, given as
        ``hidden_at_zero``)."""
        if not relative:
            return self.out.bias
        return -(self.out.weight @ F.relu(self.mix.bias if hidden_at_zero is None
                                          else hidden_at_zero))


class _PerChannel(nn.Module):
    """A term with three coefficients per channel, ``(C, 3)``."""

    def __init__(self, channels: int, init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels, 3), init))

    def coefficients(self) -> Tensor:
        """``(C, 3, 1, 1, 1)``, broadcast against ``(B, C, N, H, W)``."""
        return self.weight.view(-1, 3, 1, 1, 1)


class ConvectionTerm(_PerChannel):
    """``-(v1 A1 + v2 A2 + v3 A3) u`` per channel (``weight`` is ``v``, initially 0)."""

    def forward(self, u: Tensor, system: M2SystemRHS) -> Tensor:
        v, invariants = self.coefficients(), system.invariants(u)
        return -(v[:, 0] * invariants[:, :, _A1] + v[:, 1] * invariants[:, :, _A2]
                 + v[:, 2] * invariants[:, :, _A3])


#: The diffusion term's initial coefficients ``D`` (every channel and axis).
DIFFUSION_START = 0.05


class DiffusionTerm(_PerChannel):
    """``D1 A11 u + D2 A22 u + D3 A33 u``, ``D = softplus(weight)`` (initially
    :data:`DIFFUSION_START`)."""

    def __init__(self, channels: int):
        super().__init__(channels, _inverse_softplus(DIFFUSION_START))

    def forward(self, u: Tensor, system: M2SystemRHS) -> Tensor:
        d, invariants = F.softplus(self.coefficients()), system.invariants(u)
        return (d[:, 0] * invariants[:, :, _A11] + d[:, 1] * invariants[:, :, _A22]
                + d[:, 2] * invariants[:, :, _A33])


class _MorphologyTerm(_PerChannel):
    sign = 1.0

    def __init__(self, channels: int):
        super().__init__(channels, _inverse_softplus(0.05))

    def forward(self, u: Tensor, system: M2SystemRHS) -> Tensor:
        g, invariants = F.softplus(self.coefficients()), system.invariants(u)
        norm_sq = (g[:, 0] * invariants[:, :, _A1] ** 2 + g[:, 1] * invariants[:, :, _A2] ** 2
                   + g[:, 2] * invariants[:, :, _A3] ** 2)
        return self.sign * (torch.sqrt(norm_sq + _MORPHOLOGY_EPS**2) - _MORPHOLOGY_EPS)


class DilationTerm(_MorphologyTerm):
    """``+|grad u|_g``, ``g = softplus(weight)`` (initially 0.05): grows bright regions."""

    sign = 1.0


class ErosionTerm(_MorphologyTerm):
    """``-|grad u|_g``: shrinks bright regions."""

    sign = -1.0


class LinearTerm(nn.Module):
    """``W u + b``, a pointwise map of the channels (initially 0); without ``b`` in a relative
    system (``F(u) - F(0)``)."""

    def __init__(self, channels: int, bias: bool = True):
        super().__init__()
        self.map = Pointwise(channels, channels, bias=bias)
        nn.init.zeros_(self.map.weight)
        if bias:
            nn.init.zeros_(self.map.bias)

    def forward(self, u: Tensor, system: M2SystemRHS) -> Tensor:
        return self.map(u.flatten(2)).view_as(u)


#: Terms of ``F`` on M2 by name: builders ``term(channels, hidden, normalize_invariants,
#: normalize_hidden, *, relative)`` (the per-channel terms use ``channels`` only, ``linear``
#: ``relative`` too), returning an ``nn.Module`` called as ``term(u, system)`` (``system`` the
#: :class:`M2SystemRHS`) that gives ``(B, C, N, H, W)``. A builder that cannot be called so is
#: refused when registered, a result that is no such module when the system is built, a value
#: of another shape at every call (:meth:`M2SystemRHS.forward`); each in one
#: :class:`~eqpdenet.errors.ConfigError` naming the term. A term of one's own is taken to commute
#: with quarter turns only where it declares ``quarter_turn_equivariant = True``
#: (:func:`commutes_with_quarter_turns`).
M2_TERMS: Registry = CallRegistry(
    "M2 right-hand-side term",
    "term(channels, hidden, normalize_invariants, normalize_hidden, *, relative)",
    1, 1, False, True, relative=False)
M2_TERMS.register("network", NetworkTerm)
for _name, _term in (("convection", ConvectionTerm), ("diffusion", DiffusionTerm),
                     ("dilation", DilationTerm), ("erosion", ErosionTerm)):
    M2_TERMS.register(_name, lambda channels, *options, relative=False, _term=_term:
                      _term(channels))
M2_TERMS.register("linear", lambda channels, *options, relative=False:
                  LinearTerm(channels, bias=not relative))
# The built-in term classes: each a function of the invariants, or of the left-invariant
# derivatives A1, A2, A3, which commute with quarter turns exactly (docs/lifted.md).
_QUARTER_TURN_TERMS = frozenset((NetworkTerm, ConvectionTerm, DiffusionTerm, DilationTerm,
                                 ErosionTerm, LinearTerm))
# The built-in builders that ignore hidden, normalize_invariants and normalize_hidden; a term of
# one's own may use them (its builder is given them), so it is never in this set.
_OPTIONLESS_BUILDERS = frozenset(M2_TERMS.get(name) for name in
                                 ("convection", "diffusion", "dilation", "erosion", "linear"))


def term_uses_options(name: str) -> bool:
    """Whether the term registered as ``name`` may use ``hidden``, ``normalize_invariants`` and
    ``normalize_hidden``: decided by the builder registered now, not by the name (a term
    registered over ``"convection"`` with ``replace=True`` may use them). True for a name not
    registered: nothing is known of it (the configuration check names it)."""
    return name not in M2_TERMS or M2_TERMS.get(name) not in _OPTIONLESS_BUILDERS


def _starts_nonzero(term: nn.Module) -> bool:
    """Whether ``term``'s linear part at ``U = 0`` is nonzero as built (its weights on the meta
    device hold no values): the convection velocity and the linear map start at 0, the network's
    output layer at 0 without ``normalize_hidden`` (else random); a term of one's own: not
    known, counted as nonzero."""
    if isinstance(term, ConvectionTerm | LinearTerm):
        return False
    if isinstance(term, NetworkTerm):
        return not isinstance(term.hidden_norm, nn.Identity)
    return True


def commutes_with_quarter_turns(term: nn.Module) -> bool:
    """Whether the term ``term`` (a built module of :class:`M2SystemRHS`) is known to commute
    with quarter turns of the fields (spatial ``rot90`` with the orientations shifted by
    ``N / 4``): exactly one of the built-in term classes (a subclass may change ``forward``),
    or a term of one's own that declares it with a class or instance attribute
    ``quarter_turn_equivariant = True``. Nothing else is known (a plugin term may read a fixed
    direction of the grid), so the lifted model claims invariance only where every term is
    (:attr:`~eqpdenet.models.lifted_pde.LiftedPDENet.quarter_turn_invariant`)."""
    if type(term) in _QUARTER_TURN_TERMS:
        return True
    return getattr(term, "quarter_turn_equivariant", False) is True


def is_network_term(name: str) -> bool:
    """Whether the term registered as ``name`` builds exactly :class:`NetworkTerm`, the one term
    the fused operators compute (:meth:`M2SystemRHS.euler_step` decides by the built module's
    type; this is the same rule before anything is built)."""
    return name in M2_TERMS and M2_TERMS.get(name) is NetworkTerm


def _build_term(name: str, channels: int, hidden: int, normalize_invariants: bool,
                normalize_hidden: bool, relative: bool) -> nn.Module:
    """The term ``name`` of :data:`M2_TERMS`, a :class:`~eqpdenet.errors.ConfigError` naming it
    where its builder returns anything but an ``nn.Module`` whose forward takes ``(u, system)``
    (a raw TypeError from inside ``nn.ModuleDict``, or at the first forward, before)."""
    term = M2_TERMS.get(name)(channels, hidden, normalize_invariants, normalize_hidden,
                              relative=relative)
    if not isinstance(term, nn.Module):
        raise ConfigError(f"the M2 right-hand-side term {name!r} must be built as an nn.Module, "
                          f"its builder returned {type(term).__name__}")
    try:
        signature = inspect.signature(term.forward)
    except (TypeError, ValueError):  # no signature to read: unchecked
        return term
    try:
        signature.bind(None, None)
    except TypeError as error:
        raise ConfigError(f"the M2 right-hand-side term {name!r} ({type(term).__name__}) must "
                          f"be called as term(u, system): {error}") from None
    return term


class M2SystemRHS(nn.Module):
    """The right-hand side ``U -> sum_terms F_term(U, I(U))`` of a system of ``C`` PDEs on M2.

    Args:
        channels: ``C``.
        terms: names of :data:`M2_TERMS` (default the general ``("network",)``;
            :data:`PDE_GCNN_TERMS` is a PDE-G-CNN layer), or one name.
        hidden: width of the ``network`` term's hidden layer (default ``C``).
        sigma, boundary, scales: the jet (:class:`~eqpdenet.pde.m2.M2Jet`; spatial derivatives
            scale-normalised).
        normalize_invariants: batch-normalise the invariant maps in the ``network`` term
            (default off, as ``lifted_pde.normalize_invariants``: the first layer then runs
            fused with the invariants, which are never written out).
        normalize_hidden: batch-normalise its hidden layer (else a bias, and ``W2`` starts at 0).
        relative: the system of the deviation from a blank image's fields, ``F(I) - F(0)`` (the
            module doc); meant with ``boundary="zeros"``: the frame extended by background.
        orientations: ``N``, where known, for :meth:`euler_stability` (the bound of ``A33``
            depends on the step ``2 pi / N``): a positive multiple of 4, as the fields must
            have, and then the only ``N`` the system runs on (fields on another ``N`` are an
            :class:`~eqpdenet.errors.InputError`: the check would judge another system);
            None: any ``N`` runs, and the check says it cannot be made.
        backend: :data:`~eqpdenet.kernels.BACKENDS`: ``"auto"`` computes the invariants, or
            directly their mixing by the ``network`` term's first layer (without
            ``normalize_invariants``), by the fused operator
            ``torch.ops.eqpdenet.m2_mix_invariants`` where the device has it, else by the
            plain-PyTorch reference (one warning per reason); ``"reference"`` always by the
            reference. Either way the reference whenever a hook is registered on this module,
            one of its parts or globally (:func:`~eqpdenet.checks.hooks_registered`): the fused
            operators call no modules, and read ``mix.weight`` without the forward pre-hook of
            an old-style ``torch.nn.utils.weight_norm``.

    ``forward``: ``(B, C, N, H, W) -> (B, C, N, H, W)``, ``N`` a positive multiple of 4 (as
    ``lifted_pde.orientations``); :meth:`invariants` gives the ``(B, C, 10, N, H, W)`` invariants
    it is a function of. Called alone (not inside
    :class:`~eqpdenet.pde.integrators.input_checked`), :meth:`forward` and :meth:`euler_step`
    check their input first (:meth:`enter`) and compute lower precision in the module's dtype,
    returning the input's: the convention of the planar right-hand sides, which
    :class:`~eqpdenet.pde.integrators.EulerStep` follows.

    Example:
        >>> rhs = M2SystemRHS(3, ("network", "diffusion"), hidden=6)
        >>> rhs(torch.rand(2, 3, 8, 10, 10)).shape
        torch.Size([2, 3, 8, 10, 10])
    """

    def __init__(self, channels: int, terms=("network",), hidden: int | None = None, *,
                 sigma: float = 1.0, boundary: str = "replicate", scales: int = 1,
                 normalize_invariants: bool = False, normalize_hidden: bool = True,
                 relative: bool = False, backend: str = "auto", orientations: int | None = None):
        super().__init__()
        self.relative = bool(relative)
        #: The number of orientations the system runs on, where its owner knows it (the lifted
        #: model passes each stage's): what :meth:`euler_stability` needs for ``A33``'s step.
        # A multiple of 4, as forward requires of the fields (5 was accepted here, and then no
        # field could run).
        self.orientations = (None if orientations is None
                             else check_orientations(orientations, "orientations"))
        self.channels = require_int(channels, "channels", 1)
        hidden = require_int(hidden if hidden is not None else channels, "hidden", 1)
        # one name is one term, not its letters
        terms = (terms,) if isinstance(terms, str) else tuple(terms)
        require(len(terms) >= 1 and len(set(terms)) == len(terms), "terms",
                f"must name each term of F once, at least one, got {list(terms)}")
        for index, term in enumerate(terms):
            M2_TERMS.check(term, f"terms[{index}]")
        kernels.BACKENDS.check(backend, "backend")
        self.backend = backend
        self.invariant_set = M2_SE2
        self.jet = M2Jet(sigma, boundary, scales=scales)
        self.term_names = terms
        self.terms = nn.ModuleDict({name: _build_term(name, self.channels, hidden,
                                                      normalize_invariants, normalize_hidden,
                                                      self.relative)
                                    for name in terms})
        # (u, its invariants) shared by the terms within one call of forward; None outside it,
        # so that a call of invariants() from outside never serves another call's tensors
        # (u changed in place since, or computed without autograd).
        self._cache: tuple | None = None

    _input_checked = False  # while compiling only: see eqpdenet.checks.input_checked

    def euler_stability(self, dt: float) -> dict:
        """The von Neumann check of one explicit Euler step ``U + dt F(I(U))``, ``F`` linearised
        at ``U = 0`` (the frame's boundary left out, as in the planar check of
        :meth:`~eqpdenet.pde.integrators.EulerStep.stability`, which returns this).

        ``{"linear_part", "max_rate_dt", "max_dt", "stable", "diffusion_stable", "reason"}``
        (``diffusion_stable``: the same verdict for the ``diffusion`` term alone, None without
        one; it decides where another term is not linearised): ``linear_part``
        ``{"D1", "D2", "D3", "v1", "v2", "v3"}`` of the channel that bounds ``dt`` most (None
        where nothing is checked); ``max_dt`` the largest ``dt`` that is certainly stable (beside
        a convection velocity: at which no mode grows by more than :data:`_MODE_GROWTH` per
        step);
        ``max_rate_dt`` ``dt`` times the smallest possible largest decay rate (above 2, ``dt``
        certainly breaks the bound; with a convection velocity beside diffusion ``2 dt /
        max_dt``, above 2 where ``dt`` breaks it); ``stable`` True (certainly stable; beside a
        convection velocity, within :data:`_MODE_GROWTH` per step), False (certainly not, or a
        coefficient is NaN or inf) or None (not known: between the two bounds, or a term that is
        not linearised here).

        The linear part at ``U = 0``: ``diffusion`` ``L = D1 A11 + D2 A22 + D3 A33`` per channel
        (negative semi-definite: Euler is stable iff ``dt lambda_max(-L) <= 2``); ``convection``
        ``-(v1 A1 + v2 A2 + v3 A3)``, whose symbol is imaginary: alone, explicit Euler amplifies
        it whatever ``dt`` (``stable`` False; None beside a ``network`` or ``linear`` term that
        is not linearised, whose decay might damp it); ``dilation``/``erosion``: none (``|grad u|_g`` has
        no linear part at 0); ``network`` and ``linear`` none while their output weights are 0
        (as built), else not checked (they couple the channels; ``stable`` None). ``lambda_max(-L)``
        is at least the largest eigenvalue of the symbol of ``-L`` over a grid of spatial
        frequencies (:meth:`_diffusion_eigenvalue_max`, per frequency an ``N x N`` symmetric
        matrix over the orientations, and at ``k = 0`` exactly ``4 D3 / dtheta^2``), and at most
        ``S + 4 D3 / dtheta^2``: ``dtheta = 2 pi / N``, ``4 / dtheta^2`` the largest eigenvalue
        of the periodic second difference (a checkerboard over the orientations, constant in
        space), ``S`` the largest symbol of ``-(D1 A11 + D2 A22)`` at the ``N`` orientations
        (computed from the jet's stencils; about ``2 max(D1, D2) / e`` for these
        scale-normalised Gaussian derivatives). The two parts do not simply add: ``A33`` acts
        on ``G_sigma * U``, so at frequency ``k`` the ``theta`` part is damped by the
        smoothing's symbol ``G(k) <= 1``, well below 1 where ``S`` peaks (before round 20 the
        lower bound was ``S + 2 D3 / dtheta^2``, which does not hold: ``D = (1.9, 1.9, 0.2)``
        at ``N = 8``, ``dt = 1``, stable, was called unstable). With the default ``D = 0.05`` and
        ``dt = 1`` the ``theta`` part alone breaks the bound from ``N = 20``.

        Convection beside diffusion: the diffusion damps the transport, so the verdict comes
        from the symbol of the two together, per channel and spatial frequency ``k`` an ``N x N``
        matrix ``M(k)`` over the orientations (:meth:`_convection_diffusion_check`, as the
        planar check takes the symbol of mixed terms): stable where no mode grows by more than
        :data:`_MODE_GROWTH` per step (``|1 + dt sigma| <= 1.001`` for every eigenvalue
        ``sigma`` of every ``M(k)``), ``max_dt`` the largest such ``dt``, else unstable.
        (Before round 16 a velocity made the verdict UNSTABLE whatever the diffusion, and a
        step that shrinks a field 3-fold in 200 steps was called so.)
        """
        report = {"linear_part": None, "max_rate_dt": None, "max_dt": None, "stable": None,
                  "diffusion_stable": None, "reason": None}
        # Built on the meta device (the preflight's models, or before to_empty): no values, but
        # a model there was never loaded, so it holds its initial coefficients, which are known
        # (reading the meta weights was a raw "cannot be called on meta tensors").
        meta = any(p.is_meta for p in self.terms.parameters())
        bad = non_finite_parameters(self.terms)
        if bad:  # a NaN velocity reached eigvals, where MKL's LAPACK crashed the process
            report["stable"] = False
            report["reason"] = non_finite_coefficients_reason(bad)
            return report
        unknown = []
        velocity = None   # (C, 3) float64: the convection term's, where it is not 0
        for name, term in self.terms.items():
            if isinstance(term, DiffusionTerm | DilationTerm | ErosionTerm):
                continue
            weight = (term.weight if isinstance(term, ConvectionTerm)
                      else term.out.weight if isinstance(term, NetworkTerm)
                      else term.map.weight if isinstance(term, LinearTerm) else None)
            if weight is None or (_starts_nonzero(term) if meta else bool(weight.detach().any())):
                if isinstance(term, ConvectionTerm):
                    # decided below, with the other terms (a diffusion term damps it): deciding
                    # here said UNSTABLE for a convection-diffusion step that shrinks (round 16)
                    velocity = term.weight.detach().double().cpu()
                    continue
                unknown.append(name)
        if unknown:
            report["reason"] = (f"cannot check: F's {' and '.join(unknown)} term"
                                f"{'s are' if len(unknown) > 1 else ' is'} not linearised here "
                                f"(only convection, diffusion, and terms whose output weights "
                                f"are 0)")
        if velocity is not None:
            report["linear_part"] = dict(zip(("v1", "v2", "v3"), velocity.abs().amax(0).tolist(),
                                             strict=True))
        if "diffusion" not in self.terms:
            if velocity is not None:
                transport = ("the convection term's velocity is not 0: explicit Euler amplifies "
                             "transport whatever dt (an imaginary symbol, |1 + dt sigma| > 1)")
                if unknown:  # another term's linear part (a decay W u) might damp it
                    report["reason"] += f"; the convection term alone is unstable: {transport}"
                else:
                    report.update(stable=False, reason=transport)
            elif not unknown:
                report.update(stable=True, max_rate_dt=0.0,
                              reason="nothing to check: F has no linear part at U = 0")
            return report
        if self.orientations is None:
            report["reason"] = ("cannot check: the number of orientations is not known "
                                "(M2SystemRHS(orientations=N))")
            return report
        weight = self.terms["diffusion"].weight
        d = (torch.full(tuple(weight.shape), DIFFUSION_START, dtype=torch.float64, device="cpu") if meta
             else F.softplus(weight.detach().double().cpu()))   # (C, 3)
        n = self.orientations
        theta = 4.0 / (2.0 * math.pi / n) ** 2                # lambda_max of -A33
        spatial = self._diffusion_symbol_max(d[:, 0], d[:, 1], n)               # (C,)
        # The lower bound from the symbol itself: A33 acts on G_sigma * U, so at spatial
        # frequency k the theta part is G(k) D3 (second difference), damped where S peaks
        # (G ~ e^-1 there at sigma = 1); S + 2 D3 / dtheta^2, taken before round 20, did not
        # hold and called stable steps unstable. theta D3 is the k = 0 value, exactly.
        lower = torch.maximum(theta * d[:, 2], self._diffusion_eigenvalue_max(d, n))
        upper = spatial + theta * d[:, 2]
        worst = int(upper.argmax())
        tolerance = 2.0 * (1.0 + 1e-12)
        certain_rate = float(lower.max()) * dt
        diffusion_max_dt = 2.0 / float(upper.max()) if float(upper.max()) > 0 else None
        if float(upper.max()) * dt <= tolerance:
            report["diffusion_stable"] = True
        elif certain_rate > tolerance:
            report["diffusion_stable"] = False
        if velocity is not None and not certain_rate > tolerance:
            # where the diffusion alone certainly breaks its bound, the transport cannot mend
            # it: that verdict and reason below (the joint check, which lets a mode grow by
            # _MODE_GROWTH per step, called such a step stable and the refusal read "(None)")
            return self._convection_diffusion_verdict(report, d, velocity, n, dt, unknown)
        report.update(linear_part=dict(zip(("D1", "D2", "D3"), d[worst].tolist(), strict=True)),
                      max_rate_dt=certain_rate, max_dt=diffusion_max_dt)
        if certain_rate > tolerance:
            channel = int(lower.argmax())
            part = "along theta " if theta * float(d[channel, 2]) * dt > tolerance else ""
            broken = (f"dt = {dt:g} is above the explicit Euler bound of the diffusion term "
                      f"{part}at {n} orientations (channel {channel + 1}: D = "
                      f"({', '.join(f'{x:.3g}' for x in d[channel].tolist())}), dt lambda_max >= "
                      f"{certain_rate:.6g} > 2); it is stable for dt <= {report['max_dt']:.3g}")
            _report_break(report, unknown, "the diffusion term alone breaks", broken)
        elif float(upper.max()) * dt <= tolerance:
            report["stable"] = None if unknown else True
        elif not unknown:
            report["reason"] = (f"not known: dt = {dt:g} lies between the certain bound "
                                f"{report['max_dt']:.3g} and the certain instability "
                                f"{2.0 * dt / certain_rate:.3g}")
        return report

    def _convection_diffusion_verdict(self, report: dict, d: Tensor, velocity: Tensor, n: int,
                                      dt: float, unknown: list[str]) -> dict:
        """:meth:`euler_stability` where the convection term has a velocity beside the diffusion
        term: the verdict of :meth:`_convection_diffusion_check` for the step of these two (with
        a term that is not linearised, ``stable`` stays None and the reason says what the two
        alone give)."""
        max_dt = self._convection_diffusion_check(d, velocity, n)                # (C,)
        channel = int(max_dt.argmin())
        bound = float(max_dt[channel])
        report.update(linear_part=dict(zip(("D1", "D2", "D3", "v1", "v2", "v3"),
                                           (*d[channel].tolist(), *velocity[channel].tolist()),
                                           strict=True)),
                      max_dt=bound if math.isfinite(bound) else None,
                      max_rate_dt=2.0 * dt / bound)
        if dt <= bound:
            report["stable"] = None if unknown else True
            return report
        broken = (f"dt = {dt:g} is above the explicit Euler bound of the convection and "
                  f"diffusion terms together at {n} orientations (channel {channel + 1}: D = "
                  f"({', '.join(f'{x:.3g}' for x in d[channel].tolist())}), v = "
                  f"({', '.join(f'{x:.3g}' for x in velocity[channel].tolist())}): a mode of "
                  f"their symbol grows by more than {_MODE_GROWTH:g} per step, |1 + dt sigma| "
                  f"> {1 + _MODE_GROWTH:g}, above dt = {bound:.3g})")
        _report_break(report, unknown, "the convection and diffusion terms alone break", broken)
        return report

    def _convection_diffusion_check(self, d: Tensor, velocity: Tensor, n: int,
                                    points: int = 33) -> Tensor:
        """Per channel, the largest ``dt`` at which no mode of the step of the convection and
        diffusion terms grows by more than :data:`_MODE_GROWTH` per step: ``|1 + dt sigma| <= 1
        + _MODE_GROWTH`` for every eigenvalue ``sigma`` of their symbol ``M(k)``
        (:func:`_m2_linear_symbol`) at every spatial frequency ``k`` of a ``points x points``
        grid of ``[0, pi]^2`` and the lower ones :data:`_LOW_FREQUENCIES`, at every scale level
        of the jet (inf where nothing bounds it).

        ``M(k)`` is ``N x N``: the orientations are coupled (``A3``, ``A33``) and the spatial
        derivatives steered differently at each, so the modes are its eigenvectors, not single
        orientations; one Euler step multiplies each by ``1 + dt sigma``. On a periodic frame
        that is exact: the step grows a field without bound iff some ``|1 + dt sigma| > 1``
        (``M`` is not normal, so a step may lengthen a field by a bounded factor where none
        does). A quarter turn of ``k`` is a shift of the orientations by ``N / 4`` (the frame is
        exact under it), so the quadrant ``kx, ky >= 0`` gives every value."""
        freq = torch.cat([torch.tensor(_LOW_FREQUENCIES, dtype=torch.float64),
                          torch.linspace(0.0, math.pi, points, dtype=torch.float64)])
        growth = 2.0 * _MODE_GROWTH + _MODE_GROWTH**2                 # (1 + g)^2 - 1
        max_dt = torch.full((d.shape[0],), math.inf, dtype=torch.float64, device="cpu")
        for stencils in self.jet.stencils.unbind(0):
            symbols = _stencil_symbols(stencils, freq)
            for c in range(d.shape[0]):
                m = _m2_linear_symbol(symbols, symbols, d[c].tolist(), velocity[c].tolist(), n)
                sigma = torch.linalg.eigvals(m).flatten()
                re, size = sigma.real, sigma.abs().square()
                # |1 + t sigma|^2 <= 1 + growth: t^2 |sigma|^2 + 2 t Re sigma - growth <= 0, whose
                # positive root, written without cancellation for either sign of Re sigma
                root = torch.sqrt(re * re + size * growth)
                bound = torch.where(re <= 0, (root - re) / size, growth / (root + re))
                bound = torch.where(size > 0, bound, math.inf)
                max_dt[c] = min(float(max_dt[c]), float(bound.min()))
        return max_dt

    def _diffusion_eigenvalue_max(self, d: Tensor, n: int, points: int = 33) -> Tensor:
        """Per channel (``d`` ``(C, 3)``, float64), the largest eigenvalue of ``-M(k)``, ``M(k)``
        the symbol of ``D1 A11 + D2 A22 + D3 A33`` (:func:`_m2_linear_symbol` without a
        velocity: real symmetric ``N x N``), over every spatial frequency ``k`` of a ``points x
        points`` grid of ``[0, pi]^2`` (``k = 0`` included; a quarter turn of ``k`` shifts the
        orientations, so the quadrant gives every value, as in
        :meth:`_convection_diffusion_check`), at every scale level of the jet: the decay rate
        of a mode the step has, so a lower bound of ``lambda_max(-L)`` (its largest over all
        frequencies is at least the grid's). Channels with equal coefficients (every channel as built)
        are computed once."""
        freq = torch.linspace(0.0, math.pi, points, dtype=torch.float64, device="cpu")
        distinct, index = torch.unique(d, dim=0, return_inverse=True)
        best = torch.zeros(distinct.shape[0], dtype=torch.float64, device="cpu")
        for stencils in self.jet.stencils.unbind(0):
            symbols = _stencil_symbols(stencils, freq)
            for c in range(distinct.shape[0]):
                m = _m2_linear_symbol(symbols, symbols, distinct[c].tolist(), [0.0, 0.0, 0.0], n)
                # real up to the rounding of the odd stencil G' (its symbol is imaginary, that
                # of u_xy the product of two): the real part is the symbol, and symmetric
                best[c] = torch.maximum(best[c], torch.linalg.eigvalsh(-m.real).amax())
        return best[index]

    def _diffusion_symbol_max(self, d1: Tensor, d2: Tensor, n: int, points: int = 129) -> Tensor:
        """Per channel, the largest symbol of ``-(D1 A11 + D2 A22)`` over the ``n`` orientations
        and a ``points x points`` grid of spatial frequencies in ``[-pi, pi]^2``, from the jet's
        stencils (scale-normalised as built; each scale level, the largest over them)."""
        freq = torch.linspace(-math.pi, math.pi, points, dtype=torch.float64, device="cpu")
        table = self.jet.stencils                                    # (S, 3, width)
        offsets = (torch.arange(table.shape[-1], dtype=torch.float64, device="cpu")
                   - table.shape[-1] // 2)
        phase = torch.exp(-1j * freq[:, None] * offsets[None, :])    # (points, width)
        symbols = table.to(torch.complex128) @ phase.T               # (S, 3, points)
        g0, g1, g2 = symbols[:, 0], symbols[:, 1], symbols[:, 2]
        k_xx = (g2[:, :, None] * g0[:, None, :]).real                # (S, kx, ky)
        k_yy = (g0[:, :, None] * g2[:, None, :]).real
        k_xy = (g1[:, :, None] * g1[:, None, :]).real
        frame = orientation_frame(n)
        best = torch.zeros_like(d1)
        for cos, sin in frame.tolist():
            a11 = cos * cos * k_xx + 2 * cos * sin * k_xy + sin * sin * k_yy
            a22 = sin * sin * k_xx - 2 * cos * sin * k_xy + cos * cos * k_yy
            for s in range(table.shape[0]):
                value = -(d1[:, None, None] * a11[s] + d2[:, None, None] * a22[s])
                best = torch.maximum(best, value.flatten(1).amax(1))
        return best

    def fused(self, u: Tensor, weight: Tensor, others: tuple[Tensor | None, ...] = ()) -> bool:
        """Whether the invariants of ``u`` mixed by ``weight`` ``(O, C, 10)`` are computed by the
        fused operator: the backend has it for these arguments (else one warning per reason)
        and no hook is registered (:func:`~eqpdenet.checks.hooks_registered`, on this module,
        its parts, or globally), which only the reference path, calling the modules, runs.
        ``others``: the further tensors the fused operator takes (:meth:`euler_step`'s biases,
        output weights and batch norm), none under a ``torch.func`` transform or carrying a
        forward-mode tangent (:func:`~eqpdenet.kernels.m2_op.m2_unsupported_reason`)."""
        backend = kernels.resolve_backend(self.backend)
        if backend == "reference" or hooks_registered(self.modules()):
            return False
        reason = m2_unsupported_reason(u, weight, self.jet.boundary, self.jet.radius, others)
        if reason is not None:
            kernels.warn_once(f"{reason}; the M2 PDE uses the plain-PyTorch reference")
        return reason is None

    def enter(self, u: Tensor) -> Tensor:
        """The entry checks (:mod:`eqpdenet.checks`), once for every path: fields
        ``(B, C, N, H, W)`` of its channels with finite values, returned in this module's dtype
        (lower precision converted up, higher an :class:`~eqpdenet.errors.InputTypeError`). An
        :class:`~eqpdenet.errors.InputError` naming the cause, where the fused kernels would
        fail deep inside (``weight must be (O, C, 10)``)."""
        u = self._fields(u)
        check_values(u, "u")
        return u

    def _fields(self, u: Tensor) -> Tensor:
        """:meth:`enter` without the values (no host read): the shape, ``N`` a positive
        multiple of 4 (the lifted model's rule: quarter turns exact; ``N = 0`` would divide by
        zero in the orientation differences) and the declared ``orientations`` where given, the
        jet's needs, the dtype."""
        if not isinstance(u, Tensor) or u.dim() != 5 or u.shape[1] != self.channels:
            shape = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise InputError(f"{type(self).__name__} takes fields (batch, {self.channels} "
                             f"channels, orientations, height, width), got {shape}")
        if not u.is_floating_point():
            raise InputTypeError(f"{type(self).__name__} takes floating-point fields, got {u.dtype}")
        n = u.shape[2]
        if n < 4 or n % 4:
            raise InputError(f"{type(self).__name__} takes fields on a positive multiple of 4 "
                             f"orientations (so that quarter turns map them onto themselves), "
                             f"got {n} in shape {tuple(u.shape)}")
        if self.orientations is not None and n != self.orientations:
            # euler_stability judges the declared N (A33's step 2 pi / N): on fields of another
            # N it called an unstable system stable
            raise InputError(f"{type(self).__name__} was declared with orientations="
                             f"{self.orientations}, got fields on {n} orientations in shape "
                             f"{tuple(u.shape)}")
        self.jet.check(u)
        check_device(u, self, "u")
        return match_dtype(u, module_dtype(self), "u")

    def mixed_invariants(self, u: Tensor, weight: Tensor) -> Tensor:
        """``sum_{c, j} weight[o, c, j] I_j(u^c)``: ``(B, C, N, H, W)``, ``(O, C, 10)`` ->
        ``(B, O, N, H, W)``."""
        given = u.dtype
        if self._cache is None and not is_input_checked(self):  # from outside forward
            u = self._fields(u)  # in this module's dtype; the result in the input's (enter's rule)
        if self.fused(u, weight):
            return m2_mix_invariants(u, weight, self.jet.stencils,
                                     orientation_frame(u.shape[2]), self.jet.boundary).to(given)
        invariants = self.invariants(u)                      # (B, C, 10, N, H, W)
        batch, channels, count, n, height, width = invariants.shape
        # matmul, not einsum (onnxruntime's Einsum fails on an empty batch; see Pointwise)
        mixed = torch.matmul(weight.reshape(weight.shape[0], channels * count),
                             invariants.reshape(batch, channels * count, n * height * width))
        return mixed.view(batch, weight.shape[0], n, height, width).to(given)

    def invariants(self, u: Tensor) -> Tensor:
        """``(B, C, N, H, W) -> (B, C, 10, N, H, W)`` (computed once per call of forward and
        shared by its terms; every call from outside forward computes them afresh)."""
        cached = self._cache
        if cached and cached[0] is u:
            return cached[1]
        given = u.dtype
        if cached is None and not is_input_checked(self):  # from outside forward
            u = self._fields(u)  # in this module's dtype; the result in the input's (enter's rule)
        # the identity built only where the fused operator takes it: an exported graph (the
        # reference) then holds no eye, which ONNX writes as operators onnxruntime lacks
        identity = (torch.eye(self.channels * len(M2_SE2), dtype=u.dtype, device=u.device)
                    if u.dtype in (torch.float32, torch.float64)
                    and kernels.resolve_backend(self.backend) != "reference" else None)
        if identity is not None and self.fused(u, identity):
            invariants = m2_mix_invariants(
                u, identity.view(-1, self.channels, len(M2_SE2)),
                self.jet.stencils, orientation_frame(u.shape[2]),
                self.jet.boundary).view(u.shape[0], self.channels, len(M2_SE2), *u.shape[2:])
        else:
            with input_checked(self.jet):  # checked by enter, or an analysis of u as it is
                invariants = self.invariant_set(self.jet(u))
        if cached is not None:
            self._cache = (u, invariants)
        return invariants.to(given)

    def euler_step(self, u: Tensor, dt: float) -> Tensor | None:
        """``u + dt F(u)`` by fused operators where ``F`` is one :class:`NetworkTerm` alone (by
        its type, whatever its name: a term registered over ``"network"`` with ``replace=True``
        takes the general path) with unnormalised invariants and the device has the kernels:
        without a hidden batch norm the
        whole step in one (``torch.ops.eqpdenet.m2_euler_step``); with it the mixed invariants
        (``m2_mix_invariants``), then the rest of ``F`` with the update in one more
        (``m2_update``), the batch norm passed to it as the per-channel affine map it applies
        (:func:`~eqpdenet.pde.batch_norm.batch_norm_affine`: the statistics are all it adds,
        and a relative system's ``F(0)`` comes from the same ``shift``). Else None
        (the caller computes ``u + dt F(u)``; also where a hook is registered: :meth:`fused`).
        Called alone, checks ``u`` (:meth:`enter`) and returns the step in its dtype."""
        network = next(iter(self.terms.values())) if len(self.terms) == 1 else None
        # exactly NetworkTerm: the fused operators compute its forward, which a subclass may not
        if type(network) is not NetworkTerm or not isinstance(network.norm, nn.Identity):
            return None
        x = u if is_input_checked(self) else self.enter(u)
        w1 = network.mix.weight.view(-1, self.channels, len(M2_SE2))
        # Every tensor the fused step reads, not only W1: a forward-mode tangent or a vmap over
        # b1, W2, b2 or the hidden batch norm (functional_call with dual or batched parameters)
        # took the fused path, which then refused it. Read through the modules' attributes, so
        # that a parametrization's value is the one checked.
        norm = network.hidden_norm
        others = (network.mix.bias, network.out.weight, network.out.bias,
                  *(getattr(norm, name, None) for name in ("weight", "bias", "running_mean",
                                                           "running_var")))
        if not self.fused(x, w1, others):
            return None
        if isinstance(network.hidden_norm, nn.Identity):
            step = m2_euler_step(x, w1, network.mix.bias, network.out.weight,
                                 network.fused_out_bias(self.relative),
                                 self.jet.stencils,
                                 orientation_frame(x.shape[2]), self.jet.boundary, dt)
        elif x.device.type not in M2_UPDATE_IMPLEMENTATIONS or (
                M2_UPDATE_IMPLEMENTATIONS.get(x.device.type)() is not None):
            return None
        else:
            with input_checked(self):
                z = self.mixed_invariants(x, w1)
            scale, shift = batch_norm_affine(network.hidden_norm, z.flatten(2))
            step = m2_update(x, z, scale, shift, network.out.weight,
                             network.fused_out_bias(self.relative, shift), dt)
        return step if x is u else step.to(u.dtype)

    def forward(self, u: Tensor) -> Tensor:
        x = u if is_input_checked(self) else self.enter(u)
        self._cache = ()
        try:
            out = None
            for name, term in self.terms.items():
                value = term(x, self)
                # Each term, not only the sum (EulerStep checks that): beside another term a
                # wrong shape broadcast silently ((B, 1, N, H, W), a 0-d tensor) or failed in
                # the addition with a raw error. Shapes only: no host read.
                if not isinstance(value, Tensor) or value.shape != x.shape:
                    got = (f"shape {tuple(value.shape)}" if isinstance(value, Tensor)
                           else type(value).__name__)
                    raise ConfigError(f"the M2 right-hand-side term {name!r} "
                                      f"({type(term).__name__}) must return its part of du/dt "
                                      f"in the fields' shape {tuple(x.shape)}, got {got}")
                # and in their dtype (a float64 or complex term changed it without a word)
                if not keeps_state_dtype(x, value):
                    raise ConfigError(f"the M2 right-hand-side term {name!r} "
                                      f"({type(term).__name__}) must return its part of du/dt "
                                      f"in the fields' dtype {x.dtype} (or a lower "
                                      f"floating-point precision), got {value.dtype}")
                out = value if out is None else out + value
            return out if x is u else out.to(u.dtype)
        finally:
            self._cache = None

    @property
    def quarter_turn_equivariant(self) -> bool:
        """Whether every term is known to commute with quarter turns
        (:func:`commutes_with_quarter_turns`)."""
        return all(commutes_with_quarter_turns(term) for term in self.terms.values())

    def extra_repr(self) -> str:
        relative = ", relative=True" if self.relative else ""
        return (f"channels={self.channels}, terms={list(self.term_names)}{relative}, "
                f"backend={self.backend!r}")
