"""The fused SE(2) invariants of fields on M2, mixed into outputs, as a PyTorch operator.

``torch.ops.eqpdenet.m2_mix_invariants(u, weight, stencils, frame, boundary) -> z``

    ``z[b, o, k, p] = sum_{c, j} weight[o, c, j] I_j(u[b, c])(p, theta_k)``: the first (linear)
    layer of the right-hand side ``F`` of an M2 PDE system applied to the ten left-invariant
    derivatives ``I_j`` of every channel (:data:`eqpdenet.pde.m2.M2_SE2`), without ever writing
    the invariants to memory (``10 C`` maps per pixel and orientation: the hot spot of the
    plain-PyTorch path).

    ========= ===================== ====================================================
    argument  shape / type          meaning
    ========= ===================== ====================================================
    u         (B, C, N, H, W)       fields on M2, float32 or float64
    weight    (O, C, 10)            the mixing, same dtype as ``u``
    stencils  (S, 3, K) float64     1-D Gaussian stencils ``G, G', G''`` of each of ``S``
                                    scale levels, scale normalisation included; the
                                    batch holds ``S`` equal chunks, chunk ``s`` at level
                                    ``s``
    frame     (N, 2) float64        ``cos theta_k, sin theta_k``
    boundary  str                   replicate, zeros, reflect or circular
    ========= ===================== ====================================================

    Returns ``z`` ``(B, O, N, H, W)``.

``torch.ops.eqpdenet.m2_mix_invariants_backward(grad_z, u, weight, stencils, frame, boundary)
-> (grad_u, grad_weight_per_image)``
    The exact adjoint (boundary padding included); the weight's gradient per image in float64
    ``(B, O, C, 10)``, reduced by the autograd formula in a fixed order, so that the result does
    not depend on the number of threads.

``torch.ops.eqpdenet.m2_euler_step(u, w1, b1, w2, b2, stencils, frame, boundary, dt) -> u_next``
    One explicit Euler step of the M2 PDE system whose right-hand side is the pointwise network
    ``F(I) = w2 relu(w1 I + b1) + b2`` of the invariants (``w1 (O, C, 10)``, ``b1 (O,)``,
    ``w2 (C, O)``, ``b2 (C,)``): ``u_next = u + dt F(I(u))``, ``(B, C, N, H, W)``, with its
    backward ``m2_euler_step_backward(grad_next, u, w1, b1, w2, b2, stencils, frame, boundary,
    dt) -> (grad_u, per_image)`` (``per_image`` ``(B, O C 10 + O + C O + C)`` float64: the
    parameters' gradients of each image, in that order). Jet, invariants, both layers and the
    update in one pass per image row: nothing of size ``(B, 10 C, N, H, W)`` or ``(B, O, N, H,
    W)`` is written.

``torch.ops.eqpdenet.m2_update(u, z, scale, shift, w2, b2, dt) -> u_next``
    The rest of a ``network`` term with a batch-normalised hidden layer, and the update:
    ``u + dt (w2 relu(scale z + shift) + b2)``, ``u`` ``(B, C, N, H, W)``, ``z`` ``(B, O, N, H,
    W)`` from ``m2_mix_invariants``, ``scale, shift`` ``(O,)`` the batch norm's affine map
    (computed by the caller from the batch statistics, so that autograd carries their dependence
    on ``z``), ``w2`` ``(C, O)``, ``b2`` ``(C,)``, all of ``u``'s dtype: one pass over the points
    instead of the five or six of batch norm, ReLU, a matrix product, a bias and an addition.
    Backward ``m2_update_backward(grad_next, z, scale, shift, w2, b2, dt) -> (grad_z,
    per_image)`` (``grad_next`` of ``u``'s shape; ``per_image`` ``(B, 2 O + C O + C)`` float64:
    scale, shift, w2, b2); the gradient of ``u`` is ``grad_next``.

Every output of these operators is contiguous, whatever the inputs' strides (their fake
implementations say so too). Autograd is registered here once; the ``cpu`` implementation is the
C++ kernel (``csrc/m2_invariants.cpp``, registered in :mod:`eqpdenet.kernels.cpu`); on ``cuda``,
``m2_mix_invariants`` and ``m2_euler_step`` are the Triton kernels of
:mod:`eqpdenet.kernels.triton_m2` (registered in :mod:`eqpdenet.kernels.cuda`; Triton is imported
only when one runs), and ``m2_update`` has no implementation yet
(:data:`M2_UPDATE_IMPLEMENTATIONS`). Other devices have no implementation:
:func:`m2_unsupported_reason` says so, and the caller uses the plain-PyTorch reference
(:mod:`eqpdenet.pde.m2`), which defines the semantics.

The operators are defined once per process: ``importlib.reload`` of this module raises an
``ImportError`` saying to restart the process, and leaves it as it was
(:func:`~eqpdenet.kernels.op.refuse_reload`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.weak import WeakIdKeyDictionary

from ..registry import Registry
from .op import (
    _LIBRARY,
    KERNEL_BOUNDARIES,
    _fingerprint,
    _unchanged,
    refuse_reload,
    require_first_order,
    transform_reason,
)

refuse_reload(globals())  # it defines operators: it cannot be reloaded (module doc)

__all__ = ["KERNEL_MAX_TAPS", "KERNEL_ORIENTATIONS", "M2_IMPLEMENTATIONS",
           "M2_UPDATE_IMPLEMENTATIONS", "constant_cache", "m2_euler_step", "m2_kernel_reason",
           "m2_mix_invariants", "m2_unsupported_reason", "m2_update", "real_constants"]

#: Numbers of orientations ``N`` the compiled kernels are built for.
KERNEL_ORIENTATIONS = (4, 8, 12, 16)
#: The widest 1-D stencil (``2 R + 1`` taps, the largest scale level's) the kernels take.
KERNEL_MAX_TAPS = 63
#: Device type -> ``unavailable(device)``: None, or why that device's implementation cannot run
#: on ``device`` (a ``torch.device``).
M2_IMPLEMENTATIONS: Registry = Registry("M2 kernel implementation")
#: The same for ``m2_update`` (a device may have the other operators first).
M2_UPDATE_IMPLEMENTATIONS: Registry = Registry("M2 update kernel implementation")

_LIBRARY.define("m2_mix_invariants(Tensor u, Tensor weight, Tensor stencils, Tensor frame, "
                "str boundary) -> Tensor")
_LIBRARY.define("m2_mix_invariants_backward(Tensor grad_z, Tensor u, Tensor weight, "
                "Tensor stencils, Tensor frame, str boundary) -> (Tensor, Tensor)")


@torch.library.register_fake("eqpdenet::m2_mix_invariants", lib=_LIBRARY)
def _fake(u, weight, stencils, frame, boundary):
    batch, _, n, height, width = u.shape
    return u.new_empty(batch, weight.shape[0], n, height, width)


@torch.library.register_fake("eqpdenet::m2_mix_invariants_backward", lib=_LIBRARY)
def _backward_fake(grad_z, u, weight, stencils, frame, boundary):
    # contiguous, as the kernels' outputs (op.py: the fakes; empty_like kept u's strides)
    return u.new_empty(u.shape), u.new_empty(u.shape[0], *weight.shape, dtype=torch.float64)


def _setup_context(ctx, inputs, output):
    u, weight, stencils, frame, boundary = inputs
    ctx.boundary = boundary
    ctx.save_for_backward(u, weight, stencils, frame)


def _backward(ctx, grad_z):
    require_first_order("m2_mix_invariants")
    u, weight, stencils, frame = ctx.saved_tensors
    grad_u, per_image = torch.ops.eqpdenet.m2_mix_invariants_backward(
        grad_z.contiguous(), u, weight, stencils, frame, ctx.boundary)
    grad_weight = per_image.sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
    return (grad_u if ctx.needs_input_grad[0] else None), grad_weight, None, None, None


torch.library.register_autograd("eqpdenet::m2_mix_invariants", _backward,
                                setup_context=_setup_context, lib=_LIBRARY)


_LIBRARY.define("m2_euler_step(Tensor u, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
                "Tensor stencils, Tensor frame, str boundary, float dt) -> Tensor")
_LIBRARY.define("m2_euler_step_backward(Tensor grad_next, Tensor u, Tensor w1, Tensor b1, "
                "Tensor w2, Tensor b2, Tensor stencils, Tensor frame, str boundary, float dt) "
                "-> (Tensor, Tensor)")


@torch.library.register_fake("eqpdenet::m2_euler_step", lib=_LIBRARY)
def _step_fake(u, w1, b1, w2, b2, stencils, frame, boundary, dt):
    return u.new_empty(u.shape)


@torch.library.register_fake("eqpdenet::m2_euler_step_backward", lib=_LIBRARY)
def _step_backward_fake(grad_next, u, w1, b1, w2, b2, stencils, frame, boundary, dt):
    width = w1.numel() + b1.numel() + w2.numel() + b2.numel()
    return u.new_empty(u.shape), u.new_empty(u.shape[0], width, dtype=torch.float64)


def _step_setup_context(ctx, inputs, output):
    u, w1, b1, w2, b2, stencils, frame, boundary, dt = inputs
    ctx.settings = (boundary, dt)
    ctx.save_for_backward(u, w1, b1, w2, b2, stencils, frame)


def _step_backward(ctx, grad_next):
    require_first_order("m2_euler_step")
    u, w1, b1, w2, b2, stencils, frame = ctx.saved_tensors
    grad_u, per_image = torch.ops.eqpdenet.m2_euler_step_backward(
        grad_next.contiguous(), u, w1, b1, w2, b2, stencils, frame, *ctx.settings)
    grads = per_image.sum(0).to(u.dtype).split([w1.numel(), b1.numel(), w2.numel(), b2.numel()])
    shaped = [g.view_as(p) for g, p in zip(grads, (w1, b1, w2, b2), strict=True)]
    return grad_u, *shaped, None, None, None, None


torch.library.register_autograd("eqpdenet::m2_euler_step", _step_backward,
                                setup_context=_step_setup_context, lib=_LIBRARY)


_LIBRARY.define("m2_update(Tensor u, Tensor z, Tensor scale, Tensor shift, Tensor w2, Tensor b2, "
                "float dt) -> Tensor")
_LIBRARY.define("m2_update_backward(Tensor grad_next, Tensor z, Tensor scale, Tensor shift, "
                "Tensor w2, Tensor b2, float dt) -> (Tensor, Tensor)")


@torch.library.register_fake("eqpdenet::m2_update", lib=_LIBRARY)
def _update_fake(u, z, scale, shift, w2, b2, dt):
    return u.new_empty(u.shape)


@torch.library.register_fake("eqpdenet::m2_update_backward", lib=_LIBRARY)
def _update_backward_fake(grad_next, z, scale, shift, w2, b2, dt):
    width = 2 * scale.numel() + w2.numel() + b2.numel()
    return z.new_empty(z.shape), z.new_empty(z.shape[0], width, dtype=torch.float64)


def _update_setup_context(ctx, inputs, output):
    u, z, scale, shift, w2, b2, dt = inputs
    ctx.dt = dt
    ctx.save_for_backward(z, scale, shift, w2, b2)


def _update_backward(ctx, grad_next):
    require_first_order("m2_update")
    z, scale, shift, w2, b2 = ctx.saved_tensors
    grad_z, per_image = torch.ops.eqpdenet.m2_update_backward(
        grad_next.contiguous(), z, scale, shift, w2, b2, ctx.dt)
    grads = per_image.sum(0).to(z.dtype).split([scale.numel(), shift.numel(), w2.numel(),
                                                 b2.numel()])
    shaped = [g.view_as(p) for g, p in zip(grads, (scale, shift, w2, b2), strict=True)]
    return grad_next, grad_z, *shaped, None


torch.library.register_autograd("eqpdenet::m2_update", _update_backward,
                                setup_context=_update_setup_context, lib=_LIBRARY)


def m2_unsupported_reason(u: Tensor, weight: Tensor, boundary: str, radius: int,
                          others: tuple[Tensor | None, ...] = ()) -> str | None:
    """Why :func:`m2_mix_invariants` cannot run on these arguments (None if it can).
    ``others``: the further tensors the fused operator to be called takes (:func:`m2_euler_step`
    and :func:`m2_update` take biases, output weights and a batch norm's affine map), checked
    for a ``torch.func`` transform or a forward-mode tangent as ``u`` and ``weight`` are: any
    one of them makes the fused operators refuse the call."""
    reason = transform_reason(u, weight, *others)
    if reason is not None:
        return reason
    device = u.device.type
    if device not in M2_IMPLEMENTATIONS:
        return f"the fused M2 kernel has no implementation for {device} tensors"
    if u.dtype not in (torch.float32, torch.float64):
        return f"the fused M2 kernel supports float32 and float64, not {u.dtype}"
    if weight.dtype != u.dtype or weight.device != u.device:
        return (f"parameters ({weight.dtype}, {weight.device}) and input ({u.dtype}, {u.device}) "
                f"differ in dtype or device")
    if u.dim() != 5:
        return f"the fused M2 kernel takes fields (B, C, N, H, W), not {u.dim()} dimensions"
    reason = m2_kernel_reason(u.shape[2], boundary, radius)
    if reason is not None:
        return reason
    return M2_IMPLEMENTATIONS.get(device)(u.device)  # each card judged by its own capability


def m2_kernel_reason(orientations: int, boundary: str, radius: int) -> str | None:
    """Why the fused M2 kernels cannot take fields on ``orientations`` orientations with this
    ``boundary`` and widest stencil radius ``radius`` (pixels) on any device, or None: the part
    of :func:`m2_unsupported_reason` that depends on the model's configuration alone (no tensor,
    no device), so that what decides the dispatch also decides the memory estimates
    (``LiftedPDENet.backward_bytes``: the reference it falls back to keeps many times more)."""
    if boundary not in KERNEL_BOUNDARIES:
        return f"the fused M2 kernel has no boundary {boundary!r}"
    if orientations not in KERNEL_ORIENTATIONS:
        return (f"the fused M2 kernel supports {', '.join(map(str, KERNEL_ORIENTATIONS))} "
                f"orientations, not {orientations}")
    if 2 * radius + 1 > KERNEL_MAX_TAPS:
        # the kernel's limit and these stencils' size, each with its own radius (the limit
        # once read "63 taps (radius 32)", the 32 being the stencils')
        return (f"the fused M2 kernel supports stencils of at most {KERNEL_MAX_TAPS} taps "
                f"(radius {KERNEL_MAX_TAPS // 2}); the widest stencil here has {2 * radius + 1} "
                f"(radius {radius})")
    return None


def _refuse_transforms(operator: str, *tensors: Tensor) -> None:
    # The layers check transform_reason first and take the reference; a direct caller learns it
    # here instead of getting zeros for a forward-mode derivative.
    reason = transform_reason(*tensors)
    if reason is not None:
        raise NotImplementedError(f"eqpdenet::{operator}: {reason}; compute through the "
                                  f"plain-PyTorch reference: backend='reference' "
                                  f"(lifted_pde.backend, M2SystemRHS(backend=...)) or "
                                  f"EQPDENET_BACKEND=reference")


# ----------------------------------------------------------------------------- constants


@contextlib.contextmanager
def real_constants() -> Iterator[None]:
    """Build constants to keep across calls (module-level caches, a module's own tables) as real
    tensors even while a model is being traced: every Python dispatch mode is set aside (the
    fake-tensor and proxy modes of ``torch.export``, ``make_fx`` and ``FakeTensorMode``, under
    which a factory gives a FakeTensor that a later call, traced or not, cannot use: the second
    export of a model failed with "We found a fake tensor in the exported program constant's
    list", and any eager model after it with ``GuardOnDataDependentSymNode``), and inference mode
    (a model evaluated under ``torch.inference_mode()`` may train after). Under dynamo
    (``torch.compile``) nothing is set aside: it traces the construction into its graph, and
    :func:`constant_cache` does not store it. Build with an explicit device: a default device
    set by the caller (``with torch.device("meta")``) is a function mode, not set aside."""
    if torch.compiler.is_dynamo_compiling():
        yield
        return
    with _disable_current_modes(), torch.inference_mode(False):
        yield


def _all_real(value) -> bool:
    """Whether every tensor in ``value`` (a tensor or a tuple of them) is a plain tensor: not a
    FakeTensor, a functorch wrapper or another subclass, that only the trace it came from knows."""
    values = value if isinstance(value, tuple) else (value,)
    return all(type(v) is Tensor for v in values if isinstance(v, Tensor))


def constant_cache(maxsize: int = 64) -> Callable[[Callable], Callable]:
    """``functools.lru_cache`` for functions that build read-only constant tensors: the value is
    built inside :func:`real_constants` and stored only where every tensor in it is a plain
    tensor; under dynamo the function is called as it is and nothing is read or stored (it traces
    the construction; its fake values must not outlive the trace). ``cache_clear()`` empties it,
    ``cache_size()`` counts its entries. Arguments are the key (hashable, as for ``lru_cache``);
    at most ``maxsize`` entries are kept, the least recently used evicted first. There is no
    unbounded form: keyed by a continuous value (a Gaussian scale in a hyper-parameter search),
    such a cache grew by every value tried."""
    if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
        raise ValueError(f"constant_cache keeps at most maxsize entries, a positive integer; "
                         f"got {maxsize!r}")

    def decorate(build: Callable) -> Callable:
        store: OrderedDict = OrderedDict()
        lock = threading.Lock()

        @functools.wraps(build)
        def cached(*args, **kwargs):
            if torch.compiler.is_dynamo_compiling():
                return build(*args, **kwargs)
            key = (args, tuple(sorted(kwargs.items())))
            with lock:
                if key in store:
                    store.move_to_end(key)
                    return store[key]
            with real_constants():
                value = build(*args, **kwargs)
            if _all_real(value):
                with lock:
                    store[key] = value
                    if len(store) > maxsize:
                        store.popitem(last=False)
            return value

        cached.cache_clear = store.clear
        cached.cache_size = store.__len__
        return cached

    return decorate


# A small read-only table (stencils, frame) -> {device: (its fingerprint, its copy there)}: the
# copy is made again when the table changes (op._unchanged; its version alone missed `.data =`
# and numpy edits).
_DEVICE_COPIES = WeakIdKeyDictionary()


def _on_device(table: Tensor, device: torch.device) -> Tensor:
    """``table`` on ``device``, copied there once per device, and again when the table changes
    (its values: it is on the CPU; :func:`~eqpdenet.kernels.op._fingerprint`): a call on a GPU
    then copies nothing from the host (which a CUDA graph could not capture)."""
    if table.device == device:
        return table
    if torch.compiler.is_dynamo_compiling():  # traced into the graph; nothing stored
        return table.to(device)
    if type(table) is not Tensor:  # a table itself made by a trace (no storage): not kept
        with real_constants():
            return table.to(device)
    copies = _DEVICE_COPIES.get(table)
    if copies is None:
        copies = _DEVICE_COPIES[table] = {}
    cached = copies.get(device)
    # A real tensor even while tracing (a FakeTensor kept here broke every later call), and
    # outside inference mode: the copy may serve training later (pde.m2.real_constants); the
    # table's values compared outside any dispatch mode too.
    with real_constants():
        if cached is None or not _unchanged(table, cached[0]):
            cached = copies[device] = (_fingerprint(table), table.to(device))
    return cached[1]


def m2_mix_invariants(u: Tensor, weight: Tensor, stencils: Tensor, frame: Tensor,
                      boundary: str) -> Tensor:
    """``(B, O, N, H, W)``: the operator (the caller checks :func:`m2_unsupported_reason`);
    differentiable in ``u`` and ``weight``."""
    _refuse_transforms("m2_mix_invariants", u, weight)
    return torch.ops.eqpdenet.m2_mix_invariants(
        u.contiguous(), weight.contiguous(), _on_device(stencils, u.device),
        _on_device(frame, u.device), boundary)


def m2_euler_step(u: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, stencils: Tensor,
                  frame: Tensor, boundary: str, dt: float) -> Tensor:
    """``u + dt (w2 relu(w1 I(u) + b1) + b2)``: the operator (the caller checks
    :func:`m2_unsupported_reason`); differentiable in ``u`` and the four parameters."""
    _refuse_transforms("m2_euler_step", u, w1, b1, w2, b2)
    return torch.ops.eqpdenet.m2_euler_step(
        u.contiguous(), w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous(),
        _on_device(stencils, u.device), _on_device(frame, u.device), boundary, float(dt))


def m2_update(u: Tensor, z: Tensor, scale: Tensor, shift: Tensor, w2: Tensor, b2: Tensor,
              dt: float) -> Tensor:
    """``u + dt (w2 relu(scale z + shift) + b2)`` (see the module doc; the caller checks
    :data:`M2_UPDATE_IMPLEMENTATIONS`)."""
    _refuse_transforms("m2_update", u, z, scale, shift, w2, b2)
    return torch.ops.eqpdenet.m2_update(u.contiguous(), z.contiguous(), scale.contiguous(),
                                        shift.contiguous(), w2.contiguous(), b2.contiguous(),
                                        float(dt))
