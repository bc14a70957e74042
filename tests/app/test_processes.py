"""Issue 14 with real processes: two ``eqpdenet reproduce`` on one folder, and the workers of a
``reproduce --jobs 2`` whose parent is SIGKILLed.

Both wait on conditions they poll (the lock file naming the first writer; the workers' CPU time
showing they are training), with generous deadlines for a loaded machine, never on fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from data_helpers import data_dir_or_skip
from eqpdenet.app.files import read_jsonl
from eqpdenet.app.locks import hold, holder
from process_helpers import alive, cpu_seconds, descendants, poll, pool_workers

if not Path("/proc/self/stat").exists():
    pytest.skip("needs /proc (Linux) to watch processes", allow_module_level=True)

SRC = str(Path(__file__).resolve().parents[2] / "src")
#: Runs long enough (minutes) that they are still running when the test acts on them.
LONG = ["base.data.train_subset=2000", "base.data.test_subset=200", "base.train.epochs=200",
        "base.model.layer.T=0.2", "hidden_sizes=[8]", "seeds=[0, 1]"]


def command(out: Path, cache: Path, data: Path, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "eqpdenet", "reproduce", "--out", str(out), "--cache-dir",
            str(cache), "--data-dir", str(data), "--no-progress", *extra]
    for item in LONG:
        argv += ["--set", item]
    return argv


def environment() -> dict:
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    value = poll(condition, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
    return value


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    from eqpdenet.kernels import cpu

    cpu.is_available()  # build the C++ kernel here, once: the processes below only load it
    return tmp_path_factory.mktemp("cache")


def test_two_writers_on_one_folder_the_second_stops_at_once(tmp_path, cache_dir):
    data = data_dir_or_skip()
    out = tmp_path / "results"
    first = subprocess.Popen(command(out, cache_dir, data), env=environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        info = wait_for(lambda: (holder(out, wait=0) or {}).get("pid") == first.pid
                        and holder(out), 900, "the first writer to take the lock")
        assert info["command"] == "reproduce"
        fresh = tmp_path / "second-cache"  # the second writer's data cache: must stay unused
        second = subprocess.run(command(out, fresh, data), env=environment(),
                                capture_output=True, text=True, timeout=600)
        assert first.poll() is None, "the first writer ended before the second tried"
        assert second.returncode == 2
        assert "Traceback" not in second.stderr
        assert (f"is being written by another eqpdenet process (pid {first.pid} on "
                in second.stderr), second.stderr
        assert f"running `eqpdenet reproduce --out {out} " in second.stderr
        assert "one writer per folder" in second.stderr
        # "at once": it stopped before loading any data (judged by what it did, not by a clock)
        assert not fresh.exists()
    finally:
        first.send_signal(signal.SIGKILL)  # killed: the kernel releases its lock
        first.wait(timeout=60)
    keys = [r["key"] for r in read_jsonl(out / "results.jsonl")]
    assert len(keys) == len(set(keys))
    with hold(out, "after the kill"):  # released on any exit, SIGKILL included
        assert holder(out)["pid"] == os.getpid()


def test_workers_die_with_their_parent(tmp_path, cache_dir):
    data = data_dir_or_skip()
    parent = subprocess.Popen(command(tmp_path / "results", cache_dir, data, "--jobs", "2"),
                              env=environment(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    family: set[int] = set()
    try:
        def training_workers():
            workers = pool_workers(parent.pid) if parent.poll() is None else []
            # several CPU seconds each: past start-up (torch, data), inside a run
            return len(workers) >= 2 and all(cpu_seconds(w) > 8 for w in workers[:2])

        # the deadline bounds a hang only: under a load of 10 on 2 cores the workers took more
        # than 300 s to reach 8 CPU seconds each
        wait_for(training_workers, 1800, "two worker processes to be training", interval=0.5)
        family = descendants(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=60)
        # each run takes minutes: orphans would still be training long after this deadline
        wait_for(lambda: not any(alive(pid) for pid in family), 120,
                 f"the workers {sorted(family)} to exit after their parent's SIGKILL")
    finally:
        if parent.poll() is None:
            parent.kill()
        kill_all(pid for pid in family if alive(pid))
