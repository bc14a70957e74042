"""Sweeps of runs: the paper's protocol (Tables 1 and 2), resumable and reproducible.

:func:`reproduce` runs the grid models x hidden sizes x seeds and writes each finished run to its
own file ``runs/<key>.json`` (atomically: a temporary file, then a rename, so a killed job never
leaves a partial file), then regenerates ``results.jsonl`` from the run files
(:mod:`eqpdenet.app.runstore`); a restart skips the keys already done. The folder has one writer
at a time (:mod:`eqpdenet.app.locks`); the runs to do are checked before any data is loaded
(:mod:`eqpdenet.app.preflight`); ``jobs > 1`` runs in worker processes that die with this one
(:mod:`eqpdenet.app.workers`), and the ``ray`` executor runs them as tasks of a Ray cluster
(:mod:`eqpdenet.app.distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import time
import tomllib
import warnings
from collections.abc import Callable
from concurrent.futures import as_completed
from pathlib import Path

import torch

from ..data.datasets import (
    DATASETS,
    dataset_fingerprint,
    is_built_in,
    loader_name,
    loader_words,
)
from ..data.mnist import download_progress
from ..data.rotmnist import find_official_rotmnist
from ..errors import ConfigError, OutputFolderError
from ..files import is_storage_limit, write_cause
from ..kernels import ENV_BACKEND
from .config import (
    KIND_OPTIONS,
    DataConfig,
    ExperimentConfig,
    ReproduceConfig,
    from_dict,
    to_dict,
    to_toml,
)
from .distributed import Executor
from .files import (
    FolderMovedError,
    atomic_write,
    check_folder_kept,
    forget_folder,
    keep_folder,
    kept_holding,
)
from .preflight import preflight
from .progress import interactive, labelled
from .runfolder import check_claim, claiming
from .runstore import load_records, save_run, set_aside, with_finite_numbers, write_aggregate
from .training import (
    Data,
    _progress,
    data_resolved_fields,
    fingerprint,
    non_finite_notice,
    pde_backend,
    prepare_data,
    resolved_device_type,
    run_experiment,
    with_legacy_fields,
)
from .workers import refuse_while_starting, worker_pool

__all__ = ["DIGIT_FIELDS", "SWEEP_FILES", "changed_runs", "check_before_writing",
           "check_checkpoints", "check_jobs", "field_differences", "grid",
           "other_environment_values", "reproduce", "run_key", "run_sweep",
           "runs_without_checkpoints", "set_aside_lacking"]


def run_key(kind: str, hidden: int, seed: int) -> str:
    return f"{kind}-h{hidden}-seed{seed}"


def grid(config: ReproduceConfig) -> list[ExperimentConfig]:
    """Every run of the protocol: the base recipe with model kind, hidden size and seed set."""
    runs = []
    for hidden in config.hidden_sizes:
        for seed in config.seeds:
            for kind in config.models:
                run = copy.deepcopy(config.base)
                run.model.kind, run.model.hidden, run.train.seed = kind, hidden, seed
                runs.append(run)
    return runs


def _worker(args) -> dict:
    runner, key, config_dict, data_dir, cache_dir, threads, checkpoint, options, progress, \
        *held = args
    kept = held[0] if held else None  # (folder, identity, command) of the sweep's holder
    torch.set_num_threads(threads)
    config = from_dict(ExperimentConfig, config_dict)
    # A worker starts afresh: the command line's --no-progress must reach its download too.
    with download_progress(progress):
        data = _cached_data(config.data, data_dir, cache_dir)
    # The sweep's folder, as its holder took it: a checkpoint is never written into a new folder
    # at its path after it was moved (the worker holds no lock to tell it by).
    if kept is not None:
        folder, identity, command = kept
        keep_folder(folder, command, identity=identity)
    try:
        with labelled(key):
            return runner(config, data, progress=progress, checkpoint=checkpoint, **options)
    finally:
        if kept is not None:
            forget_folder(kept[0])


_DATA_CACHE: dict = {}
# A registered data set is keyed by its name alone (dataset_fingerprint: None): a loader
# registered anew under that name (a notebook's edited cell, replace=True) was served from the
# cache, and the next sweep trained on the old loader's data without a word.
DATASETS.on_change(_DATA_CACHE.clear)


def _cached_data(config: DataConfig, data_dir, cache_dir) -> Data:
    # The content's fingerprint too: a file replaced under the same name between two sweeps of
    # one process (a notebook, a test) is data not to be served from the cache.
    key = (json.dumps(to_dict(config), sort_keys=True), str(data_dir), str(cache_dir),
           dataset_fingerprint(config.dataset))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = prepare_data(config, data_dir, cache_dir)
    return _DATA_CACHE[key]


#: What a sweep stopped by a full disk or a limit says after the cause (as an interrupt's message
#: says it): the runs it finished are kept, and its rerun resumes.
RESUME_HINT = ("finished runs are saved: make room (or raise the limit), then rerun the same "
               "command to resume")
_ROOM, _WRITABLE = "make room (or raise the limit)", "make the folder writable"


def report_hint(out_dir: Path) -> str:
    """What a sweep's report stopped by a full disk or a limit says after the cause: every run
    is saved, and ``eqpdenet report`` writes the report once there is room."""
    return (f"every run is saved: make room (or raise the limit), then `eqpdenet report "
            f"{out_dir}` writes the report (or rerun the same command)")


@contextlib.contextmanager
def _limits_named(out_dir: Path, resumable: bool = False, hint: str = RESUME_HINT):
    """A write into ``out_dir`` refused by a limit the system's words do not name (``File too
    large``: the process's file size limit, ``ulimit -f``; ``Disk quota exceeded``) as an
    :class:`~eqpdenet.errors.OutputFolderError` naming the file and the limit, as ``train``'s
    writes say it (:mod:`eqpdenet.app.runfolder`). ``resumable`` (the runs of a sweep): any
    write refused for want of room (:func:`eqpdenet.files.is_storage_limit`: a full disk, the
    file size limit, the quota, a read-only file system), wherever it was, says too that the
    finished runs are saved and that the same command resumes (``hint``: :data:`RESUME_HINT`;
    after every run, :func:`report_hint`)."""
    try:
        yield
    except FolderMovedError:
        raise
    except OSError as error:
        if isinstance(error, OutputFolderError):
            if not (resumable and is_storage_limit(error)):
                raise
            text = str(error)
        else:
            name = getattr(error, "filename", None)
            named = name is not None and \
                Path(os.path.realpath(out_dir)) in Path(os.path.realpath(name)).parents
            if resumable and is_storage_limit(error):
                text = f"cannot write {name}: {write_cause(error)}" if name is not None \
                    else write_cause(error)
            elif error.errno in (errno.EFBIG, errno.EDQUOT) and named:
                text = f"cannot write {name}: {write_cause(error)}"
            else:
                raise
        if resumable:
            # a read-only folder or file system is not a lack of room: say what to do about it
            text = f"{text}; " + (hint.replace(_ROOM, _WRITABLE) if error.errno == errno.EROFS
                                  else hint)
        named_error = OutputFolderError(text)
        named_error.errno = error.errno
        raise named_error from None


def run_sweep(name: str, runs: dict[str, ExperimentConfig], out_dir: Path, *,
              base_fingerprint: str, checkpoint_keys: set[str] = frozenset(),
              runner: Callable[..., dict] | None = None, runner_options: dict | None = None,
              jobs: int = 1, executor: Executor | None = None, data_dir=None, cache_dir=None,
              progress: bool = True, echo: Callable[[str], None] = print,
              annotate: Callable[[str], dict] | None = None) -> Path:
    """Run every run of ``runs`` (key -> configuration) not yet finished in ``out_dir``.

    ``runner(config, data, progress=..., checkpoint=path or None, **runner_options)`` (default
    :func:`~eqpdenet.app.training.run_experiment`) trains and
    evaluates one run and returns its record (a top-level function: with ``jobs > 1`` or the Ray
    executor it runs in another process); each record gets its ``key`` and ``base_fingerprint``
    and is written to ``out_dir/runs/<key>.json`` as soon as it finishes, and ``results.jsonl``
    is regenerated, so a killed sweep resumes where it stopped. Runs whose key is in
    ``checkpoint_keys`` save their trained model to ``out_dir/checkpoints/<key>.pt``.
    ``executor`` (default: the local one) says where runs execute; ``jobs`` is the local pool's
    size. ``annotate(key)`` returns fields added to a run's record when it finishes (in this
    process: it need not be picklable). Finished runs made with another thread count than the
    runs to go get, or another PyTorch version or CPU capability, are named in a warning
    before they start (:func:`_warn_other_environment`).
    """
    out_dir = Path(out_dir)
    executor = executor or Executor()
    results = out_dir / "results.jsonl"
    changed = changed_runs(runs, out_dir, data_dir=data_dir,
                           device_here=executor.kind == "local")
    if changed:  # check_before_writing sets them aside when asked; never count them as done
        raise ConfigError(_changed_message(out_dir, changed))
    done = set(load_records(out_dir))
    todo = [(key, run) for key, run in runs.items() if key not in done]
    echo(f"{name}: {len(runs) - len(todo)} runs done, {len(todo)} to go -> {results}")
    if not todo:
        write_aggregate(out_dir)  # a run file added by another writer since the last one
        return results
    options = runner_options or {}
    runner = runner or run_experiment

    check_jobs(jobs, executor)
    parallel = jobs if executor.kind == "local" else 1  # Ray's runs use the cluster's memory
    preflight(dict(todo), out_dir, jobs=parallel, at_data=True,
              checkpoints=sum(key in checkpoint_keys for key, _ in todo), data_dir=data_dir,
              cache_dir=cache_dir)
    _warn_other_environment(out_dir, _environment_now(jobs, executor), len(todo))

    finished = [len(runs) - len(todo)]

    def finish(key: str, record: dict) -> None:
        finished[0] += 1
        count = f"[{finished[0]}/{len(runs)}]"
        record.update(annotate(key) if annotate is not None else {})
        record["key"] = key
        record["base_fingerprint"] = base_fingerprint
        record = with_finite_numbers(record)  # a NaN logit change: a failed run, valid JSON
        if record["status"] != "ok":  # no model for this result: none left from an earlier try
            (out_dir / "checkpoints" / f"{key}.pt").unlink(missing_ok=True)
        save_run(out_dir, key, record)
        write_aggregate(out_dir)
        if record["status"] == "ok":
            scores = "  ".join(f"{k} {v:5.2f}" for k, v in record["accuracy"].items())
            echo(f"{count} {key:>24}: {scores}  ({record['train_seconds']:.0f} s train, "
                 f"{record['eval_seconds']:.0f} s eval)")
            # the accuracies count PDE blow-ups as errors: said, as evaluate and train say it
            for scenario, failed in record.get("non_finite_images", {}).items():
                echo(f"{' ' * len(count)} {key:>24}: warning: "
                     f"{non_finite_notice(scenario, failed)}")
        else:
            echo(f"{count} {key:>24}: {record['status']}: {record['error']}")

    def checkpoint_for(key: str) -> Path | None:
        return out_dir / "checkpoints" / f"{key}.pt" if key in checkpoint_keys else None

    # On a terminal a bar of runs, each run with its bar of epochs (runs side by side: no epoch
    # bars, which would overwrite one another); in a log, a line per epoch of every run, led by
    # the run's key (a run of the full benchmark trains for half an hour), and the line of each
    # finished run (finish, above).
    bar = _progress(range(len(todo)), progress and interactive(), desc=name, unit="run")
    # The folder as this sweep's holder took it (None: not held), for the worker processes.
    kept = kept_holding(out_dir)
    with _limits_named(out_dir, resumable=True):
        try:
            _run_all(todo, finish, runner, options, checkpoint_for, bar, executor=executor,
                     jobs=jobs, data_dir=data_dir, cache_dir=cache_dir, progress=progress,
                     out_dir=out_dir, kept=kept)
        except BaseException as error:
            # An interrupt (Ctrl-C, SIGTERM) between a run file and the aggregate would leave
            # results.jsonl without a run the interrupt message says is saved: regenerated here,
            # and by whoever reads it next (a report, a resume) should this one fail too.
            with contextlib.suppress(Exception):
                write_aggregate(out_dir)
            if isinstance(error, Exception):
                try:  # the folder moved away is the cause, whatever failed (a worker's write),
                    check_folder_kept(out_dir)  # said by the holder, who can tell where it went
                except FolderMovedError as moved:
                    raise moved from None
            raise
        finally:
            if hasattr(bar, "close"):
                bar.close()
        write_aggregate(out_dir)
    return results


def _run_all(todo, finish, runner, options, checkpoint_for, bar, *, executor, jobs, data_dir,
             cache_dir, progress, out_dir=None, kept=None) -> None:
    """Run ``todo`` (key, configuration) where ``executor`` says, ``finish(key, record)`` for
    each as it ends. One at a time, each run starts only while ``out_dir`` is still the folder
    the sweep took (:func:`~eqpdenet.app.files.check_folder_kept`: moved away, no run trains for
    nothing); ``kept`` (the folder, its identity, the command) goes to the worker processes."""
    bar_update = getattr(bar, "update", lambda n: None)
    if executor.kind == "ray":
        from .distributed import run_on_ray

        tasks = [(key, run, checkpoint_for(key)) for key, run in todo]
        for key, record in run_on_ray(tasks, runner, options, executor, data_dir=data_dir,
                                      cache_dir=cache_dir):
            finish(key, record)
            bar_update(1)
    elif jobs <= 1:
        for key, run in todo:
            if out_dir is not None:
                check_folder_kept(out_dir)
            data = _cached_data(run.data, data_dir, cache_dir)
            with labelled(key):
                record = runner(run, data, progress=progress, checkpoint=checkpoint_for(key),
                                **options)
            finish(key, record)
            bar_update(1)
    else:
        threads = threads_per_job(jobs)
        with worker_pool(min(jobs, len(todo))) as pool:
            epoch_lines = progress and not interactive()
            futures = {pool.submit(_worker, (runner, key, to_dict(run), data_dir, cache_dir,
                                             threads, checkpoint_for(key), options, epoch_lines,
                                             kept)): key
                       for key, run in todo}
            for future in as_completed(futures):
                finish(futures[future], future.result())
                bar_update(1)


#: What a sweep's folder held before folders were marked (:func:`eqpdenet.app.runfolder.
#: claim_folder`): a folder holding one of these is a sweep's.
SWEEP_FILES = ("results.jsonl", "runs")


def check_jobs(jobs: int, executor: Executor | None) -> None:
    """``jobs``, the local pool's size, for ``executor`` (None: the local one): at least 1, and
    1 with the Ray executor, which places the runs itself (``cpus_per_run`` each), so that a
    larger number is refused rather than ignored without a word."""
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if jobs > 1 and executor is not None and executor.kind != "local":
        raise ConfigError(f"--jobs {jobs} is for --executor local (with --executor "
                          f"{executor.kind}, Ray runs as many runs at once as the cluster's CPUs "
                          f"hold: --cpus-per-run each)")


def check_before_writing(runs: dict[str, ExperimentConfig], out_dir: Path, jobs: int,
                         executor: Executor | None, checkpoint_keys, *,
                         rerun_changed: bool = False,
                         echo: Callable[[str], None] = print,
                         base_fingerprint: str | tuple[str, ...] | None = None,
                         base: dict | None = None,
                         others: dict[str, ExperimentConfig] | None = None,
                         every_kind: bool = False, data_dir=None, cache_dir=None) -> None:
    """Before a sweep writes its ``config.toml``: the runs of ``out_dir`` finished under another
    configuration (:func:`changed_runs`: of the same key, on other data, or, with
    ``base_fingerprint``, under another base configuration, whatever their key) are refused,
    naming the keys and the fields that differ, or with ``rerun_changed`` set aside
    (:func:`~eqpdenet.app.runstore.set_aside`), those of ``runs`` to run again. ``others``: runs
    that the ``config.toml`` describes but this sweep does not run (``benchmark --models``):
    checked and set aside alike, run when a sweep includes them. Then the
    preflight (:func:`~eqpdenet.app.preflight.preflight`) of the runs not yet done. ``base``
    (section name -> the configuration the base fingerprint covers, e.g. ``{"base":
    config.base}``) names the fields that differ from the folder's ``config.toml``
    (``every_kind``, ``data_dir``: :func:`changed_runs`). A sweep that
    cannot run writes nothing (a folder its command made for it is removed again:
    :func:`~eqpdenet.app.runfolder.claiming`); a folder never holds runs of two base
    configurations."""
    check_jobs(jobs, executor)
    changed = changed_runs({**(others or {}), **runs}, out_dir, base_fingerprint=base_fingerprint,
                           base=base, every_kind=every_kind, data_dir=data_dir,
                           device_here=(executor or Executor()).kind == "local")
    if changed and not rerun_changed:
        raise ConfigError(_changed_message(out_dir, changed) + "; run again with --rerun-changed "
                          "to set them aside and run them anew, or choose another output folder")
    done = set(load_records(out_dir))
    todo = {key: run for key, run in runs.items() if key not in done or key in changed}
    parallel = jobs if (executor or Executor()).kind == "local" else 1
    preflight(todo, out_dir, jobs=parallel, at_data=True,
              checkpoints=sum(key in checkpoint_keys for key in todo), data_dir=data_dir,
              cache_dir=cache_dir)
    if changed:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = set_aside(out_dir, changed, stamp)
        later = sorted(set(changed) - set(runs))
        when = "to run again" if not later else (
            f"those of this sweep to run again now, {_keys(later)} when a sweep includes them")
        echo(f"{_changed_message(out_dir, changed)}: set aside in {aside}, {when}")


def threads_per_job(jobs: int) -> int:
    """Threads of each of ``jobs`` parallel worker processes: the CPUs this process may run on
    (its affinity: a container's or ``taskset``'s set; else ``os.cpu_count()``) shared out, at
    least 1, and never more than ``OMP_NUM_THREADS`` where it is a positive whole number, which
    ``--jobs 1`` (PyTorch in this process) honours too. The thread count changes a run's last
    digits, so a documented ``OMP_NUM_THREADS=1 ... --jobs 2`` must mean one thread per run on
    any machine (each run records what it used: ``environment.threads``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    threads = max(1, cpus // max(1, jobs))
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if limit.isdigit() and int(limit) >= 1:
        threads = min(threads, int(limit))
    return threads


def _environment_now(jobs: int, executor: Executor) -> dict:
    """What the :data:`DIGIT_FIELDS` of each run of a sweep started now will say
    (``environment.threads``, ``.torch``, ``.cpu_capability``): the threads ``cpus_per_run`` on
    Ray, :func:`threads_per_job` in the local pool's workers, this process's own with ``jobs ==
    1``; this process's PyTorch and CPU for the local executor (Ray's machines are not known
    here: not compared)."""
    if executor.kind != "local":
        return {"threads": executor.cpus_per_run}
    return {"threads": threads_per_job(jobs) if jobs > 1 else torch.get_num_threads(),
            "torch": str(torch.__version__),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def other_environment_values(out_dir: Path, field: str, now) -> dict[object, list[str]]:
    """The finished runs of ``out_dir`` whose record says they ran with another value of
    ``environment.<field>`` than ``now`` (``threads``, ``torch``, ``cpu_capability``), grouped by
    that value (value -> sorted keys). Records without it (runs from before it was recorded) are
    not compared, nor are values of another type than ``now``'s (a bool is no thread count)."""
    other: dict[object, list[str]] = {}
    for key, record in sorted(load_records(out_dir).items()):
        environment = record.get("environment")
        recorded = environment.get(field) if isinstance(environment, dict) else None
        if type(recorded) is type(now) and recorded != now:
            other.setdefault(recorded, []).append(key)
    return dict(sorted(other.items()))  # one type (now's): 2 before 10


#: The fields of a run's ``environment`` that change its numbers in their last digits only
#: (the order or the kernels of the same sums), each with how to match it on resume:
#: :func:`_warn_other_environment` names them; a changed backend or device is refused instead.
DIGIT_FIELDS = {"threads": "OMP_NUM_THREADS and --jobs as then",
                "torch": "the same PyTorch version",
                "cpu_capability": "a machine whose CPU has the same vector instructions"}


def _warn_other_environment(out_dir: Path, now: dict, todo: int) -> None:
    """Warn, before a sweep runs its ``todo`` runs, of the finished runs of ``out_dir`` made
    with another value of a :data:`DIGIT_FIELDS` field than ``now`` gives the runs to go
    (:func:`other_environment_values`; a field ``now`` lacks is not compared: the runs of a Ray
    cluster run on its machines, whose PyTorch and CPU this process does not know).

    A warning, where another PDE backend or device is refused as a changed configuration
    (:func:`changed_runs`): those compute with other operators, whereas the thread count, the
    PyTorch version and the CPU's vector instructions change the order or kernels of the same
    sums (the last digits), and the thread count follows ``--jobs`` and ``OMP_NUM_THREADS``,
    which a resume may change. The runs are valid; a table mixing them is just not the numbers
    of one uninterrupted command, which the warning says."""
    for field, advice in DIGIT_FIELDS.items():
        if field not in now:
            continue
        other = other_environment_values(out_dir, field, now[field])
        if not other:
            continue
        made = "; ".join(f"{_keys(keys)} with {value}" for value, keys in other.items())
        count = sum(len(keys) for keys in other.values())
        if field == "threads":
            ran = (f"another thread count than the {now[field]} that each of the {todo} run(s) "
                   f"to go gets now")
        else:
            what = {"torch": "PyTorch version", "cpu_capability": "CPU capability"}[field]
            ran = f"another {what} than the {todo} run(s) to go get now ({now[field]})"
        warnings.warn(f"{out_dir}: {count} finished run(s) ran with {ran} (environment.{field}: "
                      f"{made}); PyTorch's sums depend on it, so the table will mix numbers that "
                      f"may differ in their last digits from those of one uninterrupted command; "
                      f"for those, resume as the finished runs ran ({advice})", RuntimeWarning,
                      stacklevel=3)


def changed_runs(runs: dict[str, ExperimentConfig], out_dir: Path, *,
                 base_fingerprint: str | tuple[str, ...] | None = None,
                 base: dict | None = None, every_kind: bool = False,
                 data_dir=None, device_here: bool = True) -> dict[str, list[str]]:
    """The keys of the finished runs of ``out_dir`` made under another configuration than the
    one given now, each with its differences (``"train.epochs: 11 recorded, 12 now"``):

    * a key of ``runs`` whose recorded configuration differs (an entry's recipe changed since its
      runs were made). A recorded configuration is read as its run saw it: fields it lacks hold
      their earlier behaviour (:data:`~eqpdenet.app.training.LATER_FIELDS`) or else their
      default; the fields taken from the data
      (:func:`~eqpdenet.app.training.data_resolved_fields`) are compared through the data's own
      fields;
    * a key of ``runs`` whose data file (or IDX folder) is not the one it was made on: its
      recorded fingerprint (:func:`~eqpdenet.data.datasets.data_fingerprint`) differs from that
      of the data now at the path (hashed, not loaded, once per path per call). Records without a
      fingerprint (registered data sets; runs from before fingerprints) are not compared;
    * a key of ``runs`` on the built-in ROTMNIST (not a plugin's ``rotmnist``,
      :func:`~eqpdenet.data.datasets.is_built_in`) whose recorded source (``dataset.source``:
      ``'official'`` or ``'generated'``, what ``data.source = 'auto'`` resolved to when it ran)
      is not the one its data configuration resolves to now, in ``data_dir`` (``None``:
      ``EQPDENET_DATA`` or the default, as loading resolves it): the official files added to or
      removed from the data folder since, which would mix the official and the generated set in
      one folder. Records without a source (runs from before it was recorded) are not compared;
    * a key of ``runs`` on a registered data set whose recorded loader (``dataset.loader``:
      :func:`~eqpdenet.data.datasets.loader_name`, eqpdenet's built-in one or a plugin's
      ``module.qualname``) is not the one registered under its name now: a plugin imported,
      changed or removed since would mix two data sets' runs under one name. Records without
      it (data files; runs from before it was recorded) are not compared;
    * a key of ``runs`` whose PDE layers resolved their ``backend = "auto"`` to another backend
      than they would now (``environment.pde_backend``: ``EQPDENET_BACKEND`` set or unset since;
      :func:`~eqpdenet.app.training.pde_backend`). Records without it are not compared;
    * with ``device_here`` (the runs run in this process's machine: the local executor), a key
      of ``runs`` at ``train.device = "auto"`` whose record ran on another kind of device
      (``environment.device``, ``"cpu"`` or ``"cuda"``) than ``"auto"`` resolves to here now: a
      sweep resumed on a machine with(out) a GPU would mix CPU and GPU runs, which round
      differently. Records without it (runs from before it was recorded) are not compared, nor
      are runs placed by Ray (its workers, not this process, resolve ``"auto"``);
      the thread count, PyTorch version and CPU capability (:data:`DIGIT_FIELDS`) are not
      compared here: :func:`run_sweep` names the runs of another in a warning
      (:func:`_warn_other_environment` says why);
    * with ``base_fingerprint``, any key whose record has another base fingerprint (a
      ``reproduce`` base or a benchmark's base and curves changed), its differences those of its
      configuration, else the fields of ``base`` (section name -> configuration) that differ
      from the folder's ``config.toml``, else the two fingerprints (the fields of the base's
      own model kind only, as :func:`~eqpdenet.app.training.fingerprint` reads it; with
      ``every_kind``, every kind's option table, which the benchmark's fingerprint covers, its
      entries choosing their kinds). A tuple of fingerprints
      accepts any of them (the first is the current one; the others what folders recorded
      under an earlier schema of the configuration have, :func:`~eqpdenet.app.benchmark.
      benchmark_fingerprints`).

    Without this check a sweep would count such runs as done and report results that are not
    those of its configuration."""
    records = load_records(out_dir)
    fingerprints: dict[str, str | None] = {}
    accepted = ((base_fingerprint,) if isinstance(base_fingerprint, str)
                else tuple(base_fingerprint or ()))
    base_differences = None
    changed = {}
    for key in sorted(records):
        record, run = records[key], runs.get(key)
        differences = []
        if run is not None and record.get("config") is not None:
            differences += _config_differences(record["config"], run)
            differences += _data_differences(record, run, fingerprints)
            differences += _source_differences(record, run, data_dir, fingerprints)
            differences += _loader_differences(record, run)
            differences += _backend_differences(record, run)
            if device_here:
                differences += _device_differences(record, run)
        if accepted and record.get("base_fingerprint") not in accepted and not differences:
            if base_differences is None:  # config.toml is read once, where needed
                base_differences = _base_differences(out_dir, base or {}, every_kind)
            differences = base_differences or [
                f"base configuration fingerprint {record.get('base_fingerprint')} recorded, "
                f"{accepted[0]} now"]
        if differences:
            changed[key] = differences
    return changed


def _config_differences(recorded: dict, run: ExperimentConfig) -> list[str]:
    recorded = _as_run(recorded)
    current = to_dict(run)
    for path in data_resolved_fields(run):  # from the data, which the data fields fix
        source, target = recorded, current
        for name in path[:-1]:
            source, target = source.get(name, {}), target[name]
        if path[-1] in source:
            target[path[-1]] = source[path[-1]]
    if fingerprint(recorded) == fingerprint(current):
        return []
    return field_differences(_own_kind(recorded), _own_kind(current))


def _data_differences(record: dict, run: ExperimentConfig, cache: dict) -> list[str]:
    """The data file of ``run`` when it is not the one ``record`` was made on (a file
    regenerated under the same name: another class count, other images)."""
    dataset = record.get("dataset")
    recorded = dataset.get("fingerprint") if isinstance(dataset, dict) else None
    if recorded is None:  # a registered data set, or a run from before fingerprints
        return []
    spec = run.data.dataset
    if spec not in cache:
        cache[spec] = dataset_fingerprint(spec)
    now = cache[spec]
    if now is None or now == recorded:  # no data there now: loading it says so
        return []
    return [f"data file {spec}: fingerprint {recorded} recorded, {now} now"]


def _source_differences(record: dict, run: ExperimentConfig, data_dir, cache: dict) -> list[str]:
    """The ROTMNIST source ``record`` was made on (``dataset.source``) when ``run``'s data
    configuration resolves to the other one now (``data.source = 'auto'``: official where
    ``data_dir`` holds the official files, else generated; looked up once per call). The
    built-in ROTMNIST only: ``rotmnist`` registered anew by a plugin is the user's set, whose
    loader takes no source (its ``info`` may say ``source`` of its own)."""
    dataset = record.get("dataset")
    recorded = dataset.get("source") if isinstance(dataset, dict) else None
    if (run.data.dataset != "rotmnist" or not is_built_in(run.data.dataset)
            or recorded not in ("official", "generated")):
        return []  # another data set, or a run from before the source was recorded
    now = run.data.source
    if now == "auto":
        if ("rotmnist source", data_dir) not in cache:
            cache["rotmnist source", data_dir] = (
                "official" if find_official_rotmnist(data_dir) is not None else "generated")
        now = cache["rotmnist source", data_dir]
    if now == recorded:
        return []
    return [f"data.source {run.data.source!r}: the {recorded} ROTMNIST recorded, the {now} "
            f"one now"]


def _loader_differences(record: dict, run: ExperimentConfig) -> list[str]:
    """The loader ``record``'s registered data set was loaded by (``dataset.loader``: eqpdenet's
    built-in one or a plugin's) when another is registered under the name now (a plugin
    imported, changed or removed since). Records without it (data files; runs from before it
    was recorded) and a name registered by no loader now (loading it says so) are not
    compared."""
    dataset = record.get("dataset")
    recorded = dataset.get("loader") if isinstance(dataset, dict) else None
    now = loader_name(run.data.dataset)
    if not isinstance(recorded, str) or now is None or now == recorded:
        return []
    return [f"data set {run.data.dataset!r}: loaded by {loader_words(recorded)} recorded, by "
            f"{loader_words(now)} now"]


def _backend_differences(record: dict, run: ExperimentConfig) -> list[str]:
    """The backend ``record``'s PDE layers resolved ``"auto"`` to (``environment.pde_backend``)
    when ``run``'s resolve it to another now (``EQPDENET_BACKEND`` set or unset since): the
    fused operators and the reference differ in their last digits. Records without it (runs
    from before it was recorded, models without a backend at ``"auto"``) are not compared."""
    environment = record.get("environment")
    recorded = environment.get("pde_backend") if isinstance(environment, dict) else None
    now = pde_backend(run)
    if recorded is None or now is None or recorded == now:
        return []
    return [f"the PDE backend: {recorded!r} recorded, {now!r} now ({ENV_BACKEND} "
            f"{'unset' if now == 'auto' else repr(now)}); the fused operators and the "
            f"reference round differently"]


def _device_differences(record: dict, run: ExperimentConfig) -> list[str]:
    """The kind of device ``record`` ran on (``environment.device``) when ``run``'s
    ``train.device = "auto"`` resolves to another here now (another device named in the
    configuration is a difference of the configuration, said as such)."""
    environment = record.get("environment")
    recorded = environment.get("device") if isinstance(environment, dict) else None
    if recorded is None or run.train.device != "auto":
        return []
    now = resolved_device_type("auto")
    if recorded == now:
        return []
    return [f"the device: train.device 'auto' ran on {recorded!r} (recorded), resolves to "
            f"{now!r} here now; CPU and GPU runs round differently"]


def _base_differences(out_dir: Path, base: dict, every_kind: bool = False) -> list[str]:
    """The fields of the sections of ``base`` (name -> configuration) that differ from those of
    the folder's ``config.toml`` (written by the sweep that made its runs); [] where there is
    none to read. An experiment's option tables of other model kinds than its own count only
    with ``every_kind`` (compared as the base fingerprint reads them: a benchmark's covers
    every kind's, ``reproduce``'s its base's kind's)."""
    try:
        written = tomllib.loads((Path(out_dir) / "config.toml").read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    differences = []
    for section, current in sorted(base.items()):
        recorded = written.get(section)
        if not isinstance(recorded, dict):
            continue
        if isinstance(current, ExperimentConfig):
            recorded, current = _as_run(recorded), to_dict(current)
            if not every_kind:
                recorded, current = _own_kind(recorded), _own_kind(current)
        else:
            try:
                recorded = to_dict(from_dict(type(current), recorded))
            except (ConfigError, TypeError, ValueError):  # fields since renamed: as stored
                pass
            current = to_dict(current)
        differences += field_differences(recorded, current, f"{section}.")
    return differences


def _own_kind(config: dict) -> dict:
    """``config`` without the option tables of other model kinds (as the fingerprint reads it)."""
    model = config.get("model", {})
    return {**config, "model": {name: value for name, value in model.items()
                                if name not in KIND_OPTIONS or name == model.get("kind")}}


def _as_run(recorded: dict) -> dict:
    try:
        return to_dict(from_dict(ExperimentConfig, with_legacy_fields(recorded)))
    except (ConfigError, TypeError, ValueError):  # fields since renamed: compare as stored
        return recorded


def field_differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """Every leaf field where two nested configurations differ, as ``prefix.a.b: x recorded,
    y now`` lines (sorted by name)."""
    out = []
    for name in sorted(set(recorded) | set(current)):
        a, b = recorded.get(name), current.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += field_differences(a, b, f"{prefix}{name}.")
        elif a != b:
            out.append(f"{prefix}{name}: {a!r} recorded, {b!r} now")
    return out


def _keys(keys: list[str], shown: int = 5) -> str:
    return ", ".join(keys[:shown]) + (f", ... ({len(keys)} runs)" if len(keys) > shown else "")


def _changed_message(out_dir: Path, changed: dict[str, list[str]]) -> str:
    groups: dict[tuple[str, ...], list[str]] = {}  # one base change: one line, not one per run
    for key, diffs in sorted(changed.items()):
        groups.setdefault(tuple(diffs), []).append(key)
    shown = "; ".join(f"{_keys(keys)} ({', '.join(diffs[:3])}{', ...' if len(diffs) > 3 else ''})"
                      for diffs, keys in groups.items())
    return (f"{out_dir} holds {len(changed)} finished run(s) made with another configuration "
            f"(or data) than the one now given for the same key: {shown}")


def runs_without_checkpoints(out_dir: Path, checkpoint_keys) -> list[str]:
    """The finished, successful runs of ``out_dir`` among ``checkpoint_keys`` that have no
    ``checkpoints/<key>.pt``: runs made while their seed was not in the ``checkpoint_seeds``
    of the folder's ``config.toml`` (the runs a grown ``checkpoint_seeds`` would describe as
    saved without their file), and runs of a listed seed whose file has gone since (deleted or
    lost: the sweep wrote it before the run file).

    A folder whose ``config.toml`` has no ``checkpoint_seeds`` to compare with (none, or one
    written before the field) is not judged: its committed copies are kept without their
    checkpoints (``results/study``), and resuming one must still find its runs done. Nor are
    the runs of listed seeds in a folder without a ``checkpoints/`` folder at all, kept or
    copied without its checkpoints: the first resume of such a study folder rewrites its
    ``config.toml`` with today's ``checkpoint_seeds``, and the next must find its runs done
    too."""
    return sorted(_lacking_checkpoints(out_dir, checkpoint_keys))


def _lacking_checkpoints(out_dir: Path, checkpoint_keys) -> dict[str, bool]:
    """:func:`runs_without_checkpoints`, each key with whether its seed was in the recorded
    ``checkpoint_seeds`` (its checkpoint was saved, and is gone since)."""
    try:
        written = tomllib.loads((Path(out_dir) / "config.toml").read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    recorded = written.get("checkpoint_seeds")
    if not isinstance(recorded, list):
        return {}
    records = load_records(out_dir)
    folder = Path(out_dir) / "checkpoints"
    # every run of a checkpoint seed, not only those of seeds added since: a lost checkpoint
    # of a listed seed was never made again ("0 to go"); a folder without checkpoints/ was
    # kept without them (runs_without_checkpoints)
    lacking = {key: records[key].get("seed") in recorded for key in checkpoint_keys
               if records.get(key, {}).get("status") == "ok"
               and not (folder / f"{key}.pt").is_file()}
    return {key: saved for key, saved in lacking.items() if not saved or folder.is_dir()}


def check_checkpoints(out_dir: Path, checkpoint_keys, rerun_changed: bool) -> list[str]:
    """Before a sweep writes its ``config.toml``, which says that the runs of
    ``checkpoint_seeds`` have checkpoints: the finished runs that should have one and do not
    (:func:`runs_without_checkpoints`: made before their seed was in ``checkpoint_seeds``, or
    whose file has gone since) are refused, naming ``checkpoint_seeds`` and why each has none
    (the sweep counted them as done, and its ``config.toml`` described files that did not
    exist), unless ``rerun_changed``; returns them, for :func:`set_aside_lacking` to run them
    again."""
    lacking = _lacking_checkpoints(out_dir, checkpoint_keys)
    if lacking and not rerun_changed:
        grown = sorted(key for key, saved in lacking.items() if not saved)
        lost = sorted(key for key, saved in lacking.items() if saved)
        why = " and ".join(
            [f"({_keys(grown)}; made before their seed was in checkpoint_seeds)"] * bool(grown)
            + [f"({_keys(lost)}; saved with a checkpoint whose file, checkpoints/<key>.pt, has "
               f"gone since: deleted or lost)"] * bool(lost))
        raise ConfigError(f"invalid config: checkpoint_seeds: {out_dir} holds {len(lacking)} "
                          f"finished run(s) of those seeds without a checkpoint {why}; run "
                          f"again with --rerun-changed to set them aside and run them anew "
                          f"with their checkpoints, or leave their seeds out of "
                          f"checkpoint_seeds")
    return sorted(lacking)


def set_aside_lacking(out_dir: Path, lacking: list[str], echo: Callable[[str], None]) -> None:
    """Set the runs of :func:`check_checkpoints` aside (``superseded/<date-time>/``), so that
    the sweep runs them again and saves their checkpoints."""
    if lacking:
        aside = set_aside(out_dir, lacking, time.strftime("%Y%m%d-%H%M%S"))
        echo(f"{len(lacking)} finished run(s) without the checkpoint checkpoint_seeds asks for "
             f"({_keys(lacking)}): set aside in {aside}, to run again")


def reproduce(config: ReproduceConfig, out_dir: Path, *, jobs: int = 1,
              executor: Executor | None = None, data_dir=None, cache_dir=None,
              progress: bool = True, echo: Callable[[str], None] = print,
              rerun_changed: bool = False) -> Path:
    """Run every missing run of the protocol into ``out_dir`` (``runs/<key>.json`` and their
    aggregate ``results.jsonl``) with ``executor`` (default: local, ``jobs`` processes).

    The base configuration is written to ``out_dir/config.toml``; runs made with a different
    base configuration (or a changed data file) are refused, naming the fields, or with
    ``rerun_changed`` set aside and run again (:func:`check_before_writing`), and so are the
    finished runs of ``checkpoint_seeds`` without a checkpoint (:func:`check_checkpoints`).
    Returns the results path.
    """
    refuse_while_starting("reproduce")  # a script's call without a __main__ guard, in a worker
    out_dir = Path(os.path.realpath(out_dir))
    check_jobs(jobs, executor)
    check_claim(out_dir, "reproduce", legacy=SWEEP_FILES)  # before the lock writes into it
    # a refusal below leaves no folder holding only the claim (runfolder.claiming)
    with claiming(out_dir, "reproduce", legacy=SWEEP_FILES):
        base_print = fingerprint(config.base)
        runs = {run_key(run.model.kind, run.model.hidden, run.train.seed): run
                for run in grid(config)}
        checkpoints = {key for key, run in runs.items()
                       if run.train.seed in config.checkpoint_seeds}
        lacking = check_checkpoints(out_dir, checkpoints, rerun_changed)
        check_before_writing(runs, out_dir, jobs, executor, checkpoints,
                             rerun_changed=rerun_changed, echo=echo, base_fingerprint=base_print,
                             base={"base": config.base}, data_dir=data_dir,
                             cache_dir=cache_dir)
        set_aside_lacking(out_dir, lacking, echo)
        with _limits_named(out_dir):
            atomic_write(out_dir / "config.toml", to_toml(config).encode())
        return run_sweep("reproduce", runs, out_dir, base_fingerprint=base_print,
                         checkpoint_keys=checkpoints, jobs=jobs, executor=executor,
                         data_dir=data_dir,
                         cache_dir=cache_dir, progress=progress, echo=echo)
