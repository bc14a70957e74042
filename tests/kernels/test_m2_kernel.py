"""The fused M2 operator (C++ on the CPU) against the plain-PyTorch reference."""

import pytest
import torch

from eqpdenet.kernels import cpu
from eqpdenet.kernels.m2_op import m2_mix_invariants
from eqpdenet.pde.m2 import M2_SE2, M2Jet, orientation_frame, separable_stencils
from helpers import torch_threads

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="no C++ toolchain")


def _reference(u, weight, sigmas, boundary):
    jet_of = M2Jet(sigmas[0], boundary, scales=len(sigmas))
    assert jet_of.sigmas == tuple(sigmas)
    return torch.einsum("ocj,bcjnhw->bonhw", weight, M2_SE2(jet_of(u)))


def _sigmas(sigma, scales):
    return tuple(sigma * 2 ** (s / 2) for s in range(scales))


@pytest.mark.parametrize("n", [4, 8, 12, 16])
@pytest.mark.parametrize("boundary", ["replicate", "zeros", "reflect", "circular"])
@pytest.mark.parametrize("channels, outputs, scales", [(1, 3, 1), (3, 5, 2), (4, 8, 1), (5, 2, 2)])
def test_fused_equals_reference_forward_and_gradients_float64(n, boundary, channels, outputs,
                                                              scales):
    torch.manual_seed(n + channels)
    sigmas = _sigmas(0.8, scales)
    u = torch.randn(2 * scales, channels, n, 11, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(outputs, channels, 10, dtype=torch.float64, requires_grad=True)
    fused = m2_mix_invariants(u, weight, separable_stencils(sigmas), orientation_frame(n), boundary)
    reference = _reference(u, weight, sigmas, boundary)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(fused)
    grads = torch.autograd.grad((fused * probe).sum(), [u, weight])
    expected = torch.autograd.grad((reference * probe).sum(), [u, weight])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


def test_fused_float32_is_as_accurate_as_the_reference_in_float32():
    torch.manual_seed(0)
    u64 = torch.randn(3, 4, 8, 14, 14, dtype=torch.float64)
    w64 = torch.randn(6, 4, 10, dtype=torch.float64)
    exact = _reference(u64, w64, (1.0,), "replicate")
    args = (separable_stencils((1.0,)), orientation_frame(8), "replicate")
    fused = m2_mix_invariants(u64.float(), w64.float(), *args).double()
    reference = _reference(u64.float(), w64.float(), (1.0,), "replicate").double()
    scale = float(exact.abs().max())
    fused_error = float((fused - exact).abs().max()) / scale
    reference_error = float((reference - exact).abs().max()) / scale
    assert fused_error < 1e-5 and fused_error < 4 * reference_error + 1e-7


def test_results_do_not_depend_on_the_thread_count():
    # One image per task and per-image float64 partial sums of the weight's gradient, reduced
    # in a fixed order: outputs and both gradients are the same bits with 1 and 2 threads.
    torch.manual_seed(0)
    u = torch.randn(5, 3, 8, 10, 10, requires_grad=True)
    weight = torch.randn(4, 3, 10, requires_grad=True)
    args = (separable_stencils((1.0,)), orientation_frame(8), "replicate")
    runs = []
    for threads in (1, 2):
        with torch_threads(threads):
            z = m2_mix_invariants(u, weight, *args)
            runs.append((z, *torch.autograd.grad(z.square().sum(), [u, weight])))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
