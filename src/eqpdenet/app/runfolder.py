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
one of its runs. Nor into a ``train`` run's folder, finished or being written
(:func:`check_not_inside_a_run`; a file only while the run is written,
:func:`check_output_keeps`): the run replaces its whole folder when it ends and at every rerun.
The folder is the path's real folder: a symbolic link is followed, never replaced, and a path
that is the current folder (or holds it) is never replaced.

**A run folder is written as a unit**: files go to a temporary sibling folder, which then replaces
the run folder in one step, so the folder always holds one run's files (a result always matches
its model; a failed rerun never leaves the previous model beside the new result).

Used with the folder's writer lock (:mod:`eqpdenet.app.locks`)::

    with hold(out, "train"):
        check_replaceable(out, RUN_FILES)     # before any work: refuse to replace other files
        ...                                   # load data, train
        with staged(out) as stage:            # write into stage; on success stage becomes out
            save(stage / "model.pt"); ...

A process killed while writing leaves its staging folder (``.<name>.staging-<pid>``, a long name
shortened) beside the run folder, removed by the next writer. A write that fails there names the
run folder's file (``--out/model.pt``), never the staging folder.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .. import __version__
from ..errors import OutputFolderError
from ..files import link_target, write_cause
from .files import TEMPORARY_SUFFIX, _reason, atomic_write, folder_kept, missing_folders
from .locks import LOCK_NAME, check_free, hold, holder, make_folder, replace_held_folder, shared

__all__ = ["COMMAND_PLOTS", "MARKER", "RUN_FILES", "SWEEP_KINDS", "check_claim", "check_not_inside_a_run",
           "check_not_inside_a_sweep", "check_output_keeps", "check_replaceable", "check_stageable",
           "claim_folder", "claiming", "folder_kind", "mount_point", "output_path", "run_around",
           "staged", "sweep_inside", "write_marker", "writing_beside_runs"]

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
        return json.loads((Path(folder) / MARKER).read_text(encoding="utf-8")).get("kind")
    return None


#: The plots and reports a command writes into the folder it marks: ``reproduce``'s and
#: ``report``'s, ``benchmark``'s, ``describe --out``'s, ``equivariance``'s
#: (``tests/app/test_output_names_round13.py`` checks each command's names are here).
COMMAND_PLOTS = frozenset({"accuracy_vs_params.png", "robustness.png", "evolution.png",
                           "transforms.png", "convergence.png", "models.png",
                           "invariant_orders.md"})

#: What a command's own output may not replace in a folder another command marked (or in its
#: subfolders): its results, models, configuration, and the plots that go with its tables
#: (``figure --out`` and ``evaluate --json`` replaced a sweep's plot, exit 0).
_RESULT_NAMES = frozenset({*RUN_FILES, "results.jsonl", "table.md", "table.csv", "chosen.toml",
                           "chosen.json", "study.md", "study.json", *COMMAND_PLOTS})
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


def _shared(folder: Path) -> tuple[int | None, bool]:
    """``(fd, busy)`` of :func:`eqpdenet.app.locks.shared` for ``folder``'s writer lock: a
    descriptor holding it shared (None where there is none to hold, or a writer holds it), and
    whether a writer holds it now."""
    return shared(Path(folder) / LOCK_NAME)


def _train_writer(folder: Path) -> str | None:
    """Who is writing ``folder`` as a ``train`` run now (its lock held by a ``train`` process,
    or by one that has not recorded its command yet), in a few words; None if no one is. The
    lock is tested with a shared ``flock`` taken without waiting and released at once."""
    fd, busy = _shared(folder)
    if fd is not None:
        os.close(fd)  # free (closing releases the shared lock)
    if not busy:
        return None
    return _writer_words(folder)


def _writer_words(folder: Path) -> str | None:
    """:func:`_train_writer`'s words for a ``folder`` whose lock a writer holds now."""
    info = holder(folder)
    command = info.get("command") if info is not None else None
    if command not in (None, "", "train"):
        return None  # a sweep, study, report ...: they write files, never replace the folder
    pid = f" (pid {info['pid']})" if info is not None and info.get("pid") else ""
    return f"a folder that `eqpdenet train`{pid} is writing as a run now"


def run_around(path: Path, *, itself: bool = False, marked: bool = True) -> tuple[Path, str] | None:
    """``(folder, what it is)`` for the first folder above ``path`` (and ``path`` itself with
    ``itself``) that is a ``train`` run's: marked by ``train`` (with ``marked``) or being
    written by a ``train`` now (:func:`_train_writer`: a first run's folder holds only its lock
    until the run is swapped in); None where there is none. A run replaces its whole folder
    when it ends, and again at every rerun: what was written inside it is deleted."""
    path = Path(os.path.realpath(path))
    for folder in ([path] if itself else []) + list(path.parents):
        if marked and folder_kind(folder) == "train":
            return folder, "the folder of an `eqpdenet train` run"
        writer = _train_writer(folder)
        if writer is not None:
            return folder, writer
    return None


def check_not_inside_a_run(folder: Path, option: str = "--out") -> None:
    """Refuse an output folder inside a ``train`` run's folder (:func:`run_around`): that run,
    still running or rerun, replaces its whole folder and deletes this one with it (a ``train
    --out R/sub`` beside a running ``train --out R`` wrote its run, exit 0, and was gone when
    R's run ended); an :class:`OutputFolderError` naming the run's folder."""
    around = run_around(folder)
    if around is not None:
        owner, what = around
        raise OutputFolderError(f"{option} {folder} is inside {owner}, {what}: a run replaces "
                                f"its whole folder when it ends (and at every rerun), which "
                                f"would delete this one; choose a folder outside it")


def check_output_keeps(path: Path, option: str, inputs: Iterable[Path | None] = ()) -> None:
    """Refuse an output file ``path`` (``evaluate --json``, ``export --out``, ``figure --out``)
    that would replace one of the command's ``inputs`` (its checkpoint), or a result in a folder
    a command marked as its own, at any depth (a ``train`` run's ``model.pt``, ``config.toml``,
    ``result.json``; a sweep's ``results.jsonl``, tables, checkpoints and plots; a study's
    ``chosen.toml``, ``chosen.json``, ``study.md``; :data:`_RESULT_NAMES`,
    :data:`COMMAND_PLOTS`, :data:`_RESULT_SUFFIXES`), and any file, new or not, inside the
    folders a sweep keeps its runs in (:func:`sweep_inside`: ``runs/``, ``checkpoints/``,
    ``superseded/``, whose every ``.json`` a resume reads as a run), and a file, new or not, of
    the name of eqpdenet's folder marker (:data:`MARKER`) or of a folder's writer lock
    (:data:`~eqpdenet.app.locks.LOCK_NAME`: a file renamed over the lock a sweep holds let a
    second writer lock the new file): an :class:`OutputFolderError` naming ``option``. A new
    file elsewhere in such a folder, or any other existing file (an earlier ``--json`` summary,
    a figure), is written as asked; but no file at all inside a folder that ``train`` is writing
    now (:func:`run_around`, the lock held): when that run ends it replaces its whole folder,
    and the file with it. (A file written into a finished run's folder stays: a rerun of that
    run refuses to replace a folder holding files that are not its own,
    :func:`check_replaceable`.)"""
    path = Path(path)
    inside = sweep_inside(path.parent)
    if inside is not None:  # new or not: a sweep reads every file there as one of its runs
        raise OutputFolderError(f"{option} {path}: is inside {inside[1]}, where the sweep "
                                f"{inside[0]} keeps its runs; choose a file outside it")
    folders = [path.parent]
    with contextlib.suppress(OSError):  # a link is written through: where it leads counts too
        folders.append(link_target(path).parent)
    around = next((found for folder in folders
                   if (found := run_around(folder, itself=True, marked=False)) is not None), None)
    if around is not None:
        raise _inside_a_run(path, option, *around)
    try:
        # A link is written through (atomic_write, export): the file it leads to is judged too.
        written = {path, link_target(path)}
    except OSError:  # a loop of links: writing it says so
        written = {path}
    for target in written:  # new or not: a file of these names is eqpdenet's own
        # a new one too: a sweep may make the lock between this check and the write
        verb = "would replace" if os.path.lexists(target) else "would write a file named as"
        if target.name == MARKER:
            raise OutputFolderError(f"{option} {path}: {verb} eqpdenet's folder marker")
        if target.name == LOCK_NAME:
            # a file renamed over the lock leaves its holder's flock on the old, unlinked one:
            # a second writer locks the new file and both write the folder
            raise OutputFolderError(f"{option} {path}: {verb} eqpdenet's writer lock of "
                                    f"{target.parent}")
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
    for target in written:
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


def _inside_a_run(path: Path, option: str, owner: Path, what: str) -> OutputFolderError:
    return OutputFolderError(f"{option} {path}: is inside {owner}, {what}: when the run ends it "
                             f"replaces its whole folder, which would delete this file; choose a "
                             f"file outside it")


@contextlib.contextmanager
def writing_beside_runs(path: Path, option: str) -> Iterator[None]:
    """Hold, for the ``with`` block that writes the single file ``path`` (``evaluate --json``,
    ``export --out``, ``figure --out``), a shared lock on the writer lock of every folder above
    it (and above the file a link leads to): a ``train`` started meanwhile cannot take one of
    them (it waits for the write, :data:`eqpdenet.app.locks.SHARED_WAIT`, then finds the file
    and refuses to replace a folder holding it), so it cannot replace the folder, and the
    file with it, after :func:`check_output_keeps` let the file be written. A ``train``
    writing one of them now: the :class:`OutputFolderError` of :func:`check_output_keeps`.
    Folders a sweep or study is writing are passed over: they never replace their folder."""
    path = Path(path)
    starts = [path]
    with contextlib.suppress(OSError):  # a loop of links: writing it says so
        starts.append(link_target(path))
    folders: dict[str, Path] = {}
    for start in starts:
        real = Path(os.path.realpath(start.parent))
        for folder in (real, *real.parents):
            folders.setdefault(str(folder), folder)
    held: list[int] = []
    try:
        for folder in folders.values():
            fd, busy = _shared(folder)
            if fd is not None:
                held.append(fd)
            elif busy and (what := _writer_words(folder)) is not None:
                raise _inside_a_run(path, option, folder, what)
        yield
    finally:
        for fd in held:
            os.close(fd)


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
    check_not_inside_a_run(folder)
    check_stageable(folder)
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
    # the entry itself only: run_around would also find ``folder``, a run, above every entry
    runs = [name for name in foreign if (folder / name).is_dir() and not (folder / name).is_symlink()
            and (folder_kind(folder / name) == "train" or _train_writer(folder / name) is not None)]
    if runs:  # a run inside this one (written before such runs were refused)
        raise OutputFolderError(f"{folder} holds the folder of another eqpdenet run "
                                f"({_shown(runs)}); a run replaces its whole folder, which would "
                                f"delete that run: move it out, or choose a new or empty folder")
    if foreign:
        raise OutputFolderError(f"{folder} holds files that are not part of an eqpdenet run "
                                f"({_shown(foreign)}); a run replaces its whole folder: move "
                                f"them, or choose a new or empty folder")


def check_claim(folder: Path, kind: str, legacy: Iterable[str] = ()) -> bool:
    """Whether the ``kind`` command may write into ``folder`` (module docstring): True if it is
    new, empty or marked by ``kind``, False if it is a folder of that command from before markers
    (it holds one of the names in ``legacy``); an :class:`OutputFolderError` otherwise, and a
    :class:`~eqpdenet.errors.FolderLockedError` where another process is writing the folder
    now (:func:`eqpdenet.app.locks.check_free`: a first ``train`` run's folder holds only its
    lock until the run is swapped in, and looks empty). Also the check, before any work, that
    the folder can be created and written (:func:`_check_writable`). Leaves nothing behind (call
    it before taking the folder's lock, so a refused folder is left untouched)."""
    folder = Path(folder)
    check_not_inside_a_sweep(folder)
    check_not_inside_a_run(folder)
    check_free(folder)
    if not folder.is_dir():
        _check_writable(folder)
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
        _check_writable(folder)
        return False
    _check_writable(folder)
    return True


def _check_writable(folder: Path) -> None:
    """That ``folder`` can be created (where it is missing: a folder is made and removed again
    in the nearest folder above it that exists) and a file written into it (one is made and
    removed); an :class:`OutputFolderError` in the words of the lock, which would find it out
    (a file in the way, a read-only file system, no permission, no room for an entry)."""
    folder = Path(folder)
    if folder.is_dir():
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".eqpdenet-probe.",
                                         suffix=TEMPORARY_SUFFIX)
        except OSError as error:
            raise OutputFolderError(f"cannot write in the folder {folder}: {_reason(error)}") from None
        try:
            os.close(fd)
        finally:  # an interrupt included: no probe is left
            with contextlib.suppress(OSError):
                os.unlink(probe)
        return
    if folder.exists() or folder.is_symlink():
        if folder.exists():
            raise OutputFolderError(f"{folder} is a file, not a folder")
        return  # a dangling link: creating the folder says what it meets
    above = next((p for p in folder.parents if p.exists()), None)
    if above is None:
        return
    if not above.is_dir():
        raise OutputFolderError(f"cannot create the folder {folder}: {above} is a file, not a "
                                f"folder")
    made = None
    try:
        made = tempfile.mkdtemp(dir=above, prefix=".eqpdenet-probe.")
    except OSError as error:
        raise OutputFolderError(f"cannot create the folder {folder}: {_reason(error)}") from None
    finally:  # an interrupt included: no probe is left
        if made is not None:
            with contextlib.suppress(OSError):
                os.rmdir(made)


def claim_folder(folder: Path, kind: str, legacy: Iterable[str] = ()) -> Path:
    """:func:`check_claim`, then create ``folder`` and mark it (a folder from before markers is
    left unmarked). Returns the folder."""
    folder = Path(folder)
    if check_claim(folder, kind, legacy):
        make_folder(folder)
        if folder_kind(folder) is None:
            write_marker(folder, kind)
    return folder


@contextlib.contextmanager
def claiming(folder: Path, kind: str, legacy: Iterable[str] = ()) -> Iterator[Path]:
    """For the ``with`` block that writes the ``kind`` command's results into ``folder``: its
    writer lock held (:func:`eqpdenet.app.locks.hold`: a ``train`` cannot take the folder, and
    swap its run in over the results, meanwhile), and the folder claimed
    (:func:`claim_folder`). A block that fails (an interrupt included) and leaves a folder this
    call made holding only its marker and lock removes it, and the folders made above it, as if
    it had never been claimed. Call :func:`check_claim` before the long work, as the first
    check; this one is made again with the lock held."""
    folder = Path(folder)
    created = missing_folders(folder)
    with hold(folder, kind):
        claim_folder(folder, kind, legacy)
        try:
            yield folder
        except BaseException:
            if created and folder_kept(folder):  # never a folder put at its path since
                with contextlib.suppress(OSError):
                    if sorted(entry.name for entry in os.scandir(folder)) == sorted([LOCK_NAME,
                                                                                       MARKER]):
                        (folder / MARKER).unlink()  # then hold removes the lock and the folders
            raise


#: The longest part of a run folder's name that its staging folder's name repeats: the staging
#: name stays within the file systems' 255 bytes whatever the folder's name.
_STAGING_STEM = 40


def _staging_prefix(folder: Path) -> str:
    """``.<name>.staging-``, with a long ``name`` shortened to its first characters and a hash
    of the whole (so that two long names that begin alike stage apart)."""
    name = folder.name
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > _STAGING_STEM:
        name = raw[:_STAGING_STEM].decode("utf-8", "ignore") + "~" + \
            hashlib.sha256(raw).hexdigest()[:8]
    return f".{name}.staging-"


def _staging_name(folder: Path, pid: int | str) -> str:
    return f"{_staging_prefix(folder)}{pid}"


def _names(error: OSError, stage: Path) -> bool:
    """Whether ``error`` names ``stage`` or a file in it."""
    named = [getattr(error, "filename", None), getattr(error, "filename2", None)]
    return any(name is not None and (Path(str(name)) == stage or stage in Path(str(name)).parents)
               for name in named) or str(stage) in str(error)


def _as_asked(error: OSError, stage: Path, folder: Path) -> OutputFolderError:
    """``error`` of a write into ``stage`` as an :class:`OutputFolderError` naming the file of
    the run folder ``folder`` it stands for (``--out/model.pt``), never the staging folder."""
    text = str(error.filename) if getattr(error, "filename", None) is not None else ""
    asked = folder
    with contextlib.suppress(ValueError):
        asked = folder / Path(text).relative_to(stage) if text else folder
    message = str(error) if isinstance(error, OutputFolderError) else write_cause(error)
    if isinstance(error, OutputFolderError):  # its text may name the staging folder
        message = message.replace(str(stage), str(folder))
        return OutputFolderError(f"cannot write the run into {folder}: {message}")
    return OutputFolderError(f"cannot write {asked}: {message}")


def mount_point(folder: Path) -> bool:
    """Whether ``folder`` is a mount point: another file system than its parent folder's (the
    usual test, ``st_dev``), or a folder of the same file system mounted there (a bind mount,
    listed in ``/proc/self/mountinfo`` on Linux). Neither can be renamed, nor replaced (EBUSY),
    and a folder cannot be renamed from one file system into another (EXDEV)."""
    folder = Path(os.path.realpath(folder))
    try:
        if os.path.ismount(folder):
            return True
    except OSError:
        return False
    return str(folder) in _mount_points()


def _mount_points() -> set[str]:
    """The mount points ``/proc/self/mountinfo`` lists (empty where there is none to read)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return set()
    points = set()
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:  # the 5th field, with space, tab, newline, backslash as \ooo
            points.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def _mount_refusal(folder: Path, option: str = "--out") -> OutputFolderError:
    return OutputFolderError(f"{option} {folder} is a mount point (a file system of its own, a "
                             f"volume or share mounted there): a run is written into a new folder "
                             f"beside it, in {folder.parent}, and then swapped in, which a mount "
                             f"point cannot be; give a folder inside it (e.g. {folder / 'run'})")


def check_stageable(folder: Path) -> None:
    """Before any work: ``folder`` can be replaced by a folder written beside it (a run is
    written into a sibling folder, :func:`staged`, which then replaces ``folder``): it is not a
    mount point (:func:`mount_point`: it could be neither renamed nor replaced, and only at the
    end of the run would that show), and the staging folder is created and removed again. An
    :class:`OutputFolderError` naming ``folder`` and the cause otherwise (a mount point, a
    parent folder without write permission, a full disk). A link is followed: the folder it
    leads to is checked. Nothing is checked where the parent does not exist yet (taking the
    folder's lock creates it, on the parent's file system)."""
    folder = Path(os.path.realpath(folder))
    if folder.is_dir() and mount_point(folder):
        raise _mount_refusal(folder)
    if not folder.parent.is_dir():
        return
    stage = folder.parent / _staging_name(folder, os.getpid())
    try:
        stage.mkdir()
    except FileExistsError:
        return  # our own, left by an interrupted run of this process: staged() replaces it
    except OSError as error:
        # the words of a folder that cannot be made (what a user asked for), then why here
        raise OutputFolderError(f"--out {folder}: cannot create the folder: {_reason(error)} (a "
                                f"run is written into a new folder beside it, in "
                                f"{folder.parent}, then swapped in)") from None
    finally:
        with contextlib.suppress(OSError):
            stage.rmdir()


def _swap_cause(error: OSError, folder: Path) -> str:
    """Why the run's folder could not replace ``folder``, in words that say what to do."""
    text = error.strerror or str(error)
    if error.errno == errno.EBUSY:
        return (f"{text}: {folder} is a mount point (or in use as one), which cannot be replaced; "
                f"give a folder inside it (e.g. {folder / 'run'})")
    if error.errno == errno.EXDEV:
        return (f"{text}: {folder} is on another file system than {folder.parent}, where the run "
                f"was written (a mount point); give a folder inside it (e.g. {folder / 'run'})")
    return text


@contextlib.contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A fresh sibling folder (marked as a ``train`` run) to write the run into; when the
    ``with`` block ends without an exception it replaces ``folder`` as a unit, else it is deleted
    and ``folder`` is untouched (an interrupt included, from the staging folder's creation on).
    The caller holds ``folder``'s lock (:func:`eqpdenet.app.locks.hold`). A write that fails in
    the staging folder (a full disk, the file size limit) is an :class:`OutputFolderError`
    naming the file of ``folder`` it stood for (``--out/model.pt``), never the staging folder."""
    folder = Path(os.path.realpath(folder))  # a link to the folder stays a link to the new one
    # Escaped: a folder named "run[1]" is not a pattern (its stale folders were left).
    pattern = os.path.join(glob.escape(str(folder.parent)), glob.escape(_staging_prefix(folder)))
    for stale in map(Path, glob.glob(pattern + "*")):
        # Only the lock holder stages into this folder, and that is us: any other staging
        # folder was left by a killed writer.
        if stale.is_symlink() or not stale.is_dir():
            stale.unlink(missing_ok=True)
        else:
            shutil.rmtree(stale, ignore_errors=True)
    stage = folder.parent / _staging_name(folder, os.getpid())
    try:
        make_folder(stage)
        write_marker(stage, "train")
    except BaseException as error:  # Ctrl-C, SIGTERM (as KeyboardInterrupt) included
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(error, OSError):
            raise _as_asked(error, stage, folder) from None
        raise
    try:
        yield stage
    except OSError as error:
        shutil.rmtree(stage, ignore_errors=True)
        if not _names(error, stage):
            raise
        raise _as_asked(error, stage, folder) from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        replace_held_folder(folder, stage)
    except BaseException as error:
        # before the swap: the new run; after it: the old contents, which go anyway
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, OutputFolderError):
            raise OutputFolderError(f"cannot replace {folder} by the new run: "
                                    f"{_swap_cause(error, folder)}") from None
        raise
