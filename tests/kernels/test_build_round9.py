"""Building and loading the C++ kernel, said as it is (round 9 audit).

* No compiler: the reason was torch's compile command (700 characters) with the cause cut off,
  after a 900-character banner about an incompatible compiler; now "no C++ compiler found".
* A failed compile: the compiler's error line, not the command line.
* A real build (minutes) says so on stderr also when stderr is not a terminal (a script, a
  notebook, a logged run sat silent).
* A prepared kernel in a read-only folder was not used (``OSError: Read-only file system`` on
  the lock file, then the reference, 10x slower); it is now loaded directly, and a read-only
  folder without one names ``EQPDENET_BUILD_DIR``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from eqpdenet.errors import KernelUnavailableError
from eqpdenet.kernels import cpu

SRC = str(Path(__file__).resolve().parents[2] / "src")
NOTICE = ("eqpdenet: building the fused C++ kernel fused_euler.cpp (first use in this "
          "environment; 1-4 minutes)\n")


def _env(**changes) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("EQPDENET_DEBUG", None)
    env.update(changes)
    return env


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)


def _fresh(monkeypatch, build_dir: Path) -> cpu._Extension:
    """The fused kernel's extension as a new process sees it, building into ``build_dir``."""
    monkeypatch.setenv(cpu.ENV_BUILD_DIR, str(build_dir))
    return cpu._Extension(cpu.SOURCE, "eqpdenet_fused_")


# ----------------------------------------------------------------------------- no compiler

_REPORT = "from eqpdenet.kernels import cpu; print(cpu.is_available()); print(cpu.build_error())"


@pytest.mark.parametrize("missing", ["CXX", "PATH"])
def test_without_a_compiler_the_reason_is_that_there_is_none(tmp_path, missing):
    if missing == "CXX":
        env = _env(CXX=str(tmp_path / "no-such-compiler" / "g++"))
        named = f"CXX='{tmp_path / 'no-such-compiler' / 'g++'}' is not found"
    else:
        (tmp_path / "bin").mkdir()  # nothing in it: no c++, no ninja
        env = _env(PATH=str(tmp_path / "bin"))
        env.pop("CXX", None)
        named = "c++ is not on PATH"
    env[cpu.ENV_BUILD_DIR] = str(tmp_path / "build")
    done = _run(_REPORT, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "False", f"could not build the C++ extension fused_euler.cpp (no C++ compiler found: "
                 f"{named}; install g++ or set CXX)"]
    assert done.stderr == ""  # no banner about the compiler, no build notice: nothing was built


# ----------------------------------------------------------------------------- a failed compile


def _compile_failure(name: str) -> RuntimeError:
    """torch's error for a compile error, as ``cpp_extension.load`` raises it (a real one takes
    half a minute to make: the torch headers)."""
    command = (f"c++ -MMD -MF fused_euler.o.d -DTORCH_EXTENSION_NAME={name} "
               f"-DTORCH_API_INCLUDE_EXTENSION_H -isystem /venv/lib/python3.11/site-packages/torch/"
               f"include -fPIC -std=c++20 -O3 -march=native -fopenmp -c {cpu.SOURCE} -o fused_euler.o")
    return RuntimeError(
        f"Error building extension '{name}': [1/2] {command}\nFAILED: [code=1] fused_euler.o \n"
        f"{command}\n{cpu.SOURCE}: In function 'int f()':\n"
        f"{cpu.SOURCE}:2:18: error: 'undefined_thing' was not declared in this scope\n"
        f"    2 | int f() {{ return undefined_thing; }}\n      |                  ^~~~~~~~~~~~~~~\n"
        f"ninja: build stopped: subcommand failed.\n")


def test_a_failed_compile_gives_the_compilers_error_line(tmp_path, monkeypatch, capsys):
    from torch.utils import cpp_extension

    extension = _fresh(monkeypatch, tmp_path / "build")
    failure = _compile_failure(extension.name())

    def load(**options):
        raise failure

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(cpu, "_missing_build_tool", lambda: None, raising=False)  # a compiler
    monkeypatch.setattr(cpu, "_compiler_missing", lambda: None, raising=False)
    monkeypatch.delenv("EQPDENET_DEBUG", raising=False)
    with pytest.raises(KernelUnavailableError) as caught:
        extension.load()
    assert str(caught.value) == (
        "could not build the C++ extension fused_euler.cpp (the build failed: fused_euler.cpp:2:18: "
        "error: 'undefined_thing' was not declared in this scope (EQPDENET_DEBUG=1 prints the "
        "whole build output))")
    capsys.readouterr()

    monkeypatch.setenv("EQPDENET_DEBUG", "1")
    with pytest.raises(KernelUnavailableError):
        _fresh(monkeypatch, tmp_path / "build2").load()
    err = capsys.readouterr().err
    assert f"eqpdenet: the failed build of fused_euler.cpp:\n{failure}" in err
    assert "-DTORCH_EXTENSION_NAME" in err  # the whole output, commands included


def test_the_reason_of_a_failed_link_or_of_a_compiler_not_found_by_ninja():
    source = Path("/src/k.cpp")
    link = ("Error building extension 'x': [1/2] c++ -c /src/k.cpp -o k.o\n[2/2] c++ k.o -shared "
            "-lfoo -o x.so\nFAILED: x.so\nc++ k.o -shared -lfoo -o x.so\n/usr/bin/ld: cannot find "
            "-lfoo: No such file or directory\ncollect2: error: ld returned 1 exit status\n"
            "ninja: build stopped: subcommand failed.\n")
    assert cpu._build_failure(link, source) == (
        "/usr/bin/ld: cannot find -lfoo: No such file or directory | collect2: error: ld "
        "returned 1 exit status")
    killed = ("Error building extension 'x': [1/2] c++ -c /src/k.cpp -o k.o\nFAILED: k.o\n"
              "c++ -c /src/k.cpp -o k.o\nc++: fatal signal\nKilled signal terminated program "
              "cc1plus\nninja: build stopped: subcommand failed.\n")
    assert cpu._build_failure(killed, source) == (
        "c++: fatal signal | Killed signal terminated program cc1plus")  # the last lines
    long = "Error building extension 'x': " + "\n".join(f"k.cpp:{i}:1: error: {'x' * 300}"
                                                        for i in range(9))
    assert len(cpu._build_failure(long, source)) <= cpu.MAX_REASON


# ----------------------------------------------------------------------------- the build notice


def test_a_real_build_says_so_on_stderr_without_a_terminal(tmp_path, monkeypatch, capsys):
    from torch.utils import cpp_extension

    built = object()
    calls = []

    def load(**options):
        calls.append(options["name"])
        return built

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(cpu, "_missing_build_tool", lambda: None, raising=False)
    monkeypatch.setattr(cpu, "_find_ninja", lambda: True, raising=False)
    assert not sys.stderr.isatty()  # captured
    extension = _fresh(monkeypatch, tmp_path / "build")
    assert extension.load() is built
    assert capsys.readouterr().err == NOTICE

    folder = Path(extension.build_directory())  # a finished build: loaded, not built
    (folder / f"{extension.name()}.so").write_bytes(b"")
    assert _fresh(monkeypatch, tmp_path / "build").load() is built
    assert capsys.readouterr().err == ""
    assert len(calls) == 2


# ----------------------------------------------------------------------------- read-only cache


def _prepared_cache(tmp_path: Path) -> Path:
    """A copy of this environment's finished fused kernel in ``tmp_path/cache`` (the folder
    ``EQPDENET_BUILD_DIR`` names), as a read-only image or shared mount would hold it."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: the fused kernel cannot be built here")
    try:
        cpu.load_extension()
    except KernelUnavailableError as error:
        pytest.fail(f"a C++ compiler exists but the fused kernel did not build: {error}")
    name = cpu._FUSED.name()
    folder = tmp_path / "cache" / name
    folder.mkdir(parents=True)
    shutil.copy2(Path(cpu._FUSED.build_directory()) / f"{name}.so", folder / f"{name}.so")
    return tmp_path / "cache"


#: The kernel against the reference, in a new process (the module is not imported twice here).
_CHECK = """
import torch
from eqpdenet import PDELayer
from eqpdenet.kernels import cpu
{patch}
assert cpu.is_available(), cpu.build_error()
torch.manual_seed(0)
layer = PDELayer.build(["se2", "scaling"], T=0.3, dt=0.1, stencil="central", init="heat",
                       init_scale=0.1, init_noise=0.01)
x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
layer = layer.double()
layer.backend = "fused"
fused = layer(x)
assert cpu._FUSED.module is not None
layer.backend = "reference"
assert torch.allclose(fused, layer(x), rtol=1e-10, atol=1e-12)
print("fused kernel loaded")
"""

#: The lock file cannot be opened, as on a read-only mount (where also root cannot write).
_READ_ONLY = """
import builtins, errno, os
def _open(path, *args, **kwargs):
    if str(path).endswith(".lock"):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return builtins.open(path, *args, **kwargs)
cpu.open = _open
"""


def test_a_prepared_kernel_on_a_read_only_mount_is_loaded(tmp_path):
    cache = _prepared_cache(tmp_path)
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    done = _run(_CHECK.format(patch=_READ_ONLY), _env(**{cpu.ENV_BUILD_DIR: str(cache)}))
    assert done.returncode == 0 and done.stdout == "fused kernel loaded\n", done.stderr
    assert done.stderr == ""
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before  # nothing written


def test_a_prepared_kernel_in_a_folder_without_write_permission_is_loaded(tmp_path):
    cache = _prepared_cache(tmp_path)
    folder = next(cache.iterdir())
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in (cache, folder)}
    for path in modes:
        path.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root, whom chmod does not stop from writing (the read-only "
                        "mount is simulated by the previous test)")
        done = _run(_CHECK.format(patch=""), _env(**{cpu.ENV_BUILD_DIR: str(cache)}))
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert done.returncode == 0 and done.stdout == "fused kernel loaded\n", done.stderr
    assert done.stderr == ""


def test_a_read_only_build_folder_without_the_kernel_names_the_variable(tmp_path, monkeypatch):
    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(cpu, "open", read_only, raising=False)
    extension = _fresh(monkeypatch, tmp_path / "cache")
    with pytest.raises(KernelUnavailableError) as caught:
        extension.load()
    assert str(caught.value) == (
        f"could not build the C++ extension fused_euler.cpp (its build folder "
        f"{extension.build_directory()} is not writable (Read-only file system) and holds no "
        f"finished build; set EQPDENET_BUILD_DIR to a writable folder)")


# ----------------------------------------------------------------------------- ninja off PATH


def test_ninja_of_the_environment_is_found_when_the_environment_is_not_activated(tmp_path,
                                                                                monkeypatch):
    """``ninja`` (a dependency) lies beside the environment's Python, off ``PATH`` when that
    Python is run without activating the environment; torch runs ``ninja`` from ``PATH``."""
    ninja = pytest.importorskip("ninja", reason="the ninja package is not installed")
    folder = str(ninja.BIN_DIR)
    if shutil.which("ninja", path=folder) is None:
        pytest.skip(f"the ninja package has no program in {folder}")
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert cpu._find_ninja()
    # a build's PATH: the package's first (round 19); this process's own PATH is left as it is
    assert cpu._ninja_path().split(os.pathsep) == [folder, str(tmp_path / "bin")]
    assert os.environ["PATH"] == str(tmp_path / "bin")
