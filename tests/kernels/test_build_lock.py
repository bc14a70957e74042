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
    build_dir = cpu._build_directory(cpu._extension_name(cpu.SOURCE.read_text()))
    stale = Path(build_dir) / "lock"
    with cpu._build_lock(build_dir):  # no process is loading while the stale file is made
        stale.touch()
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", "from eqpdenet.kernels import cpu; cpu.load_extension()"],
                   env=env, check=True, timeout=600)
    assert not stale.exists()
