"""Training augmentation: draws in their ranges, applied exactly as drawn, reproducible; and the
training loop's promises (batch order unchanged, off by default, fingerprint kept)."""

from __future__ import annotations

import math

import pytest
import torch

from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.training import fingerprint, train_model
from eqpdenet.data.augment import AffineAugmentation
from eqpdenet.errors import ConfigError
from eqpdenet.geometry import affine_warp, pixel_coordinates
from helpers import BatchRecorder, framed_data


def blobs(n=16, size=28, width=2.0) -> torch.Tensor:
    """Gaussian blobs at the centre, in float64: their moments are known in closed form."""
    x, y = pixel_coordinates(size, size, dtype=torch.float64)
    return torch.exp(-(x**2 + y**2) / (2 * width**2)).expand(n, 1, size, size).clone()


def moments(images):
    x, y = pixel_coordinates(images.shape[-2], images.shape[-1], dtype=images.dtype)
    w = images[:, 0]
    mass = w.sum((1, 2))
    cx, cy = (w * x).sum((1, 2)) / mass, (w * y).sum((1, 2)) / mass
    spread = (w * ((x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2)).sum((1, 2)) / mass
    return torch.stack([cx, cy], -1), spread


def test_defaults_are_the_identity_and_consume_no_draw():
    augment = AffineAugmentation()
    images, generator = blobs(), torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert augment.is_identity and augment(images, generator) is images
    assert torch.equal(generator.get_state(), state)


def test_draws_lie_in_their_ranges_and_form_a_similarity():
    augment = AffineAugmentation(max_shift=2.0, max_angle_degrees=30.0, min_scale=0.5,
                                 max_scale=1.25)
    matrix, shift = augment.draw(4000, torch.Generator().manual_seed(0))
    assert matrix.dtype == shift.dtype == torch.float64
    assert float(shift.abs().max()) <= 2.0 and float(shift.abs().max()) > 1.9
    scale = torch.linalg.det(matrix).sqrt()
    assert 0.5 <= float(scale.min()) < 0.52 and 1.23 < float(scale.max()) <= 1.25
    rotation = matrix / scale[:, None, None]  # A = s R: what is left is a rotation
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(2, dtype=torch.float64)
                          .expand(4000, 2, 2), atol=1e-12)
    angle = torch.atan2(rotation[:, 1, 0], rotation[:, 0, 0]) * 180 / math.pi
    assert float(angle.abs().max()) <= 30.0 + 1e-9 and float(angle.abs().max()) > 29.0


def test_each_image_is_warped_by_its_own_draw():
    augment = AffineAugmentation(max_shift=3.0, max_angle_degrees=180.0, min_scale=0.7)
    images = blobs(8)
    out = augment(images, torch.Generator().manual_seed(7))
    matrix, shift = augment.draw(8, torch.Generator().manual_seed(7))
    assert torch.equal(out, affine_warp(images, matrix, shift))
    # A centred blob of standard deviation w = 2 moves its centre to t and its spread 2 w^2 to
    # 2 (s w)^2: the geometry of the draw, read off the pixels. Bilinear interpolation at a
    # fractional offset f adds f (1 - f) <= 1/4 per axis (in input pixels, so s^2 / 2 at most);
    # interpolation's error on the centre is about 0.01 px here (a wrong draw is off by pixels).
    centre, spread = moments(out)
    assert torch.allclose(centre, shift, atol=0.03)
    scale2 = torch.linalg.det(matrix)
    assert bool((spread >= 8.0 * scale2 - 0.03).all())
    assert bool((spread <= 8.5 * scale2 + 0.03).all())


def test_same_generator_state_same_batch():
    augment = AffineAugmentation(max_shift=2.0, max_angle_degrees=45.0, min_scale=0.8)
    images = torch.rand(5, 2, 20, 20, generator=torch.Generator().manual_seed(1))
    one = augment(images, torch.Generator().manual_seed(11))
    two = augment(images, torch.Generator().manual_seed(11))
    other = augment(images, torch.Generator().manual_seed(12))
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert one.shape == images.shape and one.dtype == images.dtype


@pytest.mark.parametrize("field, value, message", [
    ("max_shift", -1.0, "train.augment.max_shift: must be >= 0"),
    ("max_angle_degrees", 190.0, "train.augment.max_angle_degrees: must be <= 180"),
    ("min_scale", 0.0, "train.augment.min_scale: must be positive"),
    ("min_scale", 1.5, "train.augment.min_scale: must be <= train.augment.max_scale"),
    ("max_shift", float("nan"), "train.augment.max_shift: must be a finite number"),
])
def test_bad_ranges_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        AffineAugmentation(**{field: value})
    with pytest.raises(ConfigError, match="train.augment"):
        apply_overrides(ExperimentConfig(), [f"train.augment.{field}={value!r}"])


def test_config_default_keeps_fingerprints_and_the_option_changes_them():
    base = ExperimentConfig()
    assert base.train.augment.is_identity
    assert fingerprint(base) == fingerprint(apply_overrides(base, ["train.augment.max_shift=0"]))
    assert fingerprint(base) != fingerprint(apply_overrides(base, ["train.augment.max_shift=1"]))


def test_augmenting_keeps_the_batch_order_of_the_seed():
    """The warps come from their own stream: the same images arrive in the same order (a shift of
    at most 1.5 px, inside the empty frame, keeps each one's total intensity to rounding)."""
    config = apply_overrides(ExperimentConfig(), ["train.epochs=2", "train.batch_size=16"])
    augmented = apply_overrides(config, ["train.augment.max_shift=1.5"])
    seen = []
    for cfg in (config, augmented, augmented):
        torch.manual_seed(0)
        model = BatchRecorder()
        train_model(cfg, framed_data(), model=model, progress=False)
        seen.append(torch.cat([batch.sum((1, 2, 3)) for batch in model.seen]))
    assert torch.allclose(seen[1], seen[0], rtol=1e-5)
    assert torch.equal(seen[1], seen[2])  # and the warps are the seed's, too
