"""The fused PDE evolution as PyTorch operators: one schema, one implementation per device.

Two operators are declared to PyTorch's dispatcher in the ``eqpdenet`` namespace:

``torch.ops.eqpdenet.euler_evolve(u, weight, bias, monomials, stencils, invariant_sets,
boundaries, dt, ratio_eps, ratio_regularisations, steps, check_finite, store_states)
-> (out, states, first_bad)``
    Integrates ``E`` PDEs ``du/dt = F_e(I_e(jet_e(u)))`` from the same input by ``steps[e]``
    explicit Euler steps each (eq. (9)), with ``F_e(I) = bias[e] + sum_m weight[e, m] prod_k
    I_k^{e_mk}`` given by its monomial recipe (:func:`~eqpdenet.pde.rhs.monomial_recipe`).

    ===================== ===================== ==========================================
    argument              shape / type          meaning
    ===================== ===================== ==========================================
    u                     (B, C, H, W)          input images, float32 or float64
    weight                (E, M)                F's coefficients, zero-padded to the
                                                longest F
    bias                  (E,)                  F's constant terms
    monomials             (E, M, 2) int64       per monomial (lower monomial or -1,
                                                invariant); rows (-1, -1) pad a shorter F
    stencils              (E, 6, 3, 3) float64  the jet's convolution weights (u, u_x, u_y,
                                                u_xx, u_xy, u_yy; divided by the spacing
                                                powers)
    invariant_sets        str[E]                kernel names (:data:`KERNEL_INVARIANT_SETS`)
    boundaries            str[E]                replicate, zeros, reflect or circular
    dt                    float[E]              time steps
    ratio_eps             float[E]              regularisation scale of the ratio invariants
    ratio_regularisations str[E]                ``covariant`` or ``absolute``
                                                (:data:`KERNEL_RATIO_REGULARISATIONS`)
    steps                 int[E]                numbers of Euler steps
    check_finite          bool[E]               report the first non-finite step
    store_states          bool                  keep every state for the backward pass
    ===================== ===================== ==========================================

    Returns ``out`` ``(B, E, C, H, W)`` (the states at ``T``), ``states``
    ``(B, E, C, max(steps), H, W)`` (empty unless ``store_states``) and ``first_bad`` ``(B, E)``
    int32, the first Euler step whose state was not finite (0: none, or not checked).

    The invariant sets (:data:`KERNEL_INVARIANT_SETS`), with ``ratio(a, b)`` the regularised
    ratio of the PDE's mode (:mod:`eqpdenet.pde.invariants`): ``a b / (b² + eps² ref + guard)``
    (``covariant``; ``ref = R = u_xx² + 2 u_xy² + u_yy² + (u_x² + u_y²)²`` for the second-order
    denominators, ``R²`` for ``det H``; ``guard`` the square root of the smallest positive normal
    number of the dtype, :func:`~eqpdenet.pde.invariants.ratio_guard`) or ``a b / (b² + eps²)``
    (``absolute``):

    * ``se2`` (5): ``u, u_x² + u_y², u_xx + u_yy, u_x² u_xx + 2 u_x u_y u_xy + u_y² u_yy,
      u_xx² + 2 u_xy² + u_yy²``;
    * ``scaling`` (6): ``ratio(u_x², u_xx), ratio(u_x², u_xy), ratio(u_x², u_yy),
      ratio(u_y², u_xx), ratio(u_y², u_xy), ratio(u_y², u_yy)``;
    * ``sim2`` (4): ``u, ratio(|∇u|², Δu), ratio(|∇u|² Δu, det H), ratio(∇uᵀ H ∇u, det H)``
      with ``det H = u_xx u_yy − u_xy²``.

``torch.ops.eqpdenet.euler_evolve_backward(grad_out, u, ..., states) -> (grad_u, grad_weight,
grad_bias)``
    The exact adjoint of the same discrete scheme (boundary padding included), from the stored
    ``states`` or, where ``states`` is empty, recomputing them image by image.

Autograd is registered once, here, for every device; each device registers its implementation
of both operators (the C++ kernel for ``cpu`` in :mod:`eqpdenet.kernels.cpu`). ``torch.compile``
sees the operators through their fake (shape) implementations.

:func:`fused_evolve` is the entry point for the PDE layer: it takes one :class:`PDESpec` per PDE,
calls the operator, and raises :class:`~eqpdenet.errors.NonFiniteStateError` from ``first_bad``
(one device-to-host read per call, after all steps).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import NonFiniteStateError
from ..registry import Registry

__all__ = [
    "IMPLEMENTATIONS",
    "KERNEL_INVARIANT_SETS",
    "KERNEL_RATIO_REGULARISATIONS",
    "PDESpec",
    "fused_evolve",
    "stencil_is_supported",
    "unsupported_reason",
    "warn_once",
]

#: Invariant sets the compiled kernels implement (an InvariantSet declares one by its ``kernel``).
KERNEL_INVARIANT_SETS = ("se2", "scaling", "sim2")
#: Ratio regularisations the compiled kernels implement (:mod:`eqpdenet.pde.invariants`).
KERNEL_RATIO_REGULARISATIONS = ("covariant", "absolute")
KERNEL_BOUNDARIES = ("replicate", "zeros", "reflect", "circular")

#: Device type -> ``available()`` returning None or why that device's implementation cannot run.
IMPLEMENTATIONS: Registry[Callable[[], str | None]] = Registry("kernel implementation")

_LIBRARY = torch.library.Library("eqpdenet", "DEF")
_COMMON = ("Tensor weight, Tensor bias, Tensor monomials, Tensor stencils, str[] invariant_sets, "
           "str[] boundaries, float[] dt, float[] ratio_eps, str[] ratio_regularisations, "
           "int[] steps")
_LIBRARY.define(f"euler_evolve(Tensor u, {_COMMON}, bool[] check_finite, bool store_states) "
                "-> (Tensor, Tensor, Tensor)")
_LIBRARY.define(f"euler_evolve_backward(Tensor grad_out, Tensor u, {_COMMON}, Tensor states) "
                "-> (Tensor, Tensor, Tensor)")


@torch.library.register_fake("eqpdenet::euler_evolve", lib=_LIBRARY)
def _evolve_fake(u, weight, bias, monomials, stencils, invariant_sets, boundaries, dt, ratio_eps,
                 ratio_regularisations, steps, check_finite, store_states):
    batch, channels, height, width = u.shape
    pdes = len(steps)
    out = u.new_empty(batch, pdes, channels, height, width)
    states = (u.new_empty(batch, pdes, channels, max(steps), height, width) if store_states
              else u.new_empty(0))
    return out, states, u.new_empty(batch, pdes, dtype=torch.int32)


@torch.library.register_fake("eqpdenet::euler_evolve_backward", lib=_LIBRARY)
def _backward_fake(grad_out, u, weight, bias, monomials, stencils, invariant_sets, boundaries,
                   dt, ratio_eps, ratio_regularisations, steps, states):
    return torch.empty_like(u), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    u, weight, bias, monomials, stencils, sets, boundaries, dt, eps, modes, steps, _, _ = inputs
    ctx.settings = (sets, boundaries, dt, eps, modes, steps)
    ctx.save_for_backward(u, weight, bias, monomials, stencils, output[1])


def _backward(ctx, grad_out, grad_states, grad_first_bad):
    u, weight, bias, monomials, stencils, states = ctx.saved_tensors
    grad_u, grad_weight, grad_bias = torch.ops.eqpdenet.euler_evolve_backward(
        grad_out.contiguous(), u, weight, bias, monomials, stencils, *ctx.settings, states)
    return grad_u, grad_weight, grad_bias, *([None] * 10)


torch.library.register_autograd("eqpdenet::euler_evolve", _backward,
                                setup_context=_setup_context, lib=_LIBRARY)


# ----------------------------------------------------------------------------- the layer's view


@dataclass(frozen=True)
class PDESpec:
    """What the fused operator needs of one PDE ``du/dt = F(I(jet(u)))`` integrated by Euler.

    ``stencil`` is the jet's weight ``(6, 1, 3, 3)`` (or ``(6, 3, 3)``); ``monomials`` the recipe
    of ``F`` (:func:`~eqpdenet.pde.rhs.monomial_recipe`); ``weight`` and ``bias`` are ``F``'s
    parameters themselves (gradients flow to them).
    """

    name: str
    invariant_set: str
    boundary: str
    stencil: Tensor
    ratio_eps: float
    ratio_regularisation: str
    monomials: tuple[tuple[int, int], ...]
    weight: Tensor
    bias: Tensor
    dt: float
    steps: int
    check_finite: bool


def stencil_is_supported(weight: Tensor) -> bool:
    """Whether a jet weight ``(6, 1, 3, 3)`` has the form the kernels implement: ``u`` the centre
    tap, ``u_x`` and ``u_y`` odd along their axis and even across it, ``u_xx`` and ``u_yy`` even
    both ways, ``u_xy`` a multiple of ``[[-1, 0, 1], [0, 0, 0], [1, 0, -1]]`` (the ``central``
    and ``isotropic`` families have this form)."""
    if weight.numel() != 54 or weight.shape[0] != 6 or tuple(weight.shape[-2:]) != (3, 3):
        return False
    k = weight.detach().to(device="cpu", dtype=torch.float64).reshape(6, 3, 3)
    centre_only = torch.zeros(3, 3, dtype=torch.float64)
    centre_only[1, 1] = 1.0
    flip_x, flip_y = k.flip(-1), k.flip(-2)  # columns are x; rows are y (reversed)
    return bool(
        torch.equal(k[0], k[0, 1, 1] * centre_only)
        and torch.equal(flip_x[1], -k[1]) and torch.equal(flip_y[1], k[1])
        and torch.equal(flip_y[2], -k[2]) and torch.equal(flip_x[2], k[2])
        and all(torch.equal(f[d], k[d]) for d in (3, 5) for f in (flip_x, flip_y))
        and torch.equal(k[4], k[4, 0, 2] * torch.tensor([[-1.0, 0, 1], [0, 0, 0], [1, 0, -1]],
                                                        dtype=torch.float64))
    )


def unsupported_reason(u: Tensor, specs: Sequence[PDESpec]) -> str | None:
    """Why the fused operator cannot evolve ``u`` under ``specs`` (None if it can)."""
    device = u.device.type
    if device not in IMPLEMENTATIONS:
        return f"the fused kernel has no implementation for {device} tensors"
    if u.dtype not in (torch.float32, torch.float64):
        return f"the fused kernel supports float32 and float64, not {u.dtype}"
    for spec in specs:
        if spec.invariant_set not in KERNEL_INVARIANT_SETS:
            return (f"the fused kernel has no invariant set {spec.invariant_set!r} "
                    f"(only {', '.join(KERNEL_INVARIANT_SETS)})")
        if spec.ratio_regularisation not in KERNEL_RATIO_REGULARISATIONS:
            return f"the fused kernel has no ratio regularisation {spec.ratio_regularisation!r}"
        if spec.boundary not in KERNEL_BOUNDARIES:
            return f"the fused kernel has no boundary {spec.boundary!r}"
        if not stencil_is_supported(spec.stencil):
            return "the fused kernel supports 3x3 stencils of the central/isotropic form only"
        if spec.boundary == "reflect" and min(u.shape[-2:]) <= 1:
            return "reflect boundary on images of 1 pixel"
        for parameter in (spec.weight, spec.bias):
            if parameter.dtype != u.dtype or parameter.device != u.device:
                return (f"parameters ({parameter.dtype}, {parameter.device}) and input "
                        f"({u.dtype}, {u.device}) differ in dtype or device")
    return IMPLEMENTATIONS.get(device)()


_warned: set[str] = set()


def warn_once(reason: str) -> None:
    """One warning per reason and process."""
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"eqpdenet: {reason}", RuntimeWarning, stacklevel=4)


def fused_evolve(u: Tensor, specs: Sequence[PDESpec], recompute: bool = False) -> Tensor:
    """States at ``T`` of every PDE, ``(B, E, C, H, W)``, by the fused operator (differentiable
    in ``u`` and every ``weight`` and ``bias``).

    With ``recompute``, no intermediate state is kept for the backward pass (it recomputes
    them). Raises :class:`~eqpdenet.errors.NonFiniteStateError` for the PDE (among those with
    ``check_finite``) whose state first became non-finite. The caller checks
    :func:`unsupported_reason` first.
    """
    mmax = max(len(spec.monomials) for spec in specs)
    weight = torch.stack([torch.nn.functional.pad(spec.weight, (0, mmax - spec.weight.numel()))
                          for spec in specs])
    bias = torch.stack([spec.bias.reshape(()) for spec in specs])
    monomials = torch.full((len(specs), mmax, 2), -1, dtype=torch.int64)
    for e, spec in enumerate(specs):
        monomials[e, :len(spec.monomials)] = torch.tensor(spec.monomials, dtype=torch.int64)
    stencils = torch.stack([spec.stencil.detach().to("cpu", torch.float64).reshape(6, 3, 3)
                            for spec in specs])
    needs_grad = torch.is_grad_enabled() and (
        u.requires_grad or weight.requires_grad or bias.requires_grad)
    out, _, first_bad = torch.ops.eqpdenet.euler_evolve(
        u.contiguous(), weight.contiguous(), bias.contiguous(), monomials.to(u.device),
        stencils.to(u.device), [s.invariant_set for s in specs], [s.boundary for s in specs],
        [float(s.dt) for s in specs], [float(s.ratio_eps) for s in specs],
        [s.ratio_regularisation for s in specs], [int(s.steps) for s in specs],
        [bool(s.check_finite) for s in specs],
        bool(needs_grad and not recompute))
    if any(s.check_finite for s in specs):
        bad = first_bad.cpu()  # the one host synchronisation, after all steps
        if bool((bad > 0).any()):
            for e, spec in enumerate(specs):
                column = bad[:, e]
                if bool((column > 0).any()):
                    raise NonFiniteStateError(spec.name, int(column[column > 0].min()), spec.dt)
    return out
