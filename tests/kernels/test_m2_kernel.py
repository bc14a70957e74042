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


@pytest.mark.parametrize("n", [4, 8])
@pytest.mark.parametrize("boundary", ["replicate", "zeros", "reflect", "circular"])
@pytest.mark.parametrize("channels, hidden, scales", [(1, 3, 1), (3, 5, 2), (4, 8, 1)])
def test_fused_euler_step_equals_the_reference_step(n, boundary, channels, hidden, scales):
    # u + dt (W2 relu(W1 I(u) + b1) + b2): the whole step fused against EulerStep of the
    # reference right-hand side, values and every gradient (float64).
    from eqpdenet.pde import EulerStep
    from eqpdenet.pde.m2_rhs import M2SystemRHS

    torch.manual_seed(n * 10 + channels)
    options = dict(hidden=hidden, normalize_invariants=False, normalize_hidden=False,
                   boundary=boundary, scales=scales, sigma=0.8)
    fused_rhs = M2SystemRHS(channels, ("network",), **options).double()
    for parameter in fused_rhs.parameters():
        parameter.data.normal_()  # W2 and the biases start at zero: make every path count
    reference_rhs = M2SystemRHS(channels, ("network",), backend="reference", **options).double()
    reference_rhs.load_state_dict(fused_rhs.state_dict())
    u = torch.randn(2 * scales, channels, n, 11, 9, dtype=torch.float64, requires_grad=True)
    fused, reference = EulerStep(fused_rhs, 0.7)(u), EulerStep(reference_rhs, 0.7)(u)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(fused)
    grads = torch.autograd.grad((fused * probe).sum(), [u, *fused_rhs.parameters()])
    expected = torch.autograd.grad((reference * probe).sum(), [u, *reference_rhs.parameters()])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_fused_euler_step_does_not_depend_on_the_thread_count():
    from eqpdenet.kernels.m2_op import m2_euler_step

    torch.manual_seed(0)
    u = torch.randn(5, 3, 8, 10, 10, requires_grad=True)
    parameters = [torch.randn(4, 3, 10), torch.randn(4), torch.randn(3, 4), torch.randn(3)]
    for p in parameters:
        p.requires_grad_(True)
    args = (separable_stencils((1.0,)), orientation_frame(8), "replicate", 0.5)
    runs = []
    for threads in (1, 2):
        with torch_threads(threads):
            out = m2_euler_step(u, *parameters, *args)
            runs.append((out, *torch.autograd.grad(out.square().sum(), [u, *parameters])))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_fused_update_with_a_batch_normalised_hidden_layer_equals_the_reference(training, relative):
    # mixed invariants (fused), batch statistics (batch_norm_affine), m2_update (fused): values,
    # every gradient and the running statistics equal those of the reference EulerStep (whose
    # hidden layer is PyTorch's own batch norm), also for a relative system (F(I) - F(0)).
    import copy

    from eqpdenet.pde import EulerStep
    from eqpdenet.pde.m2_rhs import M2SystemRHS

    torch.manual_seed(3)
    fused_rhs = M2SystemRHS(3, ("network",), hidden=5, normalize_invariants=False,
                            relative=relative).double()
    for parameter in fused_rhs.parameters():
        parameter.data.normal_()
    norm = fused_rhs.terms["network"].hidden_norm
    norm.running_mean.uniform_(-0.5, 0.5)
    norm.running_var.uniform_(0.5, 2.0)
    reference_rhs = copy.deepcopy(fused_rhs)
    reference_rhs.backend = "reference"
    fused_rhs.train(training)
    reference_rhs.train(training)
    u = torch.randn(4, 3, 8, 11, 9, dtype=torch.float64, requires_grad=True)
    fused, reference = EulerStep(fused_rhs, 0.7)(u), EulerStep(reference_rhs, 0.7)(u)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(fused.square().sum(), [u, *fused_rhs.parameters()])
    expected = torch.autograd.grad(reference.square().sum(), [u, *reference_rhs.parameters()])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for got, want in zip(fused_rhs.buffers(), reference_rhs.buffers(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_kernel_computes_in_vectors_of_this_cpus_registers():
    """The build (-march=native) uses vectors of one register of this CPU: 64 bytes with
    AVX-512, 32 with AVX, 16 otherwise. Wider vector types than the registers are not split
    into registers by GCC 12 but expanded element by element, 7-12 times slower (docs/lifted.md);
    narrower ones leave half of every register unused."""
    described = cpu._cpu_model()  # what the build cache is keyed on: model and flags
    if not described:
        pytest.skip("no /proc/cpuinfo to read this CPU's vector extensions from")
    flags = set(described.split())
    expected = 64 if "avx512f" in flags else 32 if "avx" in flags else 16
    assert cpu.load_m2_extension().register_bytes() == expected


def test_every_operator_maps_an_empty_batch_to_empty_outputs_and_zero_gradients():
    # B = 0: the C++ operators once divided by B (m2_update's points per channel) and killed
    # the process with SIGFPE. Empty outputs of the right shapes, zero parameter gradients.
    from eqpdenet.kernels.m2_op import m2_euler_step, m2_update

    args = (separable_stencils((1.0,)), orientation_frame(8), "replicate")
    u = torch.randn(0, 3, 8, 10, 10, requires_grad=True)
    weight = torch.randn(4, 3, 10, requires_grad=True)
    z = m2_mix_invariants(u, weight, *args)
    assert z.shape == (0, 4, 8, 10, 10)
    grad_u, grad_w = torch.autograd.grad(z.sum(), [u, weight])
    assert grad_u.shape == u.shape and torch.equal(grad_w, torch.zeros_like(weight))

    parameters = [torch.randn(4, 3, 10), torch.randn(4), torch.randn(3, 4), torch.randn(3)]
    for p in parameters:
        p.requires_grad_(True)
    out = m2_euler_step(u, *parameters, *args, 0.5)
    assert out.shape == u.shape
    grads = torch.autograd.grad(out.sum(), [u, *parameters])
    assert all(torch.equal(g, torch.zeros_like(p)) for g, p in zip(grads[1:], parameters, strict=True))

    z = torch.randn(0, 4, 8, 10, 10, requires_grad=True)
    tail = [torch.randn(4), torch.randn(4), torch.randn(3, 4), torch.randn(3)]
    for p in tail:
        p.requires_grad_(True)
    out = m2_update(u, z, *tail, 0.5)
    assert out.shape == u.shape
    grads = torch.autograd.grad(out.sum(), [u, z, *tail])
    assert grads[1].shape == z.shape
    assert all(torch.equal(g, torch.zeros_like(p)) for g, p in zip(grads[2:], tail, strict=True))


def test_the_operators_refuse_forward_mode_derivatives_instead_of_returning_zeros():
    # Called directly under torch.func.jvp (the layers check first and take the reference).
    args = (separable_stencils((1.0,)), orientation_frame(8), "replicate")
    u, weight = torch.randn(1, 2, 8, 6, 6), torch.randn(3, 2, 10)
    with pytest.raises(NotImplementedError, match="no batching rule and no forward-mode"):
        torch.func.jvp(lambda v: m2_mix_invariants(v, weight, *args), (u,), (torch.ones_like(u),))
