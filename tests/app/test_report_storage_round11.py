"""Round 11: ``reproduce`` and ``benchmark`` whose report, written after every run, meets a full
disk said only the cause; a stop during the runs says that the finished runs are saved and how to
go on, and the report's stop now says it too: every run is saved, ``eqpdenet report OUT`` writes
the report once there is room. (Runs are faked: no training; the full disk is simulated.)"""

from __future__ import annotations

import errno

import pytest

from eqpdenet.app import sweeps
from eqpdenet.app.cli import main
from helpers import full_disk_for
from study_helpers import fake_sweep_runs


@pytest.fixture
def fake_runs(monkeypatch):
    fake_sweep_runs(monkeypatch)


_full_for = full_disk_for


ARGUMENTS = {
    "reproduce": ["--set", "models=['fcnn']", "--set", "hidden_sizes=[4]", "--set", "seeds=[0]",
                  "--set", "checkpoint_seeds=[]", "--set", "base.scenarios=['test']"],
    "benchmark": ["--set", "seeds=[0]", "--set", "checkpoint_seeds=[]",
                  "--set", "base.scenarios=['test']", "--set", "curves.images=1",
                  "--models", "fcnn"],
}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("command", ["reproduce", "benchmark"])
def test_a_report_on_a_full_disk_says_every_run_is_saved_and_how_to_report(
        command, code, tmp_path, fake_runs, monkeypatch, capsys):
    out = tmp_path / "sweep"
    _full_for(monkeypatch, "table.md", code)
    status = main([command, "--out", str(out), "--no-progress", *ARGUMENTS[command]])
    said = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(said) == 1, said
    assert said[0].startswith(f"eqpdenet: error: the report's output {out / 'table.md'}: "
                              f"cannot write into {out}: "), said
    assert (f"; every run is saved: make room (or raise the limit), then `eqpdenet report "
            f"{out}` writes the report (or rerun the same command)") in said[0], said
    assert len(list((out / "runs").rglob("*.json"))) == 1  # the run, saved
    monkeypatch.undo()  # room again: the command it named writes the report
    fake = pytest.MonkeyPatch()
    try:
        fake.setattr(sweeps, "_cached_data", lambda *args: {})
        # the benchmark ran --models fcnn of its configuration: a table of what is missing
        assert main(["report", str(out)]) == (0 if command == "reproduce" else 3)
    finally:
        fake.undo()
    assert (out / "table.md").is_file()
