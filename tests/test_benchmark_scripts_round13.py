"""``benchmarks/triton_compile.py --arch`` (round 13): a compute capability Triton does not
compile for is one line and exit 2; before, LLVM aborted the process after the first kernels
("LLVM ERROR: Cannot select: intrinsic ...")."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("arch", ["1", "999", "101", "x"])
def test_an_architecture_triton_does_not_compile_for_is_refused(arch):
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "triton_compile.py"),
                           "--arch", arch, "--quick"], capture_output=True, text=True, timeout=120,
                          env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2
    assert lines[-1].startswith("triton_compile.py: error: argument --arch: invalid"), lines
    assert "70, 72, 75, 80, 86, 87, 89, 90, 100, 103, 120, 121" in lines[-1] or arch == "x"
