"""A plain install (no extras) and an ASCII locale (round 9 audit).

Without matplotlib (the ``experiments`` extra), a command that draws said "unexpected
ModuleNotFoundError ... (a bug in eqpdenet?)" with exit status 1, and only after all its work:
``reproduce`` and ``benchmark`` trained every run first, ``equivariance`` computed its study and
kept nothing, ``describe --out`` printed its formulas first. Each now refuses among its argument
checks: one line naming ``pip install 'eqpdenet[experiments]'``, exit status 2, nothing made.
Without SymPy, ``eqpdenet symbolic`` said the same "bug" line, its hint unquoted (zsh reads the
brackets as a pattern). In an ASCII locale (``LC_ALL=C``, ``PYTHONUTF8=0``) ``info``,
``symbolic`` and ``describe`` failed on printing ², ∂, θ, and ``equivariance
--invariant-orders-only`` failed reading back the UTF-8 file it wrote.

A missing module is simulated in a subprocess by a finder that refuses its import (as Python
does for a package that is not installed), placed before the command line runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eqpdenet
from eqpdenet.app import training
from eqpdenet.app.benchmark import benchmark_fingerprint
from eqpdenet.app.cli import describe_error, main
from eqpdenet.app.config import (
    BenchmarkConfig,
    ExperimentConfig,
    apply_overrides,
    build_model,
    to_dict,
    to_toml,
)
from eqpdenet.app.runstore import save_run, write_aggregate

SRC = Path(eqpdenet.__file__).resolve().parents[1]

#: Runs the command line (``argv``) with the top-level modules ``blocked`` not importable.
WRAPPER = """
import sys
BLOCKED = {blocked!r}
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError("No module named %r" % name, name=name)
        return None
sys.meta_path.insert(0, Absent())
from eqpdenet.app.cli import main
sys.exit(main({argv!r}))
"""

EXPERIMENTS = "pip install 'eqpdenet[experiments]'"
ASCII_LOCALE = {"PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C"}


def _cli(argv: list[str], blocked: tuple[str, ...] = (), env: dict | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    variables = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **(env or {})}
    variables.pop("EQPDENET_DEBUG", None)
    return subprocess.run([sys.executable, "-c", WRAPPER.format(blocked=blocked, argv=argv)],
                          capture_output=True, env=variables, timeout=300, cwd=cwd)


def _one_line_refusal(done: subprocess.CompletedProcess, install: str) -> str:
    err = done.stderr.decode("utf-8", "replace")
    lines = err.splitlines()
    assert done.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("eqpdenet: error: "), err
    assert install in lines[0] and "a bug in eqpdenet" not in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained EqPdeNet checkpoint (its PDEs print with ∂t, ², −)."""
    path = tmp_path_factory.mktemp("install") / "model.pt"
    config = apply_overrides(ExperimentConfig(), ["model.hidden=8"])
    torch.manual_seed(0)
    training.save_checkpoint(path, build_model(config.model), config)
    return path


SMALL = ["--set", "base.data.train_subset=200", "--set", "base.data.test_subset=100",
         "--no-progress"]


@pytest.mark.parametrize("command", [
    ["reproduce", "--quick", *SMALL],
    ["benchmark", "--quick", "--models", "fcnn", *SMALL],
    ["equivariance", "--quick"],
    ["figure", "diagram"],
    ["describe", "{checkpoint}"],
], ids=["reproduce", "benchmark", "equivariance", "figure", "describe"])
def test_a_command_that_draws_refuses_without_matplotlib_before_any_work(command, checkpoint,
                                                                         tmp_path):
    out = tmp_path / "out"
    argv = [a.format(checkpoint=checkpoint) for a in command]
    argv += ["--out", str(out / "figure.png" if command[0] == "figure" else out)]
    done = _cli(argv, blocked=("matplotlib",), cwd=tmp_path)
    line = _one_line_refusal(done, EXPERIMENTS)
    assert "matplotlib" in line and f"eqpdenet {command[0]}" in line, line
    assert done.stdout == b""  # no formulas printed, no run reported
    assert not out.exists()  # no folder made, no run trained into it
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nor anything else (runs/...)


def _benchmark_folder(path: Path) -> Path:
    """A finished benchmark's folder (one fcnn run, its record made up): config.toml, the run
    file, results.jsonl; ``report`` tables it."""
    config = BenchmarkConfig(models={"fcnn": ["model.kind='fcnn'", "model.hidden=16"]}, seeds=[0])
    run = config.experiment("fcnn", 0)
    record = {"key": "fcnn-seed0", "entry": "fcnn", "model": run.model.kind,
              "hidden": run.model.hidden, "seed": 0, "status": "ok", "params": 100,
              "accuracy": {"test": 90.0}, "train_seconds": 60.0, "eval_seconds": 1.0,
              "base_fingerprint": benchmark_fingerprint(config), "config": to_dict(run)}
    path.mkdir(parents=True)
    (path / "config.toml").write_text(to_toml(config), encoding="utf-8")
    save_run(path, record["key"], record)
    write_aggregate(path)
    return path


def test_report_refuses_without_matplotlib_rather_than_write_its_table_alone(tmp_path):
    """The decision: a command whose plot cannot be made refuses before any work, ``report``
    too (no table.md without the plot beside it; it wrote the table, then failed)."""
    folder = _benchmark_folder(tmp_path / "results")
    before = sorted(p.name for p in folder.iterdir())
    done = _cli(["report", str(folder)], blocked=("matplotlib",))
    _one_line_refusal(done, EXPERIMENTS)
    assert sorted(p.name for p in folder.iterdir()) == before  # no table.md, no lock left
    assert main(["report", str(folder)]) == 0  # with matplotlib: the table and the plot
    assert (folder / "table.md").is_file() and (folder / "robustness.png").is_file()


def test_what_draws_nothing_runs_without_matplotlib(checkpoint, tmp_path):
    """``describe`` without --out prints its formulas; ``--invariant-orders-only`` writes a
    Markdown table: neither needs matplotlib."""
    done = _cli(["describe", str(checkpoint)], blocked=("matplotlib",))
    assert done.returncode == 0 and "∂t u" in done.stdout.decode(), done.stderr
    done = _cli(["equivariance", "--invariant-orders-only", "--out", str(tmp_path / "eo")],
                blocked=("matplotlib",))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "eo" / "invariant_orders.md").is_file()


def test_symbolic_without_sympy_is_one_line_with_the_quoted_install_line():
    done = _cli(["symbolic", "se2"], blocked=("sympy",))
    _one_line_refusal(done, "pip install 'eqpdenet[symbolic]'")


def test_the_library_raises_missing_dependency_error_for_sympy_and_matplotlib():
    code = (WRAPPER.split("from eqpdenet.app.cli")[0]
            + "from eqpdenet.errors import MissingDependencyError\n"
            + "from eqpdenet.app.files import import_pyplot\n"
            + "for load in (lambda: __import__('eqpdenet.pde.symbolic'), import_pyplot):\n"
            + "    try:\n        load()\n"
            + "    except MissingDependencyError as error:\n        print(error)\n"
            + "    else:\n        raise SystemExit('imported')\n")
    done = subprocess.run([sys.executable, "-c", code.format(blocked=("sympy", "matplotlib"))],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr
    symbolic, pyplot = done.stdout.splitlines()
    assert "pip install 'eqpdenet[symbolic]'" in symbolic
    assert EXPERIMENTS in pyplot


def test_an_optional_module_missing_anywhere_else_is_named_with_its_extra_not_a_bug():
    text, status = describe_error(ModuleNotFoundError("No module named 'e2cnn'", name="e2cnn"))
    assert status == 2 and "pip install 'eqpdenet[gcnn]'" in text, text
    text, status = describe_error(ModuleNotFoundError("No module named 'nothing'", name="nothing"))
    assert status == 1 and "a bug in eqpdenet" in text  # not an optional dependency


@pytest.mark.parametrize("command", [["info"], ["symbolic", "scaling"], ["describe", "{checkpoint}"]],
                         ids=["info", "symbolic", "describe"])
def test_printing_in_an_ascii_locale_does_not_fail(command, checkpoint):
    done = _cli([a.format(checkpoint=checkpoint) for a in command], env=ASCII_LOCALE)
    assert done.returncode == 0, done.stderr
    done.stdout.decode("ascii")  # what the locale cannot encode is escaped
    if command[0] != "info":
        assert b"\\u2202" in done.stdout  # ∂


def test_invariant_orders_are_read_back_in_an_ascii_locale(tmp_path):
    out = tmp_path / "eo"
    done = _cli(["equivariance", "--invariant-orders-only", "--out", str(out)],
                env={**ASCII_LOCALE, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode == 0, done.stderr
    assert (out / "invariant_orders.md").read_text(encoding="utf-8") in done.stdout.decode()


def test_output_in_a_utf8_locale_is_unchanged():
    done = _cli(["symbolic", "scaling"], env={"PYTHONUTF8": "1"})
    assert done.returncode == 0, done.stderr
    assert "∂x" in done.stdout.decode("utf-8") and b"\\u2202" not in done.stdout
