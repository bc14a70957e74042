"""A pool worker between tasks (round 13): the kernel's signal that kills it with its parent is
cleared while a task runs (the watchdog, which kills the worker's group too, takes over) and set
again when the task ends, whether it returned or raised. Without it, a parent SIGKILLed as the
pool shut down left its workers for 2.7 s: the daemon watchdog no longer runs while the
interpreter finalises."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROGRAM = textwrap.dedent("""
    import ctypes, signal
    from eqpdenet.app import workers

    def death_signal():
        value = ctypes.c_int()
        ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
        return value.value

    def fails():
        raise ValueError("the task's own error")

    workers._set_parent_death_signal(int(signal.SIGKILL))  # as a started worker has it
    seen = [workers._run_task(death_signal), death_signal()]
    try:
        workers._run_task(fails)
    except ValueError:
        seen.append(death_signal())
    print(*seen)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_parent_death_signal_is_set_again_after_a_task():
    source = str(Path(__file__).resolve().parents[2] / "src")  # this checkout's package
    env = {**os.environ, "PYTHONPATH": source + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "9", "9"]  # in the task: none; after it: SIGKILL
