"""Resampling and whole-pixel shifts in analysis/robustness: against geometry's transforms."""

import math

import pytest
import torch
from torch import nn

from eqpdenet.analysis.robustness import (
    AXIS_DIRECTIONS,
    axis_shift,
    axis_shift_curve,
    round_trip_change,
)
from eqpdenet.geometry import rotate, translate


class Recorder(nn.Module):
    """Logits = the flattened image (so a logit change is the image's change); keeps inputs."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # robustness asks the model for its device
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return x.flatten(1) + self.anchor


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
