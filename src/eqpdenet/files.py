"""Temporary files that become shared results (downloads, caches, exports, run files).

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, and a file renamed into
place keeps that mode: a downloaded MNIST file in a shared data folder, a generated ROTMNIST cache
or an exported model would be readable by its writer alone. :func:`temporary_beside` gives the
file the mode an ordinary ``open(path, "w")`` would (0666 less the umask).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

__all__ = ["temporary_beside"]

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    # os.umask can only be read by setting it; the lock keeps two threads from reading each
    # other's temporary 0
    with _UMASK_LOCK:
        umask = os.umask(0)
        os.umask(umask)
    return umask


def temporary_beside(path: str | os.PathLike, suffix: str) -> tuple[int, Path]:
    """``(fd, temporary path)`` of a new file in ``path``'s folder, named ``.<name>.XXXX<suffix>``,
    with the mode a plain ``open`` would give (``0666 & ~umask``), for writing and then renaming
    to ``path`` (``os.replace``)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, Path(name)
