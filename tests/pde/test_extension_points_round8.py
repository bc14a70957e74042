"""Extension points of the PDE layers (probe r8/p3): a user's F, invariant set, M2 term and the
other registries of eqpdenet.pde, refused in one line naming the piece where they cannot work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqpdenet import ConfigError
from eqpdenet.pde import INITS, LAYER_PRESETS, M2_TERMS, REDUCTIONS, RIGHT_HAND_SIDES
from eqpdenet.pde.integrators import EulerStep
from eqpdenet.pde.invariants import (
    INVARIANT_SETS,
    RATIO_REGULARISATIONS,
    Invariant,
    InvariantSet,
    get_invariant_set,
)
from eqpdenet.pde.layer import Concat, LayerConfig, Mean, PDELayer, make_reduction
from eqpdenet.pde.m2_rhs import M2SystemRHS, NetworkTerm
from eqpdenet.pde.rhs import InvariantRHS, PolynomialF, _linear, make_rhs
from helpers import registered


class MLPF(nn.Module):
    """A pointwise F that is not a MonomialF: ``w2 . tanh(W1 I + b1) + b2``."""

    def __init__(self, n_invariants, degree=1):
        super().__init__()
        self.l1 = nn.Conv2d(n_invariants, 4, 1)
        self.l2 = nn.Conv2d(4, 1, 1)
        nn.init.zeros_(self.l2.weight)
        nn.init.zeros_(self.l2.bias)

    def forward(self, invariants):
        shape = invariants.shape
        x = invariants.reshape(-1, shape[-3], shape[-2], shape[-1])
        return self.l2(torch.tanh(self.l1(x))).reshape(*shape[:-3], shape[-2], shape[-1])


def _u(d, ratio):
    return d.u


# ----------------------------------------------------------------------------- 1. a user's F


def test_user_F_builds_with_the_layer_defaults_and_keeps_its_own_initialisation():
    with registered(RIGHT_HAND_SIDES, "r8_mlp", MLPF):
        torch.manual_seed(0)
        layer = PDELayer.build(["se2", "scaling"], rhs="r8_mlp")  # init zeros, noise 0.01
        torch.manual_seed(0)
        own = MLPF(5)  # the same draws as the first PDE's F: no noise added, nothing set
        F = layer.pdes[0].step.rhs.F
        assert all(torch.equal(a, b) for a, b in zip(F.state_dict().values(),
                                                     own.state_dict().values(), strict=True))
        u = torch.rand(2, 1, 12, 12)
        torch.testing.assert_close(layer(u), u, rtol=0, atol=0)  # w2 = 0: identity map
        layer = PDELayer.from_config(LayerConfig(invariants=["se2"], rhs="r8_mlp", init_noise=0.0))
        assert isinstance(layer.pdes[0].step.rhs.F, MLPF)


def test_weight_init_of_a_user_F_is_one_config_error_when_configured():
    with registered(RIGHT_HAND_SIDES, "r8_mlp", MLPF):
        for init in ("heat", "normal"):
            with pytest.raises(ConfigError, match=rf"layer\.init: '{init}' sets the weights of a "
                                                  r"MonomialF; F of rhs = 'r8_mlp' \(MLPF\)"):
                LayerConfig(invariants=["se2"], rhs="r8_mlp", init=init)
        with pytest.raises(ConfigError, match=r"layer\.init_noise: 0\.05 is noise on the weights "
                                              r"of a MonomialF; .*\(MLPF\)"):
            PDELayer.build(["se2"], rhs="r8_mlp", init_noise=0.05)


def test_weight_init_of_a_user_F_built_by_a_function_is_refused_when_the_layer_is_built():
    # A builder that is no class: F's type is known only once built, before any init runs.
    with registered(RIGHT_HAND_SIDES, "r8_mlp_fn", lambda n, degree: MLPF(n)):
        config = LayerConfig(invariants=["se2"], rhs="r8_mlp_fn", init="heat")
        with pytest.raises(ConfigError, match=r"layer\.init: 'heat' .*\(MLPF\)"):
            PDELayer.from_config(config)


def test_user_init_declares_the_F_it_takes():
    def on_linear_only(F, invariant_set, scale, generator):
        F.weight.fill_(scale)

    on_linear_only.f_type = PolynomialF
    with registered(INITS, "r8_poly_only", on_linear_only):
        layer = PDELayer.build(["se2"], rhs="polynomial", degree=1, init="r8_poly_only",
                               init_scale=0.125, init_noise=0.0)
        assert layer.pdes[0].step.rhs.F.weight.tolist() == [0.125] * 5
        with pytest.raises(ConfigError, match=r"layer\.init: 'r8_poly_only' sets the weights of "
                                              r"a PolynomialF; F of rhs = 'linear' \(LinearF\)"):
            PDELayer.build(["se2"], init="r8_poly_only")


def test_right_hand_side_builders_are_checked():
    with pytest.raises(ConfigError, match=r"right-hand side 'r8_one' cannot be called as "
                                          r"builder\(n_invariants, degree\)"):
        RIGHT_HAND_SIDES.register("r8_one", lambda n: MLPF(n))
    assert "r8_one" not in RIGHT_HAND_SIDES
    with registered(RIGHT_HAND_SIDES, "r8_int", lambda n, degree: 3):
        with pytest.raises(ConfigError, match=r"right-hand side 'r8_int' must build F as an "
                                              r"nn\.Module.*returned int"):
            make_rhs("r8_int", 5)


def test_degree_rules_follow_the_builder_not_the_name():
    with registered(RIGHT_HAND_SIDES, "r8_poly", PolynomialF):
        with pytest.raises(ConfigError, match=r"layer\.degree: degree 50 in 5 invariants"):
            LayerConfig(invariants=["se2"], rhs="r8_poly", degree=50)
    with registered(RIGHT_HAND_SIDES, "r8_lin", _linear):
        with pytest.raises(ConfigError, match=r"layer\.degree: 2 has no effect on rhs = 'r8_lin'"):
            LayerConfig(invariants=["se2"], rhs="r8_lin", degree=2)


# ----------------------------------------------------------------------------- 2. stability


def test_stability_of_an_F_it_cannot_linearise_says_so():
    with registered(RIGHT_HAND_SIDES, "r8_mlp", MLPF):
        report = EulerStep(InvariantRHS("se2", "r8_mlp")).stability()
    assert report["stable"] is None and report["linear_part"] is None
    assert report["reason"].startswith("cannot check: InvariantRHS cannot linearise its F (MLPF)")
    assert "nothing to check" not in report["reason"]
    # the other reasons stand
    order1 = InvariantSet("r8_order1", "x", 1, [Invariant("grad", "g", "g",
                                                          lambda d, r: d.u_x**2 + d.u_y**2)])
    assert EulerStep(InvariantRHS(order1)).stability()["reason"] == (
        "nothing to check: no linear term of order >= 1 in F linearised at u = 0")


# ----------------------------------------------------------------------------- 3. invariant sets


def test_invariant_set_arguments_are_checked_when_made():
    good = Invariant("u", "u", "u", _u)
    with pytest.raises(ConfigError, match=r"invariant set 'o2': invariants\[1\] must be an "
                                          r"Invariant\(name, unicode, latex, function\), got "
                                          r"function"):
        InvariantSet("o2", "x", 2, [good, lambda d, r: d.u])
    with pytest.raises(ConfigError, match=r"invariant set 'o': order: the jet order must be an "
                                          r"integer in 0\.\.64, got '2'"):
        InvariantSet("o", "x", "2", [good])
    with pytest.raises(ConfigError, match=r"invariant set 'o': order: .* got True"):
        InvariantSet("o", "x", True, [good])
    with pytest.raises(ConfigError, match=r"invariant set 'o': invariants must be a sequence of "
                                          r"Invariant, got Invariant"):
        InvariantSet("o", "x", 2, good)
    with pytest.raises(ConfigError, match=r"invariant set 'o': invariant_under must be a "
                                          r"sequence"):
        InvariantSet("o", "x", 2, [good], invariant_under="rotations")
    with pytest.raises(ConfigError, match=r"invariant set 'o': group must be a string"):
        InvariantSet("o", 2, 2, [good])
    # order 0 (functions of u alone, as compile_invariants makes of "u") is a set
    assert InvariantSet("o0", "x", 0, [good]).order == 0


def test_invariants_are_checked_when_made():
    with pytest.raises(ConfigError, match=r"invariant 'u': function must be callable as "
                                          r"function\(d, ratio\)"):
        Invariant("u", "u", "u", lambda d: d.u)
    with pytest.raises(ConfigError, match=r"invariant 'u': function must be callable"):
        Invariant("u", "u", "u", 3)
    with pytest.raises(ConfigError, match=r"invariant's name must be a non-empty string"):
        Invariant("", "u", "u", _u)


def test_invariant_of_the_wrong_order_or_map_count_is_refused_when_the_set_is_made():
    with pytest.raises(ConfigError, match=r"invariant set 'r8_order': invariant 'uxx' fails on "
                                          r"the zero jet of the set's order 1: InputError: u_xx "
                                          r"needs a higher-order jet.*raise the set's order"):
        InvariantSet("r8_order", "x", 1, [Invariant("uxx", "u", "u", lambda d, r: d.u_xx)])
    with pytest.raises(ConfigError, match=r"invariant set 'r8_two': invariant 'uu' must return "
                                          r"one map of the jet's shape, \(1, 1\) for a jet "
                                          r"\(6, 1, 1\), got shape \(2, 1, 1\)"):
        InvariantSet("r8_two", "x", 2, [
            Invariant("uu", "u", "u", lambda d, r: torch.stack([d.u, d.u], -3))])
    with pytest.raises(ConfigError, match=r"invariant 'n' must return one map .* got float"):
        InvariantSet("r8_float", "x", 2, [Invariant("n", "n", "n", lambda d, r: 1.0)])


def test_wrong_map_shape_at_the_first_forward_names_the_set_and_the_invariant():
    # right on 1 x 1 maps (so the set is made), wrong on larger ones
    bad = InvariantSet("r8_bad_shape", "x", 2, [
        Invariant("u5", "u", "u", lambda d, r: d.u[..., :5, :]), Invariant("v", "v", "v", _u)])
    layer = PDELayer.build([bad], init_noise=0.0, backend="reference")
    with pytest.raises(ConfigError, match=r"invariant set 'r8_bad_shape': invariant 'u5' must "
                                          r"return one map of the jet's shape, \(2, 1, 28, 28\) "
                                          r"for a jet \(2, 1, 6, 28, 28\), got shape "
                                          r"\(2, 1, 5, 28\)"):
        layer(torch.rand(2, 1, 28, 28))


def test_valid_sets_compute_what_they_did():
    jet = torch.randn(2, 3, 6, 7, 7, dtype=torch.float64)
    se2 = get_invariant_set("se2")
    from eqpdenet.pde.invariants import Derivatives, RatioRegularisation

    d, ratio = Derivatives(jet), RatioRegularisation()
    expected = torch.stack([inv.function(d, ratio) for inv in se2.invariants], dim=-3)
    assert torch.equal(se2(jet), expected)


def test_saving_a_replaced_set_names_it_and_copies_still_work(tmp_path):
    mine = InvariantSet("r8_mine", "x", 2, [Invariant("u", "u", "u", lambda d, r: d.u)])
    with registered(INVARIANT_SETS, "r8_mine", mine):
        layer = PDELayer.build(["r8_mine"], init_noise=0.0)
        torch.save(layer, tmp_path / "registered.pt")  # by name
        other = InvariantSet("r8_mine", "y", 2, [Invariant("v", "v", "v", _u)])
        with registered(INVARIANT_SETS, "r8_mine", other, replace=True):
            with pytest.raises(ConfigError, match=r"invariant set 'r8_mine' cannot be pickled "
                                                  r"\(torch\.save\): it is not the set registered "
                                                  r"under its name .* invariant 'u' cannot be"):
                torch.save(layer, tmp_path / "replaced.pt")
            import copy

            assert copy.deepcopy(mine) is not mine and copy.deepcopy(mine).names == ("u",)
            assert copy.copy(mine).invariants == mine.invariants
    # a set of module-level functions pickles by value, unregistered
    plain = InvariantSet("r8_plain", "x", 2, [Invariant("u", "u", "u", _u)])
    torch.save(PDELayer.build([plain], init_noise=0.0), tmp_path / "plain.pt")


def test_only_invariant_sets_are_registered():
    with pytest.raises(ConfigError, match=r"must be an InvariantSet, got function"):
        INVARIANT_SETS.register("r8_fn", lambda jet: jet)
    assert "r8_fn" not in INVARIANT_SETS


def test_ratio_regularisations_are_checked():
    with pytest.raises(ConfigError, match=r"ratio regularisation 'r8_two' cannot be called as "
                                          r"ratio\(a, b, eps, reference_sq\)"):
        RATIO_REGULARISATIONS.register("r8_two", lambda a, b: a / b)


# ----------------------------------------------------------------------------- 4. M2 terms


class TanhTerm(nn.Module):
    def __init__(self, channels, hidden, normalize_invariants, normalize_hidden, *, relative=False):
        super().__init__()
        self.w = nn.Parameter(torch.full((channels, channels * 10), 0.01))

    def forward(self, u, system):
        b, c, n, h, w = u.shape
        inv = system.invariants(u).reshape(b, c * 10, n * h * w)
        return torch.matmul(self.w, torch.tanh(inv)).view(b, c, n, h, w)


def test_m2_term_builders_are_checked_when_registered():
    with pytest.raises(ConfigError, match=r"M2 right-hand-side term 'r8_badsig' cannot be called "
                                          r"as term\(channels, hidden, normalize_invariants, "
                                          r"normalize_hidden, \*, relative\): too many positional"):
        M2_TERMS.register("r8_badsig", lambda channels: nn.Identity())
    with pytest.raises(ConfigError, match=r"'r8_norel' cannot be called as .*'relative'"):
        M2_TERMS.register("r8_norel", lambda channels, *options: nn.Identity())
    assert "r8_badsig" not in M2_TERMS and "r8_norel" not in M2_TERMS


def test_m2_terms_are_checked_when_built():
    with registered(M2_TERMS, "r8_int", lambda *args, **kwargs: 3):
        with pytest.raises(ConfigError, match=r"M2 right-hand-side term 'r8_int' must be built "
                                              r"as an nn\.Module, its builder returned int"):
            M2SystemRHS(2, "r8_int")
    with registered(M2_TERMS, "r8_one_arg", lambda *args, **kwargs: nn.Identity()):
        with pytest.raises(ConfigError, match=r"term 'r8_one_arg' \(Identity\) must be called as "
                                              r"term\(u, system\)"):
            M2SystemRHS(2, "r8_one_arg")


def test_a_replaced_network_term_takes_the_general_path():
    with registered(M2_TERMS, "network", TanhTerm, replace=True):
        rhs = M2SystemRHS(2, "network")
    assert type(rhs.terms["network"]) is TanhTerm
    u = torch.rand(1, 2, 4, 6, 6)
    assert rhs.euler_step(u, 0.1) is None
    step = EulerStep(rhs, 0.1)(u)
    assert torch.equal(step, u + 0.1 * rhs(u))
    assert M2_TERMS.get("network") is NetworkTerm


def test_the_fused_step_follows_the_term_type_not_its_name():
    u = torch.rand(1, 2, 4, 6, 6)
    torch.manual_seed(1)
    builtin = M2SystemRHS(2, "network", normalize_hidden=False)
    with registered(M2_TERMS, "r8_net", NetworkTerm):
        renamed = M2SystemRHS(2, "r8_net", normalize_hidden=False)
    renamed.terms["r8_net"].load_state_dict(builtin.terms["network"].state_dict())
    with torch.no_grad():
        for rhs in (builtin, renamed):
            rhs.terms[rhs.term_names[0]].out.weight.fill_(0.05)
        fused = builtin.euler_step(u, 0.1)
        if fused is None:
            pytest.skip("no fused M2 operator on this machine")
        assert torch.equal(renamed.euler_step(u, 0.1), fused)


def test_builtin_layer_noise_is_unchanged():
    torch.manual_seed(3)
    layer = PDELayer.build(["se2", "scaling"])
    generator = torch.Generator().manual_seed(3 + 7919)
    for pde, size in zip(layer.pdes, (5, 6), strict=True):
        assert torch.equal(pde.step.rhs.F.weight.detach(), 0.01 * torch.randn(size, generator=generator))


# ----------------------------------------------------------------------------- siblings


def test_reductions_are_checked_and_read_by_type():
    with pytest.raises(ConfigError, match=r"reduction 'r8_none' cannot be called as "
                                          r"factory\(n_pdes\)"):
        REDUCTIONS.register("r8_none", lambda: Mean())
    with registered(REDUCTIONS, "r8_int", lambda n: 3):
        with pytest.raises(ConfigError, match=r"reduction 'r8_int' must be built as an "
                                              r"nn\.Module, its factory returned int"):
            make_reduction("r8_int", 2)


def test_out_channels_follow_the_reduction_type_not_its_name():
    with registered(REDUCTIONS, "r8_stack", lambda n: Concat()):
        layer = PDELayer.build(["se2", "se2"], reduction="r8_stack", init_noise=0.0)
        assert layer.out_channels(3) == 6
        assert layer(torch.rand(1, 3, 8, 8)).shape == (1, 6, 8, 8)
    assert PDELayer.build(["se2", "se2"], reduction="concat").out_channels(3) == 6
    assert PDELayer.build(["se2", "se2"]).out_channels(3) == 3


def test_inits_and_presets_are_checked():
    with pytest.raises(ConfigError, match=r"initialisation 'r8_init' cannot be called as "
                                          r"init\(F, invariant_set, scale, generator\)"):
        INITS.register("r8_init", lambda F: None)
    with pytest.raises(ConfigError, match=r"layer preset 'r8_preset' cannot be called as "
                                          r"factory\(\*\*options\)"):
        LAYER_PRESETS.register("r8_preset", lambda: LayerConfig())
    with registered(LAYER_PRESETS, "r8_dict", lambda **options: dict(options)):
        with pytest.raises(ConfigError, match=r"layer preset 'r8_dict': its factory must return "
                                              r"a LayerConfig, got dict"):
            LayerConfig.preset("r8_dict")


def test_describe_writes_a_user_F_as_its_class_of_the_invariants():
    """describe read F.weight: a raw AttributeError for an F of one's own."""
    from eqpdenet.analysis.describe import describe_layer, pde_formula

    with registered(RIGHT_HAND_SIDES, "r8_mlp", MLPF):
        torch.manual_seed(0)
        layer = PDELayer.build(["se2"], rhs="r8_mlp")
        pde = layer.pdes[0]
        names = [inv.unicode for inv in get_invariant_set("se2").invariants]
        assert pde_formula(pde) == f"∂t u = MLPF({', '.join(names)})"
        assert pde_formula(pde, "latex").startswith(r"\partial_t u = MLPF(")
        assert f"MLPF({', '.join(names)})" in describe_layer(layer)
