"""The preflight of a sweep (and of ``train``) checks every run at its data set's size, read from
the file's headers before any run trains; ``--quick``'s subsets fit a small data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eqpdenet import ConfigError
from eqpdenet.app import preflight
from eqpdenet.app.cli import _sweep_config, build_parser, main, quick_benchmark, quick_profile
from eqpdenet.app.config import BenchmarkConfig, ExperimentConfig, ReproduceConfig, apply_overrides
from eqpdenet.data.datasets import dataset_shape

LIFTED_3_STAGES = ["model.kind='lifted_pde'", "model.lifted_pde.channels=[4,4,4]",
                   "model.lifted_pde.blocks=[1,1,1]", "model.lifted_pde.orientations=4"]


def write_npz(path: Path, size=16, train=300, test=100, classes=10, channels=None) -> Path:
    rng = np.random.default_rng(0)
    shape = (size, size) if channels is None else (size, size, channels)
    np.savez(path, x_train=rng.integers(0, 256, (train, *shape), dtype=np.uint8),
             y_train=np.arange(train) % classes,
             x_test=rng.integers(0, 256, (test, *shape), dtype=np.uint8),
             y_test=np.arange(test) % classes)
    return path


def config(data: Path, *assignments: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), [f"data.dataset='{data}'", "train.epochs=1",
                                                *assignments])


def test_each_run_is_built_at_its_data_sets_image_size(tmp_path):
    """A lifted model of 3 stages needs 17x17 images: on a data set of 16x16 images it is
    refused before any run, naming the run and the data's size; at the configured 28x28 it
    passed, and five runs trained before it failed."""
    data = write_npz(tmp_path / "s16.npz")
    runs = {"fcnn-seed0": config(data, "model.kind='fcnn'", "model.hidden=16"),
            "lifted-seed0": config(data, *LIFTED_3_STAGES)}
    preflight.preflight(runs, None)  # without at_data: at the configured size, as before
    with pytest.raises(ConfigError) as info:
        preflight.preflight(runs, None, at_data=True)
    assert str(info.value).startswith(
        f"run lifted-seed0, on the 16x16 images of {data}: invalid config: image_size: 16 pixels "
        f"is too small for this model: it needs images of at least 17x17")
    # the same model fits images of 32x32
    preflight.preflight({"lifted-seed0": config(write_npz(tmp_path / "s32.npz", size=32),
                                                *LIFTED_3_STAGES)}, None, at_data=True)


def test_the_model_takes_the_datas_channels_and_classes(tmp_path):
    data = write_npz(tmp_path / "rgb.npz", size=12, classes=4, channels=3)
    shape = dataset_shape(str(data))
    assert (shape.image_shape, shape.train, shape.test, shape.classes) == ((3, 12, 12), 300, 100, 4)
    run = preflight.at_data_size(config(data, "model.kind='cnn'"), shape)
    assert (run.model.image_size, run.model.in_channels, run.model.classes) == (12, 3, 4)
    model = preflight._model(run)
    assert model.in_channels == 3 and model.image_size == 12


def test_the_memory_estimate_is_at_the_datas_image_size(tmp_path, monkeypatch):
    """Images of 64x64 keep 5.2 times the states of 28x28: the estimate is made at 64."""
    data = write_npz(tmp_path / "s64.npz", size=64, train=200, test=20)
    run = config(data, "model.hidden=8", "train.batch_size=200")
    at_28 = preflight.training_bytes(run, images=200)
    at_64 = preflight.training_bytes(preflight.at_data_size(run, dataset_shape(str(data))),
                                     images=200)
    assert at_64 == pytest.approx(at_28 * 64**2 / 28**2, rel=0.01)
    monkeypatch.setattr(preflight, "available_memory", lambda device: (at_28 + at_64) // 2)
    preflight.preflight({"eqpdenet-seed0": run}, None)  # fits at the configured 28x28
    with pytest.raises(ConfigError, match=r"^run eqpdenet-seed0, on the 64x64 images of .*s64.npz: "
                                          r"invalid config: training would need about"):
        preflight.preflight({"eqpdenet-seed0": run}, None, at_data=True)


def test_subsets_larger_than_the_data_set_are_refused_before_training(tmp_path):
    data = write_npz(tmp_path / "s16.npz")
    with pytest.raises(ConfigError, match=r"^run fcnn-seed0: invalid config: data.train_subset: "
                                          r"1000 is more than the 250 training images of "
                                          r".*s16.npz \(50 held out for validation\); use 0 for all"):
        preflight.preflight({"fcnn-seed0": config(data, "model.kind='fcnn'", "data.validation=50",
                                                  "data.train_subset=1000")}, None, at_data=True)
    with pytest.raises(ConfigError, match=r"data.test_subset: 500 is more than the 100 test images"):
        preflight.preflight([config(data, "model.kind='fcnn'", "data.test_subset=500")], None,
                            at_data=True)
    with pytest.raises(ConfigError, match=r"the models take square images; .*s28x36.npz has 28x36"):
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "s28x36.npz", x_train=rng.random((20, 28, 36)), y_train=np.arange(20) % 2,
                 x_test=rng.random((4, 28, 36)), y_test=np.arange(4) % 2)
        preflight.preflight([config(tmp_path / "s28x36.npz")], None, at_data=True)
    # the data's number of images sizes the batch the preflight checks: 300 images, batches of 299
    # leave one image, joined to the batch before (no batch of 1 for the CNN's batch norm)
    preflight.preflight([config(data, "model.kind='cnn'", "train.batch_size=299")], None,
                        at_data=True)


def test_benchmark_refuses_a_model_its_data_cannot_take_before_any_run_trains(tmp_path, capsys):
    data = write_npz(tmp_path / "s16.npz")
    lifted = ", ".join(f'"{a}"' for a in LIFTED_3_STAGES)
    (tmp_path / "bench.toml").write_text(f"""seeds = [0]
checkpoint_seeds = [0]
[base.data]
dataset = "{data}"
[base.train]
epochs = 1
[models]
fcnn = ["model.kind='fcnn'", "model.hidden=8"]
lifted = [{lifted}]
""")
    out = tmp_path / "out"
    assert main(["benchmark", "--config", str(tmp_path / "bench.toml"), "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert ("eqpdenet: error: run lifted-seed0, on the 16x16 images of "
            f"{data}: invalid config: image_size: 16 pixels is too small") in err
    assert not (out / "runs").exists() or not list((out / "runs").iterdir())  # fcnn never trained


# ----------------------------------------------------------------------- --quick on small data


def _quick(argv, cls, profile):
    return _sweep_config(build_parser().parse_args(argv), cls, profile)


def test_quick_uses_all_the_images_of_a_data_set_smaller_than_its_subsets(tmp_path):
    small = write_npz(tmp_path / "s16.npz")
    chosen = _quick(["benchmark", "--quick", "--set", f"base.data.dataset={small}"],
                    BenchmarkConfig, quick_benchmark)
    assert (chosen.base.data.train_subset, chosen.base.data.test_subset) == (0, 0)
    chosen = _quick(["reproduce", "--quick", "--set", f"base.data.dataset={small}"],
                    ReproduceConfig, quick_profile)
    assert (chosen.base.data.train_subset, chosen.base.data.test_subset) == (0, 0)
    # a data set larger than the subsets keeps them; ROTMNIST too (12,000 / 50,000)
    large = write_npz(tmp_path / "large.npz", size=8, train=1200, test=600)
    chosen = _quick(["benchmark", "--quick", "--set", f"base.data.dataset={large}"],
                    BenchmarkConfig, quick_benchmark)
    assert (chosen.base.data.train_subset, chosen.base.data.test_subset) == (1000, 500)
    chosen = _quick(["reproduce", "--quick"], ReproduceConfig, quick_profile)
    assert (chosen.base.data.train_subset, chosen.base.data.test_subset) == (4000, 5000)


def test_a_subset_the_user_sets_stays_and_is_refused_before_any_run(tmp_path, capsys):
    small = write_npz(tmp_path / "s16.npz")
    argv = ["benchmark", "--quick", "--set", f"base.data.dataset={small}", "--set",
            "base.data.train_subset=1000"]
    assert _quick(argv, BenchmarkConfig, quick_benchmark).base.data.train_subset == 1000
    out = tmp_path / "out"
    assert main([*argv, "--models", "fcnn", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (f"eqpdenet: error: run fcnn-seed0: invalid config: data.train_subset: 1000 is more "
            f"than the 300 training images of {small}; use 0 for all") in err
    assert "runs done" not in capsys.readouterr().out


def test_quick_benchmark_runs_on_a_small_data_set(tmp_path, capsys):
    small = write_npz(tmp_path / "s16.npz")
    out = tmp_path / "out"
    assert main(["benchmark", "--quick", "--set", f"base.data.dataset={small}", "--models", "fcnn",
                 "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    record = json.loads((out / "runs" / "fcnn-seed0.json").read_text())
    assert record["status"] == "ok"
    assert (record["config"]["data"]["train_subset"], record["config"]["data"]["test_subset"]) == (0, 0)


def test_the_header_reader_says_what_loading_says_about_the_labels(tmp_path):
    """A stray label 2**32 - 1 is loading's 'the largest label is ...', not a model of four
    billion classes refused for memory; an empty split is 'holds no labels', not a subset
    error."""
    import numpy as np

    from eqpdenet.data.datasets import dataset_shape, load_dataset
    from eqpdenet.errors import DataFileError

    images = np.zeros((4, 8, 8), dtype=np.uint8)
    stray = tmp_path / "stray.npz"
    np.savez(stray, x_train=images, y_train=np.array([0, 1, 0, 2**32 - 1], dtype=np.int64),
             x_test=images, y_test=np.array([0, 1, 0, 1]))
    empty = tmp_path / "empty.npz"
    np.savez(empty, x_train=images[:0], y_train=np.zeros(0, dtype=np.int64), x_test=images[:0],
             y_test=np.zeros(0, dtype=np.int64))
    for path, message in [(stray, r"the largest label is 4294967295"),
                          (empty, r"a split holds no labels \(no images\)")]:
        with pytest.raises(DataFileError, match=message) as from_headers:
            dataset_shape(str(path))
        with pytest.raises(DataFileError) as from_loading:
            load_dataset(str(path))
        assert str(from_headers.value) == str(from_loading.value)
