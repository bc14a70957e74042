"""Round 20 (probe a5): robustness curves, scenario registration and the benchmark's plot.

* ``scale_curve`` checked its factors in float64 only: ``1e300`` and ``1e-50`` (infinite and 0
  in float32) were scored after the factors before them and then refused by ``geometry.scale``
  as an ``InputError`` about a ``factor`` of inf or 0 that the caller had not given.
* ``True`` was taken for 1 in angles, factors, shifts and degrees, and a negative shift distance
  only reversed the direction drawn (the benchmark's ``curves`` section refuses both).
* ``shift_curve`` rounded the directions of half-precision images to float16 before the warp.
* A scenario range named like one of ``apply_scenario``'s own arguments was registered, and no
  call could set it.
* ``robustness.png`` joined a curve's points in configuration order, with ticks fixed at 0-360.
"""

import inspect
import math

import pytest
import torch

from eqpdenet.analysis.robustness import (
    axis_shift,
    axis_shift_curve,
    logit_change,
    rotation_curve,
    round_trip_change,
    scale_curve,
    shift_curve,
)
from eqpdenet.data.scenarios import (
    AffineDraw,
    apply_scenario,
    available_scenarios,
    register_scenario,
)
from eqpdenet.errors import ConfigError
from eqpdenet.geometry import scale, translate
from helpers import Recorder

# --- F1: every factor is checked in the images' working dtype before any image is moved ----------

@pytest.mark.parametrize("dtype, factor, message", [
    (torch.float32, 1e300, "factors[1] = 1e+300 is infinite in float32, the images' working dtype "
                           "(its largest number is 3.40282e+38)"),
    (torch.float32, -1e300, "factors[1] = -1e+300 is infinite in float32, the images' working "
                            "dtype (its largest number is 3.40282e+38)"),
    (torch.float32, 1e-50, "factors[1] = 1e-50 is 0 in float32, the images' working dtype (a "
                           "scaling by 0 maps every point onto the centre)"),
    (torch.float32, 1e-40, "factors[1] = 1e-40 has no finite reciprocal in float32, the images' "
                           "working dtype (the warp samples the input at p / factor)"),
    # half-precision images are warped in float32: the same limits, not float16's
    (torch.float16, 1e-40, "factors[1] = 1e-40 has no finite reciprocal in float32, the images' "
                           "working dtype (the warp samples the input at p / factor)"),
    (torch.float64, 2.0 ** -1070, "factors[1] = 7.90505e-323 has no finite reciprocal in "
                                  "float64, the images' working dtype (the warp samples the "
                                  "input at p / factor)"),
])
def test_scale_curve_refuses_a_factor_the_working_dtype_cannot_hold_before_any_image_moves(
        dtype, factor, message):
    images = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0)).to(dtype)
    model = Recorder().to(dtype)
    with pytest.raises(ConfigError) as caught:
        scale_curve(model, images, torch.zeros(3, dtype=torch.long), [0.5, factor])
    assert str(caught.value) == message
    assert model.seen == []  # refused before the first (good) factor was measured


def test_scale_curve_keeps_factors_the_working_dtype_holds():
    """1e-30 and 1e30 are finite with finite reciprocals in float32: measured as before."""
    images = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    model = Recorder()
    labels = model(images).argmax(1)
    model.seen.clear()
    assert scale_curve(model, images, labels, [1.0, 1e-30, 1e30]) == [
        100.0, *(100.0 * float((model(scale(images, f)).argmax(1) == labels).double().mean())
                 for f in (1e-30, 1e30))]
    assert torch.equal(model.seen[1], scale(images, 1e-30))


# --- "left alone" tolerances: True is no number, a shift distance is not negative ------------------

@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: rotation_curve(m, x, y, [0.0, True]),
     "angles[1] must be a number, not a bool, got True"),
    (lambda m, x, y: scale_curve(m, x, y, [True]),
     "factors[0] must be a number, not a bool, got True"),
    (lambda m, x, y: shift_curve(m, x, y, [0.5, False]),
     "shifts[1] must be a number, not a bool, got False"),
    (lambda m, x, y: axis_shift_curve(m, x, y, [torch.tensor(True)]),
     "shifts[0] must be a number, not a bool, got tensor(True)"),
    (lambda m, x, y: logit_change(m, x, True), "degrees must be a number, not a bool, got True"),
    (lambda m, x, y: round_trip_change(m, x, True),
     "degrees must be a number, not a bool, got True"),
    (lambda m, x, y: axis_shift(x, (True, 0)), "shift[0] must be a number, not a bool, got True"),
    (lambda m, x, y: shift_curve(m, x, y, [0.5, -1.0]),
     "shifts[1] must be a distance >= 0 (the direction is drawn per image), got -1"),
    (lambda m, x, y: axis_shift_curve(m, x, y, [1, -2]),
     "shifts[1] must be a distance >= 0 (the direction is drawn per image), got -2"),
])
def test_a_bool_or_a_negative_distance_is_refused_before_any_work(call, message):
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    model = Recorder()
    with pytest.raises(ConfigError) as caught:
        call(model, images, torch.zeros(3, dtype=torch.long))
    assert str(caught.value) == message
    assert model.seen == []


def test_shift_curve_moves_half_precision_images_by_float32_directions():
    """The warp of float16 images computes in float32; the directions drawn for it are float32
    too (they were rounded to float16 first: a shift of 3 pixels was off by up to 0.002 px)."""
    images = torch.rand(16, 1, 9, 9, generator=torch.Generator().manual_seed(3))
    images = images.to(torch.float16)
    model = Recorder()
    shift_curve(model, images, torch.zeros(16, dtype=torch.long), [3.0], seed=4)
    theta = 2 * math.pi * torch.rand(16, generator=torch.Generator().manual_seed(4),
                                     dtype=torch.float64)
    direction = torch.stack([torch.cos(theta), torch.sin(theta)], 1).to(torch.float32)
    assert torch.equal(model.seen[0].to(torch.float16), translate(images, 3.0 * direction))


# --- F2: a range named like apply_scenario's own arguments is refused at registration ------------

def test_apply_scenarios_own_arguments_are_the_reserved_names():
    own = [p.name for p in inspect.signature(apply_scenario).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert own == ["name", "images", "seed", "batch_size", "return_params"]


@pytest.mark.parametrize("reserved", ["name", "images", "seed", "batch_size", "return_params"])
def test_a_range_named_like_an_argument_of_apply_scenario_is_refused_at_registration(reserved):
    def sampler(num, generator, max_shift=1.0, **_):
        eye = torch.eye(2, dtype=torch.float64).expand(num, 2, 2).clone()
        return AffineDraw(eye, torch.zeros(num, 2, dtype=torch.float64), {})

    # the same sampler with a range named `reserved` (default 1) after max_shift
    parameters = list(inspect.signature(sampler).parameters.values())[:3]
    parameters.append(inspect.Parameter(reserved, inspect.Parameter.KEYWORD_ONLY, default=1))
    sampler.__signature__ = inspect.Signature(parameters)
    name = f"round20-{reserved}"
    with pytest.raises(ConfigError) as caught:
        register_scenario(name, sampler)
    assert str(caught.value) == (
        f"scenario {name!r}: its sampler's range {reserved!r} is named like apply_scenario's own "
        f"argument {reserved!r}, so no call could set it; rename the range (apply_scenario takes "
        f"name, images, seed, batch_size, return_params itself)")
    assert name not in available_scenarios()


# --- F3: robustness.png joins each curve's points by x, with ticks from the data ------------------

def _figure(monkeypatch, summary):
    """The figure robustness_figure draws for ``summary`` (kept open, not written)."""
    import matplotlib

    matplotlib.use("Agg")
    from eqpdenet.app import benchmark

    drawn = []
    monkeypatch.setattr(benchmark, "figure_bytes", lambda fig: drawn.append(fig) or b"")
    benchmark.robustness_figure(summary)
    return drawn[0]


def test_the_plot_joins_each_curve_by_x_and_ticks_every_angle(monkeypatch):
    import matplotlib.pyplot as plt

    item = {"rotation": ([0.0, 37.0, 90.0, 180.0, -90.0], [90.0, 80.0, 70.0, 60.0, 50.0]),
            "scale": ([1.5, 0.5, 1.0], [1.0, 2.0, 3.0]),
            "shift": ([2.0, 0.0], [4.0, 5.0])}
    fig = _figure(monkeypatch, {"cnn": item})
    try:
        rotation, scales, shifts = ([(list(line.get_xdata()), list(line.get_ydata()))
                                     for line in axis.get_lines()] for axis in fig.axes)
        assert rotation == [([-90.0, 0.0, 37.0, 90.0, 180.0], [50.0, 90.0, 80.0, 70.0, 60.0])]
        assert scales == [([0.5, 1.0, 1.5], [2.0, 3.0, 1.0])]
        assert shifts == [([0.0, 2.0], [5.0, 4.0])]
        assert list(fig.axes[0].get_xticks()) == [-90, -45, 0, 45, 90, 135, 180]
    finally:
        plt.close(fig)


@pytest.mark.parametrize("angles, ticks", [
    ([15.0 * k for k in range(24)], list(range(0, 361, 45))),  # the default curve: as before
    ([0.0, 3600.0], list(range(0, 3601, 720))),  # at most 9 ticks: every 720 degrees
    ([37.0], [0, 45]),
])
def test_the_rotation_ticks_span_the_angles_in_multiples_of_45_degrees(monkeypatch, angles, ticks):
    import matplotlib.pyplot as plt

    item = {"rotation": (angles, [50.0] * len(angles))}
    fig = _figure(monkeypatch, {"cnn": item, "none": {"rotation": ([], [])}})
    try:
        assert list(fig.axes[0].get_xticks()) == ticks
    finally:
        plt.close(fig)
