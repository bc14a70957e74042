"""Data files, round 17 (outside probe y1): an IDX file's gzip stream is inflated no further than
its header declares (400 KB of gzip took 1 GB of memory before its length was checked, a
download's reply could take ~48 GB); IDX sizes are exact integers (a product of dimensions wrapped
at 2**64: a 16-byte file passed the length check, then reshape raised a bare ``ValueError``); a
.npz member whose header declares more than it holds is refused before numpy allocates it (a bare
``MemoryError``, which the command line took for a batch too large); ``load_mnist`` removes a
killed download's ``.part`` with all four files present; a folder where a download's file is to
go is refused before any mirror is tried."""

from __future__ import annotations

import gzip
import http.server
import io
import os
import shutil
import struct
import threading
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from data.test_mnist import _Handler  # the local mirror of the download tests
from data_helpers import data_dir_or_skip
from eqpdenet.data.datasets import dataset_shape, load_dataset, load_npz
from eqpdenet.data.mnist import MNIST_FILES, download_mnist, load_mnist, parse_idx, read_idx
from eqpdenet.errors import DataFileError, DownloadError

#: Zeros after a file's last byte in the gzip "bombs" below (64 MiB inflate from ~290 KB).
ZEROS = 64 << 20
#: The most memory reading such a file may take: a few times its compressed size.
BOUND = 8 << 20


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    array = np.asarray(array)
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def header_only(dims: tuple[int, ...], extra: bytes = b"") -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + extra


def gzip_then_zeros(data: bytes, zeros: int = ZEROS) -> bytes:
    """One gzip member holding ``data`` followed by ``zeros`` zero bytes."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    parts = [packer.compress(data)]
    block = bytes(1 << 20)
    for _ in range(zeros // len(block)):
        parts.append(packer.compress(block))
    return b"".join(parts) + packer.flush()


def peak_memory(call):
    """``call()``'s exception (or result) and the peak of Python's allocations during it."""
    tracemalloc.start()
    try:
        try:
            outcome = call()
        except Exception as error:  # noqa: BLE001 - returned for the test to check
            outcome = error
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


LABELS = np.arange(10, dtype=np.uint8)


# ------------------------------------------------------------------ F1: bounded decompression


def test_a_gzip_file_inflating_beyond_its_header_is_refused_without_inflating_it(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip_then_zeros(idx_bytes(LABELS)))
    error, peak = peak_memory(lambda: read_idx(path))
    assert isinstance(error, DataFileError)
    assert str(error) == (f"{path}: unexpected trailing bytes after the (10,) array: the gzip "
                          f"stream holds more than the 18 bytes its header declares")
    assert peak < BOUND, peak  # it took the 64 MiB the stream inflates to
    # one byte too many is refused the same way; the exact length is read
    path.write_bytes(gzip.compress(idx_bytes(LABELS) + b"\0"))
    with pytest.raises(DataFileError, match="unexpected trailing bytes after the "):
        read_idx(path)
    path.write_bytes(gzip.compress(idx_bytes(LABELS)))
    np.testing.assert_array_equal(read_idx(path), LABELS)


def test_the_header_is_checked_before_the_stream_is_inflated(tmp_path):
    """MNIST's item count is said from the header, without inflating the rest."""
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip_then_zeros(idx_bytes(LABELS)))
    error, peak = peak_memory(lambda: read_idx(path, spec=MNIST_FILES["test_labels"]))
    assert str(error) == f"{path}: wrong item count: header says 10, expected 10000"
    assert peak < BOUND, peak


def test_an_idx_folder_with_an_inflating_label_file_is_refused_in_bounded_memory(tmp_path):
    """``dataset_shape`` reads the images in pieces; the labels (and a damaged image file) are
    read by ``read_idx``: both within the bound."""
    folder = idx_folder(tmp_path)
    bomb = folder / "t10k-labels-idx1-ubyte.gz"
    (folder / "t10k-labels-idx1-ubyte").unlink()
    bomb.write_bytes(gzip_then_zeros(idx_bytes(LABELS)))
    for read in (dataset_shape, load_dataset):
        error, peak = peak_memory(lambda read=read: read(str(folder)))
        assert str(error) == (f"{bomb}: unexpected trailing bytes after the (10,) array: the "
                              f"gzip stream holds more than the 18 bytes its header declares")
        assert peak < BOUND, (read.__name__, peak)


def test_a_raw_file_larger_than_its_header_declares_is_refused_unread(tmp_path):
    """Its trailing bytes are counted from its size, not read (a sparse file here)."""
    path = tmp_path / "labels"
    with open(path, "wb") as handle:
        handle.write(idx_bytes(LABELS))
        handle.truncate(18 + ZEROS)
    error, peak = peak_memory(lambda: read_idx(path))
    assert str(error) == f"{path}: {ZEROS} unexpected trailing bytes after the (10,) array"
    assert peak < BOUND, peak


def test_gzip_streams_read_as_gzip_decompress_reads_them(tmp_path):
    """Members one after another and zero padding are read; an early end, a damaged stream and
    garbage after the last member keep their messages (``gzip.decompress``'s rules, which the
    bounded reader keeps: this test passes without it too)."""
    data = idx_bytes(np.arange(3000, dtype=np.uint8).reshape(30, 100) % 251)
    path = tmp_path / "f.gz"
    for raw in (gzip.compress(data), gzip.compress(data[:7]) + gzip.compress(data[7:]),
                gzip.compress(data) + b"\0" * 5, gzip.compress(data, compresslevel=0)):
        path.write_bytes(raw)
        assert read_idx(path).tobytes() == data[12:]
    whole = gzip.compress(data)
    path.write_bytes(whole[:-10])
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    assert str(info.value) == (f"{path}: truncated gzip stream ({len(whole) - 10} compressed "
                               f"bytes): Compressed file ended before the end-of-stream marker "
                               f"was reached")
    path.write_bytes(whole + b"junk")
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    assert str(info.value) == f"{path}: corrupted gzip stream: Not a gzipped file (b'ju')"
    flipped = bytearray(whole)
    flipped[-6] ^= 0xFF  # the CRC
    path.write_bytes(bytes(flipped))
    with pytest.raises(DataFileError, match="corrupted gzip stream: "):
        read_idx(path)


@pytest.fixture
def mirror(tmp_path):
    """A local mirror (the download tests' handler, mode ``good``) serving ``tmp_path/served``."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root = str(root)
    # a short poll: shutdown() waits for the next one (0.5 s by default)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/good/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_a_download_inflating_beyond_the_file_is_refused_without_inflating_it(mirror, tmp_path):
    """A reply whose header is MNIST's (10,000 labels) but whose stream inflates to 64 MiB more:
    refused from the 10,009 bytes read, not inflated (a reply under the size cap could inflate
    to ~48 GB)."""
    root, url = mirror
    labels = (np.arange(10000) % 10).astype(np.uint8)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip_then_zeros(idx_bytes(labels)))
    data = tmp_path / "data"
    data.mkdir()
    error, peak = peak_memory(lambda: download_mnist(data, [url], keys=["test_labels"],
                                                     progress=False))
    assert isinstance(error, DownloadError), error
    assert str(error).splitlines()[1] == (
        f"  {url}t10k-labels-idx1-ubyte.gz: unexpected trailing bytes after the (10000,) array: "
        f"the gzip stream holds more than the 10008 bytes its header declares")
    assert peak < BOUND, peak
    assert os.listdir(data / "mnist") == []


# ------------------------------------------------------------------ F2: exact sizes


def idx_folder(tmp_path):
    """A valid IDX data set folder (20 training and 10 test images of 28 x 28)."""
    folder = tmp_path / "idx"
    folder.mkdir()
    images = (np.arange(30 * 28 * 28) % 256).astype(np.uint8).reshape(30, 28, 28)
    labels = (np.arange(30) % 10).astype(np.uint8)
    for name, array in (("train-images-idx3-ubyte", images[:20]),
                        ("train-labels-idx1-ubyte", labels[:20]),
                        ("t10k-images-idx3-ubyte", images[20:]),
                        ("t10k-labels-idx1-ubyte", labels[20:])):
        (folder / name).write_bytes(idx_bytes(array))
    return folder


WRAP = (1 << 22, 1 << 22, 1 << 20)  # 2**64 items: 0 in 64-bit arithmetic


def test_sizes_beyond_64_bits_are_exact(tmp_path):
    path = tmp_path / "wrap"
    path.write_bytes(header_only(WRAP, b"\0" * 8))
    with pytest.raises(DataFileError) as info:
        read_idx(path)  # was "8 unexpected trailing bytes"
    assert str(info.value) == (f"{path}: truncated: 24 bytes, expected {16 + 2**64} for "
                               f"dimensions {WRAP}")
    dims = (1 << 22, 1 << 21, 1 << 20)
    with pytest.raises(DataFileError) as info:  # was 9223372036854775816 trailing bytes
        parse_idx(header_only(dims, b"\0" * 8), "x")
    assert str(info.value) == f"x: truncated: 24 bytes, expected {16 + 2**63} for dimensions {dims}"
    huge = (2**32 - 1,) * 3
    path.write_bytes(gzip.compress(header_only(huge, b"\0" * 100)))
    with pytest.raises(DataFileError) as info:  # was "expected 12884901903"
        read_idx(path)
    assert str(info.value) == (f"{path}: truncated: 116 bytes, expected {16 + (2**32 - 1)**3} "
                               f"for dimensions {huge}")


def test_an_idx_folder_with_a_header_of_2_64_items_is_truncated_naming_the_file(tmp_path):
    folder = idx_folder(tmp_path)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(header_only(WRAP))
    expected = (f"{path}: truncated: 16 bytes, expected {16 + 2**64} for dimensions "
                f"(4194304, 4194304, 1048576)")
    for read in (load_dataset, dataset_shape):  # was a bare ValueError from reshape
        with pytest.raises(DataFileError) as info:
            read(str(folder))
        assert str(info.value) == expected


def test_dimensions_numpy_cannot_hold_are_a_data_file_error(tmp_path):
    """No items, so the length matches, but more dimensions than NumPy takes or a size it
    cannot hold: reshape's ValueError was raised bare."""
    for dims, cause in (((0, 2**32 - 1, 2**32 - 1), "array is too big"),
                        ((0,) * 65, "maximum supported dimension")):
        with pytest.raises(DataFileError) as info:
            parse_idx(header_only(dims), "x")
        assert str(info.value).startswith(f"x: dimensions {dims} cannot be held by a NumPy "
                                          f"array: "), str(info.value)
        assert cause in str(info.value)


# ------------------------------------------------------------------ F3: .npz member sizes


def npy_header_only(shape, descr: str, data: bytes = b"\0" * 64) -> bytes:
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * (64 - (10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + data


def npz_with(path, key: str, member: bytes, compression=zipfile.ZIP_STORED):
    arrays = {"x_train": (np.arange(20 * 28 * 28) % 256).astype(np.uint8).reshape(20, 28, 28),
              "y_train": np.arange(20) % 10,
              "x_test": np.zeros((10, 28, 28), np.uint8), "y_test": np.arange(10) % 10}
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, array in arrays.items():
            if name == key:
                archive.writestr(f"{name}.npy", member)
            else:
                buffer = io.BytesIO()
                np.save(buffer, array)
                archive.writestr(f"{name}.npy", buffer.getvalue())
    return path


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED],
                         ids=["stored", "deflated"])
def test_an_npz_member_declaring_more_than_it_holds_is_refused_before_allocation(
        tmp_path, compression):
    for key, shape, descr, size, shown in (
            ("x_train", (10**12, 28, 28), "|u1", 784 * 10**12, "uint8"),
            ("y_train", (10**12,), "<i8", 8 * 10**12, "int64"),
            ("y_test", (2**40, 2**40), "<f8", 2**83, "float64")):
        path = npz_with(tmp_path / f"{key}.npz", key, npy_header_only(shape, descr), compression)
        expected = (f"{path}: {key}: its .npy header declares {size} bytes (shape {shape}, "
                    f"{shown}), more than the 64 bytes after the header in the archive's member "
                    f"{key}.npy")
        for read in (load_npz, load_dataset, dataset_shape):  # was a bare MemoryError
            with pytest.raises(DataFileError) as info:
                read(str(path))
            assert str(info.value) == expected, read.__name__


def test_an_npz_member_one_byte_short_is_refused_and_a_full_one_loads(tmp_path):
    data = np.arange(20) % 10
    buffer = io.BytesIO()
    np.save(buffer, data)
    path = npz_with(tmp_path / "short.npz", "y_train", buffer.getvalue()[:-1])
    with pytest.raises(DataFileError) as info:
        load_npz(path)
    assert str(info.value) == (f"{path}: y_train: its .npy header declares 160 bytes (shape "
                               f"(20,), int64), more than the 159 bytes after the header in the "
                               f"archive's member y_train.npy")
    path = npz_with(tmp_path / "full.npz", "y_train", buffer.getvalue(), zipfile.ZIP_DEFLATED)
    dataset = load_npz(path)
    assert dataset.train_labels.tolist() == data.tolist() and dataset.classes == 10
    assert dataset_shape(str(path)).train == 20


# ------------------------------------------------------------------ F4, F5: the MNIST folder


def test_load_mnist_removes_a_killed_downloads_part_with_all_files_present(tmp_path):
    source = data_dir_or_skip() / "mnist"
    folder = tmp_path / "mnist"
    folder.mkdir()
    for spec in MNIST_FILES.values():
        shutil.copyfile(source / f"{spec.name}.gz", folder / f"{spec.name}.gz")
    stale = folder / ".train-images-idx3-ubyte.gz.abcd1234.part"
    stale.write_bytes(b"half a file")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    live = folder / ".t10k-labels-idx1-ubyte.gz.efgh5678.part"  # another process's, just begun
    live.write_bytes(b"under way")
    load_mnist(tmp_path, download=False)
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("kind", ["folder", "link to a folder", "fifo"])
def test_a_target_that_is_not_a_file_is_refused_before_any_mirror(tmp_path, refused, kind):
    folder = tmp_path / "mnist"
    folder.mkdir()
    target = folder / "t10k-labels-idx1-ubyte.gz"
    written = target
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        written = tmp_path / "elsewhere"
        written.mkdir()
        target.symlink_to(written)
    with pytest.raises(DownloadError) as info:
        download_mnist(tmp_path, [refused, refused], keys=["test_labels"], progress=False)
    what = "not a regular file" if kind == "fifo" else "a folder"
    assert str(info.value) == (f"cannot write t10k-labels-idx1-ubyte.gz into {written.parent}: "
                               f"{written} is {what}, where the download is to be put: remove "
                               f"or rename it")
