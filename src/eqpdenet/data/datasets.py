"""Image classification data sets by name or by file, and their rotated versions.

An :class:`ImageDataset` holds a training and a test split as tensors (images ``(N, C, H, W)``
float32, in [0, 1] for the built-in sets and files, finite for a set a user registers; labels
``(N,)`` int64). :func:`load_dataset` takes

* a registered name (:data:`DATASETS`): ``"rotmnist"`` (the paper's ROTMNIST, official or
  generated, :mod:`eqpdenet.data.rotmnist`) and ``"mnist"`` (upright MNIST, 60,000 / 10,000); or
* a path: a ``.npz`` file with arrays ``x_train, y_train, x_test, y_test`` (images ``(N, H, W)``
  or ``(N, H, W, C)`` or ``(N, C, H, W)``, integers in 0..255 or floats in [0, 1]; labels
  integers ``0 .. classes - 1``; any byte order), or a folder holding the four IDX files with the standard
  names (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``; the
  layout of MNIST, Fashion-MNIST and KMNIST).

:func:`rotate_dataset` makes the rotated version of any data set the way ROTMNIST is made from
MNIST: every image is rotated about its centre by an angle uniform in ``[0, 2 pi)``
(bilinear, zero fill; :func:`eqpdenet.geometry.rotate`), the angles drawn from a generator
seeded by ``seed``; the training images come from the training pool and the test images from the
test pool only (never mixed), so the result is deterministic and leak-free. With
``rotation_centre="mass"`` each image turns about its own centre of mass instead
(:func:`eqpdenet.geometry.rotate_about_mass`), so that its place in the frame does not tell the
angle (MNIST's digits sit half a pixel off the frame's centre in each axis: about the frame's
centre, the offset turns with the digit; ``benchmarks/centroid_leak.py``).

A data set read from a path records its content's fingerprint in ``info["fingerprint"]``
(:func:`data_fingerprint`: the SHA-256 of the file's bytes, or of the four IDX files'), so that
results and checkpoints say which data they were made on, and a file replaced under the same
name is noticed. The registered sets have none: their name and seed identify them (MNIST's files
are checked against their published MD5s on every read, the generated ROTMNIST is a function of
them and its seed, its cache hash-checked).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import numbers
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checks import require_int
from ..errors import ConfigError, DataFileError, warn_at_caller
from ..geometry import rotate, rotate_about_mass
from ..registry import Registry, _shown, call_own_code, checked_signature
from .mnist import _IDX_DTYPES as IDX_DTYPES
from .mnist import load_mnist, read_idx
from .rotmnist import N_TEST as ROTMNIST_TEST
from .rotmnist import N_TRAIN as ROTMNIST_TRAIN
from .rotmnist import check_rotation_centre, load_rotmnist

__all__ = ["DATASETS", "DatasetShape", "ImageDataset", "check_dataset_name", "check_loader",
           "data_fingerprint", "dataset_fingerprint", "dataset_shape", "is_built_in",
           "load_dataset", "load_idx_folder", "load_npz", "loader_name", "loader_words", "mnist_family",
           "register_dataset", "rotate_dataset", "seed_reaches_loader"]

IDX_NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


@dataclass
class ImageDataset:
    """A classification data set: training and test images and labels.

    Built by a registered loader (:func:`register_dataset`), it is checked as a file's content
    is, in one pass over the pixels: images ``(N, C, H, W)`` of floats (finite; made float32) or
    of integers 0..255 (made float32 in [0, 1], as a file's), labels ``(N,)`` integers
    ``0 .. classes - 1`` (made int64), tensors or NumPy arrays of any byte order; anything else
    is a :class:`DataFileError` naming the split and array (``train_images: non-finite pixel
    values (1 NaN, 0 infinite; the first in image 299)``).

    Attributes:
        name: what it is (a registered name, or the file it was read from).
        train_images, test_images: ``(N, C, H, W)`` float32 (in [0, 1] for the built-in sets and
            files; finite for every set).
        train_labels, test_labels: ``(N,)`` int64 in ``0 .. classes - 1``.
        classes: number of classes.
        info: how it was made (source, seed ...), stored with every result; for a data set read
            from a path, ``fingerprint`` (:func:`data_fingerprint`) too.
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: int
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        # What a registered loader gives is checked as a file's content is (one pass over the
        # pixels): integer pixels 0..255 become float32 in [0, 1] as a file's do, float pixels
        # float32 and finite, labels int64 in 0 .. classes - 1; numpy arrays are taken too.
        if isinstance(self.classes, bool) or not isinstance(self.classes, numbers.Integral):
            raise DataFileError(self.name, f"classes must be an integer, got {self.classes!r}")
        self.classes = int(self.classes)
        for split in ("train", "test"):
            images = _dataset_images(getattr(self, f"{split}_images"), self.name, split)
            labels = _dataset_labels(getattr(self, f"{split}_labels"), self.name, split)
            _check_sizes(self.name, split, tuple(images.shape), len(labels))
            low, high = (int(v) for v in torch.aminmax(labels))
            if low < 0 or high >= self.classes:
                raise DataFileError(self.name, f"{split} labels must be 0 ... {self.classes - 1}, "
                                    f"got {low} ... {high}")
            setattr(self, f"{split}_images", images)
            setattr(self, f"{split}_labels", labels)
        if self.classes < 2:
            raise DataFileError(self.name, _one_class(int(self.train_labels.max())))
        _check_same_shape(self.name, tuple(self.train_images.shape[1:]),
                          tuple(self.test_images.shape[1:]))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.train_images.shape[1:])

    def pixel_statistics(self) -> tuple[float, float]:
        """Mean and standard deviation of the training pixels (for standardisation)."""
        images = self.train_images.double()
        return float(images.mean()), float(images.std())


def _one_class(label: int) -> str:
    return (f"every label is {label}: a classifier needs at least two classes (its accuracy would "
            f"be 100 % whatever it learned)")


def _check_sizes(path, split: str, shape: tuple[int, ...], labels: int) -> None:
    """The checks of a split's sizes, for loading and :func:`dataset_shape` alike: images
    ``shape`` ``(N, C, H, W)`` and ``labels`` labels."""
    if shape[0] == 0:
        raise DataFileError(path, f"the {split} split holds no images")
    if min(shape[1:]) == 0:
        raise DataFileError(path, f"{split} images of shape {tuple(shape[1:])} (C, H, W) hold no "
                            f"pixels")
    if labels != shape[0]:
        raise DataFileError(path, f"{shape[0]} {split} images but {labels} labels")


def _check_same_shape(path, train: tuple[int, ...], test: tuple[int, ...]) -> None:
    if train != test:
        raise DataFileError(path, f"training images {train} and test images {test} differ")


#: Unsigned torch integers few operations take (no ``aminmax``): read through NumPy.
_WIDE_UNSIGNED = tuple(getattr(torch, name) for name in ("uint16", "uint32", "uint64")
                       if hasattr(torch, name))


def _dataset_images(images, name, split: str) -> Tensor:
    """An :class:`ImageDataset`'s ``{split}_images`` as ``(N, C, H, W)`` float32 (numpy arrays
    and integer pixels converted as a file's are), their values checked in one pass."""
    what = f"{split}_images"
    if isinstance(images, Tensor) and images.dtype in _WIDE_UNSIGNED:
        images = images.cpu().numpy()
    if not isinstance(images, np.ndarray | Tensor):
        raise DataFileError(name, f"{what}: expected a torch.Tensor or a numpy array, got "
                            f"{type(images).__name__}")
    if images.ndim != 4:
        raise DataFileError(name, f"{split} images must be (N, C, H, W), got "
                            f"{tuple(images.shape)} {images.dtype}")
    if isinstance(images, np.ndarray):
        return _pixels(images, name, what, unit=False)
    kind = _pixel_kind(images.dtype, name, what)
    converted = images.to(torch.float32)
    if images.numel():
        low, high = torch.aminmax(images if kind == "int" else converted)
        _check_pixel_values(kind, low.item(), high.item(), name, what, unit=False,
                            dtype=images.dtype, nonfinite=lambda: _nonfinite_torch(converted))
    return converted.div_(255.0) if kind == "int" else converted


def _nonfinite_torch(images: Tensor) -> tuple[int, int, int]:
    bad = ~torch.isfinite(images)
    first = int(bad.flatten(1).any(1).nonzero()[0, 0])
    return int(torch.isnan(images).sum()), int(torch.isinf(images).sum()), first


def _dataset_labels(labels, name, split: str) -> Tensor:
    """An :class:`ImageDataset`'s ``{split}_labels`` as ``(N,)`` int64 (numpy arrays taken, as
    a file's labels)."""
    what = f"{split}_labels"
    if isinstance(labels, Tensor) and labels.dtype in _WIDE_UNSIGNED:
        labels = labels.cpu().numpy()
    if isinstance(labels, np.ndarray):
        return _as_labels(labels, name, what)
    if not isinstance(labels, Tensor):
        raise DataFileError(name, f"{what}: expected a torch.Tensor or a numpy array, got "
                            f"{type(labels).__name__}")
    if (labels.dim() != 1 or labels.dtype == torch.bool or labels.is_floating_point()
            or labels.is_complex()):
        raise DataFileError(name, f"{what}: labels must be a 1-D integer array, got "
                            f"{labels.dtype} {tuple(labels.shape)}")
    return labels.to(torch.int64)


#: The keywords :func:`load_dataset` calls a registered loader with.
LOADER_KEYWORDS = {"data_dir": None, "cache_dir": None, "seed": 0}
#: Endings of a registered data set's name that read as a data file's (:func:`check_dataset_name`).
FILE_SUFFIXES = (".npz", ".npy", ".zip", ".gz", ".amat")


def check_dataset_name(name: str) -> None:
    """Raise a :class:`ConfigError` where ``name`` cannot name a registered data set: a name that
    reads as a path (holding ``/`` or ``\\``, ``.``, ``..``, starting with ``~``, or ending in a
    data file's suffix, :data:`FILE_SUFFIXES`), which :func:`load_dataset` would take instead of
    the file or folder of that path, or holding ``=``, which separates a field from its value in
    ``--set`` assignments and a sweep's overrides."""
    path_like = ("/" in name or "\\" in name or name in (".", "..") or name.startswith("~")
                 or name.lower().endswith(FILE_SUFFIXES))
    if path_like:
        raise ConfigError(f"data set name {name!r} reads as a path: data.dataset takes a path for a "
                          f"file or IDX folder, and a registered name would hide it; register the "
                          f"set under a plain name (no '/', '\\', leading '~' or "
                          f"{'/'.join(FILE_SUFFIXES)} ending)")
    if "=" in name:
        raise ConfigError(f"data set name {name!r} holds '=', which separates a field from its "
                          f"value in --set assignments and a sweep's overrides; register the set "
                          f"under a name without it")


def check_loader(name: str, loader) -> None:
    """Raise a :class:`ConfigError` naming data set ``name`` unless ``loader`` can be called as
    :func:`load_dataset` calls it: ``loader(data_dir=..., cache_dir=..., seed=...)``
    (:data:`LOADER_KEYWORDS`; ``inspect.signature(loader).bind``)."""
    signature = checked_signature(loader, f"data set {name!r}", "loader",
                                  "loader(data_dir=None, cache_dir=None, seed=0)")
    shown = getattr(loader, "__qualname__", None) or type(loader).__name__
    try:
        signature.bind(**LOADER_KEYWORDS)
    except TypeError as error:
        raise ConfigError(f"data set {name!r}: its loader {shown}{signature} cannot be called as "
                          f"loader(data_dir=..., cache_dir=..., seed=...), the keywords "
                          f"load_dataset passes ({error})") from None


class _DatasetRegistry(Registry):
    """The data sets: a name and a loader are checked (:func:`check_dataset_name`,
    :func:`check_loader`) whichever way they are registered (:func:`register_dataset` or
    ``DATASETS.register``)."""

    def register(self, name, item=None, *, replace: bool = False):
        if isinstance(name, str) and name:
            check_dataset_name(name)
            if item is not None and (replace or name not in self):
                check_loader(name, item)
        return super().register(name, item, replace=replace)


#: Data sets by name: ``loader(data_dir, cache_dir, seed) -> ImageDataset``.
DATASETS: Registry[Callable[..., ImageDataset]] = _DatasetRegistry("data set")


def register_dataset(name: str, loader: Callable[..., ImageDataset], *,
                     replace: bool = False) -> Callable[..., ImageDataset]:
    """Make ``loader(data_dir, cache_dir, seed) -> ImageDataset`` available by ``name``.

    Checked now, each a :class:`ConfigError` of one line: a ``name`` that reads as a path or holds
    ``=`` (:func:`check_dataset_name`), a ``loader`` that cannot be called with the keywords
    :func:`load_dataset` passes (:func:`check_loader`). What the loader returns is checked when
    it is loaded (an :class:`ImageDataset`, whose content is checked as a file's)."""
    return DATASETS.register(name, loader, replace=replace)


def _rotmnist(data_dir=None, cache_dir=None, seed: int = 0, source: str = "auto") -> ImageDataset:
    rot = load_rotmnist(data_dir=data_dir, cache_dir=cache_dir, seed=seed, source=source)
    return ImageDataset("rotmnist", rot.train_images, rot.train_labels, rot.test_images,
                        rot.test_labels, classes=10, info={"source": rot.source, **rot.params})


def _mnist(data_dir=None, cache_dir=None, seed: int = 0) -> ImageDataset:
    mnist = load_mnist(data_dir)
    as_images = lambda a: torch.from_numpy(a).to(torch.float32).div_(255.0)[:, None]  # noqa: E731
    return ImageDataset("mnist", as_images(mnist.train_images), torch.from_numpy(mnist.train_labels),
                        as_images(mnist.test_images), torch.from_numpy(mnist.test_labels),
                        classes=10, info={"source": "MNIST, upright, 60,000 / 10,000"})


register_dataset("rotmnist", _rotmnist)
register_dataset("mnist", _mnist)
#: The loaders of the built-in sets, whose shapes are known (:data:`REGISTERED_SHAPES`); a
#: name registered anew with ``replace=True`` is the user's, and its shape is loaded.
_BUILT_IN_LOADERS = {"rotmnist": _rotmnist, "mnist": _mnist}
DATASETS.on_change(lambda: _LOADED_SHAPES.clear())


def is_built_in(spec: str) -> bool:
    """Whether ``spec`` names a built-in data set (``"rotmnist"``, ``"mnist"``) that is still
    registered with its built-in loader. A built-in name registered anew with ``replace=True``
    is the user's data set: its shape is loaded (:func:`dataset_shape`), its loader's errors
    name it (:func:`load_dataset`), and it is not of MNIST's family (:func:`mnist_family`)."""
    return (spec in _BUILT_IN_LOADERS and spec in DATASETS
            and DATASETS.get(spec) is _BUILT_IN_LOADERS[spec])


def loader_name(spec: str) -> str | None:
    """Which loader the registered data set ``spec`` is loaded by now: ``"built-in"`` for
    eqpdenet's own (:func:`is_built_in`), else the loader's ``module.qualname`` (a
    ``functools.partial``'s function, a callable object's class); None for a name not registered
    (a data file). Recorded with every run (``dataset.loader``), so that a sweep resumed after a
    plugin registers another loader under the name, or removes it, does not count the other
    data's runs as its own (:func:`eqpdenet.app.sweeps.changed_runs`)."""
    if spec not in DATASETS:
        return None
    if is_built_in(spec):
        return "built-in"
    loader = DATASETS.get(spec)
    while isinstance(getattr(loader, "func", None), Callable):  # functools.partial
        loader = loader.func
    named = loader if hasattr(loader, "__qualname__") else type(loader)
    return f"{getattr(named, '__module__', '?')}.{named.__qualname__}"


def loader_words(name: str) -> str:
    """A recorded loader (:func:`loader_name`) as messages say it."""
    return "eqpdenet's built-in loader" if name == "built-in" else name


def mnist_family(spec: str) -> bool:
    """Whether the data set ``spec`` is of MNIST's family, whose pixel statistics are a
    configuration's defaults (``model.standardize = "auto"`` keeps them, ``"fixed"``; any other
    set is standardised with its training split's own, ``"train"``): ``"rotmnist"`` or
    ``"mnist"`` while its built-in loader is registered under it (:func:`is_built_in`). The one
    rule of the training's resolution (``app.training.resolve_for_data``, from the data's name)
    and of what a recorded configuration may differ in (``app.config.data_resolved_fields``,
    from ``data.dataset``): ``mnist`` replaced by a plugin's set was standardised as the user's
    data by the one and compared as MNIST by the other, and a benchmark refused its own runs
    after training them, at every rerun."""
    return is_built_in(spec)  # both built-in sets are MNIST's digits


def seed_reaches_loader(spec: str) -> bool:
    """Whether the data set ``spec`` depends on the ``seed`` :func:`load_dataset` passes its
    loader: every registered loader is given it, and only the built-in MNIST loader ignores it
    (a data file has no loader). A ``rotated`` set's angles depend on it in every case."""
    return spec in DATASETS and DATASETS.get(spec) is not _BUILT_IN_LOADERS["mnist"]


#: The image layouts a data file may hold (:func:`_layout`), as its messages name them.
LAYOUTS = ("(N, H, W)", "(N, H, W, C)", "(N, C, H, W)")


def _layout(shape: tuple[int, ...], path, what: str) -> tuple[int, int, int]:
    """Where the channels, rows and columns of images of array ``shape`` are: the axes
    ``(C, H, W)`` (``C`` None for ``(N, H, W)``). A 4-D array is ``(N, C, H, W)`` or
    ``(N, H, W, C)``: the one of square images, else (non-square) the one whose channel axis
    holds 1, 3 or 4; any other shape is a :class:`DataFileError` showing it and the layouts
    accepted (``(N, 20, 24, 5)`` must not be read as 24x5 images of 20 channels)."""
    if len(shape) == 3:
        return None, 1, 2
    if len(shape) == 4:
        _, a, b, c = shape
        if a != b and b == c:
            return 1, 2, 3  # (N, C, H, W) with square images
        if a == b and b != c:
            return 3, 1, 2  # (N, H, W, C) with square images
        if c in (1, 3, 4) and a not in (1, 3, 4):
            return 3, 1, 2  # non-square: the small axis at the end is channels
        if a in (1, 3, 4) or a == b == c:
            return 1, 2, 3  # non-square with 1, 3 or 4 channels first; (N, C, C, C) as before
        raise DataFileError(path, f"{what}: array of shape {tuple(shape)}: neither square images "
                            f"(N, C, H, H) or (N, H, H, C) nor non-square images with 1, 3 or 4 "
                            f"channels first or last; the layouts accepted are "
                            f"{', '.join(LAYOUTS)}")
    raise DataFileError(path, f"{what}: expected images {', '.join(LAYOUTS[:-1])} or "
                        f"{LAYOUTS[-1]}, got shape {tuple(shape)}")


def _float_text(value) -> str:
    """``value`` with the digits that tell it from its neighbours in its own precision (a float32
    1.0000001 is not "1")."""
    return str(value)  # NumPy's shortest text of a scalar in its own dtype


def _pixel_kind(dtype, path, what: str) -> str:
    """``"int"`` or ``"float"``: the kind of pixels of ``dtype`` (NumPy's or torch's); any other
    dtype (bool, complex, text) is a :class:`DataFileError`."""
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point:
            return "float"
        if dtype != torch.bool and not dtype.is_complex:
            return "int"
    elif np.dtype(dtype).kind in "iu":
        return "int"
    elif np.dtype(dtype).kind == "f":
        return "float"
    raise DataFileError(path, f"{what}: pixels of dtype {dtype} are neither integers nor floats")


def _check_pixel_values(kind: str, low, high, path, what: str, *, unit: bool, dtype,
                        nonfinite: Callable[[], tuple[int, int, int]]) -> None:
    """The checks of pixel values from their smallest and largest (NaN where one is NaN), for
    loading and :func:`dataset_shape` alike: integers in 0..255; floats finite (``nonfinite()``:
    how many are NaN, how many infinite, the first image holding one), and with ``unit`` (a
    file's) in [0, 1] exactly: a value above 1 by a float32 rounding is refused too, its value
    shown (a file scaled by ``/ 255`` in float32 stays within [0, 1]; one that is not was made
    another way, which the user should see, rather than have it clipped)."""
    if kind == "int":
        if low < 0 or high > 255:
            raise DataFileError(path, f"{what}: integer pixels must be in 0..255, got "
                                f"{int(low)}..{int(high)}")
        return
    if not (math.isfinite(low) and math.isfinite(high)):
        nan, inf, first = nonfinite()
        raise DataFileError(path, f"{what}: non-finite pixel values ({nan} NaN, {inf} infinite; "
                            f"the first in image {first})")
    if unit and (low < 0 or high > 1):
        raise DataFileError(path, f"{what}: float pixels must be in [0, 1] (divide 0..255 "
                            f"images by 255), got [{_float_text(low)}, {_float_text(high)}] "
                            f"({dtype})")


def _nonfinite_numpy(array: np.ndarray) -> tuple[int, int, int]:
    first = int(np.nonzero(~np.isfinite(array))[0][0])  # C order: the smallest image index
    return int(np.isnan(array).sum()), int(np.isinf(array).sum()), first


def _pixels(array: np.ndarray, path, what: str, unit: bool = True) -> Tensor:
    """``(N, C, H, W)`` pixels of any byte order, checked (:func:`_check_pixel_values`) ->
    float32 in native byte order (integers divided by 255)."""
    kind = _pixel_kind(array.dtype, path, what)
    if array.size:
        _check_pixel_values(kind, array.min(), array.max(), path, what, unit=unit,
                            dtype=array.dtype, nonfinite=lambda: _nonfinite_numpy(array))
    # float32 in native byte order whatever the file's (torch takes no other byte order)
    images = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return images.div_(255.0) if kind == "int" else images


def _as_images(array: np.ndarray, path, what: str) -> Tensor:
    """``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` (:func:`_layout`) integers 0..255 or
    floats 0..1, of any byte order -> ``(N, C, H, W)`` float32 in [0, 1]
    (:func:`_check_pixel_values`)."""
    channels, _, _ = _layout(array.shape, path, what)
    if channels is None:
        array = array[:, None]
    elif channels == 3:
        array = np.moveaxis(array, -1, 1)
    return _pixels(array, path, what)


#: The largest label a file may hold: an int64 (beyond it, a label would wrap on conversion).
MAX_LABEL = int(np.iinfo(np.int64).max)


def _as_labels(array: np.ndarray, path, what: str) -> Tensor:
    """1-D integer labels of any integer dtype and byte order -> int64, checked before the
    conversion (a uint64 label 2**64 - 1 must not become -1)."""
    array = np.asarray(array)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataFileError(path, f"{what}: labels must be a 1-D integer array, got "
                            f"{array.dtype} {array.shape}")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0:
            raise DataFileError(path, f"{what}: negative label {low}")
        if high > MAX_LABEL:
            raise DataFileError(path, f"{what}: label {high} is out of range (labels are 0 .. "
                                f"classes - 1, at most 2**63 - 1)")
    return torch.from_numpy(array.astype(np.int64))


def _classes(path, train: Tensor, test: Tensor) -> int:
    """The class count of a data set read from a path: its largest label + 1. Refused, each a
    :class:`DataFileError`: an empty split; labels that leave a class of ``0 .. classes - 1``
    held by no split (labels 1..K, a gap: the count is not the data's), a test label above every
    training label among them named with its index; a training split of one class. A class the
    test split holds but the training split lacks is not refused here: the run's splits are
    warned about where they are made (``eqpdenet.app.training.prepare_data``), as a registered
    set's and the API's are."""
    if not (len(train) and len(test)):
        raise DataFileError(path, "a split holds no labels (no images): a data set needs "
                            "training and test images")
    top, test_top = int(train.max()), int(test.max())
    classes = max(top, test_top) + 1
    held = torch.unique(torch.cat([train, test])).tolist()
    if len(held) < classes:
        # the first few missing labels only: one stray label 2**32 - 1 must not list (or build)
        # four billion of them
        present, missing = set(held), []
        for label in range(classes):
            if label not in present:
                missing.append(label)
                if len(missing) == 10:
                    break
        count = classes - len(held)
        shown = ", ".join(map(str, missing)) + (f", ... ({count} in all)" if count > 10 else "")
        if test_top > top:
            # the largest label is the test split's alone: name it where it is, not the gaps
            # below it the training split would then have
            index = int((test == test_top).nonzero()[0, 0])
            above = int((test > top).sum())
            others = f"; {above} test labels are above {top} in all" if above > 1 else ""
            raise DataFileError(path, f"the test split holds label {test_top} (test image "
                                f"{index}), above every training label (the largest is {top}"
                                f"{others}): labels 0..{test_top} would leave {shown} held by no "
                                f"split; labels are 0 .. classes - 1")
        raise DataFileError(path, f"labels 0..{classes - 1} expected (the largest label is "
                            f"{classes - 1}); in both splits together the data set lacks {shown}")
    if classes < 2:
        raise DataFileError(path, _one_class(classes - 1))
    trained = torch.unique(train).tolist()
    if len(trained) < 2:
        raise DataFileError(path, f"the training split holds class {trained[0]} only, and a "
                            f"classifier needs two")
    return classes


def load_npz(path: str | os.PathLike) -> ImageDataset:
    """A data set from a ``.npz`` file with ``x_train, y_train, x_test, y_test``; any other array
    in it is a ``RuntimeWarning`` naming it (a file's ``x_val, y_val`` are not read: the
    validation split is the last ``data.validation`` images of ``x_train``)."""
    path = Path(path)
    try:
        fingerprint = _digest([path])
        with open(path, "rb") as handle:
            start = handle.read(6)
        if start and not start.startswith((b"PK\x03\x04", b"\x93NUMPY")):
            # np.load takes anything else for a pickle and says it contains pickled data
            raise DataFileError(path, "not a NumPy .npz archive (it starts neither like a zip "
                                "archive nor like a .npy file)")
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy file's array, renamed
            raise DataFileError(path, "holds a single NumPy array (.npy), not a .npz archive of "
                                "x_train, y_train, x_test, y_test")
        with archive:
            missing = sorted({"x_train", "y_train", "x_test", "y_test"} - set(archive.files))
            if missing:
                raise DataFileError(path, f"missing array(s) {missing}; a data set file holds "
                                    "x_train, y_train, x_test, y_test")
            arrays = {}
            for key in ("x_train", "y_train", "x_test", "y_test"):
                _check_npy_size(archive.zip, key, path)  # before numpy allocates the array
                arrays[key] = _npz_array(archive, key, path)
            unused = sorted(set(archive.files) - set(arrays))
    except DataFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        # truncated or damaged archives (a bad CRC, no data), and what is no archive at all
        raise DataFileError(path, f"not a readable .npz file ({type(error).__name__}: "
                            f"{error})") from None
    if unused:
        # a file's own validation arrays (x_val, y_val) are the likely ones: the validation
        # split is always carved from x_train, so they would be ignored unseen
        shown = ", ".join(unused[:5]) + (f", ... ({len(unused)} in all)" if len(unused) > 5 else "")
        warn_at_caller(f"{path}: array(s) {shown} not used: a data set file is read as x_train, "
                       f"y_train, x_test, y_test, and the validation split is the last "
                       f"data.validation images of x_train", RuntimeWarning)
    train_labels = _as_labels(arrays["y_train"], path, "y_train")
    test_labels = _as_labels(arrays["y_test"], path, "y_test")
    return ImageDataset(str(path), _as_images(arrays["x_train"], path, "x_train"), train_labels,
                        _as_images(arrays["x_test"], path, "x_test"), test_labels,
                        classes=_classes(path, train_labels, test_labels),
                        info={"source": str(path.resolve()), "fingerprint": fingerprint})


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, path) -> np.ndarray:
    """The array ``key`` of the open .npz ``archive`` (of the file ``path``), as loading and
    :func:`dataset_shape` read it: a member without a .npy header is a :class:`DataFileError`
    naming it. numpy gives such a member's bytes, which reached the image checks as a raw
    AttributeError (round 17), and the label checks as "labels must be a 1-D integer array, got
    |S11 ()" (round 18: ``dataset_shape`` read the labels without this check)."""
    array = archive[key]
    if not isinstance(array, np.ndarray):
        raise DataFileError(path, f"{key} is not a NumPy array (its member holds no .npy "
                            f"header)")
    return array


def _npy_member(archive: zipfile.ZipFile, key: str) -> str:
    """The member of a .npz archive that ``NpzFile[key]`` reads: ``key`` itself, else
    ``key.npy``."""
    return key if key in archive.namelist() else f"{key}.npy"


def _npy_header(member, info: zipfile.ZipInfo, path, key: str):
    """The shape, Fortran order and dtype in the .npy header at the start of the open zip
    member ``member`` (``info``; array ``key`` of the .npz file ``path``), read as numpy reads
    it (a bad header is numpy's ``ValueError``), or None where numpy would not read it as an
    array: no .npy magic (numpy returns its bytes), an unknown format version (numpy refuses
    it). Raises :class:`DataFileError` naming the file and the member where the array the
    header declares is larger than the member can hold: numpy allocates it before reading a
    byte (a header of a petabyte in a file of a few hundred bytes was a bare ``MemoryError``,
    which the command line took for a batch too large for the machine)."""
    if member.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
        return None
    member.seek(0)
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        return None
    if any(dimension < 0 for dimension in shape):
        # numpy refuses it when it reads the array; the shape check would pass it on, and a
        # negative size passed the size check below (a raw TypeError in dataset_shape)
        raise DataFileError(path, f"{key}: its .npy header declares a negative dimension, shape "
                            f"{shape}, in the archive's member {info.filename}")
    if not dtype.hasobject:  # an object array is pickled: numpy refuses it without pickle
        # exact integers: a product of declared sizes overflows 64 bits; a stored member
        # yields no more than its stored bytes, whatever its size in the directory says
        size = (min(info.file_size, info.compress_size) if info.compress_type == zipfile.ZIP_STORED
                else info.file_size)
        held = max(0, size - member.tell())
        declared = math.prod(shape) * dtype.itemsize
        if declared > held:
            raise DataFileError(path, f"{key}: its .npy header declares {declared} bytes (shape "
                                f"{shape}, {dtype}), more than the {held} bytes after the header "
                                f"in the archive's member {info.filename}")
    return shape, fortran, dtype


def _check_npy_size(archive: zipfile.ZipFile, key: str, path) -> None:
    """:func:`_npy_header`'s check of the member that ``NpzFile[key]`` reads (``KeyError``
    where there is none, as ``NpzFile`` raises)."""
    info = archive.getinfo(_npy_member(archive, key))
    with archive.open(info) as member:
        _npy_header(member, info, path, key)


def load_idx_folder(folder: str | os.PathLike) -> ImageDataset:
    """A data set from a folder with the four IDX files (MNIST's names, any content)."""
    folder = Path(folder)
    files = _idx_files(folder)
    fingerprint = _digest(list(files.values()))
    arrays = {key: read_idx(path) for key, path in files.items()}
    train_labels = _as_labels(arrays["train_labels"], folder, IDX_NAMES["train_labels"])
    test_labels = _as_labels(arrays["test_labels"], folder, IDX_NAMES["test_labels"])
    return ImageDataset(
        str(folder), _as_images(arrays["train_images"], folder, IDX_NAMES["train_images"]),
        train_labels, _as_images(arrays["test_images"], folder, IDX_NAMES["test_images"]),
        test_labels, classes=_classes(folder, train_labels, test_labels),
        info={"source": str(folder.resolve()), "fingerprint": fingerprint})


def _idx_files(folder: Path) -> dict[str, Path]:
    """The four IDX files of ``folder`` by role: ``<name>.gz`` or ``<name>``. Where both exist
    and hold the same IDX bytes (each read as :func:`read_idx` reads it: gzip or raw by its
    content), the gzipped one; where their bytes differ, a
    :class:`~eqpdenet.errors.DataFileError` naming both (:func:`_same_idx_bytes`): one of them is
    stale, and which one was meant cannot be told (the ``.gz`` was read silently, and the
    fingerprint hashed it alone)."""
    files = {}
    for key, name in IDX_NAMES.items():
        candidates = [folder / f"{name}.gz", folder / name]
        present = [p for p in candidates if p.is_file()]
        if not present:
            raise DataFileError(folder, f"missing {name}[.gz]; an IDX data set folder holds "
                                f"{', '.join(IDX_NAMES.values())}")
        if len(present) == 2 and not _same_idx_bytes(*present):
            raise DataFileError(folder, f"holds both {name}.gz and {name}, and their contents "
                                f"differ (compared uncompressed): one of them is stale; remove "
                                f"the one not meant (a folder may hold both only where they "
                                f"agree)")
        files[key] = present[0]
    return files


def _same_idx_bytes(first: Path, second: Path) -> bool:
    """Whether ``first`` and ``second`` hold the same bytes once each is uncompressed where it
    starts like gzip (as :func:`read_idx` decides), compared 1 MiB at a time and stopped at the
    first difference (files that agree are read whole: about as long as loading them). A stream
    that cannot be read (a damaged gzip file) is not compared: True, and loading names the
    damage."""
    handles = []
    try:
        with contextlib.ExitStack() as stack:
            for path in (first, second):
                handles.append(stack.enter_context(_open_idx(path)))
            while True:
                chunks = [_read_up_to(handle, 1 << 20) for handle in handles]
                if chunks[0] != chunks[1]:
                    return False
                if not chunks[0]:
                    return True
    except (OSError, EOFError, zlib.error):
        return True


def _open_idx(path: Path):
    """``path`` opened for reading its IDX bytes: through gzip where it starts like gzip, as
    :func:`~eqpdenet.data.mnist.read_idx` decides (by the content, not the name)."""
    with open(path, "rb") as handle:
        start = handle.read(2)
    return (gzip.open if start == b"\x1f\x8b" else open)(path, "rb")


def _read_up_to(handle, size: int) -> bytes:
    """``size`` bytes of ``handle``, fewer only at its end (a stream may return fewer)."""
    parts, held = [], 0
    while held < size:
        part = handle.read(size - held)
        if not part:
            break
        parts.append(part)
        held += len(part)
    return b"".join(parts)


#: Hex digits kept of a data fingerprint's SHA-256: 64 bits, no collision among the versions of
#: one file a user will ever make.
FINGERPRINT_DIGITS = 16


def data_fingerprint(path: str | os.PathLike) -> str:
    """The fingerprint of the data at ``path``: the SHA-256 (its first
    :data:`FINGERPRINT_DIGITS` hex digits) of a file's bytes, or, for a folder, of the four IDX
    files :func:`load_idx_folder` reads, in the order training images, training labels, test
    images, test labels. Bytes, not images: the same images compressed anew give another
    fingerprint. The files are read, not parsed (about a second per GB). A
    :class:`~eqpdenet.errors.DataFileError` for a folder without the IDX files; ``OSError`` for
    a file that cannot be read."""
    path = Path(path)
    if path.is_dir():
        return _digest(list(_idx_files(path).values()))
    return _digest([path])


def _digest(files: list[Path]) -> str:
    """The shortened SHA-256 of one file's bytes; of several, the SHA-256 of their SHA-256s
    (a byte moved from the end of one file to the start of the next changes it)."""
    digests = []
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digests.append(digest)
    if len(digests) > 1:
        digests = [hashlib.sha256(b"".join(d.digest() for d in digests))]
    return digests[0].hexdigest()[:FINGERPRINT_DIGITS]


def dataset_fingerprint(spec: str) -> str | None:
    """The fingerprint (:func:`data_fingerprint`) of the data set ``spec`` names as it is now:
    None for a registered name (identified by its name and seed, see the module doc) and for a
    path with no readable data set behind it (whose loading says what is wrong)."""
    if spec in DATASETS:
        return None
    try:
        return data_fingerprint(Path(spec).expanduser())
    except (OSError, DataFileError):
        return None


@dataclass(frozen=True)
class DatasetShape:
    """What a data set holds, as far as it can be told without loading it
    (:func:`dataset_shape`).

    Attributes:
        image_shape: ``(C, H, W)`` of its images (as :attr:`ImageDataset.image_shape`).
        train, test: the number of training and test images.
        classes: the number of classes (the largest label + 1), None where the labels could not
            be read cheaply or are not valid (loading says why).
    """

    image_shape: tuple[int, int, int]
    train: int
    test: int
    classes: int | None


#: The shapes of the registered data sets (their loaders check them: MNIST by its MD5s, ROTMNIST
#: on loading).
REGISTERED_SHAPES = {"mnist": DatasetShape((1, 28, 28), 60000, 10000, 10),
                     "rotmnist": DatasetShape((1, 28, 28), ROTMNIST_TRAIN, ROTMNIST_TEST, 10)}


def _images_shape(shape: tuple[int, ...], path, what: str) -> tuple[int, int, int]:
    channels, height, width = _layout(shape, path, what)
    return (1 if channels is None else int(shape[channels]), int(shape[height]),
            int(shape[width]))


#: Bytes of pixels :func:`_scan_pixels` reads at a time.
SCAN_BYTES = 8 << 20


def _scan_pixels(read: Callable[[int], bytes], shape: tuple[int, ...], fortran: bool, dtype,
                 path, what: str, shown_dtype=None) -> None:
    """Check the pixels of an array of ``shape`` and ``dtype`` stored after a header, read in
    pieces by ``read(bytes)``, as loading does (:func:`_check_pixel_values`), in constant
    memory. A short read is a ``ValueError`` (the file is damaged: loading says how)."""
    dtype = np.dtype(dtype)
    kind = _pixel_kind(dtype, path, what)
    count = math.prod(shape)
    if count == 0:
        return
    images, per_image = shape[0], count // shape[0]
    step = max(1, SCAN_BYTES // dtype.itemsize)
    low = high = None
    nan = inf = 0
    first = None
    done = 0
    while done < count:
        take = min(step, count - done)
        raw = read(take * dtype.itemsize)
        if len(raw) != take * dtype.itemsize:
            raise ValueError(f"{what}: truncated")
        chunk = np.frombuffer(raw, dtype=dtype)
        chunk_low, chunk_high = chunk.min(), chunk.max()
        low = chunk_low if low is None else np.minimum(low, chunk_low)  # NaN kept
        high = chunk_high if high is None else np.maximum(high, chunk_high)
        if kind == "float" and not (np.isfinite(chunk_low) and np.isfinite(chunk_high)):
            nan, inf = nan + int(np.isnan(chunk).sum()), inf + int(np.isinf(chunk).sum())
            index = np.flatnonzero(~np.isfinite(chunk)) + done
            image = int((index % images if fortran else index // per_image).min())
            first = image if first is None else min(first, image)
        done += take
    _check_pixel_values(kind, low, high, path, what, unit=True, dtype=shown_dtype or dtype,
                        nonfinite=lambda: (nan, inf, first))


def _npz_shape(path: Path) -> DatasetShape:
    """The shape of the ``.npz`` data set at ``path`` from the headers of its image arrays, their
    pixels checked as loading checks them (read in pieces, not kept), and the labels (read: a
    byte or eight per image)."""
    with np.load(path, allow_pickle=False) as archive:
        shapes = {}
        for key in ("x_train", "y_train", "x_test", "y_test"):  # as loading does, in its order
            _check_npy_size(archive.zip, key, path)  # before numpy allocates an array
        labels = [_npz_array(archive, key, path) for key in ("y_train", "y_test")]
        for y, key in zip(labels, ("y_train", "y_test"), strict=True):
            _as_labels(y, path, key)  # first, as loading does
        for key in ("x_train", "x_test"):
            info = archive.zip.getinfo(_npy_member(archive.zip, key))
            with archive.zip.open(info) as member:
                header = _npy_header(member, info, path, key)
                if header is None:  # not an array: loading says what it is
                    raise ValueError(f"{key} is not a .npy array")
                shape, fortran, dtype = header
                if dtype.hasobject:  # not readable without pickle: loading says so
                    raise ValueError(f"{key} holds objects")
                _images_shape(shape, path, key)
                _scan_pixels(member.read, shape, fortran, dtype, path, key)
                shapes[key] = shape
    return _shape_of(path, shapes["x_train"], shapes["x_test"], labels, ("x_train", "x_test"),
                     ("y_train", "y_test"))


def _idx_images(path: Path, folder: Path, what: str) -> tuple[int, ...]:
    """The dimensions of the IDX image file at ``path``, its pixels checked as loading checks
    them (read in pieces, not kept). A damaged file (a bad header, truncated, trailing bytes, a
    broken gzip stream) raises the :class:`DataFileError` loading would (:func:`read_idx`)."""
    opened = _open_idx(path)  # outside the try, as before: not opening is no damaged file
    try:
        with opened as handle:
            head = handle.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES or not head[3]:
                raise ValueError("not an IDX file")
            raw = handle.read(4 * head[3])
            if len(raw) < 4 * head[3]:
                raise ValueError("truncated header")
            dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))
            _images_shape(dims, folder, what)
            dtype = IDX_DTYPES[head[2]]
            _scan_pixels(handle.read, dims, False, dtype, folder, what,
                         shown_dtype=dtype.newbyteorder("="))
            if handle.read(1):
                raise ValueError("trailing bytes")
    except DataFileError:
        raise
    except (ValueError, EOFError, OSError, zlib.error):
        read_idx(path)  # raises loading's own error for the damage
        raise
    return dims


def _idx_shape(folder: Path) -> DatasetShape:
    files = _idx_files(folder)
    train, test = (_idx_images(files[key], folder, IDX_NAMES[key])
                   for key in ("train_images", "test_images"))
    labels = [read_idx(files[key]) for key in ("train_labels", "test_labels")]
    return _shape_of(folder, train, test, labels,
                     (IDX_NAMES["train_images"], IDX_NAMES["test_images"]),
                     (IDX_NAMES["train_labels"], IDX_NAMES["test_labels"]))


def _shape_of(path, train: tuple[int, ...], test: tuple[int, ...], labels, names,
              label_names) -> DatasetShape:
    image_shape = _images_shape(train, path, names[0])
    test_shape = _images_shape(test, path, names[1])
    # The labels by loading's own rules, so that what loading would refuse (an empty split, a
    # stray label 2**32 - 1, a class the training split lacks) is said in its words here, not
    # found as a model of four billion classes that needs more memory than the machine has.
    labels = [_as_labels(y, path, what) for y, what in zip(labels, label_names, strict=True)]
    classes = _classes(path, *labels)
    for split, count, shape, split_labels in (("train", train[0], image_shape, labels[0]),
                                              ("test", test[0], test_shape, labels[1])):
        _check_sizes(path, split, (int(count), *shape), len(split_labels))
    _check_same_shape(path, image_shape, test_shape)
    return DatasetShape(image_shape, int(train[0]), int(test[0]), classes)


#: The shapes of the data sets registered by the user that :func:`dataset_shape` loaded, by
#: ``(name, data_dir, cache_dir)``; emptied whenever a data set is registered.
_LOADED_SHAPES: dict[tuple, DatasetShape] = {}


def dataset_shape(spec: str, data_dir=None, cache_dir=None) -> DatasetShape:
    """The image shape, sizes and classes of the data set ``spec`` names, read without loading
    its images where that can be done: the built-in sets' fixed shapes
    (:data:`REGISTERED_SHAPES`), the headers of a ``.npz`` file's image arrays or of an IDX
    folder's image files, and their labels. A data set registered by the user has no header:
    its loader is called once (with ``data_dir``, ``cache_dir`` and seed 0, as
    :func:`load_dataset` calls it) and the shape of what it returns is kept for the process, so
    that a sweep's checks see its images' size before any run trains (they checked every model
    at 28 pixels, and a model too deep for 13-pixel images stopped the sweep after the runs
    before it had trained). What loading would refuse raises what loading raises, in its words,
    so that a command refuses it before it claims its folder (a study left ``study.json``,
    which then refused the corrected command): a registered set's loader's error
    (:func:`load_dataset`: its own code's error as a :class:`ConfigError` naming it), a path
    with no data set behind it (the ``ConfigError`` naming it), and the :class:`DataFileError`
    of a file: images in a layout that cannot be told (:func:`_layout`), pixels of another
    dtype than integers or floats or of values loading refuses (read in pieces of
    :data:`SCAN_BYTES` and not kept: non-finite, integers beyond 0..255, floats beyond [0, 1]),
    labels loading refuses (:func:`_as_labels`, :func:`_classes`), splits of other sizes than
    their labels or of other image shapes, an IDX folder lacking a file or with a damaged one,
    and a file these headers cannot be read from (a damaged archive, a missing array): such a
    file is loaded, which refuses it or, where it reads it after all, gives its shape."""
    if spec in DATASETS:
        if spec in REGISTERED_SHAPES and is_built_in(spec):
            return REGISTERED_SHAPES[spec]
        return _loaded_shape(spec, data_dir, cache_dir)
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            return _idx_shape(path)
        if path.is_file() and (path.suffix.lower() == ".npz" or _is_zip(path)):
            return _npz_shape(path)
    except DataFileError:  # a ValueError, but loading's own message: said now
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, IndexError):
        pass  # not told from its headers: loaded below, which says what is wrong
    # A path with nothing behind it, a file that is no data set, data the headers cannot be read
    # from: loading refuses them now, in its words. These were None, "loading says why", and
    # loading said it only after a sweep had claimed its folder. Its warnings (arrays not
    # used) are said when the run loads it, once.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _shape_of_dataset(load_dataset(spec))


def _shape_of_dataset(dataset: ImageDataset) -> DatasetShape:
    """The :class:`DatasetShape` of a loaded data set."""
    return DatasetShape(tuple(int(n) for n in dataset.image_shape), len(dataset.train_images),
                        len(dataset.test_images), int(dataset.classes))


def _loaded_shape(spec: str, data_dir, cache_dir) -> DatasetShape:
    """:func:`dataset_shape` of a data set registered by the user: its loader's result's. Its
    loader's error is raised (:func:`load_dataset`'s: its own code's as a :class:`ConfigError`
    naming the set, the loader and its module), before any run: it was taken for an unknown
    shape, and the sweep claimed its folder (a study wrote ``study.json``, which then refused
    the corrected command) before loading the set for its first run said it."""
    key = (spec, None if data_dir is None else str(data_dir),
           None if cache_dir is None else str(cache_dir))
    if key not in _LOADED_SHAPES:
        dataset = load_dataset(spec, data_dir=data_dir, cache_dir=cache_dir, seed=0)
        _LOADED_SHAPES[key] = _shape_of_dataset(dataset)
    return _LOADED_SHAPES[key]


def _pixel_range(dataset: ImageDataset) -> tuple[float, float]:
    """The smallest and largest pixel of ``dataset``'s two splits."""
    ranges = [torch.aminmax(images) for images in (dataset.train_images, dataset.test_images)
              if images.numel()]
    if not ranges:
        return 0.0, 1.0
    return min(float(r.min) for r in ranges), max(float(r.max) for r in ranges)


def rotate_dataset(dataset: ImageDataset, seed: int = 0, batch_size: int = 8192,
                   rotation_centre: str = "frame") -> ImageDataset:
    """Every image rotated by an angle ~ U[0, 2 pi) (seeded; see module doc) about the frame's
    centre (``rotation_centre="frame"``) or its own centre of mass (``"mass"``:
    :func:`eqpdenet.geometry.rotate_about_mass`; the image's place in its frame then says nothing
    about the angle).

    The rotated pixels keep the set's range: they are clamped to ``[0, 1]`` widened to the
    set's own smallest and largest pixel (bilinear interpolation with zero fill leaves that range
    only by float rounding), so a set in ``[0, 1]`` stays in it and a registered set of, say,
    standardised pixels in ``[-1, 1]`` is not clipped."""
    seed = require_int(seed, "seed", minimum=0)
    require_int(batch_size, "batch_size", minimum=1)
    check_rotation_centre(rotation_centre)
    turn = rotate if rotation_centre == "frame" else rotate_about_mass
    generator = torch.Generator().manual_seed(seed)
    # Bilinear interpolation with zero fill stays within [min(0, low), max(0, high)] of the
    # pixels but for float rounding, which the clamp removes: to [0, 1] for a set within it (MNIST,
    # files: the same bits as ever), widened to the set's own range for one beyond it (a
    # registered set of standardised pixels in [-1, 1] is not clipped to [0, 1]).
    low, high = _pixel_range(dataset)
    low, high = min(0.0, low), max(1.0, high)
    out = {}
    for split in ("train", "test"):  # each from its own pool, angles drawn in this order
        images = getattr(dataset, f"{split}_images")
        angles = 2 * math.pi * torch.rand(len(images), generator=generator, dtype=torch.float64)
        rotated = torch.empty_like(images)
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                stop = min(start + batch_size, len(images))
                rotated[start:stop] = turn(images[start:stop], angles[start:stop]).clamp_(low, high)
        out[split] = rotated
    return ImageDataset(f"{dataset.name}-rotated", out["train"], dataset.train_labels, out["test"],
                        dataset.test_labels, dataset.classes,
                        info={**dataset.info, "rotated": {"seed": int(seed), "angles": "U[0, 2pi)",
                                                          "interpolation": "bilinear, zero fill",
                                                          "centre": rotation_centre}})


def _is_zip(path: Path) -> bool:
    """Whether ``path`` starts like a zip archive (what ``numpy.savez`` writes), whatever its
    name."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _plugin_hint(spec: str) -> str:
    """What an unknown data set's error adds where ``spec`` could name a registered set (a name
    that does not read as a path, :func:`check_dataset_name`): the module registering it may
    not be imported (on the command line, the plugins the checkpoint paths name the same way,
    ``app.plugins.PLUGIN_HINT``)."""
    try:
        check_dataset_name(spec)
    except ConfigError:  # a path: a file or folder that is not there
        return ""
    return ("; registered by a plugin? this process has not imported it: name the module that "
            "registers it in EQPDENET_PLUGINS (in Python, import it first)")


def load_dataset(spec: str, data_dir=None, cache_dir=None, seed: int = 0,
                 rotated: bool = False, rotation_centre: str = "frame") -> ImageDataset:
    """A data set by registered name or by path (``.npz`` file or IDX folder); see module doc.

    ``seed`` is passed to the loader (ROTMNIST's generation) and, with ``rotated``, seeds the
    rotation angles. An exception raised by the code of a loader of the user's (any but the
    built-in ones, :func:`is_built_in`) is one :class:`ConfigError` naming the data set, the
    loader and its module, with the original type and message
    (:func:`~eqpdenet.registry.call_own_code`; eqpdenet's own errors, such as the checks of the
    ``ImageDataset`` it returns, pass unchanged).
    """
    if spec in DATASETS:
        loader = DATASETS.get(spec)
        keywords = {"data_dir": data_dir, "cache_dir": cache_dir, "seed": seed}
        # the built-in loaders' errors are eqpdenet's own, in their words (tests assert them)
        dataset = (loader(**keywords) if loader in _BUILT_IN_LOADERS.values() else
                   call_own_code(loader, f"data set {spec!r}", "loader", **keywords))
        if not isinstance(dataset, ImageDataset):
            got = (f"a {type(dataset).__name__} of {len(dataset)} items"
                   if isinstance(dataset, tuple | list) else _shown(dataset))
            raise ConfigError(f"data set {spec!r}: its loader returned {got}, not an ImageDataset "
                              f"(name, train_images, train_labels, test_images, test_labels, "
                              f"classes)")
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            dataset = load_idx_folder(path)
        elif path.is_file() and (path.suffix.lower() == ".npz" or _is_zip(path)):
            dataset = load_npz(path)
        elif path.exists():
            raise ConfigError(f"data set {spec!r}: a file must be a NumPy .npz archive with "
                              f"x_train, y_train, x_test, y_test (or give a folder of IDX files)")
        else:
            where = (f" (a relative path is read from the current folder, {Path.cwd()})"
                     if not path.is_absolute() else "")
            raise ConfigError(f"unknown data set {spec!r}: not a registered name "
                              f"({', '.join(DATASETS.names())}) nor an existing .npz file or "
                              f"IDX folder{where}{_plugin_hint(spec)}")
    return rotate_dataset(dataset, seed, rotation_centre=rotation_centre) if rotated else dataset
