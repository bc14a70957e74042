"""User data of every way in checked alike: byte order, label range, non-finite pixels.

A ``.npz`` file of big-endian pixels or labels loads as its little-endian twin; a uint64 label
beyond int64 is refused with its own value, never wrapped to -1; the header check
(``dataset_shape``) refuses what loading refuses, in its words; and an :class:`ImageDataset` a
registered loader builds is checked as a file's content is.
"""

import gzip

import numpy as np
import pytest
import torch

from data_helpers import write_npz as write_data
from eqpdenet import DataFileError
from eqpdenet.data.datasets import DATASETS, ImageDataset, dataset_shape, load_dataset, register_dataset


def write_npz(path, train=12, test=6, size=8, classes=3, **overrides):
    return write_data(path, train=train, test=test, size=size, classes=classes, **overrides)


def idx_bytes(array: np.ndarray, code: int = 0x08, dtype=">u1") -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(folder, train_images: bytes | None = None, code=0x08, dtype=">u1", images=None):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 6, 6)) if images is None else images
    parts = {"train-images-idx3-ubyte": idx_bytes(images, code, dtype),
             "train-labels-idx1-ubyte": idx_bytes(np.arange(12) % 3),
             "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (6, 6, 6)), code, dtype),
             "t10k-labels-idx1-ubyte": idx_bytes(np.arange(6) % 3)}
    if train_images is not None:
        parts["train-images-idx3-ubyte"] = train_images
    for name, content in parts.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(content))
    return folder


@pytest.mark.parametrize("pixels", [">u2", ">i4", ">i8", ">f4", ">f8"])
@pytest.mark.parametrize("labels", [">i4", ">u8", "<i8"])
def test_big_endian_arrays_load_as_their_little_endian_twin(tmp_path, pixels, labels):
    arrays = write_npz(tmp_path / "le.npz")
    scale = 255.0 if pixels[1] == "f" else 1
    big = {key: (value / scale).astype(pixels) if key[0] == "x" else value.astype(labels)
           for key, value in arrays.items()}
    write_npz(tmp_path / "be.npz", **big)
    native, swapped = load_dataset(str(tmp_path / "le.npz")), load_dataset(str(tmp_path / "be.npz"))
    torch.testing.assert_close(swapped.train_images, native.train_images)
    torch.testing.assert_close(swapped.test_images, native.test_images)
    assert torch.equal(swapped.train_labels, native.train_labels)
    assert swapped.train_labels.dtype == torch.int64 and swapped.train_images.dtype == torch.float32
    assert dataset_shape(str(tmp_path / "be.npz")).classes == 3


@pytest.mark.parametrize("label", [2**64 - 1, 2**63])
def test_a_uint64_label_beyond_int64_is_refused_with_its_value_by_both_checks(tmp_path, label):
    labels = (np.arange(12) % 3).astype(np.uint64)
    labels[0] = label
    write_npz(tmp_path / "u64.npz", y_train=labels)
    message = rf"y_train: label {label} is out of range"
    with pytest.raises(DataFileError, match=message):
        load_dataset(str(tmp_path / "u64.npz"))
    with pytest.raises(DataFileError, match=message):
        dataset_shape(str(tmp_path / "u64.npz"))


def _nan_pixels():
    images = np.random.default_rng(2).random((12, 8, 8)).astype(np.float32)
    images[7, 3, 3] = np.nan
    images[9, 0, 0] = np.inf
    return images


@pytest.mark.parametrize(("overrides", "message"), [
    ({"x_train": _nan_pixels()},
     r"x_train: non-finite pixel values \(1 NaN, 1 infinite; the first in image 7\)"),
    ({"x_train": np.asfortranarray(_nan_pixels())},
     r"x_train: non-finite pixel values \(1 NaN, 1 infinite; the first in image 7\)"),
    ({"x_test": np.full((6, 8, 8), 300, np.uint16)}, r"x_test: integer pixels must be in 0..255"),
    ({"x_test": np.full((6, 8, 8), 1.5, np.float32)}, r"x_test: float pixels must be in \[0, 1\]"),
    ({"x_train": np.ones((12, 8, 8), bool)}, r"x_train: pixels of dtype bool are neither"),
    ({"y_train": np.zeros(12, np.int64), "y_test": np.zeros(6, np.int64)},
     r"every label is 0: a classifier needs at least two classes"),
    ({"y_train": np.arange(11) % 3}, r"12 train images but 11 labels"),
    ({"x_test": np.zeros((6, 9, 9), np.uint8)}, r"training images \(1, 8, 8\) and test images "
                                                r"\(1, 9, 9\) differ"),
])
def test_the_header_check_refuses_what_loading_refuses_in_its_words(tmp_path, overrides, message):
    write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataFileError, match=message) as loading:
        load_dataset(str(tmp_path / "bad.npz"))
    with pytest.raises(DataFileError) as header:
        dataset_shape(str(tmp_path / "bad.npz"))
    assert str(header.value) == str(loading.value)


def test_the_header_check_reads_pixels_in_pieces(tmp_path, monkeypatch):
    """A NaN in the last of several pieces is found, and its image named."""
    import eqpdenet.data.datasets as datasets

    monkeypatch.setattr(datasets, "SCAN_BYTES", 100)
    images = np.random.default_rng(3).random((12, 8, 8))
    images[11, 7, 7] = np.nan
    write_npz(tmp_path / "nan.npz", x_train=images)
    with pytest.raises(DataFileError, match=r"\(1 NaN, 0 infinite; the first in image 11\)"):
        dataset_shape(str(tmp_path / "nan.npz"))


def test_the_header_check_of_an_idx_folder_refuses_what_loading_refuses(tmp_path):
    floats = np.random.default_rng(4).random((12, 6, 6))
    floats[5, 1, 1] = np.nan
    nan = tmp_path / "nan"
    nan.mkdir()
    write_idx(nan, code=0x0D, dtype=">f4", images=floats)
    truncated = tmp_path / "cut"
    truncated.mkdir()
    write_idx(truncated, train_images=idx_bytes(np.zeros((12, 6, 6)))[:-5])
    for folder, message in ((nan, r"non-finite pixel values \(1 NaN, 0 infinite; the first in "
                                  r"image 5\)"), (truncated, r"truncated")):
        with pytest.raises(DataFileError, match=message) as loading:
            load_dataset(str(folder))
        with pytest.raises(DataFileError) as header:
            dataset_shape(str(folder))
        assert str(header.value) == str(loading.value)
    good = tmp_path / "good"
    good.mkdir()
    assert dataset_shape(str(write_idx(good))).image_shape == (1, 6, 6)


def _parts(n=30, classes=3):
    generator = torch.Generator().manual_seed(0)
    return {"train_images": torch.rand(n, 1, 8, 8, generator=generator),
            "train_labels": torch.arange(n) % classes,
            "test_images": torch.rand(9, 1, 8, 8, generator=generator),
            "test_labels": torch.arange(9) % classes}


@pytest.mark.parametrize(("split", "index"), [("train", 29), ("test", 4)])
def test_image_dataset_refuses_non_finite_pixels_naming_split_and_image(split, index):
    parts = _parts()
    parts[f"{split}_images"][index, 0, 3, 3] = float("nan")
    with pytest.raises(DataFileError, match=rf"^mine: {split}_images: non-finite pixel values "
                                            rf"\(1 NaN, 0 infinite; the first in image {index}\)"):
        ImageDataset("mine", **parts, classes=3)


def test_image_dataset_converts_labels_and_integer_pixels_as_a_file_loader_does():
    parts = _parts()
    pixels = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    data = ImageDataset("mine", pixels, parts["train_labels"].int(), parts["test_images"].double(),
                        parts["test_labels"].numpy().astype(">i2"), classes=3)
    assert data.train_labels.dtype == data.test_labels.dtype == torch.int64
    assert torch.equal(data.test_labels, parts["test_labels"])
    assert data.train_images.dtype == data.test_images.dtype == torch.float32
    torch.testing.assert_close(data.train_images, pixels.float() / 255)
    torch.testing.assert_close(data.test_images, parts["test_images"])
    from_numpy = ImageDataset("np", parts["train_images"].numpy().astype(">f4"),
                              parts["train_labels"].numpy(), parts["test_images"].numpy(),
                              parts["test_labels"].numpy(), classes=3)
    torch.testing.assert_close(from_numpy.train_images, parts["train_images"])


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.update(train_labels=p["train_labels"].float()),
     r"train_labels: labels must be a 1-D integer array, got torch.float32"),
    (lambda p: p.update(test_labels=p["test_labels"][:, None]),
     r"test_labels: labels must be a 1-D integer array, got torch.int64 \(9, 1\)"),
    (lambda p: p.update(test_labels=p["test_labels"] + 1), r"test labels must be 0 ... 2, got 1 ... 3"),
    (lambda p: p.update(train_labels=np.full(30, 2**64 - 1, np.uint64)),
     r"train_labels: label 18446744073709551615 is out of range"),
    (lambda p: p.update(train_images=torch.full((30, 1, 8, 8), 256, dtype=torch.int32)),
     r"train_images: integer pixels must be in 0..255, got 256..256"),
    (lambda p: p.update(train_images=p["train_images"] > 0.5),
     r"train_images: pixels of dtype torch.bool are neither integers nor floats"),
    (lambda p: p.update(train_images=p["train_images"][:, 0]), r"train images must be \(N, C, H, W\)"),
    (lambda p: p.update(test_images=[[0.0]]), r"test_images: expected a torch.Tensor or a numpy array"),
    (lambda p: p.update(test_labels=p["test_labels"][:5]), r"9 test images but 5 labels"),
])
def test_image_dataset_refuses_what_a_file_loader_refuses(change, message):
    parts = _parts()
    change(parts)
    with pytest.raises(DataFileError, match=message):
        ImageDataset("mine", **parts, classes=3)


@pytest.fixture
def registered():
    names = []

    def register(name, loader):
        names.append(name)
        return register_dataset(name, loader, replace=True)

    yield register
    for name in names:
        DATASETS._items.pop(name, None)


def test_a_registered_loader_with_a_nan_pixel_is_refused_at_loading(registered):
    def loader(data_dir=None, cache_dir=None, seed=0):
        parts = _parts()
        parts["train_images"][17, 0, 0, 0] = float("nan")
        return ImageDataset("nanset", **parts, classes=3)

    registered("round5-nanset", loader)
    with pytest.raises(DataFileError, match=r"train_images: non-finite pixel values .* image 17"):
        load_dataset("round5-nanset")
