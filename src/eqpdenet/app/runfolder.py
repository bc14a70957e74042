"""Output folders: which ones eqpdenet may write or replace, and a run folder written as a unit.

**Only folders eqpdenet wrote.** Every folder a command writes results into carries a marker
file, :data:`MARKER` (``.eqpdenet-folder``: which command wrote it, eqpdenet's version). A command
writes into (or, for ``train``, replaces) a folder only if it is new or empty, or carries the
marker of the same kind of command; a folder of the user's files is refused before any work,
however its files are named (a ``model.pt`` or ``config.toml`` of the user's is not a run).
Folders of sweeps written before the marker existed (``results/paper``: a ``results.jsonl`` and
``runs/``) are recognised by what they hold (:func:`claim_folder`'s ``legacy``). No command writes
into the folders a sweep keeps its own files in (``runs/``, ``checkpoints/``, ``superseded/``:
:func:`check_not_inside_a_sweep`, :func:`check_output_keeps`): a sweep reads every file there as
one of its runs. The folder is
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

__all__ = ["MARKER", "RUN_FILES", "SWEEP_KINDS", "check_claim", "check_not_inside_a_sweep",
           "check_output_keeps", "check_replaceable", "claim_folder", "folder_kind", "output_path",
           "staged", "sweep_inside", "write_marker"]

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
#: subfolders): its results, models and configuration.
_RESULT_NAMES = frozenset({*RUN_FILES, "results.jsonl", "table.md", "table.csv", "chosen.toml",
                           "chosen.json", "study.md", "study.json"})
_RESULT_SUFFIXES = frozenset({".pt", ".pt2", ".onnx", ".jsonl"})

#: The folders a sweep keeps inside its own: its run files, checkpoints and set-aside runs. Every
#: file in them is the sweep's (a resume reads them all), and a study's ``runs/`` holds one
#: sweep per configuration.
SWEEP_KINDS = ("reproduce", "benchmark")
_SWEEP_INSIDES = frozenset({"runs", "checkpoints", "superseded"})


def _is_sweep(folder: Path) -> bool:
    """Whether ``folder`` is a sweep's: marked by ``reproduce`` or ``benchmark``, one of a
    study's ``runs/<configuration>/``, or, unmarked, holding a ``results.jsonl`` and a
    ``config.toml`` (a sweep from before markers: ``results/paper``)."""
    kind = folder_kind(folder)
    if kind is not None:
        return kind in SWEEP_KINDS
    if folder.parent.name == "runs" and folder_kind(folder.parent.parent) == "study":
        return True
    return (folder / "results.jsonl").is_file() and (folder / "config.toml").is_file()


def sweep_inside(path: Path) -> tuple[Path, Path] | None:
    """``(sweep, inner folder)`` where ``path`` lies in one of the folders a sweep keeps inside
    its own (``runs/``, ``checkpoints/``, ``superseded/``; :func:`_is_sweep`) or is a study's
    ``runs/`` itself; else None. The path's real folders are judged (links followed)."""
    path = Path(os.path.realpath(path))
    for inner in [path, *path.parents]:
        if inner.name not in _SWEEP_INSIDES or inner.parent == inner:
            continue
        owner = inner.parent
        if _is_sweep(owner) or (inner.name == "runs" and folder_kind(owner) == "study"
                                and inner == path):
            return owner, inner
    return None


def check_not_inside_a_sweep(folder: Path, option: str = "--out") -> None:
    """Refuse an output folder inside a sweep's own folders (:func:`sweep_inside`): the sweep
    reads every ``runs/*.json`` as a run file (a folder ``runs/fcnn-seed7.json`` made it fail
    with "Is a directory") and moves what is in ``checkpoints/``; an
    :class:`OutputFolderError` naming the sweep."""
    inside = sweep_inside(folder)
    if inside is not None:
        owner, inner = inside
        raise OutputFolderError(f"{option} {folder} is inside {inner}, a folder the sweep {owner} "
                                f"keeps its own files in; choose a folder outside it")


def check_output_keeps(path: Path, option: str, inputs: Iterable[Path | None] = ()) -> None:
    """Refuse an output file ``path`` (``evaluate --json``, ``export --out``, ``figure --out``)
    that would replace one of the command's ``inputs`` (its checkpoint), eqpdenet's folder
    marker, or a result in a folder a command marked as its own, at any depth (a ``train``
    run's ``model.pt``, ``config.toml``, ``result.json``; a sweep's ``results.jsonl``, tables,
    checkpoints; a study's ``chosen.toml``, ``chosen.json``, ``study.md``;
    :data:`_RESULT_NAMES`, :data:`_RESULT_SUFFIXES`), and any file, new or not, inside the
    folders a sweep keeps its runs in (:func:`sweep_inside`: ``runs/``, ``checkpoints/``,
    ``superseded/``, whose every ``.json`` a resume reads as a run): an
    :class:`OutputFolderError` naming ``option``. A new file elsewhere in such a folder, or any
    other existing file (an earlier ``--json`` summary, a figure), is written as asked."""
    path = Path(path)
    inside = sweep_inside(path.parent)
    if inside is not None:  # new or not: a sweep reads every file there as one of its runs
        raise OutputFolderError(f"{option} {path}: is inside {inside[1]}, where the sweep "
                                f"{inside[0]} keeps its runs; choose a file outside it")
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
        where = "" if target == path else f" (the file the link {path} leads to, {target})"
        inside = sweep_inside(target.parent)
        if inside is not None:  # a link leading into a sweep's runs
            raise OutputFolderError(f"{option} {path}: would replace a file of {inside[1]}{where}, "
                                    f"where the sweep {inside[0]} keeps its runs; choose a new "
                                    f"file name or another folder")
        # every folder above: a study's runs/<configuration>/ is a sweep three levels down
        owner = next((folder for folder in target.parents if folder_kind(folder)), None)
        if owner is not None and (target.name in _RESULT_NAMES or target.suffix in _RESULT_SUFFIXES):
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
    check_not_inside_a_sweep(folder)
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
    check_not_inside_a_sweep(folder)
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
