"""Where a sweep's runs execute: here (a local process pool) or on a Ray cluster.

:class:`Executor` names the choice (``eqpdenet reproduce|benchmark|study --executor``).
:func:`run_on_ray` runs each run as a Ray task:

* the task declares what it needs: ``cpus_per_run`` CPUs (its torch threads, fixed so that the
  numbers do not depend on the machine it lands on) and one GPU when the run's device is
  ``cuda`` (or ``auto`` on a cluster that has GPUs);
* ``max_retries``: a task whose worker process dies (killed, out of memory, node lost) is run
  again from the start; runs are seeded, so the retry gives the numbers the first try would have;
* the data are prepared once, by the driver, and put in Ray's object store (one copy per node,
  shared by that node's workers); each worker process keeps the last data it read, so a worker
  that runs several runs reads them once;
* the driver collects results as tasks complete (``ray.wait``) and writes them itself (the run
  files, ``results.jsonl``, the checkpoints, which tasks return as bytes), so the workers need no
  access to the results folder.

Ray is an optional dependency (``pip install 'eqpdenet[distributed]'``), imported only here and
only when the Ray executor is used.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

__all__ = ["CONNECT_SECONDS", "EXECUTORS", "Executor", "check_address", "import_ray", "run_on_ray"]

EXECUTORS = ("local", "ray")

#: How long a cluster's head may take to accept a connection before ``--address`` is refused
#: (Ray itself would wait without end for a head that is not there).
CONNECT_SECONDS = 10.0

#: The port of a Ray head given without one (Ray's default).
RAY_PORT = 6379


def check_address(address: str | None, timeout: float = CONNECT_SECONDS) -> None:
    """A :class:`ConfigError` within ``timeout`` seconds unless something accepts connections at
    ``address`` (``HOST[:PORT]``, ``ray://HOST:PORT``); ``None``, ``"auto"`` and ``"local"`` are
    not network addresses and pass."""
    if address in (None, "auto", "local"):
        return
    where = address.split("://", 1)[-1].rstrip("/")
    host, _, port = where.rpartition(":") if ":" in where else (where, "", str(RAY_PORT))
    try:
        port_number = int(port)
    except ValueError:
        raise ConfigError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379)") \
            from None
    try:
        with socket.create_connection((host.strip("[]"), port_number), timeout=timeout):
            return
    except socket.gaierror:
        reason = f"the host {host!r} is unknown"
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except ConnectionRefusedError:
        reason = "connection refused: nothing listens on that port"
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
    raise ConfigError(f"--address {address}: no Ray cluster there ({reason}); start one with "
                      f"`ray start --head` on that machine, or leave out --address to start Ray "
                      f"here")


@dataclass(frozen=True)
class Executor:
    """Where runs execute.

    Attributes:
        kind: ``"local"`` (this machine; ``jobs`` processes) or ``"ray"``.
        address: the Ray cluster: ``None`` starts a Ray instance on this machine for the sweep,
            ``"auto"`` joins the cluster this machine belongs to, ``"HOST:PORT"`` a given head.
        cpus_per_run: CPUs each Ray task declares, and its torch threads.
        max_retries: how often Ray reruns a task whose worker died.
    """

    kind: str = "local"
    address: str | None = None
    cpus_per_run: int = 1
    max_retries: int = 3

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise ConfigError(f"executor {self.kind!r}: choose one of {', '.join(EXECUTORS)}")
        if self.address is not None and self.kind != "ray":
            raise ConfigError("--address is for --executor ray")
        if self.cpus_per_run < 1:
            raise ConfigError(f"cpus per run must be >= 1, got {self.cpus_per_run}")
        if self.max_retries < 0:
            raise ConfigError(f"max retries must be >= 0, got {self.max_retries}")


def import_ray():
    """The ``ray`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'eqpdenet[distributed]' "
                          "(or pip install ray)") from None
    return ray


# ----------------------------------------------------------------------------- inside a task

#: The data last read by this worker process: (object id, data).
_WORKER_DATA: tuple[str, object] | None = None


def _data_of(boxed: list):
    """The data behind ``boxed[0]`` (an object reference, boxed so that Ray does not resolve it
    for every task), read from the object store once per worker process."""
    global _WORKER_DATA
    import ray

    ref = boxed[0]
    if _WORKER_DATA is None or _WORKER_DATA[0] != ref.hex():
        _WORKER_DATA = None  # the previous data set can go before the next one is read
        _WORKER_DATA = (ref.hex(), ray.get(ref))
    return _WORKER_DATA[1]


def _ray_task(runner: Callable[..., dict], config_dict: dict, boxed: list, threads: int,
              want_checkpoint: bool, options: dict) -> tuple[dict, bytes | None]:
    """One run in a Ray worker: its record, and its checkpoint's bytes when one is wanted."""
    import torch

    from .config import ExperimentConfig, from_dict

    torch.set_num_threads(threads)
    config = from_dict(ExperimentConfig, config_dict)
    data = _data_of(boxed)
    if not want_checkpoint:
        return runner(config, data, progress=False, checkpoint=None, **options), None
    with tempfile.TemporaryDirectory(prefix="eqpdenet-run-") as folder:
        path = Path(folder) / "model.pt"
        record = runner(config, data, progress=False, checkpoint=path, **options)
        return record, (path.read_bytes() if path.exists() else None)


# ----------------------------------------------------------------------------- the driver


def _compact(data):
    """``data`` with every split copied to its own storage: a split that is the head of a larger
    tensor would otherwise carry the whole tensor into the object store."""
    import copy

    from .training import Split

    data = copy.copy(data)
    for name in ("train", "validation", "test"):
        split = getattr(data, name)
        setattr(data, name, Split(split.images.clone(), split.labels.clone()))
    return data


def _gpus_for(device: str, cluster_gpus: float) -> float:
    if device == "cuda":
        return 1
    return 1 if device == "auto" and cluster_gpus > 0 else 0


def run_on_ray(tasks: list[tuple[str, object, Path | None]], runner: Callable[..., dict],
               options: dict, executor: Executor, *, data_dir=None,
               cache_dir=None) -> Iterator[tuple[str, dict]]:
    """Run ``tasks`` (key, configuration, checkpoint path or None) as Ray tasks; yields (key,
    record) as they complete, after writing each wanted checkpoint (atomically) here.

    Joins the cluster at ``executor.address``, or starts a local Ray instance when it is None and
    none is running in this process; leaves (and stops what it started) at the end, or when the
    caller stops iterating (Ctrl-C: unfinished tasks are cancelled).
    """
    import json

    from .config import to_dict
    from .files import atomic_write
    from .training import prepare_data

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        check_address(executor.address)
        try:
            # No address: a new instance on this machine ("local"), not whatever RAY_ADDRESS
            # or a `ray start` here would join.
            ray.init(address=executor.address or "local", include_dashboard=False,
                     logging_level="WARNING", configure_logging=True)
        except ConnectionError as error:
            raise ConfigError(f"--address {executor.address}: no Ray cluster there "
                              f"({' '.join(str(error).split())})") from None
    pending: dict = {}
    try:
        resources = ray.cluster_resources()
        cluster_gpus = float(resources.get("GPU", 0))
        if executor.cpus_per_run > float(resources.get("CPU", 0)):
            raise ConfigError(f"--cpus-per-run {executor.cpus_per_run}: the Ray cluster has "
                              f"{resources.get('CPU', 0):g} CPUs, so no run could ever start")
        if cluster_gpus == 0 and any(run.train.device == "cuda" for _, run, _ in tasks):
            raise ConfigError("train.device = 'cuda', but the Ray cluster has no GPU, so no run "
                              "could ever start")
        task = ray.remote(_ray_task)
        data_refs: dict[str, object] = {}
        for key, run, checkpoint in tasks:
            data_key = json.dumps(to_dict(run.data), sort_keys=True)
            if data_key not in data_refs:  # once per data set, in the driver
                data_refs[data_key] = ray.put(_compact(prepare_data(run.data, data_dir,
                                                                    cache_dir)))
            ref = task.options(num_cpus=executor.cpus_per_run,
                               num_gpus=_gpus_for(run.train.device, cluster_gpus),
                               max_retries=executor.max_retries,
                               name=f"eqpdenet {key}").remote(
                runner, to_dict(run), [data_refs[data_key]], executor.cpus_per_run,
                checkpoint is not None, options)
            pending[ref] = (key, checkpoint)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                key, checkpoint = pending.pop(ref)
                record, model = ray.get(ref)
                if checkpoint is not None and model is not None:
                    atomic_write(checkpoint, model)
                yield key, record
    finally:
        for ref in pending:  # interrupted, or a run failed: stop the others
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone: nothing to stop
                pass
        if started:
            ray.shutdown()
