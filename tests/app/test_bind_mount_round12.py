"""A result file that is a mount point (bind-mounted into a container) is written in place
(probe round 12's list of what was left: ``evaluate --json`` onto such a file failed at the
rename of its temporary file, EBUSY)."""

import errno
import os
import shutil
import subprocess

import pytest

from eqpdenet.app import files


def _temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(files.TEMPORARY_SUFFIX)]


def test_a_target_no_rename_can_replace_is_written_in_place(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old contents, longer than the new ones\n")
    real_replace = os.replace

    def busy(source, destination):
        if os.fspath(destination) == os.fspath(target):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), os.fspath(source))
        return real_replace(source, destination)

    monkeypatch.setattr(files.os, "replace", busy)
    inode = target.stat().st_ino
    files.atomic_write(target, b'{"test": 97.5}\n')
    assert target.read_bytes() == b'{"test": 97.5}\n'
    assert target.stat().st_ino == inode  # the same file, written through
    assert _temporaries(tmp_path) == []


def test_another_rename_failure_is_still_an_error_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"

    def cross_device(source, destination):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fspath(source))

    monkeypatch.setattr(files.os, "replace", cross_device)
    with pytest.raises(OSError) as error:
        files.atomic_write(target, b"{}\n")
    assert error.value.errno == errno.EXDEV and error.value.filename == str(target)
    assert not target.exists() and _temporaries(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"),
                    reason="a bind mount needs root and mount(8)")
def test_a_real_bind_mounted_file(tmp_path):
    source, mounted = tmp_path / "outside.json", tmp_path / "inside.json"
    source.write_text("{}\n")
    mounted.write_text("")
    if subprocess.run(["mount", "--bind", str(source), str(mounted)],
                      capture_output=True).returncode != 0:
        pytest.skip("this machine refuses bind mounts")
    try:
        files.atomic_write(mounted, b'{"iso": 96.1}\n')
        assert source.read_bytes() == b'{"iso": 96.1}\n'  # reached the file outside
        assert _temporaries(tmp_path) == []
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
