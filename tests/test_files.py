"""eqpdenet.files: temporary files that become shared results get the umask's mode."""

from __future__ import annotations

import os

import pytest

from eqpdenet.files import temporary_beside


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_temporary_files_have_the_mode_open_would_give(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        fd, path = temporary_beside(tmp_path / "result.npz", ".part")
        os.close(fd)
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(previous)
    assert path.parent == tmp_path and path.name.startswith(".result.npz.")
    assert path.name.endswith(".part")
    assert path.stat().st_mode & 0o777 == mode == (tmp_path / "plain").stat().st_mode & 0o777
