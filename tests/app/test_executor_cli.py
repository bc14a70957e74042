"""The executor options of the command line: one-line errors, and Ray imported only when used."""

import subprocess
import sys
from pathlib import Path

import pytest

from eqpdenet.app.cli import describe_error, main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_executor_ray_without_ray_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for command in ("reproduce", "benchmark", "study"):
        assert main([command, "--out", str(tmp_path / command), "--executor", "ray",
                     "--no-progress"]) == 2
        line = one_error_line(capsys)
        assert "--executor ray needs Ray: pip install 'eqpdenet[distributed]'" in line, line
        assert not list((tmp_path / command).glob("runs/*.json"))  # refused before any run


def test_address_without_executor_ray_is_one_clear_line(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path), "--address", "auto"]) == 2
    assert "--address is for --executor ray" in one_error_line(capsys)


def test_a_lost_ray_worker_is_described_in_one_line():
    lost = type("WorkerCrashedError", (Exception,), {"__module__": "ray.exceptions"})
    text, status = describe_error(lost("The worker died unexpectedly while executing this task."))
    assert status == 2 and "rerun the command to resume" in text and "WorkerCrashedError" in text


@pytest.mark.parametrize("module", ["eqpdenet", "eqpdenet.app.cli", "eqpdenet.app.sweeps"])
def test_importing_eqpdenet_does_not_import_ray(module):
    code = f"import sys, {module}; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": SRC},
                          timeout=120).returncode == 0
