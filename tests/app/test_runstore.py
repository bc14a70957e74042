"""One result file per run: atomic, resumable, de-duplicated by key, aggregated deterministically
into results.jsonl; folders that hold results.jsonl only keep working."""

import json
import os

import pytest

from eqpdenet.app import sweeps
from eqpdenet.app.config import ExperimentConfig, to_dict
from eqpdenet.app.files import read_jsonl
from eqpdenet.app.runstore import load_records, run_file, save_run, set_aside, write_aggregate
from eqpdenet.app.sweeps import changed_runs, check_before_writing, run_sweep
from eqpdenet.errors import ConfigError


def fake_record(run, score: float) -> dict:
    return {"model": run.model.kind, "hidden": run.model.hidden, "seed": run.train.seed,
            "status": "ok", "params": 1, "accuracy": {"test": score}, "train_seconds": 0.0,
            "eval_seconds": 0.0}


def runs_of(seeds) -> dict[str, ExperimentConfig]:
    runs = {}
    for seed in seeds:
        run = ExperimentConfig()
        run.train.seed = seed
        runs[f"fcnn-h4-seed{seed}"] = run
    return runs


@pytest.fixture(autouse=True)
def no_data(monkeypatch):
    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})


def sweep(out, runs, runner):
    return run_sweep("test", runs, out, base_fingerprint="fp", runner=runner, progress=False,
                     echo=lambda line: None)


def test_resume_skips_done_keys_and_results_is_the_aggregate_of_the_run_files(tmp_path):
    calls = []

    def interrupted(run, data, *, progress, checkpoint):
        calls.append(run.train.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_record(run, 10.0 + run.train.seed)

    runs = runs_of([2, 0, 1])  # not in key order: results.jsonl is sorted by key anyway
    with pytest.raises(KeyboardInterrupt):
        sweep(tmp_path, runs, interrupted)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["fcnn-h4-seed2.json"]
    assert [r["key"] for r in read_jsonl(tmp_path / "results.jsonl")] == ["fcnn-h4-seed2"]

    sweep(tmp_path, runs, interrupted)
    assert calls == [2, 0, 0, 1]  # seed 2 was not rerun; seed 0 (interrupted) was
    records = read_jsonl(tmp_path / "results.jsonl")
    assert [r["key"] for r in records] == ["fcnn-h4-seed0", "fcnn-h4-seed1", "fcnn-h4-seed2"]
    assert [r["accuracy"]["test"] for r in records] == [10.0, 11.0, 12.0]
    files = [json.loads(run_file(tmp_path, r["key"]).read_text()) for r in records]
    assert records == files
    before = (tmp_path / "results.jsonl").read_bytes()
    sweep(tmp_path, runs, interrupted)  # nothing to do: nothing run, the same bytes
    assert len(calls) == 4 and (tmp_path / "results.jsonl").read_bytes() == before


def test_a_failed_write_leaves_no_half_file(tmp_path, monkeypatch):
    """The run file is written to a temporary file and renamed: a write killed before the rename
    leaves neither the run file nor the temporary file, and the run is redone on resume."""
    runs = runs_of([0])

    def fail(*args):
        raise KeyboardInterrupt  # as if killed between the write and the rename

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        sweep(tmp_path, runs, lambda run, data, **kwargs: fake_record(run, 50.0))
    assert list((tmp_path / "runs").iterdir()) == []  # no run file, no temporary file
    assert not (tmp_path / "results.jsonl").exists()
    monkeypatch.setattr(os, "replace", real_replace)
    sweep(tmp_path, runs, lambda run, data, **kwargs: fake_record(run, 50.0))
    assert [r["accuracy"]["test"] for r in read_jsonl(tmp_path / "results.jsonl")] == [50.0]


def test_a_folder_with_results_jsonl_only_keeps_working(tmp_path):
    """Folders written before run files (results/paper): their lines are finished runs, the file
    is left alone while there is nothing to do, and a new run joins them in key order."""
    # a key twice, the same run (two writers): one run, the last line kept (a key twice with
    # different outcomes is refused: tests/app/test_report_integrity_round9.py)
    old = [{"key": "fcnn-h4-seed1", "accuracy": {"test": 1.0}, "status": "ok"},
           {"key": "fcnn-h4-seed0", "accuracy": {"test": 2.0}, "status": "ok", "train_seconds": 1},
           {"key": "fcnn-h4-seed0", "accuracy": {"test": 2.0}, "status": "ok", "train_seconds": 2}]
    text = "".join(json.dumps(r) + "\n" for r in old)
    (tmp_path / "results.jsonl").write_text(text)
    loaded = load_records(tmp_path)
    assert {k: r["accuracy"]["test"] for k, r in loaded.items()} == {
        "fcnn-h4-seed1": 1.0, "fcnn-h4-seed0": 2.0}
    assert loaded["fcnn-h4-seed0"]["train_seconds"] == 2
    ran = []

    def runner(run, data, **kwargs):
        ran.append(run.train.seed)
        return fake_record(run, 3.0)

    sweep(tmp_path, runs_of([0, 1]), runner)
    assert ran == [] and (tmp_path / "results.jsonl").read_text() == text  # untouched
    sweep(tmp_path, runs_of([0, 1, 2]), runner)
    assert ran == [2]
    records = read_jsonl(tmp_path / "results.jsonl")
    assert [(r["key"], r["accuracy"]["test"]) for r in records] == [
        ("fcnn-h4-seed0", 2.0), ("fcnn-h4-seed1", 1.0), ("fcnn-h4-seed2", 3.0)]


def test_two_writers_add_distinct_files_and_the_aggregate_holds_both(tmp_path):
    """Writer A regenerates results.jsonl before writer B's run file exists (a stale view); B's
    regeneration, and any later one, holds every run: the run files are the truth."""
    save_run(tmp_path, "a", {"key": "a", "value": 1})
    write_aggregate(tmp_path)
    save_run(tmp_path, "b", {"key": "b", "value": 2})  # the other machine's run
    assert [r["key"] for r in read_jsonl(tmp_path / "results.jsonl")] == ["a"]  # stale for now
    write_aggregate(tmp_path)
    assert read_jsonl(tmp_path / "results.jsonl") == [{"key": "a", "value": 1},
                                                      {"key": "b", "value": 2}]
    save_run(tmp_path, "b", {"key": "b", "value": 2})  # the same key again: still one line
    write_aggregate(tmp_path)
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 2


@pytest.mark.parametrize("key", ["../escape", "a/b", ".hidden", ""])
def test_a_key_must_be_a_plain_file_name(tmp_path, key):
    with pytest.raises(ConfigError, match="cannot name a file"):
        run_file(tmp_path, key)


def test_a_corrupt_run_file_is_a_clear_error(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x.json").write_text('{"key": ')
    with pytest.raises(ValueError, match=r"x\.json: not a JSON run record"):
        load_records(tmp_path)


def test_git_commit_is_dirty_only_for_the_package(tmp_path):
    """Results a sweep rewrites while it runs (tracked, outside the package) leave the recorded
    commit clean; a change to the package's code marks it dirty."""
    import shutil
    import subprocess

    from eqpdenet.app.training import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo, package = tmp_path / "repo", tmp_path / "repo" / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "code.py").write_text("x = 1\n")
    (repo / "results.jsonl").write_text("{}\n")

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                       check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_commit(package) == head
    (repo / "results.jsonl").write_text('{"run": 1}\n')
    assert git_commit(package) == head
    (package / "code.py").write_text("x = 2\n")
    assert git_commit(package) == head + "-dirty"


def recorded(run, score: float) -> dict:
    """A record as run_experiment writes it: with the run's whole configuration."""
    return {**fake_record(run, score), "config": to_dict(run)}


def test_runs_made_under_another_configuration_of_their_key_are_refused_not_counted(tmp_path):
    # an entry's recipe changed (train.epochs) after its runs finished: counting them as done
    # would report results that are not the configuration's
    ran = []

    def runner(run, data, **kwargs):
        ran.append((run.train.seed, run.train.epochs))
        return recorded(run, 1.0)

    runs = runs_of([0, 1])
    sweep(tmp_path, runs, runner)
    assert changed_runs(runs, tmp_path) == {}
    runs["fcnn-h4-seed1"].train.epochs += 1
    epochs = runs["fcnn-h4-seed1"].train.epochs
    assert changed_runs(runs, tmp_path) == {
        "fcnn-h4-seed1": [f"train.epochs: {epochs - 1} recorded, {epochs} now"]}
    with pytest.raises(ConfigError, match=r"fcnn-h4-seed1 \(train\.epochs: .* recorded"):
        sweep(tmp_path, runs, runner)
    with pytest.raises(ConfigError, match="--rerun-changed"):
        check_before_writing(runs, tmp_path, 1, None, set())
    assert ran == [(0, epochs - 1), (1, epochs - 1)]  # nothing ran, nothing moved
    assert run_file(tmp_path, "fcnn-h4-seed1").exists()


def test_rerun_changed_sets_the_changed_runs_aside_and_runs_them_again(tmp_path, monkeypatch):
    monkeypatch.setattr(sweeps, "preflight", lambda *args, **kwargs: None)
    runs = runs_of([0, 1])
    sweep(tmp_path, runs, lambda run, data, **kwargs: recorded(run, 1.0))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "fcnn-h4-seed1.pt").write_bytes(b"weights")
    old_line = [line for line in (tmp_path / "results.jsonl").read_text().splitlines()
                if '"fcnn-h4-seed1"' in line]
    runs["fcnn-h4-seed1"].train.lr *= 2
    lines = []
    check_before_writing(runs, tmp_path, 1, None, set(), rerun_changed=True, echo=lines.append)
    (aside,) = (tmp_path / "superseded").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == [
        "fcnn-h4-seed1.json", "fcnn-h4-seed1.pt", "results.jsonl"]
    assert (aside / "results.jsonl").read_text().splitlines() == old_line
    assert [r["key"] for r in read_jsonl(tmp_path / "results.jsonl")] == ["fcnn-h4-seed0"]
    assert "set aside" in lines[0] and "fcnn-h4-seed1 (train.lr" in lines[0]
    ran = []

    def runner(run, data, **kwargs):
        ran.append(run.train.seed)
        return recorded(run, 2.0)

    sweep(tmp_path, runs, runner)
    assert ran == [1]
    assert {r["key"]: r["accuracy"]["test"] for r in read_jsonl(tmp_path / "results.jsonl")} == {
        "fcnn-h4-seed0": 1.0, "fcnn-h4-seed1": 2.0}
    assert changed_runs(runs, tmp_path) == {}


def test_a_field_added_since_a_run_reads_as_its_earlier_behaviour(tmp_path):
    # data.rotation_centre came later (LATER_FIELDS: "frame" before it existed): a record without
    # it matches a run at "frame" and is changed for a run at "mass"
    runs = runs_of([0])
    record = recorded(runs["fcnn-h4-seed0"], 1.0)
    del record["config"]["data"]["rotation_centre"]
    save_run(tmp_path, "fcnn-h4-seed0", {**record, "key": "fcnn-h4-seed0"})
    assert changed_runs(runs, tmp_path) == {}
    runs["fcnn-h4-seed0"].data.rotation_centre = "mass"
    assert changed_runs(runs, tmp_path) == {
        "fcnn-h4-seed0": ["data.rotation_centre: 'frame' recorded, 'mass' now"]}


def test_set_aside_in_a_folder_with_results_jsonl_only(tmp_path):
    lines = [json.dumps({"key": key, "status": "ok"}) + "\n" for key in ("a", "b")]
    (tmp_path / "results.jsonl").write_text("".join(lines))
    aside = set_aside(tmp_path, ["b"], "stamp")
    assert (tmp_path / "results.jsonl").read_text() == lines[0]
    assert (aside / "results.jsonl").read_text() == lines[1]
    assert set(load_records(tmp_path)) == {"a"}


def test_differences_name_only_the_fields_the_runs_model_reads(tmp_path):
    # another kind's option table (here the CNN's, for an FCNN run) is no difference
    runs = runs_of([0])
    record = {**recorded(runs["fcnn-h4-seed0"], 1.0), "key": "fcnn-h4-seed0"}
    record["config"]["model"]["cnn"]["channels"] += 1
    save_run(tmp_path, "fcnn-h4-seed0", record)
    assert changed_runs(runs, tmp_path) == {}
    runs["fcnn-h4-seed0"].train.lr *= 2
    (differences,) = changed_runs(runs, tmp_path).values()
    assert len(differences) == 1 and differences[0].startswith("train.lr: ")


def epochs_runner(run, data, *, progress, checkpoint):
    """Two 'epochs' with the training loop's progress, then a record."""
    from eqpdenet.app.progress import progress as progress_of

    for _ in progress_of(range(2), progress, desc=f"train FCNN seed={run.train.seed}", unit="epoch"):
        pass
    return fake_record(run, 1.0)


def test_a_sweep_into_a_log_writes_each_runs_epochs_led_by_its_key(tmp_path, capsys):
    run_sweep("test", runs_of([0, 1]), tmp_path, base_fingerprint="fp", runner=epochs_runner,
              echo=lambda line: None)
    err = capsys.readouterr().err  # not a terminal: lines, not bars
    lines = [line.split(",")[0] for line in err.splitlines()]
    assert lines == [f"fcnn-h4-seed{seed}: train FCNN seed={seed}: epoch {epoch}/2"
                     for seed in (0, 1) for epoch in (1, 2)]
    assert "\r" not in err and "\x1b" not in err

    run_sweep("test", runs_of([2]), tmp_path / "quiet", base_fingerprint="fp",
              runner=epochs_runner, progress=False, echo=lambda line: None)
    assert capsys.readouterr().err == ""


def test_a_worker_labels_its_runs_lines_and_leaves_no_label_behind(capsys):
    import torch

    from eqpdenet.app.progress import LineProgress

    threads = torch.get_num_threads()
    try:
        record = sweeps._worker((epochs_runner, "fcnn-h4-seed3", to_dict(runs_of([3])["fcnn-h4-seed3"]),
                                 None, None, 1, None, {}, True))
    finally:
        torch.set_num_threads(threads)
    assert record["seed"] == 3
    assert capsys.readouterr().err.splitlines()[1].startswith(
        "fcnn-h4-seed3: train FCNN seed=3: epoch 2/2, ")
    assert LineProgress(range(1), desc="train", unit="epoch").desc == "train"


def fake_reproduce(monkeypatch, tmp_path, config, **kwargs):
    """``reproduce`` into ``tmp_path`` with a runner that records the configuration it ran."""
    from eqpdenet.app.sweeps import reproduce

    monkeypatch.setattr(sweeps, "run_experiment", lambda run, data, **options: recorded(run, 1.0))
    lines = []
    reproduce(config, tmp_path, progress=False, echo=lines.append, **kwargs)
    return lines


def test_rerun_changed_takes_effect_for_a_changed_base_and_never_mixes_bases(tmp_path, monkeypatch):
    """Every change of a reproduce run changes its base fingerprint: the folder check refused it
    first ("holds runs of another configuration (fingerprints [...])", no field named), so
    --rerun-changed could never apply."""
    from eqpdenet.app.config import ReproduceConfig, apply_overrides
    from eqpdenet.app.training import fingerprint

    config = apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[4]",
                                                 "seeds=[0, 1]", "checkpoint_seeds=[]"])
    fake_reproduce(monkeypatch, tmp_path, config)
    first = fingerprint(config.base)
    changed = apply_overrides(config, ["base.train.lr=0.5"])
    with pytest.raises(ConfigError) as refusal:
        fake_reproduce(monkeypatch, tmp_path, changed)
    assert str(refusal.value) == (
        f"{tmp_path} holds 2 finished run(s) made with another configuration (or data) than the "
        f"one now given for the same key: fcnn-h4-seed0, fcnn-h4-seed1 (train.lr: 0.001 recorded, "
        f"0.5 now); run again with --rerun-changed to set them aside and run them anew, or choose "
        f"another output folder")
    assert {r["base_fingerprint"] for r in load_records(tmp_path).values()} == {first}

    lines = fake_reproduce(monkeypatch, tmp_path, changed, rerun_changed=True)
    assert "fcnn-h4-seed0, fcnn-h4-seed1 (train.lr: 0.001 recorded, 0.5 now): set aside" in lines[0]
    assert lines[1].endswith("0 runs done, 2 to go -> " + str(tmp_path / "results.jsonl"))
    second = fingerprint(changed.base)
    assert {k: r["base_fingerprint"] for k, r in load_records(tmp_path).items()} == {
        "fcnn-h4-seed0": second, "fcnn-h4-seed1": second}
    (aside,) = (tmp_path / "superseded").iterdir()
    assert {r["base_fingerprint"] for r in read_jsonl(aside / "results.jsonl")} == {first}

    # One seed fewer and the epochs changed: seed 1 is not rerun, but not kept beside the new
    # base either
    fewer = apply_overrides(changed, ["seeds=[0]", "base.train.epochs=3"])
    lines = fake_reproduce(monkeypatch, tmp_path, fewer, rerun_changed=True)
    assert "fcnn-h4-seed0 (train.epochs: 20 recorded, 3 now); fcnn-h4-seed1 (base.train.epochs: " \
           "20 recorded, 3 now): set aside" in lines[0]
    assert lines[0].endswith("those of this sweep to run again now, fcnn-h4-seed1 when a sweep "
                             "includes them")
    assert {k: r["base_fingerprint"] for k, r in load_records(tmp_path).items()} == {
        "fcnn-h4-seed0": fingerprint(fewer.base)}


def test_a_base_change_is_named_from_the_folders_config(tmp_path, monkeypatch):
    """A changed base field is named with both values rather than listing fingerprints; a base
    field the grid replaces (base.model.hidden, which no run sees) is refused before anything is
    compared."""
    from eqpdenet.app.config import ReproduceConfig, apply_overrides

    config = apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[4]",
                                                 "seeds=[0]", "checkpoint_seeds=[]"])
    fake_reproduce(monkeypatch, tmp_path, config)
    hidden = config.base.model.hidden
    with pytest.raises(ConfigError, match=r"base.model.hidden: .* is never used"):
        apply_overrides(config, [f"base.model.hidden={hidden + 1}"])
    lr = config.base.train.lr
    changed = apply_overrides(config, [f"base.train.lr={2 * lr}"])
    with pytest.raises(ConfigError, match=rf"fcnn-h4-seed0 \(train.lr: {lr} recorded, "
                                          rf"{2 * lr} now\); run again with --rerun-changed"):
        fake_reproduce(monkeypatch, tmp_path, changed)
