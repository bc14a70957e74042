"""Argument checks, in one place, used once at each public entry point.

Images are checked by :func:`check_images` where they enter the library (a layer's or a model's
``forward``, :func:`~eqpdenet.pde.stencils.jet`), not again at every internal call. Layers and
models also check the values (:func:`check_values`: one pass over the input, one host
synchronisation per call, an :class:`~eqpdenet.errors.InputError` for NaN or inf saying the input
is at fault), the device (:func:`check_device`: the module's, before any work) and the dtype
(:func:`match_dtype`). Numbers in constructors and configurations go
through :func:`require` and the helpers below, which raise :class:`~eqpdenet.errors.ConfigError`
naming the field.

Dtypes. A module computes in the dtype of its parameters. An input of lower precision (float16 or
bfloat16 into a float32 module, float32 into a float64 one) is computed in the module's dtype and
the result returned in the input's dtype: explicit Euler steps ``u + dt F(u)`` in float16 would
lose most of each small update. An input of higher precision than the module (float64 into a
float32 module) is an error rather than a silent loss of the precision asked for. A module cast
to float16 or bfloat16 computes in it, as asked, but where that costs more than the precision's
own rounding it says so, once per module and dtype (:func:`warn_low_precision`: the planar PDE
layer, whose ratio invariants came out 10-15 % off at that precision; the lifted model, within
6e-3 of float64 in float16, is not warned about).

The finiteness of PDE states is checked on the device: integrators report, per PDE, the first
Euler step whose state was not finite as a tensor (:func:`report_non_finite`), read back once per
call, or, inside :func:`deferred_state_checks`, not at all until the caller asks (a training
loop on a GPU reads once per epoch; a CUDA graph cannot read at all while it is captured).

Exporting. While a model is traced into a graph for another runtime (:func:`exporting`: inside
:func:`export_mode`, or under :func:`torch.export.export`), nothing may read a tensor's values on
the host: :func:`check_values` and :func:`report_non_finite` check nothing, integrators compute
no finiteness flags, and every layer takes its plain PyTorch reference path
(:func:`eqpdenet.kernels.resolve_backend`). An exported graph therefore has no value checks: a NaN
in gives NaN logits out (docs/deployment.md).

Inside ``torch.func.vmap`` no value can be read on the host either (a batched tensor has no
storage of its own): :func:`vmapped` tensors are not checked, as while exporting, and the layers
take their plain-PyTorch path (the fused operators have no batching rule).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks

from .errors import ConfigError, InputError, InputTypeError, NonFiniteStateError, warn_at_caller

__all__ = [
    "StateReports",
    "evaluation_mode",
    "input_checked",
    "is_input_checked",
    "check_device",
    "check_images",
    "batched",
    "check_values",
    "match_dtype",
    "non_finite_hint",
    "module_device",
    "module_dtype",
    "deferred_state_checks",
    "deferring",
    "export_mode",
    "exporting",
    "first_failed_step",
    "hooks_registered",
    "report_non_finite",
    "transformed",
    "untrained_batch_norms",
    "untrained_statistics_hint",
    "vmapped",
    "warn_low_precision",
    "require",
    "require_finite",
    "require_int",
    "require_lists",
    "require_nonnegative",
    "require_positive",
]


def require(condition: bool, field: str, message: str) -> None:
    """Raise ``ConfigError("invalid config: <field>: <message>")`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"invalid config: {field}: {message}")


def fixed_after_build(name: str, doc: str, get=None) -> property:
    """A read-only attribute ``name`` of a module whose stencils, weights or caches are built
    from it: read from ``self._<name>`` (or ``get(self)``); setting it calls
    ``self._fixed(name)``, which raises the class's :class:`ConfigError` (one set after
    building was half applied: the caches kept the old value)."""
    return property(get or (lambda self: getattr(self, "_" + name)),
                    lambda self, value: self._fixed(name), doc=doc)


def require_lists(config, prefix: str = "") -> None:
    """The fields of the dataclass ``config`` annotated as lists, as lists: a tuple or another
    sequence (how the Python API often spells one) becomes the list a configuration file would
    have given, so that configurations compare, save and fingerprint alike; a value that is no
    sequence, or a string, raises a ``ConfigError`` naming the field (``prefix + name``). Called
    first in a configuration's ``__post_init__``, before any check reads an entry."""
    for spec in dataclasses.fields(config):
        if not str(spec.type).startswith("list"):
            continue
        value = getattr(config, spec.name)
        if isinstance(value, Sequence) and not isinstance(value, str | bytes | list):
            value = list(value)
            setattr(config, spec.name, value)
        require(isinstance(value, list), prefix + spec.name,
                f"must be a list, got {type(value).__name__} {value!r}")


def require_per_layer(config, prefix: str, first: str, second: str, what: str) -> None:
    """The list fields ``first`` and ``second`` of ``config`` hold one entry per stage (or
    layer) each, at least one: an empty ``first`` is named itself ("must hold at least one
    entry"), and lists of different lengths name both fields with their lengths (the message
    named ``second`` alone, which the user had often left as it was, when ``first`` changed)."""
    a, b = getattr(config, first), getattr(config, second)
    require(len(a) >= 1, prefix + first, f"must hold at least one entry (one per {what}), got "
            f"{a!r}")
    require(len(a) == len(b), f"{prefix}{first} / {prefix}{second}",
            f"need one entry each per {what}: {first} {a!r} has {len(a)}, {second} {b!r} has "
            f"{len(b)}")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_finite(value, field: str) -> float:
    """A finite real number (``bool`` is not a number here)."""
    require(_is_real(value) and math.isfinite(value), field,
            f"must be a finite number, got {value!r}")
    return float(value)


def require_positive(value, field: str) -> float:
    """A finite number ``> 0``."""
    value = require_finite(value, field)
    require(value > 0, field, f"must be positive, got {value!r}")
    return value


def require_nonnegative(value, field: str) -> float:
    """A finite number ``>= 0``."""
    value = require_finite(value, field)
    require(value >= 0, field, f"must be >= 0, got {value!r}")
    return value


def _shown_int(value) -> str:
    """An integer as a message shows it: in full up to 20 digits, else like ``1.2e+300`` (a
    Python integer has no size limit, and a 300-digit one hides the message)."""
    text = repr(value)
    digits = len(text.lstrip("-"))
    if digits <= 20:
        return text
    try:
        return f"{float(value):.3g}"
    except OverflowError:  # beyond float's range (about 1.8e308)
        return f"an integer of {digits} digits"


def require_int(value, field: str, minimum: int | None = None,
                maximum: int | None = None) -> int:
    """An integer (not a ``bool``) that fits in 64 bits, at least ``minimum`` and at most
    ``maximum`` where given."""
    require(isinstance(value, numbers.Integral) and not isinstance(value, bool), field,
            f"must be an integer, got {value!r}")
    require(-(2**63) <= value < 2**63, field,
            f"must be below 2**63, got {_shown_int(value)}")
    if minimum is not None:
        require(value >= minimum, field, f"must be >= {minimum}, got {value!r}")
    if maximum is not None:
        require(value <= maximum, field, f"must be <= {maximum:,}, got {value!r}")
    return int(value)


def check_images(u, what: str = "images", *, channels: int | None = None,
                 size: tuple[int, int] | None = None) -> Tensor:
    """Raise a clear error unless ``u`` is a floating-point ``(B, C, H, W)`` tensor.

    ``channels`` and ``size`` (height, width), where given, must match as well.
    """
    if not isinstance(u, Tensor):
        raise InputTypeError(f"{what} must be a torch.Tensor, got {type(u).__name__}")
    if u.dim() != 4:
        raise InputError(
            f"{what} must have shape (batch, channels, height, width), got {tuple(u.shape)}"
        )
    if not u.is_floating_point():
        raise InputTypeError(f"{what} must be a floating-point tensor, got dtype {u.dtype}")
    expected = (channels if channels is not None else u.shape[1],
                *(size if size is not None else u.shape[2:]))
    if tuple(u.shape[1:]) != tuple(expected):
        raise InputError(f"expected {what} of shape (batch, {expected[0]}, {expected[1]}, "
                         f"{expected[2]}), got {tuple(u.shape)}")
    return u



def transformed(tensor: Tensor) -> bool:
    """Whether ``tensor`` is wrapped by a ``torch.func`` transform (``vmap``, ``grad``, ``jvp``,
    ``jacrev``, ...): the fused operators, which have no batching rule and no forward-mode
    derivative, must not take it (:func:`eqpdenet.kernels.op.transform_reason`).

    While Dynamo traces (``torch.compile``, ``torch.export``) the answer is whether a transform
    is active at all (:func:`_compiled_transform`), not whether this tensor is wrapped."""
    if torch.compiler.is_compiling():
        return _compiled_transform()
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def vmapped(tensor: Tensor) -> bool:
    """Whether ``tensor`` is batched by ``torch.func.vmap`` (at any level of nested
    ``torch.func`` transforms): its values cannot be read on the host.

    While Dynamo traces, True inside any ``torch.func`` transform (:func:`_compiled_transform`):
    no value can be read on the host there."""
    if torch.compiler.is_compiling():
        return _compiled_transform()
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor):
        if functorch.is_batchedtensor(tensor):
            return True
        tensor = functorch.get_unwrapped(tensor)
    return False


def batched(tensor: Tensor | None) -> bool:
    """Whether ``tensor`` is wrapped by a ``torch.func`` transform or batched by the vmap that
    ``torch.autograd.grad(..., is_grads_batched=True)`` and ``jacobian(..., vectorize=True)``
    use (a "legacy" batched tensor): a backward that updates a tensor in place cannot take it.
    While Dynamo traces (``torch.compile``), whether a ``torch.func`` transform is active at all
    (the functorch predicates are builtins it cannot trace; legacy batching does not reach it)."""
    if tensor is None:
        return False
    if torch.compiler.is_compiling():
        return _compiled_transform()
    functorch = torch._C._functorch
    return functorch.is_functorch_wrapped_tensor(tensor) or functorch.is_legacy_batchedtensor(tensor)


def _compiled_transform() -> bool:
    """Whether Dynamo traces inside a ``torch.func`` transform (one in the compiled function, or
    one around the compiled call), asked of the transform stack.

    ``torch._C._functorch.is_functorch_wrapped_tensor`` is a builtin Dynamo cannot trace: it broke
    the graph at every call, with Dynamo's warning of many lines, and under a transform a graph
    break is an error. ``torch._C._are_functorch_transforms_active`` is folded into a constant
    and guarded. The tensors Dynamo traces are fake tensors, wrapped only by a transform on that
    stack; a tensor a transform does not wrap (a buffer under ``vmap``) counts as wrapped here:
    it takes the plain-PyTorch path, which every transform supports, and is not read on the host,
    which inside a transform Dynamo cannot do (it would break the graph)."""
    return torch._C._are_functorch_transforms_active()


def check_values(u: Tensor, what: str = "images") -> tuple[float, float]:
    """``(min, max)`` of ``u``; :class:`~eqpdenet.errors.InputError` if ``u`` holds NaN or inf
    (their counts, and the index of the first in ``u``'s order).

    One pass over ``u`` and one device-to-host read (both extremes together); ``(0.0, 0.0)`` for
    an empty tensor, and, unchecked, while a CUDA graph is being captured (no host read is
    possible there; the same step ran checked before the capture, see
    :mod:`eqpdenet.app.accelerate`), :func:`exporting` (a graph for another runtime has no
    host reads), on the ``meta`` device (shapes without values, for shape inference) or inside
    ``torch.func.vmap`` (:func:`vmapped`).

    Under ``torch.compile`` the read and the check run outside the traced graph (a function of
    ``torch.compiler.disable``, a graph break): traced, the resumed frame branched on the two
    Python floats read, so Dynamo guarded on them (``___stack1[0] == 0.000297...``) and
    recompiled for every batch of another minimum or maximum, until ``recompile_limit`` left the
    frame to eager. The error on NaN or inf is the same there.
    """
    if (u.numel() == 0 or u.is_meta or (u.is_cuda and torch.cuda.is_current_stream_capturing())
            or exporting() or vmapped(u)):
        return 0.0, 0.0
    if torch.compiler.is_compiling():
        return _extremes_outside_graph(u, what)
    return _extremes(u, what)


def _extremes(u: Tensor, what: str) -> tuple[float, float]:
    """:func:`check_values` past its exemptions: the one pass, the one read, the error."""
    with torch.no_grad():
        low, high = torch.stack(torch.aminmax(u.detach())).tolist()  # NaN propagates into both
    if math.isfinite(low) and math.isfinite(high):
        return low, high
    with torch.no_grad():  # the error path only: count what is wrong, and where it starts
        bad = ~torch.isfinite(u.detach())
        nan = int(torch.isnan(u).sum())
        inf = int(bad.sum()) - nan
        first = [int(i) for i in torch.nonzero(bad)[0].tolist()]
        value = float(u.detach()[tuple(first)])
    raise InputError(f"{what} contains non-finite values ({nan} NaN, {inf} inf of {u.numel()}): "
                     f"the input is at fault, not the PDE scheme; check how it was produced "
                     f"(the first at index {first}: {value})")


#: :func:`_extremes` through ``torch.compiler.disable``, made at the first compilation that
#: reaches it (``torch.compiler.disable`` loads the compiler, which ``import eqpdenet`` must not);
#: one function for the process, so that Dynamo's guard on it holds after that.
_EXTREMES_OUTSIDE_GRAPH: list = []


def _extremes_outside_graph(u: Tensor, what: str) -> tuple[float, float]:
    """:func:`_extremes` where Dynamo traces: run eagerly, at a graph break, so that the floats
    it reads are never constants of a traced frame."""
    if not _EXTREMES_OUTSIDE_GRAPH:
        _EXTREMES_OUTSIDE_GRAPH.append(torch.compiler.disable(_extremes))
    return _EXTREMES_OUTSIDE_GRAPH[0](u, what)


def module_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype a module computes in: that of its first floating-point parameter or buffer."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):  # stops at the first
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def module_device(module: nn.Module) -> torch.device | None:
    """The device a module computes on: that of its first parameter or buffer (None if it has
    none)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return None


def check_device(u: Tensor, module: nn.Module, what: str = "images") -> None:
    """An :class:`~eqpdenet.errors.InputError` naming both devices unless ``u`` is on the device
    of ``module``'s parameters and buffers (:func:`module_device`; a module without any takes
    every device): checked where the input enters, before any work, rather than left to the
    first operator that mixes the two (``Tensor on device cpu is not on the expected device
    meta!``, in either order). No host read: shapes-only uses (the ``meta`` device, tracing,
    ``torch.compile``, ``torch.export``) check it as well."""
    device = module_device(module)
    if device is None or u.device == device:
        return
    raise InputError(f"{what}: the input is on device {u.device} but {type(module).__name__}'s "
                     f"parameters are on {device}: move the input (.to({str(device)!r})) or the "
                     f"module (.to({str(u.device)!r})) so that both are on one device")


def _finer(a: torch.dtype, b: torch.dtype) -> bool:
    """Whether dtype ``a`` represents every value of ``b`` (more precision, no less range)."""
    fa, fb = torch.finfo(a), torch.finfo(b)
    return fa.eps < fb.eps and fa.max >= fb.max


def match_dtype(u: Tensor, dtype: torch.dtype | None, what: str = "images") -> Tensor:
    """``u`` in the module's ``dtype`` (see the module docstring): lower precision is converted
    up, higher precision is an :class:`~eqpdenet.errors.InputTypeError`."""
    if dtype is None or u.dtype == dtype:
        return u
    if _finer(dtype, u.dtype):
        return u.to(dtype)
    raise InputTypeError(
        f"{what} is {u.dtype} but the module computes in {dtype}: convert the module "
        f"(module.to({u.dtype})) to compute in {u.dtype}, or the input ({what}.to({dtype}))")


#: Module -> the low-precision dtypes :func:`warn_low_precision` warned about (weakly: a module
#: deleted leaves nothing behind).
_low_precision_warned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def warn_low_precision(module: nn.Module, cost: str, applies=None) -> None:
    """One ``UserWarning`` per module and dtype where ``module`` computes in float16 or
    bfloat16 (:func:`module_dtype`) and ``applies()`` (a callable, asked only then; None:
    always) says the cost is the module's, naming the dtype and ``cost`` (what that precision
    was measured to cost it), and advising float32. Nothing while Dynamo traces (a warning
    there would break the graph). Counted once it is out: under a filter that turns it into an
    error, every call raises."""
    dtype = module_dtype(module)
    if dtype not in (torch.float16, torch.bfloat16) or torch.compiler.is_compiling():
        return
    warned = _low_precision_warned.setdefault(module, set())
    if dtype in warned:
        return
    if applies is not None and not applies():
        warned.add(dtype)  # asked once per dtype
        return
    warn_at_caller(f"eqpdenet: {type(module).__name__} computes in {dtype}: {cost}; keep it in "
                   f"float32 (module.float(): a {dtype} input is then computed in float32 and "
                   f"returned in {dtype}), outside torch.autocast", UserWarning)
    warned.add(dtype)


def hooks_registered(modules: Iterable[nn.Module]) -> bool:
    """Whether a forward, forward pre-, backward or backward pre-hook is registered on any of
    ``modules``, or globally (``torch.nn.modules.module``'s global hooks): decided from the hook
    dictionaries alone, at no cost to speak of. A fused operator calls no modules, so a layer
    that has one takes its reference path (which calls its modules, so that their hooks fire)
    whenever this is True: :class:`~eqpdenet.pde.layer.PDELayer`, the lifted model's pieces
    (old-style ``torch.nn.utils.weight_norm`` is a forward pre-hook that recomputes ``weight``:
    read without it, the weight is a stale tensor of an earlier graph)."""
    if (module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks
            or module_hooks._global_backward_hooks or module_hooks._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               or m._backward_pre_hooks for m in modules)


# ----------------------------------------------------------------------------- batch norms


def untrained_batch_norms(model: nn.Module,
                          within: Iterable[nn.Module | None] | None = None) -> list[str]:
    """The names (in ``model``) of its batch norms that normalise by running statistics that
    were never learned: in evaluation mode, with running statistics, never updated
    (``num_batches_tracked`` 0, or absent) and still at their initial values (mean 0, variance
    1; a checkpoint of PyTorch before 0.4.1, without ``num_batches_tracked``, loads it as 0 with
    trained statistics). Such a batch norm normalises nothing: it passes its input on, scaled by
    its weight. Where ``within`` is given, only the batch norms inside those modules (the ones
    a state went through). Reads the statistics on the host: for error paths."""
    inside = None if within is None else {
        id(sub) for part in within if part is not None for sub in part.modules()}
    names = []
    for name, norm in model.named_modules():
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.training:
            continue
        if inside is not None and id(norm) not in inside:
            continue
        mean, var, count = norm.running_mean, norm.running_var, norm.num_batches_tracked
        if (mean is None or var is None or mean.is_meta or var.is_meta
                or isinstance(mean, nn.parameter.UninitializedBuffer)):
            continue  # batch statistics in evaluation mode too, or no values to judge
        if count is not None and not count.is_meta and int(count) != 0:
            continue
        with torch.no_grad():
            if bool((mean == 0).all()) and bool((var == 1).all()):
                names.append(name or type(norm).__name__)
    return names


def untrained_statistics_hint(model: nn.Module,
                              within: Iterable[nn.Module | None] | None = None) -> str | None:
    """The first explanation of a :class:`~eqpdenet.errors.NonFiniteStateError` raised by
    ``model`` when batch norms it applied before the failing state are
    :func:`untrained_batch_norms` (None when there are none): in evaluation mode they normalise
    nothing, so a model that was never trained (or whose statistics were never learned) feeds its
    PDEs states of a size they were not made for, whatever ``dt`` and the learning rate."""
    names = untrained_batch_norms(model, within)
    if not names:
        return None
    shown = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
    return (f"The model's batch-norm statistics are untrained: {shown} "
            f"{'is' if len(names) == 1 else 'are'} in evaluation mode with the running "
            f"statistics {type(model).__name__} was built with (mean 0, variance 1, never "
            f"updated), so {'it normalises' if len(names) == 1 else 'they normalise'} nothing; "
            f"evaluate a trained model, or call it in training mode first (model.train()) so "
            f"that the batch norms learn the data's statistics. Otherwise:")


def non_finite_parameters(module: nn.Module) -> list[str]:
    """The names of ``module``'s parameters that hold a NaN or an inf (meta parameters, which
    hold no values, are not read). A stability check reports these instead of analysing them:
    every Euler step with such a coefficient gives a non-finite state, and LAPACK's
    eigenvalue routines crash the process on a NaN matrix (MKL's ``zgebal``)."""
    return [name for name, p in module.named_parameters()
            if not p.is_meta and not bool(torch.isfinite(p.detach()).all())]


def non_finite_hint(model: nn.Module, hint: str,
                    within: Iterable[nn.Module | None] | None = None) -> str:
    """The explanation a model gives to a :class:`~eqpdenet.errors.NonFiniteStateError` of its
    PDEs: ``hint`` (the input's range, the scheme), preceded by
    :func:`untrained_statistics_hint` where that applies. Every model family that raises the
    error explains it through this."""
    untrained = untrained_statistics_hint(model, within)
    return f"{untrained} {hint}" if untrained else hint


# ----------------------------------------------------------------------------- checked inputs

# The modules whose input the caller has checked, per thread (a ContextVar: each thread, and each
# asyncio task, sees its own; set and reset, never mutated, so a copied context is not shared).
_checked_modules: ContextVar[frozenset[int] | None] = ContextVar("eqpdenet_checked_modules",
                                                                 default=None)


class input_checked:
    """``with input_checked(*modules):`` the caller has checked what it passes to ``modules``
    (shape, finite values, the modules' dtype): their entry checks are skipped for the block, in
    this thread only (:func:`is_input_checked`).

    Eagerly, the modules' ids are held in a context variable, set on entry and reset on exit
    (nesting and exceptions are safe): a module called from another thread meanwhile, or from
    elsewhere after the block, is still checked, and nothing is stored on the module (a copy or a
    pickle of it carries nothing). The flag was an attribute of each module, saved and restored:
    two threads calling one model interleaved their saves and left it set for good (round 9).
    While ``torch.compile`` or ``torch.export`` traces, the attribute ``_input_checked`` is used
    instead, which Dynamo traces without a graph break. Modules without entry checks ignore it.
    """

    def __init__(self, *modules: nn.Module):
        self.modules = modules
        self.previous: list[bool] = []
        self.token = None

    # object.__setattr__: what nn.Module.__setattr__ does for a plain attribute, without its
    # look-ups (this runs twice per Euler step).
    def __enter__(self) -> None:
        if torch.compiler.is_compiling():
            self.previous = [getattr(m, "_input_checked", False) for m in self.modules]
            for module in self.modules:
                object.__setattr__(module, "_input_checked", True)
        else:
            held = _checked_modules.get()
            ids = frozenset(id(module) for module in self.modules)
            self.token = _checked_modules.set(ids if held is None else held | ids)

    def __exit__(self, *exc) -> None:
        if self.token is not None:
            token, self.token = self.token, None
            _checked_modules.reset(token)
        else:
            for module, previous in zip(self.modules, self.previous, strict=True):
                object.__setattr__(module, "_input_checked", previous)


def is_input_checked(module: nn.Module) -> bool:
    """Whether ``module`` is called inside :class:`input_checked` naming it, in this thread."""
    if torch.compiler.is_compiling():
        return getattr(module, "_input_checked", False)
    held = _checked_modules.get()
    return held is not None and id(module) in held


@contextmanager
def evaluation_mode(model) -> Iterator[None]:
    """The block with ``model`` in evaluation mode (``model.eval()``), and afterwards every
    submodule in the mode it had, each by its own flag: ``model.train(was_training)`` set every
    submodule to the top module's mode, which made a batch norm frozen (``.eval()``) inside a
    model in training mode trainable again, and a classifier in evaluation mode wrapped in a
    module in training mode come back in training mode (its dropout on). Anything that is not an
    ``nn.Module`` (a function) is called as it is."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        # parents first (modules() is in that order): a module's train() sets its whole subtree,
        # so each module's own flag is set last by itself; only where it changed (a module's own
        # train() may do work: e2cnn's expands its filters)
        for module, training in modes:
            if module.training != training:
                module.train(training)


# ----------------------------------------------------------------------------- exporting

_exporting: ContextVar[bool] = ContextVar("eqpdenet_exporting", default=False)


@contextmanager
def export_mode() -> Iterator[None]:
    """Trace models for another runtime: inside the block, :func:`exporting` is True (no host
    reads, the reference path of every fused operator; see the module docstring).

    Example:
        >>> with export_mode():
        ...     check_values(torch.tensor([[[[float("nan")]]]]))  # not read while exporting
        (0.0, 0.0)
    """
    token = _exporting.set(True)
    try:
        yield
    finally:
        _exporting.reset(token)


def exporting() -> bool:
    """Whether a model is being traced into a graph for another runtime: inside
    :func:`export_mode` or :func:`torch.export.export` (which the ONNX exporter uses too)."""
    return _exporting.get() or torch.compiler.is_exporting()


# ----------------------------------------------------------------------------- PDE states


class StateReports:
    """Reports of non-finite PDE states kept on the device (see :func:`deferred_state_checks`).

    Each report is the names and time steps of ``E`` PDEs and an integer tensor ``(E,)``: the
    first Euler step whose state was not finite, 0 where every state was.
    """

    def __init__(self):
        self.names: list[str] = []
        self.dts: list[float] = []
        self.first_bad: list[Tensor] = []

    def add(self, names: Sequence[str], dts: Sequence[float], first_bad: Tensor) -> None:
        self.names += list(names)
        self.dts += [float(dt) for dt in dts]
        self.first_bad.append(first_bad.reshape(-1).to(torch.int64))

    def flags(self) -> Tensor | None:
        """Every report in order as one int64 vector on the device (None if there is none)."""
        return torch.cat(self.first_bad) if self.first_bad else None

    def raise_first(self, flags: Tensor | None = None) -> None:
        """Raise :class:`~eqpdenet.errors.NonFiniteStateError` for the first PDE, in report
        order, with a non-finite state, reading ``flags`` (default :meth:`flags`) once."""
        flags = self.flags() if flags is None else flags
        if flags is not None:
            _raise_first(self.names, self.dts, flags.cpu().tolist())


_pending: ContextVar[StateReports | None] = ContextVar("eqpdenet_state_reports", default=None)


@contextmanager
def deferred_state_checks() -> Iterator[StateReports]:
    """Collect the reports of :func:`report_non_finite` instead of reading them at once.

    Example:
        >>> with deferred_state_checks() as reports:
        ...     report_non_finite(["pde0"], [0.1], torch.tensor([0]))
        >>> reports.raise_first()  # one host read for everything inside the block
    """
    reports = StateReports()
    token = _pending.set(reports)
    try:
        yield reports
    finally:
        _pending.reset(token)


def deferring() -> bool:
    """Whether reports are being collected by :func:`deferred_state_checks` (then every check must
    report, failed or not, so that the reports keep their layout from one call to the next)."""
    return _pending.get() is not None


def report_non_finite(names: Sequence[str], dts: Sequence[float], first_bad: Tensor) -> None:
    """``first_bad`` ``(E,)``: per PDE, the first Euler step whose state was not finite (0: none).

    Raises :class:`~eqpdenet.errors.NonFiniteStateError` for the first such PDE after one
    device-to-host read, or, inside :func:`deferred_state_checks`, records the report there;
    while :func:`exporting`, on the ``meta`` device or inside ``torch.func.vmap`` (no values to
    report), does nothing.
    """
    if exporting() or first_bad.is_meta or vmapped(first_bad):
        return
    reports = _pending.get()
    if reports is not None:
        reports.add(names, dts, first_bad)
        return
    if first_bad.is_cuda and torch.cuda.is_current_stream_capturing():
        raise ConfigError("checking PDE states for NaN/inf needs a host read, which a CUDA graph "
                         "cannot capture: capture inside eqpdenet.checks.deferred_state_checks() "
                         "(and read its reports after replaying), or set check_finite=False")
    _raise_first(names, dts, first_bad.reshape(-1).cpu().tolist())


def first_failed_step(finite: Sequence[Tensor]) -> Tensor:
    """``(1,)`` int64: the first (1-based) position in ``finite`` (0-d bool tensors, one per Euler
    step) that is False, or 0; computed on the device, without a host read."""
    bad = ~torch.stack(list(finite))
    return torch.where(bad.any(), bad.to(torch.int32).argmax() + 1, 0).reshape(1)


def _raise_first(names: Sequence[str], dts: Sequence[float], values: Sequence[int]) -> None:
    for name, dt, step in zip(names, dts, values, strict=True):
        if step > 0:
            raise NonFiniteStateError(name, int(step), dt)
