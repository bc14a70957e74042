"""File helpers of the application: atomic writes, sets of files, JSON lines, figures.

Every result file is written through :func:`atomic_write` (a temporary file in the same folder,
then a rename), so a killed job never leaves a half-written file. A process killed between the two
(SIGKILL; a worker process its parent stopped) leaves the temporary file, named
``.<name>.<random>.eqpdenet.tmp`` (a long name shortened: :func:`eqpdenet.files.temporary_prefix`);
the writer lock of the folder removes such files when it is
taken and when it is released (:func:`remove_stale_temporaries`, called by
:func:`eqpdenet.app.locks.hold`), so none outlives the next command, nor an interrupted one.
A file written outside such a folder (``evaluate --json``, a link's target in another folder) has
no lock holder to sweep it: every write first removes the killed writers' files beside its own
target (:func:`eqpdenet.files.remove_stale_beside`: unlocked and untouched for
:data:`~eqpdenet.files.STALE_GRACE` seconds).

Outputs that describe one run of a command together (a report's table and plot, a study's
summary and choice, the equivariance study's tables and figures) are written as one set by
:func:`write_set`: all of them, or none.

**A folder a command holds is never made anew.** The folders whose writer lock this process
holds (:func:`eqpdenet.app.locks.hold`) are recorded with their identity (device and inode,
:func:`keep_folder`); every write into one of them, and every folder made inside one
(:func:`atomic_write`, :func:`write_set`, :func:`make_folder`), first checks that the folder at
that path is still the one it took (:func:`check_folder_kept`). A folder moved or deleted while
the command ran (``mv OUT OUT-old``) is a :class:`FolderMovedError` that says so, and where the
folder went where that can be told, rather than a new folder of that name, without marker,
configuration or lock, that receives the rest of the command's files.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from ..errors import DataFileError, MissingDependencyError, OutputFolderError
from ..files import (
    STALE_AGE,
    STALE_GRACE,
    link_target,
    remove_stale_beside,
    temporary_beside,
    write_cause,
)

__all__ = ["EXPERIMENTS_INSTALL", "OUTPUT_ROOM", "TEMPORARY_SUFFIX", "FolderMovedError",
           "append_jsonl", "atomic_write", "check_file_size", "check_folder_kept",
           "check_output_file", "check_output_folder", "figure_bytes", "file_size_limit", "folder_identity",
           "folder_kept", "forget_folder", "import_pyplot", "interrupts_deferred", "keep_folder",
           "kept_holding", "make_folder", "read_jsonl", "read_jsonl_lines",
           "remove_stale_temporaries", "save_figure", "write_set"]

#: The suffix of :func:`atomic_write`'s temporary files.
TEMPORARY_SUFFIX = ".eqpdenet.tmp"


# ----------------------------------------------------------------------------- folders kept


class FolderMovedError(OutputFolderError):
    """The folder a command holds (its writer lock taken) was moved or deleted while it ran:
    nothing more is written, and no new folder is made at its path (:func:`check_folder_kept`)."""


class _Kept(NamedTuple):
    identity: tuple[int, int]  # (st_dev, st_ino) of the folder when it was taken
    command: str  # the command that holds it ("reproduce", "train", ...)
    where: Callable[[], Path | str | None] | None  # where it is now: a path, "deleted", None


#: The folders this process writes as their holder (:func:`keep_folder`), by real path.
_KEPT: dict[Path, _Kept] = {}

#: The commands whose folders keep finished runs (a rerun resumes them).
_SWEEP_COMMANDS = ("reproduce", "benchmark", "study")


def folder_identity(folder: Path) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of ``folder``: what tells it from a folder put at its path later."""
    info = os.stat(folder)
    return info.st_dev, info.st_ino


def keep_folder(folder: Path, command: str | None = None, *,
                identity: tuple[int, int] | None = None,
                where: Callable[[], Path | str | None] | None = None) -> None:
    """Record ``folder`` as one this process writes (its writer lock held, or a worker process
    writing for the holder: ``identity`` then is the holder's :func:`folder_identity`; default:
    the folder's now). ``command`` names the holder in the error of a folder moved away;
    ``where()``, where the folder is now (a path, ``"deleted"``, None where it cannot be told:
    :meth:`eqpdenet.app.locks.FolderLock.where`). Recorded again, the entry is replaced (a
    ``train`` that swapped its run in holds a new folder at the same path)."""
    folder = Path(os.path.realpath(folder))
    _KEPT[folder] = _Kept(tuple(identity) if identity is not None else folder_identity(folder),
                          command or "", where)


def forget_folder(folder: Path) -> None:
    """The end of :func:`keep_folder` (the lock released)."""
    _KEPT.pop(Path(os.path.realpath(folder)), None)


def _kept_above(path: Path) -> list[Path]:
    """The kept folders that are ``path`` or hold it, the outermost first (the path as given,
    made absolute, and as its links lead)."""
    if not _KEPT:
        return []
    path = Path(path)
    candidates = {Path(os.path.abspath(path)), Path(os.path.realpath(path))}
    found = {folder for candidate in candidates for folder in (candidate, *candidate.parents)
             if folder in _KEPT}
    return sorted(found, key=lambda folder: len(folder.parts))


def _moved(folder: Path) -> FolderMovedError | None:
    """The error of the kept ``folder`` where the folder at its path is not the one taken (none
    there, or another), else None."""
    kept = _KEPT[folder]
    try:
        if folder_identity(folder) == kept.identity:
            return None
    except OSError:
        pass
    now = kept.where() if kept.where is not None else None
    if isinstance(now, Path):
        try:
            same = now != folder and folder_identity(now) == kept.identity
        except OSError:
            same = False
        now = now if same else None
    said = (f"it is now {now}" if isinstance(now, Path) else
            "it was deleted" if now == "deleted" else "it is no longer there")
    command = f"`eqpdenet {kept.command}`" if kept.command else "eqpdenet"
    if kept.command in _SWEEP_COMMANDS:
        runs = (f"its finished runs are saved in {now}: move it back to {folder} and rerun the "
                f"same command to resume" if isinstance(now, Path) else
                "its finished runs went with it; rerun the same command to run them again"
                if now == "deleted" else
                f"its finished runs are saved where it went: move it back to {folder} and "
                f"rerun the same command to resume")
        text = (f"the results folder {folder} was moved or deleted while {command} ran ({said}): "
                f"nothing more was written, nor a folder made anew at {folder}; {runs}")
    elif kept.command == "train":
        text = (f"the run folder {folder} was moved or deleted while {command} ran ({said}): "
                f"the new run was not written, nor a folder made anew at {folder}; rerun the "
                f"command")
    else:
        text = (f"the folder {folder} was moved or deleted while {command} wrote into it "
                f"({said}): nothing more was written, nor a folder made anew at {folder}; rerun "
                f"the command")
    error = FolderMovedError(text)
    error.errno = errno.ENOENT
    return error


def check_folder_kept(path: Path) -> Path | None:
    """Before a write to ``path`` (a file, or a folder to make): each kept folder that holds it
    (:func:`keep_folder`) must still be the one taken, else a :class:`FolderMovedError` naming
    the outermost one that is not and where it went. Returns the innermost kept folder holding
    ``path`` (None: none holds it)."""
    above = _kept_above(path)
    for folder in above:
        moved = _moved(folder)
        if moved is not None:
            raise moved
    return above[-1] if above else None


def kept_holding(path: Path) -> tuple[str, tuple[int, int], str] | None:
    """``(folder, identity, command)`` of the innermost kept folder that is or holds ``path``
    (for :func:`keep_folder` in a worker process that writes there for this one); None where
    none does."""
    above = _kept_above(path)
    if not above:
        return None
    kept = _KEPT[above[-1]]
    return str(above[-1]), kept.identity, kept.command


def folder_kept(folder: Path) -> bool:
    """Whether the kept folders holding ``folder`` (itself included) are all still the ones
    taken (True where none holds it)."""
    try:
        check_folder_kept(folder)
    except FolderMovedError:
        return False
    return True


def make_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents); an :class:`OutputFolderError` that names the cause
    (a file in the way, permission, space) if it cannot be. Inside a kept folder (one a command
    holds: :func:`keep_folder`) only the folders below it are made, never the kept folder itself
    or those above it: a kept folder that was moved or deleted is a :class:`FolderMovedError`
    (:func:`check_folder_kept`), not made anew."""
    folder = Path(folder)
    try:
        kept = check_folder_kept(folder)
        if kept is None:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            inside = Path(os.path.abspath(folder))
            if kept not in (inside, *inside.parents):  # held through a link: as its links lead
                inside = Path(os.path.realpath(folder))
            for level in [*reversed(inside.relative_to(kept).parents), inside.relative_to(kept)]:
                if str(level) != ".":  # one level at a time: never the kept folder anew
                    (kept / level).mkdir(exist_ok=True)
    except FolderMovedError:
        raise
    except FileExistsError:
        if folder.is_symlink() and not folder.exists():
            raise OutputFolderError(f"{folder} is a symbolic link to nothing "
                                    f"({os.readlink(folder)}), not a folder") from None
        if folder.exists() or folder.is_symlink():
            raise OutputFolderError(f"{folder} is a file, not a folder") from None
        blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()),
                       folder.parent)
        raise OutputFolderError(f"cannot create the folder {folder}: {blocker} is a file, "
                                f"not a folder") from None
    except NotADirectoryError:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                       folder.parent)
        raise OutputFolderError(f"cannot create the folder {folder}: {blocker} is a file, "
                                f"not a folder") from None
    except OSError as error:
        check_folder_kept(folder)  # the kept folder went meanwhile: that is the cause
        raise _with_errno(OutputFolderError(f"cannot create the folder {folder}: "
                                            f"{_reason(error)}"), error) from None
    if not folder.is_dir():
        raise OutputFolderError(f"{folder} is not a folder")
    return folder


def _with_errno(error: OutputFolderError, cause: OSError) -> OutputFolderError:
    """``error`` carrying the ``errno`` of ``cause``, so that a full disk or the file size limit
    is told as such (:func:`eqpdenet.files.is_storage_limit`) whatever its words."""
    error.errno = cause.errno
    return error


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what creating
    it will make (for :func:`remove_if_only`)."""
    folder = Path(folder)
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_if_only(folder: Path, name: str, created: list[Path]) -> bool:
    """Remove ``folder`` and the folders of ``created`` (:func:`missing_folders`, taken before
    it was made) when it holds nothing but the file ``name`` (a lock, a claim marker): a command
    refused or interrupted before it wrote anything leaves no empty folder behind. Returns
    whether it did; a folder that holds anything else is left as it is."""
    try:
        if [entry.name for entry in os.scandir(folder)] != [name]:
            return False
        (Path(folder) / name).unlink()
    except OSError:
        return False
    for path in created:  # deepest first; a parent someone else has written into stays
        try:
            path.rmdir()
        except OSError:
            break
    return True


def _reason(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    if error.errno == errno.EFBIG:
        return "the file would exceed this process's file size limit (ulimit -f)"
    return (error.strerror or str(error)).lower()


#: The room :func:`check_output_file` asks for by default: one block of the usual file systems,
#: which any non-empty file takes (a few KB: ``evaluate --json``'s summary, a figure's first block).
OUTPUT_ROOM = 4096


def check_output_file(path: Path, option: str = "--out", room: int = OUTPUT_ROOM) -> Path:
    """Before any work: the folder of the file ``path`` exists or can be created, a file of
    ``room`` bytes can be written into it (a temporary file is created there, ``room`` bytes are
    written to it and it is removed, as :func:`atomic_write` will: a read-only folder or file
    system, no permission, no room for a file entry, a disk with no room for the file's data,
    the quota), ``room`` is within this process's file size limit (``ulimit -f``:
    :func:`check_file_size`), and no folder stands where the file goes; an
    :class:`OutputFolderError` naming ``option``, the path and the cause otherwise. (An empty
    file was all that was tried: it is created on a full disk too, and the whole work then ran
    to fail at its write.)"""
    path = Path(path)
    if path.is_dir():
        raise OutputFolderError(f"{option} {path}: a folder is in the way of the file")
    check_file_size(room, f"{option} {path}", "at least")
    try:
        target = link_target(path)  # a link is written through: its file's folder is tested
    except OSError as error:
        raise OutputFolderError(f"{option} {path}: {_reason(error)}") from None
    try:
        make_folder(target.parent)
    except OutputFolderError as error:  # named by the option and path, as the others below
        raise _labelled(error, f"{option} {path}") from None
    _write_probe(target, f"{option} {path}", room)
    return path


def check_output_folder(folder: Path, what: str, room: int = OUTPUT_ROOM) -> Path:
    """Before any work: the existing ``folder`` (a sweep's ``runs`` or ``checkpoints``) is a
    folder and a file of ``room`` bytes can be written into it, as :func:`check_output_file`
    tries it; an :class:`OutputFolderError` naming ``what``, the folder and the cause otherwise.
    A folder that does not exist yet is not made (its parent is the sweep's folder, which the
    lock was taken in); a link to nothing is refused, naming its target."""
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise OutputFolderError(f"{what} {folder} is a link to {os.readlink(folder)}, which does "
                                f"not exist: make its target, or remove the link")
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise OutputFolderError(f"{what} {folder} is a file, not a folder")
    _write_probe(folder / "probe", f"{what} {folder}", room)
    return folder


def _labelled(error: OutputFolderError, label: str) -> OutputFolderError:
    """``error`` (its type and ``errno`` kept) with its message after ``label: ``."""
    labelled = type(error)(f"{label}: {error}")
    labelled.errno = error.errno
    return labelled


def _write_probe(target: Path, label: str, room: int) -> None:
    """Write ``room`` bytes into a temporary file beside ``target`` and remove it; an
    :class:`OutputFolderError` starting with ``label`` where that fails."""
    try:
        fd, probe = temporary_beside(target, TEMPORARY_SUFFIX)
    except OSError as error:
        raise _with_errno(OutputFolderError(f"{label}: cannot write into "
                                            f"{target.parent}: {_reason(error)}"), error) from None
    try:
        data = memoryview(bytes(room))
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)  # a file system that allocates late (NFS, delayed allocation) says it now
    except OSError as error:
        raise _with_errno(OutputFolderError(
            f"{label}: cannot write into {target.parent}: {_reason(error)} (a file of "
            f"{_size(room)} could not be written there)"), error) from None
    finally:  # an interrupt included: no probe is left
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def file_size_limit() -> int | None:
    """The largest file this process may write, in bytes (its soft ``RLIMIT_FSIZE``, what
    ``ulimit -f`` sets, in blocks of 1 KiB there); None where there is no limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY or soft < 0 else soft


def check_file_size(size: int, what: str, about: str = "about") -> None:
    """Before any work: an :class:`OutputFolderError` (``errno`` ``EFBIG``) naming ``what`` (the
    file, or the kind of file: ``"the checkpoint of run fcnn-h4-seed0"``), its ``size`` and this
    process's file size limit (``ulimit -f``) where ``size`` bytes are more than the limit lets
    one file hold: the write would fail with "File too large" once the work is done."""
    limit = file_size_limit()
    if limit is None or size <= limit:
        return
    error = OutputFolderError(
        f"{what}: {about} {_size(size)} to write to one file, more than this process's file size "
        f"limit lets it write ({_size(limit)}: ulimit -f {limit // 1024}); raise the limit "
        f"(ulimit -f unlimited) and run the command again")
    error.errno = errno.EFBIG
    raise error


def _size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename (a path
    that is a device or pipe, like ``/dev/stdout``, is written in place, and so is a file that
    is a mount point, which no rename can replace: ``EBUSY``). A symbolic link is
    followed, never replaced: the file it leads to is written (:func:`eqpdenet.files.link_target`:
    the temporary file goes beside that file and is renamed onto it). The folder is made where
    it is missing (:func:`make_folder`), but never a folder a command holds that has gone
    (:func:`check_folder_kept`: a :class:`FolderMovedError`, checked again where the write
    fails)."""
    path = Path(path)
    make_folder(path.parent)  # a file in the way is named, not "File exists"
    if path.is_dir():  # else the rename fails naming the temporary file
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file", str(path))
    if path.exists() and not path.is_file():
        # A device, pipe or socket (/dev/stdout, /dev/full): written in place, never replaced by
        # a regular file (as root, a rename would replace the device node itself).
        with open(path, "wb") as handle:
            handle.write(data)
        return
    try:
        target = link_target(path)
        remove_stale_beside(target, TEMPORARY_SUFFIX, age=STALE_AGE, grace=STALE_GRACE)
        fd, tmp = temporary_beside(target, TEMPORARY_SUFFIX)
    except OSError as error:  # named by the file wanted, not by the temporary one
        check_folder_kept(path)  # the folder went meanwhile: that is the cause
        raise _naming(error, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.replace(tmp, target)
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            # The target is a mount point (a file bind-mounted into a container: `docker run
            # -v result.json:/out/result.json`), which no rename can replace: written in place,
            # as for a device. A reader may then see it half-written, which the mount's owner
            # chose; the data went to the temporary file first, so a full disk failed there.
            with open(target, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.unlink(tmp)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and not isinstance(error, OutputFolderError):
            check_folder_kept(path)
            raise _naming(error, path) from None
        raise


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` (its type and errno kept) naming ``path``: a failed write is reported with the
    file the user asked for, never :func:`atomic_write`'s temporary file (or none at all, as
    ``write`` raises ``ENOSPC``)."""
    if error.errno is None:
        return error
    try:
        return type(error)(error.errno, error.strerror or os.strerror(error.errno), str(path))
    except TypeError:  # a subclass with other arguments: as it is
        return error


#: The signals that end a command like Ctrl-C (the CLI turns SIGTERM and SIGHUP into an
#: interrupt): :func:`interrupts_deferred` takes them after its block.
_INTERRUPTS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                    if hasattr(signal, name))


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Within the block, Ctrl-C, SIGTERM and SIGHUP are taken when it ends, not during it: the
    handler each had runs then (an interrupt is raised after the block; a signal whose action
    was the default one is sent again). For a few renames that must all happen once the first
    has. Outside the main thread (where handlers cannot be set) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}
    try:
        for number in _INTERRUPTS:
            handler = signal.getsignal(number)
            if handler in (signal.SIG_IGN, None):  # ignored, or not Python's to set
                continue
            previous[number] = handler
            signal.signal(number, lambda signum, frame: caught.append(signum))
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(caught):
            handler = previous[number]
            if callable(handler):
                handler(number, None)  # Python's default for SIGINT: KeyboardInterrupt
            else:
                signal.raise_signal(number)  # SIG_DFL: the default action, now


def write_set(folder: Path, contents: Mapping[str, bytes], stale: Iterable[str] = ()) -> list[Path]:
    """Write the files ``contents`` (name in ``folder``: bytes) as one set, and remove the files
    of ``folder`` named in ``stale`` (outputs of the same set that this one does not have, such
    as the equivariance study's ``models.png`` of an earlier run with checkpoints); returns the
    paths written. All or none: the folder never holds files of two sets, such as a new table
    beside the plot of earlier results.

    Every file is first written in full to a temporary file beside it (a symbolic link is
    followed, never replaced: :func:`eqpdenet.files.link_target`); a failure there (a full disk,
    the file size limit, a folder in the way) or an interrupt changes no file of the set,
    removes the temporaries and raises an :class:`OutputFolderError` naming the file and the
    cause. Then comes the commit, a few unlinks and renames with Ctrl-C, SIGTERM and SIGHUP
    taken after it (:func:`interrupts_deferred`): the set's files already there and the
    ``stale`` ones are removed first, then the temporaries renamed into place. A process that
    dies during the commit (SIGKILL, a power cut) therefore leaves part of the new set, or part
    of the old one, and never a mixture: a file of the set that is missing says the set was not
    finished (the command's rerun writes it whole), and whatever is there describes one run.
    The temporaries it leaves are removed by the folder's next writer lock
    (:func:`remove_stale_temporaries`) or next write beside them.

    ``folder`` is made where it is missing, unless it is (or lies in) a folder a command holds
    that has gone: a :class:`FolderMovedError` then, before anything is written, and again at
    the commit (:func:`check_folder_kept`). Files of ``folder`` outside the set are left as they
    are."""
    folder = make_folder(Path(folder))
    temporaries: list[tuple[Path, Path]] = []  # (temporary file, the file it becomes)
    try:
        for name, data in contents.items():
            path = folder / name
            if path.is_dir():  # else the rename fails naming the temporary file
                raise OutputFolderError(f"cannot write {path}: a folder is in the way of the file")
            try:
                path = link_target(path)  # a link is written through, never replaced
            except OSError as error:
                raise OutputFolderError(f"cannot write {folder / name}: {_reason(error)}") from None
            if path.is_dir():
                raise OutputFolderError(f"cannot write {path}: a folder is in the way of the file")
            try:
                remove_stale_beside(path, TEMPORARY_SUFFIX, age=STALE_AGE, grace=STALE_GRACE)
                fd, tmp = temporary_beside(path, TEMPORARY_SUFFIX)
                temporaries.append((tmp, path))
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as error:
                check_folder_kept(folder)
                raise _with_errno(OutputFolderError(f"cannot write {path}: {_reason(error)}"),
                                  error) from None
        check_folder_kept(folder)  # the last moment before any file of the set changes
        with interrupts_deferred():
            try:
                for _, path in temporaries:
                    if path.is_file():
                        path.unlink()
                for name in stale:
                    path = folder / name
                    if path.is_file() or path.is_symlink():
                        path.unlink()
                while temporaries:
                    tmp, path = temporaries[0]
                    os.replace(tmp, path)
                    temporaries.pop(0)
            except OSError as error:
                check_folder_kept(folder)
                raise _with_errno(OutputFolderError(
                    f"cannot write the files {', '.join(contents)} into {folder}: "
                    f"{write_cause(error)}{f' ({error.filename})' if error.filename else ''}; "
                    f"the set there is unfinished (part of it, or of the earlier one): rerun "
                    f"the command to write it whole"),
                    error) from None
    finally:
        for tmp, _ in temporaries:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # not renamed: the previous set stays whole
    return [folder / name for name in contents]


def remove_stale_temporaries(folder: Path, depth: int = 4) -> list[Path]:
    """Remove :func:`atomic_write`'s temporary files in ``folder`` and its subfolders (down to
    ``depth`` levels); returns them. Only for the holder of ``folder``'s writer lock, at a time
    when none of its own writes is under way (then every such file is a killed writer's)."""
    removed, level = [], [Path(folder)]
    for _ in range(depth + 1):
        below = []
        for current in level:
            try:
                entries = list(os.scandir(current))
            except OSError:
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
                elif entry.name.startswith(".") and entry.name.endswith(TEMPORARY_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
        level = below
    return removed


def read_jsonl_lines(path: Path) -> list[tuple[int, str, object]]:
    """``(line number, line, value)`` of every non-blank line of a JSONL file (empty if it is
    missing), each line as written, with its newline (but for a last line without one). A line
    that is not UTF-8 text or not JSON is a :class:`~eqpdenet.errors.DataFileError` naming the
    file and the line (``results.jsonl:3: not UTF-8 text (byte 0xf9 at column 12)``). Lines end
    at newline characters only, so that their numbers are those an editor shows (``str.
    splitlines`` also ends a line at U+2028 or U+0085 inside a JSON string)."""
    path = Path(path)
    if not path.exists():
        return []
    entries, pieces = [], path.read_bytes().split(b"\n")
    for number, raw in enumerate(pieces, 1):
        try:
            line = raw.decode("utf-8") + ("\n" if number < len(pieces) else "")
        except UnicodeDecodeError as error:
            raise DataFileError(f"{path}:{number}", f"not UTF-8 text (byte 0x{raw[error.start]:02x} "
                                f"at column {error.start + 1}): not a file eqpdenet wrote, or a "
                                f"damaged one") from None
        if not line.strip():
            continue
        try:
            entries.append((number, line, json.loads(line)))
        except json.JSONDecodeError as error:
            raise DataFileError(f"{path}:{number}", f"not a JSON line ({error})") from None
    return entries


def read_jsonl(path: Path) -> list:
    """The values of a JSONL file's lines (empty if it is missing); a line that is not UTF-8
    text or not JSON is an error naming the file and the line (:func:`read_jsonl_lines`)."""
    return [value for _, _, value in read_jsonl_lines(path)]


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record: the file is rewritten whole, atomically, so lines are never partial."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write(path, old + (json.dumps(record, sort_keys=True) + "\n").encode())


#: How the optional dependencies of the experiments' plots are installed (quoted: zsh reads the
#: brackets of an unquoted ``eqpdenet[experiments]`` as a pattern).
EXPERIMENTS_INSTALL = "pip install 'eqpdenet[experiments]'"


def import_pyplot(use: str = "drawing a figure"):
    """``matplotlib.pyplot`` (on the Agg backend, files and no display, unless the process has
    imported pyplot already: its backend is the user's and stays), or a one-line
    :class:`~eqpdenet.errors.MissingDependencyError` saying that ``use`` (what draws: ``"eqpdenet
    report (accuracy_vs_params.png)"``) needs matplotlib and how to install it, where it is not
    installed or cannot be imported. Every function that draws imports matplotlib through it,
    and every command that will draw calls it among its argument checks, before any work
    (training, a study, a table written without its plot)."""
    try:
        import matplotlib

        # A process that has not drawn yet (the command line) draws files on Agg; a user's
        # pyplot keeps its backend (a notebook's inline one: switched to Agg here, their next
        # plt.show() showed nothing). Figures are written with savefig, and closed, on any.
        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependencyError(
            f"{use} needs matplotlib, an optional dependency, which cannot be imported "
            f"({error}): {EXPERIMENTS_INSTALL}") from error
    if matplotlib.rcParams["text.usetex"]:
        # A matplotlibrc's text.usetex: every label goes through LaTeX, and without it savefig
        # failed at the end of the work ("latex could not be found", said as a bug in eqpdenet)
        missing = [tool for tool in ("latex", "dvipng") if shutil.which(tool) is None]
        if missing:
            raise MissingDependencyError(
                f"{use}: matplotlib's text.usetex is on (set in {matplotlib.matplotlib_fname()}), "
                f"which draws every label with LaTeX, but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not installed; install them, or turn "
                f"text.usetex off")
    return plt


def figure_bytes(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as the bytes of a PNG file, then closed (for :func:`write_set`)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def save_figure(fig, path: Path, dpi: int = 100, guard=None) -> Path:
    """A matplotlib figure as PNG, written atomically, then closed. ``guard``: a context manager
    factory held around the write only, not the rendering
    (:func:`eqpdenet.app.runfolder.writing_beside_runs`)."""
    data = figure_bytes(fig, dpi)
    with guard() if guard is not None else contextlib.nullcontext():
        atomic_write(Path(path), data)
    return Path(path)
