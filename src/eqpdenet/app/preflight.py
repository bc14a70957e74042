"""Checks of a whole piece of work before any data is loaded or any training starts.

:func:`preflight` takes the runs a command is about to do and its output folder, and raises
:class:`~eqpdenet.errors.ConfigError` or :class:`~eqpdenet.errors.OutputFolderError` naming the
cause when

* a configuration cannot be saved (every field is validated on construction; this also writes
  each one to TOML, as it will be saved beside its result),
* the device is not there (``train.device = "cuda"`` without a GPU),
* a training batch would hold one image where the model has batch normalisation (whose
  statistics need two: ``train.batch_size = 1``; under torchrun, a batch that leaves one of its
  processes a single image), or training would see one image in all (``data.train_subset = 1``:
  one class, nothing a classifier can learn); the last batch of an epoch never holds one image
  alone (:func:`eqpdenet.app.batches.mini_batches` joins it to the batch before), so this is
  known from the configuration,
* training would need more memory than the machine has: what a training step keeps for the
  backward pass (:func:`training_bytes`: the states the Euler steps keep, by the backend the PDE
  layer will really take; ``T = 1e6, dt = 1e-3`` asks for petabytes, so does a lifted model
  with ``margin = 1000``: the deep families and the CNN baselines estimate their own), times the
  measured ratio of a step's peak to it (:func:`peak_bytes`), or, where larger, what an
  evaluation pass of up to 128 images needs whatever ``train.batch_size``
  (:func:`evaluation_bytes`; a refusal for it names evaluation), the
  parameters with their gradients and optimiser state (:data:`PARAMETER_BYTES` each;
  ``model.hidden = 1e8`` asks for 160 PB; a family of one's own without ``backward_bytes`` is
  counted by these alone, with a warning), and, before the data are loaded, the data set itself
  (:func:`data_bytes`: from the sizes its headers tell); the model is built on PyTorch's
  ``meta`` device to count them, so nothing is allocated; the batch is the largest that
  training forms (:func:`training_batches`: no larger than the training set where its size is
  known before loading, :func:`training_images`),
* a check of the configuration against the data's image size fails
  (:func:`check_for_images`: ``train.augment.max_shift`` not below the images' side; the
  model's own, its stencils, poolings, margin and downsampling against the image size, fail
  as it is built, above),
* the output file systems have not the space for the checkpoints and results: each destination
  is measured on its own file system, links followed (``OUT/checkpoints`` a link to a bigger
  disk, as docs/reliability.md describes: its file system, not OUT's, must hold the
  checkpoints; :func:`check_output_space`),
* the largest file to be written (a checkpoint, a sweep's ``results.jsonl``) is larger than
  this process may write to one file (``ulimit -f``, ``RLIMIT_FSIZE``:
  :func:`~eqpdenet.app.files.check_file_size`): the write would fail with "File too large"
  once the runs are trained.

With ``at_data`` (a sweep's runs, ``train``'s run: configurations not yet resolved for their
data) every check is made at each run's data set as it is: its image size, channels and classes,
and its numbers of images, read from a file's headers without loading the data
(:func:`~eqpdenet.data.datasets.dataset_shape`), so that a model too deep for a data set of small
images, or a ``data.train_subset`` larger than the data set, is refused before any run trains.

The folder being creatable and writable is checked by taking its lock
(:func:`eqpdenet.app.locks.hold`), which writes into it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .. import kernels
from ..analysis.predictions import EVALUATION_BATCH
from ..data.datasets import DatasetShape, dataset_shape, is_built_in
from ..data.mnist import MNIST_FILES
from ..data.rotmnist import N_TRAIN as ROTMNIST_TRAIN
from ..errors import ConfigError, OutputFolderError, is_allocation_failure
from ..models.lifted_pde import refuse_unstable_steps
from ..pde.layer import PDELayer
from ..process_state import GLOBAL_RNG_LOCK, quiet_warnings
from .config import (
    DataConfig,
    ExperimentConfig,
    build_model,
    check_augment_for_image,
    data_resolved_fields,
    to_toml,
)
from .files import check_file_size, check_output_folder

__all__ = ["BACKWARD_PEAK", "EVALUATION_PEAK", "EVALUATION_STATE_PEAK", "FIXED_TRAINING_IMAGES",
           "PARAMETER_BYTES", "PROCESS_WORDS", "STATE_PEAK", "WORKER_BYTES", "allocation_failure",
           "at_data_size", "available_memory", "check_for_images", "data_bytes", "evaluation_batch",
           "evaluation_bytes", "fixed_training_images", "pde_layer_reason", "peak_bytes",
           "preflight", "resolve_device", "saved_bytes",
           "training_batches", "training_bytes", "training_images"]

#: Memory kept per Euler step during training, in units of one state (batch x PDEs x pixels x 4
#: bytes), by backend and ``recompute``: the growth of the peak memory of one training step of the
#: paper's model per added step (``benchmarks/bench_reliability.py``, rounded up). The fused
#: kernel keeps the state and little else; the reference keeps the jet, invariants and products.
STATE_FACTORS = {("fused", False): 2.5, ("fused", True): 0.5,
                 ("reference", False): 40.0, ("reference", True): 15.0}

#: The peak memory of a training step over what a model's ``backward_bytes`` says autograd saves
#: (the deep families, the CNN baselines): the backward pass's gradients of the same fields and
#: the optimiser's step come on top. Measured (peak RSS growth over two training steps, one
#: thread; docs/performance.md "The memory estimate"): 1.1 to 2.1, the largest for the lifted
#: model on the reference (2.0-2.1 over three runs), rounded up.
BACKWARD_PEAK = 2.25

#: The peak memory of a training step of the paper's layer over its Euler states
#: (:data:`STATE_FACTORS`, the growth per added step): 1.04 to 1.22 measured (the reference, and
#: the fused kernel at 64x64 pixels), rounded up. Not counted, in either: a step's own 15 to 60
#: MB whatever its size (the allocator's pools, scratch buffers), which only matter where a
#: step keeps little.
STATE_PEAK = 1.25

#: The peak memory of evaluating a model (a forward pass without gradients of
#: :data:`~eqpdenet.analysis.predictions.EVALUATION_BATCH` images, whatever
#: ``train.batch_size``) over what its ``backward_bytes`` says a training step on as many images
#: keeps: the operations free their inputs as they go, but a deep model's widest fields are
#: held a few at a time. Measured (peak RSS growth of one ``predict`` of 128 images, one thread,
#: at 28x28 and 64x64; ``benchmarks/evaluation_memory.py``): 0.23 (invariant_pde) to 0.67 (cnn
#: at 28x28), rounded up.
EVALUATION_PEAK = 0.8

#: The same for the Euler states of a PDE layer (:data:`STATE_FACTORS` at the evaluation batch):
#: the paper's model (fused kernel) adds nothing measurable there (the same script); a
#: generous allowance, the reference's states being counted by their training factor.
EVALUATION_STATE_PEAK = 0.25

#: The options that size the fields of the families that estimate their own activations
#: (``backward_bytes``), named when they do not fit in memory.
DEEP_FIELDS = {"invariant_pde": "channels, blocks, hidden",
               "lifted_pde": "channels, blocks, orientations, scales, margin",
               "cnn": "channels, layers, pool_after", "gcnn": "channels, group_order, pool_after"}

#: Bytes per parameter during training: the float32 weight, its gradient and Adam's two moments.
PARAMETER_BYTES = 16

#: Memory of one worker process of ``--jobs N`` besides its run and its data set (PyTorch,
#: eqpdenet, a compiled kernel; :func:`data_bytes` counts the data set apart).
WORKER_BYTES = 600 * 2**20

#: Bytes of a run's record in results.jsonl (its history and configuration), an upper bound.
RECORD_BYTES = 64 * 2**10

#: Bytes of a run's record at the least (its configuration alone is about 2 KiB): what the file
#: size limit is compared with (:func:`check_output_space`), which must refuse only a file that
#: cannot fit.
RECORD_MIN_BYTES = 2**10

#: Bytes of a checkpoint besides its float32 weights at the least (the configuration, the
#: archive's entries: 5 to 6 KiB measured on the smallest models).
CHECKPOINT_MIN_EXTRA = 4 * 2**10

#: The training images (validation included) of the registered data sets whose size is fixed:
#: ROTMNIST (official or generated, checked on loading) and MNIST (checked by its MD5), while
#: their built-in loaders are registered under these names (:func:`fixed_training_images`).
FIXED_TRAINING_IMAGES = {"rotmnist": ROTMNIST_TRAIN, "mnist": MNIST_FILES["train_images"].shape[0]}


def fixed_training_images(spec: str) -> int | None:
    """The training images of the data set ``spec`` where its size is fixed
    (:data:`FIXED_TRAINING_IMAGES`), else None: a file's, or a built-in name registered anew by
    a plugin (:func:`~eqpdenet.data.datasets.is_built_in`), which is the user's set of any
    size (a plugin's 'mnist' of 600 images was counted as MNIST's 60,000)."""
    return FIXED_TRAINING_IMAGES.get(spec) if is_built_in(spec) else None


def _gib(n: float) -> str:
    for unit, size in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 2**20:.3g} MiB"


def _model(config: ExperimentConfig) -> torch.nn.Module:
    """The model, built without touching the global random stream or warning: on the ``meta``
    device (shapes without memory) where the family allows it, else for real; an allocation
    that fails is a :class:`ConfigError`. Its warnings are not shown (the real build gives them);
    the fork holds :data:`~eqpdenet.process_state.GLOBAL_RNG_LOCK` (restoring the generator's
    state while another thread's training seeds it and draws would undo that seed)."""
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]), quiet_warnings():
        try:
            with torch.device("meta"):
                return build_model(config.model)
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - a family that cannot be built on meta: build it
            pass
        try:
            return build_model(config.model)
        except RuntimeError as error:
            wanted = allocation_failure(error)
            if wanted is None:
                raise
            raise ConfigError(f"invalid config: the {config.model.kind} model does not fit in "
                              f"memory ({wanted}); make it smaller") from None


def allocation_failure(error: BaseException) -> str | None:
    """For an error of a memory allocation that failed (PyTorch's CPU allocator, CUDA's out of
    memory), what was asked for (``"tried to allocate 292 GiB"``); None for any other error."""
    if not is_allocation_failure(error):
        return None
    text = str(error)
    found = re.search(r"allocate (\d+) bytes", text)
    if found:
        return f"tried to allocate {_gib(int(found.group(1)))}"
    found = re.search(r"allocate ([\d.]+ [KMGTP]i?B)", text)
    return f"tried to allocate {found.group(1)}" if found else "an allocation failed"


def training_images(config: ExperimentConfig) -> int | None:
    """The number of images ``config`` trains on, where it is known before the data are loaded:
    ``data.train_subset``, no more than the images of a data set of fixed size
    (:func:`fixed_training_images`) less ``data.validation``; None for a data set read from a
    file or registered by the user (a built-in name registered anew included) without
    ``train_subset``. (A ``train_subset`` or ``validation`` larger than the data set
    is refused when it is loaded.)"""
    data = config.data
    total = fixed_training_images(data.dataset)
    left = total - data.validation if total is not None and data.validation < total else None
    if data.train_subset:
        return data.train_subset if left is None else min(data.train_subset, left)
    return left


def training_batches(config: ExperimentConfig, images: int | None = None) -> tuple[int, int]:
    """``(largest, smallest)`` number of images in a batch of training ``config`` on ``images``
    training images (default :func:`training_images`), as :func:`eqpdenet.app.batches.mini_batches`
    cuts an epoch: ``train.batch_size`` or all the images where there are fewer, the remainder
    in the last batch, a remainder of one joined to the batch before (65 images in batches of
    64: one batch of 65). ``(batch_size, batch_size)`` where the number is not known."""
    size = config.train.batch_size
    images = training_images(config) if images is None else images
    if images is None:
        return size, size
    if images <= size:
        return images, images
    full, rest = divmod(images - 1, size)  # ``full`` whole batches, then ``rest + 1`` images
    if rest > 0:
        return size, rest + 1
    # a remainder of one image joins the batch before
    return size + 1, size + 1 if full == 1 else size


def _batch_norm(model: torch.nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            return name or type(module).__name__
    return None


def _field_of_few_images(config: ExperimentConfig, images: int | None) -> tuple[str, str]:
    """The field that leaves ``config`` ``images`` training images, and what it does: the
    training subset where one is set, else the validation split held out of the data set's
    training images (of a fixed count, or of a user's file: ``images`` plus those held out)
    where it takes more than the subset leaves, else the data set itself."""
    data = config.data
    if data.train_subset and (images is None or images >= data.train_subset):
        return "data.train_subset", f"{images} training image{'s' * (images != 1)}"
    if data.validation:
        fixed = fixed_training_images(data.dataset)
        total = fixed if fixed is not None else None if images is None else images + data.validation
        source = "the" + (f" {total}" if total is not None else "") + " training images"
        source += f" of {data.dataset}" if fixed is not None else ""  # a file: named before
        return "data.validation", f"{data.validation} held out of {source} leave {images} to train on"
    return "data.dataset", f"{images} training image{'s' * (images != 1)}"


def _check_batches(config: ExperimentConfig, model: torch.nn.Module, images: int | None) -> None:
    """A :class:`ConfigError` naming the field when training ``config`` would see one image in
    all, or would pass one image alone through ``model`` in training mode while it has batch
    normalisation (a batch of one without the blur penalty's copy of it, or the weight
    average's pass over the batches to recompute the statistics)."""
    train = config.train
    images = training_images(config) if images is None else images
    if images == 1:
        field, what = _field_of_few_images(config, images)
        raise ConfigError(f"invalid config: {field}: {what}: one class, nothing a classifier can "
                          f"learn (and batch statistics need 2 images); train on 2 or more")
    smallest = training_batches(config, images)[1]
    alone = smallest == 1 and (train.blur_consistency.copies(1) == 0 or bool(train.weight_average))
    norm = _batch_norm(model) if alone else None
    if norm is not None:
        raise ConfigError(f"invalid config: train.batch_size: batches of 1 image, but the "
                          f"{config.model.kind} model has batch normalisation ({norm}), whose "
                          f"statistics need at least 2 images per batch; set train.batch_size "
                          f"to 2 or more")
    processes = _processes()
    whole = min(train.batch_size, images) if images is not None else train.batch_size
    # Under torchrun each process normalises its own share of a batch (parts that differ by one
    # image at most); the blur penalty's copies fall to the first parts, so they are not counted.
    norm = _batch_norm(model) if processes > 1 and whole < 2 * processes else None
    if norm is not None:
        field, remedy = "train.batch_size", f"set train.batch_size to {2 * processes} or more"
        if whole < train.batch_size:
            field = _field_of_few_images(config, images)[0]
            remedy = f"train on {2 * processes} images or more"
        raise ConfigError(f"invalid config: {field}: batches of {whole} images shared among "
                          f"{processes} processes leave a process 1 image or none, but the "
                          f"{config.model.kind} model has batch normalisation ({norm}), whose "
                          f"statistics need at least 2 images in every process; {remedy}")


def _processes() -> int:
    """The number of processes training together (torchrun's world size; 1 outside a process
    group)."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_world_size()
    return 1


def pde_layer_reason(layer: PDELayer, device: torch.device, channels: int,
                     size: int) -> str | None:
    """Why training ``layer`` on ``device``, on images of ``channels`` x ``size`` x ``size``,
    takes the reference path rather than the fused kernel, or None where it takes the kernel:
    the layer's own dispatch (:meth:`PDELayer._evolve_unchecked`): the backend it resolves to,
    the capability it declares (:meth:`PDELayer.kernel_specs`) and the kernels' rule
    (:func:`eqpdenet.kernels.unsupported_reason`: device, invariant sets, boundary, the stencil's
    form, the kernel's availability, for which it is loaded, and built on first use, as training
    would). A layer built on the ``meta`` device is judged by an empty copy on ``device``, whose
    stencils are rebuilt from their definitions (:class:`~eqpdenet.pde.stencils.Jet`)."""
    if kernels.resolve_backend(layer.backend) == "reference":
        return "the reference backend"
    with quiet_warnings():  # a throwaway copy: what it would say, the layer itself says
        copy_on_device = copy.deepcopy(layer).to_empty(device=device)
    specs = copy_on_device.kernel_specs()
    if isinstance(specs, str):
        return specs
    dtype = next((p.dtype for p in copy_on_device.parameters()), torch.float32)
    return kernels.unsupported_reason(
        torch.empty(0, channels, size, size, dtype=dtype, device=device), specs)


#: The model classes already warned about by :func:`_unestimated` (once per class and process).
_UNESTIMATED_WARNED: set[type] = set()


def _unestimated(model: torch.nn.Module) -> None:
    """Warn once per class where ``model`` is of a family of one's own (not eqpdenet's) without a
    ``backward_bytes``: its activations are not in the memory estimate, which then counts its
    parameters (and the Euler states of any PDE layer) alone."""
    cls = type(model)
    if cls in _UNESTIMATED_WARNED or cls.__module__.split(".")[0] == "eqpdenet":
        return
    _UNESTIMATED_WARNED.add(cls)
    warnings.warn(f"the memory check cannot estimate the activations of {cls.__qualname__} "
                  f"({cls.__module__}): it has no backward_bytes(batch_size) method, so only its "
                  f"parameters are counted and a run too large for this machine is not refused "
                  f"before it starts (docs/architecture.md, \"A family of one's own\")",
                  RuntimeWarning, stacklevel=2)


def _kept_bytes(config: ExperimentConfig, model: torch.nn.Module | None, images: int | None,
                device: torch.device | None, batch: int | None = None) -> tuple[int, int]:
    """``(states, activations)``: the Euler states of the model's PDE layers and what its own
    ``backward_bytes`` counts (:func:`training_bytes`), for batches of ``batch`` images (default:
    the largest training batch, with the blur penalty's copies)."""
    model = _model(config) if model is None else model
    channels = getattr(model, "in_channels", 1)
    size = config.model.image_size
    own = getattr(model, "backward_bytes", None)
    if own is None:
        _unestimated(model)
    if batch is None:
        # The blur penalty's copies go through the model in the same pass as the batch.
        batch = training_batches(config, images)[0]
        batch += config.train.blur_consistency.copies(batch)
    states = 0
    for layer in model.modules():
        if not isinstance(layer, PDELayer):
            continue
        if device is None:
            device = resolve_device(config.train.device)
        backend = "fused" if pde_layer_reason(layer, device, channels, size) is None \
            else "reference"
        steps = max(getattr(pde, "steps", 1) for pde in layer.pdes)
        state = batch * channels * size**2 * 4
        states += int(layer.n_pdes * max(steps, 1) * state * STATE_FACTORS[backend, layer.recompute])
    return states, int(own(batch)) if own is not None else 0


def training_bytes(config: ExperimentConfig, model: torch.nn.Module | None = None, *,
                   images: int | None = None, device: torch.device | None = None) -> int:
    """An estimate of the memory that training ``config`` keeps for the backward pass: for every
    PDE layer of the model its Euler states, ``batch x PDEs x channels x steps x pixels x bytes
    x factor`` (at the input's size; :data:`STATE_FACTORS`, by the backend the layer will take
    on ``device``, default ``train.device``: :func:`pde_layer_reason`), and for the families
    that estimate their own (``invariant_pde``, ``lifted_pde``, ``cnn``, ``gcnn``) what autograd
    saves of their fields and activations (``backward_bytes(batch_size)``). The batch is the
    largest that training forms on ``images`` training images (default:
    :func:`training_images`; :func:`training_batches`), with the blur penalty's copies. The
    peak of a training step is larger: :func:`peak_bytes`."""
    return sum(_kept_bytes(config, model, images, device))


def peak_bytes(config: ExperimentConfig, model: torch.nn.Module | None = None, *,
               images: int | None = None, device: torch.device | None = None) -> int:
    """The peak memory of a training step of ``config`` beyond its parameters, as the memory
    check counts it, written to err on the large side: what :func:`training_bytes` counts, the
    Euler states times :data:`STATE_PEAK` and what ``backward_bytes`` counts times
    :data:`BACKWARD_PEAK` (the backward pass's gradients and the optimiser's step come on top
    of what is kept)."""
    states, activations = _kept_bytes(config, model, images, device)
    return int(STATE_PEAK * states + BACKWARD_PEAK * activations)


def evaluation_batch(config: ExperimentConfig, tests: int | None = None) -> int:
    """The most images one forward pass of evaluating ``config`` takes:
    :data:`~eqpdenet.analysis.predictions.EVALUATION_BATCH` (whatever ``train.batch_size``),
    or fewer where every split evaluated is smaller: the test split (``data.test_subset``, else
    ``tests``, its size where known) and the validation split (``data.validation``)."""
    tests = config.data.test_subset or tests
    if tests is None:
        return EVALUATION_BATCH
    return max(1, min(EVALUATION_BATCH, max(tests, config.data.validation)))


def evaluation_bytes(config: ExperimentConfig, model: torch.nn.Module | None = None, *,
                     tests: int | None = None, device: torch.device | None = None) -> int:
    """The peak memory of evaluating ``config`` beyond its parameters, written to err on the
    large side: a forward pass without gradients of :func:`evaluation_batch` images (128 at the
    most, whatever ``train.batch_size``, so that at a small training batch evaluation can need
    several times a training step): what ``backward_bytes`` counts at that batch times
    :data:`EVALUATION_PEAK`, and the Euler states (:func:`training_bytes`'s) times
    :data:`EVALUATION_STATE_PEAK`. ``tests``: the number of test images, where known."""
    states, activations = _kept_bytes(config, model, None, device,
                                      batch=evaluation_batch(config, tests))
    return int(EVALUATION_STATE_PEAK * states + EVALUATION_PEAK * activations)


def data_bytes(run: ExperimentConfig, shape: DatasetShape | None) -> tuple[int, int]:
    """``(kept, passing)``: the bytes the data set of ``run`` takes in the process that trains
    it, all run long (every image of the set in float32, as
    :func:`~eqpdenet.app.training.prepare_data` keeps it: the test split, and the validation
    images with the training images), and the most that loading it adds for a while before
    training starts: the rotated copy of ``data.rotated``, and the float64 copy of the training
    images from which the mean and std are taken where the model is standardised by them
    (:func:`~eqpdenet.app.training.resolve_for_data`; ``model.standardize = "train"``, or
    ``"auto"`` on a data set other than MNIST's). From the sizes ``shape`` tells
    (:func:`~eqpdenet.data.datasets.dataset_shape`); ``(0, 0)`` where it is None. A file's own
    arrays, read before their conversion to float32, are not counted (a file of float64 pixels
    holds twice the float32 set for a moment)."""
    if shape is None:
        return 0, 0
    channels, height, width = shape.image_shape
    pixels = channels * height * width
    kept = (shape.train + shape.test) * pixels * 4
    passing = kept if run.data.rotated else 0
    if ("model", "input_mean") in data_resolved_fields(run):
        trained = run.data.train_subset or max(shape.train - run.data.validation, 0)
        passing = max(passing, trained * pixels * 8)
    return kept, passing


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (``"cpu"``, ``"cuda"``, ``"auto"``) names, or a :class:`ConfigError`
    when it is not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("invalid config: device 'cuda' (train.device or --device) requested but "
                          "no GPU is available here")
    return torch.device(name)


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def at_data_size(run: ExperimentConfig, shape: DatasetShape | None) -> ExperimentConfig:
    """``run`` with the model's image size, channels and classes of the data set of ``shape``
    (:func:`~eqpdenet.data.datasets.dataset_shape`), as
    :func:`~eqpdenet.app.training.resolve_for_data` sets them from the loaded data; ``run`` as
    it is where the shape is not known. Images that are not square are a :class:`ConfigError`,
    as they are in training."""
    if shape is None:
        return run
    channels, height, width = shape.image_shape
    if height != width:
        raise ConfigError(f"invalid config: data.dataset: the models take square images; "
                          f"{run.data.dataset} has {height}x{width}")
    run = copy.deepcopy(run)
    run.model.image_size, run.model.in_channels = height, channels
    if shape.classes is not None:
        run.model.classes = shape.classes
    return run


def check_for_images(run: ExperimentConfig) -> None:
    """The checks of ``run`` that need its data's image size (``run.model.image_size``, as
    :func:`at_data_size` or :func:`~eqpdenet.app.training.resolve_for_data` set it) besides
    the model's own (built by :func:`preflight` at that size): ``train.augment.max_shift``
    below the images' side (:func:`~eqpdenet.app.config.check_augment_for_image`). Training
    made it only after loading the data, and in a sweep after the runs before it had trained."""
    check_augment_for_image(run.train, run.model.image_size)


def check_split_sizes(data: DataConfig, train: int, test: int, name: str) -> int:
    """The training images that ``data`` keeps of a data set ``name`` with ``train`` training
    and ``test`` test images (its ``validation`` held out), or the :class:`ConfigError` naming
    the field where ``data.validation``, ``data.train_subset`` or ``data.test_subset`` asks for
    more images than there are: one rule for the loaded data
    (:func:`~eqpdenet.app.training.prepare_data`) and for the sizes read from a file's headers
    before any run (:func:`preflight`)."""
    if data.validation >= train:
        raise ConfigError(f"invalid config: data.validation: {data.validation} is not below "
                          f"the {train} training images of {name}")
    keep = train - data.validation
    held = f" ({data.validation} held out for validation)" if data.validation else ""
    if data.train_subset > keep:
        raise ConfigError(f"invalid config: data.train_subset: {data.train_subset} is more than "
                          f"the {keep} training images of {name}{held}; use 0 for all")
    if data.test_subset > test:
        raise ConfigError(f"invalid config: data.test_subset: {data.test_subset} is more than "
                          f"the {test} test images of {name}; use 0 for all")
    return keep


def _which_run(key: str | None, side: int | None, run: ExperimentConfig) -> str:
    """What starts the message of an error of ``run``: its key where the runs have keys, and the
    image size of its data where it differs from the configured ``model.image_size`` (which the
    user sees in the configuration, and is not the one refused); empty where neither."""
    at = f"on the {side}x{side} images of {run.data.dataset}" if side is not None else ""
    if key is not None:
        return f"run {key}" + (f", {at}" if at else "") + ": "
    return f"training {at}: " if at else ""


@dataclasses.dataclass
class _Need:
    """What one run of :func:`preflight` needs, in bytes, for the message naming it."""

    key: str | None
    run: ExperimentConfig
    device: torch.device
    images: int | None  # training images, where known
    side: int | None  # the data's image size, where it differs from the configured one
    activations: int  # peak_bytes
    weights: int
    kept: int  # the data set, all run long
    passing: int  # more while the data are loaded, before training
    pde: bool  # the model has a PDE layer
    evaluation: int = 0  # evaluation_bytes
    evaluated: int = EVALUATION_BATCH  # images per evaluation pass

    @property
    def evaluating(self) -> bool:
        """Whether evaluation needs more than a training step (their weights are the same)."""
        return self.evaluation > self.activations

    @property
    def step(self) -> int:
        """A training step's peak, or an evaluation pass's where it is larger (the trained
        parameters, their gradients and optimiser state are still held when it runs)."""
        return max(self.activations, self.evaluation) + self.weights

    @property
    def on_device(self) -> int:
        """On the training device, per process: the step, and on the CPU the data set too
        (loading it comes before the first step)."""
        if self.device.type == "cpu":
            return self.kept + max(self.passing, self.step)
        return self.step

    @property
    def on_host(self) -> int:
        """In the host's memory, per process, where training runs on another device."""
        return self.kept + self.passing

    def data_parts(self) -> list[tuple[int, str]]:
        """The data set's parts of the memory, ``(bytes, words)`` each."""
        parts = []
        if self.kept:
            parts.append((self.kept, f"{_gib(self.kept)} for the whole data set in float32, "
                                     f"whatever data.train_subset"))
        if self.passing:
            what = ("the rotated copy of data.rotated" if self.passing == self.kept
                    and self.run.data.rotated else "the float64 copy of the training images "
                    "the standardisation takes its mean and std from")
            parts.append((self.passing, f"{_gib(self.passing)} more while it is loaded ({what})"))
        return parts

    def data_remedies(self) -> list[str]:
        remedies = ["train on a smaller data set (it is loaded whole)"]
        if self.passing and not (self.run.data.rotated and self.passing == self.kept):
            remedies.insert(0, "set model.standardize = 'fixed' with model.input_mean and "
                               "model.input_std (no float64 copy)")
        return remedies


#: How the parallel processes of a check are named in its refusal, by what starts them:
#: ``(runs at once, their processes, the remedy)``; ``"jobs"`` the workers of ``--jobs``,
#: ``"ranks"`` the ranks of ``train --distributed`` on one machine (torchrun's).
PROCESS_WORDS = {
    "jobs": ("runs at once", "worker processes", "lower --jobs"),
    "ranks": ("ranks on this machine", "ranks' processes",
              "start fewer ranks on this machine (torchrun --nproc-per-node)"),
}


def _listed(parts: list[tuple[int, str]], parallel: int, workers: int,
            processes: str = "jobs") -> str:
    """The parts of a memory estimate in words, so that they add up to its total: one run's
    ``parts`` (``(bytes, words)``, in the order given: what the run computes with, then its
    data; ``parallel`` runs at once, each of them), and the ``workers`` bytes of the worker
    processes of ``--jobs``, before the runs where larger than all of them together (it is,
    at 600 MiB each, for most runs), else after them."""
    at_once, named, _ = PROCESS_WORDS[processes]
    words = ", ".join(text for _, text in parts)
    if parallel > 1:
        words = f"{parallel} {at_once}, each {words}"
    if not workers:
        return words
    held = f"{_gib(workers)} for the {parallel} {named}"
    if workers > parallel * sum(size for size, _ in parts):
        return f"{held}; {words}"
    return f"{words}; {held}"


def _check_memory(need: _Need, parallel: int, workers: int, processes: str = "jobs") -> None:
    """A :class:`ConfigError` where ``parallel`` runs as large as ``need`` (and ``workers`` bytes
    of worker processes) do not fit in the memory available on its device."""
    available = available_memory(need.device)
    total = need.on_device * parallel + workers
    if available is None or total <= available:
        return
    run, kind = need.run, need.run.model.kind
    parts = []
    evaluating = need.evaluating
    activations = need.evaluation if evaluating else need.activations
    if evaluating:
        what = (f"the fields a forward pass of {need.evaluated} images holds (evaluation "
                f"passes take {EVALUATION_BATCH} images at most, whatever train.batch_size)")
        parts.append((activations, f"{_gib(activations)} for {what}"))
    elif need.activations:
        what = ("the states the Euler steps keep" if need.pde and kind not in DEEP_FIELDS else
                "what the backward pass keeps of the fields" if kind.endswith("_pde") else
                "what the backward pass keeps of the activations")
        parts.append((need.activations, f"{_gib(need.activations)} for {what}"))
    parts.append((need.weights, f"{_gib(need.weights)} for {need.weights // PARAMETER_BYTES:,} "
                                f"parameters with their gradients and optimiser state"))
    on_cpu = need.device.type == "cpu"
    if on_cpu:
        parts += need.data_parts()
    layer = getattr(run.model, "layer", None)
    steps = f" ({layer.steps} Euler steps)" if layer is not None and need.pde else ""
    size, batch = run.train.batch_size, training_batches(run, need.images)[0]
    lower = f"lower train.batch_size ({size}" + (
        f": batches of {batch} images)" if batch != size else ")")
    if on_cpu and need.kept + need.passing > need.step:
        remedies = need.data_remedies()
    elif activations <= need.weights:
        remedies = [f"make the model smaller (model.hidden = {run.model.hidden}, or its "
                    f"model.{kind} options)"]
    elif evaluating:  # the training batch plays no part in it
        remedies = ([f"make its fields smaller (model.{kind}: {DEEP_FIELDS[kind]})"]
                    if kind in DEEP_FIELDS else
                    [f"raise model.layer.dt or lower model.layer.T{steps}"] if need.pde else
                    [f"make the model smaller (model.hidden = {run.model.hidden}, or its "
                     f"model.{kind} options)"])
    elif kind in DEEP_FIELDS:
        remedies = [lower, f"make its fields smaller (model.{kind}: {DEEP_FIELDS[kind]})"]
    elif need.pde:
        remedies = [f"raise model.layer.dt or lower model.layer.T{steps}", lower,
                    "set model.layer.recompute = true"]
    else:
        remedies = [lower, f"make the model smaller (model.hidden = {run.model.hidden}, or its "
                           f"model.{kind} options)"]
    if parallel > 1:
        remedies.append(PROCESS_WORDS[processes][2])
    doing = "evaluating the trained model" if evaluating else "training"
    raise ConfigError(
        f"{_which_run(need.key, need.side, run)}invalid config: {doing} would need about "
        f"{_gib(total)} of memory ({_listed(parts, parallel, workers, processes)}), more than the "
        f"{_gib(available)} "
        f"available on {need.device}: " + ", ".join(remedies[:-1])
        + (", or " if len(remedies) > 1 else "") + remedies[-1])


def _check_host_memory(need: _Need, parallel: int, workers: int,
                       processes: str = "jobs") -> None:
    """A :class:`ConfigError` where the data sets of ``parallel`` runs as large as ``need``'s
    (training on another device) and ``workers`` bytes of worker processes do not fit in the
    host's memory."""
    available = available_memory(torch.device("cpu"))
    total = need.on_host * parallel + workers
    if available is None or total <= available:
        return
    remedies = need.data_remedies() + ([PROCESS_WORDS[processes][2]] if parallel > 1 else [])
    raise ConfigError(
        f"{_which_run(need.key, need.side, need.run)}invalid config: training on "
        f"{need.device} would need about {_gib(total)} of the host's memory "
        f"({_listed(need.data_parts(), parallel, workers, processes)}), more than the {_gib(available)} "
        f"available: "
        + ", ".join(remedies[:-1]) + (", or " if len(remedies) > 1 else "") + remedies[-1])


def preflight(runs: Sequence[ExperimentConfig] | Mapping[str, ExperimentConfig], out: Path | None,
              *, jobs: int = 1, checkpoints: int | None = None, images: int | None = None,
              tests: int | None = None, at_data: bool = False, data_dir=None,
              cache_dir=None, processes: str = "jobs") -> None:
    """Check ``runs`` (to be done with ``jobs`` processes, writing into ``out``, ``checkpoints``
    of them saving a model; default all) before any data is loaded (module docstring).
    ``images``: the number of training images, where the caller knows it (after loading the
    data); else what the configuration tells (:func:`training_images`). ``tests``: the images
    of the largest split evaluated (test, validation), where the caller knows it; else the data
    set's test images where ``at_data`` reads them, else 128 (:func:`evaluation_batch`).

    ``processes``: what starts the ``jobs`` processes, for the words of a refusal
    (:data:`PROCESS_WORDS`: ``"jobs"``, ``"ranks"``).

    ``runs`` given by key (a sweep's): an error of one run starts with ``run <key>:``.
    ``data_dir``, ``cache_dir``: where the runs' data are loaded from (a data set registered by
    the user is loaded once to learn its shape: :func:`~eqpdenet.data.datasets.dataset_shape`).
    ``at_data``: each run is checked at the size of its data set (a configuration not yet
    resolved for its data: a sweep's, ``train``'s), read without loading it
    (:func:`~eqpdenet.data.datasets.dataset_shape`: the registered sets' fixed shapes, a file's
    headers): its model built at the data's image size, channels and classes
    (:func:`at_data_size`), its memory estimated at that size and on the data's number of
    training images, and ``data.validation``, ``data.train_subset`` and ``data.test_subset``
    checked against the data's sizes, so that a sweep never trains some runs before one that
    cannot run on its data."""
    if not runs:
        return
    named = list(runs.items()) if isinstance(runs, Mapping) else [(None, run) for run in runs]
    shapes: dict[str, DatasetShape] = {}
    largest_model, largest_saved, largest, host = 0, 0, None, None
    for key, run in named:
        to_toml(run)
        device = resolve_device(run.train.device)
        known, side, shape = images, None, None
        if at_data and run.data.dataset not in shapes:
            # outside the run's words below: what loading refuses is the data set's, not this run's
            shapes[run.data.dataset] = dataset_shape(run.data.dataset, data_dir, cache_dir)
        try:
            if at_data:
                shape = shapes[run.data.dataset]
                if shape is not None and images is None:
                    kept = check_split_sizes(run.data, shape.train, shape.test,
                                             run.data.dataset)
                    known = run.data.train_subset or kept
                resized = at_data_size(run, shape)
                if resized.model.image_size != run.model.image_size:
                    side = resized.model.image_size
                run = resized
            if shape is not None or not at_data:  # the image size is the data's
                check_for_images(run)
            model = _model(run)
            _check_batches(run, model, known)
            refuse_unstable_steps(model)  # at its initial coefficients (on the meta device)
        except ConfigError as error:
            where = _which_run(key, side, run)
            if not where:
                raise
            raise ConfigError(f"{where}{error}") from None
        params = sum(p.numel() for p in model.parameters())
        largest_model = max(largest_model, params)
        largest_saved = max(largest_saved, saved_bytes(model))
        # The data set counts where it is not loaded yet (``images`` given: it is, and the
        # memory available has it).
        kept, passing = data_bytes(run, shape) if images is None else (0, 0)
        evaluated = tests if tests is not None else shape.test if shape is not None else None
        need = _Need(key, run, device, known, side, peak_bytes(run, model, images=known,
                                                              device=device),
                     params * PARAMETER_BYTES, kept, passing,
                     any(isinstance(m, PDELayer) for m in model.modules()),
                     evaluation_bytes(run, model, tests=evaluated, device=device),
                     evaluation_batch(run, evaluated))
        if largest is None or need.on_device > largest.on_device:
            largest = need
        if device.type != "cpu" and (host is None or need.on_host > host.on_host):
            host = need
    parallel = min(jobs, len(runs))
    workers = parallel * WORKER_BYTES if parallel > 1 else 0
    if largest is not None:
        _check_memory(largest, parallel, workers if largest.device.type == "cpu" else 0,
                      processes)
    if host is not None:
        _check_host_memory(host, parallel, workers, processes)
    if out is None:
        return
    count = len(runs) if checkpoints is None else checkpoints
    check_output_space(out, runs=len(runs), checkpoints=count, parameters=largest_model,
                       sweep=isinstance(runs, Mapping), state_bytes=largest_saved)


def saved_bytes(model: torch.nn.Module) -> int:
    """The bytes of the tensors ``model``'s checkpoint holds: every entry of its ``state_dict``,
    the persistent buffers with the parameters (e2cnn's sampled bases make a G-CNN's checkpoint
    3 to 13 times its parameters' bytes). Read from the shapes and dtypes alone: a model built
    on the ``meta`` device will do."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()
               if isinstance(t, torch.Tensor))


def _destination(path: Path) -> Path:
    """The folder that writing at ``path`` writes into: its links followed (``OUT/checkpoints``
    a link to another disk), else, where it does not exist yet, the nearest folder above it that
    does (it will be made there)."""
    folder = Path(os.path.realpath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _file_system(folder: Path) -> int:
    """The file system ``folder`` is on (its device number)."""
    return os.stat(folder).st_dev


def check_output_space(out: Path, *, runs: int, checkpoints: int, parameters: int,
                       sweep: bool = True, state_bytes: int = 0) -> None:
    """Before any work: room for ``runs`` runs writing into ``out`` (``checkpoints`` of them
    saving a model of up to ``parameters`` parameters, whose ``state_dict`` holds up to
    ``state_bytes`` bytes of tensors, buffers included: :func:`saved_bytes`; at least the
    parameters' float32 bytes are counted); an :class:`OutputFolderError` naming the place, the
    bytes and the cause otherwise.

    * The free space of each destination's own file system: the checkpoints go to
      ``out/checkpoints``, the records to ``out/runs`` and ``out``, links followed
      (:func:`_destination`); destinations on one file system are counted together (a
      ``train``'s ``out`` has neither folder: all goes to ``out``'s). The estimate errs on the
      large side (:data:`RECORD_BYTES` per record, and per checkpoint besides its tensors).
    * The largest file against this process's file size limit (``ulimit -f``:
      :func:`~eqpdenet.app.files.check_file_size`): a checkpoint (its tensors' bytes, buffers
      included: the larger of ``state_bytes`` and the parameters' float32 bytes, and
      :data:`CHECKPOINT_MIN_EXTRA`), a sweep's ``results.jsonl`` (the one there, and
      :data:`RECORD_MIN_BYTES` per run to add); these err on the small side (a checkpoint holds
      at least its tensors' bytes), so that only a file that cannot fit is refused."""
    out = Path(out)
    if sweep:  # a resumed sweep's folders: a file or a read-only mount there failed after a run
        for name, due in (("runs", runs), ("checkpoints", checkpoints)):
            if due:
                check_output_folder(out / name, f"the sweep's {name} folder")
    # A checkpoint's tensors, buffers included: e2cnn's sampled bases make a G-CNN's 3 to 13
    # times its parameters' bytes, and counting the parameters alone let one train in full and
    # then fail writing its checkpoint.
    tensors = max(4 * parameters, state_bytes)
    if checkpoints:
        check_file_size(tensors + CHECKPOINT_MIN_EXTRA,
                        f"a checkpoint in {out} (a model of {parameters:,} parameters"
                        + (f", {tensors:,} bytes of tensors, its buffers included)"
                           if tensors > 4 * parameters else ")"))
    if sweep:
        aggregate = out / "results.jsonl"
        try:
            written = aggregate.stat().st_size if aggregate.is_file() else 0
        except OSError:
            written = 0
        check_file_size(written + runs * RECORD_MIN_BYTES,
                        f"{aggregate} (with the records of {runs} more run(s))", "at least")
    needs = [(out / "runs", runs * RECORD_BYTES, "the results"),
             (out / "checkpoints",
              checkpoints * (tensors + RECORD_BYTES),
              "the checkpoints")]
    own = _destination(out)
    groups: dict[int, list] = {}  # file system -> [where, bytes, what, path]
    for path, size, what in needs:
        folder = _destination(path)
        try:
            device = _file_system(folder)
        except OSError:
            continue
        if device in groups:
            groups[device][1] += size
        else:
            groups[device] = [folder, size, what, path]
    for folder, size, what, path in groups.values():
        free = shutil.disk_usage(folder).free
        if size <= free:
            continue
        if folder == own or folder in own.parents or own in folder.parents:
            raise OutputFolderError(f"not enough space for the results in {out}: about "
                                    f"{_gib(size)} to write, {_gib(free)} free")
        raise OutputFolderError(f"not enough space for {what} in {path}, a link to {folder} on "
                                f"another file system than {out}: about {_gib(size)} to "
                                f"write, {_gib(free)} free")
