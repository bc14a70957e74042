"""Worker processes that die with their parent.

:func:`worker_pool` is a :class:`~concurrent.futures.ProcessPoolExecutor` (``spawn``: fork
after PyTorch has started threads is unsafe) whose workers

* exit within :data:`WATCH_SECONDS` when the process that started them is gone, however it went
  (SIGKILL included): a watchdog thread in each worker compares ``os.getppid()`` with the
  parent's pid. A busy worker is not waiting on its task queue, so without the watchdog it would
  train on, an orphan, until its run ends;
* lead a process group of their own, which the watchdog kills whole (a ``ninja`` building the
  C++ kernel goes with its worker; the compiler processes ``ninja`` starts are in groups of their
  own and finish their file, a minute at most, on their own);
* ignore SIGINT: Ctrl-C reaches the parent alone, which decides (it stops the pool and says how
  to resume), instead of every worker printing a ``KeyboardInterrupt`` traceback;
* are killed, not waited for, when the ``with`` block ends by an exception (an interrupt, an
  error in another run).

The watchdog is plain Python (no ``prctl(PR_SET_PDEATHSIG)``, which Linux ties to the parent
*thread* and other systems lack). The ranks of ``train --distributed`` die with ``torchrun``
through :func:`die_with_parent`, which does use that signal where it can: a rank waiting in a
collective of gloo can keep the interpreter's lock, and so keep a watchdog thread from running
(seen: a rank outlived its launcher by minutes), while ``torchrun`` starts its ranks from its main
thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

__all__ = ["WATCH_SECONDS", "die_with_parent", "worker_pool"]

#: How often a worker checks that its parent is alive, in seconds.
WATCH_SECONDS = 0.5


def _die() -> None:
    # Its group (itself and what it started) only where it leads one: a process that shares its
    # group with others (a shell's job, a launcher's processes) would take them with it.
    if os.getpgid(0) == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
    os._exit(1)


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # re-parented: the parent is gone
            _die()
        time.sleep(WATCH_SECONDS)


#: ``prctl``'s option that has the kernel send a signal when the parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def _killed_with_parent() -> bool:
    """Have the kernel SIGKILL this process when its parent dies (Linux); whether it will."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent() -> int:
    """End this process, as if killed (no clean-up), when its parent is gone: on Linux the
    kernel kills it at once (``prctl(PR_SET_PDEATHSIG, SIGKILL)``, which no Python code, nor a
    C++ call that keeps the interpreter's lock, can hold up), elsewhere the watchdog within
    :data:`WATCH_SECONDS`, with its process group where it leads one. Linux ties the signal to
    the parent's *thread* that started this process, so the parent must start it from a thread
    that lives as long as it does (``torchrun`` and shells do). Returns the parent's pid, which
    ``os.getppid()`` stops being once the parent has died (a last check before a result is
    committed, where the watchdog may not have looked yet)."""
    parent = os.getppid()
    if _killed_with_parent():
        if os.getppid() != parent:  # died before the kernel was told
            _die()
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                         name="eqpdenet-parent-watchdog").start()
    return parent


def _start_worker(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if os.getppid() != parent:  # the parent died while this worker was starting
        _die()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="eqpdenet-parent-watchdog").start()
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def worker_pool(jobs: int, initializer: Callable | None = None,
                initargs: tuple = ()) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``jobs`` worker processes that die with this process (module docstring)."""
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))
    try:
        yield pool
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the worker leads its group
            except OSError:  # not yet: the worker alone
                with contextlib.suppress(Exception):
                    process.kill()
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(timeout=10)
        raise
    pool.shutdown(wait=True)
