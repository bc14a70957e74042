"""Typed configuration, in one place: dataclasses whose defaults are the paper's setup.

Every configuration converts to a plain dict (:func:`to_dict`), to TOML text (:func:`to_toml`) and
back (:func:`from_dict`, :func:`load_toml`), is validated on construction (an invalid value raises
:class:`ConfigError` naming the field), and is saved beside every result. A partial table takes
its missing fields from the field's default (so ``[model.layer] T = 2.0`` is the paper's layer
with ``T = 2``; a table that a file saved before one of its fields existed takes that field's
earlier behaviour instead: :func:`load_toml`), and a layer table may start from a preset
(``preset = "se2_sim2"``, see :data:`eqpdenet.pde.LAYER_PRESETS`; also ``--set
model.layer.preset=se2_sim2``), the table's other fields overriding it. A table given whole
through ``--set`` (``"train={lr=0.01}"``: :func:`apply_overrides`) is merged instead into the
table as it stands, keeping the fields it does not name.

The application's default layer is the paper's (:meth:`LayerConfig.paper`, the absolute ratio
regularisation), so the default configuration reproduces the paper; the library's own default
(``LayerConfig()``) uses the covariant regularisation.

Where the paper leaves a choice open (T, dt, stencil, boundary, ratio regularisation,
initialisation, optimiser ...), the default is the one documented in ``docs/choices.md``; the
training recipe and the layer's initialisation are those chosen on the validation split by
``eqpdenet study`` (``docs/study.md``).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import difflib
import inspect
import math
import re
import tomllib
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..checks import (
    require,
    require_finite,
    require_int,
    require_lists,
    require_nonnegative,
    require_positive,
)
from ..data.augment import AffineAugmentation, BlurConsistency
from ..data.datasets import DATASETS, is_built_in, mnist_family, seed_reaches_loader
from ..data.scenarios import SCENARIOS
from ..errors import ConfigError
from ..models import MODELS, CNNConfig, GCNNConfig, InvariantPDEConfig, LiftedPDEConfig
from ..models import build_model as _build_model
from ..pde.invariants import INVARIANT_SETS, InvariantSet
from ..pde.layer import LAYER_PRESETS, LayerConfig
from ..pde.m2_rhs import term_uses_options
from ..pde.stencils import stencil_has_scale
from .optim import LR_SCHEDULES, OPTIMIZERS

__all__ = [
    "MNIST_FAMILY",
    "data_resolved_fields",
    "ConfigError",
    "apply_overrides",
    "assigned_fields",
    "DataConfig",
    "ExperimentConfig",
    "LayerConfig",
    "ModelConfig",
    "BenchmarkConfig",
    "CurvesConfig",
    "ReproduceConfig",
    "TrainConfig",
    "PAPER_MODELS",
    "build_model",
    "check_augment_for_image",
    "require_scored",
    "fields_replaced_by_data",
    "fields_without_effect",
    "INERT_FIELDS",
    "InertField",
    "from_dict",
    "load_toml",
    "to_dict",
    "to_toml",
    "without_field",
]


#: Option tables of ModelConfig used by one model kind each (kind -> options dataclass).
KIND_OPTIONS = {"cnn": CNNConfig, "gcnn": GCNNConfig, "invariant_pde": InvariantPDEConfig,
                "lifted_pde": LiftedPDEConfig}


#: Bounds of ``model.input_mean`` and ``model.input_std``: images are read in [0, 1] (a data
#: set's own statistics, ``standardize = "train"``, are well inside them).
MAX_INPUT_MEAN, MIN_INPUT_STD, MAX_INPUT_STD = 1e6, 1e-6, 1e6


@dataclass
class ModelConfig:
    """A model: a kind from :data:`eqpdenet.models.MODELS` (``eqpdenet``: PDE layer +
    perceptron; ``fcnn``: perceptron alone) and its options.

    Attributes:
        kind: the model's registered name.
        hidden: width ``h`` of the two hidden layers (784-h-h-10).
        image_size, in_channels, classes: input height (= width), channels and number of
            outputs; training sets them from the data set (:func:`eqpdenet.app.training.
            resolve_for_data`).
        input_mean, input_std: fixed (non-learned) standardisation ``(x - mean) / std`` applied
            to the input (default: MNIST's pixel mean and std, chosen by the validation study);
            ``0, 1`` leaves pixels in ``[0, 1]``.
        standardize: where ``input_mean, input_std`` come from: ``"fixed"`` (as configured),
            ``"train"`` (the training split's pixel mean and std, computed before training and
            recorded in the run's configuration) or ``"auto"`` (default: ``"fixed"`` for the MNIST
            family, whose statistics the defaults are, ``"train"`` for any other data set; the
            data set is the one the data given to training names, ``Data.name``, where it names
            one, else ``data.dataset``). Where
            it resolves to ``"train"``, an ``input_mean, input_std`` set away from its default is
            replaced, with a warning (:func:`fields_replaced_by_data`).
        head: ``eqpdenet`` only: ``"perceptron"`` (the paper's) or ``"invariant"``
            (:class:`eqpdenet.models.EqPdeNet`).
        layer: the PDE layer (``eqpdenet`` only); default the paper's
            (:meth:`LayerConfig.paper`).
        cnn, gcnn, invariant_pde, lifted_pde: the options of the model kind of the same name
            (each used only by that kind).

    A field that ``kind`` does not use, or that the value of another field makes inert
    (:data:`INERT_FIELDS`), set away from its default, is warned about, one line per field,
    when the model trains (:func:`fields_without_effect`).
    """

    kind: str = "eqpdenet"
    hidden: int = 256
    image_size: int = 28
    in_channels: int = 1
    classes: int = 10
    input_mean: float = 0.1307
    input_std: float = 0.3081
    standardize: str = "auto"
    head: str = "perceptron"
    layer: LayerConfig = field(default_factory=LayerConfig.paper)
    cnn: CNNConfig = field(default_factory=CNNConfig)
    gcnn: GCNNConfig = field(default_factory=GCNNConfig)
    invariant_pde: InvariantPDEConfig = field(default_factory=InvariantPDEConfig)
    lifted_pde: LiftedPDEConfig = field(default_factory=LiftedPDEConfig)

    def __post_init__(self):
        _require_section(self, "layer", LayerConfig, "model.layer", LayerConfig.paper)
        for name, cls in KIND_OPTIONS.items():
            _require_section(self, name, cls, f"model.{name}")
        require(self.head in ("perceptron", "invariant"), "model.head",
                f"{self.head!r} is not 'perceptron' or 'invariant'")
        MODELS.check(self.kind, "model.kind")
        require_int(self.hidden, "model.hidden", 1)
        require_int(self.image_size, "model.image_size", 1)
        require_int(self.in_channels, "model.in_channels", 1)
        require_int(self.classes, "model.classes", 1)
        mean = require_finite(self.input_mean, "model.input_mean")
        require(abs(mean) <= MAX_INPUT_MEAN, "model.input_mean",
                f"{mean:.3g} is beyond ±{MAX_INPUT_MEAN:g}: images are read in [0, 1]")
        std = require_positive(self.input_std, "model.input_std")
        # 1e-30 made pixels of [0, 1] values up to 1e30: a warning, then a failed run
        require(MIN_INPUT_STD <= std <= MAX_INPUT_STD, "model.input_std",
                f"{std:.3g} is outside [{MIN_INPUT_STD:g}, {MAX_INPUT_STD:g}]: images are read in "
                f"[0, 1], and (x - input_mean) / input_std would be up to "
                f"{max(abs(mean), abs(1 - mean)) / std:.3g}")
        require(self.standardize in ("auto", "fixed", "train"), "model.standardize",
                f"{self.standardize!r} is not 'auto', 'fixed' or 'train'")


#: The most epochs a configuration accepts: a bound on the work a typo can start (an epoch of the
#: paper's smallest run takes about a second on a CPU core).
MAX_EPOCHS = 100_000


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600)):
        if seconds >= size:
            value = seconds / size
            return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    return f"{seconds:.0f} s"


#: The range of every learning-rate scalar the optimiser computes with (``train.lr``, times
#: ``train.pde_lr_scale`` for the PDE layer, times ``train.weight_decay`` for the decay): float32
#: scalars with room to spare (Adam's first step is ``10 lr``; lr = 1e38 overflowed there into
#: "value cannot be converted to type float without overflow").
MIN_LR, MAX_LR = 1e-30, 1e30

#: Bounds of ``[train.augment]``: a scale factor outside [1/10, 10] or a shift of more than
#: :data:`MAX_AUGMENT_SHIFT` pixels leaves blank frames (a shift of more than the image's side
#: does too: :func:`check_augment_for_image`, once the data's image size is known).
MIN_AUGMENT_SCALE, MAX_AUGMENT_SCALE, MAX_AUGMENT_SHIFT = 0.1, 10.0, 1024.0


#: Per optimiser, the bound on ``rate * train.weight_decay`` (``rate``: a parameter group's
#: learning rate) below which the decay alone shrinks the weights, and what happens at or above
#: it. AdamW multiplies each weight by ``1 - rate * weight_decay`` every step: 1 zeroes the
#: weights, more flips their sign and grows them (1e6 at lr 1e-3: a factor of -999, a "loss" of
#: 8e7 recorded as an ordinary run). SGD (momentum 0.9) adds ``weight_decay * w`` to the
#: gradient: on that term alone the heavy-ball step is stable only for ``rate * weight_decay <
#: 2 (1 + momentum)``. Optimisers registered by others are not bounded here.
DECAY_BOUNDS = {
    "adam": (1.0, "AdamW multiplies each weight by 1 - lr * weight_decay every step, so the "
                  "weights are zeroed or flip sign and grow instead of decaying"),
    "sgd": (2 * (1 + 0.9), "SGD with momentum 0.9 adds weight_decay * w to the gradient, and "
                           "the step on that term alone grows the weights without bound when "
                           "lr * weight_decay >= 2 (1 + momentum) = 3.8"),
}


#: The built-in model kinds whose PDE layer trains at ``train.lr * train.pde_lr_scale``
#: (``pde_layer``, its own parameter group in :func:`~eqpdenet.app.training.train_model`, which
#: checks any other model that has one when it starts).
PDE_RATE_KINDS = ("eqpdenet",)


def require_decay_shrinks(optimizer: str, lr: float, scale: float, decay: float) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` naming ``train.weight_decay`` where the decay of
    ``optimizer`` at ``lr`` (and at the PDE layer's ``lr * scale``, where that is larger) would
    amplify the weights instead of shrinking them (:data:`DECAY_BOUNDS`)."""
    if optimizer not in DECAY_BOUNDS or not decay:
        return
    bound, why = DECAY_BOUNDS[optimizer]
    rate, rate_name = lr, "train.lr"
    if scale > 1.0:  # the PDE layer's group (model.kind = 'eqpdenet') steps at lr * scale
        rate, rate_name = lr * scale, "the PDE layer's rate train.lr * train.pde_lr_scale"
    require(rate * decay < bound, "train.weight_decay",
            f"{decay:g} with {rate_name} = {rate:.3g} gives lr * weight_decay = "
            f"{rate * decay:.3g}, not below {bound:g}: {why}; lower train.weight_decay below "
            f"{bound / rate:.3g}")


def require_rates_in_range(lr: float, scale: float, decay: float) -> None:
    """``lr`` and, with a PDE layer's group (``scale`` not 1), its rate ``lr * scale`` within
    [MIN_LR, MAX_LR], and each rate times ``decay`` at most MAX_LR: float32 steps would round to
    nothing or overflow. Checked by :class:`TrainConfig` at ``scale = 1`` and by
    :class:`ExperimentConfig` at ``train.pde_lr_scale`` for a kind with that group
    (:data:`PDE_RATE_KINDS`); the messages name the field to change."""
    checks = [(lr, "train.lr", "")]
    if scale != 1.0:
        checks.append((lr * scale, "train.pde_lr_scale",
                       "the PDE layer's rate train.lr * train.pde_lr_scale = "))
    for value, field_name, what in checks:
        require(MIN_LR <= value <= MAX_LR, field_name,
                f"{what}{value:.3g} is outside [{MIN_LR:g}, {MAX_LR:g}] (float32 steps "
                f"would round to nothing or overflow)")
    require(lr * max(scale, 1.0) * decay <= MAX_LR, "train.weight_decay",
            f"train.lr * train.weight_decay = {lr * max(scale, 1.0) * decay:.3g} is more "
            f"than {MAX_LR:g} (float32 steps would overflow)")


@dataclass
class TrainConfig:
    """How a model is trained (the same recipe for EqPdeNet and FCNN).

    Attributes:
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        lr: learning rate; ``lr_schedule`` ``"cosine"`` (to 0 over ``epochs``) or ``"constant"``.
        weight_decay: weight decay on every parameter: decoupled (AdamW) with ``adam``, each
            step shrinking a parameter by ``lr * weight_decay`` of its group's ``lr`` (so the
            PDE layer's parameters, at ``lr * pde_lr_scale``, decay ``pde_lr_scale`` times
            more slowly); L2 added to the gradient before momentum with ``sgd``
            (``torch.optim.SGD``'s ``weight_decay``). A decay that would amplify the weights
            instead (``lr * weight_decay >= 1`` with ``adam``, ``>= 3.8`` with ``sgd``, at the
            larger of ``lr`` and the PDE layer's rate) is refused (:data:`DECAY_BOUNDS`).
        pde_lr_scale: learning-rate multiplier for the paper's PDE layer's parameters (F and the
            reduction; ``model.kind = "eqpdenet"``, the only kind with a ``pde_layer``; other
            kinds train every parameter at ``lr``, and a value other than the default there
            gets a warning). With Adam, whose steps do not depend on the gradient's scale, and without
            weight decay, this is the same as parameterising the PDE coefficients as
            ``pde_lr_scale * theta``: it sets how fast the 31 coefficients, each acting on every
            pixel, move compared with the perceptron's weights.
        batch_size, epochs: mini-batch size and number of passes over the training digits.
        select_on_validation: keep the weights of the epoch with the best validation accuracy
            (needs ``DataConfig.validation > 0``); otherwise the last epoch's.
        grad_clip: clip the global gradient norm to this value (0 = off).
        seed: seeds parameter initialisation and mini-batch order.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        compile: train through ``torch.compile`` with static shapes
            (:func:`eqpdenet.app.training.compiled_for_training`: a compilation of a minute or
            two per batch size, then fused loops; the numbers differ from eager ones by rounding
            only).
        weight_average: the decay ``d`` of an exponential moving average of the parameters,
            ``w_avg <- d w_avg + (1 - d) w`` after every optimiser step
            (``torch.optim.swa_utils.AveragedModel``), so that it spans about ``1 / (1 - d)``
            steps; 0 (the default, the paper's) keeps the last weights. With it on, the
            average's batch-norm statistics are recomputed by one pass over the training images
            before each validation and at the end, and the validation accuracy, the selection
            on validation and the model returned are those of the average.
        augment: random similarities of each training image
            (:class:`eqpdenet.data.augment.AffineAugmentation`, ``[train.augment]``); off by
            default, as in the paper. Its draws come from their own generator (seeded from
            ``seed``), so turning it on leaves the batch order unchanged.
        blur_consistency: a penalty on the logits' relative change when a share of each batch
            is blurred slightly (:class:`eqpdenet.data.augment.BlurConsistency`,
            ``[train.blur_consistency]``); off by default (``weight = 0``), as in the paper.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    pde_lr_scale: float = 0.01
    batch_size: int = 128
    epochs: int = 20
    select_on_validation: bool = False
    grad_clip: float = 0.0
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    weight_average: float = 0.0
    augment: AffineAugmentation = field(default_factory=AffineAugmentation)
    blur_consistency: BlurConsistency = field(default_factory=BlurConsistency)

    def __post_init__(self):
        _require_section(self, "augment", AffineAugmentation, "train.augment")
        _require_section(self, "blur_consistency", BlurConsistency, "train.blur_consistency")
        OPTIMIZERS.check(self.optimizer, "train.optimizer")
        lr = require_positive(self.lr, "train.lr")
        LR_SCHEDULES.check(self.lr_schedule, "train.lr_schedule")
        decay = require_nonnegative(self.weight_decay, "train.weight_decay")
        require_positive(self.pde_lr_scale, "train.pde_lr_scale")
        # the PDE layer's rate, lr * pde_lr_scale, where the model has one: ExperimentConfig
        # (an fcnn at lr 1e-29 was refused for a PDE rate it does not have)
        require_rates_in_range(lr, 1.0, decay)
        require_decay_shrinks(self.optimizer, lr, 1.0, decay)
        require_int(self.batch_size, "train.batch_size", 1)
        require_int(self.epochs, "train.epochs", 1)
        require(self.epochs <= MAX_EPOCHS, "train.epochs",
                f"{self.epochs:,} is more than the bound of {MAX_EPOCHS:,} epochs (at one second "
                f"an epoch, {_duration(self.epochs)}); the paper's runs take 20")
        require_nonnegative(self.grad_clip, "train.grad_clip")
        require(isinstance(self.select_on_validation, bool), "train.select_on_validation",
                "must be true or false")
        _require_seed(self.seed, "train.seed")
        require(self.device in ("cpu", "cuda", "auto"), "train.device",
                f"{self.device!r} is not 'cpu', 'cuda' or 'auto'")
        require(isinstance(self.compile, bool), "train.compile", "must be true or false")
        require_nonnegative(self.weight_average, "train.weight_average")
        require(self.weight_average < 1, "train.weight_average",
                f"{self.weight_average!r} is not below 1 (a decay of 1 would never move the average)")
        augment = self.augment
        # 1e9 pixels or a factor of 1e30 trained on blank frames to chance accuracy, silently
        require(augment.max_scale <= MAX_AUGMENT_SCALE, "train.augment.max_scale",
                f"{augment.max_scale:.3g} is more than {MAX_AUGMENT_SCALE:g}: the digits would "
                f"be mostly outside the frame")
        require(augment.min_scale >= MIN_AUGMENT_SCALE, "train.augment.min_scale",
                f"{augment.min_scale:.3g} is less than {MIN_AUGMENT_SCALE:g}: the digits would "
                f"shrink to a few pixels")
        require(augment.max_shift <= MAX_AUGMENT_SHIFT, "train.augment.max_shift",
                f"{augment.max_shift:.3g} pixels is more than {MAX_AUGMENT_SHIFT:g}: the "
                f"images would be moved out of their frames")


@dataclass
class DataConfig:
    """Which images: a data set by name or path (:func:`eqpdenet.data.datasets.load_dataset`).

    Attributes:
        dataset: a registered name (``"rotmnist"``, the paper's; ``"mnist"``) or the path of a
            ``.npz`` file (``x_train, y_train, x_test, y_test``) or of a folder of IDX files.
            A relative path that exists is kept as the absolute path it names, so that the
            configuration recorded beside a run (a checkpoint's) finds its data from any folder.
        rotated: use the rotated version of the data set (each image rotated by an angle
            ~ U[0, 2 pi), training images from the training pool and test images from the test
            pool; :func:`eqpdenet.data.datasets.rotate_dataset`). ROTMNIST is rotated already
            (refused with the built-in one; ``"rotmnist"`` registered anew by a plugin is the
            user's set, :func:`eqpdenet.data.datasets.is_built_in`).
        source: the built-in ROTMNIST only: ``"auto"``, ``"generated"`` or ``"official"``.
        rotation_centre: what each image of generated ROTMNIST (or of a ``rotated`` data set)
            turns about: ``"frame"`` (the frame's centre; how the data were first generated, the
            default) or ``"mass"`` (its own centre of mass, so that where a digit sits in the
            frame does not tell the angle it was turned by: docs/data.md).
        rotmnist_seed: seed of the data: ROTMNIST's generation (which digits, which angles) and
            the angles of a ``rotated`` data set.
        validation: images held out of the training split for validation (the last ones, as in
            ROTMNIST's official 10,000 / 2,000 split); 0 trains on the whole training split.
        train_subset, test_subset: use only the first N training / test images (0 = all);
            for smoke runs.
    """

    dataset: str = "rotmnist"
    rotated: bool = False
    source: str = "auto"
    rotation_centre: str = "frame"
    rotmnist_seed: int = 0
    validation: int = 0
    train_subset: int = 0
    test_subset: int = 0

    def __post_init__(self):
        require(isinstance(self.dataset, str) and self.dataset != "", "data.dataset",
                "must be a data set name or path")
        if self.dataset not in DATASETS and not Path(self.dataset).is_absolute():
            path = Path(self.dataset).expanduser()
            if path.exists():
                self.dataset = str(path.resolve())
        require(isinstance(self.rotated, bool), "data.rotated", "must be true or false")
        # Decided here, before any data is made: ROTMNIST's generation (187 MB) and a sweep's
        # folder used to come first. The built-in ROTMNIST only: 'rotmnist' registered anew by
        # a plugin is the user's set, rotated or not as any other (datasets.is_built_in).
        rotmnist = self.dataset == "rotmnist" and is_built_in(self.dataset)
        require(not (self.rotated and rotmnist), "data.rotated",
                "ROTMNIST is rotated already; rotated applies to another data set (e.g. "
                "'mnist')")
        require(self.source in ("auto", "generated", "official"), "data.source",
                f"{self.source!r} is not 'auto', 'generated' or 'official'")
        require(self.rotation_centre in ("frame", "mass"), "data.rotation_centre",
                f"must be 'frame' or 'mass', got {self.rotation_centre!r}")
        replaced = (" ('rotmnist' is registered anew here, by a plugin: that data set is not "
                    "ROTMNIST)" if self.dataset == "rotmnist" and not rotmnist else "")
        require(self.rotation_centre == "frame" or rotmnist or self.rotated,
                "data.rotation_centre", f"{self.rotation_centre!r} applies to rotated data: "
                f"data.dataset = 'rotmnist' or data.rotated = true{replaced}")
        _require_seed(self.rotmnist_seed, "data.rotmnist_seed")
        require_int(self.validation, "data.validation", 0)  # its bound: the data set's size
        require_int(self.train_subset, "data.train_subset", 0)
        require_int(self.test_subset, "data.test_subset", 0)


@dataclass
class ExperimentConfig:
    """One training run and its evaluation: model + data + training + scenarios."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scenarios: list[str] = field(default_factory=lambda: ["test", "iso", "sca"])

    def __post_init__(self):
        require_lists(self, "")
        for name, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            _require_section(self, name, cls, name)
        require(not self.train.select_on_validation or self.data.validation > 0,
                "train.select_on_validation", "needs data.validation > 0")
        if self.model.kind in PDE_RATE_KINDS:
            # the PDE layer's group steps at lr * pde_lr_scale; other kinds have no such group
            # (an fcnn at lr 0.1 with pde_lr_scale 20 and decay 0.6 was refused for it)
            require_rates_in_range(self.train.lr, self.train.pde_lr_scale,
                                   self.train.weight_decay)
            require_decay_shrinks(self.train.optimizer, self.train.lr, self.train.pde_lr_scale,
                                   self.train.weight_decay)
        for index, name in enumerate(self.scenarios):
            SCENARIOS.check(name, f"scenarios[{index}]")
        repeated = sorted({name for name in self.scenarios if self.scenarios.count(name) > 1})
        require(not repeated, "scenarios", f"must be distinct; {', '.join(repeated)} appear(s) "
                                           f"twice")


@dataclass
class ReproduceConfig:
    """The paper's protocol: every (model, hidden size, seed) trained and evaluated once.

    ``base`` is the recipe shared by every run; ``models``, ``hidden_sizes`` and ``seeds``
    (training seeds; instance ``i`` uses seed ``seeds[i]`` for training and for its scenario
    draws) span the grid. Runs whose seed is in ``checkpoint_seeds`` also save their trained
    model to ``<out>/checkpoints/<model>-h<hidden>-seed<seed>.pt``.

    ``models`` are kinds of :data:`PAPER_MODELS` only, the two the report tables (other kinds:
    ``eqpdenet benchmark``); ``models`` and ``hidden_sizes`` are distinct. The fields of
    ``base`` that the grid sets for every run (:data:`GRID_FIELDS`: ``base.model.kind``,
    ``base.model.hidden``, ``base.train.seed``) must keep their defaults: a value there would
    be recorded in ``config.toml`` and in the base fingerprint, yet no run would use it.
    """

    base: ExperimentConfig = field(default_factory=ExperimentConfig)
    models: list[str] = field(default_factory=lambda: ["eqpdenet", "fcnn"])
    hidden_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    seeds: list[int] = field(default_factory=lambda: list(range(10)))
    checkpoint_seeds: list[int] = field(default_factory=lambda: [0])

    def __post_init__(self):
        require_lists(self, "")
        # a dict's missing fields from this class's own default base, as from_dict of a file
        # fills them (the benchmark's has five scenarios; ExperimentConfig's three were taken)
        _require_section(self, "base", ExperimentConfig, "base",
                         lambda: _field_default(_fields_by_name(type(self))["base"]))
        require(len(self.models) >= 1, "models", "must be a non-empty list of model kinds")
        for index, kind in enumerate(self.models):
            # Another kind trained and was then left out of the report's tables (or, for a kind
            # without a hidden size, trained the same run once per hidden size).
            require(kind in PAPER_MODELS, f"models[{index}]",
                    f"{kind!r} is not a model of the paper's tables; reproduce runs "
                    f"{' and '.join(map(repr, PAPER_MODELS))} (compare other kinds with "
                    f"`eqpdenet benchmark`)")
        require(len(set(self.models)) == len(self.models), "models",
                f"must be distinct, got {self.models}")
        require(len(self.hidden_sizes) >= 1, "hidden_sizes",
                "must be a non-empty list of positive integers")
        for index, hidden in enumerate(self.hidden_sizes):
            require_int(hidden, f"hidden_sizes[{index}]", 1)
        require(len(set(self.hidden_sizes)) == len(self.hidden_sizes), "hidden_sizes",
                f"must be distinct, got {self.hidden_sizes}")
        for path, spanned_by in GRID_FIELDS.items():
            _require_default(self.base, path, f"the grid sets each run's {path[-1]} from "
                                              f"{spanned_by}; set {spanned_by} instead")
        _require_seeds(self)
        # Every run trained, then the report refused: "nothing to table". (No scenario at all is
        # a study's base, which measures validation accuracy and says so itself where it has no
        # validation split; `reproduce` refuses that too: require_scored.)
        tabled = [name for name in self.base.scenarios if name in PAPER_SCENARIOS]
        require(tabled or not self.base.scenarios or self.base.data.validation > 0,
                "base.scenarios",
                f"{self.base.scenarios} holds none of the scenarios the paper's tables report "
                f"({', '.join(PAPER_SCENARIOS)}) and base.data.validation is 0: the runs would "
                f"train and leave nothing to table; add one of them (other scenarios: "
                f"`eqpdenet benchmark`)")


#: The models of the paper's protocol (Tables 1 and 2): the kinds ``reproduce`` runs and
#: :mod:`eqpdenet.app.report` tables.
PAPER_MODELS = ("eqpdenet", "fcnn")

#: The scenarios of the paper's tables (:data:`eqpdenet.app.report.SCENARIOS`): a ``reproduce``
#: base must evaluate one of them, or measure validation accuracy.
PAPER_SCENARIOS = ("test", "iso", "sca")

#: Fields of ``reproduce``'s base that the grid sets in every run: path -> the list that spans it.
GRID_FIELDS = {("model", "kind"): "models", ("model", "hidden"): "hidden_sizes",
               ("train", "seed"): "seeds"}


def _require_default(base: ExperimentConfig, path: tuple[str, ...], reason: str) -> None:
    """``base``'s field at ``path`` at its default, else a ConfigError naming ``base.<path>``."""
    section = getattr(base, path[0])
    default = getattr(type(section), path[1])
    value = getattr(section, path[1])
    require(value == default, "base." + ".".join(path),
            f"{value!r} is never used: {reason} (leave base.{'.'.join(path)} out)")


def _require_seed(value, field: str) -> None:
    """A seed torch and NumPy both accept: an integer in [0, 2**63)."""
    require(require_int(value, field, 0) < 2**63, field, f"must be < 2**63, got {value!r}")


def require_scored(config: ExperimentConfig, path: str = "") -> None:
    """A ConfigError unless a run of ``config`` is scored on something: a scenario, or the
    validation split (``path``: where the experiment sits, ``"base."`` in a sweep). An empty
    ``scenarios`` with ``data.validation = 0`` trained, then printed an empty accuracy line
    (``train``) or left nothing to table (``reproduce``)."""
    require(config.scenarios or config.data.validation > 0, f"{path}scenarios",
            f"is empty and {path}data.validation is 0: the runs would be scored on nothing; name "
            f"scenarios (of {', '.join(SCENARIOS.names())}) or hold out validation images")


def _require_seeds(config) -> None:
    """A sweep's ``seeds`` (distinct, non-empty) and ``checkpoint_seeds`` (distinct, each one of
    ``seeds``: another would save no checkpoint), each a seed (:func:`_require_seed`)."""
    for name in ("seeds", "checkpoint_seeds"):
        values = getattr(config, name)
        for index, seed in enumerate(values):
            _require_seed(seed, f"{name}[{index}]")
        require(len(set(values)) == len(values) and (values or name != "seeds"), name,
                f"must be distinct{' and non-empty' if name == 'seeds' else ''}, got {values}")
    # The default [0] with seeds that leave 0 out means "no checkpoint" (as [] does).
    default = type(config).__dataclass_fields__["checkpoint_seeds"].default_factory()
    if config.checkpoint_seeds != default:
        outside = [seed for seed in config.checkpoint_seeds if seed not in config.seeds]
        require(not outside, "checkpoint_seeds",
                f"{outside} {'is' if len(outside) == 1 else 'are'} not among seeds "
                f"{config.seeds}: no run has {'that seed' if len(outside) == 1 else 'those seeds'}, "
                f"so no checkpoint would be saved")


def _degrees(start: float, stop: float, step: float) -> list[float]:
    return [float(start + step * k) for k in range(int(round((stop - start) / step)) + 1)]


#: The range of ``curves.scales`` (:class:`CurvesConfig`).
MIN_CURVE_SCALE, MAX_CURVE_SCALE = 1e-6, 1e6


@dataclass
class CurvesConfig:
    """What the robustness benchmark measures beyond the scenarios, on the first ``images``
    test images (:mod:`eqpdenet.analysis.robustness`).

    Attributes:
        images: test images used for the curves and the invariance errors.
        angles: rotations (degrees) of the accuracy-against-angle curve.
        scales: scale factors of the accuracy-against-scale curve (from 1e-6 to 1e6).
        shifts: shift distances (pixels) of the accuracy-against-shift curve.
        invariance_angles: rotations (degrees) at which the logits' relative change is measured.
    """

    images: int = 2000
    angles: list[float] = field(default_factory=lambda: _degrees(0, 345, 15))
    scales: list[float] = field(default_factory=lambda: [round(0.5 + 0.1 * k, 2) for k in range(11)])
    shifts: list[float] = field(default_factory=lambda: [0.5 * k for k in range(9)])
    invariance_angles: list[float] = field(default_factory=lambda: [90.0, 37.0])

    def __post_init__(self):
        require_lists(self, "curves.")
        require_int(self.images, "curves.images", 1)
        for name in ("angles", "scales", "shifts", "invariance_angles"):
            values = getattr(self, name)
            require(all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in values), f"curves.{name}", "must be a list of finite numbers")
            setattr(self, name, [float(v) for v in values])
            # An empty curve trained and recorded its runs, then failed every report; a point
            # measured twice weighs twice in nothing but makes a curve's axis ambiguous.
            require(len(values) > 0, f"curves.{name}", "must hold at least one value")
            # Distinct as the records name them (f"{v:g}", six digits): 37.0 and 37.0000001
            # were one key, one measurement silently replacing the other.
            keys = [f"{v:g}" for v in getattr(self, name)]
            repeated = sorted({k for k in keys if keys.count(k) > 1}, key=float)
            require(not repeated, f"curves.{name}",
                    f"must be distinct to 6 digits (the records name each value so); "
                    f"{', '.join(repeated)} appear(s) twice")
        require(all(v > 0 for v in self.scales), "curves.scales", "must be positive")
        # A factor outside [1e-6, 1e6] measures nothing (a digit under a millionth of a pixel,
        # or one pixel over a million frames), and beyond float32 its sampling matrix was
        # singular or infinite: found only after training ("linalg.inv ... singular").
        require(all(MIN_CURVE_SCALE <= v <= MAX_CURVE_SCALE for v in self.scales),
                "curves.scales", f"must be from {MIN_CURVE_SCALE:g} to {MAX_CURVE_SCALE:g}, got "
                f"{[v for v in self.scales if not MIN_CURVE_SCALE <= v <= MAX_CURVE_SCALE]}")
        # A shift is a distance, in a random direction drawn per image: a negative one only
        # reversed that direction, and read as a smaller shift on the curve's axis.
        require(all(v >= 0 for v in self.shifts), "curves.shifts",
                f"must be distances >= 0, got {[v for v in self.shifts if v < 0]}")


#: The models of the robustness benchmark: name -> overrides of the base experiment (as --set).
#: Recipes were chosen on the validation split (docs/benchmark.md).
BENCHMARK_MODELS: dict[str, list[str]] = {
    "fcnn": ["model.kind='fcnn'"],
    "eqpdenet": [],
    "eqpdenet-invariant-head": ["model.head='invariant'", "model.layer.reduction='concat'"],
    "cnn": ["model.kind='cnn'", "train.lr_schedule='cosine'"],
    "gcnn": ["model.kind='gcnn'", "train.lr_schedule='cosine'"],
    "invariant-pde": ["model.kind='invariant_pde'", "train.lr_schedule='cosine'"],
}


@dataclass
class BenchmarkConfig:
    """The robustness benchmark: every model of ``models`` trained with every seed.

    ``base`` is the shared experiment (data, training recipe, scenarios); each entry of
    ``models`` is a list of ``section.field=value`` overrides applied to it (as ``--set``), so
    each model can have its own recipe.
    """

    base: ExperimentConfig = field(default_factory=lambda: ExperimentConfig(
        scenarios=["test", "iso", "sca", "rot", "shift"]))
    models: dict[str, list[str]] = field(default_factory=lambda: dict(BENCHMARK_MODELS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    checkpoint_seeds: list[int] = field(default_factory=lambda: [0])
    curves: CurvesConfig = field(default_factory=CurvesConfig)

    def __post_init__(self):
        require_lists(self, "")
        # a dict's missing fields from this class's own default base, as from_dict of a file
        # fills them (the benchmark's has five scenarios; ExperimentConfig's three were taken)
        _require_section(self, "base", ExperimentConfig, "base",
                         lambda: _field_default(_fields_by_name(type(self))["base"]))
        _require_section(self, "curves", CurvesConfig, "curves")
        require(isinstance(self.models, dict) and len(self.models) >= 1, "models",
                "must name at least one model")
        for name, overrides in self.models.items():
            require(isinstance(overrides, list) and all(isinstance(o, str) for o in overrides),
                    f"models.{name}", "must be a list of section.field=value overrides")
            # experiment() sets train.seed after the entry's overrides: one there was recorded in
            # config.toml and never used. By the fields set, not the key's text: "train={seed=5}"
            # passed a check of the text.
            require(not any("train.seed" in assigned_fields(o) for o in overrides),
                    f"models.{name}", "sets train.seed, which the benchmark sets for each run "
                    "from seeds; set seeds instead")
        _require_default(self.base, ("train", "seed"),
                         "the benchmark sets each run's seed from seeds; set seeds instead")
        _require_seeds(self)
        # Each entry's recipe, checked now: a bad one (or a seed out of range) failed inside the
        # sweep, after its folder was claimed.
        for name in self.models:
            try:
                self.experiment(name, self.seeds[0])
            except ConfigError as error:
                text = str(error).removeprefix("invalid config: ")
                raise ConfigError(f"invalid config: models.{name}: {text}") from None

    def experiment(self, name: str, seed: int) -> ExperimentConfig:
        """The configuration of model ``name`` with ``seed``."""
        if name not in self.models:
            raise ConfigError(f"the benchmark has no model {name!r}; it has {sorted(self.models)}")
        config = apply_overrides(self.base, [*self.models[name], f"train.seed={int(seed)}"])
        return config


# ----------------------------------------------------------------------------- conversions


def to_dict(config) -> dict:
    """A dataclass as nested plain dicts and lists."""
    return dataclasses.asdict(config)


def _check_type(value, hint, field: str, in_file: bool = False, listed=None):
    """``value`` has the type the dataclass field declares (``bool`` is no number here); the
    range and meaning are the dataclass's own ``__post_init__`` checks. ``in_file``: the value
    was read from a TOML file (a quoting hint then says to quote it there, not with ``--set``);
    ``listed``: ``(path, items)`` of the list ``value`` is an element of."""
    if hint is bool:
        require(isinstance(value, bool), field, f"must be true or false, got {value!r}")
    elif hint is int:
        require_int(value, field)
    elif hint is float:
        require_finite(value, field)
    elif hint is str:
        require(isinstance(value, str), field, f"must be a string, got {value!r}"
                                               f"{_quote_hint(value, field, in_file, listed)}")
    elif hint is list or typing.get_origin(hint) is list:
        require(isinstance(value, list), field, f"must be a list, got {value!r}")
        for index, item in enumerate(value):
            for inner in typing.get_args(hint):
                _check_type(item, inner, f"{field}[{index}]", in_file, (field, value))


def _quote_hint(value, field: str, in_file: bool = False, listed=None) -> str:
    """Where TOML read an unquoted value as a date, time, number or bool that was meant as a
    string (``--set data.dataset=123``), how to quote it; else ``""``. The ``--set`` example
    assigns the field as ``--set`` takes it: an element of a list (``listed``: the list's path
    and items) by the whole list with its strings quoted (``--set "scenarios=['1']"``;
    ``--set "scenarios[0]='1'"`` was suggested, which ``--set`` refuses: no field is named so).
    Read from a file (``in_file``), the hint says to quote it there, without ``--set``."""
    if isinstance(value, datetime.date | datetime.time):
        return f' (TOML reads {value} as a {type(value).__name__}: quote it, "{value}")'
    if not isinstance(value, bool | int | float):
        return ""
    if isinstance(value, bool | int):
        # as written: TOML spells a bool in lower case, an int as Python prints it
        text = str(value).lower() if isinstance(value, bool) else str(value)
        kind = "a bool" if isinstance(value, bool) else "an integer"
        lead = f" (TOML reads an unquoted {text} as {kind}: quote it, '{text}'"
    else:  # 1e3 is read as 1000.0: the text written is not known here
        text, lead = "...", " (TOML reads the unquoted value as a number: quote it as written"
    if in_file:
        return lead + ")"
    if listed is not None:
        path, items = listed
        return f"{lead}, as in --set \"{path}=[{', '.join(map(_quoted_item, items))}]\")"
    return f"{lead}, as in --set \"{field}='{text}'\")"


def _quoted_item(item) -> str:
    """An element of a list of strings as :func:`_quote_hint`'s example writes it: quoted in
    single quotes (a TOML literal string, which the shell's double quotes keep), a number or
    bool as written (``'1'``, ``'true'``), ``'...'`` where the text is not known (a float) or
    cannot be written so (a quote, a character the shell expands inside double quotes, or a
    control character in it)."""
    if isinstance(item, bool):
        text = str(item).lower()
    elif isinstance(item, int | str):
        text = str(item)
    else:
        text = "..."
    if any(char in "'\"$`\\" or ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        text = "..."
    return f"'{text}'"


def _fields_by_name(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _field_default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def from_dict(cls, data: dict, base=None, _path: str = "", _in_file: bool = False):
    """Build dataclass ``cls`` from a (possibly partial) dict; unknown keys are an error, and so
    is a value of the wrong type (the error names the field, e.g. ``model.hidden``).

    Missing fields come from ``base`` (an instance of ``cls``) if given, else from the field
    defaults; a nested table is completed from the enclosing field's default (or ``base``'s
    value). A layer table's ``preset`` key names the :data:`LAYER_PRESETS` entry it starts from.
    ``_in_file``: ``data`` was read from a TOML file (:func:`load_toml`), for the quoting hint.
    """
    if not isinstance(data, dict):
        where = _path.rstrip(".") or cls.__name__
        raise ConfigError(f"invalid config: {where}: expects a table of {cls.__name__} fields, "
                          f"got {data!r}")
    if cls is LayerConfig and "preset" in data:
        data = dict(data)
        base = _layer_preset(data.pop("preset"), f"{_path}preset")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    hints = typing.get_type_hints(cls)
    if unknown:
        # named by their paths (train.learning_rate), as every other field error names its field
        tables = {name: [f.name for f in dataclasses.fields(hint)]
                  if dataclasses.is_dataclass(hint) else None for name, hint in hints.items()
                  if name in names}
        meant = {n: _did_you_mean(n, tables, _path) for n in unknown}
        # a sweep's file: its own fields are no misspellings ("did you mean 'model' for
        # 'models'?" contradicted the hint)
        hint = _base_hint(data, names, _path)
        raise ConfigError(f"invalid config: unknown field(s) {[_path + n for n in unknown]} for "
                          f"{cls.__name__}{'' if hint else _meant_text(meant)}{hint}; "
                          f"known: {sorted(names)}")
    kwargs = {}
    if base is not None:
        kwargs = {name: copy.deepcopy(getattr(base, name)) for name in names if name not in data}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                nested = getattr(base, key) if base is not None else _field_default(names[key])
                value = from_dict(hint, value, base=nested if isinstance(nested, hint) else None,
                                  _path=f"{_path}{key}.", _in_file=_in_file)
        else:
            if typing.get_origin(hint) is list and isinstance(value, tuple):
                value = list(value)
            _check_type(value, hint, f"{_path}{key}", _in_file)
            if hint is float:
                value = float(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"invalid config for {cls.__name__}: {error}") from None
    except ConfigError as error:
        # A nested configuration names its fields from itself ("layer.sigma", as a library
        # user of LayerConfig writes it); from a file or --set the field is "model.layer.sigma".
        # A configuration whose fields are named from its parent's table (a sweep's base names
        # "scenarios", "train.select_on_validation") gets the whole path ("base.scenarios").
        own, text, lead = _path.rstrip(".").rpartition(".")[2], str(error), "invalid config: "
        fields, colon, rest = text[len(lead):].partition(": ")
        if own and _path != f"{own}." and text.startswith(f"{lead}{own}."):
            fields = re.sub(rf"(^|/ ){re.escape(own)}\.", lambda m: m.group(1) + _path, fields)
            raise ConfigError(f"{lead}{fields}{colon}{rest}") from None
        if (_path and text.startswith(lead) and colon and not fields.startswith(_path)
                and not text.startswith(f"{lead}{own}.") and re.fullmatch(_FIELDS, fields)):
            fields = re.sub(r"(^|/ )", lambda m: m.group(1) + _path, fields)
            raise ConfigError(f"{lead}{fields}{colon}{rest}") from None
        raise


def _require_section(config, name: str, cls, path: str, base=None) -> None:
    """Field ``name`` of ``config`` (a table of fields, ``path`` its dotted path) as a ``cls``,
    on construction: an instance is kept, a dict is converted as a file's table is
    (:func:`from_dict`, missing fields from ``base()`` where given, else the defaults), and
    anything else is a :class:`ConfigError` naming ``path`` and the type expected (``None`` or a
    dict kept as it was failed later, as a raw ``AttributeError`` once training read it)."""
    value = getattr(config, name)
    if isinstance(value, cls):
        return
    if not isinstance(value, dict):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise ConfigError(f"invalid config: {path}: must be {article} {cls.__name__} or a dict "
                          f"of its fields, got {value!r}")
    setattr(config, name, from_dict(cls, value, base=base() if base is not None else None,
                                    _path=f"{path}."))


def _base_hint(data: dict, names, path: str) -> str:
    """Where ``data``, a table of a configuration without ``base`` (field ``names``), has a
    ``base`` table, as a sweep's configuration holds its runs' experiment (a benchmark's
    ``config.toml`` given to ``train --config``), the way to write it as one experiment, as
    :func:`_under_base` says it for ``--set``; else ``""``."""
    inner = data.get("base")
    if "base" in names or not isinstance(inner, dict) or not inner:
        return ""
    moves = ", ".join(f"{path}base.{key} as {path}{key}" for key in inner)
    sweep_own = sorted(set(data) - set(names) - {"base"})
    leave = (f", and leave out the sweep's own {', '.join(path + key for key in sweep_own)}"
             if sweep_own else "")
    return (f"; this configuration is one experiment, without base (a sweep's, with base, is "
            f"for reproduce, benchmark or study): write {moves}{leave}")


def _layer_preset(name, field: str) -> LayerConfig:
    """The layer preset ``name`` (:meth:`LayerConfig.preset`), its error naming ``field`` (the
    preset key's path, ``base.model.layer.preset``) as every other field's does."""
    try:
        return LayerConfig.preset(name)
    except ConfigError as error:
        text = str(error).removeprefix("invalid config: ")
        raise ConfigError(f"invalid config: {field}: {text}") from None


def _did_you_mean(name: str, tables: dict, prefix: str) -> list[str]:
    """The fields meant by the unknown ``name`` of a table whose fields are ``tables`` (field
    name -> the names of its own fields where it is a table, else ``None``), as paths under
    ``prefix``: the nested tables that have the name (``T`` in ``[model]``: ``model.layer.T``;
    ``model`` in a sweep's file: ``base.model``), else the closest field name (``lrr``:
    ``lr``); ``[]`` where nothing is close."""
    inner = [f"{prefix}{table}.{name}" for table, fields in tables.items()
             if fields is not None and name in fields]
    if inner:  # before a close name: [model] in a sweep's file means base.model, not models
        return inner
    # cutoff 0.65, not difflib's 0.6: that offered 'train' for 'extra' (and still takes 'T'
    # for 'TT', 0.67)
    return [prefix + close
            for close in difflib.get_close_matches(name, list(tables), n=1, cutoff=0.65)]


def _meant_text(meant: dict[str, list[str]]) -> str:
    """`` (did you mean 'train.lr'?)`` for the suggestions of :func:`_did_you_mean` (unknown
    name -> paths), each named by its unknown field where there are several; ``""`` where
    none."""
    found = {name: " or ".join(map(repr, paths)) for name, paths in meant.items() if paths}
    if not found:
        return ""
    if len(meant) == 1:
        return f" (did you mean {next(iter(found.values()))}?)"
    return " (did you mean " + ", ".join(f"{paths} for {name!r}"
                                         for name, paths in found.items()) + "?)"


#: The field names of a ConfigError's message (``a.b[0]``, or several as ``a / b``).
_FIELDS = r"[A-Za-z_][\w.\[\]]*( / [A-Za-z_][\w.\[\]]*)*"


def _toml_value(value, field: str = "the value") -> str:
    """``value`` as TOML; what TOML cannot hold is a :class:`ConfigError` naming ``field`` (the
    field's path, e.g. ``model.layer.invariants[0]``) and, for an object given where a name is
    recorded (an :class:`~eqpdenet.pde.invariants.InvariantSet`), how to name it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write {field} to TOML: it is the non-finite float {value}")
        return repr(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # A file name in another encoding reaches Python as lone surrogates
            # (os.fsdecode): a TOML file is UTF-8, so the run's configuration could not be
            # saved, found only after training.
            raise ConfigError(f"cannot write {field} to TOML: {value!r} is not UTF-8 text (a "
                              f"file name in another encoding?); rename the file, or reach it "
                              f"through a symbolic link with a UTF-8 name") from None
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, f"{field}[{i}]") for i, v in enumerate(value)) + "]"
    if value is None:
        raise ConfigError(f"cannot write {field} to TOML: TOML has no null (leave the field out "
                          f"instead)")
    if isinstance(value, InvariantSet):
        taken = value.name in INVARIANT_SETS
        if taken and INVARIANT_SETS.get(value.name) is value:
            how = f"give its registered name, {value.name!r}"
        else:
            how = ("register the set (compile_invariants(..., register=True), or "
                   "register_invariant_set(set)) and give its name"
                   + (f" ({value.name!r} is another set's: name this one otherwise)" if taken
                      else f", {value.name!r}")
                   + ": a configuration records names, which a later process resolves by "
                     "importing what registers them")
        raise ConfigError(f"cannot write {field} to TOML: it is an InvariantSet object "
                          f"({value.name!r}) where a configuration records a registered set's "
                          f"name; {how}")
    raise ConfigError(f"cannot write {field} to TOML: it is a {type(value).__name__}, which TOML "
                      f"cannot hold (a configuration records names, numbers, strings and lists)")


def _toml_string(text: str) -> str:
    """A TOML basic string: backslash, quote and every control character escaped (a newline in
    a path made the saved configuration unreadable)."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _toml_key(key: str) -> str:
    """A key as written: bare where TOML allows (letters, digits, ``_``, ``-``), else quoted (a
    benchmark entry ``fcnn.v2`` written bare would be read back as a table ``fcnn``)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def to_toml(config, _prefix: str = "") -> str:
    """A dataclass (or dict) as TOML text; nested dataclasses become tables."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else config
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{_toml_key(key)} = {_toml_value(value, _prefix + _toml_key(key))}"
             for key, value in scalars.items()]
    for key, value in tables.items():
        name = f"{_prefix}{_toml_key(key)}"
        lines += ["", f"[{name}]", to_toml(value, name + ".").rstrip("\n")]
    return "\n".join(lines).lstrip("\n") + "\n"


#: Fields added after results were first recorded, with the behaviour from before they existed.
#: :func:`~eqpdenet.app.training.fingerprint` leaves a field out while it has that value, so a
#: configuration recorded before the field existed keeps its fingerprint (and its results folder
#: stays resumable). Here, not in training, which imports this module: :func:`load_toml` reads it.
LATER_FIELDS: dict[tuple[str, ...], object] = {
    ("model", "layer", "backend"): "auto",
    ("model", "layer", "recompute"): False,
    # Every layer before the field existed divided with the paper's absolute eps.
    ("model", "layer", "ratio_regularisation"): "absolute",
    ("model", "layer", "sigma"): None,
    ("model", "in_channels"): 1,
    ("model", "standardize"): "auto",
    ("model", "head"): "perceptron",
    ("train", "compile"): False,
    ("data", "dataset"): "rotmnist",
    ("data", "rotated"): False,
    ("train", "augment"): {"max_shift": 0.0, "max_angle_degrees": 0.0, "min_scale": 1.0,
                           "max_scale": 1.0},
    ("model", "lifted_pde", "margin"): 0,
    ("model", "lifted_pde", "center"): False,
    ("model", "gcnn", "center"): False,
    ("data", "rotation_centre"): "frame",
    ("model", "lifted_pde", "stage_orientations"): [],
    # Every SIM(2) InvariantPDENet before the field existed divided by N + the smallest normal.
    ("model", "invariant_pde", "jet_floor"): 0.0,
    ("train", "weight_average"): 0.0,
    ("train", "blur_consistency"): {"weight": 0.0, "max_sigma": 0.71, "fraction": 0.25},
}

def load_toml(cls, path: str | Path, *, base=None):
    """Read ``cls`` from a TOML file; missing fields take ``base``'s values (an instance of
    ``cls``: ``study --config`` completes a partial file from the study's own starting point),
    else their defaults. An error in the file's content names the file (``config file PATH: invalid
    config: train.epochs: ...``), as one in its syntax does; a registered name the process
    does not know (a plugin's, not imported) has that hint
    (:func:`~eqpdenet.app.plugins.unregistered_hint`).

    One exception to the defaults: a field added since results were first recorded
    (:data:`LATER_FIELDS`) that is missing from a table of an
    experiment which writes every other field of that table, as a configuration saved before the
    field existed does (:func:`to_toml` writes every field), is read with its behaviour from
    before it where that differs from the default (``model.invariant_pde.jet_floor = 0``, not
    ``0.1``): the same value a checkpoint or a sweep's record of that run gets
    (:func:`~eqpdenet.app.training.with_legacy_fields`). A warning names each such field, the
    value read and the default, unless the field has no effect on the runs
    (:func:`fields_without_effect`). A partial table, or a missing one, takes the default."""
    config, earlier = load_toml_and_earlier(cls, path, base=base)
    warn_earlier_fields(path, earlier, config)
    return config


def load_toml_and_earlier(cls, path: str | Path, *, base=None):
    """:func:`load_toml` without its warning: ``(configuration, earlier)``, ``earlier`` the
    fields read with their behaviour from before they existed (``(path in the file, value read,
    today's default)``), for :func:`warn_earlier_fields` once the command line's options are
    applied."""
    path = Path(path)
    try:
        # utf-8-sig skips a leading byte-order mark (Windows editors and PowerShell write one):
        # read as "utf-8", such a file was "Invalid statement (at line 1, column 1)"
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give the TOML file in it") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (a TOML file?)") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    try:
        config = from_dict(cls, data, base=base, _in_file=True)
        earlier = _saved_before_fields(data, config)
        if earlier:
            data = copy.deepcopy(data)
            for where, value, _ in earlier:
                _table_at(data, where[:-1])[where[-1]] = copy.deepcopy(value)
            config = from_dict(cls, data, base=base, _in_file=True)
    except ConfigError as error:
        # a file that names a plugin's model kind, data set or scenario (a sweep's config.toml
        # read to resume it) without the plugin imported: the likely cause, as a report says
        from .plugins import is_unregistered, unregistered_hint

        text = unregistered_hint(error) if is_unregistered(str(error)) else str(error)
        raise ConfigError(f"{file_prefix(path)}{text}") from None
    return config, earlier


def warn_earlier_fields(path: str | Path, earlier, config, assigned=()) -> None:
    """The warning :func:`load_toml` gives for each field it read with its earlier behaviour
    (``earlier``, from :func:`load_toml_and_earlier`), judged on ``config``, the configuration
    that runs: the command line's ``--set``, ``--model`` or ``--layer`` applied (a field they
    set to another value, or a model kind it has no effect on, is not named: the warning told
    a user who had set ``jet_floor = 0.1`` to write it). Nor is a field that the command line
    names itself, whatever its value (``assigned``: :func:`assigned_paths`; ``--set
    ...jet_floor=0`` chose the earlier value and was still told to write it)."""
    named = {tuple(where) for where in assigned}
    for where, value, default in earlier:
        if any(where[:length] in named for length in range(1, len(where) + 1)):
            continue
        if _acts(config, where, value):
            table, name = ".".join(where[:-1]), where[-1]
            warnings.warn(
                f"{file_prefix(path)}{'.'.join(where)} is not written in [{table}], which writes "
                f"every other field, as a configuration saved before the field existed does: "
                f"read as {value!r}, its behaviour then (as a checkpoint or a sweep's record of "
                f"that run reads it); the default is now {default!r} (write {name} = "
                f"{_toml_value(default, '.'.join(where))} in [{table}] to use it)",
                UserWarning, stacklevel=3)


def assigned_paths(assignments) -> set[tuple[str, ...]]:
    """The fields that ``--set`` assignments (as :func:`apply_overrides` takes them) name, as
    key paths: ``a.b=1`` names ``("a", "b")``, a table given whole (``a={b=1, c=2}``, merged
    into the table) each of its keys and not the table, and ``...layer.preset=NAME``, which
    replaces the whole table, that table."""
    paths: set[tuple[str, ...]] = set()
    for assignment in assignments or []:
        if "=" not in assignment:
            continue
        path, value = assignment.split("=", 1)
        keys = tuple(key.strip() for key in path.strip().split("."))
        if keys[-1] == "preset":
            paths.add(keys[:-1])
            continue
        try:
            table = tomllib.loads(f"value = {value.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            table = None
        # a table given whole is merged (apply_overrides): it names its keys, not the table
        # (--set 'model.invariant_pde={channels=[4]}' hid the warning of jet_floor it keeps)
        paths |= _table_paths(keys, table) if isinstance(table, dict) else {keys}
    return paths


def _table_paths(keys: tuple[str, ...], value) -> set[tuple[str, ...]]:
    """The key paths under ``keys`` that a table given whole (``value``) sets: its leaves (a
    table inside it is merged too), and ``keys`` itself where it holds a ``preset``."""
    paths: set[tuple[str, ...]] = set()
    for key, item in value.items():
        paths |= ({keys} if key == "preset" else _table_paths(keys + (key,), item)
                  if isinstance(item, dict) else {keys + (key,)})
    return paths


def _table_at(data, keys) -> dict | None:
    """The table at ``keys`` in nested dicts (as a TOML file was read), or None."""
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else None


def _plain(value):
    """``value`` as a configuration dict holds it (a dataclass as a dict)."""
    return to_dict(value) if dataclasses.is_dataclass(value) else value


def _experiment_roots(cls) -> list[tuple[str, ...]]:
    """Where experiments sit in a configuration of ``cls``: ``()`` for an
    :class:`ExperimentConfig`, ``("base",)`` for a sweep's."""
    if issubclass(cls, ExperimentConfig):
        return [()]
    hints = typing.get_type_hints(cls)
    return [(spec.name,) for spec in dataclasses.fields(cls)
            if isinstance(hints.get(spec.name), type)
            and issubclass(hints[spec.name], ExperimentConfig)]


def _saved_before_fields(data: dict, config) -> list[tuple[tuple[str, ...], object, object]]:
    """``(path in the file, earlier value, value read)`` of each
    :data:`LATER_FIELDS` entry that ``data`` (a TOML file as read;
    ``config``: what :func:`from_dict` made of it) leaves out of a table that writes every other
    field of its dataclass, where the value read differs from the behaviour from before the
    field existed. Fields that such a file could not have written either are not required: the
    other LATER_FIELDS entries, and those read as None (:func:`to_toml` leaves None out). A
    table starting from a preset was written by hand."""
    found = []
    for root in _experiment_roots(type(config)):
        for path, value in LATER_FIELDS.items():
            where = root + path
            table = _table_at(data, where[:-1])
            if table is None or where[-1] in table or "preset" in table:
                continue
            section = _at_path(config, ".".join(where[:-1]))
            if not dataclasses.is_dataclass(section):
                continue
            written = all(spec.name in table for spec in dataclasses.fields(section)
                          if spec.name != path[-1] and path[:-1] + (spec.name,) not in LATER_FIELDS
                          and getattr(section, spec.name) is not None)
            read = _plain(getattr(section, path[-1]))
            if written and read != value:
                found.append((where, value, read))
    return found


def _acts(config, where: tuple[str, ...], value) -> bool:
    """Whether the field at ``where`` (a path in ``config``, under its experiment's root) holding
    ``value`` changes a run of ``config``: in some experiment the configuration runs (a
    benchmark's model entries, a paper sweep's model kinds) it still holds ``value`` and
    :func:`fields_without_effect` does not name it."""
    if isinstance(config, ExperimentConfig):
        runs, path = [config], where
    else:
        base, path = getattr(config, where[0]), where[1:]
        if isinstance(config, BenchmarkConfig):
            runs = [config.experiment(name, config.seeds[0]) for name in config.models]
        elif isinstance(config, ReproduceConfig):  # the grid sets model.kind
            runs = [apply_overrides(base, [f"model.kind={_toml_string(kind)}"])
                    for kind in config.models]
        else:
            runs = [base]
    dotted = ".".join(path)
    return any(_plain(_at_path(run, dotted)) == value
               and not any(line.startswith(f"{dotted} = ") for line in fields_without_effect(run))
               for run in runs)


def file_prefix(path: str | Path) -> str:
    """What :func:`load_toml` puts before an error in the content of the file ``path``
    (``config file PATH: ``): a caller whose own message names the file takes it off."""
    return f"config file {path}: "


def _parse_value(text: str, field: str = "the value", text_field: bool = False):
    """``--set``'s value ``text`` as TOML, else the string itself (``model.kind=fcnn``). Text that
    starts as a TOML list, table or quoted string (``[``, ``{``, a quote) but is not valid TOML
    is a :class:`ConfigError` naming ``field`` and TOML's reason: taken as a string, it was
    reported as the wrong type (``scenarios: must be a list, got '[test,iso]'``), hiding the
    likely cause, strings left unquoted. Text that TOML reads as more than the one value (lines
    after it that are keys or tables of their own: ``--set $'train.lr=0.01\\ntrain.epochs=3'``)
    is a :class:`ConfigError` naming ``field`` and the text."""
    try:
        document = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError as error:
        # ``text_field``: the field is a string (data.dataset): "[v2] digits.npz" names a file
        if not text.startswith(("[", "{", '"', "'")) or (text_field and text[0] in "[{"):
            return text
        # tomllib counts columns in "v = <text>": said as a character of the value instead
        reason = re.sub(r" \(at line 1, column (\d+)\)$",
                        lambda m: f" at character {int(m.group(1)) - 4} of the value", str(error))
        reason = reason.replace("(at end of document)", "at the end of the value")
        if text[0] == '"' or text[0] == "'":
            hint = ("; a quoted string must end with its opening quote (in double quotes a "
                    "backslash starts an escape: use single quotes for a Windows path)")
        elif reason.startswith("Invalid value"):  # most often a string left unquoted
            example = "['a', 'b']" if text[0] == "[" else "{name = 'a'}"
            hint = (f"; strings in a {'list' if text[0] == '[' else 'table'} need quotes, which "
                    f"the shell keeps where the whole assignment is quoted: "
                    f"--set \"{field}={example}\"")
        else:
            hint = ""
        raise ConfigError(f"invalid config: {field}: {text} is not valid TOML ({reason})"
                          f"{hint}") from None
    # "v = <text>" is parsed as a whole document: the lines after a value's first were dropped
    # (or read as keys and tables that nothing reads) without a word
    extra = [key for key in document if key != "v"]
    if extra:
        raise ConfigError(f"invalid config: {field}: {text!r} is more than one value: TOML "
                          f"reads the lines after its first as keys or tables of their own "
                          f"({', '.join(map(repr, extra))}), which nothing reads; give the value "
                          f"alone (each field its own --set)")
    value = document["v"]
    # No field is a date or a time: --set data.dataset=2024-01-01 names a file, not a date.
    return text if isinstance(value, datetime.date | datetime.time) else value


_LAYER_FIELDS = frozenset(f.name for f in dataclasses.fields(LayerConfig))


def apply_overrides(config, assignments: list[str]):
    """Apply ``a.b.c=value`` assignments (values parsed as TOML, else strings) to a dataclass.

    ``...layer.preset=NAME`` replaces a whole layer table by the preset's (later assignments
    still apply on top of it): the way to drop fields set before it (a file's ``sigma``, which
    no assignment can unset). A table given whole (``train={lr=0.01}``,
    ``model.layer={T=2.0}``) is merged into the table as it stands: each of its keys is set as
    ``train.lr=0.01`` would set it (a ``preset`` key first), and the table's other fields are
    kept, so ``--set train.epochs=3 --set "train={lr=0.01}"`` trains 3 epochs. (A partial
    table in a TOML *file* takes its missing fields from the defaults instead:
    :func:`from_dict`.) A field whose value is a mapping but not a table of fields (a
    benchmark's ``models``) is replaced whole.
    """
    data = to_dict(config)
    for assignment in assignments or []:
        if "=" not in assignment:
            raise ConfigError(f"--set expects section.field=value, got {assignment!r}")
        path, value = assignment.split("=", 1)
        keys = path.strip().split(".")
        node, section = data, config
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"--set {path}: {key!r} is not a config section"
                                  + _under_base(data, node, key, path, value))
            node = node[key]
            section = getattr(section, key, None) if dataclasses.is_dataclass(section) else None
        # an unknown field is said first, whatever its value
        known = keys[-1] in node or (keys[-1] == "preset" and set(node) == _LAYER_FIELDS)
        text_field = dataclasses.is_dataclass(section) and keys[-1] in _fields_by_name(
            type(section)) and typing.get_type_hints(type(section)).get(keys[-1]) is str
        parsed = _parse_value(value.strip(), path.strip(), text_field) if known else None
        _assign(node, section, keys[-1], parsed, path.strip(),
                _under_base(data, node, keys[-1], path, value))
    try:
        return from_dict(type(config), data)
    except ConfigError as error:
        hint = _unset_hint(str(error), assignments)
        if not hint:
            raise
        raise ConfigError(f"{error}{hint}") from None


def _unset_hint(text: str, assignments: list[str]) -> str:
    """For :func:`apply_overrides`'s error ``text`` about a ``sigma`` that a stencil without a
    scale needs left out (a file's ``sigma = 1.0`` under ``--set model.layer.stencil=central``),
    the way to leave it out there, else ``""``: an assignment cannot unset a field (TOML has no
    null), so the error's "leave sigma out" alone named nothing ``--set`` can do. Where one of
    ``assignments`` set that sigma itself, the way is to drop it (the hint said "take it out of
    the file" where there was none)."""
    match = re.match(r"invalid config: ((?:[\w-]+\.)*)sigma: the '[^']*' stencil has no scale",
                     text)
    if match is None:
        return ""
    table = match.group(1)
    own = [a.strip() for a in assignments if f"{table}sigma" in assigned_fields(a)]
    if own:
        return f"; drop --set {own[-1]}"
    return (f"; --set cannot unset it: take it out of the file, or start the layer table again "
            f"from a preset with --set {table}preset=NAME ({', '.join(LAYER_PRESETS.names())}; "
            f"sigma unset) and set the table's other fields after it")


def _assign(node: dict, section, key: str, value, path: str, under_base: str = "") -> None:
    """``node[key] = value`` for :func:`apply_overrides` (``node``: the dict of the dataclass
    ``section``, or of no dataclass where ``section`` is ``None``; ``path``: the field's dotted
    path, for messages): a preset replaces a layer table, a table given whole is merged key by
    key into a field that is a table of fields, and an unknown key is a :class:`ConfigError`
    naming the field meant where one is close (``under_base``: the hint of
    :func:`_under_base`, which replaces that guess)."""
    if key == "preset" and set(node) == _LAYER_FIELDS:
        node.clear()
        node.update(to_dict(_layer_preset(value, path)))
        return
    if key not in node:
        tables = {name: list(inner) if isinstance(inner, dict) else None
                  for name, inner in node.items()}
        prefix = path.rpartition(".")[0] + "." if "." in path else ""
        meant = "" if under_base else _meant_text({key: _did_you_mean(key, tables, prefix)})
        raise ConfigError(f"--set {path}: unknown field {key!r}{meant}; known: {sorted(node)}"
                          + under_base)
    inner = getattr(section, key, None) if dataclasses.is_dataclass(section) else None
    if isinstance(value, dict) and isinstance(node[key], dict) and dataclasses.is_dataclass(inner):
        # merged, not rebuilt from the defaults: "train={lr=0.01}" reset an earlier
        # train.epochs=3 to 20, and "model.layer={T=2.0}" dropped the layer's preset
        for name, item in sorted(value.items(), key=lambda pair: pair[0] != "preset"):
            _assign(node[key], inner, name, item, f"{path}.{name}")
        return
    node[key] = value


def _leaves(path: str, value):
    """``(path, value)`` of every field an assignment of ``value`` to ``path`` sets: a table
    given whole sets each of its keys (a ``preset`` first), as :func:`apply_overrides` merges
    it."""
    if isinstance(value, dict):
        for name, item in sorted(value.items(), key=lambda pair: pair[0] != "preset"):
            yield from _leaves(f"{path}.{name}", item)
    else:
        yield path, value


def assigned_fields(assignment: str) -> list[str]:
    """The dotted paths of the fields an ``a.b=value`` assignment sets: ``["train.seed"]`` for
    ``train.seed=5`` and for ``train={seed=5}`` alike (``["train.seed", "train.lr"]`` for
    ``train={seed=5, lr=0.01}``), so that a check on a field is not passed by writing its
    table whole. A value that is not valid TOML gives the assignment's own path
    (:func:`apply_overrides` says what is wrong with it)."""
    path, _, value = assignment.partition("=")
    try:
        parsed = _parse_value(value.strip(), path.strip())
    except ConfigError:
        return [path.strip()]
    return [leaf for leaf, _ in _leaves(path.strip(), parsed)]


def without_field(assignments: list[str], field: str) -> list[str]:
    """``assignments`` without any that sets ``field`` (a dotted path): ``field=...`` is left
    out, and a table given whole that sets it among other keys (``train={epochs=5, lr=0.01}``
    for ``train.epochs``) is replaced by the assignments of its other keys (``train.lr=0.01``,
    the same configuration under :func:`apply_overrides`); the others are kept as they are."""
    kept = []
    for assignment in assignments:
        path, _, value = assignment.partition("=")
        if path.strip() == field:
            continue
        if field not in assigned_fields(assignment):
            kept.append(assignment)
            continue
        leaves = _leaves(path.strip(), _parse_value(value.strip(), path.strip()))
        kept += [f"{leaf}={_toml_value(item, leaf)}" for leaf, item in leaves if leaf != field]
    return kept


def entries_yield(config: BenchmarkConfig, fields: list[str]) -> dict[str, list[str]]:
    """``config``'s model entries made to leave ``fields`` (dotted paths in an experiment:
    ``train.epochs``, which the command line set on ``base``) to the base, in place: an entry's
    assignment of such a field is left out (:func:`without_field`; the entry's other fields
    stay), and where an entry starts a layer table from a preset (which resets the whole table),
    the base's values of the named fields in that table are set again after it. So every run
    uses what the command line named, and ``config.models`` (saved in ``config.toml``) says so.
    Returns field -> the entries whose own value gave way (an entry once, ``"NAME (its layer
    preset)"`` where it is the entry's preset that would have reset the field), in the
    configuration's order."""
    yielded: dict[str, list[str]] = {}
    models = {}
    for name, overrides in config.models.items():
        kept = list(overrides)
        for path in fields:
            if any(path in assigned_fields(assignment) for assignment in kept):
                kept = without_field(kept, path)
                yielded.setdefault(path, []).append(name)
        tables = {leaf.removesuffix(".preset") for assignment in kept
                  for leaf in assigned_fields(assignment) if leaf.endswith(".preset")}
        reset = [path for path in fields
                 if path.rpartition(".")[0] in tables and not path.endswith(".preset")]
        ran = apply_overrides(config.base, kept) if reset else None
        for path in reset:
            value, got = config.base, ran
            for key in path.split("."):
                value, got = getattr(value, key), getattr(got, key)
            if got == value:  # the preset gives the base's value: nothing gives way
                continue
            kept.append(f"{path}={_toml_value(value, path)}")
            if name not in yielded.get(path, []):
                yielded.setdefault(path, []).append(f"{name} (its layer preset: set again "
                                                    f"after it)")
        models[name] = kept
    config.models = models
    return yielded


def _under_base(data: dict, node: dict, key: str, path: str, value: str) -> str:
    """A sweep's configuration holds its runs' recipe under ``base``, an experiment's does not:
    the assignment meant (``base.model.layer.dt`` for ``model.layer.dt``, and back)."""
    if node is not data:
        return ""
    if isinstance(data.get("base"), dict) and key in data["base"]:
        return f"; the runs' experiment is under base: --set base.{path.strip()}={value.strip()}"
    if key == "base" and "base" not in data and "." in path:
        return (f"; this configuration is one experiment, without base: "
                f"--set {path.strip().partition('.')[2]}={value.strip()}")
    return ""


#: The model kinds whose PDE layer trains at ``train.pde_lr_scale`` times the rate (a model with
#: a ``pde_layer``).
PDE_LR_KINDS = ("eqpdenet",)


def _changed_leaves(value, default, path: str):
    """``(path, value)`` of every field of ``value`` (a dataclass, walked field by field, or a
    plain value) that differs from ``default``'s."""
    if dataclasses.is_dataclass(value) and type(value) is type(default):
        for spec in dataclasses.fields(value):
            yield from _changed_leaves(getattr(value, spec.name), getattr(default, spec.name),
                                       f"{path}.{spec.name}")
    elif value != default:
        yield path, value


@dataclass(frozen=True)
class InertField:
    """A field that changes nothing unless other fields of the same configuration have values
    for which ``acts`` is true: ``path`` and ``condition`` are dotted paths in an
    :class:`ExperimentConfig` (``"model.lifted_pde.downsample_sigma"``), ``condition`` one path
    or a tuple of them (``acts`` then takes their values in that order), ``why`` ends the
    warning (:func:`fields_without_effect`)."""

    path: str
    condition: str | tuple[str, ...]
    acts: typing.Callable[..., bool]
    why: str

    @property
    def conditions(self) -> tuple[str, ...]:
        """The condition's paths, as a tuple."""
        return (self.condition,) if isinstance(self.condition, str) else tuple(self.condition)


def _several_stages(channels) -> bool:
    return len(channels) > 1


def _uses_network(terms) -> bool:
    # by the builders registered, not the names: a term of one's own is given these options
    return any(term_uses_options(term) for term in terms)


def _seed_reaches_data(dataset, rotated) -> bool:
    return bool(rotated) or seed_reaches_loader(dataset)


_ONE_STAGE = "one stage: nothing is downsampled between stages"
_NO_NETWORK = "only the 'network' term of F has a hidden layer"

#: The fields that have no effect under some value of another field of the same configuration,
#: each checked: the model's logits (train and eval mode) are bitwise the same with and
#: without the field changed (tests/app/test_config_checks_round7.py). The first entry of a
#: field whose condition holds is the one said. Fingerprints are not affected: those leave out
#: only :data:`eqpdenet.app.training.CONDITIONAL_FIELDS`, whose entries are here too (a change
#: of any other inert field still stops a sweep from resuming, naming the field: reading it at
#: its default would change the fingerprints that folders made before have recorded).
INERT_FIELDS: tuple[InertField, ...] = (
    InertField("model.lifted_pde.downsample_sigma", "model.lifted_pde.downsample",
               lambda value: value == "blur", "only the 'blur' downsampling has a low-pass"),
    InertField("model.lifted_pde.downsample", "model.lifted_pde.channels", _several_stages,
               _ONE_STAGE),
    InertField("model.lifted_pde.downsample_sigma", "model.lifted_pde.channels",
               _several_stages, _ONE_STAGE),
    InertField("model.lifted_pde.hidden", "model.lifted_pde.terms", _uses_network, _NO_NETWORK),
    InertField("model.lifted_pde.normalize_hidden", "model.lifted_pde.terms", _uses_network,
               _NO_NETWORK),
    InertField("model.lifted_pde.normalize_invariants", "model.lifted_pde.terms", _uses_network,
               "only the 'network' term of F mixes the invariant maps"),
    InertField("model.gcnn.pool_sigma", "model.gcnn.pool", lambda value: value == "antialiased",
               "only the 'antialiased' pooling has a low-pass"),
    InertField("model.gcnn.pool", "model.gcnn.pool_after", bool, "no layer is pooled"),
    InertField("model.gcnn.pool_sigma", "model.gcnn.pool_after", bool, "no layer is pooled"),
    InertField("model.invariant_pde.jet_floor", "model.invariant_pde.group",
               lambda value: value == "sim2", "only the SIM(2) invariants have a floor"),
    InertField("model.invariant_pde.ratio_eps", "model.invariant_pde.group",
               lambda value: value == "sim2", "only the SIM(2) invariants are ratios"),
    InertField("model.invariant_pde.mixtures", "model.invariant_pde.joint",
               lambda value: value == "mixtures", "only joint = 'mixtures' mixes channels"),
    InertField("model.invariant_pde.sigma", "model.invariant_pde.stencil", stencil_has_scale,
               "only a stencil with a scale (gaussian) takes sigma"),
    InertField("model.invariant_pde.downsample_sigma", "model.invariant_pde.downsample",
               lambda value: value == "blur", "only the 'blur' downsampling has a low-pass"),
    InertField("model.invariant_pde.downsample", "model.invariant_pde.channels",
               _several_stages, _ONE_STAGE),
    InertField("model.invariant_pde.downsample_sigma", "model.invariant_pde.channels",
               _several_stages, _ONE_STAGE),
    InertField("model.layer.init_scale", "model.layer.init", lambda value: value != "zeros",
               "F starts at zero"),
    InertField("train.blur_consistency.max_sigma", "train.blur_consistency.weight", bool,
               "the blur penalty is off"),
    InertField("train.blur_consistency.fraction", "train.blur_consistency.weight", bool,
               "the blur penalty is off"),
    # the built-in ROTMNIST's: a plugin's 'rotmnist' loader is not given data.source
    InertField("data.source", "data.dataset",
               lambda value: value == "rotmnist" and is_built_in(value),
               "only ROTMNIST has a source to choose"),
    InertField("data.rotmnist_seed", ("data.dataset", "data.rotated"), _seed_reaches_data,
               "the seed draws ROTMNIST's digits and angles, a rotated data set's angles, or "
               "goes to a registered data set's own loader"),
)


def _at_path(config, path: str):
    for name in path.split("."):
        config = getattr(config, name)
    return config


def fields_without_effect(config: ExperimentConfig) -> list[str]:
    """One line per field of ``config`` that has no effect, set away from its default: a
    ``model`` field the kind's constructor does not take (``model.hidden`` for ``cnn``,
    ``model.layer.*`` and ``model.head`` for all but ``eqpdenet``, another kind's option
    table), ``train.pde_lr_scale`` for a kind without the paper's PDE layer
    (:data:`PDE_LR_KINDS`), and a field that the chosen value of another field of the same
    configuration makes inert (:data:`INERT_FIELDS`: ``model.lifted_pde.downsample_sigma`` with
    ``model.lifted_pde.downsample = 'none'``), once per field. Defaults are never named.
    :func:`~eqpdenet.app.training.train_model` warns with each line."""
    kind = config.model.kind
    taken = inspect.signature(MODELS.get(kind)).parameters
    defaults = ModelConfig()
    lines, unused = [], set()
    for spec in dataclasses.fields(ModelConfig):
        if spec.name in ("kind", "standardize") or spec.name in taken:
            continue  # standardize: resolved into input_mean and input_std, which all take
        unused.add(f"model.{spec.name}")
        for path, value in _changed_leaves(getattr(config.model, spec.name),
                                           getattr(defaults, spec.name), f"model.{spec.name}"):
            lines.append(f"{path} = {value!r} has no effect on model.kind = {kind!r}, which "
                         f"does not use it")
    scale = config.train.pde_lr_scale
    if kind not in PDE_LR_KINDS and scale != TrainConfig.pde_lr_scale:
        lines.append(f"train.pde_lr_scale = {scale:g} has no effect on model.kind = {kind!r}: "
                     f"only the paper's PDE layer (model.kind = 'eqpdenet') trains at its own "
                     f"rate")
    default, said = ExperimentConfig(), set()
    for inert in INERT_FIELDS:
        if inert.path in said or any(inert.path.startswith(f"{table}.") for table in unused):
            continue  # said already, or its whole table is unused by the kind (above)
        value = _at_path(config, inert.path)
        conditions = [_at_path(config, path) for path in inert.conditions]
        if value != _at_path(default, inert.path) and not inert.acts(*conditions):
            said.add(inert.path)
            given = " and ".join(f"{path} = {condition!r}"
                                 for path, condition in zip(inert.conditions, conditions, strict=True))
            lines.append(f"{inert.path} = {value!r} has no effect with {given}: {inert.why}")
    return lines


#: The fields of ``model`` that training takes from the data (:func:`eqpdenet.app.training.
#: resolve_for_data`), whatever the configuration says.
DATA_FIELDS = ("image_size", "in_channels", "classes")


def fields_replaced_by_data(given: ExperimentConfig, resolved: ExperimentConfig) -> list[str]:
    """One line per field of :data:`DATA_FIELDS` that ``given`` sets away from its default and
    training replaced by another value from the data (``resolved``: the configuration with the
    data's values, :func:`eqpdenet.app.training.resolve_for_data`), and likewise for
    ``model.input_mean, input_std`` where ``model.standardize`` resolves to ``'train'`` (the
    training split's own statistics replace them; :func:`data_resolved_fields`); defaults are
    never named. Training warns with each line, as with :func:`fields_without_effect`."""
    default = ModelConfig()
    lines = []
    for name in DATA_FIELDS:
        mine, used = getattr(given.model, name), getattr(resolved.model, name)
        if mine != getattr(default, name) and mine != used:
            lines.append(f"model.{name} = {mine!r} has no effect: training takes it from the data "
                         f"({used!r}), and the checkpoint records {used!r}")
    standardize = given.model.standardize
    for path in data_resolved_fields(given):
        name = path[-1]
        if name not in ("input_mean", "input_std"):
            continue
        mine, used = getattr(given.model, name), getattr(resolved.model, name)
        if mine != getattr(default, name) and mine != used:
            how = "" if standardize == "train" else " (the training split's statistics outside " \
                                                    "MNIST's family)"
            lines.append(f"model.{name} = {mine!r} has no effect with model.standardize = "
                         f"{standardize!r}{how}: training standardises with the training split's "
                         f"own {name.removeprefix('input_')} ({used:.4g}), which the run's result "
                         f"and checkpoint record (set model.standardize = 'fixed' to use "
                         f"{mine!r})")
    return lines


def check_augment_for_image(train: TrainConfig, image_size: int) -> None:
    """``train.augment.max_shift`` below ``image_size`` (the data's side, in pixels): a larger
    shift moves most images out of their frame, and the model trains on blank images."""
    shift = train.augment.max_shift
    require(shift < image_size, "train.augment.max_shift",
            f"{shift:.3g} pixels is not less than the images' side ({image_size} pixels): most "
            f"shifted images would be blank")


def build_model(config: ModelConfig):
    """The model a :class:`ModelConfig` describes (parameters initialised by torch's RNG)."""
    return _build_model(config.kind, **{f.name: getattr(config, f.name)
                                 for f in dataclasses.fields(config) if f.name != "kind"})


#: The names of the data sets whose pixel statistics are the configured defaults (MNIST's),
#: while their built-in loaders are registered under them: decide by
#: :func:`~eqpdenet.data.datasets.mnist_family`, which knows a name a plugin registered anew.
MNIST_FAMILY = ("rotmnist", "mnist")


def data_resolved_fields(config: ExperimentConfig) -> list[tuple[str, ...]]:
    """The fields of ``config`` that :func:`eqpdenet.app.training.resolve_for_data` sets from
    the data (so a recorded, resolved configuration differs from the one given in them alone,
    for the same data)."""
    fields = [("model", "image_size"), ("model", "in_channels"), ("model", "classes")]
    standardize = config.model.standardize
    if standardize == "train" or (standardize == "auto"
                                  and not mnist_family(config.data.dataset)):
        fields += [("model", "input_mean"), ("model", "input_std")]
    return fields
