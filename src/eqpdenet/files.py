"""Temporary files that become shared results (downloads, caches, exports, run files).

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, and a file renamed into
place keeps that mode: a downloaded MNIST file in a shared data folder, a generated ROTMNIST cache
or an exported model would be readable by its writer alone. :func:`temporary_beside` gives the
file the mode an ordinary ``open(path, "w")`` would (0666 less the umask).

A writer killed before its rename (SIGKILL; a worker process its parent stopped) leaves its
temporary file, up to the size of the file it was writing (196 MB for the ROTMNIST cache).
:func:`remove_stale_beside` removes such files and never a live writer's: every temporary file is
``flock``-ed by its writer from its creation until it is closed (the operating system releases
the lock when the writer dies, however it dies), and a file is taken for a killed writer's only
when nobody holds its lock and nothing has written to it for a while, or, where the lock cannot
be tested, when nothing has written to it for longer than any live write can pause.

A writer renames its temporary file onto :func:`link_target` of the path it was given, never onto
the path itself: a symbolic link the user made stays a link, and the file it leads to is replaced
(a rename onto the link would replace the link with a regular file and leave its target as it was).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock to tell a live writer by; the age rule alone applies
    fcntl = None

__all__ = ["NAME_MAX", "STALE_AGE", "STALE_GRACE", "link_target", "remove_stale_beside",
           "temporary_beside", "temporary_prefix", "write_cause", "is_storage_limit"]

#: Seconds after its last write that a temporary file whose lock no writer holds is taken for a
#: killed writer's (:func:`remove_stale_beside`'s ``grace``): a live writer holds the lock from an
#: instant after it creates the file until after its rename.
STALE_GRACE = 10.0
#: The same where the lock cannot be tested (a file system without locks): longer than any write.
STALE_AGE = 24 * 3600.0

#: The most links :func:`link_target` follows, as Linux's path resolution (``ELOOP`` beyond).
MAX_LINKS = 40

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    # os.umask can only be read by setting it; the lock keeps two threads from reading each
    # other's temporary 0
    with _UMASK_LOCK:
        umask = os.umask(0)
        os.umask(umask)
    return umask


def link_target(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` writes: ``path`` itself, or, where it is a symbolic link,
    the file at the end of its chain of links (a relative link read from the link's own folder,
    as the operating system does; a dangling link's target is where the new file goes). Stage
    beside this path and rename onto it, so that the link is kept. A loop of links raises
    ``OSError`` ``ELOOP`` naming ``path``, as ``open`` would."""
    path = current = Path(path)
    for _ in range(MAX_LINKS + 1):
        if not current.is_symlink():
            return current
        link = Path(os.readlink(current))
        current = link if link.is_absolute() else current.parent / link
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))


#: The longest file name, in bytes, of the usual file systems (ext4, XFS, Btrfs, tmpfs, NFS):
#: a temporary name that would be longer is shortened (:func:`temporary_prefix`).
NAME_MAX = 255

#: The random characters ``tempfile.mkstemp`` puts between its prefix and suffix.
_RANDOM_CHARACTERS = 8

#: The bytes of a long name that a shortened temporary name keeps (:func:`temporary_prefix`).
_SHORT_STEM = 40


def temporary_prefix(name: str, suffix: str, extra: int = _RANDOM_CHARACTERS) -> str:
    """The start of the name of a temporary file for the file ``name``: ``.<name>.``, so that a
    temporary file (``.<name>.<extra characters><suffix>``) says whose it is; where that would
    exceed :data:`NAME_MAX` bytes (a legal name of 233 bytes or more), ``.<stem>~<hash>.``: the
    name's first bytes and 16 hexadecimal digits of its SHA-256, so that the temporary name
    stays within the limit whatever the name's length (``open`` takes a name of 255 bytes; its
    temporary file must not refuse it) and two long names that begin alike stay apart. The same
    name always gives the same prefix (:func:`remove_stale_beside` finds the files by it)."""
    raw = os.fsencode(name)
    if 2 + len(raw) + extra + len(os.fsencode(suffix)) <= NAME_MAX:
        return f".{name}."
    stem = raw[:_SHORT_STEM].decode("utf-8", "ignore")  # a character cut in two is left out
    return f".{stem}~{hashlib.sha256(raw).hexdigest()[:16]}."


def temporary_beside(path: str | os.PathLike, suffix: str) -> tuple[int, Path]:
    """``(fd, temporary path)`` of a new file in ``path``'s folder, named ``.<name>.XXXX<suffix>``
    (a long name shortened: :func:`temporary_prefix`), with the mode a plain ``open`` would give
    (``0666 & ~umask``), for writing and then renaming to ``path`` (``os.replace``). The file is
    ``flock``-ed through ``fd`` until ``fd`` is closed, so that :func:`remove_stale_beside` leaves
    it alone while its writer lives."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name, suffix),
                                suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        if fcntl is not None:
            # A file system without locks (ENOLCK) only loses the quick removal of a killed
            # writer's file: remove_stale_beside then goes by age alone.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, Path(name)


def _held(path: str) -> bool | None:
    """Whether a live writer holds ``path``'s lock (True), none does (False), or it cannot be
    told (None: no locks here or on its file system, no permission to open it)."""
    if fcntl is None:
        return None
    try:
        # read-write: NFS emulates flock with byte-range locks, whose exclusive kind needs it
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # releases the lock, if this took it
    return False


def remove_stale_beside(path: str | os.PathLike, suffix: str, *, age: float,
                        grace: float | None = None) -> list[Path]:
    """Remove the temporary files that :func:`temporary_beside` made for ``path``
    (``.<name>.<random><suffix>`` in its folder, a long name shortened as
    :func:`temporary_prefix` shortens it) and whose writers were killed; returns them.

    A file whose lock a writer holds is never removed, however old (a writer stopped with
    Ctrl-Z keeps its file). Any other is removed once nothing has written to it for ``age``
    seconds (longer than any live write can pause: a writer that took no lock, a file system
    without locks); with ``grace``, a file whose lock could be tested and is free is removed
    once untouched for ``grace`` seconds already (a writer holds its lock from the moment its
    file exists, but the file is created an instant before the lock is taken, and kept a
    moment after it is released, before the rename). Files that cannot be read or removed are
    left as they are."""
    path = Path(path)
    # mkstemp's random part: 8 of "a-z0-9_" (never a dot: the name of another file that begins
    # with this one's, "<name>.x", cannot match)
    pattern = re.compile(rf"{re.escape(temporary_prefix(path.name, suffix))}[a-z0-9_]"
                         rf"{{{_RANDOM_CHARACTERS}}}{re.escape(suffix)}")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    removed, now = [], time.time()
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        idle = now - info.st_mtime
        if idle <= (age if grace is None else min(age, grace)):
            continue
        held = _held(entry.path)
        if held or (idle <= age and (held is None or grace is None or idle <= grace)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


#: The ``errno`` values of a write that failed for want of room, not for anything about the data
#: or the place written: the disk, the process's file size limit (``ulimit -f``), the quota, a
#: read-only file system. Trying elsewhere in the same folder (another mirror, another file)
#: cannot help.
STORAGE_LIMITS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


def is_storage_limit(error: BaseException) -> bool:
    """Whether ``error`` is an ``OSError`` of :data:`STORAGE_LIMITS`."""
    return isinstance(error, OSError) and error.errno in STORAGE_LIMITS


def write_cause(error: OSError) -> str:
    """What a failed write means: the system's words, and for a limit whose words do not say
    which, the limit (``File too large``: the process's file size limit, not the disk)."""
    text = error.strerror or str(error)
    if error.errno == errno.EFBIG:
        return f"{text} (beyond this process's file size limit: ulimit -f)"
    if error.errno == errno.EDQUOT:
        return f"{text} (the disk quota)"
    return text
