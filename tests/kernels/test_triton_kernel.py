"""The Triton kernels (the CUDA implementation of the fused evolution) against the reference.

Where a CUDA GPU exists the kernels run compiled on it; elsewhere they run on CPU tensors in
Triton's interpreter (``TRITON_INTERPRET=1``, set by the repository's ``conftest.py`` before
Triton is imported). The launchers are called directly (the operator sends CPU tensors to the
C++ kernel), with the arguments the operator would get. The interpreter executes each block
operation in NumPy (about 0.1 ms each), so the images are tiny and the configurations few; the
launch configuration (programs, block) is varied so that the persistent loop over work items and
the loop over chunks of an image both run. The interpreter runs programs one after the other and
cannot show a missing barrier: ``test_kernels_compile_for_hopper`` compiles the kernels for sm_90,
and ``tests/kernels/test_cuda_operator.py`` runs them on a GPU where one exists.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from eqpdenet.errors import ConfigError, NonFiniteStateError
from eqpdenet.kernels import cpu, cuda, op
from eqpdenet.pde import PDELayer

triton = pytest.importorskip("triton")
from eqpdenet.kernels import triton_euler  # noqa: E402  (needs Triton)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETED = type(triton_euler._forward_kernel).__name__ == "InterpretedFunction"
if DEVICE.type == "cpu" and not INTERPRETED:
    pytest.skip("no GPU, and the Triton kernels were compiled (TRITON_INTERPRET is off)",
                allow_module_level=True)

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
ROOT = Path(__file__).resolve().parents[2]


def random_layer(invariants, *, rhs="linear", degree=1, steps=2, dt=0.1, scale=0.05, seed=0,
                 dtype=torch.float32, **options) -> PDELayer:
    """A layer with random F (weights and biases ~ N(0, scale^2)) on DEVICE."""
    torch.manual_seed(seed)
    options.setdefault("ratio_regularisation", "absolute")  # the kernels' only mode
    with warnings.catch_warnings():  # random coefficients may break the diffusion bound: fine
        warnings.simplefilter("ignore")
        # a horizon is at least one step (steps_for); zero steps are set on the flows below
        layer = PDELayer.build(list(invariants), rhs=rhs, degree=degree, T=max(steps, 1) * dt,
                               dt=dt, init="normal", init_scale=scale, init_noise=0.0, **options)
    with torch.no_grad():
        for pde in layer.pdes:
            pde.step.rhs.F.bias.normal_(0.0, scale)
            pde.steps = steps
    return layer.to(device=DEVICE, dtype=dtype)


def run_kernels(layer, u, grad_out, *, store_states, check_finite=None, **launch):
    """Forward and backward through the Triton launchers, as the operator would call them."""
    specs = layer.kernel_specs()
    if check_finite is not None:
        specs = [op.PDESpec(**{**vars(s), "check_finite": check_finite}) for s in specs]
    with torch.no_grad():
        args = op.operator_arguments(u, specs, store_states)
    out, states, first_bad = triton_euler.forward(**args, **launch)
    del args["check_finite"], args["store_states"]
    grads = triton_euler.backward(grad_out, **args, states=states, **launch)
    return out, states, first_bad, grads


def reference(layer, u, grad_out):
    """States at T, every PDE's trajectory ``(steps + 1, E, B, C, H, W)`` and the gradients (of
    u, then each F's weight and bias) by plain PyTorch autograd."""
    with torch.no_grad():
        trajectories = torch.stack([pde(u, return_trajectory=True) for pde in layer.pdes], dim=1)
    u = u.clone().requires_grad_(True)
    params = [p for pde in layer.pdes for p in (pde.step.rhs.F.weight, pde.step.rhs.F.bias)]
    out = layer.evolve_reference(u)
    grads = torch.autograd.grad((out * grad_out).sum(), [u, *params], allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g
             for g, p in zip(grads, [u, *params], strict=True)]
    return out.detach(), trajectories, grads


def assert_close(actual, expected, dtype, what):
    scale = expected.abs().max().item() if expected.numel() else 0.0
    tol = TOL[dtype]
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(scale, 1e-30), msg=what)


def check_against_reference(config):
    config = dict(config)
    shape, dtype = config.pop("shape"), config.pop("dtype", torch.float32)
    store, launch = config.pop("store"), config.pop("launch", {})
    layer = random_layer(config.pop("invariants"), dtype=dtype, **config)
    generator = torch.Generator().manual_seed(sum(shape))
    u = torch.rand(*shape, generator=generator, dtype=dtype).to(DEVICE)
    grad_out = torch.randn(shape[0], layer.n_pdes, *shape[1:], generator=generator,
                           dtype=dtype).to(DEVICE)
    expected, trajectories, expected_grads = reference(layer, u, grad_out)
    out, states, first_bad, (grad_u, grad_weight, grad_bias) = run_kernels(
        layer, u, grad_out, store_states=store, **launch)
    assert_close(out, expected, dtype, "states at T")
    assert not first_bad.any()
    if store:  # states[b, e, c, l] is u_l of PDE e: the trajectory without its last state
        for e, pde in enumerate(layer.pdes):
            assert_close(states[:, e, :, :pde.steps],
                         trajectories[:pde.steps, e].permute(1, 2, 0, 3, 4), dtype,
                         f"stored states of PDE {e}")
    else:
        assert states.numel() == 0
    assert_close(grad_u, expected_grads[0], dtype, "gradient of u")
    for e, pde in enumerate(layer.pdes):
        m = pde.step.rhs.F.weight.numel()
        assert_close(grad_weight[e, :m], expected_grads[1 + 2 * e], dtype,
                     f"gradient of F{e}'s weight")
        assert_close(grad_bias[e], expected_grads[2 + 2 * e], dtype, f"gradient of F{e}'s bias")
        assert not grad_weight[e, m:].any()  # the zero padding of a shorter F


# Every set, both forms of F, every boundary, both stencils, 0-3 steps, stored and recomputed
# states, chunked images (block < pixels) and several programs per launch.
CONFIGS = [
    dict(invariants=("se2", "se2", "scaling", "scaling"), steps=3, shape=(2, 1, 7, 6),
         store=False),  # the paper's layer, recomputing the states
    dict(invariants=("se2",), boundary="zeros", stencil="isotropic", steps=2, shape=(1, 2, 5, 6),
         store=True),
    dict(invariants=("scaling",), boundary="reflect", ratio_eps=0.3, steps=3, shape=(2, 1, 6, 7),
         store=False, launch=dict(block=16, programs=1)),
    dict(invariants=("se2", "scaling"), boundary="circular", stencil="isotropic", spacing=0.7,
         steps=2, shape=(1, 1, 6, 5), store=True, launch=dict(programs=3)),
    dict(invariants=("se2",), rhs="polynomial", degree=2, scale=0.003, steps=2,
         shape=(1, 1, 5, 5), store=False),
    dict(invariants=("scaling", "se2"), rhs="polynomial", degree=2, scale=0.003, steps=1,
         boundary="circular", stencil="isotropic", shape=(1, 1, 4, 5), store=True,
         launch=dict(block=16)),
    dict(invariants=("scaling", "se2"), steps=0, shape=(2, 1, 4, 4), store=True),
    dict(invariants=("se2", "scaling"), boundary="zeros", steps=2, shape=(1, 1, 5, 4),
         store=False, dtype=torch.float64),
]


def _random_configs(count: int, seed: int) -> list[dict]:
    """Configurations drawn by a seeded generator: the same list on every run."""
    draw = random.Random(seed)
    configs = []
    for _ in range(count):
        rhs = draw.choice(["linear", "polynomial"])
        config = dict(
            invariants=tuple(draw.choice(["se2", "scaling"])
                             for _ in range(1 if rhs == "polynomial" else draw.randint(1, 3))),
            rhs=rhs, degree=2 if rhs == "polynomial" else 1,
            scale=0.003 if rhs == "polynomial" else 0.05,
            steps=draw.randint(0, 2 if rhs == "polynomial" else 3),
            boundary=draw.choice(["replicate", "zeros", "reflect", "circular"]),
            stencil=draw.choice(["central", "isotropic"]),
            shape=(draw.randint(1, 2), 1, draw.randint(2, 6), draw.randint(2, 6)),
            store=draw.random() < 0.5, seed=draw.randint(0, 2**16),
            launch=dict(programs=draw.randint(1, 3), block=draw.choice([None, 16])))
        configs.append(config)
    return configs


RANDOM_CONFIGS = _random_configs(4, seed=13)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_triton_matches_reference(config):
    check_against_reference(config)


@pytest.mark.parametrize("config", RANDOM_CONFIGS, ids=[str(i) for i in range(len(RANDOM_CONFIGS))])
def test_triton_matches_reference_random(config):
    check_against_reference(config)


def test_recomputed_and_stored_states_give_the_same_gradients():
    layer = random_layer(("se2", "scaling"), steps=3, seed=4)
    u = torch.rand(1, 1, 5, 6, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    grad_out = torch.randn(1, 2, 1, 5, 6, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    stored = run_kernels(layer, u, grad_out, store_states=True)[3]
    recomputed = run_kernels(layer, u, grad_out, store_states=False)[3]
    for a, b in zip(stored, recomputed, strict=True):
        if INTERPRETED:
            assert torch.equal(a, b)
        else:  # two compiled kernels may contract multiply-adds differently
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_same_call_same_numbers():
    layer = random_layer(("se2", "scaling"), steps=2, seed=7)
    u = torch.rand(3, 1, 4, 5, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    grad_out = torch.randn(3, 2, 1, 4, 5, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    first = run_kernels(layer, u, grad_out, store_states=False, programs=2)
    again = run_kernels(layer, u, grad_out, store_states=False, programs=2)
    for a, b in zip([*first[:3], *first[3]], [*again[:3], *again[3]], strict=True):
        assert torch.equal(a, b)


def _unstable_layer():
    layer = random_layer(("scaling", "se2", "se2"), steps=5, seed=3)
    with torch.no_grad():
        layer.pdes[1].step.rhs.F.weight[1] = 40.0  # grad_sq: blows up within a few steps
        layer.pdes[2].step.rhs.F.weight[1] = 80.0
    return layer


def test_first_bad_step_is_reported_as_by_the_cpu_kernel_and_the_reference():
    layer = _unstable_layer()
    u = (torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(3)) * 4).to(DEVICE)
    specs = layer.kernel_specs()
    with torch.no_grad():
        args = op.operator_arguments(u, specs, False)
        out, _, first_bad = triton_euler.forward(**args)
    assert first_bad[:, 0].eq(0).all() and first_bad[:, 1:].gt(0).any()
    if DEVICE.type == "cpu" and cpu.is_available():  # the C++ kernel reports the same steps
        with torch.no_grad():
            cpu_args = op.operator_arguments(u.cpu(), [op.PDESpec(**{
                **vars(s), "weight": s.weight.cpu(), "bias": s.bias.cpu(),
                "stencil": s.stencil.cpu()}) for s in specs], False)
            cpu_first_bad = torch.ops.eqpdenet.euler_evolve(**cpu_args)[2]
        torch.testing.assert_close(first_bad.cpu(), cpu_first_bad, rtol=0, atol=0)
    with pytest.raises(NonFiniteStateError) as expected:
        layer.evolve_reference(u)
    for pde in layer.pdes:
        pde.check_finite = False
    assert torch.equal(torch.isfinite(out), torch.isfinite(layer.evolve_reference(u)))
    per_pde = op.first_bad_per_pde(first_bad).cpu()
    e = int(per_pde.gt(0).nonzero()[0])
    assert (specs[e].name, int(per_pde[e])) == (expected.value.pde, expected.value.step)
    unchecked = run_kernels(layer, u, torch.ones_like(out), store_states=False,
                            check_finite=False)[2]
    assert not unchecked.any()  # PDEs without check_finite report nothing


def test_unknown_invariant_set_is_a_clear_error():
    layer = random_layer(("se2",))
    with torch.no_grad():
        args = op.operator_arguments(torch.rand(1, 1, 4, 4).to(DEVICE), layer.kernel_specs(),
                                     False)
    args["invariant_sets"] = ["sim2"]
    with pytest.raises(ConfigError, match="no invariant set 'sim2'"):
        triton_euler.forward(**args)


def test_declared_sets_match_the_kernels():
    assert set(cuda.INVARIANT_SETS) == set(triton_euler.SET_CODES) == set(
        triton_euler.N_INVARIANTS)
    assert max(triton_euler.N_INVARIANTS.values()) <= triton_euler.KMAX


@pytest.mark.slow
def test_kernels_compile_for_hopper():
    """The interpreter accepts code the compiler rejects (non-constexpr globals, ...): compile
    both kernels for sm_90 in a fresh process (no GPU needed) with the installed Triton."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "src")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "triton_compile.py"),
                             "--quick"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert sum(line.startswith("sm_90 ") for line in result.stdout.splitlines()) == 4, \
        result.stdout


def test_unavailable_reasons(monkeypatch):
    if not torch.cuda.is_available():
        assert cuda.unavailable_reason() == "no CUDA device is available"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else real(name, *a))
    cuda.clear_caches()  # the answers are remembered per process
    try:
        assert "Triton is not installed" in cuda.unavailable_reason()
    finally:
        cuda.clear_caches()
