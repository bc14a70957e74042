"""The CUDA implementation of the fused operators: the Triton kernels of
:mod:`eqpdenet.kernels.triton_euler` (the PDE layer's evolution, ``eqpdenet::euler_evolve``) and
of :mod:`eqpdenet.kernels.triton_m2` (the M2 operators ``eqpdenet::m2_mix_invariants`` and
``eqpdenet::m2_euler_step``), registered for ``cuda`` tensors.

Triton is an optional dependency (``pip install 'eqpdenet[gpu]'``) and is imported only when a
kernel runs, so ``import eqpdenet`` works without it and without a GPU. Where it cannot run
(:func:`unavailable_reason`, :func:`m2_unavailable_reason`: no Triton, Triton older than
:data:`MIN_TRITON`, no CUDA device, a device older than compute capability 8.0: each card is
judged by its own capability), the layers use the plain PyTorch reference with one warning, as
for any unsupported configuration.

Each launcher runs with its tensors' device current
(:func:`eqpdenet.kernels.triton_euler.on_tensor_device`): Triton launches on the current CUDA
device, not on the tensors'. The registered operators judge the tensors' own card as well, so
that a direct call, or a layer that asked about the current card only, never launches on a card
that cannot run the kernels. Neither that nor a kernel that fails to compile (a Triton compiler
error, never an error of the input) is an error: the operator is computed for that configuration
(device, dtype, shape of an item, string and flag arguments), from then on, by its own CPU
implementation (the C++ kernel, the tensors copied to the host and back), with one warning
naming the reason (:func:`_run`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re

import torch
from torch import Tensor

from ..errors import KernelUnavailableError
from .m2_op import M2_IMPLEMENTATIONS
from .op import (
    _LIBRARY,
    DEVICE_INVARIANT_SETS,
    DEVICE_RATIO_REGULARISATIONS,
    IMPLEMENTATIONS,
    refuse_reload,
    warn_once,
)

refuse_reload(globals())  # it registers implementations: it cannot be reloaded (op's doc)

__all__ = ["INVARIANT_SETS", "MIN_CAPABILITY", "MIN_TRITON", "RATIO_REGULARISATIONS",
           "clear_caches", "m2_unavailable_reason", "unavailable_reason"]

#: The invariant sets the Triton kernels compute (``triton_euler.SET_CODES``).
INVARIANT_SETS = ("se2", "scaling")
#: The Triton kernels divide with the paper's absolute ``eps`` only (the covariant mode and
#: ``sim2`` run on the reference there, with one warning).
RATIO_REGULARISATIONS = ("absolute",)

#: Oldest compute capability the Triton kernels are built for.
MIN_CAPABILITY = (8, 0)
#: Oldest Triton the kernels are written for (pyproject.toml's ``triton>=3.2``).
MIN_TRITON = (3, 2)


def _kernels():
    from . import triton_euler

    return triton_euler


def _m2_kernels():
    from . import triton_m2

    return triton_m2


# ----------------------------------------------------------------------------- availability


def _triton_version() -> str | None:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:  # another distribution ships the module
        try:
            import triton
        except Exception:  # noqa: BLE001 - reported when the kernels are loaded
            return None
        return getattr(triton, "__version__", None)


@functools.cache
def _installation_reason() -> str | None:
    """Why the installed Triton cannot run the kernels (missing, too old), or None."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'eqpdenet[gpu]')"
    version = _triton_version()
    found = re.match(r"(\d+)\.(\d+)", version or "")
    if found and (int(found.group(1)), int(found.group(2))) < MIN_TRITON:
        # An older Triton fails inside its compiler at the first launch, not at import.
        return (f"the Triton kernels need Triton {MIN_TRITON[0]}.{MIN_TRITON[1]} or newer, "
                f"{version} is installed (pip install -U 'eqpdenet[gpu]')")
    return None


def _device_index(device) -> int:
    """The CUDA device index of ``device`` (None, a ``cuda`` device without an index: the
    current device)."""
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    device = torch.device(device)
    return torch.cuda.current_device() if device.index is None else device.index


@functools.cache
def _device_reason(load, index: int) -> str | None:
    """Why the kernels (``load`` imports their module) cannot run on CUDA device ``index``."""
    capability = tuple(torch.cuda.get_device_capability(index))
    if capability < MIN_CAPABILITY:
        return (f"the Triton kernels need compute capability {MIN_CAPABILITY[0]}."
                f"{MIN_CAPABILITY[1]} or newer, cuda:{index} has {capability[0]}.{capability[1]}")
    try:
        load()
    except Exception as error:  # noqa: BLE001 - any failure means "use the reference"
        message = str(error).strip().splitlines()
        return (f"the Triton kernels could not be loaded ({type(error).__name__}: "
                f"{message[0] if message else ''})")
    return None


def _reason(load, device) -> str | None:
    reason = _installation_reason()
    if reason is not None:
        return reason
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return _device_reason(load, _device_index(device))


def unavailable_reason(device: torch.device | str | int | None = None) -> str | None:
    """Why the Triton kernels of the PDE layer cannot run on ``device`` (default: the current
    CUDA device), or None; answered once per process and device."""
    return _reason(_kernels, device)


def m2_unavailable_reason(device: torch.device | str | int | None = None) -> str | None:
    """Why the Triton kernels of the M2 operators cannot run on ``device`` (default: the current
    CUDA device), or None; answered once per process and device."""
    return _reason(_m2_kernels, device)


def clear_caches() -> None:
    """Forget the answers of :func:`unavailable_reason`, :func:`m2_unavailable_reason` and the
    configurations whose kernels failed to compile (tests)."""
    _installation_reason.cache_clear()
    _device_reason.cache_clear()
    _failed.clear()


# ----------------------------------------------------------------------------- launching


@functools.cache
def _compile_errors() -> tuple[type[BaseException], ...]:
    """Triton's compiler errors (front end, resources, ptxas), where this Triton has them; the
    interpreter's InterpreterError is not among them (it reports the input's faults)."""
    from triton.compiler import errors as compiler_errors
    from triton.runtime import errors as runtime_errors

    names = ((compiler_errors, "CompilationError"), (runtime_errors, "OutOfResources"),
             (runtime_errors, "PTXASError"))
    return tuple(getattr(module, name) for module, name in names if hasattr(module, name))


def _compile_failure(error: BaseException) -> bool:
    if isinstance(error, _compile_errors()):
        return True
    # An MLIR pass of the compiler failing surfaces as a bare RuntimeError from C++.
    return type(error) is RuntimeError and "PassManager::run failed" in str(error)


#: (operator, configuration) -> why its kernel did not compile: computed on the CPU since.
_failed: dict[tuple, str] = {}


def _configuration(args) -> tuple:
    """What selects a compiled kernel variant, roughly: the dtype and the shape of an item of
    every tensor (not the batch), the string and flag arguments."""
    key = []
    for arg in args:
        if isinstance(arg, Tensor):
            key.append((str(arg.device), arg.dtype, tuple(arg.shape[1:])))
        elif isinstance(arg, (str, bool)):
            key.append(arg)
        elif isinstance(arg, (list, tuple)) and all(isinstance(a, (str, bool)) for a in arg):
            key.append(tuple(arg))
    return tuple(key)


def _on_cpu(name: str, args, device: torch.device, reason: str):
    """``torch.ops.eqpdenet.<name>`` on host copies of ``args`` (the C++ kernel), the results
    copied back to ``device``."""
    cpu_reason = IMPLEMENTATIONS.get("cpu")() if name.startswith("euler") else (
        M2_IMPLEMENTATIONS.get("cpu")())
    if cpu_reason is not None:
        raise KernelUnavailableError(f"eqpdenet::{name}: {reason}, and its CPU implementation "
                                     f"is unavailable too: {cpu_reason}")
    host = [arg.detach().cpu() if isinstance(arg, Tensor) else arg for arg in args]
    result = getattr(torch.ops.eqpdenet, name)(*host)
    if isinstance(result, Tensor):
        return result.to(device)
    return tuple(r.to(device) for r in result)


def _run(name: str, reason_of, launch, args):
    """The operator ``name`` on ``args`` by ``launch`` (the Triton launcher), unless the
    tensors' card cannot run the kernels (``reason_of(device)``) or this configuration's kernel
    failed to compile: then by the CPU implementation, with one warning naming the reason."""
    device = args[0].device
    reason = reason_of(device)
    if reason is None and _failed:
        reason = _failed.get((name, _configuration(args)))
    if reason is None:
        try:
            return launch(*args)
        except Exception as error:
            if not _compile_failure(error):
                raise
            # the last line: a CompilationError's first lines are the source excerpt
            message = str(error).strip().splitlines()
            reason = (f"the Triton kernel of eqpdenet::{name} did not compile for this "
                      f"configuration ({type(error).__name__}: {message[-1] if message else ''})")
            _failed[(name, _configuration(args))] = reason
    warn_once(f"{reason}; eqpdenet::{name} runs on the CPU (C++ kernel) instead, copying its "
              f"tensors from and to {device}")
    return _on_cpu(name, args, device, reason)


# ----------------------------------------------------------------------------- registration


def _evolve_cuda(u, weight, bias, monomials, stencils, invariant_sets, boundaries, dt, ratio_eps,
                 ratio_regularisations, steps, check_finite, store_states):
    def launch(u, weight, bias, monomials, stencils, invariant_sets, boundaries, dt, ratio_eps,
               ratio_regularisations, steps, check_finite, store_states):
        return _kernels().forward(u, weight, bias, monomials, stencils, invariant_sets,
                                  boundaries, dt, ratio_eps, steps, check_finite, store_states,
                                  ratio_regularisations=ratio_regularisations)

    return _run("euler_evolve", unavailable_reason, launch,
                (u, weight, bias, monomials, stencils, invariant_sets, boundaries, dt, ratio_eps,
                 ratio_regularisations, steps, check_finite, store_states))


def _evolve_backward_cuda(grad_out, u, weight, bias, monomials, stencils, invariant_sets,
                          boundaries, dt, ratio_eps, ratio_regularisations, steps, states):
    def launch(grad_out, u, weight, bias, monomials, stencils, invariant_sets, boundaries, dt,
               ratio_eps, ratio_regularisations, steps, states):
        return _kernels().backward(grad_out, u, weight, bias, monomials, stencils,
                                   invariant_sets, boundaries, dt, ratio_eps, steps, states,
                                   ratio_regularisations=ratio_regularisations)

    return _run("euler_evolve_backward", unavailable_reason, launch,
                (grad_out, u, weight, bias, monomials, stencils, invariant_sets, boundaries, dt,
                 ratio_eps, ratio_regularisations, steps, states))


# (registered apart, not as decorators, so that the functions stay callable: tests)
torch.library.register_kernel("eqpdenet::euler_evolve", "cuda", _evolve_cuda, lib=_LIBRARY)
torch.library.register_kernel("eqpdenet::euler_evolve_backward", "cuda", _evolve_backward_cuda, lib=_LIBRARY)
IMPLEMENTATIONS.register("cuda", unavailable_reason)
DEVICE_INVARIANT_SETS["cuda"] = INVARIANT_SETS
DEVICE_RATIO_REGULARISATIONS["cuda"] = RATIO_REGULARISATIONS


def _m2_cuda(u, weight, stencils, frame, boundary):
    return _run("m2_mix_invariants", m2_unavailable_reason,
                lambda *args: _m2_kernels().mix_forward(*args),
                (u, weight, stencils, frame, boundary))


def _m2_backward_cuda(grad_z, u, weight, stencils, frame, boundary):
    return _run("m2_mix_invariants_backward", m2_unavailable_reason,
                lambda *args: _m2_kernels().mix_backward(*args),
                (grad_z, u, weight, stencils, frame, boundary))


def _m2_step_cuda(u, w1, b1, w2, b2, stencils, frame, boundary, dt):
    return _run("m2_euler_step", m2_unavailable_reason,
                lambda *args: _m2_kernels().step_forward(*args),
                (u, w1, b1, w2, b2, stencils, frame, boundary, dt))


def _m2_step_backward_cuda(grad_next, u, w1, b1, w2, b2, stencils, frame, boundary, dt):
    return _run("m2_euler_step_backward", m2_unavailable_reason,
                lambda *args: _m2_kernels().step_backward(*args),
                (grad_next, u, w1, b1, w2, b2, stencils, frame, boundary, dt))


torch.library.register_kernel("eqpdenet::m2_mix_invariants", "cuda", _m2_cuda, lib=_LIBRARY)
torch.library.register_kernel("eqpdenet::m2_mix_invariants_backward", "cuda", _m2_backward_cuda, lib=_LIBRARY)
torch.library.register_kernel("eqpdenet::m2_euler_step", "cuda", _m2_step_cuda, lib=_LIBRARY)
torch.library.register_kernel("eqpdenet::m2_euler_step_backward", "cuda", _m2_step_backward_cuda,
                              lib=_LIBRARY)
M2_IMPLEMENTATIONS.register("cuda", m2_unavailable_reason)
