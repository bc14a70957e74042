"""Round 18: interrupts and resumes.

* A second Ctrl-C during the clean-up of a first interrupt (or Ctrl-C after SIGTERM) cut the
  clean-up short, or, as the process exited, ended it by SIGINT (a raw wait status of -2) instead
  of status 130. The first of SIGINT, SIGTERM and SIGHUP now makes the process ignore all three
  to its end.
* A sweep resumed under another thread count mixed 1- and 2-thread runs without a word
  (``environment.threads`` was recorded, never read): it now names them in a warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest
import torch

from eqpdenet.app import cli, sweeps
from eqpdenet.app.cli import _terminate_as_interrupt
from eqpdenet.app.config import ReproduceConfig, apply_overrides, to_dict
from eqpdenet.app.distributed import Executor
from eqpdenet.app.runstore import load_records, save_run
from eqpdenet.app.sweeps import other_environment_values, reproduce, threads_per_job

POSIX = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                if hasattr(signal, name))
HANG = 120  # seconds after which a child that never answers is killed (a hang, not a timing)


# ----------------------------------------------------------------------------- F2: in process


@pytest.fixture
def restore_handlers():
    saved = {number: signal.getsignal(number) for number in SIGNALS}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@POSIX
def test_after_a_first_ctrl_c_later_signals_are_ignored_to_the_end(restore_handlers,
                                                                   monkeypatch):
    monkeypatch.setattr(cli, "ENDS_THE_PROCESS", True)  # the console's process
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal gives it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    cleaned = []
    with pytest.raises(KeyboardInterrupt), _terminate_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises here
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # during the clean-up: ignored, not raised
            cleaned.append(True)
    assert cleaned == [True]
    # after the block (main returns 130, the process exits): all three still ignored
    assert [signal.getsignal(number) for number in SIGNALS] == [signal.SIG_IGN] * 3


@POSIX
def test_a_caller_in_its_own_process_gets_its_handlers_back_after_an_interrupt(
        restore_handlers):
    """main() called in-process (a notebook): Ctrl-C ignored for good after the first one
    left the next command uninterruptible (round 18 review)."""
    assert cli.ENDS_THE_PROCESS is False
    handlers = [signal.default_int_handler, signal.SIG_DFL, signal.SIG_DFL]
    for number, handler in zip(SIGNALS, handlers, strict=True):
        signal.signal(number, handler)
    cleaned = []
    with pytest.raises(KeyboardInterrupt), _terminate_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises here
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # during the clean-up: still ignored
            cleaned.append(True)
    assert cleaned == [True]
    assert [signal.getsignal(number) for number in SIGNALS] == handlers


@POSIX
def test_a_background_jobs_ignored_ctrl_c_stays_ignored_and_handlers_come_back(restore_handlers):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # `eqpdenet ... &` from a script
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with _terminate_as_interrupt():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with _terminate_as_interrupt():  # no signal came: Python's own handler is put back
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ----------------------------------------------------------------------------- F2: a process

#: A command whose handler starts a worker pool, then waits on stdin for each step; it prints a
#: line at each point where the test sends its signals, so that no signal depends on a clock.
PROGRAM = textwrap.dedent("""
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal gives them
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    from eqpdenet.app import cli
    from eqpdenet.app.workers import worker_pool

    workers = []

    def handler(args):
        with worker_pool(1) as pool:
            workers.append(pool.submit(os.getpid).result())
            try:  # "working" said inside: a signal right after it is raised in the try
                print("working", flush=True)
                sys.stdin.readline()  # the first signal interrupts this
            finally:
                print("cleaning", flush=True)
                sys.stdin.readline()  # the others come here, then a line
                print("cleaned", flush=True)
        return 0

    def with_handler(parser):
        for action in parser._subparsers._group_actions:
            for sub in action.choices.values():
                sub.set_defaults(handler=handler)
        return parser

    parser = cli.build_parser
    cli.build_parser = lambda: with_handler(parser())
    from _eqpdenet_launch import main  # the console entry point: the process ends with it
    status = main(["symbolic", "se2"])
    try:
        os.kill(workers[0], 0)
        print("worker left", flush=True)
    except ProcessLookupError:
        print("worker gone", flush=True)
    print("returned", status, flush=True)
    sys.stdin.readline()  # the signals after main returned come here, then a line
    sys.exit(status)
""")


@POSIX
@pytest.mark.parametrize("first", ["SIGINT", "SIGTERM"])
def test_signals_after_the_first_change_neither_the_clean_up_nor_the_status_130(first):
    source = str(Path(__file__).resolve().parents[2] / "src")  # this checkout's package
    env = {**os.environ, "PYTHONPATH": source + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", PROGRAM], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    guard = threading.Timer(HANG, child.kill)
    guard.start()

    def others_then_a_line():
        for number in SIGNALS:
            child.send_signal(number)
        child.stdin.write("\n")
        child.stdin.flush()

    try:
        assert child.stdout.readline() == "working\n"
        child.send_signal(getattr(signal, first))
        assert child.stdout.readline() == "cleaning\n"
        others_then_a_line()  # during the clean-up: a second SIGINT raised into it
        assert child.stdout.readline() == "cleaned\n"
        assert child.stdout.readline() == "worker gone\n"  # the pool stopped its worker
        assert child.stdout.readline() == "returned 130\n"
        others_then_a_line()  # after main returned: SIGINT ended the process by signal, -2
        child.stdin.close()
        out, err = child.stdout.read(), child.stderr.read()
        child.wait()
    finally:
        guard.cancel()
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert (child.returncode, out, err) == (
        130, "", "eqpdenet: interrupted: no result was written\n")


# ----------------------------------------------------------------------------- F1: threads


def _record(run, threads=None) -> dict:
    """A successful run as run_experiment records it; ``threads``: its environment's count."""
    record = {"model": run.model.kind, "hidden": run.model.hidden, "seed": run.train.seed,
              "status": "ok", "params": 100, "accuracy": {"test": 50.0},
              "train_seconds": 1.0, "eval_seconds": 1.0, "config": to_dict(run)}
    if threads is not None:
        record["environment"] = {"threads": threads}
    return record


def _reproduce_config(seeds) -> ReproduceConfig:
    return apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[4]",
                                               f"seeds={list(seeds)}", "checkpoint_seeds=[]"])


@pytest.fixture
def threads_recorded(monkeypatch):
    """No data, no training: each run's record says it ran with ``threads[0]`` threads."""
    threads = [None]
    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})
    monkeypatch.setattr(sweeps, "run_experiment",
                        lambda run, data, **options: _record(run, threads[0]))
    return threads


def _sweep(out, seeds) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reproduce(_reproduce_config(seeds), out, progress=False, echo=lambda line: None)
    return [str(warning.message) for warning in caught
            if issubclass(warning.category, RuntimeWarning)]


def test_a_sweep_resumed_under_another_thread_count_names_the_runs_and_both_counts(
        tmp_path, threads_recorded):
    now = torch.get_num_threads()  # what --jobs 1 runs with in this process
    out = tmp_path / "sweep"
    threads_recorded[0] = now + 1  # the first command, killed after two runs: another count
    assert _sweep(out, [0, 1]) == []
    threads_recorded[0] = now
    assert _sweep(out, [0, 1, 2]) == [
        f"{out}: 2 finished run(s) ran with another thread count than the {now} that each of "
        f"the 1 run(s) to go gets now (environment.threads: fcnn-h4-seed0, fcnn-h4-seed1 with "
        f"{now + 1}); PyTorch's sums depend on it, so the table will mix numbers that may differ "
        f"in their last digits from those of one uninterrupted command; for those, resume as "
        f"the finished runs ran (OMP_NUM_THREADS and --jobs as then)"]
    # valid runs, not refused nor set aside: all three done, each with its count
    assert {key: record["environment"]["threads"] for key, record in
            load_records(out).items()} == {"fcnn-h4-seed0": now + 1, "fcnn-h4-seed1": now + 1,
                                           "fcnn-h4-seed2": now}
    assert not (out / "superseded").exists()


def test_no_warning_for_the_same_count_nothing_to_run_or_records_without_it(
        tmp_path, threads_recorded):
    now = torch.get_num_threads()
    threads_recorded[0] = now
    assert _sweep(tmp_path / "same", [0]) == []
    assert _sweep(tmp_path / "same", [0, 1]) == []
    threads_recorded[0] = now + 1
    assert _sweep(tmp_path / "done", [0]) == []
    threads_recorded[0] = now
    assert _sweep(tmp_path / "done", [0]) == []  # nothing runs now: nothing is mixed
    threads_recorded[0] = None  # runs from before environment.threads was recorded
    assert _sweep(tmp_path / "old", [0]) == []
    threads_recorded[0] = now
    assert _sweep(tmp_path / "old", [0, 1]) == []


def test_other_thread_counts_groups_the_runs_by_their_count(tmp_path):
    config = _reproduce_config([0])
    run = config.base
    for key, environment in [("a", {"threads": 1}), ("b", {"threads": 2}), ("c", {"threads": 1}),
                             ("d", {"threads": 4}), ("e", {}), ("f", None),
                             ("g", {"threads": True})]:
        record = {**_record(run), "key": key}
        if environment is not None:
            record["environment"] = environment
        save_run(tmp_path, key, record)
    assert other_environment_values(tmp_path, "threads", 4) == {1: ["a", "c"], 2: ["b"]}
    assert other_environment_values(tmp_path, "threads", 1) == {2: ["b"], 4: ["d"]}
    save_run(tmp_path, "h", {**_record(run), "key": "h", "environment": {"threads": 10}})
    assert list(other_environment_values(tmp_path, "threads", 4)) == [1, 2, 10]  # not as text


def test_the_environment_now_is_what_each_executor_gives_a_run():
    here = {"torch": str(torch.__version__),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    assert sweeps._environment_now(1, Executor()) == {"threads": torch.get_num_threads(), **here}
    assert sweeps._environment_now(2, Executor()) == {"threads": threads_per_job(2), **here}
    # Ray's machines are not this one: their PyTorch and CPU are not compared
    assert sweeps._environment_now(1, Executor("ray", address="auto", cpus_per_run=3)) == {
        "threads": 3}


def test_runs_of_another_torch_or_cpu_capability_are_named_too(tmp_path):
    """The sibling of the thread count: the same sums by other kernels (round 18 review)."""
    config = _reproduce_config([0])
    for key, environment in [("a", {"torch": "2.12.0", "cpu_capability": "AVX2"}),
                             ("b", {"torch": "2.13.0", "cpu_capability": "AVX512"}),
                             ("c", {"cpu_capability": "AVX2"})]:
        save_run(tmp_path, key, {**_record(config.base), "key": key, "environment": environment})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweeps._warn_other_environment(
            tmp_path, {"threads": 1, "torch": "2.13.0", "cpu_capability": "AVX512"}, 4)
    assert [str(w.message) for w in caught] == [
        f"{tmp_path}: 1 finished run(s) ran with another PyTorch version than the 4 run(s) to "
        f"go get now (2.13.0) (environment.torch: a with 2.12.0); PyTorch's sums depend on it, "
        f"so the table will mix numbers that may differ in their last digits from those of one "
        f"uninterrupted command; for those, resume as the finished runs ran (the same PyTorch "
        f"version)",
        f"{tmp_path}: 2 finished run(s) ran with another CPU capability than the 4 run(s) to go "
        f"get now (AVX512) (environment.cpu_capability: a, c with AVX2); PyTorch's sums depend "
        f"on it, so the table will mix numbers that may differ in their last digits from those "
        f"of one uninterrupted command; for those, resume as the finished runs ran (a machine "
        f"whose CPU has the same vector instructions)"]
    assert other_environment_values(tmp_path, "torch", "2.13.0") == {"2.12.0": ["a"]}
