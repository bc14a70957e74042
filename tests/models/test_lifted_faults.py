"""Faults of the lifted (M2) family found by probing, each held fixed here: size checks that
built a stencil per candidate size, an unbounded low-pass, hooks the fused paths skipped,
silent NaN logits, float32 returned for float16 input, multi-scale export, ``eye`` in an ONNX
graph, and loose argument checks."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import eqpdenet.pde.m2 as m2
from eqpdenet.errors import ConfigError, InputError, NonFiniteStateError
from eqpdenet.models import LiftedPDEConfig, LiftedPDENet, M2Lift
from eqpdenet.pde.integrators import EulerStep
from eqpdenet.pde.m2 import gaussian_radius
from eqpdenet.pde.m2_rhs import M2SystemRHS
from eqpdenet.pde.stencils import gaussian_derivative_weights

# ----------------------------------------------------------------------------- sizes (fault 1)


@pytest.mark.parametrize("sigma", [0.5, 0.51, 0.7, 1.0, 1.25, 2.0, 3.3, 7.9])
def test_the_closed_form_radius_is_the_stencils(sigma):
    sizes = {gaussian_derivative_weights(a, sigma, 2).size for a in range(3)}
    assert sizes == {2 * gaussian_radius(sigma) + 1}


def test_a_huge_sigma_is_refused_without_building_a_stencil(monkeypatch):
    """min_image_size tried sizes 1, 2, 3, ... and built the stencil at each: sigma = 1000 took
    74 s before its ConfigError, 1e4 never ended. Now no stencil is built to size the model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a stencil was built to measure its radius")

    monkeypatch.setattr(m2, "gaussian_derivative_weights", refuse)
    config = LiftedPDEConfig(sigma=1e4)
    assert config.radius() == 40_000
    with pytest.raises(ConfigError, match=r"image_size: 28 pixels is too small for this model: it "
                                          r"needs images of at least 160001x160001 \(every "
                                          r"stage's maps larger than the radius 40000"):
        LiftedPDENet(config)


@pytest.mark.parametrize("downsample", ["blur", "pool", "none"])
@pytest.mark.parametrize("margin", [0, 3])
@pytest.mark.parametrize("sigma, scales, stages", [(0.5, 1, 1), (1.0, 1, 3), (1.3, 2, 4)])
def test_min_image_size_is_the_smallest_size_that_fits(downsample, margin, sigma, scales, stages):
    config = LiftedPDEConfig(channels=[2] * stages, blocks=[1] * stages, sigma=sigma,
                             scales=scales, downsample=downsample, margin=margin)
    radius = config.radius()
    size = 1  # the definition, by brute force
    while any(s <= radius for s in config.stage_sizes(size)):
        size += 1
    assert config.min_image_size() == size


# ----------------------------------------------------------------------------- low-pass (fault 2)


def test_a_low_pass_wider_than_its_map_is_refused_when_the_model_is_built():
    """downsample_sigma = 1e6 was accepted, then took minutes and ran out of memory in the
    first forward pass (now above the bound of every low-pass, 1e4: tests/models/test_pooling.py).
    The 16-pixel map before stage 1 takes a radius of at most 15 px."""
    with pytest.raises(ConfigError, match=r"lifted_pde.downsample_sigma: the low-pass of std "
                                          r"1000 px reaches 3000 px either side, as far as "
                                          r"the 16x16 maps it would filter \(stage sizes \[16, 8\] "
                                          r"for images of 16 px\); use at most 5 px"):
        LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=[1, 1], downsample_sigma=1000.0),
                     image_size=16)
    with pytest.raises(ConfigError, match="lifted_pde.downsample_sigma"):
        LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=[1, 1], downsample_sigma=5.01),
                     image_size=16)
    for boundary in ("reflect", "circular"):  # the largest accepted: padding is defined
        net = LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=[1, 1], downsample_sigma=5.0,
                                           boundary=boundary), image_size=16)
        assert net(torch.rand(2, 1, 16, 16)).shape == (2, 10)
    # no downsampling, or none with a low-pass: any sigma up to the bound of every low-pass
    LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=[1, 1], downsample="pool",
                                 downsample_sigma=1e4), image_size=16)
    LiftedPDENet(LiftedPDEConfig(channels=[3], blocks=[1], downsample_sigma=1e4), image_size=16)


# ----------------------------------------------------------------------------- hooks (fault 3)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("normalize_hidden", [True, False])
@pytest.mark.parametrize("boundary", ["replicate", "background"])
def test_hooks_on_a_lifted_models_pieces_fire_and_change_nothing(backend, normalize_hidden,
                                                                 boundary):
    """With the fused paths no hook on a block fired (and on mix not even with the reference);
    now a hook sends the model down the reference path, which calls every module."""
    torch.manual_seed(0)
    net = LiftedPDENet(LiftedPDEConfig(channels=[4, 6], blocks=[1, 1], backend=backend,
                                       normalize_hidden=normalize_hidden, boundary=boundary),
                       image_size=16).double()
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    expected = net(x)
    calls = []
    rhs = net.stages[0][0].rhs
    network = rhs.terms["network"]
    pieces = {"rhs": rhs, "jet": rhs.jet, "mix": network.mix, "out": network.out,
              "lift.mix": net.lift.mix, "lift.norm": net.lift.norm,
              "lift.out_norm": net.lift.out_norm}
    handles = [module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
               for name, module in pieces.items()]
    got = net(x)
    assert set(calls) == set(pieces)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    for handle in handles:
        handle.remove()
    calls.clear()
    net(x)
    assert calls == []


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("which", ["mix", "out"])
def test_old_style_weight_norm_on_a_blocks_layers_trains(backend, which):
    """torch.nn.utils.weight_norm (a forward pre-hook that recomputes weight) on mix or out:
    "Trying to backward through the graph a second time" at the second step, as the fused path
    (and for mix the reference) read the weight without calling the module."""
    torch.manual_seed(0)
    net = LiftedPDENet(LiftedPDEConfig(channels=[4], blocks=[1], backend=backend), image_size=16)
    layer = getattr(net.stages[0][0].rhs.terms["network"], which)
    with pytest.warns(FutureWarning):
        torch.nn.utils.weight_norm(layer)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        assert layer.weight_v.grad is not None and float(layer.weight_v.grad.norm()) > 0
        optimizer.step()
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------- states (fault 4)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("terms", [["network"], ["diffusion"]])
def test_a_block_that_blows_up_is_named_never_nan_logits(backend, terms):
    torch.manual_seed(0)
    net = LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=[1, 2], terms=terms,
                                       backend=backend), image_size=16)
    x = torch.rand(2, 1, 16, 16)
    assert torch.isfinite(net(x)).all()
    term = net.stages[1][3].rhs.terms[terms[0]]  # stage1.block1, the last block
    with torch.no_grad():
        (term.out.weight if terms == ["network"] else term.weight).fill_(float("inf"))
    values = re.escape(f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")
    with pytest.raises(NonFiniteStateError, match=r"PDE 'stage1.block1' produced a non-finite "
                                                  r"state \(NaN or inf\) at Euler step 1 "
                                                  r"\(dt=1.0\).*The input was finite, with values "
                                                  r"in " + values):
        net(x)
    with pytest.raises(NonFiniteStateError, match="PDE 'stage1.block1'"):
        net.projected_fields(x)


# ----------------------------------------------------------------------------- dtypes (fault 5)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_lifted_pieces_return_the_inputs_lower_precision(backend):
    """float16 in gave float32 out: M2SystemRHS had no enter for EulerStep to find, and M2Lift
    never converted back. Now as the planar pieces: computed in float32, returned in float16."""
    torch.manual_seed(0)
    lift = M2Lift(1, 3, 8, 1.0, "replicate", backend=backend)
    f = torch.rand(2, 1, 12, 12).half()
    assert lift(f).dtype == torch.float16
    torch.testing.assert_close(lift(f), lift(f.float()).half(), rtol=0, atol=0)
    u = torch.randn(2, 3, 8, 12, 12).half()
    for terms in (("network",), ("diffusion",)):
        rhs = M2SystemRHS(3, terms, backend=backend)
        for piece in (rhs, EulerStep(rhs, 1.0)):
            assert piece(u).dtype == torch.float16
            torch.testing.assert_close(piece(u), piece(u.float()).half(), rtol=0, atol=0)
    fused = M2SystemRHS(3, backend=backend).euler_step(u, 1.0)
    assert fused is None or fused.dtype == torch.float16
    rhs = M2SystemRHS(3, backend=backend)  # its readings, called alone: the same rule
    weight = torch.randn(4, 3, 10)
    torch.testing.assert_close(rhs.invariants(u), rhs.invariants(u.float()).half(), rtol=0, atol=0)
    torch.testing.assert_close(rhs.mixed_invariants(u, weight),
                               rhs.mixed_invariants(u.float(), weight).half(), rtol=0, atol=0)


def test_an_m2_system_alone_checks_its_values_once():
    rhs = M2SystemRHS(3)
    u = torch.rand(2, 3, 8, 12, 12)
    u[0, 0, 0, 0, 0] = float("nan")
    for piece in (rhs, EulerStep(rhs, 1.0)):
        with pytest.raises(InputError, match=r"u contains non-finite values \(1 NaN, 0 inf"):
            piece(u)


# ----------------------------------------------------------------------------- export (6, 7)
# (The lift's ONNX graph without an Equal node: tests/test_export.py, every family.)


def test_the_lift_keeps_its_identity_out_of_the_state_dict():
    lift = M2Lift(2, 3, 8, 1.0, "replicate")
    assert "channel_identity" not in lift.state_dict()
    torch.testing.assert_close(lift.channel_identity, torch.eye(2))


# ----------------------------------------------------------------------------- arguments (8)


def test_the_model_takes_a_mapping_of_its_options_and_names_a_wrong_one():
    net = LiftedPDENet({"channels": [4], "blocks": [1]}, image_size=16)
    assert net.config == LiftedPDEConfig(channels=[4], blocks=[1])
    with pytest.raises(ConfigError, match=r"lifted_pde: unknown field\(s\) chanels; the fields "
                                          r"are backend, blocks, "):
        LiftedPDENet({"chanels": [4]})
    with pytest.raises(ConfigError, match="lifted_pde: must be a LiftedPDEConfig or a mapping "
                                          "of its fields, got list"):
        LiftedPDENet([4])


def test_an_m2_system_takes_one_term_by_name_and_refuses_other_orientation_counts():
    assert M2SystemRHS(2, terms="network").term_names == ("network",)
    assert M2SystemRHS(2, terms="diffusion").term_names == ("diffusion",)
    rhs = M2SystemRHS(2)
    for n in (0, 1, 2, 6):
        for piece in (rhs, EulerStep(rhs, 1.0)):
            with pytest.raises(InputError, match=f"takes fields on a positive multiple of 4 "
                                                 f"orientations .*got {n} in shape"):
                piece(torch.rand(1, 2, n, 12, 12))
    assert rhs(torch.rand(1, 2, 4, 12, 12)).shape == (1, 2, 4, 12, 12)
