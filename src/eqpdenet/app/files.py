"""File helpers of the application: atomic writes, JSON lines, figures.

Every result file is written through :func:`atomic_write` (a temporary file in the same folder,
then a rename), so a killed job never leaves a half-written file. A process killed between the two
(SIGKILL; a worker process its parent stopped) leaves the temporary file, named
``.<name>.<random>.eqpdenet.tmp``; the writer lock of the folder removes such files when it is
taken and when it is released (:func:`remove_stale_temporaries`, called by
:func:`eqpdenet.app.locks.hold`), so none outlives the next command, nor an interrupted one.
A file written outside such a folder (``evaluate --json``, a link's target in another folder) has
no lock holder to sweep it: every write first removes the killed writers' files beside its own
target (:func:`eqpdenet.files.remove_stale_beside`: unlocked and untouched for
:data:`~eqpdenet.files.STALE_GRACE` seconds).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from pathlib import Path

from ..errors import DataFileError, MissingDependencyError, OutputFolderError
from ..files import STALE_AGE, STALE_GRACE, link_target, remove_stale_beside, temporary_beside

__all__ = ["EXPERIMENTS_INSTALL", "TEMPORARY_SUFFIX", "append_jsonl", "atomic_write",
           "check_output_file", "import_pyplot", "make_folder", "read_jsonl", "read_jsonl_lines",
           "remove_stale_temporaries", "save_figure"]

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


def check_output_file(path: Path, option: str = "--out") -> Path:
    """Before any work: the folder of the file ``path`` exists or can be created, a file can be
    written into it (a temporary file is created there and removed, as :func:`atomic_write`
    will: a read-only folder or file system, no permission, no room for a file entry), and no
    folder stands where the file goes; an :class:`OutputFolderError` naming ``option``, the path
    and the cause otherwise."""
    path = Path(path)
    if path.is_dir():
        raise OutputFolderError(f"{option} {path}: a folder is in the way of the file")
    try:
        target = link_target(path)  # a link is written through: its file's folder is tested
    except OSError as error:
        raise OutputFolderError(f"{option} {path}: {_reason(error)}") from None
    make_folder(target.parent)
    try:
        fd, probe = temporary_beside(target, TEMPORARY_SUFFIX)
    except OSError as error:
        raise OutputFolderError(f"{option} {path}: cannot write into {target.parent}: "
                                f"{_reason(error)}") from None
    try:
        os.close(fd)
    finally:  # an interrupt included: no probe is left
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename (a path
    that is a device or pipe, like ``/dev/stdout``, is written in place). A symbolic link is
    followed, never replaced: the file it leads to is written (:func:`eqpdenet.files.link_target`:
    the temporary file goes beside that file and is renamed onto it)."""
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
        raise _naming(error, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and not isinstance(error, OutputFolderError):
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
    """``matplotlib.pyplot`` on the Agg backend (files, no display), or a one-line
    :class:`~eqpdenet.errors.MissingDependencyError` saying that ``use`` (what draws: ``"eqpdenet
    report (accuracy_vs_params.png)"``) needs matplotlib and how to install it, where it is not
    installed or cannot be imported. Every function that draws imports matplotlib through it,
    and every command that will draw calls it among its argument checks, before any work
    (training, a study, a table written without its plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependencyError(
            f"{use} needs matplotlib, an optional dependency, which cannot be imported "
            f"({error}): {EXPERIMENTS_INSTALL}") from error
    return plt


def save_figure(fig, path: Path, dpi: int = 100, guard=None) -> Path:
    """A matplotlib figure as PNG, written atomically, then closed. ``guard``: a context manager
    factory held around the write only, not the rendering
    (:func:`eqpdenet.app.runfolder.writing_beside_runs`)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    with guard() if guard is not None else contextlib.nullcontext():
        atomic_write(Path(path), buffer.getvalue())
    return Path(path)
