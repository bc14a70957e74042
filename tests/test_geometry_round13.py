"""Round 13: the group parameters of eqpdenet.geometry's warps are checked where they are passed.

A NaN or infinite angle, factor or shift gave an all-NaN image without an error; a zero factor
or a singular matrix a raw ``torch.linalg`` error; an angle or factor of the wrong length an
error about ``matrix``, which the caller never passed. Each is now one
:class:`~eqpdenet.errors.InputError` naming the argument; valid inputs warp as before. And
``scenario_defaults`` no longer lists the corner scenarios' ``image_size`` default, which
``apply_scenario`` never uses (it passes the images' own size).
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

import eqpdenet.data.scenarios as sc
from eqpdenet.data.scenarios import AffineDraw, apply_scenario, register_scenario, scenario_defaults
from eqpdenet.errors import ConfigError, InputError, InputTypeError, SingularMapError
from eqpdenet.geometry import (
    affine_warp,
    center_of_mass,
    pixel_coordinates,
    rotate,
    rotate_about_mass,
    rotation_matrix,
    scale,
    translate,
)

NAN, INF = float("nan"), float("inf")


def images(batch=2, size=8, dtype=torch.float32):
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)


REFUSED = [
    # the probe's cases: silent NaN images
    (lambda: rotate(images(), NAN), InputError, "angle must be finite, got nan"),
    (lambda: rotate(images(), INF), InputError, "angle must be finite, got inf"),
    (lambda: scale(images(), NAN), InputError, "factor must be finite, got nan"),
    (lambda: translate(images(), torch.tensor([NAN, 0.0])), InputError,
     "shift must be finite, got [nan, 0.0]"),
    # raw torch._C._LinAlgError
    (lambda: scale(images(), 0.0), SingularMapError,
     "factor must be non-zero (a scaling by 0 maps every point onto the centre and has no "
     "inverse), got 0"),
    (lambda: affine_warp(images(), torch.zeros(2, 2)), SingularMapError,
     "matrix must be invertible (the warp samples the input at A^-1 (p - t)), got "
     "[[0.0, 0.0], [0.0, 0.0]]"),
    # the argument the caller passed, not `matrix`
    (lambda: rotate(images(), torch.tensor([0.1, 0.2, 0.3])), InputError,
     "angle must have shape () or (2,), got (3,)"),
    (lambda: scale(images(), torch.tensor([1.0, 1.1, 1.2])), InputError,
     "factor must have shape () or (2,), got (3,)"),
    # a bare broadcasting RuntimeError
    (lambda: rotate_about_mass(images(), torch.tensor([0.1, 0.2, 0.3])), InputError,
     "angle must have shape () or (2,), got (3,)"),
    # siblings: per-image values name the image; the other public functions
    (lambda: rotate(images(), torch.tensor([0.1, NAN])), InputError,
     "angle must be finite, got nan for image 1 (1 of 2 images)"),
    (lambda: rotate_about_mass(images(), NAN), InputError, "angle must be finite, got nan"),
    (lambda: scale(images(), torch.tensor([1.0, 0.0])), SingularMapError,
     "factor must be non-zero (a scaling by 0 maps every point onto the centre and has no "
     "inverse), got 0 for image 1"),
    (lambda: translate(images(), torch.tensor([[0.0, 0.0], [INF, 1.0]])), InputError,
     "shift must be finite, got [inf, 1.0] for image 1 (1 of 2 images)"),
    (lambda: translate(images(), torch.zeros(3)), InputError,
     "shift must have shape (2,) or (2, 2), got (3,)"),
    (lambda: affine_warp(images(), torch.tensor([[NAN, 0.0], [0.0, 1.0]])), InputError,
     "matrix must be finite, got [[nan, 0.0], [0.0, 1.0]]"),
    (lambda: affine_warp(images(), torch.stack([torch.eye(2), torch.zeros(2, 2)])), SingularMapError,
     "matrix must be invertible (the warp samples the input at A^-1 (p - t)), got "
     "[[0.0, 0.0], [0.0, 0.0]] for image 1 (1 of 2 images)"),
    (lambda: affine_warp(images(), torch.eye(2), torch.tensor([NAN, 0.0])), InputError,
     "translation must be finite, got [nan, 0.0]"),
    (lambda: rotation_matrix(INF), InputError, "angle must be finite, got inf"),
    (lambda: rotation_matrix(torch.tensor([[0.0, NAN]])), InputError,
     "angle must be finite, got nan at index (0, 1) (1 of 2 values)"),
    # finite as passed, not in float32 (the working dtype of float32 images): said so
    (lambda: scale(images(), 1e39), InputError,
     "factor must be finite, got inf (in float32, the images' working dtype)"),
    (lambda: scale(images(), 1e-50), SingularMapError,
     "factor must be non-zero (a scaling by 0 maps every point onto the centre and has no "
     "inverse), got 0 (in float32, the images' working dtype)"),
    # non-zero in float32 but subnormal: its reciprocal overflows, and the message named
    # `matrix`, which the caller never passed
    (lambda: scale(images(), 1e-40), SingularMapError,
     "factor must have a finite reciprocal (the warp samples the input at p / factor), got "
     "9.99995e-41 (in float32, the images' working dtype)"),
    (lambda: scale(images(), torch.tensor([1.0, 1e-40])), SingularMapError,
     "factor must have a finite reciprocal (the warp samples the input at p / factor), got "
     "9.99995e-41 for image 1 (in float32, the images' working dtype)"),
    # not numbers
    (lambda: rotate(images(), "0.5"), InputTypeError,
     "angle must be a number or a tensor of numbers, got '0.5'"),
    (lambda: rotate(images(), None), InputTypeError,
     "angle must be a number or a tensor of numbers, got None"),
    (lambda: scale(images(), True), InputTypeError, "factor must hold real numbers, got dtype torch.bool"),
    # pixel_coordinates: a size of 4.5 gave 5 pixels, a NaN spacing NaN coordinates
    (lambda: pixel_coordinates(4.5, 3), InputError, "height must be an integer >= 0, got 4.5"),
    (lambda: pixel_coordinates(4, -1), InputError, "width must be an integer >= 0, got -1"),
    (lambda: pixel_coordinates(4, 4, NAN), InputError, "spacing must be a finite number > 0, got nan"),
    (lambda: pixel_coordinates(4, 4, 0.0), InputError, "spacing must be a finite number > 0, got 0.0"),
    # center_of_mass of a 3-D tensor summed the wrong axes
    (lambda: center_of_mass(torch.rand(1, 4, 4)), InputError,
     "images must be a (B, C, H, W) tensor, got (1, 4, 4)"),
]


@pytest.mark.parametrize("call, error, message", REFUSED, ids=[r[2][:48] for r in REFUSED])
def test_a_bad_group_parameter_is_one_error_naming_it(call, error, message):
    with pytest.raises(error) as caught:
        call()
    assert type(caught.value) is error and str(caught.value) == message


def test_a_singular_matrix_in_float32_only_says_so():
    tiny = torch.eye(2, dtype=torch.float64) * 1e-40   # invertible in float64, subnormal in float32
    with pytest.raises(InputError, match=re.escape("(in float32, the images' working dtype)")):
        affine_warp(images(), tiny)
    assert torch.isfinite(affine_warp(images(dtype=torch.float64), tiny)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_valid_parameters_warp_as_before(dtype):
    u = images(3, 9, dtype)
    atol = 1e-6 if dtype in (torch.float32, torch.float64) else 1e-2
    for out, truth in (
        (rotate(u, math.pi / 2), torch.rot90(u, 1, dims=(-2, -1))),
        (rotate(u, torch.tensor([math.pi / 2] * 3)), torch.rot90(u, 1, dims=(-2, -1))),
        (rotate(u, 2 * math.pi * 10**5 + math.pi), torch.rot90(u, 2, dims=(-2, -1))),
        (scale(u, 1.0), u),
        (scale(u, torch.ones(3)), u),
        (scale(u, -1.0), torch.rot90(u, 2, dims=(-2, -1))),   # -I is the half turn, allowed
        (translate(u, torch.zeros(2)), u),
        (translate(u, [[0.0, 0.0]] * 3), u),
        (affine_warp(u, torch.eye(2)), u),
        (rotate_about_mass(u, 0.0), u),
    ):
        assert out.dtype == dtype and out.shape == u.shape
        torch.testing.assert_close(out.double(), truth.double(), atol=atol, rtol=0)
    assert torch.equal(rotation_matrix(0.0), torch.eye(2))
    x, y = pixel_coordinates(3, 4, 0.5)
    assert x[0].tolist() == [-0.75, -0.25, 0.25, 0.75] and y[:, 0].tolist() == [0.5, 0.0, -0.5]


def test_values_that_cannot_be_read_are_not_checked():
    # inside vmap no value can be read on the host: the warp runs unchecked, as before
    u = images(1, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # affine_grid has no batching rule
        out = torch.func.vmap(lambda a: rotate(u, a))(torch.tensor([0.0, math.pi / 2]))
    torch.testing.assert_close(out[1], torch.rot90(u, 1, dims=(-2, -1)), atol=1e-6, rtol=0)


def test_corner_scenarios_report_only_the_defaults_they_use():
    assert scenario_defaults("iso-corner") == {"max_shift": 2.0, "max_angle_degrees": 30.0}
    assert scenario_defaults("sca-corner") == {"min_scale": 2.0 / 3.0, "max_scale": 1.0}
    # the images' size is what apply_scenario uses, not the signature's (28, 28)
    u = images(2, 12)
    for name in ("iso-corner", "sca-corner"):
        out = apply_scenario(name, u, 3)
        assert torch.equal(out, apply_scenario(name, u, 3, image_size=(12, 12)))
        with pytest.raises(ConfigError, match=r"image_size must be the images' own"):
            apply_scenario(name, u, 3, image_size=(28, 28))  # another size: refused (round 18)


def test_a_draw_that_overflows_float32_is_a_config_error_naming_the_scenario(monkeypatch):
    monkeypatch.setattr(sc.SCENARIOS, "_items", dict(sc.SCENARIOS._items))

    def huge(num, generator):  # finite and invertible in float64, where the draw is checked
        return AffineDraw(torch.eye(2, dtype=torch.float64).expand(num, 2, 2) * 1e39,
                          torch.zeros(num, 2, dtype=torch.float64))

    register_scenario("huge13", huge)
    with pytest.raises(ConfigError) as caught:
        apply_scenario("huge13", images(), 0)
    assert str(caught.value) == (
        "scenario 'huge13' (seed 0): its draw is not finite in torch.float32, the images' working "
        "dtype (matrix must be finite, got [[inf, 0.0], [0.0, inf]] for image 0 (2 of 2 images) "
        "(in float32, the images' working dtype))")
    assert torch.isfinite(apply_scenario("huge13", images(dtype=torch.float64), 0)).all()
