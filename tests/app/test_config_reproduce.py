"""What ``reproduce`` (and its sibling ``benchmark``) accept: configurations that describe runs as
they are made.

* ``models`` of the paper's two kinds only: another kind trained, then the report tabled
  PAPER_MODELS alone (``models=['cnn']``: a table without a row, exit 0; ``cnn-h8`` and
  ``cnn-h16`` the same run twice, CNN taking no hidden size);
* the fields of ``base`` that the grid sets in every run (``base.model.kind``,
  ``base.model.hidden``, ``base.train.seed``; the benchmark's ``base.train.seed`` and an
  entry's ``train.seed``) at their defaults: a value there was recorded in ``config.toml`` and
  in the base fingerprint, used by no run, and then refused every resume of a finished folder;
* ``checkpoint_seeds`` grown on a finished folder: "done, 0 to go" while the rewritten
  ``config.toml`` claimed checkpoints that did not exist.
"""

import json
import tomllib

import pytest

from eqpdenet.app import benchmark as benchmark_module
from eqpdenet.app import config as config_module
from eqpdenet.app import report as report_module
from eqpdenet.app import sweeps
from eqpdenet.app.config import (
    BenchmarkConfig,
    ReproduceConfig,
    apply_overrides,
    load_toml,
    to_dict,
    to_toml,
)
from eqpdenet.errors import ConfigError, DataFileError
from study_helpers import checkpointing_runner, checkpointing_sweeps

# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("models, index, kind", [
    ("['cnn']", 0, "cnn"), ("['eqpdenet', 'cnn']", 1, "cnn"), ("['fcnn', 'lifted_pde']", 1, "lifted_pde"),
    ("['resnet']", 0, "resnet")])
def test_reproduce_refuses_kinds_outside_the_papers_tables(models, index, kind):
    with pytest.raises(ConfigError) as refusal:
        apply_overrides(ReproduceConfig(), [f"models={models}"])
    assert str(refusal.value) == (
        f"invalid config: models[{index}]: '{kind}' is not a model of the paper's tables; "
        f"reproduce runs 'eqpdenet' and 'fcnn' (compare other kinds with `eqpdenet benchmark`)")


def test_reproduce_refuses_repeated_models_and_hidden_sizes():
    with pytest.raises(ConfigError, match=r"^invalid config: models: must be distinct, got "
                                          r"\['fcnn', 'fcnn'\]$"):
        apply_overrides(ReproduceConfig(), ["models=['fcnn', 'fcnn']"])
    with pytest.raises(ConfigError, match=r"^invalid config: hidden_sizes: must be distinct, "
                                          r"got \[16, 16\]$"):
        apply_overrides(ReproduceConfig(), ["hidden_sizes=[16, 16]"])
    assert apply_overrides(ReproduceConfig(), ["models=['fcnn', 'eqpdenet']"]).models == \
        ["fcnn", "eqpdenet"]


def test_the_kinds_reproduce_runs_are_those_the_report_tables():
    assert config_module.PAPER_MODELS == report_module.PAPER_MODELS == ("eqpdenet", "fcnn")


def record(model: str, hidden: int, seed: int, score: float) -> dict:
    return {"model": model, "hidden": hidden, "seed": seed, "status": "ok", "params": 100,
            "accuracy": {"test": score, "iso": score - 1, "sca": score - 2},
            "key": f"{model}-h{hidden}-seed{seed}"}


def write_results(folder, records) -> None:
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_report_of_a_folder_without_the_papers_models_is_refused_not_an_empty_table(tmp_path):
    # a folder made before models=['cnn'] was refused
    write_results(tmp_path / "cnn", [record("cnn", 8, 0, 90.0), record("cnn", 16, 0, 90.0)])
    with pytest.raises(DataFileError) as refusal:
        report_module.write_report(tmp_path / "cnn")
    assert str(refusal.value).endswith(
        "its runs are of cnn (2 runs), none of the paper's models (eqpdenet, fcnn), the only "
        "ones this report tables; compare other kinds with `eqpdenet benchmark`")
    assert not (tmp_path / "cnn" / "table.md").exists()


def test_a_report_names_the_runs_it_leaves_out_of_its_tables(tmp_path):
    folder = tmp_path / "mixed"
    write_results(folder, [record("eqpdenet", 16, 0, 95.0), record("eqpdenet", 16, 1, 96.0),
                           record("cnn", 16, 0, 90.0)])
    report_module.write_report(folder)
    text = (folder / "table.md").read_text()
    assert ("Runs of cnn (1 runs) are not in the tables, which hold the paper's models "
            "(EqPdeNet, FCNN) only.") in text.split("\n\n")[0]
    assert "| 16 | 100 [paper: 13033] | 2 | " in text  # the EqPdeNet row, of its two runs


# ----------------------------------------------------------------------------- grid fields


@pytest.mark.parametrize("assignment, message", [
    ("base.train.seed=5", "base.train.seed: 5 is never used: the grid sets each run's seed "
                          "from seeds; set seeds instead (leave base.train.seed out)"),
    ("base.model.hidden=64", "base.model.hidden: 64 is never used: the grid sets each run's "
                             "hidden from hidden_sizes; set hidden_sizes instead (leave "
                             "base.model.hidden out)"),
    ("base.model.kind='fcnn'", "base.model.kind: 'fcnn' is never used: the grid sets each run's "
                               "kind from models; set models instead (leave base.model.kind out)"),
])
def test_reproduce_refuses_base_fields_the_grid_sets(assignment, message):
    with pytest.raises(ConfigError) as refusal:
        apply_overrides(ReproduceConfig(), [assignment])
    assert str(refusal.value) == f"invalid config: {message}"


def test_a_config_toml_with_a_grid_field_set_is_refused_naming_it(tmp_path):
    # what a folder made before the refusal holds: its config.toml names the field on resume
    data = to_dict(ReproduceConfig())
    data["base"]["train"]["seed"] = 5
    path = tmp_path / "config.toml"
    path.write_text(to_toml(data))
    with pytest.raises(ConfigError, match=r"^config file .*config.toml: invalid config: "
                                          r"base.train.seed: 5 is never used"):
        load_toml(ReproduceConfig, path)
    # the defaults written out, as every reproduce folder's config.toml has them, load
    path.write_text(to_toml(ReproduceConfig()))
    assert load_toml(ReproduceConfig, path) == ReproduceConfig()


def test_the_benchmark_refuses_a_seed_its_runs_never_use():
    with pytest.raises(ConfigError) as refusal:
        apply_overrides(BenchmarkConfig(), ["base.train.seed=3"])
    assert str(refusal.value) == (
        "invalid config: base.train.seed: 3 is never used: the benchmark sets each run's seed "
        "from seeds; set seeds instead (leave base.train.seed out)")
    with pytest.raises(ConfigError) as refusal:
        BenchmarkConfig(models={"fcnn": ["model.kind='fcnn'", "train.seed = 4"]})
    assert str(refusal.value) == (
        "invalid config: models.fcnn: sets train.seed, which the benchmark sets for each run "
        "from seeds; set seeds instead")


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture
def fake_runs(monkeypatch):
    checkpointing_sweeps(monkeypatch)


def checkpoint_seeds_in(folder) -> list[int]:
    return tomllib.loads((folder / "config.toml").read_text())["checkpoint_seeds"]


def test_more_checkpoint_seeds_on_a_finished_folder_are_refused_or_run_again(tmp_path, fake_runs):
    out = tmp_path / "sweep"
    config = apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[4]",
                                                 "seeds=[0, 1, 2]", "checkpoint_seeds=[0]"])
    lines = []
    sweeps.reproduce(config, out, progress=False, echo=lines.append)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["fcnn-h4-seed0.pt"]

    more = apply_overrides(config, ["checkpoint_seeds=[0, 2, 1]"])
    with pytest.raises(ConfigError) as refusal:
        sweeps.reproduce(more, out, progress=False, echo=lines.append)
    assert str(refusal.value) == (
        f"invalid config: checkpoint_seeds: {out} holds 2 finished run(s) of those seeds "
        f"without a checkpoint (fcnn-h4-seed1, fcnn-h4-seed2; made before their seed was in "
        f"checkpoint_seeds); run again with --rerun-changed to set them aside and run them anew "
        f"with their checkpoints, or leave their seeds out of checkpoint_seeds")
    assert checkpoint_seeds_in(out) == [0]  # config.toml still says what exists

    lines.clear()
    sweeps.reproduce(more, out, progress=False, echo=lines.append, rerun_changed=True)
    assert lines[0].startswith("2 finished run(s) without the checkpoint checkpoint_seeds asks "
                               "for (fcnn-h4-seed1, fcnn-h4-seed2): set aside in ")
    assert lines[1].startswith("reproduce: 1 runs done, 2 to go -> ")
    assert checkpoint_seeds_in(out) == [0, 2, 1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "fcnn-h4-seed0.pt", "fcnn-h4-seed1.pt", "fcnn-h4-seed2.pt"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "fcnn-h4-seed0.json", "fcnn-h4-seed1.json", "fcnn-h4-seed2.json"]
    (aside,) = (out / "superseded").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == [
        "fcnn-h4-seed1.json", "fcnn-h4-seed2.json", "results.jsonl"]

    # fewer checkpoint seeds describe no missing file: accepted, nothing to run
    lines.clear()
    sweeps.reproduce(apply_overrides(config, ["checkpoint_seeds=[]"]), out, progress=False,
                     echo=lines.append)
    assert lines == [f"reproduce: 3 runs done, 0 to go -> {out / 'results.jsonl'}"]


def test_a_failed_run_needs_no_checkpoint(tmp_path, fake_runs, monkeypatch):
    out = tmp_path / "sweep"
    config = apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[4]",
                                                 "seeds=[0]", "checkpoint_seeds=[]"])

    def diverged(run, data, **options):
        return {**checkpointing_runner(run, data, progress=False, checkpoint=None), "status": "diverged",
                "error": "non-finite training loss at epoch 1"}

    monkeypatch.setattr(sweeps, "run_experiment", diverged)
    sweeps.reproduce(config, out, progress=False, echo=lambda line: None)
    lines = []
    sweeps.reproduce(apply_overrides(config, ["checkpoint_seeds=[0]"]), out, progress=False,
                     echo=lines.append)
    assert lines == [f"reproduce: 1 runs done, 0 to go -> {out / 'results.jsonl'}"]


def test_the_benchmark_refuses_more_checkpoint_seeds_alike(tmp_path, fake_runs):
    out = tmp_path / "bench"
    config = apply_overrides(BenchmarkConfig(models={"fcnn": ["model.kind='fcnn'"]}),
                             ["seeds=[0, 1]", "checkpoint_seeds=[0]"])
    benchmark_module.benchmark(config, out, progress=False, echo=lambda line: None)
    more = apply_overrides(config, ["checkpoint_seeds=[0, 1]"])
    with pytest.raises(ConfigError, match=r"^invalid config: checkpoint_seeds: .* holds 1 "
                                          r"finished run\(s\) of those seeds without a checkpoint "
                                          r"\(fcnn-seed1; "):
        benchmark_module.benchmark(more, out, progress=False, echo=lambda line: None)
    assert checkpoint_seeds_in(out) == [0]
    benchmark_module.benchmark(more, out, progress=False, echo=lambda line: None,
                               rerun_changed=True)
    assert checkpoint_seeds_in(out) == [0, 1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "fcnn-seed0.pt", "fcnn-seed1.pt"]


def test_a_folder_recorded_without_checkpoint_seeds_is_not_judged(tmp_path, fake_runs):
    """A config.toml from before checkpoint_seeds (the committed results/study folders, kept
    without checkpoints) tells nothing of which runs saved one: resuming finds its runs done."""
    out = tmp_path / "sweep"
    config = apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[4]",
                                                 "seeds=[0, 1]", "checkpoint_seeds=[]"])
    sweeps.reproduce(config, out, progress=False, echo=lambda line: None)
    text = (out / "config.toml").read_text()
    (out / "config.toml").write_text(text.replace("checkpoint_seeds = []\n", ""))
    lines = []
    sweeps.reproduce(apply_overrides(config, ["checkpoint_seeds=[0]"]), out, progress=False,
                     echo=lines.append)
    assert lines == [f"reproduce: 2 runs done, 0 to go -> {out / 'results.jsonl'}"]
