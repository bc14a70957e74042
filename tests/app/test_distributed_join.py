"""How the ranks of ``train --distributed`` find each other (``data_parallel_group``), with real
processes where the fault is between processes.

Before, ``init_process_group`` read torchrun's variables itself and waited torch's 30 minutes,
deaf to Ctrl-C and SIGTERM: for a peer that never joined, a ``WORLD_SIZE`` larger than the ranks
started, a ``RANK`` out of range (a client retrying against a port where nothing listens), with
raw C++ retry lines; ``RANK=abc`` gave "invalid literal for int()", ``WORLD_SIZE=0`` a torch
message, a busy ``MASTER_PORT`` "unexpected DistNetworkError (a bug in eqpdenet?)", exit 1.
Each is now one line naming the variable (exit 2), the wait is bounded
(``EQPDENET_JOIN_TIMEOUT``) and signals end it.

Deadlines here only bound a hang (a test that would otherwise wait 30 minutes fails instead);
no assertion is about a duration.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from eqpdenet.app.training import data_parallel_group, join_timeout, torchrun_environment
from eqpdenet.errors import ConfigError
from process_helpers import poll

SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS = str(Path(__file__).resolve().parents[1])
HANG = 120  # seconds after which a process that has not ended is a hang

TRAIN = ["train", "--distributed", "--model", "fcnn", "--hidden", "8", "--epochs", "1",
         "--no-progress"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_variables(port: int, rank="0", world_size="2", local_rank=None) -> dict:
    return {"RANK": rank, "LOCAL_RANK": rank if local_rank is None else local_rank,
            "WORLD_SIZE": world_size, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def start_rank(tmp_path: Path, **variables: str) -> subprocess.Popen:
    """``eqpdenet train --distributed`` started by hand, as docs/distributed.md shows."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", **variables)
    return subprocess.Popen([sys.executable, "-m", "eqpdenet", *TRAIN, "--out", str(tmp_path / "out")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"the rank still ran after {HANG} s: it hangs") from None
    return process.returncode, err


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- the variables


@pytest.mark.parametrize("name, value, message", [
    ("RANK", "abc", "RANK='abc': expected an integer from 0 to 1 (WORLD_SIZE=2)"),
    ("RANK", "2", "RANK='2': expected an integer from 0 to 1 (WORLD_SIZE=2)"),
    ("RANK", "-1", "RANK='-1': expected an integer from 0 to 1"),
    ("LOCAL_RANK", "x", "LOCAL_RANK='x': expected an integer from 0 to 1"),
    ("WORLD_SIZE", "0", "WORLD_SIZE='0': expected a positive integer"),
    ("WORLD_SIZE", "two", "WORLD_SIZE='two': expected a positive integer"),
    ("MASTER_PORT", "70000", "MASTER_PORT='70000': expected a port number from 1 to 65535"),
    ("MASTER_ADDR", "", "MASTER_ADDR is not set"),
    ("WORLD_SIZE", None, "WORLD_SIZE is not set"),
])
def test_a_bad_torchrun_variable_is_one_line_naming_it(monkeypatch, name, value, message):
    environment = torchrun_variables(free_port())
    if value is None:
        del environment[name]
    else:
        environment[name] = value
    with pytest.raises(ConfigError) as caught:
        torchrun_environment(environment)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_the_join_timeout_comes_from_its_variable():
    assert join_timeout({}) == 300.0
    assert join_timeout({"EQPDENET_JOIN_TIMEOUT": "2.5"}) == 2.5
    for bad in ("0", "-3", "abc", "nan", "inf"):
        with pytest.raises(ConfigError, match=f"EQPDENET_JOIN_TIMEOUT='{bad}': expected a positive "
                                              f"number of seconds"):
            join_timeout({"EQPDENET_JOIN_TIMEOUT": bad})
    assert join_timeout({"EQPDENET_JOIN_TIMEOUT": "0.1"}) == 0.1
    for short in ("1e-300", "0.001", "0.09"):  # ended before rank 0 listened: "the port's fault"
        with pytest.raises(ConfigError, match=f"EQPDENET_JOIN_TIMEOUT='{short}': expected at "
                                              f"least 0.1 seconds"):
            join_timeout({"EQPDENET_JOIN_TIMEOUT": short})


@pytest.mark.parametrize("variables, message", [
    # a client that retried for 30 minutes against a port where nothing listened
    ({"RANK": "2"}, "eqpdenet: error: RANK='2': expected an integer from 0 to 1 (WORLD_SIZE=2)"),
    ({"RANK": "-1", "LOCAL_RANK": "0"}, "eqpdenet: error: RANK='-1': expected an integer from 0 to 1"),
    ({"WORLD_SIZE": "0"}, "eqpdenet: error: WORLD_SIZE='0': expected a positive integer"),
    # the command read RANK and LOCAL_RANK itself first: "invalid literal for int()"
    ({"RANK": "abc"}, "eqpdenet: error: RANK='abc': expected an integer from 0 to 1"),
    ({"LOCAL_RANK": "x"}, "eqpdenet: error: LOCAL_RANK='x': expected an integer from 0 to 1"),
], ids=["rank-2-of-2", "rank-minus-1", "world-size-0", "rank-abc", "local-rank-x"])
def test_the_command_refuses_a_bad_variable_at_once(tmp_path, variables, message):
    rank = start_rank(tmp_path, **{**torchrun_variables(free_port()), **variables})
    status, err = finish(rank)
    assert status == 2
    assert one_error_line(err).startswith(message)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- waiting


def test_a_rank_whose_peer_never_comes_stops_at_the_deadline_with_one_line(tmp_path):
    rank = start_rank(tmp_path, **torchrun_variables(free_port()), EQPDENET_JOIN_TIMEOUT="0.5")
    status, err = finish(rank)
    assert status == 2
    line = one_error_line(err)
    assert line.startswith("eqpdenet: error: rank 1 of WORLD_SIZE=2 did not join within 0.5 s "
                           "(MASTER_ADDR:MASTER_PORT=127.0.0.1:"), line
    assert "EQPDENET_JOIN_TIMEOUT" in line
    assert not (tmp_path / "out").exists()


def test_ranks_that_never_come_are_named_in_process(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(ConfigError, match=r"^ranks 1, 2, 3 of WORLD_SIZE=4 did not join within "
                                          r"0.2 s"):
        with data_parallel_group("gloo", rank=0, world_size=4, join_seconds=0.2):
            pass
    # a rank other than 0: rank 0 (its store) never came
    with pytest.raises(ConfigError, match=r"^rank 0 did not open the job's store at "
                                          r"MASTER_ADDR:MASTER_PORT=127.0.0.1:\d+ within 0.2 s "
                                          r"\(rank 3 waited\)"):
        with data_parallel_group("gloo", rank=3, world_size=4, join_seconds=0.2):
            pass


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_rank_waiting_for_its_peers_ends_on_a_signal(tmp_path, sent):
    """Rank 0 waits (a long join timeout); once its store listens, it is in the wait, where the
    signal used to be held until torch's 30 minutes had passed."""
    port = free_port()
    rank = start_rank(tmp_path, **torchrun_variables(port), EQPDENET_JOIN_TIMEOUT="600")

    def listening():
        if rank.poll() is not None:
            return True
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        assert poll(listening, HANG), "rank 0 never opened its store"
        assert rank.poll() is None, rank.communicate()
        rank.send_signal(sent)
        status, err = finish(rank)
    finally:
        if rank.poll() is None:
            rank.kill()
            rank.communicate()
    assert status == 130, err[-2000:]
    assert one_error_line(err) == "eqpdenet: interrupted: no result was written"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- MASTER_PORT


def test_a_busy_master_port_is_bad_input_naming_it(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rank = start_rank(tmp_path, **torchrun_variables(port, world_size="1"))
        status, err = finish(rank)
    assert status == 2
    assert one_error_line(err).startswith(f"eqpdenet: error: MASTER_PORT={port}: the port is in "
                                          f"use on this machine")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- ranks that differ


def join_together(ranks: list[tuple[int, int]], seconds: float = 60) -> list[BaseException | None]:
    """Each ``(rank, world size)`` joins in a thread of this process; what each raised. None of
    these joins completes, so no process group is made here."""
    results: list[BaseException | None] = [None] * len(ranks)

    def join(index, rank, world):
        try:
            with data_parallel_group("gloo", rank=rank, world_size=world, join_seconds=seconds):
                pass
        except BaseException as error:  # noqa: BLE001 - reported to the test
            results[index] = error

    threads = [threading.Thread(target=join, args=(i, *r), daemon=True) for i, r in enumerate(ranks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)
    assert not any(thread.is_alive() for thread in threads), "a rank still waits: the ranks hang"
    return results


def test_ranks_that_disagree_on_the_world_size_all_stop_with_one_line(monkeypatch):
    """Rank 1 with WORLD_SIZE=2 joined a rank 0 of WORLD_SIZE=3 and went on into gloo, where it
    waited torch's 30 minutes."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    results = join_together([(0, 3), (1, 2)])
    assert all(isinstance(r, ConfigError) for r in results), results
    for result in results:
        assert str(result).startswith("the ranks disagree on WORLD_SIZE: "), result
        assert "start every rank with the same WORLD_SIZE" in str(result)


def test_a_rank_started_twice_stops_every_rank(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    results = join_together([(0, 3), (1, 3), (1, 3)])
    assert all(isinstance(r, ConfigError) for r in results), results
    assert {str(r) for r in results} == {
        "two processes were started with RANK=1; start each rank from 0 to WORLD_SIZE-1 = 2 once"}
