"""The findings of issue 14 (reliability), one test each, in-process (the real-process cases are in
``test_processes.py``, the traceback-free CLI in ``test_cli_errors.py``).

Where a problem must be found "before any data is loaded", loading data fails the test
(:func:`no_data`).
"""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_helpers import data_dir_or_skip
from eqpdenet.app import files, locks, preflight, sweeps, training
from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, ReproduceConfig, apply_overrides, build_model
from eqpdenet.app.locks import LOCK_NAME, FolderLock, hold
from eqpdenet.app.report import aggregate, deduplicate, write_report
from eqpdenet.app.runfolder import MARKER, write_marker
from eqpdenet.app.sweeps import reproduce
from eqpdenet.errors import CheckpointError, DataFileError, FolderLockedError

TINY_TRAIN = ["--set", "data.train_subset=300", "--set", "data.test_subset=200",
              "--set", "model.layer.T=0.2", "--hidden", "8", "--epochs", "1", "--no-progress"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("eqpdenet: error:")]
    assert len(lines) == 1, err
    return lines[0]


def fake_run(status: str = "ok", tag: float = 50.0):
    """A stand-in for run_experiment: writes a checkpoint (status ok) and returns the record."""
    def run(config, data, progress=True, checkpoint=None):
        record = {"model": config.model.kind, "hidden": config.model.hidden,
                  "seed": config.train.seed, "status": status, "train_seconds": 0.0,
                  "eval_seconds": 0.0, "params": 1}
        if status == "ok":
            record["accuracy"] = {"test": tag}
            if checkpoint is not None:
                training.save_checkpoint(checkpoint, build_model(config.model), config,
                                         accuracy=record["accuracy"])
        else:
            record["error"] = "PDE 'pde0:se2' produced a non-finite state"
        return record
    return run


@pytest.fixture
def fake_training(monkeypatch):
    monkeypatch.setattr(training, "prepare_data", lambda *args, **kwargs: {})
    runs = {"run": fake_run()}
    monkeypatch.setattr(training, "run_experiment", lambda *a, **k: runs["run"](*a, **k))
    return runs


# ----------------------------------------------------------------------------- 1. two writers


def test_a_second_writer_stops_at_once_naming_the_first(tmp_path, no_data, capsys):
    out = tmp_path / "results"
    out.mkdir()
    first = FolderLock(out)  # another writer (a lock of its own, not this process's hold)
    first.acquire("eqpdenet reproduce --out results")
    try:
        rc = main(["reproduce", "--out", str(out), "--no-progress", "--set", "hidden_sizes=[8]"])
        line = error_line(capsys)
    finally:
        first.release()
    assert rc == 2
    assert f"{out} is being written by another eqpdenet process (pid {os.getpid()} on " in line
    assert "(eqpdenet reproduce --out results), since " in line  # the holder's label
    assert "one writer per folder" in line
    assert not (out / "results.jsonl").exists()
    # released when the holder is done: the next writer gets it
    with hold(out):
        assert locks.holder(out)["pid"] == os.getpid()


def test_lock_is_reentrant_in_one_process_and_exclusive_across_lock_files(tmp_path):
    with hold(tmp_path, "outer"), hold(tmp_path, "inner"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "outer"
        with pytest.raises(FolderLockedError, match=r"\(outer\), since"):
            FolderLock(tmp_path).acquire()  # another open file description: another writer
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: no holder recorded


def test_report_counts_each_run_once_and_refuses_contradictions(tmp_path):
    def record(seed, test, **extra):
        return {"model": "fcnn", "hidden": 16, "seed": seed, "status": "ok", "params": 13002,
                "accuracy": {"test": test, "iso": 30.0, "sca": 20.0}, **extra}

    runs = [record(0, 70.0), record(1, 74.0)]
    doubled = runs + [dict(r, train_seconds=9.0) for r in runs]  # two writers: each run twice
    assert deduplicate(doubled) == runs
    cell = aggregate(doubled)["fcnn", 16]
    assert cell["n"] == 2 and cell["test"] == pytest.approx((72.0, 8**0.5))  # not n=4, std 2.3
    with pytest.raises(DataFileError, match=r"run fcnn-h16-seed1 is recorded twice with "
                                            r"different accuracy \(record 3\)"):
        deduplicate(runs + [record(1, 75.0)])
    for r in doubled:
        files.append_jsonl(tmp_path / "results.jsonl", r)
    table, _ = write_report(tmp_path)
    assert "(2 runs;" in table.read_text() and "| 16 | 13002 | 2 |" in table.read_text()


# ----------------------------------------------------------------------------- 2. validated first


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "train.epochs: must be >= 1, got 0"),
    (["train", "--set", "train.epochs=0"], "train.epochs: must be >= 1, got 0"),
    (["train", "--hidden", "0"], "model.hidden: must be >= 1, got 0"),
    (["train", "--set", "model.hidden=0"], "model.hidden: must be >= 1, got 0"),
    (["train", "--epochs", "-3"], "train.epochs: must be >= 1, got -3"),
    (["reproduce", "--set", "base.train.epochs=0"], "train.epochs: must be >= 1, got 0"),
    (["reproduce", "--set", "hidden_sizes=[0]"], "hidden_sizes[0]: must be >= 1, got 0"),
    (["study", "--epochs", "0"], "train.epochs: must be >= 1, got 0"),
    (["study", "--hidden", "0"], "hidden_sizes[0]: must be >= 1, got 0"),
])
def test_zero_counts_are_the_same_error_through_every_path(argv, message, tmp_path, no_data,
                                                           capsys):
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert message in error_line(capsys)


def test_flags_are_honoured_exactly(monkeypatch, tmp_path):
    from eqpdenet.app import cli

    seen = []
    monkeypatch.setattr(cli, "_train", lambda args: seen.append(cli._experiment_config(args)) or 0)
    main(["train", "--out", str(tmp_path), "--epochs", "1", "--hidden", "3", "--seed", "0"])
    assert (seen[0].train.epochs, seen[0].model.hidden, seen[0].train.seed) == (1, 3, 0)


@pytest.mark.parametrize("case, message", [
    ("out-is-a-file", "is a file, not a folder"),
    ("out-under-a-file", "is a file, not a folder"),
    ("lr-inf", "train.lr: must be a finite number, got inf"),
    ("input-std-inf", "model.input_std: must be a finite number, got inf"),
    ("input-mean-nan", "model.input_mean: must be a finite number, got nan"),
    ("steps", "model.layer.T / model.layer.dt: 1e+06 / 0.001 is about 1e+09 Euler steps per PDE, more than "
              "the bound of 100,000"),
    ("memory", "training would need about"),
    ("memory-lifted", "or make its fields smaller (model.lifted_pde: channels, blocks, "
                      "orientations, scales, margin)"),
    ("memory-invariant", "or make its fields smaller (model.invariant_pde: channels, blocks, "
                         "hidden)"),
    ("disk", "not enough space for the results in"),
    ("foreign-files", "holds files that eqpdenet did not write as a run (notes.txt; no "
                      ".eqpdenet-folder marker)"),
    ("select-without-validation", "train.select_on_validation: needs data.validation > 0"),
])
def test_problems_are_found_before_any_data_is_loaded(case, message, tmp_path, no_data, capsys,
                                                      monkeypatch):
    out = tmp_path / "run"
    extra = []
    if case == "out-is-a-file":
        out.write_text("not a folder")
    elif case == "out-under-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    elif case == "lr-inf":
        extra = ["--set", "train.lr=inf"]
    elif case == "input-std-inf":
        extra = ["--set", "model.input_std=inf"]
    elif case == "input-mean-nan":
        extra = ["--set", "model.input_mean=nan"]
    elif case == "steps":
        extra = ["--set", "model.layer.T=1e6", "--set", "model.layer.dt=1e-3"]
    elif case == "memory":  # 100,000 steps: within the step bound, ~400 GB of stored states
        extra = ["--set", "model.layer.T=1000", "--set", "model.layer.dt=0.01"]
        monkeypatch.setattr(preflight, "available_memory", lambda device: 16 * 2**30)
    elif case == "memory-lifted":  # a 1,000-pixel margin: 2.9 TiB of fields at batch 128
        extra = ["--model", "lifted_pde", "--set", "model.lifted_pde.margin=1000"]
        monkeypatch.setattr(preflight, "available_memory", lambda device: 16 * 2**30)
    elif case == "memory-invariant":  # 1,000 blocks of 12 channels: ~120 GiB at batch 128
        extra = ["--model", "invariant_pde", "--set", "model.invariant_pde.channels=[12]",
                 "--set", "model.invariant_pde.blocks=[1000]"]
        monkeypatch.setattr(preflight, "available_memory", lambda device: 16 * 2**30)
    elif case == "disk":
        monkeypatch.setattr(preflight.shutil, "disk_usage",
                            lambda path: SimpleNamespace(total=10**9, used=10**9 - 4096, free=4096))
    elif case == "foreign-files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "select-without-validation":
        extra = ["--set", "train.select_on_validation=true"]
    assert main(["train", "--out", str(out), "--no-progress", *extra]) == 2
    assert message in error_line(capsys)
    if case == "foreign-files":
        assert (out / "notes.txt").read_text() == "mine"


def test_memory_estimate_counts_the_stored_euler_states():
    config = apply_overrides(ExperimentConfig(), ["model.layer.backend='fused'"])
    # 128 images x 4 PDEs x 1 channel x 10 steps x 784 pixels x 4 bytes x 2.5
    assert preflight.training_bytes(config) == int(128 * 4 * 10 * 784 * 4 * 2.5)
    fcnn = apply_overrides(config, ["model.kind='fcnn'"])
    assert preflight.training_bytes(fcnn) == 0
    state = torch.random.get_rng_state()
    preflight.preflight([config], None)
    assert torch.equal(state, torch.random.get_rng_state())  # checks draw no random numbers


def test_checkpoint_compatibility_names_the_field(tmp_path, capsys):
    config = apply_overrides(ExperimentConfig(), ["model.hidden=8"])
    training.save_checkpoint(tmp_path / "m.pt", build_model(config.model), config)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["config"]["model"]["hidden"] = 16  # an edited configuration
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited.pt: the weights do not fit the saved "
                                              r"configuration: model.hidden is 16 in the "
                                              r"configuration but 8 in the weights"):
        training.load_checkpoint(tmp_path / "edited.pt")
    payload["config"]["model"]["layer"]["invariants"] = ["se2"]
    payload["config"]["model"]["hidden"] = 8
    torch.save(payload, tmp_path / "edited.pt")
    assert main(["evaluate", str(tmp_path / "edited.pt")]) == 2
    assert "model.layer.invariants (the number of PDEs) is 1 in the configuration but 4 in " \
           "the weights" in error_line(capsys)
    payload["config"]["model"]["hidden"] = 0
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="the saved configuration is invalid: .*model.hidden"):
        training.load_checkpoint(tmp_path / "edited.pt")


# ----------------------------------------------------------------------------- 3. folder as a unit


def test_a_failed_rerun_replaces_the_previous_run_whole(tmp_path, fake_training, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", "--hidden", "8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER, LOCK_NAME, "config.toml", "model.pt",
                                                     "result.json"]
    fake_training["run"] = fake_run("diverged")
    assert main(["train", "--out", str(out), "--no-progress", "--hidden", "8"]) == 1
    assert sorted(p.name for p in out.iterdir()) == [MARKER, LOCK_NAME, "config.toml",
                                                     "result.json"]
    assert json.loads((out / "result.json").read_text())["status"] == "diverged"
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.pt")]) == 2  # no stale model to score
    assert "checkpoint not found" in error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left


def test_a_write_that_fails_leaves_the_previous_run_intact(tmp_path, fake_training, capsys,
                                                           monkeypatch):
    out = tmp_path / "run"
    fake_training["run"] = fake_run("ok", tag=11.0)
    assert main(["train", "--out", str(out), "--no-progress", "--hidden", "8"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_write = files.atomic_write

    def full_disk(path, data):
        if Path(path).name == "result.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    from eqpdenet.app import cli  # noqa: F401  (the CLI imports atomic_write from files at call)

    monkeypatch.setattr(files, "atomic_write", full_disk)
    fake_training["run"] = fake_run("ok", tag=22.0)
    assert main(["train", "--out", str(out), "--no-progress", "--hidden", "8"]) == 2
    assert "No space left on device" in error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_interrupted_training_leaves_the_previous_run_intact(tmp_path, fake_training, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", "--hidden", "8"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(config, data, progress=True, checkpoint=None):
        checkpoint.write_bytes(b"half a model")
        raise KeyboardInterrupt

    fake_training["run"] = interrupted
    assert main(["train", "--out", str(out), "--no-progress", "--hidden", "8"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_stale_checkpoint_never_sits_beside_a_failed_run(tmp_path, monkeypatch):
    config = apply_overrides(ReproduceConfig(), ["hidden_sizes=[4]", "seeds=[0]",
                                                 "models=['fcnn']"])
    write_marker(tmp_path, "reproduce")  # the killed earlier try had claimed the folder
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / "fcnn-h4-seed0.pt"
    stale.write_bytes(b"a model of a killed earlier try")
    monkeypatch.setattr(sweeps, "run_experiment", fake_run("diverged"))
    monkeypatch.setattr(sweeps, "_cached_data", lambda *a: {})
    reproduce(config, tmp_path, progress=False, echo=lambda s: None)
    assert not stale.exists()


def test_real_training_writes_one_consistent_run_folder(tmp_path, capsys):
    data_dir = data_dir_or_skip()
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--data-dir", str(data_dir), "--cache-dir",
            str(tmp_path / "cache"), *TINY_TRAIN]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    _, config, payload = training.load_checkpoint(out / "model.pt")
    assert payload["accuracy"] == result["accuracy"] and config.model.hidden == 8
    assert sorted(p.name for p in out.iterdir()) == [MARKER, LOCK_NAME, "config.toml", "model.pt",
                                                     "result.json"]


def test_atomic_write_writes_a_pipe_in_place_and_never_replaces_it(tmp_path):
    """A device or pipe given as an output file (``--json /dev/stdout``) is written, not replaced
    by a regular file (as root, the rename replaced /dev/full itself)."""
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    files.atomic_write(fifo, b"summary\n")
    reader.join(timeout=60)
    assert received == [b"summary\n"] and stat.S_ISFIFO(fifo.stat().st_mode)
    with pytest.raises(IsADirectoryError, match="a folder is in the way"):
        files.atomic_write(tmp_path, b"x")


def test_atomic_write_removes_killed_writers_files_beside_its_target_wherever_it_is(tmp_path):
    """A write through a link into another folder (or to a file in no marked folder) has no lock
    holder to sweep a killed writer's temporary file there: the next write to the same file does,
    and never a live writer's (its lock held)."""
    import os
    import time

    from eqpdenet.files import STALE_GRACE, temporary_beside

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "summary.json"
    link.symlink_to(elsewhere / "summary.json")
    killed, _ = temporary_beside(elsewhere / "summary.json", files.TEMPORARY_SUFFIX)
    os.close(killed)  # its writer gone: the lock released, the file left
    (stale,) = [p for p in elsewhere.iterdir()]
    live, writing = temporary_beside(elsewhere / "summary.json", files.TEMPORARY_SUFFIX)
    try:
        old = time.time() - STALE_GRACE - 5  # "untouched for STALE_GRACE seconds", no waiting
        for path in (stale, writing):
            os.utime(path, (old, old))
        files.atomic_write(link, b"{}\n")
        assert link.is_symlink() and link.read_bytes() == b"{}\n"
        assert sorted(p.name for p in elsewhere.iterdir()) == sorted(["summary.json", writing.name])
    finally:
        os.close(live)


def test_the_splits_a_run_uses_must_hold_the_classes(tmp_path):
    """A file sorted by class: the first training images (train_subset) are one class, the last
    ones (validation) hold a class back, the first test images (test_subset) are one class.
    Refused where nothing could be learned, warned about where results would mislead."""
    labels = np.repeat(np.arange(3), 40)
    images = (np.random.default_rng(0).random((120, 8, 8)) * 255).astype(np.uint8)
    path = tmp_path / "sorted.npz"
    np.savez(path, x_train=images, y_train=labels, x_test=images[::2], y_test=labels[::2])

    def prepare(**fields):
        return training.prepare_data(training.DataConfig(dataset=str(path), **fields))

    with pytest.raises(ValueError, match=r"data.train_subset: the first 30 training images .* "
                                         r"hold class 0 only"):
        prepare(train_subset=30)
    with pytest.warns(RuntimeWarning, match=r"the training split .*\(40 held out for "
                                            r"validation\) lacks class\(es\) 2 of its 3"):
        assert torch.equal(torch.unique(prepare(validation=40).train.labels), torch.arange(2))
    with pytest.warns(RuntimeWarning, match=r"the first 15 test images .* hold class 0 only"):
        prepare(test_subset=15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the whole file: no warning
        assert len(prepare().train) == 120
