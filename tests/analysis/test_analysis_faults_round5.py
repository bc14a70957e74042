"""Faults of round 5 in eqpdenet.analysis: labels of the wrong shape scored, empty measurement
regions read as "perfectly equivariant", raw errors for empty inputs and parameter-free models,
one rule for relative changes, angles reduced before float32, bad arguments refused."""

import math

import pytest
import torch
from torch import nn

from eqpdenet.analysis.describe import describe_model, pde_formula, reduction_formula
from eqpdenet.analysis.equivariance import (
    Transform,
    equivariance_error,
    interpolation_floor,
    model_invariance,
)
from eqpdenet.analysis.invariant_orders import invariant_orders, orders_table
from eqpdenet.analysis.predictions import logits_by_image, predictions
from eqpdenet.analysis.references import heat_pde, random_conv, smooth_inputs, upsample
from eqpdenet.analysis.robustness import (
    accuracy_under,
    axis_shift_curve,
    logit_change,
    rotation_curve,
    round_trip_change,
    scale_curve,
    shift_curve,
)
from eqpdenet.errors import ConfigError, InputError, InputTypeError


class Oracle(nn.Module):
    """Right on every image: the class is the value of the image's first pixel."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long(), 3).float() + self.anchor


def _oracle_data():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    return labels.float()[:, None, None, None].expand(6, 1, 5, 5).clone(), labels


# --- 1. labels: one integer class per image ------------------------------------------------------

@pytest.mark.parametrize("bad, error, message", [
    (lambda y: y[:, None], InputError, "labels must have shape (6,), one class per image, got (6, 1)"),
    (lambda y: y[:1], InputError, "labels must have shape (6,), one class per image, got (1,)"),
    (lambda y: y[:3], InputError, "labels must have shape (6,), one class per image, got (3,)"),
    (lambda y: y.float(), InputTypeError, "labels must be integer classes, got torch.float32"),
    (lambda y: y.bool(), InputTypeError, "labels must be integer classes, got torch.bool"),
    (lambda y: y.tolist(), InputTypeError, "labels must be a tensor of shape (6,), got list"),
])
def test_labels_not_one_class_per_image_are_refused(bad, error, message):
    """Labels (N, 1) or (1,) broadcast against the predictions: a model right on every image
    scored 33.3 % instead of 100 %."""
    images, labels = _oracle_data()
    model = Oracle()
    assert accuracy_under(model, images, labels, lambda x: x) == 100.0
    calls = model.calls
    for call in (lambda y: accuracy_under(model, images, y, lambda x: x),
                 lambda y: rotation_curve(model, images, y, [0, 90]),
                 lambda y: scale_curve(model, images, y, [1.0]),
                 lambda y: shift_curve(model, images, y, [1.0]),
                 lambda y: axis_shift_curve(model, images, y, [1])):
        with pytest.raises(error) as caught:
            call(bad(labels))
        assert str(caught.value) == message
    assert model.calls == calls  # refused before the model saw an image


# --- 2. an empty measurement region, blank images ---------------------------------------------

@pytest.mark.parametrize("transform", [Transform.translation(27, 0), Transform.translation(40, 0),
                                       Transform.scale(100), Transform.scale(1e-3)])
def test_a_region_with_no_point_is_refused_naming_the_transform(transform):
    """Every point of the disk leaves the frame: the error was 0.0 ("perfectly equivariant")
    for a random convolution, the floor NaN."""
    images = smooth_inputs(2, 28)
    for call in (lambda: equivariance_error(random_conv(), images, transform),
                 lambda: interpolation_floor(images, transform)):
        with pytest.raises(ConfigError, match="nothing to measure") as caught:
            call()
        assert str(caught.value).startswith(f"{transform.label}: no point of the measured region "
                                            f"of the 28x28 grid")
    with pytest.raises(ConfigError, match="mask selects no point of the 28x28 grid"):
        equivariance_error(random_conv(), images, lambda x: x,
                           mask=torch.zeros(28, 28, dtype=torch.bool))
    # a transform that keeps some points is measured as before
    assert 0 < equivariance_error(random_conv(), images, Transform.translation(5, 0)) < math.inf


def test_blank_images_are_refused_not_scored():
    blank = torch.zeros(2, 1, 9, 9)
    with pytest.raises(InputError, match="the images are 0 at every measured point"):
        interpolation_floor(blank, Transform.rotation(30))  # was NaN
    with pytest.raises(InputError, match="the map's output is 0 at every measured point"):
        equivariance_error(random_conv(), blank, Transform.rotation(30))  # was 0.0
    with pytest.raises(InputError, match="the map's output is 0"):
        equivariance_error(lambda u: 0 * u, smooth_inputs(2, 9), Transform.rotation(30))


@pytest.mark.parametrize("call", [
    lambda x: equivariance_error(random_conv(), x, Transform.rotation(30)),
    lambda x: interpolation_floor(x, Transform.rotation(30)),
    lambda x: model_invariance(nn.Flatten(), x, Transform.rotation(30)),
])
def test_no_image_is_refused_by_the_measurements(call):
    with pytest.raises(InputError, match=r"images holds no image \(shape \(0, 1, 9, 9\)\)"):
        call(torch.zeros(0, 1, 9, 9))


# --- 3. empty inputs, batch sizes, parameter-free models, one relative change -------------------

@pytest.mark.parametrize("call", [
    lambda m, x, y: rotation_curve(m, x, y, [0]),
    lambda m, x, y: scale_curve(m, x, y, [2.0]),
    lambda m, x, y: shift_curve(m, x, y, [1.0]),
    lambda m, x, y: accuracy_under(m, x, y, lambda v: v),
    lambda m, x, y: logit_change(m, x, 30),
    lambda m, x, y: round_trip_change(m, x, 30),
])
def test_no_image_is_refused_by_the_robustness_measures(call):
    with pytest.raises(InputError, match=r"images holds no image \(shape \(0, 1, 9, 11\)\)"):
        call(Oracle(), torch.zeros(0, 1, 9, 11), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_a_batch_size_below_one_is_refused(batch_size):
    images, labels = _oracle_data()
    message = f"batch_size must be a whole number >= 1, got {batch_size!r}"
    for call in (lambda: accuracy_under(Oracle(), images, labels, lambda x: x, batch_size),
                 lambda: logit_change(Oracle(), images, 30, batch_size),
                 lambda: round_trip_change(Oracle(), images, 30, batch_size),
                 lambda: logits_by_image(Oracle(), images, batch_size),
                 lambda: predictions(Oracle(), images, batch_size)):
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value) == message


def test_a_model_without_parameters_is_measured_where_its_input_is():
    """``next(model.parameters())`` raised a bare StopIteration."""
    images, labels = _oracle_data()
    model = nn.Sequential(nn.Flatten(), nn.Identity())  # logits = the pixels
    logits, failed = logits_by_image(model, images)
    assert torch.equal(logits, images.flatten(1)) and not failed.any()
    expected = 100.0 * float((images.flatten(1).argmax(1) == labels).double().mean())
    assert rotation_curve(model, images, labels, [0, 180]) == [expected, expected]
    assert logit_change(model, images, 180) == 0.0  # constant images: a half turn changes nothing


class Zero(nn.Module):
    """All-zero logits, whatever the image."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.zeros(len(x), 3) * self.anchor


class ZeroThenOne(nn.Module):
    """All-zero logits on the unrotated test images, ones on anything else."""

    def __init__(self, images):
        super().__init__()
        self.register_buffer("images", images)

    def forward(self, x):
        same = torch.equal(x, self.images)
        return torch.zeros(len(x), 3) if same else torch.ones(len(x), 3)


def test_logit_change_and_model_invariance_share_one_relative_change():
    """All-zero logits: model_invariance gave NaN, logit_change 0.0, for the same model."""
    images = torch.rand(4, 1, 9, 9, generator=torch.Generator().manual_seed(0))
    transform = Transform.rotation(37)
    assert logit_change(Zero(), images, 37) == 0.0
    assert model_invariance(Zero(), images, transform) == {"unchanged": 1.0, "logit_change": 0.0}
    # logits all 0 before, not after: infinitely large relative to nothing, in both
    assert logit_change(ZeroThenOne(images), images, 37) == math.inf
    assert model_invariance(ZeroThenOne(images), images, transform)["logit_change"] == math.inf
    # and the same number for ordinary logits
    model = nn.Sequential(nn.Flatten(), nn.Linear(81, 3))
    torch.nn.init.normal_(model[1].weight, generator=torch.Generator().manual_seed(1))
    assert model_invariance(model, images, transform)["logit_change"] == logit_change(
        model, images, 37)


# --- doubtful items of the probe ----------------------------------------------------------------

def test_huge_angles_rotate_as_their_remainder_modulo_360():
    """radians(37 + 360 k) cast to float32 lost the angle: 0.013 off at k = 1e5."""
    images = smooth_inputs(2, 28)
    base = Transform.rotation(37)(images)
    for turns in (1, 1000, 100000, -100000):
        assert torch.equal(Transform.rotation(37 + 360 * turns)(images), base)
    assert equivariance_error(random_conv(), images, Transform.rotation(37 + 360 * 100000)) == \
        equivariance_error(random_conv(), images, Transform.rotation(37))


@pytest.mark.parametrize("digits", [0, -1, 2.5, True])
def test_digits_below_one_are_refused(digits):
    from eqpdenet import EqPdeNet

    model = EqPdeNet(4)
    message = f"digits must be a whole number >= 1 (significant digits), got {digits!r}"
    for call in (lambda: pde_formula(heat_pde(), digits=digits),
                 lambda: reduction_formula(model.pde_layer, digits=digits),
                 lambda: describe_model(model, digits=digits)):
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value) == message
    assert pde_formula(heat_pde(diffusivity=0.25), digits=1) == "∂t u = 0.2 (u_xx + u_yy)"


def test_negative_diffusivity_is_refused_as_the_backward_heat_equation():
    with pytest.raises(ConfigError, match="diffusivity: must be >= 0, got -1 .*backward heat "
                                          "equation is ill-posed"):
        heat_pde(diffusivity=-1)
    with pytest.raises(ConfigError, match="diffusivity must be a finite number, got nan"):
        heat_pde(diffusivity=float("nan"))
    assert pde_formula(heat_pde(diffusivity=0.0)) == "∂t u = 0"


@pytest.mark.parametrize("call, message", [
    (lambda: invariant_orders(sets=[], stencils=["central"], points=2),
     "sets is empty: name at least one, or pass None for every one"),
    (lambda: invariant_orders(sets=["se2"], stencils=[], points=2),
     "stencils is empty: name at least one, or pass None for every one"),
    (lambda: invariant_orders(sets=["se2"], stencils=["central"], points=0),
     "points must be a whole number >= 1, got 0"),
    (lambda: invariant_orders(sets=["se2"], stencils=["central"], points=2, spacings=(0.1,)),
     "spacings must hold at least two spacings (an order compares two), got (0.1,)"),
    (lambda: invariant_orders(sets=["se2"], stencils=["central"], points=2, spacings=(0.1, 0.0)),
     "spacings[1] must be a positive number, got 0.0"),
    (lambda: orders_table([]), "orders_table: no rows to tabulate"),
    (lambda: smooth_inputs(0), "smooth_inputs: count must be a whole number >= 1, got 0"),
    (lambda: upsample(torch.zeros(1, 1, 4, 4), 0),
     "upsample: factor must be a whole number >= 1, got 0"),
])
def test_empty_or_meaningless_arguments_are_refused(call, message):
    with pytest.raises(ConfigError) as caught:
        call()
    assert str(caught.value) == message


def test_invariant_orders_of_named_sets_only():
    rows = invariant_orders(sets=["se2"], stencils=["central"], points=2)
    assert {r.invariant_set for r in rows} == {"se2"} and {r.stencil for r in rows} == {"central"}
