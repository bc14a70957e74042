"""The checkpoints committed under results/ (saved before the package layout changed) still load
and evaluate to the accuracies recorded with them."""

from pathlib import Path

import pytest

from data_helpers import data_dir_or_skip
from eqpdenet.app.training import evaluate_scenarios, load_checkpoint, prepare_data

RESULTS = Path(__file__).resolve().parents[2] / "results"
CHECKPOINTS = sorted(RESULTS.glob("paper*/checkpoints/*.pt"))


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[f"{p.parent.parent.name}/{p.stem}"
                                                   for p in CHECKPOINTS])
def test_committed_checkpoint_loads(path):
    model, config, payload = load_checkpoint(path)
    assert config.model.kind in path.name and f"h{config.model.hidden}-" in path.name
    assert set(payload["accuracy"]) == {"test", "iso", "sca"}
    assert payload["format"] == "eqpdenet-checkpoint-1"
    assert config.model.layer.ratio_regularisation == "absolute"  # as it was trained


@pytest.mark.parametrize("name", ["eqpdenet-h16-seed0", "fcnn-h16-seed0"])
def test_committed_checkpoint_evaluates_to_its_recorded_accuracy(name, tmp_path):
    data_dir = data_dir_or_skip()
    model, config, payload = load_checkpoint(RESULTS / "paper" / "checkpoints" / f"{name}.pt")
    data = prepare_data(config.data, data_dir, tmp_path)
    accuracy = evaluate_scenarios(model, data["test"], ["test"], seed=config.train.seed)
    assert accuracy["test"] == payload["accuracy"]["test"]


BENCHMARK = sorted(RESULTS.glob("benchmark/checkpoints/*.pt"))


@pytest.mark.parametrize("path", BENCHMARK, ids=[p.stem for p in BENCHMARK])
def test_benchmark_checkpoint_loads_with_the_recorded_parameter_count(path):
    """Every family's checkpoint loads strictly (the G-CNN's once did not: e2cnn's filter cache)
    and has the parameter count its results line records."""
    import json

    if "gcnn" in path.name:
        pytest.importorskip("e2cnn")
    model, config, _ = load_checkpoint(path)
    records = [json.loads(line) for line in (path.parents[1] / "results.jsonl").open()]
    [record] = [r for r in records if r["key"] == path.stem]
    assert sum(p.numel() for p in model.parameters()) == record["params"]
    assert config.model.kind == record["config"]["model"]["kind"]
