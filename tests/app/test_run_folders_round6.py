"""Run folders that cannot be swapped, locks of replaced files, set-aside runs across file
systems, interrupts while staging (sixth probe round, p1: F1-F6).

Every interleaving is forced by monkeypatching, never by timing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from eqpdenet.app import locks, runfolder
from eqpdenet.app.locks import LOCK_NAME, FolderLock, check_free, hold, same_file
from eqpdenet.app.runfolder import (
    MARKER,
    RUN_FILES,
    check_claim,
    check_replaceable,
    check_stageable,
    claiming,
    mount_point,
    staged,
    write_marker,
    writing_beside_runs,
)
from eqpdenet.app.runstore import load_records, run_file, save_run, set_aside, write_aggregate
from eqpdenet.errors import FolderLockedError, OutputFolderError

# --- F1: an --out that is a mount point trained to the end, then lost the run at the swap ---------


@pytest.mark.skipif(not os.path.ismount("/proc"), reason="needs /proc mounted (Linux)")
def test_a_mount_point_is_refused_before_any_work_and_through_a_link(tmp_path):
    assert mount_point(Path("/proc"))
    with pytest.raises(OutputFolderError, match=r"--out /proc is a mount point .*give a folder "
                                                r"inside it \(e\.g\. /proc/run\)"):
        check_stageable(Path("/proc"))
    link = tmp_path / "out"
    link.symlink_to("/proc")
    with pytest.raises(OutputFolderError, match=r"--out /proc is a mount point"):
        check_stageable(link)  # the link is followed: the folder it leads to is judged


def test_a_bind_mount_on_the_same_file_system_is_a_mount_point_too(tmp_path, monkeypatch):
    """st_dev alone misses a folder of the same file system mounted there (a bind mount): it is
    found in /proc/self/mountinfo."""
    out = tmp_path / "out"
    out.mkdir()
    assert not mount_point(out)
    check_replaceable(out)
    monkeypatch.setattr(runfolder, "_mount_points", lambda: {str(out)})
    with pytest.raises(OutputFolderError, match=r"is a mount point \(a file system of its own"):
        check_replaceable(out)


def test_mountinfo_escapes_are_read(tmp_path, monkeypatch):
    text = "36 35 98:0 / /mnt/with\\040space rw - ext3 /dev/x rw\n"
    info = tmp_path / "mountinfo"
    info.write_text(text)
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(info if path == "/proc/self/mountinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert runfolder._mount_points() == {"/mnt/with space"}


def test_a_link_to_a_plain_folder_still_stages(tmp_path):
    real = tmp_path / "elsewhere" / "run"
    real.mkdir(parents=True)
    link = tmp_path / "out"
    link.symlink_to(real)
    with hold(link, "train"):
        check_replaceable(link)
        with staged(link) as stage:
            (stage / "model.pt").write_text("new")
    assert link.is_symlink() and (real / "model.pt").read_text() == "new"


@pytest.mark.parametrize("code, words", [(errno.EBUSY, "is a mount point (or in use as one)"),
                                         (errno.EXDEV, "is on another file system than")])
def test_a_swap_that_fails_names_the_cause_and_what_to_do(tmp_path, monkeypatch, code, words):
    out = tmp_path / "run"

    def refused(a, b):
        raise OSError(code, os.strerror(code), str(a))

    monkeypatch.setattr(locks, "_exchange", refused)
    with pytest.raises(OutputFolderError) as caught, hold(out, "train"):
        with staged(out) as stage:
            (stage / "model.pt").write_text("new")
    message = str(caught.value)
    assert f"cannot replace {out} by the new run: {os.strerror(code)}: {out} {words}" in message
    assert f"give a folder inside it (e.g. {out / 'run'})" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging folder; out removed


def test_the_two_renames_put_the_old_folder_back_when_the_second_fails(tmp_path, monkeypatch):
    """Without an atomic exchange the swap is three renames: a failure of the second left the
    old run at a hidden name and no folder at all."""
    out = tmp_path / "run"
    out.mkdir()
    write_marker(out, "train")
    (out / "model.pt").write_text("old")
    monkeypatch.setattr(locks, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(dst) == out and ".staging-" in Path(src).name:  # the new run into its place
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with hold(out, "train"), pytest.raises(OutputFolderError, match="cannot replace"):
        with staged(out) as stage:
            (stage / "model.pt").write_text("new")
    monkeypatch.undo()
    assert (out / "model.pt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# --- F2, F6: describe --out took no lock and checked its folder late -------------------------------


def another_writer(folder: Path, command: str = "train") -> FolderLock:
    """The lock of ``folder`` held as another process holds it (its own descriptor, outside this
    process's re-entrant bookkeeping)."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(folder)
    lock.acquire(command)
    return lock


def test_a_folder_a_first_train_is_writing_is_refused_by_check_claim(tmp_path):
    """It holds only the train's lock and looked empty: describe wrote its image there, which
    the train's swap then deleted (exit 0)."""
    out = tmp_path / "Y"
    lock = another_writer(out)
    try:
        with pytest.raises(FolderLockedError, match=r"Y is being written by another eqpdenet "
                                                    r"process \(pid \d+ .*\(train\)"):
            check_claim(out, "describe")
        with pytest.raises(FolderLockedError):
            check_free(out)
    finally:
        lock.release()
    assert check_claim(out, "describe")


def test_check_claim_passes_a_folder_this_process_holds(tmp_path):
    """A sweep checks its folder again with the lock held (re-entrant)."""
    out = tmp_path / "S"
    with hold(out, "reproduce"):
        assert check_claim(out, "reproduce")


def test_claiming_keeps_a_train_out_while_the_results_are_written(tmp_path):
    out = tmp_path / "d" / "Y"
    with claiming(out, "describe") as folder:
        assert folder == out
        with pytest.raises(FolderLockedError, match=r"\(describe\)"):
            FolderLock(out).acquire("train")
        (out / "evolution.png").write_text("image")
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, MARKER, "evolution.png"])
    assert json.loads((out / MARKER).read_text())["kind"] == "describe"
    # a train after it: the folder is describe's, not a run's
    with pytest.raises(OutputFolderError, match=r"`eqpdenet describe`, not of one run"):
        check_replaceable(out)


def test_claiming_a_new_folder_that_fails_leaves_nothing(tmp_path):
    """Inside the lock the folder holds its marker and lock: removing it only when it held the
    marker alone (as cli._equivariance does) never removed it."""
    with pytest.raises(KeyboardInterrupt), claiming(tmp_path / "a" / "b", "describe"):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "kept"
    existing.mkdir()
    with pytest.raises(RuntimeError), claiming(existing, "describe"):
        raise RuntimeError("boom")
    assert existing.is_dir()  # not made by the call: stays (marked, as claimed)


def test_check_claim_tests_that_the_folder_can_be_created_and_written(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputFolderError, match=r"cannot create the folder .*afile/desc: .*afile "
                                                r"is a file, not a folder"):
        check_claim(afile / "desc", "describe")
    with pytest.raises(OutputFolderError, match=r"afile is a file, not a folder"):
        check_claim(afile, "describe")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputFolderError, match=r"cannot create the folder .*desc: read-only "
                                                r"file system"):
        check_claim(tmp_path / "ro" / "desc", "describe")
    (tmp_path / "there").mkdir()
    with pytest.raises(OutputFolderError, match=r"cannot write in the folder .*there: read-only "
                                                r"file system"):
        check_claim(tmp_path / "there", "describe")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "there"]  # no probe left
    assert check_claim(tmp_path / "there", "describe")
    assert list((tmp_path / "there").iterdir()) == []


def eqpdenet_checkpoint(folder: Path) -> Path:
    """An EqPdeNet checkpoint (built, not trained) of a small data file of 16x16 images."""
    import numpy as np
    import torch

    from eqpdenet.app import training
    from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model

    data = folder / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.integers(0, 256, (40, 16, 16), dtype=np.uint8),
             y_train=np.arange(40) % 4, x_test=rng.integers(0, 256, (12, 16, 16), dtype=np.uint8),
             y_test=np.arange(12) % 4)
    config = apply_overrides(ExperimentConfig(), ["model.kind='eqpdenet'", "model.hidden=4",
                                                  f"data.dataset='{data}'", "model.image_size=16",
                                                  "model.classes=4"])
    torch.manual_seed(0)
    training.save_checkpoint(folder / "eqpdenet.pt", build_model(config.model), config)
    return folder / "eqpdenet.pt"


def test_describe_refuses_before_it_prints_a_folder_a_train_is_writing_or_cannot_create(
        tmp_path, capsys, monkeypatch):
    """describe printed the whole description and computed the evolutions, then wrote into a
    first train's folder (deleted by its swap, exit 0), or failed on a read-only file system."""
    from eqpdenet.app.cli import main

    checkpoint = eqpdenet_checkpoint(tmp_path)
    out = tmp_path / "Y"
    lock = another_writer(out)
    try:
        assert main(["describe", str(checkpoint), "--out", str(out), "--samples", "0"]) == 2
    finally:
        lock.release()
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before the description
    assert "Y is being written by another eqpdenet process" in captured.err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    (tmp_path / "afile").write_text("x")
    assert main(["describe", str(checkpoint), "--out", str(tmp_path / "afile" / "d"),
                 "--samples", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "afile is a file, not a folder" in captured.err


# --- F3: --rerun-changed with checkpoints/ on another file system failed half-way -----------------


def sweep_with_checkpoints(folder: Path, keys, checkpoints: Path) -> None:
    for key in keys:
        save_run(folder, key, {"key": key, "status": "ok", "accuracy": {"test": 90.0}})
        (checkpoints / f"{key}.pt").write_bytes(key.encode() * 100)
    write_aggregate(folder)


@pytest.fixture
def other_file_system(tmp_path):
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the tests' temporary folder")
    folder = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="eqpdenet-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_set_aside_copies_checkpoints_from_another_file_system(tmp_path, other_file_system):
    out = tmp_path / "sweep"
    (out / "runs").mkdir(parents=True)
    (out / "checkpoints").symlink_to(other_file_system)
    sweep_with_checkpoints(out, ["a", "b", "c"], other_file_system)
    aside = set_aside(out, ["a", "b"], "stamp")
    assert sorted(p.name for p in aside.iterdir()) == ["a.json", "a.pt", "b.json", "b.pt",
                                                       "results.jsonl"]
    assert (aside / "a.pt").read_bytes() == b"a" * 100
    assert sorted(p.name for p in other_file_system.iterdir()) == ["c.pt"]
    assert sorted(load_records(out)) == ["c"]
    assert [json.loads(line)["key"] for line in (aside / "results.jsonl").read_text().splitlines()] \
        == ["a", "b"]


def test_set_aside_that_cannot_copy_moves_nothing(tmp_path, other_file_system, monkeypatch):
    out = tmp_path / "sweep"
    (out / "runs").mkdir(parents=True)
    (out / "checkpoints").symlink_to(other_file_system)
    sweep_with_checkpoints(out, ["a", "b"], other_file_system)
    before = (out / "results.jsonl").read_bytes()
    calls = []

    def full(source, target, *args, **kwargs):
        calls.append(source)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return shutil.copyfile(source, target)

    monkeypatch.setattr(shutil, "copy2", full)
    with pytest.raises(OutputFolderError, match=r"cannot set aside .*b\.pt in .*superseded/stamp "
                                                r"\(another file system\): no space left on the "
                                                r"device; nothing was moved"):
        set_aside(out, ["a", "b"], "stamp")
    assert (out / "results.jsonl").read_bytes() == before
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["a.json", "b.json"]
    assert sorted(p.name for p in other_file_system.iterdir()) == ["a.pt", "b.pt"]
    assert list((out / "superseded" / "stamp").iterdir()) == []  # the first copy removed


def test_set_aside_twice_in_one_stamp_keeps_every_record_and_file(tmp_path):
    out = tmp_path / "sweep"
    (out / "checkpoints").mkdir(parents=True)
    sweep_with_checkpoints(out, ["a", "b"], out / "checkpoints")
    set_aside(out, ["a"], "stamp")
    save_run(out, "a", {"key": "a", "status": "ok", "accuracy": {"test": 91.0}})
    write_aggregate(out)
    aside = set_aside(out, ["a", "b"], "stamp")
    assert sorted(p.name for p in aside.iterdir()) == ["a.2.json", "a.json", "a.pt", "b.json",
                                                       "b.pt", "results.jsonl"]
    lines = [json.loads(line) for line in (aside / "results.jsonl").read_text().splitlines()]
    assert [(r["key"], r["accuracy"]["test"]) for r in lines] == [("a", 90.0), ("a", 91.0),
                                                                  ("b", 90.0)]
    assert json.loads((aside / "a.2.json").read_text())["accuracy"]["test"] == 91.0
    assert not run_file(out, "a").exists() and load_records(out) == {}


# --- F4: a lock taken on a file that a train's swap had replaced -----------------------------------


class SwapOnFirstFlock:
    """``fcntl`` as :mod:`eqpdenet.app.locks` uses it, but the first ``flock`` of a descriptor
    of ``path`` first runs ``swap``: the moment between a process's ``open`` of the lock file
    and its ``flock`` that a ``train`` swapping its run in may take."""

    def __init__(self, real, path: Path, swap):
        self.real, self.path, self.swap, self.done = real, path, swap, False

    def __getattr__(self, name):
        return getattr(self.real, name)

    def flock(self, fd, operation):
        if not self.done and same_file(fd, self.path):
            self.done = True
            self.swap()
        return self.real.flock(fd, operation)


def test_a_lock_taken_after_a_train_swapped_its_run_in_is_taken_again(tmp_path, monkeypatch):
    """Process B opened X/.eqpdenet.lock, then A swapped its run in (the lock file with it) and
    released the old file: B locked the deleted file and held X beside A."""
    out = tmp_path / "X"
    out.mkdir()
    stack = contextlib.ExitStack()

    def train_swaps_its_run_in():  # A: holds X and swaps, and keeps holding it
        stack.enter_context(hold(out, "train"))
        with staged(out) as stage:
            (stage / "model.pt").write_text("A's")

    monkeypatch.setattr(locks, "fcntl", SwapOnFirstFlock(locks.fcntl, out / LOCK_NAME,
                                                         train_swaps_its_run_in))
    with stack:
        with pytest.raises(FolderLockedError, match=r"\(train\)"):
            FolderLock(out).acquire("train")  # B
        assert (out / "model.pt").read_text() == "A's"


def test_a_shared_lock_of_a_replaced_file_is_taken_again(tmp_path, monkeypatch):
    """writing_beside_runs took its shared lock on the replaced file and let the write go on
    inside a folder a train held."""
    run = tmp_path / "R"
    run.mkdir()
    (run / LOCK_NAME).touch()
    held = []

    def replace_the_lock_file():
        new = run / ".new-lock"
        new.touch()
        held.append(FolderLock(run))
        held[0].path = new
        held[0].acquire("train")
        os.rename(new, run / LOCK_NAME)

    swap = SwapOnFirstFlock(locks.fcntl, run / LOCK_NAME, replace_the_lock_file)
    for module in (locks, runfolder):  # whichever takes the shared lock
        if hasattr(module, "fcntl"):
            monkeypatch.setattr(module, "fcntl", swap)
    try:
        with pytest.raises(OutputFolderError, match=r"is inside .*R, a folder that `eqpdenet "
                                                    r"train`"):
            with writing_beside_runs(run / "eval.json", "--json"):
                pytest.fail("the write went ahead while a train held the folder")
    finally:
        for lock in held:
            lock.release()
    assert swap.done


# --- F5: an interrupt while the staging folder was set up left it behind ---------------------------


def test_an_interrupt_while_the_staging_marker_is_written_leaves_no_staging_folder(tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "run"

    def interrupted(fd):
        raise KeyboardInterrupt

    with hold(out, "train"):
        with monkeypatch.context() as patch:
            patch.setattr(os, "fsync", interrupted)  # Ctrl-C during the marker's fsync
            with pytest.raises(KeyboardInterrupt), staged(out):
                pytest.fail("the block ran")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no .run.staging-PID


def test_an_interrupt_at_the_swap_leaves_no_staging_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def interrupted(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(locks, "_exchange", interrupted)
    with pytest.raises(KeyboardInterrupt), hold(out, "train"):
        with staged(out) as stage:
            (stage / "model.pt").write_text("new")
    assert list(tmp_path.iterdir()) == []  # hold removes the folder it made


def test_an_interrupt_in_check_stageable_leaves_no_staging_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_mkdir = Path.mkdir

    def mkdir_then_interrupt(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        check_stageable(out)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_run_still_replaces_its_folder_as_a_unit(tmp_path):
    """The ordinary swap, after all of the above."""
    out = tmp_path / "run"
    for text in ("first", "second"):
        with hold(out, "train"):
            check_replaceable(out, RUN_FILES)
            with staged(out) as stage:
                (stage / "model.pt").write_text(text)
    assert (out / "model.pt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
