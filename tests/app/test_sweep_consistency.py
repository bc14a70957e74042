"""A sweep folder's table holds exactly the runs its config.toml describes: runs of seeds, sizes
or entries no longer listed are set aside when their recipe changed, else left out of the table
and named; runs of another base are refused by the report as by the sweep. Reports read the
run files (the truth), check every output before writing any, and table what a study's folders
hold. Runs with non-finite numbers are failed runs, never NaN in JSON. Outputs of other commands
never land inside a sweep's own folders. (Runs are faked: no data is loaded.)"""

import json
import math

import pytest
import torch
from torch import nn

from eqpdenet.analysis.robustness import logit_change, round_trip_change
from eqpdenet.app import benchmark as benchmark_module
from eqpdenet.app import sweeps
from eqpdenet.app.benchmark import benchmark, benchmark_fingerprint, summarise, write_benchmark_report
from eqpdenet.app.config import BenchmarkConfig, ReproduceConfig, apply_overrides, to_dict
from eqpdenet.app.files import read_jsonl
from eqpdenet.app.report import aggregate, protocol_table, write_report
from eqpdenet.app.runfolder import (
    check_claim,
    check_output_keeps,
    check_replaceable,
    claim_folder,
    write_marker,
)
from eqpdenet.app.runstore import load_records, run_file, save_run
from eqpdenet.app.sweeps import reproduce, run_sweep
from eqpdenet.app.training import fingerprint
from eqpdenet.errors import ConfigError, DataFileError, OutputFolderError


def _record(run, score: float = 50.0, **extra) -> dict:
    """A successful run as run_experiment records it (its whole configuration included)."""
    return {"model": run.model.kind, "hidden": run.model.hidden, "seed": run.train.seed,
            "status": "ok", "params": 100, "accuracy": {"test": score + run.train.seed},
            "train_seconds": 1.0, "eval_seconds": 1.0, "config": to_dict(run), **extra}


@pytest.fixture(autouse=True)
def fake_runs(monkeypatch):
    """No data, no training: a run's record is :func:`_record` of its configuration."""
    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})
    monkeypatch.setattr(sweeps, "run_experiment", lambda run, data, **options: _record(run))
    monkeypatch.setattr(benchmark_module, "run_experiment",
                        lambda run, data, **options: _record(run))


def _benchmark_config(seeds, *overrides) -> BenchmarkConfig:
    config = BenchmarkConfig(models={"fcnn": ["model.kind='fcnn'", "model.hidden=4"],
                                     "wide": ["model.kind='fcnn'", "model.hidden=8"]},
                             seeds=list(seeds), checkpoint_seeds=[])
    config.base.scenarios = ["test"]
    return apply_overrides(config, list(overrides))


def _run_benchmark(config, out, **options) -> list[str]:
    lines = []
    benchmark(config, out, progress=False, echo=lines.append, **options)
    return lines


def _reproduce_config(seeds, *overrides) -> ReproduceConfig:
    return apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[4]",
                                               f"seeds={list(seeds)}", "checkpoint_seeds=[]",
                                               *overrides])


def _rows(table: str) -> dict[str, list[str]]:
    return {line.strip("| ").split(" | ")[0]: line.strip("| ").split(" | ")
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}


# ----------------------------------------------------------------------------- 1. benchmark


def test_a_recipe_changed_while_its_seeds_shrank_sets_aside_the_unlisted_seeds_too(tmp_path):
    """Seeds [0, 1] -> [0] and the entry's learning rate changed: fcnn-seed1 (old lr) stayed in
    the folder, unchecked, and its row averaged seed 0 (new lr) with seed 1 (old lr)."""
    out = tmp_path / "bench"
    _run_benchmark(_benchmark_config([0, 1]), out)
    changed = _benchmark_config([0], "models.fcnn=['model.kind=\"fcnn\"', 'model.hidden=4', "
                                     "'train.lr=0.01']")
    with pytest.raises(ConfigError) as refusal:
        _run_benchmark(changed, out)
    assert "fcnn-seed0, fcnn-seed1 (train.lr: 0.001 recorded, 0.01 now)" in str(refusal.value)
    lines = _run_benchmark(changed, out, rerun_changed=True)
    assert lines[0].endswith("those of this sweep to run again now, fcnn-seed1 when a sweep "
                             "includes them")
    assert {k: r["config"]["train"]["lr"] for k, r in load_records(out).items()} == {
        "fcnn-seed0": 0.01, "wide-seed0": 0.001, "wide-seed1": 0.001}
    report = write_benchmark_report(out)
    table = (out / "table.md").read_text()
    assert _rows(table)["fcnn"][2] == "1" and _rows(table)["wide"][2] == "1"
    # wide-seed1 (same recipe, seed no longer listed) is kept, not tabled, and named
    assert report.left_out == ["wide-seed1"] and report.runs == 2
    assert ("Not in the table: 1 run(s) of the folder that its `config.toml` does not list "
            "(seeds, hidden sizes or entries since removed; kept, and counted as done if listed "
            "again): wide-seed1.") in table
    lines = _run_benchmark(_benchmark_config([0, 1], "models.fcnn=['model.kind=\"fcnn\"', "
                                                     "'model.hidden=4', 'train.lr=0.01']"), out)
    assert lines[0].startswith("benchmark fcnn, wide: 3 runs done, 1 to go")  # wide-seed1 kept


def test_a_change_of_another_kinds_table_in_the_benchmarks_base_is_named_by_field(tmp_path):
    """The benchmark's fingerprint covers every kind's option table (its entries choose the
    kind); the refusal compared the base's own kind only and named two fingerprints."""
    out = tmp_path / "bench"
    config = _benchmark_config([0])
    _run_benchmark(config, out)
    layers = config.base.model.cnn.layers
    with pytest.raises(ConfigError) as refusal:
        _run_benchmark(_benchmark_config([0], f"base.model.cnn.layers={layers - 2}"), out)
    assert f"(base.model.cnn.layers: {layers} recorded, {layers - 2} now)" in str(refusal.value)
    assert "fingerprint" not in str(refusal.value)


# ----------------------------------------------------------------------------- 2. reports


def test_the_paper_report_tables_only_the_grid_of_config_toml(tmp_path):
    """Seeds [0, 1] -> [0]: the table averaged seed 1, which config.toml no longer lists."""
    out = tmp_path / "sweep"
    reproduce(_reproduce_config([0, 1]), out, progress=False, echo=lambda line: None)
    reproduce(_reproduce_config([0]), out, progress=False, echo=lambda line: None)
    report = write_report(out)
    table = (out / "table.md").read_text()
    assert "| 4 | 100 | 1 |" in table and report.left_out == ["fcnn-h4-seed1"]
    assert "does not list (seeds, hidden sizes or entries since removed" in table
    lines = []
    reproduce(_reproduce_config([0, 1]), out, progress=False, echo=lines.append)
    assert lines[0].startswith("reproduce: 2 runs done, 0 to go")  # kept: done when listed again


@pytest.mark.parametrize("kind", ["reproduce", "benchmark"])
def test_a_report_refuses_runs_of_another_base_fingerprint(kind, tmp_path):
    """A record of another base configuration (here a seed outside the grid too) was averaged
    into the table; the sweep refuses such a folder, and so does the report now."""
    out = tmp_path / "sweep"
    if kind == "reproduce":
        reproduce(_reproduce_config([0]), out, progress=False, echo=lambda line: None)
        write, key, now = write_report, "fcnn-h4-seed7", fingerprint(_reproduce_config([0]).base)
    else:
        _run_benchmark(_benchmark_config([0]), out)
        write, key, now = (write_benchmark_report, "fcnn-seed7",
                           benchmark_fingerprint(_benchmark_config([0])))
    (record,) = [r for r in load_records(out).values() if r["model"] == "fcnn"][:1]
    save_run(out, key, {**record, "key": key, "seed": 7, "base_fingerprint": "deadbeef0000",
                        "accuracy": {"test": 99.0}})
    with pytest.raises(DataFileError) as refusal:
        write(out)
    assert (f"1 run(s) were made under another base configuration than its config.toml "
            f"describes: {key} (base fingerprint deadbeef0000 recorded, {now} in config.toml)"
            in str(refusal.value))
    assert f"`eqpdenet {kind} --config {out}/config.toml --out {out} --rerun-changed`" in str(
        refusal.value)
    assert not (out / "table.md").exists()


def test_a_report_reads_the_run_files_a_stopped_sweep_left_out_of_results_jsonl(tmp_path):
    out = tmp_path / "sweep"
    reproduce(_reproduce_config([0, 1]), out, progress=False, echo=lambda line: None)
    record = load_records(out)["fcnn-h4-seed1"]
    (out / "results.jsonl").write_text(json.dumps(load_records(out)["fcnn-h4-seed0"]) + "\n")
    report = write_report(out)  # results.jsonl lags the run files: as after a SIGKILL
    assert report.runs == 2 and report.missing == []
    assert [r["key"] for r in read_jsonl(out / "results.jsonl")] == ["fcnn-h4-seed0",
                                                                     "fcnn-h4-seed1"]
    assert read_jsonl(out / "results.jsonl")[1] == record


def test_the_report_command_reads_a_benchmark_killed_before_its_first_aggregate(tmp_path, capsys):
    """`eqpdenet report` refused a benchmark folder without results.jsonl ("no results in") before
    the report could rebuild it from the run files."""
    from eqpdenet.app import cli

    out = tmp_path / "bench"
    _run_benchmark(_benchmark_config([0]), out)
    (out / "results.jsonl").unlink()  # as after a SIGKILL between the first run file and it
    assert cli.main(["report", str(out)]) == 0
    assert sorted(r["key"] for r in read_jsonl(out / "results.jsonl")) == ["fcnn-seed0",
                                                                          "wide-seed0"]
    assert "| fcnn |" in capsys.readouterr().out


def test_an_interrupt_after_a_run_file_still_leaves_it_in_results_jsonl(tmp_path, monkeypatch):
    """SIGTERM (KeyboardInterrupt) right after runs/<key>.json was saved, before the aggregate:
    results.jsonl lacked the run while the message said finished runs were saved."""
    real, calls = sweeps.write_aggregate, []

    def interrupted_once(out_dir):
        calls.append(out_dir)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(out_dir)

    monkeypatch.setattr(sweeps, "write_aggregate", interrupted_once)
    runs = {f"fcnn-h4-seed{s}": run for s, run in enumerate(sweeps.grid(_reproduce_config([0, 1])))}
    with pytest.raises(KeyboardInterrupt):
        run_sweep("test", runs, tmp_path, base_fingerprint="fp", progress=False,
                  echo=lambda line: None)
    assert [r["key"] for r in read_jsonl(tmp_path / "results.jsonl")] == ["fcnn-h4-seed0"]
    assert run_file(tmp_path, "fcnn-h4-seed0").is_file()


def test_a_cell_whose_runs_all_failed_shows_no_parameter_count(tmp_path):
    records = [{"model": "fcnn", "hidden": 4, "seed": s, "status": "diverged", "error": "NaN"}
               for s in (0, 1)]
    records.append({"model": "fcnn", "hidden": 8, "seed": 0, "status": "ok", "params": 77,
                    "accuracy": {"test": 50.0}})
    rows = [line for line in protocol_table(aggregate(records)).splitlines()
            if line.startswith("| 4 |")]
    assert rows[0].startswith("| 4 | – | 0 (+2 failed) |") and "None" not in rows[0]


@pytest.mark.parametrize("kind", ["reproduce", "benchmark"])
def test_a_report_checks_its_plot_before_it_writes_its_table(kind, tmp_path):
    """A folder in the way of the plot: table.md was written, then the command failed."""
    out = tmp_path / "sweep"
    if kind == "reproduce":
        reproduce(_reproduce_config([0]), out, progress=False, echo=lambda line: None)
        write, plot = write_report, out / "accuracy_vs_params.png"
    else:
        _run_benchmark(_benchmark_config([0]), out)
        write, plot = write_benchmark_report, out / "robustness.png"
    plot.mkdir()
    with pytest.raises(OutputFolderError, match=f"the report's output {plot}: a folder is in "
                                                f"the way of the file"):
        write(out)
    assert not (out / "table.md").exists()


def _validated(run, data, **options):
    """A run of a validation study: no test scenario, a validation accuracy."""
    return {**_record(run), "accuracy": {}, "validation_accuracy": 60.0 + run.train.seed}


def test_a_study_folder_is_reported_by_its_validation_accuracy(tmp_path, monkeypatch):
    """A study's runs evaluate no test scenario (scenarios = []): the report wrote a table of
    dashes with exit 0, its validation accuracies ignored."""
    monkeypatch.setattr(sweeps, "run_experiment", _validated)
    out = tmp_path / "study-run"
    reproduce(_reproduce_config([0, 1], "base.scenarios=[]"), out, progress=False,
              echo=lambda line: None)
    report = write_report(out)
    table = (out / "table.md").read_text()
    assert table.startswith("Validation accuracy in percent on ROTMNIST: mean (sample std)")
    assert "| 4 | 100 | 2 | 60.5 (0.7) |" in table and report.missing == []
    assert (out / "accuracy_vs_params.png").stat().st_size > 0
    # runs with neither a scenario nor a validation accuracy: one line, no table of dashes
    for path in (out / "runs").iterdir():
        record = json.loads(path.read_text())
        del record["validation_accuracy"]
        path.write_text(json.dumps(record))
    with pytest.raises(DataFileError, match="evaluated none of the scenarios the paper's tables "
                                            "report .* and recorded no validation accuracy: "
                                            "there is nothing to table"):
        write_report(out)


def test_a_study_resumes_and_its_folders_report_after_its_grid_shrank(tmp_path, monkeypatch):
    """A study's runs/<configuration>/ are reproduce sweeps: they keep working under the rules
    above when a later study lists fewer seeds (the runs of the others are kept, not tabled)."""
    from eqpdenet.app.study import Stage, run_study, study_base

    monkeypatch.setattr(sweeps, "run_experiment", _validated)

    stages = [Stage("weight-decay", "shared", "?", {"none": ["base.train.weight_decay=0.0"],
                                                    "wd": ["base.train.weight_decay=0.05"]})]
    out = tmp_path / "study"
    base = study_base(hidden_sizes=(4,), seeds=(0, 1), epochs=1)
    run_study(out, base=base, stages=stages, echo=lambda *a: None)
    folder = out / "runs" / fingerprint(base.base)
    assert write_report(folder).runs == 4
    base.seeds = [0]  # what a study of fewer seeds runs in that folder
    lines = []
    reproduce(base, folder, progress=False, echo=lines.append)
    assert lines == [f"reproduce: 2 runs done, 0 to go -> {folder / 'results.jsonl'}"]
    report = write_report(folder)
    assert report.left_out == ["eqpdenet-h4-seed1", "fcnn-h4-seed1"] and report.runs == 2


# ----------------------------------------------------------------------------- 3. non-finite


class HugeLogits(nn.Module):
    """Logits of about 1e30 (finite in float32) that change under rotation."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1, 1, 16).reshape(1, 16).repeat(3, 1))

    def forward(self, x):
        return 1e30 * x.flatten(1) @ self.weight.T


@pytest.mark.parametrize("measure", [logit_change, round_trip_change])
def test_the_relative_logit_change_of_huge_logits_is_finite(measure):
    """||l|| of float32 logits of 1e30 overflows float32: the change was NaN or infinite."""
    model = HugeLogits()
    images = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    change = measure(model, images, 37.0)
    small = HugeLogits()
    small.forward = lambda x: x.flatten(1) @ small.weight.T  # the same model, logits x 1e-30
    assert math.isfinite(change) and change == pytest.approx(measure(small, images, 37.0),
                                                             rel=1e-5)


def _no_nan_tokens(text: str) -> None:
    def refuse(token):
        raise AssertionError(f"{token} is not JSON")

    json.loads(text, parse_constant=refuse)


def test_a_run_with_a_non_finite_number_is_a_failed_run_in_valid_json(tmp_path, monkeypatch):
    """A NaN logit change was written as a bare NaN token (not JSON) and the run scored."""
    def nan_change(run, data, **options):
        return {**_record(run), "robustness": {"logit_change": {"37": math.nan, "90": math.inf}}}

    monkeypatch.setattr(sweeps, "run_experiment", nan_change)
    reproduce(_reproduce_config([0]), tmp_path, progress=False, echo=lambda line: None)
    text = run_file(tmp_path, "fcnn-h4-seed0").read_text()
    _no_nan_tokens(text)
    _no_nan_tokens((tmp_path / "results.jsonl").read_text())
    record = json.loads(text)
    assert record["status"] == "diverged" and record["robustness"]["logit_change"] == {
        "37": None, "90": None}
    assert record["error"] == ("its results are not all finite (robustness.logit_change.37 = "
                               "nan, robustness.logit_change.90 = inf): nothing non-finite is "
                               "scored")
    with pytest.raises(ValueError, match="holds non-finite numbers"):
        save_run(tmp_path, "k", {"key": "k", "x": math.nan})


@pytest.mark.parametrize("seeds", [[0], [0, 1]])
def test_a_benchmark_report_refuses_a_recorded_non_finite_logit_change(seeds, tmp_path):
    """A folder recorded before: with two seeds the report crashed ("'float' object has no
    attribute 'numerator'", statistics.stdev of NaN and inf), with one it printed nan."""
    out = tmp_path / "bench"
    _run_benchmark(_benchmark_config(seeds), out)
    for value, key in zip((math.nan, math.inf), [f"fcnn-seed{s}" for s in seeds], strict=False):
        record = load_records(out)[key]
        record["robustness"] = {"images": 5, "angles": [0.0], "rotation": [50.0], "scales": [1.0],
                                "scale": [50.0], "shifts": [0.0], "shift": [50.0],
                                "logit_change": {"37": value, "90": 0.5}}
        run_file(out, key).write_text(json.dumps(record))  # as the old writer did: NaN tokens
    with pytest.raises(DataFileError, match=r"\(fcnn-h4-seed0\): robustness.logit_change.37 = "
                                            r"nan, not a finite number; a report cannot average "
                                            r"it \(to rerun it, delete both runs/fcnn-seed0.json"):
        write_benchmark_report(out)
    summary = summarise([{**r, "robustness": {**r["robustness"], "logit_change": {"37": v}}}
                         for r, v in zip([load_records(out)["fcnn-seed0"]] * 2,
                                         (math.nan, math.inf), strict=True)])
    assert math.isnan(summary["fcnn"]["logit_change"]["37"][0])  # no crash, shown as "–"


# ----------------------------------------------------------------------------- 4. outputs


def _sweep_folder(path, kind="benchmark"):
    claim_folder(path, kind)
    save_run(path, "fcnn-seed0", {"key": "fcnn-seed0", "status": "ok"})
    (path / "checkpoints").mkdir()
    return path


@pytest.mark.parametrize("inner", ["runs/fcnn-seed7.json", "runs", "checkpoints/x",
                                   "superseded/20261206/y"])
def test_no_command_writes_its_folder_inside_a_sweeps_own_folders(inner, tmp_path):
    """`benchmark --out nest/runs/fcnn-seed7.json` was accepted; the sweep `nest` then failed
    with "Is a directory" reading its runs."""
    nest = _sweep_folder(tmp_path / "nest")
    for check in (lambda p: check_claim(p, "benchmark"), lambda p: check_claim(p, "reproduce"),
                  check_replaceable):
        with pytest.raises(OutputFolderError, match=f"is inside {nest}/{inner.split('/')[0]}, a "
                                                    f"folder the sweep {nest} keeps its own files"):
            check(nest / inner)
    # a study's runs/<configuration>/ are its reproduce sweeps: allowed, as the study makes them
    study = tmp_path / "study"
    claim_folder(study, "study")
    assert check_claim(study / "runs" / "abc123", "reproduce")
    with pytest.raises(OutputFolderError, match="is inside"):
        check_claim(study / "runs", "reproduce")


def test_a_folder_among_the_run_files_is_no_run(tmp_path):
    nest = _sweep_folder(tmp_path / "nest")
    (nest / "runs" / "fcnn-seed7.json").mkdir()
    assert list(load_records(nest)) == ["fcnn-seed0"]


def test_outputs_never_replace_a_sweeps_run_files_or_a_studys_choice(tmp_path):
    """`figure --out rg/runs/<key>.json`, `evaluate --json rg/runs/<key>.json` and `figure --out
    sg/chosen.json` replaced them (exit 0); the sweep could not resume."""
    sweep = _sweep_folder(tmp_path / "rg", "reproduce")
    study = tmp_path / "sg"
    claim_folder(study, "study")
    (study / "chosen.json").write_text("{}")
    (study / "study.json").write_text("{}")
    inner = study / "runs" / "abc123"
    claim_folder(inner, "reproduce")
    save_run(inner, "fcnn-h4-seed0", {"key": "fcnn-h4-seed0"})
    (inner / "config.toml").write_text("")
    for path in (sweep / "runs" / "fcnn-seed0.json", sweep / "runs" / "new.json",
                 sweep / "checkpoints" / "fcnn-seed0.json", study / "chosen.json",
                 study / "study.json",
                 inner / "runs" / "fcnn-h4-seed0.json", inner / "config.toml"):
        with pytest.raises(OutputFolderError, match=f"--out {path}: "):
            check_output_keeps(path, "--out")
    link = tmp_path / "link.json"
    link.symlink_to(sweep / "runs" / "fcnn-seed0.json")
    with pytest.raises(OutputFolderError, match="the file the link"):
        check_output_keeps(link, "--out")
    # a figure beside the results, new or earlier, is written as asked
    (sweep / "figure.png").write_bytes(b"png")
    for path in (sweep / "figure.png", sweep / "other.png", study / "notes.json"):
        check_output_keeps(path, "--out")
    write_marker(tmp_path / "train", "train")
    check_output_keeps(tmp_path / "train" / "summary.json", "--json")
