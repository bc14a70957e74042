"""Values that the configuration alone refuses, before any data or folder is made:

* ``data.rotated = true`` with ROTMNIST, found only after ROTMNIST was generated (187 MB), and
  in ``reproduce`` after the folder's marker and ``config.toml`` were written;
* ``[curves]`` lists that are empty (the runs trained and were recorded, then every report
  failed at ``min()`` of the empty curve), hold a value twice, or a negative shift (a reversed
  direction, drawn on the axis as a smaller shift). A benchmark folder recorded with an empty
  curve before that was refused still reports.
"""

import json
import math

import pytest

from eqpdenet.app.benchmark import benchmark_table, summarise, write_benchmark_report
from eqpdenet.app.cli import main
from eqpdenet.app.config import BenchmarkConfig, CurvesConfig, DataConfig, apply_overrides
from eqpdenet.errors import ConfigError


def one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


ROTATED = ("data.rotated: ROTMNIST is rotated already; rotated applies to another data set "
           "(e.g. 'mnist')")
ROTATED_ROTMNIST = f"invalid config: {ROTATED}"


def test_rotated_rotmnist_is_refused_by_the_configuration():
    with pytest.raises(ConfigError) as refusal:
        DataConfig(dataset="rotmnist", rotated=True)
    assert str(refusal.value) == ROTATED_ROTMNIST
    assert DataConfig(dataset="mnist", rotated=True).rotated
    assert not DataConfig(dataset="rotmnist").rotated


def test_train_refuses_rotated_rotmnist_before_any_data(tmp_path, capsys, no_data):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", "--rotated"]) == 2
    assert one_error(capsys).startswith(f"eqpdenet: error: {ROTATED_ROTMNIST}")
    assert not out.exists()


def test_reproduce_refuses_rotated_rotmnist_before_writing_its_folder(tmp_path, capsys, no_data):
    out = tmp_path / "sweep"
    assert main(["reproduce", "--quick", "--out", str(out), "--no-progress",
                 "--set", "base.data.rotated=true"]) == 2
    assert one_error(capsys).startswith(f"eqpdenet: error: invalid config: base.{ROTATED}")
    assert not out.exists()


@pytest.mark.parametrize("name", ["angles", "scales", "shifts", "invariance_angles"])
def test_an_empty_curve_is_refused(name):
    with pytest.raises(ConfigError) as refusal:
        apply_overrides(BenchmarkConfig(), [f"curves.{name}=[]"])
    assert str(refusal.value) == f"invalid config: curves.{name}: must hold at least one value"


@pytest.mark.parametrize("name, values, repeated", [
    ("angles", "[0, 90, 0.0]", "0"), ("scales", "[1.0, 0.5, 1, 0.5]", "0.5, 1"),
    ("shifts", "[2, 2]", "2"), ("invariance_angles", "[37, 90, 37]", "37"),
    # one key in the records (f"{v:g}"): one measurement replaced the other (round 12)
    ("invariance_angles", "[37.0, 37.0000001]", "37")])
def test_a_value_twice_in_a_curve_is_refused(name, values, repeated):
    with pytest.raises(ConfigError) as refusal:
        apply_overrides(BenchmarkConfig(), [f"curves.{name}={values}"])
    assert str(refusal.value) == (f"invalid config: curves.{name}: must be distinct to 6 digits "
                                  f"(the records name each value so); {repeated} appear(s) twice")


def test_negative_shifts_are_refused_and_negative_angles_kept():
    with pytest.raises(ConfigError) as refusal:
        apply_overrides(BenchmarkConfig(), ["curves.shifts=[0, -1, 2, -0.5]"])
    assert str(refusal.value) == ("invalid config: curves.shifts: must be distances >= 0, got "
                                  "[-1.0, -0.5]")
    # an angle's sign is a direction of its own (a clockwise turn), measured as such
    curves = CurvesConfig(angles=[-90, 0, 90], invariance_angles=[-37.0, 37.0])
    assert curves.angles == [-90.0, 0.0, 90.0] and curves.shifts[0] == 0.0


def recorded_without_angles(seed: int) -> dict:
    """A benchmark run recorded with ``curves.angles = []`` (before it was refused)."""
    return {"model": "fcnn", "entry": "fcnn", "hidden": 256, "seed": seed, "status": "ok",
            "key": f"fcnn-seed{seed}", "params": 269322, "train_seconds": 60.0,
            "eval_seconds": 1.0, "accuracy": {"test": 37.0 + seed, "rot": 37.2},
            "robustness": {"images": 200, "angles": [], "rotation": [], "scales": [0.75, 1.0],
                           "scale": [17.5, 35.5], "shifts": [0.0, 2.0], "shift": [35.5, 30.0],
                           "logit_change": {"37": 0.25, "90": 0.5},
                           "round_trip_change": {"37": 0.04, "90": 0.0}}}


def test_a_run_recorded_without_curve_points_still_reports(tmp_path):
    records = [recorded_without_angles(0), recorded_without_angles(1)]
    summary = summarise(records)
    assert summary["fcnn"]["rotation"] == ([], [])
    row = benchmark_table(summary).splitlines()[2]
    assert row == ("| fcnn | 269,322 | 2 | 37.5 (0.7) | 37.2 (0.0) | – | 5.0e-01 | 2.5e-01 "
                   "| 4.0e-02 | 1.0 | – |")
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = write_benchmark_report(folder)
    assert report.runs == 2 and row in (folder / "table.md").read_text()
    assert (folder / "robustness.png").stat().st_size > 0
    assert math.isclose(summary["fcnn"]["scale"][1][1], 35.5)
