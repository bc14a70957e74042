"""Round 13 of the reports: a benchmark folder without a marker whose config.toml cannot be read
is still a benchmark (its records tell), runs of two base configurations without a config.toml are
refused, a benchmark header names which entry used which data.test_subset (0: the whole test
set), a sweep whose runs all failed is tabled, and every field the benchmark's report reads is
checked, each problem one line naming the file and the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from eqpdenet.app.benchmark import benchmark_fingerprint, is_benchmark_folder
from eqpdenet.app.config import BenchmarkConfig, ReproduceConfig, to_dict, to_toml
from eqpdenet.app.report import write_report
from eqpdenet.app.runstore import save_run
from eqpdenet.app.sweeps import grid, run_key
from eqpdenet.app.training import fingerprint
from eqpdenet.errors import DataFileError
from helpers import error_line, report_folder

RECIPE = ["model.kind='fcnn'", "model.hidden=16", "train.epochs=2"]
CURVES = {"images": 8, "angles": [0.0, 90.0], "rotation": [90.0, 40.0], "scales": [1.0],
          "scale": [90.0], "shifts": [0.0, 1.0], "shift": [90.0, 80.0],
          "logit_change": {"90": 0.5, "37": 0.25}, "round_trip_change": {"90": 0.0, "37": 0.125}}


def _bench_config(models=None) -> BenchmarkConfig:
    return BenchmarkConfig(models=models or {"fcnn": list(RECIPE)}, seeds=[0, 1])


def _bench_record(config: BenchmarkConfig, entry: str, seed: int, **extra) -> dict:
    run = config.experiment(entry, seed)
    return {"key": f"{entry}-seed{seed}", "entry": entry, "model": run.model.kind,
            "hidden": run.model.hidden, "seed": seed, "status": "ok", "params": 100,
            "accuracy": {"test": 90.0 + seed}, "train_seconds": 60.0, "eval_seconds": 1.0,
            "robustness": copy.deepcopy(CURVES), "base_fingerprint": benchmark_fingerprint(config),
            "config": to_dict(run), **extra}


def _folder(path: Path, config_text: str | None, records: list[dict], *,
            run_files: bool = True) -> Path:
    """A sweep's folder as a sweep leaves it (config.toml, run files, results.jsonl), without
    the marker of folders made before markers; ``run_files=False``: results.jsonl alone (a folder
    made before run files), which may hold what JSON cannot (NaN)."""
    path.mkdir(parents=True)
    if config_text is not None:
        (path / "config.toml").write_text(config_text)
    if run_files:
        for record in records:
            save_run(path, record["key"], record)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ----------------------------------------------------------------------------- F2: recognition


@pytest.mark.parametrize("entries", [["a", "b"], ["a"]])
def test_an_unmarked_benchmark_with_an_unreadable_config_is_reported_as_a_benchmark(tmp_path, capsys,
                                                                                    entries):
    """config.toml names a model kind of a plugin not imported. Taken for a paper sweep, two
    entries of one model were refused as one run "recorded twice ... keep one", and one entry
    was tabled against the paper (accuracy_vs_params.png beside robustness.png), exit 0."""
    config = _bench_config({name: list(RECIPE) for name in entries})
    records = [_bench_record(config, name, seed) for name in entries for seed in (0, 1)]
    text = to_toml(config).replace("kind = \"eqpdenet\"", "kind = \"mynet\"", 1)
    assert text != to_toml(config)
    folder = _folder(tmp_path / "b", text, records)
    assert is_benchmark_folder(folder)
    status, err = report_folder(folder, capsys)
    assert status == 0
    assert err.strip().splitlines() == [
        f"eqpdenet: warning: {folder}/config.toml cannot be read as a benchmark configuration: "
        f"invalid config: base.model.kind: unknown model 'mynet'; available: cnn, eqpdenet, fcnn, "
        f"gcnn, invariant_pde, lifted_pde (registered by a plugin? this process has not imported "
        f"it: name the module that registers it in EQPDENET_PLUGINS): whether every run of the "
        f"sweep is here cannot be told"]
    assert sorted(p.name for p in folder.iterdir()) == [
        ".eqpdenet.lock", "config.toml", "results.jsonl", "robustness.png", "runs", "table.md"]
    table = (folder / "table.md").read_text()
    assert table.startswith("Accuracy in percent, mean (sample std) over seeds; scenarios on the "
                            "whole test set, ")
    rows = [line.split(" | ")[:4] for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == [[f"| {name}", "100", "2", "90.5 (0.7)"] for name in entries]


def test_a_folder_of_paper_runs_is_not_a_benchmark_and_the_paper_report_refuses_benchmark_runs(
        tmp_path):
    paper = ReproduceConfig(models=["fcnn"], hidden_sizes=[16], seeds=[0, 1])
    folder = _folder(tmp_path / "p", None, _paper_records(paper))
    assert not is_benchmark_folder(folder)
    config = _bench_config()
    bench = _folder(tmp_path / "b", None, [_bench_record(config, "fcnn", 0)])
    with pytest.raises(DataFileError, match=r"its runs are a benchmark's \(run 'fcnn-seed0' "
                                            r"records entry, as only a benchmark's runs do\)"):
        write_report(bench)
    assert not (bench / "table.md").exists()


# ----------------------------------------------------------------------------- F3: two bases


def _paper_records(config: ReproduceConfig, **extra) -> list[dict]:
    return [{"key": run_key(run.model.kind, run.model.hidden, run.train.seed),
             "model": run.model.kind, "hidden": run.model.hidden, "seed": run.train.seed,
             "status": "ok", "params": 100, "accuracy": {"test": 90.0, "iso": 80.0, "sca": 70.0},
             "config": to_dict(run), "base_fingerprint": "aaaaaaaaaaaa"} | extra
            for run in grid(config)]


def test_runs_of_two_base_configurations_without_config_toml_are_refused(tmp_path, capsys):
    """Without config.toml, every record was tabled: one cell averaged the runs of two
    configurations, exit 0, under a header citing the missing config.toml."""
    records = _paper_records(ReproduceConfig(models=["fcnn"], hidden_sizes=[16], seeds=[0, 1]))
    records[1]["base_fingerprint"] = "bbbbbbbbbbbb"
    folder = _folder(tmp_path / "p", None, records)
    status, err = report_folder(folder, capsys)
    assert status == 2
    assert error_line(err) == (
        f"{folder}/results.jsonl: its runs were made under 2 base configurations (base "
        f"fingerprint aaaaaaaaaaaa: fcnn-h16-seed0; base fingerprint bbbbbbbbbbbb: "
        f"fcnn-h16-seed1) and no config.toml it can read says which is the sweep's; a table "
        f"would average runs of different configurations. Move the runs of all but one "
        f"configuration (their runs/<key>.json and results.jsonl lines) to another folder")
    assert sorted(p.name for p in folder.iterdir()) == [".eqpdenet.lock", "results.jsonl", "runs"]


def test_runs_of_one_base_without_config_toml_are_tabled_citing_no_config_toml(tmp_path, capsys):
    records = _paper_records(ReproduceConfig(models=["fcnn"], hidden_sizes=[16], seeds=[0, 1]))
    folder = _folder(tmp_path / "p", None, records)
    status, err = report_folder(folder, capsys)
    assert status == 0
    assert err.strip() == (f"eqpdenet: warning: {folder}/config.toml is missing: whether every run "
                           f"of the sweep is here cannot be told")
    table = (folder / "table.md").read_text()
    assert "config in `config.toml`" not in table
    assert ("From `results.jsonl` beside this file (2 runs; no `config.toml`: each run's "
            "configuration is in its record).") in table


# ----------------------------------------------------------------------------- F4: test subsets


def test_a_benchmark_header_names_which_entry_used_which_test_subset(tmp_path, capsys):
    """Entries of data.test_subset 0 (the whole test set) and 10 read "the first 0 or 10 test
    images"."""
    config = _bench_config({"whole": list(RECIPE), "sub": [*RECIPE, "data.test_subset=10"]})
    records = [_bench_record(config, name, seed) for name in ("whole", "sub") for seed in (0, 1)]
    folder = _folder(tmp_path / "b", to_toml(config), records)
    status, _ = report_folder(folder, capsys)
    assert status == 0
    table = (folder / "table.md").read_text()
    assert table.startswith(
        "Accuracy in percent, mean (sample std) over seeds; scenarios on the whole test set "
        "(whole) or the first 10 test digits (sub), curves and logit changes (relative: "
        "||l(g f) − l(f)|| / ||l(f)|| over the batch) on the first 8 test digits (see "
        "`config.toml`). From `results.jsonl` beside this file (4 runs; ")
    assert "first 0" not in table


# ----------------------------------------------------------------------------- F6: all failed


def test_a_sweep_whose_runs_all_failed_is_tabled_and_plotted(tmp_path, capsys):
    """The report ended "plot_accuracy: ours holds no accuracy ...", exit 2, no table; the
    failed runs are counted, never dropped."""
    config = ReproduceConfig(models=["fcnn"], hidden_sizes=[16], seeds=[0, 1])
    records = [{key: value for key, value in r.items() if key not in ("accuracy", "params")}
               | {"status": "diverged"}
               for r in _paper_records(config, base_fingerprint=fingerprint(config.base))]
    folder = _folder(tmp_path / "p", to_toml(config), records)
    status, err = report_folder(folder, capsys)
    assert (status, err) == (0, "")
    table = (folder / "table.md").read_text()
    assert ("(2 runs, 2 of them failed (fcnn-h16-seed0: diverged, fcnn-h16-seed1: diverged); "
            "config in `config.toml`)") in table
    assert ("| 16 | – | 0 (+2 failed) | 65.5 (1.5) | – | – | – | 36.7 (1.4) | – | – | – | "
            "23.5 (0.6) | – | – | – |") in table.splitlines()
    assert (folder / "accuracy_vs_params.png").read_bytes().startswith(b"\x89PNG")


# ----------------------------------------------------------------------------- F7: fields


def _drop(*path):
    def edit(record):
        node = record
        for name in path[:-1]:
            node = node[name]
        del node[path[-1]]
    return edit


def _set(value, *path):
    def edit(record):
        node = record
        for name in path[:-1]:
            node = node[name]
        node[path[-1]] = value
    return edit


BAD_FIELDS = [
    (_drop("train_seconds"), True, "train_seconds is missing, not a finite number of seconds"),
    (_set("12", "train_seconds"), True, "train_seconds is '12', not a finite number of seconds"),
    (_set(float("nan"), "train_seconds"), False,
     "train_seconds is nan, not a finite number of seconds"),
    (_set(float("inf"), "eval_seconds"), False,
     "eval_seconds is inf, not a finite number of seconds"),
    (_set(None, "config"), True, "config is None, not a run's configuration (a table)"),
    (_drop("robustness", "logit_change"), True,
     "robustness.logit_change is missing, not a table of finite changes by angle"),
    (_set([90.0], "robustness", "rotation"), True,
     "robustness.rotation has 1 points for the 2 of robustness.angles"),
    (_set("x", "config", "data", "test_subset"), True,
     "config.data.test_subset is 'x', not a number of images"),
]


@pytest.mark.parametrize(("edit", "run_files", "problem"), BAD_FIELDS)
def test_every_field_the_benchmark_report_reads_is_checked(tmp_path, capsys, edit, run_files,
                                                            problem):
    """Each ended "unexpected KeyError/AttributeError/IndexError/TypeError: a bug in
    eqpdenet?", exit 1, or (a NaN or infinite time) printed "nan" in the table and "inf hours"
    in its header, exit 0."""
    config = _bench_config()
    records = [_bench_record(config, "fcnn", 0), _bench_record(config, "fcnn", 1)]
    edit(records[1])
    folder = _folder(tmp_path / "b", to_toml(config), records, run_files=run_files)
    status, err = report_folder(folder, capsys)
    assert status == 2
    where = folder / "runs" / "fcnn-seed1.json" if run_files else f"{folder}/results.jsonl:2"
    assert error_line(err) == (f"{where}: {problem}; the report cannot table it (to rerun it, delete "
                           f"both runs/fcnn-seed1.json (if there is one) and its line in "
                           f"results.jsonl, then rerun the sweep's command)")
    assert not (folder / "table.md").exists() and not (folder / "robustness.png").exists()


def test_a_benchmark_of_sound_records_is_still_tabled(tmp_path, capsys):
    config = _bench_config()
    records = [_bench_record(config, "fcnn", 0), _bench_record(config, "fcnn", 1)]
    del records[0]["robustness"]["round_trip_change"]  # older records lack it
    folder = _folder(tmp_path / "b", to_toml(config), records)
    status, err = report_folder(folder, capsys)
    assert (status, err) == (0, "")
    rows = [line for line in (folder / "table.md").read_text().splitlines()
            if line.startswith("| fcnn")]
    assert rows == ["| fcnn | 100 | 2 | 90.5 (0.7) | 40.0–90.0 | 5.0e-01 | 2.5e-01 | – | 1.0 | – |"]
