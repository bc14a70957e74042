"""MNIST reader, data directory and download: fail loudly and clearly on wrong data."""

from __future__ import annotations

import gzip
import http.server
import io
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from data_helpers import data_dir_or_skip, mnist_or_skip
from eqpdenet.data.mnist import (
    MNIST_FILES,
    DataFileError,
    DownloadError,
    download_mnist,
    find_mnist_file,
    load_mnist,
    parse_idx,
    read_idx,
    resolve_cache_dir,
    resolve_data_dir,
)

LABELS = "train-labels-idx1-ubyte"


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file holding ``array`` (uint8)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def fake_labels(count=60000) -> np.ndarray:
    return (np.arange(count) % 10).astype(np.uint8)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def raises_naming(path, match):
    """Expect one DataFileError whose message names ``path`` and matches ``match``."""

    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(DataFileError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            result = self.ctx.__exit__(*exc)
            assert str(path) in str(self.info.value), str(self.info.value)
            return result

    return Check()


# ------------------------------------------------------------------ reader, without MNIST


def test_synthetic_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write(tmp_path, "custom-idx3-ubyte.gz", gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path), array)  # non-standard name: structure checks only


def test_truncated_raw_file(tmp_path):
    path = write(tmp_path, LABELS, idx_bytes(fake_labels())[:-100])
    with raises_naming(path, "truncated"):
        read_idx(path)


def test_truncated_header(tmp_path):
    path = write(tmp_path, LABELS, idx_bytes(fake_labels())[:6])
    with raises_naming(path, "truncated"):
        read_idx(path)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(fake_labels()))
    path = write(tmp_path, LABELS + ".gz", data[: len(data) // 2])
    with raises_naming(path, "truncated gzip"):
        read_idx(path)


def test_wrong_magic(tmp_path):
    data = bytearray(idx_bytes(fake_labels()))
    data[0] = 0x12
    path = write(tmp_path, LABELS, bytes(data))
    with raises_naming(path, "magic"):
        read_idx(path)
    images = np.zeros((60000, 28, 28), np.uint8)
    path = write(tmp_path, "train-images-idx3-ubyte", idx_bytes(images[:, :, 0]))  # idx2 for an idx3 file
    with raises_naming(path, "magic.*2 dimension"):
        read_idx(path, spec=MNIST_FILES["train_images"])


def test_wrong_count(tmp_path):
    path = write(tmp_path, LABELS, idx_bytes(fake_labels(59999)))
    with raises_naming(path, "item count.*59999.*60000"):
        read_idx(path, spec=MNIST_FILES["train_labels"])


def test_trailing_bytes(tmp_path):
    path = write(tmp_path, LABELS, idx_bytes(fake_labels()) + b"\x00")
    with raises_naming(path, "trailing"):
        read_idx(path)


def test_checksum_mismatch_of_well_formed_file(tmp_path):
    path = write(tmp_path, LABELS + ".gz", gzip.compress(idx_bytes(fake_labels())))
    with raises_naming(path, "MD5 mismatch"):
        read_idx(path, spec=MNIST_FILES["train_labels"])
    assert read_idx(path, spec=MNIST_FILES["train_labels"], verify=False).shape == (60000,)


def test_mnist_checksums_apply_to_mnist_only(tmp_path):
    """A file with MNIST's name but other content (Fashion-MNIST, KMNIST use the same names) is a
    valid IDX file: only reading it *as* MNIST checks MNIST's checksum."""
    labels = fake_labels()
    path = write(tmp_path, LABELS + ".gz", gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(path), labels)
    with raises_naming(path, "MD5 mismatch"):
        read_idx(path, spec=MNIST_FILES["train_labels"])


def test_error_is_a_value_error_and_picklable():
    import pickle

    error = pickle.loads(pickle.dumps(DataFileError("/x/f.gz", "truncated")))
    assert isinstance(error, ValueError) and str(error) == "/x/f.gz: truncated"
    assert error.problem == "truncated"


def test_missing_file(tmp_path):
    with raises_naming(tmp_path / LABELS, "not found"):
        read_idx(tmp_path / LABELS)
    with pytest.raises(DataFileError, match="missing MNIST file"):
        load_mnist(tmp_path, download=False)


def test_resolve_dirs_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("EQPDENET_CACHE", str(tmp_path / "cache-env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_cache_dir() == tmp_path / "cache-env"
    monkeypatch.delenv("EQPDENET_DATA")
    monkeypatch.delenv("EQPDENET_CACHE")
    assert resolve_data_dir() == tmp_path / "xdg" / "eqpdenet" / "data"
    assert resolve_cache_dir() == tmp_path / "xdg" / "eqpdenet"


# ------------------------------------------------------------------ the real files


def real_bytes(key: str) -> bytes:
    path = find_mnist_file(data_dir_or_skip(), key)
    assert path is not None, f"MNIST file {key} missing under $EQPDENET_DATA/mnist"
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def test_canonical_mnist_facts():
    mnist = mnist_or_skip()
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10000, 28, 28) and mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.dtype == np.int64 and mnist.train_labels.shape == (60000,)
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    pixels = mnist.train_images.astype(np.float64) / 255
    assert pixels.mean() == pytest.approx(0.1307, abs=5e-5)
    assert pixels.std() == pytest.approx(0.3081, abs=5e-5)
    assert set(np.unique(mnist.train_labels)) == set(range(10))
    # the first training digit, a 5: its ink lies in rows 5..24 (a 20-pixel-tall box)
    rows = np.nonzero(mnist.train_images[0].max(axis=1))[0]
    assert (rows.min(), rows.max()) == (5, 24)


def test_raw_uncompressed_names_are_accepted(tmp_path):
    raw = real_bytes("test_labels")
    (tmp_path / "mnist").mkdir()
    write(tmp_path / "mnist", MNIST_FILES["test_labels"].name, raw)
    path = find_mnist_file(tmp_path, "test_labels")
    assert path is not None and path.suffix != ".gz"
    assert read_idx(path)[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_bit_flip_in_real_file(tmp_path):
    data = bytearray(real_bytes("test_labels"))
    data[5000] ^= 0x01  # a label 0..9 stays a plausible label: only the checksum can tell
    path = write(tmp_path, MNIST_FILES["test_labels"].name, bytes(data))
    with raises_naming(path, "MD5 mismatch"):
        read_idx(path, spec=MNIST_FILES["test_labels"])
    gz = bytearray(gzip.compress(real_bytes("test_labels")))
    gz[len(gz) // 2] ^= 0xFF
    path = write(tmp_path, MNIST_FILES["test_labels"].name + ".gz", bytes(gz))
    with raises_naming(path, "corrupted gzip|MD5 mismatch|truncated"):
        read_idx(path, spec=MNIST_FILES["test_labels"])


# ------------------------------------------------------------------ download against a local server


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ``$EQPDENET_DATA/mnist`` under /good/, plus broken variants under other prefixes."""

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        mode, _, name = self.path.lstrip("/").partition("/")
        path = Path(self.server.root) / name
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        length = len(body)
        if mode == "corrupt":  # one byte changed, honest length
            body = bytearray(body)
            body[len(body) // 2] ^= 0x5A
            body = bytes(body)
        elif mode == "flipped":  # a valid gzip of a file with one bit changed: only the MD5 tells
            data = bytearray(gzip.decompress(body))
            data[-1] ^= 0x01
            body = gzip.compress(bytes(data))
            length = len(body)
        elif mode == "short":  # a complete HTTP response holding half the file
            body = body[: len(body) // 2]
            length = len(body)
        elif mode == "truncated":  # announces the full length, sends half, then hangs up
            body = body[: len(body) // 2]
        elif mode in ("endless", "trickle"):
            self.send_response(200)  # no Content-Length: the body ends when the server hangs up
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            try:
                while True:  # until the client stops reading (then the write fails)
                    self.wfile.write(b"\0" * (1 << 16) if mode == "endless" else body[:64])
                    self.wfile.flush()
                    if mode == "trickle":
                        time.sleep(0.05)
            except OSError:
                return
        elif mode != "good":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if mode == "truncated":
            self.close_connection = True


@pytest.fixture(scope="module")
def server():
    root = data_dir_or_skip() / "mnist"
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root = str(root)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def assert_nothing_left(folder: Path):
    left = sorted(os.listdir(folder)) if folder.exists() else []
    assert left == [], f"a failed download left {left}"


def test_download_success(server, tmp_path):
    folder = download_mnist(tmp_path, [f"{server}/good/"], progress=False)
    assert folder == tmp_path / "mnist"
    assert sorted(os.listdir(folder)) == sorted(spec.name + ".gz" for spec in MNIST_FILES.values())
    mnist = load_mnist(tmp_path, download=False)  # verifies every MD5 again
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert mnist.train_images.shape == (60000, 28, 28)


@pytest.mark.parametrize("mode", ["corrupt", "flipped", "short", "truncated", "missing"])
def test_download_failures_leave_nothing(server, tmp_path, mode):
    with pytest.raises(DownloadError, match=r"train-labels-idx1-ubyte\.gz") as info:
        download_mnist(tmp_path, [f"{server}/{mode}/"], keys=["train_labels"], progress=False)
    assert f"{server}/{mode}/" in str(info.value)
    assert_nothing_left(tmp_path / "mnist")


def test_download_stops_a_response_larger_than_the_file_or_slower_than_the_deadline(
        server, tmp_path):
    """A server streaming without end, or a few bytes now and then (each read within the socket
    timeout), is stopped: by the size no such file can exceed, and by the deadline of the
    whole file. Nothing is left behind."""
    with pytest.raises(DownloadError, match="can hold: not that file"):
        download_mnist(tmp_path, [f"{server}/endless/"], keys=["train_labels"], progress=False)
    assert_nothing_left(tmp_path / "mnist")
    with pytest.raises(DownloadError, match="deadline"):
        download_mnist(tmp_path, [f"{server}/trickle/"], keys=["train_labels"], progress=False,
                       deadline=0.3)
    assert_nothing_left(tmp_path / "mnist")


def test_download_files_follow_the_umask_and_stale_parts_are_removed(server, tmp_path):
    """A shared data folder stays readable by others (mkstemp alone makes files 0600), and a
    killed download's temporary file, untouched for longer than a download may take, goes."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    stale = folder / ".t10k-labels-idx1-ubyte.gz.abc12345.part"
    stale.write_bytes(b"half a file")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    live = folder / ".t10k-labels-idx1-ubyte.gz.def45678.part"  # another process's, just written
    live.write_bytes(b"under way")
    previous = os.umask(0o022)
    try:
        download_mnist(tmp_path, [f"{server}/good/"], keys=["test_labels"], progress=False,
                       deadline=600, timeout=60)
    finally:
        os.umask(previous)
    assert (folder / "t10k-labels-idx1-ubyte.gz").stat().st_mode & 0o777 == 0o644
    assert not stale.exists() and live.exists()


def test_download_falls_back_to_next_mirror(server, tmp_path):
    mirrors = [f"{server}/corrupt/", f"{server}/truncated/", f"{server}/good/"]
    download_mnist(tmp_path, mirrors, keys=["test_labels"], progress=False)
    assert os.listdir(tmp_path / "mnist") == ["t10k-labels-idx1-ubyte.gz"]
    assert read_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz")[:3].tolist() == [7, 2, 1]


def test_load_mnist_downloads_only_missing_files(server, tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    for key in ("train_images", "train_labels", "test_images"):
        src = find_mnist_file(data_dir_or_skip(), key)
        os.symlink(src, tmp_path / "mnist" / src.name)
    mnist = load_mnist(tmp_path, mirrors=[f"{server}/good/"])
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_parse_idx_never_returns_partial_arrays():
    data = idx_bytes(fake_labels(100))
    for cut in (0, 3, 7, 8, 50, len(data) - 1):
        with pytest.raises(DataFileError):
            parse_idx(data[:cut], "x", shape=(100,))


# ------------------------------------------------------------------ progress of a download


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_download_in_a_log_shows_plain_lines(server, tmp_path, capsys):
    """stderr not a terminal (a log): a line saying what is fetched from where, then a line at
    each tenth of the file (the 1.5 MiB test images: 10 lines), no carriage return or escape
    sequence; before, nothing at all was shown for minutes."""
    download_mnist(tmp_path, [f"{server}/good/"], keys=["test_images"])
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines[0] == (f"downloading {server}/good/t10k-images-idx3-ubyte.gz into "
                        f"{tmp_path / 'mnist'}")
    progress = lines[1:]
    assert len(progress) == 10, err
    assert all(line.startswith("t10k-images-idx3-ubyte.gz: ") for line in progress)
    # a line when a tenth is passed, by less than one read of 64 KiB (4 % of the file)
    percents = [int(line.split("(")[1].split("%")[0]) for line in progress]
    assert all(10 * n <= p < 10 * n + 5 for n, p in enumerate(percents, 1)), percents
    assert "1.5 MiB of 1.5 MiB (100%)" in progress[-1]


def test_a_failed_mirror_is_said_before_the_next_is_tried(server, tmp_path, capsys):
    download_mnist(tmp_path, [f"{server}/missing/", f"{server}/good/"], keys=["test_labels"])
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"downloading {server}/missing/t10k-labels-idx1-ubyte.gz into {tmp_path / 'mnist'}"
    assert lines[1].startswith(f"failed: {server}/missing/t10k-labels-idx1-ubyte.gz: HTTPError: "
                               f"HTTP Error 404") and lines[1].endswith("; trying the next mirror")
    assert lines[2] == f"downloading {server}/good/t10k-labels-idx1-ubyte.gz into {tmp_path / 'mnist'}"
    assert "(100%)" in lines[-1]


@pytest.mark.parametrize("terminal", [False, True])
def test_no_progress_reaches_the_download_of_load_mnist(server, tmp_path, monkeypatch, terminal):
    """load_mnist (and the data sets that call it) downloaded with progress=True whatever the
    caller said: --no-progress (download_progress(False)) still drew a bar on a terminal."""
    import eqpdenet.data.mnist as mnist

    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    (tmp_path / "mnist").mkdir()
    for key in ("train_images", "train_labels", "test_images"):
        src = find_mnist_file(data_dir_or_skip(), key)
        os.symlink(src, tmp_path / "mnist" / src.name)
    with mnist.download_progress(False):
        load_mnist(tmp_path, mirrors=[f"{server}/good/"])
    assert stream.getvalue() == ""
    os.unlink(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz")
    load_mnist(tmp_path, mirrors=[f"{server}/good/"])  # shown by default
    assert "downloading" in stream.getvalue()


def test_the_command_lines_no_progress_turns_download_progress_off(tmp_path, monkeypatch):
    import eqpdenet.data.mnist as mnist
    from eqpdenet.app import cli

    seen = []
    monkeypatch.setattr(cli, "_train", lambda args: seen.append(mnist._PROGRESS.get()) or 0)
    assert cli.main(["train", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert cli.main(["train", "--out", str(tmp_path / "b")]) == 0
    assert seen == [False, True]
    assert mnist._PROGRESS.get() is True  # restored after the command


@pytest.mark.parametrize("progress", [False, True])
def test_a_sweep_worker_loads_its_data_under_the_commands_progress(monkeypatch, progress):
    """A --jobs worker process starts with the default (progress shown): the sweep's setting
    must be applied around its data loading, where a download would happen."""
    import eqpdenet.data.mnist as mnist
    from eqpdenet.app import sweeps
    from eqpdenet.app.config import ExperimentConfig, to_dict

    seen = []
    monkeypatch.setattr(sweeps, "_cached_data",
                        lambda *args: seen.append(mnist._PROGRESS.get()) or "data")
    runner = lambda config, data, progress, checkpoint: {"data": data}  # noqa: E731
    assert sweeps._worker((runner, "k", to_dict(ExperimentConfig()), None, None, 1, None, {},
                           progress)) == {"data": "data"}
    assert seen == [progress]


def test_a_download_onto_a_dangling_link_keeps_the_link(server, tmp_path):
    """A data folder whose missing file is a link into a shared folder: the download goes where
    the link points (it used to replace the link by a regular file)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "mnist").mkdir()
    for key in ("train_images", "train_labels", "test_images"):
        src = find_mnist_file(data_dir_or_skip(), key)
        os.symlink(src, tmp_path / "mnist" / src.name)
    link = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    link.symlink_to(shared / "t10k-labels-idx1-ubyte.gz")
    load_mnist(tmp_path, mirrors=[f"{server}/good/"], progress=False)
    assert link.is_symlink() and (shared / "t10k-labels-idx1-ubyte.gz").is_file()
    assert not [p for p in tmp_path.rglob("*.part")]
