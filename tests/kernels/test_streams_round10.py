"""The C++ kernel loads in a process whose stderr is closed (``2>&-``: Python's ``sys.stderr``
is None, and torch's loader called ``sys.stderr.flush()``, so every layer took the reference,
14x slower, "could not build ... 'NoneType' object has no attribute 'flush'"); the kernel's
fallback warning is counted only once it is out."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from eqpdenet.kernels import cpu, op

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
from eqpdenet.kernels import cpu
print(sys.stderr is None, cpu.is_available(), cpu.build_error())
"""


@pytest.mark.skipif(not cpu.is_available(), reason=f"no C++ kernel here: {cpu.build_error()}")
def test_the_kernel_loads_with_stderr_closed():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True,
                          env=env, timeout=600, preexec_fn=lambda: os.close(2))
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["True True None"]  # and nothing else on stdout


def test_a_warning_turned_into_an_error_is_raised_at_every_call():
    reason = "round 10: a reason no other test warns"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            with pytest.raises(RuntimeWarning, match=reason):
                op.warn_once(reason)
    with pytest.warns(RuntimeWarning, match=reason):
        op.warn_once(reason)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        op.warn_once(reason)
    assert again == []  # once out, once per process
