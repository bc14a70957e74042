"""One writer per output folder: a lock file that the operating system releases on any exit.

Every command that writes results into a folder (``train``, ``reproduce``, ``benchmark``,
``study``, ``report``, ``equivariance``, ``describe``, and any new one) holds that folder's lock
while it writes::

    with hold(out, "reproduce"):
        ...

The lock is an advisory ``flock`` on ``<folder>/.eqpdenet.lock``, taken without waiting: a
second writer stops at once with a :class:`~eqpdenet.errors.FolderLockedError` naming the process
that holds it (pid, host, command line, start time, which the holder writes into the file). The
kernel releases the lock when the holder exits, however it exits (SIGKILL included), so there is
never a stale lock to clean up; the file itself stays (removing it would let two processes lock
two different files of the same name). A ``train`` that swaps its run in replaces the folder, and
the lock file with it (:func:`replace_held_folder`): a lock is therefore taken on the file that is
at the path once ``flock`` returns (its device and inode compared), else the file is opened again
(:func:`same_file`); a lock of the replaced file would let two writers hold the folder at once.
Holding is re-entrant within a process (``study`` holds its folder and calls ``reproduce``, which
holds its own; the CLI holds the folder around a library call that holds it again).

A command that writes one file beside runs (``evaluate --json``, ``export``, ``figure``) holds
the locks of the folders above that file *shared* for the instant of its write
(:func:`eqpdenet.app.runfolder.writing_beside_runs`): a writer then waits for the write, up to
:data:`SHARED_WAIT` seconds, while no writer is recorded in the file.

Taking and releasing the lock also removes the temporary files of writes that a killed writer
left in the folder (:func:`eqpdenet.app.files.remove_stale_temporaries`).

A held folder is recorded with its identity (:func:`eqpdenet.app.files.keep_folder`): a folder
moved or deleted while its holder runs (``mv OUT OUT-old``) is never made anew at its path by
a later write of the holder, which stops with a :class:`~eqpdenet.app.files.FolderMovedError`
saying where the folder went (:meth:`FolderLock.where`, the path of the lock file it holds open).

Creating the folder and writing the holder into the lock file is also the check, made before any
data is loaded, that the folder can be created and written: a file in the way, a missing
permission or a full disk is an :class:`~eqpdenet.errors.OutputFolderError` that says so.

``flock`` works on local file systems and on NFS (Linux emulates it with NFS byte-range locks);
other network file systems may not honour it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import FolderLockedError, OutputFolderError
from .files import (
    _reason,
    check_folder_kept,
    folder_kept,
    forget_folder,
    keep_folder,
    make_folder,
    missing_folders,
    remove_if_only,
    remove_stale_temporaries,
)

__all__ = ["LOCK_NAME", "SHARED_WAIT", "FolderLock", "check_free", "hold", "holder", "make_folder",
           "replace_held_folder", "same_file", "shared"]

LOCK_NAME = ".eqpdenet.lock"


class FolderLock:
    """The writer lock of one folder (see the module docstring); not re-entrant by itself."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, command: str | None = None) -> None:
        """Take the lock now or raise :class:`FolderLockedError` naming the holder. The lock is
        taken on the file that is at the path once ``flock`` returns: a ``train`` that swapped its
        run in between replaced the file (:func:`replace_held_folder`), and the lock of the
        replaced file would let two writers hold the folder at once; it is opened again."""
        for _ in range(_REOPENS):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as error:
                raise OutputFolderError(f"cannot write in the folder {self.folder}: "
                                        f"{_reason(error)}") from None
            try:
                current = _take(fd, self.folder, self.path)
            except BlockingIOError:
                os.close(fd)
                raise _locked(self.folder) from None
            except OSError as error:
                os.close(fd)
                raise OutputFolderError(f"cannot lock {self.path}: {_reason(error)}") from None
            except BaseException:
                os.close(fd)
                raise
            if current:
                break
            os.close(fd)  # the lock of a file no longer at the path: take the one there now
        else:
            raise FolderLockedError(f"{self.folder}: its lock file was replaced {_REOPENS} times "
                                    f"while this process took it; another eqpdenet process keeps "
                                    f"swapping runs into it: write to another folder")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or "",
                "argv": _command_line(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        try:  # the write is the check that the folder can be written (space included)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as error:
            os.close(fd)
            raise OutputFolderError(f"cannot write in the folder {self.folder}: "
                                    f"{_reason(error)}") from None
        self._fd = fd

    def where(self) -> Path | str | None:
        """Where the folder is now, told by the lock file this process holds open (Linux's
        ``/proc/self/fd``): its folder's path (moved: another path than :attr:`folder`),
        ``"deleted"`` where the file was deleted (with its folder), None where it cannot be told
        (not held, no ``/proc``)."""
        if self._fd is None:
            return None
        try:
            link = os.readlink(f"/proc/self/fd/{self._fd}")
        except OSError:
            return None
        if link.endswith(" (deleted)"):
            return "deleted"
        return Path(link).parent if os.path.isabs(link) else None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no holder any more
            os.close(fd)  # closing releases the flock


#: Seconds a writer waits for a folder whose lock no writer has recorded holding: a command
#: writing one file beside a run (``evaluate --json``, ``export``, ``figure``) holds it shared
#: for that write (:func:`eqpdenet.app.runfolder.writing_beside_runs`), and a writer that has
#: just taken it records itself within moments.
SHARED_WAIT = 2.0


#: How many times :meth:`FolderLock.acquire` opens the lock file again when the file it locked
#: was replaced meanwhile (once per swap of a run into the folder: one is the rule).
_REOPENS = 100


def same_file(fd: int, path: Path) -> bool:
    """Whether the open descriptor ``fd`` is the file now at ``path`` (False where nothing is
    there): a lock taken on a file that a swap replaced (or unlinked) locks nothing any more."""
    try:
        there = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _take(fd: int, folder: Path, path: Path | None = None) -> bool:
    """The exclusive ``flock`` on ``fd``: at once, or within :data:`SHARED_WAIT` seconds while
    no live writer is recorded in the file; else ``BlockingIOError``. With ``path`` (the lock
    file ``fd`` was opened as): False, the lock released, where ``fd`` is no longer the file at
    ``path`` (a swap replaced it): the caller opens the file there now; True once held."""
    deadline = time.monotonic() + SHARED_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if path is not None and not same_file(fd, path):
                return False  # waiting on a replaced file: its holder has swapped a run in
            if time.monotonic() >= deadline or holder(folder, wait=0.0) is not None:
                raise
        else:
            if path is None or same_file(fd, path):
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        time.sleep(0.02)


def shared(path: Path) -> tuple[int | None, bool]:
    """``(fd, busy)``: a descriptor holding a shared ``flock`` on the lock file ``path``, taken
    without waiting (None where there is no lock file, where a writer holds it, or on a file
    system without ``flock``), and whether a writer holds it now. A shared lock keeps any writer
    from taking the folder (its lock is exclusive) until the descriptor is closed. As for
    :meth:`FolderLock.acquire`, the lock is of the file at ``path`` once taken (opened again
    where a swap replaced it meanwhile)."""
    for _ in range(_REOPENS):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # no lock file: never written by a command
            return None, False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        except OSError:  # a file system without flock: cannot tell
            os.close(fd)
            return None, False
        except BaseException:
            os.close(fd)
            raise
        if same_file(fd, path):
            if held:
                return fd, False
            os.close(fd)
            return None, True
        os.close(fd)  # a replaced file: look at the one there now
    return None, True


def check_free(folder: Path) -> None:
    """Before any work: a :class:`FolderLockedError` (the words of :meth:`FolderLock.acquire`)
    where another process is writing ``folder`` now (its lock held), so that a command that
    takes the lock only after long work (``describe``, ``equivariance``) is refused before it.
    Nothing where this process holds it (:func:`hold` is re-entrant) or no lock file is there.
    A lock that no writer has recorded holding (a write beside runs, a writer releasing it) is
    waited for, as :func:`_take` does."""
    folder = Path(folder)
    if _key(folder) in _held:
        return
    deadline = time.monotonic() + SHARED_WAIT
    while True:
        fd, busy = shared(folder / LOCK_NAME)
        if fd is not None:
            os.close(fd)
        if not busy:
            return
        if time.monotonic() >= deadline or holder(folder, wait=0.0) is not None:
            raise _locked(folder)
        time.sleep(0.02)


def holder(folder: Path, wait: float = 1.0) -> dict | None:
    """Who holds ``folder``'s lock, as the holder wrote it (None if unknown). A holder that has
    just taken the lock may not have written yet: read again for up to ``wait`` seconds."""
    path = Path(folder) / LOCK_NAME
    deadline = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(info, dict) and _alive(info.get("pid"), info.get("host")):
                return info
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _locked(folder: Path) -> FolderLockedError:
    """The error of a second writer: ``folder`` is being written, by whom."""
    return FolderLockedError(f"{folder} is being written by another eqpdenet process "
                             f"({_describe(holder(folder))}); one writer per folder: wait for it "
                             f"to finish, or write to another folder")


def _alive(pid, host) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if host != socket.gethostname():
        return True  # cannot tell from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_line() -> str:
    """This process's command line as its user typed it (``eqpdenet reproduce --out ...``)."""
    argv = list(sys.argv) or ["python"]
    first = Path(argv[0])
    if first.name == "eqpdenet" or (first.name == "__main__.py" and first.parent.name == "eqpdenet"):
        argv[0] = "eqpdenet"
    else:
        argv[0] = first.name
    return shlex.join(argv)


def _describe(info: dict | None) -> str:
    if info is None:
        return "holder not recorded yet"
    what = f"`{info['argv']}`" if info.get("argv") else "?"
    label = f" ({info['command']})" if info.get("command") else ""
    return (f"pid {info['pid']} on {info.get('host', '?')}, running {what}{label}, since "
            f"{info.get('started', '?')}")


_held: dict[str, tuple[FolderLock, int]] = {}


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


@contextlib.contextmanager
def hold(folder: Path, command: str | None = None, *, create: bool = True) -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the ``with`` block (re-entrant within a process).

    ``create``: make the folder (and parents) first; otherwise a missing folder is an
    :class:`OutputFolderError`. ``command`` (what is writing: ``"reproduce"``) is recorded with
    this process's command line for the error a second writer gets. While held, the folder is
    kept (:func:`eqpdenet.app.files.keep_folder`): a write into it after it was moved or deleted
    is a :class:`~eqpdenet.app.files.FolderMovedError`, and so is holding it again (or a folder
    inside it) then, rather than a new folder at its path.
    """
    folder = Path(folder)
    key = _key(folder)
    if key in _held:  # held already: it must still be the folder taken
        check_folder_kept(folder)
    # The folders this call creates: removed again if the block fails before writing anything.
    missing = missing_folders(folder) if create else []
    if create:
        make_folder(folder)  # never a held folder (or one inside it) that has gone
    elif not folder.is_dir():
        check_folder_kept(folder)
        raise OutputFolderError(f"{folder} is not a folder")
    if key in _held:
        lock, count = _held[key]
        _held[key] = (lock, count + 1)
    else:
        lock = FolderLock(folder)
        lock.acquire(command)
        _held[key] = (lock, 1)
        try:
            keep_folder(folder, command, where=lock.where)
        except OSError as error:  # gone between the lock and now
            del _held[key]
            lock.release()
            raise OutputFolderError(f"cannot write in the folder {folder}: "
                                    f"{_reason(error)}") from None
        remove_stale_temporaries(folder)  # a killed writer's: no other writer can be at work
    try:
        yield folder
    except BaseException:
        if missing and _held[key][1] == 1 and folder_kept(folder):
            # Done while the lock is held, so a second writer that tries it meanwhile is refused
            # (it is taken without waiting); one that opened the file before the unlink and
            # locks it after the release finds that it is no longer the file at the path, and
            # opens it again (FolderLock.acquire). Never in a folder that is no longer ours.
            remove_if_only(folder, LOCK_NAME, missing)
        raise
    finally:
        lock, count = _held[key]
        if count > 1:
            _held[key] = (lock, count - 1)
        else:
            del _held[key]
            try:  # an interrupted command's own: its workers are stopped by now
                if folder_kept(lock.folder):
                    remove_stale_temporaries(lock.folder)
                elif isinstance(lock.where(), Path):  # moved: where it is now, not the path
                    remove_stale_temporaries(lock.where())
            finally:
                forget_folder(lock.folder)
                lock.release()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # the file system cannot exchange
    raise OSError(code, os.strerror(code), str(a))


def replace_held_folder(folder: Path, new: Path) -> None:
    """Replace the held ``folder`` by ``new`` (a sibling folder) as a unit, keeping the lock.

    ``new``'s lock is taken first, then the two folders are swapped in one atomic rename where
    the file system can (Linux), else by two renames; the old contents are deleted. A process
    looking at ``folder`` sees the old folder or the new one, never a mixture, and can never take
    its lock in between.
    """
    import shutil

    folder, new = Path(folder), Path(new)
    key = _key(folder)
    if key not in _held:
        raise RuntimeError(f"replace_held_folder: {folder} is not held by this process")
    old_lock, count = _held[key]
    check_folder_kept(folder)  # moved or deleted meanwhile: no run is swapped in at its path
    new_lock = FolderLock(new)
    new_lock.acquire(_command_of(old_lock))
    try:
        if not _exchange(new, folder):
            # a short name: the folder's own may already be near the system's 255-byte limit
            aside = folder.with_name(f".eqpdenet.replaced-{os.getpid()}")
            os.rename(folder, aside)
            try:
                os.rename(new, folder)
            except BaseException:
                os.rename(aside, folder)  # the old folder back where it was, untouched
                raise
            try:
                os.rename(aside, new)
            except OSError:  # the old contents go all the same
                shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        new_lock.release()
        raise
    new_lock.folder, new_lock.path = folder, folder / LOCK_NAME
    old_lock.release()
    _held[key] = (new_lock, count)
    with contextlib.suppress(OSError):  # the folder at the path is the new one now
        keep_folder(folder, _command_of(new_lock), where=new_lock.where)
    shutil.rmtree(new, ignore_errors=True)  # the old contents, now at the staging path


def _command_of(lock: FolderLock) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(lock.path.read_text(encoding="utf-8")).get("command")
    return None
