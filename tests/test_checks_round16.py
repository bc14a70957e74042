"""Round 16: an input holding NaN or inf was refused with the counts only; the message now also
gives the index of the first non-finite value (in the tensor's order) and the value."""

from __future__ import annotations

import pytest
import torch

from eqpdenet import PDELayer
from eqpdenet.errors import InputError
from eqpdenet.models import FCNN


def test_the_first_non_finite_value_is_named_with_its_index():
    x = torch.rand(2, 1, 5, 5)
    x[1, 0, 2, 3] = float("nan")
    x[1, 0, 4, 4] = float("-inf")
    with pytest.raises(InputError) as caught:
        PDELayer.build(["se2"])(x)
    assert str(caught.value) == (
        "u contains non-finite values (1 NaN, 1 inf of 50): the input is at fault, not the PDE "
        "scheme; check how it was produced (the first at index [1, 0, 2, 3]: nan)")


def test_an_inf_first_is_named_as_inf():
    x = torch.rand(1, 1, 28, 28)
    x[0, 0, 0, 5] = float("inf")
    with pytest.raises(InputError, match=r"\(the first at index \[0, 0, 0, 5\]: inf\)$"):
        FCNN(hidden=4)(x)
