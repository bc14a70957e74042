"""Round 19 of installing, provenance and the preflight (probes r19/p3 and r19/p1).

* p3 F1: the file size limit (``ulimit -f``) was compared with a checkpoint's parameters alone;
  e2cnn's sampled bases make a G-CNN's checkpoint 3 to 13 times that, so a G-CNN trained in full
  and then could not write its checkpoint. Its tensors, buffers included, are counted now.
* p3 F2: a file where an output file's folder should be (``--json afile/s.json``) was refused as
  "afile is a file, not a folder", naming neither the option nor the path.
* p1 F1: a finished C++ kernel build was rebuilt, silently and for minutes, whenever another
  ``ninja`` was first on ``PATH`` (the ``ninja`` package's 1.13, activated, against a system's
  1.11, not activated: each found the other's build out of date). A build that finished and was
  imported is now imported directly, without ninja, and builds run the package's ninja.
* p1 F2: installed (not editable) into a virtual environment inside a user's own git repository,
  eqpdenet recorded that repository's HEAD as the commit of the code that computed the results.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest

from eqpdenet.app import files, preflight
from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.files import FolderMovedError, check_output_file
from eqpdenet.errors import KernelUnavailableError, OutputFolderError
from eqpdenet.kernels import cpu

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _config(*assignments: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), list(assignments))


def _limit(monkeypatch, size: int) -> None:
    """This process's file size limit as ``size`` bytes, for the checks alone (setting the real
    one would limit pytest's own files too)."""
    monkeypatch.setattr(files, "file_size_limit", lambda: size)


# -- p3 F1: the file size limit and a checkpoint's buffers ----------------------------------------


def test_the_file_size_limit_counts_a_checkpoints_buffers(tmp_path, monkeypatch):
    out = tmp_path / "out"
    # 10 float32 parameters and 8,000 bytes of buffers: 8,040 bytes of tensors, and the 4 KiB at
    # the least around them: 12,136 bytes, a limit of exactly that passes (never refuse a fit)
    _limit(monkeypatch, 8040 + preflight.CHECKPOINT_MIN_EXTRA)
    preflight.check_output_space(out, runs=1, checkpoints=1, parameters=10, sweep=False,
                                 state_bytes=8040)
    _limit(monkeypatch, 8 * 1024)  # the parameters' 40 bytes and 4 KiB fit; the buffers do not
    with pytest.raises(OutputFolderError) as caught:
        preflight.check_output_space(out, runs=1, checkpoints=1, parameters=10, sweep=False,
                                     state_bytes=8040)
    assert str(caught.value) == (
        f"a checkpoint in {out} (a model of 10 parameters, 8,040 bytes of tensors, its buffers "
        f"included): about 11.9 KiB to write to one file, more than this process's file size "
        f"limit lets it write (8 KiB: ulimit -f 8); raise the limit (ulimit -f unlimited) and "
        f"run the command again")
    assert caught.value.errno == errno.EFBIG
    assert not out.exists()


def test_a_checkpoint_without_buffers_is_said_as_before(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _limit(monkeypatch, 4 * 1024)
    with pytest.raises(OutputFolderError) as caught:  # tensors no larger than the parameters
        preflight.check_output_space(out, runs=1, checkpoints=1, parameters=1000, sweep=False,
                                     state_bytes=4000)
    assert str(caught.value) == (  # 4,000 bytes and 4 KiB
        f"a checkpoint in {out} (a model of 1,000 parameters): about 7.91 KiB to write to one "
        f"file, more than this process's file size limit lets it write (4 KiB: ulimit -f 4); "
        f"raise the limit (ulimit -f unlimited) and run the command again")
    preflight.check_output_space(out, runs=1, checkpoints=0, parameters=1000, sweep=False,
                                 state_bytes=10**9)  # no checkpoint saved: no checkpoint counted


def test_a_gcnn_past_the_file_size_limit_is_refused_before_it_trains(tmp_path, monkeypatch):
    """The probe's case: a G-CNN of 26,933 parameters (107,732 bytes) whose checkpoint holds
    559,508 bytes of tensors, under ``ulimit -f 200``: it trained, then could not be saved."""
    pytest.importorskip("e2cnn")
    run = _config("model.kind='gcnn'", "train.device='cpu'")
    model = preflight._model(run)
    params = sum(p.numel() for p in model.parameters())
    saved = preflight.saved_bytes(model)
    assert 4 * params + preflight.CHECKPOINT_MIN_EXTRA < 200 * 1024 < saved
    monkeypatch.setattr(preflight, "available_memory", lambda device: 2**40)
    _limit(monkeypatch, 200 * 1024)
    with pytest.raises(OutputFolderError) as caught:
        preflight.preflight([run], tmp_path / "g_ul")
    assert str(caught.value).startswith(
        f"a checkpoint in {tmp_path / 'g_ul'} (a model of {params:,} parameters, {saved:,} bytes "
        f"of tensors, its buffers included): about ")
    assert "ulimit -f 200)" in str(caught.value)
    _limit(monkeypatch, saved + preflight.CHECKPOINT_MIN_EXTRA)
    preflight.preflight([run], tmp_path / "g_ul")


# -- p3 F2: a file in the way of an output file's folder ------------------------------------------


def test_a_file_where_the_folder_should_be_is_named_with_the_option_and_path(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("hi\n")
    with pytest.raises(OutputFolderError) as caught:
        check_output_file(blocker / "s.json", "--json")
    assert str(caught.value) == f"--json {blocker / 's.json'}: {blocker} is a file, not a folder"
    deeper = blocker / "sub" / "f.png"
    with pytest.raises(OutputFolderError) as caught:
        check_output_file(deeper, "--out")
    assert str(caught.value) == (f"--out {deeper}: cannot create the folder {blocker / 'sub'}: "
                                 f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "hi\n" and os.listdir(tmp_path) == ["afile"]


def test_a_link_to_nothing_where_the_folder_should_be_is_said_to_be_one(tmp_path):
    """A dangling symbolic link in the way was called "a file" (a review's find)."""
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputFolderError) as caught:
        check_output_file(link / "s.json", "--json")
    assert str(caught.value) == (f"--json {link / 's.json'}: {link} is a symbolic link to "
                                 f"nothing ({tmp_path / 'nowhere'}), not a folder")
    assert os.listdir(tmp_path) == ["gone"]


def test_a_folder_that_cannot_be_made_keeps_its_error_type_and_errno(tmp_path, monkeypatch):
    def full(folder):
        error = FolderMovedError(f"cannot create the folder {folder}: no space left on the device")
        error.errno = errno.ENOSPC
        raise error

    monkeypatch.setattr(files, "make_folder", full)
    path = tmp_path / "new" / "s.json"
    with pytest.raises(FolderMovedError) as caught:
        check_output_file(path, "--json")
    assert str(caught.value) == (f"--json {path}: cannot create the folder {path.parent}: no space "
                                 f"left on the device")
    assert caught.value.errno == errno.ENOSPC


# -- p1 F1: a finished kernel build is imported, not checked by whichever ninja is on PATH --------


def _fresh(monkeypatch, build_dir: Path) -> cpu._Extension:
    """The fused kernel's extension as a new process sees it, building into ``build_dir``."""
    monkeypatch.setenv(cpu.ENV_BUILD_DIR, str(build_dir))
    return cpu._Extension(cpu.SOURCE, "eqpdenet_fused_")


def _program(folder: Path, name: str = "ninja") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / name
    program.write_text("#!/bin/sh\nexit 1\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program


def test_a_build_that_finished_is_imported_without_torchs_loader(tmp_path, monkeypatch, capsys):
    from torch.utils import cpp_extension

    calls, imported = [], []

    def build(**options):  # torch's build: writes the .so, and imports it
        calls.append(options["name"])
        (Path(options["build_directory"]) / f"{options['name']}.so").write_bytes(b"built")
        return "built by torch"

    def load_built(name, path):
        imported.append((name, path.read_bytes()))
        return "imported"

    monkeypatch.setattr(cpp_extension, "load", build)
    monkeypatch.setattr(cpu, "_load_built", load_built)
    monkeypatch.setattr(cpu, "_missing_build_tool", lambda: None)
    extension = _fresh(monkeypatch, tmp_path / "build")
    assert extension.load() == "built by torch"
    assert capsys.readouterr().err.startswith("eqpdenet: building the fused C++ kernel")
    name = extension.name()
    built = Path(extension.build_directory()) / f"{name}.so"
    content = built.read_bytes()
    assert (Path(f"{built}.complete").read_text()  # written after torch imported it
            == f"{len(content)} {hashlib.sha256(content).hexdigest()}\n")

    # the next process: imported directly, whichever ninja is on PATH (none here), no notice
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert _fresh(monkeypatch, tmp_path / "build").load() == "imported"
    assert imported == [(name, b"built")] and calls == [name]
    assert capsys.readouterr().err == ""


def test_a_so_other_than_the_one_imported_goes_through_torchs_loader(tmp_path, monkeypatch,
                                                                      capsys):
    """A ``.so`` a killed build left half-written, or one changed since it was imported, is not
    taken as finished: torch's loader and ninja's check decide, as before."""
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda **options: calls.append(1) or "checked")
    monkeypatch.setattr(cpu, "_load_built", lambda name, path: pytest.fail("imported directly"))
    monkeypatch.setattr(cpu, "_missing_build_tool", lambda: None)
    monkeypatch.setattr(cpu, "_find_ninja", lambda: True)
    extension = _fresh(monkeypatch, tmp_path / "build")
    built = Path(extension.build_directory()) / f"{extension.name()}.so"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"whole")
    cpu._mark_complete(built)
    os.utime(built, ns=(1, 1))  # copied without its times (cp -r): the same file, still whole
    with monkeypatch.context() as patched:
        patched.setattr(cpu, "_load_built", lambda name, path: "imported")
        assert _fresh(monkeypatch, tmp_path / "build").load() == "imported"
    with open(built, "ab") as handle:  # rewritten since (a build killed while it linked)
        handle.write(b" and more")
    assert _fresh(monkeypatch, tmp_path / "build").load() == "checked"
    Path(f"{built}.complete").unlink()  # none at all
    assert _fresh(monkeypatch, tmp_path / "build").load() == "checked"
    assert len(calls) == 2 and capsys.readouterr().err == ""


def _ninja_package(monkeypatch, folder: Path) -> Path:
    program = _program(folder)
    monkeypatch.setitem(sys.modules, "ninja", types.SimpleNamespace(BIN_DIR=str(folder)))
    return program


@pytest.mark.parametrize("activated", [False, True])
def test_a_build_runs_the_ninja_packages_ninja(tmp_path, monkeypatch, activated):
    from torch.utils import cpp_extension

    package = _ninja_package(monkeypatch, tmp_path / "venv" / "bin")
    _program(tmp_path / "usr" / "bin")  # a system's ninja, another version
    first = [str(tmp_path / "usr" / "bin")]
    path = os.pathsep.join(([str(package.parent)] if activated else []) + first)
    monkeypatch.setenv("PATH", path)
    seen = []
    monkeypatch.setattr(cpp_extension, "load", lambda **options: seen.append(
        (shutil.which("ninja"), os.environ["PATH"])) or "built")
    monkeypatch.setattr(cpu, "_missing_build_tool", lambda: None)
    assert _fresh(monkeypatch, tmp_path / "build").load() == "built"
    expected = path if activated else str(package.parent) + os.pathsep + path
    assert seen == [(str(package), expected)]
    assert os.environ["PATH"] == path  # as it was


def test_without_the_package_the_ninja_on_path_builds(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ninja", None)  # not installed: its import fails
    system = _program(tmp_path / "usr" / "bin")
    monkeypatch.setenv("PATH", str(system.parent))
    assert cpu._find_ninja() and cpu._ninja_path() == str(system.parent)
    beside = Path(sys.executable).parent
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    if shutil.which("ninja", path=str(beside)) is None:
        assert not cpu._find_ninja() and cpu._ninja_path() is None
    else:  # the environment's own, not activated: added at the end, as before
        assert cpu._ninja_path() == str(tmp_path / "empty") + os.pathsep + str(beside)


def test_a_process_with_another_ninja_first_on_path_imports_the_finished_kernel(tmp_path):
    """The probe's case, with a real build: a ``ninja`` first on ``PATH`` that is not the one
    that built the kernel (here one that fails: any run of it would show) is never run."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: the fused kernel cannot be built here")
    try:
        cpu.load_extension()  # built (or imported) in this process: marked as finished
    except KernelUnavailableError as error:
        pytest.fail(f"a C++ compiler exists but the fused kernel did not build: {error}")
    other = tmp_path / "bin"
    ninja = _program(other)
    ninja.write_text(f"#!/bin/sh\ntouch {tmp_path / 'ran'}\nexit 1\n")
    env = dict(os.environ, PATH=str(other) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.pop("EQPDENET_DEBUG", None)
    done = subprocess.run([sys.executable, "-c", "from eqpdenet.kernels import cpu; "
                           "cpu.load_extension(); print(cpu.build_error())"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout, done.stderr) == (0, "None\n", "")
    assert not (tmp_path / "ran").exists()


# -- p1 F2: the commit recorded only where the repository tracks the package ----------------------


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_a_package_inside_a_repository_that_does_not_track_it_records_no_commit(tmp_path):
    from eqpdenet.app.training import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "project"
    repo.mkdir()
    (repo / ".gitignore").write_text(".venv/\n")
    (repo / "notes.txt").write_text("my analysis\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "the user's own project")
    head = _git(repo, "rev-parse", "HEAD")
    installed = repo / ".venv" / "lib" / "python3.11" / "site-packages" / "eqpdenet"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("x = 1\n")
    assert git_commit(installed) == "unknown"  # ignored: the project's HEAD is not its commit
    untracked = repo / "vendor" / "eqpdenet"  # neither ignored nor added
    untracked.mkdir(parents=True)
    (untracked / "__init__.py").write_text("x = 1\n")
    assert git_commit(untracked) == "unknown"
    _git(repo, "add", "vendor")
    _git(repo, "commit", "-q", "-m", "vendored")
    vendored = _git(repo, "rev-parse", "HEAD")
    assert vendored != head and git_commit(untracked) == vendored  # tracked: its commit
    (untracked / "__init__.py").write_text("x = 2\n")
    assert git_commit(untracked) == vendored + "-dirty"


def test_this_checkout_records_its_commit_as_before():
    from eqpdenet.app import training

    package = Path(training.__file__).resolve().parents[1]
    if shutil.which("git") is None or subprocess.run(
            ["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=package,
            capture_output=True).returncode != 0:
        pytest.skip("eqpdenet is not run from a git checkout")
    head = _git(package, "rev-parse", "HEAD")
    dirty = _git(package, "status", "--porcelain", "--untracked-files=no", "--", ".")
    assert training.git_commit() == head + ("-dirty" if dirty else "")
