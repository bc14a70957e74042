"""Every layer and model family against the one equivariance assertion (tests/helpers.py).

Quarter turns are exact; 37° is measured on smooth images with a stated tolerance. Families that
are *not* equivariant are shown to fail the same assertion, so it can fail.
"""

import pytest
import torch

from eqpdenet import FCNN, EqPdeNet, EulerFlow, EulerStep, InvariantRHS, PDELayer
from eqpdenet.analysis.references import smooth_inputs
from helpers import assert_equivariant


def _randomised(module, scale=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    return module


def test_se2_layer_on_every_device_dtype_and_backend(device, dtype, backend):
    layer = _randomised(PDELayer.build(["se2", "se2"], T=0.5, dt=0.1, backend=backend))
    layer = layer.to(device=device, dtype=dtype)
    images = torch.rand(3, 2, 14, 14, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    assert_equivariant(layer, images)


@pytest.mark.parametrize("stencil", ["central", "isotropic"])
def test_se2_rhs_step_and_flow(stencil):
    rhs = _randomised(InvariantRHS("se2", stencil=stencil)).double()
    images = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    assert_equivariant(rhs, images)
    assert_equivariant(EulerStep(rhs, 0.1), images)
    assert_equivariant(EulerFlow(EulerStep(rhs, 0.1), 5), images)


def test_se2_layer_at_37_degrees_on_smooth_images():
    layer = PDELayer.build(["se2"], T=1.0, dt=0.1, init="heat", init_scale=0.2, init_noise=0.0)
    assert_equivariant(layer, smooth_inputs(4), angle=37.0, angle_tolerance=0.02)


def test_the_papers_layer_and_models_are_not_rotation_equivariant():
    """The assertion fails where it should: the scaling set and the perceptron heads."""
    images = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    layer = _randomised(PDELayer.paper(T=0.3), scale=0.05).double()
    with pytest.raises(AssertionError, match="not equivariant under a rotation"):
        assert_equivariant(layer, images)
    for model in (EqPdeNet(16, layer=PDELayer.build(["se2"])), FCNN(16)):
        with pytest.raises(AssertionError, match="not equivariant under a rotation"):
            assert_equivariant(model.double(), images, invariant=True)
