"""Round 16 (probes u3, u4): one rule for a class the training split lacks, whether the data
come from a file, a registered set or the API; a test label beyond every training label named
where it is; float64 images of a ``Split`` made float32 as a file's are; ``--json`` onto a
folder's writer lock refused; ``benchmark --models fcnn fcnn`` runs and names the entry once."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
import torch

from eqpdenet.app import benchmark as benchmark_module
from eqpdenet.app import training
from eqpdenet.app.cli import main
from eqpdenet.app.config import BenchmarkConfig, ExperimentConfig, apply_overrides, build_model
from eqpdenet.app.locks import LOCK_NAME
from eqpdenet.app.runfolder import MARKER, check_output_keeps, claiming
from eqpdenet.app.training import DataConfig, Split, prepare_data
from eqpdenet.data import datasets
from eqpdenet.data.datasets import ImageDataset, dataset_shape, load_dataset, register_dataset
from eqpdenet.errors import DataFileError, OutputFolderError


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 8, 8), dtype=np.uint8)


def _npz(path, y_train, y_test):
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    np.savez(path, x_train=_images(len(y_train), 0), y_train=y_train,
             x_test=_images(len(y_test), 1), y_test=y_test)
    return path


def _lack_warnings(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if "lack" in str(w.message)]


# ----------------------------------------------------------- u3 F1: one rule for absent classes


def test_a_class_only_the_test_split_holds_is_a_warning_for_a_file_as_for_a_registered_set(
        tmp_path, monkeypatch):
    """Class 2 in the test split only: a file was refused ("the training split lacks 2") where
    the same arrays as a registered set trained with a warning; now both warn, and the
    registered set's warning does not call it a file."""
    path = _npz(tmp_path / "absent.npz", [0, 1, 3] * 10, [0, 1, 2, 3] * 5)
    assert load_dataset(str(path)).classes == 4
    assert dataset_shape(str(path)).classes == 4
    assert _lack_warnings(lambda: prepare_data(DataConfig(dataset=str(path)))) == [
        f"the training split of {path} lacks class(es) 2 of its 4: the model will not learn them "
        f"(the file's training images hold none of them: add some to train on them)"]

    monkeypatch.setattr(datasets.DATASETS, "_items", dict(datasets.DATASETS._items))
    arrays = np.load(path)

    def loader(data_dir=None, cache_dir=None, seed=0):
        return ImageDataset("absent-set", arrays["x_train"][:, None], arrays["y_train"],
                            arrays["x_test"][:, None], arrays["y_test"], classes=4)

    register_dataset("absent-set", loader)
    assert _lack_warnings(lambda: prepare_data(DataConfig(dataset="absent-set"))) == [
        "the training split of absent-set lacks class(es) 2 of its 4: the model will not learn "
        "them (the data set's training images hold none of them: add some to train on them)"]


def test_a_registered_set_sorted_by_class_is_not_called_a_file(tmp_path, monkeypatch):
    """The hint for a validation split that holds a class back names the data set, not a file."""
    labels = np.repeat(np.arange(3), 20)
    monkeypatch.setattr(datasets.DATASETS, "_items", dict(datasets.DATASETS._items))

    def loader(data_dir=None, cache_dir=None, seed=0):
        return ImageDataset("sorted-set", _images(60, 0)[:, None], labels, _images(30, 1)[:, None],
                            labels[::2], classes=3)

    register_dataset("sorted-set", loader)
    assert _lack_warnings(lambda: prepare_data(DataConfig(dataset="sorted-set",
                                                          validation=20))) == [
        "the training split of sorted-set (20 held out for validation) lacks class(es) 2 of its "
        "3: the model will not learn them (is the data set sorted by class? shuffle it)"]


def test_a_class_no_split_holds_stays_an_error_for_a_file(tmp_path):
    """Labels 1..K (class 0 in neither split) and a gap in both splits: the class count read
    from the labels is not the data's, refused when the file is read (and by its header)."""
    cases = {"from1.npz": ([1, 2, 3] * 10, [1, 2, 3] * 5,
                           "labels 0..3 expected (the largest label is 3); in both splits together "
                           "the data set lacks 0"),
             "gap.npz": ([0, 1, 3] * 10, [0, 3] * 5,
                         "labels 0..3 expected (the largest label is 3); in both splits together "
                         "the data set lacks 2")}
    for name, (y_train, y_test, message) in cases.items():
        path = _npz(tmp_path / name, y_train, y_test)
        for read in (load_dataset, dataset_shape):
            with pytest.raises(DataFileError) as info:
                read(str(path))
            assert str(info.value) == f"{path}: {message}"


def test_a_training_split_of_one_class_is_refused_when_the_file_is_read(tmp_path):
    path = _npz(tmp_path / "one.npz", [0] * 20, [0, 1] * 5)
    with pytest.raises(DataFileError) as info:
        load_dataset(str(path))
    assert str(info.value) == (f"{path}: the training split holds class 0 only, and a classifier "
                               f"needs two")


# ------------------------------------------- u3 F3: a test label beyond every training label


def test_a_test_label_beyond_every_training_label_is_named_with_its_split_and_index(tmp_path):
    """It was reported as four classes the training split lacks ("lacks 2, 3, 4, 5")."""
    y_test = np.array([0, 1] * 5)
    y_test[3] = 5
    path = _npz(tmp_path / "stray.npz", [0, 1] * 10, y_test)
    expected = (f"{path}: the test split holds label 5 (test image 3), above every training label "
                f"(the largest is 1): labels 0..5 would leave 2, 3, 4 held by no split; labels are "
                f"0 .. classes - 1")
    for read in (load_dataset, dataset_shape):
        with pytest.raises(DataFileError) as info:
            read(str(path))
        assert str(info.value) == expected
    y_test[[6, 7]] = [4, 5]  # several: the largest named at its first image, and the count
    path = _npz(tmp_path / "strays.npz", [0, 1] * 10, y_test)
    with pytest.raises(DataFileError, match=re.escape(
            "label 5 (test image 3), above every training label (the largest is 1; 3 test labels "
            "are above 1 in all): labels 0..5 would leave 2, 3 held by no split")):
        load_dataset(str(path))


# ------------------------------------------------------------- u3 F2: float64 images of a Split


def test_split_images_of_another_float_dtype_are_made_float32_and_float32_is_kept():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 4, 4, generator=generator, dtype=torch.float64)
    labels = torch.arange(6) % 2
    split = Split(images, labels)
    assert split.images.dtype == torch.float32
    assert torch.equal(split.images, images.to(torch.float32))
    half = images.to(torch.float16)
    assert torch.equal(Split(half, labels).images, half.to(torch.float32))
    single = images.to(torch.float32)
    assert Split(single, labels).images is single  # float32: the same tensor, bit for bit


def test_run_experiment_trains_on_float64_splits():
    """It stopped at the first forward: "convert the module (module.to(torch.float64))", a
    module run_experiment builds itself."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(24, 1, 8, 8, generator=generator, dtype=torch.float64)
    labels = torch.arange(24) % 2
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4",
                                                  "train.epochs=1", "scenarios=['test']"])
    data = {"train": Split(images, labels), "test": Split(images[:8], labels[:8])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = training.run_experiment(config, data, progress=False)
    assert record["status"] == "ok" and set(record["accuracy"]) == {"test"}


# ------------------------------------------------------------- u4 F1: the folder's writer lock


def test_outputs_named_as_the_lock_or_the_marker_are_refused_new_or_not(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for name, what in ((LOCK_NAME, f"eqpdenet's writer lock of {folder}"),
                       (MARKER, "eqpdenet's folder marker")):
        with pytest.raises(OutputFolderError) as info:
            check_output_keeps(folder / name, "--json")
        assert str(info.value) == f"--json {folder / name}: would write a file named as {what}"
        (folder / name).write_text("")
        with pytest.raises(OutputFolderError) as info:
            check_output_keeps(folder / name, "--out")
        assert str(info.value) == f"--out {folder / name}: would replace {what}"
    link = tmp_path / "summary.json"  # a link leading to a lock: the file written is the lock
    link.symlink_to(folder / LOCK_NAME)
    with pytest.raises(OutputFolderError, match=re.escape(f"--json {link}: would replace "
                                                          f"eqpdenet's writer lock of {folder}")):
        check_output_keeps(link, "--json")


def test_evaluate_json_onto_a_sweeps_held_lock_is_refused_and_the_lock_kept(tmp_path, capsys,
                                                                             monkeypatch):
    """``atomic_write`` renamed the summary over the lock: its holder's flock stayed on the old
    inode, and a second sweep locked the new file and wrote the folder too."""
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4"])
    checkpoint = tmp_path / "model.pt"
    training.save_checkpoint(checkpoint, build_model(config.model), config)

    def loaded(*args, **kwargs):
        raise AssertionError("data was loaded: the evaluation began")

    monkeypatch.setattr(training, "prepare_data", loaded)
    sweep = tmp_path / "sweep"
    with claiming(sweep, "reproduce"):
        lock = sweep / LOCK_NAME
        before = os.stat(lock)
        assert main(["evaluate", str(checkpoint), "--json", str(lock)]) == 2
        err = capsys.readouterr().err
        assert f"error: --json {lock}: would replace eqpdenet's writer lock of {sweep}" in err
        after = os.stat(lock)
        assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)


# ------------------------------------------------------- u4 F2: benchmark --models fcnn fcnn


def test_benchmark_runs_and_names_a_model_given_twice_once(tmp_path, monkeypatch):
    swept = []
    monkeypatch.setattr(benchmark_module, "run_sweep",
                        lambda label, runs, *args, **options: swept.append((label, sorted(runs))))
    config = BenchmarkConfig(models={"fcnn": ["model.kind='fcnn'", "model.hidden=4"],
                                     "wide": ["model.kind='fcnn'", "model.hidden=8"]},
                             seeds=[0], checkpoint_seeds=[])
    config.base.scenarios = ["test"]
    benchmark_module.benchmark(config, tmp_path / "bench", models=["wide", "fcnn", "wide"],
                               progress=False, echo=lambda line: None)
    assert swept == [("benchmark wide, fcnn", ["fcnn-seed0", "wide-seed0"])]
