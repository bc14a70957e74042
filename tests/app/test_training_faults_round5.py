"""Faults of the fifth outside-in round, in training and its run folders.

* a run folder (or any output folder) inside a ``train`` run's folder, finished or being written,
  was written (exit 0) and deleted when that run was swapped in or rerun;
* ``evaluate --json`` (``export --out``, ``figure --out``) into a folder a ``train`` was
  rewriting was written, then deleted by the swap;
* weights or batch-norm statistics gone non-finite under a finite loss were found after the last
  epoch only, and a diverged record dropped its ``history``;
* an optimiser step overflowing float32 (``train.lr = 1e38``) was an "unexpected RuntimeError";
* ``torch.save(model)`` files and zip archives torch did not write gave torch's raw text (escape
  codes, the ``weights_only=False`` advice, ``[enforce fail at inline_container.cc]``);
* a write failing in a run's staging folder named the hidden staging folder, and a long
  ``--out`` name made a staging name too long to create;
* the history's ``validation_accuracy`` was a fraction, the record's the same key in percent;
* ``train_model``'s memory check assumed ``train.batch_size`` images where the data held fewer.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import zipfile

import pytest
import torch

from data_helpers import tiny_config, tiny_data
from eqpdenet.app import preflight as preflight_module
from eqpdenet.app import training
from eqpdenet.app.cli import main
from eqpdenet.app.config import build_model
from eqpdenet.app.locks import LOCK_NAME, hold
from eqpdenet.app.runfolder import (
    RUN_FILES,
    check_claim,
    check_output_keeps,
    check_replaceable,
    staged,
    write_marker,
)
from eqpdenet.app.training import load_checkpoint, run_experiment, train_model
from eqpdenet.errors import CheckpointError, ConfigError, OutputFolderError


def finished_run(folder):
    """A run folder as ``train`` leaves it."""
    folder.mkdir(parents=True)
    write_marker(folder, "train")
    for name in RUN_FILES:
        (folder / name).write_text("the run's")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    config = tiny_config()
    torch.manual_seed(0)
    training.save_checkpoint(path, build_model(config.model), config)
    return path


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("eqpdenet: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- 1: nested runs


def test_a_run_inside_a_finished_runs_folder_is_refused_before_any_work(tmp_path, capsys,
                                                                          no_data):
    outer = finished_run(tmp_path / "R")
    with pytest.raises(OutputFolderError, match=r"is inside .*R, the folder of an `eqpdenet "
                                                r"train` run"):
        check_replaceable(outer / "sub")
    assert main(["train", "--model", "fcnn", "--out", str(outer / "sub" / "deeper")]) == 2
    assert "the folder of an `eqpdenet train` run" in one_error(capsys)
    assert sorted(p.name for p in outer.iterdir()) == sorted([".eqpdenet-folder", *RUN_FILES])
    # the other commands that claim a folder: a sweep, a study, describe, equivariance
    for kind in ("reproduce", "benchmark", "study", "describe", "equivariance"):
        with pytest.raises(OutputFolderError, match="a run replaces its whole folder"):
            check_claim(outer / kind, kind)


def test_a_run_inside_a_folder_train_is_writing_is_refused(tmp_path, capsys, no_data):
    """The first run of R: R holds only its lock (the run is staged beside it) until the end."""
    outer = tmp_path / "R"
    with hold(outer, "train"):
        with pytest.raises(OutputFolderError, match=r"`eqpdenet train` \(pid \d+\) is writing"):
            check_replaceable(outer / "sub")
        assert main(["train", "--model", "fcnn", "--out", str(outer / "sub")]) == 2
        assert "is writing as a run now" in one_error(capsys)
        assert [p.name for p in outer.iterdir()] == [LOCK_NAME]
    check_replaceable(outer / "sub")  # not a run: R was refused nothing, and holds nothing


def test_a_folder_held_by_a_sweep_still_takes_a_run_beside_its_own_files(tmp_path):
    """A sweep, a study or a report writes files into its folder, never replaces it."""
    sweep = tmp_path / "S"
    with hold(sweep, "reproduce"):
        check_replaceable(sweep / "extra-run")


def test_a_run_folder_holding_another_run_names_it(tmp_path):
    """Written before nested runs were refused: a rerun of R would delete R/sub."""
    outer = finished_run(tmp_path / "R")
    finished_run(outer / "sub")
    with pytest.raises(OutputFolderError, match=r"holds the folder of another eqpdenet run "
                                                r"\(sub\)"):
        check_replaceable(outer)


# ----------------------------------------------------------------------------- 2: single files


def test_files_inside_a_folder_train_is_rewriting_are_refused(tmp_path, checkpoint, capsys,
                                                                no_data):
    run = finished_run(tmp_path / "R")
    (run / "summary.json").write_text("the user's")
    with hold(run, "train"):
        for path in (run / "eval.json", run / "summary.json", run / "deep" / "f.png"):
            with pytest.raises(OutputFolderError, match="replaces its whole folder, which would "
                                                        "delete this file"):
                check_output_keeps(path, "--json", [checkpoint])
        commands = [["evaluate", str(checkpoint), "--instances", "1", "--json",
                     str(run / "eval.json")],
                    ["export", str(checkpoint), "--format", "exported-program", "--out",
                     str(run / "m.pt2")],
                    ["figure", "diagram", "--out", str(run / "figure.png")]]
        for command in commands:
            assert main(command) == 2, command
            assert f"is inside {run}" in one_error(capsys), command
    assert sorted(p.name for p in run.iterdir()) == sorted([".eqpdenet-folder", LOCK_NAME,
                                                            "summary.json", *RUN_FILES])
    # a finished run's folder, no one writing it: a summary beside the run, as before (a rerun
    # then refuses to replace the folder, naming the file)
    check_output_keeps(run / "eval.json", "--json", [checkpoint])
    (run / "eval.json").write_text("{}")
    with pytest.raises(OutputFolderError, match=r"not part of an eqpdenet run \(eval.json"):
        check_replaceable(run)


# ----------------------------------------------------------------------------- 3 and 4: divergence


@pytest.mark.filterwarnings("ignore:model.hidden = 4 has no effect")
def test_batch_norm_statistics_gone_non_finite_stop_the_run_at_that_epoch():
    config = tiny_config("model.kind='cnn'", "model.cnn.channels=4", "model.cnn.layers=2",
                         "train.epochs=3", "train.lr=1e10")
    record = run_experiment(config, tiny_data(), progress=False)
    assert record["status"] == "diverged"
    assert record["error"].startswith("the model's parameters or buffers are not all finite "
                                      "after epoch 1 (1 tensor, e.g. features.4.running_var")
    assert [entry["epoch"] for entry in record["history"]] == [1]  # kept, and stopped at once


def test_a_diverged_records_history_holds_the_epochs_done():
    record = run_experiment(tiny_config("train.lr=1e30", "train.epochs=3"), tiny_data(),
                            progress=False)
    assert record["status"] == "diverged" and "history" in record
    assert all(entry["epoch"] <= 3 for entry in record["history"])


@pytest.mark.parametrize(("optimizer", "lr"), [("adam", "1e38"), ("sgd", "1e39")])
def test_an_optimiser_step_beyond_float32_is_a_divergence_naming_train_lr(optimizer, lr,
                                                                          monkeypatch):
    """Set after validation (which bounds train.lr): a configuration made by hand. Since round
    19 ``train_model`` checks such a field again (a ConfigError); the guard behind it, for steps
    that overflow at an accepted rate, is reached here with that check turned off."""
    config = tiny_config(f"train.optimizer='{optimizer}'")
    config.train.lr = float(lr)
    with pytest.raises(ConfigError, match=r"^invalid config: train.lr: .* is outside"):
        run_experiment(config, tiny_data(), progress=False)
    monkeypatch.setattr("eqpdenet.app.training._check_changed_config", lambda config: None)
    record = run_experiment(config, tiny_data(), progress=False)
    assert record["status"] == "diverged", record.get("error")
    assert record["error"] == (f"the {optimizer} step overflowed float32 at epoch 1: train.lr = "
                               f"{float(lr):g} makes steps beyond float32's largest number "
                               f"(3.4e38); training diverged: lower train.lr")
    assert record["history"] == []


# ----------------------------------------------------------------------------- 5: checkpoints


def test_a_whole_pickled_model_is_refused_in_eqpdenets_words(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(build_model(tiny_config().model), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    text = str(caught.value)
    assert text.startswith(f"{path} is not a readable eqpdenet checkpoint: it holds pickled "
                           f"Python objects, which eqpdenet does not load")
    assert "torch.save(model)" in text and "save_checkpoint" in text
    assert "weights_only" not in text and "\x1b" not in text and "\n" not in text


def test_a_zip_archive_torch_did_not_write_is_not_a_pytorch_checkpoint(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    text = str(caught.value)
    assert text.startswith(f"{path} is not a readable eqpdenet checkpoint: not a PyTorch "
                           f"checkpoint file (a zip archive, but not one torch.save writes)")
    assert "enforce fail" not in text and "inline_container" not in text


def test_torchs_text_passed_through_loses_its_control_characters(tmp_path):
    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x/data.pkl", "x")
    text = training._unreadable(path, RuntimeError("\x1b[1mbold\x1b[0m first\tline\nsecond"))
    assert text == f"{path} is not a readable eqpdenet checkpoint: bold first line"


# ----------------------------------------------------------------------------- 6: staging


def test_a_write_failing_in_the_staging_folder_names_the_file_asked_for(tmp_path):
    out = tmp_path / "run"
    for code, cause in ((errno.EFBIG, "File too large (beyond this process's file size limit: "
                                      "ulimit -f)"),
                        (errno.ENOSPC, "No space left on device")):
        with hold(out, "train"), pytest.raises(OutputFolderError) as caught, staged(out) as stage:
            raise OSError(code, os.strerror(code), str(stage / "model.pt"))
        assert str(caught.value) == f"cannot write {out / 'model.pt'}: {cause}"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left


def test_the_file_size_limit_names_the_run_file(tmp_path):
    """``ulimit -f``: the write fails with EFBIG (Python ignores SIGXFSZ)."""
    out = tmp_path / "run"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    with hold(out, "train"), pytest.raises(OutputFolderError) as caught, staged(out) as stage:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        try:
            training.atomic_write(stage / "model.pt", b"x" * 200_000)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(caught.value) == (f"cannot write {out / 'model.pt'}: File too large (beyond this "
                                 f"process's file size limit: ulimit -f)")


def test_a_long_folder_name_stages_under_a_short_name(tmp_path):
    out = tmp_path / ("n" * 250)
    with hold(out, "train"), staged(out) as stage:
        assert len(stage.name) < 80
        (stage / "model.pt").write_text("weights")
    assert (out / "model.pt").read_text() == "weights"
    other = tmp_path / ("n" * 249 + "m")  # the same first characters: another staging folder
    with hold(other, "train"), staged(other) as second:
        assert second.name != stage.name


def test_a_killed_writers_staging_folder_is_removed_whatever_the_folders_name(tmp_path):
    out = tmp_path / "run[1]"  # glob's brackets: the stale folder was never matched
    stale = tmp_path / ".run[1].staging-999999"
    stale.mkdir()
    with hold(out, "train"), staged(out):
        pass
    assert not stale.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_parent_folder_that_cannot_take_the_staging_folder_is_refused_first(tmp_path):
    parent = tmp_path / "parent"
    run = finished_run(parent / "run")
    parent.chmod(0o555)
    try:
        with pytest.raises(OutputFolderError, match="a run is written beside its folder"):
            check_replaceable(run)
    finally:
        parent.chmod(0o755)


# ----------------------------------------------------------------------------- 7 and 8


def test_the_historys_accuracies_are_percentages_as_the_records():
    record = run_experiment(tiny_config("train.epochs=2"), tiny_data(), progress=False)
    assert record["status"] == "ok"
    last = record["history"][-1]
    assert last["validation_accuracy"] == pytest.approx(record["validation_accuracy"])
    assert all(0 <= entry["train_accuracy"] <= 100 for entry in record["history"])
    assert any(entry["train_accuracy"] > 1 for entry in record["history"])
    json.dumps(record)


def test_the_memory_check_of_train_model_counts_the_datas_images(monkeypatch):
    """16 training images in batches of 128: the batch is 16 images, not 128."""
    config = tiny_config("model.kind='eqpdenet'", "train.batch_size=128")
    data = tiny_data(n_train=16)
    resolved = training.resolve_for_data(config, data)
    small = preflight_module.training_bytes(resolved, images=16)
    large = preflight_module.training_bytes(resolved)
    assert large > 4 * small
    # room for the 16 images' batch, not for one of 128
    monkeypatch.setattr(preflight_module, "available_memory", lambda device: 2 * small + 2**20)
    model, history = train_model(config, data, progress=False)
    assert len(history) == 1
    with pytest.raises(ConfigError, match="training would need about"):
        train_model(config, tiny_data(n_train=200), progress=False)


def test_data_fields_set_by_the_user_and_replaced_by_the_data_are_named():
    """``model.classes = 3`` and ``image_size = 5`` on 10-class 12x12 data were replaced without a
    word, and config.toml kept 3 and 5; each is now a warning naming the value used."""
    config = tiny_config("model.classes=3", "model.image_size=5")
    with pytest.warns(RuntimeWarning) as caught:
        model, _ = train_model(config, tiny_data(), progress=False)
    said = [str(w.message) for w in caught]
    assert any(line.startswith("model.classes = 3 has no effect") and "(10)" in line for line in said)
    assert any(line.startswith("model.image_size = 5 has no effect") and "(12)" in line
               for line in said)
    assert model(torch.zeros(2, 1, 12, 12)).shape == (2, 10)


def test_an_augmentation_shift_beyond_the_image_is_refused_at_the_datas_size():
    config = tiny_config("train.augment.max_shift=12")  # the images' side: shifted out of frame
    with pytest.raises(ConfigError, match=r"train.augment.max_shift: 12 pixels is not less than "
                                          r"the images' side \(12 pixels\)"):
        train_model(config, tiny_data(), progress=False)
    model, _ = train_model(tiny_config("train.augment.max_shift=3"), tiny_data(), progress=False)
