"""Round 17: a layer built with ``recompute=True`` failed under ``torch.func.grad``/``jacrev``
(raw "don't yet support saved tensor hooks": ``torch.utils.checkpoint``) and forward-mode AD
(raw NotImplementedError: ``_SavedVersions`` has no jvp), on both backends (the fused one hands a
transformed input to the reference). Recompute only saves memory: under a transform the layer
now computes without it, giving the values of ``recompute=False``."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwad
from torch.func import functional_call, grad, jacrev, vmap

from eqpdenet.pde.layer import PDELayer


def _layers(backend: str):
    torch.manual_seed(0)
    plain = PDELayer.paper(backend=backend).double()
    torch.manual_seed(0)
    recomputing = PDELayer.paper(backend=backend, recompute=True).double()
    recomputing.load_state_dict(plain.state_dict())
    return plain, recomputing


def _image() -> torch.Tensor:
    return torch.linspace(0, 1, 2 * 7 * 6, dtype=torch.float64).sin().view(2, 1, 7, 6)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_jacrev_and_per_sample_grads_with_recompute(backend):
    plain, recomputing = _layers(backend)
    u = _image()
    assert torch.equal(jacrev(recomputing)(u), jacrev(plain)(u))

    def loss(params, layer, x):
        return functional_call(layer, params, (x[None],)).square().sum()

    params = {n: p.detach() for n, p in plain.named_parameters()}
    per_sample = vmap(grad(loss), in_dims=(None, None, 0))
    got, expected = per_sample(params, recomputing, u), per_sample(params, plain, u)
    assert all(torch.equal(got[n], expected[n]) for n in params)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_forward_ad_with_recompute(backend):
    plain, recomputing = _layers(backend)
    u, tangent = _image(), torch.ones(2, 1, 7, 6, dtype=torch.float64)
    outputs = []
    for layer in (plain, recomputing):
        with fwad.dual_level():
            outputs.append(fwad.unpack_dual(layer(fwad.make_dual(u, tangent))).tangent)
    assert torch.equal(outputs[0], outputs[1])
    # and the tangent is the derivative: a central difference in float64
    h = 1e-6
    difference = (plain(u + h * tangent) - plain(u - h * tangent)) / (2 * h)
    assert torch.allclose(outputs[0], difference, rtol=1e-6, atol=1e-8)
