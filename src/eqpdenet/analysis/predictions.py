"""A trained classifier's logits and predictions over many images, where its PDEs may blow up on
a few of them.

An explicit Euler scheme that is stable on the training images can still overflow on an image
far from them (a learned ``F`` of degree 2 or 3 grows without bound). The models then raise
:class:`~eqpdenet.errors.NonFiniteStateError` for the whole batch, rightly: their logits would be
NaN. A measurement over thousands of images should neither stop there nor score NaN logits as
some class: the images whose state blows up are found (by halving the failing batch, which in
evaluation mode changes no image's logits: every image is computed on its own) and given no
prediction, :data:`NO_PREDICTION`, which no label equals. Callers count them as errors and say
how many (``evaluate``, ``train`` and the sweeps record ``non_finite_images``). Logits that are
NaN or infinite without an error (a model without PDEs whose weights grew huge) are treated the
same way.

What is measured, and what is refused rather than scored (each an
:class:`~eqpdenet.errors.InputError` naming what was found and what was expected):

* the model, in evaluation mode (:func:`evaluation_mode`: every submodule's own mode restored
  afterwards, a frozen batch norm inside a model in training mode included), on the images moved
  to its device and, floating-point images of lower precision than the model's, converted up to
  its dtype (as the library's layers do); a model on the ``meta`` device (no values) is refused
  before any work;
* the model must return, for a batch of ``n`` images, one tensor of logits of shape ``(n, K)``,
  ``K >= 1`` the same for every batch: a tuple or dict, a 1-D output (a model that squeezes a
  one-image batch), or extra dimensions (``(n, K, 1, 1)`` of a pooling without a flatten) were
  broadcast against the labels and scored ``n x n`` pairs;
* labels (:func:`correct_predictions`) must be one integer class per image, shape ``(N,)``
  (:func:`check_labels`), each in ``0 ... K - 1``: a label outside was an image that no
  prediction could match (``-1`` matched :data:`NO_PREDICTION`: a model without a single finite
  logit scored 100 % on such labels). An image without a prediction is never correct.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> predicted, failed = predictions(model, torch.rand(5, 1, 2, 2))
    >>> predicted.shape, int(failed.sum())
    (torch.Size([5]), 0)
"""

from __future__ import annotations

import functools
import itertools
import numbers
import traceback
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..checks import _finer, evaluation_mode, module_dtype
from ..errors import ConfigError, InputError, InputTypeError, NonFiniteStateError

__all__ = ["EVALUATION_BATCH", "NO_PREDICTION", "Culprit", "check_labels", "correct_predictions",
           "evaluation_mode", "logits_by_image", "own_code_culprit", "predictions"]

#: Images per forward pass when a model is evaluated. Small on purpose: at 1,000 images the
#: intermediate maps of the deep models are tens of MB each, allocated afresh by every operation
#: and page-faulted in by the kernel (more system time than computing, for ``invariant_pde``). At
#: 128 the same predictions took 0.21-0.66 of the CPU time, and the same logits bit for bit but
#: for ``invariant_pde`` (3e-5 apart on random images), for the seed-0 checkpoints of
#: ``results/benchmark-full`` (``benchmarks/evaluation_batch.py``, docs/performance.md).
EVALUATION_BATCH = 128

#: The prediction of an image whose logits are not finite (no class is ``-1``).
NO_PREDICTION = -1


def _shape(value) -> str:
    """What a model returned, in words, for an error message."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a {type(value).__name__} with keys {list(value)[:6]}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _check_logits(logits, count: int, model: str = "the model") -> Tensor:
    """``logits`` if they are a tensor of shape ``(count, K)``, ``K >= 1``: one row of class
    scores per image of a batch of ``count``; anything else is an
    :class:`~eqpdenet.errors.InputError` naming what the model returned and what was expected,
    the model named as ``model`` says (training names the kind: ``model 'mine' (Mine, module
    mylab)``). Logits ``(N, K, 1, 1)`` were broadcast against the labels ``(N,)``: ``N x N``
    pairs, a model right on 96.5 % of the images scored 10.8 %."""
    expected = f"expected logits of shape ({count}, K): one row of K class scores per image"
    if not isinstance(logits, Tensor):
        raise InputTypeError(
            f"{model} returned {_shape(logits)} for a batch of {count} image(s), not a tensor "
            f"of logits; {expected} (wrap the model in a module that returns the logits alone)")
    if logits.dim() == 2 and logits.shape[0] == count and logits.shape[1] >= 1:
        return logits
    hint = ""
    if logits.dim() == 1 and count == 1:
        hint = (" (a model that squeezes its output drops the batch dimension of a batch of one "
                "image, as the last batch can be: use .flatten(1), not .squeeze())")
    elif logits.dim() > 2 and logits.shape[0] == count:
        hint = (" (flatten the dimensions after the first into the classes, .flatten(1), as "
                "after a global pooling)")
    raise InputError(f"{model} returned logits of shape {tuple(logits.shape)} for a batch of "
                     f"{count} image(s); {expected}{hint}")


class Culprit(NamedTuple):
    """Who, of the user's code, raised an exception in a forward pass
    (:func:`own_code_culprit`): ``who`` names it (``model 'mine' (Mine, module mylab)``,
    ``invariant set 'mine' (its invariant 'x': ratio, module mylab)``), ``said`` is the
    exception in one line (``RuntimeError: text``), ``family`` whether it is the model family
    itself (else an invariant set the model runs)."""

    who: str
    said: str
    family: bool


class _Owner(NamedTuple):
    """An item of the user's that a forward pass may run: how it is named, its functions'
    modules, and its invariants' names by their functions' code objects (an invariant set's)."""

    who: str
    modules: frozenset
    invariants: dict
    family: bool


def _own_items(model: nn.Module, kind: str | None) -> list[_Owner]:
    """The user's items that ``model``'s forward pass runs: its family where a plugin registered
    it (``kind``, where known; else the registered family whose class one of ``model``'s modules
    is), then every registered invariant set that one of its modules holds whose functions are
    not eqpdenet's (a plugin's set, run by a built-in family too)."""
    from ..models import BUILT_IN_FAMILIES, MODELS
    from ..pde.invariants import InvariantSet
    from ..registry import own_code_name

    modules = list(model.modules())
    owners = []
    if kind is not None and kind in MODELS:
        found = [(kind, MODELS.get(kind), type(model))]
    else:  # the first module of a registered class (by identity: an item need not hash)
        items = [(name, MODELS.get(name)) for name in MODELS.names()]
        found = [(name, item, item) for module in modules for name, item in items
                 if item is type(module) and item not in BUILT_IN_FAMILIES][:1]
    for name, item, cls in found:
        if item not in BUILT_IN_FAMILIES:
            owners.append(_Owner(f"model {name!r} ({own_code_name(item)})",
                                 frozenset({_module_of(item), cls.__module__}), {}, True))
    sets = {}
    for module in modules:
        for value in vars(module).values():
            for held in (value if isinstance(value, list | tuple) else (value,)):
                # registered ones only: a set a Python-API model builds for itself is its
                # code, not a plugin's (its errors raise as they did; round 18 review)
                if isinstance(held, InvariantSet) and held._is_registered():
                    sets.setdefault(id(held), held)
    for invariant_set in sets.values():
        functions = [(invariant.name, getattr(invariant, "function", None))
                     for invariant in invariant_set.invariants]
        functions = [(name, function, _underlying(function)) for name, function in functions
                     if function is not None]
        functions = [(name, function, plain) for name, function, plain in functions
                     if _module_of(plain).partition(".")[0] not in ("", "eqpdenet")]
        if functions:
            codes = {plain.__code__: (name, own_code_name(function))
                     for name, function, plain in functions if hasattr(plain, "__code__")}
            owners.append(_Owner(f"invariant set {invariant_set.name!r}",
                                 frozenset(_module_of(plain) for _, _, plain in functions),
                                 codes, False))
    return owners


def _underlying(function):
    """The Python function whose code runs when the invariant ``function`` is called, to find
    it on a traceback: through ``functools.partial`` (``.func``) and wrappers (``__wrapped__``),
    and a callable object's class's ``__call__``; ``function`` itself where there is none (a
    built-in). A partial or a callable object has no ``__code__``, and its set was not named
    (round 18 review)."""
    for _ in range(32):  # a cycle of wrappers ends somewhere
        if isinstance(function, functools.partial):
            function = function.func
        elif getattr(function, "__wrapped__", None) is not None:
            function = function.__wrapped__
        else:
            break
    if not hasattr(function, "__code__") and callable(function):
        call = next((vars(cls)["__call__"] for cls in type(function).__mro__
                     if "__call__" in vars(cls)), None)  # its class's, or a base's
        if hasattr(call, "__code__"):
            return call
    return function


def _module_of(item) -> str:
    """The module that defines ``item`` (a function's, a class's; a callable object's class's)."""
    return str(getattr(item, "__module__", None) or type(item).__module__ or "")


def own_code_culprit(error: Exception, model: nn.Module, kind: str | None = None
                     ) -> Culprit | None:
    """Who raised ``error``, an exception of ``model``'s forward pass, where it is the user's
    code: a model family registered by a plugin (``kind`` names it where the caller knows it,
    else the registered class of one of ``model``'s modules), or a plugin's invariant set that
    one of ``model``'s modules holds (run by a built-in family too). The innermost frame of
    the traceback that is eqpdenet's or one of theirs decides
    (:func:`~eqpdenet.registry.own_code_frame`): None where it is eqpdenet's, where the model
    runs no code of a plugin's (a model given to the Python API raises as it did), and for
    eqpdenet's own errors and failed memory allocations
    (:func:`~eqpdenet.registry.own_code_error`). Called only once an exception is raised."""
    from ..registry import own_code_error

    said = own_code_error(error)
    if said is None:
        return None
    try:
        return _culprit(error, model, kind, said)
    except Exception:  # naming the culprit must never hide the error: it is raised as it was
        return None


def _culprit(error: Exception, model: nn.Module, kind: str | None, said: str) -> Culprit | None:
    """:func:`own_code_culprit` once ``error`` is known not to be eqpdenet's own error."""
    from ..registry import own_code_frame

    owners = _own_items(model, kind)
    frame = own_code_frame(error, [module for owner in owners for module in owner.modules])
    if frame is None:
        return None
    codes = [entry.f_code for entry, _ in traceback.walk_tb(error.__traceback__)]
    for owner in owners:  # the invariant whose function is on the way to the error
        for code in reversed(codes):
            if code in owner.invariants:
                name, function = owner.invariants[code]
                return Culprit(f"{owner.who} (its invariant {name!r}: {function})", said, False)
    # By module, the family alone: a set is blamed only where one of its invariants' functions
    # is on the way to the error (above); by module, a set held but never called was blamed for
    # its module's other code (round 18 review)
    module = str(frame.f_globals.get("__name__"))
    for same in (lambda other: other == module,
                 lambda other: other.partition(".")[0] == module.partition(".")[0]):
        for owner in owners:
            if owner.family and any(same(other) for other in owner.modules):
                return Culprit(owner.who, said, True)
    return None


def _blocks(model: nn.Module, batch: Tensor, errors: list) -> list[Tensor | None]:
    """Logits ``(n, K)`` of ``batch`` as consecutive blocks, ``None`` for each single image on
    which the model raised :class:`NonFiniteStateError` (the errors appended to ``errors``). An
    exception that the user's code raised in the forward pass (a plugin's family or invariant
    set, :func:`own_code_culprit`) is one :class:`~eqpdenet.errors.InputError` naming it, the
    original chained; eqpdenet's own pass unchanged."""
    try:
        return [_check_logits(model(batch), len(batch))]
    except NonFiniteStateError as error:
        if len(batch) == 1:
            errors.append(error)
            return [None]
        half = len(batch) // 2
        return _blocks(model, batch[:half], errors) + _blocks(model, batch[half:], errors)
    except Exception as error:
        culprit = own_code_culprit(error, model)
        if culprit is None:
            raise
        raise InputError(f"{culprit.who} failed in evaluation mode, on images of shape "
                         f"{tuple(batch.shape)}: {culprit.said}") from error


def _check_batch_size(batch_size) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` unless ``batch_size`` is a whole number >= 1 (0
    gave a bare error of ``range()``, a negative one no batch at all)."""
    if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1):
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")


def _device_of(model: nn.Module, images: Tensor) -> torch.device:
    """Where ``model`` computes: the device of its first parameter or buffer; a model with
    neither (``nn.Flatten()``, a fixed classifier) computes wherever its input is. A model on
    the ``meta`` device has no values: an :class:`~eqpdenet.errors.InputError` before any work
    (its forward pass ran, then "Cannot copy out of meta tensor")."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = images.device if tensor is None else tensor.device
    if device.type == "meta":
        raise InputError(f"{type(model).__name__}'s parameters are on the meta device: they hold "
                         f"no values to compute logits with; materialise them first "
                         f"(model.to_empty(device='cpu') and load a state dict)")
    return device


def _as_model_input(batch: Tensor, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    """``batch`` on ``device``; floating-point images of lower precision than the model's
    ``dtype`` converted up to it (float32 images into a float64 model), as the library's layers
    do; anything else as it is (the model decides)."""
    batch = batch.to(device)
    if (dtype is not None and batch.is_floating_point() and batch.dtype != dtype
            and _finer(dtype, batch.dtype)):
        batch = batch.to(dtype)
    return batch


@torch.no_grad()
def logits_by_image(model: nn.Module, images: Tensor,
                    batch_size: int = EVALUATION_BATCH) -> tuple[Tensor, Tensor]:
    """Logits ``(N, K)`` of ``model`` in evaluation mode on ``images`` ``(N, C, H, W)`` (moved
    to the model's device: that of its first parameter or buffer, else the images' own; in
    batches of ``batch_size >= 1``; returned on the CPU) and a boolean mask ``(N,)`` of the
    images whose logits are not finite: those on which the model raised
    :class:`~eqpdenet.errors.NonFiniteStateError` (their rows are NaN) or returned NaN or inf.

    Raises the model's :class:`~eqpdenet.errors.NonFiniteStateError` if it blew up on every
    image (there are then no logits, not even their number). Every submodule's mode is restored
    afterwards (:func:`evaluation_mode`). Logits not ``(n, K)`` for a batch of ``n``, or of
    another ``K`` in another batch, a model on the meta device: an
    :class:`~eqpdenet.errors.InputError` (module doc).
    """
    _check_batch_size(batch_size)
    if not len(images):
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.bool)
    device = _device_of(model, images)
    dtype = module_dtype(model)
    errors: list[NonFiniteStateError] = []
    with evaluation_mode(model):
        blocks = [block for i in range(0, len(images), batch_size)
                  for block in _blocks(model, _as_model_input(images[i:i + batch_size], device,
                                                              dtype), errors)]
    computed = [b for b in blocks if b is not None]
    if errors and not computed:
        raise errors[0]
    widths = sorted({b.shape[1] for b in computed})
    if len(widths) > 1:
        raise InputError(f"the model returned logits of {widths[0]} and of {widths[-1]} classes "
                         f"for different batches of these images; expected the same number K of "
                         f"class scores for every image")
    width, dtype = computed[0].shape[1], computed[0].dtype
    nan = torch.full((1, width), float("nan"), dtype=dtype)
    logits = torch.cat([nan if b is None else b.cpu() for b in blocks])
    return logits, ~torch.isfinite(logits).all(1)


@torch.no_grad()
def predictions(model: nn.Module, images: Tensor,
                batch_size: int = EVALUATION_BATCH) -> tuple[Tensor, Tensor]:
    """Predicted classes ``(N,)`` (int64) of ``model`` in evaluation mode on ``images``
    ``(N, C, H, W)``, and the mask ``(N,)`` of images without a prediction
    (:data:`NO_PREDICTION` there); errors as :func:`logits_by_image` (a model that blows up on
    every image has no predictions to give: its error)."""
    logits, failed = logits_by_image(model, images, batch_size)
    if not len(images):
        return torch.zeros(0, dtype=torch.int64), failed
    return torch.where(failed, NO_PREDICTION, logits.argmax(1)), failed


def check_images(images, name: str = "images") -> None:
    """An :class:`~eqpdenet.errors.InputError` unless ``images`` is a ``(B, C, H, W)`` tensor
    with at least one image: a measurement over no image has no value (the resampling raised a
    bare error about an output size of 0)."""
    if not isinstance(images, Tensor):
        raise InputTypeError(f"{name} must be a (B, C, H, W) tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise InputError(f"{name} must be (B, C, H, W), got shape {tuple(images.shape)}")
    if len(images) == 0:
        raise InputError(f"{name} holds no image (shape {tuple(images.shape)}): nothing to "
                         f"measure")


def check_labels(images: Tensor, labels) -> Tensor:
    """``labels`` on the CPU, or an :class:`~eqpdenet.errors.InputError` unless ``images`` are
    ``(N, C, H, W)``, ``N >= 1`` (:func:`check_images`), and ``labels`` one integer class per
    image: shape ``(N,)``. ``predicted == labels`` broadcast labels ``(N, 1)`` or ``(1,)`` to
    ``N x N`` comparisons, and a model right on every image scored 100 / N percent. The one rule
    of the accuracies here, of :mod:`eqpdenet.analysis.robustness` and of
    :func:`eqpdenet.app.training.accuracy`."""
    check_images(images)
    if not isinstance(labels, Tensor):
        raise InputTypeError(f"labels must be a tensor of shape ({len(images)},), got "
                             f"{type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise InputTypeError(f"labels must be integer classes, got {labels.dtype}")
    if tuple(labels.shape) != (len(images),):
        raise InputError(f"labels must have shape ({len(images)},), one class per image, got "
                         f"{tuple(labels.shape)}")
    return labels.cpu()


def check_classes(labels: Tensor, classes: int, *, split: str | None = None,
                  source: str | None = None) -> None:
    """An :class:`~eqpdenet.errors.InputError` naming the first label outside ``0 ... classes -
    1``: no prediction can match it (a 3-class model on labels 0 ... 9 scored 10 % silently).
    ``split`` (``"training"``, ``"validation"``, ``"test"``), where the labels are a split's, is
    named with the image, and ``source`` says where ``classes`` came from and what to do (the
    training's checks: a test label above every training label of a dict of splits was refused
    naming neither the split nor that the training labels gave the class count); without them
    the message ends as it always did."""
    outside = (labels < 0) | (labels >= classes)
    if bool(outside.any()):
        index = int(outside.nonzero()[0, 0])
        where = f"the {split} split's image {index}; " if split is not None else ""
        why = source or "the labels and the model's classes must agree"
        raise InputError(f"labels[{index}] = {int(labels[index])} is not a class of the model, "
                         f"which returns {classes} logits per image (classes 0 ... "
                         f"{classes - 1}){': ' + where if where else '; '}{why}")


@torch.no_grad()
def correct_predictions(model: nn.Module, images: Tensor, labels: Tensor,
                        batch_size: int = EVALUATION_BATCH) -> tuple[Tensor, Tensor]:
    """Whether ``model`` classifies each image right, ``(N,)`` boolean, and the mask ``(N,)`` of
    images without a prediction (never right), for ``images`` ``(N, C, H, W)`` and ``labels``
    ``(N,)`` (:func:`check_labels`), each a class of the model: ``0 ... K - 1`` for logits
    ``(N, K)``; errors as :func:`logits_by_image`. What every accuracy here counts."""
    labels = check_labels(images, labels)
    logits, failed = logits_by_image(model, images, batch_size)
    check_classes(labels, logits.shape[1])
    return (logits.argmax(1) == labels) & ~failed, failed


def _logit_pairs(model: nn.Module, images: Tensor, moved: Tensor,
                 batch_size: int) -> tuple[Tensor, Tensor]:
    """The logits of ``moved`` and of ``images``, of the images on which both are finite (an
    image on which the model's PDE blows up has no logits to compare: it is left out of the
    batch-wide change; the accuracies count it as an error). What
    :func:`~eqpdenet.analysis.robustness.logit_change` and
    :func:`~eqpdenet.analysis.equivariance.model_invariance` compare."""
    logits, failed = logits_by_image(model, images, batch_size)
    moved_logits, moved_failed = logits_by_image(model, moved, batch_size)
    keep = ~(failed | moved_failed)
    return moved_logits[keep], logits[keep]
