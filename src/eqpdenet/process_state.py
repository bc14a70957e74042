"""State of the whole process that the library changes, and the locks that keep threads apart there.

Most of what a call of eqpdenet changes belongs to the call (per thread: docs/architecture.md), but
a few things belong to the process: Python's warning filters (``warnings.filters``, one list per
process in Python 3.11), torch's global random generator, ``sys.stdout``, the level of a logger.
Code that saves such a thing, changes it and puts the saved value back is wrong as soon as a
second thread does the same in between: the restores come out of order and the second thread puts
back what it saved, the first thread's change, for the rest of the process (round 12: an
``'ignore'`` filter that hid every later warning of the process, ``sys.stdout`` left a
``StringIO``). The rules:

- Warning filters are changed by :func:`quiet_warnings` only (never ``warnings.catch_warnings``
  plus ``simplefilter`` in library code): it adds its own entries and takes exactly those out
  again, so blocks of different threads may end in any order.
- Seeding torch's global generator and drawing from it, or forking it
  (:func:`torch.random.fork_rng`, which puts the saved state back), happen under
  :data:`GLOBAL_RNG_LOCK`, so that what one thread seeds is what it draws.
- Calls into torch's exporters (``torch.export``, ``torch.onnx``) run one at a time under
  :data:`EXPORT_LOCK`: they are not thread-safe (two at once failed with "Trying to pop empty
  mode stack") and they change logger levels of the process.
- Environment variables that switch something on or off are read by :func:`env_flag`, those
  that hold a path by :func:`path_variable` (one rule for whitespace and control characters).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import unicodedata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["EXPORT_LOCK", "GLOBAL_RNG_LOCK", "OFF_WORDS", "Silenced", "env_flag", "path_problem",
           "path_variable", "quiet_warnings"]

#: Held while torch's global random generator is seeded and then drawn from, or forked: a
#: re-entrant lock, since a block may call code that takes it again (a model family's constructor).
GLOBAL_RNG_LOCK = threading.RLock()

#: Held around every call into torch's exporters (:mod:`eqpdenet.export`); re-entrant for the same
#: reason.
EXPORT_LOCK = threading.RLock()

# Held only while warnings.filters is changed (not for a block's whole duration): blocks of
# different threads then never wait for each other, so one can never deadlock another (a model
# built under GLOBAL_RNG_LOCK quiets e2cnn inside), and each takes out only its own entries.
_WARNINGS_LOCK = threading.RLock()

#: The values (after ``strip().lower()``) that turn an on/off environment variable off.
OFF_WORDS = ("0", "false", "no", "off")


def env_flag(name: str, default: bool) -> bool:
    """Whether the environment variable ``name`` switches its feature on: ``default`` where it is
    unset or blank; off for ``0``, ``false``, ``no``, ``off`` (any case, surrounding spaces
    ignored); on for any other value (``1``, ``yes``, ``true``, ``on``, ...)."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in OFF_WORDS


@dataclass(frozen=True)
class Silenced:
    """Which warnings :func:`quiet_warnings` hides: those of ``category`` (or a subclass) whose
    message matches ``message`` at its start (a regular expression, any case; ``""``: any) and
    that are raised from a module whose name matches ``module`` at its start (a regular
    expression; ``""``: any), as :func:`warnings.filterwarnings` reads the same arguments."""

    category: type[Warning] = Warning
    message: str = ""
    module: str = ""

    def entry(self) -> tuple:
        """A new ``warnings.filters`` entry (a new object each call: it is taken out by identity)."""
        return ("ignore", re.compile(self.message, re.I) if self.message else None, self.category,
                re.compile(self.module) if self.module else None, 0)


def _filters_changed() -> None:
    # warnings caches what it decided per call site ("once", "default"); a change of the filters
    # must invalidate that cache, as warnings.filterwarnings does itself (3.14 renamed the hook)
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()
        return
    with getattr(warnings, "_lock", contextlib.nullcontext()):
        warnings._filters_mutated_lock_held()


def _take_out(filters: list, entries: list[tuple]) -> None:
    for entry in entries:
        index = next((i for i, item in enumerate(filters) if item is entry), None)
        if index is not None:
            del filters[index]


@contextlib.contextmanager
def quiet_warnings(*silenced: Silenced) -> Iterator[None]:
    """Within the block, the warnings ``silenced`` describes are not shown (every warning where
    none is given); the filters are as they were after it, whatever other threads did meanwhile.

    Its entries go to the front of ``warnings.filters`` and, at the end, exactly those entries
    (by identity) are taken out again, of the list they went into and of the one in use then (a
    ``warnings.catch_warnings`` of the caller's may have swapped it); each change holds a
    process-wide lock. Unlike ``catch_warnings``, which puts back the whole list it saved, two
    blocks of different threads that overlap therefore end in either order without leaving an
    entry behind, and a filter added meanwhile by anyone else is kept.

    What remains (Python 3.11's filters belong to the process): while the block runs, a warning
    raised by ANOTHER thread that matches ``silenced`` is hidden as well. Prefer a narrow
    :class:`Silenced` (the known warning's category, message or module) to hiding everything."""
    entries = [s.entry() for s in silenced] if silenced else [Silenced().entry()]
    with _WARNINGS_LOCK:
        filters = warnings.filters
        filters[:0] = entries
        _filters_changed()
    try:
        yield
    finally:
        with _WARNINGS_LOCK:
            _take_out(filters, entries)
            if warnings.filters is not filters:
                _take_out(warnings.filters, entries)
            _filters_changed()


def path_problem(value: str) -> str | None:
    """Why ``value``, not empty, cannot be a folder's path as written, or None. Whitespace at
    either end and control characters are refused, not stripped: where they come from a line of
    a file written on Windows (``\\r``), a quoted blank or a paste, taken literally they name
    another, new folder whose name prints like the intended one; stripped, a path that does end
    in a space could not be named. Inner spaces are a path's own."""
    if not value.strip():
        return "it is only whitespace"
    control = next((char for char in value if unicodedata.category(char) == "Cc"), None)
    if control is not None:
        hint = " (a line end of a file written on Windows?)" if control == "\r" else ""
        return f"it holds the control character {control!r}{hint}"
    if value != value.strip():
        return "it begins or ends with whitespace"
    return None


def path_variable(name: str) -> str | None:
    """The path the environment variable ``name`` holds, or None where it is unset or empty.

    Raises:
        ConfigError: a value that is only whitespace, begins or ends with whitespace, or holds a
            control character (a carriage return from a ``.env`` file with Windows line ends):
            one line naming the variable and showing the value with ``repr``. Refused rather
            than stripped: inner spaces are kept as they are, and a path is used exactly as
            written or not at all.
    """
    value = os.environ.get(name)
    if not value:
        return None
    problem = path_problem(value)
    if problem is not None:
        raise ConfigError(f"{name}={value!r} is not a usable path: {problem}; set it to the "
                          f"folder's path exactly as it is, or leave it empty for the default")
    return value
