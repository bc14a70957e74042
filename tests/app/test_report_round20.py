"""Round 20 of the paper reproduction and its report (an outside probe):

* a non-zero ``data.validation`` (training images held out, never trained on) is named in the
  report's header beside ``data.train_subset`` (the table was set against the paper's with no
  word that its runs trained on 1,000 of the 12,000 digits);
* a checkpoint of a ``checkpoint_seeds`` run that is gone is refused, or with
  ``--rerun-changed`` made again (only runs of seeds added to ``checkpoint_seeds`` were: a lost
  one stayed lost, "0 to go");
* a run record whose status is none a run writes (``"OK"``) is refused naming the record (it
  was tabled as a failed run and its accuracies dropped).
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from eqpdenet.app import benchmark as benchmark_module
from eqpdenet.app import sweeps
from eqpdenet.app.config import (
    BenchmarkConfig,
    ReproduceConfig,
    apply_overrides,
    to_dict,
    to_toml,
)
from eqpdenet.app.report import RUN_STATUSES, check_records, subset_note
from eqpdenet.app.runstore import save_run
from eqpdenet.app.sweeps import grid, run_key
from eqpdenet.app.training import fingerprint
from eqpdenet.errors import ConfigError, DataFileError
from helpers import error_line, report_folder
from study_helpers import checkpointing_sweeps


def _paper_folder(path: Path, config: ReproduceConfig, **extra) -> Path:
    """A finished reproduce folder of ``config`` (FCNN h = 16 runs: config.toml, run files,
    results.jsonl), every run successful (``extra`` overrides fields of every record)."""
    records = [{"key": run_key(run.model.kind, run.model.hidden, run.train.seed),
                "model": run.model.kind, "hidden": run.model.hidden, "seed": run.train.seed,
                "status": "ok", "params": 13002,  # FCNN h = 16's: the paper's count
                "accuracy": {"test": 90.0, "iso": 80.0, "sca": 70.0}, "config": to_dict(run),
                "base_fingerprint": fingerprint(config.base)} | extra
               for run in grid(config)]
    path.mkdir(parents=True)
    (path / "config.toml").write_text(to_toml(config))
    for record in records:
        save_run(path, record["key"], record)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _data(**fields) -> dict:
    return {"config": {"data": fields}}


# ----------------------------------------------------------------------------- F1: validation


@pytest.mark.parametrize("overrides, note", [
    (["base.data.validation=11000", "base.data.test_subset=400"],
     " Runs used only the first 400 test images (`data.test_subset`). Runs had 11,000 training "
     "images held out for validation (`data.validation`)."),
    (["base.data.validation=2000", "base.data.train_subset=4000"],
     " Runs used only the first 4,000 training images (`data.train_subset`). Runs had 2,000 "
     "training images held out for validation (`data.validation`)."),
    (["base.data.test_subset=400"], " Runs used only the first 400 test images (`data.test_subset`)."),
])
def test_the_paper_report_names_training_images_held_out_for_validation(tmp_path, capsys,
                                                                        overrides, note):
    """The probe's sweep trained on 1,000 of the 12,000 digits (data.validation = 11000): its
    header named only the test subset."""
    config = apply_overrides(ReproduceConfig(models=["fcnn"], hidden_sizes=[16], seeds=[0, 1]),
                             overrides)
    folder = _paper_folder(tmp_path / "p", config)
    assert report_folder(folder, capsys) == (0, "")
    header = (folder / "table.md").read_text().split("\n\n")[0]
    assert header.endswith("From `results.jsonl` beside this file (2 runs; config in "
                           "`config.toml`)." + note)


def test_the_benchmark_report_names_training_images_held_out_for_validation(tmp_path, capsys):
    recipe = ["model.kind='fcnn'", "model.hidden=16", "train.epochs=2"]
    config = BenchmarkConfig(models={"held": [*recipe, "data.validation=2000"], "all": recipe},
                             seeds=[0])
    curves = {"images": 8, "angles": [0.0, 90.0], "rotation": [90.0, 40.0], "scales": [1.0],
              "scale": [90.0], "shifts": [0.0, 1.0], "shift": [90.0, 80.0],
              "logit_change": {"90": 0.5}, "round_trip_change": {"90": 0.0}}
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "config.toml").write_text(to_toml(config))
    records = []
    for entry in ("held", "all"):
        run = config.experiment(entry, 0)
        records.append({"key": f"{entry}-seed0", "entry": entry, "model": "fcnn", "hidden": 16,
                        "seed": 0, "status": "ok", "params": 100, "accuracy": {"test": 90.0},
                        "train_seconds": 60.0, "eval_seconds": 1.0, "robustness": curves,
                        "base_fingerprint": benchmark_module.benchmark_fingerprint(config),
                        "config": to_dict(run)})
        save_run(folder, records[-1]["key"], records[-1])
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert report_folder(folder, capsys) == (0, "")
    assert (" Runs had 2,000 training images held out for validation (`data.validation`). "
            "Train min: ") in (folder / "table.md").read_text()


def test_subset_note_names_validation_with_the_training_set_only():
    records = [_data(validation=2000), _data(validation=11000, test_subset=400), _data()]
    assert subset_note(records) == (
        " Runs used only the first 400 test images (`data.test_subset`). Runs had 2,000 or "
        "11,000 training images held out for validation (`data.validation`).")
    # the benchmark's call: its test subsets are named elsewhere in its header
    assert subset_note(records, ["train_subset"]) == (
        " Runs had 2,000 or 11,000 training images held out for validation (`data.validation`).")
    assert subset_note(records, ["test_subset"]) == (
        " Runs used only the first 400 test images (`data.test_subset`).")
    # none held out (0, or a record from before the field): nothing said, as the committed tables
    assert subset_note([_data(validation=0), _data(), {"config": None}]) == ""


# ----------------------------------------------------------------------------- F2: lost checkpoints


@pytest.fixture
def fake_runs(monkeypatch):
    checkpointing_sweeps(monkeypatch)


def _sweep(out: Path, seeds: str = "[0, 1]", checkpoint_seeds: str = "[0]") -> ReproduceConfig:
    config = apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[4]",
                                                 f"seeds={seeds}",
                                                 f"checkpoint_seeds={checkpoint_seeds}"])
    sweeps.reproduce(config, out, progress=False, echo=lambda line: None)
    return config


def test_a_lost_checkpoint_of_a_checkpoint_seed_is_refused_or_made_again(tmp_path, fake_runs):
    """Its run was "done, 0 to go", with or without --rerun-changed, the file never made again."""
    out = tmp_path / "sweep"
    config = _sweep(out)
    (out / "checkpoints" / "fcnn-h4-seed0.pt").unlink()
    toml = (out / "config.toml").read_text()
    assert sweeps.runs_without_checkpoints(out, {"fcnn-h4-seed0"}) == ["fcnn-h4-seed0"]
    with pytest.raises(ConfigError) as refusal:
        sweeps.reproduce(config, out, progress=False, echo=lambda line: None)
    assert str(refusal.value) == (
        f"invalid config: checkpoint_seeds: {out} holds 1 finished run(s) of those seeds "
        f"without a checkpoint (fcnn-h4-seed0; saved with a checkpoint whose file, "
        f"checkpoints/<key>.pt, has gone since: deleted or lost); run again with --rerun-changed "
        f"to set them aside and run them anew with their checkpoints, or leave their seeds out "
        f"of checkpoint_seeds")
    assert (out / "config.toml").read_text() == toml

    lines = []
    sweeps.reproduce(config, out, progress=False, echo=lines.append, rerun_changed=True)
    assert lines[0].startswith("1 finished run(s) without the checkpoint checkpoint_seeds asks "
                               "for (fcnn-h4-seed0): set aside in ")
    assert lines[1] == f"reproduce: 1 runs done, 1 to go -> {out / 'results.jsonl'}"
    assert (out / "checkpoints" / "fcnn-h4-seed0.pt").read_bytes() == b"model"
    (aside,) = (out / "superseded").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["fcnn-h4-seed0.json", "results.jsonl"]


def test_lost_and_never_saved_checkpoints_are_named_apart(tmp_path, fake_runs):
    out = tmp_path / "sweep"
    config = _sweep(out, seeds="[0, 1, 2]")
    (out / "checkpoints" / "fcnn-h4-seed0.pt").unlink()
    with pytest.raises(ConfigError) as refusal:
        sweeps.reproduce(apply_overrides(config, ["checkpoint_seeds=[0, 2]"]), out,
                         progress=False, echo=lambda line: None)
    assert str(refusal.value) == (
        f"invalid config: checkpoint_seeds: {out} holds 2 finished run(s) of those seeds "
        f"without a checkpoint (fcnn-h4-seed2; made before their seed was in checkpoint_seeds) "
        f"and (fcnn-h4-seed0; saved with a checkpoint whose file, checkpoints/<key>.pt, has gone "
        f"since: deleted or lost); run again with --rerun-changed to set them aside and run "
        f"them anew with their checkpoints, or leave their seeds out of checkpoint_seeds")


def test_a_folder_whose_config_toml_has_no_checkpoint_seeds_is_still_not_judged(tmp_path,
                                                                               fake_runs):
    """The committed study folders are kept without their checkpoints and resume as they are."""
    out = tmp_path / "sweep"
    config = _sweep(out)
    (out / "checkpoints" / "fcnn-h4-seed0.pt").unlink()
    text = (out / "config.toml").read_text()
    (out / "config.toml").write_text(text.replace("checkpoint_seeds = [0]\n", ""))
    assert "checkpoint_seeds" not in tomllib.loads((out / "config.toml").read_text())
    assert sweeps.runs_without_checkpoints(out, {"fcnn-h4-seed0"}) == []
    lines = []
    sweeps.reproduce(config, out, progress=False, echo=lines.append)
    assert lines == [f"reproduce: 2 runs done, 0 to go -> {out / 'results.jsonl'}"]


def test_a_folder_kept_without_its_checkpoints_folder_is_not_judged_for_lost_files(tmp_path,
                                                                                  fake_runs):
    """A study folder copied without checkpoints/ (tests/app/test_study_and_report.py), or the
    committed results/study, whose config.toml the first resume rewrote with today's
    checkpoint_seeds = [0]: the next resume must find its runs done. Seeds added to
    checkpoint_seeds are still refused."""
    out = tmp_path / "sweep"
    config = _sweep(out)
    shutil.rmtree(out / "checkpoints")
    assert sweeps.runs_without_checkpoints(out, {"fcnn-h4-seed0"}) == []
    lines = []
    sweeps.reproduce(config, out, progress=False, echo=lines.append)
    assert lines == [f"reproduce: 2 runs done, 0 to go -> {out / 'results.jsonl'}"]
    assert sweeps.runs_without_checkpoints(out, {"fcnn-h4-seed0", "fcnn-h4-seed1"}) == [
        "fcnn-h4-seed1"]


# ----------------------------------------------------------------------------- F3: status


def test_every_status_a_writer_sets_is_one_the_report_accepts():
    """A status added to a writer (training's run_experiment, runstore's non-finite results)
    without RUN_STATUSES would make the report refuse every such run."""
    app = Path(sweeps.__file__).parent
    written = set()
    for name in ("training.py", "runstore.py", "sweeps.py", "benchmark.py", "workers.py"):
        # status="diverged" (record.update) and record["status"] = "ok"
        written |= set(re.findall(r'status(?:"\])?\s*=\s*"(\w*)"', (app / name).read_text()))
    assert written == {"ok", "diverged"}
    assert set(RUN_STATUSES) == written


@pytest.mark.parametrize("status", ["OK", "failed", "done", ""])
def test_a_status_no_run_writes_is_refused_naming_the_record(tmp_path, capsys, status):
    """"OK" was tabled as "6 runs, 1 of them failed (...: OK)", its accuracies dropped, exit 0."""
    config = ReproduceConfig(models=["fcnn"], hidden_sizes=[16], seeds=[0, 1])
    folder = _paper_folder(tmp_path / "p", config)
    record = json.loads((folder / "runs" / "fcnn-h16-seed1.json").read_text())
    save_run(folder, "fcnn-h16-seed1", record | {"status": status})
    code, err = report_folder(folder, capsys)
    assert code == 2
    assert error_line(err) == (
        f"{folder}/results.jsonl: record 2 (fcnn-h16-seed1): status is {status!r}, not a run's "
        f"status ('ok' or 'diverged'); to rerun it, delete both runs/fcnn-h16-seed1.json (if "
        f"there is one) and its line in results.jsonl, then rerun the sweep's command")
    assert not (folder / "table.md").exists()


def test_a_diverged_run_is_still_counted_as_failed():
    record = {"model": "fcnn", "hidden": 16, "seed": 0, "status": "diverged", "error": "nan"}
    assert check_records([record]) == [record]
    with pytest.raises(DataFileError) as refusal:
        check_records([record | {"status": "Diverged"}], "results.jsonl")
    assert str(refusal.value) == (
        "results.jsonl: record 1 (fcnn-h16-seed0): status is 'Diverged', not a run's status "
        "('ok' or 'diverged'); to rerun it, delete both runs/fcnn-h16-seed0.json (if there is "
        "one) and its line in results.jsonl, then rerun the sweep's command")
