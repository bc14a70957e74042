"""A run folder written as a unit: files go to a temporary sibling folder, which then replaces the
run folder in one step, so the folder always holds one run's files (a result always matches its
model; a failed rerun never leaves the previous model beside the new result).

Used with the folder's writer lock (:mod:`eqpdenet.app.locks`)::

    with hold(out, "train"):
        check_replaceable(out, RUN_FILES)     # before any work: refuse to replace other files
        ...                                   # load data, train
        with staged(out) as stage:            # write into stage; on success stage becomes out
            save(stage / "model.pt"); ...

A rerun into a folder that holds a previous run replaces it (the whole folder); a folder holding
anything else is refused before any work starts. A process killed while writing leaves its
staging folder (``.<name>.staging-<pid>``) beside the run folder, removed by the next writer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import OutputFolderError
from .locks import LOCK_NAME, make_folder, replace_held_folder

__all__ = ["RUN_FILES", "check_replaceable", "staged"]

#: What ``eqpdenet train`` writes into its output folder.
RUN_FILES = ("model.pt", "config.toml", "result.json")


def check_replaceable(folder: Path, files: Iterable[str] = RUN_FILES) -> None:
    """Raise :class:`OutputFolderError` unless ``folder`` is missing, empty or holds only
    ``files`` (a previous run, which a new run may replace)."""
    folder = Path(folder)
    if not folder.exists():
        return
    allowed = {*files, LOCK_NAME}
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise OutputFolderError(f"{folder} holds files that are not part of an eqpdenet run "
                                f"({shown}); a run replaces its whole folder: choose a new or "
                                f"empty folder")


def _staging_name(folder: Path, pid: int | str) -> str:
    return f".{folder.name}.staging-{pid}"


@contextlib.contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A fresh sibling folder to write the run into; when the ``with`` block ends without an
    exception it replaces ``folder`` as a unit, else it is deleted and ``folder`` is untouched.
    The caller holds ``folder``'s lock (:func:`eqpdenet.app.locks.hold`)."""
    folder = Path(os.path.abspath(folder))
    for stale in folder.parent.glob(_staging_name(folder, "*")):
        # Only the lock holder stages into this folder, and that is us: any other staging
        # folder was left by a killed writer.
        shutil.rmtree(stale, ignore_errors=True)
    stage = folder.parent / _staging_name(folder, os.getpid())
    make_folder(stage)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        replace_held_folder(folder, stage)
    except OSError as error:
        shutil.rmtree(stage, ignore_errors=True)
        raise OutputFolderError(f"cannot replace {folder} by the new run: "
                                f"{error.strerror or error}") from None
