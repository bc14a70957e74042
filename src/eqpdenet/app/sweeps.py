"""Sweeps of runs: the paper's protocol (Tables 1 and 2), resumable and reproducible.

:func:`reproduce` runs the grid models x hidden sizes x seeds and appends one JSON line per
finished run to ``results.jsonl`` (atomically: the whole file is rewritten to a temporary file
and renamed, so a killed job never leaves a partial or duplicated line); a restart skips the runs
already there. The folder has one writer at a time (:mod:`eqpdenet.app.locks`); the runs to do
are checked before any data is loaded (:mod:`eqpdenet.app.preflight`); ``jobs > 1`` runs in
worker processes that die with this one (:mod:`eqpdenet.app.workers`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from concurrent.futures import as_completed
from pathlib import Path

import torch

from ..errors import ConfigError
from .config import DataConfig, ExperimentConfig, ReproduceConfig, from_dict, to_dict, to_toml
from .files import append_jsonl, atomic_write, read_jsonl
from .locks import hold
from .preflight import preflight
from .training import Split, _progress, fingerprint, prepare_data, run_experiment
from .workers import worker_pool

__all__ = ["grid", "reproduce", "run_key"]


def run_key(kind: str, hidden: int, seed: int) -> str:
    return f"{kind}-h{hidden}-seed{seed}"


def grid(config: ReproduceConfig) -> list[ExperimentConfig]:
    """Every run of the protocol: the base recipe with model kind, hidden size and seed set."""
    runs = []
    for hidden in config.hidden_sizes:
        for seed in config.seeds:
            for kind in config.models:
                run = copy.deepcopy(config.base)
                run.model.kind, run.model.hidden, run.train.seed = kind, hidden, seed
                runs.append(run)
    return runs


def _worker(args) -> dict:
    config_dict, data_dir, cache_dir, threads, checkpoint = args
    torch.set_num_threads(threads)
    config = from_dict(ExperimentConfig, config_dict)
    data = _cached_data(config.data, data_dir, cache_dir)
    return run_experiment(config, data, progress=False, checkpoint=checkpoint)


_DATA_CACHE: dict = {}


def _cached_data(config: DataConfig, data_dir, cache_dir) -> dict[str, Split]:
    key = (json.dumps(to_dict(config), sort_keys=True), str(data_dir), str(cache_dir))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = prepare_data(config, data_dir, cache_dir)
    return _DATA_CACHE[key]


def reproduce(config: ReproduceConfig, out_dir: Path, *, jobs: int = 1, data_dir=None,
              cache_dir=None, progress: bool = True, echo: Callable[[str], None] = print) -> Path:
    """Run every missing run of the protocol, appending results to ``out_dir/results.jsonl``.

    The base configuration is written to ``out_dir/config.toml``; a results file produced with a
    different base configuration is refused (use another ``out_dir``). Returns the results path.
    """
    with hold(out_dir, "reproduce"):
        return _reproduce(config, Path(out_dir), jobs=jobs, data_dir=data_dir,
                          cache_dir=cache_dir, progress=progress, echo=echo)


def _reproduce(config: ReproduceConfig, out_dir: Path, *, jobs, data_dir, cache_dir, progress,
               echo) -> Path:
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    results = out_dir / "results.jsonl"
    base_print = fingerprint(config.base)
    config_path = out_dir / "config.toml"
    if config_path.exists() and read_jsonl(results):
        existing = {r.get("base_fingerprint") for r in read_jsonl(results)}
        if existing != {base_print}:
            raise ConfigError(f"{results} holds runs of another configuration "
                              f"(fingerprints {sorted(map(str, existing))}, this one {base_print}); "
                              f"choose another output folder")
    atomic_write(config_path, to_toml(config).encode())
    done = {r["key"] for r in read_jsonl(results)}
    todo = [run for run in grid(config)
            if run_key(run.model.kind, run.model.hidden, run.train.seed) not in done]
    echo(f"reproduce: {len(done)} runs done, {len(todo)} to go -> {results}")
    if not todo:
        return results
    preflight(todo, out_dir, jobs=jobs,
              checkpoints=sum(run.train.seed in config.checkpoint_seeds for run in todo))

    def finish(record: dict) -> None:
        record["key"] = run_key(record["model"], record["hidden"], record["seed"])
        record["base_fingerprint"] = base_print
        if record["status"] != "ok":  # no model for this result: none left from an earlier try
            (out_dir / "checkpoints" / f"{record['key']}.pt").unlink(missing_ok=True)
        append_jsonl(results, record)
        if record["status"] == "ok":
            scores = "  ".join(f"{k} {v:5.2f}" for k, v in record["accuracy"].items())
            echo(f"{record['key']:>24}: {scores}  ({record['train_seconds']:.0f} s train, "
                 f"{record['eval_seconds']:.0f} s eval)")
        else:
            echo(f"{record['key']:>24}: {record['status']}: {record['error']}")

    def checkpoint_for(run: ExperimentConfig) -> Path | None:
        if run.train.seed not in config.checkpoint_seeds:
            return None
        return out_dir / "checkpoints" / f"{run_key(run.model.kind, run.model.hidden, run.train.seed)}.pt"

    bar = _progress(range(len(todo)), progress, desc="reproduce", unit="run")
    bar_update = getattr(bar, "update", lambda n: None)
    if jobs <= 1:
        data = _cached_data(config.base.data, data_dir, cache_dir)
        for run in todo:
            finish(run_experiment(run, data, progress=progress, checkpoint=checkpoint_for(run)))
            bar_update(1)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with worker_pool(min(jobs, len(todo))) as pool:
            futures = [pool.submit(_worker, (to_dict(run), data_dir, cache_dir, threads,
                                             checkpoint_for(run))) for run in todo]
            for future in as_completed(futures):
                finish(future.result())
                bar_update(1)
    if hasattr(bar, "close"):
        bar.close()
    return results
