"""Scenarios: parameters in range, applied as drawn, reproducible, and the registry."""

from __future__ import annotations

import math

import pytest
import torch

import eqpdenet.data.scenarios as sc
from data_helpers import mnist_or_skip
from eqpdenet.data.scenarios import (
    AffineDraw,
    apply_scenario,
    available_scenarios,
    register_scenario,
    scenario_defaults,
)
from eqpdenet.geometry import affine_warp, pixel_coordinates


def digits(n=1000) -> torch.Tensor:
    return torch.from_numpy(mnist_or_skip().test_images[:n]).float().div(255)[:, None]


def random_images(n=64, seed=0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def centre_of_mass(images):
    x, y = pixel_coordinates(28, 28, dtype=images.dtype)
    w = images[:, 0]
    mass = w.sum((1, 2))
    return torch.stack([(w * x).sum((1, 2)) / mass, (w * y).sum((1, 2)) / mass], -1), mass


def extents(images, threshold=0.1):
    """Width and height (pixels) of the bounding box of the pixels above ``threshold``."""
    x, y = pixel_coordinates(28, 28, dtype=images.dtype)
    ink = images[:, 0] > threshold
    big = torch.tensor(1e9, dtype=images.dtype)
    width = torch.where(ink, x, -big).amax((1, 2)) - torch.where(ink, x, big).amin((1, 2))
    height = torch.where(ink, y, -big).amax((1, 2)) - torch.where(ink, y, big).amin((1, 2))
    return width, height


# ------------------------------------------------------------------ registry


def test_builtins_registered_with_documented_defaults():
    assert {"test", "iso", "sca", "rot", "shift", "scale-up"} <= set(available_scenarios())
    assert scenario_defaults("iso") == {"max_shift": 2.0, "max_angle_degrees": 30.0}
    assert scenario_defaults("sca") == {"min_scale": 2.0 / 3.0, "max_scale": 1.0}


def test_unknown_names_and_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="unknown scenario 'isso'.*iso.*sca"):
        apply_scenario("isso", random_images(2), 0)
    with pytest.raises(ValueError, match="no parameter.*max_angle.*accepts"):
        apply_scenario("iso", random_images(2), 0, max_angle=10.0)
    with pytest.raises(ValueError, match="already registered"):
        register_scenario("iso", sc.iso_scenario)
    with pytest.raises(ValueError, match="low <= high"):
        apply_scenario("sca", random_images(2), 0, min_scale=1.0, max_scale=0.5)
    with pytest.raises(ValueError, match="positive"):
        apply_scenario("sca", random_images(2), 0, min_scale=0.0)


def test_user_scenario(monkeypatch):
    monkeypatch.setattr(sc.SCENARIOS, "_items", dict(sc.SCENARIOS._items))

    def flip_x(num, generator, probability=0.5):
        flip = torch.rand(num, generator=generator, dtype=torch.float64) < probability
        sign = torch.where(flip, -1.0, 1.0).to(torch.float64)
        matrix = torch.zeros(num, 2, 2, dtype=torch.float64)
        matrix[:, 0, 0], matrix[:, 1, 1] = sign, 1.0
        return AffineDraw(matrix, torch.zeros(num, 2, dtype=torch.float64), {"flipped": flip})

    register_scenario("flip", flip_x)
    assert "flip" in available_scenarios()
    images = random_images(16)
    out, params = apply_scenario("flip", images, 1, return_params=True, probability=1.0)
    assert params["flipped"].all()
    torch.testing.assert_close(out, images.flip(-1), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ determinism


@pytest.mark.parametrize("name", ["iso", "sca", "rot", "shift", "scale-up"])
def test_reproducible_per_seed_and_independent_of_batch_size(name):
    images = random_images(100)
    a = apply_scenario(name, images, seed=7)
    b = apply_scenario(name, images, seed=7, batch_size=13)
    c = apply_scenario(name, images, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == images.shape and a.dtype == images.dtype


def test_draws_are_independent_per_image_and_per_scenario():
    _, iso = apply_scenario("iso", random_images(4000), 0, return_params=True)
    _, shift = apply_scenario("shift", random_images(4000), 0, return_params=True)
    assert not torch.equal(iso["shift_x"], shift["shift_x"])  # seeded from (name, seed)
    stacked = torch.stack([iso["shift_x"], iso["shift_y"], iso["angle"]])
    corr = torch.corrcoef(stacked)
    assert (corr - torch.eye(3, dtype=corr.dtype)).abs().max() < 0.06
    assert len(torch.unique(iso["angle"])) == 4000


def test_identity_scenario_returns_a_copy():
    images = random_images(8)
    out = apply_scenario("test", images, 0)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()


# ------------------------------------------------------------------ ranges and geometry


def test_iso_parameters_in_range_and_spread():
    _, p = apply_scenario("iso", random_images(5000), 0, return_params=True)
    for key in ("shift_x", "shift_y"):
        assert p[key].min() >= -2 and p[key].max() <= 2
        assert p[key].std().item() == pytest.approx(4 / math.sqrt(12), rel=0.05)
    limit = math.radians(30)
    assert p["angle"].min() >= -limit and p["angle"].max() <= limit
    assert p["angle"].std().item() == pytest.approx(2 * limit / math.sqrt(12), rel=0.05)
    _, p = apply_scenario("iso", random_images(500), 0, return_params=True, max_shift=0.5,
                          max_angle_degrees=5.0)
    assert p["shift_x"].abs().max() <= 0.5 and p["angle"].abs().max() <= math.radians(5)


def test_sca_parameters_in_range():
    _, p = apply_scenario("sca", random_images(5000), 0, return_params=True)
    assert p["scale"].min() >= 2 / 3 and p["scale"].max() <= 1
    assert p["scale"].mean().item() == pytest.approx(5 / 6, abs=0.01)
    _, p = apply_scenario("scale-up", random_images(500), 0, return_params=True)
    assert p["scale"].min() >= 1 and p["scale"].max() <= 1.5
    _, p = apply_scenario("rot", random_images(500), 0, return_params=True)
    assert p["angle"].min() >= 0 and p["angle"].max() < 2 * math.pi


@pytest.mark.parametrize("name", ["iso", "sca", "rot", "shift"])
def test_output_is_the_drawn_warp(name):
    images = random_images(32)
    out, p = apply_scenario(name, images, 3, return_params=True)
    assert torch.equal(out, affine_warp(images, p["matrix"], p["translation"]))
    assert out.min() >= 0 and out.max() <= 1


def test_iso_moves_the_centre_of_mass_as_drawn():
    images = digits()
    before, mass_before = centre_of_mass(images)
    out, p = apply_scenario("iso", images, 0, return_params=True)
    after, mass_after = centre_of_mass(out)
    # the content moves by p -> R p + t (t_y up); where no ink fell off the border
    kept = (mass_after / mass_before - 1).abs() < 0.01
    assert kept.float().mean() > 0.95
    predicted = (p["matrix"].float() @ before[..., None])[..., 0] + p["translation"].float()
    assert (after - predicted).norm(dim=-1)[kept].max() < 0.3
    # the bound: |shift| <= 2 sqrt(2), plus the rotation of the off-centre centre of mass
    rotation_part = ((p["matrix"].float() @ before[..., None])[..., 0] - before).norm(dim=-1)
    moved = (after - before).norm(dim=-1)
    assert (moved - rotation_part)[kept].max() < 2 * math.sqrt(2) + 0.3


def test_sca_shrinks_the_digit_by_lambda():
    images = digits()
    out, p = apply_scenario("sca", images, 0, return_params=True)
    factor = p["scale"].float()
    width0, height0 = extents(images)
    width1, height1 = extents(out)
    for before, after in ((width0, width1), (height0, height1)):
        error = after - factor * before
        assert error.abs().max() < 2.0 and error.mean().abs() < 0.6  # bilinear blur: about a pixel
    # second moments scale exactly by lambda (up to interpolation)
    x, y = pixel_coordinates(28, 28)
    com0, _ = centre_of_mass(images)
    com1, _ = centre_of_mass(out)
    torch.testing.assert_close(com1, factor[:, None] * com0, atol=0.4, rtol=0)

    def gyration(im, com):
        w = im[:, 0]
        r2 = (x - com[:, 0, None, None]) ** 2 + (y - com[:, 1, None, None]) ** 2
        return ((r2 * w).sum((1, 2)) / w.sum((1, 2))).sqrt()

    ratio = gyration(out, com1) / gyration(images, com0)
    assert (ratio - factor).abs().max() < 0.03


def test_corner_variants_fix_the_top_left_pixel():
    """Rotating or scaling about the array origin leaves pixel (0, 0) where it is."""
    images = torch.zeros(6, 1, 28, 28, dtype=torch.float64)
    images[:, 0, 0, 0] = 1.0
    for name, params in (("iso-corner", {"max_shift": 0.0}), ("sca-corner", {})):
        out, draws = apply_scenario(name, images, seed=3, return_params=True, **params)
        assert out[:, 0, 0, 0].min() > 0.2, name  # bilinear spreading, but it stays at the corner
        centre = apply_scenario(name.split("-")[0], images, seed=3, **params)
        assert centre[:, 0, 0, 0].max() < 0.05  # about the centre, the corner pixel moves away
