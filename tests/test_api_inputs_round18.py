"""Round 18: the input checks of public pieces that skipped those of their function form or of
the layers (probe a5: F1, F2, F3, F5, F6).

* ``Jet`` (the module form of ``jet``) took an integer image and cast its stencil to it (the
  weights +-0.5 became 0: a wrong jet without an error), and gave raw errors for a 3-d tensor or
  a numpy array; ``PerChannelInvariants``' SE(2) shortcut skipped the check of its module.
* An invariant set (planar or M2) called on an integer, bool or non-tensor jet gave integer
  invariants silently, a raw torch error, or a message blaming the set's invariant.
* ``LinearF`` / ``PolynomialF`` on maps of another dtype: a raw einsum error; now the library's
  dtype policy (``checks.match_dtype``).
* ``AntiAliasedDownsample`` on a map with a side of 0: a raw torch error; ``PDELayer`` refused a
  0 x W image on its reference path and returned an empty result on its fused one: both refuse
  it now with the reference's ``InputError``.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from eqpdenet import Jet, LinearF, PDELayer, PolynomialF, get_invariant_set, jet, kernels
from eqpdenet.errors import InputError, InputTypeError
from eqpdenet.models import AntiAliasedDownsample
from eqpdenet.pde.rhs import PerChannelInvariants

# u = 4 row + col on a 4 x 4 grid: u_x = 1, u_y = -4 (y points up) inside, every second
# derivative 0
RAMP = torch.arange(16).reshape(1, 1, 4, 4)


def _message(call) -> tuple[type, str]:
    with pytest.raises(InputError) as caught:
        call()
    return type(caught.value), str(caught.value)


# ----------------------------------------------------------------------------- F1, F5: Jet


@pytest.mark.parametrize("u", [RAMP, RAMP > 3, RAMP[0].double(), RAMP.double().numpy(),
                               RAMP.double().tolist()],
                         ids=["int64", "bool", "3-d", "numpy", "list"])
def test_jet_module_checks_its_input_as_jet_does(u):
    expected = _message(lambda: jet(u))
    assert _message(lambda: Jet()(u)) == expected


def test_jet_module_messages():
    assert _message(lambda: Jet()(RAMP)) == (
        InputTypeError, "u must be a floating-point tensor, got dtype torch.int64")
    assert _message(lambda: Jet()(RAMP[0].float())) == (
        InputError, "u must have shape (batch, channels, height, width), got (1, 4, 4)")
    assert _message(lambda: Jet()(RAMP.float().numpy())) == (
        InputTypeError, "u must be a torch.Tensor, got ndarray")
    assert _message(lambda: Jet()(torch.zeros(1, 1, 0, 5))) == (
        InputError, "the 'replicate' boundary of a stencil of radius 1 needs images of at least "
                    "1x1 pixels, got 0x5")


def test_jet_module_on_a_float_ramp_is_exact_and_equals_jet():
    u = RAMP.double()
    out = Jet()(u)
    assert out.dtype == torch.float64
    inside = out[0, 0, :, 1:3, 1:3]
    assert inside[1].eq(1.0).all() and inside[2].eq(-4.0).all() and inside[3:].eq(0.0).all()
    assert torch.equal(out, jet(u))


# ----------------------------------------------------------------------------- F2: invariant sets


@pytest.mark.parametrize("name", ["se2", "scaling", "sim2"])
@pytest.mark.parametrize("kind", ["int32", "bool", "numpy"])
def test_invariant_set_refuses_a_jet_that_is_not_a_float_tensor(name, kind):
    J = jet(torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(0)))
    bad = {"int32": (J * 10).int(), "bool": J > 0.5, "numpy": J.numpy()}[kind]
    expected = {"int32": "jet must be a floating-point tensor, got dtype torch.int32",
                "bool": "jet must be a floating-point tensor, got dtype torch.bool",
                "numpy": "jet must be a torch.Tensor (..., D, H, W), got ndarray"}[kind]
    assert _message(lambda: get_invariant_set(name)(bad)) == (InputTypeError, expected)


def test_m2_invariant_set_refuses_an_integer_jet():
    m2 = get_invariant_set("m2")
    assert _message(lambda: m2(torch.ones(1, 1, 10, 4, 3, 3, dtype=torch.int32))) == (
        InputTypeError, "jet must be a floating-point tensor, got dtype torch.int32")
    assert m2(torch.zeros(1, 1, 10, 4, 3, 3)).shape == (1, 1, 10, 4, 3, 3)


def test_invariant_set_on_a_float_jet_is_unchanged():
    d = jet(RAMP.double())  # inside: u_x = 1, u_y = -4, second derivatives 0
    maps = get_invariant_set("se2")(d)[0, 0, :, 1:3, 1:3]
    assert maps[1].eq(17.0).all() and maps[2].eq(0.0).all()  # |grad u|^2 = 1 + 16, laplacian


def test_per_channel_invariants_check_the_jet_before_their_shortcut():
    invariants = PerChannelInvariants(2)
    J = jet(RAMP.double().expand(1, 2, 4, 4))
    assert _message(lambda: invariants(J.long())) == (
        InputTypeError, "jet must be floating-point, got torch.int64")
    assert _message(lambda: invariants(J.numpy())) == (
        InputTypeError, "jet must be a torch.Tensor, got ndarray")
    assert _message(lambda: invariants(J[:, :1])) == (
        InputError, "expected a jet of 2 channels, got 1")
    maps = invariants(J)
    assert maps.shape == (1, 10, 4, 4) and maps[0, 2, 1:3, 1:3].eq(17.0).all()


# ----------------------------------------------------------------------------- F3: MonomialF


def _linear() -> LinearF:
    F = LinearF(2)
    with torch.no_grad():
        F.weight.copy_(torch.tensor([2.0, -1.0]))
        F.bias.fill_(0.5)
    return F


def test_linear_f_computes_a_lower_precision_in_its_own_and_returns_the_input_dtype():
    invariants = torch.tensor([3.0, 0.25]).reshape(1, 2, 1, 1).half()
    out = _linear()(invariants)
    assert out.dtype == torch.float16 and out.item() == 2 * 3.0 - 0.25 + 0.5
    F = PolynomialF(2, 2)  # monomials I1, I2, I1^2, I1 I2, I2^2
    with torch.no_grad():
        F.weight.copy_(torch.tensor([0.0, 0.0, 1.0, 2.0, 0.0]))
    out = F(invariants)
    assert out.dtype == torch.float16 and out.item() == 9.0 + 2 * 0.75


@pytest.mark.parametrize("F", [LinearF(5), PolynomialF(5, 2)], ids=["linear", "polynomial"])
def test_monomial_f_refuses_a_higher_precision_and_non_float_maps(F):
    invariants = torch.zeros(2, 5, 3, 3)
    assert _message(lambda: F(invariants.double())) == (
        InputTypeError, "invariants is torch.float64 but the module computes in torch.float32: "
                        "convert the module (module.to(torch.float64)) to compute in "
                        "torch.float64, or the input (invariants.to(torch.float32))")
    assert _message(lambda: F(invariants.long())) == (
        InputTypeError, "invariants must be a floating-point tensor, got dtype torch.int64")
    kind, message = _message(lambda: F(invariants.to("meta")))
    assert kind is InputError and message.startswith(
        "invariants: the input is on device meta but ")
    assert F.double()(invariants.double()).dtype == torch.float64


def test_monomial_f_in_its_own_dtype_is_unchanged():
    invariants = torch.tensor([3.0, 0.25]).reshape(1, 2, 1, 1)
    F = _linear()
    out = F(invariants)
    assert out.dtype == torch.float32 and out.item() == 6.25
    assert torch.equal(out, torch.einsum("...khw,k->...hw", invariants, F.weight) + F.bias)


# ----------------------------------------------------------------------------- F6: empty maps


def test_anti_aliased_downsample_refuses_a_side_of_zero():
    down = AntiAliasedDownsample()
    for shape in ((2, 3, 0, 9), (2, 3, 9, 0)):
        assert _message(lambda shape=shape: down(torch.rand(shape))) == (
            InputError, f"AntiAliasedDownsample needs maps of at least 1x1 pixels, got shape "
                        f"{shape} ({shape[2]}x{shape[3]})")
    assert down(torch.rand(0, 3, 9, 9)).shape == (0, 3, 5, 5)  # an empty batch is fine
    assert down(torch.rand(2, 0, 9, 9)).shape == (2, 0, 5, 5)


_EMPTY_IMAGE = ("the 'replicate' boundary of a stencil of radius 1 needs images of at least 1x1 "
                "pixels, got 0x5")


def test_pde_layer_dispatch_applies_the_reference_size_rule_before_the_fused_kernel(monkeypatch):
    """The layer's choice alone, without building the kernel: the fused operator, stubbed as it
    behaved on a 0 x W image (an empty result), is never reached."""
    called = []
    monkeypatch.setattr(kernels, "unsupported_reason", lambda u, specs: None)
    monkeypatch.setattr(kernels, "fused_evolve",
                        lambda u, specs, recompute=False: called.append(u) or u[:, None])
    layer = PDELayer.build(["se2"], backend="fused")
    assert _message(lambda: layer(torch.zeros(1, 1, 0, 5))) == (InputError, _EMPTY_IMAGE)
    assert called == []
    layer(torch.zeros(1, 1, 1, 5))  # a 1 x W image goes on to the operator
    assert len(called) == 1


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                    reason="no C++ compiler: the fused kernel cannot be built here")
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_pde_layer_backends_refuse_an_empty_image_alike(backend, monkeypatch):
    monkeypatch.delenv(kernels.ENV_BACKEND, raising=False)
    layer = PDELayer.build(["se2"], backend=backend)
    for u in (torch.zeros(1, 1, 0, 5), torch.zeros(2, 1, 5, 0)):
        expected = _EMPTY_IMAGE.replace("0x5", "x".join(map(str, u.shape[2:])))
        assert _message(lambda u=u: layer(u)) == (InputError, expected)
        assert _message(lambda u=u: layer.evolve(u)) == (InputError, expected)
    assert layer(torch.zeros(0, 1, 5, 5)).shape == (0, 1, 5, 5)  # an empty batch is fine

