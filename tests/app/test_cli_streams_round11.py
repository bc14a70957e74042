"""Round 11: a stderr on a full disk (``2> log`` where the disk is full: ``/dev/full`` answers
every write with ``ENOSPC``) stopped the work at its first progress line with exit status 2.
Diagnostics that cannot be kept are now dropped and the work goes on; a stdout on a full disk,
which is the work's result, still fails the command, never a truncated result with status 0.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_helpers import write_npz
from eqpdenet.app.workers import SurvivingStream

ROOT = Path(__file__).resolve().parents[2]
FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")


def run(argv: list[str], folder: Path, *, stdout, stderr) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    env.pop("EQPDENET_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "eqpdenet", *argv], stdout=stdout,
                          stderr=stderr, cwd=folder, env=env, timeout=300).returncode


@needs_dev_full
def test_a_stderr_on_a_full_disk_does_not_stop_the_work(tmp_path):
    write_npz(tmp_path / "d.npz", train=60, test=20, size=12, classes=3)
    argv = ["train", "--dataset", str(tmp_path / "d.npz"), "--hidden", "4", "--epochs", "2",
            "--out", str(tmp_path / "run"), "--set", "model.image_size=12"]
    with open(FULL, "w") as full, open(tmp_path / "out.txt", "w") as out:
        status = run(argv, tmp_path, stdout=out, stderr=full)
    assert status == 0
    assert (tmp_path / "run" / "model.pt").is_file()
    assert (tmp_path / "run" / "result.json").is_file()
    printed = (tmp_path / "out.txt").read_text().splitlines()
    assert len(printed) == 1 and printed[0].endswith(f"-> {tmp_path / 'run' / 'model.pt'}")


@needs_dev_full
def test_a_stdout_on_a_full_disk_fails_the_command_and_says_so(tmp_path):
    with open(FULL, "w") as full, open(tmp_path / "err.txt", "w") as err:
        status = run(["info"], tmp_path, stdout=full, stderr=err)
    said = (tmp_path / "err.txt").read_text()
    assert status == 2
    assert said.startswith("eqpdenet: error: cannot write the standard output: No space left "
                           "on device"), said


class _Full(io.StringIO):
    """A text stream whose every write fails as a full disk's, or with another error."""

    def __init__(self, error: OSError):
        super().__init__()
        self.error = error

    def write(self, text):
        raise self.error


@pytest.mark.parametrize("number", ["ENOSPC", "EDQUOT", "EFBIG"])
def test_diagnostics_drop_what_a_storage_limit_refuses_and_say_so(number):
    import errno

    stream = SurvivingStream(_Full(OSError(getattr(errno, number), "limit")), diagnostics=True)
    assert stream.write("progress\n") == len("progress\n")
    assert stream.full and stream.broken
    assert stream.write("more\n") == len("more\n")  # now on os.devnull


def test_results_and_other_errors_still_fail():
    import errno

    result = SurvivingStream(_Full(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match="cannot write the standard output: No space left"):
        result.write("42\n")
    assert not result.full
    other = SurvivingStream(_Full(OSError(errno.EIO, "Input/output error")), diagnostics=True)
    with pytest.raises(OSError, match="Input/output"):
        other.write("progress\n")
    assert not other.full
