"""``evaluate`` with one instance prints and records no spread (round 9: it printed "± 0.00" and
wrote ``"std": 0.0``, a spread of zero where there is none to measure)."""

import json
from pathlib import Path

import pytest

from data_helpers import data_dir_or_skip
from eqpdenet.app.cli import main

CHECKPOINT = (Path(__file__).resolve().parents[2] / "results" / "paper" / "checkpoints"
              / "fcnn-h16-seed0.pt")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # the checkpoint's data made once for both


@pytest.mark.parametrize("instances", [1, 2])
def test_one_instance_has_no_spread(instances, tmp_path, cache_dir, capsys):
    data_dir = data_dir_or_skip()
    out = tmp_path / "summary.json"
    assert main(["evaluate", str(CHECKPOINT), "--scenarios", "iso", "--instances", str(instances),
                 "--json", str(out), "--data-dir", str(data_dir), "--cache-dir",
                 str(cache_dir)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())["iso"]
    values = summary["values"]
    assert len(values) == instances and summary["mean"] == pytest.approx(sum(values) / instances)
    if instances == 1:
        assert summary["std"] is None and "±" not in printed
        assert "on 1 instance (no spread" in printed
    else:
        spread = abs(values[0] - values[1]) / 2 ** 0.5  # the sample std of two values
        assert summary["std"] == pytest.approx(spread) and summary["std"] > 0
        assert f"± {spread:.2f} over 2 instances" in printed
