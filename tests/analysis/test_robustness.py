"""Resampling and whole-pixel shifts in analysis/robustness: against geometry's transforms."""

import math

import pytest
import torch

from eqpdenet.analysis.robustness import (
    AXIS_DIRECTIONS,
    axis_shift,
    axis_shift_curve,
    logit_change,
    rotation_curve,
    round_trip_change,
    scale_curve,
    shift_curve,
)
from eqpdenet.errors import ConfigError
from eqpdenet.geometry import rotate, translate
from helpers import Recorder


def test_round_trip_change_is_the_relative_change_of_the_twice_resampled_image():
    torch.manual_seed(0)
    images = torch.rand(6, 1, 12, 12, dtype=torch.float64)
    back = rotate(rotate(images, math.radians(37)), math.radians(-37))
    expected = float((back - images).norm() / images.norm())
    assert expected > 0.05  # bilinear resampling twice is far from the identity
    assert round_trip_change(Recorder().double(), images, 37) == pytest.approx(expected, rel=1e-12)
    assert round_trip_change(Recorder().double(), images, 90) == 0.0  # rot90: no resampling


def test_axis_shift_is_geometrys_translation_without_resampling():
    images = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    for shift in [(1, 0), (0, 1), (-3, 0), (0, -4), (2, -1)]:
        moved = axis_shift(images, shift)
        torch.testing.assert_close(moved, translate(images, torch.tensor(shift, dtype=torch.float64)),
                                   atol=1e-6, rtol=0)
        assert set(moved.unique().tolist()) <= set(images.unique().tolist()) | {0.0}  # exact
    # one pixel up: row 1 becomes row 0, the bottom row is filled with zeros
    torch.testing.assert_close(axis_shift(images, (0, 1))[..., :-1, :], images[..., 1:, :])
    assert axis_shift(images, (0, 1))[..., -1, :].abs().max() == 0


def test_axis_shift_curve_moves_each_image_along_one_seeded_axis_for_every_distance():
    torch.manual_seed(0)
    images = torch.rand(40, 1, 9, 9)
    model = Recorder()
    labels = model(images).argmax(1)
    model.seen.clear()
    curve = axis_shift_curve(model, images, labels, [0, 1, 3], seed=5)
    assert curve[0] == 100.0
    direction_of = []
    for s, seen in zip([1, 3], model.seen[1:], strict=True):
        found = []
        for i in range(len(images)):
            matches = [k for k, (dx, dy) in enumerate(AXIS_DIRECTIONS)
                       if torch.equal(seen[i], axis_shift(images[i:i + 1], (s * dx, s * dy))[0])]
            assert len(matches) == 1
            found.append(matches[0])
        direction_of.append(found)
    assert direction_of[0] == direction_of[1]  # the same direction at every distance
    assert len(set(direction_of[0])) == 4  # all four directions occur among 40 images
    assert axis_shift_curve(model, images, labels, [1], seed=5) != [100.0]  # position matters
    with pytest.raises(ValueError, match="whole pixels"):
        axis_shift_curve(model, images, labels, [0.5])


# --- bad values are refused, naming the argument, before any image is moved ---------------------

@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: rotation_curve(m, x, y, [0.0, float("nan")]),
     "angles[1] must be a finite number, got nan"),
    (lambda m, x, y: rotation_curve(m, x, y, [float("inf")]),
     "angles[0] must be a finite number, got inf"),
    (lambda m, x, y: scale_curve(m, x, y, [1.0, float("nan")]),
     "factors[1] must be a finite number, got nan"),
    (lambda m, x, y: scale_curve(m, x, y, [1.0, 0.0]), "factors[1] must be non-zero, got 0"),
    (lambda m, x, y: shift_curve(m, x, y, [0.5, float("-inf")]),
     "shifts[1] must be a finite number, got -inf"),
    (lambda m, x, y: shift_curve(m, x, y, [1.0, 28.0]),
     "shifts[1] = 28 pixels moves the whole 28x28 image out of its frame; use shifts below 28"),
    (lambda m, x, y: axis_shift_curve(m, x, y, [1, 40]),
     "shifts[1] = 40 pixels moves the whole 28x28 image out of its frame"),
    (lambda m, x, y: axis_shift_curve(m, x, y, [1, -28]), "shifts[1] = -28 pixels moves"),
    (lambda m, x, y: axis_shift_curve(m, x, y, [1, float("nan")]),
     "shifts[1] must be a finite number, got nan"),
    (lambda m, x, y: axis_shift_curve(m, x, y, [1, 0.5]),
     "shifts[1]: axis_shift_curve takes whole pixels; got a shift of 0.5"),
    (lambda m, x, y: logit_change(m, x, float("nan")), "degrees must be a finite number, got nan"),
    (lambda m, x, y: round_trip_change(m, x, float("inf")),
     "degrees must be a finite number, got inf"),
])
def test_bad_angles_factors_and_shifts_are_refused_before_any_work(call, message):
    images = torch.rand(3, 1, 28, 28)
    model = Recorder()
    with pytest.raises(ConfigError) as caught:
        call(model, images, torch.zeros(3, dtype=torch.long))
    assert str(caught.value) == message or str(caught.value).startswith(message), caught.value
    assert model.seen == []  # refused before the first (good) value was measured


def test_axis_shift_past_the_frame_is_a_blank_image():
    images = torch.rand(2, 1, 6, 8)
    for shift in [(8, 0), (-9, 0), (0, 6), (0, -40)]:
        moved = axis_shift(images, shift)
        assert moved.shape == images.shape and moved.abs().max() == 0
    assert torch.equal(axis_shift(images, (7, 0))[..., 7:], images[..., :1])


def test_rotations_of_non_square_images_keep_their_shape():
    """A quarter turn of a 20x28 image is resampled (rot90 would return it 28x20, transposed:
    its logits would be those of another image); a half turn is exact."""
    images = torch.rand(3, 1, 20, 28, dtype=torch.float64)
    model = Recorder().double()
    change = logit_change(model, images, 90)
    turned = model.seen[-1]
    assert turned.shape == images.shape
    torch.testing.assert_close(turned, rotate(images, math.pi / 2), atol=0, rtol=0)
    assert change == pytest.approx(float((turned - images).norm() / images.norm()), rel=1e-12)
    logit_change(model, images, 180)
    assert torch.equal(model.seen[-1], torch.flip(images, (-2, -1)))
    labels = model(images).argmax(1)
    assert rotation_curve(model, images, labels, [0, 90, 360]) == [100.0, pytest.approx(
        100.0 * float((model(rotate(images, math.pi / 2)).argmax(1) == labels).double().mean())),
        100.0]
