"""The configuration checks and the memory estimate read an M2 term's builder, not its name
(round 9: both read the name ``"network"``, while the fused dispatch reads the built type); the
groups of joint invariants are sealed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqpdenet.app.config import ExperimentConfig, apply_overrides, fields_without_effect
from eqpdenet.errors import ConfigError
from eqpdenet.models.lifted_pde import LiftedPDEConfig, LiftedPDENet
from eqpdenet.pde.joint import JOINT_GROUPS
from eqpdenet.pde.m2_rhs import M2_TERMS, NetworkTerm, is_network_term, term_uses_options
from helpers import registered


class HiddenTerm(nn.Module):
    """A term of one's own whose width is ``hidden``: that option acts on it."""

    def __init__(self, channels, hidden, normalize_invariants, normalize_hidden, *,
                 relative=False):
        super().__init__()
        self.mix = nn.Linear(channels, hidden)
        self.out = nn.Linear(hidden, channels)

    def forward(self, u, system):
        return self.out(torch.tanh(self.mix(u.movedim(1, -1)))).movedim(-1, 1)


def _hidden_lines(terms):
    config = apply_overrides(ExperimentConfig(), [
        "model.kind='lifted_pde'", f"model.lifted_pde.terms={terms!r}",
        "model.lifted_pde.hidden=3.0"])
    return [line for line in fields_without_effect(config) if "lifted_pde.hidden" in line]


def test_the_builtin_terms_are_classified_by_their_builders():
    assert is_network_term("network") and term_uses_options("network")
    for name in ("convection", "diffusion", "dilation", "erosion", "linear"):
        assert not is_network_term(name) and not term_uses_options(name)
    assert term_uses_options("no-such-term") and not is_network_term("no-such-term")


def test_hidden_is_inert_only_where_no_term_can_use_it():
    assert len(_hidden_lines(["diffusion"])) == 1
    assert _hidden_lines(["network", "diffusion"]) == []
    # a term of one's own is given hidden: never called inert, whatever its name
    with registered(M2_TERMS, "r9_hidden", HiddenTerm):
        assert _hidden_lines(["r9_hidden"]) == []
    with registered(M2_TERMS, "diffusion", HiddenTerm, replace=True):
        assert _hidden_lines(["diffusion"]) == []
        assert not is_network_term("diffusion") and term_uses_options("diffusion")
    assert len(_hidden_lines(["diffusion"])) == 1  # the built-in back


def test_the_memory_estimate_takes_the_fused_factor_only_for_the_network_term_type():
    config = LiftedPDEConfig(channels=[4], blocks=[1], terms=["network"])
    fused = LiftedPDENet(config, classes=3, image_size=12).backward_bytes(8)
    with registered(M2_TERMS, "network", HiddenTerm, replace=True):
        replaced = LiftedPDENet(config, classes=3, image_size=12).backward_bytes(8)
    with registered(M2_TERMS, "r9_net", NetworkTerm):
        renamed = LiftedPDENet(LiftedPDEConfig(channels=[4], blocks=[1], terms=["r9_net"]),
                               classes=3, image_size=12).backward_bytes(8)
    # another term under the name "network" writes the invariants out: not the fused factor
    assert replaced > 5 * fused
    # the network term under another name is fused like the built-in one
    assert renamed == fused
    assert M2_TERMS.get("network") is NetworkTerm


def test_the_joint_groups_refuse_a_group_they_have_no_invariants_for():
    with pytest.raises(ConfigError, match=r"joint invariants are derived for SE\(2\) and SIM\(2\) "
                                          r"only; for another group register an InvariantSet"):
        JOINT_GROUPS.register("affine", object())
    with pytest.raises(ConfigError, match="no joint invariant group can be registered"):
        JOINT_GROUPS.register("se2", JOINT_GROUPS.get("sim2"), replace=True)
    assert JOINT_GROUPS.names() == ("se2", "sim2")
    assert JOINT_GROUPS.get("se2").scale_invariant is False
