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
import sysconfig
import threading
import time
from pathlib import Path

import torch

from ..errors import KernelUnavailableError
from .m2_op import M2_IMPLEMENTATIONS, M2_UPDATE_IMPLEMENTATIONS
from .op import _LIBRARY, IMPLEMENTATIONS

__all__ = ["build_error", "build_seconds", "cpu_name", "is_available", "load_extension",
           "load_m2_extension"]

ENV_BUILD_DIR = "EQPDENET_BUILD_DIR"
SOURCE = Path(__file__).parent / "csrc" / "fused_euler.cpp"
M2_SOURCE = Path(__file__).parent / "csrc" / "m2_invariants.cpp"
CFLAGS = ["-O3", "-march=native", "-fopenmp"]

# ----------------------------------------------------------------------------- build


def _extension_name(source: str, prefix: str = "eqpdenet_fused_", path: str = "") -> str:
    """The build's name: a hash of everything its compiler command and result depend on
    (``source``: the text; ``path``: where it lies, which the command names). The torch and
    Python headers are named by their folders, so two environments (two virtual environments
    with the same torch version, two checkouts) get a build each: sharing one, each process
    found the other's command in ninja's log and rebuilt, minutes each, while the others
    waited."""
    key = "\n".join([source, " ".join(CFLAGS), torch.__version__, platform.machine(),
                     platform.processor(), _cpu_model(), os.path.dirname(torch.__file__),
                     sysconfig.get_paths()["include"], os.environ.get("CXX", ""), path])
    return prefix + hashlib.sha256(key.encode()).hexdigest()[:16]


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return []


def _cpu_model() -> str:
    """CPU model and feature flags: the build uses -march=native, so the cache is per CPU."""
    lines = _cpuinfo_lines()
    model = next((line for line in lines if line.startswith("model name")), "")
    flags = next((line for line in lines if line.startswith("flags")), "")
    return model + "\n" + flags


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux: ``model name``, or ``Hardware``
    and ``Processor`` on some ARM kernels; else :func:`platform.processor`), ``""`` where
    nothing says. Results record it: one seed gives the same numbers on one kind of CPU only
    (float32 kernels for AVX2 and AVX-512 round differently, and training grows the difference)."""
    for line in _cpuinfo_lines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Processor"):
            return value.strip()
    return platform.processor()


def _build_directory(name: str) -> str:
    root = os.environ.get(ENV_BUILD_DIR)
    if not root:
        from torch.utils import cpp_extension

        base = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
        root = os.path.join(base, f"eqpdenet-py{sys.version_info[0]}{sys.version_info[1]}")
    return os.path.join(root, name)


#: Seconds of waiting for another process's build before saying so on stderr (loading a
#: built extension takes well under a second; a build, a minute or more).
WAIT_NOTICE = 5.0


def _wait_for(handle, build_dir: str) -> None:
    """The exclusive ``flock`` of ``handle``, waiting as long as it takes; said once on stderr
    after :data:`WAIT_NOTICE` seconds (a process waiting silently for minutes looks hung)."""
    deadline = time.monotonic() + WAIT_NOTICE
    while time.monotonic() < deadline:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.1)
    print(f"eqpdenet: waiting for another process that builds or loads the C++ kernel in "
          f"{build_dir}", file=sys.stderr, flush=True)
    fcntl.flock(handle, fcntl.LOCK_EX)


@contextlib.contextmanager
def _build_lock(build_dir: str):
    """Hold the build folder's ``flock``; remove torch's ``lock`` file if a killed process left
    it (module docstring)."""
    with open(build_dir.rstrip(os.sep) + ".lock", "a") as handle:
        _wait_for(handle, build_dir)  # while another process loads or builds
        try:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(build_dir, "lock"))  # stale: its holder is gone
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Extension:
    """One C++ source built into one extension module on first use (once per process)."""

    def __init__(self, source: Path, prefix: str):
        self.source, self.prefix = source, prefix
        self.module = None
        self.error: str | None = None
        self.seconds: float | None = None
        self._lock = threading.Lock()

    def name(self) -> str:
        """The build's name (:func:`_extension_name`)."""
        return _extension_name(self.source.read_text(), self.prefix, str(self.source))

    def build_directory(self) -> str:
        return _build_directory(self.name())

    def load(self):
        with self._lock:
            if self.module is not None:
                return self.module
            if self.error is not None:
                raise KernelUnavailableError(self.error)
            try:
                from torch.utils import cpp_extension

                name, build_dir = self.name(), self.build_directory()
                os.makedirs(build_dir, exist_ok=True)
                start = time.perf_counter()
                with _build_lock(build_dir):
                    if sys.stderr.isatty() and not any(Path(build_dir).glob(f"{name}*.so")):
                        print(f"eqpdenet: building the C++ kernel {self.source.name} (once per "
                              f"CPU and environment, about a minute)", file=sys.stderr,
                              flush=True)
                    self.module = cpp_extension.load(
                        name=name, sources=[str(self.source)], extra_cflags=CFLAGS,
                        extra_ldflags=["-fopenmp"], build_directory=build_dir, verbose=False,
                    )
                self.seconds = time.perf_counter() - start
            except Exception as error:  # noqa: BLE001 - any failure means "use the reference"
                message = str(error).strip().splitlines()
                self.error = (f"could not build the C++ extension {self.source.name} "
                              f"({type(error).__name__}: {message[0] if message else ''})")
                raise KernelUnavailableError(self.error) from error
            return self.module

    def unavailable(self, device=None) -> str | None:
        """Why the extension cannot run (``device``: the registry's signature, unused: one
        build serves every CPU tensor), or None."""
        try:
            self.load()
        except KernelUnavailableError as error:
            return str(error)
        return None


_FUSED = _Extension(SOURCE, "eqpdenet_fused_")
_M2 = _Extension(M2_SOURCE, "eqpdenet_m2_")


def load_extension():
    """The compiled kernel of ``eqpdenet::euler_evolve``, building it on first use; raises
    :class:`~eqpdenet.errors.KernelUnavailableError` if it cannot."""
    return _FUSED.load()


def load_m2_extension():
    """The compiled kernel of ``eqpdenet::m2_mix_invariants`` (same rules)."""
    return _M2.load()


def is_available() -> bool:
    """Whether the fused kernel builds (or is already built) on this machine."""
    return _FUSED.unavailable() is None


def build_error() -> str | None:
    """Why the extension could not be built, or None."""
    return _FUSED.error


def build_seconds() -> float | None:
    """Seconds the (possibly cached) build/load of the extension took in this process."""
    return _FUSED.seconds


# ----------------------------------------------------------------------------- registration


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
        list(dt), list(ratio_eps), list(ratio_regularisations), list(steps),
        states.contiguous())
    # Per-image partial sums (float64) reduced here: no two threads add into one parameter.
    grads = per_image.sum(0).to(u.dtype)  # (E, M + 1), the bias last
    return grad_u, grads[:, :-1].contiguous(), grads[:, -1].contiguous()


IMPLEMENTATIONS.register("cpu", _FUSED.unavailable)


@torch.library.register_kernel("eqpdenet::m2_mix_invariants", "cpu", lib=_LIBRARY)
def _m2_cpu(u, weight, stencils, frame, boundary):
    return load_m2_extension().forward(u.contiguous(), weight.contiguous(), stencils.contiguous(),
                                       frame.contiguous(), boundary)


@torch.library.register_kernel("eqpdenet::m2_mix_invariants_backward", "cpu", lib=_LIBRARY)
def _m2_backward_cpu(grad_z, u, weight, stencils, frame, boundary):
    grad_u, per_image = load_m2_extension().backward(
        grad_z.contiguous(), u.contiguous(), weight.contiguous(), stencils.contiguous(),
        frame.contiguous(), boundary)
    return grad_u, per_image.view(u.shape[0], *weight.shape)


@torch.library.register_kernel("eqpdenet::m2_euler_step", "cpu", lib=_LIBRARY)
def _m2_step_cpu(u, w1, b1, w2, b2, stencils, frame, boundary, dt):
    return load_m2_extension().step_forward(u.contiguous(), w1.contiguous(), b1.contiguous(),
                                            w2.contiguous(), b2.contiguous(),
                                            stencils.contiguous(), frame.contiguous(), boundary,
                                            float(dt))


@torch.library.register_kernel("eqpdenet::m2_euler_step_backward", "cpu", lib=_LIBRARY)
def _m2_step_backward_cpu(grad_next, u, w1, b1, w2, b2, stencils, frame, boundary, dt):
    grad_u, per_image = load_m2_extension().step_backward(
        grad_next.contiguous(), u.contiguous(), w1.contiguous(), b1.contiguous(),
        w2.contiguous(), b2.contiguous(), stencils.contiguous(), frame.contiguous(), boundary,
        float(dt))
    return grad_u, per_image


@torch.library.register_kernel("eqpdenet::m2_update", "cpu", lib=_LIBRARY)
def _m2_update_cpu(u, z, scale, shift, w2, b2, dt):
    return load_m2_extension().update_forward(u.contiguous(), z.contiguous(), scale.contiguous(),
                                              shift.contiguous(), w2.contiguous(),
                                              b2.contiguous(), float(dt))


@torch.library.register_kernel("eqpdenet::m2_update_backward", "cpu", lib=_LIBRARY)
def _m2_update_backward_cpu(grad_next, z, scale, shift, w2, b2, dt):
    grad_z, per_image = load_m2_extension().update_backward(
        grad_next.contiguous(), z.contiguous(), scale.contiguous(), shift.contiguous(),
        w2.contiguous(), b2.contiguous(), float(dt))
    return grad_z, per_image


M2_IMPLEMENTATIONS.register("cpu", _M2.unavailable)
M2_UPDATE_IMPLEMENTATIONS.register("cpu", _M2.unavailable)
