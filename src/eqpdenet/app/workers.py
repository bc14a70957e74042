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
*thread* and other systems lack).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

__all__ = ["WATCH_SECONDS", "worker_pool"]

#: How often a worker checks that its parent is alive, in seconds.
WATCH_SECONDS = 0.5


def _die() -> None:
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGKILL)  # this worker's group: itself and what it started
    os._exit(1)


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # re-parented: the parent is gone
            _die()
        time.sleep(WATCH_SECONDS)


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
