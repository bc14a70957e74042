"""Faults of the distributed paths, with real processes where the fault is between processes.

* ``train --distributed``: ranks given other configurations (or other data under the same name)
  refuse together, before anything is written, with one line naming the difference (instead of
  a silently wrong model, or a hang in a collective that survives SIGTERM); ranks die with their
  launcher (``torchrun`` SIGKILLed) and write nothing;
* ``--executor ray``: an ``--address`` where something other than a Ray head listens, and a
  ``--cpus-per-run`` this machine cannot hold, are refused before Ray starts or anything is
  written; Ray's own SIGTERM handler does not stay in the driver; a ``study`` starts one Ray
  instance and puts its data in the object store once, not once per stage.

Processes are watched through events (the lock naming rank 0, a process gone), with generous
deadlines that only bound a hang, never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from distributed_helpers import finish_ranks
from eqpdenet.app.cli import _terminate_as_interrupt, main
from eqpdenet.app.distributed import Executor, check_address
from eqpdenet.app.files import read_jsonl
from eqpdenet.app.locks import holder
from eqpdenet.errors import ConfigError
from process_helpers import alive, descendants, poll

SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS = str(Path(__file__).resolve().parents[1])
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="needs /proc (Linux) to watch processes")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", **extra)
    env.pop("RAY_ADDRESS", None)
    return env


def write_tiny_npz(path: Path, seed: int = 0, n: int = 200) -> Path:
    """``n`` 12x12 images of 4 classes (which quarter is bright): 160 training, 40 test."""
    generator = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = generator.integers(0, 40, size=(n, 12, 12), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        images[i, 6 * r:6 * r + 6, 6 * q:6 * q + 6] += 200
    cut = n * 4 // 5
    np.savez(path, x_train=images[:cut], y_train=labels[:cut], x_test=images[cut:],
             y_test=labels[cut:])
    return path


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- train --distributed

TRAIN = ["train", "--distributed", "--model", "fcnn", "--hidden", "8", "--epochs", "1",
         "--no-progress", "--set", "train.batch_size=32"]


def start_ranks(out: Path, per_rank: list[list[str]], cwds: list[Path]) -> list[subprocess.Popen]:
    """Two ranks of one job started by hand, as on two machines: the same torchrun variables,
    each its own options and working folder."""
    port = str(free_port())
    return [subprocess.Popen([sys.executable, "-m", "eqpdenet", *TRAIN, *extra, "--out", str(out)],
                             cwd=cwd, env=environment(RANK=str(rank), LOCAL_RANK=str(rank),
                                                      WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                                      MASTER_PORT=port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for rank, (extra, cwd) in enumerate(zip(per_rank, cwds, strict=True))]


def finish(ranks: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str]]:
    """Each rank's exit status and stderr (:func:`finish_ranks`)."""
    return [(status, err) for status, _, err in finish_ranks(ranks, timeout)]


@pytest.mark.parametrize("options, difference", [
    (["--seed", "1"], "train.seed: 0 on rank 0, 1 on rank 1"),
    # other batches: the ranks would wait in each other's collectives for ever
    (["--set", "train.batch_size=16"], "train.batch_size: 32 on rank 0, 16 on rank 1"),
], ids=["seed", "batch-size"])
def test_ranks_with_other_configurations_refuse_together_before_writing(tmp_path, options,
                                                                       difference):
    data = write_tiny_npz(tmp_path / "tiny.npz")
    out = tmp_path / "run"
    ranks = start_ranks(out, [["--dataset", str(data), "--seed", "0"],
                              ["--dataset", str(data), "--seed", "0", *options]],
                        [tmp_path, tmp_path])
    for rank, (status, err) in enumerate(finish(ranks)):
        line = one_error_line(err)
        assert status == 2, (rank, err)
        assert f"the ranks of --distributed disagree on the configuration: {difference}; " \
               f"every rank must run the same command on the same data" in line, line
    assert not out.exists()  # refused before rank 0 took the folder


@needs_proc
def test_ranks_with_other_data_under_the_same_name_refuse_together(tmp_path):
    """The same path, another file behind it on each machine (here ``/proc/self/cwd/...``:
    each rank's own working folder): the configurations agree, the data files' fingerprints do
    not."""
    from eqpdenet.data.datasets import data_fingerprint

    folders = [tmp_path / "node0", tmp_path / "node1"]
    prints = []
    for seed, folder in enumerate(folders):
        folder.mkdir()
        prints.append(data_fingerprint(write_tiny_npz(folder / "tiny.npz", seed=seed)))
    assert prints[0] != prints[1]
    out = tmp_path / "run"
    same = ["--dataset", "/proc/self/cwd/tiny.npz"]
    ranks = start_ranks(out, [same, same], folders)
    for status, err in finish(ranks):
        line = one_error_line(err)
        assert status == 2, err
        assert (f"disagree on the configuration: fingerprint of the data file: '{prints[0]}' on "
                f"rank 0, '{prints[1]}' on rank 1; every rank") in line, line
    assert not out.exists()


@needs_proc
def test_ranks_die_with_their_launcher_and_write_nothing(tmp_path):
    """``torchrun`` SIGKILLed while its two ranks train a run of many minutes: both exit within
    the deadline (orphans would train on for the whole run, and rank 0 would write model.pt;
    a watchdog thread was not enough: a rank waiting in gloo can keep the interpreter's lock)."""
    data = write_tiny_npz(tmp_path / "tiny.npz", n=400)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               "2", "-m", "eqpdenet", "train", "--distributed", "--model", "eqpdenet",
               "--hidden", "8", "--epochs", "20000", "--no-progress", "--dataset", str(data),
               "--set", "model.layer.backend='reference'", "--out", str(out)]
    launcher = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    family: set[int] = set()
    try:
        # rank 0 holds the folder once the ranks have met and agreed: both are in the job
        info = poll(lambda: launcher.poll() is None and holder(out, wait=0), 600, interval=0.2)
        assert info, "rank 0 never took the output folder"
        family = descendants(launcher.pid)
        assert info["pid"] in family and len(family) >= 2, (info, family)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=60)
        gone = poll(lambda: not any(alive(pid) for pid in family), 120, interval=0.2)
        assert gone, f"the ranks {sorted(p for p in family if alive(p))} outlived torchrun"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in family:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    # Killed as a SIGKILL kills: at most rank 0's staging folder is left (holding no result;
    # the next run into the folder removes it), never a result in the folder.
    results = {"model.pt", "config.toml", "result.json"}
    left = {p.name for p in out.iterdir()} if out.exists() else set()
    assert not left & results, left
    for other in tmp_path.iterdir():
        if other.name not in ("tiny.npz", "run"):
            assert other.name.startswith(".run.staging-"), other
            assert not {p.name for p in other.iterdir()} & results


# ----------------------------------------------------------------------------- --executor ray


@contextlib.contextmanager
def serving(handler_class, host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    server = http.server.ThreadingHTTPServer((host, 0), handler_class)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address
    finally:
        server.shutdown()
        server.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_an_address_where_a_web_server_listens_is_refused_before_anything_starts(tmp_path):
    """``ray.init`` waited for ever for an HTTP server (the dashboard's port, say), after the
    sweep had written its folder. Now one line, before Ray starts or the folder exists; the
    subprocess's timeout only bounds a hang."""
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    with serving(Quiet) as (host, port):
        command = [sys.executable, "-m", "eqpdenet", "reproduce", "--out", str(out), "--no-progress",
                   "--executor", "ray", "--address", f"{host}:{port}"]
        finished = subprocess.run(command, env=environment(), capture_output=True, text=True,
                                  timeout=120)
    assert finished.returncode == 2, finished.stderr[-3000:]
    line = one_error_line(finished.stderr)  # none of Ray's log lines either
    assert (f"eqpdenet: error: --address {host}:{port}: no Ray cluster there (something listens "
            f"there, but not a Ray head: it answered ") in line, line
    assert "where a head answers in gRPC; a web server, or the dashboard's port?" in line, line
    assert not out.exists()


def test_address_auto_is_checked_where_it_leads(monkeypatch):
    """``--address auto`` joins ``RAY_ADDRESS`` (else the last ``ray start`` here): that address
    is checked, and named (Ray turns 127.0.0.1 into this machine's address: the server listens
    on every interface)."""
    pytest.importorskip("ray")
    with serving(Quiet, host="0.0.0.0") as (_, port):
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        with pytest.raises(ConfigError) as caught:
            check_address("auto")
    message = str(caught.value)
    assert message.startswith("--address auto (") and f":{port}): no Ray cluster there (something " \
        f"listens there, but not a Ray head: it answered " in message, message


def test_a_server_that_greets_like_grpc_but_is_no_ray_head_is_refused_at_the_deadline():
    """Past the HTTP/2 greeting, the head's GCS must answer Ray's first request: a server that
    sends an HTTP/2 SETTINGS frame and nothing more is refused once the deadline passes (Ray's
    client, asked from a process of its own, is killed there)."""
    pytest.importorskip("ray")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()
    accepted = []

    def greet():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # an empty SETTINGS frame
            accepted.append(connection)

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            check_address(f"127.0.0.1:{port}", timeout=3)
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()
    message = str(caught.value)
    assert message.startswith(f"--address 127.0.0.1:{port}: no Ray cluster there (a server "
                              f"answers there, but "), message
    assert len(accepted) >= 2  # the greeting (here), then Ray's client (the probe)


def test_more_cpus_per_run_than_this_machine_has_is_refused_before_ray_starts(tmp_path, capsys,
                                                                            no_data):
    cpus = os.cpu_count()
    assert main(["reproduce", "--out", str(tmp_path / "sweep"), "--no-progress", "--executor",
                 "ray", "--cpus-per-run", str(cpus + 1)]) == 2
    err = capsys.readouterr().err
    assert one_error_line(err).startswith(
        f"eqpdenet: error: --cpus-per-run {cpus + 1}: this machine has {cpus} CPUs, and the Ray "
        f"instance started here for the sweep gets no more, so no run could ever start")
    assert not (tmp_path / "sweep").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    with pytest.raises(ConfigError, match="--cpus-per-run"):
        Executor("ray", cpus_per_run=cpus + 1)
    Executor("ray", address="auto", cpus_per_run=cpus + 1)  # another machine's CPUs: asked there


@pytest.fixture
def ray_workers_import_this_tree(monkeypatch):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance runs in this process already")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield ray
    ray.shutdown()


def test_ray_leaves_the_driver_its_signal_handlers(ray_workers_import_this_tree, monkeypatch):
    """``ray.init`` installs Ray's SIGTERM handler (a crash: exit 1, "*** SIGTERM received"),
    ``ray.shutdown`` leaves it: while Ray runs, and after, SIGTERM must stay eqpdenet's (exit
    130 through the interrupt's clean-up)."""
    from eqpdenet.app.distributed import run_on_ray
    from eqpdenet.app.training import run_experiment

    ray = ray_workers_import_this_tree
    seen = []
    resources = ray.cluster_resources

    def spy():  # called once Ray runs
        seen.append(signal.getsignal(signal.SIGTERM))
        return resources()

    monkeypatch.setattr(ray, "cluster_resources", spy)
    before = signal.getsignal(signal.SIGTERM)
    with _terminate_as_interrupt():
        ours = signal.getsignal(signal.SIGTERM)
        assert ours is not before
        assert list(run_on_ray([], run_experiment, {}, Executor("ray"))) == []
        assert not ray.is_initialized()
        assert signal.getsignal(signal.SIGTERM) is ours
    assert seen == [ours]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_study_on_ray_starts_one_instance_and_puts_its_data_once(ray_workers_import_this_tree,
                                                                    monkeypatch, tmp_path):
    """Three sweeps of runs (the first stage's incumbent and candidate, the second stage's
    candidate; its incumbent is done already): one ``ray.init``, one ``ray.put``, Ray stopped at
    the end."""
    from eqpdenet.app.config import apply_overrides
    from eqpdenet.app.study import Stage, run_study, study_base

    ray = ray_workers_import_this_tree
    calls = {"init": 0, "put": 0}
    for name in calls:
        real = getattr(ray, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(ray, name, counted)
    data = write_tiny_npz(tmp_path / "tiny.npz")
    base = apply_overrides(study_base(hidden_sizes=[8], seeds=[0], epochs=1), [
        f"base.data.dataset='{data}'", "base.data.validation=40",
        "base.model.layer.backend='reference'", "base.model.layer.T=0.2"])
    stages = [Stage("lr", "shared", "?", {"lr-1e-3": ["base.train.lr=0.001"],
                                          "lr-1e-2": ["base.train.lr=0.01"]}),
              Stage("horizon", "layer", "?", {"T-0.2": ["base.model.layer.T=0.2"],
                                              "T-0.4": ["base.model.layer.T=0.4"]})]
    lines = []
    run_study(tmp_path / "study", base=base, stages=stages, executor=Executor("ray"),
              progress=False, echo=lines.append)
    sweeps = [line for line in lines if line.startswith("reproduce: ")]
    assert [line.split(" -> ")[0] for line in sweeps] == [
        "reproduce: 0 runs done, 2 to go", "reproduce: 0 runs done, 2 to go",
        "reproduce: 2 runs done, 0 to go", "reproduce: 0 runs done, 1 to go"], lines
    assert calls == {"init": 1, "put": 1}
    assert not ray.is_initialized()
    records = [r for folder in (tmp_path / "study" / "runs").iterdir()
               for r in read_jsonl(folder / "results.jsonl")]
    assert len(records) == 5 and all(r["status"] == "ok" for r in records)
    assert (tmp_path / "study" / "chosen.toml").exists()
