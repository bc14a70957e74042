"""Runners for the Ray tests, in a module of their own so that Ray's worker processes import
them by name (the tests put this folder on the workers' PYTHONPATH)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from eqpdenet.app.training import run_experiment


def dies_on_first_try(config, data, *, progress, checkpoint, markers: str, victim: int):
    """:func:`run_experiment`, except that the run of seed ``victim`` kills its worker process
    (``os._exit``, as a crash or the OOM killer would) the first time: a marker file in
    ``markers`` records the first try, so Ray's retry runs normally."""
    if config.train.seed == victim:
        marker = Path(markers) / f"tried-seed{victim}"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
    return run_experiment(config, data, progress=progress, checkpoint=checkpoint)


def registered_models(config, data, *, progress, checkpoint):
    """The model kind of ``config`` and the model families this worker knows."""
    from eqpdenet.models import MODELS

    return {"kind": config.model.kind, "models": list(MODELS.names())}


# ----------------------------------------------------------------------------- data parallel


def synthetic_data(n_train: int = 101, n_test: int = 40):
    """A small fixed data set (images from a seeded generator: the same in every process)."""
    import torch

    from eqpdenet.app.training import Data, Split

    generator = torch.Generator().manual_seed(1234)
    images = torch.rand(n_train + n_test, 1, 12, 12, generator=generator)
    labels = (images[:, 0, :6].mean((1, 2)) > images[:, 0, 6:].mean((1, 2))).long() \
        + 2 * (images[:, 0, :, :6].mean((1, 2)) > 0.5).long()
    empty = Split(images[:0], labels[:0])
    return Data(train=Split(images[:n_train], labels[:n_train]), validation=empty,
                test=Split(images[n_train:], labels[n_train:]), classes=4)


def tiny_config(*overrides: str):
    from eqpdenet.app.config import ExperimentConfig, apply_overrides

    return apply_overrides(ExperimentConfig(), [
        "model.kind='fcnn'", "model.hidden=8", "train.epochs=2", "train.batch_size=32",
        "train.seed=5", "train.lr=0.01", *overrides])


def native_threads() -> list[str] | None:
    """The names of this process's threads (Linux), native ones included; None elsewhere."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended since the listing
            continue
    return sorted(names)


def data_parallel_worker(rank: int, world: int, port: int, out: str,
                         overrides: tuple[str, ...] = (), n_train: int = 101) -> None:
    """One process of a gloo process group (what torchrun sets up, opened as ``eqpdenet train
    --distributed`` opens it): trains the tiny model; rank 0 saves the parameters and history to
    ``out``. Each rank then checks that leaving the group stopped gloo's threads: left running,
    they are torn down with the interpreter and can abort the process after its work is done."""
    import torch

    from eqpdenet.app.training import data_parallel, data_parallel_group, train_model

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with data_parallel_group("gloo", rank=rank, world_size=world):
        assert data_parallel() == (rank, world)
        model, history = train_model(tiny_config(*overrides), synthetic_data(n_train),
                                     progress=False)
        if rank == 0:
            torch.save({"state": model.state_dict(), "history": history}, out)
    left = [name for name in native_threads() or [] if "gloo" in name]
    assert not left, f"rank {rank}: gloo threads outlive the process group: {left}"


def finish_ranks(ranks: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str, str]]:
    """Each rank's ``(exit status, stdout, stderr)``; a rank still running at the deadline (a
    hang) is killed and the test fails."""
    results = []
    try:
        for rank in ranks:
            out, err = rank.communicate(timeout=timeout)
            results.append((rank.returncode, out, err))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"a rank still ran after {timeout:.0f} s: the ranks hang") from None
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
                rank.wait()
    return results
