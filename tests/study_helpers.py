"""Stand-ins for the runs of a sweep and the sweeps a study runs, shared by the tests."""

from __future__ import annotations

import json


def fake_study_reproduce(monkeypatch, accuracy=lambda run: 60.0):
    """``study.reproduce`` replaced: each run of the grid not yet in the folder gets a record
    with ``accuracy(run)``; returns the list of the runs it 'trained' (folder, model, h, seed)."""
    from eqpdenet.app import study, sweeps
    from eqpdenet.app.files import read_jsonl

    trained = []

    def reproduce(config, folder, **kwargs):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "results.jsonl"
        have = {(r["model"], r["hidden"], r["seed"]) for r in read_jsonl(path)}
        lines = []
        for run in sweeps.grid(config):
            key = (run.model.kind, run.model.hidden, run.train.seed)
            if key not in have:
                trained.append((folder.name, *key))
                lines.append(json.dumps({"model": key[0], "hidden": key[1], "seed": key[2],
                                         "status": "ok", "validation_accuracy": accuracy(run)}))
        with path.open("a") as file:
            file.write("".join(line + "\n" for line in lines))

    monkeypatch.setattr(study, "reproduce", reproduce)
    return trained


def fake_record(run, score: float = 50.0) -> dict:
    """The record of a run of configuration ``run`` that trained nothing: test accuracy
    ``score + seed``, 100 parameters."""
    from eqpdenet.app.config import to_dict

    return {"model": run.model.kind, "hidden": run.model.hidden, "seed": run.train.seed,
            "status": "ok", "params": 100, "accuracy": {"test": score + run.train.seed},
            "train_seconds": 1.0, "eval_seconds": 1.0, "config": to_dict(run)}


def fake_sweep_runs(monkeypatch) -> None:
    """No data, no training in ``reproduce`` and ``benchmark``: a run's record is
    :func:`fake_record` of its configuration."""
    from eqpdenet.app import benchmark, sweeps

    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})
    monkeypatch.setattr(sweeps, "run_experiment", lambda run, data, **options: fake_record(run))
    monkeypatch.setattr(benchmark, "run_experiment",
                        lambda run, data, **options: fake_record(run))


def checkpointing_runner(run, data, *, progress, checkpoint, **options):
    """A run as run_experiment records it (test 50 %, one parameter), its checkpoint written
    where asked."""
    from eqpdenet.app.config import to_dict

    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_bytes(b"model")
    return {"model": run.model.kind, "hidden": run.model.hidden, "seed": run.train.seed,
            "status": "ok", "params": 1, "accuracy": {"test": 50.0}, "train_seconds": 0.0,
            "eval_seconds": 0.0, "config": to_dict(run)}


def checkpointing_sweeps(monkeypatch) -> None:
    """No data, no training in ``reproduce`` and ``benchmark``: each run is
    :func:`checkpointing_runner`."""
    from eqpdenet.app import benchmark, sweeps

    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})
    monkeypatch.setattr(sweeps, "run_experiment", checkpointing_runner)
    monkeypatch.setattr(benchmark, "_run", checkpointing_runner)
