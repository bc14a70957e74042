"""The validation study (its starting point, its choice, its table) and the reports of sweeps and
benchmarks (failed runs, scenarios, duplicates, the EqPdeNet − FCNN pairing, their headers)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from data_helpers import write_npz
from eqpdenet.app import sweeps
from eqpdenet.app.cli import main
from eqpdenet.app.config import (
    BenchmarkConfig,
    ReproduceConfig,
    apply_overrides,
    load_toml,
    to_toml,
)
from eqpdenet.app.files import read_jsonl
from eqpdenet.app.study import STAGES, Stage, run_study, study_base
from eqpdenet.app.training import fingerprint
from eqpdenet.errors import DataFileError
from study_helpers import fake_study_reproduce

RESULTS = Path(__file__).resolve().parents[2] / "results"


# ----------------------------------------------------------------------------- the study


def test_the_study_starts_from_the_prototype_not_from_todays_defaults():
    """The defaults became the recipe the study chose; the study's base is the issue's
    prototype, the configuration of the first folder of results/study."""
    base = study_base().base
    assert (base.model.input_mean, base.model.input_std) == (0.0, 1.0)
    assert base.train.pde_lr_scale == 1.0 and base.model.layer.init_noise == 0.0
    assert base.model.layer.ratio_regularisation == "absolute"
    assert (base.data.validation, base.scenarios, base.train.epochs) == (2000, [], 20)
    assert fingerprint(base) == "b6459b8a807b"
    recorded = read_jsonl(RESULTS / "study" / "runs" / "b6459b8a807b" / "results.jsonl")
    assert {r["base_fingerprint"] for r in recorded} == {"b6459b8a807b"}


def _stage_tables(text: str) -> str:
    """study.md from its first stage to its chosen configuration: what the runs decided."""
    return text[text.index("\n## "):text.index("## Chosen configuration")]


@pytest.mark.parametrize("folder, command", [
    ("study", ["--hidden", "256", "32", "--seeds", "0", "1", "--epochs", "20", "--jobs", "2"]),
    ("study-refine", ["--stages", "refine", "--config", str(RESULTS / "study" / "chosen.toml"),
                      "--hidden", "256", "32", "--seeds", "0", "1", "--epochs", "20", "--jobs", "2"]),
])
def test_every_committed_study_resumes_with_its_recorded_command(folder, command, tmp_path,
                                                                 monkeypatch, capsys, no_data):
    """docs/study.md's commands, on copies of the committed folders: every cell of every stage
    finds its runs done (nothing is trained, no data loaded), the stages' tables come out as
    committed and so does the choice. The study used to start from today's defaults (the
    chosen recipe, fingerprint ca40bff90a76): '0 runs done, 8 to go'."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a run of the committed study would be trained again")

    monkeypatch.setattr(sweeps, "run_experiment", forbidden)
    out = tmp_path / folder
    shutil.copytree(RESULTS / folder, out, ignore=shutil.ignore_patterns("checkpoints"))
    assert main(["study", "--out", str(out), "--no-progress", *command]) == 0
    lines = capsys.readouterr().out.splitlines()
    counts = [line for line in lines if line.startswith("reproduce: ")]
    assert counts and all(re.match(r"reproduce: \d+ runs done, 0 to go", line) for line in counts)
    committed = (RESULTS / folder / "study.md").read_text()
    assert _stage_tables((out / "study.md").read_text()) == _stage_tables(committed)
    chosen = load_toml(ReproduceConfig, out / "chosen.toml")
    assert fingerprint(chosen.base) == fingerprint(
        load_toml(ReproduceConfig, RESULTS / folder / "chosen.toml").base)


def _small_base(**options):
    return study_base(hidden_sizes=(16,), seeds=(0,), **options)


PDE_LR = {1.0: 80.0, 0.1: 80.3, 0.05: 80.5, 0.02: 80.5}


def _by_pde_lr(run):
    return PDE_LR[run.train.pde_lr_scale] if run.model.kind == "eqpdenet" else 70.0


@pytest.mark.parametrize("order", [("0.1", "0.05"), ("0.05", "0.1")])
def test_the_best_candidate_that_beats_the_incumbent_is_chosen_in_any_order(order, tmp_path,
                                                                            monkeypatch):
    """Incumbent 80.0, candidates 80.3 and 80.5, margin 0.25: both beat the incumbent, and 80.5
    is chosen whatever the order. The candidate listed second was compared with the first one
    plus the margin (80.5 > 80.3 + 0.25 fails), so listing 0.1 first chose it."""
    fake_study_reproduce(monkeypatch, _by_pde_lr)
    stage = Stage("pde-lr", "layer", "?", {"x1": ["base.train.pde_lr_scale=1.0"],
                                           **{f"x{v}": [f"base.train.pde_lr_scale={v}"]
                                              for v in order}})
    chosen = run_study(tmp_path / "s", base=_small_base(), stages=[stage], echo=lambda *a: None)
    assert chosen.base.train.pde_lr_scale == 0.05
    assert "Chosen: **x0.05**." in (tmp_path / "s" / "study.md").read_text()


@pytest.mark.parametrize("order", [("b", "a"), ("a", "b")])
def test_equal_scores_go_to_the_name_that_sorts_first(order, tmp_path, monkeypatch):
    """Two candidates with the same score (80.5, both beating the incumbent): the choice is the
    name that sorts first, never the listing order."""
    fake_study_reproduce(monkeypatch, _by_pde_lr)
    values = {"a": 0.02, "b": 0.05}
    stage = Stage("pde-lr", "layer", "?", {"x1": ["base.train.pde_lr_scale=1.0"],
                                           **{name: [f"base.train.pde_lr_scale={values[name]}"]
                                              for name in order}})
    chosen = run_study(tmp_path / "s", base=_small_base(), stages=[stage], echo=lambda *a: None)
    assert chosen.base.train.pde_lr_scale == 0.02


def test_a_candidate_within_the_margin_is_not_chosen(tmp_path, monkeypatch):
    fake_study_reproduce(monkeypatch, _by_pde_lr)
    stage = Stage("pde-lr", "layer", "?", {"x1": ["base.train.pde_lr_scale=1.0"],
                                           "x0.1": ["base.train.pde_lr_scale=0.1"]})
    PDE_LR[0.1] = 80.25  # exactly the margin: not more than it
    try:
        chosen = run_study(tmp_path / "s", base=_small_base(), stages=[stage],
                           echo=lambda *a: None)
    finally:
        PDE_LR[0.1] = 80.3
    assert chosen.base.train.pde_lr_scale == 1.0


def _rows(text: str, stage: str) -> list[str]:
    section = text[text.index(f"## {stage} "):]
    section = section[:section.index("Chosen:")]
    return [line for line in section.splitlines() if line.startswith("| ") and "candidate" not in line]


def test_a_layer_stage_counts_each_run_once_and_the_same_on_resume(tmp_path, monkeypatch):
    """A layer candidate that was chosen becomes the next stage's incumbent, which runs FCNN in
    its folder too. Its row used to add the first folder's FCNN runs to the folder's own: 3 runs
    instead of 2 on a resume, and the FCNN column averaged twice."""
    trained = fake_study_reproduce(monkeypatch, _by_pde_lr)
    stages = [Stage("pde-lr", "layer", "?", {"x1": ["base.train.pde_lr_scale=1.0"],
                                             "x0.1": ["base.train.pde_lr_scale=0.1"]}),
              Stage("weight-decay", "shared", "?", {"none": ["base.train.weight_decay=0.0"],
                                                    "wd": ["base.train.weight_decay=0.05"]})]
    out = tmp_path / "s"
    run_study(out, base=_small_base(), stages=stages, echo=lambda *a: None)
    first = (out / "study.md").read_text()
    rows = _rows(first, "pde-lr")
    assert [row.split(" | ")[5] for row in rows] == ["2", "2"]  # runs: EqPdeNet and FCNN, once
    assert rows[1].split(" | ")[2:4] == ["80.30", "70.00"]
    chosen_folder = fingerprint(apply_overrides(_small_base(), [
        "base.train.pde_lr_scale=0.1"]).base)
    assert ("fcnn" in {r["model"] for r in read_jsonl(out / "runs" / chosen_folder
                                                       / "results.jsonl")})
    trained.clear()
    run_study(out, base=_small_base(), stages=stages, echo=lambda *a: None)
    assert trained == []
    assert (out / "study.md").read_text() == first


def test_the_epochs_candidate_is_labelled_with_the_epochs_it_trains(tmp_path, monkeypatch):
    """``--epochs 7``: the incumbent's row says 7-epochs (it said 20-epochs); with 10, the
    '10-epochs' candidate is the incumbent itself, one row, trained once."""
    trained = fake_study_reproduce(monkeypatch, lambda run: 50.0 + run.train.epochs)
    run_study(tmp_path / "a", base=_small_base(epochs=7), stages=[STAGES[0]], echo=lambda *a: None)
    rows = _rows((tmp_path / "a" / "study.md").read_text(), "epochs")
    assert [row.split(" | ")[:2] for row in rows] == [["| 7-epochs", "(incumbent)"],
                                                      ["| **10-epochs**", "`base.train.epochs=10`"]]
    trained.clear()
    run_study(tmp_path / "b", base=_small_base(epochs=10), stages=[STAGES[0]], echo=lambda *a: None)
    rows = _rows((tmp_path / "b" / "study.md").read_text(), "epochs")
    assert [row.split(" | ")[:2] for row in rows] == [["| **10-epochs**", "(incumbent)"]]
    assert len(trained) == 2  # EqPdeNet and FCNN, once


def test_a_candidate_holding_the_incumbents_values_labels_it(tmp_path, monkeypatch):
    """From the chosen recipe (PDE learning rate x0.01): the pde-lr stage's incumbent is
    'pde-lr-x0.01' and x1 a real candidate; the label 'pde-lr-x1' no longer names a run of
    another learning rate."""
    fake_study_reproduce(monkeypatch, lambda run: 60.0)
    base = apply_overrides(_small_base(), ["base.train.pde_lr_scale=0.01"])
    run_study(tmp_path / "s", base=base, stages=[STAGES[1]], echo=lambda *a: None)
    rows = _rows((tmp_path / "s" / "study.md").read_text(), "pde-lr")
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| **pde-lr-x0.01**", "(incumbent)"], ["| pde-lr-x1", "`base.train.pde_lr_scale=1.0`"],
        ["| pde-lr-x0.1", "`base.train.pde_lr_scale=0.1`"]]


def test_the_study_md_header_describes_the_configuration_it_ran(tmp_path, monkeypatch):
    fake_study_reproduce(monkeypatch, lambda run: 60.0)
    run_study(tmp_path / "a", base=_small_base(), stages=[STAGES[0]], echo=lambda *a: None)
    header = (tmp_path / "a" / "study.md").read_text().splitlines()[2]
    assert header.startswith("Greedy search on the validation split (train 10,000 / validate "
                             "2,000 of ROTMNIST's 12,000 training digits; the test set is never "
                             "used). Scores are mean validation accuracy in percent over seeds [0] "
                             "and hidden sizes [16], starting from 20 epochs (the epochs stage "
                             "may change them);")
    data = tmp_path / "gray_36.npz"  # a file that is there: the preflight refuses one that is not
    write_npz(data, train=800, test=200, size=8)
    base = apply_overrides(_small_base(), [
        f"base.data.dataset='{data}'", "base.data.validation=500",
        "base.data.train_subset=300", "base.scenarios=['test', 'iso']",
        "base.data.test_subset=200"])
    run_study(tmp_path / "b", base=base, stages=[STAGES[0]], echo=lambda *a: None)
    header = (tmp_path / "b" / "study.md").read_text().splitlines()[2]
    assert header.startswith("Greedy search on the validation split (validate on the last 500 of "
                             "gray_36.npz's training images, train on the first 300 of the "
                             "others; the scenarios test, iso are evaluated on the first 200 test "
                             "images with every run, and play no part in the choice).")
    assert "ROTMNIST" not in header and "never used" not in header


@pytest.mark.parametrize("source", ["set", "config"])
def test_a_study_without_a_validation_split_is_refused_before_any_work(source, tmp_path, capsys,
                                                                       no_data):
    """It trained every run of the first cell, then failed on KeyError 'validation_accuracy'."""
    out = tmp_path / "s"
    if source == "set":
        extra = ["--set", "base.data.validation=0"]
    else:  # a reproduce configuration: validation 0 by default
        (tmp_path / "config.toml").write_text(to_toml(ReproduceConfig()))
        extra = ["--config", str(tmp_path / "config.toml")]
    assert main(["study", "--out", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["eqpdenet: error: invalid config: base.data.validation: the study scores every "
                   "candidate on the validation split, so it must hold images (> 0), got 0 "
                   "(EQPDENET_DEBUG=1 shows the traceback)"]
    assert not out.exists()


# ----------------------------------------------------------------------------- benchmark report


ALL = {"test": 60.0, "iso": 40.0, "sca": 30.0, "rot": 35.0, "shift": 45.0}


def _record(entry, seed, *, model="fcnn", status="ok", accuracy=None, dataset="rotmnist",
            angles=(0.0, 90.0)):
    record = {"key": f"{entry}-seed{seed}", "entry": entry, "model": model, "hidden": 16,
              "seed": seed, "status": status, "base_fingerprint": "f" * 12,
              "config": {"data": {"dataset": dataset, "test_subset": 0, "train_subset": 0}}}
    if status != "ok":
        return {**record, "error": "PDE 'pde0:se2' produced a non-finite state"}
    accuracy = dict(ALL if accuracy is None else accuracy)
    accuracy = {k: v + seed for k, v in accuracy.items()}
    return {**record, "accuracy": accuracy, "params": 13002, "train_seconds": 60.0 * (1 + seed),
            "eval_seconds": 1.0, "environment": {"cpu_capability": "AVX2"},
            "robustness": {"images": 100, "angles": list(angles),
                           "rotation": [50.0, 40.0, 45.0][:len(angles)],
                           "scales": [1.0], "scale": [50.0], "shifts": [0.0], "shift": [50.0],
                           "logit_change": {"90": 0.5, "37": 0.4},
                           "round_trip_change": {"90": 0.0, "37": 0.1}}}


def _benchmark_folder(path: Path, records: list[dict], entries=("fcnn", "eqp")) -> Path:
    from eqpdenet.app.benchmark import benchmark_fingerprint

    path.mkdir(parents=True)
    config = BenchmarkConfig(models={name: ["model.hidden=16"] for name in entries}, seeds=[0, 1])
    (path / "config.toml").write_text(to_toml(config))
    # runs of this configuration: the report tables no other (another base is refused)
    records = [{**r, "base_fingerprint": benchmark_fingerprint(config)}
               if r.get("base_fingerprint") == "f" * 12 else r for r in records]
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _table_rows(text: str) -> dict[str, list[str]]:
    return {line.split(" | ")[0][2:]: line.strip("| ").split(" | ")
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}


def test_a_benchmark_report_shows_its_diverged_runs(tmp_path, capsys):
    """An entry whose runs all diverged had no row and the header counted 4 runs; one of two
    failed left 1 seed with nothing said. Shown as the paper's report does: (+N failed)."""
    records = [_record("fcnn", 0), _record("fcnn", 1, status="diverged"),
               _record("eqp", 0, model="eqpdenet", status="diverged"),
               _record("eqp", 1, model="eqpdenet", status="diverged")]
    folder = _benchmark_folder(tmp_path / "b", records)
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    table = (folder / "table.md").read_text()
    assert table in out  # stdout and table.md say the same
    assert ("(4 runs, 3 of them failed (fcnn-seed1: diverged, eqp-seed0: diverged, eqp-seed1: "
            "diverged); training and evaluation 0.0 hours") in table
    rows = _table_rows(table)
    assert rows["fcnn"][:4] == ["fcnn", "13,002", "1 (+1 failed)", "60.0"]
    assert rows["eqp"] == ["eqp", "–", "0 (+2 failed)"] + ["–"] * 11


@pytest.mark.parametrize("names", [("cnn", "fcnn"), ("zcnn", "fcnn")])
def test_benchmark_entries_with_other_scenarios_share_one_table(names, tmp_path):
    """An entry overriding ``scenarios`` to test and iso: its columns used to come from the first
    entry (dropping the others' columns) or raise KeyError 'sca' after all the training."""
    few, every = names
    records = [_record(every, 0), _record(every, 1),
               _record(few, 0, model="cnn", accuracy={"test": 70.0, "iso": 50.0}),
               _record(few, 1, model="cnn", accuracy={"test": 70.0, "iso": 50.0})]
    records.sort(key=lambda r: r["entry"])
    folder = _benchmark_folder(tmp_path / "b", records, entries=(every, few))
    assert main(["report", str(folder)]) == 0
    table = (folder / "table.md").read_text()
    assert "| model | params | seeds | test | iso | sca | rot | shift |" in table
    rows = _table_rows(table)
    assert rows[few][3:8] == ["70.5 (0.7)", "50.5 (0.7)", "–", "–", "–"]
    assert rows[every][3:8] == ["60.5 (0.7)", "40.5 (0.7)", "30.5 (0.7)", "35.5 (0.7)", "45.5 (0.7)"]


def test_a_scenario_only_some_runs_have_says_how_many(tmp_path):
    partial = _record("fcnn", 1)
    del partial["accuracy"]["shift"]
    folder = _benchmark_folder(tmp_path / "b", [_record("fcnn", 0), partial], entries=("fcnn",))
    assert main(["report", str(folder)]) == 0
    rows = _table_rows((folder / "table.md").read_text())
    assert rows["fcnn"][7] == "45.0 [1 of 2 runs]"


def test_a_benchmark_report_counts_a_run_once_and_refuses_two_outcomes(tmp_path, capsys):
    """As the paper's report (docs/reliability.md, rows 69-70): a line written twice is one run
    (it was averaged twice: 3 seeds), a run with two accuracies is refused. Two entries of one
    model kind, hidden size and seed are two runs."""
    records = [_record("fcnn", 0), _record("fcnn", 1), _record("fcnn-wide", 0),
               _record("fcnn-wide", 1)]
    folder = _benchmark_folder(tmp_path / "dup", [*records, records[0]],
                               entries=("fcnn", "fcnn-wide"))
    assert main(["report", str(folder)]) == 0
    table = (folder / "table.md").read_text()
    assert "(4 runs; training and evaluation 0.1 hours" in table
    assert _table_rows(table)["fcnn"][2:4] == ["2", "60.5 (0.7)"]
    other = json.loads(json.dumps(records[0]))
    other["accuracy"]["test"] = 99.0
    folder = _benchmark_folder(tmp_path / "contra", [*records, other],
                               entries=("fcnn", "fcnn-wide"))
    capsys.readouterr()
    assert main(["report", str(folder)]) == 2
    assert (f"{folder}/results.jsonl: run fcnn-seed0 is recorded twice with different accuracy "
            f"(record 5); keep one and rerun `eqpdenet report`") in capsys.readouterr().err


def test_curves_on_other_axes_are_refused_not_indexed(tmp_path, capsys):
    folder = _benchmark_folder(tmp_path / "b", [_record("fcnn", 0, angles=(0.0, 90.0, 45.0)),
                                                _record("fcnn", 1)], entries=("fcnn",))
    with pytest.raises(DataFileError, match=r"the runs of fcnn recorded their curves on other "
                                            r"angles: \[0.0, 90.0, 45.0\] \(fcnn-seed0\), "
                                            r"\[0.0, 90.0\] \(fcnn-seed1\)"):
        from eqpdenet.app.benchmark import write_benchmark_report

        write_benchmark_report(folder)


def test_the_robustness_plot_names_the_data_set(tmp_path, monkeypatch):
    from eqpdenet.app import benchmark

    titles, render = [], benchmark.figure_bytes

    def keep_title(fig, *args, **kwargs):
        titles.append(fig._suptitle.get_text())
        return render(fig, *args, **kwargs)

    monkeypatch.setattr(benchmark, "figure_bytes", keep_title)
    npz = [_record("fcnn", s, dataset="/data/gray_36.npz") for s in (0, 1)]
    benchmark.write_benchmark_report(_benchmark_folder(tmp_path / "npz", npz, entries=("fcnn",)))
    rot = [_record("fcnn", s) for s in (0, 1)]
    benchmark.write_benchmark_report(_benchmark_folder(tmp_path / "rot", rot, entries=("fcnn",)))
    assert titles == ["Robustness on the first 100 gray_36.npz test images (mean over seeds)",
                      "Robustness on the first 100 ROTMNIST test digits (mean over seeds)"]


# ----------------------------------------------------------------------------- paper report


def _paper_record(model, hidden, seed, test, *, train_subset=0, test_subset=0, dataset=None):
    data = {"train_subset": train_subset, "test_subset": test_subset}
    if dataset:
        data["dataset"] = dataset
    return {"model": model, "hidden": hidden, "seed": seed, "status": "ok", "params": 100,
            "accuracy": {"test": test, "iso": test - 10, "sca": test - 20},
            "config": {"data": data}}


def _gap_row(table: str, hidden: int) -> list[str]:
    section = table[table.index("### EqPdeNet − FCNN"):]
    return next(line.strip("| ").split(" | ") for line in section.splitlines()
                if line.startswith(f"| {hidden} |"))


def test_the_gap_is_paired_on_the_seeds_both_models_have(tmp_path):
    """EqPdeNet seeds 0-2, FCNN seed 0 only: the gap is that seed's difference, said to cover 1
    of 3 seeds; it was the difference of the means (EqPdeNet's over 3 seeds). Seeds 0 and 1 in
    common: their mean (std); none in common: the means, said unpaired."""
    from eqpdenet.app.report import aggregate, protocol_table

    eq = [_paper_record("eqpdenet", 16, s, t) for s, t in ((0, 70.0), (1, 80.0), (2, 90.0))]
    one = protocol_table(aggregate([*eq, _paper_record("fcnn", 16, 0, 69.0)]))
    assert _gap_row(one, 16)[2] == "+1.0 [paired on 1 of 3 seeds]"
    two = protocol_table(aggregate([*eq, _paper_record("fcnn", 16, 0, 69.0),
                                    _paper_record("fcnn", 16, 1, 78.0)]))
    assert _gap_row(two, 16)[2] == "+1.5 (0.7) [paired on 2 of 3 seeds]"
    every = protocol_table(aggregate([*eq, *(_paper_record("fcnn", 16, s, 60.0 + 10 * s)
                                             for s in range(3))]))
    assert _gap_row(every, 16)[2] == "+10.0 (0.0)"
    none = protocol_table(aggregate([*eq, _paper_record("fcnn", 16, 5, 60.0)]))
    assert _gap_row(none, 16)[2] == "+20.0 (unpaired)"


def test_the_paper_report_header_names_the_data_subsets_and_failures(tmp_path):
    from eqpdenet.app.report import write_report

    folder = tmp_path / "sweep"
    folder.mkdir()
    records = [_paper_record(m, 16, 0, 70.0, train_subset=300, test_subset=500,
                             dataset="/data/gray_36.npz") for m in ("eqpdenet", "fcnn")]
    records.append({"model": "fcnn", "hidden": 16, "seed": 1, "status": "diverged",
                    "error": "NaN"})
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report(folder)
    header = (folder / "table.md").read_text().splitlines()[0]
    assert header.startswith("Accuracy in percent on gray_36.npz test, `iso` and `sca`:")
    assert header.endswith("(3 runs, 1 of them failed (fcnn-h16-seed1: diverged); no "
                           "`config.toml`: each run's configuration is in its record). Runs used "
                           "only the first 300 training images "
                           "(`data.train_subset`) and the first 500 test images "
                           "(`data.test_subset`).")
