"""Training and evaluation of one run, checkpoints, provenance.

One *run* trains one model (any registered kind, any hidden size and PDE configuration) with one
seed on ROTMNIST and evaluates it on scenarios (``test``, ``iso``, ``sca``), the scenario draws
seeded by the same seed (:func:`run_experiment`). Sweeps of runs are in
:mod:`eqpdenet.app.sweeps`.

Determinism: the seed fixes parameter initialisation (``torch.manual_seed``, the seeding and the
draws of the model's construction under :data:`~eqpdenet.process_state.GLOBAL_RNG_LOCK`, so that
runs in threads of one process each get their seed's weights), the mini-batch order (a dedicated
``torch.Generator``) and the scenario draws; with the same thread count and backend the same
command gives the same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import io
import json
import math
import os
import pickle
import platform
import re
import subprocess
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from .. import __version__
from ..analysis.predictions import EVALUATION_BATCH, check_classes, own_code_culprit, predictions
from ..data.augment import augment_generator, blur_generator, relative_change
from ..data.datasets import (
    DATASETS,
    ImageDataset,
    is_built_in,
    load_dataset,
    loader_name,
    mnist_family,
)
from ..data.rotmnist import load_rotmnist
from ..data.scenarios import apply_scenario
from ..errors import (
    CheckpointError,
    ConfigError,
    InputError,
    InputTypeError,
    NonFiniteStateError,
    warn_at_caller,
)
from ..kernels import resolve_backend
from ..kernels.cpu import cpu_name, extension_states
from ..models import MODELS, _constructor_options, count_parameters
from ..models.lifted_pde import refuse_unstable_steps
from ..process_state import GLOBAL_RNG_LOCK
from . import accelerate
from .batches import mini_batches
from .checkpoints import describe_non_finite, non_finite_tensors
from .config import (  # LATER_FIELDS lives there: config reads it to load saved files
    KIND_OPTIONS,
    LATER_FIELDS,
    MAX_INPUT_MEAN,
    MAX_INPUT_STD,
    MIN_INPUT_STD,
    DataConfig,
    ExperimentConfig,
    TrainConfig,
    build_model,
    check_augment_for_image,
    data_resolved_fields,
    fields_replaced_by_data,
    fields_without_effect,
    from_dict,
    require_decay_shrinks,
    to_dict,
    to_toml,
)
from .files import atomic_write
from .optim import LR_SCHEDULES, OPTIMIZERS
from .plugins import is_unregistered, unregistered_hint
from .preflight import check_split_sizes, preflight, resolve_device
from .progress import progress as progress_of
from .progress import within

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONDITIONAL_FIELDS",
    "LATER_FIELDS",
    "Data",
    "Split",
    "environment",
    "fingerprint",
    "accuracy",
    "data_parallel",
    "data_parallel_group",
    "join_timeout",
    "torchrun_environment",
    "data_resolved_fields",
    "evaluate_scenarios",
    "load_checkpoint",
    "prepare_data",
    "resolve_for_data",
    "run_experiment",
    "save_checkpoint",
    "train_model",
    "with_legacy_fields",
    "without_inert_fields",
]


@dataclass
class Split:
    """Images ``(N, C, H, W)`` float32 in [0, 1] and labels ``(N,)`` int64.

    Shapes and kinds are checked when a split is made (an :class:`~eqpdenet.errors.InputError`
    naming the field): labels ``(N, 1)`` or fewer labels than images otherwise trained on
    without a word (``cross_entropy`` and the count of images read the labels alone) or failed
    deep in the loss; images need at least one channel and one pixel. Integer labels of another
    dtype (``int32``, ``int16``, ``uint8``) are converted to ``int64``, as a data set's are when
    it is loaded (``cross_entropy`` took ``int32`` labels for a raw error), and floating images
    of another dtype (``float64``, ``float16``, ``bfloat16``) to ``float32``, as a data file's
    float pixels are (float64 images stopped :func:`run_experiment` at the first forward,
    advising a conversion of a model it builds itself); ``float32`` images are kept as they are,
    the same tensor (a float64 model of one's own given to :func:`train_model` takes them
    converted up, float32 values). Values (finite images, labels within a model's classes, two
    classes or more to train on) are checked where a split is used: :func:`train_model`."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or not isinstance(self.labels, Tensor):
            raise InputTypeError(f"a split's images and labels must be tensors, got "
                                 f"{type(self.images).__name__} and {type(self.labels).__name__}")
        if self.images.dim() != 4:
            raise InputError(f"a split's images must be (N, C, H, W), got shape "
                             f"{tuple(self.images.shape)}")
        if not self.images.is_floating_point():
            raise InputTypeError(f"a split's images must be floating point in [0, 1], got "
                                 f"{self.images.dtype} (uint8 pixels: images.float() / 255)")
        if (self.labels.dtype == torch.bool or self.labels.is_floating_point()
                or self.labels.is_complex()):
            raise InputTypeError(f"a split's labels must be integer classes, got "
                                 f"{self.labels.dtype}")
        if tuple(self.labels.shape) != (len(self.images),):
            raise InputError(f"a split's labels must have shape ({len(self.images)},), one class "
                             f"per image, got {tuple(self.labels.shape)}")
        if min(self.images.shape[1:]) < 1:
            # a (C, H, W) of zero size became model.in_channels or image_size 0, which the
            # checkpoint's configuration could not be read back with
            raise InputError(f"a split's images must have at least one channel and one pixel, "
                             f"got shape {tuple(self.images.shape)} (N, C, H, W)")
        if self.labels.dtype != torch.int64:
            self.labels = self.labels.long()  # the one dtype cross_entropy takes for classes
        if self.images.dtype != torch.float32:
            # the dtype every model built here computes in, and a file's float pixels are read
            # in: float64 images reached the first forward and were refused there
            self.images = self.images.to(torch.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Split:
        return self if not n or n >= len(self) else Split(self.images[:n], self.labels[:n])


class _PixelStatistic:
    """A field of :class:`Data` holding a statistic of the training split's pixels: the value
    given, else (None, the default) computed when first read, in float64, and kept
    (:meth:`Data._pixel_statistics`)."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, data, owner=None):
        if data is None:
            return None  # the dataclass's default: computed when read
        if data.__dict__.get(self.name) is None:
            data._pixel_statistics()
        return data.__dict__[self.name]

    def __set__(self, data, value) -> None:
        data.__dict__[self.name] = None if value is None else float(value)


@dataclass
class Data:
    """The splits of one run (``data["train"]`` etc. also work) and facts about the data set.

    Attributes:
        train, validation, test: the splits (``validation`` may be empty).
        name: the data set (:attr:`eqpdenet.data.datasets.ImageDataset.name`).
        classes: number of classes.
        pixel_mean, pixel_std: statistics of the training split's pixels (validation excluded),
            computed in float64 when first read unless given (training does not read them:
            the float64 copy of the training images they are computed from, twice the float32
            set, is made only for a reader).
        info: how the data set was made.
    """

    train: Split
    validation: Split
    test: Split
    name: str = ""
    classes: int = 10
    pixel_mean: float = _PixelStatistic()
    pixel_std: float = _PixelStatistic()
    info: dict = field(default_factory=dict)

    def _pixel_statistics(self) -> None:
        """Set the statistics not given: the mean and std of the training split's pixels, of
        one float64 copy of them (the values :func:`prepare_data` computed at once before)."""
        pixels = self.train.images.double()
        for name, value in (("pixel_mean", pixels.mean()), ("pixel_std", pixels.std())):
            if self.__dict__.get(name) is None:
                self.__dict__[name] = float(value)

    def __getitem__(self, key: str) -> Split:
        if key not in ("train", "validation", "test"):
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        return self[key] if key in ("train", "validation", "test") else default

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.train.images.shape[1:])


def prepare_data(config: DataConfig, data_dir=None, cache_dir=None) -> Data:
    """The data set of ``config`` as training, validation (the last ``config.validation``
    training images; may be empty) and test splits. The built-in ROTMNIST is made with
    ``data.source`` and ``data.rotation_centre``; any other set, ``"rotmnist"`` registered anew
    by a plugin included (:func:`~eqpdenet.data.datasets.is_built_in`), is its loader's or
    file's (:func:`~eqpdenet.data.datasets.load_dataset`)."""
    # by the one rule of a built-in name (round 17): a plugin's 'rotmnist' was ignored here,
    # the built-in ROTMNIST generated and trained on in its place without a word
    if config.dataset == "rotmnist" and is_built_in(config.dataset):
        dataset = _rotmnist(config, data_dir, cache_dir)
    else:
        dataset = load_dataset(config.dataset, data_dir=data_dir, cache_dir=cache_dir,
                               seed=config.rotmnist_seed, rotated=config.rotated,
                               rotation_centre=config.rotation_centre)
    train_x, train_y = dataset.train_images, dataset.train_labels
    keep = check_split_sizes(config, len(train_x), len(dataset.test_images), dataset.name)
    held = f" ({config.validation} held out for validation)" if config.validation else ""
    train = Split(train_x[:keep], train_y[:keep]).head(config.train_subset)
    test = Split(dataset.test_images, dataset.test_labels).head(config.test_subset)
    validation = Split(train_x[keep:], train_y[keep:])
    _check_split_classes(config, dataset, train, test, held, validation)
    train._classes_checked = True  # checked above, with its splits: not again as API splits
    # The pixel statistics are computed when read (Data.pixel_mean): their float64 copy of the
    # training images took twice the float32 set, every time a data set was loaded.
    info = dict(dataset.info)
    if (loader := loader_name(config.dataset)) is not None:
        info["loader"] = loader  # sweeps.changed_runs: another loader under the name since
    return Data(train=train, validation=validation, test=test,
                name=dataset.name, classes=dataset.classes, info=info)


#: A validation split of fewer images is warned about (:func:`_check_split_classes`): its
#: accuracy moves in steps of 10 points or more, so epochs (and a study's candidates) tie, and
#: choosing by it is chance.
MIN_VALIDATION_IMAGES = 10


def _check_split_classes(config: DataConfig, dataset: ImageDataset, train: Split, test: Split,
                         held: str, validation: Split | None = None) -> None:
    """The splits a run uses, not only the file, must hold the classes: ``train_subset``,
    ``validation`` and ``test_subset`` take the first (last) images, which in a file sorted by
    class are one class. One class to train on is refused (it trains to "100 %"); classes
    missing from the training split, a test split of one class, and a validation split of one
    class or of fewer than :data:`MIN_VALIDATION_IMAGES` images (selecting on it,
    ``train.select_on_validation`` or a study's choice, is meaningless) are warned about. The
    rule is the same for a file, an IDX folder and a registered set (a file whose labels leave a
    class held by no split is refused when it is read, ``datasets._classes``)."""
    # a registered set is no file (it may be made in memory): its hint says "data set"
    source = "data set" if config.dataset in DATASETS else "file"
    hint = f"is the {source} sorted by class? shuffle it"
    name = dataset.name
    present = torch.unique(train.labels).tolist()
    if config.train_subset:
        subject, s = f"the first {len(train)} training images of {name}{held}", ""
    else:
        subject, s = f"the training split of {name}{held}", "s"
    if len(present) < 2:
        fields = [field for field, value in (("data.train_subset", config.train_subset),
                                             ("data.validation", config.validation)) if value]
        named = " and ".join(fields) or "data.dataset"
        raise ConfigError(f"invalid config: {named}: {subject} hold{s} class {present[0]} only, "
                          f"and a classifier needs two ({hint}, or change {named})")
    if len(present) < dataset.classes:
        shown = _lacking(present, dataset.classes)
        lacking = set(range(dataset.classes)) - set(present)
        if not lacking & set(torch.unique(dataset.train_labels).tolist()):
            # the data set's own training images hold none of them: no order of its images,
            # and no other subset or validation size, would give the model any to learn from
            why = f"the {source}'s training images hold none of them: add some to train on them"
        else:
            why = hint
        warn_at_caller(f"{subject} lack{s} class(es) {shown} of its {dataset.classes}: the model "
                       f"will not learn them ({why})", RuntimeWarning)
    tested = torch.unique(test.labels).tolist()
    if len(tested) < 2:
        subject = (f"the first {len(test)} test images of {name} hold" if config.test_subset
                   else f"the test split of {name} holds")
        warn_at_caller(f"{subject} class {tested[0]} only: accuracies measure that class alone "
                       f"({hint})", RuntimeWarning)
    if validation is not None and config.validation:
        _check_validation_split(validation, name, hint)


def _lacking(present: list[int], classes: int) -> str:
    """The classes of ``range(classes)`` not in ``present``, the first ten, in words."""
    lacking = sorted(set(range(classes)) - set(present))
    return ", ".join(map(str, lacking[:10])) + (", ..." if len(lacking) > 10 else "")


def _check_given_classes(data, classes: int | None) -> None:
    """:func:`_check_split_classes` for splits given through the API (:func:`train_model`,
    :func:`run_experiment`, :func:`resolve_for_data` with a dict or a :class:`Data` of one's
    own; those of :func:`prepare_data` were checked there, and are not again): a training split
    of one class is an :class:`~eqpdenet.errors.InputError` (it trained to "100 %"); classes of
    ``classes`` (None: not known yet, a given model's) missing from the training split, a test
    split of one class and a validation split of one class or of fewer than
    :data:`MIN_VALIDATION_IMAGES` images are a ``RuntimeWarning`` each. Done once per training
    split (:func:`run_experiment` resolves, then trains)."""
    train = data["train"]
    # Once per training split and what it is checked with (the other splits, the classes):
    # run_experiment resolves, then trains, with the same; a later call with another test
    # split or class count is checked again (round 14, review: a flag hid its warnings).
    checked = getattr(train, "_classes_checked", None)
    key = (id(data.get("test") if hasattr(data, "get") else None),
           id(data.get("validation") if hasattr(data, "get") else None), classes)
    if checked is True or checked == key or len(train) == 0:
        return  # an empty training split: _check_training_splits names it
    name = getattr(data, "name", "") or "the data given"
    hint = "is the data sorted by class? shuffle it"
    present = torch.unique(train.labels).tolist()
    if len(present) < 2:
        raise InputError(f"the training split of {name} holds class {present[0]} only, and a "
                         f"classifier needs two ({hint})")
    if classes is not None and len(present) < classes:
        shown = _lacking(present, classes)
        given = getattr(data, "classes", None) is not None
        why = ("" if given else "; without Data.classes the model's classes are the largest "
               "label + 1: number the classes 0 ... K - 1")
        warn_at_caller(f"the training split of {name} lacks class(es) {shown} of its {classes}: "
                       f"the model will not learn them ({hint}{why})", RuntimeWarning)
    test = data.get("test") if hasattr(data, "get") else None
    if test is not None and len(test):
        tested = torch.unique(test.labels).tolist()
        if len(tested) < 2:
            warn_at_caller(f"the test split of {name} holds class {tested[0]} only: accuracies "
                           f"measure that class alone ({hint})", RuntimeWarning)
    validation = data.get("validation") if hasattr(data, "get") else None
    if validation is not None and len(validation):
        _check_validation_split(validation, name, hint, given=True)
    if isinstance(train, Split):
        train._classes_checked = key


def _check_validation_split(validation: Split, name: str, hint: str, given: bool = False) -> None:
    """A ``RuntimeWarning`` where the validation split (the last ``data.validation`` training
    images of ``name``; ``given``: a split given through the API) holds one class, or fewer
    than :data:`MIN_VALIDATION_IMAGES` images: its accuracy is that class's alone, or moves in
    steps of 10 points or more, and selecting an epoch (``train.select_on_validation``) or a
    study's candidate on it is meaningless."""
    count, held = len(validation), torch.unique(validation.labels).tolist()
    if count >= MIN_VALIDATION_IMAGES and len(held) >= 2:
        return
    if count < MIN_VALIDATION_IMAGES:
        what = f"{count} image{'s' if count != 1 else ''} only" + (
            f", of class {held[0]}" if len(held) == 1 else "")
        why = f"its accuracy moves in steps of {100 / count:.3g} points"
        remedy = f"hold out {MIN_VALIDATION_IMAGES} images or more"
    else:
        what, why, remedy = (f"class {held[0]} only", "its accuracy measures that class alone",
                             hint if given else f"{hint}, or change data.validation")
    size = "" if given else f" (data.validation = {count})"
    warn_at_caller(f"the validation split of {name}{size} holds {what}: "
                   f"{why}, and selecting on it (train.select_on_validation, a study's choice) is "
                   f"meaningless ({remedy})", RuntimeWarning)


def _rotmnist(config: DataConfig, data_dir, cache_dir) -> ImageDataset:
    rot = load_rotmnist(data_dir=data_dir, cache_dir=cache_dir, seed=config.rotmnist_seed,
                        source=config.source, rotation_centre=config.rotation_centre)
    # data.rotated with ROTMNIST is refused by DataConfig, before any data is made
    return ImageDataset("rotmnist", rot.train_images, rot.train_labels, rot.test_images,
                        rot.test_labels, classes=10, info={"source": rot.source})


def compiled_for_training(forward: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``forward`` through ``torch.compile`` with static shapes (``train.compile``).

    With dynamic shapes (``dynamic=True``, or the automatic dynamic shapes Dynamo turns to when a
    frame meets a second size: the model's helpers run at every stage's size) Inductor of torch
    2.13 fails to compile the deep PDE model and the lifted model's reference path, "cannot
    determine truth value of Relational" while ordering the strides of a view saved for the
    backward pass (pytorch/pytorch#185510, open). With static shapes it compiles once per size
    met: the batch size and the last, shorter batch, at each stage's map size.

    Each call compiles for itself, in a recompilation region of its own (``torch.compile``'s
    ``isolate_recompiles``, where torch has it). Dynamo keeps what it compiled on the code
    objects (``FCNN.forward``, ``check_model_input``, the frames resumed after a graph break),
    which every model of a kind shares, and counts ``recompile_limit`` (8) per code object: the
    runs of one process (``run_sweep``, ``reproduce --jobs 1``) filled it, and from about the
    fourth run on every frame trained eagerly while the record said ``compile``, with one log
    line. A region's limit counts its own compilations only, and its lookups use its own code and
    that of plain ``torch.compile`` calls, never another run's (a run of the same shapes as an
    earlier one traces again; Inductor's cache serves its code). ``torch._dynamo.reset()`` would
    have done it too, but it drops every compiled function of the process, the user's own
    included, and the CUDA-graph trees. The step returned reports the frames that fell back to
    eager nonetheless (:meth:`_CompiledStep.fallbacks`: ``train_model`` warns and records them)
    and releases the run's compiled code (:meth:`_CompiledStep.release`).
    """
    return _CompiledStep(forward)


#: ``torch.compile`` takes ``isolate_recompiles`` (torch 2.13; without it, every run shares one
#: recompilation limit per code object, and a run past it is warned about, not prevented).
_ISOLATES = "isolate_recompiles" in inspect.signature(torch.compile).parameters


class _CompiledStep:
    """The training forward of :func:`compiled_for_training`: called as ``forward(images)``."""

    def __init__(self, forward: Callable[[Tensor], Tensor]):
        options = {"isolate_recompiles": True} if _ISOLATES else {}
        self.compiled = torch.compile(forward, dynamic=False, **options)
        # the region's number: on the function compiled, or on a compiled module's forward
        region = getattr(self.compiled, "_isolate_recompiles_id", None)
        if region is None:
            region = getattr(getattr(self.compiled, "forward", None), "_isolate_recompiles_id", -1)
        self.region = region if _ISOLATES and isinstance(region, int) else -1
        self._reported = _dynamo_counts("unimplemented")

    def __call__(self, images: Tensor) -> Tensor:
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            return self.compiled(images)

    def fallbacks(self) -> list[str]:
        """The causes, one line each, of the frames that Dynamo left to eager PyTorch for good
        since the last call (since the step was made, at first): a frame that reached
        ``recompile_limit`` (or ``accumulated_recompile_limit``) runs uncompiled for every input
        its compiled code does not fit, and Dynamo says so in one log line. It counts each in
        ``counters["unimplemented"]`` (the counters of every compiled function of the process),
        among the messages of what it cannot trace, where it breaks the graph or does not inline
        a call and compiles the rest: the frames of the PDE models have several such, in every
        run, and those are not counted here."""
        counts = _dynamo_counts("unimplemented")
        causes = [_fallback_cause(message) for message, count in counts.items()
                  if _LIMIT_HIT.search(message)
                  for _ in range(count - self._reported.get(message, 0))]
        self._reported = counts
        return causes

    def release(self) -> None:
        """Drop the code compiled in this step's region, where nothing else is cached on the same
        code object (a user's own compiled function sharing it keeps its code, and this run's
        with it): the region is never called again, and Dynamo's accumulated limit
        (``accumulated_recompile_limit``, 256 entries of a code object over all regions) and
        the memory of a long sweep in one process stay those of one run."""
        if self.region < 0:
            return
        try:
            from torch._dynamo import convert_frame, eval_frame
            seen = list(convert_frame.input_codes.seen)
            ours = eval_frame._get_cache_entries_for_region
            total = eval_frame._get_total_cache_entry_count
        except (ImportError, AttributeError):  # a torch without these: kept, as before
            return
        with convert_frame.compile_lock:
            for reference in seen:
                code = reference()
                if code is None:
                    continue
                count = len(ours(code, self.region))
                if count and count == total(code):
                    torch._dynamo.reset_code(code)


#: Dynamo's message for a frame past its recompilation limit ("Dynamo recompile limit exceeded";
#: "cache_size_limit" in the torch releases before the limit was renamed).
_LIMIT_HIT = re.compile(r"recompile[ _]limit|cache[ _]size[ _]limit", re.IGNORECASE)


def _dynamo_counts(category: str) -> dict[str, int]:
    """A copy of ``torch._dynamo.utils.counters[category]``."""
    from torch._dynamo.utils import counters

    return dict(counters[category])


def _fallback_cause(message: str) -> str:
    """The first line of Dynamo's message for a frame past its limit, with the limit it names."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    cause = lines[0] if lines else "unknown cause"
    limit = re.search(r"exceeding the (\w+) cache size limit \(currently set to (\d+)\)", message)
    if limit:
        cause += f" (torch._dynamo.config.{limit.group(1)} = {limit.group(2)})"
    return cause


def _warn_compile_fallbacks(forward, record: dict, epoch: int) -> None:
    """``train.compile``: a ``RuntimeWarning`` and ``record["compile_fallbacks"]`` (``"<n>
    frame(s): <cause>"`` for each cause) where frames of the compiled forward fell back to eager
    PyTorch during ``epoch`` (0-based): the run trains on, more slowly, but not wholly compiled
    as its record's ``compile`` says (:meth:`_CompiledStep.fallbacks`)."""
    fallbacks = getattr(forward, "fallbacks", None)
    causes = fallbacks() if fallbacks is not None else []
    if not causes:
        return
    record["compile_fallbacks"] = [f"{causes.count(cause)} frame(s): {cause}"
                                   for cause in dict.fromkeys(causes)]
    warn_at_caller(f"train.compile: {len(causes)} frame(s) of the compiled forward fell back to "
                   f"eager PyTorch in epoch {epoch + 1}: {'; '.join(dict.fromkeys(causes))}. The "
                   f"run trains on, but not wholly compiled as train.compile = true says "
                   f"(TORCH_LOGS=recompiles names the frames); its history records it under "
                   f"'compile_fallbacks'", RuntimeWarning)


def _release_compiled(forward) -> None:
    """The run's compiled code dropped (:meth:`_CompiledStep.release`), where it has any."""
    release = getattr(forward, "release", None)
    if release is not None:
        release()


def resolve_for_data(config: ExperimentConfig, data: Data | dict) -> ExperimentConfig:
    """``config`` with the model's input size, channels and classes taken from the data, and its
    standardisation resolved (``model.standardize``: ``"train"`` writes the training split's
    pixel mean and std into ``input_mean, input_std``); the result is what a checkpoint stores.
    The fields it sets: :func:`data_resolved_fields`; those ``config`` sets away from their
    defaults and this replaces are a ``RuntimeWarning`` each, here, where the configuration as
    given is still known (:func:`~eqpdenet.app.config.fields_replaced_by_data`:
    :func:`run_experiment` resolves before it trains, so that :func:`train_model` sees the
    resolved configuration only).
    """
    given, config = config, copy.deepcopy(config)
    model = config.model
    channels, height, width = data["train"].images.shape[1:]
    if height != width:
        raise ConfigError(f"the models take square images; the data set has {height}x{width}")
    model.image_size, model.in_channels = int(height), int(channels)
    classes = getattr(data, "classes", None)
    if classes is None:
        # the largest label of the splits a model learns from: the test split must not shape
        # the model (its labels would change the training), and a dict may have none
        labels = torch.cat([data[name].labels for name in ("train", "validation")
                            if data.get(name) is not None])
        classes = int(labels.max()) + 1 if len(labels) else 1
    model.classes = int(classes)
    # what a model learns from: labels within the classes (a negative label made the classes
    # of a dict 0), and two classes or more (one trained to "100 %" without a word)
    for name in ("train", "validation"):
        split = data.get(name) if hasattr(data, "get") else None
        if split is not None and len(split):
            _check_split_labels(data, name, model.classes)
    _check_given_classes(data, model.classes)
    standardize = model.standardize
    if standardize == "auto":
        # Decided by the data given where it names itself (a Data of one's own passed with a
        # default configuration, whose data.dataset is 'rotmnist', was standardised with
        # MNIST's mean and std), else by the configuration's data set; by the rule
        # data_resolved_fields follows (a built-in name replaced by a plugin is the user's).
        # Data naming no set (a dict, Data(name="")) under the default data.dataset takes
        # MNIST's constants without a warning (round 20, decided and said in docs/data.md:
        # pixels in [0, 1] stay within MNIST's own standardised range).
        name = getattr(data, "name", "") or config.data.dataset
        family = mnist_family(name.removesuffix("-rotated"))
        standardize = "fixed" if family else "train"
    if standardize == "train":
        # before the statistics are computed from them: inf pixels gave an inf mean, refused
        # as a TOML value, not as the data's fault
        _check_training_splits(data, None, ("train",))
        pixels = data["train"].images.double()
        mean = float(pixels.mean())
        # a configuration that holds the fallback already (run_experiment resolves, then
        # train_model again) was warned about when it was resolved
        warned = (given.model.input_mean, given.model.input_std) == (mean, 1.0)
        model.input_mean, model.input_std = _training_statistics(
            data, mean, float(pixels.std()), warn=not warned)
    try:  # what load_checkpoint checks: every checkpoint written from this can be read back
        model.__post_init__()
    except ConfigError as error:
        raise InputError(f"{getattr(data, 'name', '') or 'the data given'} gives a model "
                         f"configuration that a checkpoint could not be read back with: "
                         f"{error}") from None
    for line in fields_replaced_by_data(given, config):
        warn_at_caller(line, RuntimeWarning)
    return config


def _training_statistics(data, mean: float, std: float,
                         warn: bool = True) -> tuple[float, float]:
    """``model.input_mean, input_std`` from the training pixels' ``mean`` and ``std``, within
    the bounds a configuration takes (:data:`~eqpdenet.app.config.MIN_INPUT_STD` ...): a std
    below ``MIN_INPUT_STD`` (nearly constant images; 0 for constant ones) is 1, so that the
    pixels are only shifted, with a ``RuntimeWarning`` where it is not 0 (a std of 1.5e-9
    trained, then its checkpoint could not be read back); a mean or std beyond the bounds
    (pixels far outside [0, 1]) is an :class:`~eqpdenet.errors.InputError` naming the data.
    ``warn``: False where the fallback was warned about already."""
    name = getattr(data, "name", "") or "the data given"
    if abs(mean) > MAX_INPUT_MEAN or std > MAX_INPUT_STD:
        raise InputError(f"the training images of {name} have pixel mean {mean:.3g} and std "
                         f"{std:.3g}, beyond what model.input_mean and input_std take "
                         f"(±{MAX_INPUT_MEAN:g}, at most {MAX_INPUT_STD:g}): rescale them "
                         f"(eqpdenet reads images in [0, 1]; uint8 pixels: images.float() / 255)")
    if std < MIN_INPUT_STD:
        if std > 0 and warn:
            warn_at_caller(f"the training images of {name} are nearly constant (pixel std "
                           f"{std:.3g}, below the {MIN_INPUT_STD:g} model.input_std takes): "
                           f"standardised with input_std = 1, as constant images are (the "
                           f"pixels shifted by their mean only); they carry almost nothing to "
                           f"learn from", RuntimeWarning)
        std = 1.0
    return mean, std


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = EVALUATION_BATCH) -> Tensor:
    """Predicted classes ``(N,)`` for images ``(N, C, H, W)``, in evaluation mode; ``-1``
    (:data:`~eqpdenet.analysis.predictions.NO_PREDICTION`) for an image on which the model's PDE
    blows up (:func:`~eqpdenet.analysis.predictions.predictions`: the others are scored, and
    a model that blows up on every image raises its error)."""
    return predictions(model, images, batch_size)[0]


def accuracy(model: nn.Module, split: Split, batch_size: int = EVALUATION_BATCH,
             failures: list | None = None) -> float:
    """Fraction of correctly classified digits, in [0, 1]; an image without a prediction
    (:func:`predict`) is an error, and their number is appended to ``failures`` if given.

    Counted by :func:`~eqpdenet.analysis.predictions.correct_predictions`, the rule of every
    accuracy of :mod:`eqpdenet.analysis`: labels one integer class per image, shape ``(N,)``
    for images ``(N, C, H, W)``, each a class of the model (``0 ... K - 1`` for its logits
    ``(N, K)``), and logits ``(n, K)`` for a batch of ``n``; anything else is an
    :class:`~eqpdenet.errors.InputError` (labels ``(N, 1)`` or ``(1,)``, logits
    ``(N, K, 1, 1)`` were broadcast into ``N x N`` comparisons). The model is evaluated in
    evaluation mode, every submodule's own mode restored afterwards."""
    from ..analysis.predictions import correct_predictions

    if len(split.images) == 0 and len(split.labels) == 0:
        raise ValueError("cannot measure accuracy on an empty split")
    correct, failed = correct_predictions(model, split.images, split.labels, batch_size)
    if failures is not None:
        failures.append(int(failed.sum()))
    return float(correct.double().mean())


def _progress(iterable, enabled: bool, **kwargs):
    """:func:`eqpdenet.app.progress.progress`: a bar on a terminal, a line per item in a log."""
    return progress_of(iterable, enabled, **kwargs)


def data_parallel() -> tuple[int, int] | None:
    """``(rank, world size)`` when this process is one of several of an initialised
    ``torch.distributed`` process group (``eqpdenet train --distributed`` under torchrun), else
    None. :func:`train_model` then trains with DistributedDataParallel."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized() \
            and distributed.get_world_size() > 1:
        return distributed.get_rank(), distributed.get_world_size()
    return None


#: How long the ranks of :func:`data_parallel_group` wait for each other by default, in seconds
#: (``EQPDENET_JOIN_TIMEOUT`` sets another): long enough for ranks started by hand on several
#: machines, where torch's own 30 minutes looked like a hang.
JOIN_SECONDS = 300.0

#: The environment variable that sets how long the ranks wait for each other, in seconds.
JOIN_VARIABLE = "EQPDENET_JOIN_TIMEOUT"

#: How often a waiting rank looks again, in seconds; a signal (Ctrl-C, SIGTERM) is handled
#: between two looks.
_JOIN_POLL = 0.1

#: The longest a single request to rank 0's store may take during the join: rank 0 stopped
#: (SIGSTOP, a debugger) must not hold a rank deaf to signals for torch's 30 minutes.
_JOIN_REQUEST_SECONDS = 10.0


@dataclass(frozen=True)
class TorchrunEnvironment:
    """What torchrun (or a person starting ranks by hand) tells each rank, checked."""

    rank: int
    local_rank: int | None  # None where LOCAL_RANK is not set (only a GPU per rank needs it)
    world_size: int
    master_addr: str
    master_port: int

    @property
    def where(self) -> str:
        return f"MASTER_ADDR:MASTER_PORT={self.master_addr}:{self.master_port}"


def _integer_variable(environ, name: str, expected: str, low: int, high: int | None = None) -> int:
    value = environ.get(name)
    if value is None or not value.strip():
        raise ConfigError(f"{name} is not set: torchrun sets it in every rank it starts (ranks "
                          f"started by hand need RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and "
                          f"MASTER_PORT)")
    try:
        number = int(value.strip())
    except ValueError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        raise ConfigError(f"{name}={value!r}: expected {expected}")
    return number


def torchrun_environment(environ=None) -> TorchrunEnvironment:
    """``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` of
    ``environ`` (``os.environ`` by default), or a one-line :class:`ConfigError` naming the
    variable that is missing or out of range (``0 <= RANK < WORLD_SIZE``, ``0 <= LOCAL_RANK <
    WORLD_SIZE``, ``WORLD_SIZE >= 1``, a port from 1 to 65535). ``LOCAL_RANK`` may be unset
    (None)."""

    environ = os.environ if environ is None else environ
    world_size = _integer_variable(environ, "WORLD_SIZE", "a positive integer, the number of "
                                   "processes (ranks) of the job", 1)
    last = world_size - 1
    rank = _integer_variable(environ, "RANK", f"an integer from 0 to {last} (WORLD_SIZE="
                             f"{world_size}): this process's rank, each started once", 0, last)
    local_rank = None if environ.get("LOCAL_RANK") is None else _integer_variable(
        environ, "LOCAL_RANK", f"an integer from 0 to {last} (WORLD_SIZE={world_size}): this "
        f"process's rank on its machine", 0, last)
    port = _integer_variable(environ, "MASTER_PORT", "a port number from 1 to 65535, where rank "
                             "0 listens", 1, 65535)
    addr = environ.get("MASTER_ADDR", "").strip()
    if not addr:
        raise ConfigError("MASTER_ADDR is not set: the host name or address of rank 0's machine "
                          "(127.0.0.1 when every rank runs on this one)")
    return TorchrunEnvironment(rank, local_rank, world_size, addr, port)


def join_timeout(environ=None) -> float:
    """Seconds the ranks wait for each other: ``EQPDENET_JOIN_TIMEOUT``, else
    :data:`JOIN_SECONDS`; a :class:`ConfigError` for a value that is not a finite number of at
    least one look of the join (:data:`_JOIN_POLL`, 0.1 s): a shorter wait ended before rank 0
    could listen, and was then said to be the port's fault."""

    value = (os.environ if environ is None else environ).get(JOIN_VARIABLE, "").strip()
    if not value:
        return JOIN_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"{JOIN_VARIABLE}={value!r}: expected a positive number of seconds "
                          f"(how long the ranks of --distributed wait for each other)")
    if seconds < _JOIN_POLL:
        raise ConfigError(f"{JOIN_VARIABLE}={value!r}: expected at least {_JOIN_POLL} seconds "
                          f"(how long the ranks of --distributed wait for each other; a shorter "
                          f"wait ends before one look for the others)")
    return seconds


def _ranks_text(ranks: list[int]) -> str:
    shown = ", ".join(map(str, ranks[:10])) + (f" and {len(ranks) - 10} more" if len(ranks) > 10
                                                else "")
    return f"rank {shown}" if len(ranks) == 1 else f"ranks {shown}"


def _open_store(env: TorchrunEnvironment, deadline: float, seconds: float):
    """This rank's connection to the job's store: rank 0 opens it (on ``MASTER_PORT``, at once)
    unless torchrun's agent holds it; the others wait for it in short, silent steps (a plain
    socket; torch's client would log every retry and block signals for its whole timeout)."""
    import datetime
    import socket

    from torch.distributed import DistError, TCPStore

    request = datetime.timedelta(seconds=min(seconds, _JOIN_REQUEST_SECONDS))
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torch's own test
    if env.rank == 0 and not agent:
        try:
            return TCPStore(env.master_addr, env.master_port, env.world_size, is_master=True,
                            timeout=request, wait_for_workers=False)
        except DistError as error:
            text = " ".join(str(error).split())
            if "EADDRINUSE" in text or "address already in use" in text:
                raise ConfigError(f"MASTER_PORT={env.master_port}: the port is in use on this "
                                  f"machine (another program, or the rank 0 of another job); "
                                  f"choose a free port") from None
            raise ConfigError(f"MASTER_PORT={env.master_port}: rank 0 cannot listen there "
                              f"({text[:200]})") from None
    while True:
        try:
            with socket.create_connection((env.master_addr, env.master_port),
                                          timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
                break
        except socket.gaierror:
            raise ConfigError(f"MASTER_ADDR={env.master_addr!r}: no such host") from None
        except OSError:  # not listening yet (refused), or no answer within the step
            pass
        if time.monotonic() >= deadline:
            raise ConfigError(f"rank 0 did not open the job's store at {env.where} within "
                              f"{seconds:g} s (rank {env.rank} waited): start rank 0 with the same "
                              f"MASTER_ADDR and MASTER_PORT, or wait longer ({JOIN_VARIABLE})")
        time.sleep(_JOIN_POLL)
    try:
        return TCPStore(env.master_addr, env.master_port, env.world_size, is_master=False,
                        timeout=request)
    except DistError as error:
        raise ConfigError(f"{env.where}: something listens there, but not rank 0's store "
                          f"({' '.join(str(error).split())[:200]})") from None


def _join(store, env: TorchrunEnvironment, deadline: float, seconds: float) -> None:
    """Return once every rank of ``env.world_size`` has joined ``store``; a :class:`ConfigError`
    naming the ranks that did not join by ``deadline``, a rank started twice, or ranks that
    disagree on ``WORLD_SIZE`` (which would leave them waiting in gloo's connection for torch's
    30 minutes). It waits in short steps, between which signals are handled."""

    from torch.distributed import DistError

    # Keys of this attempt only: torchrun's agent keeps its store across restarts.
    prefix = f"eqpdenet/join/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    problem_key = prefix + "problem"

    def refuse(message: str):
        with contextlib.suppress(DistError):
            store.set(problem_key, message)  # so the ranks that wait stop too
        raise ConfigError(message)

    try:
        sizes = store.compare_set(prefix + "world_size", "", str(env.world_size)).decode()
        if sizes != str(env.world_size):
            refuse(f"the ranks disagree on WORLD_SIZE: {env.world_size} on rank {env.rank}, "
                   f"{sizes} on a rank started before it; start every rank with the same "
                   f"WORLD_SIZE")
        if store.add(prefix + f"rank/{env.rank}", 1) > 1:
            refuse(f"two processes were started with RANK={env.rank}; start each rank from 0 to "
                   f"WORLD_SIZE-1 = {env.world_size - 1} once")
        store.add(prefix + "joined", 1)
        while store.add(prefix + "joined", 0) < env.world_size:
            if store.check([problem_key]):
                raise ConfigError(store.get(problem_key).decode())
            if time.monotonic() >= deadline:
                missing = [r for r in range(env.world_size)
                           if not store.check([prefix + f"rank/{r}"])]
                raise ConfigError(f"{_ranks_text(missing)} of WORLD_SIZE={env.world_size} did "
                                  f"not join within {seconds:g} s ({env.where}): start every "
                                  f"rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, "
                                  f"or wait longer ({JOIN_VARIABLE})")
            time.sleep(_JOIN_POLL)
    except DistError as error:  # rank 0, and its store, gone
        raise ConfigError(f"rank 0 stopped while the ranks joined ({env.where} answers no more: "
                          f"{' '.join(str(error).split())[:120]}); see rank 0's error") from None


@contextlib.contextmanager
def data_parallel_group(backend: str, *, join_seconds: float | None = None,
                        **init) -> Iterator[tuple[int, int]]:
    """The ``torch.distributed`` process group in which :func:`train_model` trains with
    DistributedDataParallel (``eqpdenet train --distributed`` under torchrun). Initialised on
    entry, yielding ``(rank, world size)``; on exit the ranks meet (when the body ended without
    an exception: a peer that stopped would never arrive) and the group is destroyed. They meet
    through the job's store, with no deadline, between whose looks signals are handled
    (:class:`~eqpdenet.app.ranks.RankWaits`: rank 0 may evaluate alone for longer than
    torch's 30-minute collective timeout); a body's exception is told to the ranks that wait
    there, which then stop with ``rank R stopped: ...``. Inside the block,
    :func:`~eqpdenet.app.ranks.current_rank_waits` waits for work of one rank alone.

    Without ``init_method`` or ``store`` in ``init`` (which, like the rest of ``init``, go to
    ``init_process_group``), the ranks meet through torchrun's environment
    (:func:`torchrun_environment`; ``rank`` and ``world_size`` in ``init`` take the place of
    ``RANK`` and ``WORLD_SIZE``), checked first (a bad variable is a one-line
    :class:`ConfigError` naming it), and wait for each other at most ``join_seconds``
    (:func:`join_timeout`: ``EQPDENET_JOIN_TIMEOUT``, else :data:`JOIN_SECONDS`), in short steps
    between which signals are handled (Ctrl-C; SIGTERM where its handler raises, as the command
    line's does); a rank missing at the deadline, a busy
    ``MASTER_PORT``, a rank started twice or ranks that disagree on ``WORLD_SIZE`` are a
    one-line :class:`ConfigError`. (``init_process_group`` alone waited torch's 30 minutes,
    deaf to signals, and gave raw C++ errors.)

    ``torch._dynamo`` is imported before the group exists: DistributedDataParallel imports it,
    and an import after ``init_process_group`` keeps references to the default group (torch
    2.13) that ``destroy_process_group`` does not release. gloo's threads then outlive the group
    and are torn down with the interpreter, where they can abort a process whose work is done
    (SIGABRT, "terminate called without an active exception").
    """
    import torch._dynamo  # noqa: F401

    if "init_method" not in init and "store" not in init:

        given = {name: str(init.pop(key)) for key, name in (("rank", "RANK"),
                                                             ("world_size", "WORLD_SIZE"))
                 if key in init}
        env = torchrun_environment({**os.environ, **given})
        seconds = join_timeout() if join_seconds is None else join_seconds
        deadline = time.monotonic() + seconds
        store = _open_store(env, deadline, seconds)
        _join(store, env, deadline, seconds)
        # From here on the store serves the group: torch's timeout, as init_process_group sets it.
        store.set_timeout(init.get("timeout") or torch.distributed.constants.default_pg_timeout)
        init = dict(init, store=store, rank=env.rank, world_size=env.world_size)
    from .ranks import rank_waits

    torch.distributed.init_process_group(backend, **init)
    try:
        # Leaving, the ranks wait for each other through the store, without a deadline: the
        # others wait there while rank 0 evaluates alone, which can take longer than the
        # barrier's timeout (torch's 30 minutes), and that ended the run.
        with rank_waits():
            yield torch.distributed.get_rank(), torch.distributed.get_world_size()
        torch.distributed.barrier()  # every rank is there: at once
    finally:
        torch.distributed.destroy_process_group()


def _check_changed_config(config: ExperimentConfig) -> None:
    """The checks that building ``config`` ran, run again on its training fields: a field set
    after it was built (``config.train.grad_clip = -1``) skipped them, and a negative clip
    reversed every gradient (the loss rose from 0.7 to 153 in five steps, recorded as an
    ordinary run), ``epochs = 0`` or ``batch_size = 0`` raised raw errors. The same
    :class:`~eqpdenet.errors.ConfigError` as building it; no copy is kept."""
    train = config.train
    # the parts first, so that each refusal is the part's own; then the checks across sections
    for part in (train.augment, train.blur_consistency, train, config):
        if dataclasses.is_dataclass(part):
            dataclasses.replace(part)


def train_model(
    config: ExperimentConfig,
    data: Data | dict[str, Split],
    *,
    model: nn.Module | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train ``config.model`` (or the given ``model`` instance) on ``data["train"]`` with
    ``config.train``; returns (model, history).

    Without ``model``, the model is built from :func:`resolve_for_data` of ``config`` (so its
    input size, classes and standardisation fit the data) after seeding with
    ``config.train.seed``; a given ``model`` is trained as it is (its initialisation is the
    caller's). ``history`` holds one dict per epoch (loss, training accuracy of the epoch,
    validation accuracy where a validation split exists, both in percent as every accuracy of a
    result, seconds). With
    ``train.weight_average``, the weights are averaged after every step, the average's
    batch-norm statistics recomputed on the training images (:func:`_average_batch_norm`), and
    the average is what is validated, selected and returned; a decay whose span
    ``1 / (1 - d)`` exceeds the run's optimiser steps (an average still close to the first
    steps' weights) is a ``RuntimeWarning``. A field of ``config`` that its
    model kind does not use, set away from its default, is a ``RuntimeWarning``, one per field
    (:func:`~eqpdenet.app.config.fields_without_effect`), and so is one the data replaces
    (:func:`resolve_for_data`: ``model.image_size``, or ``model.input_mean, input_std``
    where ``model.standardize`` resolves to ``'train'``).

    Under ``torchrun`` (:func:`data_parallel`), each process runs this with the same
    configuration and data: every epoch's permutation (the same in every process, from the seed)
    is cut into the usual batches, and process ``r`` of ``n`` takes part ``r`` of each batch
    (``tensor_split``: the parts differ by one image at most). Gradients are averaged by
    DistributedDataParallel with the loss scaled so that the update is the one of the whole
    batch; loss and training accuracy are summed over the processes. Raises
    :class:`NonFiniteStateError` (or ``FloatingPointError`` for a non-finite loss, a parameter or
    buffer not all finite at an epoch's end, or an optimiser step beyond float32) if training
    diverges; the error's ``history`` holds the epochs done.
    """
    _check_changed_config(config)
    train: TrainConfig = config.train
    device = resolve_device(train.device)
    resolved = resolve_for_data(config, data) if model is None else None
    if resolved is None:  # a given model: its classes are known at the first batch
        _check_given_classes(data, None)
    if resolved is not None:
        # The memory check again, at the data's image size and on its number of training images
        # (without it, a batch of train.batch_size images was assumed: a set of 16 images of
        # 512x512 was refused for 75 GiB where its one batch needs 9).
        # Evaluation's passes: at most as many images as its largest split (else 128).
        splits = [data.get(s) for s in ("test", "validation")] if hasattr(data, "get") else []
        preflight([resolved], None, images=len(data["train"]),
                  tests=max((len(s) for s in splits if s is not None), default=None))
    check_augment_for_image(train, int(data["train"].images.shape[-1]))
    # Seeding and the draws of the initial weights as one step (the lock of every user of the
    # global generator in eqpdenet): another thread's training, or a fork_rng restoring its saved
    # state, in between gave weights of neither seed (round 12). The generator is left as before.
    with GLOBAL_RNG_LOCK:
        torch.manual_seed(train.seed)
        if resolved is not None:
            model = build_model(resolved.model)
    refuse_unstable_steps(model)  # before any step: an Euler step on M2 unstable as it starts
    model = model.to(device)
    generator = torch.Generator().manual_seed(train.seed)
    # Its own stream, so that augmenting leaves the batch order of the seed unchanged.
    augment_stream = augment_generator(train.seed)
    blur_stream = blur_generator(train.seed)
    blur = train.blur_consistency
    pde_layer = getattr(model, "pde_layer", None)
    if resolved is not None:  # built from config: what its kind leaves unused, set to no use
        for line in fields_without_effect(config):  # the replaced: resolve_for_data, above
            warn_at_caller(line, RuntimeWarning)
    elif pde_layer is None and train.pde_lr_scale != TrainConfig.pde_lr_scale:  # a given model
        warn_at_caller(f"train.pde_lr_scale = {train.pde_lr_scale:g} has no effect on "
                       f"{type(model).__name__}: only the paper's PDE layer (model.kind = "
                       f"'eqpdenet') trains at its own rate", RuntimeWarning)
    if pde_layer is not None:
        # its group's decay at lr * pde_lr_scale, whatever the kind: a given model, a family of
        # one's own, or a configuration changed after it was built (ExperimentConfig checks
        # the kinds it knows as it is built)
        require_decay_shrinks(train.optimizer, train.lr, train.pde_lr_scale, train.weight_decay)
    pde_ids = {id(p) for p in pde_layer.parameters()} if pde_layer is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in pde_ids]}]
    if pde_ids:
        groups.append({"params": list(pde_layer.parameters()), "lr": train.lr * train.pde_lr_scale})
    optimizer = OPTIMIZERS.get(train.optimizer)(groups, train.lr, train.weight_decay)
    parallel = data_parallel()
    processes = parallel[1] if parallel is not None else 1  # each needs two images of a batch
    steps_per_epoch = len(mini_batches(len(data["train"]), train.batch_size, processes))
    scheduler = LR_SCHEDULES.get(train.lr_schedule)(optimizer, train.epochs * steps_per_epoch)
    steps = train.epochs * steps_per_epoch
    span = 1 / (1 - train.weight_average)  # of the average, in steps (rounding: 0.9 spans 10)
    if train.weight_average and span > steps * (1 + 1e-9):
        warn_at_caller(f"train.weight_average = {train.weight_average:g} averages over about "
                       f"{span:.0f} steps (1 / (1 - d)), more than the "
                       f"run's {steps} optimiser steps ({train.epochs} epochs of "
                       f"{steps_per_epoch}): the average stays close to the first steps' weights; "
                       f"choose a smaller d (at most 1 - 1/{steps} = {1 - 1 / steps:.4g})",
                       RuntimeWarning)
    validation = data.get("validation")
    has_validation = validation is not None and len(validation) > 0
    if train.select_on_validation and not has_validation:
        if config.data.validation > 0:  # the configuration asks for one; the data given lack it
            raise ConfigError(f"invalid config: train.select_on_validation: the data given hold "
                              f"no validation split (data['validation'] is "
                              f"{'missing' if validation is None else 'empty'}), though "
                              f"data.validation = {config.data.validation}: pass one, or let "
                              f"prepare_data split it")
        raise ConfigError("invalid config: train.select_on_validation needs data.validation > 0")
    images, labels = data["train"].images, data["train"].labels
    _check_training_splits(data, getattr(resolved.model, "classes", None) if resolved else None)
    forward = model
    if parallel is not None:  # torchrun: this process trains on its share of each batch
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index]
                                          if device.type == "cuda" else None)
    forward = compiled_for_training(forward) if train.compile else forward
    # On a GPU the epochs run in app/accelerate.py: the same batches and updates, with the data
    # on the device, the step as a CUDA graph and one host read per epoch (one process only).
    # Augmented batches are warped on the way in: the CUDA-graph runner replays fixed inputs, so
    # augmentation takes the plain loop (on the same device), as do the weights' average (an
    # update after every step, outside the graph) and the blur penalty (a second term and a
    # batch of another size). The runner steps through `forward`, the compiled one with
    # train.compile (given the model alone, it trained eagerly while the run recorded compile).
    average = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(train.weight_average))
               if train.weight_average else None)
    evaluated = model if average is None else average.module
    splits = ("train", "validation") if has_validation else ("train",)
    expected = _expected_of(resolved, model)
    gpu = (accelerate.EpochRunner(model, optimizer, scheduler, images, labels, train.batch_size,
                                  train.grad_clip, forward=forward,
                                  loss_fn=_first_batch_checked(data, splits, expected),
                                  remedy=_divergence_remedy(train))
           if accelerate.applies_to(device) and parallel is None and train.augment.is_identity
           and average is None and blur.is_off
           else None)
    history, best = [], (-1.0, None, -1)
    epochs = _progress(range(train.epochs), progress, desc=f"train {type(model).__name__} "
                       f"seed={train.seed}", unit="epoch", leave=False)
    try:
        for epoch in epochs:
            start = time.perf_counter()
            model.train()
            order = torch.randperm(len(labels), generator=generator)
            total_loss, total_penalty, pairs_seen, correct = 0.0, 0.0, 0, 0
            batches = mini_batches(len(order), train.batch_size, processes) if gpu is None else []
            for done, batch in enumerate(batches, 1):
                index = order[batch]
                x, y = images[index].to(device), labels[index].to(device)
                # The whole batch is drawn in every process (the same stream), then shared out.
                x = train.augment(x, augment_stream)
                # Copies of the whole batch's first images, drawn in every process; each process
                # keeps the copies of the images in its part.
                blurred = blur(x, blur_stream)
                pairs = len(blurred)
                if parallel is not None:
                    parts = torch.arange(len(x)).tensor_split(parallel[1])
                    offset = sum(len(part) for part in parts[:parallel[0]])  # of this part in the batch
                    x, y = x.tensor_split(parallel[1])[parallel[0]], y.tensor_split(parallel[1])[parallel[0]]
                    blurred = blurred[offset:offset + len(x)]
                # One forward pass for the batch and its copies: one set of batch-norm statistics.
                inputs = torch.cat([x, blurred]) if len(blurred) else x
                if epoch == 0 and done == 1:  # every model's, a family of one's own included
                    logits = _first_forward(forward, inputs, expected, model)
                    _check_first_logits(logits, len(x) + len(blurred), data, splits, expected)
                else:
                    try:  # free where nothing is raised: read only once raised
                        logits = forward(inputs)
                    except Exception as error:
                        _raise_if_own(error, model, expected, epoch)
                        raise
                logits, logits_blurred = logits[:len(x)], logits[len(x):]
                penalty = (relative_change(logits[:len(blurred)], logits_blurred).sum()
                           if pairs else None)
                if parallel is None:
                    loss = batch_loss = F.cross_entropy(logits, y)
                    if penalty is not None:
                        batch_penalty = penalty.detach() / pairs
                        loss = loss + blur.weight * penalty / pairs
                else:
                    # DDP averages the processes' gradients; scaled so, the average is the gradient
                    # of the whole batch's mean loss, even when the shares differ by one image.
                    share = F.cross_entropy(logits, y, reduction="sum")
                    loss = share * (parallel[1] / len(index))
                    batch_loss = share.detach().clone()
                    torch.distributed.all_reduce(batch_loss)  # every process sees the batch's loss
                    batch_loss = batch_loss / len(index)
                    if penalty is not None:  # likewise: the mean over the whole batch's pairs
                        loss = loss + blur.weight * penalty * (parallel[1] / pairs)
                        batch_penalty = penalty.detach().clone()
                        torch.distributed.all_reduce(batch_penalty)
                        batch_penalty = batch_penalty / pairs
                if not torch.isfinite(batch_loss) or (pairs and not torch.isfinite(batch_penalty)):
                    # in every process at once: none waits forever
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}; "
                                             f"{_divergence_remedy(train)}")
                optimizer.zero_grad(set_to_none=True)
                try:  # a plugin's autograd Function's backward
                    loss.backward()
                except Exception as error:
                    _raise_if_own(error, model, expected, epoch)
                    raise
                if train.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
                with _step_overflow(train, epoch, history):
                    optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if average is not None:
                    average.update_parameters(model)
                total_loss += float(batch_loss.detach()) * len(index)
                if pairs:
                    total_penalty += float(batch_penalty) * pairs
                    pairs_seen += pairs
                correct += int((logits.argmax(1) == y).sum())
                if progress:
                    within(epochs, done, len(batches))
            if parallel is not None:
                counts = torch.tensor([correct], dtype=torch.int64, device=device)
                torch.distributed.all_reduce(counts)
                correct = int(counts)
            if gpu is not None:
                with _step_overflow(train, epoch, history):
                    try:  # its forward and backward passes, the first batch's included
                        total_loss, correct = gpu.run_epoch(order, epoch)
                    except Exception as error:
                        _raise_if_own(error, model, expected, epoch)
                        raise
            # Accuracies in percent, as everywhere else in a result (its "accuracy" and
            # "validation_accuracy"); records written before held fractions here, the same keys.
            record = {"epoch": epoch + 1, "loss": total_loss / len(labels),
                      "train_accuracy": 100.0 * correct / len(labels),
                      "seconds": time.perf_counter() - start}
            if pairs_seen:
                record["blur_consistency"] = total_penalty / pairs_seen
            if train.compile:
                _warn_compile_fallbacks(forward, record, epoch)
            # A finite loss can hide weights or buffers gone non-finite (a batch-norm running
            # variance overflowed while the normalised batch still gave a finite loss): checked at
            # every epoch's end, so that a diverged run stops at the epoch where it diverged.
            _check_finite(model, epoch, history, record, remedy=_divergence_remedy(train))
            if has_validation:
                if average is not None:
                    _average_batch_norm(average, images, train, device)
                    _check_finite(average.module, epoch, history, record, "the weights' average",
                                  _divergence_remedy(train))
                record["validation_accuracy"] = 100.0 * accuracy(evaluated, validation)
                if train.select_on_validation and record["validation_accuracy"] > best[0]:
                    best = (record["validation_accuracy"], copy.deepcopy(evaluated.state_dict()),
                            epoch + 1)
            history.append(record)
            if progress and hasattr(epochs, "set_postfix"):
                epochs.set_postfix({k: round(v, 4) for k, v in record.items()
                                    if k in ("loss", "validation_accuracy")})
            if log:
                log(json.dumps(record))
    except FloatingPointError as error:  # NonFiniteStateError too: the epochs done go with it
        if getattr(error, "history", None) is None:
            error.history = list(history)
        raise
    finally:
        if train.compile:
            _release_compiled(forward)
    if average is not None and not train.select_on_validation:
        if not has_validation:  # else done for the last epoch's validation
            _average_batch_norm(average, images, train, device)
        model.load_state_dict(average.module.state_dict())
    if train.select_on_validation:
        model.load_state_dict(best[1])
        history.append({"selected_epoch": best[2], "validation_accuracy": best[0]})
    return model, history


@dataclass(frozen=True)
class _Expected:
    """What a model's logits must number, and how its errors name it: ``classes`` (the resolved
    ``model.classes``; None for a model given to :func:`train_model`, whose data need not declare
    its classes: ``Data.classes`` defaults to 10), ``model`` (``model 'tenout'``, or a given
    model's class name) and ``own`` (the family's class and module where it is the user's code,
    else None: its errors on the first batch are then named, :func:`_first_forward`)."""

    classes: int | None = None
    model: str = "the model"
    own: str | None = None
    kind: str | None = None

    @property
    def who(self) -> str:
        """The model as the checks of its logits name it: ``model 'mine' (Mine, module
        mylab)``, ``model 'cnn'``; "the model" for a model given to :func:`train_model`."""
        if self.kind is None:
            return "the model"
        return f"{self.model} ({self.own})" if self.own else self.model


def _expected_of(resolved: ExperimentConfig | None, model: nn.Module) -> _Expected:
    """The :class:`_Expected` of :func:`train_model`'s ``model``: built from ``resolved``, or
    given (``resolved`` None)."""
    if resolved is None:
        return _Expected(None, type(model).__name__)
    from ..models import BUILT_IN_FAMILIES
    from ..registry import own_code_name

    family = MODELS.get(resolved.model.kind)
    return _Expected(resolved.model.classes, f"model {resolved.model.kind!r}",
                     None if family in BUILT_IN_FAMILIES else own_code_name(family),
                     resolved.model.kind)


def _first_forward(forward: Callable[[Tensor], Tensor], images: Tensor,
                   expected: _Expected, model: nn.Module | None = None) -> Tensor:
    """``forward(images)``, the first training batch's. An exception that the user's code
    raised in it (:func:`~eqpdenet.analysis.predictions.own_code_culprit`: the innermost of
    its frames that is eqpdenet's or a plugin's decides) is one
    :class:`~eqpdenet.errors.InputError` with the original type and message (cause chained):
    for the family itself, naming the model kind, its class and module, the batch's shape and
    the sizes the data gave it (a family that ignores ``image_size`` failed with torch's "mat1
    and mat2 shapes cannot be multiplied", read as eqpdenet's bug); for a plugin's invariant set
    that the model runs, naming the set, its invariant and module. eqpdenet's own errors, what
    eqpdenet's code raised and failed memory allocations pass unchanged (the command line
    advises on memory). ``model``: the model ``forward`` runs (``forward`` itself if None)."""
    try:
        return forward(images)
    except Exception as error:
        culprit = own_code_culprit(error, forward if model is None else model, expected.kind)
        if culprit is None:
            raise
        if not culprit.family:
            raise InputError(f"{culprit.who} failed on the first training batch, images of "
                             f"shape {tuple(images.shape)}: {culprit.said}") from error
        channels, size = images.shape[1], images.shape[-1]
        raise InputError(f"{culprit.who} failed on the first training batch, "
                         f"images of shape {tuple(images.shape)}: {culprit.said} (it is built "
                         f"with model.image_size = {size} and model.in_channels = {channels}, "
                         f"from the data: a family of one's own must take images of that size)"
                         ) from error


def _raise_if_own(error: Exception, model: nn.Module, expected: _Expected, epoch: int) -> None:
    """An :class:`~eqpdenet.errors.InputError` naming the plugin's family or invariant set, its
    module and the ``epoch`` (0-based) where ``error``, raised in a training step after the
    first batch's forward pass, is the user's code's
    (:func:`~eqpdenet.analysis.predictions.own_code_culprit`); else nothing: the caller
    re-raises ``error`` (eqpdenet's own, and every error of a model given to the Python API
    that runs no plugin code, unchanged)."""
    culprit = own_code_culprit(error, model, expected.kind)
    if culprit is not None:
        raise InputError(f"{culprit.who} failed in training, epoch {epoch + 1}: "
                         f"{culprit.said}") from error


def _check_first_logits(logits, count: int, data, splits: tuple[str, ...],
                        expected: _Expected = _Expected()) -> None:
    """The first batch's ``logits`` for ``count`` images checked as evaluation checks them
    (:func:`~eqpdenet.analysis.predictions._check_logits`: a tensor ``(count, K)``), then ``K``
    against the classes the model should have (``expected.classes``, where known;
    :func:`check_logit_count`), then every label of ``splits`` against the ``K`` classes: an
    :class:`~eqpdenet.errors.InputError` naming what the model returned and, for a model built
    from the configuration, its kind (a wrong shape also a family of one's own's class and
    module: ``expected.who``). A model of one's own returning ``(B, K, 1, 1)``, a tuple,
    ``(B,)`` or too few logits failed in the loss with a raw error read as eqpdenet's bug; one
    returning more logits than the data's classes (a family written for MNIST's 10 on a set of
    3) trained and was scored silently, its argmax free to pick classes no image has. The count
    goes before the labels: too few logits left a label without a class, and the label's
    message, which names no model, hid the count's."""
    from ..analysis.predictions import _check_logits

    _check_logits(logits, count, expected.who)
    name = getattr(data, "name", "") or "the data given"
    check_logit_count(int(logits.shape[1]), expected.classes, expected.model, name)
    for split in splits:  # a given model's classes are its logits' (not known before)
        _check_split_labels(data, split, int(logits.shape[1]),
                            by_model=expected.classes is None)


def check_logit_count(width: int, classes: int | None, model: str, data: str) -> None:
    """An :class:`~eqpdenet.errors.InputError` unless a model's ``width`` logits per image are
    the ``classes`` of the data (None: not known, nothing checked); ``model`` and ``data`` name
    them (``model 'tenout'``, ``toy12``). Every built-in family returns ``model.classes``
    logits, the data's classes."""
    if classes is None or width == classes:
        return
    missing = (f"class {width}" if width == classes - 1 else  # "classes 2 ... 2" read oddly
               f"classes {width} ... {classes - 1}")
    extra = (f"its predictions could be classes {classes} ... {width - 1}, which no image has"
             if width > classes else f"{missing} could never be predicted")
    raise InputError(f"{model} returns {width} logits per image, but {data} has {classes} "
                     f"classes (model.classes = {classes}): {extra}; a model family must return "
                     f"model.classes logits (a family of one's own: take a 'classes' option, "
                     f"which build_model sets from the data)")


def check_evaluated_classes(model: nn.Module, config: ExperimentConfig, images: Tensor) -> None:
    """An :class:`~eqpdenet.errors.InputError` naming the model kind unless ``model`` returns
    ``config.model.classes`` logits per image (:func:`check_logit_count`), checked on the first
    of ``images`` (one forward pass of one image, in evaluation mode) before an evaluation
    scores them all: a checkpoint of a family returning more logits than its data's classes
    (trained before training checked it) was scored with predictions no label can match. An
    image on which the model's PDE blows up tells nothing: the evaluation counts it."""
    from ..analysis.predictions import logits_by_image

    if not len(images):
        return
    try:
        logits, _ = logits_by_image(model, images[:1])
    except NonFiniteStateError:
        return
    check_logit_count(int(logits.shape[1]), config.model.classes,
                      f"model {config.model.kind!r}", Path(config.data.dataset).name)


def _first_batch_checked(data, splits: tuple[str, ...],
                         expected: _Expected = _Expected()) -> Callable[[Tensor, Tensor], Tensor]:
    """``F.cross_entropy`` that checks the logits of its first call (:func:`_check_first_logits`):
    the loss of the GPU epochs (:class:`~eqpdenet.app.accelerate.EpochRunner`), which compute
    the logits where the CPU loop cannot see them. Shapes only: no host read in later steps."""
    checked = []

    def loss(logits, labels: Tensor) -> Tensor:
        if not checked:
            _check_first_logits(logits, len(labels), data, splits, expected)
            checked.append(True)
        return F.cross_entropy(logits, labels)

    return loss


def _check_training_splits(data, classes: int | None,
                           splits: tuple[str, ...] = ("train", "validation")) -> None:
    """An :class:`~eqpdenet.errors.InputError` before any step unless the training (and
    validation) split's images are finite and agree in ``(C, H, W)`` and, where ``classes`` is
    known, every label is one of ``0 ... classes - 1`` (a label of 10 for 10 classes failed deep
    in the loss; -1 likewise). ``splits``: the splits checked so (:func:`run_experiment` checks
    ``test``, which it scores after training, before it trains: a NaN there was found only
    then)."""
    train = data["train"]
    if len(train) == 0:
        raise InputError("the training split holds no image")
    for name in splits:
        split = data.get(name) if hasattr(data, "get") else None
        if split is None or len(split) == 0:
            continue
        if tuple(split.images.shape[1:]) != tuple(train.images.shape[1:]):
            raise InputError(f"the {name} split's images are {tuple(split.images.shape[1:])} "
                             f"(C, H, W), the training split's {tuple(train.images.shape[1:])}")
        bad = ~torch.isfinite(split.images)
        if bool(bad.any()):
            raise InputError(f"the {name} split's images hold {int(bad.sum())} non-finite "
                             f"values (NaN or inf): the data is at fault; check how it was made")
        if classes is not None:
            _check_split_labels(data, name, classes)


#: A split's name in words (its key in a dict of splits, or a Data's attribute).
_SPLIT_WORDS = {"train": "training", "validation": "validation", "test": "test"}


def _check_split_labels(data, split: str, classes: int, by_model: bool = False) -> None:
    """:func:`~eqpdenet.analysis.predictions.check_classes` on the labels of ``data[split]``,
    its message naming the split, the image and where ``classes`` came from: the logits of a
    model given to :func:`train_model` (``by_model``), the data's declared count
    (``Data.classes``), or, for a dict of splits, which declares none, the largest training or
    validation label + 1 (:func:`resolve_for_data`: the test split does not shape the model, so
    a test label above every training label is refused here, where the same arrays as a file,
    whose count is read from all its labels, train with a warning). A label is compared once;
    the words are made only for a label outside."""
    labels = data[split].labels
    outside = (labels < 0) | (labels >= classes)
    if not bool(outside.any()):
        return
    if by_model:
        source = "the model's classes are the logits it returns; the labels and they must agree"
    elif getattr(data, "classes", None) is not None:
        source = (f"the model's classes are the data's declared count (Data.classes = "
                  f"{data.classes}); the labels and Data.classes must agree")
    else:
        source = ("the model's classes come from the training and validation labels (their "
                  "largest + 1: a dict of splits declares no class count, and the test split "
                  "does not shape the model); ")
        if int(labels[outside.nonzero()[0, 0]]) < 0:  # the label check_classes names
            source += "number the classes 0 ... K - 1"
        else:
            held = max(int(data[name].labels.max()) for name in ("train", "validation", "test")
                       if data.get(name) is not None and len(data[name]))
            source += (f"pass a Data with classes = {held + 1} (every split's labels), or give "
                       f"the training split every class")
    check_classes(labels, classes, split=_SPLIT_WORDS.get(split, split), source=source)


def _divergence_remedy(train: TrainConfig) -> str:
    """What may keep a diverging run finite, in words: a smaller ``train.lr`` or a
    ``train.grad_clip``, and where ``train.weight_decay`` is on, a smaller decay (with SGD it
    adds ``weight_decay * w`` to every gradient; :data:`~eqpdenet.app.config.DECAY_BOUNDS`),
    and where the blur-consistency penalty is on, a smaller weight for it."""
    decay = (f", or a smaller train.weight_decay (now {train.weight_decay:g}, at train.lr = "
             f"{train.lr:g})" if train.weight_decay else "")
    blur = (f", or a smaller train.blur_consistency.weight (now "
            f"{train.blur_consistency.weight:g})" if not train.blur_consistency.is_off else "")
    return (f"training diverged (a smaller train.lr, or train.grad_clip{decay}{blur}, may keep "
            f"it finite)")


def _check_finite(model: nn.Module, epoch: int, history: list[dict], record: dict,
                  what: str = "the model's",
                  remedy: str = "training diverged (a smaller train.lr, or train.grad_clip, may "
                                "keep it finite)") -> None:
    """A ``FloatingPointError`` (carrying ``history``, the epochs done, ``record`` the last)
    when a parameter or buffer of ``model`` (batch-norm statistics included) is not all finite
    after ``epoch`` (0-based), naming the first such tensor."""
    bad = non_finite_tensors(model.state_dict())
    if bad:
        error = FloatingPointError(f"{what} parameters or buffers are not all finite after epoch "
                                   f"{epoch + 1} ({describe_non_finite(bad)}); {remedy}")
        error.history = [*history, record]
        raise error


#: Fragments of PyTorch's messages for a Python number that does not fit the tensors' dtype
#: (an optimiser's step ``lr * ...`` beyond float32's 3.4e38).
_OVERFLOW_TEXTS = ("cannot be converted to type", "without overflow")


@contextlib.contextmanager
def _step_overflow(train: TrainConfig, epoch: int, history: list[dict]) -> Iterator[None]:
    """An optimiser step whose numbers overflow float32 (``train.lr = 1e38`` with Adam, whose
    step size is ``lr / (1 - beta1)``; 1e39 with SGD) is a divergence, a ``FloatingPointError``
    naming ``train.lr``, not an unexpected ``RuntimeError``."""
    try:
        yield
    except RuntimeError as error:
        if not all(text in str(error) for text in _OVERFLOW_TEXTS):
            raise
        decay = f" (train.weight_decay = {train.weight_decay:g})" if train.weight_decay else ""
        failure = FloatingPointError(
            f"the {train.optimizer} step overflowed float32 at epoch {epoch + 1}: train.lr = "
            f"{train.lr:g}{decay} makes steps beyond float32's largest number (3.4e38); "
            f"training diverged: lower train.lr")
        failure.history = list(history)
        raise failure from None


def _average_batch_norm(average: AveragedModel, images: Tensor, train: TrainConfig,
                        device: torch.device) -> None:
    """Recompute the batch-norm statistics of the averaged weights (``train.weight_average``):
    one pass over the training ``images`` in training mode, in their stored order cut into the
    training loop's batch sizes (not an epoch's shuffled order), warped where augmentation is on
    by the first epoch's sequence of draws (a fresh stream from the seed; each warp falls on
    another image than in that epoch), the statistics the cumulative average over the batches
    (``torch.optim.swa_utils.update_bn``).

    The running statistics of the steps do not fit averaged weights: averaged too, they left a
    lifted model at chance on validation (docs/lifted.md)."""
    stream = augment_generator(train.seed)
    batches = (train.augment(images[part].to(device), stream)
               for part in mini_batches(len(images), train.batch_size))
    with torch.no_grad():
        update_bn(batches, average.module)


def evaluate_scenarios(model: nn.Module, test: Split, scenarios: Iterable[str], seed: int,
                       batch_size: int = EVALUATION_BATCH,
                       non_finite: dict[str, int] | None = None) -> dict[str, float]:
    """Accuracy (in percent) on each scenario applied to ``test`` with draws seeded by ``seed``.

    An image on which the model's PDE blows up counts as an error; ``non_finite``, if given,
    receives how many there were, per scenario that had any (:func:`predict`). ``scenarios`` is
    a list of names (a bare string is a :class:`~eqpdenet.errors.ConfigError`: ``"iso"`` was
    read as the scenarios ``'i'``, ``'s'``, ``'o'``); every name and ``test``'s labels
    (:func:`accuracy`'s rule) are checked before any scenario is evaluated."""
    from ..analysis.predictions import check_labels
    from ..data.scenarios import get_scenario

    if isinstance(scenarios, str | bytes):
        raise ConfigError(f"scenarios must be a list of scenario names, got the string "
                          f"{scenarios!r}; for one scenario write [{scenarios!r}]")
    scenarios = list(scenarios)
    for name in scenarios:
        if isinstance(name, str):
            get_scenario(name)  # an unknown name: the registry's ConfigError, listing them
    if len(test.images) or len(test.labels):
        check_labels(test.images, test.labels)
    results = {}
    for name in scenarios:
        images = apply_scenario(name, test.images, seed=seed)
        failures: list[int] = []
        results[name] = 100.0 * accuracy(model, Split(images, test.labels), batch_size, failures)
        if non_finite is not None and failures[0]:
            non_finite[name] = failures[0]
    return results


# ----------------------------------------------------------------------------- provenance


def git_commit(package: Path | None = None) -> str:
    """The commit of the source tree, with ``-dirty`` when the package's own files (``eqpdenet/``,
    or the folder ``package``) differ from it, or ``unknown``: also where the package lies inside
    a git repository that does not track its files (installed, not editable, into a virtual
    environment inside a user's own repository, which ignores it).

    Only the package counts: a sweep rewrites its tracked results (``results.jsonl``, tables)
    while it runs, and docs may be edited beside it; neither changes the code that computed a
    number, and counting them marked every run after a sweep's first as dirty.
    """
    package = package if package is not None else Path(__file__).resolve().parents[1]
    try:
        # The enclosing repository's HEAD is the package's commit only where it tracks the
        # package: else it is the user's project's, recorded as if it had computed the numbers.
        subprocess.run(["git", "ls-files", "--error-unmatch", "--", "."], cwd=package,
                       capture_output=True, timeout=10, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               cwd=package, capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: Options that change nothing unless another option has one of some values (path -> (that
#: option's path, its values)): left out of the fingerprint elsewhere, so that adding one leaves
#: the recorded runs it cannot affect matching. The SIM(2) maps' floor does nothing for se2.
CONDITIONAL_FIELDS: dict[tuple[str, ...], tuple[tuple[str, ...], tuple]] = {
    ("model", "invariant_pde", "jet_floor"): (("model", "invariant_pde", "group"), ("sim2",)),
}


def _lookup(data: dict, path: tuple[str, ...]):
    """The value at ``path`` in nested dicts, or None where the path ends."""
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def with_legacy_fields(config: dict) -> dict:
    """A stored configuration dict with every missing :data:`LATER_FIELDS` entry set to its
    value from before the field existed (a copy; tables that are absent stay absent)."""
    data = copy.deepcopy(config)
    for path, value in LATER_FIELDS.items():
        node = _lookup(data, path[:-1])
        if isinstance(node, dict):
            node.setdefault(path[-1], value)
    return data


#: The first :data:`LATER_FIELDS` entry added after benchmark folders were first recorded: their
#: base fingerprint (:func:`eqpdenet.app.benchmark.benchmark_fingerprint`) leaves out this field
#: and every later one while they keep their earlier behaviour (the fields before it were part of
#: the configurations those folders recorded). A new field of the experiment configuration goes
#: at the end of LATER_FIELDS, so that recorded folders keep resuming.
BENCHMARK_LATER_FROM = ("train", "augment")


def without_later_fields(config: dict, since: tuple[str, ...] | None = None) -> dict:
    """A configuration dict without the :data:`LATER_FIELDS` that hold their earlier behaviour
    (a copy): what a configuration recorded before those fields existed looked like. With
    ``since``, only that entry and the ones after it."""
    data = copy.deepcopy(config)
    fields = list(LATER_FIELDS.items())
    if since is not None:
        fields = fields[list(LATER_FIELDS).index(since):]
    for path, value in fields:
        node = _lookup(data, path[:-1])
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] == value:
            del node[path[-1]]
    return data


def without_inert_fields(config: dict) -> dict:
    """An experiment configuration dict without the :data:`CONDITIONAL_FIELDS` that cannot
    change its runs (a copy)."""
    data = copy.deepcopy(config)
    for path, (condition, values) in CONDITIONAL_FIELDS.items():
        if _lookup(data, condition) not in values:
            parent = _lookup(data, path[:-1])
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
    return data


def fingerprint(config) -> str:
    """Short hash of a configuration (canonical JSON), independent of :data:`LATER_FIELDS` at
    their earlier behaviour. Works on an :class:`ExperimentConfig` or its dict."""
    data = copy.deepcopy(to_dict(config) if not isinstance(config, dict) else config)
    model = data.get("model", {})
    for kind in KIND_OPTIONS:  # a kind's option table matters to that kind only
        if model.get("kind") != kind:
            model.pop(kind, None)
    data = without_inert_fields(data)
    data = without_later_fields(data)
    text = json.dumps(_without_negative_zeros(data), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _without_negative_zeros(value):
    """``value`` with every ``-0.0`` made ``0.0``: equal configurations (``-0.0 == 0.0``), which
    ``json.dumps`` writes apart; a sweep refused to resume on them naming no field."""
    if isinstance(value, float):
        return value + 0.0
    if isinstance(value, dict):
        return {key: _without_negative_zeros(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_negative_zeros(item) for item in value]
    return value


def pde_backend(config) -> str | None:
    """What a run's PDE layers resolve their ``backend = "auto"`` to in this process
    (:func:`~eqpdenet.kernels.resolve_backend`: ``"auto"``, or what ``EQPDENET_BACKEND``
    overrides it with, ``"reference"`` or ``"fused"``), or None where the run's model has no
    backend option at ``"auto"`` (the families without PDE kernels; a backend set in the
    configuration is recorded there). The fused operators and the reference round differently,
    so a run's numbers depend on it (module doc). ``config``: an :class:`ExperimentConfig` or
    its dict."""
    model = (to_dict(config) if not isinstance(config, dict) else config).get("model", {})
    try:
        options = _constructor_options(MODELS.get(model.get("kind")))
    except (ConfigError, TypeError):
        return None
    if any(isinstance(model.get(name), dict) and model[name].get("backend") == "auto"
           for name in options):
        return resolve_backend("auto")
    return None


def resolved_device_type(name: str) -> str:
    """The kind of device (``"cpu"``, ``"cuda"``) that ``train.device`` ``name`` runs on here:
    :func:`~eqpdenet.app.preflight.resolve_device`'s, without its error for a ``"cuda"`` that
    is not here (said where the run starts)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def environment(config=None) -> dict:
    """Provenance saved beside every result: versions, the commit, the CPU and the vector
    instruction set PyTorch's kernels use on it (``torch.backends.cpu.get_cpu_capability``),
    and, given the run's ``config`` and where its model follows it, ``pde_backend``
    (:func:`pde_backend`: a sweep resumed under another ``EQPDENET_BACKEND`` would otherwise
    mix backends unseen, :func:`eqpdenet.app.sweeps.changed_runs`) with ``pde_kernels``, what
    the C++ extensions this process tried came to (:func:`~eqpdenet.kernels.cpu.
    extension_states`: ``"auto"`` ran the reference where one did not build), and ``device``,
    the kind of device its ``train.device`` resolves to here (``"cpu"`` or ``"cuda"``; ``"auto"``
    is either, and a sweep resumed where it resolves to the other would mix CPU and GPU runs
    unseen: :func:`eqpdenet.app.sweeps.changed_runs`), with ``gpu``, the GPU's name, on a GPU."""
    record = {"eqpdenet": __version__, "torch": str(torch.__version__),
              "python": platform.python_version(), "machine": platform.machine(),
              "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), "git": git_commit()}
    if config is not None:
        record["device"] = resolved_device_type(config.train.device)
        # only where a GPU is here: a GPU run's configuration saved on a CPU machine
        # (save_checkpoint) raised "Torch not compiled with CUDA enabled"
        if record["device"] == "cuda" and torch.cuda.is_available():
            record["gpu"] = torch.cuda.get_device_name()
    backend = None if config is None else pde_backend(config)
    if backend is not None:
        record["pde_backend"] = backend
        kernels = extension_states()
        if kernels:  # "auto" ran the reference where a kernel did not build: say which
            record["pde_kernels"] = kernels
    return record


#: The format tag written by :func:`save_checkpoint`. Format 2 (ratio_regularisation in the
#: layer) also reads format 1, whose configurations lack the :data:`LATER_FIELDS`.
CHECKPOINT_FORMAT = "eqpdenet-checkpoint-2"
_LEGACY_CHECKPOINT_FORMATS = ("eqpdenet-checkpoint-1",)


def save_checkpoint(path: Path, model: nn.Module, config: ExperimentConfig, **extra) -> None:
    """``state_dict`` + full config + provenance + ``extra`` (:func:`run_experiment` adds
    ``history``, ``accuracy`` and ``dataset``, the data set's info with its fingerprint), written
    atomically.

    A :class:`~eqpdenet.errors.CheckpointError`, before anything is written, for weights that are
    not all finite (such a model is never saved to be scored), a configuration that cannot be
    recorded (an object where a name belongs, such as an unregistered ``InvariantSet``: the
    field named, :func:`~eqpdenet.app.config.to_toml`), and for a model that
    ``build_model(config.model)`` does not rebuild (:func:`~eqpdenet.app.checkpoints.
    rebuild_problem`: another type, other parameters, or other outputs on a probe input, e.g.
    a family's own options, which no configuration records): :func:`load_checkpoint` would load
    another model. The rebuild costs one model construction and two small forward passes (on
    the paper's model 0.07 to 0.15 s, most of it the layer's stability check at construction; a
    G-CNN's construction 0.3 s); torch's random state is
    left as it was. A model wrapped for training (``DistributedDataParallel``, ``DataParallel``,
    ``torch.compile``) is saved as the model it wraps."""
    from .checkpoints import rebuild_problem, unwrapped

    model = unwrapped(model)
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise CheckpointError(f"not saving {path}: the model's weights are not all finite "
                              f"({describe_non_finite(bad)})")
    try:  # what the checkpoint records must be a configuration (names, not objects)
        to_toml(config)
    except ConfigError as error:
        raise CheckpointError(f"not saving {path}: its configuration cannot be recorded: "
                              f"{error}") from None
    problem = rebuild_problem(model, config.model)
    if problem is not None:
        raise CheckpointError(
            f"not saving {path}: its configuration does not describe the model, so loading it "
            f"would build another one (build_model(config.model): {problem}); save the model "
            f"with the configuration it was built from (a trained one's: resolve_for_data(config, "
            f"data)); a model family of one's own must take its options from ModelConfig's "
            f"fields or keep its defaults (no configuration records options of its own)")
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "config": to_dict(config),
                "state_dict": model.state_dict(), "environment": environment(config), **extra},
               buffer)
    atomic_write(Path(path), buffer.getvalue())


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[nn.Module, ExperimentConfig, dict]:
    """The model, its config and the checkpoint's other contents.

    Raises :class:`~eqpdenet.errors.CheckpointError` for a file that is not a checkpoint, one
    whose bytes changed since it was written (a member of its zip archive fails its CRC, which
    ``torch.load`` does not check: a flipped bit in the weights loaded and was scored), a
    saved configuration that is invalid, weights that are not all finite (NaN or inf: a model
    that would be scored as if it were one), or weights that do not fit the model the saved
    configuration describes (the message names the configuration field, see
    :func:`~eqpdenet.app.checkpoints.mismatch`).
    """
    from .checkpoints import mismatch

    path = Path(path)
    device = resolve_device(device)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file (e.g. "
                              f"{path / 'model.pt'})")
    try:
        damaged = _damaged_member(path)
        if damaged is not None:
            raise CheckpointError(f"{path} is damaged: {damaged} (its bytes changed after it was "
                                  f"written); such a checkpoint cannot be trusted, use another "
                                  f"copy")
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except CheckpointError:
        raise
    except Exception as error:  # torch raises several types for corrupt files
        raise CheckpointError(_unreadable(path, error)) from None
    formats = (CHECKPOINT_FORMAT, *_LEGACY_CHECKPOINT_FORMATS)
    tag = payload.get("format") if isinstance(payload, dict) else None
    if tag is None:
        raise CheckpointError(f"{path} is not an eqpdenet checkpoint (missing format tag; a bare "
                              f"state_dict? save with eqpdenet.app.training.save_checkpoint)")
    if tag not in formats:
        raise CheckpointError(f"{path} is not an eqpdenet checkpoint (format tag {tag!r}, "
                              f"expected one of {', '.join(formats)})")
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("state_dict"),
                                                                     dict):
        raise CheckpointError(f"{path} is not a complete eqpdenet checkpoint (no config or "
                              f"state_dict)")
    bad = non_finite_tensors(payload["state_dict"])
    if bad:
        raise CheckpointError(f"{path}: the weights are not all finite ({describe_non_finite(bad)})"
                              f": the run that saved them diverged, or the file was altered; such "
                              f"a model cannot be evaluated")
    if payload["format"] in _LEGACY_CHECKPOINT_FORMATS:
        payload["config"] = with_legacy_fields(payload["config"])
    try:
        config = from_dict(ExperimentConfig, payload["config"])
    except ConfigError as error:
        if is_unregistered(str(error)):  # a plugin's name: the configuration may be sound
            raise CheckpointError(f"{path}: the saved configuration names what this process "
                                  f"does not know: {unregistered_hint(error)}") from None
        raise CheckpointError(f"{path}: the saved configuration is invalid: {error}") from None
    model = build_model(config.model)
    try:  # loading migrates older layouts (EulerStep._load_from_state_dict): try it first
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        problem = mismatch(model, payload["state_dict"]) or " ".join(str(error).split())
        raise CheckpointError(f"{path}: the weights do not fit the saved configuration: "
                              f"{problem}") from None
    return model.to(device), config, payload


#: What a checkpoint eqpdenet reads is: written by ``eqpdenet train``, a sweep, or
#: :func:`save_checkpoint` (a configuration and a ``state_dict``, loaded weights-only).
_SAVE_WITH = ("eqpdenet reads checkpoints written by `eqpdenet train` or by "
              "eqpdenet.app.training.save_checkpoint(path, model, config)")

#: ANSI escape sequences and other control characters, never passed through from torch's text.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x1f\x7f-\x9f]")


def _unreadable(path: Path, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in one line of our own: a file that is
    not a zip archive, Python objects that weights-only loading refuses (a whole model saved with
    ``torch.save(model)``), a zip archive that torch did not write. torch's own text is never
    passed through whole: it advises ``weights_only=False``, which an eqpdenet checkpoint never
    needs and an untrusted file must not get, and it carries terminal escape codes."""
    if not zipfile.is_zipfile(path):  # torch then reports a pickle detail ("101")
        return (f"{path} is not a readable eqpdenet checkpoint: not the zip archive torch.save "
                f"writes (another kind of file, or a truncated one)")
    if isinstance(error, pickle.UnpicklingError):
        return (f"{path} is not a readable eqpdenet checkpoint: it holds pickled Python "
                f"objects, which eqpdenet does not load (loading them could run any code), e.g. "
                f"a whole model saved with torch.save(model). "
                f"{_SAVE_WITH} (a model of your own: save it with save_checkpoint, or save its "
                f"state_dict() and load that with load_state_dict)")
    text = str(error)
    if "inline_container" in text or "PytorchStreamReader" in text:
        return (f"{path} is not a readable eqpdenet checkpoint: not a PyTorch checkpoint file "
                f"(a zip archive, but not one torch.save writes). {_SAVE_WITH}")
    first = _plain(next((line for line in text.splitlines() if line.strip()), ""))
    first = first if len(first) <= 200 else first[:200] + " ..."
    return f"{path} is not a readable eqpdenet checkpoint: {first or type(error).__name__}"


def _damaged_member(path: Path) -> str | None:
    """What is damaged in the zip archive at ``path`` (``torch.save``'s format): the first
    member whose CRC-32 does not match its bytes, or None. Not a zip archive, or one without a
    readable directory (a truncated file): None, and ``torch.load`` says what it is. Reading
    every member costs about a millisecond per MB (a checkpoint of the paper's models: 0.1 to
    1 MB). ``FileNotFoundError`` for a missing file."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        return None
    with archive:
        try:
            bad = archive.testzip()  # a member with a bad CRC or local header, by name
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as error:
            return f"its zip archive cannot be read ({type(error).__name__}: {_plain(error)})"
    return None if bad is None else f"member {_plain(bad)} of its zip archive fails its CRC check"


def _plain(text) -> str:
    """``text`` on one line without control characters (a member's name in an archive is any
    bytes: escape codes would drive the terminal the error is printed on)."""
    return " ".join(_CONTROL.sub(" ", str(text)).split())


# ----------------------------------------------------------------------------- runs


def non_finite_notice(scenario: str, failed: int | list[int],
                      test_images: int | None = None) -> str:
    """The words (without ``eqpdenet: warning:``) that say a scenario's accuracy counts the test
    images on which the model's PDE blew up as errors: ``iso: the model's PDE blew up
    (non-finite state) on 3 of the 60 test images; they are counted as errors``. ``failed``: the
    count (a run record's ``non_finite_images[scenario]``), or one count per evaluated instance
    (said as ``3``, or ``1-3 (per instance)`` where they differ); ``test_images``: the test
    split's size, where known (a run record does not hold it: ``on 3 test images``). What
    ``evaluate``, ``train`` and a sweep's per-run line say, so that no one reads such images as
    misclassified."""
    counts = [failed] if isinstance(failed, int) else list(failed)
    low, high = min(counts), max(counts)
    count = f"{high:,}" if low == high else f"{low:,}-{high:,} (per instance)"
    of = f"{count} of the {test_images:,} test images" if test_images is not None else \
        f"{count} test image{'' if count == '1' else 's'}"
    return (f"{scenario}: the model's PDE blew up (non-finite state) on {of}; they are counted "
            f"as errors")


def run_experiment(config: ExperimentConfig, data: Data | dict[str, Split], *,
                   progress: bool = True, checkpoint: Path | None = None,
                   extra_evaluation: Callable[[nn.Module, Data], dict] | None = None) -> dict:
    """Train and evaluate one run; returns its JSON-ready result record (with ``dataset``, the
    data's :attr:`Data.info`, where it has any: its source and, for a file, its fingerprint).

    ``extra_evaluation(model, data)``, if given, adds its dict to the record (timed with the
    evaluation).
    """
    config = resolve_for_data(config, data)
    # the test split, scored after training (train_model checks the other two before its
    # first step)
    _check_training_splits(data, config.model.classes, ("test",))
    record = {"model": config.model.kind, "hidden": config.model.hidden, "seed": config.train.seed,
              "config": to_dict(config), "environment": environment(config)}
    dataset = copy.deepcopy(getattr(data, "info", None) or {})
    if dataset:  # which data: its source and, for a file, its fingerprint (sweeps.changed_runs)
        record["dataset"] = dataset
    start = time.perf_counter()
    try:
        model, history = train_model(config, data, progress=progress)
    except (NonFiniteStateError, FloatingPointError) as error:
        # the epochs done, as a finished run records them: where and how it diverged
        record["environment"] = environment(config)  # with the kernels training built
        record.update(status="diverged", error=str(error), history=getattr(error, "history", []),
                      train_seconds=time.perf_counter() - start)
        return record
    record["train_seconds"] = time.perf_counter() - start
    record["environment"] = environment(config)  # with the kernels training built
    record["history"] = history
    bad = non_finite_tensors(model.state_dict())
    if bad:  # checked after every epoch; kept for a model whose selection or average broke it
        record.update(status="diverged", error=f"the weights are not all finite after training "
                                                f"({describe_non_finite(bad)})")
        return record
    record["params"] = count_parameters(model)
    start = time.perf_counter()
    # One scenario at a time (each draws from its own seeded stream: the same numbers as all at
    # once), so that a long evaluation shows progress; the extra evaluation is the last step.
    steps = [*config.scenarios] + ([None] if extra_evaluation is not None else [])
    try:
        record["accuracy"], non_finite = {}, {}
        for step in _progress(steps, progress, desc=f"evaluate {type(model).__name__} "
                              f"seed={config.train.seed}", unit="step", leave=False):
            if step is None:
                record.update(extra_evaluation(model, data))
            else:
                record["accuracy"].update(evaluate_scenarios(model, data["test"], [step],
                                                             seed=config.train.seed,
                                                             non_finite=non_finite))
        if non_finite:  # scored as errors; said, so that no one reads them as misclassified
            record["non_finite_images"] = non_finite
    except NonFiniteStateError as error:
        record.update(status="diverged", error=f"during evaluation: {error}")
        return record
    record["eval_seconds"] = time.perf_counter() - start
    if len(data.get("validation", ())):
        record["validation_accuracy"] = 100.0 * accuracy(model, data["validation"])
    record["status"] = "ok"
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, config, history=history, accuracy=record["accuracy"],
                        **({"dataset": dataset} if dataset else {}))
    return record
