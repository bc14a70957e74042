"""Angles whole turns apart are one rotation, and the figure's g shares the study's rule (round 17).

Before: ``_radians`` reduced by ``math.fmod``, which keeps the sign, so -330 degrees stayed -330
and rounded otherwise than 30 (``equivariance_error`` 0.0092000565 against 0.0092000454);
``quarter_turn_check`` said "no interpolation is involved" also of non-square images, whose
quarter turns are resampled."""

from __future__ import annotations

import math

import pytest
import torch

from eqpdenet.analysis.equivariance import (
    Similarity,
    Transform,
    _radians,
    filled_region,
    quarter_turn_check,
    similarity,
)
from eqpdenet.analysis.references import heat_pde
from eqpdenet.errors import ConfigError

IMAGES = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
HEAT = heat_pde(T=0.2, dt=0.1)


@pytest.mark.parametrize("turns", [1, 2, 5, 10**6])
def test_angles_whole_turns_apart_are_one_rotation_bit_for_bit(turns):
    angle = 37.0 + 360.0 * turns
    assert _radians(angle) == _radians(37.0)
    assert torch.equal(similarity(IMAGES, angle), similarity(IMAGES, 37.0))
    assert torch.equal(Transform.rotation(angle)(IMAGES), Transform.rotation(37.0)(IMAGES))
    assert torch.equal(Similarity(angle).affine()[0], Similarity(37.0).affine()[0])


@pytest.mark.parametrize("angle", [-323.0, -179.5, -30.0, 0.0, 30.0, 180.0, 225.0, 345.0])
def test_an_angle_within_a_turn_keeps_the_radians_it_always_had(angle):
    """The committed tables and benchmark curves (0 ... 345 degrees, and the inverses) stay
    reproducible: only whole turns are taken off."""
    assert _radians(angle) == math.radians(angle)


@pytest.mark.parametrize(("g", "transform"), [
    (Similarity(shift=(14.0, 0.0)), Transform.translation(14.0, 0.0)),
    (Similarity(shift=(13.0, 0.0)), Transform.translation(13.0, 0.0)),
    (Similarity(factor=0.6), Transform.scale(0.6)),
    (Similarity(angle=30.0), Transform.rotation(30.0)),
])
def test_a_similarity_has_the_filled_region_of_the_transform_it_is(g, transform):
    assert torch.equal(filled_region(g, 28), filled_region(transform, 28))


def test_a_similarity_is_the_map_of_similarity_and_is_named():
    g = Similarity(30.0, 2.0, (1.0, -2.5))
    assert torch.equal(g(IMAGES), similarity(IMAGES, 30.0, 2.0, (1.0, -2.5)))
    assert g.label == "g = rotation 30°, scale 2, shift (1, -2.5) px"
    assert Similarity(45.0).label == "g = rotation 45°"


def test_an_empty_region_is_refused_naming_the_similarity():
    from eqpdenet.analysis.equivariance import _require_points

    g = Similarity(0.0, 1.0, (30.0, 0.0))
    region = filled_region(g, 28)
    assert not bool(region.any())
    with pytest.raises(ConfigError) as caught:
        _require_points(region, g, (28, 28))
    assert str(caught.value).startswith(
        "g = rotation 0°, shift (30, 0) px: no point of the measured region of the 28x28 grid "
        "stays on real pixels both ways")


def test_quarter_turns_of_a_non_square_image_flag_only_images_blank_near_the_frame():
    """What the docstring now says: resampled, so an equivariant map is flagged on content at
    the frame (uniform noise) and passes on a blob blank there; square images are exact."""
    noise = torch.rand(1, 1, 20, 30, generator=torch.Generator().manual_seed(0))
    y, x = torch.meshgrid(torch.arange(20) - 9.5, torch.arange(30) - 14.5, indexing="ij")
    blob = torch.exp(-((x - 1.3) ** 2 + (2 * y + 0.7) ** 2) / 8)[None, None].float()
    heat = heat_pde(T=1.0, dt=0.1)
    assert quarter_turn_check(heat, noise)["equivariant"] is False
    assert quarter_turn_check(heat, blob)["equivariant"] is True
    assert quarter_turn_check(HEAT, IMAGES)["error"] < 1e-6
