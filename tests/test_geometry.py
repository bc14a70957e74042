"""Pin down the axis / angle conventions of eqpdenet.geometry (see its module docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from eqpdenet.geometry import affine_warp, pixel_coordinates, rotate, rotation_matrix, scale, translate


def blob(height=28, width=28, x0=0.0, y0=0.0, sx=2.0, sy=2.0, batch=1):
    """A smooth Gaussian centred at (x0, y0) in the (x right, y up) centred coordinates."""
    x, y = pixel_coordinates(height, width, dtype=torch.float64)
    image = torch.exp(-((x - x0) ** 2) / (2 * sx**2) - ((y - y0) ** 2) / (2 * sy**2))
    return image.expand(batch, 1, height, width).clone()


def centre_of_mass(images):
    x, y = pixel_coordinates(*images.shape[-2:], dtype=images.dtype)
    w = images[:, 0]
    mass = w.sum((1, 2))
    return torch.stack([(w * x).sum((1, 2)) / mass, (w * y).sum((1, 2)) / mass], -1)


def test_pixel_coordinates_centre_and_orientation():
    x, y = pixel_coordinates(4, 6)
    assert x[0, 0] == -2.5 and x[0, -1] == 2.5  # x grows to the right, centre (W - 1) / 2
    assert y[0, 0] == 1.5 and y[-1, 0] == -1.5  # y grows upwards (against the row index)
    assert torch.all(x[:, 1:] > x[:, :-1]) and torch.all(y[1:] < y[:-1])


@pytest.mark.parametrize("size", [5, 28])
def test_quarter_turn_is_rot90(size):
    images = torch.rand(3, 2, size, size, generator=torch.Generator().manual_seed(0))
    for k in range(1, 4):
        out = rotate(images, k * math.pi / 2)
        torch.testing.assert_close(out, torch.rot90(images, k, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_positive_angle_is_counterclockwise_as_displayed():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 4] = 1.0  # right of the centre: (x, y) = (2, 0)
    out = rotate(image, math.pi / 2)
    assert out[0, 0, 0, 2] == pytest.approx(1.0, abs=1e-5)  # now above the centre: (0, 2), row 0
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    com = centre_of_mass(rotate(blob(x0=6.0), math.radians(30)))
    torch.testing.assert_close(com[0], torch.tensor([6 * math.cos(math.pi / 6), 6 * math.sin(math.pi / 6)],
                                                    dtype=torch.float64), atol=0.02, rtol=0)


def test_translation_direction_is_right_and_up():
    images = torch.rand(2, 1, 8, 9, generator=torch.Generator().manual_seed(1))
    right = translate(images, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(right[..., 1:], images[..., :-1], atol=1e-5, rtol=0)
    assert right[..., 0].abs().max() == 0  # zero fill
    up = translate(images, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(up[..., :-1, :], images[..., 1:, :], atol=1e-5, rtol=0)
    assert up[..., -1, :].abs().max() == 0


@pytest.mark.parametrize("size", [5, 28])
def test_rotation_and_scaling_fix_the_centre(size):
    images = torch.zeros(1, 1, size, size)
    c = (size - 1) // 2
    if size % 2:
        images[0, 0, c, c] = 1.0  # the centre pixel
    else:
        images[0, 0, c : c + 2, c : c + 2] = 1.0  # the 2x2 block around the centre (13.5, 13.5)
    for angle in (0.3, math.pi / 2, 2.0, math.pi):
        com = centre_of_mass(rotate(images.double(), angle))
        torch.testing.assert_close(com, torch.zeros(1, 2, dtype=torch.float64), atol=1e-6, rtol=0)
    com = centre_of_mass(scale(blob(size, size).float(), 0.7))
    torch.testing.assert_close(com, torch.zeros(1, 2), atol=1e-5, rtol=0)


def test_scale_moves_points_away_from_the_centre():
    com = centre_of_mass(scale(blob(x0=3.0, y0=-2.0, sx=1.0, sy=1.0), 2.0))
    torch.testing.assert_close(com[0], torch.tensor([6.0, -4.0], dtype=torch.float64), atol=0.02, rtol=0)


def test_rotations_compose():
    images = blob(x0=4.0, y0=2.0, sx=3.0, sy=1.5, batch=1)
    a, b = 0.4, 1.1
    twice = rotate(rotate(images, a), b)
    once = rotate(images, a + b)
    assert (twice - once).abs().max() < 0.06  # two bilinear passes; a wrong composition gives ~1
    # rot90 is exact, so it composes with any rotation without extra interpolation error
    torch.testing.assert_close(torch.rot90(rotate(images, a), 1, dims=(-2, -1)),
                               rotate(images, a + math.pi / 2), atol=1e-5, rtol=0)


def test_affine_warp_composes_and_matches_per_image_matrices():
    images = blob(x0=2.0, y0=-3.0, sx=3.0, sy=2.5, batch=2)
    factors = torch.tensor([0.9, 1.1], dtype=torch.float64)[:, None, None]
    a = rotation_matrix(torch.tensor([0.3, -0.5]), dtype=torch.float64) * factors
    t1 = torch.tensor([[1.0, -0.5], [0.0, 2.0]], dtype=torch.float64)
    b = rotation_matrix(0.2, dtype=torch.float64)
    t2 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    twice = affine_warp(affine_warp(images, a, t1), b, t2)
    once = affine_warp(images, b @ a, (b @ t1[..., None])[..., 0] + t2)
    assert (twice - once).abs().max() < 0.06
    for i in range(2):
        single = affine_warp(images[i : i + 1], a[i], t1[i])
        torch.testing.assert_close(single, affine_warp(images, a, t1)[i : i + 1])


def test_rotate_about_mass_keeps_the_centre_of_mass():
    from eqpdenet.geometry import center_of_mass, rotate, rotate_about_mass

    images = torch.zeros(3, 1, 28, 28)
    images[0, :, 9:19, 9:19] = 1.0                      # centred: the same as about the frame
    images[1, :, 4:12, 15:25] = 1.0                     # off centre
    angles = torch.tensor([0.7, 0.7, 2.1], dtype=torch.float32)
    turned = rotate_about_mass(images, angles)
    torch.testing.assert_close(turned[0], rotate(images[:1], angles[:1])[0], atol=1e-5, rtol=0)
    assert (center_of_mass(turned[:2]) - center_of_mass(images[:2])).abs().max() < 0.01
    # about the frame's centre, the off-centre square's centre of mass moves by pixels
    assert (center_of_mass(rotate(images[1:2], angles[1:2])) - center_of_mass(images[1:2])
            ).abs().max() > 3
    assert torch.equal(turned[2], images[2])            # blank: nothing to turn, no NaN


def test_angles_beyond_a_turn_are_reduced_before_rounding():
    # 37° + 10⁵ turns was rounded to float32 as 6.3e5 rad, and its matrix was 0.013 off 37°'s;
    # an angle within a turn gives the same bits as before the reduction existed.
    base = math.radians(37)
    for turns in (1, -3, 10**5):
        far = rotation_matrix(base + 2 * math.pi * turns)
        assert (far - rotation_matrix(base)).abs().max() <= 1e-6
    for angle in (0.3, -2.5, 6.2):
        plain = torch.tensor(angle, dtype=torch.float32)
        expected = torch.stack([torch.stack([plain.cos(), -plain.sin()]),
                                torch.stack([plain.sin(), plain.cos()])])
        assert torch.equal(rotation_matrix(angle), expected)
