"""A download that cannot be written (a full disk, ``ulimit -f``, a read-only or over-quota data
folder) stops at once and says so: every mirror was tried, each downloading until the disk was
full, and the error began "could not download a verified ..." with the cause buried in a list."""

from __future__ import annotations

import errno

import pytest

from eqpdenet.data import mnist
from eqpdenet.errors import DownloadError


@pytest.mark.parametrize(("code", "cause"), [
    (errno.ENOSPC, "No space left on device"),
    (errno.EFBIG, r"File too large \(beyond this process's file size limit: ulimit -f\)"),
    (errno.EROFS, "Read-only file system"),
])
def test_a_write_that_cannot_succeed_stops_at_the_first_mirror(tmp_path, monkeypatch, code, cause):
    tried = []

    def fetch(url, target, spec, **kwargs):
        tried.append(url)
        raise OSError(code, {errno.ENOSPC: "No space left on device", errno.EFBIG: "File too large",
                             errno.EROFS: "Read-only file system"}[code])

    monkeypatch.setattr(mnist, "_fetch_verified", fetch)
    with pytest.raises(DownloadError, match=rf"cannot write train-labels-idx1-ubyte\.gz into "
                                            rf".*mnist: {cause}; no other mirror can help"):
        mnist.download_mnist(tmp_path, ["http://a.invalid/", "http://b.invalid/"],
                             keys=["train_labels"], progress=False)
    assert tried == ["http://a.invalid/train-labels-idx1-ubyte.gz"]


def test_a_network_failure_still_tries_the_next_mirror(tmp_path, monkeypatch):
    tried = []

    def fetch(url, target, spec, **kwargs):
        tried.append(url)
        raise OSError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(mnist, "_fetch_verified", fetch)
    with pytest.raises(DownloadError, match="could not download a verified"):
        mnist.download_mnist(tmp_path, ["http://a.invalid/", "http://b.invalid/"],
                             keys=["train_labels"], progress=False)
    assert len(tried) == 2
