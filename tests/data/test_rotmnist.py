"""ROTMNIST: generator, cache, official .amat files, validation split."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch

import eqpdenet.data.rotmnist as rm
from data_helpers import data_dir_or_skip, mnist_or_skip, rotmnist_or_skip
from eqpdenet.data.rotmnist import (
    generate_rotmnist,
    load_cache,
    load_rotmnist,
    read_amat,
    save_cache,
    train_validation_split,
    write_amat,
)
from eqpdenet.errors import DataFileError
from eqpdenet.geometry import rotate


def as_float(images_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_uint8).float().div(255)[:, None]


# ------------------------------------------------------------------ the full generated set


def test_generated_shapes_ranges_and_labels():
    mnist, data = mnist_or_skip(), rotmnist_or_skip()
    assert data.source == "generated" and data.params["seed"] == 0
    assert data.train_images.shape == (12000, 1, 28, 28) and data.train_images.dtype == torch.float32
    assert data.test_images.shape == (50000, 1, 28, 28) and data.test_images.dtype == torch.float32
    assert data.train_labels.shape == (12000,) and data.train_labels.dtype == torch.int64
    assert data.test_labels.shape == (50000,) and data.test_labels.dtype == torch.int64
    for images in (data.train_images, data.test_images):
        assert images.min() >= 0 and images.max() <= 1
    all_labels = mnist.all_labels()
    np.testing.assert_array_equal(data.train_labels.numpy(), all_labels[data.train_indices.numpy()])
    np.testing.assert_array_equal(data.test_labels.numpy(), all_labels[data.test_indices.numpy()])


def test_generated_splits_are_disjoint_and_cover_the_pool():
    data = rotmnist_or_skip()
    indices = torch.cat([data.train_indices, data.test_indices])
    assert len(torch.unique(indices)) == 62000
    assert indices.min() >= 0 and indices.max() < 70000
    assert (data.test_indices >= 60000).any() and (data.train_indices < 60000).any()  # both MNIST halves


def test_generated_class_balance_close_to_mnist():
    mnist, data = mnist_or_skip(), rotmnist_or_skip()
    reference = np.bincount(mnist.all_labels(), minlength=10) / 70000
    for labels, tolerance in ((data.train_labels, 0.015), (data.test_labels, 0.006)):
        freq = np.bincount(labels.numpy(), minlength=10) / len(labels)
        assert np.abs(freq - reference).max() < tolerance, (freq, reference)


def test_generated_angles_uniform_on_full_circle():
    data = rotmnist_or_skip()
    angles = torch.cat([data.train_angles, data.test_angles])
    assert angles.min() >= 0 and angles.max() < 2 * math.pi
    assert angles.mean().item() == pytest.approx(math.pi, abs=0.05)
    counts = torch.histc(angles, bins=8, min=0, max=2 * math.pi)
    assert counts.min() > 0.9 * 62000 / 8  # every octant populated evenly


def test_generated_images_are_rotations_of_their_source():
    mnist, data = mnist_or_skip(), rotmnist_or_skip()
    pool = mnist.all_images()
    pick = torch.arange(0, 12000, 97)
    source = as_float(pool[data.train_indices[pick].numpy()])
    # bit-identical to rotating the source digit by the recorded angle
    expected = rotate(source, data.train_angles[pick]).clamp(0, 1)
    assert torch.equal(data.train_images[pick], expected)
    # and the angle is counterclockwise: undoing it with rot90 steps + a small residual rotation
    # recovers the digit up to two bilinear passes
    back = rotate(data.train_images[pick], -data.train_angles[pick])
    error = (back - source).abs().mean(dim=(1, 2, 3))
    wrong_way = (rotate(data.train_images[pick], data.train_angles[pick]) - source).abs().mean(dim=(1, 2, 3))
    assert error.median() < 0.05 and error.median() < 0.3 * wrong_way.median()


def test_quarter_turn_of_digits_matches_rot90():
    digits = as_float(mnist_or_skip().test_images[:64])
    torch.testing.assert_close(rotate(digits, math.pi / 2), torch.rot90(digits, 1, dims=(-2, -1)),
                               atol=1e-5, rtol=0)
    # rotations compose: a quarter turn after any rotation is exact (rot90 does not interpolate)
    angle = torch.linspace(0, 2 * math.pi, 64)
    torch.testing.assert_close(torch.rot90(rotate(digits, angle), 1, dims=(-2, -1)),
                               rotate(digits, angle + math.pi / 2), atol=1e-4, rtol=0)


def test_generator_is_deterministic_and_seed_dependent():
    mnist, full = mnist_or_skip(), rotmnist_or_skip()
    small = generate_rotmnist(mnist, seed=0, n_train=300, n_test=200, batch_size=128)
    again = generate_rotmnist(mnist, seed=0, n_train=300, n_test=200)
    other = generate_rotmnist(mnist, seed=1, n_train=300, n_test=200)
    for key in ("train_images", "test_images", "train_labels", "train_indices", "train_angles"):
        assert torch.equal(getattr(small, key), getattr(again, key)), key
    assert not torch.equal(small.train_indices, other.train_indices)
    # the same stream: the first digits of the full set, independent of batch size
    assert torch.equal(small.train_images, full.train_images[:300])
    assert torch.equal(small.train_angles, full.train_angles[:300])


def test_train_validation_split_is_official_10000_2000():
    data = rotmnist_or_skip()
    train_x, train_y, val_x, val_y = data.train_validation_split()
    assert len(train_x) == 10000 and len(val_x) == 2000
    assert torch.equal(train_x, data.train_images[:10000]) and torch.equal(val_y, data.train_labels[10000:])
    assert len(np.unique(val_y.numpy())) == 10
    with pytest.raises(ValueError):
        train_validation_split(train_x, train_y, validation=0)


# ------------------------------------------------------------------ cache


def test_cache_round_trip_stale_and_corrupt(tmp_path, monkeypatch):
    data_dir = data_dir_or_skip()
    kwargs = dict(cache_dir=tmp_path, seed=3, source="generated", n_train=200, n_test=300)
    first = load_rotmnist(data_dir, **kwargs)
    files = list((tmp_path / "rotmnist").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    path = files[0]

    calls = []
    real_generate = rm.generate_rotmnist
    monkeypatch.setattr(rm, "generate_rotmnist", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    cached = load_rotmnist(data_dir, **kwargs)
    assert calls == [] and torch.equal(cached.test_images, first.test_images)
    assert cached.params == first.params and torch.equal(cached.train_angles, first.train_angles)

    # corrupt bytes in the middle of the file: detected, rebuilt, identical result
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_rotmnist(data_dir, **kwargs)
    assert calls == [1] and torch.equal(rebuilt.test_images, first.test_images)
    load_cache(path, first.params)  # the rebuilt cache is valid again

    # a well-formed file whose arrays were changed: the content hash catches it
    with np.load(path) as npz:
        stored = {key: npz[key] for key in npz.files}
    stored["test_images"][0, 0, 14, 14] += 0.5
    np.savez(path, **stored)
    with pytest.raises(DataFileError, match="content hash"):
        load_cache(path, first.params)

    # stale: other generation parameters
    stored["params"] = np.array(json.dumps({**first.params, "generator_version": 0}, sort_keys=True))
    np.savez(path, **stored)
    with pytest.raises(DataFileError, match="stale.*generator_version"):
        load_cache(path, first.params)
    with pytest.warns(UserWarning, match="stale"):
        load_rotmnist(data_dir, **kwargs)
    assert calls == [1, 1]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]


def test_save_cache_is_atomic(tmp_path, monkeypatch):
    data = generate_rotmnist(mnist_or_skip(), seed=0, n_train=20, n_test=20)
    path = tmp_path / "c.npz"

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(OSError, match="disk full"):
        save_cache(path, data)
    assert list(tmp_path.iterdir()) == []



def test_the_caches_write_through_a_symbolic_link_and_keep_it(tmp_path):
    """A cache reached through a link (a shared data folder linked into the user's) is written
    where the link leads, as every other writer of eqpdenet does; it used to replace the link."""
    data = generate_rotmnist(mnist_or_skip(), seed=0, n_train=20, n_test=20)
    shared = tmp_path / "shared"
    shared.mkdir()
    for name, write in [("c.npz", lambda p: save_cache(p, data)),
                        ("t.amat", lambda p: write_amat(p, data.test_images, data.test_labels))]:
        link = tmp_path / name
        link.symlink_to(shared / name)  # dangling: the file goes where it points
        write(link)
        assert link.is_symlink() and (shared / name).is_file()
        before = (shared / name).read_bytes()
        write(link)  # and a second write replaces the file, not the link
        assert link.is_symlink() and (shared / name).read_bytes() == before
        assert not [p for p in tmp_path.rglob("*.part")]
    assert load_cache(tmp_path / "c.npz", data.params).test_labels.tolist() == \
        data.test_labels.tolist()


# ------------------------------------------------------------------ official .amat files


def small_set(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=g)
    images[images < 0.5] = 0.0
    labels = torch.randint(0, 10, (n,), generator=g)
    return images, labels


def test_amat_round_trip(tmp_path):
    images, labels = small_set()
    path = tmp_path / "digits.amat"
    write_amat(path, images, labels)
    lines = path.read_text().splitlines()
    assert len(lines) == 30 and len(lines[0].split()) == 785
    assert float(lines[3].split()[-1]) == labels[3].item()
    # row-major: the 29th value of a row is pixel (row 1, column 0)
    assert float(lines[0].split()[28]) == pytest.approx(images[0, 0, 1, 0].item())
    back_images, back_labels = read_amat(path)
    assert torch.equal(back_images, images) and torch.equal(back_labels, labels)
    assert back_images.dtype == torch.float32 and back_labels.dtype == torch.int64


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda row: row[:-1], "values, expected 785"),
        (lambda row: row[:-1] + ["11"], "labels"),
        (lambda row: row[:-1] + ["2.5"], "labels"),
        (lambda row: ["1.5"] + row[1:], r"outside \[0, 1\]"),
        (lambda row: ["abc"] + row[1:], "non-numeric"),
    ],
)
def test_malformed_amat(tmp_path, edit, match):
    images, labels = small_set(5)
    path = tmp_path / "bad.amat"
    write_amat(path, images, labels)
    lines = path.read_text().splitlines()
    lines[2] = " ".join(edit(lines[2].split()))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFileError, match=match) as info:
        read_amat(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("packed", ["zip", "extracted"])
def test_official_files_are_preferred(tmp_path, monkeypatch, packed):
    monkeypatch.setattr(rm, "N_TRAIN", 12)
    monkeypatch.setattr(rm, "N_TEST", 8)
    folder = tmp_path / "data" / "rotmnist"
    folder.mkdir(parents=True)
    train, test = small_set(12, seed=1), small_set(8, seed=2)
    write_amat(folder / rm.OFFICIAL_TRAIN_FILE, *train)
    write_amat(folder / rm.OFFICIAL_TEST_FILE, *test)
    if packed == "zip":
        with zipfile.ZipFile(folder / rm.OFFICIAL_ZIP, "w") as zf:
            for name in (rm.OFFICIAL_TRAIN_FILE, rm.OFFICIAL_TEST_FILE):
                zf.write(folder / name, arcname=f"mnist_rotation_new/{name}")
                (folder / name).unlink()
    data = load_rotmnist(tmp_path / "data", cache_dir=tmp_path / "cache")  # source="auto"
    assert data.source == "official" and data.train_indices is None
    assert torch.equal(data.train_images, train[0]) and torch.equal(data.test_labels, test[1])
    again = load_rotmnist(tmp_path / "data", cache_dir=tmp_path / "cache", source="official")
    assert torch.equal(again.test_images, test[0])
    monkeypatch.setattr(rm, "N_TEST", 9)
    with pytest.raises(DataFileError, match="8 rows, expected 9"):
        rm.load_official_rotmnist(tmp_path / "data")


def test_official_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataFileError, match="official ROTMNIST not found"):
        load_rotmnist(tmp_path, cache_dir=tmp_path / "cache", source="official")
    with pytest.raises(ValueError, match="source must be"):
        load_rotmnist(tmp_path, source="rotated")


# ------------------------------------------------------------------ what a digit turns about


def _which_way_up(data, split: str) -> float:
    """Percentage of digits whose centre-of-mass offset from the frame's centre, read as MNIST's
    offset (half a pixel down and right) turned by some angle, gets the drawn angle's half-plane
    right (chance: 50)."""
    from eqpdenet.geometry import center_of_mass

    m = center_of_mass(getattr(data, f"{split}_images")).numpy() - 13.5
    estimate = np.arctan2(-m[:, 0], m[:, 1]) - math.atan2(-0.5, 0.5)
    error = np.angle(np.exp(1j * (estimate - getattr(data, f"{split}_angles").numpy())))
    return 100.0 * float((np.abs(error) < math.pi / 2).mean())


def test_mnist_centres_its_digits_on_pixel_14():
    from eqpdenet.geometry import center_of_mass

    m = center_of_mass(as_float(mnist_or_skip().train_images[:5000]))
    assert (m - 14.0).abs().max() <= 0.5 + 1e-3            # MNIST: whole pixels, on (14, 14)
    assert abs(float(m.mean()) - 14.0) < 0.02


def test_about_the_frame_the_place_tells_the_angle_about_the_mass_it_does_not():
    mnist = mnist_or_skip()
    frame = generate_rotmnist(mnist, seed=0, n_train=400, n_test=400)
    mass = generate_rotmnist(mnist, seed=0, n_train=400, n_test=400, rotation_centre="mass")
    assert torch.equal(frame.train_angles, mass.train_angles)   # the same digits and angles
    assert torch.equal(frame.train_labels, mass.train_labels)
    assert _which_way_up(frame, "train") > 99.0
    assert 35.0 < _which_way_up(mass, "train") < 65.0
    # each digit keeps its own centre of mass (up to the bilinear resampling)
    from eqpdenet.geometry import center_of_mass

    source = as_float(mnist.all_images()[mass.train_indices.numpy()])
    shift = (center_of_mass(mass.train_images) - center_of_mass(source)).abs()
    assert float(shift.median()) < 0.02 and float(shift.max()) < 0.35


def test_rotation_centre_default_keeps_the_first_generator_and_its_cache(tmp_path):
    assert "rotation_centre" not in rm.generation_params(0)
    assert rm.generation_params(0)["centre_pixels"] == [13.5, 13.5]
    frame_path = rm.cache_path(tmp_path, rm.generation_params(0))
    mass_path = rm.cache_path(tmp_path, rm.generation_params(0, rotation_centre="mass"))
    assert frame_path.name == f"rotmnist-generated-v{rm.GENERATOR_VERSION}-seed0.npz"
    assert mass_path != frame_path and "mass" in mass_path.name


def test_rotation_centre_bad_values_are_config_errors(tmp_path):
    from eqpdenet.app.config import DataConfig
    from eqpdenet.errors import ConfigError

    with pytest.raises(ConfigError, match="data.rotation_centre: must be 'frame' or 'mass'"):
        DataConfig(rotation_centre="centre")
    with pytest.raises(ConfigError, match="applies to rotated data"):
        DataConfig(dataset="mnist", rotation_centre="mass")
    DataConfig(dataset="mnist", rotated=True, rotation_centre="mass")     # allowed
    with pytest.raises(ConfigError, match="official ROTMNIST files are turned already"):
        load_rotmnist(tmp_path, cache_dir=tmp_path, source="official", rotation_centre="mass")
