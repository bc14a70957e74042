"""A stand-in for the sweeps a study runs, shared by the study tests."""

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
