"""The CPU implementation of the fused PDE evolution: a C++/OpenMP kernel (``csrc/fused_euler.cpp``).

It implements the operators declared in :mod:`eqpdenet.kernels.op` for ``cpu`` tensors. The
extension is built with :func:`torch.utils.cpp_extension.load` the first time it is needed (about
a minute) and cached: in ``$EQPDENET_BUILD_DIR`` if set, else under torch's extension directory
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) in ``eqpdenet-py<version>/``.

Processes load the extension one at a time under an ``flock`` of ``<build folder>.lock``, which
the kernel releases however a process ends. torch's own lock (a file ``lock`` in the build
folder that its holder deletes) is left behind by a process killed while loading, and every
later process would wait for it for ever; under the ``flock`` no other process can be loading,
so such a file is stale and is removed. The kernel runs one OpenMP
task per image of the batch (and PDE), each doing all Euler steps in cache-resident buffers: jet
(3x3 stencil with the boundary padding), invariants, ``F_theta`` and the update in one pass per
step. Its backward is the exact discrete adjoint, either from the states stored by the forward or,
when they were not stored (``recompute``), recomputing them per image from the input.

The plain PyTorch code in :mod:`eqpdenet.pde` is the reference and defines the semantics; the
kernel agrees with it to rounding (``tests/kernels/``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch

from ..errors import KernelUnavailableError
from .op import _LIBRARY, IMPLEMENTATIONS

__all__ = ["build_error", "build_seconds", "is_available", "load_extension"]

ENV_BUILD_DIR = "EQPDENET_BUILD_DIR"
SOURCE = Path(__file__).parent / "csrc" / "fused_euler.cpp"
CFLAGS = ["-O3", "-march=native", "-fopenmp"]

_lock = threading.Lock()
_extension = None
_build_error: str | None = None
_build_seconds: float | None = None

# ----------------------------------------------------------------------------- build


def _extension_name(source: str) -> str:
    key = "\n".join([source, " ".join(CFLAGS), torch.__version__, platform.machine(),
                     platform.processor(), _cpu_model()])
    return "eqpdenet_fused_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _cpu_model() -> str:
    """CPU model and feature flags: the build uses -march=native, so the cache is per CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    model = next((line for line in lines if line.startswith("model name")), "")
    flags = next((line for line in lines if line.startswith("flags")), "")
    return model + "\n" + flags


def _build_directory(name: str) -> str:
    root = os.environ.get(ENV_BUILD_DIR)
    if not root:
        from torch.utils import cpp_extension

        base = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
        root = os.path.join(base, f"eqpdenet-py{sys.version_info[0]}{sys.version_info[1]}")
    return os.path.join(root, name)


@contextlib.contextmanager
def _build_lock(build_dir: str):
    """Hold the build folder's ``flock``; remove torch's ``lock`` file if a killed process left
    it (module docstring)."""
    with open(build_dir.rstrip(os.sep) + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process loads or builds
        try:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(build_dir, "lock"))  # stale: its holder is gone
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_extension():
    """The compiled kernel module, building it on first use; raises
    :class:`~eqpdenet.errors.KernelUnavailableError` if it cannot."""
    global _extension, _build_error, _build_seconds
    with _lock:
        if _extension is not None:
            return _extension
        if _build_error is not None:
            raise KernelUnavailableError(_build_error)
        try:
            from torch.utils import cpp_extension

            source = SOURCE.read_text()
            name = _extension_name(source)
            build_dir = _build_directory(name)
            os.makedirs(build_dir, exist_ok=True)
            start = time.perf_counter()
            with _build_lock(build_dir):
                _extension = cpp_extension.load(
                    name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS,
                    extra_ldflags=["-fopenmp"], build_directory=build_dir, verbose=False,
                )
            _build_seconds = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - any failure means "use the reference"
            message = str(error).strip().splitlines()
            _build_error = (f"could not build the C++ extension ({type(error).__name__}: "
                            f"{message[0] if message else ''})")
            raise KernelUnavailableError(_build_error) from error
        return _extension


def is_available() -> bool:
    """Whether the fused kernel builds (or is already built) on this machine."""
    try:
        load_extension()
    except KernelUnavailableError:
        return False
    return True


def build_error() -> str | None:
    """Why the extension could not be built, or None."""
    return _build_error


def build_seconds() -> float | None:
    """Seconds the (possibly cached) build/load of the extension took in this process."""
    return _build_seconds


# ----------------------------------------------------------------------------- registration


def _unavailable() -> str | None:
    try:
        load_extension()
    except KernelUnavailableError as error:
        return str(error)
    return None


@torch.library.register_kernel("eqpdenet::euler_evolve", "cpu", lib=_LIBRARY)
def _evolve_cpu(u, weight, bias, monomials, stencils, invariant_sets, boundaries, dt, ratio_eps,
                ratio_regularisations, steps, check_finite, store_states):
    out, states, first_bad = load_extension().forward(
        u.contiguous(), weight.contiguous(), bias.contiguous(), monomials.contiguous(),
        stencils.contiguous(), list(invariant_sets), list(boundaries), list(dt), list(ratio_eps),
        list(ratio_regularisations), list(steps), list(check_finite), bool(store_states))
    return out, states, first_bad


@torch.library.register_kernel("eqpdenet::euler_evolve_backward", "cpu", lib=_LIBRARY)
def _evolve_backward_cpu(grad_out, u, weight, bias, monomials, stencils, invariant_sets,
                         boundaries, dt, ratio_eps, ratio_regularisations, steps, states):
    grad_u, per_image = load_extension().backward(
        grad_out.contiguous(), u.contiguous(), weight.contiguous(), bias.contiguous(),
        monomials.contiguous(), stencils.contiguous(), list(invariant_sets), list(boundaries),
        list(dt), list(ratio_eps), list(ratio_regularisations), list(steps), states)
    # Per-image partial sums (float64) reduced here: no two threads add into one parameter.
    grads = per_image.sum(0).to(u.dtype)  # (E, M + 1), the bias last
    return grad_u, grads[:, :-1].contiguous(), grads[:, -1].contiguous()


IMPLEMENTATIONS.register("cpu", _unavailable)
