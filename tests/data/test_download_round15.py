"""download_mnist, round 15 (outside probe s4): its deadline covers the whole request (a server
that trickled its headers held a download 20-41 s past deadline=2, then "truncated: 0 bytes"); a
data folder that cannot be written is one error before any mirror (each mirror "failed" with the
same PermissionError, and a read-only file system was told to "make room"); a killed download's
``.part`` goes even once the file is present; bad arguments are refused, naming the argument."""

from __future__ import annotations

import errno
import os
import pathlib
import re
import socket
import threading
import time

import pytest

from eqpdenet.data import mnist
from eqpdenet.errors import ConfigError, DownloadError
from eqpdenet.files import temporary_beside

LABELS = "t10k-labels-idx1-ubyte.gz"
#: A mirror nothing listens on (refused at once): reached only where a check is missing.
NOWHERE = "http://127.0.0.1:1/"
ELSEWHERE = "point EQPDENET_DATA / --data-dir at another folder"


@pytest.fixture
def serve():
    """``serve(answer)``: a one-connection HTTP server on 127.0.0.1 whose ``answer(connection)``
    writes the response by hand; returns its base URL."""
    listeners, threads = [], []

    def start(answer):
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def run():
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)  # the request
                try:
                    answer(connection)
                except OSError:  # the client hung up
                    pass

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return f"http://127.0.0.1:{listener.getsockname()[1]}/"

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(timeout=5)


# ------------------------------------------------------------------ F1: the deadline


def test_the_deadline_covers_a_server_that_trickles_its_headers(serve, tmp_path):
    """A header byte every 20 ms, each well within the socket timeout, for 2 s: stopped at the
    deadline (0.3 s) and said as the deadline, not read to the end as an empty file."""

    def trickle(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            connection.sendall(b"a")
            time.sleep(0.02)

    url = serve(trickle)
    with pytest.raises(DownloadError) as info:
        mnist.download_mnist(tmp_path, [url], keys=["test_labels"], progress=False, timeout=5,
                             deadline=0.3)
    # said as the deadline: read to its end (2 s), the headers were "truncated: 0 bytes"
    assert str(info.value).splitlines()[1] == (
        f"  {url}{LABELS}: no complete response (status line and headers) in 0.3 s, the "
        "deadline of one file (download_mnist's deadline)")
    assert os.listdir(tmp_path / "mnist") == []


def test_the_deadline_hangs_up_on_a_body_that_pauses_within_the_timeout(serve, tmp_path):
    """The body's next bytes 2 s away (within timeout=5): the client hangs up at its deadline
    (0.3 s), as the server sees, instead of waiting for them."""
    seen = {}

    def pause(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"\0" * 100)
        connection.settimeout(2.0)
        try:
            seen["read"] = connection.recv(1)  # b"": the client hung up
        except TimeoutError:
            seen["read"] = "still connected after 2 s"
            connection.sendall(b"\0" * 100)

    url = serve(pause)
    with pytest.raises(DownloadError) as info:
        mnist.download_mnist(tmp_path, [url], keys=["test_labels"], progress=False, timeout=5,
                             deadline=0.3)
    # how many of the 100 bytes arrived before the deadline depends on the machine's load
    assert re.fullmatch(rf"  {re.escape(url + LABELS)}: \d+ bytes in 0\.3 s, the deadline "
                        rf"of one file \(download_mnist's deadline\)",
                        str(info.value).splitlines()[1])
    for _ in range(300):  # the server's thread records what it saw
        if "read" in seen:
            break
        time.sleep(0.01)
    assert seen["read"] == b""


# ------------------------------------------------------------------ F2: an unwritable folder


@pytest.mark.parametrize(("code", "words", "advice"), [
    (errno.EACCES, "Permission denied", "make {folder} writable for this user, or " + ELSEWHERE),
    (errno.EPERM, "Operation not permitted",
     "make {folder} writable for this user, or " + ELSEWHERE),
    (errno.EROFS, "Read-only file system",
     f"the file system is read-only: {ELSEWHERE}, on a writable one"),
    (errno.ENOSPC, "No space left on device", f"make room there, or {ELSEWHERE}"),
])
def test_an_unwritable_folder_is_one_error_before_any_mirror(tmp_path, monkeypatch, code, words,
                                                             advice):
    tried = []

    def cannot(path, suffix):
        raise OSError(code, words, str(path) + ".x" + suffix)

    monkeypatch.setattr(mnist, "temporary_beside", cannot)
    monkeypatch.setattr(mnist, "_fetch_verified", lambda url, *a, **k: tried.append(url))
    folder = tmp_path / "mnist"
    with pytest.raises(DownloadError) as info:
        mnist.download_mnist(tmp_path, ["http://a.invalid/", "http://b.invalid/"],
                             keys=["test_labels"], progress=False)
    assert str(info.value) == (f"cannot write {LABELS} into {folder}: {words}; "
                               + advice.format(folder=folder))
    assert tried == []


def test_a_read_only_file_system_met_while_writing_is_not_told_to_make_room(tmp_path,
                                                                          monkeypatch):
    def fetch(url, target, spec, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(mnist, "_fetch_verified", fetch)
    with pytest.raises(DownloadError) as info:
        mnist.download_mnist(tmp_path, ["http://a.invalid/"], keys=["test_labels"],
                             progress=False)
    assert str(info.value) == (
        f"cannot write {LABELS} into {tmp_path / 'mnist'}: Read-only file system; no other "
        f"mirror can help: the file system is read-only: {ELSEWHERE}, on a writable one")


def test_an_mnist_folder_that_cannot_be_made_is_a_download_error(tmp_path, monkeypatch):
    make = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "mnist":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return make(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    with pytest.raises(DownloadError) as info:
        mnist.download_mnist(tmp_path, [NOWHERE], keys=["test_labels"], progress=False)
    assert str(info.value) == (f"cannot create {tmp_path / 'mnist'}: Permission denied; make "
                               f"{tmp_path} writable for this user, or {ELSEWHERE}")


# ------------------------------------------------------------------ F3: a killed download's file


def _aged(path: pathlib.Path, seconds: float, data: bytes = b"half a file") -> pathlib.Path:
    path.write_bytes(data)
    os.utime(path, (time.time() - seconds, time.time() - seconds))
    return path


def test_a_killed_downloads_part_goes_though_the_file_is_present(tmp_path):
    """Lock free and untouched for a minute (more than STALE_GRACE, less than deadline +
    timeout): a killed download's, removed though no download is needed; a live writer's file
    (its lock held), however old, and one just written are kept."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / LABELS).write_bytes(b"present")  # not read: a present file is not downloaded
    killed = _aged(folder / f".{LABELS}.abc12345.part", 60)
    fresh = _aged(folder / f".{LABELS}.def45678.part", 0)
    fd, live = temporary_beside(folder / LABELS, ".part")  # its writer holds the lock
    try:
        _aged(live, 7200)  # a writer stopped for two hours (Ctrl-Z)
        mnist.download_mnist(tmp_path, [NOWHERE], keys=["test_labels"], progress=False)
    finally:
        os.close(fd)
    assert sorted(os.listdir(folder)) == sorted([LABELS, fresh.name, live.name])
    assert killed.name not in os.listdir(folder)


def test_a_killed_downloads_part_goes_beside_the_file_a_link_leads_to(tmp_path):
    """A download onto a link writes beside the link's target: its killed file is there."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / LABELS).write_bytes(b"present")
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / LABELS).symlink_to(shared / LABELS)
    killed = _aged(shared / f".{LABELS}.abc12345.part", 60)
    mnist.download_mnist(tmp_path, [NOWHERE], keys=["test_labels"], progress=False)
    assert not killed.exists()
    assert sorted(os.listdir(shared)) == [LABELS]


# ------------------------------------------------------------------ F4: the arguments


@pytest.mark.parametrize(("arguments", "message"), [
    ({"mirrors": "http://127.0.0.1:1/"},
     "mirrors must be a list of base URLs (e.g. ['https://example.org/mnist/']), not the str "
     "'http://127.0.0.1:1/'"),
    ({"keys": "test_labels"},
     "keys must be a list of MNIST_FILES keys (e.g. ['test_labels']), not the str 'test_labels'"),
    ({"keys": ["test_label"]},
     "keys: unknown MNIST file 'test_label'; the keys are 'train_images', 'train_labels', "
     "'test_images', 'test_labels'"),
    ({"keys": [["test_labels"]]},
     "keys: unknown MNIST file ['test_labels']; the keys are 'train_images', 'train_labels', "
     "'test_images', 'test_labels'"),
    ({"keys": 3}, "keys must be a list, got int 3"),
    ({"mirrors": []}, "mirrors: no mirrors given"),
    ({"mirrors": [NOWHERE, None]}, "mirrors[1] must be a base URL (a non-empty str), got None"),
    ({"mirrors": [""]}, "mirrors[0] must be a base URL (a non-empty str), got ''"),
    ({"timeout": 0}, "timeout must be a finite number of seconds > 0, got 0"),
    ({"timeout": -1}, "timeout must be a finite number of seconds > 0, got -1"),
    ({"timeout": float("inf")}, "timeout must be a finite number of seconds > 0, got inf"),
    ({"timeout": "5"}, "timeout must be a finite number of seconds > 0, got '5'"),
    ({"timeout": True}, "timeout must be a finite number of seconds > 0, got True"),
    ({"deadline": -5}, "deadline must be a finite number of seconds > 0, got -5"),
    ({"deadline": float("nan")}, "deadline must be a finite number of seconds > 0, got nan"),
])
def test_bad_arguments_are_refused_naming_the_argument(tmp_path, arguments, message):
    arguments = {"mirrors": [NOWHERE], "keys": ["test_labels"], **arguments}
    with pytest.raises(ConfigError, match=f"^{re.escape('download_mnist: ' + message)}$"):
        mnist.download_mnist(tmp_path / "data", progress=False, **arguments)
    assert not (tmp_path / "data").exists()  # refused before anything is made


def test_no_keys_download_nothing(tmp_path):
    folder = mnist.download_mnist(tmp_path, [NOWHERE], keys=[], progress=False)
    assert folder == tmp_path / "mnist" and os.listdir(folder) == []
