"""Round 21 (an outside probe, p5): the per-stage lists and a field turned by quarter turns.

* ``channels = []`` was refused as ``lifted_pde.blocks: needs one entry per entry of
  lifted_pde.channels``, naming the field the user had not set; lists of different lengths named
  ``blocks`` alone. The same in ``invariant_pde`` and (``kernels``) in ``gcnn``.
* ``pde.m2.rotate_field`` turned a field on ``N = 6`` orientations by 90 degrees in the plane and
  60 in orientation (``N // 4`` steps), without a word.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqpdenet.errors import ConfigError, InputError
from eqpdenet.models.gcnn import GCNNConfig
from eqpdenet.models.invariant_pde import InvariantPDEConfig
from eqpdenet.models.lifted_pde import LiftedPDEConfig
from eqpdenet.pde.m2 import rotate_field


@pytest.mark.parametrize("config_type, prefix, second, what", [
    (LiftedPDEConfig, "lifted_pde", "blocks", "stage"),
    (InvariantPDEConfig, "invariant_pde", "blocks", "stage"),
    (GCNNConfig, "gcnn", "kernels", "layer"),
])
def test_the_per_stage_lists_name_the_field_that_is_wrong(config_type, prefix, second, what):
    with pytest.raises(ConfigError) as caught:
        config_type(channels=[], **{second: []})
    assert str(caught.value) == (f"invalid config: {prefix}.channels: must hold at least one "
                                 f"entry (one per {what}), got []")
    with pytest.raises(ConfigError) as caught:
        config_type(channels=[4, 8], **{second: [1, 3, 3]})
    assert str(caught.value) == (f"invalid config: {prefix}.channels / {prefix}.{second}: need "
                                 f"one entry each per {what}: channels [4, 8] has 2, {second} "
                                 f"[1, 3, 3] has 3")
    assert config_type(channels=[4, 8, 8], **{second: [3, 3, 3]}).channels == [4, 8, 8]


def test_a_quarter_turn_shifts_the_orientations_by_a_quarter_of_them():
    field = torch.arange(2 * 8 * 3 * 3, dtype=torch.float64).view(2, 8, 3, 3)
    turned = rotate_field(field, 1)
    assert torch.equal(turned[:, 2], torch.rot90(field[:, 0], 1, (-2, -1)))
    assert torch.equal(rotate_field(field, np.int64(4)), field)
    assert torch.equal(rotate_field(rotate_field(field, 3), 1), field)


@pytest.mark.parametrize("n, turns", [(6, 1), (2, 1), (10, 3), (6, -1), (1, 2)])
def test_a_turn_that_does_not_map_the_orientations_onto_themselves_is_refused(n, turns):
    with pytest.raises(InputError) as caught:
        rotate_field(torch.zeros(1, n, 4, 4), turns)
    assert str(caught.value) == (
        f"rotate_field: a rotation by {turns} quarter turn(s) does not map {n} orientations onto "
        f"themselves ({turns} x {n} / 4 is not a whole number of orientations); fields on a "
        f"multiple of 4 orientations turn by any number of quarter turns")


@pytest.mark.parametrize("n, turns", [(6, 2), (2, 2), (3, 4)])
def test_a_turn_that_maps_the_orientations_onto_themselves_is_taken(n, turns):
    field = torch.rand(1, n, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = torch.roll(torch.rot90(field, turns, (-2, -1)), turns * n // 4, dims=-3)
    assert torch.equal(rotate_field(field, turns), expected)


@pytest.mark.parametrize("u, turns, message", [
    (torch.zeros(4, 4), 1, "rotate_field takes a field (..., orientations, height, width), got "
                           "(4, 4)"),
    (torch.zeros(1, 4, 4, 4), 1.0, "rotate_field: quarter_turns must be a whole number, got 1.0"),
    (torch.zeros(1, 4, 4, 4), True, "rotate_field: quarter_turns must be a whole number, got "
                                    "True"),
])
def test_rotate_field_refuses_what_is_no_field_or_no_turn(u, turns, message):
    with pytest.raises(InputError) as caught:
        rotate_field(u, turns)
    assert str(caught.value) == message
