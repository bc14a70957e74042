"""Loading the C++ kernel survives a process killed while loading it (issue 14's fault campaign).

torch's build lock is a file its holder deletes; a process killed while holding it (during the
first build, or during the up-to-date check every process makes) left it behind, and every later
process waited for it for ever. eqpdenet now loads under an ``flock`` the kernel releases on any
exit, and removes such a stale file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eqpdenet.errors import KernelUnavailableError
from eqpdenet.kernels import cpu

if shutil.which(os.environ.get("CXX", "c++")) is None:
    pytest.skip("no C++ compiler: the fused kernel cannot be built here", allow_module_level=True)

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_a_lock_left_by_a_killed_process_does_not_hang_the_next_one():
    try:
        cpu.load_extension()  # built and cached: the next process only checks it
    except KernelUnavailableError as error:
        pytest.fail(f"a C++ compiler exists but the fused kernel did not build: {error}")
    build_dir = cpu._FUSED.build_directory()
    stale = Path(build_dir) / "lock"
    with cpu._build_lock(build_dir):  # no process is loading while the stale file is made
        stale.touch()
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", "from eqpdenet.kernels import cpu; cpu.load_extension()"],
                   env=env, check=True, timeout=600)
    assert not stale.exists()


def test_each_environment_and_checkout_gets_a_build_of_its_own(monkeypatch):
    """Two virtual environments (same torch version) shared one build folder: the compiler
    command names torch's headers and the source's path, so each found the other's command in
    ninja's log and rebuilt (minutes each, 8 times in 30 minutes with two checkouts)."""
    source = cpu.SOURCE.read_text()
    here = cpu._extension_name(source, "eqpdenet_fused_", str(cpu.SOURCE))
    assert here == cpu._FUSED.name()
    assert cpu._extension_name(source, "eqpdenet_fused_", "/elsewhere/fused_euler.cpp") != here
    monkeypatch.setattr(cpu.torch, "__file__", "/another/venv/site-packages/torch/__init__.py")
    assert cpu._extension_name(source, "eqpdenet_fused_", str(cpu.SOURCE)) != here


def test_a_process_waiting_for_anothers_build_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cpu, "WAIT_NOTICE", 0.0)  # waited long enough: say it, then wait
    with open(tmp_path / "build.lock", "a") as handle:
        cpu._wait_for(handle, str(tmp_path / "build"))
    assert capsys.readouterr().err == (f"eqpdenet: waiting for another process that builds or "
                                       f"loads the C++ kernel in {tmp_path / 'build'}\n")
