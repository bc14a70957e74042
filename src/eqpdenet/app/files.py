"""File helpers of the application: atomic writes, JSON lines, figures.

Every result file is written through :func:`atomic_write` (a temporary file in the same folder,
then a rename), so a killed job never leaves a half-written file. A process killed between the two
(SIGKILL; a worker process its parent stopped) leaves the temporary file, named
``.<name>.<random>.eqpdenet.tmp``; the writer lock of the folder removes such files when it is
taken and when it is released (:func:`remove_stale_temporaries`, called by
:func:`eqpdenet.app.locks.hold`), so none outlives the next command, nor an interrupted one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from pathlib import Path

from ..errors import OutputFolderError
from ..files import temporary_beside

__all__ = ["TEMPORARY_SUFFIX", "append_jsonl", "atomic_write", "check_output_file", "make_folder",
           "read_jsonl", "remove_stale_temporaries", "save_figure"]

#: The suffix of :func:`atomic_write`'s temporary files.
TEMPORARY_SUFFIX = ".eqpdenet.tmp"


def make_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents); an :class:`OutputFolderError` that names the cause
    (a file in the way, permission, space) if it cannot be."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputFolderError(f"{folder} is a file, not a folder") from None
    except NotADirectoryError:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                       folder.parent)
        raise OutputFolderError(f"cannot create the folder {folder}: {blocker} is a file, "
                                f"not a folder") from None
    except OSError as error:
        raise OutputFolderError(f"cannot create the folder {folder}: {_reason(error)}") from None
    if not folder.is_dir():
        raise OutputFolderError(f"{folder} is not a folder")
    return folder


def _reason(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    return (error.strerror or str(error)).lower()


def check_output_file(path: Path, option: str = "--out") -> Path:
    """Before any work: the folder of the file ``path`` exists or can be created and no folder
    stands where the file goes; an :class:`OutputFolderError` naming the cause otherwise."""
    path = Path(path)
    if path.is_dir():
        raise OutputFolderError(f"{option} {path}: a folder is in the way of the file")
    make_folder(path.parent)
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename (a path
    that is a device or pipe, like ``/dev/stdout``, is written in place)."""
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
    fd, tmp = temporary_beside(path, TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file (empty if missing); a malformed line is a clear error."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
    return records


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record: the file is rewritten whole, atomically, so lines are never partial."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write(path, old + (json.dumps(record, sort_keys=True) + "\n").encode())


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """A matplotlib figure as PNG, written atomically, then closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write(Path(path), buffer.getvalue())
    return Path(path)
