"""Data sets by name or file: .npz and IDX folders, rotated versions, clear errors."""

import gzip

import numpy as np
import pytest
import torch

from data_helpers import write_npz
from eqpdenet import ConfigError, DataFileError
from eqpdenet.data.datasets import DATASETS, load_dataset, rotate_dataset


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_npz_round_trip_scales_to_unit_interval(tmp_path):
    arrays = write_npz(tmp_path / "set.npz")
    data = load_dataset(str(tmp_path / "set.npz"))
    assert data.train_images.shape == (60, 1, 12, 12) and data.classes == 3
    torch.testing.assert_close(data.test_images[:, 0],
                               torch.from_numpy(arrays["x_test"]).float() / 255.0)
    assert data.train_labels.dtype == torch.int64 and data.train_labels.tolist()[:4] == [0, 1, 2, 0]


def test_channels_last_colour_images(tmp_path):
    images = np.random.default_rng(1).random((10, 8, 8, 3)).astype(np.float32)
    write_npz(tmp_path / "rgb.npz", x_train=images, y_train=np.arange(10) % 2,
              x_test=images[:4], y_test=np.arange(4) % 2)
    data = load_dataset(str(tmp_path / "rgb.npz"))
    assert data.image_shape == (3, 8, 8)
    torch.testing.assert_close(data.train_images[3, 2], torch.from_numpy(images[3, :, :, 2]))


def test_idx_folder_with_mnist_names_but_other_content(tmp_path):
    """Fashion-MNIST's layout: MNIST's file names, other pixels; no MNIST checksum applies."""
    rng = np.random.default_rng(2)
    parts = {"train-images-idx3-ubyte": rng.integers(0, 256, (30, 6, 6)),
             "train-labels-idx1-ubyte": np.arange(30) % 5,
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 6, 6)),
             "t10k-labels-idx1-ubyte": np.arange(10) % 5}
    for name, array in parts.items():
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    data = load_dataset(str(tmp_path))
    assert data.classes == 5 and data.train_images.shape == (30, 1, 6, 6)
    assert torch.equal(data.test_labels, torch.from_numpy(parts["t10k-labels-idx1-ubyte"]))


def test_rotated_version_is_deterministic_and_keeps_the_pools_apart(tmp_path):
    write_npz(tmp_path / "set.npz", size=15)
    plain = load_dataset(str(tmp_path / "set.npz"))
    a = rotate_dataset(plain, seed=4)
    b = load_dataset(str(tmp_path / "set.npz"), seed=4, rotated=True)
    c = rotate_dataset(plain, seed=5)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_images, b.test_images)
    assert not torch.equal(a.train_images, c.train_images)
    assert torch.equal(a.train_labels, plain.train_labels)  # each image stays in its own split
    assert len(a.train_images) == 60 and len(a.test_images) == 20
    # the mass of each image is (nearly) kept by a rotation about its centre: no pool mixing
    inside = torch.zeros(15, 15)
    inside[4:11, 4:11] = 1  # a centred square stays inside the frame under any rotation
    square = plain.train_images * inside
    turned = rotate_dataset(type(plain)("sq", square, plain.train_labels, square[:20],
                                        plain.test_labels, 3), seed=0)
    torch.testing.assert_close(turned.train_images.sum((1, 2, 3)), square.sum((1, 2, 3)),
                               rtol=0.03, atol=0.5)


def test_rotated_about_the_mass_uses_the_same_angles(tmp_path):
    from eqpdenet.geometry import rotate, rotate_about_mass

    write_npz(tmp_path / "set.npz", size=15)
    plain = load_dataset(str(tmp_path / "set.npz"))
    frame = load_dataset(str(tmp_path / "set.npz"), seed=4, rotated=True)
    mass = load_dataset(str(tmp_path / "set.npz"), seed=4, rotated=True, rotation_centre="mass")
    assert mass.info["rotated"]["centre"] == "mass" and frame.info["rotated"]["centre"] == "frame"
    generator = torch.Generator().manual_seed(4)  # the angles rotate_dataset draws for training
    angles = 2 * torch.pi * torch.rand(len(plain.train_images), generator=generator,
                                       dtype=torch.float64)
    assert torch.equal(frame.train_images, rotate(plain.train_images, angles).clamp(0, 1))
    assert torch.equal(mass.train_images,
                       rotate_about_mass(plain.train_images, angles).clamp(0, 1))


def test_registered_names_and_bad_inputs(tmp_path):
    assert {"rotmnist", "mnist"} <= set(DATASETS.names())
    with pytest.raises(ConfigError, match=r"unknown data set 'nope'.*relative path is read from "
                                          r"the current folder"):
        load_dataset("nope")
    with pytest.raises(ConfigError, match=r"IDX folder$"):  # an absolute path: no such note
        load_dataset(str(tmp_path / "nope.npz"))
    (tmp_path / "x.txt").write_text("no")
    with pytest.raises(ConfigError, match=".npz"):
        load_dataset(str(tmp_path / "x.txt"))
    write_npz(tmp_path / "bad.npz", x_test=np.full((20, 12, 12), 1.5, np.float32))
    with pytest.raises(DataFileError, match=r"float pixels must be in \[0, 1\]"):
        load_dataset(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DataFileError, match="missing array"):
        load_dataset(str(tmp_path / "partial.npz"))
    write_npz(tmp_path / "gap.npz", y_train=np.arange(60) % 3 * 2)  # labels 0, 2, 4: 1, 3 absent
    with pytest.raises(DataFileError, match="lacks"):
        load_dataset(str(tmp_path / "gap.npz"))


def test_damaged_files_are_named_data_file_errors(tmp_path):
    """A truncated or corrupted archive, an empty file, a .npy renamed and a text file: one
    DataFileError each, naming the file and what it is (not a crash of the reader)."""
    write_npz(tmp_path / "ok.npz")
    raw = (tmp_path / "ok.npz").read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    np.save(tmp_path / "array.npy", np.zeros((4, 3, 3), np.uint8))
    cases = {"truncated.npz": (raw[: len(raw) // 2], "BadZipFile"),
             "flipped.npz": (bytes(flipped), "BadZipFile: Bad CRC-32"),
             "empty.npz": (b"", "EOFError"),
             "renamed.npz": ((tmp_path / "array.npy").read_bytes(), r"single NumPy array \(.npy\)"),
             "text.npz": (b"x_train = [1, 2]\n", "starts neither like a zip archive nor like")}
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataFileError, match=match) as info:
            load_dataset(str(tmp_path / name))
        assert name in str(info.value)
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DataFileError) as info:
        load_dataset(str(tmp_path / "partial.npz"))
    assert "readable" not in str(info.value)  # said once, not wrapped in "not a readable file"


def test_a_stray_huge_label_is_named_in_one_short_line(tmp_path):
    """One label 2**32 - 1 (an 'unlabelled' -1 stored unsigned) among 0, 1: the error names the
    largest label and the first missing ones, without listing (or building) four billion."""
    labels = (np.arange(60) % 2).astype(np.uint32)
    labels[5] = 2**32 - 1
    write_npz(tmp_path / "stray.npz", y_train=labels, y_test=np.arange(20) % 2)
    with pytest.raises(DataFileError, match=r"largest label is 4294967295.*lacks 2, 3, 4, 5, 6, "
                                            r"7, 8, 9, 10, 11, \.\.\. \(4294967293 in all\)") as info:
        load_dataset(str(tmp_path / "stray.npz"))
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("channels", [1, 2, 3, 5])
def test_square_images_channels_last_or_first_whatever_their_count(tmp_path, channels):
    rng = np.random.default_rng(channels)
    last = rng.random((10, 6, 6, channels)).astype(np.float32)
    for layout, images in (("last", last), ("first", np.moveaxis(last, -1, 1))):
        write_npz(tmp_path / f"{layout}.npz", x_train=images, y_train=np.arange(10) % 2,
                  x_test=images[:4], y_test=np.arange(4) % 2)
        data = load_dataset(str(tmp_path / f"{layout}.npz"))
        assert data.image_shape == (channels, 6, 6), layout
        torch.testing.assert_close(data.train_images[7, channels - 1],
                                   torch.from_numpy(last[7, :, :, channels - 1]))


def test_a_data_set_read_from_a_path_records_its_contents_fingerprint(tmp_path):
    """``info["fingerprint"]``: the shortened SHA-256 of the file's bytes (of the four IDX files'
    for a folder), so that results and checkpoints say which data they were made on and a file
    regenerated under the same name is noticed; registered sets are identified by name and seed
    and have none."""
    import hashlib

    from eqpdenet.data.datasets import data_fingerprint, dataset_fingerprint

    path = tmp_path / "set.npz"
    write_npz(path)
    first = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert load_dataset(str(path)).info == {"source": str(path), "fingerprint": first}
    assert data_fingerprint(path) == dataset_fingerprint(str(path)) == first
    assert load_dataset(str(path), rotated=True).info["fingerprint"] == first
    write_npz(path, classes=2)  # the same name, other labels
    assert dataset_fingerprint(str(path)) == load_dataset(str(path)).info["fingerprint"] != first

    rng = np.random.default_rng(3)
    parts = {"train-images-idx3-ubyte": rng.integers(0, 256, (30, 6, 6)),
             "train-labels-idx1-ubyte": np.arange(30) % 5,
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 6, 6)),
             "t10k-labels-idx1-ubyte": np.arange(10) % 5}
    folder = tmp_path / "idx"
    folder.mkdir()
    for name, array in parts.items():
        (folder / name).write_bytes(idx_bytes(array))
    digests = b"".join(hashlib.sha256((folder / name).read_bytes()).digest() for name in parts)
    idx = hashlib.sha256(digests).hexdigest()[:16]
    assert load_dataset(str(folder)).info["fingerprint"] == dataset_fingerprint(str(folder)) == idx
    labels = np.arange(10) % 5
    labels[0] = 1
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))  # one test label changed
    assert dataset_fingerprint(str(folder)) != idx

    assert dataset_fingerprint("mnist") is None and dataset_fingerprint("rotmnist") is None
    assert dataset_fingerprint(str(tmp_path / "missing.npz")) is None  # loading says what's wrong
    assert dataset_fingerprint(str(tmp_path / "empty-folder")) is None


def test_a_float_pixel_above_one_by_a_rounding_is_shown_with_its_digits(tmp_path):
    """float32 1.0000001 was shown as "got [0, 1]" (``:g``), which reads as no fault at all. The
    value is refused (a file divided by 255 stays within [0, 1]) and shown in its own precision."""
    images = np.zeros((20, 12, 12), np.float32)
    images[3, 4, 5] = np.nextafter(np.float32(1), np.float32(2))
    write_npz(tmp_path / "eps.npz", x_train=images, y_train=np.arange(20) % 3)
    with pytest.raises(DataFileError, match=r"x_train: float pixels must be in \[0, 1\] \(divide "
                                            r"0\.\.255 images by 255\), got \[0\.0, 1\.0000001\] "
                                            r"\(float32\)$"):
        load_dataset(str(tmp_path / "eps.npz"))


def test_an_array_of_no_accepted_layout_says_its_shape_and_the_layouts(tmp_path):
    """(N, 20, 24, 5): neither square images nor 1, 3 or 4 channels on either side; it was read
    as 20 channels of 24x5 images, and training said "the data set has 24x5"."""
    from eqpdenet.data.datasets import dataset_shape

    images = np.zeros((20, 20, 24, 5), np.uint8)
    write_npz(tmp_path / "ch5.npz", x_train=images, y_train=np.arange(20) % 3, x_test=images[:4],
              y_test=np.arange(4) % 3)
    message = (r"x_train: array of shape \(20, 20, 24, 5\): neither square images \(N, C, H, H\) "
               r"or \(N, H, H, C\) nor non-square images with 1, 3 or 4 channels first or last; "
               r"the layouts accepted are \(N, H, W\), \(N, H, W, C\), \(N, C, H, W\)$")
    with pytest.raises(DataFileError, match=message):
        load_dataset(str(tmp_path / "ch5.npz"))
    with pytest.raises(DataFileError, match=message):  # the preflight's reading says it too
        dataset_shape(str(tmp_path / "ch5.npz"))
    # non-square images with 3 channels, first or last, are still read
    rgb = np.zeros((20, 20, 24, 3), np.uint8)
    for name, x in (("last", rgb), ("first", np.moveaxis(rgb, -1, 1))):
        write_npz(tmp_path / f"{name}.npz", x_train=x, y_train=np.arange(20) % 3, x_test=x[:4],
                  y_test=np.arange(4) % 3)
        assert load_dataset(str(tmp_path / f"{name}.npz")).image_shape == (3, 20, 24)
        assert dataset_shape(str(tmp_path / f"{name}.npz")).image_shape == (3, 20, 24)


@pytest.mark.parametrize("layout", ["hw", "hwc", "chw", "idx", "idx-gz"])
def test_the_shape_read_from_the_headers_is_the_loaded_ones(tmp_path, layout):
    """dataset_shape (the preflight's) reads the image shape from the headers, the classes from
    the labels: what loading then finds."""
    from eqpdenet.data.datasets import DatasetShape, dataset_shape

    rng = np.random.default_rng(0)
    if layout.startswith("idx"):
        folder = tmp_path / "idx"
        folder.mkdir()
        suffix = ".gz" if layout == "idx-gz" else ""
        opener = gzip.open if suffix else open
        for name, array in (("train-images-idx3-ubyte", rng.integers(0, 256, (30, 9, 9))),
                            ("train-labels-idx1-ubyte", np.arange(30) % 4),
                            ("t10k-images-idx3-ubyte", rng.integers(0, 256, (7, 9, 9))),
                            ("t10k-labels-idx1-ubyte", np.arange(7) % 4)):
            with opener(folder / (name + suffix), "wb") as handle:
                handle.write(idx_bytes(array))
        spec, expected = str(folder), DatasetShape((1, 9, 9), 30, 7, 4)
    else:
        shape = {"hw": (9, 9), "hwc": (9, 9, 3), "chw": (3, 9, 9)}[layout]
        write_npz(tmp_path / "set.npz", x_train=rng.random((30, *shape)), y_train=np.arange(30) % 4,
                  x_test=rng.random((7, *shape)), y_test=np.arange(7) % 4)
        spec = str(tmp_path / "set.npz")
        expected = DatasetShape((1 if layout == "hw" else 3, 9, 9), 30, 7, 4)
    assert dataset_shape(spec) == expected
    data = load_dataset(spec)
    assert (data.image_shape, len(data.train_images), len(data.test_images), data.classes) == (
        expected.image_shape, expected.train, expected.test, expected.classes)
    assert dataset_shape("mnist") == DatasetShape((1, 28, 28), 60000, 10000, 10)
    # loading's refusal, now (round 18: None let a sweep claim its folder before loading said it)
    with pytest.raises(ConfigError, match=r"^unknown data set '.*nothing\.npz': not a registered"):
        dataset_shape(str(tmp_path / "nothing.npz"))
