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
                                                (F ends at its first row of a negative
                                                invariant: every row from it on must be
                                                (-1, -1), else refused)
    stencils              (E, 6, 3, 3) float64  the jet's convolution weights (u, u_x, u_y,
                                                u_xx, u_xy, u_yy; divided by the spacing
                                                powers), of the form
                                                :func:`stencil_is_supported` takes (the
                                                kernels read only its coefficients; any other
                                                is refused: :func:`check_stencil_form`)
    invariant_sets        str[E]                kernel names (:data:`KERNEL_INVARIANT_SETS`)
    boundaries            str[E]                replicate, zeros, reflect or circular
    dt                    float[E]              time steps
    ratio_eps             float[E]              regularisation scale of the ratio invariants
                                                (positive and finite, as the reference's)
    ratio_regularisations str[E]                ``covariant`` or ``absolute``
                                                (:data:`KERNEL_RATIO_REGULARISATIONS`)
    steps                 int[E]                numbers of Euler steps
    check_finite          bool[E]               report the first non-finite step
    store_states          bool                  keep every state for the backward pass
    ===================== ===================== ==========================================

    Returns ``out`` ``(B, E, C, H, W)`` (the states at ``T``), ``states``
    ``(B, E, C, max(steps), H, W)`` (empty unless ``store_states``: ``states[:, e, :, l]`` is the
    state ``u_l`` of PDE ``e`` before its step ``l + 1``, for ``l < steps[e]``, and zero for
    ``steps[e] <= l < max(steps)``) and ``first_bad`` ``(B, E)`` int32, the first Euler step whose
    state was not finite (0: none, or not checked). Every output is contiguous, whatever the
    inputs' strides. ``steps`` must lie in ``[0, 2**31 - 1]`` (the kernels count in a C ``int``).

    The invariant sets (:data:`KERNEL_INVARIANT_SETS`), with ``ratio(a, b)`` the regularised
    ratio of the PDE's mode (:mod:`eqpdenet.pde.invariants`): ``a b / (b² + eps² ref + guard)``
    (``covariant``; ``ref = R = u_xx² + 2 u_xy² + u_yy² + (u_x² + u_y²)²`` for the second-order
    denominators, ``R²`` for ``det H``; ``guard`` the square root of the smallest positive normal
    number of the dtype, :func:`~eqpdenet.pde.invariants.ratio_guard`; formed from the jet
    rescaled by the power of two that brings the plane's largest ``R`` into ``[1, 16)``, one per
    image, PDE, channel and step, as the reference does: ``_ratio_operands`` there) or
    ``a b / (b² + eps²)`` (``absolute``):

    * ``se2`` (5): ``u, u_x² + u_y², u_xx + u_yy, u_x² u_xx + 2 u_x u_y u_xy + u_y² u_yy,
      u_xx² + 2 u_xy² + u_yy²``;
    * ``scaling`` (6): ``ratio(u_x², u_xx), ratio(u_x², u_xy), ratio(u_x², u_yy),
      ratio(u_y², u_xx), ratio(u_y², u_xy), ratio(u_y², u_yy)``;
    * ``sim2`` (4): ``u, ratio(|∇u|², Δu), ratio(|∇u|² Δu, det H), ratio(∇uᵀ H ∇u, det H)``
      with ``det H = u_xx u_yy − u_xy²``.

``torch.ops.eqpdenet.euler_evolve_backward(grad_out, u, ..., states) -> (grad_u, grad_weight,
grad_bias)``
    The exact adjoint of the same discrete scheme (boundary padding included), from the stored
    ``states`` or, where ``states`` is empty, recomputing them image by image. ``grad_out``
    ``(B, E, C, H, W)`` has the dtype of ``u``; the outputs are contiguous, shaped as ``u``,
    ``weight`` and ``bias``, in ``u``'s dtype.

Autograd is registered once, here, for every device; each device registers its implementation
of both operators (the C++ kernel for ``cpu`` in :mod:`eqpdenet.kernels.cpu`, the Triton kernels
for ``cuda`` in :mod:`eqpdenet.kernels.cuda`). ``torch.compile`` sees the operators through their
fake (shape) implementations. PyTorch takes these registrations once per process, so this
module, :mod:`~eqpdenet.kernels.m2_op` and :mod:`~eqpdenet.kernels.cpu` cannot be reloaded:
``importlib.reload`` of one raises an ``ImportError`` saying to restart the process (the
notebook's kernel), and leaves the loaded module as it was (:func:`refuse_reload`).

:func:`fused_evolve` is the entry point for the PDE layer: it takes one :class:`PDESpec` per PDE,
calls the operator (:func:`operator_arguments` are its arguments), and reports ``first_bad``
through :func:`~eqpdenet.checks.report_non_finite`: one device-to-host read per call, after all
steps, or none inside :func:`~eqpdenet.checks.deferred_state_checks`. The small metadata tensors
(monomial recipes, stencils) are uploaded to a device once per configuration and their host
copies kept (:func:`host_copy`), so a call on a GPU neither waits for the device nor copies
anything from the host: it can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from ..checks import deferring, report_non_finite, transformed
from ..errors import ConfigError, InputError, InputTypeError, warn_at_caller
from ..registry import Registry


def refuse_reload(namespace: dict) -> None:
    """Called first (after its imports) by each module that registers operators or their
    implementations with PyTorch (this one, :mod:`~eqpdenet.kernels.m2_op`,
    :mod:`~eqpdenet.kernels.cpu`), with its ``globals()``: the first time it marks them; run
    again in the same namespace (``importlib.reload``, IPython's ``%autoreload``) it raises an
    ``ImportError`` before anything of the module is defined again, so the loaded module is left
    as it was and keeps working. PyTorch takes each operator's definition once per process (a
    second raised its raw "Only a single TORCH_LIBRARY ..." or "register an operator ... multiple
    times" error, and the reloaded module was left half run: its empty registry of
    implementations sent every layer to the reference)."""
    if namespace.get("_OPERATORS_REGISTERED"):
        module = namespace.get("__name__", "this module")
        raise ImportError(
            f"{module} cannot be reloaded: it registers eqpdenet's operators or their "
            f"implementations with PyTorch, which takes them once per process. Restart the "
            f"Python process (in a notebook, restart the kernel) to use changed code; the loaded "
            f"{module} is unchanged and still works")
    namespace["_OPERATORS_REGISTERED"] = True


refuse_reload(globals())

__all__ = [
    "IMPLEMENTATIONS",
    "KERNEL_INVARIANT_SETS",
    "KERNEL_RATIO_REGULARISATIONS",
    "RATIO_INVARIANT_SETS",
    "DEVICE_RATIO_REGULARISATIONS",
    "PDESpec",
    "check_stencil_form",
    "fused_evolve",
    "host_copy",
    "operator_arguments",
    "require_first_order",
    "stencil_is_supported",
    "transform_reason",
    "unsupported_reason",
    "warn_once",
]

#: Invariant sets the compiled kernels implement (an InvariantSet declares one by its ``kernel``).
KERNEL_INVARIANT_SETS = ("se2", "scaling", "sim2")
#: Ratio regularisations the compiled kernels implement (:mod:`eqpdenet.pde.invariants`).
KERNEL_RATIO_REGULARISATIONS = ("covariant", "absolute")
KERNEL_BOUNDARIES = ("replicate", "zeros", "reflect", "circular")

#: Device type -> ``unavailable(device)``: None, or why that device's implementation cannot run
#: on ``device`` (a ``torch.device``; several CUDA cards may differ in capability).
IMPLEMENTATIONS: Registry[Callable[[torch.device], str | None]] = Registry("kernel implementation")
#: Device type -> the invariant sets its implementation computes, where not all of
#: :data:`KERNEL_INVARIANT_SETS` (a set added to one kernel first falls back on the others).
DEVICE_INVARIANT_SETS: dict[str, tuple[str, ...]] = {}
#: The invariant sets that divide (where the ratio regularisation matters).
RATIO_INVARIANT_SETS = ("scaling", "sim2")
#: Device type -> the ratio regularisations its implementation computes, where not all of
#: :data:`KERNEL_RATIO_REGULARISATIONS`.
DEVICE_RATIO_REGULARISATIONS: dict[str, tuple[str, ...]] = {}

_LIBRARY = torch.library.Library("eqpdenet", "DEF")


def transform_reason(*tensors: Tensor | None) -> str | None:
    """Why no fused operator may take these tensors, or None: they carry a forward-mode tangent
    (``torch.autograd.forward_ad``, ``torch.func.jvp``) or are wrapped by a ``torch.func``
    transform (``vmap``, ``grad``, ``jacrev``, ...). The operators have reverse-mode derivatives
    only and no batching rule: forward-mode derivatives through them came out as zeros, silently,
    and ``vmap`` failed inside the C++ code. The layers then take the plain-PyTorch reference,
    which every transform supports."""
    for tensor in tensors:
        if tensor is None:
            continue
        if transformed(tensor):  # also while torch.compile traces (checks.transformed)
            return ("the fused kernels have no batching rule and no forward-mode derivative "
                    "(a torch.func transform: vmap, jvp, grad, jacrev, ...)")
        if forward_ad.unpack_dual(tensor).tangent is not None:
            return "the fused kernels have no forward-mode derivative (a dual tensor)"
    return None


def require_first_order(operator: str) -> None:
    """Called first in every fused operator's backward. Autograd runs a backward with gradients
    enabled only to differentiate its result again (``create_graph=True``: a gradient penalty, a
    Hessian-vector product); the backward kernels are not differentiable, and their gradients
    would enter the second derivative as constants, its terms through them silently missing."""
    if torch.is_grad_enabled():
        raise NotImplementedError(
            f"eqpdenet::{operator}: the fused kernel's backward is not differentiable, so a "
            f"derivative of its gradients (create_graph=True) cannot be computed through it; "
            f"first derivatives are exact. Compute higher derivatives through the plain-PyTorch "
            f"reference: backend='reference' (lifted_pde.backend, layer.backend) or "
            f"EQPDENET_BACKEND=reference")
_COMMON = ("Tensor weight, Tensor bias, Tensor monomials, Tensor stencils, str[] invariant_sets, "
           "str[] boundaries, float[] dt, float[] ratio_eps, str[] ratio_regularisations, "
           "int[] steps")
_LIBRARY.define(f"euler_evolve(Tensor u, {_COMMON}, bool[] check_finite, bool store_states) "
                "-> (Tensor, Tensor, Tensor)")
_LIBRARY.define(f"euler_evolve_backward(Tensor grad_out, Tensor u, {_COMMON}, Tensor states) "
                "-> (Tensor, Tensor, Tensor)")


#: The most Euler steps one operator call takes: the kernels count steps in a C ``int`` (the
#: layers' own, far lower cap is :data:`eqpdenet.pde.integrators.MAX_STEPS`).
KERNEL_MAX_STEPS = 2**31 - 1


def _check_steps(steps: Sequence[int]) -> None:
    """The C++ kernel's check of ``steps`` (``csrc/fused_euler.cpp``), in the fake
    implementations too: ``torch.compile`` and the meta device learn the shapes from them, and
    ``max(steps)`` sizes the ``states`` output."""
    for e, count in enumerate(steps):
        if count < 0:
            raise RuntimeError(f"fused_euler: steps must be >= 0, got {count} for PDE {e}")
        if count > KERNEL_MAX_STEPS:
            raise RuntimeError(f"fused_euler: steps must be <= {KERNEL_MAX_STEPS}, got {count} for PDE {e}")


# The fake (shape) implementations give contiguous outputs, as every kernel returns them: one
# given a transposed input kept its strides (torch.empty_like), and opcheck and Inductor's stride
# assertions failed.
@torch.library.register_fake("eqpdenet::euler_evolve", lib=_LIBRARY)
def _evolve_fake(u, weight, bias, monomials, stencils, invariant_sets, boundaries, dt, ratio_eps,
                 ratio_regularisations, steps, check_finite, store_states):
    _check_steps(steps)
    batch, channels, height, width = u.shape
    pdes = len(steps)
    out = u.new_empty(batch, pdes, channels, height, width)
    states = (u.new_empty(batch, pdes, channels, max(steps, default=0), height, width)
              if store_states else u.new_empty(0))
    return out, states, u.new_empty(batch, pdes, dtype=torch.int32)


@torch.library.register_fake("eqpdenet::euler_evolve_backward", lib=_LIBRARY)
def _backward_fake(grad_out, u, weight, bias, monomials, stencils, invariant_sets, boundaries,
                   dt, ratio_eps, ratio_regularisations, steps, states):
    _check_steps(steps)
    return u.new_empty(u.shape), u.new_empty(weight.shape), u.new_empty(bias.shape)


def _setup_context(ctx, inputs, output):
    u, weight, bias, monomials, stencils, sets, boundaries, dt, eps, modes, steps, _, _ = inputs
    ctx.settings = (sets, boundaries, dt, eps, modes, steps)
    ctx.save_for_backward(u, weight, bias, monomials, stencils, output[1])
    # The stored states (and the first-bad-step table) are outputs no loss uses: autograd would
    # otherwise fill a zero gradient as large as all the states for the backward to ignore
    # (the backward's peak held the states twice).
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_states, grad_first_bad):
    require_first_order("euler_evolve")
    if grad_out is None:  # only the states reached the loss: they carry no gradient
        return (None,) * 13
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
    and ``isotropic`` families have this form). Anything but a tensor is an
    :class:`~eqpdenet.errors.InputTypeError` (not an answer: a stencil was not given)."""
    if not isinstance(weight, Tensor):
        raise InputTypeError(f"stencil_is_supported: weight must be a torch.Tensor (a jet's "
                             f"stencils (6, 1, 3, 3)), got {type(weight).__name__}")
    if weight.numel() != 54 or weight.shape[0] != 6 or tuple(weight.shape[-2:]) != (3, 3):
        return False
    # asked at every forward: answered once per stencil tensor
    return _judged(_supported, weight, lambda: _has_supported_form(
        host_copy(weight).to(dtype=torch.float64).reshape(6, 3, 3)))


def _judged(cache: WeakIdKeyDictionary, tensor: Tensor, judge):
    """``judge()``, remembered in ``cache`` for ``tensor`` while it is unchanged
    (:func:`_unchanged`; an inference tensor has no version counter: judged every time)."""
    if tensor.is_inference():
        return judge()
    cached = cache.get(tensor)
    if cached is not None and _unchanged(tensor, cached[0]):
        return cached[1]
    answer = judge()
    cache[tensor] = (_fingerprint(tensor), answer)
    return answer


def _fingerprint(t: Tensor) -> tuple:
    """What a cache keeps of a small tensor ``t`` (a stencil, a recipe) to tell, before it reuses
    an entry made from ``t``, that ``t`` still holds the same values (:func:`_unchanged`): its
    version counter (in-place ops), its device, storage, offset, shape, strides and dtype (a
    ``.data =`` assignment swaps them and keeps the version; the storage is held, so its
    address cannot be reused by another while the entry lives) and, on the CPU, a copy of its
    values (an edit through ``.data`` or numpy keeps the version and the storage). On another
    device the values are not compared, as that would wait for the device: an edit there that
    bypasses autograd's version counter (``t.data.mul_(2)``) is not seen. None for a tensor
    without data of its own (a fake or functional tensor of ``torch.export``/``torch.compile``'s
    tracing): its entry is never reused."""
    if not _has_data(t):
        return None
    # (an inference tensor has no version counter: its values alone tell, on the CPU)
    version = None if t.is_inference() else t._version
    values = t.detach().clone() if t.device.type == "cpu" else None
    return (version, t.untyped_storage(), t.device, t.data_ptr(), t.shape, t.stride(), t.dtype,
            values)


def _has_data(t: Tensor) -> bool:
    """Whether ``t`` has data whose address can be read: a tracer's fake tensor has none
    (``data_ptr`` raises; the fingerprint then failed ``torch.export`` of a graph calling the
    fused operator, instead of its own message)."""
    try:
        t.data_ptr()
    except RuntimeError:
        return False
    return True


def _unchanged(t: Tensor, fingerprint: tuple | None) -> bool:
    """Whether ``t`` is as :func:`_fingerprint` saw it (see there for what is compared); never
    for a fingerprint or a tensor without data (a tracer's)."""
    if fingerprint is None or not _has_data(t):
        return False
    version, _, device, address, shape, strides, dtype, values = fingerprint
    return (version == (None if t.is_inference() else t._version) and device == t.device
            and address == t.data_ptr() and shape == t.shape and strides == t.stride()
            and dtype == t.dtype and (values is None or bool(torch.equal(values, t))))


def _has_supported_form(k: Tensor) -> bool:
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


#: The jet stencils the kernels compute with, said in the refusal of any other.
SUPPORTED_STENCIL_FORM = (
    "u the centre tap only; u_x and u_y odd along their axis and even across it; u_xx and u_yy "
    "even both ways; u_xy a multiple of [[-1, 0, 1], [0, 0, 0], [1, 0, -1]] (the central and "
    "isotropic stencils)")


def check_stencil_form(what: str, stencils: Tensor) -> None:
    """An :class:`~eqpdenet.errors.InputError` naming the first PDE ``e`` whose jet weights
    ``stencils[e]`` (of ``(E, 6, 3, 3)`` float64) are not of the form the kernels implement
    (:func:`stencil_is_supported`). Called by every device's implementation of
    ``eqpdenet::euler_evolve`` and its backward before anything runs: the kernels read only the
    14 coefficients of that form, so any other tap (a centre tap on ``u_x``, a corner tap on
    ``u``) was ignored, silently (the layers check the form first and take the reference).
    Stencils of another shape or dtype are left to the kernels' own checks, which name them.

    Judged once per stencils tensor while it is unchanged (:func:`_fingerprint`: on the CPU its
    values are compared; on a device its version counter and storage, so an edit there that
    bypasses the version counter is not seen): a call with the stencils
    :func:`operator_arguments` made reads nothing from the device (:func:`host_copy`); other
    stencils on a device are read once, and again after an in-place change or a ``.data =``
    assignment. Inference tensors have no version counter: theirs are judged at every call."""
    if (stencils.dim() != 4 or tuple(stencils.shape[1:]) != (6, 3, 3)
            or stencils.dtype != torch.float64):
        return
    def first_fault() -> str | None:
        host = stencils.detach().cpu() if stencils.is_inference() else host_copy(stencils)
        for e in range(host.shape[0]):
            if not bool(host[e].isfinite().all()):  # (no form holds: said as it is)
                return f"stencils[{e}] holds a non-finite value"
            if not _has_supported_form(host[e]):
                return (f"stencils[{e}] is not of the form the fused kernels compute with "
                        f"({SUPPORTED_STENCIL_FORM}); its other taps would be ignored. Other "
                        f"stencils run on the reference PDE layer (backend='reference')")
        return None

    fault = _judged(_form_checked, stencils, first_fault)
    if fault is not None:
        raise InputError(f"{what}: {fault}")


#: Why no operator runs on an empty ``specs``.
_NO_PDE = "specs is empty: the fused operator evolves at least one PDE (one PDESpec per PDE)"


def _check_arguments(what: str, u: Tensor, specs: Sequence[PDESpec]) -> None:
    """``u`` a tensor and ``specs`` a sequence of :class:`PDESpec`, else an
    :class:`~eqpdenet.errors.InputTypeError` naming the argument (raw AttributeErrors from
    inside before)."""
    if not isinstance(u, Tensor):
        raise InputTypeError(f"{what}: u must be a torch.Tensor, got {type(u).__name__}")
    if isinstance(specs, str | bytes) or not isinstance(specs, Sequence):
        raise InputTypeError(f"{what}: specs must be a sequence of PDESpec (one per PDE), got "
                             f"{type(specs).__name__}")
    for index, spec in enumerate(specs):
        if not isinstance(spec, PDESpec):
            raise InputTypeError(f"{what}: specs[{index}] must be a PDESpec, got "
                                 f"{type(spec).__name__}")


def _require_specs(what: str, u: Tensor, specs: Sequence[PDESpec]) -> None:
    """:func:`_check_arguments`, and at least one PDE: else a
    :class:`~eqpdenet.errors.ConfigError` (``max()`` of an empty sequence, raw, before), what
    :func:`unsupported_reason` gives as its reason."""
    _check_arguments(what, u, specs)
    if not specs:
        raise ConfigError(f"{what}: {_NO_PDE}")


def unsupported_reason(u: Tensor, specs: Sequence[PDESpec]) -> str | None:
    """Why the fused operator cannot evolve ``u`` under ``specs`` (None if it can): an empty
    ``specs`` too (the operator needs one PDE). ``u`` not a tensor, or an entry of ``specs`` not
    a :class:`PDESpec`, is an :class:`~eqpdenet.errors.InputTypeError`."""
    _check_arguments("unsupported_reason", u, specs)
    if not specs:
        return _NO_PDE
    reason = transform_reason(u, *(p for s in specs for p in (s.weight, s.bias)))
    if reason is not None:
        return reason
    device = u.device.type
    if device not in IMPLEMENTATIONS:
        return f"the fused kernel has no implementation for {device} tensors"
    if u.dtype not in (torch.float32, torch.float64):
        return f"the fused kernel supports float32 and float64, not {u.dtype}"
    known = DEVICE_INVARIANT_SETS.get(device, KERNEL_INVARIANT_SETS)
    for spec in specs:
        if spec.invariant_set not in known:
            return (f"the fused kernel for {device} tensors has no invariant set "
                    f"{spec.invariant_set!r} (only {', '.join(known)})")
        regularisations = DEVICE_RATIO_REGULARISATIONS.get(device, KERNEL_RATIO_REGULARISATIONS)
        if spec.invariant_set in RATIO_INVARIANT_SETS and (
                spec.ratio_regularisation not in regularisations):
            return (f"the fused kernel for {device} tensors has no ratio regularisation "
                    f"{spec.ratio_regularisation!r} (only {', '.join(regularisations)})")
        if spec.boundary not in KERNEL_BOUNDARIES:
            return f"the fused kernel has no boundary {spec.boundary!r}"
        if not stencil_is_supported(spec.stencil):
            return "the fused kernel supports 3x3 stencils of the central/isotropic form only"
        if spec.boundary == "reflect" and min(u.shape[-2:]) <= 1:  # (the layer refuses it first)
            return (f"the reflect boundary needs images of at least 2x2 pixels, got "
                    f"{u.shape[-2]}x{u.shape[-1]}")
        for parameter in (spec.weight, spec.bias):
            if parameter.dtype != u.dtype or parameter.device != u.device:
                return (f"parameters ({parameter.dtype}, {parameter.device}) and input "
                        f"({u.dtype}, {u.device}) differ in dtype or device")
    return IMPLEMENTATIONS.get(device)(u.device)  # each card judged by its own capability


_warned: set[str] = set()


def warn_once(reason: str) -> None:
    """One warning per reason and process, at the user's line (:func:`warn_at_caller`: a fixed
    ``stacklevel`` named ``pde/layer.py``). Counted once it is out: under a filter that turns it
    into an error, every call raises (it was counted first, and a retry ran silently)."""
    if reason not in _warned:
        warn_at_caller(f"eqpdenet: {reason}", RuntimeWarning)
        _warned.add(reason)


# ----------------------------------------------------------------------------- host copies

# Each cache below keeps, per entry, the _fingerprint of the tensor it was made from and reuses
# the entry only while _unchanged: keyed on identity and version alone, a `.data =` assignment or
# an edit through numpy went unseen, and the fused layer kept computing with the old stencil.
# Device tensor -> (its fingerprint, a CPU copy). Small metadata tensors are read on the host
# (which kernel variant to launch, whether a stencil is supported) without waiting for the device.
_host_copies = WeakIdKeyDictionary()
# Stencil tensor -> (its fingerprint, whether stencil_is_supported).
_supported = WeakIdKeyDictionary()
# The operators' (E, 6, 3, 3) stencils -> (their fingerprint, check_stencil_form's fault or None).
_form_checked = WeakIdKeyDictionary()


def host_copy(t: Tensor) -> Tensor:
    """A CPU copy of a small tensor (to read, not to write): ``t`` itself on the CPU; for a device
    tensor the copy it was uploaded from (:func:`operator_arguments`), else one device-to-host
    read, kept while ``t`` is unchanged: its version counter and storage (:func:`_fingerprint`;
    an edit on the device that bypasses the version counter is not seen)."""
    if t.device.type == "cpu":
        return t
    cached = _host_copies.get(t)
    if cached is not None and _unchanged(t, cached[0]):
        return cached[1]
    copy = t.detach().cpu()
    _host_copies[t] = (_fingerprint(t), copy)
    return copy


def _upload(t: Tensor, device: torch.device) -> Tensor:
    if device.type == "cpu":
        return t
    on_device = t.to(device)
    _host_copies[on_device] = (_fingerprint(on_device), t)
    return on_device


_METADATA: OrderedDict = OrderedDict()
_METADATA_SIZE = 64
# Threads sharing a model look up and evict entries at once (an entry evicted between another
# thread's look-up and its read raised KeyError); m2_op.constant_cache holds a lock the same way.
_METADATA_LOCK = threading.Lock()


def _metadata(specs: Sequence[PDESpec], device: torch.device) -> tuple[Tensor, Tensor]:
    """``monomials`` ``(E, M, 2)`` int64 and ``stencils`` ``(E, 6, 3, 3)`` float64 on ``device``,
    uploaded once per configuration, and again when a stencil's values change: on the CPU any
    change (its values are compared), on a device an in-place change or a ``.data =``
    assignment (:func:`host_copy`; an edit there that bypasses the version counter is not seen).
    """
    recipes = tuple(tuple(spec.monomials) for spec in specs)
    hosts = [host_copy(spec.stencil) for spec in specs]
    # The stencils by identity (the entry keeps them alive, so no id is reused), and reused only
    # while each is unchanged (_unchanged: identity and version missed `.data =` and numpy edits).
    key = (str(device), recipes, tuple(id(h) for h in hosts))
    with _METADATA_LOCK:
        entry = _METADATA.get(key)
        if entry is not None and all(map(_unchanged, hosts, entry[3])):
            _METADATA.move_to_end(key)
            return entry[:2]
    # Outside inference mode: the operator saves them for backward, also in a training step
    # after an evaluation under torch.inference_mode() made this entry.
    with torch.inference_mode(False):
        stencils = torch.stack([h.detach().to(torch.float64).reshape(6, 3, 3) for h in hosts])
        mmax = max(len(recipe) for recipe in recipes)
        monomials = torch.full((len(specs), mmax, 2), -1, dtype=torch.int64)
        for e, recipe in enumerate(recipes):
            monomials[e, :len(recipe)] = torch.tensor(recipe, dtype=torch.int64)
        entry = (_upload(monomials, device), _upload(stencils, device), hosts,
                 [_fingerprint(h) for h in hosts])
    with _METADATA_LOCK:
        _METADATA[key] = entry
        if len(_METADATA) > _METADATA_SIZE:
            _METADATA.popitem(last=False)
    return entry[:2]


# ----------------------------------------------------------------------------- the entry point


def _check_settings(what: str, specs: Sequence[PDESpec]) -> None:
    """Each spec's ``ratio_eps`` positive and finite, else the reference's
    :class:`~eqpdenet.errors.ConfigError` (:class:`~eqpdenet.pde.invariants.RatioRegularisation`
    refuses it for every invariant set: the kernels gave NaN on flat images for 0, took a
    negative one as its absolute value and made every ratio 0 for inf); and each recipe ending
    at its first row with a negative invariant index, that row and every later one the padding
    ``(-1, -1)``, else an :class:`~eqpdenet.errors.InputError` (the kernels stop at that row:
    a real monomial after it was dropped, silently)."""
    for spec in specs:
        eps = spec.ratio_eps
        if not (isinstance(eps, int | float) and not isinstance(eps, bool)
                and 0 < eps < math.inf):
            raise ConfigError(f"ratio regularisation eps must be positive and finite, got "
                              f"{eps!r}")
        rows = [tuple(row) for row in spec.monomials]
        end = next((m for m, row in enumerate(rows) if row[1] < 0), len(rows))
        for m in range(end, len(rows)):
            if rows[m] != (-1, -1):
                raise InputError(f"{what}: monomial {m} of PDE {spec.name!r} must be the padding "
                                 f"(-1, -1), as every row from F's first padding row on, got "
                                 f"{rows[m]}")


def operator_arguments(u: Tensor, specs: Sequence[PDESpec], store_states: bool) -> dict:
    """The named arguments of ``torch.ops.eqpdenet.euler_evolve`` for ``specs`` (weights
    zero-padded to the longest ``F``); differentiable in ``u`` and the specs' parameters. At
    least one spec (else a :class:`~eqpdenet.errors.ConfigError`); a ``ratio_eps`` not positive
    and finite is the reference's :class:`~eqpdenet.errors.ConfigError`, a real monomial after a
    padding row ``(-1, -1)`` of a recipe an :class:`~eqpdenet.errors.InputError`
    (:func:`_check_settings`), both before anything runs."""
    _require_specs("operator_arguments", u, specs)
    _check_settings("operator_arguments", specs)
    mmax = max(len(spec.monomials) for spec in specs)
    weight = torch.stack([torch.nn.functional.pad(spec.weight, (0, mmax - spec.weight.numel()))
                          for spec in specs])
    bias = torch.stack([spec.bias.reshape(()) for spec in specs])
    monomials, stencils = _metadata(specs, u.device)
    return dict(
        u=u.contiguous(), weight=weight.contiguous(), bias=bias.contiguous(),
        monomials=monomials, stencils=stencils,
        invariant_sets=[s.invariant_set for s in specs], boundaries=[s.boundary for s in specs],
        dt=[float(s.dt) for s in specs], ratio_eps=[float(s.ratio_eps) for s in specs],
        ratio_regularisations=[s.ratio_regularisation for s in specs],
        steps=[int(s.steps) for s in specs], check_finite=[bool(s.check_finite) for s in specs],
        store_states=bool(store_states))


def first_bad_per_pde(first_bad: Tensor) -> Tensor:
    """``(B, E)`` first non-finite steps (0: none) -> ``(E,)``, the earliest over the batch."""
    none = torch.iinfo(torch.int32).max
    earliest = torch.where(first_bad > 0, first_bad, none).amin(0)
    return torch.where(earliest == none, 0, earliest)


def fused_evolve(u: Tensor, specs: Sequence[PDESpec], recompute: bool = False) -> Tensor:
    """States at ``T`` of every PDE, ``(B, E, C, H, W)``, by the fused operator (differentiable
    in ``u`` and every ``weight`` and ``bias``).

    With ``recompute``, no intermediate state is kept for the backward pass (it recomputes
    them). Raises :class:`~eqpdenet.errors.NonFiniteStateError` for the PDE (among those with
    ``check_finite``) whose state first became non-finite, after one device-to-host read (or
    records it, see :func:`~eqpdenet.checks.deferred_state_checks`). The caller checks
    :func:`unsupported_reason` first; ``specs`` empty is a :class:`~eqpdenet.errors.ConfigError`
    (its reason there), ``u`` not a tensor or an entry not a :class:`PDESpec` an
    :class:`~eqpdenet.errors.InputTypeError`.
    """
    _require_specs("fused_evolve", u, specs)
    reason = transform_reason(u, *(p for s in specs for p in (s.weight, s.bias)))
    if reason is not None:  # the layer checks first; a direct caller learns it here
        raise NotImplementedError(f"eqpdenet::euler_evolve: {reason}; use the reference PDE "
                                  f"layer (backend='reference')")
    needs_grad = torch.is_grad_enabled() and (
        u.requires_grad or any(s.weight.requires_grad or s.bias.requires_grad for s in specs))
    arguments = operator_arguments(u, specs, store_states=needs_grad and not recompute)
    out, _, first_bad = torch.ops.eqpdenet.euler_evolve(**arguments)
    # (on the CPU, reading first_bad costs nothing: only a failure is reported, unless deferred)
    if any(s.check_finite for s in specs) and len(u) and (
            not first_bad.is_cpu or deferring() or first_bad.any()):
        report_non_finite([s.name for s in specs], [s.dt for s in specs],
                          first_bad_per_pde(first_bad))
    return out
