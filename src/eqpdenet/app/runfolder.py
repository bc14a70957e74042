"""Output folders: which ones eqpdenet may write or replace, and a run folder written as a unit.

**Only folders eqpdenet wrote.** Every folder a command writes results into carries a marker
file, :data:`MARKER` (``.eqpdenet-folder``: which command wrote it, eqpdenet's version). A command
writes into (or, for ``train``, replaces) a folder only if it is new or empty, or carries the
marker of the same kind of command; a folder of the user's files is refused before any work,
however its files are named (a ``model.pt`` or ``config.toml`` of the user's is not a run).
Folders of sweeps written before the marker existed (``results/paper``: a ``results.jsonl`` and
``runs/``) are recognised by what they hold (:func:`claim_folder`'s ``legacy``). The folder is
the path's real folder: a symbolic link is followed, never replaced, and a path that is the
current folder (or holds it) is never replaced.

**A run folder is written as a unit**: files go to a temporary sibling folder, which then replaces
the run folder in one step, so the folder always holds one run's files (a result always matches
its model; a failed rerun never leaves the previous model beside the new result).

Used with the folder's writer lock (:mod:`eqpdenet.app.locks`)::

    with hold(out, "train"):
        check_replaceable(out, RUN_FILES)     # before any work: refuse to replace other files
        ...                                   # load data, train
        with staged(out) as stage:            # write into stage; on success stage becomes out
            save(stage / "model.pt"); ...

A process killed while writing leaves its staging folder (``.<name>.staging-<pid>``) beside the
run folder, removed by the next writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from .. import __version__
from ..errors import OutputFolderError
from ..files import link_target
from .files import atomic_write
from .locks import LOCK_NAME, make_folder, replace_held_folder

__all__ = ["MARKER", "RUN_FILES", "check_claim", "check_replaceable", "claim_folder", "folder_kind",
           "output_path", "staged", "write_marker"]

#: What ``eqpdenet train`` writes into its output folder (besides :data:`MARKER`).
RUN_FILES = ("model.pt", "config.toml", "result.json")

#: The file by which eqpdenet marks a folder as its own (module docstring).
MARKER = ".eqpdenet-folder"


def output_path(text: str | os.PathLike, option: str = "--out") -> Path:
    """The folder ``text`` names, with symbolic links followed (module docstring); an
    :class:`OutputFolderError` for an empty path."""
    if not str(text).strip():
        raise OutputFolderError(f"{option} is empty: give the folder to write into")
    return Path(os.path.realpath(os.path.expanduser(text)))


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as written by eqpdenet's ``kind`` command (``"train"``, ``"reproduce"``)."""
    text = json.dumps({"kind": kind, "eqpdenet": __version__,
                       "note": "written by eqpdenet, which may update or replace this folder"})
    atomic_write(Path(folder) / MARKER, (text + "\n").encode())


def folder_kind(folder: Path) -> str | None:
    """The kind of command whose marker ``folder`` carries, None if it carries none."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads((Path(folder) / MARKER).read_text()).get("kind")
    return None


#: What a command's own output may not replace in a folder another command marked (or in its
#: subfolders: a benchmark's checkpoints/, runs/): its results, models and configuration.
_RESULT_NAMES = frozenset({*RUN_FILES, "results.jsonl", "table.md", "table.csv", "chosen.toml",
                           "study.md"})
_RESULT_SUFFIXES = frozenset({".pt", ".pt2", ".onnx", ".jsonl"})


def check_output_keeps(path: Path, option: str, inputs: Iterable[Path | None] = ()) -> None:
    """Refuse an output file ``path`` (``evaluate --json``, ``export --out``, ``figure --out``)
    that would replace one of the command's ``inputs`` (its checkpoint), eqpdenet's folder
    marker, or a result in a folder a command marked as its own (a ``train`` run's ``model.pt``,
    ``config.toml``, ``result.json``; a sweep's ``results.jsonl``, tables, checkpoints;
    :data:`_RESULT_NAMES`, :data:`_RESULT_SUFFIXES`): an :class:`OutputFolderError` naming
    ``option``. A new file in such a folder, or any other existing file (an earlier
    ``--json`` summary, a figure), is written as asked."""
    path = Path(path)
    if not path.exists():
        return
    for source in inputs:
        try:
            same = source is not None and os.path.samefile(path, source)
        except OSError:  # an input that is not there: loading it says so
            same = False
        if same:
            raise OutputFolderError(f"{option} {path} is the command's own input ({source}): "
                                    f"writing it would destroy it; choose another file")
    try:
        # A link is written through (atomic_write, export): the file it leads to is judged too.
        written = {path, link_target(path)}
    except OSError:  # a loop of links: writing it says so
        written = {path}
    for target in written:
        if target.name == MARKER:
            raise OutputFolderError(f"{option} {path}: would replace eqpdenet's folder marker")
        owner = next((folder for folder in list(target.parents)[:3] if folder_kind(folder)), None)
        if owner is not None and (target.name in _RESULT_NAMES or target.suffix in _RESULT_SUFFIXES):
            where = "" if target == path else f" (the file the link {path} leads to, {target})"
            raise OutputFolderError(f"{option} {path}: would replace a result of {owner}{where}, a "
                                    f"folder eqpdenet's {folder_kind(owner)} command wrote; choose "
                                    f"a new file name or another folder")


def _contents(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (LOCK_NAME, MARKER))


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _holds_the_current_folder(folder: Path) -> bool:
    here = Path(os.path.realpath(os.getcwd()))
    real = Path(os.path.realpath(folder))
    return real == here or real in here.parents


def check_replaceable(folder: Path, files: Iterable[str] = RUN_FILES) -> None:
    """Raise :class:`OutputFolderError` unless ``folder`` is missing or empty, or is a run folder
    eqpdenet wrote (its ``train`` marker) holding only ``files``: a previous run, which a new
    run may replace. Never the current folder or one that holds it."""
    folder = Path(folder)
    if _holds_the_current_folder(folder):
        raise OutputFolderError(f"{folder} is the current folder or holds it: a run replaces its "
                                f"whole folder; give a new folder (e.g. runs/NAME)")
    if not folder.is_dir():
        return  # missing (created by the run), or a file: the lock reports it
    names = _contents(folder)
    if not names:
        return
    kind = folder_kind(folder)
    if kind is None:
        raise OutputFolderError(f"{folder} holds files that eqpdenet did not write as a run "
                                f"({_shown(names)}; no {MARKER} marker); a run replaces its "
                                f"whole folder: choose a new or empty folder")
    if kind != "train":
        raise OutputFolderError(f"{folder} is the folder of an `eqpdenet {kind}`, not of one "
                                f"run; a run replaces its whole folder: choose another")
    foreign = [name for name in names if name not in set(files)]
    if foreign:
        raise OutputFolderError(f"{folder} holds files that are not part of an eqpdenet run "
                                f"({_shown(foreign)}); a run replaces its whole folder: move "
                                f"them, or choose a new or empty folder")


def check_claim(folder: Path, kind: str, legacy: Iterable[str] = ()) -> bool:
    """Whether the ``kind`` command may write into ``folder`` (module docstring): True if it is
    new, empty or marked by ``kind``, False if it is a folder of that command from before markers
    (it holds one of the names in ``legacy``); an :class:`OutputFolderError` otherwise. Writes
    nothing (call it before taking the folder's lock, so a refused folder is left untouched)."""
    folder = Path(folder)
    if not folder.is_dir():
        return True
    names, marked = _contents(folder), folder_kind(folder)
    if marked is not None and marked != kind:
        raise OutputFolderError(f"{folder} is the folder of an `eqpdenet {marked}`; write the "
                                f"results of `eqpdenet {kind}` to another folder")
    if marked is None and names:
        if not set(legacy) & set(names):
            raise OutputFolderError(
                f"{folder} holds files that eqpdenet did not write ({_shown(names)}; no "
                f"{MARKER} marker): `eqpdenet {kind}` would overwrite some; choose a new or "
                f"empty folder")
        return False
    return True


def claim_folder(folder: Path, kind: str, legacy: Iterable[str] = ()) -> Path:
    """:func:`check_claim`, then create ``folder`` and mark it (a folder from before markers is
    left unmarked). Returns the folder."""
    folder = Path(folder)
    if check_claim(folder, kind, legacy):
        make_folder(folder)
        if folder_kind(folder) is None:
            write_marker(folder, kind)
    return folder


def _staging_name(folder: Path, pid: int | str) -> str:
    return f".{folder.name}.staging-{pid}"


@contextlib.contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A fresh sibling folder (marked as a ``train`` run) to write the run into; when the
    ``with`` block ends without an exception it replaces ``folder`` as a unit, else it is deleted
    and ``folder`` is untouched. The caller holds ``folder``'s lock
    (:func:`eqpdenet.app.locks.hold`)."""
    folder = Path(os.path.realpath(folder))  # a link to the folder stays a link to the new one
    for stale in folder.parent.glob(_staging_name(folder, "*")):
        # Only the lock holder stages into this folder, and that is us: any other staging
        # folder was left by a killed writer.
        if stale.is_symlink() or not stale.is_dir():
            stale.unlink(missing_ok=True)
        else:
            shutil.rmtree(stale, ignore_errors=True)
    stage = folder.parent / _staging_name(folder, os.getpid())
    make_folder(stage)
    write_marker(stage, "train")
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
