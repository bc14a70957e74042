"""``recompute=True`` on the reference path (probe r15/p4): a PDE parameter changed in place
between forward and backward raises PyTorch's in-place error, as ``recompute=False`` does for a
saved weight, instead of a gradient recomputed from the new weights against the old output's
gradient; valid use gives the same gradients, bit for bit, as ``recompute=False``."""

from __future__ import annotations

import pytest
import torch

from eqpdenet.pde.layer import PDELayer

INPLACE = "modified by an inplace operation"
PARAMETERS = ["0.step.rhs.F.weight", "0.step.rhs.F.bias", "1.step.rhs.F.weight",
              "1.step.rhs.F.bias"]


def layer(recompute: bool) -> PDELayer:
    torch.manual_seed(0)
    return PDELayer.build(["se2", "scaling"], T=0.3, dt=0.1, init="normal", init_scale=0.2,
                          backend="reference", recompute=recompute).double()


def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, 6, 6, dtype=torch.float64, generator=generator)


def test_the_parameters_are_those_of_the_two_pdes():
    assert [name for name, _ in layer(True).pdes.named_parameters()] == PARAMETERS


@pytest.mark.parametrize("name", PARAMETERS)
def test_recompute_refuses_a_parameter_changed_in_place_after_forward(name):
    model = layer(True)
    parameter = model.pdes.get_parameter(name)
    out = model(image())
    with torch.no_grad():
        parameter.mul_(3.0)  # as an optimizer step before backward would
    with pytest.raises(RuntimeError, match=INPLACE):
        out.square().sum().backward()
    assert parameter.grad is None  # refused before this PDE's recomputation


def test_recompute_refuses_an_optimizer_step_before_backward():
    model = layer(True)
    # the PDEs' parameters only: the reduction's weights are saved by its own operations
    optimizer = torch.optim.SGD(model.pdes.parameters(), lr=1e-3)
    out = model(image())
    out.square().mean().backward()
    optimizer.step()
    out = model(image())
    optimizer.step()  # the gradients of the first forward, applied before this backward
    with pytest.raises(RuntimeError, match=INPLACE):
        out.square().mean().backward()


def test_without_recompute_the_same_edit_of_a_weight_is_refused_too():
    model = layer(False)
    out = model(image())
    with torch.no_grad():
        model.pdes.get_parameter("0.step.rhs.F.weight").mul_(3.0)
    with pytest.raises(RuntimeError, match=INPLACE):
        out.square().sum().backward()


def gradients(recompute: bool, create_graph: bool = False) -> list[torch.Tensor]:
    model = layer(recompute)
    u = image().requires_grad_()
    loss = model(u).square().sum()
    inputs = [u, *model.parameters()]
    first = torch.autograd.grad(loss, inputs, create_graph=create_graph)
    if not create_graph:
        return list(first)
    return list(torch.autograd.grad(first[0].square().sum(), inputs[1:]))


@pytest.mark.parametrize("create_graph", [False, True], ids=["first", "second"])
def test_recompute_gives_the_same_gradients_bit_for_bit(create_graph):
    stored, recomputed = gradients(False, create_graph), gradients(True, create_graph)
    assert len(stored) == len(recomputed) == (7 if not create_graph else 6)
    for a, b in zip(stored, recomputed, strict=True):
        assert a.dtype == b.dtype == torch.float64
        assert torch.equal(a, b)
    assert all(bool(g.abs().max() > 0) for g in stored)  # every gradient takes part


def test_recompute_trains_as_without_it_bit_for_bit():
    """Edits between steps (after backward, before the next forward) are valid use."""
    trained = []
    for recompute in (False, True):
        model = layer(recompute)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        for _ in range(3):
            optimizer.zero_grad()
            model(image()).square().mean().backward()
            optimizer.step()
        trained.append([p.detach().clone() for p in model.parameters()])
    initial = [p.detach() for p in layer(False).parameters()]
    for a, b, start in zip(*trained, initial, strict=True):
        assert torch.isfinite(a).all() and not torch.equal(a, start)
        assert torch.equal(a, b)


def test_no_grad_and_eval_are_unchanged():
    model = layer(True)
    with torch.no_grad():
        out = model(image())
    assert out.grad_fn is None
    assert torch.equal(out, layer(False)(image()).detach())
