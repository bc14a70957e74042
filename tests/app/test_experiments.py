"""Experiments: reproduce end to end through the CLI, resume after a kill, report, configs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_helpers import data_dir_or_skip
from eqpdenet.app import sweeps, training
from eqpdenet.app.cli import main
from eqpdenet.app.config import (
    ExperimentConfig,
    LayerConfig,
    ReproduceConfig,
    apply_overrides,
    build_model,
    from_dict,
    load_toml,
    to_toml,
)
from eqpdenet.app.files import append_jsonl, read_jsonl
from eqpdenet.app.report import aggregate, protocol_table
from eqpdenet.app.sweeps import reproduce
from eqpdenet.app.training import Split
from eqpdenet.errors import ConfigError
from process_helpers import poll

TINY = ["base.data.train_subset=300", "base.data.test_subset=200", "base.train.epochs=1",
        "base.model.layer.T=0.2", "hidden_sizes=[8]", "seeds=[0, 1]"]
SRC = str(Path(__file__).resolve().parents[2] / "src")


def tiny_args(out: Path, cache: Path) -> list[str]:
    args = ["reproduce", "--out", str(out), "--cache-dir", str(cache), "--no-progress"]
    for item in TINY:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_reproduce_end_to_end_through_the_cli(tmp_path, cache_dir, capsys):
    data_dir_or_skip()
    out = tmp_path / "results"
    assert main(tiny_args(out, cache_dir)) == 0
    records = read_jsonl(out / "results.jsonl")
    assert sorted(r["key"] for r in records) == ["eqpdenet-h8-seed0", "eqpdenet-h8-seed1",
                                                 "fcnn-h8-seed0", "fcnn-h8-seed1"]
    for record in records:
        assert record["status"] == "ok"
        assert set(record["accuracy"]) == {"test", "iso", "sca"}
        assert all(0 <= v <= 100 for v in record["accuracy"].values())
        assert record["config"]["train"]["epochs"] == 1 and record["environment"]["git"]
        # The same seed repeats its numbers on one kind of CPU only: the record names the kind.
        assert record["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["params"] == (6442 if record["model"] == "fcnn" else 6473)  # 784*8+8 + 72 + 90
    assert (out / "table.md").read_text().count("| 8 |") >= 2
    assert (out / "accuracy_vs_params.png").stat().st_size > 1000
    assert load_toml(ReproduceConfig, out / "config.toml").hidden_sizes == [8]
    # seed 0 runs keep their trained model (checkpoint_seeds defaults to [0])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["eqpdenet-h8-seed0.pt",
                                                                      "fcnn-h8-seed0.pt"]
    model, config, payload = training.load_checkpoint(out / "checkpoints" / "fcnn-h8-seed0.pt")
    assert config.model.hidden == 8 and payload["accuracy"] == next(
        r["accuracy"] for r in records if r["key"] == "fcnn-h8-seed0")
    # same command again: nothing to do, nothing duplicated
    assert main(tiny_args(out, cache_dir)) == 0
    assert "4 runs done, 0 to go" in capsys.readouterr().out
    assert len(read_jsonl(out / "results.jsonl")) == 4


def test_same_seed_same_numbers(tmp_path, cache_dir):
    data_dir_or_skip()
    for name in ("a", "b"):
        assert main(tiny_args(tmp_path / name, cache_dir) + ["--set", "models=['eqpdenet']",
                                                             "--set", "seeds=[3]"]) == 0
    a, b = (read_jsonl(tmp_path / n / "results.jsonl")[0] for n in ("a", "b"))
    assert a["accuracy"] == b["accuracy"] and a["history"][0]["loss"] == b["history"][0]["loss"]


def test_resume_after_interruption_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    """The second run is interrupted; the rerun finishes the grid with each key exactly once."""
    config = apply_overrides(ReproduceConfig(), ["hidden_sizes=[4]", "seeds=[0, 1]"])
    calls = []

    def fake_run(run, data, progress=True, checkpoint=None):
        calls.append(run.train.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"model": run.model.kind, "hidden": run.model.hidden, "seed": run.train.seed,
                "status": "ok", "params": 1, "accuracy": {"test": 50.0}, "train_seconds": 0.0,
                "eval_seconds": 0.0}

    monkeypatch.setattr(sweeps, "run_experiment", fake_run)
    monkeypatch.setattr(sweeps, "_cached_data", lambda *a: {})
    with pytest.raises(KeyboardInterrupt):
        reproduce(config, tmp_path, progress=False, echo=lambda s: None)
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 1
    reproduce(config, tmp_path, progress=False, echo=lambda s: None)
    keys = [r["key"] for r in read_jsonl(tmp_path / "results.jsonl")]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 4
    assert len(calls) == 1 + 1 + 3  # first done, second interrupted, the three left


def test_killed_process_leaves_only_whole_lines(tmp_path, cache_dir):
    """SIGKILL mid-sweep, then resume: every line parses, every key appears exactly once, and no
    temporary file survives the rerun. Event-driven: the kill waits for the first run file (a
    finished run), whatever the machine's load; the deadline only bounds a hang."""
    data_dir = data_dir_or_skip()
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "eqpdenet"] + tiny_args(out, cache_dir) + [
        "--set", "seeds=[0, 1, 2]", "--set", "models=['fcnn']", "--data-dir", str(data_dir)]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        finished = poll(lambda: process.poll() is not None or any((out / "runs").glob("*.json")),
                        600, 0.05)
        assert finished, "no run finished within 10 minutes"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    first = read_jsonl(out / "results.jsonl")  # whole lines only (a partial one would not parse)
    assert len(first) <= 3
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    keys = [r["key"] for r in read_jsonl(out / "results.jsonl")]
    assert sorted(keys) == ["fcnn-h8-seed0", "fcnn-h8-seed1", "fcnn-h8-seed2"]
    assert not list(out.rglob("*.tmp"))  # a temporary file the kill left went with the rerun


def test_another_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sweeps, "run_experiment", lambda run, data, **kwargs: {
        "model": run.model.kind, "hidden": run.model.hidden, "seed": run.train.seed, "status": "ok",
        "params": 1, "accuracy": {}, "train_seconds": 0, "eval_seconds": 0})
    monkeypatch.setattr(sweeps, "_cached_data", lambda *a: {})
    config = apply_overrides(ReproduceConfig(), ["hidden_sizes=[4]", "seeds=[0]"])
    reproduce(config, tmp_path, progress=False, echo=lambda s: None)
    other = apply_overrides(config, ["base.train.lr=0.5"])
    with pytest.raises(ConfigError, match="another configuration"):
        reproduce(other, tmp_path, progress=False, echo=lambda s: None)


def test_report_on_known_input():
    records = []
    for seed, (a, b) in enumerate([(80.0, 70.0), (82.0, 74.0)]):
        records.append({"model": "eqpdenet", "hidden": 16, "seed": seed, "status": "ok",
                        "params": 13033, "accuracy": {"test": a, "iso": 40.0, "sca": 20.0}})
        records.append({"model": "fcnn", "hidden": 16, "seed": seed, "status": "ok",
                        "params": 13002, "accuracy": {"test": b, "iso": 30.0, "sca": 25.0}})
    records.append({"model": "fcnn", "hidden": 16, "seed": 9, "status": "diverged", "error": "x"})
    ours = aggregate(records)
    assert ours["eqpdenet", 16]["test"] == pytest.approx((81.0, 2**0.5))
    assert ours["fcnn", 16]["failed"] == 1 and ours["fcnn", 16]["n"] == 2
    table = protocol_table(ours)
    # paper EqPdeNet h=16 test 70.7 (2.7): ours 81.0, delta +10.3 = +3.8 sigma
    assert "| 16 | 13033 | 2 | 70.7 (2.7) | 81.0 (1.4) | +10.3 | +3.8 |" in table
    assert "| 16 | 13002 | 2 (+1 failed) | 65.5 (1.5) | 72.0 (2.8) | +6.5 | +4.3 |" in table
    # EqPdeNet - FCNN paired by seed: test diffs 10 and 8 -> +9.0 (1.4); iso 10, 10; sca -5, -5
    assert "| 16 | +5.2 | +9.0 (1.4) | +0.6 | +10.0 (0.0) | -0.4 | -5.0 (0.0) |" in table


def test_config_toml_round_trip_of_the_whole_protocol():
    config = apply_overrides(ReproduceConfig(), ["base.model.layer.stencil='isotropic'",
                                                 "base.train.weight_decay=0.01", "seeds=[5, 6]"])
    import tomllib

    assert from_dict(ReproduceConfig, tomllib.loads(to_toml(config))) == config
    assert config.base.model.layer.stencil == "isotropic" and config.seeds == [5, 6]
    with pytest.raises(ConfigError, match="unknown field 'lrr'"):
        apply_overrides(ExperimentConfig(), ["train.lrr=1"])


def test_jsonl_append_is_whole_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}')  # no trailing newline: the next record must not be glued to it
    append_jsonl(path, {"b": 2})
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]
    path.write_text('{"a": 1}\n{"b": \n')
    with pytest.raises(ValueError, match="r.jsonl:2: not a JSON line"):
        read_jsonl(path)


def test_checkpoint_round_trip_and_corrupt_file(tmp_path):
    config = ExperimentConfig()
    config.model.hidden = 8
    model = build_model(config.model)
    training.save_checkpoint(tmp_path / "m.pt", model, config)
    loaded, loaded_config, _ = training.load_checkpoint(tmp_path / "m.pt")
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded_config == config
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable eqpdenet checkpoint: not the zip archive "
                                         "torch.save writes"):
        training.load_checkpoint(tmp_path / "bad.pt")
    import zipfile  # a zip archive of something else: torch's first line only, no advice to
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as archive:  # load with weights_only=False
        archive.writestr("notes.txt", "x")
    with pytest.raises(ValueError) as info:
        training.load_checkpoint(tmp_path / "other.pt")
    assert "not a readable eqpdenet checkpoint" in str(info.value)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_format_2_and_format_1_read_with_the_legacy_regularisation(tmp_path):
    config = ExperimentConfig()
    config.model.hidden = 8
    config.model.layer = LayerConfig.preset("se2_sim2")
    model = build_model(config.model)
    training.save_checkpoint(tmp_path / "m.pt", model, config)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["format"] == training.CHECKPOINT_FORMAT == "eqpdenet-checkpoint-2"
    assert training.load_checkpoint(tmp_path / "m.pt")[1].model.layer.ratio_regularisation \
        == "covariant"
    # a format-1 checkpoint (written before the field existed) lacks it: read as "absolute"
    del payload["config"]["model"]["layer"]["ratio_regularisation"]
    payload["format"] = "eqpdenet-checkpoint-1"
    torch.save(payload, tmp_path / "old.pt")
    _, old, _ = training.load_checkpoint(tmp_path / "old.pt")
    assert old.model.layer.ratio_regularisation == "absolute"
    payload["format"] = "eqpdenet-checkpoint-0"
    torch.save(payload, tmp_path / "older.pt")
    with pytest.raises(ValueError, match="format tag 'eqpdenet-checkpoint-0'"):
        training.load_checkpoint(tmp_path / "older.pt")


def test_split_head():
    split = Split(torch.zeros(10, 1, 28, 28), torch.arange(10))
    assert len(split.head(3)) == 3 and split.head(0) is split
    json.dumps({"ok": True})


def test_study_keeps_the_config_files_sizes_seeds_and_epochs_unless_flags_are_given(
        tmp_path, monkeypatch):
    """``study --config chosen.toml`` (a refine round) trains the file's recipe: the flags'
    defaults used to replace its hidden sizes, seeds and epochs silently."""
    from eqpdenet.app import study
    from eqpdenet.app.config import ReproduceConfig, load_toml, to_toml

    seen = []

    def fake_run_study(out, base, **kwargs):
        seen.append(base)
        return base

    monkeypatch.setattr(study, "run_study", fake_run_study)
    chosen = study.study_base(hidden_sizes=[8], seeds=[3], epochs=7)
    (tmp_path / "chosen.toml").write_text(to_toml(chosen))
    assert load_toml(ReproduceConfig, tmp_path / "chosen.toml").seeds == [3]
    common = ["study", "--out", str(tmp_path / "s"), "--no-progress"]
    assert main([*common, "--config", str(tmp_path / "chosen.toml"), "--stages", "refine"]) == 0
    assert (seen[-1].hidden_sizes, seen[-1].seeds, seen[-1].base.train.epochs) == ([8], [3], 7)
    assert main([*common, "--config", str(tmp_path / "chosen.toml"), "--seeds", "5", "6"]) == 0
    assert (seen[-1].hidden_sizes, seen[-1].seeds, seen[-1].base.train.epochs) == ([8], [5, 6], 7)
    assert main(common) == 0  # no file: the study's own defaults
    assert (seen[-1].hidden_sizes, seen[-1].seeds, seen[-1].base.train.epochs) == ([256, 32],
                                                                                    [0, 1], 20)


def test_set_wins_over_the_quick_profile():
    """``--quick`` then ``--set``: the values a user names explicitly are the ones run (the
    profile used to replace them silently), for both sweeps with a smoke profile."""
    from eqpdenet.app import cli

    overrides = ["--set", "seeds=[7]", "--set", "base.train.epochs=2", "--set",
                 "base.data.train_subset=100"]
    for command, cls, quick in (("reproduce", cli.ReproduceConfig, cli.quick_profile),
                                ("benchmark", cli.BenchmarkConfig, cli.quick_benchmark)):
        args = cli.build_parser().parse_args([command, "--quick", *overrides])
        config = cli._sweep_config(args, cls, quick)
        assert (config.seeds, config.base.train.epochs, config.base.data.train_subset) == (
            [7], 2, 100), command
        profile = quick(cls())
        assert profile.seeds != [7] and profile.base.data.train_subset != 100  # its own values
