"""File helpers of the application: atomic writes, JSON lines, figures.

Every result file is written through :func:`atomic_write` (a temporary file in the same folder,
then a rename), so a killed job never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from pathlib import Path

__all__ = ["append_jsonl", "atomic_write", "read_jsonl", "save_figure"]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename (a path
    that is a device or pipe, like ``/dev/stdout``, is written in place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():  # else the rename fails naming the temporary file
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file", str(path))
    if path.exists() and not path.is_file():
        # A device, pipe or socket (/dev/stdout, /dev/full): written in place, never replaced by
        # a regular file (as root, a rename would replace the device node itself).
        with open(path, "wb") as handle:
            handle.write(data)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results private
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
