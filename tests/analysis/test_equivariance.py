"""The equivariance measurement itself: zero for the identity, exact at 90° for se2, large for
non-equivariant maps, and the flag for a layer built from a non-invariant F."""

import math

import pytest
import torch

from eqpdenet.analysis.equivariance import (
    Transform,
    central_disk,
    equivariance_error,
    interpolation_floor,
    quarter_turn_check,
)
from eqpdenet.analysis.references import (
    heat_pde,
    non_invariant_set,
    random_conv,
    smooth_inputs,
    upsample,
)
from eqpdenet.geometry import rotate
from eqpdenet.pde import PDELayer, get_invariant_set


def digits_like(count: int = 4) -> torch.Tensor:
    """Sharp-edged, digit-like strokes (no MNIST needed)."""
    images = torch.zeros(count, 1, 28, 28)
    for n in range(count):
        images[n, 0, 6 + n:22, 12 + n:15 + n] = 1.0
        images[n, 0, 8:11, 8:20 - n] = 1.0
    return images


def se2_layer(**kwargs) -> PDELayer:
    layer = PDELayer.build(["se2", "se2"], T=0.5, dt=0.1, **kwargs)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pde in layer.pdes:
            pde.step.rhs.F.weight.copy_(0.05 * torch.randn(5, generator=generator))
            pde.step.rhs.F.weight[2] = 0.3  # diffusion: stable, smoothing
    return layer


@pytest.mark.parametrize("transform", [Transform.rotation(37), Transform.rotation(90),
                                       Transform.scale(0.8), Transform.translation(0.3, 0.0)])
def test_identity_map_has_zero_error(transform):
    assert equivariance_error(lambda u: u, smooth_inputs(3), transform) == 0.0


def test_quarter_turns_are_exact_rotations():
    images = smooth_inputs(2)
    assert torch.equal(Transform.rotation(90)(images), torch.rot90(images, 1, (-2, -1)))
    torch.testing.assert_close(Transform.rotation(90)(images), rotate(images, math.pi / 2),
                               atol=1e-5, rtol=0)
    assert interpolation_floor(images, Transform.rotation(180)) == 0.0
    assert interpolation_floor(images, Transform.rotation(45)) > 1e-3


def test_se2_layer_exact_at_90_and_random_conv_large_at_45():
    images = digits_like()
    layer = se2_layer()
    assert equivariance_error(layer, images, Transform.rotation(90)) < 1e-5
    conv_error = equivariance_error(random_conv(), images, Transform.rotation(45))
    assert conv_error > 0.2
    # at 45°, the PDE layer is far more equivariant than the random convolution
    assert equivariance_error(layer, images, Transform.rotation(45)) < 0.25 * conv_error


@pytest.mark.parametrize("stencil", ["central", "isotropic"])
def test_non_invariant_F_is_flagged(stencil):
    images = digits_like()
    bad = PDELayer.build([non_invariant_set()], T=0.5, dt=0.1, stencil=stencil)
    with torch.no_grad():
        bad.pdes[0].step.rhs.F.weight.fill_(1.0)  # du/dt = u_x: transport along x
    flagged = quarter_turn_check(bad, images)
    assert not flagged["equivariant"] and flagged["error"] > 0.05
    good = quarter_turn_check(se2_layer(stencil=stencil), images)
    assert good["equivariant"] and good["error"] < 1e-5
    assert not quarter_turn_check(random_conv(), images)["equivariant"]


def test_mask_is_a_central_disk_and_matters():
    mask = central_disk(28)
    assert mask.shape == (28, 28) and mask[14, 14] and not mask[0, 0]
    assert int(mask.sum()) == pytest.approx(math.pi * (0.35 * 28) ** 2, rel=0.05)
    # a map that writes only in the corners is invisible on the disk
    corners = ~central_disk(28, radius_fraction=0.45)
    corner_map = lambda u: u + 5.0 * corners.float() * u.mean()  # noqa: E731
    images = smooth_inputs(2)
    assert equivariance_error(corner_map, images, Transform.rotation(30)) < 1e-6
    whole = torch.ones(28, 28, dtype=torch.bool)
    assert equivariance_error(corner_map, images, Transform.rotation(30), whole) > 0.1


def test_error_falls_with_resolution():
    """The same heat equation on smooth inputs sampled 1x and 2x finer (h and dt scaled)."""
    errors = []
    for factor in (1, 2):
        images = smooth_inputs(2, 28 * factor)
        pde = heat_pde(T=0.5, dt=0.1 / factor**2, spacing=1.0 / factor)
        errors.append(equivariance_error(pde, images, Transform.rotation(45)))
    assert errors[1] < 0.4 * errors[0]
    assert upsample(smooth_inputs(1), 3).shape[-1] == 84


def test_invariant_orders_are_those_the_stencil_analysis_predicts():
    """central: every invariant's rotation error is O(h^2); isotropic: O(h^4) for |∇u|^2 and Δu,
    O(h^2) where u_xy enters; isotropic5: O(h^4) for all; scaling (not rotation invariant): no
    convergence at all. Errors against the exact invariants are O(h^2) for every stencil."""
    from eqpdenet.analysis.invariant_orders import invariant_orders

    rows = invariant_orders(["se2", "sim2", "scaling"], ["central", "isotropic", "isotropic5"],
                            spacings=(0.1, 0.05), points=8)
    order = {(r.invariant_set, r.invariant, r.stencil): r for r in rows}

    def rotation_order(name, invariant, stencil):
        return order[(name, invariant, stencil)].rotation_orders[-1]

    for invariant in ("grad_sq", "laplacian", "grad_hess_grad", "hess_sq"):
        assert rotation_order("se2", invariant, "central") == pytest.approx(2.0, abs=0.2)
        assert rotation_order("se2", invariant, "isotropic5") == pytest.approx(4.0, abs=0.3)
        assert order[("se2", invariant, "isotropic")].orders[-1] == pytest.approx(2.0, abs=0.2)
    for invariant in ("grad_sq", "laplacian"):
        assert rotation_order("se2", invariant, "isotropic") == pytest.approx(4.0, abs=0.3)
    for invariant in ("grad_hess_grad", "hess_sq"):
        assert rotation_order("se2", invariant, "isotropic") == pytest.approx(2.0, abs=0.2)
    for invariant in get_invariant_set("sim2").names[1:]:
        assert rotation_order("sim2", invariant, "isotropic") == pytest.approx(2.0, abs=0.2)
        assert rotation_order("sim2", invariant, "isotropic5") == pytest.approx(4.0, abs=0.3)
    scaling = [r for r in rows if r.invariant_set == "scaling"]
    assert all(r.rotation_error[-1] > 0.1 and not r.rotation_invariant for r in scaling)


# --- the fill of the resampling is never measured --------------------------------------------

def test_filled_region_leaves_out_the_points_a_transform_moves_past_the_frame():
    """Pixel centres of a 28-pixel frame run to ±13.5 px: a scaling by 0.67 reads g^-1 p = p / 0.67
    past them beyond 0.67 x 13.5 = 9.045 px, one by 1.5 reads g p past them beyond 9 px (the
    round trip); the 9.8-px disk reached both. Rotations keep the disk; a 1-px shift too."""
    from eqpdenet.analysis.equivariance import filled_region
    from eqpdenet.geometry import pixel_coordinates

    x, y = pixel_coordinates(28, 28, dtype=torch.float64)
    disk = central_disk(28)
    for factor, reach in ((0.67, 0.67 * 13.5), (1.5, 13.5 / 1.5), (1 / 1.5, 13.5 / 1.5)):
        region = filled_region(Transform.scale(factor), 28)
        assert torch.equal(region, (x.abs() <= reach + 1e-9) & (y.abs() <= reach + 1e-9))
        assert not torch.equal(disk & region, disk)  # the disk reached the fill
    for transform in (Transform.rotation(30), Transform.rotation(90), Transform.scale(0.8),
                      Transform.scale(1.25), Transform.translation(1.0, 0.0)):
        assert torch.equal(disk & filled_region(transform, 28), disk)
    assert bool(filled_region(Transform.rotation(90), 28).all())  # rot90: no fill at all
    shifted = filled_region(Transform.translation(2.0, 0.0), 28)
    assert int((~shifted).sum()) == 4 * 28  # two columns each side: g p and g^-1 p


def test_a_map_with_a_non_zero_background_is_not_charged_for_the_fill():
    """u -> u - 0.424 (the blank of a standardised input) commutes with every g on real pixels;
    on the zero fill of g . Phi(f) it does not. The old disk measured the fill at λ = 0.67."""
    background = lambda u: u - 0.424  # noqa: E731
    images = smooth_inputs(4)
    for transform in (Transform.scale(0.67), Transform.scale(1.5), Transform.rotation(30),
                      Transform.translation(0.5, 0.0)):
        assert equivariance_error(background, images, transform) < 1e-6, transform
    # a plain callable has no known geometry: measured on the whole disk, fill included
    moved = lambda u: Transform.scale(0.67)(u)  # noqa: E731
    assert equivariance_error(background, images, moved) > 0.05


def test_interpolation_floor_is_not_a_frame_artefact_at_large_scalings():
    """The round trip at λ = 1.5 costs what it costs at 1.4 (0.0163 against 0.0165 on these
    inputs); with the whole 9.8-px disk it read 0.055, zero fill past 9 px."""
    images = smooth_inputs(16)
    at_15 = interpolation_floor(images, Transform.scale(1.5))
    at_14 = interpolation_floor(images, Transform.scale(1.4))
    assert at_15 == pytest.approx(0.0163, abs=5e-4) and at_14 == pytest.approx(0.0165, abs=5e-4)


def test_a_map_with_a_margin_is_measured_on_the_same_pixels():
    """A map that returns a frame grown by a margin (a lifted model's ``margin``): measured on
    the same disk, about the same centre; zero-padding is equivariant there (to the float32
    rounding of the two grids' sample points)."""
    import torch.nn.functional as F

    images = smooth_inputs(3)
    padded = lambda u: F.pad(u, (4, 4, 4, 4))  # noqa: E731
    for transform in (Transform.rotation(30), Transform.rotation(90), Transform.scale(0.67),
                      Transform.translation(0.5, 0.0)):
        assert equivariance_error(padded, images, transform) < 1e-6
    heat = heat_pde(T=0.5, dt=0.1)
    on_margin = lambda u: heat(F.pad(u, (4, 4, 4, 4)))  # noqa: E731
    error = equivariance_error(on_margin, images, Transform.rotation(45))
    assert 0 < error < 0.02
    with pytest.raises(ValueError, match=r"mask has shape \(28, 28\), but the measured maps are "
                                         r"36x36"):
        equivariance_error(padded, images, Transform.rotation(30), central_disk(28))


# --- bad group elements, modes, non-square images ---------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: Transform.rotation(float("nan")), "rotation: degrees must be a finite number, got nan"),
    (lambda: Transform.rotation(float("inf")), "rotation: degrees must be a finite number, got inf"),
    (lambda: Transform.scale(0.0), "scale: factor must be non-zero, got 0"),
    (lambda: Transform.scale(float("nan")), "scale: factor must be a finite number, got nan"),
    (lambda: Transform.translation(float("inf"), 0.0), "translation: t_x must be a finite"),
    (lambda: Transform("rotation", float("nan")), "rotation: degrees must be a finite number"),
    (lambda: Transform("shear", 1.0), "unknown transform kind 'shear'"),
])
def test_bad_group_elements_are_refused_when_made(make, message):
    from eqpdenet.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        make()
    assert message in str(caught.value)


def test_model_invariance_restores_the_training_mode():
    from torch import nn

    from eqpdenet.analysis.equivariance import model_invariance

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Dropout(0.5))
    model.train()
    result = model_invariance(model, smooth_inputs(4), Transform.rotation(90))
    assert model.training  # as the caller left it
    assert 0 < result["logit_change"] and result["unchanged"] <= 1  # measured in eval mode
    again = model_invariance(model, smooth_inputs(4), Transform.rotation(90))
    assert again == result  # no dropout: deterministic
    model.eval()
    model_invariance(model, smooth_inputs(4), Transform.rotation(90))
    assert not model.training


def test_turns_of_non_square_images_keep_their_shape():
    images = torch.rand(2, 1, 20, 28)
    half = Transform.rotation(180)(images)
    assert torch.equal(half, torch.flip(images, (-2, -1)))  # exact on any frame
    torch.testing.assert_close(half, rotate(images, math.pi), atol=1e-5, rtol=0)
    quarter = Transform.rotation(90)(images)
    assert quarter.shape == images.shape
    torch.testing.assert_close(quarter, rotate(images, math.pi / 2), atol=0, rtol=0)


def test_model_invariance_of_huge_finite_logits_is_finite():
    """Logits of 1e30 (a model trained at a huge learning rate): their float32 norm overflowed,
    and the relative change was NaN."""
    from torch import nn

    from eqpdenet.analysis.equivariance import model_invariance

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        model[1].weight.copy_(1e30 * torch.linspace(-1, 1, 192).reshape(3, 64))
        model[1].bias.zero_()
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    result = model_invariance(model, images, Transform.rotation(90))
    logits, moved = (model(x).double() for x in (images, torch.rot90(images, 1, (-2, -1))))
    expected = float(torch.linalg.vector_norm(moved - logits) / torch.linalg.vector_norm(logits))
    assert math.isfinite(result["logit_change"])
    assert result["logit_change"] == pytest.approx(expected, rel=1e-5)
