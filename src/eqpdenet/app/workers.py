"""Worker processes that die with their parent.

:func:`worker_pool` is a :class:`~concurrent.futures.ProcessPoolExecutor` (``spawn``: fork
after PyTorch has started threads is unsafe) whose workers

* exit within :data:`WATCH_SECONDS` when the process that started them is gone, however it went
  (SIGKILL included): a watchdog thread in each worker compares ``os.getppid()`` with the
  parent's pid. A busy worker is not waiting on its task queue, so without the watchdog it would
  train on, an orphan, until its run ends;
* ignore SIGINT: Ctrl-C in a terminal reaches the whole process group, and the parent alone
  decides (it stops the pool and says how to resume), instead of every worker printing a
  ``KeyboardInterrupt`` traceback;
* are terminated, not waited for, when the ``with`` block ends by an exception (an interrupt, an
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


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # re-parented: the parent is gone
            os._exit(1)
        time.sleep(WATCH_SECONDS)


def _start_worker(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent:  # the parent died while this worker was starting
        os._exit(1)
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
            with contextlib.suppress(Exception):
                process.terminate()
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(timeout=10)
        raise
    pool.shutdown(wait=True)
