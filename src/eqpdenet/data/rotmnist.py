"""ROTMNIST: the official files of Larochelle et al. (2007), or a deterministic rebuild from MNIST.

ROTMNIST has 12,000 training digits (the official files: rows 0-9999 for training, 10000-11999
for validation) and 50,000 test digits, each rotated about its centre by an angle uniform in
``[0, 2 pi)``.

* :func:`read_amat` / :func:`write_amat`: the official text format (one digit per line: 784 pixel
  floats in [0, 1], row-major, then the label as a float; whitespace-separated).
* :func:`generate_rotmnist`: the rebuild used when the official files are absent (the default
  here). 62,000 distinct MNIST digits are drawn without replacement from the 70,000 (training set
  then test set, original order) with ``numpy.random.default_rng(seed)``; the first 12,000 drawn
  form the training set, the next 50,000 the test set. Each is rotated counterclockwise (as
  displayed) by ``angle ~ U[0, 2 pi)`` about the image centre ``(13.5, 13.5)`` (pixel units, row
  and column) with :func:`eqpdenet.geometry.rotate`: bilinear, zero fill, ``align_corners=False``,
  float32, values in [0, 1]. ``docs/data.md`` lists how it differs from the official files.
  With ``rotation_centre="mass"`` each digit turns about its own centre of mass instead
  (:func:`eqpdenet.geometry.rotate_about_mass`): MNIST centres its digits on the pixel (14, 14),
  half a pixel off the frame's centre in each axis, so about the frame's centre a turned digit's
  place in the frame says which way is up (``benchmarks/centroid_leak.py``); about its own centre
  of mass it does not.
* :func:`load_rotmnist`: official files if present in ``<data_dir>/rotmnist/`` (``source="auto"``),
  else the rebuild, cached as ``.npz`` in the cache directory with its generation parameters and a
  SHA-256 content hash; a stale (other parameters) or corrupt cache is detected and rebuilt.
  The cache is written to a temporary file beside it and renamed; the temporary file of a writer
  killed on the way (a worker of ``--jobs N`` stopped by Ctrl-C, a SIGKILL), up to 196 MB, is
  removed by the next load of that cache (:data:`PART_GRACE`, :data:`PART_AGE`). Two processes
  that generate the same cache at once each write their own temporary file and the later rename
  wins whole: the work is done twice, the cache is never mixed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checks import require, require_int
from ..errors import ConfigError, DataFileError, warn_at_caller
from ..files import link_target, remove_stale_beside, temporary_beside
from ..geometry import rotate, rotate_about_mass
from .mnist import (
    MNIST,
    MNIST_FILES,
    _refuse_mistyped_data_dir,
    check_cache_dir,
    data_dir_source,
    find_mnist_file,
    load_mnist,
    refuse_files_beside_their_folder,
    resolve_cache_dir,
    resolve_data_dir,
)

__all__ = [
    "RotMNIST",
    "OFFICIAL_TRAIN_FILE",
    "OFFICIAL_TEST_FILE",
    "OFFICIAL_ZIP",
    "read_amat",
    "write_amat",
    "generate_rotmnist",
    "load_rotmnist",
    "find_official_rotmnist",
    "load_official_rotmnist",
    "train_validation_split",
    "generation_params",
    "check_generation_args",
    "check_rotation_centre",
    "MNIST_POOL",
    "ROTATION_CENTRES",
    "content_hash",
    "cache_path",
    "save_cache",
    "load_cache",
]

OFFICIAL_ZIP = "mnist_rotation_new.zip"
OFFICIAL_TRAIN_FILE = "mnist_all_rotation_normalized_float_train_valid.amat"
OFFICIAL_TEST_FILE = "mnist_all_rotation_normalized_float_test.amat"
N_TRAIN, N_TEST, N_VALIDATION = 12000, 50000, 2000
#: The digits a generated set draws from: MNIST's 60,000 training and 10,000 test digits.
MNIST_POOL = 70_000
#: What a generated digit turns about: the frame's centre (the default, as the data were first
#: generated) or its own centre of mass.
ROTATION_CENTRES = ("frame", "mass")
IMAGE_SIZE = 28

#: Bump when the generation procedure changes: every older cache becomes stale.
GENERATOR_VERSION = 1

#: Seconds after its last write that a temporary file of the cache (or of :func:`write_amat`)
#: whose lock no writer holds is taken for a killed writer's and removed
#: (:func:`eqpdenet.files.remove_stale_beside`): a live writer holds the lock from an instant
#: after it creates the file to an instant before its rename. Were a live writer's file removed
#: all the same (a network file system whose locks are local to each machine), its rename would
#: fail and the cache would not be written, with a warning; the data loaded are not affected.
PART_GRACE = 10.0
#: The same where the lock cannot be tested (a file system without locks): no live write pauses
#: for an hour.
PART_AGE = 3600.0
_ARRAY_KEYS = ("train_images", "train_labels", "test_images", "test_labels",
               "train_indices", "test_indices", "train_angles", "test_angles")


@dataclass
class RotMNIST:
    """ROTMNIST as tensors.

    Attributes:
        train_images: ``(12000, 1, 28, 28) float32`` in [0, 1] (training + validation digits).
        train_labels: ``(12000,) int64`` in 0..9.
        test_images: ``(50000, 1, 28, 28) float32`` in [0, 1].
        test_labels: ``(50000,) int64``.
        source: ``"generated"`` or ``"official"``.
        params: how it was made (for ``"generated"``: seed, sizes, MNIST MD5s, interpolation ...).
        train_indices, test_indices: ``int64`` indices of the source digits in MNIST's 70,000
            (training set then test set), ``None`` for the official files.
        train_angles, test_angles: ``float64`` rotation angles in radians (counterclockwise),
            ``None`` for the official files.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str
    params: dict = field(default_factory=dict)
    train_indices: Tensor | None = None
    test_indices: Tensor | None = None
    train_angles: Tensor | None = None
    test_angles: Tensor | None = None

    def train_validation_split(self, validation: int = N_VALIDATION) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(train_images, train_labels, val_images, val_labels)``: see :func:`train_validation_split`."""
        return train_validation_split(self.train_images, self.train_labels, validation)


def train_validation_split(
    images: Tensor, labels: Tensor, validation: int = N_VALIDATION
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split the 12,000 training digits into training and validation sets, as the official files.

    The first ``len(images) - validation`` digits are for training, the last ``validation`` for
    validation (official: 10,000 / 2,000). Use the validation set for every hyperparameter choice
    and the test set only for the final numbers. The generated set is already in random order, so
    this split is a random split as well.
    """
    n = len(images)
    if len(labels) != n:
        raise ConfigError(f"{n} images but {len(labels)} labels")
    if not 0 < validation < n:
        raise ConfigError(f"validation must be in 1..{n - 1}, got {validation}")
    cut = n - validation
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


# --------------------------------------------------------------------------------------------
# The .amat text format


def _parse_amat_text(text: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [line for line in text.splitlines() if line.strip()]
    if not rows:
        raise DataFileError(name, "empty .amat file")
    width = IMAGE_SIZE * IMAGE_SIZE + 1
    try:
        values = np.array(" ".join(rows).split(), dtype=np.float64)
    except ValueError as exc:
        raise DataFileError(name, f"non-numeric value: {exc}") from None
    if values.size != len(rows) * width:
        bad = next((i for i, row in enumerate(rows) if len(row.split()) != width), None)
        found = len(rows[bad].split()) if bad is not None else "?"
        raise DataFileError(name, f"row {bad}: {found} values, expected {width} (784 pixels + label)")
    values = values.reshape(len(rows), width)
    pixels, labels = values[:, :-1], values[:, -1]
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise DataFileError(name, "pixel values outside [0, 1] or not finite")
    if not np.array_equal(labels, np.round(labels)) or labels.min() < 0 or labels.max() > 9:
        raise DataFileError(name, "labels must be integers 0..9")
    images = pixels.astype(np.float32).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    return images, labels.astype(np.int64)


def read_amat(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Read an ``.amat`` file of 28x28 digits.

    Each non-empty line holds 784 pixel values in [0, 1] (row-major: row 0 left to right, then
    row 1 ...) followed by the label (an integer written as a float).

    Returns:
        ``(images (N, 1, 28, 28) float32, labels (N,) int64)``.

    Raises:
        DataFileError: naming the file and the problem (wrong row width, values out of range ...).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")  # numbers in ASCII; the same in any locale
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(path, f"cannot read: {exc}") from None
    images, labels = _parse_amat_text(text, str(path))
    return torch.from_numpy(images), torch.from_numpy(labels)


def write_amat(path: str | os.PathLike, images: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> None:
    """Write digits in the ``.amat`` format (atomically: temporary file, then rename; the
    temporary files of earlier writers of ``path`` that were killed are removed first).

    Args:
        images: ``(N, 1, 28, 28)`` or ``(N, 28, 28)`` values in [0, 1]; written with 9 significant
            digits, so float32 values read back bit-identically.
        labels: ``(N,)`` integers 0..9, written as floats (``7.0``).
    """
    images = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    labels = np.asarray(labels)
    if images.shape[1] != IMAGE_SIZE * IMAGE_SIZE or labels.shape != (len(images),):
        raise ConfigError(f"expected (N, 784) pixels and (N,) labels, got {images.shape} and {labels.shape}")
    table = np.concatenate([images.astype(np.float64), labels.astype(np.float64)[:, None]], axis=1)
    path = link_target(path)  # a symbolic link is written through, never replaced
    remove_stale_beside(path, ".part", age=PART_AGE, grace=PART_GRACE)  # killed writers' files
    fd, tmp = temporary_beside(path, ".part")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            np.savetxt(out, table, fmt="%.9g", delimiter=" ")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def find_official_rotmnist(data_dir: str | os.PathLike | None = None) -> Path | None:
    """``<data_dir>/rotmnist/`` if it holds both official ``.amat`` files or the official zip."""
    folder = resolve_data_dir(data_dir) / "rotmnist"
    if (folder / OFFICIAL_TRAIN_FILE).is_file() and (folder / OFFICIAL_TEST_FILE).is_file():
        return folder
    if (folder / OFFICIAL_ZIP).is_file():
        return folder
    return None


def _refuse_rotmnist_folder_as_data_dir(data_dir: str | os.PathLike | None) -> None:
    """Refuse a data folder that holds the official ROTMNIST files itself while its
    ``rotmnist/`` holds neither form: it was pointed at the ``rotmnist/`` folder, and ROTMNIST
    would be generated (or MNIST downloaded into it) instead of the files it holds being read.
    Refused, not taken as meant, as MNIST's folder is
    (:func:`eqpdenet.data.mnist.load_mnist`)."""
    root = resolve_data_dir(data_dir)
    found = [name for name in (OFFICIAL_TRAIN_FILE, OFFICIAL_TEST_FILE, OFFICIAL_ZIP)
             if (root / name).is_file()]
    if found and find_official_rotmnist(data_dir) is None:
        refuse_files_beside_their_folder(data_dir, root, found, "rotmnist",
                                         "official ROTMNIST files", "them")


def load_official_rotmnist(data_dir: str | os.PathLike | None = None) -> RotMNIST:
    """Read the official files from ``<data_dir>/rotmnist/`` (extracted ``.amat`` files or the zip).

    Checks 12,000 training and 50,000 test rows. Parsing the 50,000-row text file takes a while;
    :func:`load_rotmnist` caches the result.
    """
    folder = find_official_rotmnist(data_dir)
    if folder is None:
        _refuse_rotmnist_folder_as_data_dir(data_dir)
        raise DataFileError(
            resolve_data_dir(data_dir) / "rotmnist",
            f"official ROTMNIST not found (need {OFFICIAL_TRAIN_FILE} and {OFFICIAL_TEST_FILE}, "
            f"or {OFFICIAL_ZIP})",
        )
    parts = {}
    if (folder / OFFICIAL_TRAIN_FILE).is_file() and (folder / OFFICIAL_TEST_FILE).is_file():
        for key, name in (("train", OFFICIAL_TRAIN_FILE), ("test", OFFICIAL_TEST_FILE)):
            parts[key] = read_amat(folder / name)
    else:
        archive = folder / OFFICIAL_ZIP
        try:
            with zipfile.ZipFile(archive) as zf:
                members = {Path(m).name: m for m in zf.namelist()}
                for key, name in (("train", OFFICIAL_TRAIN_FILE), ("test", OFFICIAL_TEST_FILE)):
                    if name not in members:
                        raise DataFileError(archive, f"no member {name}")
                    text = zf.read(members[name]).decode("ascii")
                    images, labels = _parse_amat_text(text, f"{archive}:{members[name]}")
                    parts[key] = torch.from_numpy(images), torch.from_numpy(labels)
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
            raise DataFileError(archive, f"cannot read the zip archive: {exc}") from None
    for key, expected in (("train", N_TRAIN), ("test", N_TEST)):
        if len(parts[key][0]) != expected:
            rows = len(parts[key][0])
            raise DataFileError(folder, f"official {key} file has {rows} rows, expected {expected}")
    return RotMNIST(
        train_images=parts["train"][0], train_labels=parts["train"][1],
        test_images=parts["test"][0], test_labels=parts["test"][1],
        source="official", params={"source": "official", "folder": str(folder)},
    )


# --------------------------------------------------------------------------------------------
# Generation


def check_rotation_centre(rotation_centre: str) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` unless ``rotation_centre`` is one of
    :data:`ROTATION_CENTRES`."""
    if rotation_centre not in ROTATION_CENTRES:
        raise ConfigError(f"invalid config: data.rotation_centre: must be "
                          f"{' or '.join(map(repr, ROTATION_CENTRES))}, got {rotation_centre!r}")


def check_generation_args(seed, n_train, n_test) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` naming the argument unless ``seed`` is an integer
    ``>= 0`` (what ``numpy.random.default_rng`` takes), ``n_train`` and ``n_test`` integers
    ``>= 0`` and ``n_train + n_test`` at most :data:`MNIST_POOL` (the digits there are to draw
    from); ``bool`` is not an integer here. Made before any data is read."""
    require_int(seed, "seed", minimum=0)
    require_int(n_train, "n_train", minimum=0)
    require_int(n_test, "n_test", minimum=0)
    total = n_train + n_test
    require(total <= MNIST_POOL, "n_train + n_test",
            f"must be at most {MNIST_POOL:,} (the MNIST digits to draw from), got {n_train:,} + "
            f"{n_test:,} = {total:,}")


def generation_params(seed: int, n_train: int = N_TRAIN, n_test: int = N_TEST,
                      rotation_centre: str = "frame") -> dict:
    """Everything that determines a generated ROTMNIST (stored in, and checked against, the
    cache). With the default ``rotation_centre`` it is the dictionary of the first generator, so
    that caches and recorded results stay valid. The arguments are checked first
    (:func:`check_generation_args`)."""
    check_generation_args(seed, n_train, n_test)
    check_rotation_centre(rotation_centre)
    params = {
        "source": "generated",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "pool": "MNIST train (0-59999) then test (60000-69999), original order",
        "sampling": "numpy.random.default_rng(seed): permutation(70000), then uniform(0, 2pi, n)",
        "mnist_md5": {spec.name: spec.md5 for spec in MNIST_FILES.values()},
        "angle_range_radians": [0.0, 2 * math.pi],
        "angle_direction": "counterclockwise as displayed",
        "centre_pixels": [(IMAGE_SIZE - 1) / 2, (IMAGE_SIZE - 1) / 2],
        "interpolation": "bilinear",
        "padding": "zeros",
        "align_corners": False,
        "dtype": "float32",
        "scale": "uint8 / 255",
    }
    if rotation_centre == "mass":
        params["centre_pixels"] = "each digit's centre of mass (eqpdenet.geometry.rotate_about_mass)"
        params["rotation_centre"] = "mass"
    return params


def generate_rotmnist(
    mnist: MNIST,
    seed: int = 0,
    *,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    batch_size: int = 8192,
    rotation_centre: str = "frame",
) -> RotMNIST:
    """Rebuild ROTMNIST from MNIST (see the module docstring for the exact protocol).

    Args:
        mnist: the 70,000 MNIST digits (:func:`eqpdenet.data.mnist.load_mnist`).
        seed: seeds ``numpy.random.default_rng``, which draws the digits and the angles.
        n_train, n_test: sizes (12,000 and 50,000 for ROTMNIST; smaller for quick tests); the two
            sets are disjoint, ``n_train + n_test <= 70000``.
        batch_size: images rotated per :func:`~eqpdenet.geometry.rotate` call (memory only; the
            result does not depend on it).
        rotation_centre: ``"frame"`` (the frame's centre) or ``"mass"`` (each digit's own centre
            of mass; the module doc).

    Returns:
        :class:`RotMNIST` with ``source="generated"``, the source indices and the angles.
    """
    params = generation_params(seed, n_train, n_test, rotation_centre)
    turn = rotate if rotation_centre == "frame" else rotate_about_mass
    pool_images, pool_labels = mnist.all_images(), mnist.all_labels()
    if n_train + n_test > len(pool_images):  # each >= 0: generation_params checked them
        raise ConfigError(f"invalid config: n_train + n_test: must be at most "
                          f"{len(pool_images):,} (the MNIST digits to draw from), got {n_train:,} + "
                          f"{n_test:,} = {n_train + n_test:,}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool_images))[: n_train + n_test]
    angles = rng.uniform(0.0, 2 * math.pi, size=n_train + n_test)
    rotated = torch.empty(len(order), 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            stop = min(start + batch_size, len(order))
            batch = torch.from_numpy(pool_images[order[start:stop]]).to(torch.float32).div_(255.0)
            out = turn(batch[:, None], torch.from_numpy(angles[start:stop]))
            rotated[start:stop] = out.clamp_(0.0, 1.0)
    labels = torch.from_numpy(pool_labels[order].astype(np.int64))
    indices = torch.from_numpy(order.astype(np.int64))
    angles_t = torch.from_numpy(angles)
    return RotMNIST(
        train_images=rotated[:n_train], train_labels=labels[:n_train],
        test_images=rotated[n_train:], test_labels=labels[n_train:],
        source="generated", params=params,
        train_indices=indices[:n_train], test_indices=indices[n_train:],
        train_angles=angles_t[:n_train], test_angles=angles_t[n_train:],
    )


# --------------------------------------------------------------------------------------------
# Cache


def content_hash(arrays: dict[str, np.ndarray], params: dict) -> str:
    """SHA-256 over the canonical JSON of ``params`` and each array's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps(params, sort_keys=True).encode())
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.data)
    return digest.hexdigest()


def cache_path(cache_dir: str | os.PathLike | None, params: dict) -> Path:
    """Where the cache for ``params`` lives: ``<cache_dir>/rotmnist/<name>.npz``."""
    folder = resolve_cache_dir(cache_dir) / "rotmnist"
    if params["source"] == "official":
        return folder / "rotmnist-official.npz"
    name = f"rotmnist-generated-v{params['generator_version']}-seed{params['seed']}"
    if (params["n_train"], params["n_test"]) != (N_TRAIN, N_TEST):
        name += f"-{params['n_train']}-{params['n_test']}"
    if params.get("rotation_centre", "frame") != "frame":
        name += f"-about-{params['rotation_centre']}"
    return folder / f"{name}.npz"


def save_cache(path: str | os.PathLike, data: RotMNIST) -> Path:
    """Write ``data`` to ``path`` as ``.npz`` (atomically), with its params and content hash;
    the temporary files of earlier writers of ``path`` that were killed are removed first. A
    symbolic link at ``path`` is written through (the file it leads to), never replaced."""
    path = link_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_beside(path, ".part", age=PART_AGE, grace=PART_GRACE)
    arrays = {key: getattr(data, key).numpy() for key in _ARRAY_KEYS if getattr(data, key) is not None}
    digest = content_hash(arrays, data.params)
    fd, tmp = temporary_beside(path, ".part")
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, params=np.array(json.dumps(data.params, sort_keys=True)),
                     content_hash=np.array(digest), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_cache(path: str | os.PathLike, expected_params: dict) -> RotMNIST:
    """Read a cache written by :func:`save_cache` and check it.

    Raises:
        DataFileError: unreadable or corrupt file, parameters other than ``expected_params``
        (stale), or a content hash that does not match the arrays.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise DataFileError(path, "no cache file") from None
    except Exception as exc:  # zipfile / pickle / value errors from a damaged file
        raise DataFileError(path, f"corrupt cache ({type(exc).__name__}: {exc})") from None
    try:
        params = json.loads(str(stored.pop("params")))
        digest = str(stored.pop("content_hash"))
    except (KeyError, ValueError) as exc:
        raise DataFileError(path, f"corrupt cache: no valid params / content_hash ({exc})") from None
    if params != expected_params:
        changed = sorted(k for k in set(params) | set(expected_params)
                         if params.get(k) != expected_params.get(k))
        raise DataFileError(path, f"stale cache: parameters differ in {changed}")
    if content_hash(stored, params) != digest:
        raise DataFileError(path, "corrupt cache: content hash mismatch")
    required = _ARRAY_KEYS[:4]
    if any(key not in stored for key in required):
        raise DataFileError(path, "corrupt cache: missing arrays")
    tensors = {key: torch.from_numpy(value) for key, value in stored.items() if key in _ARRAY_KEYS}
    return RotMNIST(source=params["source"], params=params, **tensors)


def load_rotmnist(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    source: str = "auto",
    *,
    download: bool = True,
    use_cache: bool = True,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    rotation_centre: str = "frame",
) -> RotMNIST:
    """ROTMNIST, official if available, else generated from MNIST; cached.

    Args:
        data_dir: the data directory (:func:`eqpdenet.data.mnist.resolve_data_dir`); official files are
            looked for in ``<data_dir>/rotmnist/``, MNIST in ``<data_dir>/mnist/``.
        cache_dir: writable cache directory (:func:`eqpdenet.data.mnist.resolve_cache_dir`:
            flag > ``EQPDENET_CACHE`` > ``~/.cache/eqpdenet``). One given by the argument or the
            variable must exist or be a new folder inside an existing one (else a
            :class:`DataFileError` naming where it came from, before any data is read:
            :func:`eqpdenet.data.mnist.check_cache_dir`); the per-user default is made with its
            parents.
        seed: generation seed (ignored for the official files).
        source: ``"auto"`` (official if present, else generated), ``"official"`` or ``"generated"``.
        download: passed to :func:`~eqpdenet.data.mnist.load_mnist` when MNIST is missing.
        use_cache: read and write the cache; a stale or corrupt cache is rebuilt (with a warning).
            Temporary files of the cache left by killed writers are removed (the module doc).
        n_train, n_test: sizes of a generated set (defaults: ROTMNIST's; smaller for quick tests).
        rotation_centre: of a generated set: ``"frame"`` or ``"mass"`` (the module doc); the
            official files are turned as they are, so ``"mass"`` with them is an error.
    """
    check_generation_args(seed, n_train, n_test)  # before any file is read, for every source
    check_rotation_centre(rotation_centre)
    if source not in ("auto", "official", "generated"):
        raise ConfigError(f"source must be 'auto', 'official' or 'generated', got {source!r}")
    if use_cache:  # a mistyped cache folder is said now, not after minutes of generation
        check_cache_dir(cache_dir)
    if data_dir_source(data_dir) is not None:
        # a mistyped data folder (its parent missing too, or a file) is refused as load_mnist
        # refuses it, also where the cache serves the generated set and no file of the folder
        # is read: it was taken unsaid, and "auto" then chose the generated set over the
        # official files the user meant
        _refuse_mistyped_data_dir(data_dir, resolve_data_dir(data_dir))
    if source != "generated" or any(find_mnist_file(resolve_data_dir(data_dir), key) is None
                                    for key in MNIST_FILES):
        # pointed at rotmnist/: its files would go unread, MNIST downloaded into it (a
        # generated set from MNIST that is there does not need the folder to be right)
        _refuse_rotmnist_folder_as_data_dir(data_dir)
    if source == "auto":
        source = "official" if find_official_rotmnist(data_dir) is not None else "generated"
    if source == "official" and rotation_centre != "frame":
        raise ConfigError("invalid config: data.rotation_centre: the official ROTMNIST files are "
                          "turned already; 'mass' applies to the generated set (data.source = "
                          "'generated')")
    if source == "official":
        folder = find_official_rotmnist(data_dir)
        if folder is None:
            return load_official_rotmnist(data_dir)  # raises the clear "not found" error
        params = {"source": "official", "folder": str(folder.resolve()), "files": _file_stamps(folder)}
    else:
        params = generation_params(seed, n_train, n_test, rotation_centre)
    path = cache_path(cache_dir, params) if use_cache else None
    if use_cache:
        # A killed writer's temporary file (up to 196 MB): once the cache exists, no later save
        # comes to remove it.
        remove_stale_beside(path, ".part", age=PART_AGE, grace=PART_GRACE)
    if path is not None and path.exists():
        try:
            return load_cache(path, params)
        except DataFileError as exc:
            warn_at_caller(f"rebuilding the ROTMNIST cache: {exc}", UserWarning)
    if source == "official":
        data = load_official_rotmnist(data_dir)
        data.params = params
    else:
        mnist = load_mnist(data_dir, download=download)
        data = generate_rotmnist(mnist, seed, n_train=n_train, n_test=n_test,
                                 rotation_centre=rotation_centre)
    if path is not None:
        try:
            save_cache(path, data)
        except OSError as exc:
            warn_at_caller(f"could not write the ROTMNIST cache {path}: {exc}", UserWarning)
    return data


def _file_stamps(folder: Path) -> dict:
    stamps = {}
    for name in (OFFICIAL_TRAIN_FILE, OFFICIAL_TEST_FILE, OFFICIAL_ZIP):
        if (folder / name).is_file():
            stat = (folder / name).stat()
            stamps[name] = [stat.st_size, stat.st_mtime_ns]
    return stamps
