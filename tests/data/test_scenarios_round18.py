"""Round 18: argument checks at the edges of the scenarios, the robustness curves and the warps.

* ``shift_curve`` / ``axis_shift_curve`` took a seed that is no integer (2.5, None, True) to
  ``manual_seed``: a raw ``RuntimeError``; now the ``ConfigError`` naming ``seed`` that
  ``apply_scenario`` gives.
* ``axis_shift`` cut a fractional shift to whole pixels (1.5 moved 1 pixel, -0.7 none) and NaN
  was a raw ``ValueError``; now a ``ConfigError`` naming ``shift``.
* ``apply_scenario``'s corner scenarios took an ``image_size`` other than the images' own and
  warped about a point that is not the top-left pixel (or wiped the image out); now refused.
* ``rotate``, ``translate``, ``AffineAugmentation`` and ``gaussian_blur`` failed on an empty
  batch with raw torch errors; now an empty result of the same shape and dtype.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqpdenet.analysis.robustness import axis_shift, axis_shift_curve, shift_curve
from eqpdenet.data.augment import AffineAugmentation, gaussian_blur
from eqpdenet.data.scenarios import apply_scenario
from eqpdenet.errors import ConfigError, InputError
from eqpdenet.geometry import affine_warp, rotate, rotate_about_mass, scale, translate


class Recorder(nn.Module):
    """A model that remembers every batch it is given (so a test sees that nothing ran)."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.linear = nn.Linear(16, 3)

    def forward(self, x):
        self.seen.append(x.shape[0])
        return self.linear(x.flatten(1))


def point(height=5, width=5, row=2, col=2, dtype=torch.float32):
    image = torch.zeros(1, 1, height, width, dtype=dtype)
    image[0, 0, row, col] = 1
    return image


# F1 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("curve", [shift_curve, axis_shift_curve])
@pytest.mark.parametrize("seed", [2.5, None, True, "3", 2**63])
def test_a_curves_seed_that_is_no_64_bit_integer_is_a_config_error_naming_it(curve, seed):
    model = Recorder()
    images, labels = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0)), \
        torch.zeros(4, dtype=torch.long)
    with pytest.raises(ConfigError) as caught:
        curve(model, images, labels, [1], seed=seed)
    expected = ("invalid config: seed: must be below 2**63, got 9223372036854775808"
                if seed == 2**63 else f"invalid config: seed: must be an integer, got {seed!r}")
    assert str(caught.value) == expected
    assert model.seen == []  # refused before any image was moved or measured


@pytest.mark.parametrize("curve", [shift_curve, axis_shift_curve])
def test_a_curves_integer_seed_draws_as_before(curve):
    """A NumPy integer is an integer too (``manual_seed`` refused it: a raw ``TypeError``), and
    draws what the Python integer draws."""
    import numpy as np

    torch.manual_seed(0)
    model = Recorder()
    images = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    reference = curve(model, images, labels, [1, 2], seed=5)
    assert curve(model, images, labels, [1, 2], seed=np.int64(5)) == reference


# F2 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift, message", [
    ((1.5, 0), "shift[0]: axis_shift takes whole pixels; got a shift of 1.5"),
    ((1.99, 0), "shift[0]: axis_shift takes whole pixels; got a shift of 1.99"),
    ((0, -0.7), "shift[1]: axis_shift takes whole pixels; got a shift of -0.7"),
    ((float("nan"), 0), "shift[0] must be a finite number, got nan"),
    ((0, float("-inf")), "shift[1] must be a finite number, got -inf"),
    ((1, "a"), "shift[1] must be a number, got 'a'"),
    ((1, 2, 3), "shift must be a pair of whole pixels (t_x, t_y), got (1, 2, 3)"),
    (3, "shift must be a pair of whole pixels (t_x, t_y), got 3"),
    ("12", "shift must be a pair of whole pixels (t_x, t_y), got '12'"),
    (torch.tensor([0.5, 1.0]), "shift[0]: axis_shift takes whole pixels; got a shift of 0.5"),
])
def test_axis_shift_refuses_a_shift_that_is_not_whole_pixels(shift, message):
    with pytest.raises(ConfigError) as caught:
        axis_shift(point(), shift)
    assert str(caught.value) == message


def test_axis_shift_of_whole_pixels_moves_exactly_as_before():
    """``2.0`` is two pixels, as ``2`` is; a tensor of whole numbers too; right and up."""
    image = point()
    for shift, where in [((1, 0), [[2, 3]]), ((2.0, 0), [[2, 4]]), ((0, 1.0), [[1, 2]]),
                         (torch.tensor([-1, -2]), [[4, 1]]), ((0, 0), [[2, 2]])]:
        moved = axis_shift(image, shift)
        assert (moved[0, 0] == 1).nonzero().tolist() == where, shift
        assert moved.sum() == 1 and moved.dtype == image.dtype
    assert axis_shift(image, (5.0, 0)).abs().max() == 0  # out of the frame: blank, as before


# F3 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["iso-corner", "sca-corner"])
@pytest.mark.parametrize("size, shown", [((20, 20), "tuple (20, 20)"), ((100, 3), "tuple (100, 3)"),
                                         ((28, 27), "tuple (28, 27)"), ((28,), "tuple (28,)"),
                                         (None, "NoneType None"), ("ab", "str 'ab'"),
                                         ((True, True), "tuple (True, True)")])
def test_a_corner_scenarios_image_size_other_than_the_images_is_refused(name, size, shown):
    images = point(28, 28, 0, 0)
    with pytest.raises(ConfigError) as caught:
        apply_scenario(name, images, 0, image_size=size)
    assert str(caught.value) == (f"scenario {name!r}: image_size must be the images' own (H, W) = "
                                 f"(28, 28), got {shown}; leave it out and apply_scenario passes "
                                 f"the images' own")


def test_the_image_size_is_checked_before_the_pixels_are_read():
    images = point(28, 28, 0, 0)
    images[0, 0, 5, 5] = float("nan")  # an InputError, had the values been read first
    with pytest.raises(ConfigError, match="image_size must be the images' own"):
        apply_scenario("sca-corner", images, 0, image_size=(20, 20))
    with pytest.raises(InputError):
        apply_scenario("sca-corner", images, 0, image_size=(28, 28))


@pytest.mark.parametrize("size", [(28, 28), [28, 28], torch.Size([28, 28]), (28.0, 28.0),
                                  torch.tensor([28, 28])])
def test_a_corner_scenario_given_the_images_own_size_is_unchanged(size):
    """The images' own size, however spelt, gives what leaving it out gives, bit for bit: a
    scaling about the top-left pixel leaves that pixel where it was, with its whole mass."""
    images = point(28, 28, 0, 0, dtype=torch.float64)
    out = apply_scenario("sca-corner", images, 0, min_scale=0.5, max_scale=0.5, image_size=size)
    assert torch.equal(out, apply_scenario("sca-corner", images, 0, min_scale=0.5, max_scale=0.5))
    # out(p) = in(2 p) about the corner: the corner pixel samples itself (to rounding), every
    # other pixel a blank pixel's centre
    assert float(out[0, 0, 0, 0]) == pytest.approx(1, abs=1e-9)
    assert float(out.sum()) == pytest.approx(1, abs=1e-9)


def test_a_non_square_image_size_is_height_then_width():
    images = point(20, 28, 0, 0, dtype=torch.float64)
    out = apply_scenario("sca-corner", images, 0, min_scale=0.5, max_scale=0.5, image_size=(20, 28))
    assert float(out[0, 0, 0, 0]) == pytest.approx(1, abs=1e-9)
    assert float(out.sum()) == pytest.approx(1, abs=1e-9)
    with pytest.raises(ConfigError, match=r"= \(20, 28\), got tuple \(28, 20\)"):
        apply_scenario("sca-corner", images, 0, image_size=(28, 20))


# F4 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("warp", [
    lambda e: rotate(e, 0.3),
    lambda e: rotate(e, torch.zeros(0)),
    lambda e: translate(e, torch.tensor([1.0, 0.0])),
    lambda e: scale(e, 0.5),
    lambda e: rotate_about_mass(e, 0.3),
    lambda e: affine_warp(e, torch.eye(2)),
    lambda e: AffineAugmentation(max_shift=2.0, max_angle_degrees=10.0)(e, torch.Generator()),
    lambda e: gaussian_blur(e, torch.zeros(0)),
], ids=["rotate", "rotate_per_image", "translate", "scale", "rotate_about_mass", "affine_warp",
        "augmentation", "gaussian_blur"])
def test_an_empty_batch_gives_an_empty_result_of_its_shape_and_dtype(warp, dtype):
    empty = torch.zeros(0, 2, 7, 5, dtype=dtype)
    out = warp(empty)
    assert out.shape == (0, 2, 7, 5) and out.dtype == dtype


def test_an_empty_batch_still_has_its_parameters_checked():
    empty = torch.zeros(0, 1, 6, 6)
    with pytest.raises(InputError, match="angle must be finite"):
        rotate(empty, float("nan"))
    with pytest.raises(InputError, match="factor must be non-zero"):
        scale(empty, 0.0)
    with pytest.raises(ConfigError, match="needs one standard deviation per image, shape \\(0,\\)"):
        gaussian_blur(empty, torch.ones(1))


def test_an_empty_batch_keeps_the_graph():
    empty = torch.zeros(0, 1, 6, 6, requires_grad=True)
    assert rotate(empty, 0.3).requires_grad and gaussian_blur(empty, torch.zeros(0)).requires_grad
