"""The Ray executor: a Ray instance started by the test on 127.0.0.1 (2 CPUs) runs tiny sweeps.

* ``reproduce --executor ray`` gives every run exactly the numbers of ``--executor local``
  (runs are seeded and both use one torch thread per run);
* a worker that dies in the middle of a run (``os._exit``) costs a retry, nothing else: every
  key is in ``results.jsonl`` exactly once, with the numbers of an undisturbed run.
"""

import os
from pathlib import Path

import pytest

from data_helpers import data_dir_or_skip
from eqpdenet.app import training
from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.distributed import Executor, check_address
from eqpdenet.app.files import read_jsonl
from eqpdenet.app.runstore import RUNS_DIR
from eqpdenet.app.sweeps import run_sweep
from eqpdenet.app.training import load_checkpoint, prepare_data, run_experiment
from helpers import torch_threads

ROOT = Path(__file__).resolve().parents[2]
# Plain MNIST: no ROTMNIST to generate, so the test's time is the runs'. The PDE layer in plain
# PyTorch: Ray's new worker processes need not load the C++ kernel (or wait while another
# process on a shared machine builds it).
TINY = ["base.data.dataset='mnist'", "base.data.train_subset=300", "base.data.test_subset=200",
        "base.train.epochs=1", "base.model.layer.T=0.2", "base.model.layer.backend='reference'",
        "hidden_sizes=[8]", "seeds=[0, 1]"]


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray instance on 127.0.0.1 with 2 CPUs, shut down after the module's tests. Its workers
    import eqpdenet and the tests' helpers from this tree (PYTHONPATH, which they inherit)."""
    ray = pytest.importorskip("ray")
    data_dir_or_skip()
    old = os.environ.get("PYTHONPATH")
    paths = [str(ROOT / "src"), str(ROOT / "tests")] + ([old] if old else [])
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level="WARNING")
        yield ray
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def tiny_args(out: Path, cache: Path, *extra: str) -> list[str]:
    args = ["reproduce", "--out", str(out), "--cache-dir", str(cache), "--no-progress", *extra]
    for item in TINY:
        args += ["--set", item]
    return args


def by_key(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in read_jsonl(out / "results.jsonl")}


def test_ray_executor_gives_the_numbers_of_the_local_executor(ray_cluster, tmp_path, cache_dir):
    with torch_threads(1):  # as each Ray task (--cpus-per-run 1): the same reduction order
        assert main(tiny_args(tmp_path / "local", cache_dir)) == 0
    assert main(tiny_args(tmp_path / "ray", cache_dir, "--executor", "ray")) == 0
    local, ray = by_key(tmp_path / "local"), by_key(tmp_path / "ray")
    assert sorted(ray) == ["eqpdenet-h8-seed0", "eqpdenet-h8-seed1", "fcnn-h8-seed0",
                           "fcnn-h8-seed1"]
    for key in local:
        assert ray[key]["status"] == "ok"
        assert ray[key]["accuracy"] == local[key]["accuracy"], key  # exactly
        assert ray[key]["history"][0]["loss"] == local[key]["history"][0]["loss"], key
    # the runs ran in Ray's workers, not in this process
    assert {r["environment"]["threads"] for r in ray.values()} == {1}
    assert sorted(p.name for p in (tmp_path / "ray" / RUNS_DIR).iterdir()) == [
        f"{key}.json" for key in sorted(ray)]
    # the checkpoints of seed 0 came back from the workers and were written here
    model, config, payload = load_checkpoint(tmp_path / "ray" / "checkpoints" / "fcnn-h8-seed0.pt")
    assert payload["accuracy"] == local["fcnn-h8-seed0"]["accuracy"]


def test_a_worker_killed_mid_run_is_retried_and_nothing_is_lost_or_duplicated(
        ray_cluster, tmp_path, cache_dir, monkeypatch):
    prepared = []  # the data are prepared once (by the driver) for the whole sweep

    def counted(*args, **kwargs):
        prepared.append(args[0])
        return prepare_data(*args, **kwargs)

    monkeypatch.setattr(training, "prepare_data", counted)
    runs = {f"fcnn-h8-seed{seed}": apply_overrides(ExperimentConfig(), [
        "data.dataset='mnist'", "data.train_subset=300", "data.test_subset=200", "train.epochs=1",
        "model.kind='fcnn'", "model.hidden=8", f"train.seed={seed}"]) for seed in (0, 1, 2)}
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    lines = []
    run_sweep("killed", runs, out, base_fingerprint="fp", runner=dies_on_first_try(),
              runner_options={"markers": str(markers), "victim": 1},
              executor=Executor("ray", max_retries=2), cache_dir=cache_dir, progress=False,
              echo=lines.append)
    assert (markers / "tried-seed1").exists()  # the first try of seed 1 did die
    assert len(prepared) == 1  # not once per run (the tasks read it from the object store)
    records = read_jsonl(out / "results.jsonl")
    assert [r["key"] for r in records] == ["fcnn-h8-seed0", "fcnn-h8-seed1", "fcnn-h8-seed2"]
    assert all(r["status"] == "ok" for r in records)
    # the retried run has the numbers of an undisturbed run of the same seed
    with torch_threads(1):
        data = prepare_data(runs["fcnn-h8-seed1"].data, None, cache_dir)
        expected = run_experiment(runs["fcnn-h8-seed1"], data, progress=False)
    assert records[1]["accuracy"] == expected["accuracy"]
    assert sum("fcnn-h8-seed1" in line for line in lines) == 1  # reported once


def dies_on_first_try():
    from distributed_helpers import dies_on_first_try as runner

    return runner


def test_benchmark_on_ray_gives_the_numbers_of_the_local_executor(ray_cluster, tmp_path):
    """The benchmark's runner (training, scenarios, robustness curves) as Ray tasks."""
    import numpy as np

    labels = np.arange(200) % 4
    images = ((np.arange(200 * 144).reshape(200, 12, 12) * 37) % 41).astype(np.uint8)
    for i, c in enumerate(labels):  # class = which quarter of the image is bright
        r, q = divmod(int(c), 2)
        images[i, 6 * r:6 * r + 6, 6 * q:6 * q + 6] += 200
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=images[:160], y_train=labels[:160], x_test=images[160:],
             y_test=labels[160:])
    args = ["benchmark", "--no-progress", "--models", "cnn", "--set", f"base.data.dataset='{path}'",
            "--set", "seeds=[0]", "--set", "base.train.epochs=1",
            "--set", "base.scenarios=['test', 'iso']", "--set", "curves.images=20",
            "--set", "curves.angles=[0, 45]", "--set", "curves.scales=[1.0]",
            "--set", "curves.shifts=[0, 1]"]
    with torch_threads(1):
        assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local, ray = by_key(tmp_path / "local"), by_key(tmp_path / "ray")
    assert list(ray) == ["cnn-seed0"]
    assert ray["cnn-seed0"]["accuracy"] == local["cnn-seed0"]["accuracy"]
    assert ray["cnn-seed0"]["robustness"] == local["cnn-seed0"]["robustness"]
    assert (tmp_path / "ray" / "table.md").exists()


def test_the_address_of_a_running_head_passes_the_check(ray_cluster):
    """The check that refuses what is not a Ray head (``tests/app/test_distributed_faults.py``)
    lets a head through: its gRPC greeting, and its GCS's answer to Ray's own first request."""
    check_address(ray_cluster.get_runtime_context().gcs_address, timeout=60)


def test_a_ray_task_imports_the_drivers_plugins_before_its_run(ray_cluster, tmp_path):
    """A model family of one's own reaches a Ray worker: the task imports the modules named in
    the driver's EQPDENET_PLUGINS (an argument: the worker does not read the variable) before it
    reads its configuration, which names the family. This process never imports the module."""
    from distributed_helpers import registered_models
    from eqpdenet.app.config import to_dict
    from eqpdenet.app.distributed import _ray_task
    from eqpdenet.models import MODELS

    (tmp_path / "r9plugin.py").write_text(
        "from torch import nn\nfrom eqpdenet.models import MODELS\n"
        "MODELS.register('r9net', lambda **options: nn.Flatten())\n")
    config = to_dict(ExperimentConfig())
    config["model"]["kind"] = "r9net"
    paths = [str(tmp_path), str(ROOT / "src"), str(ROOT / "tests")]
    task = ray_cluster.remote(_ray_task).options(
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}})
    data = [ray_cluster.put(None)]
    record, checkpoint = ray_cluster.get(
        task.remote(registered_models, config, data, 1, False, {}, ("r9plugin",)), timeout=300)
    assert record["kind"] == "r9net" and "r9net" in record["models"] and checkpoint is None
    assert "r9net" not in MODELS
    # without the plugins, in a worker of its own (another environment: the first worker has
    # imported the module), the kind is unknown
    fresh = ray_cluster.remote(_ray_task).options(runtime_env={"env_vars": {
        "PYTHONPATH": os.pathsep.join(paths), "EQPDENET_R9": "fresh"}})
    with pytest.raises(Exception, match="model.kind: unknown model 'r9net'"):
        ray_cluster.get(fresh.remote(registered_models, config, data, 1, False, {}), timeout=300)
