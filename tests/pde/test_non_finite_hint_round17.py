"""Round 17: a ``NonFiniteStateError`` that blames the scheme names the grid spacing where it is
not 1, and the range the PDE received where a model standardised its input (an outside probe:
a layer at spacing 1e-3 blew up at step 2, and the message quoted the raw images' [0, 1] and
advised a lower dt without saying why the spacing mattered)."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqpdenet.errors import NonFiniteStateError
from eqpdenet.models import build_model
from eqpdenet.pde.layer import LayerConfig, PDELayer

SPACING_NOTE = ("The grid spacing is 0.001: a derivative of order k scales as spacing^-k, so the "
                "explicit Euler bound on dt shrinks with the spacing (as its square for a "
                "diffusion; EulerStep.stability() gives the bound).")


def _images() -> torch.Tensor:
    # exact values: 0 and 1 at known places
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0
    return x


def test_a_layer_names_its_spacing():
    torch.manual_seed(0)
    layer = PDELayer.build(["se2"], T=1.0, dt=0.1, spacing=1e-3)
    with pytest.raises(NonFiniteStateError) as error:
        layer(_images())
    message = str(error.value)
    assert ("(The input was finite, with values in [0, 1]: if that is not the range the PDE was "
            "made for, rescale the input.) " + SPACING_NOTE) in message
    # at unit spacing the same layer is stable, and nothing names a spacing
    layer = PDELayer.build(["se2"], T=1.0, dt=0.1)
    assert torch.isfinite(layer(_images())).all()


def test_a_model_quotes_the_range_its_pde_received():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("eqpdenet", hidden=8, input_mean=0.5, input_std=0.25,
                            layer=LayerConfig(invariants=["se2"], spacing=1e-3))
    with pytest.raises(NonFiniteStateError) as error:
        model(_images())
    # (0 - 0.5) / 0.25 = -2 and (1 - 0.5) / 0.25 = 2
    assert ("(The input was finite, with values in [-2, 2] as the PDE received them, "
            "standardised from [0, 1]: if that is not the range the PDE was made for, rescale "
            "the input.) " + SPACING_NOTE) in str(error.value)
