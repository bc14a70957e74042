"""Layers and models inside other PyTorch code, and terms and invariants of one's own (round 14):
forward-mode AD and ``vmap`` over any parameter of an M2 Euler step (not only ``mix.weight``)
took the fused step, which refused them; a G-CNN built under another default dtype than an
earlier one got its cached bases in the other dtype; hooks on the G-CNN's ``features`` and
group pooling never fired; ``M2Lift``'s repr showed none of its options; an M2 term of one's
own of a wrong shape beside another term broadcast or failed raw; an invariant returning
another dtype passed the checks; the lifted model claimed quarter-turn invariance whatever its
terms; ``describe`` said nothing of a term of one's own."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, vmap

from eqpdenet.errors import ConfigError
from eqpdenet.kernels import cpu
from eqpdenet.kernels.m2_op import m2_euler_step
from eqpdenet.models import LiftedPDEConfig, LiftedPDENet, M2Lift
from eqpdenet.pde import EulerStep, m2_rhs
from eqpdenet.pde.invariants import Invariant, InvariantSet
from eqpdenet.pde.m2 import orientation_frame, separable_stencils
from eqpdenet.pde.m2_rhs import M2_TERMS, M2SystemRHS
from helpers import registered

needs_kernels = pytest.mark.skipif(not cpu.is_available(), reason="no C++ toolchain")


def _fields(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 2, 4, 10, 10, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(seed))


def _step(normalize_hidden: bool, backend: str = "auto") -> EulerStep:
    torch.manual_seed(0)
    step = EulerStep(M2SystemRHS(2, normalize_hidden=normalize_hidden, backend=backend),
                     dt=0.5).double().eval()
    with torch.no_grad():
        for p in step.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return step


# ----------------------------------------------------------------------------- 1. transforms


@needs_kernels
@pytest.mark.parametrize("normalize_hidden", [False, True])
def test_a_dual_output_bias_takes_the_reference_and_its_tangent_is_dt(normalize_hidden):
    step = _step(normalize_hidden)
    u = _fields()
    network = step.rhs.terms["network"]
    # the fused step is taken without a tangent, so that the test sees the dispatch
    assert step.rhs.euler_step(u, step.dt) is not None
    name = "rhs.terms.network.out.bias"
    bias = network.out.bias.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the one warning naming the reason
        with fwAD.dual_level():
            out = functional_call(step, {name: fwAD.make_dual(bias, torch.ones_like(bias))},
                                  (u,))
            tangent = fwAD.unpack_dual(out).tangent
    # d(u + dt F)/d b2 = dt, at every point of every channel
    torch.testing.assert_close(tangent, torch.full_like(u, 0.5), rtol=0, atol=0)


@needs_kernels
@pytest.mark.parametrize("parameter", ["mix.bias", "hidden_norm.weight", "hidden_norm.bias"])
def test_a_dual_on_any_other_parameter_agrees_with_the_reference(parameter):
    normalize_hidden = parameter.startswith("hidden_norm")
    fused, reference = _step(normalize_hidden), _step(normalize_hidden, "reference")
    u = _fields(1)
    name = f"rhs.terms.network.{parameter}"
    value = dict(fused.named_parameters())[name].detach()
    direction = torch.linspace(-1, 1, value.numel(), dtype=value.dtype).view_as(value)
    tangents = []
    for step in (fused, reference):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with fwAD.dual_level():
                out = functional_call(step, {name: fwAD.make_dual(value, direction)}, (u,))
                tangents.append(fwAD.unpack_dual(out).tangent)
    assert tangents[0].abs().max() > 0
    torch.testing.assert_close(tangents[0], tangents[1], rtol=1e-12, atol=1e-12)


@needs_kernels
def test_vmap_over_the_output_weights_equals_the_loop():
    step = _step(True)
    u = _fields(2)
    name = "rhs.terms.network.out.weight"
    weight = dict(step.named_parameters())[name].detach()
    stacked = torch.stack([weight, weight + 0.1, weight - 0.2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mapped = vmap(lambda w: functional_call(step, {name: w}, (u,)))(stacked)
    loop = torch.stack([functional_call(step, {name: w}, (u,)) for w in stacked])
    torch.testing.assert_close(mapped, loop, rtol=1e-12, atol=1e-12)


@needs_kernels
def test_the_fused_operator_called_with_a_dual_bias_names_the_reference_backend():
    step = _step(False)
    u, network = _fields(), step.rhs.terms["network"]
    w1 = network.mix.weight.detach().view(-1, 2, 10)
    with fwAD.dual_level(), pytest.raises(NotImplementedError) as caught:
        b1 = fwAD.make_dual(network.mix.bias.detach(), torch.ones(network.mix.bias.shape,
                                                                  dtype=torch.float64))
        m2_euler_step(u, w1, b1, network.out.weight.detach(), network.out.bias.detach(),
                      separable_stencils(step.rhs.jet.sigmas), orientation_frame(4),
                      step.rhs.jet.boundary, 0.5)
    assert str(caught.value) == (
        "eqpdenet::m2_euler_step: the fused kernels have no forward-mode derivative (a dual "
        "tensor); compute through the plain-PyTorch reference: backend='reference' "
        "(lifted_pde.backend, M2SystemRHS(backend=...)) or EQPDENET_BACKEND=reference")


# ----------------------------------------------------------------------------- 2-3. G-CNN


def _gcnn():
    pytest.importorskip("e2cnn")
    from eqpdenet.models import GCNN, GCNNConfig
    return GCNN(GCNNConfig(group_order=4, channels=[2, 3], kernels=[3, 3], pool_after=[1]),
                image_size=12)


@pytest.mark.parametrize("order", [(torch.float32, torch.float64),
                                   (torch.float64, torch.float32)])
def test_a_gcnn_built_under_another_default_dtype_after_another_works(order):
    previous = torch.get_default_dtype()
    models = []
    try:
        for dtype in order:
            torch.set_default_dtype(dtype)
            torch.manual_seed(0)
            models.append(_gcnn())
    finally:
        torch.set_default_dtype(previous)
    for model, dtype in zip(models, order, strict=True):
        bases = {b.dtype for n, b in model.named_buffers() if n.endswith("sampled_basis")}
        assert bases == {dtype}
        model.eval()
        logits = model(torch.rand(2, 1, 12, 12, dtype=dtype,
                                  generator=torch.Generator().manual_seed(0)))
        assert logits.dtype == dtype and logits.shape == (2, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hooks_on_the_gcnn_features_and_group_pooling_fire_with_the_same_logits(dtype):
    torch.manual_seed(0)
    model = _gcnn().to(dtype).eval()
    images = torch.rand(2, 1, 12, 12, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)
        fired = []
        pooling = model.features._modules[list(model.features._modules)[-1]]
        handles = [
            model.features.register_forward_hook(
                lambda m, i, o: fired.append(("features", o.tensor.dtype, o.tensor.shape))),
            pooling.register_forward_pre_hook(lambda m, i: fired.append(("pooling (pre)",))),
            pooling.register_forward_hook(
                lambda m, i, o: fired.append(("pooling", o.tensor.dtype, o.tensor.shape))),
        ]
        got = model(images)
        for handle in handles:
            handle.remove()
        after = model(images)
    assert type(pooling).__name__ == "GroupPooling"
    assert fired == [("pooling (pre)",), ("pooling", dtype, torch.Size([2, 3, 6, 6])),
                     ("features", dtype, torch.Size([2, 3, 6, 6]))]
    assert torch.equal(got, expected) and torch.equal(after, expected)


# ----------------------------------------------------------------------------- 4. repr


def test_m2lift_repr_shows_its_options():
    lift = M2Lift(3, 2, 8, sigma=1.5, boundary="zeros", scales=2, relative=True,
                  backend="reference")
    assert lift.extra_repr() == ("in_channels=3, channels=2, orientations=8, sigma=1.5, "
                                 "boundary='zeros', scales=2, relative=True, "
                                 "backend='reference'")
    assert M2Lift(1, 2, 4, sigma=1.0, boundary="replicate").extra_repr() == (
        "in_channels=1, channels=2, orientations=4, sigma=1.0, boundary='replicate', "
        "backend='auto'")


# ----------------------------------------------------------------------------- 5. term shapes


class _ChannelSum(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(0.1))

    def forward(self, u, system):
        return self.k * u.sum(1, keepdim=True)


class _Unpadded(nn.Module):
    def forward(self, u, system):
        return u[..., 1:-1, 1:-1]


class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(0.1))

    def forward(self, u, system):
        return self.k


@pytest.mark.parametrize("term, got", [
    (lambda c, *o, relative=False: _ChannelSum(c), "shape (2, 1, 4, 8, 8)"),
    (lambda c, *o, relative=False: _Unpadded(), "shape (2, 3, 4, 6, 6)"),
    (lambda c, *o, relative=False: _Scalar(), "shape ()"),
])
def test_a_wrong_term_shape_beside_the_network_is_a_config_error_naming_it(term, got):
    with registered(M2_TERMS, "round14_bad", term):
        rhs = M2SystemRHS(3, ("network", "round14_bad"))
        kind = type(rhs.terms["round14_bad"]).__name__
        with pytest.raises(ConfigError) as caught:
            rhs(torch.rand(2, 3, 4, 8, 8))
    assert str(caught.value) == (
        f"the M2 right-hand-side term 'round14_bad' ({kind}) must return its part of du/dt in "
        f"the fields' shape (2, 3, 4, 8, 8), got {got}")


# ----------------------------------------------------------------------------- 6. invariants


@pytest.mark.parametrize("cast, got", [
    (lambda v: v.double(), "torch.float64"),
    (lambda v: v.to(torch.complex64), "torch.complex64"),
    (lambda v: v.to(torch.int64), "torch.int64"),
    (lambda v: v > 0, "torch.bool"),
])
def test_an_invariant_of_another_dtype_is_refused_at_construction(cast, got):
    invariant = Invariant("a", "a", "a", lambda d, ratio: cast(d.u_x * d.u_x + d.u_y * d.u_y))
    jet_dtype = "torch.float32" if got == "torch.float64" else "torch.float64"
    with pytest.raises(ConfigError) as caught:
        InvariantSet("round14_dtype", "SE(2)", 1, [invariant])
    assert str(caught.value) == (
        f"invariant set 'round14_dtype': invariant 'a' must return its map in the jet's dtype, "
        f"{jet_dtype} for this jet, got {got} (compute in the jet's dtype, or cast the result "
        f"back to it)")


def test_an_invariant_of_another_dtype_is_refused_at_the_call():
    calls = []

    def sometimes_double(d, ratio):  # passes the construction's jets, not a float16 one
        calls.append(d.u.dtype)
        value = d.u_x * d.u_x
        return value.double() if value.dtype == torch.float16 else value

    invariants = InvariantSet("round14_half", "SE(2)", 1,
                              [Invariant("a", "a", "a", sometimes_double)])
    with pytest.raises(ConfigError) as caught:
        invariants(torch.zeros(3, 4, 4, dtype=torch.float16))
    assert str(caught.value) == (
        "invariant set 'round14_half': invariant 'a' must return its map in the jet's dtype, "
        "torch.float16 for this jet, got torch.float64 (compute in the jet's dtype, or cast the "
        "result back to it)")
    assert calls == [torch.float64, torch.float32, torch.float16]


# ----------------------------------------------------------------------------- 7-8. own terms


class _NotEquivariant(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(0.5))

    def forward(self, u, system):
        return self.k * (torch.roll(u, 1, -1) - u)


class _Declared(_NotEquivariant):
    quarter_turn_equivariant = True


def _lifted(terms):
    return LiftedPDENet(LiftedPDEConfig(orientations=4, channels=[2], blocks=[1], terms=terms),
                        image_size=12)


def test_quarter_turn_invariance_is_claimed_only_for_known_terms():
    assert _lifted(["network", "diffusion"]).quarter_turn_invariant is True
    with registered(M2_TERMS, "round14_noneq", lambda c, *o, relative=False: _NotEquivariant()):
        model = _lifted(["network", "round14_noneq"])
        assert model.quarter_turn_invariant is False
    with registered(M2_TERMS, "round14_declared", lambda c, *o, relative=False: _Declared()):
        assert _lifted(["network", "round14_declared"]).quarter_turn_invariant is True
    assert m2_rhs.commutes_with_quarter_turns(_NotEquivariant()) is False
    assert m2_rhs.commutes_with_quarter_turns(_Declared()) is True


def test_describe_names_a_term_of_ones_own():
    from eqpdenet.analysis.describe import describe_m2_system
    with registered(M2_TERMS, "round14_noneq", lambda c, *o, relative=False: _NotEquivariant()):
        step = EulerStep(M2SystemRHS(2, ("diffusion", "round14_noneq"), orientations=4),
                         dt=0.5, name="block")
        lines = describe_m2_system(step).splitlines()
    assert lines[0] == "block: U <- U + 0.5 F(I(U)) on M2, 2 channels, F = diffusion + round14_noneq"
    assert ("  round14_noneq: a term of one's own (_NotEquivariant); its coefficients are not "
            "read out") in lines
