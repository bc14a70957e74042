"""The CPU implementation of the fused PDE evolution: a C++/OpenMP kernel (``csrc/fused_euler.cpp``).

It implements the operators declared in :mod:`eqpdenet.kernels.op` for ``cpu`` tensors. The
extension is built with :func:`torch.utils.cpp_extension.load` the first time it is needed (1-4
minutes) and cached: in ``$EQPDENET_BUILD_DIR`` if set, else under torch's extension directory
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) in ``eqpdenet-py<version>/``.

Processes load the extension one at a time under an ``flock`` of ``<build folder>.lock``, which
the kernel releases however a process ends. A build that finished and was imported once leaves
``<name>.so.complete`` beside its ``<name>.so`` (the file's size and SHA-256, written
under the ``flock`` after the import succeeded); while they agree the file is imported directly,
without ninja: the build's name hashes everything the build depends on, and ninja's up-to-date
check rebuilt a finished build silently, minutes, whenever another ninja was first on ``PATH``
(the ``ninja`` package's 1.13 and a system's 1.11 record a command in ``.ninja_log``
differently, and each found the other's build out of date). A ``.so`` without that file (being
written by a killed build, or built before the file existed) goes through torch's loader and
ninja's check as before. A build runs the ``ninja`` package's ``ninja`` (put first on ``PATH``
for the build), else the one on ``PATH``, so that one environment always builds with one ninja.

torch's own lock (a file ``lock`` in the build folder that its holder deletes) is left behind by
a process killed while loading, and every later process would wait for it for ever; under the
``flock`` no other process can be loading, so such a file is stale and is removed. A build
folder that cannot be written (a read-only mount of a prepared cache) is not locked: a finished
build of exactly this source and these flags (its name hashes them) is loaded from it directly;
without one, the message names ``EQPDENET_BUILD_DIR``. A real build says so on stderr when it
starts (it takes minutes); a build that fails says why in a few lines (no compiler, or the
compiler's error lines), the whole output with ``EQPDENET_DEBUG=1``, and the layers take the
reference. The kernel runs one OpenMP task per image of the batch (and PDE), each doing all
Euler steps in cache-resident buffers: jet (3x3 stencil with the boundary padding), invariants,
``F_theta`` and the update in one pass per step. Its backward is the exact discrete adjoint,
either from the states stored by the forward or, when they were not stored (``recompute``),
recomputing them per image from the input.

The plain PyTorch code in :mod:`eqpdenet.pde` is the reference and defines the semantics; the
kernel agrees with it to rounding (``tests/kernels/``).

The implementations are registered once per process: ``importlib.reload`` of this module raises
an ``ImportError`` saying to restart the process (the notebook's kernel), and leaves it as it was
(:func:`~eqpdenet.kernels.op.refuse_reload`); it said "a kernel implementation named 'cpu' is
already registered (pass replace=True to replace it)", which no caller can do.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import re
import shlex
import shutil
import sys
import sysconfig
import threading
import time
from pathlib import Path

import torch

from ..errors import KernelUnavailableError
from ..process_state import env_flag, path_variable
from .m2_op import M2_IMPLEMENTATIONS, M2_UPDATE_IMPLEMENTATIONS
from .op import _LIBRARY, IMPLEMENTATIONS, check_stencil_form, refuse_reload

refuse_reload(globals())  # it registers implementations: it cannot be reloaded (module doc)

__all__ = ["build_error", "build_seconds", "cpu_name", "extension_states", "is_available",
           "load_extension",
           "load_m2_extension"]

ENV_BUILD_DIR = "EQPDENET_BUILD_DIR"
SOURCE = Path(__file__).parent / "csrc" / "fused_euler.cpp"
M2_SOURCE = Path(__file__).parent / "csrc" / "m2_invariants.cpp"
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
#: Set (not empty), a failed build prints its whole output on stderr (the command line's
#: traceback switch too).
ENV_DEBUG = "EQPDENET_DEBUG"
#: Said on stderr when a real build starts (not when a finished build is loaded), terminal or not:
#: a script, notebook or logged run would otherwise sit silent for minutes.
BUILD_NOTICE = ("eqpdenet: building the fused C++ kernel {source} (first use in this environment; "
                "1-4 minutes)")
#: The longest reason a failed build gives (its compiler's error lines, shortened).
MAX_REASON = 500

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
    """The build folder of extension ``name``. An ``EQPDENET_BUILD_DIR`` that is not a usable
    path (whitespace at an end, a control character: :func:`eqpdenet.process_state.path_variable`)
    is :class:`_Unavailable`, said as a build folder that cannot be written is: the layers take
    the reference, and nothing is made at the path as written."""
    try:
        root = path_variable(ENV_BUILD_DIR)
    except ValueError as error:
        raise _Unavailable(str(error)) from None
    if root is None:
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


class _Unavailable(Exception):
    """Why the extension cannot be built, said as it is."""


class _NotWritable(Exception):
    """The build folder (or its lock file beside it) cannot be written."""


def _open_lock(build_dir: str):
    try:
        return open(build_dir.rstrip(os.sep) + ".lock", "a")
    except OSError as error:
        raise _NotWritable(error.strerror or str(error)) from error


@contextlib.contextmanager
def _build_lock(build_dir: str):
    """Hold the build folder's ``flock``; remove torch's ``lock`` file if a killed process left
    it (module docstring). :class:`_NotWritable` if the lock file cannot be opened."""
    with _open_lock(build_dir) as handle:
        _wait_for(handle, build_dir)  # while another process loads or builds
        try:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(build_dir, "lock"))  # stale: its holder is gone
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compiler() -> str:
    """The compiler torch's build runs (``$CXX``, else ``c++``)."""
    return os.environ.get("CXX", "c++")


def _compiler_missing() -> str | None:
    """Why there is no C++ compiler to build with, or None."""
    compiler = _compiler()
    try:
        program = shlex.split(compiler)[0] if compiler.strip() else ""
    except ValueError:
        program = compiler
    if program and shutil.which(program) is not None:
        return None
    named = f"CXX={compiler!r} is not found" if "CXX" in os.environ else "c++ is not on PATH"
    return f"no C++ compiler found: {named}; install g++ or set CXX"


def _package_ninja() -> str | None:
    """The folder of the ``ninja`` package's ``ninja`` (a dependency: the environment's scripts
    folder, beside its Python), or None where the package or its program is missing."""
    with contextlib.suppress(Exception):  # any problem of the package: as if it were absent
        import ninja

        folder = str(ninja.BIN_DIR or "")
        if folder and shutil.which("ninja", path=folder) is not None:
            return folder
    return None


def _ninja_path() -> str | None:
    """The ``PATH`` a build runs with (torch's build runs ``ninja`` from ``PATH``), or None where
    no ``ninja`` is found. The ``ninja`` package's folder comes first unless the first ``ninja``
    on ``PATH`` is already its program (as activating the environment puts it; it is not on
    ``PATH`` when the environment is used without activating it: ``.venv/bin/python``, a
    notebook's kernel, cron): one environment thus always builds with one ninja, where two
    versions (the package's 1.13, a system's 1.11) record a command in ``.ninja_log``
    differently and each rebuilt what the other had built. Without the package, the ``ninja``
    on ``PATH``, else one beside the environment's Python (added at the end)."""
    path = os.environ.get("PATH", "")
    on_path, package = shutil.which("ninja"), _package_ninja()
    if package is not None:
        if on_path is not None and (os.path.realpath(on_path)
                                    == os.path.realpath(shutil.which("ninja", path=package))):
            return path
        return package + (os.pathsep + path if path else "")
    if on_path is not None:
        return path
    beside = os.path.dirname(sys.executable)
    if shutil.which("ninja", path=beside) is not None:
        return (path + os.pathsep if path else "") + beside
    return None


def _find_ninja() -> bool:
    """Whether a build finds a ``ninja`` (:func:`_ninja_path`)."""
    return _ninja_path() is not None


#: Held while a build runs with :func:`_ninja_first`'s ``PATH``: two threads loading the two
#: extensions would otherwise each restore the other's ``PATH``.
_PATH_LOCK = threading.Lock()


@contextlib.contextmanager
def _ninja_first():
    """``PATH`` as :func:`_ninja_path` makes it for the block, as it was afterwards."""
    with _PATH_LOCK:
        path, saved = _ninja_path(), os.environ.get("PATH")
        if path is None or path == saved:
            yield
            return
        os.environ["PATH"] = path
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("PATH", None)
            else:
                os.environ["PATH"] = saved


def _missing_build_tool() -> str | None:
    """Why no build can start here (no compiler, no ``ninja``), or None."""
    missing = _compiler_missing()
    if missing is None and not _find_ninja():
        missing = "ninja is not installed; pip install ninja"
    return missing


_COMMAND = re.compile(r"\[\d+/\d+\] ")
_CAUSE = re.compile(r"error|not found|undefined reference|cannot find|no such file", re.IGNORECASE)


def _build_failure(text: str, source: Path) -> str:
    """The cause of a failed build in a few lines, from torch's ``Error building extension
    '<name>': <ninja's output>``: the lines that name an error (``error``, ``not found``, ...),
    else the last lines before ``ninja: build stopped``; never the compiler commands ninja echoes
    (700 characters each; one of them is the output's first line, all the reason said before).
    Paths of ``source`` are shortened to its name; the whole is at most :data:`MAX_REASON`
    characters."""
    text = re.sub(r"^Error building extension '[^']*':\s*", "", text.strip())
    lines = [line.rstrip() for line in text.splitlines()]
    commands = {_COMMAND.sub("", line, count=1) for line in lines if _COMMAND.match(line)}
    body = []
    for line in lines:
        if line.startswith("ninja: build stopped"):
            break
        if (line.strip() and not _COMMAND.match(line) and line not in commands
                and not line.startswith(("FAILED:", "ninja: ")) and "-DTORCH_EXTENSION_NAME" not in line):
            body.append(line.strip().replace(str(source.parent) + os.sep, ""))
    picked = [line for line in body if _CAUSE.search(line)][:3] or body[-3:]
    picked = [line if len(line) <= 200 else line[:197] + "..." for line in picked]
    reason = " | ".join(picked) or (lines[0] if lines else "")
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 3] + "..."


def _failure_reason(error: Exception, source: Path) -> str:
    """What a failed load or build says, in one bounded line."""
    text = str(error).strip()
    if isinstance(error, RuntimeError) and text.startswith("Error building extension"):
        missing = _compiler_missing()  # the build found a finished one out of date
        if missing:
            return missing
        return (f"the build failed: {_build_failure(text, source)} "
                f"({ENV_DEBUG}=1 prints the whole build output)")
    first = text.splitlines()[0] if text else ""
    first = first if len(first) <= 300 else first[:297] + "..."
    return f"{type(error).__name__}: {first}"


def _debug() -> bool:
    return env_flag(ENV_DEBUG, False)  # as the command line reads it: 0, false, no, off are off


class _NoCompilerBanner(logging.Filter):
    """Drops torch's warnings about the compiler while there is none: its banner ("Your compiler
    (c++) is not compatible with the compiler Pytorch was built with ...", 900 characters) says
    nothing true of a compiler that does not exist. A compiler that exists keeps the banner."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "compiler" not in str(record.msg).lower()


@contextlib.contextmanager
def _quiet_if_no_compiler():
    if _compiler_missing() is None:
        yield
        return
    logger = logging.getLogger("torch.utils.cpp_extension")
    banner = _NoCompilerBanner()
    logger.addFilter(banner)
    try:
        yield
    finally:
        logger.removeFilter(banner)


@contextlib.contextmanager
def _standard_streams():
    """``sys.stdout`` and ``sys.stderr`` are files for the block: Python sets them to None in a
    process started with the descriptor closed (``2>&-``, ``pythonw``, some daemons), and
    torch's loader calls ``sys.stderr.flush()`` even for a finished build, so that the kernel
    "could not be built" (``'NoneType' object has no attribute 'flush'``) and every layer took
    the reference, 14x slower. A missing one is ``os.devnull`` for the block."""
    saved, opened = (sys.stdout, sys.stderr), []
    try:
        if sys.stdout is None:
            sys.stdout = open(os.devnull, "w", encoding="utf-8")
            opened.append(sys.stdout)
        if sys.stderr is None:
            sys.stderr = open(os.devnull, "w", encoding="utf-8")
            opened.append(sys.stderr)
        yield
    finally:
        sys.stdout, sys.stderr = saved
        for stream in opened:
            stream.close()


#: Beside a build's ``<name>.so``: its size and SHA-256, written once it was built and
#: imported (module docstring: such a build is imported directly, without ninja).
COMPLETE_SUFFIX = ".complete"


def _stamp(path: Path) -> str | None:
    """``path``'s size and SHA-256, or None where it cannot be read. Its content, not its
    modification time: a build folder copied without keeping times (``cp -r``, ``scp``) had its
    finished build compiled again, minutes without a word, or thrown away where no compiler was
    found (about a millisecond per load for the ~1 MB file)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"


def _is_complete(built: Path) -> bool:
    """Whether ``built`` is the file a finished build wrote and imported
    (:func:`_mark_complete`): its ``.complete`` file names its size and SHA-256."""
    stamp = _stamp(built)
    try:
        return stamp is not None and Path(str(built) + COMPLETE_SUFFIX).read_text() == stamp
    except (OSError, UnicodeDecodeError):
        return False


def _mark_complete(built: Path) -> None:
    """Record ``built`` as finished (:func:`_is_complete`), after it was imported; written
    through a temporary file and a rename, so that it is whole or absent. A folder that cannot
    take it loses only the shortcut (ninja checks the build, as before)."""
    stamp = _stamp(built)
    if stamp is None:
        return
    marker = Path(str(built) + COMPLETE_SUFFIX)
    temporary = marker.with_name(marker.name + ".tmp")
    try:
        temporary.write_text(stamp)
        os.replace(temporary, marker)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()


def _load_built(name: str, path: Path):
    """Import a finished build directly (as torch's loader does after its up-to-date check, which
    needs ``ninja`` and writes into the build folder)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        return _extension_name(self.source.read_text(encoding="utf-8"), self.prefix, str(self.source))

    def build_directory(self) -> str:
        return _build_directory(self.name())

    def load(self):
        with self._lock:
            if self.module is not None:
                return self.module
            if self.error is not None:
                raise KernelUnavailableError(self.error)
            start = time.perf_counter()
            try:
                self.module = self._load()
            except _Unavailable as error:
                self.error = f"could not build the C++ extension {self.source.name} ({error})"
                raise KernelUnavailableError(self.error) from error
            except Exception as error:  # noqa: BLE001 - any failure means "use the reference"
                reason = _failure_reason(error, self.source)
                if _debug():
                    print(f"eqpdenet: the failed build of {self.source.name}:\n{error}",
                          file=sys.stderr, flush=True)
                self.error = f"could not build the C++ extension {self.source.name} ({reason})"
                raise KernelUnavailableError(self.error) from error
            self.seconds = time.perf_counter() - start
            return self.module

    def _load(self):
        name, build_dir = self.name(), self.build_directory()
        built = Path(build_dir) / f"{name}.so"
        problem = "no write access"
        try:
            os.makedirs(build_dir, exist_ok=True)
        except OSError as error:  # not writable: said below
            problem = error.strerror or str(error)
        if not os.access(build_dir, os.W_OK):
            if built.is_file():  # a prepared cache: nobody writes it, no lock
                return _load_built(name, built)
            raise _Unavailable(self._not_writable(build_dir, problem))
        try:
            with _build_lock(build_dir):
                if _is_complete(built):  # built and imported before: no ninja (module doc)
                    return _load_built(name, built)
                if not built.is_file():
                    missing = _missing_build_tool()
                    if missing:
                        raise _Unavailable(missing)
                    if sys.stderr is not None:  # None: started with 2>&- (print would go to stdout)
                        print(BUILD_NOTICE.format(source=self.source.name), file=sys.stderr,
                              flush=True)
                elif not _find_ninja():  # torch's loader needs it even for a finished build
                    return _load_built(name, built)
                from torch.utils import cpp_extension

                with _standard_streams(), _quiet_if_no_compiler(), _ninja_first():
                    module = cpp_extension.load(
                        name=name, sources=[str(self.source)], extra_cflags=CFLAGS,
                        extra_ldflags=["-fopenmp"], build_directory=build_dir, verbose=False,
                    )
                _mark_complete(built)  # imported: whole (still under the lock)
                return module
        except _NotWritable as error:
            if built.is_file():
                return _load_built(name, built)
            raise _Unavailable(self._not_writable(build_dir, str(error))) from error

    def _not_writable(self, build_dir: str, problem: str) -> str:
        return (f"its build folder {build_dir} is not writable ({problem}) and holds no finished "
                f"build; set {ENV_BUILD_DIR} to a writable folder")

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


def extension_states() -> dict[str, str]:
    """What each C++ extension this process tried to use came to, by source file: ``"built"``
    (built or loaded), or why not (the layers at ``backend = "auto"`` then ran the plain PyTorch
    reference, which rounds differently); extensions not tried are absent. Recorded beside a
    run's results (``environment.pde_kernels``)."""
    states = {}
    for extension in (_FUSED, _M2):
        if extension.module is not None:
            states[extension.source.name] = "built"
        elif extension.error is not None:
            states[extension.source.name] = extension.error
    return states


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
    check_stencil_form("euler_evolve", stencils)  # the C++ kernel reads only that form's taps
    out, states, first_bad = load_extension().forward(
        u.contiguous(), weight.contiguous(), bias.contiguous(), monomials.contiguous(),
        stencils.contiguous(), list(invariant_sets), list(boundaries), list(dt), list(ratio_eps),
        list(ratio_regularisations), list(steps), list(check_finite), bool(store_states))
    return out, states, first_bad


@torch.library.register_kernel("eqpdenet::euler_evolve_backward", "cpu", lib=_LIBRARY)
def _evolve_backward_cpu(grad_out, u, weight, bias, monomials, stencils, invariant_sets,
                         boundaries, dt, ratio_eps, ratio_regularisations, steps, states):
    check_stencil_form("euler_evolve_backward", stencils)
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
