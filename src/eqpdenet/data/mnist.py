"""MNIST: a verifying IDX reader, the data directory, and a verified atomic download.

The data directory holds MNIST under a ``mnist/`` subfolder (``<data_dir>/mnist/``), as the four
standard IDX files, gzip-compressed (``train-images-idx3-ubyte.gz`` ...) or raw
(``train-images-idx3-ubyte``). Which data directory is used (:func:`resolve_data_dir`): an explicit
argument (command-line flag) > the ``EQPDENET_DATA`` environment variable > a per-user directory
(``$XDG_CACHE_HOME/eqpdenet/data``, default ``~/.cache/eqpdenet/data``).

Every file is checked when read (:func:`read_idx`): IDX magic number and data type, number of
dimensions, item count and image size of the standard file, exact byte length (no truncation, no
trailing bytes), and the canonical MD5 of the *uncompressed* bytes. Any problem raises one
:class:`DataFileError` whose message names the file and what is wrong; no partly read array is ever
returned. Downloads (:func:`download_mnist`) go to a temporary file in the target directory, are
verified the same way, and only then renamed into place, so an interrupted, truncated or corrupted
download never leaves anything that looks like a valid file. A download says what it fetches
from where, then shows its progress: a bar on a terminal, a few plain lines in a log
(:func:`download_mnist`'s ``progress``; :func:`download_progress` turns it off for a block, as
the command line's ``--no-progress`` does).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import gzip
import hashlib
import http.client
import io
import math
import numbers
import os
import socket
import stat
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataFileError, DownloadError
from ..files import (
    STALE_GRACE,
    is_storage_limit,
    link_target,
    remove_stale_beside,
    temporary_beside,
    write_cause,
)
from ..process_state import path_variable

__all__ = [
    "DataFileError",
    "DownloadError",
    "MNIST",
    "MNIST_FILES",
    "DEFAULT_MIRRORS",
    "resolve_data_dir",
    "resolve_cache_dir",
    "check_cache_dir",
    "read_idx",
    "parse_idx",
    "IdxSpec",
    "find_mnist_file",
    "download_mnist",
    "download_progress",
    "load_mnist",
]

DATA_ENV = "EQPDENET_DATA"
CACHE_ENV = "EQPDENET_CACHE"

#: Public mirrors tried in order (base URLs; the file name ``<name>.gz`` is appended).
DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


@dataclass(frozen=True)
class IdxSpec:
    """What a standard MNIST IDX file must contain."""

    name: str  # file name without .gz
    shape: tuple[int, ...]  # full array shape (items first)
    md5: str  # MD5 of the uncompressed file


#: The four standard files, keyed by the :class:`MNIST` field they fill.
MNIST_FILES: dict[str, IdxSpec] = {
    "train_images": IdxSpec("train-images-idx3-ubyte", (60000, 28, 28), "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": IdxSpec("train-labels-idx1-ubyte", (60000,), "a25bea736e30d166cdddb491f175f624"),
    "test_images": IdxSpec("t10k-images-idx3-ubyte", (10000, 28, 28), "2646ac647ad5339dbf082846283269ea"),
    "test_labels": IdxSpec("t10k-labels-idx1-ubyte", (10000,), "27ae3e4e09519cfbb04c329615203637"),
}

#: The four files as a download's failure names them.
_MNIST_NAMES = ", ".join(f"{spec.name}.gz" for spec in MNIST_FILES.values())

# IDX type codes -> numpy big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------------------------
# Directories


#: What a data folder given by the flag or argument is called in messages.
DATA_FLAG = "--data-dir / data_dir"
#: The same for a cache folder.
CACHE_FLAG = "--cache-dir / cache_dir"


def _user_cache_root() -> Path:
    # The XDG Base Directory spec: a relative path in XDG_CACHE_HOME is invalid and ignored.
    base = path_variable("XDG_CACHE_HOME")
    if base is None or not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "eqpdenet"


def _given(flag: str | os.PathLike | None) -> bool:
    return flag is not None and str(flag) != ""


def resolve_data_dir(flag: str | os.PathLike | None = None) -> Path:
    """The data directory (the folder that contains ``mnist/``).

    Precedence: ``flag`` (e.g. a ``--data-dir`` command-line option) > the ``EQPDENET_DATA``
    environment variable > the per-user directory ``$XDG_CACHE_HOME/eqpdenet/data``
    (``~/.cache/eqpdenet/data``; a relative ``XDG_CACHE_HOME`` is ignored, as the XDG Base
    Directory spec says). The directory is not created here. An empty variable counts as unset;
    a value with whitespace at an end or a control character is refused
    (:func:`~eqpdenet.process_state.path_variable`).
    """
    if _given(flag):
        return Path(flag).expanduser()
    env = path_variable(DATA_ENV)
    if env is not None:
        return Path(env).expanduser()
    return _user_cache_root() / "data"


def data_dir_source(flag: str | os.PathLike | None) -> str | None:
    """Where the data folder came from, as messages name it: :data:`DATA_FLAG`, ``EQPDENET_DATA``
    or None (the per-user default)."""
    if _given(flag):
        return DATA_FLAG
    return DATA_ENV if path_variable(DATA_ENV) is not None else None


def _refuse_unusable_folder(root: Path, given: str, what: str, advice: str, typo_note: str = "",
                            below: Path | None = None) -> None:
    """Refuse, before anything is made, a folder given explicitly (by ``given``) that would
    have to be made with more than its last part (its parent does not exist either: a mistyped
    path, which would otherwise be created folder by folder and filled, or fail far from the
    typo), or whose path (or ``below``, the subfolder to be made in it) runs into something that
    is not a folder. ``advice`` ends each message, ``typo_note`` follows it for a mistyped path."""
    for path in (below, root, root.parent):
        if path is None or not os.path.lexists(path):
            continue
        if path.is_dir():
            return
        kind = ("a file" if path.is_file() else
                "a symbolic link to nothing" if path.is_symlink() else "not a folder")
        if path == root:
            raise DataFileError(path, f"the {what} given by {given} is {kind}, not a folder: "
                                      f"{advice}")
        raise DataFileError(path, f"{kind}, where the {what} given by {given} ({root}) needs a "
                                  f"folder: {advice}")
    raise DataFileError(root, f"the {what} given by {given} does not exist, nor does its parent "
                              f"{root.parent}: a mistyped path? {advice}{typo_note}")


def _refuse_blocked_default(root: Path, what: str, variable: str) -> None:
    """Refuse, before anything is made, a per-user default folder ``root`` that cannot be made:
    the nearest existing path at or above it is not a folder (``~/.cache/eqpdenet`` a file). The
    default is made with its parents, and ``mkdir`` said only ``[Errno 17] File exists`` (or
    ``Not a directory``) after the work that needed it."""
    for path in (root, *root.parents):
        if not os.path.lexists(path):
            continue
        if path.is_dir():
            return
        kind = ("a file" if path.is_file() else
                "a symbolic link to nothing" if path.is_symlink() else "not a folder")
        raise DataFileError(path, f"{kind}, where the per-user {what} {root} needs a folder: "
                                  f"remove it, or set {variable} to a folder")


def _refuse_mistyped_data_dir(flag: str | os.PathLike | None, root: Path) -> None:
    """Refuse a data folder given explicitly (``flag``: ``--data-dir`` or the ``data_dir``
    argument; else ``EQPDENET_DATA``) whose parent folder does not exist either: a mistyped path,
    which a download would otherwise create, folder by folder, and fill (or fail to, offline, far
    from the typo); or that is, or would be made in, a file. A new data folder inside an existing
    folder stays allowed (a download into a fresh ``./data``); the per-user default is created
    with its parents."""
    given = data_dir_source(flag)
    if given is None:
        _refuse_blocked_default(root / "mnist", "data folder", DATA_ENV)
        return
    _refuse_unusable_folder(root, given, "data folder", f"Point {given} at the folder holding mnist/",
                            " (a download creates the data folder only inside an existing one)",
                            below=root / "mnist")


def _mnist_names(folder: Path) -> list[str]:
    """The names :func:`find_mnist_file` looks for that are files in ``folder``."""
    names = [name for spec in MNIST_FILES.values() for name in (f"{spec.name}.gz", spec.name)]
    return [name for name in names if (folder / name).is_file()]


def _refuse_mnist_folder_as_data_dir(flag: str | os.PathLike | None, root: Path) -> None:
    """Refuse a data folder that holds MNIST's files itself while its ``mnist/`` holds none: it
    was pointed at the ``mnist/`` folder (or the files were put beside it), and a download would
    make ``mnist/mnist/`` and fetch them again. Refused, not taken as meant: a guess would read
    other files than the path says, and a later run that guesses otherwise would download."""
    found = _mnist_names(root)
    if found and not _mnist_names(root / "mnist"):
        refuse_files_beside_their_folder(flag, root, found, "mnist", "MNIST's files", "MNIST")


def refuse_files_beside_their_folder(flag: str | os.PathLike | None, root: Path, found: list[str],
                                     subfolder: str, files: str, held: str) -> None:
    """The :class:`DataFileError` of a data folder ``root`` holding ``found`` (``files``, e.g.
    "MNIST's files") itself instead of in its ``subfolder``: the advice to point the flag or
    variable (:func:`data_dir_source`) at the parent where ``root`` is that subfolder, else to
    move them there. The rule of MNIST's and ROTMNIST's folders alike."""
    given = data_dir_source(flag)
    where = f", given by {given}," if given else ""
    if given and root.name == subfolder:
        advice = f"point {given} at its parent {root.parent}, the folder holding {subfolder}/"
    else:
        advice = (f"move them into {root / subfolder} (the data folder holds {held} in "
                  f"{subfolder}/)")
    raise DataFileError(root, f"this data folder{where} holds {files} itself "
                              f"({', '.join(found)}), not in a {subfolder}/ subfolder: {advice}")


def resolve_cache_dir(flag: str | os.PathLike | None = None) -> Path:
    """The writable directory for generated files (e.g. the ROTMNIST cache).

    Precedence: ``flag`` > the ``EQPDENET_CACHE`` environment variable > the per-user directory
    ``$XDG_CACHE_HOME/eqpdenet`` (``~/.cache/eqpdenet``; a relative ``XDG_CACHE_HOME`` is
    ignored). Kept separate from the data directory, which may be read-only (it is in CI). An
    empty variable counts as unset; a value with whitespace at an end or a control character is
    refused (:func:`~eqpdenet.process_state.path_variable`).
    """
    if _given(flag):
        return Path(flag).expanduser()
    env = path_variable(CACHE_ENV)
    if env is not None:
        return Path(env).expanduser()
    return _user_cache_root()


def check_cache_dir(flag: str | os.PathLike | None = None) -> Path:
    """:func:`resolve_cache_dir`, refusing (a :class:`DataFileError` of one line naming the flag
    or ``EQPDENET_CACHE``) a folder given explicitly whose parent does not exist either (a
    mistyped path: a cache written there would make the whole chain and fill it unseen) or that
    is, or lies in, a file. Called before the work whose result would be cached; the per-user
    default is made with its parents, and refused where a file stands in its way."""
    root = resolve_cache_dir(flag)
    if _given(flag):
        given = CACHE_FLAG
    elif path_variable(CACHE_ENV) is not None:
        given = CACHE_ENV
    else:
        _refuse_blocked_default(root, "cache folder", CACHE_ENV)
        return root
    _refuse_unusable_folder(root, given, "cache folder",
                            f"Point {given} at an existing folder, or at a new one inside an "
                            f"existing folder")
    return root


# --------------------------------------------------------------------------------------------
# Reading


#: The first bytes of a gzip stream.
_GZIP_MAGIC = b"\x1f\x8b"

#: Uncompressed bytes asked of ``gzip.GzipFile`` at a time (:func:`_gunzip`): its ``read(n)``
#: sets aside ``n`` bytes first, and a header may declare any size; 64 MiB reads MNIST's largest
#: file (47 MB) in one piece, never copied into a join.
_GUNZIP_CHUNK = 1 << 26


def _gunzip(path: str | os.PathLike, raw: bytes, size: int) -> bytes:
    """Up to ``size`` uncompressed bytes of the gzip data ``raw``, fewer only where it ends, by
    ``gzip.GzipFile`` (members one after another, zero padding ignored, as ``gzip.decompress``):
    nothing beyond them is decompressed (``gzip.decompress`` inflated a small file of zeros to
    any size before its length could be checked: 400 MiB from 400 KB). A stream that ends
    early, is damaged or fails its CRC or length check raises :class:`DataFileError` naming
    ``path``."""
    parts = []
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            while size > 0:
                chunk = stream.read(min(size, _GUNZIP_CHUNK))
                if not chunk:
                    break
                parts.append(chunk)
                size -= len(chunk)
    except EOFError as exc:
        raise DataFileError(path, f"truncated gzip stream ({len(raw)} compressed bytes): "
                                  f"{exc}") from None
    except (OSError, zlib.error) as exc:  # BadGzipFile is an OSError; CRC / length errors too
        raise DataFileError(path, f"corrupted gzip stream: {exc}") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _gunzip_idx(path: str | os.PathLike, raw: bytes, shape: Sequence[int] | None) -> bytes:
    """The uncompressed bytes of the gzip-compressed IDX file ``raw``, decompressed no further
    than its header says: the header first (checked as :func:`parse_idx` checks it, ``shape``
    included), then at most the declared length and one byte more, a byte more being refused
    as trailing bytes. A stream holding less is returned as it is (:func:`parse_idx` says it is
    truncated)."""
    head = _gunzip(path, raw, 4)
    if len(head) == 4:
        head = _gunzip(path, raw, 4 + 4 * head[3])
    _dtype, dims, _header_len, expected_len = _idx_header(head, path, shape)
    data = _gunzip(path, raw, expected_len + 1)
    if len(data) > expected_len:
        raise DataFileError(path, f"unexpected trailing bytes after the {dims} array: the gzip "
                                  f"stream holds more than the {expected_len} bytes its header "
                                  f"declares")
    return data


def _idx_content(path: str | os.PathLike, raw: bytes, shape: Sequence[int] | None) -> bytes:
    """The IDX bytes of the file content ``raw``: decompressed (:func:`_gunzip_idx`) where it
    starts like gzip, else ``raw`` itself."""
    return _gunzip_idx(path, raw, shape) if raw[:2] == _GZIP_MAGIC else raw


def _idx_header(data: bytes, path: str | os.PathLike, shape: Sequence[int] | None
                ) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """The data type, dimensions, header length and whole length in bytes (exact integers: a
    product of four-byte dimensions overflows 64 bits) that the IDX header at the start of
    ``data`` declares, checked as :func:`parse_idx` says (``shape``: the shape required)."""
    if len(data) < 4:
        raise DataFileError(path, f"truncated: {len(data)} bytes, too short for an IDX header")
    zero, type_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataFileError(
            path, f"wrong magic number 0x{data[:4].hex()}: not an IDX file "
            "(expected 0x0000 then a type code 0x08-0x0e and the number of dimensions)"
        )
    dtype = _IDX_DTYPES[type_code]
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if ndim != len(shape):
            raise DataFileError(
                path, f"wrong magic number 0x{data[:4].hex()}: {ndim} dimension(s), expected {len(shape)}"
            )
        if dtype != np.dtype(">u1"):
            raise DataFileError(path, f"wrong magic number 0x{data[:4].hex()}: data type {dtype}, "
                                "expected unsigned bytes (0x08)")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataFileError(path, f"truncated: {len(data)} bytes, the header alone needs {header_len}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if shape is not None:
        if dims[0] != shape[0]:
            raise DataFileError(path, f"wrong item count: header says {dims[0]}, expected {shape[0]}")
        if dims[1:] != shape[1:]:
            raise DataFileError(path, f"wrong item size: header says {dims[1:]}, expected {shape[1:]}")
    return dtype, dims, header_len, header_len + math.prod(dims) * dtype.itemsize


def parse_idx(
    data: bytes,
    path: str | os.PathLike = "<bytes>",
    *,
    shape: Sequence[int] | None = None,
    md5: str | None = None,
) -> np.ndarray:
    """Parse the (uncompressed) bytes of an IDX file and verify them.

    Args:
        data: the uncompressed file content.
        path: used only in error messages.
        shape: if given, the exact array shape required (items first).
        md5: if given, the required MD5 hex digest of ``data``.

    Returns:
        The array, in native byte order (``uint8`` for MNIST).

    Raises:
        DataFileError: naming ``path`` and the first problem found (structure is checked before
        the checksum, so truncation is reported as truncation, not as a checksum mismatch).
    """
    dtype, dims, header_len, expected_len = _idx_header(data, path, shape)
    if len(data) < expected_len:
        raise DataFileError(
            path, f"truncated: {len(data)} bytes, expected {expected_len} for dimensions {dims}"
        )
    if len(data) > expected_len:
        raise DataFileError(
            path, f"{len(data) - expected_len} unexpected trailing bytes after the {dims} array"
        )
    if md5 is not None:
        digest = hashlib.md5(data).hexdigest()
        if digest != md5:
            raise DataFileError(
                path, f"MD5 mismatch of the uncompressed content: got {digest}, expected {md5} "
                "(corrupted file or not the canonical MNIST)"
            )
    try:
        array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    except ValueError as exc:  # no items, but more dimensions or a size NumPy cannot hold
        raise DataFileError(path, f"dimensions {dims} cannot be held by a NumPy array: "
                                  f"{exc}") from None
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike, *, spec: IdxSpec | None = None,
             verify: bool = True) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw; detected from the content, not the name).

    Every file is checked for a valid magic number and an exact byte length. With ``spec`` (one
    of :data:`MNIST_FILES`, as :func:`load_mnist` passes), the array shape (dimensions, item
    count) and the canonical MD5 of the uncompressed bytes are verified too (``verify=False``
    skips only the MD5). The file name plays no part: Fashion-MNIST or KMNIST files carry
    MNIST's names and are read without MNIST's checksums.

    The header is checked first, and no more is read or decompressed than it declares and one
    byte: a file larger than that (on disk, or inflated from its gzip stream) is refused as
    trailing bytes, so that a small file cannot take memory beyond its declared array's size
    (a gzip file's excess is not counted; a raw file's is, from its size).

    Returns:
        The array, e.g. ``(60000, 28, 28) uint8`` for the MNIST training images.

    Raises:
        DataFileError: on a missing, truncated, corrupted or mismatching file; the message names it.
    """
    path = Path(path)
    shape = None if spec is None else spec.shape
    try:
        # unbuffered: the whole file is read in one piece (a buffer's bytes joined to the
        # rest were a copy of the file)
        with open(path, "rb", buffering=0) as handle:
            start = _read_up_to(handle, 2)
            if start == _GZIP_MAGIC:
                data = _gunzip_idx(path, _read_all(handle, start), shape)
            else:
                data = _read_raw_idx(path, handle, start, shape)
    except FileNotFoundError:
        raise DataFileError(path, "file not found") from None
    except OSError as exc:
        raise DataFileError(path, f"cannot read: {exc}") from None
    if spec is None:
        return parse_idx(data, path)
    return parse_idx(data, path, shape=spec.shape, md5=spec.md5 if verify else None)


def _read_up_to(handle, size: int) -> bytes:
    """``size`` bytes from the unbuffered file ``handle``, fewer only at its end (a pipe's
    read may return fewer)."""
    data = b""
    while len(data) < size:
        piece = handle.read(size - len(data))
        if not piece:
            break
        data += piece
    return data


def _read_all(handle, start: bytes) -> bytes:
    """All of the unbuffered file ``handle``, of which ``start`` is read: read again from its
    beginning in one piece where it can be (a regular file), else ``start`` and the rest."""
    if not handle.seekable():
        return start + handle.readall()
    handle.seek(0)
    return handle.readall()


def _read_raw_idx(path: Path, handle, start: bytes, shape: Sequence[int] | None) -> bytes:
    """The bytes of the uncompressed IDX file open as ``handle`` (unbuffered), of which
    ``start`` is read: its header, checked, then all of it, unless the file is larger than the
    header declares (trailing bytes, refused with their number without reading them)."""
    data = start + _read_up_to(handle, 4 - len(start))
    if len(data) == 4:
        data += _read_up_to(handle, 4 * data[3])
    _dtype, dims, _header_len, expected_len = _idx_header(data, path, shape)
    size = os.fstat(handle.fileno()).st_size  # 0 for a pipe: read to its end
    if size > expected_len:
        raise DataFileError(path, f"{size - expected_len} unexpected trailing bytes after the "
                                  f"{dims} array")
    return _read_all(handle, data)


def find_mnist_file(data_dir: str | os.PathLike, key: str) -> Path | None:
    """The path of MNIST file ``key`` (a :data:`MNIST_FILES` key) in ``<data_dir>/mnist/``.

    Prefers ``<name>.gz``, else the raw ``<name>``; returns ``None`` when neither exists.
    """
    folder = Path(data_dir) / "mnist"
    name = MNIST_FILES[key].name
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# Downloading


def _largest_download(spec: IdxSpec) -> int:
    """Bytes no download of ``spec`` can exceed: the raw IDX file (header and uint8 items) plus
    1 MiB, more than gzip adds even to incompressible data."""
    return 4 + 4 * len(spec.shape) + math.prod(spec.shape) + (1 << 20)


class _Deadline:
    """The deadline of one try at one file: ``seconds`` from its start, every connection the try
    opened (redirects and proxies included) is shut down, wherever the download waits: for the
    connection, the TLS handshake, the status line and headers, or the body. A server that
    sends a byte now and then, each within the socket timeout, held a download for as long as
    it liked while its headers came (the deadline was looked at only between body reads).

    Each connection's socket is watched through a duplicate of its descriptor, so that the
    shutdown reaches the connection whatever object (a TLS wrapper) holds it by then, and can
    never hit another file that reused a closed descriptor's number. The wait for a name
    server (``getaddrinfo``) cannot be cut short: it is the system's."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def passed(self) -> bool:
        """Whether the deadline has come (the timer may lag the clock by a moment)."""
        return self.expired or time.monotonic() >= self.end

    def _expire(self) -> None:
        with self._lock:  # never a shutdown of a duplicate that close() is closing
            if self._closed:
                return
            self.expired = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _watch(self, sock: socket.socket) -> None:
        with self._lock:
            duplicate = sock.dup()
            self._sockets.append(duplicate)
            if self.expired:
                with contextlib.suppress(OSError):
                    duplicate.shutdown(socket.SHUT_RDWR)

    def connection(self, http_class, host, **kwargs):
        """``http_class(host, **kwargs)`` (an ``http.client`` connection), its socket watched
        from the moment it is connected; its connection attempt waits at most until the
        deadline."""
        connection = http_class(host, **kwargs)
        create = connection._create_connection  # socket.create_connection, an attribute

        def create_connection(address, timeout, *args, **kw):
            left = self.end - time.monotonic()
            if left <= 0:
                raise TimeoutError("the deadline passed before connecting")
            sock = create(address, min(timeout, left), *args, **kw)
            sock.settimeout(timeout)  # the reads wait up to ``timeout``; the timer does the rest
            self._watch(sock)
            return sock

        connection._create_connection = create_connection
        return connection

    def close(self) -> None:
        """Stop the timer and let go of the duplicates (the connections close with their last
        descriptor)."""
        self._timer.cancel()
        with self._lock:
            self._closed = True
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


class _WatchedHandler:
    """An ``urllib`` HTTP(S) handler whose connections a :class:`_Deadline` watches."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(functools.partial(self._deadline.connection, http_class), req,
                               **kwargs)


class _WatchedHTTPHandler(_WatchedHandler, urllib.request.HTTPHandler):
    pass


_WATCHED_HANDLERS: tuple[type, ...] = (_WatchedHTTPHandler,)
if hasattr(urllib.request, "HTTPSHandler"):  # Python built with ssl

    class _WatchedHTTPSHandler(_WatchedHandler, urllib.request.HTTPSHandler):
        pass

    _WATCHED_HANDLERS += (_WatchedHTTPSHandler,)


def _deadline_error(url: str, received: int | None, deadline: float) -> DataFileError:
    if received is None:
        return DataFileError(url, f"no complete response (status line and headers) in "
                             f"{deadline:g} s, the deadline of one file (download_mnist's "
                             "deadline)")
    return DataFileError(url, f"{received} bytes in {deadline:g} s, the deadline of one file "
                         f"(download_mnist's deadline)")


def _download_into(out, url: str, spec: IdxSpec, *, timeout: float, deadline: float,
                   progress: bool, name: str) -> None:
    """Stream ``url``'s body into the file ``out``, all of it within ``deadline`` seconds
    (:class:`_Deadline`) and no more than :func:`_largest_download` bytes."""
    limit = _largest_download(spec)
    watch = _Deadline(deadline)
    received = None  # None until the status line and headers are in
    try:
        opener = urllib.request.build_opener(*(handler(watch) for handler in _WATCHED_HANDLERS))
        with opener.open(url, timeout=timeout) as response:
            if watch.expired:  # the headers were cut off at the deadline, not complete
                raise _deadline_error(url, None, deadline)
            received = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            if total is not None and total > limit:
                raise DataFileError(url, f"the server announces {total} bytes, more than "
                                    f"{spec.name}.gz can hold ({limit}): not that file")
            bar = _progress_bar(total, name) if progress else None
            try:
                while True:
                    chunk = response.read1(1 << 16)  # what has arrived: the deadline is checked
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    if received > limit:
                        raise DataFileError(url, f"more than {limit} bytes, more than "
                                            f"{spec.name}.gz can hold: not that file")
                    if watch.passed():
                        raise _deadline_error(url, received, deadline)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            if watch.expired and received != total:  # the deadline shut the connection
                raise _deadline_error(url, received, deadline)
            if total is not None and received != total:
                raise DataFileError(url, f"truncated response: {received} of {total} bytes")
    except DataFileError:
        raise
    except Exception as exc:
        # whatever the connection's end at the deadline looked like (an empty status line, an
        # incomplete chunk, a TLS error, a socket timeout at the same moment): the deadline
        if watch.passed():
            raise _deadline_error(url, received, deadline) from exc
        raise
    finally:
        watch.close()


def _fetch_verified(url: str, target: Path, spec: IdxSpec, *, timeout: float, deadline: float,
                    progress: bool) -> None:
    """Download ``url`` to a temporary file beside ``target``, verify it, then rename it. Stops
    a response that grows beyond any such file (:func:`_largest_download`) or takes longer than
    ``deadline`` seconds in all, from the connection to the body's last byte (a server that
    trickles bytes, headers included, never meets the socket timeout)."""
    target = link_target(target)  # a symbolic link (a dangling one) is written through, kept
    fd, tmp = temporary_beside(target, ".part")
    try:
        with os.fdopen(fd, "wb") as out:
            _download_into(out, url, spec, timeout=timeout, deadline=deadline,
                           progress=progress, name=target.name)
            out.flush()
            os.fsync(out.fileno())
        # inflated no further than the file's length: a small reply could inflate to gigabytes
        data = _idx_content(url, tmp.read_bytes(), spec.shape)
        parse_idx(data, url, shape=spec.shape, md5=spec.md5)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("eqpdenet_download_progress",
                                                                  default=True)


@contextlib.contextmanager
def download_progress(enabled: bool) -> Iterator[None]:
    """Within the block, downloads that are not told otherwise (``progress=None``, as
    :func:`load_mnist` and the loaders that call it pass) show their progress or not: the
    command line's ``--no-progress`` reaches the download of a data set loaded deep inside a
    command this way."""
    token = _PROGRESS.set(bool(enabled))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _size(count: float) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


#: Bytes between two plain progress lines of a download whose length is not announced.
LINE_BYTES = 8 * 2**20


class _LineProgress:
    """A download's progress as plain lines on stderr, for a log (no bar redrawn with carriage
    returns): a line at each tenth of an announced length (every :data:`LINE_BYTES` of an
    unannounced one: at most six of the largest file), so that a log of the four files holds a
    few dozen lines, each readable alone."""

    def __init__(self, total: int | None, name: str):
        self.total, self.name, self.received = total, name, 0
        self.step = total / 10 if total else LINE_BYTES
        self.next, self.start = self.step, time.monotonic()

    def update(self, count: int) -> None:
        self.received += count
        if self.received < self.next and self.received != self.total:
            return
        while self.next <= self.received:
            self.next += self.step
        done = _size(self.received)
        if self.total:
            done += f" of {_size(self.total)} ({100 * self.received // self.total}%)"
        print(f"{self.name}: {done}, {time.monotonic() - self.start:.1f} s", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        pass


def _progress_bar(total: int | None, name: str):
    """A tqdm bar on a terminal (where tqdm is installed), plain lines in a log
    (:class:`_LineProgress`)."""
    if _is_terminal(sys.stderr):
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional: plain lines, same download
            return _LineProgress(total, name)
        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                    leave=False)
    return _LineProgress(total, name)


def _seconds_argument(name: str, value) -> None:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ConfigError(f"download_mnist: {name} must be a finite number of seconds > 0, "
                          f"got {value!r}")


def _download_arguments(mirrors, keys, timeout, deadline) -> tuple[list[str], list[str]]:
    """:func:`download_mnist`'s ``mirrors`` and ``keys`` as lists, checked with ``timeout`` and
    ``deadline`` before anything is made: a str was read one character at a time (a mirror
    ``h``, a key ``t``), an unknown key was a bare ``KeyError``, a timeout of 0 or less a
    failure of every mirror, a NaN deadline no deadline at all."""
    checked = {}
    for name, value, default in (("mirrors", mirrors, DEFAULT_MIRRORS),
                                 ("keys", keys, tuple(MNIST_FILES))):
        if value is None:
            value = default
        if isinstance(value, str | bytes | os.PathLike):
            example = ["https://example.org/mnist/"] if name == "mirrors" else ["test_labels"]
            raise ConfigError(f"download_mnist: {name} must be a list of "
                              f"{'base URLs' if name == 'mirrors' else 'MNIST_FILES keys'} (e.g. "
                              f"{example!r}), not the {type(value).__name__} {value!r}")
        try:
            checked[name] = list(value)
        except TypeError:
            raise ConfigError(f"download_mnist: {name} must be a list, got "
                              f"{type(value).__name__} {value!r}") from None
    mirrors, keys = checked["mirrors"], checked["keys"]
    if not mirrors:
        raise ConfigError("download_mnist: mirrors: no mirrors given")
    for number, mirror in enumerate(mirrors):
        if not isinstance(mirror, str) or not mirror.strip():
            raise ConfigError(f"download_mnist: mirrors[{number}] must be a base URL (a "
                              f"non-empty str), got {mirror!r}")
    for key in keys:
        if not isinstance(key, str) or key not in MNIST_FILES:
            raise ConfigError(f"download_mnist: keys: unknown MNIST file {key!r}; the keys are "
                              + ", ".join(map(repr, MNIST_FILES)))
    _seconds_argument("timeout", timeout)
    _seconds_argument("deadline", deadline)
    return mirrors, keys


def _write_advice(error: OSError, folder: Path) -> str:
    """What to do about a data folder that cannot be written, for the cause ``error`` gives."""
    elsewhere = f"point {DATA_ENV} / --data-dir at another folder"
    if error.errno == errno.EROFS:
        return f"the file system is read-only: {elsewhere}, on a writable one"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"make {folder} writable for this user, or {elsewhere}"
    if error.errno == errno.EFBIG:
        return f"raise the limit, or {elsewhere}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"make room there, or {elsewhere}"
    return elsewhere


def _remove_killed_downloads(target: Path, *, age: float) -> None:
    """Remove the temporary files of killed downloads of ``target`` (beside the file a link
    leads to, where they are written): lock free and untouched for :data:`STALE_GRACE` seconds,
    or, where the lock cannot be tested, for ``age`` (longer than a download may take)."""
    try:
        written = link_target(target)
    except OSError:  # a loop of links: the download, if one is needed, says so
        return
    remove_stale_beside(written, ".part", age=age, grace=STALE_GRACE)


def _check_writable(target: Path, spec: IdxSpec) -> None:
    """Make and delete a temporary file where ``target``'s download will be written: a folder
    that cannot be written, or a ``target`` (the file a link leads to) that exists and is not a
    regular file (a folder ``<name>.gz``, which the finished download cannot replace), is one
    :class:`DownloadError` naming it and the cause, before any mirror is tried (each mirror
    was tried, each downloading the whole file, then failing the same way)."""
    written = target
    try:
        written = link_target(target)
        with contextlib.suppress(FileNotFoundError):
            mode = os.stat(written).st_mode
            if not stat.S_ISREG(mode):
                kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
                raise DownloadError(f"cannot write {spec.name}.gz into {written.parent}: "
                                    f"{written} is {kind}, where the download is to be put: "
                                    f"remove or rename it")
        fd, tmp = temporary_beside(written, ".part")
        os.close(fd)
        tmp.unlink()
    except OSError as exc:
        raise DownloadError(f"cannot write {spec.name}.gz into {written.parent}: "
                            f"{write_cause(exc)}; {_write_advice(exc, written.parent)}") from None


#: :func:`download_mnist`'s default ``timeout`` and ``deadline``, in seconds.
DOWNLOAD_TIMEOUT = 60.0
DOWNLOAD_DEADLINE = 1800.0


def download_mnist(
    data_dir: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    *,
    keys: Sequence[str] | None = None,
    force: bool = False,
    timeout: float = DOWNLOAD_TIMEOUT,
    deadline: float = DOWNLOAD_DEADLINE,
    progress: bool | None = None,
) -> Path:
    """Download the missing MNIST files into ``<data_dir>/mnist/``, verified and atomically.

    For each file, the mirrors are tried in order (``<mirror>/<name>.gz``). A response is streamed
    into a temporary file in the same directory, checked (complete body, valid gzip, IDX header,
    item count, canonical MD5 of the uncompressed bytes) and only then renamed to ``<name>.gz``;
    on any failure the temporary file is deleted and the next mirror is tried.

    Args:
        data_dir: the data directory (see :func:`resolve_data_dir`); created if needed, but a
            folder given explicitly (``data_dir``, ``EQPDENET_DATA``) only inside an existing
            folder: one whose parent does not exist either is refused as a mistyped path.
        mirrors: base URLs (default :data:`DEFAULT_MIRRORS`), e.g. ``["http://127.0.0.1:8000/"]``.
        keys: which files (a list of :data:`MNIST_FILES` keys); default (None) all four; an
            empty list downloads nothing (the data folder is still checked and ``mnist/`` made).
        force: download even if a file already exists.
        timeout: socket timeout in seconds (finite, > 0): the longest wait for the connection
            or for the next bytes of a response.
        deadline: the most seconds (finite, > 0) one try at one file may take in all, from the
            connection to the body's last byte, status line and headers included (a server
            that sends a byte now and then never meets ``timeout``): at the deadline its
            connection is shut (only a name server's lookup is not cut short). A response
            larger than the file can be is stopped too. Temporary files of earlier downloads
            of a file whose writer is gone (a killed download's) are removed at each call, the
            file present or not: once untouched for :data:`~eqpdenet.files.STALE_GRACE`
            seconds, or, where their lock cannot be tested, ``deadline + timeout`` seconds.
        progress: show the progress: a line ``downloading URL into FOLDER`` for each try
            (and the failure of a mirror before the next is tried), then a tqdm bar on a
            terminal (when tqdm is installed), or plain lines in a log (stderr not a terminal;
            a line per tenth of the file, see :class:`_LineProgress`), all on stderr. None
            (the default): as :func:`download_progress` says (shown unless a block of it turned
            it off).

    Returns:
        The ``mnist/`` folder.

    Raises:
        ConfigError: (a ``ValueError``) ``mirrors`` or ``keys`` a str or not a list, empty
            ``mirrors``, a mirror not a non-empty str, an unknown key, a ``timeout`` or
            ``deadline`` not a finite number > 0; before anything is made.
        DownloadError: when every mirror failed for some file (each failure is listed, then how to
            supply the files by hand); when ``mnist/`` cannot be made, or a file cannot be
            written into it (no permission, a read-only file system, no room: checked once per
            file before any mirror is tried), in one line naming the folder, the cause and
            what to do.
        DataFileError: an explicitly given data folder whose parent does not exist, or that is
            (or whose ``mnist/`` is) a file; a data folder that holds MNIST's files itself and
            none in ``mnist/`` (pointed at ``mnist/``, not its parent): each before anything
            is made.
    """
    mirrors, keys = _download_arguments(mirrors, keys, timeout, deadline)
    root = resolve_data_dir(data_dir)
    _refuse_mistyped_data_dir(data_dir, root)
    _refuse_mnist_folder_as_data_dir(data_dir, root)
    folder = root / "mnist"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only data folder, no permission: no mirror can help
        made_in = Path(exc.filename).parent if exc.filename else folder.parent
        raise DownloadError(f"cannot create {folder}: {write_cause(exc)}; "
                            f"{_write_advice(exc, made_in)}") from None
    progress = _PROGRESS.get() if progress is None else bool(progress)
    for key in keys:
        spec = MNIST_FILES[key]
        target = folder / f"{spec.name}.gz"
        # a killed download's, before the file is found present: the next run fetches nothing,
        # and its file would stay for ever (a live download holds its file's lock)
        _remove_killed_downloads(target, age=deadline + timeout)
        if not force and find_mnist_file(folder.parent, key) is not None:
            continue
        _check_writable(target, spec)
        failures = []
        for number, mirror in enumerate(mirrors, 1):
            url = mirror.rstrip("/") + "/" + spec.name + ".gz"
            if progress:  # a sign of life in a log too, before a wait of up to ``timeout``
                print(f"downloading {url} into {folder}", file=sys.stderr, flush=True)
            try:
                _fetch_verified(url, target, spec, timeout=timeout, deadline=deadline,
                                progress=progress)
                break
            except DataFileError as exc:
                failures.append(str(exc))
            except OSError as exc:
                if is_storage_limit(exc):  # the folder's disk or limit: every mirror would fail
                    raise DownloadError(
                        f"cannot write {spec.name}.gz into {folder}: {write_cause(exc)}; no other "
                        f"mirror can help: {_write_advice(exc, folder)}") from None
                failures.append(f"{url}: {type(exc).__name__}: {exc}")  # URLError is an OSError
            except (http.client.HTTPException, ValueError) as exc:
                failures.append(f"{url}: {type(exc).__name__}: {exc}")
            if progress and number < len(mirrors):
                print(f"failed: {failures[-1]}; trying the next mirror", file=sys.stderr,
                      flush=True)
        else:
            raise DownloadError(
                f"could not download a verified {spec.name}.gz into {folder}:\n  " + "\n  ".join(failures)
                + f"\nTo supply MNIST yourself, put the four files {_MNIST_NAMES} in {folder}, or point "
                f"{DATA_ENV} / --data-dir at a folder holding mnist/ with them"
            )
    return folder


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class MNIST:
    """The 70,000 MNIST digits in the original order.

    Attributes:
        train_images: ``(60000, 28, 28) uint8`` in [0, 255].
        train_labels: ``(60000,) int64`` in 0..9.
        test_images: ``(10000, 28, 28) uint8``.
        test_labels: ``(10000,) int64``.
        data_dir: the data directory it was read from.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    data_dir: Path | None = None

    def all_images(self) -> np.ndarray:
        """All 70,000 images, ``(70000, 28, 28) uint8``: the training set, then the test set."""
        return np.concatenate([self.train_images, self.test_images])

    def all_labels(self) -> np.ndarray:
        """All 70,000 labels, ``(70000,) int64``, in the order of :meth:`all_images`."""
        return np.concatenate([self.train_labels, self.test_labels])


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    mirrors: Sequence[str] | None = None,
    verify: bool = True,
    progress: bool | None = None,
) -> MNIST:
    """Read (and if needed download) the four MNIST files from ``<data_dir>/mnist/``.

    Killed downloads' temporary files are removed first, the files present or not, as
    :func:`download_mnist` removes them (with its default ``deadline + timeout`` as their age
    where their lock cannot be tested).

    Args:
        data_dir: see :func:`resolve_data_dir` (flag > ``EQPDENET_DATA`` > per-user directory).
        download: download missing files (:func:`download_mnist`); else a missing file is an error.
        mirrors: passed to :func:`download_mnist`.
        verify: check the canonical MD5s (the shape checks always run).
        progress: passed to :func:`download_mnist` (None: as :func:`download_progress` says).

    Raises:
        DataFileError: a file is missing (with ``download=False``) or invalid; a data folder
            that holds MNIST's files itself and none in ``mnist/`` (pointed at ``mnist/``,
            not at its parent), refused before anything is made, as :func:`download_mnist`
            refuses its folders.
        ConfigError: ``EQPDENET_DATA`` is not a usable path (:func:`~eqpdenet.process_state.path_variable`).
        DownloadError: a missing file could not be downloaded.
    """
    root = resolve_data_dir(data_dir)
    for spec in MNIST_FILES.values():
        # a killed download's, as download_mnist removes them: with all four files present it
        # is never called, and the file (up to 48 MB) stayed for ever
        _remove_killed_downloads(root / "mnist" / f"{spec.name}.gz",
                                 age=DOWNLOAD_DEADLINE + DOWNLOAD_TIMEOUT)
    missing = [key for key in MNIST_FILES if find_mnist_file(root, key) is None]
    if missing:
        _refuse_mnist_folder_as_data_dir(data_dir, root)
        if not download:
            names = ", ".join(MNIST_FILES[k].name + "[.gz]" for k in missing)
            raise DataFileError(
                root / "mnist", f"missing MNIST file(s) {names}; set {DATA_ENV} or pass the data "
                "directory (the folder containing mnist/), or allow download=True"
            )
        # data_dir as given, not root: where the folder came from decides whether a new one
        # may be made (_refuse_mistyped_data_dir)
        download_mnist(data_dir, mirrors, keys=missing, progress=progress)
    arrays = {}
    for key, spec in MNIST_FILES.items():
        path = find_mnist_file(root, key)
        assert path is not None
        array = read_idx(path, spec=spec, verify=verify)
        if len(spec.shape) == 1:
            if array.max(initial=0) > 9:
                raise DataFileError(path, f"label {int(array.max())} out of range 0..9")
            array = array.astype(np.int64)
        arrays[key] = array
    return MNIST(**arrays, data_dir=root)
