"""study, benchmark, reproduce, report, equivariance and figure on a data set of one's own (not
MNIST): what each command compares, refuses and names there (probe p1, round 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eqpdenet.app import equivariance_study, study
from eqpdenet.app.benchmark import benchmark, write_benchmark_report
from eqpdenet.app.cli import main
from eqpdenet.app.config import (
    BenchmarkConfig,
    ModelConfig,
    apply_overrides,
    to_dict,
    to_toml,
)
from eqpdenet.app.report import write_report
from eqpdenet.app.study import STAGES, Stage, run_study, study_base
from eqpdenet.errors import ConfigError, DataFileError
from study_helpers import fake_study_reproduce


def _npz(path: Path, *, train=40, test=10, side=8, channels=0, labels=(0, 1)) -> Path:
    """A small data file of the user's: ``train`` and ``test`` images of ``side`` pixels (with
    ``channels`` last where given), labels cycling through ``labels``."""
    rng = np.random.default_rng(0)
    shape = (side, side) + ((channels,) if channels else ())
    cycle = np.array(labels)
    np.savez(path, x_train=rng.integers(0, 256, (train, *shape), dtype=np.uint8),
             y_train=cycle[np.arange(train) % len(cycle)],
             x_test=rng.integers(0, 256, (test, *shape), dtype=np.uint8),
             y_test=cycle[np.arange(test) % len(cycle)])
    return path


def _own_base(dataset: str, validation: int = 10):
    return apply_overrides(study_base(hidden_sizes=(16,), seeds=(0,)), [
        f"base.data.dataset='{dataset}'", f"base.data.validation={validation}"])


def _rows(text: str, stage: str) -> list[list[str]]:
    section = text[text.index(f"## {stage} "):]
    section = section[:section.index("Chosen:")]
    return [line.split(" | ")[:2] for line in section.splitlines()
            if line.startswith("| ") and "candidate" not in line]


# ----------------------------------------------------------------------------- study


def test_the_standardize_stage_compares_raw_pixels_with_the_data_sets_own_statistics(
        tmp_path, monkeypatch):
    """On bars25.npz both rows trained with the data's own mean and std (standardize 'auto'
    overrode the stage's input_mean, input_std): a configuration compared with itself, under
    MNIST's question. Each candidate now states standardize; on MNIST the stage is as it was."""
    fake = fake_study_reproduce(monkeypatch)
    trained_with = {}

    def reproduce(config, folder, **kwargs):
        model = config.base.model
        trained_with[folder.name] = (model.standardize, model.input_mean, model.input_std)
        return study.reproduce.__wrapped__(config, folder, **kwargs)

    reproduce.__wrapped__ = study.reproduce
    monkeypatch.setattr(study, "reproduce", reproduce)
    out = tmp_path / "s"
    # a file that is there: the preflight refuses a data set that is not (round 18)
    run_study(out, base=_own_base(str(_npz(tmp_path / "bars25.npz"))), stages=[STAGES[3]],
              echo=lambda *a: None)
    text = (out / "study.md").read_text()
    assert ("Standardise the input pixels with the training split's own mean and std (not "
            "MNIST's, which are not this data set's)?") in text
    assert _rows(text, "standardize") == [
        ["| **standardized**", "(incumbent)"],
        ["| raw-pixels", "`base.model.standardize='fixed'`<br>`base.model.input_mean=0.0`<br>"
                         "`base.model.input_std=1.0`"]]
    # 'train' with the fields' defaults, which it replaces (round 11: the prototype's 0 and 1
    # were kept there and warned about as fields of no effect)
    assert sorted(trained_with.values()) == [("fixed", 0.0, 1.0), ("train", 0.1307, 0.3081)]
    assert len(fake) == 4  # both models, both rows
    assert text.splitlines()[2].endswith(
        "(equal scores: the name that sorts first). The input starts standardised with the "
        "training split's own pixel mean and std (`model.standardize = 'train'`).")

    run_study(tmp_path / "m", base=study_base(hidden_sizes=(16,), seeds=(0,)),
              stages=[STAGES[3]], echo=lambda *a: None)
    assert _rows((tmp_path / "m" / "study.md").read_text(), "standardize") == [
        ["| **raw-pixels**", "(incumbent)"],
        ["| standardized", "`base.model.input_mean=0.1307`<br>`base.model.input_std=0.3081`"]]


def test_a_candidate_that_sets_what_the_data_replaces_is_refused_before_any_work(tmp_path,
                                                                               monkeypatch):
    trained = fake_study_reproduce(monkeypatch)
    stage = Stage("mean", "shared", "?", {"half": ["base.model.input_mean=0.5"]})
    out = tmp_path / "s"
    with pytest.raises(ConfigError) as error:
        run_study(out, base=_own_base("/nowhere/bars25.npz"), stages=[stage],
                  echo=lambda *a: None)
    assert str(error.value) == (
        "invalid config: stage mean, candidate half: base.model.input_mean=0.5 has no effect on "
        "/nowhere/bars25.npz: model.standardize computes them from the training split there "
        "('train', or 'auto' on a data set outside MNIST's family), so the candidate would "
        "compare a configuration with itself")
    assert trained == [] and not out.exists()


def test_a_study_refused_on_its_data_writes_nothing_so_the_corrected_command_runs(
        tmp_path, monkeypatch, no_data):
    """It wrote study.json, its marker and runs/<fp>/ before the data checks: the corrected
    command was then refused as 'a study made with another configuration'."""
    data = _npz(tmp_path / "bars.npz")
    trained = fake_study_reproduce(monkeypatch)
    out = tmp_path / "s"
    with pytest.raises(ConfigError) as error:
        run_study(out, base=_own_base(str(data), validation=2000), stages=[STAGES[0]],
                  echo=lambda *a: None)
    assert str(error.value) == (f"run eqpdenet-h16-seed0: invalid config: data.validation: 2000 "
                                f"is not below the 40 training images of {data}")
    assert not out.exists() and trained == []
    odd = _npz(tmp_path / "odd.npz", labels=(0, 5))
    with pytest.raises(DataFileError, match=r"labels 0\.\.5 expected"):
        run_study(out, base=_own_base(str(odd)), stages=[STAGES[0]], echo=lambda *a: None)
    assert not out.exists() and trained == []
    run_study(out, base=_own_base(str(data)), stages=[STAGES[0]], echo=lambda *a: None)
    assert len(trained) == 4 and (out / "study.json").is_file()


def test_report_of_a_study_folder_says_which_folder_to_give(tmp_path, monkeypatch, capsys):
    fake_study_reproduce(monkeypatch)
    out = tmp_path / "s"
    chosen = run_study(out, base=_own_base(str(_npz(tmp_path / "bars25.npz"))),
                       stages=[STAGES[0]], echo=lambda *a: None)
    from eqpdenet.app.training import fingerprint

    assert main(["report", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"eqpdenet: error: {out} is the folder of a study: its report is {out / 'study.md'}, "
        f"which the study writes (run the study's command again to rewrite it: the runs done "
        f"are reused); report tables one configuration's runs: give its folder, the chosen "
        f"configuration's: eqpdenet report {out / 'runs' / fingerprint(chosen.base)} "
        f"(EQPDENET_DEBUG=1 shows the traceback)")


# ----------------------------------------------------------------------------- sweeps' refusals


def test_refused_sweeps_leave_no_folder(tmp_path, capsys, no_data):
    """A benchmark or reproduce refused by its preflight (here a validation split as large as
    the data's training split) left the folder it made, holding its marker and lock."""
    data = _npz(tmp_path / "bars.npz")
    config = BenchmarkConfig(models={"fcnn": ["model.kind='fcnn'", "model.hidden=4"]}, seeds=[0])
    config = apply_overrides(config, [f"base.data.dataset='{data}'", "base.data.validation=100"])
    with pytest.raises(ConfigError, match="data.validation: 100 is not below the 40 training"):
        benchmark(config, tmp_path / "b", progress=False, echo=lambda *a: None)
    assert not (tmp_path / "b").exists()
    for command in ("benchmark", "reproduce"):
        out = tmp_path / f"cli-{command}"
        assert main([command, "--set", f"base.data.dataset='{data}'", "--set",
                     "base.data.validation=100", "--out", str(out), "--no-progress"]) == 2
        assert "data.validation: 100 is not below" in capsys.readouterr().err
        assert not out.exists()


def test_a_curve_shift_beyond_the_image_is_refused_before_any_run(tmp_path, no_data):
    data = _npz(tmp_path / "bars.npz")
    config = BenchmarkConfig(models={"fcnn": ["model.kind='fcnn'", "model.hidden=4"]}, seeds=[0])
    config = apply_overrides(config, [f"base.data.dataset='{data}'", "curves.shifts=[0.0, 8.0]"])
    with pytest.raises(ConfigError) as error:
        benchmark(config, tmp_path / "b", progress=False, echo=lambda *a: None)
    assert str(error.value) == (f"invalid config: curves.shifts[1] = 8 pixels moves the whole "
                                f"8x8 image of {data} out of its frame; use shifts below 8")
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- equivariance


def test_the_resolution_study_has_no_mnist_rows_without_mnist():
    """Its 'mnist' rows held the smooth inputs upsampled when MNIST could not be read."""
    grid = dict(angles=[90], scales=[], shifts=[], factors=[1, 2], dts=[0.1], steps=[1],
                count=4, stencils=["central"])
    plan = equivariance_study.StudyPlan(
        quick=True, T=0.2, dt=0.1, grid=grid, ck_maps={}, models={}, own=[],
        inputs={"smooth": equivariance_study.smooth_inputs(4)})
    result = equivariance_study.run_study(plan, echo=lambda *a: None)
    assert {r.inputs for r in result.records} == {"smooth"}
    assert {r.factor for r in result.select(study="resolution")} == {1, 2}


# ----------------------------------------------------------------------------- reports


def _sweep_record(model, seed, test, dataset):
    return {"model": model, "hidden": 16, "seed": seed, "status": "ok", "params": 100,
            "accuracy": {"test": test, "iso": test - 10, "sca": test - 20},
            "config": {"data": {"dataset": dataset, "train_subset": 0, "test_subset": 0}}}


def test_a_report_on_another_data_set_leaves_the_papers_columns_out(tmp_path):
    folder = tmp_path / "sweep"
    folder.mkdir()
    records = [_sweep_record(m, s, 70.0 + s, "/data/rgb25.npz") for m in ("eqpdenet", "fcnn")
               for s in (0, 1)]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report(folder)
    text = (folder / "table.md").read_text()
    assert text.splitlines()[0] == (
        "Accuracy in percent on rgb25.npz test, `iso` and `sca`: mean (sample std) over the "
        "runs of each cell. The paper's columns (Lagrave & Riou 2021, Tables 1-2, on ROTMNIST) "
        "are left out: these runs were made on another data set, which the paper's numbers do "
        "not describe. From `results.jsonl` beside this file (4 runs; no `config.toml`: each "
        "run's configuration is in its record).")
    assert "paper" not in text.split("\n", 1)[1] and "Δ" not in text
    assert "| 16 | 100 | 2 | 70.5 (0.7) | 60.5 (0.7) | 50.5 (0.7) |" in text
    assert "| h | test ours | iso ours | sca ours |" in text
    assert "| 16 | +0.0 (0.0) | +0.0 (0.0) | +0.0 (0.0) |" in text
    for record in records:
        record["config"]["data"]["dataset"] = "rotmnist"
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report(folder)
    text = (folder / "table.md").read_text()
    assert "paper = Lagrave & Riou 2021, Tables 1-2" in text and "test paper" in text


def _benchmark_record(entry, model: ModelConfig, dataset: str, change: float) -> dict:
    return {"key": f"{entry}-seed0", "entry": entry, "model": model.kind, "hidden": 16, "seed": 0,
            "status": "ok", "accuracy": {"test": 60.0}, "params": 1000, "train_seconds": 60.0,
            "eval_seconds": 1.0, "environment": {"cpu_capability": "AVX2"},
            "config": {"data": {"dataset": dataset, "test_subset": 0, "train_subset": 0},
                       "model": to_dict(model)},
            "robustness": {"images": 100, "angles": [0.0], "rotation": [50.0], "scales": [1.0],
                           "scale": [50.0], "shifts": [0.0], "shift": [50.0],
                           "logit_change": {"90": change, "37": 0.4},
                           "round_trip_change": {"90": 0.0, "37": 0.1}}}


def test_the_benchmark_table_names_its_data_and_the_models_not_invariant_at_its_size(tmp_path):
    """The table said 'test digits' of any data set and never named it; a G-CNN's rot90 change
    on 25x25 images (a 2x2 pooling meets an odd size: 0.03-0.08) read as rounding."""
    from eqpdenet.app.benchmark import benchmark_fingerprint

    dataset = "/data/bars25.npz"
    config = BenchmarkConfig(models={"fcnn": ["model.kind='fcnn'"], "gcnn": ["model.kind='gcnn'"]},
                             seeds=[0])
    config = apply_overrides(config, [f"base.data.dataset='{dataset}'"])
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "config.toml").write_text(to_toml(config))
    records = [_benchmark_record("fcnn", ModelConfig(kind="fcnn", image_size=25, classes=2),
                                 dataset, 0.5),
               _benchmark_record("gcnn", ModelConfig(kind="gcnn", image_size=25, classes=2),
                                 dataset, 0.05)]
    for record in records:
        record["base_fingerprint"] = benchmark_fingerprint(config)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_benchmark_report(folder)
    lines = (folder / "table.md").read_text().splitlines()
    assert lines[0].startswith(
        "Accuracy in percent, mean (sample std) over seeds; scenarios on the whole test set of "
        "bars25.npz, curves and logit changes (relative: ||l(g f) − l(f)|| / ||l(f)|| over the "
        "batch) on the first 100 test images (see `config.toml`).")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines
            if line.startswith("| ") and "---" not in line}
    assert rows["fcnn"][5] == "5.0e-01" and rows["gcnn"][5] == "5.0e-02 [1]"
    assert lines[-1] == (
        "[1] gcnn: not invariant under quarter turns at 25x25 (`quarter_turn_invariant` is "
        "False there: a 2x2 pooling meets a map of odd size, and a quarter turn moves the row "
        "and column it drops), so its rot90 logit change is the model's own, not rounding.")


# ----------------------------------------------------------------------------- figure, describe


def test_figure_draws_a_checkpoint_on_its_own_test_images(tmp_path, monkeypatch, capsys):
    """A checkpoint of 3x8x8 images was drawn on an MNIST digit (1x28x28), or failed asking for
    MNIST's files; describe --out used its own test images."""
    from eqpdenet.app import figures

    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))  # no MNIST
    data = _npz(tmp_path / "rgb8.npz", channels=3)
    assert main(["train", "--model", "eqpdenet", "--hidden", "4", "--set",
                 f"data.dataset='{data}'", "--set", "train.epochs=1", "--set",
                 "train.batch_size=20", "--out", str(tmp_path / "ck"), "--no-progress"]) == 0
    checkpoint = str(tmp_path / "ck" / "model.pt")
    drawn = {}

    def figure_diagram(image, pde, path, **options):
        drawn.update(shape=tuple(image.shape), label=options["image_label"])
        return 0.0

    monkeypatch.setattr(figures, "figure_diagram", figure_diagram)
    capsys.readouterr()
    assert main(["figure", "diagram", "--checkpoint", checkpoint, "--pde", "0", "--sample", "2",
                 "--out", str(tmp_path / "f.png")]) == 0
    assert drawn == {"shape": (1, 3, 8, 8), "label": "rgb8.npz test #2"}
    assert main(["figure", "diagram", "--checkpoint", checkpoint, "--pde", "0", "--sample",
                 "10", "--out", str(tmp_path / "f.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        "eqpdenet: error: --sample 10: the test split of rgb8.npz has images 0 ... 9 "
        "(EQPDENET_DEBUG=1 shows the traceback)")


def test_the_diagram_of_an_image_of_several_channels_measures_every_channel():
    """It drew the first channel and measured its largest difference there alone: 0 for an
    image whose first channel is blank."""
    from eqpdenet.analysis.references import heat_pde
    from eqpdenet.app.figures import diagram_arrays

    image = torch.zeros(1, 3, 16, 16)
    image[:, 1:, 6:10, 4:12] = 1.0
    panels = diagram_arrays(image, heat_pde(T=1.0), angle=30.0)
    assert panels["I0"].shape == (16, 16) and float(panels["I0"].abs().max()) == 0.0
    assert float(panels["max_difference"]) > 1e-3


@pytest.mark.parametrize("command, option, words", [
    ("describe", "--samples", "test images to evolve (indices): MNIST's digits for a checkpoint "
                              "of MNIST's family, else its own data set's"),
    ("figure", "--sample", "test image (index): MNIST's for the heat equation and for a "
                           "checkpoint of MNIST's family, else the checkpoint's own data set's"),
])
def test_help_says_whose_test_images(command, option, words, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert words in " ".join(capsys.readouterr().out.split())
