"""Worker processes that die with their parent.

:func:`worker_pool` is a :class:`~concurrent.futures.ProcessPoolExecutor` (``spawn``: fork
after PyTorch has started threads is unsafe) whose workers

* exit within :data:`WATCH_SECONDS` when the process that started them is gone, however it went
  (SIGKILL included), from their first instruction on: a worker starts with this module's code,
  run by its path (:func:`_start_worker`), before anything imports eqpdenet and PyTorch (seconds
  of work, during which a worker started by a parent that then died used to live on). While it
  starts (the imports that come with its first task), the kernel kills it the moment its parent
  dies (Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``); from its first task on, a watchdog thread
  comparing ``os.getppid()`` with the parent's pid does (elsewhere: throughout). A busy worker
  is not waiting on its task queue, so without them it would train on, an orphan, until its run
  ends;
* lead a process group of their own, which the watchdog kills whole (a ``ninja`` building the
  C++ kernel goes with its worker; the compiler processes ``ninja`` starts are in groups of their
  own and finish their file, a minute at most, on their own);
* ignore SIGINT: Ctrl-C reaches the parent alone, which decides (it stops the pool and says how
  to resume), instead of every worker printing a ``KeyboardInterrupt`` traceback;
* show warnings as the parent does (the one-line ``eqpdenet: warning: ...`` of the command line):
  the parent's ``warnings.showwarning`` is installed in each worker;
* outlive the reader of their stdout and stderr, as the command line does
  (:class:`SurvivingStream`, from their start-up code on): a worker shares its parent's
  streams, and a progress line written after ``| head`` or a log collector has gone must not
  fail its run (the parent would end on the ``BrokenPipeError`` its task raised);
* are killed, not waited for, when the ``with`` block ends by an exception (an interrupt, an
  error in another run).

Linux ties ``PR_SET_PDEATHSIG`` to the parent *thread* that started the process, and a pool
starts its workers in :meth:`~concurrent.futures.Executor.submit`: a pool is used from the
thread that made it (the ``with`` block's, which outlives it), and a task submitted from another
thread is refused. The signal is cleared when a task begins, so that the watchdog, which kills
the worker's group too, has the last word. The ranks of ``train --distributed`` die with
``torchrun`` through :func:`die_with_parent`, which keeps the signal for good: a rank waiting in
a collective of gloo can keep the interpreter's lock, and so keep a watchdog thread from running
(seen: a rank outlived its launcher by minutes), while ``torchrun`` starts its ranks from its main
thread.

This module imports the standard library only: a worker runs it by path before eqpdenet exists
in the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import runpy
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TextIO

__all__ = ["GUARD_ADVICE", "WATCH_SECONDS", "SurvivingStream", "die_with_parent",
           "refuse_while_starting", "survive_gone_readers", "worker_pool"]

#: What a script that starts worker processes must do (``spawn`` runs the script again in every
#: worker, as ``__mp_main__``, before the worker's first task).
GUARD_ADVICE = ('a script that runs work with jobs > 1 must make that call under '
                '`if __name__ == "__main__":` (each worker process runs the script again as it '
                'starts: multiprocessing\'s spawn)')

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


def _set_parent_death_signal(number: int) -> bool:
    """Have the kernel send signal ``number`` to this process when its parent dies (Linux; 0:
    none); whether it will."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, number, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _killed_with_parent() -> bool:
    """Have the kernel SIGKILL this process when its parent dies (Linux); whether it will."""
    return _set_parent_death_signal(int(signal.SIGKILL))


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


class SurvivingStream:
    """A standard stream (stdout, stderr) that outlives its reader: the first write or flush
    that finds the reader gone (``BrokenPipeError``: ``| head`` has exited, a log collector
    died) points the stream's file descriptor at :data:`os.devnull`, so that this and everything
    written after it, by Python or by C code and processes started later on that descriptor, is
    dropped without an error; a stream without a descriptor is replaced by one on
    :data:`os.devnull`. ``broken`` says whether that happened. Everything else is the wrapped
    stream's (``isatty``, ``fileno``, ``encoding``, ``reconfigure``, ...).

    ``diagnostics`` (stderr) treats a storage limit the same way (``2> log`` on a full disk,
    ``ENOSPC``, ``EDQUOT``, ``EFBIG``): progress and warnings that cannot be kept are dropped
    rather than stopping the work, whose own files say for themselves whether they were
    written; ``full`` says that happened. Output that is the work's result (stdout) still fails
    on a storage limit, so that a truncated result never ends with exit status 0."""

    def __init__(self, stream: TextIO, diagnostics: bool = False):
        self.stream, self.broken, self.full, self.diagnostics = stream, False, False, diagnostics

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)
        except OSError as error:
            if not self._storage_limit(error):
                raise
            return len(text)

    def _storage_limit(self, error: OSError) -> bool:
        """Whether ``error`` is a storage limit this stream drops its output on (then it has
        been pointed at :data:`os.devnull`)."""
        from ..files import is_storage_limit  # at the failure only: workers start light

        if not is_storage_limit(error):
            return False
        if not self.diagnostics:  # the result: fails, naming the stream (not only "no space")
            named = OSError(error.errno, f"cannot write the standard output: {error.strerror}")
            raise named from error
        self.full = True
        self._reader_gone()
        return True

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._reader_gone()
        except OSError as error:
            if not self._storage_limit(error):
                raise

    def _reader_gone(self) -> None:
        self.broken = True
        try:
            descriptor = self.stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, descriptor)
            finally:
                os.close(null)
        except (AttributeError, OSError, ValueError):  # no descriptor (io.UnsupportedOperation)
            self.stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the stream
            return
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()  # what the stream still held goes to os.devnull

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def survive_gone_readers() -> list[SurvivingStream]:
    """``sys.stdout`` and ``sys.stderr`` made :class:`SurvivingStream` (each one that is not
    yet, nor ``None``; stderr as ``diagnostics``); returns the streams it wrapped, ``[]`` where
    there were none."""
    wrapped = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, SurvivingStream):
            setattr(sys, name, SurvivingStream(stream, diagnostics=name == "stderr"))
            wrapped.append(getattr(sys, name))
    return wrapped


#: The name under which a worker runs this module by path (:func:`_start_worker`).
_START_NAME = "__eqpdenet_worker_start__"


def _start_worker(parent: int, then: bytes) -> None:
    """A pool worker's first code, run from this module's file (:func:`runpy.run_path`, the
    pool's initializer) before any module of eqpdenet is imported: SIGINT ignored, a process
    group of its own, the kernel told to kill it with its parent and the watchdog started, its
    stdout and stderr made to outlive their reader (:func:`survive_gone_readers`), the
    modules named in ``EQPDENET_PLUGINS`` imported (:mod:`eqpdenet.app.plugins`: the work may
    name what they register), and only then ``then`` unpickled (the caller's initializer and
    its arguments, the parent's ``warnings.showwarning``: unpickling them imports their modules,
    eqpdenet and PyTorch)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _killed_with_parent()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="eqpdenet-parent-watchdog").start()
    if os.getppid() != parent:  # the parent died before the kernel was told
        _die()
    survive_gone_readers()
    if os.environ.get("EQPDENET_PLUGINS"):  # what they register, before the work names it
        from eqpdenet.app.plugins import import_plugins

        import_plugins()
    initializer, initargs, show = pickle.loads(then)
    if show is not None:
        warnings.showwarning = show
    if initializer is not None:
        initializer(*initargs)


def _run_task(fn: Callable, /, *args, **kwargs):
    """A task of the pool: its modules are imported (unpickling it did that), so the watchdog,
    which kills the worker's process group too (a compiler the task started), takes over from
    the kernel's signal while it runs. After it, the kernel's signal again: between tasks and
    while the worker exits (the interpreter's finalisation, seconds with torch loaded), the
    daemon watchdog no longer runs, and a parent killed then left its workers 2.7 s (round 13)."""
    parent = os.getppid()
    _set_parent_death_signal(0)
    try:
        return fn(*args, **kwargs)
    finally:
        _killed_with_parent()
        if os.getppid() != parent:  # the parent died before the kernel was told again
            _die()


def _parent_warning_display() -> Callable | None:
    """This process's ``warnings.showwarning`` where it is not Python's own and a worker can
    import it (a module's function): what a worker installs."""
    show = warnings.showwarning
    if show is getattr(warnings, "_showwarning_orig", None):
        return None
    try:
        pickle.dumps(show)
    except Exception:  # a lambda, a bound method of a local object: workers keep Python's
        return None
    return show


def refuse_while_starting(what: str) -> None:
    """A :class:`~eqpdenet.errors.MainGuardError` (a :class:`RuntimeError`; the command line's
    exit status 2, not a bug's 1) naming the fix where this process is a worker still starting,
    running its parent's script again (multiprocessing's ``spawn``): ``what`` (``reproduce``)
    was called from a script's top level without a ``__main__`` guard, and would otherwise
    fail on the folder its parent holds, a traceback in every worker. The parent then learns
    that its pool broke (:func:`worker_pool`)."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        from eqpdenet.errors import MainGuardError  # (a worker has imported eqpdenet by now)

        raise MainGuardError(f"{what} was called in a worker process while it started: "
                             f"{GUARD_ADVICE}")


class _Pool(ProcessPoolExecutor):
    """Every task runs through :func:`_run_task`; submitted from the thread that made the pool
    (which starts the workers: module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._owner = threading.current_thread()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if threading.current_thread() is not self._owner:
            raise RuntimeError("worker_pool: submit from the thread that made the pool (it starts "
                               "the workers, which Linux kills when the thread that started them "
                               "ends)")
        return super().submit(_run_task, fn, *args, **kwargs)


@contextlib.contextmanager
def worker_pool(jobs: int, initializer: Callable | None = None,
                initargs: tuple = ()) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``jobs`` worker processes that die with this process and show warnings as it
    does (module docstring); ``initializer(*initargs)`` runs in each worker once it has started."""
    then = pickle.dumps((initializer, initargs, _parent_warning_display()))
    pool = _Pool(jobs, mp_context=multiprocessing.get_context("spawn"),
                 initializer=runpy.run_path,
                 initargs=(os.path.abspath(__file__), {"_START": (os.getpid(), then)}, _START_NAME))
    try:
        yield pool
    except BaseException as error:
        if type(error).__name__ == "BrokenProcessPool" and getattr(sys.modules.get("__main__"),
                                                                   "__file__", None):
            error.add_note(f"if a script of yours started this work: {GUARD_ADVICE}")
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


if __name__ == _START_NAME:  # run by path as a pool worker's initializer (worker_pool)
    _start_worker(*globals()["_START"])
