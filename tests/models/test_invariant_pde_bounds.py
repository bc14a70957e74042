"""The deep invariant-PDE model's invariant maps are bounded in its configuration, before any
module is built (session of 2026-12-06: channels = [400, 24, 32] with joint = "all" set up 32
million maps for 90 s, then ran out of memory blaming the batch size)."""

from __future__ import annotations

import time

import pytest

from eqpdenet.errors import ConfigError
from eqpdenet.models.invariant_pde import InvariantPDEConfig


@pytest.mark.parametrize(("options", "message"), [
    ({"channels": [400, 24, 32], "joint": "all"},
     r"^invalid config: invariant_pde.channels\[0\]: joint='all' \(every pair and triple\) of 400 "
     r"channels: 32,321,000 invariant maps, more than the bound of 20,000 \(all pairs of 32 "
     r"channels: 18,512\); use joint='mixtures'"),
    ({"channels": [12, 24, 40], "joint": "all", "group": "sim2"},
     r"invariant_pde.channels\[2\]: .* of 40 channels: 35,299 invariant maps"),
    ({"joint": "mixtures", "mixtures": 40},
     r"invariant_pde.mixtures: joint='mixtures' with mixtures=40 of 12 channels: 35,280"),
    ({"channels": [5000], "blocks": [1]}, r"invariant_pde.channels\[0\]: the invariants of each "
                                          r"channel of 5,000 channels: 25,000"),
])
def test_the_invariant_maps_are_bounded_in_the_config(options, message):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        InvariantPDEConfig(**options)
    assert time.perf_counter() - start < 0.1


def test_the_default_widths_take_every_form():
    for joint in ("channel", "mixtures", "all"):
        InvariantPDEConfig(joint=joint)  # [12, 24, 32]: all pairs of 32 channels, 18,512 maps
