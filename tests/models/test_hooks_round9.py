"""Hooks on the modules a researcher reaches for (round 9): the stages of the deep models (a
feature extractor, Grad-CAM) and a per-channel invariant module were never called as modules,
so their hooks never fired and a pre-hook changing a stage's input was ignored, without a word;
the G-CNN's forward ignored every warning raised inside it (and, from two threads, in the
whole process: ``warnings.catch_warnings`` is not thread-safe)."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqpdenet.app.config import (
    InvariantPDEConfig,
    LiftedPDEConfig,
    ModelConfig,
    build_model,
)
from eqpdenet.errors import NonFiniteStateError
from eqpdenet.pde.rhs import PerChannelInvariants

FAMILIES = {
    "invariant_pde": lambda: ModelConfig(kind="invariant_pde", image_size=12, invariant_pde=(
        InvariantPDEConfig(channels=[3, 4], blocks=[2, 1]))),
    "lifted_pde": lambda: ModelConfig(kind="lifted_pde", image_size=12, lifted_pde=(
        LiftedPDEConfig(orientations=4, channels=[2, 3], blocks=[2, 1]))),
}


def built(kind):
    torch.manual_seed(0)
    return build_model(FAMILIES[kind]()).eval()


def images():
    return torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_hooks_on_the_stages_fire_and_leave_the_logits(kind):
    model = built(kind)
    with torch.no_grad():
        expected = model(images())
        seen = []
        handles = [model.stages.register_forward_hook(
            lambda m, args, out: seen.append(("stages", tuple(out.shape))))]
        for index, stage in enumerate(model.stages):
            handles.append(stage.register_forward_hook(
                lambda m, args, out, index=index: seen.append((index, tuple(out.shape)))))
        got = model(images())
    assert [name for name, _ in seen] == [0, 1, "stages"]
    assert seen[1][1] == seen[2][1] and seen[0][1][0] == 2
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_a_pre_hook_on_a_stage_changes_its_input(kind):
    model = built(kind)
    with torch.no_grad():
        plain = model(images())
        model.stages[1].register_forward_pre_hook(lambda m, args: (args[0] * 0,))
        zeroed = model(images())
    assert not torch.allclose(zeroed, plain, atol=1e-3)


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_a_hooked_stage_is_still_checked_for_non_finite_states(kind):
    model = built(kind)
    model.stages[0].register_forward_hook(lambda m, args, out: out * float("inf"))
    with torch.no_grad(), pytest.raises(NonFiniteStateError,
                                        match=r"stage0.block0 \.\. stage0.block1 \(hooked"):
        model(images())


def test_a_hook_on_the_per_channel_invariants_fires_and_gives_the_same_maps():
    invariants = PerChannelInvariants(3)
    jet = torch.rand(2, 3, 6, 5, 5, dtype=torch.float64)
    shortcut = invariants(jet)
    calls = []
    invariants.one.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    hooked = invariants(jet)
    assert len(calls) == 1
    torch.testing.assert_close(hooked, shortcut, rtol=1e-12, atol=1e-12)


def test_a_warning_inside_the_gcnn_forward_reaches_the_user():
    pytest.importorskip("e2cnn")
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="gcnn", image_size=12))
    first = next(iter(model.features.children()))
    first.register_forward_hook(lambda m, args, out: warnings.warn("from a hook", UserWarning, stacklevel=1))
    filters = warnings.filters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(images())
    assert [str(w.message) for w in caught] == ["from a hook"]
    assert warnings.filters is filters
