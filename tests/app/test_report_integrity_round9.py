"""Round 9 of the reports' integrity: a table holds only runs of the recipe its config.toml gives
them (an entry's overrides edited since, a run file of another recipe, a legacy record of another
configuration), one row's runs are of one model (params), two disagreeing lines of one key are
refused before results.jsonl is rewritten, and both reports average and round alike (a tie half
away from zero)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eqpdenet.app import sweeps
from eqpdenet.app.benchmark import (
    benchmark_fingerprint,
    benchmark_table,
    summarise,
    write_benchmark_report,
)
from eqpdenet.app.cli import main
from eqpdenet.app.config import BenchmarkConfig, ReproduceConfig, to_dict, to_toml
from eqpdenet.app.report import aggregate, format_number, protocol_table, write_report
from eqpdenet.app.runstore import load_records, save_run, write_aggregate
from eqpdenet.app.sweeps import grid, run_key, run_sweep
from eqpdenet.errors import DataFileError

RECIPE = ["model.kind='fcnn'", "model.hidden=16", "train.epochs=2"]


def _bench_config(recipe=RECIPE) -> BenchmarkConfig:
    return BenchmarkConfig(models={"fcnn": list(recipe)}, seeds=[0, 1])


def _bench_record(config: BenchmarkConfig, seed: int, test: float = 90.0, **extra) -> dict:
    run = config.experiment("fcnn", seed)
    return {"key": f"fcnn-seed{seed}", "entry": "fcnn", "model": run.model.kind,
            "hidden": run.model.hidden, "seed": seed, "status": "ok", "params": 100,
            "accuracy": {"test": test + seed}, "train_seconds": 60.0, "eval_seconds": 1.0,
            "base_fingerprint": benchmark_fingerprint(config), "config": to_dict(run), **extra}


def _bench_folder(path: Path, config: BenchmarkConfig, records: list[dict]) -> Path:
    """A benchmark's folder as the sweep leaves it: config.toml, run files, results.jsonl."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text(to_toml(config))
    for record in records:
        save_run(path, record["key"], record)
    write_aggregate(path)
    return path


# ----------------------------------------------------------------------------- 1. the recipe


def test_an_entry_recipe_edited_in_config_toml_is_refused_not_tabled(tmp_path, capsys):
    """config.toml's entry overrides changed after its runs were made (epochs 2 -> 3): the base
    fingerprint (base and curves) is the same, and the report printed the 2-epoch numbers under
    the 3-epoch recipe, exit 0. It is refused, naming the runs, the field and the way out."""
    config = _bench_config()
    folder = _bench_folder(tmp_path / "b", config, [_bench_record(config, s) for s in (0, 1)])
    assert main(["report", str(folder)]) == 0
    table = (folder / "table.md").read_bytes()
    (folder / "config.toml").write_text(to_toml(_bench_config([*RECIPE[:2], "train.epochs=3"])))
    capsys.readouterr()
    assert main(["report", str(folder)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("2 run(s) were made with another configuration than its config.toml gives them: "
            "fcnn-seed0, fcnn-seed1 (train.epochs: 2 recorded, 3 now)") in err
    assert (f"`eqpdenet benchmark --config {folder}/config.toml --out {folder} --rerun-changed`"
            in err and "restore in config.toml" in err)
    assert (folder / "table.md").read_bytes() == table  # nothing written


def test_a_run_file_of_another_recipe_is_refused_not_averaged(tmp_path):
    config = _bench_config()
    other = _bench_record(config, 1, test=10.0)
    other["config"]["train"].update(epochs=1, lr=0.1)
    folder = _bench_folder(tmp_path / "b", config, [_bench_record(config, 0), other])
    with pytest.raises(DataFileError, match=r"1 run\(s\) were made with another configuration "
                                            r"than its config.toml gives them: fcnn-seed1 "
                                            r"\(train.epochs: 1 recorded, 2 now\)"):
        write_benchmark_report(folder)


def _paper_folder(path: Path, config: ReproduceConfig, records: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "config.toml").write_text(to_toml(config))
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _paper_records(config: ReproduceConfig) -> list[dict]:
    return [{"key": run_key(run.model.kind, run.model.hidden, run.train.seed),
             "model": run.model.kind, "hidden": run.model.hidden, "seed": run.train.seed,
             "status": "ok", "params": 100, "accuracy": {"test": 90.0, "iso": 80.0, "sca": 70.0},
             "config": to_dict(run)} for run in grid(config)]


def test_a_reproduce_record_of_another_configuration_is_refused(tmp_path):
    """The paper's report had the same gap: a record without a base fingerprint (one written
    before fingerprints) was judged by its key alone, whatever configuration it recorded."""
    config = ReproduceConfig(models=["fcnn"], hidden_sizes=[16], seeds=[0, 1])
    records = _paper_records(config)
    write_report(_paper_folder(tmp_path / "same", config, records))  # as config.toml gives them
    records[1]["config"]["train"]["epochs"] += 5
    folder = _paper_folder(tmp_path / "other", config, records)
    with pytest.raises(DataFileError, match=r"fcnn-h16-seed1 \(train.epochs: \d+ recorded, \d+ "
                                            r"now\).*`eqpdenet reproduce --config .*--rerun-changed"):
        write_report(folder)
    assert not (folder / "table.md").exists()


def test_the_runs_of_one_row_must_agree_on_params(tmp_path):
    config = _bench_config()
    runs = [_bench_record(config, 0), _bench_record(config, 1, params=101)]
    with pytest.raises(DataFileError, match=r"the runs of fcnn disagree on params: 100 "
                                            r"\(fcnn-seed0\); 101 \(fcnn-seed1\)"):
        summarise(runs)
    paper = [{**r, "params": 100 + r["seed"]}
             for r in _paper_records(ReproduceConfig(models=["fcnn"], hidden_sizes=[16],
                                                     seeds=[0, 1]))]
    with pytest.raises(DataFileError, match=r"the runs of FCNN h = 16 disagree on params: 100 "
                                            r"\(fcnn-h16-seed0\); 101 \(fcnn-h16-seed1\)"):
        aggregate(paper)


# ----------------------------------------------------------------------------- 2. duplicate lines


def test_two_disagreeing_lines_of_a_key_are_refused_before_results_jsonl_is_rewritten(tmp_path,
                                                                                       capsys):
    """fcnn-seed1 has no run file and two lines with other accuracies: the last one was taken
    and the other deleted from results.jsonl (the report regenerates it), exit 0."""
    config = _bench_config()
    folder = _bench_folder(tmp_path / "b", config, [_bench_record(config, 0)])
    line = _bench_record(config, 1)
    lines = [line, {**line, "accuracy": {"test": 10.0}}]
    with open(folder / "results.jsonl", "a") as results:
        results.write("".join(json.dumps(r) + "\n" for r in lines))
    before = (folder / "results.jsonl").read_bytes()
    with pytest.raises(DataFileError, match=r"results.jsonl: 1 run\(s\) recorded twice with "
                                            r"different outcomes and no run file to tell which "
                                            r"is the run: fcnn-seed1 on lines 2 and 3 "
                                            r"\(different accuracy\)"):
        load_records(folder)
    capsys.readouterr()
    assert main(["report", str(folder)]) == 2
    assert "fcnn-seed1 on lines 2 and 3" in capsys.readouterr().err
    assert (folder / "results.jsonl").read_bytes() == before
    assert not (folder / "table.md").exists()


def test_a_sweep_refuses_disagreeing_lines_before_it_runs_or_rewrites(tmp_path, monkeypatch):
    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})
    runs = {f"fcnn-h4-seed{seed}": grid(ReproduceConfig(models=["fcnn"], hidden_sizes=[4],
                                                        seeds=[seed]))[0] for seed in (0, 1)}
    text = "".join(json.dumps({"key": "fcnn-h4-seed0", "status": "ok",
                               "accuracy": {"test": value}}) + "\n" for value in (0.5, 2.0))
    (tmp_path / "results.jsonl").write_text(text)
    ran = []

    def runner(run, data, **kwargs):
        ran.append(run.train.seed)
        return {"status": "ok", "accuracy": {"test": 1.0}, "train_seconds": 0.0,
                "eval_seconds": 0.0}

    with pytest.raises(DataFileError, match=r"fcnn-h4-seed0 on lines 1 and 2"):
        run_sweep("test", runs, tmp_path, base_fingerprint="fp", runner=runner,
                  progress=False, echo=lambda line: None)
    assert ran == [] and (tmp_path / "results.jsonl").read_text() == text


def test_agreeing_lines_and_lines_a_run_file_supersedes_stay_accepted(tmp_path):
    """Two writers of one run (other timings, the same outcome) are one run; lines of a key
    whose run file exists are copies of it or of one it replaced: the run file is the run."""
    save_run(tmp_path, "a", {"key": "a", "status": "ok", "accuracy": {"test": 3.0}})
    lines = [{"key": "a", "status": "ok", "accuracy": {"test": 1.0}},
             {"key": "b", "status": "ok", "accuracy": {"test": 5.0}, "train_seconds": 1.0},
             {"key": "a", "status": "ok", "accuracy": {"test": 2.0}},
             {"key": "b", "status": "ok", "accuracy": {"test": 5.0}, "train_seconds": 2.0}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = load_records(tmp_path)
    assert {k: r["accuracy"]["test"] for k, r in records.items()} == {"a": 3.0, "b": 5.0}
    write_aggregate(tmp_path)
    assert [json.loads(line)["key"] for line in
            (tmp_path / "results.jsonl").read_text().splitlines()] == ["a", "b"]


# ----------------------------------------------------------------------------- 3. means, rounding


@pytest.mark.parametrize("value, spec, text", [
    (96.25, ".1f", "96.3"), (96.35, ".1f", "96.4"), (96.15, ".1f", "96.2"), (0.25, ".1f", "0.3"),
    (-0.25, "+.1f", "-0.3"), (0.25, "+.1f", "+0.3"), (-0.04, "+.1f", "-0.0"),
    (96.24, ".1f", "96.2"), (1.25e-05, ".1e", "1.3e-05"), (0.125, ".1e", "1.3e-01"),
    (float("nan"), ".1f", "nan")])
def test_numbers_round_half_away_from_zero(value, spec, text):
    assert format_number(value, spec) == text


def _runs(values) -> list[dict]:
    return [{"key": f"x-seed{seed}", "entry": "x", "model": "fcnn", "hidden": 16, "seed": seed,
             "status": "ok", "params": 1, "train_seconds": 60.0,
             "accuracy": {"test": v, "iso": v, "sca": v}} for seed, v in enumerate(values)]


def _cells(values) -> tuple[str, str]:
    """The test cell of the paper's report and of the benchmark's for the same runs."""
    paper = next(line for line in protocol_table(aggregate(_runs(values)), compare=False)
                 .splitlines() if line.startswith("| 16 |"))
    bench = next(line for line in benchmark_table(summarise(_runs(values))).splitlines()
                 if line.startswith("| x |"))
    return paper.strip("| ").split(" | ")[3], bench.strip("| ").split(" | ")[3]


def test_both_reports_average_and_round_the_same_runs_alike():
    # numpy's mean of these is 95.94999..., math.fsum's 95.95: 95.9 in one table, 96.0 in the other
    assert _cells([95.91, 95.86, 96.08]) == ("96.0 (0.1)", "96.0 (0.1)")
    # a mean of exactly 96.25 (a binary tie): format gave 96.2, a reader expects 96.3
    assert _cells([96.0, 96.5]) == ("96.3 (0.4)", "96.3 (0.4)")
