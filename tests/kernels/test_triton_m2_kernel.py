"""The Triton kernels of the fused M2 operators (the CUDA implementation of
``eqpdenet::m2_mix_invariants`` and ``eqpdenet::m2_euler_step``) against the plain-PyTorch
reference: ``M2Jet`` + ``M2_SE2`` + ``einsum`` for the mixing, ``EulerStep`` of a reference
``M2SystemRHS`` for the Euler step.

Where a CUDA GPU exists the kernels run compiled on it; elsewhere on CPU tensors in Triton's
interpreter (``TRITON_INTERPRET=1``, set by the repository's ``conftest.py``). The launchers are
called directly with the operators' arguments (the operators send CPU tensors to the C++
kernel). The interpreter executes each block operation in NumPy, so the fields are tiny (one or
two images, two channels, 5-7 pixels a side, sigma 0.5: 5-tap stencils) and the cases few; the
launch configuration is varied (several bands per image, several output blocks, blocks of 16
pixels, several programs) so that every loop of the kernels runs more than once. The interpreter
runs programs one after the other and cannot show a missing barrier:
``test_m2_kernels_compile_for_hopper`` compiles them for sm_90, and the CUDA case below runs the
operators on a GPU where one exists.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eqpdenet.errors import ConfigError, InputError
from eqpdenet.kernels import cuda, m2_op
from eqpdenet.kernels.m2_op import M2_IMPLEMENTATIONS, m2_unsupported_reason
from eqpdenet.pde import EulerStep
from eqpdenet.pde.m2 import (
    M2_SE2,
    M2Jet,
    orientation_frame,
    scale_levels,
    separable_stencils,
)
from eqpdenet.pde.m2_rhs import M2SystemRHS

triton = pytest.importorskip("triton")
from eqpdenet.kernels import triton_m2  # noqa: E402  (needs Triton)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETED = type(triton_m2._forward_kernel).__name__ == "InterpretedFunction"
if DEVICE.type == "cpu" and not INTERPRETED:
    pytest.skip("no GPU, and the Triton kernels were compiled (TRITON_INTERPRET is off)",
                allow_module_level=True)

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
ROOT = Path(__file__).resolve().parents[2]
SIGMA = 0.5  # 5-tap stencils (7 taps at the second scale level)
DT = 0.3


def assert_close(actual, expected, dtype, what):
    """Relative to the largest entry of the expected tensor."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    tol = TOL[dtype]
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol,
                               atol=tol * max(scale, 1e-30), msg=what)


def tables(n: int, scales: int):
    return (separable_stencils(scale_levels(SIGMA, scales)).to(DEVICE),
            orientation_frame(n).to(DEVICE))


def reference_mixing(u, weight, scales, boundary):
    jet = M2Jet(SIGMA, boundary, scales=scales)
    return torch.einsum("ocj,bcjnhw->bonhw", weight, M2_SE2(jet(u)))


def random_field(shape, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(DEVICE, dtype)


# (boundary, orientations, scale levels, dtype, (H, W), outputs, launch configuration)
MIXING_CASES = [
    ("replicate", 4, 2, torch.float64, (5, 7), 3, {}),
    ("reflect", 8, 1, torch.float64, (4, 5), 3, {}),
    ("zeros", 4, 1, torch.float32, (5, 6), 3, {}),
    ("circular", 4, 1, torch.float64, (5, 5), 3,
     dict(band_rows=2, block=16, o_block=2, programs=2)),
]


@pytest.mark.parametrize("boundary, n, scales, dtype, size, outputs, launch", MIXING_CASES,
                         ids=[case[0] for case in MIXING_CASES])
def test_mixing_matches_the_reference(boundary, n, scales, dtype, size, outputs, launch):
    # z = sum_{c, j} W[o, c, j] I_j(u^c) and its exact adjoint: the values, the gradient of u
    # and the weight's gradient of every image (the operator returns it per image).
    channels, batch = 2, scales
    u = random_field((batch, channels, n, *size), dtype, 1).requires_grad_(True)
    weight = random_field((outputs, channels, 10), dtype, 2).requires_grad_(True)
    stencils, frame = tables(n, scales)
    z = triton_m2.mix_forward(u.detach(), weight.detach(), stencils, frame, boundary, **launch)
    expected = reference_mixing(u, weight, scales, boundary)
    assert_close(z, expected.detach(), dtype, "mixed invariants")
    probe = random_field(expected.shape, dtype, 3)
    backward_launch = {k: v for k, v in launch.items() if k != "band_rows"}  # whole maps
    grad_u, per_image = triton_m2.mix_backward(probe, u.detach(), weight.detach(), stencils,
                                               frame, boundary, **backward_launch)
    assert per_image.dtype == torch.float64 and per_image.shape == (batch, *weight.shape)
    expected_grad_u = torch.autograd.grad((expected * probe).sum(), u, retain_graph=True)[0]
    assert_close(grad_u, expected_grad_u, dtype, "gradient of u")
    for b in range(batch):  # each image's weight gradient on its own
        (expected_grad_w,) = torch.autograd.grad((expected[b] * probe[b]).sum(), weight,
                                                 retain_graph=True)
        assert_close(per_image[b].to(dtype), expected_grad_w, dtype, f"weight gradient of {b}")


def reference_step(channels, hidden, boundary, scales, dtype, seed):
    """EulerStep of the reference network term ``W2 relu(W1 I + b1) + b2`` with random
    parameters (W2 and the biases start at zero: make every path count)."""
    torch.manual_seed(seed)
    rhs = M2SystemRHS(channels, ("network",), hidden=hidden, sigma=SIGMA, boundary=boundary,
                      scales=scales, normalize_invariants=False, normalize_hidden=False,
                      backend="reference").to(DEVICE, dtype)
    for parameter in rhs.parameters():
        parameter.data.normal_()
    network = rhs.terms["network"]
    parameters = [network.mix.weight, network.mix.bias, network.out.weight, network.out.bias]
    return EulerStep(rhs, DT), parameters


def step_arguments(parameters, channels):
    w1, b1, w2, b2 = (p.detach() for p in parameters)
    return w1.view(-1, channels, 10), b1, w2, b2


STEP_CASES = [
    ("zeros", 4, 2, torch.float64, (5, 7), 3, {}),
    ("circular", 8, 1, torch.float64, (7, 5), 3, {}),
    ("reflect", 4, 1, torch.float32, (5, 6), 3, {}),
    ("replicate", 4, 1, torch.float64, (5, 7), 3, dict(band_rows=2, o_block=2, programs=2)),
]


@pytest.mark.parametrize("boundary, n, scales, dtype, size, hidden, launch", STEP_CASES,
                         ids=[case[0] for case in STEP_CASES])
def test_euler_step_matches_the_reference_step(boundary, n, scales, dtype, size, hidden, launch):
    # u + dt (W2 relu(W1 I(u) + b1) + b2) and its adjoint: values, the gradient of u and of
    # each of the four parameters, against autograd through the reference EulerStep.
    channels, batch = 2, scales
    step, parameters = reference_step(channels, hidden, boundary, scales, dtype, seed=5)
    u = random_field((batch, channels, n, *size), dtype, 6).requires_grad_(True)
    stencils, frame = tables(n, scales)
    weights = step_arguments(parameters, channels)
    out = triton_m2.step_forward(u.detach(), *weights, stencils, frame, boundary, DT, **launch)
    expected = step(u)
    assert_close(out, expected.detach(), dtype, "u + dt F(u)")
    probe = random_field(expected.shape, dtype, 7)
    grad_u, per_image = triton_m2.step_backward(probe, u.detach(), *weights, stencils, frame,
                                                boundary, DT, **launch)
    sizes = [p.numel() for p in parameters]
    assert per_image.dtype == torch.float64 and per_image.shape == (batch, sum(sizes))
    expected_grads = torch.autograd.grad((expected * probe).sum(), [u, *parameters])
    assert_close(grad_u, expected_grads[0], dtype, "gradient of u")
    names = ("w1", "b1", "w2", "b2")
    for name, got, want in zip(names, per_image.sum(0).split(sizes), expected_grads[1:],
                               strict=True):
        assert_close(got.to(dtype), want.reshape(-1), dtype, f"gradient of {name}")


@pytest.mark.parametrize("n", [12, 16])
def test_twelve_and_sixteen_orientations(n):
    # The orientation differences wrap around at N - 1 -> 0 whatever N (the C++ kernel's
    # N = 4, 8, 12, 16): the mixing and the gradient of u for the two larger N.
    u = random_field((1, 1, n, 5, 5), torch.float64, n).requires_grad_(True)
    weight = random_field((2, 1, 10), torch.float64, n + 1)
    stencils, frame = tables(n, 1)
    z = triton_m2.mix_forward(u.detach(), weight, stencils, frame, "circular")
    expected = reference_mixing(u, weight, 1, "circular")
    assert_close(z, expected.detach(), torch.float64, "mixed invariants")
    probe = random_field(expected.shape, torch.float64, n + 2)
    grad_u, _ = triton_m2.mix_backward(probe, u.detach(), weight, stencils, frame, "circular")
    expected_grad = torch.autograd.grad((expected * probe).sum(), u)[0]
    assert_close(grad_u, expected_grad, torch.float64, "gradient of u")


def test_results_do_not_depend_on_the_programs():
    # Every gradient pixel is written by one program and every parameter gradient is summed
    # per work item, then over items in a fixed order: two runs, one with a single program and
    # one with two programs taking the items in turn, give the same bits (float32, where a
    # different summation order would show).
    channels, hidden, n = 2, 3, 4
    _, parameters = reference_step(channels, hidden, "replicate", 1, torch.float32, seed=8)
    weights = step_arguments(parameters, channels)
    u = random_field((2, channels, n, 3, 4), torch.float32, 9)
    probe = random_field(u.shape, torch.float32, 10)
    stencils, frame = tables(n, 1)
    runs = []
    for programs in (1, 2):
        launch = dict(programs=programs)
        out = triton_m2.step_forward(u, *weights, stencils, frame, "replicate", DT, **launch)
        grads = triton_m2.step_backward(probe, u, *weights, stencils, frame, "replicate", DT,
                                        **launch)
        runs.append((out, *grads))
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            assert torch.equal(a, b)


def test_an_empty_batch_gives_empty_outputs_and_zero_parameter_gradients():
    # B = 0 launches no program; the step's backward once failed reshaping its empty partial sums.
    u = torch.zeros(0, 2, 4, 6, 6, device=DEVICE)
    w1, b1 = torch.randn(3, 2, 10, device=DEVICE), torch.randn(3, device=DEVICE)
    w2, b2 = torch.randn(2, 3, device=DEVICE), torch.randn(2, device=DEVICE)
    stencils, frame = tables(4, 1)
    assert triton_m2.mix_forward(u, w1, stencils, frame, "zeros").shape == (0, 3, 4, 6, 6)
    grad_u, per_image = triton_m2.mix_backward(u.new_zeros(0, 3, 4, 6, 6), u, w1, stencils, frame,
                                               "zeros")
    assert grad_u.shape == u.shape and per_image.numel() == 0
    out = triton_m2.step_forward(u, w1, b1, w2, b2, stencils, frame, "zeros", DT)
    assert out.shape == u.shape
    grad_u, per_image = triton_m2.step_backward(torch.zeros_like(u), u, w1, b1, w2, b2, stencils,
                                                frame, "zeros", DT)
    assert grad_u.shape == u.shape and per_image.shape == (0, 3 * 2 * 10 + 3 + 2 * 3 + 2)


def test_maps_of_zero_pixels_give_empty_results_as_the_cpp_operator():
    # the launchers divided by the width (ZeroDivisionError); the layers refuse such maps
    w1, b1 = torch.randn(3, 2, 10, device=DEVICE), torch.randn(3, device=DEVICE)
    w2, b2 = torch.randn(2, 3, device=DEVICE), torch.randn(2, device=DEVICE)
    stencils, frame = tables(4, 1)
    for size in ((0, 5), (5, 0)):
        u = torch.zeros(1, 2, 4, *size, device=DEVICE)
        assert triton_m2.mix_forward(u, w1, stencils, frame, "zeros").shape == (1, 3, 4, *size)
        grad_u, per_image = triton_m2.mix_backward(u.new_zeros(1, 3, 4, *size), u, w1, stencils,
                                                   frame, "zeros")
        assert grad_u.shape == u.shape and not per_image.any()
        assert triton_m2.step_forward(u, w1, b1, w2, b2, stencils, frame, "zeros", DT).shape == u.shape
        grad_u, per_image = triton_m2.step_backward(torch.zeros_like(u), u, w1, b1, w2, b2,
                                                    stencils, frame, "zeros", DT)
        assert grad_u.shape == u.shape and per_image.shape == (1, 3 * 2 * 10 + 3 + 2 * 3 + 2)
        assert not per_image.any()
        with pytest.raises(InputError, match=r"maps of at least 1x1 pixels, got 0x5|got 5x0"):
            M2SystemRHS(2, backend="reference")(u)


def test_a_channels_last_or_transposed_field_gives_the_contiguous_results():
    """The outputs were allocated with u's strides (empty_like) and written in contiguous order:
    a channels-last u gave a scrambled step (error 4.7) and input gradient (6.3)."""
    # small maps (3x4): Triton's interpreter takes seconds per launch, and the layouts' strides
    # differ from the contiguous ones on every axis all the same
    u = random_field((2, 2, 4, 3, 4), torch.float64, 0)
    w1, b1 = random_field((4, 2, 10), torch.float64, 1), random_field((4,), torch.float64, 2)
    w2, b2 = random_field((2, 4), torch.float64, 3), random_field((2,), torch.float64, 4)
    grad = random_field((2, 2, 4, 3, 4), torch.float64, 5)
    grad_z = random_field((2, 4, 4, 3, 4), torch.float64, 6)
    stencils, frame = tables(4, 1)
    expected = (triton_m2.step_forward(u, w1, b1, w2, b2, stencils, frame, "zeros", DT),
                *triton_m2.step_backward(grad, u, w1, b1, w2, b2, stencils, frame, "zeros", DT),
                *triton_m2.mix_backward(grad_z, u, w1, stencils, frame, "zeros"))
    for strided in (u.to(memory_format=torch.channels_last_3d),
                    u.transpose(1, 2).contiguous().transpose(1, 2)):
        assert not strided.is_contiguous()
        got = (triton_m2.step_forward(strided, w1, b1, w2, b2, stencils, frame, "zeros", DT),
               *triton_m2.step_backward(grad, strided, w1, b1, w2, b2, stencils, frame, "zeros",
                                        DT),
               *triton_m2.mix_backward(grad_z, strided, w1, stencils, frame, "zeros"))
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_bad_arguments_are_one_line_errors():
    u = torch.zeros(1, 1, 4, 2, 2, device=DEVICE)
    weight = torch.zeros(1, 1, 10, device=DEVICE)
    stencils, frame = tables(4, 1)
    with pytest.raises(ConfigError, match="unknown boundary 'mirror'"):
        triton_m2.mix_forward(u, weight, stencils, frame, "mirror")
    with pytest.raises(InputError, match="'reflect' boundary needs maps larger than the stencil"):
        triton_m2.mix_forward(u, weight, stencils, frame, "reflect")
    with pytest.raises(InputError, match=r"weight must be \(O, C, 10\)"):
        triton_m2.mix_forward(u, weight[:, :, :9], stencils, frame, "zeros")
    with pytest.raises(InputError, match="must both be float32 or both float64"):
        triton_m2.mix_forward(u, weight.double(), stencils, frame, "zeros")
    with pytest.raises(InputError, match="2 equal scale chunks"):
        triton_m2.mix_forward(u, weight, stencils.repeat(2, 1, 1), frame, "zeros")
    with pytest.raises(InputError, match=r"u must be \(B, C, N, H, W\) and w1 \(O, C, 10\)"):
        triton_m2.step_forward(u.flatten(), weight, weight[:, 0, 0], weight[0], weight[0, 0],
                               stencils, frame, "zeros", DT)  # an IndexError before


def test_registered_for_cuda():
    # (That `import eqpdenet` loads no Triton is tests/test_architecture.py's.)
    assert "cuda" in M2_IMPLEMENTATIONS
    if not torch.cuda.is_available():
        assert cuda.m2_unavailable_reason() == "no CUDA device is available"
        reason = M2_IMPLEMENTATIONS.get("cuda")()
        assert reason == "no CUDA device is available"


def test_tables_are_copied_to_a_device_once():
    # The operators' wrappers copy the (cached, CPU) stencils and frame to the input's device
    # once per version, so that a step on a GPU copies nothing from the host (CUDA graphs).
    table = separable_stencils((0.7,)).clone()
    meta = torch.device("meta")
    first = m2_op._on_device(table, meta)
    assert first.device == meta and m2_op._on_device(table, meta) is first
    assert m2_op._on_device(table, table.device) is table
    table.add_(1.0)  # a new version: a new copy
    assert m2_op._on_device(table, meta) is not first


def test_unavailable_without_triton(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else real(name, *a))
    cuda.clear_caches()  # the answers are remembered per process
    try:
        assert "Triton is not installed" in cuda.m2_unavailable_reason()
    finally:
        cuda.clear_caches()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fused_step", [False, True])
def test_operators_on_cuda_match_the_reference(fused_step):
    # Through the registered operators and autograd: the right-hand side's mixing (batch-
    # normalised hidden layer) or the whole fused Euler step (no normalisation), on the GPU.
    assert m2_unsupported_reason(torch.zeros(1, 1, 4, 1, 1, device="cuda"),
                                 torch.zeros(1, 1, 10, device="cuda"), "replicate", 2) is None
    torch.manual_seed(0)
    options = dict(hidden=6, normalize_invariants=False, normalize_hidden=not fused_step,
                   boundary="replicate", sigma=1.0)
    fused = M2SystemRHS(3, ("network",), **options).cuda().double()
    for parameter in fused.parameters():
        parameter.data.normal_()
    reference = M2SystemRHS(3, ("network",), backend="reference", **options).cuda().double()
    reference.load_state_dict(fused.state_dict())
    u = torch.randn(4, 3, 8, 12, 12, dtype=torch.float64, device="cuda", requires_grad=True)
    outs = []
    for rhs in (fused, reference):
        out = EulerStep(rhs, 0.2)(u)
        outs.append((out, *torch.autograd.grad(out.square().sum(), [u, *rhs.parameters()])))
    for got, want in zip(*outs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_m2_kernels_compile_for_hopper():
    """The interpreter accepts code the compiler rejects and shows nothing of register
    pressure: compile the four M2 kernels for sm_90 (the first stage of the default
    LiftedPDENet, float32) in a fresh process, no GPU needed; none may spill to the stack."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "src")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "triton_compile.py"),
                             "--m2", "--quick"], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("sm_90 m2 ")]
    assert len(lines) == 4, result.stdout
    assert all(" stack 0 B" in line for line in lines), result.stdout
