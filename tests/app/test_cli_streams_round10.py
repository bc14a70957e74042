"""The command line's standard streams (round 10).

A reader of stderr that is gone (``2>&1 | head``, a ``tee`` or log collector that died) ended
any command at its first progress line with exit status 0 and no result; a reader of stdout gone
before the work was done (``describe --out ... | head -c 0``) did the same. Now what would have
been printed there is dropped, the work goes on and the exit status is the work's. A stderr
closed at the start (``2>&-``) sent every diagnostic to stdout and failed the C++ kernel's load.
A script's call of ``main`` with ``--jobs 2`` and no ``__main__`` guard was called a bug (exit 1)
in each worker.

The pipes are real: each test starts ``python -m eqpdenet`` with a pipe whose reading end it
closes at once, before the command (seconds of imports) writes anything.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_helpers import write_npz
from eqpdenet.app.cli import main
from eqpdenet.errors import EqPdeNetError

ROOT = Path(__file__).resolve().parents[2]


def environment(*folders: Path, **variables: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, folders), str(ROOT / "src")]),
               OMP_NUM_THREADS="1", **variables)
    env.pop("EQPDENET_DEBUG", None)
    return env


@pytest.fixture
def folder(tmp_path) -> Path:
    write_npz(tmp_path / "d.npz", train=60, test=20, size=12, classes=3)
    return tmp_path


def train_argv(folder: Path, out: str = "run") -> list[str]:
    return ["train", "--dataset", str(folder / "d.npz"), "--hidden", "4", "--epochs", "2",
            "--out", str(folder / out), "--set", "model.image_size=12"]


def run_with_gone_reader(argv: list[str], folder: Path, *, stdout, stderr, **variables) -> int:
    """``python -m eqpdenet argv``, each of its streams that is a pipe read by no one from the
    start (the reading end closed at once); its exit status."""
    process = subprocess.Popen([sys.executable, "-m", "eqpdenet", *argv], stdout=stdout,
                               stderr=stderr, cwd=folder, env=environment(**variables))
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return process.wait(timeout=300)


def test_a_gone_stderr_reader_does_not_stop_the_work(folder):
    """``(eqpdenet train ... 2>&1 >out.txt) | true``: exit 0 and no run folder, before."""
    with open(folder / "out.txt", "w") as out:
        status = run_with_gone_reader(train_argv(folder), folder, stdout=out,
                                      stderr=subprocess.PIPE)
    assert status == 0
    assert (folder / "run" / "model.pt").is_file()
    assert (folder / "run" / "result.json").is_file()
    printed = (folder / "out.txt").read_text().splitlines()
    assert len(printed) == 1 and printed[0].endswith(f"-> {folder / 'run' / 'model.pt'}"), printed


def test_a_gone_reader_of_both_streams_does_not_stop_the_work(folder):
    """``eqpdenet train ... 2>&1 | head -c 0`` (with ``set -o pipefail``: status 0, no run)."""
    status = run_with_gone_reader(train_argv(folder), folder, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
    assert status == 0
    assert (folder / "run" / "model.pt").is_file()


def test_a_gone_stdout_reader_before_the_work_is_done_does_not_stop_it(folder, capsys):
    """``describe --out`` prints the PDEs, then draws: a ``| head -c 0`` ended it at the print
    with exit status 0 and no image. (Unbuffered, as on a terminal or with ``python -u``: the
    first print meets the closed pipe whatever the length of the text.)"""
    assert main(train_argv(folder) + ["--no-progress"]) == 0
    capsys.readouterr()
    status = run_with_gone_reader(
        ["describe", str(folder / "run" / "model.pt"), "--out", str(folder / "describe")],
        folder, stdout=subprocess.PIPE, stderr=None, PYTHONUNBUFFERED="1")
    assert status == 0
    assert (folder / "describe" / "evolution.png").is_file()


def test_a_stderr_closed_at_the_start_keeps_stdout_to_the_results(folder):
    """``eqpdenet train ... 2>&-``: the progress lines, and a warning that the C++ kernel could
    not be built (``'NoneType' object has no attribute 'flush'``), went to stdout."""
    done = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m", "eqpdenet",
                           *train_argv(folder)], capture_output=True, text=True, cwd=folder,
                          env=environment(), timeout=300)
    assert done.returncode == 0, done.stdout
    printed = done.stdout.splitlines()
    assert len(printed) == 1 and printed[0].endswith(f"-> {folder / 'run' / 'model.pt'}"), printed
    assert (folder / "run" / "model.pt").is_file()


TASK = '''
import sys

def say(lines):
    for n in range(lines):
        print(f"{n} of {lines}", file=sys.stderr, flush=True)
    return "said"
'''

SCRIPT = '''
import streamtask
from eqpdenet.app.workers import worker_pool

with worker_pool(1) as pool:
    print(pool.submit(streamtask.say, 3).result(timeout=240), flush=True)
'''


def test_a_worker_outlives_the_reader_of_its_stderr(tmp_path):
    """A worker shares its parent's stderr: its progress line after the reader went raised
    ``BrokenPipeError``, which failed its task, and so the sweep's command."""
    (tmp_path / "streamtask.py").write_text(TASK)
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env=environment(tmp_path))
    process.stderr.close()
    out = process.stdout.read()
    assert process.wait(timeout=300) == 0, out
    assert out == "said\n"


def test_a_script_without_a_main_guard_is_told_how_to_guard_it_exit_2(tmp_path, capsys,
                                                                       monkeypatch, no_data):
    """In a starting worker (a script's ``main(["benchmark", ..., "--jobs", "2"])`` run again by
    ``spawn``): one line naming the guard, exit 2, not 'unexpected RuntimeError ... a bug'."""
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    status = main(["benchmark", "--quick", "--out", str(tmp_path / "b"), "--jobs", "2",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    assert errors[0].startswith("eqpdenet: error: benchmark was called in a worker process while "
                                "it started: "), err
    assert 'if __name__ == "__main__":' in errors[0] and "bug" not in err, err
    from eqpdenet.errors import MainGuardError

    assert issubclass(MainGuardError, EqPdeNetError) and issubclass(MainGuardError, RuntimeError)
