"""Round 16, the public API of the analysis and data helpers (probe v3, findings F4 and F6).

F4: the describing functions read the attributes of what they describe without asking what it
is, so a near miss (an M2 system's Euler step given to ``pde_formula``, a layer given where a PDE
is taken, a model given to ``describe_layer``) was a raw ``AttributeError``; each now refuses it
with an ``InputTypeError`` saying what it takes, which function describes what it was given, and
``describe_model``. F6: meaningless arguments were taken silently: a negative or NaN tolerance
(an exactly equivariant map flagged), a negative or NaN disk radius, a width of 0 read as "not
given", NaN or inf images (the equivariance error NaN, a scenario passing them on), a perceptron
of zero width.
"""

from __future__ import annotations

import re

import pytest
import torch

import eqpdenet.data.scenarios as scenarios
from eqpdenet import EqPdeNet, EulerStep, PDELayer
from eqpdenet.analysis import describe
from eqpdenet.analysis.equivariance import (
    Transform,
    central_disk,
    equivariance_error,
    filled_region,
    interpolation_floor,
    layer_quarter_turn_report,
    quarter_turn_check,
)
from eqpdenet.data.scenarios import apply_scenario
from eqpdenet.errors import ConfigError, InputError, InputTypeError
from eqpdenet.geometry import affine_warp
from eqpdenet.models import FCNN, perceptron
from eqpdenet.pde import M2SystemRHS

DESCRIBE_MODEL = ("describe_model(model) describes a whole model (or any module), finding the "
                  "PDEs in it")
SCALAR_PDE = ("pde_formula takes an EulerStep or EulerFlow of a scalar PDE, whose right-hand "
              "side is an InvariantRHS (a PDE layer's layer.pdes[i])")


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    return PDELayer.build(["se2"])


@pytest.fixture(scope="module")
def m2_step():
    return EulerStep(M2SystemRHS(2))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EqPdeNet(hidden=4)


def images(n: int = 2, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------------------- F4


def test_pde_formula_refuses_an_m2_step_pointing_to_its_describer(m2_step):
    with pytest.raises(InputTypeError, match=exactly(
            f"{SCALAR_PDE}, got EulerStep of M2SystemRHS: describe_m2_system(step) describes a "
            f"PDE system on M2; {DESCRIBE_MODEL}")) as caught:
        describe.pde_formula(m2_step)
    assert isinstance(caught.value, TypeError)


def test_pde_formula_refuses_a_layer_and_a_bare_right_hand_side(layer):
    with pytest.raises(InputTypeError, match=exactly(
            f"{SCALAR_PDE}, got PDELayer: describe_layer(layer) describes a PDE layer; "
            f"{DESCRIBE_MODEL}")):
        describe.pde_formula(layer)
    with pytest.raises(InputTypeError, match=exactly(
            f"{SCALAR_PDE}, got InvariantRHS: pass the EulerStep or EulerFlow that holds it; "
            f"{DESCRIBE_MODEL}")):
        describe.pde_formula(layer.pdes[0].step.rhs)


def test_pde_formula_still_takes_a_flow_and_its_step(layer):
    flow = layer.pdes[0]
    text = describe.pde_formula(flow)
    assert text.startswith("∂t u = ")
    assert describe.pde_formula(flow.step) == text


def test_describe_layer_refuses_a_model_pointing_to_describe_model(model):
    with pytest.raises(InputTypeError, match=exactly(
            "describe_layer takes a PDELayer, got EqPdeNet: its PDE layer is model.pde_layer "
            f"(its PDEs model.pde_layer.pdes[i]); {DESCRIBE_MODEL}")):
        describe.describe_layer(model)
    assert describe.describe_model(model).startswith("EqPdeNet: input u(0)")


def test_reduction_formula_checks_its_layer_and_style(model, layer):
    with pytest.raises(InputTypeError, match=exactly(
            "reduction_formula takes a PDELayer, got EqPdeNet: its PDE layer is "
            f"model.pde_layer (its PDEs model.pde_layer.pdes[i]); {DESCRIBE_MODEL}")):
        describe.reduction_formula(model)
    # another word printed the Unicode formula, as pde_formula refuses it
    with pytest.raises(ConfigError, match=exactly("style must be 'unicode' or 'latex', got 'x'")):
        describe.reduction_formula(layer, style="x")


def test_ratio_reading_and_leading_terms_take_a_right_hand_side(layer):
    with pytest.raises(InputTypeError, match=exactly(
            "ratio_reading takes an InvariantRHS (a scalar PDE's pde.step.rhs), got EulerFlow "
            "of InvariantRHS: pass its right-hand side, pde.step.rhs; pde_formula(pde) writes a "
            f"scalar PDE; {DESCRIBE_MODEL}")):
        describe.ratio_reading(layer.pdes[0])
    with pytest.raises(InputTypeError, match=exactly(
            "leading_terms takes an InvariantSystemRHS (a PDE system's step.rhs), got "
            f"InvariantRHS: pde_formula(pde) writes a scalar PDE; {DESCRIBE_MODEL}")):
        describe.leading_terms(layer.pdes[0].step.rhs)


def test_the_system_describers_take_their_own_kind_of_step(layer, m2_step):
    with pytest.raises(InputTypeError, match=exactly(
            "describe_system takes an EulerStep whose right-hand side is an InvariantSystemRHS, "
            "got EulerStep of M2SystemRHS: describe_m2_system(step) describes a PDE system on "
            f"M2; {DESCRIBE_MODEL}")):
        describe.describe_system(m2_step)
    with pytest.raises(InputTypeError, match=exactly(
            "describe_m2_system takes an EulerStep whose right-hand side is an M2SystemRHS, got "
            f"EulerStep of InvariantRHS: pde_formula(pde) writes a scalar PDE; {DESCRIBE_MODEL}")):
        describe.describe_m2_system(layer.pdes[0].step)
    with pytest.raises(InputTypeError, match=exactly(
            "describe_m2_system takes an EulerStep whose right-hand side is an M2SystemRHS, got "
            f"M2SystemRHS: pass the EulerStep that holds it; {DESCRIBE_MODEL}")):
        describe.describe_m2_system(m2_step.rhs)
    assert describe.describe_m2_system(m2_step).startswith("m2: U <- U + 0.1 F(I(U)) on M2")


def test_describe_model_takes_a_module():
    with pytest.raises(InputTypeError, match=exactly(
            "describe_model takes an nn.Module (a model, a layer, or any module holding PDEs), "
            "got NoneType")):
        describe.describe_model(None)
    with pytest.raises(InputTypeError, match=exactly(
            "describes_pdes takes an nn.Module (a model, a layer, or any module holding PDEs), "
            "got int")):
        describe.describes_pdes(3)


def test_layer_quarter_turn_report_refuses_a_model(model):
    with pytest.raises(InputTypeError, match=exactly(
            "layer_quarter_turn_report takes a PDE layer (PDELayer: its PDEs are measured one by "
            "one), got EqPdeNet: for a model, pass its PDE layer (model.pde_layer); "
            "model_invariance measures a model's predictions")):
        layer_quarter_turn_report(model, images())


# ----------------------------------------------------------------------------- F6


@pytest.mark.parametrize("tolerance, message", [
    (-1, "invalid config: tolerance: must be >= 0, got -1.0"),
    (float("nan"), "invalid config: tolerance: must be a finite number, got nan"),
    (float("inf"), "invalid config: tolerance: must be a finite number, got inf"),
    ("1e-4", "invalid config: tolerance: must be a finite number, got '1e-4'"),
])
def test_quarter_turn_check_refuses_a_meaningless_tolerance(tolerance, message):
    calls = []

    def identity(x):
        calls.append(1)
        return x

    with pytest.raises(ConfigError, match=exactly(message)):
        quarter_turn_check(identity, images(), tolerance=tolerance)
    assert not calls  # refused before anything is measured


def test_quarter_turn_check_of_the_identity_at_tolerance_zero():
    # both sides are the same exact rot90 of the images: E = 0 exactly
    assert quarter_turn_check(lambda x: x, images(), tolerance=0) == {
        "error": 0.0, "equivariant": True}


@pytest.mark.parametrize("args, kwargs, message", [
    ((16,), {"radius_fraction": -1}, "invalid config: radius_fraction: must be >= 0, got -1.0"),
    ((16,), {"radius_fraction": float("nan")},
     "invalid config: radius_fraction: must be a finite number, got nan"),
    ((16, 0), {}, "invalid config: width: must be >= 1, got 0"),
    ((0,), {}, "invalid config: height: must be >= 1, got 0"),
    ((16, 4.5), {}, "invalid config: width: must be an integer, got 4.5"),
])
def test_central_disk_refuses_meaningless_sizes_and_radii(args, kwargs, message):
    with pytest.raises(ConfigError, match=exactly(message)):
        central_disk(*args, **kwargs)


def test_central_disk_values():
    # 4x4 centres at ±0.5, ±1.5: radius 0.5 * 4 = 2 keeps all but the corners (1.5² + 1.5² > 4)
    disk = central_disk(4, radius_fraction=0.5)
    corners = torch.zeros(4, 4, dtype=torch.bool)
    corners[0, 0] = corners[0, -1] = corners[-1, 0] = corners[-1, -1] = True
    assert torch.equal(disk, ~corners)
    assert central_disk(3, 5).shape == (3, 5)
    assert int(central_disk(3, radius_fraction=0).sum()) == 1  # the centre pixel alone


def test_filled_region_reads_a_width_of_0_as_given():
    assert filled_region(Transform.rotation(90), 4, 0).shape == (4, 0)
    assert filled_region(Transform.rotation(90), 4).shape == (4, 4)


def test_perceptron_refuses_a_width_of_0_as_fcnn_does():
    with pytest.raises(ConfigError) as fcnn:
        FCNN(hidden=0)
    with pytest.raises(ConfigError, match=exactly(str(fcnn.value))):
        perceptron(4, 0)
    with pytest.raises(ConfigError, match=exactly("invalid config: in_features: must be >= 1, "
                                                  "got 0")):
        perceptron(0, 3)
    with pytest.raises(ConfigError, match=exactly("invalid config: classes: must be >= 1, "
                                                  "got 0")):
        perceptron(4, 3, 0)
    widths = [(m.in_features, m.out_features) for m in perceptron(4, 3, 2)
              if isinstance(m, torch.nn.Linear)]
    assert widths == [(4, 3), (3, 3), (3, 2)]


def non_finite(value: float) -> torch.Tensor:
    u = images(3)
    u[1, 0, 2, 5] = value
    return u


NAN_MESSAGE = ("images contains non-finite values (1 NaN, 0 inf of 192): the input is at fault, "
               "not the PDE scheme; check how it was produced (the first at index [1, 0, 2, 5]: "
               "nan)")
INF_MESSAGE = ("images contains non-finite values (0 NaN, 1 inf of 192): the input is at fault, "
               "not the PDE scheme; check how it was produced (the first at index [1, 0, 2, 5]: "
               "inf)")


def test_equivariance_error_refuses_non_finite_images():
    calls = []

    def identity(x):
        calls.append(1)
        return x

    with pytest.raises(InputError, match=exactly(NAN_MESSAGE)):
        equivariance_error(identity, non_finite(float("nan")), Transform.rotation(90))
    with pytest.raises(InputError, match=exactly(INF_MESSAGE)):
        quarter_turn_check(identity, non_finite(float("inf")))
    assert not calls  # before the map is run
    with pytest.raises(InputError, match=exactly(NAN_MESSAGE)):
        interpolation_floor(non_finite(float("nan")), Transform.rotation(30))


@pytest.mark.parametrize("name", ["test", "iso"])
@pytest.mark.parametrize("value, message", [(float("nan"), NAN_MESSAGE),
                                            (float("inf"), INF_MESSAGE)])
def test_apply_scenario_refuses_non_finite_images(name, value, message):
    with pytest.raises(InputError, match=exactly(message)):
        apply_scenario(name, non_finite(value), 0)


def test_apply_scenario_checks_the_values_once_per_call(monkeypatch):
    calls = []
    original = scenarios.check_values

    def counted(u, *args, **kwargs):
        calls.append(u)
        return original(u, *args, **kwargs)

    monkeypatch.setattr(scenarios, "check_values", counted)
    u = images(5)
    out, draws = apply_scenario("iso", u, 7, batch_size=2, return_params=True)
    assert len(calls) == 1 and calls[0] is u  # one pass, one host read, for three batches
    # valid calls unchanged: the warp of the draws, bit for bit
    expected = affine_warp(u, draws["matrix"].float(), draws["translation"].float())
    assert torch.equal(out, expected)
    assert torch.equal(apply_scenario("test", u, 7), u)
