"""Round 18 (probes a3 and a5): the deep invariant model refuses a blur low-pass wider than its
maps, as the lifted model does; the fused M2 kernel's fallback reason gives its tap limit with
its own radius; the lifted model's features and fields come back in the input's dtype, as every
other family's."""

from __future__ import annotations

import pytest
import torch

from eqpdenet.errors import ConfigError
from eqpdenet.kernels.m2_op import m2_kernel_reason
from eqpdenet.models import build_model
from eqpdenet.models.invariant_pde import InvariantPDEConfig, InvariantPDENet
from eqpdenet.models.lifted_pde import LiftedPDEConfig, LiftedPDENet

# ----------------------------------------------------------------------------- a3 F1


def _deep(boundary: str, sigma: float, **options) -> InvariantPDEConfig:
    return InvariantPDEConfig(channels=[2, 2, 2], blocks=[1, 1, 1], downsample="blur",
                              downsample_sigma=sigma, boundary=boundary, **options)


@pytest.mark.parametrize("boundary", ["reflect", "circular", "zeros", "replicate"])
def test_invariant_pde_refuses_a_lowpass_that_reaches_across_its_maps(boundary):
    """sigma 5 reaches 3 x 5 = 15 px either side of a 14x14 map (28 -> 14 -> 7): it was built,
    and padded the map by replicate whatever the boundary; now the same ConfigError as
    lifted_pde's, naming invariant_pde.downsample_sigma, with every boundary."""
    with pytest.raises(ConfigError) as caught:
        InvariantPDENet(_deep(boundary, 5.0), image_size=28)
    assert str(caught.value) == (
        "invalid config: invariant_pde.downsample_sigma: the low-pass of std 5 px reaches 15 px "
        "either side, as far as the 14x14 maps it would filter (stage sizes [28, 14, 7] for "
        "images of 28 px); use at most 4.33333 px, or larger images")


def test_the_two_families_refuse_the_same_lowpass_in_the_same_words():
    options = {"channels": [2, 2, 2], "blocks": [1, 1, 1], "downsample": "blur",
               "downsample_sigma": 5.0, "boundary": "reflect"}
    said = {}
    for kind in ("invariant_pde", "lifted_pde"):
        with pytest.raises(ConfigError) as caught:
            build_model(kind, image_size=28, **{kind: options})
        said[kind] = str(caught.value).replace(kind, "FAMILY")
    assert said["invariant_pde"] == said["lifted_pde"]


def test_the_largest_lowpass_the_message_suggests_builds():
    """(14 - 1) / 3 px: radius ceil(13) = 13 < 14 builds; a hair more reaches 14 px."""
    torch.manual_seed(0)
    model = InvariantPDENet(_deep("reflect", 13 / 3), image_size=28).eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"^invalid config: invariant_pde\.downsample_sigma: "
                                          r"the low-pass of std 4\.34 px reaches 14 px"):
        InvariantPDENet(_deep("reflect", 4.34), image_size=28)


def test_a_blur_of_one_pixel_maps_is_refused_without_suggesting_a_zero_sigma():
    """zeros/isotropic needs no pixel around a map, so 1x1 maps reached the low-pass (built
    before); no std fits them, and the message said "use at most 0 px"."""
    with pytest.raises(ConfigError) as caught:
        InvariantPDENet(_deep("zeros", 1 / 3), image_size=1)
    assert str(caught.value) == (
        "invalid config: invariant_pde.downsample_sigma: the low-pass of std 0.333333 px reaches "
        "1 px either side, as far as the 1x1 maps it would filter (stage sizes [1, 1, 1] for "
        "images of 1 px); no low-pass fits a 1x1 map (its radius is at least 1 px): use larger "
        "images")


def test_the_lowpass_rule_leaves_one_stage_and_other_downsamplings_alone():
    """No halving, nothing filtered: one stage, or 'pool'/'none', with a huge downsample_sigma
    (inert there) builds as before."""
    torch.manual_seed(0)
    one = InvariantPDENet(InvariantPDEConfig(channels=[2], blocks=[1], downsample="blur",
                                             downsample_sigma=100.0), image_size=8)
    assert one.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    for downsample in ("pool", "none"):
        InvariantPDENet(InvariantPDEConfig(channels=[2, 2], blocks=[1, 1], downsample=downsample,
                                           downsample_sigma=100.0), image_size=8)


# ----------------------------------------------------------------------------- a3 F2


def test_the_tap_limit_is_said_with_its_own_radius():
    """63 taps is radius 31; the message paired it with the stencils' radius 32."""
    assert m2_kernel_reason(4, "replicate", 31) is None
    assert m2_kernel_reason(4, "replicate", 32) == (
        "the fused M2 kernel supports stencils of at most 63 taps (radius 31); the widest "
        "stencil here has 65 (radius 32)")
    # sigma 8: radius 32, the lifted model's own rule (what decides its memory estimate)
    assert LiftedPDEConfig(orientations=4, channels=[1], blocks=[1], sigma=8.0) \
        .fused_kernel_reason(4).endswith("the widest stencil here has 65 (radius 32)")


# ----------------------------------------------------------------------------- a5 F4


@pytest.fixture(scope="module")
def lifted():
    torch.manual_seed(0)
    config = LiftedPDEConfig(orientations=4, channels=[2, 3], blocks=[1, 1], sigma=1.0,
                             scales=2, backend="reference")
    return LiftedPDENet(config, image_size=16).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lifted_features_and_fields_come_back_in_the_input_dtype(lifted, dtype):
    """They came back in float32 (the model's) while forward, and every other family's
    features, came back in the input's; the values are the float32 computation's, rounded."""
    torch.manual_seed(1)
    images = torch.rand(2, 1, 16, 16).to(dtype)
    wide = images.float()
    with torch.no_grad():
        for name, call in [("fields", lambda x: lifted.fields(x)),
                           ("projected_fields", lambda x: lifted.projected_fields(x)),
                           ("projected_fields(0)", lambda x: lifted.projected_fields(x, 0)),
                           ("features", lambda x: lifted.features(x)),
                           ("forward", lambda x: lifted(x))]:
            out, reference = call(images), call(wide)
            assert reference.dtype == torch.float32, name
            assert out.dtype == dtype, name
            assert torch.equal(out, reference.to(dtype)), name


def test_forward_still_classifies_the_float32_features_of_half_images(lifted):
    """features() now rounds to float16; forward must not classify the rounded ones."""
    torch.manual_seed(2)
    images = torch.rand(2, 1, 16, 16).half()
    with torch.no_grad():
        expected = lifted.classifier(lifted.features(images.float())).half()
        assert torch.equal(lifted(images), expected)
        rounded = lifted.classifier(lifted.features(images).float()).half()
    assert not torch.equal(rounded, expected)  # the test can tell the two apart


def test_a_float64_lifted_model_returns_float32_for_float32_images():
    torch.manual_seed(0)
    model = LiftedPDENet(LiftedPDEConfig(orientations=4, channels=[2], blocks=[1],
                                         backend="reference"), image_size=12).double().eval()
    images = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        assert model.features(images).dtype == torch.float32
        assert model.fields(images).dtype == torch.float32
        assert torch.equal(model.features(images), model.features(images.double()).float())
