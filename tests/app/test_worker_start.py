"""A pool worker's start-up (eqpdenet.app.workers): it is told to die with its parent before it
imports eqpdenet or PyTorch (a worker whose parent died while it imported them lived on for 5-10 s),
and it shows warnings as its parent does (with --jobs 2 they came as raw two-line Python
warnings, the command line's one-line format being installed in the parent only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

from eqpdenet.app import cli
from eqpdenet.app.workers import worker_pool

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

#: A module that a worker imports when it unpickles the pool's initializer: what the worker had
#: done by then, and what holds in a task.
PROBE = '''
import ctypes, os, sys, threading, time

def death_signal():
    value = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    return value.value

WORKER = "--multiprocessing-fork" in sys.orig_argv
AT_IMPORT = {"eqpdenet": "eqpdenet" in sys.modules, "torch": "torch" in sys.modules,
             "death_signal": death_signal() if WORKER else None}
if WORKER and os.environ.get("PROBE_ENTERED"):  # a worker's import that takes for ever
    open(os.environ["PROBE_ENTERED"], "w").close()
    time.sleep(600)

def init():
    pass

def seen():
    return {**AT_IMPORT, "in_task": death_signal(),
            "watchdog": any(t.name == "eqpdenet-parent-watchdog" for t in threading.enumerate())}
'''


@pytest.fixture
def probe(tmp_path, monkeypatch):
    (tmp_path / "startprobe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import startprobe

    yield startprobe
    sys.modules.pop("startprobe", None)


@linux
def test_a_worker_is_tied_to_its_parent_before_it_imports_eqpdenet(probe, monkeypatch, capfd):
    """The kernel's signal is set before anything of eqpdenet (and PyTorch) is imported, and
    cleared in a task, where the watchdog (which kills the worker's group too) takes over. The
    worker shows warnings as its parent does (one spawn for both: seconds each)."""
    monkeypatch.setattr(warnings, "showwarning", cli._show_warning)
    with worker_pool(1, initializer=probe.init) as pool:
        seen = pool.submit(probe.seen).result(timeout=120)
        pool.submit(warnings.warn, "model.head has no effect\n  here", RuntimeWarning).result(
            timeout=120)
    assert seen == {"eqpdenet": False, "torch": False, "death_signal": int(signal.SIGKILL),
                    "in_task": 0, "watchdog": True}
    assert capfd.readouterr().err.splitlines() == [
        "eqpdenet: warning: model.head has no effect here"]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # dead, not yet reaped
    except FileNotFoundError:
        return True


@linux
def test_a_worker_starting_when_its_parent_is_killed_exits(tmp_path):
    """The parent is SIGKILLed while its worker is still importing (here a module that takes
    for ever): the worker goes with it, instead of living on until its imports end."""
    (tmp_path / "startprobe.py").write_text(PROBE)
    entered = tmp_path / "entered"
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(tmp_path)!r})
            from eqpdenet.app.workers import worker_pool
            import startprobe
            with worker_pool(1, initializer=startprobe.init) as pool:
                future = pool.submit(startprobe.seen)
                print(*pool._processes, flush=True)
                future.result()
            """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PROBE_ENTERED": str(entered)},
        start_new_session=True)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        deadline = time.monotonic() + 120
        while not entered.exists():  # the worker is inside its slow import
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60  # generous: the kernel kills it at once
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(worker), "the worker outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if worker is not None and not _gone(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_pool_refuses_tasks_from_another_thread():
    """Workers start in submit, and Linux ties their death signal to the thread that started
    them: another thread, which may end first, would take them with it."""
    with worker_pool(1) as pool:
        errors = []

        def submit():
            try:
                pool.submit(json.dumps, 1)
            except RuntimeError as error:
                errors.append(str(error))

        thread = threading.Thread(target=submit)
        thread.start()
        thread.join()
    assert errors and errors[0].startswith("worker_pool: submit from the thread that made the pool")


def test_the_console_script_entry_imports_nothing_heavy():
    """Spawned workers re-run the console script before their start-up code: its entry module
    must not import eqpdenet (PyTorch)."""
    done = subprocess.run([sys.executable, "-c", "import sys, _eqpdenet_launch; "
                           "print(sorted(m for m in ('eqpdenet', 'torch') if m in sys.modules))"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
