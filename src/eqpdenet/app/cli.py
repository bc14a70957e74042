"""The ``eqpdenet`` command line: info, train, evaluate, export, reproduce, benchmark, study,
symbolic, report, equivariance, describe, figure.

Configuration comes from the defaults (the paper's setup, ``eqpdenet.app.config``), then an optional
TOML file (``--config``), then ``--quick``'s smoke profile where a command has one, then a layer
preset (``--layer``, which replaces the layer table: a warning names the file's layer fields it
drops), then ``--set section.field=value`` overrides, then the dedicated flags.
In a benchmark, what ``--set base.…``, ``--layer`` and ``--device`` name wins over the model
entries that set it too.
Data: ``--data-dir`` > ``EQPDENET_DATA`` > a per-user cache folder (see ``eqpdenet.data.mnist``).

Errors are one line on stderr naming the problem (exit status 2; 1 for an unexpected failure,
130 after Ctrl-C, SIGTERM or SIGHUP; 3 when ``report`` wrote the table of an incomplete sweep);
``EQPDENET_DEBUG=1`` shows the traceback instead (``0``, ``false``, ``no``, ``off`` or unset: not;
:func:`eqpdenet.process_state.env_flag`).

stdout carries the results, stderr the diagnostics (progress, warnings, errors). A reader of
either that is gone (``| head``, ``2>&1 | head``, a dead ``tee`` or log collector) ends nothing:
what would have been printed there is dropped, the work goes on and writes its files, and the
exit status is the work's (:func:`_standard_streams`). A standard stream closed when the command
starts (``2>&-``) is :data:`os.devnull`, so nothing meant for it lands on another.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import copy
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, EqPdeNetError, NonFiniteStateError
from ..files import write_cause
from ..models import MODELS
from ..process_state import env_flag, path_problem
from .config import (
    BenchmarkConfig,
    ExperimentConfig,
    ReproduceConfig,
    apply_overrides,
    assigned_fields,
    assigned_paths,
    entries_yield,
    from_dict,
    load_toml,
    load_toml_and_earlier,
    require_scored,
    to_dict,
    to_toml,
    warn_earlier_fields,
)
from .plugins import PLUGIN_HINT, import_plugins

__all__ = ["build_parser", "main"]


# ----------------------------------------------------------------------------- quick profile


def _kept_checkpoint_seeds(config) -> list[int]:
    """The configuration's ``checkpoint_seeds`` that are among the seeds a quick profile set
    (a configuration of seeds ``[1, 2]`` checkpointing ``[1]`` was refused under ``--quick``,
    naming seeds the user never wrote)."""
    return [seed for seed in config.checkpoint_seeds if seed in config.seeds]


def quick_profile(config: ReproduceConfig) -> ReproduceConfig:
    """The smoke profile: 2 sizes x 2 seeds x both models, 4,000 training digits for 5 epochs,
    evaluated on the first 5,000 test digits (a shape check of the protocol, not its numbers);
    all the images of a smaller data set (:func:`_quick_subsets_within_data`)."""
    config.hidden_sizes = [16, 64]
    config.seeds = [0, 1]
    config.checkpoint_seeds = _kept_checkpoint_seeds(config)
    config.base.data.train_subset = 4000
    config.base.data.test_subset = 5000
    config.base.train.epochs = 5
    return config


# ----------------------------------------------------------------------------- commands


def _info(args) -> int:
    import torch

    from ..models import FCNN, EqPdeNet, count_parameters
    from ..pde.invariants import RATIO_REGULARISATIONS, available_invariant_sets, get_invariant_set
    from ..pde.layer import LAYER_PRESETS
    from ..pde.stencils import available_stencils

    print(f"eqpdenet {__version__} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"stencils: {', '.join(available_stencils())}")
    print(f"ratio regularisations: {', '.join(RATIO_REGULARISATIONS.names())}")
    for name in LAYER_PRESETS.names():
        preset = LAYER_PRESETS.get(name)()
        print(f"layer preset {name}: {', '.join(map(str, preset.invariants))} "
              f"({preset.ratio_regularisation} ratios)")
    for name in available_invariant_sets():
        print(get_invariant_set(name))
    print("parameters (paper layer):  h  EqPdeNet  FCNN")
    for hidden in (16, 32, 64, 128, 256):
        print(f"{hidden:>29} {count_parameters(EqPdeNet(hidden)):>9} "
              f"{count_parameters(FCNN(hidden)):>6}")
    return 0


def _with_layer(args, path: str) -> list[str]:
    """The ``--set`` assignments, preceded by ``--layer``'s preset (so ``--set`` refines it)."""
    preset = [f"{path}.preset={args.layer}"] if getattr(args, "layer", None) else []
    return preset + list(args.set or [])


def _config_file(cls, args, layer: str, base=None):
    """``--config``'s file as ``cls`` (its missing fields from ``base``, else the defaults).
    With ``--layer``, which replaces the whole layer table at ``layer`` (a dotted path) by the
    preset's (:func:`_with_layer`), a warning names the fields the file's layer table writes
    that the preset drops: those it gives another value than the preset does, where the preset
    does not set them itself (its own fields, which differ from the configuration's default
    layer, the paper's: ``se2_sim2``'s invariants and ratios, are what ``--layer`` is for). A
    partial file's ``T = 2.0`` was dropped unsaid (an outside probe, round 17); starting the
    file's table from the preset instead left a full file's invariants in place (a review)."""
    # its warning of fields read with their earlier behaviour waits for the command line's
    # options (_warn_earlier_fields): --set jet_floor=0.1 was told to write jet_floor = 0.1
    config, args.earlier_fields = load_toml_and_earlier(cls, args.config, base=base)
    name = getattr(args, "layer", None)
    if not name:
        return config
    from ..pde.layer import LayerConfig

    try:
        preset = LayerConfig.preset(name)
    except ConfigError:
        return config  # the unknown preset is refused where --layer is applied, naming it
    written, given, default = _toml_table(args.config), config, cls()
    for key in layer.split("."):
        written = written.get(key, {}) if isinstance(written, dict) else {}
        given, default = getattr(given, key), getattr(default, key)
    dropped = [f"{field} = {getattr(given, field)!r}" for field in written
               if field != "preset" and hasattr(preset, field)
               and getattr(given, field) != getattr(preset, field)
               and getattr(preset, field) == getattr(default, field)]
    if dropped:
        warnings.warn(f"--layer {name} replaces the layer table of {args.config}, whose "
                      f"{', '.join(dropped)} the preset does not keep (set them again after it: "
                      f"--set {layer}.FIELD=VALUE)", UserWarning, stacklevel=2)
    return config


def _toml_table(path) -> dict:
    """The tables of the TOML file ``path`` as written (:func:`load_toml` has read it: valid)."""
    import tomllib

    with open(path, "rb") as handle:
        return tomllib.load(handle)


def _sweep_config(args, cls, quick):
    """A sweep's configuration (``reproduce``, ``benchmark``): the defaults or ``--config``
    (:func:`_config_file`), then ``--quick`` (the ``quick`` profile), then
    ``--layer`` and ``--set`` on its base experiment (what a user names explicitly wins over the
    profile), then ``--device``; validated whole. What the command line sets on the base wins
    over a benchmark's model entries too (:func:`_command_line_over_entries`)."""
    config = _config_file(cls, args, "base.model.layer") if args.config else cls()
    if args.quick:
        config = quick(config)
    assignments = _with_layer(args, "base.model.layer")
    config = apply_overrides(config, assignments)
    if args.quick:
        _quick_subsets_within_data(config, assignments, getattr(args, "data_dir", None),
                                   getattr(args, "cache_dir", None))
    if args.device:
        config.base.train.device = args.device
    if isinstance(config, BenchmarkConfig):
        _command_line_over_entries(config, args)
    config = from_dict(cls, to_dict(config))
    _warn_earlier_fields(args, config, assignments)
    return config


def _warn_earlier_fields(args, config, assignments: list[str]) -> None:
    """``--config``'s warning of the fields it read with their behaviour from before they
    existed (:func:`~eqpdenet.app.config.warn_earlier_fields`), judged on ``config``, what runs
    after the command line's options; none for a field that ``assignments`` (the command line's
    ``--layer`` and ``--set``, and flags as assignments) names, whatever its value."""
    earlier = getattr(args, "earlier_fields", None)
    if earlier:
        warn_earlier_fields(args.config, earlier, config, assigned_paths(assignments))


def _command_line_over_entries(config: BenchmarkConfig, args) -> None:
    """The fields that ``--set base.…``, ``--layer`` and ``--device`` name win over the model
    entries that set them too (:func:`~eqpdenet.app.config.entries_yield`, as ``--quick``'s
    epochs do: :func:`quick_benchmark`): applied to the base only, they were overridden by
    every entry setting the field (``--set base.train.epochs=1`` trained the CNN's 6 epochs),
    without a word. The saved ``config.toml`` holds the entries as they run, so it reruns the
    same runs; a warning names the entries whose value gave way among those that run now (all
    of them, or those ``--models`` names: an entry left out trains nothing now, and naming it
    was noise)."""
    named = {}  # field -> the option that names it (the last one, as applied last)
    if getattr(args, "layer", None):
        named["model.layer.preset"] = "--layer"
    for assignment in args.set or []:
        for leaf in assigned_fields(assignment):
            if leaf.startswith("base."):
                named[leaf.removeprefix("base.")] = f"--set {leaf}"
    if args.device:
        named["train.device"] = "--device"
    running = set(getattr(args, "models", None) or config.models)
    shown = copy.copy(config)  # shallow: entries_yield replaces its models, not config's
    shown.models = {name: entry for name, entry in config.models.items() if name in running}
    entries_yield(config, list(named))  # every entry, as config.toml records them
    for path, entries in entries_yield(shown, list(named)).items():
        warnings.warn(f"{named.get(path, f'--set base.{path}')} replaces the {path} that the "
                      f"benchmark's model entries {', '.join(entries)} set (the command line "
                      f"wins over the entries; config.toml records the entries as they run)",
                      UserWarning, stacklevel=2)


def _quick_subsets_within_data(config, assignments: list[str], data_dir=None,
                               cache_dir=None) -> None:
    """``--quick``'s training and test subsets are upper bounds: on a data set with fewer images
    (a small file of the user's), the profile uses them all (``0``), rather than fail on a
    setting the user never made. A subset set with ``--set`` is the user's and stays, checked
    by the preflight like any other. The data set's size is read from its headers
    (:func:`~eqpdenet.data.datasets.dataset_shape`; what loading would refuse is refused
    there, in loading's words)."""
    from ..data.datasets import dataset_shape

    data = config.base.data
    shape = dataset_shape(data.dataset, data_dir, cache_dir)
    given = {field for assignment in assignments for field in assigned_fields(assignment)}
    if "base.data.train_subset" not in given and data.train_subset > shape.train - data.validation:
        data.train_subset = 0
    if "base.data.test_subset" not in given and data.test_subset > shape.test:
        data.test_subset = 0


def _run_name(config: ExperimentConfig) -> str:
    """The model kind, with ``h=`` where the kind's constructor takes ``hidden`` (the others
    ignore ``model.hidden``, so printing it would misdescribe the run)."""
    import inspect

    kind = config.model.kind
    if "hidden" in inspect.signature(MODELS.get(kind)).parameters:
        return f"{kind} h={config.model.hidden}"
    return kind


def _experiment_config(args) -> ExperimentConfig:
    config = (_config_file(ExperimentConfig, args, "model.layer") if args.config
              else ExperimentConfig())
    config = apply_overrides(config, _with_layer(args, "model.layer"))
    # "is not None": --epochs 0 and --hidden 0 must reach validation, not fall back to defaults
    if getattr(args, "model", None) is not None:
        config.model.kind = args.model
    if getattr(args, "hidden", None) is not None:
        config.model.hidden = args.hidden
    if getattr(args, "seed", None) is not None:
        config.train.seed = args.seed
    if getattr(args, "epochs", None) is not None:
        config.train.epochs = args.epochs
    if getattr(args, "device", None) is not None:
        config.train.device = args.device
    if getattr(args, "dataset", None) is not None:
        config.data.dataset = args.dataset
    if getattr(args, "rotated", False):
        config.data.rotated = True
    config = from_dict(ExperimentConfig, to_dict(config))  # re-validate
    require_scored(config)
    # --dataset names data.dataset as --set does (its default is its earlier value too)
    _warn_earlier_fields(args, config, _with_layer(args, "model.layer") + (
        [f"data.dataset={args.dataset}"] if getattr(args, "dataset", None) is not None else []))
    return config


def _train(args) -> int:
    from .files import atomic_write
    from .locks import hold
    from .preflight import preflight
    from .runfolder import RUN_FILES, check_replaceable, output_path, staged
    from .training import prepare_data, run_experiment

    if args.distributed:
        return _train_distributed(args)
    config = _experiment_config(args)
    out = output_path(args.out)
    check_replaceable(out, RUN_FILES)  # before the lock writes into it
    with hold(out, "train"):  # one writer; the folder is creatable and writable
        check_replaceable(out, RUN_FILES)
        preflight([config], out, at_data=True, data_dir=args.data_dir, cache_dir=args.cache_dir)
        data = prepare_data(config.data, args.data_dir, args.cache_dir)
        with staged(out) as stage:  # the run replaces the folder as a unit
            record = run_experiment(config, data, progress=not args.no_progress,
                                    checkpoint=stage / "model.pt")
            atomic_write(stage / "config.toml", _run_config_text(config, record))
            atomic_write(stage / "result.json",
                         (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    if record["status"] != "ok":
        print(f"eqpdenet: training failed: {record['error']}", file=sys.stderr)
        return 1
    print(f"{_run_name(config)} seed={config.train.seed}: {_scores(record)} "
          f"({record['train_seconds']:.0f} s) -> {out / 'model.pt'}")
    _say_non_finite(record, data)
    return 0


def _say_non_finite(record: dict, data) -> None:
    """One warning per scenario whose accuracy counts test images on which the model's PDE blew
    up as errors (the record's ``non_finite_images``; ``data``: the data trained and scored on):
    ``train`` printed the accuracies alone, and they read as misclassifications."""
    from .training import non_finite_notice

    for scenario, failed in record.get("non_finite_images", {}).items():
        print(f"eqpdenet: warning: {non_finite_notice(scenario, failed, len(data['test']))}",
              file=sys.stderr)


def _run_config_text(config, record: dict) -> bytes:
    """The ``config.toml`` of a ``train`` folder: the configuration as given (what the same
    command reruns from), after a comment naming the values training took from the data instead
    (``model.image_size``, ``in_channels``, ``classes``, the standardisation's ``input_mean`` and
    ``input_std``; :func:`~eqpdenet.app.training.resolve_for_data`), which ``model.pt`` and
    ``result.json`` record: read alone, the file showed MNIST's 28x28, 1 channel and 10 classes
    for a model trained on other data."""
    used = record.get("config", {}).get("model", {})
    given = to_dict(config)["model"]
    taken = [f"model.{name} = {used[name]!r}" for name in
             ("image_size", "in_channels", "classes", "input_mean", "input_std")
             if name in used and used[name] != given.get(name)]
    header = ""
    if taken:
        header = ("# The configuration as given. Training took from the data (as model.pt and "
                  "result.json record):\n" + "".join(f"#   {line}\n" for line in taken) + "\n")
    return (header + to_toml(config)).encode()


def _scores(record: dict) -> str:
    """The accuracies of a run's record, each scenario's and the validation accuracy."""
    scores = [f"{k} {v:.2f}%" for k, v in record["accuracy"].items()]
    if "validation_accuracy" in record:
        scores.append(f"validation {record['validation_accuracy']:.2f}%")
    return "  ".join(scores)


#: What torchrun sets in each process it starts.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _train_distributed(args) -> int:
    """``torchrun --nproc-per-node N -m eqpdenet train --distributed ...``: one model trained by N
    processes (DistributedDataParallel: gloo on CPUs, NCCL on GPUs, one GPU per process). Rank 0
    checks the folder, writes the checkpoint and the results; the other ranks write nothing.

    Every rank must run the same command on the same data. Before anything is written or read,
    the ranks compare their configurations (and the fingerprints of their data files); once the
    data are loaded, the data (the splits' sizes and labels). A difference stops every rank with
    one line naming it (:func:`_same_on_every_rank`), rather than training a model that no
    rank's configuration describes, or waiting for ever in a collective that a rank with other
    batches never joins. Each rank exits when its launcher is gone
    (:func:`~eqpdenet.app.workers.die_with_parent`), and rank 0 then commits nothing."""
    import torch
    import torch.distributed as dist

    from .files import atomic_write
    from .locks import hold
    from .preflight import preflight
    from .ranks import collective_failure, current_rank_waits, lost_rank_text
    from .runfolder import RUN_FILES, check_replaceable, output_path, staged
    from .training import (
        data_parallel_group,
        prepare_data,
        resolve_device,
        run_experiment,
        torchrun_environment,
        train_model,
    )
    from .workers import die_with_parent

    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError(f"--distributed runs under torchrun ({', '.join(missing)} not set): "
                          f"torchrun --nproc-per-node N -m eqpdenet train --distributed ...")
    environment = torchrun_environment()  # each variable in range, named where it is not
    # An orphaned rank would train on for the whole run, and rank 0 would then write its result.
    launcher = die_with_parent()
    config = _experiment_config(args)
    device = resolve_device(config.train.device)
    rank, local_rank = environment.rank, environment.local_rank
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    out = output_path(args.out)
    # All the ranks on this machine load the whole data set: on CPUs they share its memory (on
    # GPUs each has its own device; their host memory is left to the check of one rank).
    ranks_here = _local_ranks() if device.type == "cpu" else 1
    finished = False  # this rank's part done (rank 0: the result written)
    try:
        with data_parallel_group("nccl" if device.type == "cuda" else "gloo"):
            waits = current_rank_waits()
            _same_on_every_rank("configuration", _rank_configuration(config))
            with contextlib.ExitStack() as stack:
                data = None
                if rank == 0:  # the checks and the data (ROTMNIST's cache) first, in rank 0 alone
                    try:
                        stack.enter_context(hold(out, "train"))
                        check_replaceable(out, RUN_FILES)
                        _preflight_ranks(preflight, config, out, ranks_here, args)
                        data = prepare_data(config.data, args.data_dir, args.cache_dir)
                    except Exception as error:
                        waits.done("checked", f"{type(error).__name__}: {error}")
                        raise
                    waits.done("checked")
                else:  # for as long as rank 0 takes (a generated ROTMNIST), no deadline
                    waits.wait_for("checked")
                    try:
                        data = prepare_data(config.data, args.data_dir, args.cache_dir)
                    except Exception as error:  # told to the others below, then raised
                        data = error
                _same_on_every_rank("data", data if isinstance(data, Exception)
                                    else _data_summary(data))
                if rank != 0:
                    try:
                        train_model(config, data, progress=False)
                    except (NonFiniteStateError, FloatingPointError):
                        pass  # rank 0 (the same loss, the same parameters) records the divergence
                    finished = True
                    return 0  # leaving the group waits for rank 0's files, without a deadline
                stage = stack.enter_context(staged(out))  # the run replaces the folder as a unit
                record = run_experiment(config, data, progress=not args.no_progress,
                                        checkpoint=stage / "model.pt")
                record["processes"] = dist.get_world_size()
                atomic_write(stage / "config.toml", _run_config_text(config, record))
                atomic_write(stage / "result.json",
                             (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
                # Where a watchdog, not the kernel, ends an orphan (not Linux), the launcher may
                # have died since it last looked: end as an interrupt does (the staging folder
                # removed, the folder untouched) rather than commit a run that nobody awaits.
                if os.getppid() != launcher:
                    raise KeyboardInterrupt
            finished = True
    except Exception as error:
        if not collective_failure(error):
            raise
        # gloo's own text ("Connection reset by peer ... GLHF!") read as a bug of eqpdenet
        after = ("after this rank's part was done (rank 0 writes the result: see its line)"
                 if rank != 0 else f"after the result was written to {out}")
        raise ConfigError(f"rank {rank}: another rank of --distributed stopped or was lost "
                          f"({lost_rank_text(error)}); "
                          + (after if finished else "no result was written")) from None
    if record["status"] != "ok":
        print(f"eqpdenet: training failed: {record['error']}", file=sys.stderr)
        return 1
    print(f"{_run_name(config)} seed={config.train.seed}: {_scores(record)} "
          f"({record['train_seconds']:.0f} s, {record['processes']} processes) -> "
          f"{out / 'model.pt'}")
    _say_non_finite(record, data)
    return 0


def _local_ranks() -> int:
    """The ranks of the job on this machine: torchrun's ``LOCAL_WORLD_SIZE``, else 1 (ranks
    started by hand, each counted where it runs)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if not value:
        return 1
    try:
        ranks = int(value)
    except ValueError:
        ranks = 0
    if ranks < 1:
        raise ConfigError(f"LOCAL_WORLD_SIZE={value!r}: expected a positive integer, the ranks of "
                          f"the job on this machine (torchrun sets it)")
    return ranks


def _preflight_ranks(preflight, config: ExperimentConfig, out: Path, ranks: int, args) -> None:
    """The preflight of ``train --distributed`` in rank 0: for ``ranks`` processes on this
    machine, each loading the whole data set and holding PyTorch (the memory of ``--jobs
    ranks`` workers; each trains on its share of a batch, so the step is counted high), one
    checkpoint written; a refusal names the ranks and torchrun's remedy."""
    preflight([config] * ranks, out, jobs=ranks, checkpoints=1, at_data=True,
              data_dir=args.data_dir, cache_dir=args.cache_dir, processes="ranks")


def _rank_configuration(config: ExperimentConfig) -> dict:
    """What every rank of ``train --distributed`` must share before it reads any data: the
    configuration (every field), eqpdenet's version, and the fingerprint of the data file
    (:func:`~eqpdenet.data.datasets.dataset_fingerprint`, the one records carry; None for a
    registered data set), read, not loaded."""
    from ..data.datasets import dataset_fingerprint

    fields = _flat(to_dict(config))
    fields["eqpdenet version"] = __version__
    fields["fingerprint of the data file"] = dataset_fingerprint(config.data.dataset)
    return fields


def _data_summary(data) -> dict:
    """What every rank's data must share: the splits' sizes, the image shape and classes, a hash
    of each split's labels (cheap, and exact on any CPU, unlike the images of a generated
    rotation), and where the data came from unless a file's fingerprint (compared before) says
    it (a path may differ between machines: a registered set's source, e.g. ROTMNIST official or
    generated, may not)."""
    import hashlib

    summary = {}
    for name in ("train", "validation", "test"):
        split = data[name]
        summary[f"{name} images"] = len(split.labels)
        labels = split.labels.detach().cpu().contiguous().numpy().tobytes()
        summary[f"{name} labels (SHA-256)"] = hashlib.sha256(labels).hexdigest()[:12]
    summary["image shape"] = list(data.image_shape)
    summary["classes"] = data.classes
    info = getattr(data, "info", None) or {}
    if "fingerprint" not in info:
        summary["source"] = info.get("source")
    return summary


def _flat(tree: dict, prefix: str = "") -> dict:
    """A nested dict as ``{"train.seed": 0, ...}``."""
    flat = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _same_on_every_rank(what: str, mine) -> None:
    """Every rank of the process group sends ``mine`` (a dict of fields, or the exception that
    stopped this rank) to every other: a rank's exception stops them all (its own raised again,
    named by the others), and fields that differ between ranks are a :class:`ConfigError` on
    every rank, naming them with each rank's value, so that all ranks stop together."""
    import torch.distributed as dist

    failed = isinstance(mine, BaseException)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, f"{type(mine).__name__}: {mine}" if failed else mine)
    if failed:
        raise mine
    for rank, theirs in enumerate(gathered):
        if isinstance(theirs, str):
            raise ConfigError(f"rank {rank} stopped: {theirs}")
    differences = []
    for field in sorted(set().union(*gathered)):
        values: dict[str, list[int]] = {}  # a value (as shown) -> the ranks that have it
        for rank, theirs in enumerate(gathered):
            values.setdefault(repr(theirs.get(field)), []).append(rank)
        if len(values) > 1:
            differences.append(f"{field}: " + ", ".join(
                f"{value} on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
                for value, ranks in values.items()))
    if differences:
        shown = "; ".join(differences[:5]) + (f"; ... ({len(differences)} fields in all)"
                                               if len(differences) > 5 else "")
        raise ConfigError(f"the ranks of --distributed disagree on the {what}: {shown}; every "
                          f"rank must run the same command on the same data")


def _evaluate(args) -> int:
    import numpy as np

    from ..data.scenarios import SCENARIOS
    from .files import check_output_file
    from .runfolder import check_output_keeps, writing_beside_runs
    from .training import (
        check_evaluated_classes,
        evaluate_scenarios,
        load_checkpoint,
        non_finite_notice,
    )

    model, config, payload = load_checkpoint(args.checkpoint, device=args.device or "cpu")
    scenarios = list(dict.fromkeys(args.scenarios or config.scenarios))  # each once, in order
    if not scenarios:  # (a run of a study: validation only) said, not an empty output
        raise ConfigError(f"{args.checkpoint} was trained with no scenarios to evaluate "
                          f"(scenarios = []); name them: --scenarios test iso sca")
    for name in scenarios:  # before loading data
        SCENARIOS.check(name, "--scenarios")
    if args.json:
        check_output_keeps(Path(args.json), "--json", [args.checkpoint])
        check_output_file(Path(args.json), "--json")
    data = _checkpoint_data(args.checkpoint, config, args.data_dir, args.cache_dir, "evaluate")
    _check_evaluation_data(args.checkpoint, config, payload, data)
    check_evaluated_classes(model, config, data["test"].images)  # before scoring them all
    non_finite = [{} for _ in range(args.instances)]
    per_instance = [evaluate_scenarios(model, data["test"], scenarios, seed=seed,
                                       non_finite=non_finite[seed])
                    for seed in range(args.instances)]
    summary = {}
    for name in scenarios:
        values = np.array([r[name] for r in per_instance])
        # one instance has no spread: null in the JSON and none printed (not a spread of 0)
        std = float(values.std(ddof=1)) if len(values) > 1 else None
        summary[name] = {"mean": float(values.mean()), "std": std, "values": values.tolist()}
        spread = f"± {std:.2f} over {len(values)} instances" if std is not None else \
            "on 1 instance (no spread: --instances 2 or more gives one)"
        print(f"{name:>8}: {values.mean():6.2f}% {spread}")
        failed = [counts.get(name, 0) for counts in non_finite]
        if any(failed):  # scored as errors (analysis.predictions), and said
            summary[name]["non_finite_images"] = failed
            print(f"eqpdenet: warning: {non_finite_notice(name, failed, len(data['test']))}",
                  file=sys.stderr)
    if args.json:
        from .files import atomic_write

        with writing_beside_runs(Path(args.json), "--json"):  # no run replaces its folder now
            atomic_write(Path(args.json), (json.dumps(summary, indent=1) + "\n").encode())
    return 0


def _checkpoint_data(checkpoint, config: ExperimentConfig, data_dir, cache_dir, command: str):
    """The data set a checkpoint's configuration names, loaded for ``command`` (``evaluate``,
    ``export``, ``describe``). A data file or folder that is no longer at the path recorded when
    the model was trained is a :class:`ConfigError` saying that the path came from the
    checkpoint and how to make it found (these commands take no other data set: it must be the
    one the model was trained on)."""
    from ..data.datasets import DATASETS, check_dataset_name
    from .training import prepare_data

    spec = config.data.dataset
    path = Path(spec).expanduser()
    if spec not in DATASETS and not path.exists():
        try:
            check_dataset_name(spec)
        except ConfigError:  # a path: the file or folder is gone
            pass
        else:  # a plain name: far likelier a set a plugin registers than a file named so
            raise ConfigError(
                f"{checkpoint} was trained on the data set {spec!r}, which is not registered in "
                f"this process (registered: {', '.join(DATASETS.names())}) nor a file or folder "
                f"in the current folder ({Path.cwd()}): if a plugin registers it, name its "
                f"module in EQPDENET_PLUGINS; if it was a file or folder there, put it back: "
                f"{command} reads the data set the checkpoint names and has no option to choose "
                f"another")
        relative = (f"; a relative path, read from the current folder ({Path.cwd()}): run "
                    f"{command} from the folder training ran in" if not path.is_absolute() else "")
        raise ConfigError(f"{checkpoint} was trained on the data set {spec!r} (the path its "
                          f"configuration recorded), which is no longer there (moved or "
                          f"deleted?){relative}; put the data back at that path, or a link to "
                          f"its new place there (ln -s NEW {spec}): {command} reads the data set "
                          f"the checkpoint names and has no option to choose another")
    return prepare_data(config.data, data_dir, cache_dir)


def _check_evaluation_data(checkpoint, config: ExperimentConfig, payload: dict, data,
                           use: str = "the scores are on the data as it is now") -> None:
    """The data set ``evaluate`` scores a checkpoint on, or ``export`` verifies it on (the one
    its configuration names, read now) must be one its model takes: another number of classes
    or image shape (a data file regenerated under the same name) is a
    :class:`~eqpdenet.errors.DataFileError`, since its labels would be scored against classes
    the model never learned (and its images would not fit the model). The right shape with
    another fingerprint than the checkpoint recorded (the file's content changed) is a warning
    (``use``: what the command then does with the data). Checkpoints saved before fingerprints,
    and registered data sets, have none to compare. A registered data set whose recorded loader
    (``dataset.loader``) is not the one registered under its name now (a plugin imported or
    removed since: another data set under one name) is a warning too; checkpoints saved before
    loaders were recorded have none."""
    from ..errors import DataFileError

    model = config.model
    trained = (model.classes, (model.in_channels, model.image_size, model.image_size))
    now = (data.classes, tuple(data.image_shape))
    if now != trained:
        shape = lambda s: "x".join(map(str, s))  # noqa: E731
        raise DataFileError(config.data.dataset, f"{now[0]} classes of {shape(now[1])} images, "
                            f"but the model of {checkpoint} was trained on {trained[0]} classes of "
                            f"{shape(trained[1])} images (channels x height x width): not the data "
                            f"set it was trained on (the file was replaced since?)")
    dataset = payload.get("dataset")
    recorded = dataset.get("fingerprint") if isinstance(dataset, dict) else None
    current = data.info.get("fingerprint")
    if recorded is not None and current is not None and recorded != current:
        warnings.warn(f"{config.data.dataset} is not the file {checkpoint} was trained on "
                      f"(fingerprint {current}, recorded {recorded}): its content changed since; "
                      f"{use}", RuntimeWarning, stacklevel=2)
    loader = dataset.get("loader") if isinstance(dataset, dict) else None
    current = data.info.get("loader")
    if isinstance(loader, str) and current is not None and loader != current:
        from ..data.datasets import loader_words

        warnings.warn(f"data set {config.data.dataset!r} is not the one {checkpoint} was trained "
                      f"on: loaded by {loader_words(current)} now, by {loader_words(loader)} when "
                      f"it was trained (a plugin registered or removed since); {use}",
                      RuntimeWarning, stacklevel=2)


def _export(args) -> int:
    from ..export import check_export, export_model
    from .runfolder import check_output_keeps, writing_beside_runs
    from .training import load_checkpoint

    check_output_keeps(Path(args.out), "--out", [args.checkpoint])
    check_export(args.format, args.out)  # format, optional dependencies, output: before any work
    model, config, payload = load_checkpoint(args.checkpoint)
    data = _checkpoint_data(args.checkpoint, config, args.data_dir, args.cache_dir, "export")
    # data of another shape than the model's (a file replaced since): said as evaluate says it,
    # not as a failure of the export on images the model cannot take
    _check_evaluation_data(args.checkpoint, config, payload, data,
                           use="the export is verified on the data as it is now")
    images = data.test.images[:args.images]
    report = export_model(model, args.out, args.format, images=images, tolerance=args.tolerance,
                          log=lambda line: print(f"eqpdenet: {line}", file=sys.stderr),
                          guard=lambda: writing_beside_runs(Path(args.out), "--out"))
    print(report.summary())
    return 0


def _executor(args):
    """The executor of ``--executor``/``--address``/``--cpus-per-run``; Ray's absence and a
    cluster address where no head answers are found here, before any work."""
    from .distributed import Executor, check_address, import_ray
    from .sweeps import check_jobs

    # An option of the other executor would be ignored without a word: refused, as --address is.
    # (--cpus-per-run defaults to None so that a typed value is told from the default.)
    if args.cpus_per_run is not None and args.executor != "ray":
        raise ConfigError(f"--cpus-per-run {args.cpus_per_run} is for --executor ray (the local "
                          f"executor gives each of --jobs processes an equal share of this "
                          f"machine's CPUs)")
    executor = Executor(args.executor, args.address,
                        1 if args.cpus_per_run is None else args.cpus_per_run)
    check_jobs(args.jobs, executor)  # --jobs > 1 with --executor ray
    if executor.kind == "ray":
        import_ray()
        check_address(executor.address)  # a head that is not there: refused in seconds
    return executor


#: The output folders of the sweeps without --out: command -> (default, with --quick (study:
#: with --stages other than main; ``{stage}`` is its name)).
DEFAULT_OUT = {"reproduce": ("results/paper", "runs/quick"),
               "benchmark": ("results/benchmark", "runs/benchmark-quick"),
               "study": ("runs/study", "runs/study-{stage}")}


def _default_out(command: str, quick: bool, stage: str = "") -> str:
    return DEFAULT_OUT[command][int(bool(quick))].format(stage=stage)


def _needs_plots(use: str) -> None:
    """Before any work of a command that will draw (training, a study, a table written without
    its plot): matplotlib can be imported, else a one-line
    :class:`~eqpdenet.errors.MissingDependencyError` naming ``use`` and the install line of the
    ``experiments`` extra (exit status 2), rather than a failure after the work."""
    from .files import import_pyplot

    import_pyplot(use)


def _runs_saved(out: Path):
    """The report written after a sweep's runs: a write refused for want of room says, after
    its cause, that every run is saved and how to get the report once there is room
    (:func:`eqpdenet.app.sweeps.report_hint`), as a stop during the runs says that the finished
    ones are."""
    from .sweeps import _limits_named, report_hint

    return _limits_named(out, resumable=True, hint=report_hint(out))


def _reproduce(args) -> int:
    from .report import write_report
    from .runfolder import check_claim, claiming, output_path
    from .sweeps import SWEEP_FILES, reproduce

    _needs_plots("eqpdenet reproduce (its plot, accuracy_vs_params.png)")
    config = _sweep_config(args, ReproduceConfig, quick_profile)
    require_scored(config.base, "base.")
    executor = _executor(args)
    out = output_path(args.out or _default_out("reproduce", args.quick))
    check_claim(out, "reproduce", SWEEP_FILES)  # before the lock writes into it
    start = time.perf_counter()

    # the runs and the report: one writer throughout; a sweep refused (its preflight, its data)
    # leaves no folder it made, as if never run
    with claiming(out, "reproduce", SWEEP_FILES):
        reproduce(config, out, jobs=args.jobs, executor=executor, data_dir=args.data_dir,
                  cache_dir=args.cache_dir, progress=not args.no_progress,
                  rerun_changed=args.rerun_changed)
        with _runs_saved(out):
            table, plot = write_report(out)
    print(f"reproduce finished in {time.perf_counter() - start:.0f} s: {table}, {plot}")
    print(table.read_text(encoding="utf-8"))
    return 0


def quick_benchmark(config: BenchmarkConfig) -> BenchmarkConfig:
    """The smoke profile of the benchmark: one seed, 1,000 training digits for 1 epoch, 500 test
    digits (all the images of a smaller data set: :func:`_quick_subsets_within_data`), coarse
    curves (a check that every model runs end to end, not its numbers)."""
    config.seeds = [0]
    config.checkpoint_seeds = _kept_checkpoint_seeds(config)
    config.base.data.train_subset, config.base.data.test_subset = 1000, 500
    config.base.train.epochs = 1
    config.curves.images = 200
    config.curves.angles, config.curves.scales = [0.0, 45.0, 90.0], [0.75, 1.0]
    config.curves.shifts = [0.0, 2.0]
    # An entry's own epochs (of --config) give way to the profile's; appending train.epochs=1 to
    # every entry instead overrode --set base.train.epochs too (applied after the profile, it
    # must win), and config.toml recorded epochs no run trained. By the fields set, not the
    # key's text: "train={epochs=5, lr=0.01}" kept its 5 epochs (it becomes train.lr=0.01).
    from .config import without_field

    config.models = {name: without_field(overrides, "train.epochs")
                     for name, overrides in config.models.items()}
    return config


def _benchmark(args) -> int:
    from .benchmark import FINISH_ADVICE, benchmark, write_benchmark_report
    from .runfolder import check_claim, claiming, output_path
    from .sweeps import SWEEP_FILES

    _needs_plots("eqpdenet benchmark (its plot, robustness.png)")
    config = _sweep_config(args, BenchmarkConfig, quick_benchmark)
    executor = _executor(args)
    out = output_path(args.out or _default_out("benchmark", args.quick))
    check_claim(out, "benchmark", legacy=SWEEP_FILES)  # before the lock writes into it
    start = time.perf_counter()
    # the runs and the report: one writer throughout; a sweep refused leaves no folder it made
    with claiming(out, "benchmark", SWEEP_FILES):
        benchmark(config, out, models=args.models, jobs=args.jobs, executor=executor,
                  data_dir=args.data_dir, cache_dir=args.cache_dir,
                  progress=not args.no_progress, rerun_changed=args.rerun_changed)
        with _runs_saved(out):
            report = write_benchmark_report(out)
    table, plot = report
    print(f"benchmark finished in {time.perf_counter() - start:.0f} s: {table}, {plot}")
    print(table.read_text(encoding="utf-8"))
    if report.incomplete:  # --models ran a part of the configuration: say what is left
        print(f"eqpdenet: warning: {report.incomplete}; {FINISH_ADVICE}", file=sys.stderr)
    return 0


def _study(args) -> int:
    from .runfolder import output_path
    from .study import STAGE_SETS, run_study, study_base

    # The defaults or --config (e.g. the chosen.toml of a previous round), then --layer and
    # --set, then the dedicated flags (as every command: the flags came first, and --set
    # base.train.epochs=3 overrode --epochs 1). A partial file is completed from the study's
    # own base, as its --help says (it took reproduce's defaults: 5 sizes x 10 seeds of the
    # recipe the study chose, not the prototype it starts from); a whole file (chosen.toml)
    # gives the same configuration either way.
    base = (_config_file(ReproduceConfig, args, "base.model.layer", base=study_base())
            if args.config else study_base())
    assignments = _with_layer(args, "base.model.layer")
    base = apply_overrides(base, assignments)
    if args.hidden is not None:
        base.hidden_sizes = args.hidden
    if args.seeds is not None:
        base.seeds = args.seeds
    if args.epochs is not None:
        base.base.train.epochs = args.epochs
    if args.device:
        base.base.train.device = args.device
    base = from_dict(ReproduceConfig, to_dict(base))  # the flags' values validated
    _warn_earlier_fields(args, base, assignments)
    executor = _executor(args)
    # Not results/study by default: no default output is a committed result (the committed
    # studies are resumed with their recorded command, which names its --out).
    out = output_path(args.out or _default_out("study", args.stages != "main", args.stages))
    chosen = run_study(out, base=base, stages=STAGE_SETS[args.stages], jobs=args.jobs,
                       executor=executor, data_dir=args.data_dir, cache_dir=args.cache_dir,
                       progress=not args.no_progress, rerun_changed=args.rerun_changed)
    print(to_toml(chosen))
    print(f"study written to {out / 'study.md'}")
    return 0


def _symbolic(args) -> int:
    from .symbolic_table import print_table

    print_table(args.groups, args.channels, args.max_degree)
    return 0


def _refuse_study_folder(folder: Path) -> None:
    """``report`` of a study's ``--out``: a :class:`ConfigError` saying what to give instead.
    A study's report is its ``study.md``, which the study writes (its folder holds no
    ``results.jsonl``: each configuration's runs are a sweep of their own, under
    ``runs/<fingerprint>/``, which ``report`` tables like reproduce's). The folder of a study's
    summary set aside by ``--rerun-changed`` (``superseded/<date-time>/``: study.md, chosen.*,
    study.json) is said to be one, with its study's ``runs/``; a study stopped before its first
    stage ended has no ``study.md`` yet; a study's ``runs/`` holds one folder per configuration.
    Only folders and files that exist are named."""
    from .runfolder import folder_kind
    from .runstore import SUPERSEDED_DIR
    from .study import RECORD

    def is_study(path: Path) -> bool:
        return folder_kind(path) == "study" or (path / RECORD).is_file() or (
            (path / "study.md").is_file() and (path / "runs").is_dir())

    if not folder.is_dir() or (folder / "results.jsonl").exists():
        return
    aside = folder.parent.name == SUPERSEDED_DIR and is_study(folder.parent.parent)
    if folder.name == "runs" and is_study(folder.parent):
        study, runs = folder.parent, folder
    elif aside:
        study, runs = folder.parent.parent, folder.parent.parent / "runs"
    elif is_study(folder):
        study, runs = folder, folder / "runs"
    else:
        return
    chosen = None
    try:
        config = load_toml(ReproduceConfig, (folder if aside else study) / "chosen.toml")
        from .training import fingerprint

        chosen = runs / fingerprint(config.base)
    except (ConfigError, OSError, ValueError):
        pass
    # (a killed study's runs/ may hold folders whose first run never ended: not named)
    done = sorted(path for path in runs.glob("*/results.jsonl")) if runs.is_dir() else []
    shown = ", ".join(str(path.parent) for path in done[:3]) + (
        f", ... ({len(done)} in all)" if len(done) > 3 else "")
    if chosen is not None and chosen.is_dir():
        which = f"the chosen configuration's: eqpdenet report {chosen}"
    elif not done:
        which = f"none has finished a run yet (in {runs})"
    elif ((folder if aside else study) / "study.md").is_file():
        which = f"one of {runs}/<fingerprint>, the folders its study.md names ({shown})"
    else:
        which = f"one of {shown}"
    give = f"report tables one configuration's runs: give its folder, {which}"
    if aside:
        report = (f"its report is {folder / 'study.md'}" if (folder / "study.md").is_file()
                  else "it holds no report (study.md)")
        raise ConfigError(f"{folder} holds the summary of a study that --rerun-changed set aside "
                          f"({', '.join(sorted(p.name for p in folder.iterdir()))}), not its "
                          f"runs: {report}; its runs are in {runs}, among those of the study "
                          f"that replaced it; {give}")
    if folder == runs:
        raise ConfigError(f"{folder} holds the runs of a study, one folder per configuration "
                          f"(runs/<fingerprint>), and no results of its own; {give}")
    if (study / "study.md").is_file():
        report = (f"its report is {study / 'study.md'}, which the study writes (run the study's "
                  f"command again to rewrite it: the runs done are reused)")
    else:
        report = ("its report, study.md, is written when its first stage ends, and it has none "
                  "yet (run the study's command again to resume it: the runs done are reused)")
    raise ConfigError(f"{folder} is the folder of a study: {report}; {give}")


def _report(args) -> int:
    from .benchmark import (
        FINISH_ADVICE,
        benchmark_config_problem,
        is_benchmark_folder,
        write_benchmark_report,
    )
    from .report import has_results, write_report

    results = Path(args.results)
    if not results.exists():
        raise ConfigError(f"no results in {results}: there is no such folder (give the --out "
                          f"folder of reproduce or benchmark, or one configuration's folder of a "
                          f"study, its runs/<fingerprint>)")
    _refuse_study_folder(results)
    benchmark = results.is_dir() and is_benchmark_folder(results)
    if has_results(results):  # (else "no results" is what to say) the table is not written
        # without its plot: refused before anything is read or written
        _needs_plots(f"eqpdenet report (its plot, "
                     f"{'robustness.png' if benchmark else 'accuracy_vs_params.png'})")
    if benchmark:  # its own table, not the paper's
        # (under the folder's lock, from the run files: a sweep killed before its first
        # aggregate has no results.jsonl)
        report = write_benchmark_report(results)
    else:
        report = write_report(results)
    table, plot = report
    print(table.read_text(encoding="utf-8"))
    print(f"wrote {table} and {plot}")
    if report.incomplete:
        finish = (FINISH_ADVICE if benchmark else "rerun the sweep's command to finish it")
        print(f"eqpdenet: warning: {report.incomplete}; {finish}", file=sys.stderr)
        return INCOMPLETE
    if report.missing is None:  # why, in the folder's kind's words (the file exists and names
        # a model kind of a plugin this process has not imported: that, not "missing")
        problem = (benchmark_config_problem(results) if benchmark
                   else _reproduce_config_problem(results))
        print(f"eqpdenet: warning: {problem}: whether every run of the sweep is here cannot be "
              f"told", file=sys.stderr)
    return 0


def _reproduce_config_problem(folder: Path) -> str:
    """Why ``folder``'s ``config.toml`` does not tell a reproduce sweep's runs, one line naming
    the file (missing, or the error reading it gives, with a plugin's hint)."""
    from .config import ReproduceConfig, file_prefix, load_toml
    from .plugins import unregistered_hint

    path = folder / "config.toml"
    if not path.is_file():
        return f"{path} is missing"
    try:
        load_toml(ReproduceConfig, path)
    except (ConfigError, OSError, ValueError) as error:
        # named once: load_toml's error starts with the file too
        text = unregistered_hint(error).removeprefix(file_prefix(path))
        return f"{path} cannot be read as a reproduce configuration: {text}"
    return f"{path} does not describe the runs of a reproduce sweep"


#: The exit status of ``report`` when the table was written but runs of the sweep are missing.
INCOMPLETE = 3


#: The reference PDEs' horizon and time step of ``equivariance`` when --T / --dt are not given.
EQUIVARIANCE_T, EQUIVARIANCE_DT = 1.0, 0.1


def _options_unused_by_invariant_orders(args) -> list[str]:
    """The options given to ``equivariance --invariant-orders-only`` that it would not use (the
    orders depend on none of them; --quick only picks the default folder)."""
    given = {"--checkpoint": args.checkpoint, "--T": args.T, "--dt": args.dt,
             "--data-dir": args.data_dir}
    return [name for name, value in given.items() if value is not None]


def _equivariance(args) -> int:
    import torch

    from .equivariance_study import prepare_study, run_study, write_invariant_orders, write_outputs
    from .runfolder import check_claim, claiming, output_path

    default = "runs/equivariance" + ("-quick" if args.quick else "")
    out = output_path(args.out or default)
    if args.invariant_orders_only:
        unused = _options_unused_by_invariant_orders(args)
        if unused:  # refused rather than ignored: the user expects them to act
            raise ConfigError(f"--invariant-orders-only does not use {', '.join(unused)}: it "
                              f"computes the invariant orders alone; leave "
                              f"{'it' if len(unused) == 1 else 'them'} out, or drop "
                              f"--invariant-orders-only for the whole study")
        check_claim(out, "equivariance")
        with claiming(out, "equivariance"):
            path = write_invariant_orders(out)
        print(path.read_text(encoding="utf-8"))
        print(f"wrote {path}")
        return 0
    # Every input is checked (and the checkpoints loaded) before the folder is created or
    # marked, so bad input leaves nothing behind; matplotlib first (the study's plots).
    _needs_plots("eqpdenet equivariance (its plots; --invariant-orders-only draws none)")
    check_claim(out, "equivariance")
    start = time.perf_counter()
    plan = prepare_study(quick=args.quick, checkpoints=args.checkpoint or [],
                         data_dir=args.data_dir,
                         T=EQUIVARIANCE_T if args.T is None else args.T,
                         dt=EQUIVARIANCE_DT if args.dt is None else args.dt)
    # one writer: two runs never mix their outputs; a failure the checks above did not foresee,
    # or an interruption, before any output was written: a folder this call made goes
    with claiming(out, "equivariance"):
        torch.manual_seed(0)
        written = write_outputs(run_study(plan), out)
    print(written[0].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in written)} in {time.perf_counter() - start:.0f} s "
          f"({torch.get_num_threads()} threads)")
    return 0


def _load_digits(data_dir, samples: list[int]):
    import torch

    from ..data.mnist import load_mnist

    digits = load_mnist(data_dir, download=False).test_images
    for n in samples:
        if not 0 <= n < len(digits):
            raise ConfigError(f"sample {n}: MNIST's test set has digits 0 ... {len(digits) - 1}")
    return torch.as_tensor(digits[samples], dtype=torch.float32)[:, None] / 255.0


#: The test images ``describe --out`` evolves and the frames it draws of each, when --samples /
#: --frames are not given (None there: given without --out, they are refused).
DESCRIBE_SAMPLES, DESCRIBE_FRAMES = [0, 1, 2], 6


def _describe(args) -> int:
    from ..analysis.describe import describe_model, describes_pdes
    from ..models import EqPdeNet
    from .figures import evolution_grid, evolution_trajectories
    from .runfolder import check_claim, claiming, output_path
    from .training import load_checkpoint

    if not args.out:
        # Refused rather than ignored (as figure refuses what it would not use): these only
        # choose the evolution images, and an invalid --samples 99999 passed without a word.
        given = [name for name, value in (("--samples", args.samples), ("--frames", args.frames),
                                          ("--data-dir", args.data_dir)) if value is not None]
        if given:
            names = " and ".join([", ".join(given[:-1]), given[-1]] if len(given) > 1 else given)
            raise ConfigError(f"{names} {'are' if len(given) > 1 else 'is'} for the evolution "
                              f"images that describe draws with --out FOLDER; without --out it "
                              f"only prints the PDEs and would not use "
                              f"{'them' if len(given) > 1 else 'it'}: add --out FOLDER, or "
                              f"leave {names} out")
    samples = DESCRIBE_SAMPLES if args.samples is None else args.samples
    frames = DESCRIBE_FRAMES if args.frames is None else args.frames
    model, config, payload = load_checkpoint(args.checkpoint)
    evolves = args.out and isinstance(model, EqPdeNet)
    if evolves:  # before anything is loaded or printed
        _needs_plots("eqpdenet describe --out (evolution.png; without --out it only prints)")
    # the images and --out first: a missing data set or a folder that is not describe's to write
    # is refused before anything is printed
    images, labels = (_describe_images(args.checkpoint, config, payload, args.data_dir,
                                       samples) if evolves else (None, None))
    folder = output_path(args.out) if evolves else None
    if folder is not None:
        check_claim(folder, "describe")
    print(describe_model(model, digits=args.digits))
    if args.out and not evolves:  # said, rather than an --out that silently stays empty
        printed = "its PDEs are printed above" if describes_pdes(model) else "it has no PDEs"
        print(f"eqpdenet: --out: evolution images are drawn of the paper's PDE layer "
              f"(model.kind = 'eqpdenet') only; this {config.model.kind} checkpoint: {printed}; "
              f"nothing was written to {args.out}", file=sys.stderr)
    if folder is None:
        return 0
    # The evolutions before the folder is made and marked: a PDE that blows up on these digits
    # leaves no folder behind (hold's clean-up removes a folder holding only its lock file, not
    # one holding describe's marker).
    try:
        trajectories = evolution_trajectories(model.pde_layer, images, model.standardize)
    except NonFiniteStateError as error:
        raise error.with_hint(
            f"The checkpoint's learned PDE (printed above) blows up on {', '.join(labels)} "
            f"under its own explicit Euler scheme: that is the trained model's behaviour, which "
            f"describe reports and does not change. No evolution image was drawn and nothing "
            f"was written to {args.out}; other --samples may stay finite.") from None
    with claiming(folder, "describe") as out:  # one writer: no train swaps its run in over it
        path = out / "evolution.png"
        evolution_grid(model.pde_layer, images, path, frames=frames, labels=labels,
                       title=f"u(0) ... u(T) of each PDE of {args.checkpoint}",
                       trajectories=trajectories)
    print(f"wrote {path}")
    return 0


def _describe_images(checkpoint, config, payload, data_dir, samples: list[int], *,
                     command: str = "describe", option: str = "--samples",
                     use: str = "the evolutions are drawn on the data as it is now"):
    """The images ``describe --out`` evolves (and ``figure --checkpoint`` draws), and their
    labels: MNIST's test digits for a model of the MNIST family (ROTMNIST, MNIST: the upright
    digits, as the paper's figures), else the test images of the checkpoint's own data set, as
    training read them (``option``: the command's option naming them, for its errors)."""
    from ..data.datasets import mnist_family

    if mnist_family(config.data.dataset):  # 'mnist' replaced by a plugin is the user's set
        return _load_digits(data_dir, samples), [f"MNIST test #{n}" for n in samples]
    data = _checkpoint_data(checkpoint, config, data_dir, None, command)
    _check_evaluation_data(checkpoint, config, payload, data, use=use)
    test = data.test
    name = Path(config.data.dataset).name
    for n in samples:
        if not 0 <= n < len(test):
            raise ConfigError(f"{option} {n}: the test split of {name} has images 0 ... "
                              f"{len(test) - 1}")
    return test.images[samples].float(), [f"{name} test #{n}" for n in samples]


#: The heat equation's horizon and time step of ``figure`` when --T / --dt are not given.
FIGURE_T, FIGURE_DT = 2.0, 0.1


def _figure(args) -> int:
    from .files import check_output_file, missing_folders
    from .runfolder import check_output_keeps

    _needs_plots("eqpdenet figure")
    learned = args.pde != "heat"
    # Refused rather than ignored: each names what the figure would then not draw.
    if args.checkpoint and not learned:
        raise ConfigError(f"--checkpoint {args.checkpoint}: the figure draws one of its learned "
                          f"PDEs when --pde names its index (--pde 0, 1, ...); with --pde heat it "
                          f"draws the heat equation and would not use the checkpoint: add --pde "
                          f"INDEX, or leave --checkpoint out")
    if learned and not args.checkpoint:
        raise ConfigError("--pde INDEX needs --checkpoint")
    given = [name for name, value in (("--T", args.T), ("--dt", args.dt)) if value is not None]
    if learned and given:
        raise ConfigError(f"{' and '.join(given)} set{'s' if len(given) == 1 else ''} the heat "
                          f"equation's time; a learned PDE (--pde {args.pde}) is drawn with the T "
                          f"and dt it was trained with: leave {' and '.join(given)} out")
    check_output_keeps(Path(args.out), "--out", [args.checkpoint])
    if Path(args.out).suffix.lower() != ".png":  # savefig wrote PNG bytes under any name
        raise ConfigError(f"--out {args.out}: figure writes a PNG image; name the file .png")
    created = missing_folders(Path(args.out).parent)
    check_output_file(Path(args.out), "--out")  # before the work, not at the write
    try:
        return _draw_figure(args, learned)
    except BaseException:  # a refused --pde, --sample, a PDE that blows up: no folder left
        for folder in created:  # deepest first; one someone has written into stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _draw_figure(args, learned: bool) -> int:
    from ..analysis.references import heat_pde
    from .figures import figure_diagram
    from .runfolder import writing_beside_runs

    if not learned:
        T = FIGURE_T if args.T is None else args.T
        dt = FIGURE_DT if args.dt is None else args.dt
        pde = heat_pde(T=T, dt=dt, names=("--T", "--dt"))
        label = f"heat equation ∂t u = u_xx + u_yy, T={T:g}"
    else:
        from torch import nn

        from ..analysis.describe import pde_formula, ratio_reading
        from .training import load_checkpoint

        model, config, payload = load_checkpoint(args.checkpoint)
        if not hasattr(model, "pde_layer"):
            raise ConfigError(f"--pde {args.pde}: {args.checkpoint} ({type(model).__name__}) has "
                              f"no PDE layer on the image plane to draw; figure --pde draws the "
                              f"paper's layer (model.kind = 'eqpdenet')")
        index = args.pde
        if not 0 <= index < model.pde_layer.n_pdes:
            raise ConfigError(f"--pde {index}: the checkpoint has {model.pde_layer.n_pdes} PDEs")
        chosen = model.pde_layer.pdes[index]
        # a module, so that figure_diagram runs it in evaluation mode (a lambda was run as the
        # checkpoint loads it, in training mode: an F with a dropout drew another map each run)
        pde = nn.Sequential(model.standardize, chosen)
        ratios = ratio_reading(chosen.step.rhs)  # the printed a / b are regularised: say how
        label = (f"learned {chosen.name}, T={chosen.T:g}\n{pde_formula(chosen, digits=2)}"
                 + (f"\n{ratios}" if ratios else ""))
    if learned:  # the checkpoint's own test images (MNIST's for its family), as describe's
        image, (name,) = _describe_images(args.checkpoint, config, payload, args.data_dir,
                                          [args.sample], command="figure", option="--sample",
                                          use="the figure is drawn on the data as it is now")
    else:
        image, name = _load_digits(args.data_dir, [args.sample]), f"MNIST test #{args.sample}"
    try:
        error = figure_diagram(image, pde, Path(args.out), angle=args.angle, factor=args.scale,
                               shift=tuple(args.shift), pde_label=label, image_label=name,
                               guard=lambda: writing_beside_runs(Path(args.out), "--out"))
    except NonFiniteStateError as failure:
        if not learned:  # the heat equation's dt is checked against its bound: not expected
            raise
        # describe's explanation, not the training advice (lower the learning rate): the
        # checkpoint is what it is
        raise failure.with_hint(
            f"The checkpoint's learned PDE {index} ({chosen.name}) blows up on {name} "
            f"or on its copy moved by g, under its own explicit Euler scheme: "
            f"that is the trained model's behaviour, which figure draws and does not change "
            f"(eqpdenet describe {args.checkpoint} prints it). Nothing was written to {args.out}; "
            f"another --sample may stay finite.") from None
    print(f"wrote {args.out} (relative difference on the disk: {error:.3e})")
    return 0


# ----------------------------------------------------------------------------- parser


def _number(convert, test, what):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_count = _number(int, lambda v: v >= 0, "an integer >= 0")
_finite = _number(float, math.isfinite, "a finite number")
_positive = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
# The figure's group element: values whose transform float32 images can carry (a scale of 1e-300
# made the similarity matrix singular, one of 1e39 or a shift of 1e40 overflowed into NaN
# images blamed on "the input")
_figure_angle = _number(float, lambda v: math.isfinite(v) and abs(v) <= 1e6,
                        "an angle in degrees within ±1e6")
_figure_scale = _number(float, lambda v: math.isfinite(v) and 1e-3 <= v <= 1e3,
                        "a scale between 0.001 and 1000")
_figure_shift = _number(float, lambda v: math.isfinite(v) and abs(v) <= 1e4,
                        "a shift in pixels within ±10000")


def _figure_pde(text: str) -> str | int:
    """``figure --pde``: ``heat``, or the index of a learned PDE (ASCII digits: ``str.isdigit``
    takes ``²``, which ``int`` refuses)."""
    if text == "heat":
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not 'heat' or the index of a learned PDE "
                                     f"(0, 1, ...)")


#: Bounds of counts whose work grows with them: an evaluation per instance (about a minute on
#: ROTMNIST's 50,000 test digits), a column of images per frame.
MAX_INSTANCES, MAX_FRAMES = 1000, 64
_instances = _number(int, lambda v: 1 <= v <= MAX_INSTANCES,
                     f"a number of instances from 1 to {MAX_INSTANCES}")
_frames = _number(int, lambda v: 1 <= v <= MAX_FRAMES, f"a number of frames from 1 to {MAX_FRAMES}")
#: A file or folder name: an empty one (an unset shell variable) is an error, not "here".
def _path(text: str) -> str:
    """``type=`` of a path argument: the rule of the path variables
    (:func:`~eqpdenet.process_state.path_problem`: a carriage return from a script written on
    Windows, whitespace at an end, a control character would name another, new file whose name
    prints like the intended one)."""
    if text.strip() == "":
        raise argparse.ArgumentTypeError(f"{text!r} is not a path (it is empty)")
    problem = path_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a usable path: {problem}")
    return text


_path.__name__ = "a path"


def _add_common(parser: argparse.ArgumentParser, runs: str = "") -> None:
    """The options of the commands that train; ``runs``: where their configuration holds the
    runs' recipe (``base.`` for the sweeps), for --set's example."""
    parser.add_argument("--config", type=_path, help="TOML file with the configuration")
    parser.add_argument("--layer", metavar="PRESET",
                        help="start the PDE layer from a preset (paper, se2_sim2), before --set "
                             "(it replaces the --config file's layer table)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help=f"override one field, e.g. --set {runs}model.layer.dt=0.05 "
                             f"(repeatable)")
    parser.add_argument("--data-dir", type=_path, help="folder holding mnist/ (default: $EQPDENET_DATA)")
    parser.add_argument("--cache-dir", type=_path, help="where generated ROTMNIST is cached")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_executor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="where runs execute: 'local' (this machine, --jobs processes) or "
                             "'ray' (tasks of a Ray cluster; pip install 'eqpdenet[distributed]')")
    parser.add_argument("--address", metavar="HOST:PORT|auto",
                        help="with --executor ray: the cluster's head ('auto': the cluster this "
                             "machine is in; default: a Ray instance started here)")
    parser.add_argument("--cpus-per-run", type=_positive_int,
                        help="with --executor ray: CPUs (torch threads) each run declares "
                             "(default 1)")


class _Parser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too), whose "invalid choice" of a model kind adds
    the plugin hint (:data:`~eqpdenet.app.plugins.PLUGIN_HINT`), as an unknown kind read from a
    file or a checkpoint does: ``train --model mynet`` without the plugin named none."""

    def error(self, message: str):
        if message.startswith("argument --model: invalid choice"):
            message = f"{message} {PLUGIN_HINT}"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    from ..data.datasets import DATASETS  # the registered sets, a plugin's included

    parser = _Parser(prog="eqpdenet", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"eqpdenet {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="versions, stencils, invariant sets, parameter counts")
    info.set_defaults(handler=_info)

    train = commands.add_parser("train", help="train one model; writes a checkpoint and its config")
    _add_common(train)
    train.add_argument("--model", choices=MODELS.names())
    train.add_argument("--hidden", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--epochs", type=int)  # 0, negative: the config's validation says why
    train.add_argument("--dataset", help=f"a data set name ({', '.join(DATASETS.names())}) or "
                       "the path of a .npz file (x_train, y_train, x_test, y_test) or of a "
                       "folder of IDX files")
    train.add_argument("--rotated", action="store_true",
                       help="train and test on the rotated version of the data set")
    train.add_argument("--out", type=_path, required=True, help="output folder (model.pt, config.toml, ...)")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training over the processes of torchrun: "
                            "torchrun --nproc-per-node N -m eqpdenet train --distributed ...")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="a checkpoint on scenarios over K instances")
    evaluate.add_argument("checkpoint", type=_path)
    evaluate.add_argument("--scenarios", nargs="+")
    evaluate.add_argument("--instances", type=_instances, default=10,
                          help=f"scenario draws (1 ... {MAX_INSTANCES})")
    evaluate.add_argument("--data-dir", type=_path)
    evaluate.add_argument("--cache-dir", type=_path)
    evaluate.add_argument("--device", choices=["cpu", "cuda"])
    evaluate.add_argument("--json", type=_path, help="also write the summary to this JSON file")
    evaluate.set_defaults(handler=_evaluate)

    from ..export import DEFAULT_TOLERANCE, FORMATS

    export = commands.add_parser(
        "export", help="a checkpoint as a file that runs without eqpdenet (ONNX or a "
        "torch.export program), verified on test images before it is kept")
    export.add_argument("checkpoint")
    export.add_argument("--format", required=True, metavar="FORMAT",
                        help=f"one of: {', '.join(FORMATS.names())}")
    export.add_argument("--out", required=True, help="the file to write (replaced only after "
                        "the verification passes)")
    export.add_argument("--images", type=_positive_int, default=1000,
                        help="test images of the checkpoint's data set the verification runs")
    export.add_argument("--tolerance", type=_positive, default=DEFAULT_TOLERANCE,
                        help="largest accepted logit difference to PyTorch, relative to the "
                             "largest logit (also for quarter-turn invariance)")
    export.add_argument("--data-dir", help="folder holding mnist/ (default: $EQPDENET_DATA)")
    export.add_argument("--cache-dir", help="where generated ROTMNIST is cached")
    export.set_defaults(handler=_export)

    repro = commands.add_parser("reproduce", help="the paper's protocol (Tables 1 and 2)")
    _add_common(repro, runs="base.")
    repro.add_argument("--quick", action="store_true", help="smoke profile (< 3 min on 2 cores)")
    repro.add_argument("--jobs", type=_positive_int, default=1, help="runs in parallel processes")
    repro.add_argument("--out", type=_path, help=f"results folder (default "
                       f"{_default_out('reproduce', False)}, with --quick "
                       f"{_default_out('reproduce', True)})")
    _add_executor(repro)
    repro.add_argument("--rerun-changed", action="store_true",
                      help="set aside (into OUT/superseded/) the finished runs whose configuration "
                      "changed since, and run them again (without it such runs are refused)")
    repro.set_defaults(handler=_reproduce)

    bench = commands.add_parser("benchmark", help="the robustness benchmark: every model x seed, "
                                "scenarios, curves against angle/scale/shift, invariance errors")
    _add_common(bench, runs="base.")
    bench.add_argument("--out", type=_path, help=f"results folder (default "
                       f"{_default_out('benchmark', False)}, with --quick "
                       f"{_default_out('benchmark', True)})")
    bench.add_argument("--models", nargs="+", help="only these models of the configuration")
    bench.add_argument("--quick", action="store_true", help="smoke profile (one seed, 1 epoch)")
    bench.add_argument("--jobs", type=_positive_int, default=1, help="runs in parallel processes")
    _add_executor(bench)
    bench.add_argument("--rerun-changed", action="store_true",
                      help="set aside (into OUT/superseded/) the finished runs whose configuration "
                      "changed since, and run them again (without it such runs are refused)")
    bench.set_defaults(handler=_benchmark)

    study = commands.add_parser("study", help="choose the recipe on the validation split")
    _add_common(study, runs="base.")
    study.add_argument("--out", type=_path, help=f"study folder (default "
                       f"{_default_out('study', False)}, with --stages refine "
                       f"{_default_out('study', True, 'refine')})")
    study.add_argument("--hidden", type=int, nargs="+",
                       help="hidden sizes (default: --config's, else 256 32)")
    study.add_argument("--seeds", type=int, nargs="+",
                       help="seeds (default: --config's, else 0 1)")
    study.add_argument("--epochs", type=int, help="epochs (default: --config's, else 20)")
    study.add_argument("--jobs", type=_positive_int, default=1)
    study.add_argument("--stages", choices=["main", "refine"], default="main",
                       help="'main': the first round; 'refine': a second round (use --config "
                            "with the first round's chosen.toml)")
    _add_executor(study)
    study.add_argument("--rerun-changed", action="store_true",
                       help="where OUT holds a study of another configuration: set its study.md, "
                       "chosen.toml and chosen.json aside (into OUT/superseded/) and run this one "
                       "(without it such a folder is refused); finished runs whose configuration "
                       "changed since are set aside and run again")
    study.set_defaults(handler=_study)

    symbolic = commands.add_parser("symbolic", help="differential invariants of the ready Lie "
                                   "groups, found symbolically, with the counts theory predicts")
    symbolic.add_argument("groups", nargs="*", help="group names (default: all ready groups)")
    symbolic.add_argument("--channels", type=_positive_int, default=1, metavar="C",
                          help="joint invariants of C channels u1 ... uC, orders 1 and 2 "
                               "(default 1: one channel u, orders 1 to 3)")
    symbolic.add_argument("--max-degree", type=_positive_int, default=None, metavar="D",
                          help="search polynomials of degree up to D at every searched row "
                               "(default: each group's listed degrees, 3 for a registered "
                               "group at orders 2 and 3); refused before any work where a row "
                               "would search more than 5,000 monomials")
    symbolic.set_defaults(handler=_symbolic)

    report = commands.add_parser("report", help="Markdown table and plot from a results folder")
    report.add_argument("results", type=_path, help="folder with results.jsonl")
    report.set_defaults(handler=_report)

    equiv = commands.add_parser("equivariance",
                                help="measure equivariance errors; tables and plots")
    equiv.add_argument("--out", type=_path, help="output folder (default runs/equivariance, with --quick "
                       "runs/equivariance-quick; the committed tables: --out docs/equivariance)")
    equiv.add_argument("--checkpoint", type=_path, nargs="+",
                       help="checkpoints of any family (the logits of all; the maps of EqPdeNet "
                       "and lifted models)")
    equiv.add_argument("--quick", action="store_true", help="a few points only (seconds)")
    equiv.add_argument("--invariant-orders-only", action="store_true",
                       help="only the convergence orders of every invariant set with every "
                            "stencil (invariant_orders.md, seconds; the folder's other outputs "
                            "are kept); refused with --checkpoint, --T, --dt or --data-dir, "
                            "which it does not use")
    equiv.add_argument("--T", type=_positive, help="T of the reference PDEs (default 1)")
    equiv.add_argument("--dt", type=_positive, help="dt of the reference PDEs (default 0.1)")
    equiv.add_argument("--data-dir", type=_path, help="folder holding mnist/ (default: $EQPDENET_DATA)")
    equiv.set_defaults(handler=_equivariance)

    describe = commands.add_parser("describe", help="print the learned PDEs; evolution images")
    describe.add_argument("checkpoint", type=_path)
    describe.add_argument("--samples", type=_count, nargs="+",
                          help="test images to evolve (indices): MNIST's digits for a checkpoint "
                               "of MNIST's family, else its own data set's (with --out; default "
                               f"{' '.join(map(str, DESCRIBE_SAMPLES))})")
    describe.add_argument("--out", type=_path,
                          help="folder for evolution.png, drawn of the paper's model (model.kind "
                               "'eqpdenet') only: other checkpoints are printed and this is "
                               "said, exit 0 (none: print only)")
    describe.add_argument("--frames", type=_frames,
                          help=f"images per evolution (1 ... {MAX_FRAMES}; with --out; default "
                               f"{DESCRIBE_FRAMES})")
    describe.add_argument("--digits", type=_positive_int, default=3, help="significant digits")
    describe.add_argument("--data-dir", type=_path,
                          help="folder holding mnist/ (default: $EQPDENET_DATA), for the "
                               "evolution images (with --out)")
    describe.set_defaults(handler=_describe)

    figure = commands.add_parser("figure", help="figures of the paper")
    figure.add_argument("which", choices=["diagram"], help="diagram: Figure 2")
    figure.add_argument("--checkpoint", type=_path, help="the checkpoint whose learned PDE "
                        "--pde INDEX draws")
    figure.add_argument("--sample", type=_count, default=0,
                        help="test image (index): MNIST's for the heat equation and for a "
                             "checkpoint of MNIST's family, else the checkpoint's own data set's")
    figure.add_argument("--angle", type=_figure_angle, default=30.0,
                        help="rotation of g, degrees (within ±1e6)")
    figure.add_argument("--scale", type=_figure_scale, default=1.0,
                        help="scaling of g (0.001 to 1000)")
    figure.add_argument("--shift", type=_figure_shift, nargs=2, default=[0.0, 0.0],
                        metavar=("TX", "TY"), help="translation of g, pixels (y up; within ±10000)")
    figure.add_argument("--pde", type=_figure_pde, default="heat",
                        help="'heat' or the index of a learned PDE of --checkpoint (0, 1, ...)")
    figure.add_argument("--T", type=_positive, help=f"T of the heat equation (default {FIGURE_T:g})")
    figure.add_argument("--dt", type=_positive,
                        help=f"dt of the heat equation (default {FIGURE_DT:g})")
    figure.add_argument("--data-dir", type=_path)
    figure.add_argument("--out", type=_path, required=True, help="PNG file")
    figure.set_defaults(handler=_figure)
    return parser


DEBUG_VARIABLE = "EQPDENET_DEBUG"


#: Ray's errors for a task whose worker, node or data were lost (after its retries).
RAY_LOSSES = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ObjectLostError",
              "OwnerDiedError", "RaySystemError")


#: The module whose batches of EVALUATION_BATCH images evaluation and validation predict.
_PREDICTIONS_MODULE = os.path.join("eqpdenet", "analysis", "predictions.py")


def _memory_phase(error: BaseException) -> str | None:
    """Where an allocation failed: ``"evaluation"`` in a prediction (the run's evaluation, or
    an epoch's validation: batches of EVALUATION_BATCH images, whatever train.batch_size),
    ``"training"`` elsewhere, None where the frames are unknown (a ``--jobs`` worker's and a
    Ray task's are read from the remote traceback they carry)."""
    import traceback

    frames = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(error.__traceback__)]
    # a --jobs worker's (concurrent.futures) or a Ray task's (distributed.RemoteTraceback)
    remote = error.__cause__ if type(error.__cause__).__name__ in (
        "_RemoteTraceback", "RemoteTraceback") else None
    if any(name.endswith(_PREDICTIONS_MODULE) for name in frames) or (
            remote is not None and _PREDICTIONS_MODULE in str(remote)):
        return "evaluation"
    if remote is not None or any(os.path.join("eqpdenet", "app", "training.py") in name
                                 for name in frames):
        return "training"
    return None


def _allocation_failed(error: BaseException) -> str | None:
    if not isinstance(error, RuntimeError):
        return None
    from .preflight import allocation_failure

    return allocation_failure(error)


#: The top-level modules of the optional dependencies, and the extra of pyproject.toml that
#: installs each (a module of eqpdenet's own that is missing is a bug, said as one).
OPTIONAL_MODULES = {"matplotlib": "experiments", "tqdm": "experiments", "sympy": "symbolic",
                    "e2cnn": "gcnn", "triton": "gpu", "ray": "distributed", "onnx": "export",
                    "onnxscript": "export", "onnxruntime": "export"}


def _missing_extra(error: BaseException) -> tuple[str, str] | None:
    """``(module, extra)`` where ``error`` is the ImportError of an optional dependency."""
    if not isinstance(error, ImportError):
        return None
    module = (getattr(error, "name", None) or "").partition(".")[0]
    return (module, OPTIONAL_MODULES[module]) if module in OPTIONAL_MODULES else None


def describe_error(error: BaseException) -> tuple[str, int]:
    """One line naming the problem, and the exit status: 2 for bad input, configuration, files,
    a missing optional dependency (its install line named; the commands check theirs before any
    work, this catches the others) or a run that cannot go on (our errors, ValueError,
    OSError), 1 for anything unexpected."""
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(error, BrokenProcessPool):
        text, status = ("a worker process died unexpectedly (killed from outside, or by the "
                        "system for lack of memory?); rerun the command to resume"), 2
    elif type(error).__module__.startswith("ray.") and type(error).__name__ in RAY_LOSSES:
        text, status = (f"a Ray worker or node was lost more often than a run is retried "
                        f"({type(error).__name__}); rerun the command to resume"), 2
    elif isinstance(error, MemoryError) or _allocation_failed(error):
        from ..analysis.predictions import EVALUATION_BATCH

        wanted = _allocation_failed(error)
        model = ("the model's width or depth (of a PDE model, its Euler steps: model.layer.T / "
                 "dt, or the blocks of invariant_pde and lifted_pde)")
        phase = _memory_phase(error)
        if phase == "evaluation":
            remedy = (f"in evaluation, which predicts batches of {EVALUATION_BATCH} images "
                      f"whatever train.batch_size (lowering it does not help): lower {model} "
                      f"or --jobs")
        elif phase == "training":
            remedy = f"lower train.batch_size, {model} or --jobs"
        else:  # an error without its frames: either
            remedy = (f"lower train.batch_size, {model} or --jobs (train.batch_size does not "
                      f"help where it failed in evaluation or validation, which predict "
                      f"batches of {EVALUATION_BATCH} images whatever it)")
        text, status = f"out of memory{f' ({wanted})' if wanted else ''}; {remedy}", 2
    elif isinstance(error, OSError) and not isinstance(error, EqPdeNetError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        text, status = f"{write_cause(error)}{where}", 2
    elif isinstance(error, EqPdeNetError | ValueError | OSError):
        text, status = str(error), 2
    elif extra := _missing_extra(error):
        module, name = extra
        text, status = (f"this command needs {module}, an optional dependency, which cannot be "
                        f"imported ({error}): pip install 'eqpdenet[{name}]'"), 2
    else:
        text, status = (f"unexpected {type(error).__name__}: {error} (a bug in eqpdenet? please "
                        f"report it with the traceback)"), 1
    return " ".join(text.split()) or type(error).__name__, status


def _show_warning(message, category, filename, lineno, file=None, line=None):
    # The library's own warnings start "eqpdenet: " (for its Python users): said once here.
    text = " ".join(str(message).split()).removeprefix("eqpdenet: ")
    print(f"eqpdenet: warning: {text}", file=file or sys.stderr)


@contextlib.contextmanager
def _warnings_as_lines(debug: bool):
    """Within the block, each warning is one line on stderr, ``eqpdenet: warning: ...`` without
    its source line (:func:`_show_warning`; Python's format with ``debug``), and the warning
    filters are restored after. Only where :func:`main` runs in the main thread (the command):
    ``warnings.showwarning`` and the filters belong to the process, and two calls of ``main``
    from threads of a host program saved and restored them out of order, which left the CLI's
    formatter installed for every later warning of the host (round 12). A call from another
    thread changes neither: its warnings keep the host's format."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        yield


#: Signals that end a command like Ctrl-C: ``kill`` and job schedulers (SIGTERM), a closed
#: terminal or SSH session (SIGHUP).
INTERRUPTING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                             if hasattr(signal, name))

#: True where the process ends when :func:`main` returns (the console entry point
#: ``_eqpdenet_launch.main`` and ``python -m eqpdenet.app.cli`` set it): after a first interrupt
#: the signals then stay ignored to the exit (:func:`_terminate_as_interrupt`). False for a
#: caller of :func:`main` in its own process (a notebook, a script), which gets its handlers back
#: when ``main`` returns, interrupted or not: it kept Ctrl-C ignored for good (round 18 review).
ENDS_THE_PROCESS = False


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM and SIGHUP end the command like Ctrl-C: through the same clean-up (staging folders
    and temporary files removed, worker processes stopped, the lock released). The first of
    these or of Ctrl-C (SIGINT) is enough: from then on the process ignores all three, and keeps
    ignoring them after the block, while it ends with status 130 (a second SIGTERM, a
    scheduler's repeat or ``kill`` twice, cut the clean-up short, or, once the handlers were
    restored, ended the process with 143, round 16; a second Ctrl-C, or Ctrl-C after SIGTERM,
    cut it short too, or, as the process exited, ended it by SIGINT, a raw wait status of -2,
    round 18). SIGKILL still ends it. A signal ignored when the block starts (nohup's SIGHUP, a
    background job's SIGINT) stays ignored. Where :func:`main` was called in-process
    (:data:`ENDS_THE_PROCESS` False), the handlers come back after the block in every case."""
    interrupted = []

    def interrupt(signum, frame):
        if interrupted:  # a signal already queued when the handlers changed
            return
        interrupted.append(signum)
        for number in previous:
            signal.signal(number, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {}
    try:
        for number in (signal.SIGINT, *INTERRUPTING_SIGNALS):
            # nohup's SIGHUP and a background job's SIGINT stay ignored; a handler set
            # outside Python (None) could not be put back
            if signal.getsignal(number) not in (signal.SIG_IGN, None):
                previous[number] = signal.signal(number, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        for number, handler in previous.items():
            signal.signal(number, handler)
        yield
        return
    try:
        yield
    finally:
        if not (interrupted and ENDS_THE_PROCESS):
            for number, handler in previous.items():
                signal.signal(number, handler)


@contextlib.contextmanager
def _output_that_cannot_fail():
    """Within the block, stdout and stderr write a character their encoding lacks (², ∂, θ in
    an ASCII locale: ``LC_ALL=C`` with ``PYTHONUTF8=0``) as a backslash escape (``\\u2202``)
    rather than fail on it; a stream in a UTF-8 (or UTF-16/32) encoding is left as it is, so
    output there is unchanged. Each stream's error handler is restored after."""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        try:
            unicode = codecs.lookup(encoding).name.startswith("utf") if encoding else True
        except LookupError:
            unicode = False
        if unicode or getattr(stream, "errors", None) == "backslashreplace":
            continue
        with contextlib.suppress(AttributeError, ValueError, OSError):
            previous = stream.errors
            stream.reconfigure(errors="backslashreplace")
            changed.append((stream, previous))
    try:
        yield
    finally:
        for stream, previous in changed:
            with contextlib.suppress(AttributeError, ValueError, OSError):  # a closed pipe
                stream.reconfigure(errors=previous)


#: The standard streams: file descriptor, ``sys`` attribute, how :data:`os.devnull` is opened.
STANDARD_STREAMS = ((0, "stdin", os.O_RDONLY, "r"), (1, "stdout", os.O_WRONLY, "w"),
                    (2, "stderr", os.O_WRONLY, "w"))


def _open_closed_standard_streams() -> None:
    """A standard stream closed when the command started (``2>&-``: Python makes it ``None``)
    becomes :data:`os.devnull`, its file descriptor too. Else ``print(file=sys.stderr)`` wrote to
    stdout, PyTorch's ``sys.stderr.flush()`` failed the C++ kernel's build (the slow path, with a
    wrong reason), and the next file opened took descriptor 2 (C code's messages and those of
    processes started later would land in it)."""
    for descriptor, name, flags, mode in STANDARD_STREAMS:
        try:
            os.fstat(descriptor)
        except OSError:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, flags)  # the lowest free descriptor: this one
                if null != descriptor:
                    os.dup2(null, descriptor)
                    os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode, encoding="utf-8"))  # noqa: SIM115 - the process's stream


@contextlib.contextmanager
def _standard_streams():
    """Within the block, stdout and stderr outlive their readers
    (:class:`~eqpdenet.app.workers.SurvivingStream`, as worker processes' do): a ``| head`` that
    has exited or a log collector that died ends neither the work nor the command (what was
    written to it is dropped, the exit status is the work's); the streams are flushed at its
    end, so that output still held finds a reader gone there, not at the interpreter's exit
    (exit status 120). Closed streams are :data:`os.devnull` first
    (:func:`_open_closed_standard_streams`). The streams it wrapped are put back after (one
    whose reader went now writes to :data:`os.devnull`)."""
    from .workers import survive_gone_readers

    _open_closed_standard_streams()
    wrapped = survive_gone_readers()
    try:
        yield
    finally:
        for stream in wrapped:
            with contextlib.suppress(OSError, ValueError):  # closed; a full disk: _main said it
                stream.flush()
            name = "stdout" if sys.stdout is stream else "stderr" if sys.stderr is stream else None
            if name:
                setattr(sys, name, stream.stream)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring). The modules
    named in ``EQPDENET_PLUGINS`` are imported first (:mod:`eqpdenet.app.plugins`), so that what
    they register (a model family, a data set, a scenario, ...) is known to the arguments.
    Output never fails on a character the locale's encoding lacks
    (:func:`_output_that_cannot_fail`), nor on a reader that is gone (:func:`_standard_streams`)."""
    with _standard_streams(), _output_that_cannot_fail():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    debug = env_flag(DEBUG_VARIABLE, False)  # EQPDENET_DEBUG=0 (or false, no, off): off
    try:
        import_plugins()
    except ConfigError as error:
        if debug:
            raise
        return _said(error)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from ..data.mnist import download_progress

    try:
        # --no-progress reaches a download of MNIST however deep in the command it happens
        with _warnings_as_lines(debug), _terminate_as_interrupt(), \
                download_progress(not getattr(args, "no_progress", False)):
            status = args.handler(args)
            sys.stdout.flush()  # a write that fails (a full disk) is said; a gone reader is not
            return status
    except KeyboardInterrupt:
        resumable = args.handler in (_reproduce, _benchmark, _study)
        print("eqpdenet: interrupted: " + ("finished runs are saved; rerun the same command to "
                                           "resume" if resumable else "no result was written"),
              file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        return _said(error)


def _said(error: BaseException) -> int:
    """``error`` in one line on stderr (:func:`describe_error`); returns its exit status."""
    text, status = describe_error(error)
    print(f"eqpdenet: error: {text} ({DEBUG_VARIABLE}=1 shows the traceback)", file=sys.stderr)
    return status


if __name__ == "__main__":
    ENDS_THE_PROCESS = True
    sys.exit(main())
