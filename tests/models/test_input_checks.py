"""Inputs checked at the public entry points (issue 14, finding 5 and item 4): non-finite values
are the input's fault, inputs far from the training statistics warn once per model, low-precision
inputs are computed in the module's dtype, higher precision is a clear error."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqpdenet import FCNN, EqPdeNet, EulerFlow, NonFiniteStateError, PDELayer
from eqpdenet.errors import InputError, InputRangeWarning, InputTypeError

MNIST_STATS = dict(input_mean=0.1307, input_std=0.3081)


def _digits(n=3, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _models():
    torch.manual_seed(0)
    return [EqPdeNet(8, **MNIST_STATS), FCNN(8, **MNIST_STATS)]


def _call(model, images):
    """The model on ``images``; EqPdeNet's PDEs may blow up on 0-255 pixels (tested above)."""
    try:
        model(images)
    except NonFiniteStateError:
        pass


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["eqpdenet", "fcnn", "layer", "flow"])
def test_non_finite_input_is_the_inputs_fault(bad, which):
    torch.manual_seed(0)
    module = {"eqpdenet": lambda: EqPdeNet(8), "fcnn": lambda: FCNN(8),
              "layer": PDELayer.paper, "flow": lambda: PDELayer.paper().pdes[0]}[which]()
    images = _digits(2)
    images[1, 0, 5, 7] = bad
    nan, inf = (1, 0) if bad != bad else (0, 1)
    with pytest.raises(InputError, match=rf"contains non-finite values \({nan} NaN, {inf} inf of "
                                         r"1568\): the input is at fault, not the PDE scheme"):
        module(images)


def test_scheme_is_blamed_only_for_a_finite_input_in_range():
    torch.manual_seed(0)
    model = EqPdeNet(8, **MNIST_STATS)
    with torch.no_grad():  # a coefficient that doubles |u| per step overflows float32 after ~128
        model.pde_layer.pdes[0].step.rhs.F.weight[0] = 10.0
        for pde in model.pde_layer.pdes:
            pde.steps = 200
    with pytest.raises(NonFiniteStateError, match="explicit scheme is probably unstable") as info:
        model(_digits(2))
    assert "input was finite, with values in [" in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputRangeWarning)
        with pytest.raises(NonFiniteStateError, match=r"The input is at fault: input values in "
                                                      r"\[0\.\d+, 25\d(\.\d+)?\], up to 82\d standard"):
            model(_digits(2) * 255)


@pytest.mark.parametrize("index", [0, 1])
def test_far_input_range_warns_once_per_model(index):
    model = _models()[index]
    images = _digits()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0-1 digits: no warning
        model(images)
    with pytest.warns(InputRangeWarning, match=r"up to 82\d standard deviations .*input_mean=0.1307"
                                               r", input_std=0.3081.*0-255 instead of 0-1"):
        _call(model, images * 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _call(model, images * 255)  # the same model warns once only
    fresh = _models()[index]
    with pytest.warns(InputRangeWarning):
        _call(fresh, images * 255)


def test_far_range_within_0_1_names_the_statistics_not_the_scale():
    """Images in [0, 1] far from the statistics (here ones with a mean of 0.02 and a std of
    0.01, a data set other than MNIST): the cause is input_mean/input_std, not 0-255 pixels."""
    torch.manual_seed(0)
    model = FCNN(8, input_mean=0.02, input_std=0.01)
    images = _digits()  # up to 1.0: (1 - 0.02) / 0.01 = 98 standard deviations
    with pytest.warns(InputRangeWarning) as caught:
        model(images)
    message = str(caught[0].message)
    assert "up to 98 standard deviations" in message
    assert "model.standardize = 'train'" in message and "0-255" not in message
    assert model.standardize.explain(0.0, 1.0).startswith("The input is at fault")
    assert "0-255" in model.standardize.explain(0.0, 255.0)
    assert model.standardize.explain(0.0, 0.2) is None  # 18 standard deviations: in range


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("index", [0, 1])
def test_low_precision_input_is_computed_in_float32(low, index):
    model = _models()[index]
    images = _digits().to(low)
    out = model(images)
    assert out.dtype == low
    expected = model(images.float())  # the same values, exactly representable in float32
    assert torch.equal(out, expected.to(low))


def test_float32_input_into_a_float64_layer_is_computed_in_float64():
    torch.manual_seed(0)
    layer = PDELayer.paper().double()
    images = _digits(2)
    out = layer(images)
    assert out.dtype == torch.float32
    assert torch.equal(out, layer(images.double()).float())


@pytest.mark.parametrize("which", ["eqpdenet", "fcnn", "layer", "flow"])
def test_float64_input_into_a_float32_module_is_a_clear_error(which):
    torch.manual_seed(0)
    module = {"eqpdenet": lambda: EqPdeNet(8), "fcnn": lambda: FCNN(8),
              "layer": PDELayer.paper, "flow": lambda: PDELayer.paper().pdes[0]}[which]()
    with pytest.raises(InputTypeError, match=r"is torch.float64 but the module computes in "
                                             r"torch.float32: convert the module"):
        module(_digits(1).double())


def test_valid_float32_input_is_not_copied_or_changed():
    torch.manual_seed(0)
    layer = PDELayer.paper()
    images = _digits(2)
    flow: EulerFlow = layer.pdes[0]
    assert torch.equal(layer(images), layer.reduction(layer.evolve(images)))
    assert torch.equal(flow(images), flow.integrate(images))
    model = EqPdeNet(8, **MNIST_STATS)
    assert torch.equal(model(images),
                       model.mlp(model.pde_layer(model.standardize(images)).flatten(1)))
