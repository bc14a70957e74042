"""Temporary files of killed writers (a worker of ``--jobs 2`` stopped while it wrote ROTMNIST's
196 MB cache) are removed; a live writer's never, however long it pauses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import eqpdenet.files as core_files
from eqpdenet.data import rotmnist as rm
from eqpdenet.files import remove_stale_beside, temporary_beside

#: A writer: creates a temporary file for argv[1] as the cache does, writes, says where, waits.
WRITER = """
import os, sys, time
from eqpdenet.files import temporary_beside
fd, path = temporary_beside(sys.argv[1], ".part")
os.write(fd, b"half a cache")
print(path, flush=True)
time.sleep(600)
"""


def _writer(target: Path) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE,
                               text=True)
    return process, Path(process.stdout.readline().strip())


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    process.stdout.close()


def _age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def _closed_temporary(target: Path, age: float) -> Path:
    """What a killed writer leaves: its file, and no lock on it."""
    fd, path = temporary_beside(target, ".part")
    os.close(fd)
    return _age(path, age)


def test_only_killed_writers_files_are_removed(tmp_path):
    target = tmp_path / "cache.npz"
    live, live_path = _writer(target)
    killed, killed_path = _writer(target)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        killed.stdout.close()
        _age(live_path, 7200)  # a writer stopped for two hours (Ctrl-Z): it still holds its lock
        _age(killed_path, 120)
        fresh = _closed_temporary(target, 0)  # an instant before its writer takes the lock
        other = _closed_temporary(tmp_path / "cache.npz.x.npz", 7200)  # another file's
        notes = tmp_path / ".cache.npz.notes"  # not a temporary file
        notes.write_text("mine")
        _age(notes, 7200)
        removed = remove_stale_beside(target, ".part", age=3600, grace=60)
        assert removed == [killed_path]
        assert live_path.exists() and fresh.exists() and other.exists() and notes.exists()
        # without grace, by age alone: the killed writer's file waits for the age
        second = _closed_temporary(target, 120)
        assert remove_stale_beside(target, ".part", age=3600) == []
        _age(second, 3601)
        assert remove_stale_beside(target, ".part", age=3600) == [second]
        assert live_path.exists()
    finally:
        _stop(live)


def test_where_the_lock_cannot_be_tested_the_age_decides(tmp_path, monkeypatch):
    target = tmp_path / "cache.npz"
    recent, old = _closed_temporary(target, 120), _closed_temporary(target, 3601)
    monkeypatch.setattr(core_files, "_held", lambda path: None)
    assert remove_stale_beside(target, ".part", age=3600, grace=60) == [old]
    assert recent.exists()


def _small_cache(cache_dir: Path) -> tuple[Path, dict]:
    params = rm.generation_params(0, 4, 4)
    images = torch.rand(4, 1, 28, 28)
    labels = torch.tensor([0, 1, 2, 3])
    data = rm.RotMNIST(images, labels, images, labels, source="generated", params=params)
    return rm.save_cache(rm.cache_path(cache_dir, params), data), params


def test_loading_rotmnist_removes_a_killed_writers_cache_file(tmp_path):
    """The probe: Ctrl-C while the workers of ``--jobs 2`` wrote the cache left
    ``.rotmnist-*.npz.*.part`` files that nothing removed; a cache that exists is never written
    again, so its load removes them."""
    path, params = _small_cache(tmp_path)
    live, live_path = _writer(path)
    killed, killed_path = _writer(path)
    try:
        killed.kill()
        killed.wait()
        killed.stdout.close()
        _age(killed_path, rm.PART_GRACE + 1)
        _age(live_path, rm.PART_AGE + 1)
        loaded = rm.load_rotmnist(cache_dir=tmp_path, seed=0, source="generated", n_train=4,
                                  n_test=4)
        assert loaded.params == params and torch.equal(loaded.train_labels, torch.arange(4))
        assert not killed_path.exists() and live_path.exists()
    finally:
        _stop(live)


def test_saving_the_cache_or_an_amat_file_removes_killed_writers_files(tmp_path):
    path, _ = _small_cache(tmp_path)
    left = _closed_temporary(path, rm.PART_GRACE + 1)
    _small_cache(tmp_path)
    assert not left.exists()
    amat = tmp_path / "digits.amat"
    left = _closed_temporary(amat, rm.PART_GRACE + 1)
    rm.write_amat(amat, np.zeros((2, 784)), np.array([0, 1]))
    assert not left.exists() and [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


@pytest.mark.parametrize("name", ["a[1].amat", "*.amat"])
def test_names_are_matched_literally(tmp_path, name):
    target = tmp_path / name
    mine = _closed_temporary(target, 7200)
    others = _closed_temporary(tmp_path / "b.amat", 7200)
    assert remove_stale_beside(target, ".part", age=3600) == [mine]
    assert others.exists()
