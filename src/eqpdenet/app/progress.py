"""Progress of long loops: a bar on a terminal, plain lines in a log.

:func:`progress` wraps an iterable (the epochs of a training, the runs of a sweep). Where the
output is a terminal (stderr is a TTY) it is a tqdm bar; where it is not (a log file, a pipe, a job
scheduler's output) it prints one plain line per item to stderr when the item is done, with no
escape sequences or carriage returns::

    train EqPdeNet seed=0: epoch 3/20, 2.1 s each, about 36 s left (loss 0.4132)

A log of a 20-epoch run is 20 lines, each readable alone (``tail -f``, ``grep``). An item that
takes long (an epoch of 60,000 images on the plain PyTorch path) says how far it is at most once a
minute (:func:`within`), so that a log is never silent for a whole epoch::

    train LiftedPDENet seed=0: epoch 1/12, batch 310/938 after 1.0 min, about 2 min left in it

Inside
:func:`labelled` (a sweep's run, :func:`eqpdenet.app.sweeps.run_sweep`) each line starts with the
run's key, so that the interleaved lines of runs trained side by side stay apart::

    lifted-centered-seed1: train LiftedPDENet seed=1: epoch 3/12, 2 min each, about 15 min left
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

__all__ = ["HEARTBEAT_SECONDS", "LineProgress", "interactive", "labelled", "progress", "within"]

#: The least time between two lines of one item's progress in a log (:func:`within`).
HEARTBEAT_SECONDS = 60.0

_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("eqpdenet_progress_label", default="")


@contextlib.contextmanager
def labelled(label: str) -> Iterator[None]:
    """Within the block, every :class:`LineProgress` line starts with ``label`` (a run's key)."""
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal, where a progress bar can redraw."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


class LineProgress:
    """One plain line per finished item of ``iterable`` on ``stream`` (module docstring);
    ``set_postfix`` adds values to the next line, as tqdm's does."""

    def __init__(self, iterable: Iterable, *, desc: str = "", unit: str = "item",
                 total: int | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, **_):
        label = _LABEL.get()
        self.iterable, self.unit = iterable, unit
        self.desc = f"{label}: {desc}" if label and desc else (label or desc)
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__")
                                                      else None)
        self.stream, self._clock = stream, clock
        self.done, self.postfix, self._start = 0, {}, clock()
        self._item_start = self._last_line = self._start

    def set_postfix(self, values: dict | None = None, **kwargs) -> None:
        self.postfix = {**(values or {}), **kwargs}

    def update(self, count: int = 1) -> None:
        self.done += count
        now = self._clock()
        self._item_start = self._last_line = now
        elapsed = now - self._start
        each = elapsed / max(self.done, 1)
        parts = [f"{self.unit} {self.done}" + (f"/{self.total}" if self.total else ""),
                 f"{_duration(each)} each"]
        if self.total and self.done < self.total:
            parts.append(f"about {_duration(each * (self.total - self.done))} left")
        line = f"{self.desc}: " + ", ".join(parts)
        if self.postfix:
            line += " (" + ", ".join(f"{k} {v}" for k, v in self.postfix.items()) + ")"
        self._print(line)

    def within(self, done: int, total: int, unit: str = "batch") -> None:
        """``done`` of ``total`` parts of the current item are done: a line, if the last one is
        :data:`HEARTBEAT_SECONDS` old (module docstring); nothing otherwise."""
        now = self._clock()
        if now - self._last_line < HEARTBEAT_SECONDS or not 0 < done < total:
            return
        self._last_line = now
        item = f"{self.unit} {self.done + 1}" + (f"/{self.total}" if self.total else "")
        spent = now - self._item_start
        left = spent / done * (total - done)
        self._print(f"{self.desc}: {item}, {unit} {done}/{total} after {_duration(spent)}, "
                    f"about {_duration(left)} left in it")

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator:
        self._start = self._item_start = self._last_line = self._clock()
        for item in self.iterable:
            yield item
            self.update(1)

    def __len__(self) -> int:
        return self.total or 0


def progress(iterable: Iterable, enabled: bool = True, **options):
    """``iterable`` as it is (``enabled`` False), a tqdm bar (a terminal) or a
    :class:`LineProgress` (a log); ``options``: ``desc``, ``unit``, ``total``, ``leave``."""
    if not enabled:
        return iterable
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, **options)
    return LineProgress(iterable, **options)


def within(bar, done: int, total: int, unit: str = "batch") -> None:
    """How far the current item of ``bar`` (what :func:`progress` returned) is: ``done`` of
    ``total`` parts. A line in a log at most once per :data:`HEARTBEAT_SECONDS`
    (:meth:`LineProgress.within`), the count beside a terminal's bar; nothing where progress is
    off (``bar`` a plain iterable)."""
    if isinstance(bar, LineProgress):
        bar.within(done, total, unit)
    elif hasattr(bar, "set_postfix_str"):  # tqdm; a redraw per batch would flood a slow terminal
        now = time.monotonic()
        if now - getattr(bar, "_eqpdenet_shown", -1.0) >= 1.0:
            bar._eqpdenet_shown = now
            bar.set_postfix_str(f"{unit} {done}/{total}")
