"""The validation study: which training and layer choices make the PDE layer help.

The paper leaves optimiser, schedule, epochs, initialisation, T, dt, the ratio regularisation
and input normalisation open. This study chooses them **on the validation split only** (the last
2,000 of the 12,000 ROTMNIST training digits; the models train on the first 10,000) and never
evaluates on the test set (``scenarios = []``). It starts from the issue's prototype
(:data:`PROTOTYPE`, every value written out), not from the package's defaults, which have since
become the recipe the study chose.

It is a greedy search over stages. Each stage names a few candidates (override lists that state
the candidate's values); the incumbent configuration is always tried too, and every candidate that
changes it is trained for both models (EqPdeNet and FCNN) at the study's hidden sizes and seeds. A
stage is either

* ``shared`` (the training recipe, applied identically to both models): scored by the mean
  validation accuracy of *both* models, so the recipe is not tuned for one of them; or
* ``layer`` (the PDE layer only; FCNN is unaffected): scored by EqPdeNet's mean validation
  accuracy; only EqPdeNet is trained, and the FCNN column shows the incumbent's FCNN runs.

The incumbent's row is labelled with the name of the candidate whose values it already holds (a
candidate that leaves it unchanged is not trained twice), else ``incumbent``. Of the candidates
that beat the incumbent's score by more than ``margin`` percentage points the best replaces it,
whatever order they are listed in; of two with the same score, the one whose name sorts first
(scores compared exactly, as fractions of correctly classified validation images, not as
floats with their rounding: :func:`_score`). A
cell averages the runs of the study's grid (models x hidden sizes x seeds) only. Runs are stored
by configuration under ``out/runs/<fingerprint>/`` so a configuration met again (the incumbent of
the next stage) is not retrained, and rerunning the command resumes where it stopped. The study
is summarised in ``out/study.md``, its choice in ``out/chosen.toml`` (and ``chosen.json``),
the three written at its end as one set (:func:`~eqpdenet.app.files.write_set`: all or none);
``study.md`` is also rewritten after each stage, with the stages done so far.

``out/study.json`` records what the study was run with (:func:`study_record`: the starting
configuration, its grid of models, hidden sizes and seeds, the stages and the margin). A study of
another configuration is refused in that folder, naming the fields that differ, before anything
is written: it would replace ``study.md`` and ``chosen.toml`` with its own. With
``rerun_changed`` those files are set aside into ``out/superseded/<date-time>/`` and the new
study runs (the runs of configurations both studies share are reused: they are stored by
configuration). Folders written before ``study.json`` existed (``results/study``) are judged by
what their ``study.md`` shows (:func:`_legacy_record`).

On a data set outside MNIST's family the ``standardize`` stage cannot use MNIST's mean and std,
and ``model.standardize = 'auto'`` means the training split's own statistics there, which
override ``input_mean, input_std``: its candidates then state ``model.standardize``
(:data:`OWN_DATA_STANDARDIZE`: raw pixels against the training split's own mean and std), and the
starting configuration's ``'auto'`` is written out as ``'train'`` (:func:`base_for_data`). A
candidate that sets a field training takes from the data is refused before any work, and so is
one that changes the data set or its validation split (any field of ``base.data`` but
``train_subset`` and ``test_subset``): every candidate is scored on the same validation images.

``models`` may leave FCNN out (``models = ['eqpdenet']``): every stage then trains and scores
EqPdeNet alone, throughout. It must hold EqPdeNet, which every ``layer`` stage scores.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import numbers
import re
import statistics
import time
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from ..data.datasets import is_built_in, mnist_family
from ..data.rotmnist import N_TRAIN
from ..errors import ConfigError, DataFileError
from .config import (
    KIND_OPTIONS,
    DataConfig,
    ExperimentConfig,
    ReproduceConfig,
    apply_overrides,
    assigned_fields,
    data_resolved_fields,
    from_dict,
    to_dict,
    to_toml,
)
from .distributed import Executor, ray_session
from .files import atomic_write, make_folder, read_jsonl, write_set
from .preflight import preflight
from .report import PAPER_MODELS, RUN_STATUSES, finite_number, rerun_advice
from .runfolder import check_claim, claiming
from .runstore import SUPERSEDED_DIR
from .sweeps import field_differences, grid, reproduce, run_key
from .training import fingerprint, with_legacy_fields
from .workers import refuse_while_starting

__all__ = ["PROTOTYPE", "REFINE_STAGES", "STAGES", "Stage", "run_study", "study_base",
           "study_record"]


@dataclass
class Stage:
    """One step of the greedy search. ``candidates``: name -> overrides that state the
    candidate's values (the incumbent already holding them is that candidate). Names and
    overrides may hold ``{epochs}``, the incumbent's number of epochs (the only text replaced in
    them: other braces, a TOML inline table, stay as written). ``kind`` is one of
    :data:`STAGE_KINDS`, else a :class:`ConfigError`."""

    name: str
    kind: str  # "shared" or "layer"
    question: str
    candidates: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        _check_kind(self)


#: A stage's kinds: ``shared`` is scored on every model of the study, ``layer`` on EqPdeNet.
STAGE_KINDS = ("shared", "layer")


def _check_kind(stage: Stage) -> None:
    # anything else ("Layer", "layers") was scored as shared, on both models, without a word
    if stage.kind not in STAGE_KINDS:
        raise ConfigError(f"invalid config: stage {stage.name}: kind {stage.kind!r} is not one "
                          f"of 'shared' (the training recipe, scored on both models) and 'layer' "
                          f"(the PDE layer, scored on EqPdeNet)")


def _with_epochs(text: str, epochs: int) -> str:
    """A candidate's name or override with ``{epochs}`` replaced by ``epochs``: replaced, not
    formatted, as other braces (``base.train.augment={max_shift=1.0}``) are the override's own."""
    return text.replace("{epochs}", str(epochs))


#: The study, in order. The first candidate of each stage states the prototype's value.
STAGES = [
    Stage("epochs", "shared",
          "How many epochs (the prototype's training loss reached zero: overfitting)?",
          {"{epochs}-epochs": ["base.train.epochs={epochs}"],
           "10-epochs": ["base.train.epochs=10"]}),
    Stage("pde-lr", "layer",
          "How fast should the PDE coefficients move? (learning-rate multiplier of the PDE layer)",
          {"pde-lr-x1": ["base.train.pde_lr_scale=1.0"],
           "pde-lr-x0.1": ["base.train.pde_lr_scale=0.1"],
           "pde-lr-x0.01": ["base.train.pde_lr_scale=0.01"]}),
    Stage("init", "layer",
          "Initialise F at zero (identity flow), or break the symmetry between the two PDEs of "
          "each set with small noise, around zero or around a heat flow a (u_xx + u_yy)?",
          {"zeros": ["base.model.layer.init='zeros'", "base.model.layer.init_scale=0.0",
                     "base.model.layer.init_noise=0.0"],
           "noise-0.01": ["base.model.layer.init_noise=0.01"],
           "heat-0.25+noise": ["base.model.layer.init='heat'", "base.model.layer.init_scale=0.25",
                               "base.model.layer.init_noise=0.01"]}),
    Stage("standardize", "shared",
          "Standardise the input pixels with MNIST's mean and std (0.1307, 0.3081)?",
          {"raw-pixels": ["base.model.input_mean=0.0", "base.model.input_std=1.0"],
           "standardized": ["base.model.input_mean=0.1307", "base.model.input_std=0.3081"]}),
    Stage("weight-decay", "shared",
          "Decoupled weight decay (AdamW) on every parameter?",
          {"none": ["base.train.weight_decay=0.0"], "wd-0.05": ["base.train.weight_decay=0.05"]}),
    Stage("ratio-eps", "layer",
          "Scale of the ratio regularisation a b / (b^2 + eps^2) of the scaling invariants?",
          {"eps-0.1": ["base.model.layer.ratio_eps=0.1"],
           "eps-1.0": ["base.model.layer.ratio_eps=1.0"]}),
    Stage("stencil", "layer",
          "Central differences or the isotropic 3x3 stencils?",
          {"central": ["base.model.layer.stencil='central'"],
           "isotropic": ["base.model.layer.stencil='isotropic'"]}),
]


#: A second round, from the configuration chosen by STAGES (``results/study/chosen.toml``): the
#: layer choices re-examined once the input is standardised, and a longer horizon. Its two
#: ``heat-...+noise`` candidates do not state ``init_noise``: they keep the incumbent's, 0.01 in
#: that file, and from a configuration of noise 0 they have none.
REFINE_STAGES = [
    Stage("init-after-standardize", "layer",
          "Now that the input is standardised: noise around zero, or around a heat flow?",
          # (stating init_noise=0.01 in the heat candidates would leave their runs' folders as
          # they are, but change the overrides results/study-refine/study.md shows for them, which
          # its recorded command must rewrite as committed)
          {"noise-0.01": ["base.model.layer.init='zeros'", "base.model.layer.init_noise=0.01"],
           "heat-0.25+noise": ["base.model.layer.init='heat'", "base.model.layer.init_scale=0.25"],
           "heat-1.0+noise": ["base.model.layer.init='heat'", "base.model.layer.init_scale=1.0"]}),
    Stage("pde-lr-after-standardize", "layer",
          "Now that the input is standardised and the PDEs differ: how fast should they learn?",
          {"pde-lr-x0.01": ["base.train.pde_lr_scale=0.01"],
           "pde-lr-x0.1": ["base.train.pde_lr_scale=0.1"],
           "pde-lr-x0.001": ["base.train.pde_lr_scale=0.001"]}),
    Stage("horizon", "layer",
          "Time horizon T (dt = 0.1 fixed: 10 or 20 Euler steps)?",
          {"T-1": ["base.model.layer.T=1.0"], "T-2": ["base.model.layer.T=2.0"]}),
]

STAGE_SETS = {"main": STAGES, "refine": REFINE_STAGES}

#: The ``standardize`` stage on a data set other than MNIST's family: MNIST's mean and std are
#: not its pixels' statistics, and ``model.standardize = 'auto'`` computes the training split's
#: own there, overriding ``input_mean, input_std`` (:func:`~eqpdenet.app.training.
#: resolve_for_data`): each candidate states ``standardize``, so that raw pixels are raw.
OWN_DATA_STANDARDIZE = Stage(
    "standardize", "shared",
    "Standardise the input pixels with the training split's own mean and std (not MNIST's, "
    "which are not this data set's)?",
    {"raw-pixels": ["base.model.standardize='fixed'", "base.model.input_mean=0.0",
                    "base.model.input_std=1.0"],
     "standardized": ["base.model.standardize='train'"]})


def stages_for_data(stages, data: DataConfig) -> list[Stage]:
    """``stages`` as they run on ``data``: on a data set outside the MNIST family
    (:func:`~eqpdenet.data.datasets.mnist_family`: ``mnist`` or ``rotmnist`` registered anew by
    a plugin is outside it), the ``standardize`` stage of :data:`STAGES` becomes
    :data:`OWN_DATA_STANDARDIZE` (raw pixels against the training split's own statistics); on
    MNIST the stages are unchanged."""
    if mnist_family(data.dataset):
        return list(stages)
    mnist = next(stage for stage in STAGES if stage.name == "standardize")
    return [OWN_DATA_STANDARDIZE if stage == mnist else stage for stage in stages]


def base_for_data(base: ReproduceConfig) -> ReproduceConfig:
    """``base`` with ``model.standardize = 'auto'`` resolved to what it does on its data set
    outside the MNIST family (``'train'``: the training split's own mean and std, whatever
    ``input_mean, input_std`` say), so that the standardize stage's ``standardized`` candidate
    is the incumbent it describes (a copy; MNIST's family keeps ``'auto'``, and its
    fingerprints; the family as :func:`~eqpdenet.data.datasets.mnist_family` decides it)."""
    base = copy.deepcopy(base)
    model = base.base.model
    if not mnist_family(base.base.data.dataset) and model.standardize == "auto":
        model.standardize = "train"
        # the prototype's 0 and 1, which 'train' replaces: left, they were warned about as
        # fields of no effect at every run, fields the user never set
        defaults = type(model)()
        model.input_mean, model.input_std = defaults.input_mean, defaults.input_std
    return base


#: The prototype of the issue, every value written out (a base experiment): the package's
#: defaults have since moved to the recipe this study chose (standardised input, PDE learning
#: rate x0.01, noise on F), and a study built on them would start from its own answer, its
#: candidates comparing a configuration with itself (fingerprint b6459b8a807b with 20 epochs,
#: the first folder of results/study). Validation 10,000 / 2,000; no test scenario.
PROTOTYPE: dict = {
    "model": {
        "kind": "eqpdenet", "hidden": 256, "image_size": 28, "in_channels": 1, "classes": 10,
        "input_mean": 0.0, "input_std": 1.0, "standardize": "auto", "head": "perceptron",
        "layer": {"invariants": ["se2", "se2", "scaling", "scaling"], "rhs": "linear",
                  "degree": 1, "T": 1.0, "dt": 0.1, "stencil": "central", "spacing": 1.0,
                  "boundary": "replicate", "sigma": None, "ratio_eps": 0.1,
                  "ratio_regularisation": "absolute", "reduction": "linear", "init": "zeros",
                  "init_scale": 0.0, "init_noise": 0.0, "check_finite": True, "backend": "auto",
                  "recompute": False},
    },
    "data": {"dataset": "rotmnist", "rotated": False, "source": "auto",
             "rotation_centre": "frame", "rotmnist_seed": 0, "validation": 2000,
             "train_subset": 0, "test_subset": 0},
    "train": {"optimizer": "adam", "lr": 1e-3, "lr_schedule": "constant", "weight_decay": 0.0,
              "pde_lr_scale": 1.0, "batch_size": 128, "epochs": 20,
              "select_on_validation": False, "grad_clip": 0.0, "seed": 0, "device": "cpu",
              "compile": False, "weight_average": 0.0,
              "augment": {"max_shift": 0.0, "max_angle_degrees": 0.0, "min_scale": 1.0,
                          "max_scale": 1.0},
              "blur_consistency": {"weight": 0.0, "max_sigma": 0.71, "fraction": 0.25}},
    "scenarios": [],
}


def study_base(hidden_sizes=(256, 32), seeds=(0, 1), epochs: int = 20) -> ReproduceConfig:
    """The prototype of the issue (:data:`PROTOTYPE`: zero-initialised linear F, central
    stencil, ratio eps 0.1, 10 steps of dt 0.1, raw pixels, Adam 1e-3 for every parameter,
    batch 128), with ``epochs`` (20 by default, not the prototype's 30, to fit the study in the
    time we have); validation 10,000 / 2,000; no test."""
    prototype = copy.deepcopy(PROTOTYPE)
    prototype["train"]["epochs"] = epochs
    base = from_dict(ExperimentConfig, prototype)
    return ReproduceConfig(base=base, models=list(PAPER_MODELS), hidden_sizes=list(hidden_sizes),
                           seeds=list(seeds))


def _apply(config: ReproduceConfig, overrides: list[str]) -> ReproduceConfig:
    return apply_overrides(copy.deepcopy(config), overrides)


#: The largest validation split whose accuracies :func:`_exact_accuracy` recovers exactly.
EXACT_IMAGES = 10**7


def _exact_accuracy(value: float) -> Fraction:
    """A run's validation accuracy (``100.0 * correct / n``, in percent) as the exact
    ``100 * correct / n``: the float is within a few units in the last place of it, and every
    other fraction of a denominator up to :data:`EXACT_IMAGES` is farther (at least
    ``1 / (n * EXACT_IMAGES)``), so for ``n`` up to that the nearest one is it."""
    return 100 * (Fraction(value) / 100).limit_denominator(EXACT_IMAGES)


def _score(records: list[dict], kind: str) -> dict:
    """A candidate's score: ``score``, exact (a :class:`~fractions.Fraction` of the runs'
    accuracies, :func:`_exact_accuracy`; ``-inf`` where a run it counts failed), which the margin
    and the tie rule compare (:func:`_choose`); ``shown`` and ``per_model``, the same means in
    floats, as study.md shows them."""
    ok = [r for r in records if r.get("status") == "ok"]
    per_model, exact = {}, {}
    for model in PAPER_MODELS:
        values = [r["validation_accuracy"] for r in ok if r["model"] == model]
        if values:
            per_model[model] = statistics.fmean(values)
            # Float means carry rounding (79.55000000000001 - 79.3 > 0.25): compared as floats,
            # a candidate exactly the margin better was chosen, and equal scores were decided
            # by the rounding, not by name.
            exact[model] = sum(map(_exact_accuracy, values)) / len(values)
    failed = len(records) - len(ok)
    if kind == "layer":  # scored on EqPdeNet alone: only its failures void the score
        shown = per_model.get("eqpdenet", float("-inf"))
        score = exact.get("eqpdenet", float("-inf"))
        voided = any(r["model"] == "eqpdenet" for r in records if r.get("status") != "ok")
    else:
        shown = statistics.fmean(per_model.values()) if per_model else float("-inf")
        score = sum(exact.values()) / len(exact) if exact else float("-inf")
        voided = failed > 0
    return {"score": float("-inf") if voided else score,
            "shown": float("-inf") if voided else shown, "per_model": per_model,
            "failed": failed, "runs": len(records)}


def _grid_records(folder: Path, config: ReproduceConfig, models) -> list[dict]:
    """The records of ``folder`` that are runs of ``config``'s grid for ``models``: a folder is
    named by the base configuration only, so a study run before with other hidden sizes or
    seeds may have left runs there that this one must not average."""
    grid = {(m, h, s) for m in models for h in config.hidden_sizes for s in config.seeds}
    # checked as a report checks them (report.check_records: a status no writer sets, a NaN or
    # out-of-range accuracy, named with the record): unchecked, a status "OK" failed a candidate
    # silently and another won, and a NaN validation accuracy was a bare "cannot convert NaN"
    path = folder / "results.jsonl"
    everything = read_jsonl(path)
    # every record's key fields first, as report.check_records types them: one whose hidden
    # was "256" fell out of the grid below without a word (reproduce, keyed by text, counted it
    # done), and the study averaged the rest
    for number, record in enumerate(everything, 1):
        if not isinstance(record, dict):
            raise DataFileError(str(path), f"record {number} is not a run record (a JSON object)")
        for name, kind in (("model", str), ("hidden", int), ("seed", int)):
            value = record.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DataFileError(str(path), f"record {number}: {name} is {value!r}, not a "
                                               f"run's {kind.__name__}")
    records = [r for r in everything if (r["model"], r["hidden"], r["seed"]) in grid]
    for record in records:
        key = f"{record['model']}-h{record['hidden']}-seed{record['seed']}"
        status, score = record.get("status"), record.get("validation_accuracy")
        if status not in RUN_STATUSES:
            problem = (f"status is {status!r}, not a run's status "
                       f"({' or '.join(map(repr, RUN_STATUSES))})")
        elif status == "ok" and not (finite_number(score) and 0 <= score <= 100):
            problem = (f"validation_accuracy is {score!r}, not a finite percentage (the study "
                       f"scores it)")
        else:
            continue
        raise DataFileError(str(path), f"the run {key}: {problem}; {rerun_advice(key)}")
    return records


def _check_study(config: ReproduceConfig) -> None:
    """What would let the study train and then fail: it scores on the validation split, and its
    ``layer`` stages score EqPdeNet; and what would bias its scores: selecting each run's epoch
    on the split it scores on (``train.select_on_validation``)."""
    if config.base.data.validation <= 0:
        raise ConfigError(f"invalid config: base.data.validation: the study scores every "
                          f"candidate on the validation split, so it must hold images (> 0), "
                          f"got {config.base.data.validation}")
    if "eqpdenet" not in config.models:
        raise ConfigError(f"invalid config: models: the study's layer stages choose the PDE "
                          f"layer's settings by EqPdeNet's validation accuracy, so models must "
                          f"include 'eqpdenet', got {config.models}")
    if config.base.train.select_on_validation:
        raise ConfigError("invalid config: base.train.select_on_validation: the study scores "
                          "every candidate on the validation split, and selecting each run's "
                          "best epoch on that same split would score the candidates by their "
                          "best epoch there (a candidate with more epochs could never lose); "
                          "set it to false")


def _field_words(path: tuple[str, ...]) -> str:
    if path[-1] in ("input_mean", "input_std"):
        return ("model.standardize computes them from the training split there ('train', or "
                "'auto' on a data set outside MNIST's family)")
    return "training takes it from the data"


def _apply_candidate(stage: Stage, name: str, config: ReproduceConfig,
                     overrides: list[str]) -> ReproduceConfig:
    """``overrides`` applied to ``config``; an override that is not ``base.field=value`` (the
    grid, ``models``, ``hidden_sizes``, ``seeds``, is the study's, the same for every
    candidate: a candidate changing only it was taken for the incumbent, its base unchanged) or
    that the configuration refuses is a :class:`ConfigError` naming the stage and candidate."""
    where = f"invalid config: stage {stage.name}, candidate {name}"
    for override in overrides:
        path, equals, _ = override.partition("=")
        if not equals:
            raise ConfigError(f"{where}: an override is base.section.field=value, got {override!r}")
        # by the fields it sets: base={train={lr=0.01}} sets base.train.lr only
        if not all(f.startswith("base.") for f in assigned_fields(override)):
            raise ConfigError(f"{where}: {override}: a candidate sets fields of base only; "
                              f"models, hidden_sizes and seeds are the study's grid, the same "
                              f"for every candidate")
    try:
        return _apply(config, overrides)
    except ConfigError as error:  # apply_overrides speaks of --set, which was not given
        words = str(error).removeprefix("invalid config: ").removeprefix("--set ")
        raise ConfigError(f"{where}: {words}") from None


def _candidate_names(stage: Stage, epochs: int) -> dict[str, list[str]]:
    """The stage's candidates with ``epochs`` filled in (name -> overrides), or a
    :class:`ConfigError` where two of them take the same name with other values, or one takes
    the incumbent's label ``incumbent``: each would replace the other's row (the incumbent's
    too, never compared with it)."""
    named, raw = {}, {}
    for original, overrides in stage.candidates.items():
        name = _with_epochs(original, epochs)
        overrides = [_with_epochs(o, epochs) for o in overrides]
        if name == "incumbent":
            raise ConfigError(f"invalid config: stage {stage.name}, candidate {original}: the "
                              f"name 'incumbent' labels the incumbent's row (where no candidate "
                              f"holds its values): name the candidate otherwise")
        if name in named and named[name] != overrides:
            raise ConfigError(f"invalid config: stage {stage.name}: candidates {raw[name]} and "
                              f"{original} are both named {name} with {{epochs}} = {epochs}, "
                              f"with other overrides: name them apart")
        named[name], raw[name] = overrides, original
    return named


#: The fields of ``base.data`` a candidate may change: neither changes the validation split
#: that scores every candidate (its last ``data.validation`` training images, whatever the first
#: ``train_subset`` of the others; the test set, which a study never scores).
FREE_DATA_FIELDS = ("train_subset", "test_subset")


def _changed_data(config: ReproduceConfig, incumbent: ReproduceConfig) -> list[str]:
    """The fields of ``config.base.data`` that differ from ``incumbent``'s, outside
    :data:`FREE_DATA_FIELDS`, each as ``base.data.<field> = <value> (the incumbent's <value>)``."""
    new, old = config.base.data, incumbent.base.data
    return [f"base.data.{spec.name} = {getattr(new, spec.name)!r} (the incumbent's "
            f"{getattr(old, spec.name)!r})" for spec in dataclasses.fields(DataConfig)
            if spec.name not in FREE_DATA_FIELDS
            and getattr(new, spec.name) != getattr(old, spec.name)]


def _check_stage(stage: Stage, incumbent: ReproduceConfig) -> list[tuple[str, list[str],
                                                                          ReproduceConfig]]:
    """The stage's candidates applied to ``incumbent`` (``(name, overrides, configuration)``),
    or the :class:`ConfigError`, naming the stage and candidate, of what :func:`_check_candidates`
    refuses in one stage."""
    _check_kind(stage)
    checked = []
    for name, overrides in _candidate_names(stage, incumbent.base.train.epochs).items():
        config = _apply_candidate(stage, name, incumbent, overrides)
        where = f"invalid config: stage {stage.name}, candidate {name}"
        resolved = set(data_resolved_fields(config.base))
        for override in overrides:
            # a table given whole (base.model={input_mean=0.5}) sets the fields it holds
            for assigned in assigned_fields(override):
                path = tuple(assigned.split("."))
                if path[0] == "base" and path[1:] in resolved:
                    break
            else:
                continue
            raise ConfigError(
                f"{where}: {override} has no effect on {config.base.data.dataset}: "
                f"{_field_words(path)}, so the candidate would compare a configuration "
                f"with itself")
        if config.base.train.select_on_validation:  # as _check_study refuses in the base
            raise ConfigError(f"{where}: base.train.select_on_validation: the study scores on "
                              f"the validation split that it would select each run's epoch on")
        changed = _changed_data(config, incumbent)
        if changed:
            # scored on other images (or another data set), a candidate was chosen for them
            raise ConfigError(
                f"{where}: {'; '.join(changed)}: every candidate is scored on the same "
                f"validation split, the last data.validation training images of the same data, "
                f"so a candidate may change only base.data.{' and base.data.'.join(FREE_DATA_FIELDS)} "
                f"of base.data")
        checked.append((name, overrides, config))
    return checked


def _check_candidates(base: ReproduceConfig, stages) -> list[tuple[str, ReproduceConfig]]:
    """Every candidate of ``stages`` applied to ``base`` (``(label, configuration)``, the base
    first), or the :class:`ConfigError` of a stage of another kind than :data:`STAGE_KINDS`,
    of two candidates taking one name or one named ``incumbent`` (:func:`_candidate_names`,
    with ``{epochs}`` the starting configuration's or one an earlier stage's candidate sets), of
    an override outside ``base.`` or that the configuration refuses (:func:`_apply_candidate`),
    of a candidate that sets a field training takes from
    the data (:func:`~eqpdenet.app.config.data_resolved_fields`: ``model.image_size``, and
    ``model.input_mean, input_std`` where ``model.standardize`` computes them): its runs would
    be the incumbent's, a configuration compared with itself; of one that turns on
    ``train.select_on_validation`` (:func:`_check_study`); or of one that changes a field of
    ``base.data`` other than :data:`FREE_DATA_FIELDS` (the data set, the validation split, the
    images' rotation or generation): it would be scored on other images than the incumbent.
    These are the checks of a stage's candidates applied to the starting configuration;
    :func:`_run_study` repeats them (:func:`_check_stage`) on the incumbent an earlier stage
    chose, before the stage trains anything."""
    configs = [("the starting configuration", base)]
    epochs = base.base.train.epochs
    reachable = [epochs]  # the epochs an incumbent may have when a stage names its candidates
    for stage in stages:
        _check_kind(stage)
        for other in reachable[1:]:
            _candidate_names(stage, other)
        found = []
        for name, _, config in _check_stage(stage, base):
            found.append(config.base.train.epochs)
            configs.append((f"stage {stage.name}, candidate {name}", config))
        reachable += [value for value in found if value not in reachable]
    return configs


def _check_runs(base: ReproduceConfig, stages, jobs: int, executor: Executor | None,
                out: Path | None = None, data_dir=None, cache_dir=None) -> None:
    """Before anything is written: the runs of the starting configuration and of every
    candidate (each applied to it) pass the preflight on their data
    (:func:`~eqpdenet.app.preflight.preflight` with ``at_data``: ``data.validation`` below the
    data's training images, labels the data loader takes, memory, and with ``out`` the room in
    the candidate's folder ``out/runs/<fingerprint>`` for its runs of one seed and the
    checkpoints its ``checkpoint_seeds`` save, within the file size limit too), so that a study
    that cannot run is refused before it claims its folder and writes ``study.json`` (which
    then refused the corrected command as a study of another configuration), and not after
    the stages before the one whose checkpoint cannot be written."""
    _preflight(_check_candidates(base, stages), jobs, executor, out, data_dir, cache_dir)


def _preflight(configs, jobs: int, executor: Executor | None, out: Path | None, data_dir,
               cache_dir) -> None:
    """The preflight of :func:`_check_runs` for ``configs`` (``(label, configuration)``: a
    refusal of one not labelled ``the starting configuration`` is prefixed with its label),
    once per fingerprint."""
    parallel = jobs if (executor or Executor()).kind == "local" else 1
    seen = set()
    for label, config in configs:
        own = fingerprint(config.base)
        if own in seen:
            continue
        seen.add(own)
        one_seed = copy.deepcopy(config)
        one_seed.seeds = config.seeds[:1]  # the seed changes nothing the preflight checks
        runs = {run_key(run.model.kind, run.model.hidden, run.train.seed): run
                for run in grid(one_seed)}
        saving = any(seed in config.checkpoint_seeds for seed in config.seeds)
        try:
            preflight(runs, None if out is None else Path(out) / "runs" / own, jobs=parallel,
                      at_data=True, checkpoints=len(runs) if saving else 0,
                      data_dir=data_dir, cache_dir=cache_dir)
        except ConfigError as error:
            if label == "the starting configuration":
                raise
            raise ConfigError(f"{label}: {error}") from None


def _dataset_name(data: DataConfig) -> str:
    # a built-in name registered anew by a plugin is the user's set: named as the user named it
    known = {"rotmnist": "ROTMNIST", "mnist": "MNIST"} if is_built_in(data.dataset) else {}
    name = known.get(data.dataset, Path(data.dataset).name)
    return f"rotated {name}" if data.rotated else name


_MODEL_NAMES = {"eqpdenet": "EqPdeNet", "fcnn": "FCNN"}


def _epochs_words(epochs: int, stages) -> str:
    """The epochs of study.md's first paragraph: ``starting from`` them, naming the stages
    whose candidates set ``base.train.epochs``, where there are such stages (the paragraph is
    written before any stage chose: a study run with 1 epoch whose epochs stage chose 10 said
    "1 epoch" of six stages scored on 10)."""
    words = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    setting = [stage.name for stage in stages
               if any("base.train.epochs" in assigned_fields(_with_epochs(override, epochs))
                      for overrides in stage.candidates.values() for override in overrides)]
    if not setting:
        return words
    return (f"starting from {words} (the {', '.join(setting)} stage{'s' if len(setting) > 1 else ''}"
            f" may change them)")


def _protocol(config: ReproduceConfig, margin: float, stages=()) -> str:
    """The first paragraph of study.md, from the configuration the study ran and its
    ``stages`` (the epochs are the starting configuration's, said to be where a stage may
    change them: :func:`_epochs_words`)."""
    data, base = config.base.data, config.base
    name = _dataset_name(data)
    if data.dataset == "rotmnist" and is_built_in(data.dataset) and not data.rotated:
        kept = data.train_subset or N_TRAIN - data.validation
        split = (f"train {kept:,} / validate {data.validation:,} of {name}'s {N_TRAIN:,} "
                 f"training digits")
    else:
        kept = f"the first {data.train_subset:,} of the others" if data.train_subset else "the others"
        split = f"validate on the last {data.validation:,} of {name}'s training images, train on {kept}"
    if base.scenarios:
        where = f"the first {data.test_subset:,} test images" if data.test_subset else "the test set"
        test = (f"the scenarios {', '.join(base.scenarios)} are evaluated on {where} with every "
                f"run, and play no part in the choice")
    else:
        test = "the test set is never used"
    if not mnist_family(data.dataset):  # (MNIST's study.md says nothing of it: unchanged)
        model = base.model
        if model.standardize != "fixed":
            words = ("standardised with the training split's own pixel mean and std "
                     "(`model.standardize = 'train'`)")
        elif (model.input_mean, model.input_std) == (0.0, 1.0):
            words = "as raw pixels (`model.standardize = 'fixed'`, mean 0, std 1)"
        else:
            words = (f"standardised as `(x − {model.input_mean:g}) / {model.input_std:g}` "
                     f"(`model.standardize = 'fixed'`)")
        start = f" The input starts {words}."
    else:
        start = ""
    shared = ("score both models" if set(config.models) >= set(PAPER_MODELS)
              else f"score {' and '.join(_MODEL_NAMES.get(m, m) for m in config.models)} alone "
                   f"(models = {config.models})")
    return (f"Greedy search on the validation split ({split}; {test}). Scores are mean validation "
            f"accuracy in percent over seeds {config.seeds} and hidden sizes {config.hidden_sizes}, "
            f"{_epochs_words(base.train.epochs, stages)}; `shared` stages "
            f"{shared}, `layer` stages EqPdeNet only. Of the candidates that beat the "
            f"incumbent by more than {margin} points the best replaces it (equal scores: the name "
            f"that sorts first).{start}")


def run_study(out: Path, *, base: ReproduceConfig | None = None, stages=STAGES, margin: float = 0.25,
              jobs: int = 1, executor: Executor | None = None, data_dir=None, cache_dir=None,
              progress: bool = True, echo=print, rerun_changed: bool = False) -> ReproduceConfig:
    """Run the greedy study; returns the chosen configuration (also in ``out/chosen.toml``).
    ``out`` has one writer at a time (:func:`eqpdenet.app.locks.hold`). A base without a
    validation split, or whose models leave out EqPdeNet, or that selects each run's epoch on
    the validation split it is scored on (``train.select_on_validation``: a candidate with more
    epochs could never lose), is refused before anything is written, and so are runs that
    cannot run on their data (:func:`_check_runs`: the preflight of the starting configuration
    and of every candidate, e.g. a validation split as large as
    the data's training split, labels the loader refuses), a ``margin`` that is not a finite
    number >= 0 (:func:`_check_margin`), a stage of a kind other than ``shared`` and
    ``layer``, two candidates of one stage that take one name (or one the name
    ``incumbent``), an override outside ``base.`` or one the configuration refuses, a
    candidate that sets a field
    training takes from the data, and one that changes ``base.data`` other than
    ``train_subset, test_subset`` (:func:`_check_candidates`): a refused study leaves no
    folder, no ``study.json`` that would refuse the corrected command. These check each
    candidate applied to the starting configuration; a stage whose incumbent an earlier stage
    changed checks its candidates again on it, and preflights their runs, before it trains
    anything (:func:`_checked_candidates`: a refusal there leaves the stages done). On a data
    set outside
    MNIST's family, ``model.standardize = 'auto'`` is resolved to ``'train'``
    (:func:`base_for_data`) and the standardize stage compares raw pixels with the training
    split's own statistics (:func:`stages_for_data`). So is a folder holding a study of
    another configuration (module docstring;
    with ``rerun_changed`` its summary is set aside instead, and the finished runs of each
    candidate's folder made under another configuration are set aside and run again, as
    :func:`~eqpdenet.app.sweeps.reproduce` does). With the Ray executor, every stage runs in one
    Ray (:func:`~eqpdenet.app.distributed.ray_session`), started when the first run needs it and
    stopped at the end."""
    refuse_while_starting("study")  # a script's call without a __main__ guard, in a worker
    margin = _check_margin(margin)
    base = base_for_data(base or study_base())
    stages = stages_for_data(stages, base.base.data)
    _check_study(base)
    record = study_record(base, stages, margin)
    legacy = ("study.md", "chosen.toml", "runs")
    check_claim(out, "study", legacy)  # before the lock writes into it
    # and before anything is written
    _check_runs(base, stages, jobs, executor, out, data_dir, cache_dir)
    # On Ray, one instance (and one copy of the data in its object store) for every stage, not
    # one started and stopped per candidate (seconds each, and a session folder in /tmp/ray).
    one_ray = ray_session(executor) if executor is not None and executor.kind == "ray" \
        else contextlib.nullcontext()
    with claiming(out, "study", legacy), one_ray:
        out = Path(out)
        differences = _study_differences(out, record)
        summary = ", ".join(SUMMARY[:-1]) + f" and {SUMMARY[-1]}"
        if differences and not rerun_changed:
            raise ConfigError(f"{_changed_study_message(out, differences)}: this study would "
                              f"replace its {summary}; run again with --rerun-changed to set "
                              f"them aside and run this study (the runs of configurations both "
                              f"share are reused), or choose another --out")
        if differences:
            aside = _set_aside_summary(out)
            echo(f"{_changed_study_message(out, differences)}: its {summary} set aside in {aside}")
        atomic_write(out / RECORD, (json.dumps(record, indent=1) + "\n").encode())
        return _run_study(out, base=base, stages=stages, margin=margin, jobs=jobs,
                          executor=executor, data_dir=data_dir, cache_dir=cache_dir,
                          progress=progress, echo=echo, rerun_changed=rerun_changed)


def _check_margin(margin):
    """``margin`` if it is a finite number of points >= 0 (a number type JSON cannot write, as
    a float), else a :class:`ConfigError`: NaN chose nothing and wrote ``NaN`` into
    study.json, invalid JSON that refused the same command ever after (NaN != NaN), and a
    negative margin chose candidates worse than the incumbent."""
    if not isinstance(margin, numbers.Real) or isinstance(margin, bool) \
            or not math.isfinite(margin) or margin < 0:
        raise ConfigError(f"invalid margin: the points a candidate must beat the incumbent by "
                          f"must be a finite number >= 0, got {margin!r}")
    return margin if isinstance(margin, int | float) else float(margin)


#: The file of a study's folder that records what it was run with (:func:`study_record`).
RECORD = "study.json"

#: The files of a study's folder that describe its outcome, which a study of another
#: configuration would replace.
SUMMARY = ("study.md", "chosen.toml", "chosen.json")


def _stage_entry(stage: Stage) -> dict:
    return {"name": stage.name, "kind": stage.kind,
            "candidates": {name: list(overrides) for name, overrides in stage.candidates.items()}}


def study_record(base: ReproduceConfig, stages, margin: float) -> dict:
    """What a study is run with, as ``out/study.json`` records it: the starting configuration
    (``start``, with its fingerprint), the stages (name, kind, candidates) and the margin. The
    grid's ``checkpoint_seeds`` are left out: which runs keep a checkpoint changes no score."""
    start = to_dict(base)
    start.pop("checkpoint_seeds", None)
    return {"start": start, "start_fingerprint": fingerprint(base.base),
            "stages": [_stage_entry(stage) for stage in stages], "margin": margin}


def _legacy_record(out: Path) -> dict | None:
    """What a study folder from before ``study.json`` was run with, as far as its ``study.md``
    shows it (the first stage's incumbent folder is the starting configuration's fingerprint;
    the header names the seeds, hidden sizes and margin; its stages' headings, those done so
    far); ``{}`` where it shows none of it, None where the folder holds no ``study.md`` (no
    outcome that another study could replace)."""
    try:
        text = (out / "study.md").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return {}
    record: dict = {"partial_stages": True}
    folder = re.search(r"`runs/([0-9a-f]{12})`", text)
    if folder:
        record["start_fingerprint"] = folder.group(1)
    grid = re.search(r"over seeds (\[[-0-9, ]*\]) and hidden sizes (\[[-0-9, ]*\])", text)
    if grid:
        record["start"] = {"seeds": json.loads(grid.group(1)), "hidden_sizes": json.loads(grid.group(2))}
        if "`shared` stages score both models" in text:  # the only grid before study.json
            record["start"]["models"] = list(PAPER_MODELS)
    margin = re.search(r"beat the incumbent by more than ([0-9.]+) points", text)
    if margin:
        record["margin"] = float(margin.group(1))
    record["stages"] = [{"name": name, "kind": kind} for name, kind in
                        re.findall(r"^## (\S+) \((shared|layer)\)$", text, re.M)]
    return record if len(record) > 2 or record["stages"] else {}


def _base_fields(config: dict) -> dict:
    """A base configuration as the study compares it: read as today's code reads it, without
    the option tables of other model kinds (which its fingerprint ignores too)."""
    try:
        config = to_dict(from_dict(ExperimentConfig, with_legacy_fields(config)))
    except (ConfigError, TypeError, ValueError):  # fields since renamed: compared as stored
        pass
    model = config.get("model", {})
    return {**config, "model": {name: value for name, value in model.items()
                                if name not in KIND_OPTIONS or name == model.get("kind")}}


def _recorded_base(out: Path, recorded: dict) -> dict | None:
    """The recorded starting base: ``study.json``'s, else (a folder from before it) the one
    written by the runs of its first incumbent (``runs/<fingerprint>/config.toml``)."""
    base = recorded.get("start", {}).get("base")
    if isinstance(base, dict):
        return base
    with contextlib.suppress(OSError, ValueError, ConfigError):
        written = tomllib.loads((out / "runs" / recorded["start_fingerprint"] / "config.toml")
                                .read_text(encoding="utf-8-sig"))
        return written.get("base") if isinstance(written.get("base"), dict) else None
    return None


def _study_differences(out: Path, record: dict) -> list[str]:
    """What differs between the study ``record`` (:func:`study_record`) and the one ``out``
    holds (its ``study.json``, else :func:`_legacy_record`); [] for a folder without a study."""
    try:
        recorded = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        recorded = _legacy_record(out)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        recorded = {}
    if recorded is None:
        return []
    if not isinstance(recorded, dict) or not recorded:
        return [f"the configuration of its study cannot be read from {out / RECORD} or "
                f"{out / 'study.md'}"]
    differences = []
    if recorded.get("start_fingerprint", record["start_fingerprint"]) != record["start_fingerprint"]:
        base = _recorded_base(out, recorded)
        fields = field_differences(_base_fields(base), _base_fields(record["start"]["base"]), "base.") \
            if base is not None else []
        differences += fields or [f"starting configuration fingerprint "
                                  f"{recorded['start_fingerprint']} recorded, "
                                  f"{record['start_fingerprint']} now"]
    start = recorded.get("start", {})
    for name in ("models", "hidden_sizes", "seeds"):
        if name in start and start[name] != record["start"][name]:
            differences.append(f"{name}: {start[name]!r} recorded, {record['start'][name]!r} now")
    if "margin" in recorded and recorded["margin"] != record["margin"]:
        differences.append(f"margin: {recorded['margin']!r} recorded, {record['margin']!r} now")
    stages = recorded.get("stages", [])
    current = record["stages"]
    if recorded.get("partial_stages"):  # the headings of the stages done so far
        current = [{"name": s["name"], "kind": s["kind"]} for s in current[:len(stages)]]
    names = [s.get("name") for s in stages]
    if names != [s["name"] for s in current]:
        differences.append(f"stages: {', '.join(map(str, names))} recorded, "
                           f"{', '.join(s['name'] for s in record['stages'])} now")
    else:
        differences += [f"stage {new['name']}: its kind or candidates changed"
                        for old, new in zip(stages, current, strict=True) if old != new]
    return differences


def _changed_study_message(out: Path, differences: list[str]) -> str:
    shown = "; ".join(differences[:5]) + (f"; ... ({len(differences)} in all)"
                                           if len(differences) > 5 else "")
    return f"{out} holds a study made with another configuration than the one now given ({shown})"


def _set_aside_summary(out: Path) -> Path:
    """Move the study's outcome and record into ``out/superseded/<date-time>/`` (nothing is
    deleted); the record last, so that a kill in between leaves a folder still refused."""
    aside = make_folder(out / SUPERSEDED_DIR / time.strftime("%Y%m%d-%H%M%S"))  # never `out` anew
    for name in (*SUMMARY, RECORD):
        if (out / name).exists():
            (out / name).rename(aside / name)
    return aside


def _candidates(stage: Stage, incumbent: ReproduceConfig) -> tuple[str, dict[str, tuple]]:
    """The incumbent's label and the stage's other candidates (name -> (overrides,
    configuration)); a candidate that leaves the incumbent unchanged labels it instead. Each
    candidate is checked on ``incumbent`` (:func:`_check_stage`)."""
    own = fingerprint(incumbent.base)
    label, others = None, {}
    for name, overrides, config in _check_stage(stage, incumbent):
        if fingerprint(config.base) == own:
            label = label or name
        else:
            others[name] = (overrides, config)
    return label or "incumbent", others


def _checked_candidates(stage: Stage, incumbent: ReproduceConfig, trail, out: Path, *, jobs,
                        executor, data_dir, cache_dir) -> tuple[str, dict[str, tuple]]:
    """:func:`_candidates` of a stage whose incumbent an earlier stage chose (``trail``: the
    stages done, with their choices), with the preflight of its candidates' runs
    (:func:`_preflight`), before the stage trains anything: :func:`run_study` checked every
    candidate before any work, but on the starting configuration, where one may be valid
    (weight decay 150 at lr 1e-3) and not with the incumbent (lr 0.01). Only the
    configuration's own checks ran again on the incumbent, not the study's
    (:func:`_check_stage`: a field the data gives, the data's validation split) nor the
    preflight. A :class:`ConfigError` names the stage, the candidate and the earlier choices,
    and says how to go on: the earlier stages have trained and written study.json."""
    try:
        label, others = _candidates(stage, incumbent)
        _preflight([(f"stage {stage.name}, candidate {name}", config)
                    for name, (_, config) in others.items()],
                   jobs, executor, out, data_dir, cache_dir)
    except ConfigError as error:
        chosen = ", ".join(f"{done.name} = {best}" for done, best in trail)
        raise ConfigError(f"{error} (checked before the stage trained anything, on the "
                          f"configuration the stages before it chose: {chosen}; those stages' "
                          f"runs and study.md stay in {out}: correct the stage and run the "
                          f"study again with --rerun-changed, which sets their summary aside "
                          f"and reuses the runs)") from None
    return label, others


def _exact_margin(margin: float) -> Fraction:
    """``margin`` as the number written (0.1 is 1/10, not the binary float just above it)."""
    if isinstance(margin, numbers.Rational):
        return Fraction(margin)
    return Fraction(repr(float(margin)))


def _choose(scores: dict, incumbent: str, margin: float) -> str:
    """The best candidate of those that beat the incumbent by more than ``margin``, else the
    incumbent; equal scores go to the name that sorts first (the listing order never counts).
    ``scores`` are compared as given: exact ones (:func:`_score`) make both rules exact."""
    margin = _exact_margin(margin)
    beat = [name for name in scores if name != incumbent
            and scores[name] > scores[incumbent] + margin]
    return min(beat, key=lambda name: (-scores[name], name)) if beat else incumbent


def _run_study(out: Path, *, base, stages, margin, jobs, executor, data_dir, cache_dir, progress,
               echo, rerun_changed=False) -> ReproduceConfig:
    incumbent = copy.deepcopy(base)
    models = list(incumbent.models)  # the study's, kept by every stage's incumbent
    lines = [f"# Validation study ({len(stages)} stage{'s' if len(stages) != 1 else ''})", "",
             _protocol(incumbent, margin, stages), ""]
    trail = []
    start = fingerprint(base.base)
    for stage in stages:
        if fingerprint(incumbent.base) == start:  # its candidates checked before any work
            label, others = _candidates(stage, incumbent)
        else:
            label, others = _checked_candidates(stage, incumbent, trail, out, jobs=jobs,
                                                executor=executor, data_dir=data_dir,
                                                cache_dir=cache_dir)
        first = out / "runs" / fingerprint(incumbent.base)
        entries = {label: (None, incumbent, first)}
        for name, (overrides, config) in others.items():
            folder = out / "runs" / fingerprint(config.base)
            if stage.kind == "layer":  # FCNN has no PDE layer: the incumbent's runs serve
                config.models = ["eqpdenet"]
                if any(r.get("model") != "eqpdenet" for r in read_jsonl(folder / "results.jsonl")):
                    config.models = list(incumbent.models)  # its config.toml keeps listing them
            entries[name] = (overrides, config, folder)
        results = {}
        for name, (overrides, config, folder) in entries.items():
            echo(f"study: {stage.name} / {name} -> {folder}")
            reproduce(config, folder, jobs=jobs, executor=executor, data_dir=data_dir,
                      cache_dir=cache_dir, progress=progress, echo=echo,
                      rerun_changed=rerun_changed)
            if stage.kind == "layer" and overrides is not None:
                records = (_grid_records(folder, config, ["eqpdenet"])
                           + _grid_records(first, incumbent, [m for m in incumbent.models
                                                              if m != "eqpdenet"]))
            else:
                records = _grid_records(folder, config, config.models)
            results[name] = _score(records, stage.kind)
        best = _choose({name: result["score"] for name, result in results.items()}, label, margin)
        incumbent = copy.deepcopy(entries[best][1])
        incumbent.models = list(models)  # a layer candidate trained EqPdeNet alone
        trail.append((stage, best))
        lines += [f"## {stage.name} ({stage.kind})", "", stage.question, "",
                  "| candidate | overrides | EqPdeNet | FCNN | score | runs | folder |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for name, (overrides, _, folder) in entries.items():
            score = results[name]
            cells = [f"**{name}**" if name == best else name,
                     "(incumbent)" if overrides is None else "<br>".join(f"`{o}`" for o in overrides),
                     f"{score['per_model'].get('eqpdenet', float('nan')):.2f}",
                     f"{score['per_model'].get('fcnn', float('nan')):.2f}",
                     f"{score['shown']:.2f}",
                     f"{score['runs']}" + (f" ({score['failed']} failed)" if score["failed"] else ""),
                     f"`{folder.relative_to(out)}`"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Chosen: **{best}**.", ""]
        atomic_write(out / "study.md", ("\n".join(lines) + "\n").encode())
    lines += ["## Chosen configuration", "", "```toml", to_toml(incumbent).rstrip(), "```", "",
              "Choices: " + ", ".join(f"{s.name} = {b}" for s, b in trail), ""]
    # One set (all or none): a failed write (a full disk) never leaves the new summary beside
    # the choice of an earlier study, or the reverse.
    write_set(out, {"study.md": ("\n".join(lines) + "\n").encode(),
                    "chosen.toml": to_toml(incumbent).encode(),
                    "chosen.json": json.dumps(to_dict(incumbent), indent=1).encode()})
    return from_dict(ReproduceConfig, to_dict(incumbent))
