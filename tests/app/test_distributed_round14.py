"""Round 14, distributed execution (probe p6, and p2's F2/F1 where they concern these commands).

* F1: under ``train --distributed`` the other ranks waited for rank 0's solo work (the data at
  the start, evaluation and the result at the end) in gloo collectives under torch's 30-minute
  timeout; a longer evaluation killed the run. They now wait through the job's store, with no
  deadline (:class:`~eqpdenet.app.ranks.RankWaits`).
* F2: a rank lost in a collective was "unexpected RuntimeError: [...gloo...] Connection reset by
  peer ... GLHF! (a bug in eqpdenet?)", exit 1; now one line saying so, exit 2.
* F3: a Ray task's exception printed Ray's remote traceback, colour codes included, as one line.
* F4: ``--cpus-per-run`` with the local executor and ``--jobs`` > 1 with Ray were ignored.
* p2 F2: ``train --distributed`` checked the memory of one process for all the ranks of a
  machine; p2 F1: the out-of-memory line blamed ``train.batch_size`` for evaluation's batches.

Deadlines in the process tests only bound a hang; no assertion is about a duration.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from torch.distributed import DistStoreError, TCPStore

from distributed_helpers import finish_ranks
from eqpdenet.app import cli, distributed, ranks
from eqpdenet.app.cli import describe_error, main
from eqpdenet.app.distributed import Executor, RemoteTraceback, run_on_ray, task_failure
from eqpdenet.app.ranks import RankWaits, collective_failure, lost_rank_text
from eqpdenet.app.sweeps import check_jobs
from eqpdenet.errors import ConfigError, NonFiniteStateError

SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS = str(Path(__file__).resolve().parents[1])

#: gloo's texts, as torch 2.13 raises them (plain RuntimeErrors) for a peer that died or did not
#: answer within the collective timeout.
GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
              "[127.0.0.1]:23245: Connection reset by peer. This is typically caused by a remote "
              "worker hanging or bugs in the application. GLHF! \U0001f3d6\ufe0f")
GLOO_TIMEOUT = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
                "Timed out waiting 3000ms for recv operation to complete")


# ----------------------------------------------------------------------------- F1: the waits


@pytest.fixture
def store():
    store = TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=5))
    yield store
    del store


class Clock:
    """``time.sleep`` and ``time.monotonic`` of :mod:`eqpdenet.app.distributed`: each look of a
    waiting rank stands for a minute, and ``at`` (minutes -> action) runs rank 0's side."""

    def __init__(self, monkeypatch, at: dict):
        self.minutes, self.at = 0, at
        monkeypatch.setattr(ranks.time, "sleep", self.sleep)
        monkeypatch.setattr(ranks.time, "monotonic", lambda: 60.0 * self.minutes)

    def sleep(self, seconds):
        assert seconds == ranks.WAIT_POLL
        self.minutes += 1
        if self.minutes in self.at:
            self.at[self.minutes]()


def test_a_rank_waits_for_rank_zeros_data_longer_than_torchs_timeout(store, monkeypatch):
    rank0, rank1 = (RankWaits(store, rank, 2, "t/") for rank in (0, 1))
    clock = Clock(monkeypatch, {45: lambda: rank0.done("checked")})  # 45 min > torch's 30
    rank1.wait_for("checked")
    assert clock.minutes == 45


def test_the_ranks_leave_together_however_long_rank_zero_evaluates(store, monkeypatch):
    rank0, rank1 = (RankWaits(store, rank, 2, "t/") for rank in (0, 1))
    clock = Clock(monkeypatch, {90: rank0.leave})  # rank 0 arrives after 90 minutes
    rank1.leave()
    assert clock.minutes == 90
    rank0.leave()  # rank 0 does not wait on the store: the caller's barrier meets the others


def test_a_rank_zero_that_stops_stops_the_waiting_ranks_with_its_error(store, monkeypatch):
    rank0, rank1 = (RankWaits(store, rank, 2, "t/") for rank in (0, 1))
    Clock(monkeypatch, {3: lambda: rank0.stopped(ValueError("out of disk\nspace"))})
    with pytest.raises(ConfigError) as caught:
        rank1.leave()
    assert str(caught.value) == "rank 0 stopped: ValueError: out of disk space"


def test_rank_zeros_failed_checks_are_raised_by_the_waiting_ranks(store):
    rank0, rank1 = (RankWaits(store, rank, 2, "u/") for rank in (0, 1))
    rank0.done("checked", "ConfigError: invalid config: no room")
    with pytest.raises(ConfigError) as caught:
        rank1.wait_for("checked")
    assert str(caught.value) == "rank 0 stopped: ConfigError: invalid config: no room"


def test_the_first_rank_to_stop_is_the_one_named(store):
    rank0, rank1 = (RankWaits(store, rank, 2, "v/") for rank in (0, 1))
    rank0.stopped(KeyboardInterrupt())
    rank1.stopped(RuntimeError(GLOO_RESET))
    with pytest.raises(ConfigError, match="^rank 0 stopped: interrupted$"):
        RankWaits(store, 2, 3, "v/").leave()


class GoneStore:
    """A store whose server (rank 0's process) is gone."""

    def add(self, key, value):
        return 1

    def check(self, keys):
        raise DistStoreError("Connection reset by peer")


def test_a_store_that_answers_no_more_is_one_line_not_a_hang():
    with pytest.raises(ConfigError) as caught:
        RankWaits(GoneStore(), 1, 2, "w/").leave()
    assert str(caught.value) == ("rank 1: the job's store answers no more while this rank waits "
                                 "for rank 0 (its connection closed): rank 0 stopped or was "
                                 "lost; see its error")


def test_a_signal_ends_the_wait(store, monkeypatch):
    def interrupted(seconds):
        raise KeyboardInterrupt  # what SIGTERM's handler raises between two looks

    monkeypatch.setattr(ranks.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        RankWaits(store, 1, 2, "x/").wait_for("checked")


# ----------------------------------------------------------------------------- F2: a rank lost


@pytest.mark.parametrize("error, expected", [
    (RuntimeError(GLOO_RESET), "its connection closed"),
    (RuntimeError(GLOO_TIMEOUT), "no answer within torch's collective timeout"),
    (DistStoreError("Socket Timeout"), "Socket Timeout"),
])
def test_a_collectives_failure_is_told_in_a_few_words(error, expected):
    assert collective_failure(error)
    assert lost_rank_text(error) == expected


@pytest.mark.parametrize("error", [RuntimeError("p6net: deliberate failure in forward"),
                                   ValueError("gloo/ in a message"), ConfigError("x")])
def test_other_errors_are_no_collectives_failure(error):
    assert not collective_failure(error)


# ----------------------------------------------------------------------------- the commands


def one_line(stderr: str) -> str:
    """The one line of a command's error, without the hint that may follow it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0].removesuffix(" (EQPDENET_DEBUG=1 shows the traceback)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_tiny_npz(path: Path, n: int = 100) -> Path:
    generator = np.random.default_rng(0)
    labels = np.arange(n) % 4
    images = generator.integers(0, 255, size=(n, 12, 12), dtype=np.uint8)
    np.savez(path, x_train=images[:80], y_train=labels[:80], x_test=images[80:],
             y_test=labels[80:])
    return path


#: A plugin (EQPDENET_PLUGINS) that plays the probe's faults in the processes of a test.
FAULTS = textwrap.dedent('''
    import datetime, os, time
    import torch.distributed
    import torch.distributed.constants as constants
    import torch.distributed.distributed_c10d as c10d
    from eqpdenet.app import training

    if os.environ.get("PG_TIMEOUT_S"):  # torch's collective timeout, 30 min, made short
        constants.default_pg_timeout = c10d.default_pg_timeout = datetime.timedelta(
            seconds=float(os.environ["PG_TIMEOUT_S"]))
    if os.environ.get("RANK") == "0" and os.environ.get("EVAL_SECONDS"):
        evaluate = training.evaluate_scenarios

        def slow(*args, **kwargs):  # an evaluation longer than that timeout
            time.sleep(float(os.environ["EVAL_SECONDS"]))
            return evaluate(*args, **kwargs)

        training.evaluate_scenarios = slow
    if os.environ.get("RANK") == "1" and os.environ.get("DIE_IN_TRAINING"):
        def die(*args, **kwargs):  # a rank lost mid-training (its machine, a kill -9)
            os._exit(3)

        torch.distributed.all_reduce = die
''')


def start_ranks(tmp_path: Path, **extra: str) -> list[subprocess.Popen]:
    """Two ranks of ``train --distributed`` started by hand, with the fault plugin."""
    (tmp_path / "p14faults.py").write_text(FAULTS)
    data = write_tiny_npz(tmp_path / "tiny.npz")
    port = str(free_port())
    command = [sys.executable, "-m", "eqpdenet", "train", "--distributed", "--model", "fcnn",
               "--hidden", "8", "--epochs", "1", "--no-progress", "--dataset", str(data),
               "--set", "train.batch_size=20", "--set", 'scenarios=["test"]',
               "--out", str(tmp_path / "out")]
    ranks = []
    for rank in ("0", "1"):
        env = dict(os.environ, OMP_NUM_THREADS="1", EQPDENET_PLUGINS="p14faults", RANK=rank,
                   LOCAL_RANK=rank, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   PYTHONPATH=os.pathsep.join([str(tmp_path), SRC, TESTS,
                                               os.environ.get("PYTHONPATH", "")]), **extra)
        ranks.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return ranks


@pytest.mark.slow
def test_an_evaluation_longer_than_the_collective_timeout_keeps_the_run(tmp_path):
    """The probe's t4.sh with gloo's timeout at 2 s and rank 0's evaluation taking 5 s longer:
    rank 1 waited in the exit barrier and timed out, the run was lost."""
    (zero, out0, err0), (one, _, err1) = finish_ranks(start_ranks(tmp_path, PG_TIMEOUT_S="2",
                                                            EVAL_SECONDS="5"))
    assert (zero, one) == (0, 0), err0[-2000:] + err1[-2000:]
    assert "2 processes" in out0
    assert json.loads((tmp_path / "out" / "result.json").read_text())["processes"] == 2
    assert (tmp_path / "out" / "model.pt").is_file()


@pytest.mark.slow
def test_a_rank_lost_in_training_is_one_line_exit_2_nothing_written(tmp_path):
    (zero, _, err0), (one, _, _) = finish_ranks(start_ranks(tmp_path, DIE_IN_TRAINING="1"))
    assert one == 3
    assert zero == 2, err0[-3000:]
    assert one_line(err0) == ("eqpdenet: error: rank 0: another rank of --distributed stopped "
                              "or was lost (its connection closed); no result was written")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- p2 F2: memory


def test_the_preflight_counts_every_rank_on_this_machine(monkeypatch, tmp_path):
    seen = []

    def preflight(runs, out, **options):
        seen.append((len(runs), options["jobs"], options["checkpoints"]))

    args = type("Args", (), {"data_dir": None, "cache_dir": None})()
    config = cli._experiment_config(cli.build_parser().parse_args(
        ["train", "--model", "fcnn", "--out", str(tmp_path / "o")]))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    cli._preflight_ranks(preflight, config, tmp_path / "o", cli._local_ranks(), args)
    assert seen == [(3, 3, 1)]  # three processes' data and PyTorch, one checkpoint


def test_a_refusal_for_several_ranks_names_torchruns_remedy(monkeypatch, tmp_path):
    from eqpdenet.app import preflight as checks

    monkeypatch.setattr(checks, "available_memory", lambda device: 300 * 2 ** 20)
    args = type("Args", (), {"data_dir": None, "cache_dir": None})()
    data = write_tiny_npz(tmp_path / "tiny.npz")
    config = cli._experiment_config(cli.build_parser().parse_args(
        ["train", "--model", "fcnn", "--dataset", str(data), "--out", str(tmp_path / "o")]))
    cli._preflight_ranks(checks.preflight, config, tmp_path / "o", 1, args)  # one fits
    with pytest.raises(ConfigError) as caught:
        cli._preflight_ranks(checks.preflight, config, tmp_path / "o", 2, args)
    text = str(caught.value)
    assert "2 ranks on this machine, each " in text
    assert "start fewer ranks on this machine (torchrun --nproc-per-node)" in text
    assert "--jobs" not in text and "worker" not in text and "runs at once" not in text


@pytest.mark.parametrize("value", ["0", "two"])
def test_a_bad_local_world_size_is_named(monkeypatch, value):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
    with pytest.raises(ConfigError) as caught:
        cli._local_ranks()
    assert str(caught.value) == (f"LOCAL_WORLD_SIZE={value!r}: expected a positive integer, the "
                                 f"ranks of the job on this machine (torchrun sets it)")


# ----------------------------------------------------------------------------- F3: Ray's errors


def ray_task_error(cause: BaseException, frame: str = "/x/eqpdenet/app/training.py"):
    exceptions = pytest.importorskip("ray.exceptions")
    # as ray.get raises it: an instance of RayTaskError and of the cause's class, without ip
    return exceptions.RayTaskError("eqpdenet fcnn-seed1", f"Traceback (most recent call last):\n"
                                   f'  File "{frame}", line 9, in f\n', cause,
                                   proctitle="ray::eqpdenet fcnn-seed1", pid=7,
                                   ip="10.0.0.5").as_instanceof_cause()


def test_a_ray_tasks_bug_is_the_line_the_local_executor_prints():
    cause = RuntimeError("p6net: deliberate failure in forward")
    raised = task_failure(ray_task_error(cause), "p6net-seed0")
    assert raised is cause
    assert describe_error(raised) == ("unexpected RuntimeError: p6net: deliberate failure in "
                                      "forward (a bug in eqpdenet? please report it with the "
                                      "traceback)", 1)
    assert raised.__notes__ == ["(raised in the Ray task of run p6net-seed0, Ray node 10.0.0.5)"]


def test_a_ray_tasks_eqpdenet_error_names_its_run_and_node():
    cause = ConfigError("EQPDENET_PLUGINS: cannot import 'p6bad'")
    raised = task_failure(ray_task_error(cause), "fcnn-seed1")
    assert type(raised) is ConfigError
    assert describe_error(raised) == ("EQPDENET_PLUGINS: cannot import 'p6bad' (run fcnn-seed1, "
                                      "Ray node 10.0.0.5)", 2)


def test_an_error_class_with_its_own_arguments_is_raised_as_it_is():
    cause = NonFiniteStateError("heat", 3, 0.1)
    assert task_failure(ray_task_error(cause), "k") is cause


class FakeRay:
    """What :func:`run_on_ray` asks of Ray, in this process: every task fails as ``cause``."""

    def __init__(self, cause, frame: str):
        import ray.exceptions

        self.exceptions, self.cause, self.frame = ray.exceptions, cause, frame
        self.started = False

    def is_initialized(self):
        return self.started

    def init(self, **options):
        self.started = True

    def shutdown(self):
        self.started = False

    def cluster_resources(self):
        return {"CPU": 2.0}

    def put(self, value):
        return "data"

    def remote(self, function):
        class Task:
            def options(self, **options):
                return self

            def remote(self, *args):
                return "ref"

        return Task()

    def wait(self, refs, num_returns):
        return refs[:1], refs[1:]

    def get(self, ref):
        raise ray_task_error(self.cause, self.frame)

    def cancel(self, ref, force):
        pass


def fail_on_fake_ray(monkeypatch, tmp_path, cause, frame) -> BaseException:
    """What :func:`run_on_ray` raises for a run whose task raised ``cause`` in ``frame``."""
    from eqpdenet.app.config import ExperimentConfig, apply_overrides
    from eqpdenet.app.training import run_experiment

    pytest.importorskip("ray")
    monkeypatch.setitem(sys.modules, "ray", FakeRay(cause, frame))
    data = write_tiny_npz(tmp_path / "tiny.npz")
    run = apply_overrides(ExperimentConfig(), [f"data.dataset='{data}'", "model.kind='fcnn'"])
    with pytest.raises(type(cause)) as caught:
        list(run_on_ray([("fcnn-seed0", run, None)], run_experiment, {}, Executor("ray")))
    return caught.value


def test_run_on_ray_raises_the_tasks_own_error(monkeypatch, tmp_path):
    raised = fail_on_fake_ray(monkeypatch, tmp_path, RuntimeError("p6net: deliberate failure"),
                              "/x/plug/p6net.py")
    assert type(raised) is RuntimeError  # not Ray's RayTaskError(RuntimeError)
    assert str(raised) == "p6net: deliberate failure"
    assert type(raised.__cause__) is RemoteTraceback  # shown under EQPDENET_DEBUG=1
    assert str(raised.__cause__) == ('\n"""\nray::eqpdenet fcnn-seed1() (pid=7, ip=10.0.0.5)\n'
                                     '  File "/x/plug/p6net.py", line 9, in f\n"""')


def test_an_oom_in_a_ray_tasks_evaluation_is_said_so(monkeypatch, tmp_path):
    raised = fail_on_fake_ray(monkeypatch, tmp_path, RuntimeError(ALLOCATION),
                              "/x/eqpdenet/analysis/predictions.py")
    assert "in evaluation, which predicts batches of 128" in describe_error(raised)[0]


# ----------------------------------------------------------------------------- F4: the executors


def test_cpus_per_run_with_the_local_executor_is_refused(tmp_path, capsys):
    assert main(["reproduce", "--quick", "--cpus-per-run", "2", "--out", str(tmp_path / "x")]) == 2
    assert one_line(capsys.readouterr().err) == (
        "eqpdenet: error: --cpus-per-run 2 is for --executor ray (the local executor gives each "
        "of --jobs processes an equal share of this machine's CPUs)")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="^--cpus-per-run 2 is for --executor ray"):
        Executor("local", cpus_per_run=2)


def test_cpus_per_run_typed_as_its_default_is_refused_too(tmp_path, capsys):
    assert main(["benchmark", "--quick", "--cpus-per-run", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--cpus-per-run 1 is for --executor ray" in capsys.readouterr().err


def test_jobs_with_the_ray_executor_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "import_ray", lambda: None)  # refused before Ray is needed
    assert main(["study", "--executor", "ray", "--jobs", "2", "--out", str(tmp_path / "x")]) == 2
    assert one_line(capsys.readouterr().err) == (
        "eqpdenet: error: --jobs 2 is for --executor local (with --executor ray, Ray runs as many "
        "runs at once as the cluster's CPUs hold: --cpus-per-run each)")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="^--jobs 2 is for --executor local"):
        check_jobs(2, Executor("ray"))
    check_jobs(2, Executor("local"))
    check_jobs(2, None)
    check_jobs(1, Executor("ray"))


# ----------------------------------------------------------------------------- p2 F1: the OOM line


def _fail_in(filename: str, error: BaseException) -> BaseException:
    """``error`` raised from code compiled as ``filename`` (its traceback holds that frame)."""
    code = compile("def fail(error):\n    raise error\n", filename, "exec")
    namespace: dict = {}
    exec(code, namespace)
    try:
        namespace["fail"](error)
    except type(error) as raised:
        return raised
    raise AssertionError("not raised")


ALLOCATION = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 536870912 bytes."


def test_an_oom_in_evaluation_does_not_blame_the_training_batch():
    where = os.path.join("/x", "eqpdenet", "analysis", "predictions.py")
    text, status = describe_error(_fail_in(where, RuntimeError(ALLOCATION)))
    assert status == 2
    assert text == ("out of memory (tried to allocate 512 MiB); in evaluation, which predicts "
                    "batches of 128 images whatever train.batch_size (lowering it does not "
                    "help): lower the model's width or depth (of a PDE model, its Euler steps: "
                    "model.layer.T / dt, or the blocks of invariant_pde and lifted_pde) or --jobs")


def test_an_oom_in_training_names_the_batch_size():
    where = os.path.join("/x", "eqpdenet", "app", "training.py")
    text, _ = describe_error(_fail_in(where, RuntimeError(ALLOCATION)))
    assert text == ("out of memory (tried to allocate 512 MiB); lower train.batch_size, the "
                    "model's width or depth (of a PDE model, its Euler steps: model.layer.T / "
                    "dt, or the blocks of invariant_pde and lifted_pde) or --jobs")


def test_an_oom_of_a_worker_is_placed_by_its_remote_traceback():
    from concurrent.futures.process import _RemoteTraceback

    error = RuntimeError(ALLOCATION)
    error.__cause__ = _RemoteTraceback('\n"""\n  File "/x/eqpdenet/analysis/predictions.py", '
                                       'line 170, in logits_by_image\n"""')
    assert "in evaluation, which predicts batches of 128" in describe_error(error)[0]


def test_an_oom_without_frames_names_both_phases():
    text, _ = describe_error(RuntimeError(ALLOCATION))
    assert text.endswith("or --jobs (train.batch_size does not help where it failed in "
                         "evaluation or validation, which predict batches of 128 images "
                         "whatever it)")


#: A rank of ``data_parallel_group`` started by hand (round 14, review of this round's waits):
#: ``GROUPS`` groups one after the other, each an all-reduce; ``DIE`` makes rank 1 exit inside
#: the block without a word (a kill -9, the OOM killer).
GROUP_RANK = textwrap.dedent("""
    import os, sys, torch
    rank, port, groups = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    from eqpdenet.app.training import data_parallel_group
    for group in range(groups):
        with data_parallel_group("gloo", join_seconds=60) as (r, w):
            total = torch.ones(1)
            torch.distributed.all_reduce(total)
            if r == 1 and os.environ.get("DIE"):
                os._exit(3)
        print(f"group {group + 1}: {int(total)}", flush=True)
""")


def group_rank(tmp_path: Path, rank: int, port: int, groups: int, **extra: str):
    script = tmp_path / "group_rank.py"
    script.write_text(GROUP_RANK)
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", **extra)
    return subprocess.Popen([sys.executable, str(script), str(rank), str(port), str(groups)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_rank_started_afresh_meets_a_rank_zero_on_its_second_group(tmp_path):
    """Each process counted its own groups for the keys of the waits: a rank 1 started afresh
    beside a rank 0 on its second group waited on other keys, and both waited forever."""
    port = free_port()
    zero = group_rank(tmp_path, 0, port, 2)
    for _ in range(2):  # rank 1: a new process for each group
        [(status, out, err)] = finish_ranks([group_rank(tmp_path, 1, port, 1)], timeout=90)
        assert (status, out) == (0, "group 1: 2\n"), err
    [(status, out, err)] = finish_ranks([zero], timeout=90)
    assert (status, out) == (0, "group 1: 2\ngroup 2: 2\n"), err


@pytest.mark.slow
def test_a_rank_that_dies_without_a_word_ends_rank_zero_s_exit_in_seconds(tmp_path):
    """Rank 0 waited on the store, which it holds itself, for a rank that had died: forever.
    It now meets the others at the barrier, which gloo ends when a peer is gone."""
    port = free_port()
    one = group_rank(tmp_path, 1, port, 1, DIE="1")
    zero = group_rank(tmp_path, 0, port, 1, DIE="1")
    (status0, out0, err0), (status1, _, _) = finish_ranks([zero, one], timeout=90)
    assert status1 == 3 and status0 != 0 and out0 == ""
    assert "Connection closed by peer" in err0 or "Connection reset by peer" in err0, err0
