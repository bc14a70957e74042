"""The fused operator through the PDE layer on each device (C++ on the CPU, Triton on a CUDA GPU;
the CUDA cases skip without one), and the layer inside a CUDA graph."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqpdenet.checks import deferred_state_checks
from eqpdenet.kernels import cpu, cuda
from eqpdenet.pde import PDELayer


def _layer(device, **options) -> PDELayer:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = PDELayer.paper(init="normal", init_scale=0.05, T=0.5, **options)
    return layer.to(device)


def _unavailable(device) -> str | None:
    return cuda.unavailable_reason(device) if device.type == "cuda" else (
        None if cpu.is_available() else cpu.build_error())


def test_fused_layer_matches_the_reference_on_each_device(device):
    if _unavailable(device):
        pytest.skip(_unavailable(device))
    layer = _layer(device)
    u = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
    results = []
    for backend in ("reference", "fused"):
        layer.backend = backend
        x = u.clone().requires_grad_(True)
        out = layer.evolve(x)
        assert ("euler_evolve" in str(out.grad_fn).lower()) == (backend == "fused")
        grads = torch.autograd.grad(out.square().sum(), [x, *layer.pdes.parameters()])
        results.append([out, *grads])
    for fused, reference in zip(results[1], results[0], strict=True):
        scale = reference.abs().max().item()
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_fused_layer_runs_on_a_gpu_that_is_not_the_current_one():
    # Triton launches on the current device: the launchers make the tensors' card current
    # (a layer on cuda:1 got a Triton error or a launch on cuda:0 before).
    device = torch.device("cuda", 1)
    if _unavailable(device):
        pytest.skip(_unavailable(device))
    assert torch.cuda.current_device() == 0
    layer = _layer(device)
    u = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
    results = []
    for backend in ("reference", "fused"):
        layer.backend = backend
        x = u.clone().requires_grad_(True)
        out = layer.evolve(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *layer.pdes.parameters()])
        results.append([out, *grads])
    torch.cuda.synchronize(device)
    assert torch.cuda.current_device() == 0
    for fused, reference in zip(results[1], results[0], strict=True):
        assert fused.device == device
        scale = reference.abs().max().item()
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("recompute", [False, True])
def test_fused_layer_trains_inside_a_cuda_graph(device, recompute):
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    if _unavailable(device):
        pytest.skip(_unavailable(device))
    layer = _layer(device, backend="fused", recompute=recompute)
    params = list(layer.parameters())
    static_u = torch.rand(16, 1, 28, 28, device=device)

    def step():
        with deferred_state_checks() as reports:
            out = layer(static_u)
        grads = torch.autograd.grad(out.square().sum(), params)
        return out, grads, reports.flags()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up: kernels compiled, metadata uploaded
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_grads, static_flags = step()
    for seed in (2, 3):
        static_u.copy_(torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(seed)))
        graph.replay()
        out, grads, flags = step()
        torch.testing.assert_close(static_out, out)
        for a, b in zip(static_grads, grads, strict=True):
            torch.testing.assert_close(a, b)
        assert not static_flags.any() and not flags.any()
