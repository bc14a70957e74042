"""Edges of the Triton kernels' CUDA path that need no GPU to check: several cards (each judged
by its own compute capability, each launch on its tensors' card), the Triton version floor, a
kernel that does not compile (the operator falls back to its CPU implementation, one warning),
offsets wider than int32 (read from the kernels compiled for sm_90), the M2 Euler step without
hidden units, and the dtypes the schema refuses.

The kernels run only in the small M2 case (in Triton's interpreter without a GPU): the
launchers run with fake kernels that record where they were launched, and the operator's
fallback with a launcher that raises Triton's own compiler errors.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from eqpdenet.errors import InputError
from eqpdenet.kernels import cuda, op
from eqpdenet.kernels.m2_op import M2_IMPLEMENTATIONS
from eqpdenet.pde import PDELayer
from eqpdenet.pde.m2 import orientation_frame, scale_levels, separable_stencils

triton = pytest.importorskip("triton")
from triton.compiler.errors import CompilationError  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402

from eqpdenet.kernels import triton_euler, triton_m2  # noqa: E402  (need Triton)

ROOT = Path(__file__).resolve().parents[2]
INTERPRETED = type(triton_m2._forward_kernel).__name__ == "InterpretedFunction"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def fresh():
    """No remembered availability answers or failed configurations before and after, and
    every warning reason new (op.warn_once warns once per process)."""
    cuda.clear_caches()
    saved = set(op._warned)
    op._warned.clear()
    yield
    cuda.clear_caches()
    op._warned.clear()
    op._warned.update(saved)


def euler_arguments(size: int = 5, dtype=torch.float32, store_states: bool = True) -> dict:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = PDELayer.build(["se2", "scaling"], rhs="linear", T=0.2, dt=0.1, init="normal",
                               init_scale=0.05, init_noise=0.0, ratio_regularisation="absolute")
    layer = layer.to(dtype=dtype)
    u = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with torch.no_grad():
        return op.operator_arguments(u, layer.kernel_specs(), store_states)


def m2_arguments(hidden: int, dtype=torch.float64) -> tuple:
    generator = torch.Generator().manual_seed(3)
    u = torch.randn(2, 2, 4, 3, 3, generator=generator, dtype=dtype)
    w1 = torch.randn(hidden, 2, 10, generator=generator, dtype=dtype)
    b1 = torch.randn(hidden, generator=generator, dtype=dtype)
    w2 = torch.randn(2, hidden, generator=generator, dtype=dtype)
    b2 = torch.tensor([1.0, -2.0], dtype=dtype)
    return (u, w1, b1, w2, b2, separable_stencils(scale_levels(0.5, 1)), orientation_frame(4),
            "replicate", 0.3)


# ----------------------------------------------------------------------------- several cards


def two_cards(monkeypatch, current: int) -> list:
    """CUDA as if cuda:0 were an H100 (9.0) and cuda:1 a T4 (7.5), ``current`` the current
    device; returns the device indices whose capability was asked."""
    capabilities = {0: (9, 0), 1: (7, 5)}
    asked = []

    def capability(device=None):
        asked.append(device)
        return capabilities[device]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    return asked


@pytest.mark.parametrize("reason", [cuda.unavailable_reason, cuda.m2_unavailable_reason])
def test_each_card_is_judged_by_its_own_capability(monkeypatch, fresh, reason):
    asked = two_cards(monkeypatch, current=0)
    old_card = "the Triton kernels need compute capability 8.0 or newer, cuda:1 has 7.5"
    assert reason(torch.device("cuda", 1)) == old_card
    assert reason("cuda:1") == old_card
    assert reason(torch.device("cuda", 0)) is None
    assert reason() is None  # the current device, cuda:0
    assert reason(torch.device("cuda")) is None
    assert asked == [1, 0]  # once per card and process
    two_cards(monkeypatch, current=1)
    assert reason() == old_card and reason(torch.device("cuda")) == old_card


def test_device_guard_makes_the_tensors_card_current(monkeypatch):
    entered = []

    class Recorder:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *error):
            entered.append("exit")
            return False

    monkeypatch.setattr(torch.cuda, "device", Recorder)
    with triton_euler.device_guard(SimpleNamespace(device=torch.device("cuda", 1))):
        assert entered == [torch.device("cuda", 1)]
    assert entered == [torch.device("cuda", 1), "exit"]
    with triton_euler.device_guard(torch.zeros(1)):  # a CPU tensor: nothing to select
        pass
    assert len(entered) == 2


class _FakeKernel:
    """Stands for a Triton kernel: records the device guarded at each launch."""

    def __init__(self, name: str, launches: list, guarded: dict):
        self.name, self.launches, self.guarded = name, launches, guarded

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.name, self.guarded.get("device")))

        return launch


def test_every_launcher_launches_on_its_tensors_device(monkeypatch):
    guarded, launches = {}, []

    @contextlib.contextmanager
    def guard(tensor):
        guarded["device"] = tensor.device
        try:
            yield
        finally:
            guarded.pop("device")

    monkeypatch.setattr(triton_euler, "device_guard", guard)
    for module, names in ((triton_euler, ("_forward_kernel", "_backward_kernel")),
                          (triton_m2, ("_forward_kernel", "_hidden_backward_kernel",
                                       "_mix_backward_kernel"))):
        for name in names:
            monkeypatch.setattr(module, name, _FakeKernel(name, launches, guarded))
    cpu_device = torch.device("cpu")

    args = euler_arguments()
    out, states, _ = triton_euler.forward(**args)
    del args["check_finite"], args["store_states"]
    triton_euler.backward(torch.ones_like(out), **args, states=states)
    assert launches == [("_forward_kernel", cpu_device), ("_backward_kernel", cpu_device)]

    launches.clear()
    u, w1, b1, w2, b2, stencils, frame, boundary, dt = m2_arguments(hidden=3)
    z = triton_m2.mix_forward(u, w1, stencils, frame, boundary)
    triton_m2.mix_backward(torch.ones_like(z), u, w1, stencils, frame, boundary)
    triton_m2.step_forward(u, w1, b1, w2, b2, stencils, frame, boundary, dt)
    triton_m2.step_backward(torch.ones_like(u), u, w1, b1, w2, b2, stencils, frame, boundary, dt)
    assert launches == [("_forward_kernel", cpu_device), ("_mix_backward_kernel", cpu_device),
                        ("_forward_kernel", cpu_device),
                        ("_hidden_backward_kernel", cpu_device),
                        ("_mix_backward_kernel", cpu_device)]


# ----------------------------------------------------------------------------- Triton's version


def test_triton_older_than_the_floor_is_a_reason(monkeypatch, fresh):
    real = cuda.importlib.metadata.version
    installed = {"triton": "3.1.0"}
    monkeypatch.setattr(cuda.importlib.metadata, "version",
                        lambda name: installed[name] if name in installed else real(name))
    expected = ("the Triton kernels need Triton 3.2 or newer, 3.1.0 is installed "
                "(pip install -U 'eqpdenet[gpu]')")
    assert cuda.unavailable_reason() == expected  # before the device: it holds for every card
    assert cuda.m2_unavailable_reason(torch.device("cuda", 1)) == expected
    cuda.clear_caches()
    installed["triton"] = "3.2.0"
    two_cards(monkeypatch, current=0)
    assert cuda.unavailable_reason() is None


def test_the_version_floor_is_pyprojects():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = [spec for spec in project["optional-dependencies"]["gpu"]
              if spec.startswith("triton")]
    assert floors == ["triton>=" + ".".join(map(str, cuda.MIN_TRITON))]


# ----------------------------------------------------------------------------- compile failures


def _cpu_operator_or_skip(registry) -> None:
    """The fallback is the operator's CPU implementation (the C++ kernel, built on first use)."""
    reason = registry.get("cpu")()
    if reason is not None:
        pytest.skip(reason)


def test_a_kernel_that_does_not_compile_runs_on_the_cpu_operator(monkeypatch, fresh):
    _cpu_operator_or_skip(op.IMPLEMENTATIONS)
    monkeypatch.setattr(cuda, "unavailable_reason", lambda device=None: None)  # a capable card
    attempts = []

    def does_not_compile(u, *args, **kwargs):
        attempts.append(tuple(u.shape))
        raise OutOfResources(262144, 232448, "shared memory")

    monkeypatch.setattr(triton_euler, "forward", does_not_compile)
    args = euler_arguments(size=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = cuda._evolve_cuda(**args)
        again = cuda._evolve_cuda(**args)
        other = cuda._evolve_cuda(**euler_arguments(size=6))
    expected = torch.ops.eqpdenet.euler_evolve(**args)  # the C++ kernel
    for got in (first, again):
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)
    assert other[0].shape == (2, 2, 1, 6, 6)
    # one compile attempt per configuration (an image size here), then the CPU straight away
    assert attempts == [(2, 1, 5, 5), (2, 1, 6, 6)]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == [
        "eqpdenet: the Triton kernel of eqpdenet::euler_evolve did not compile for this "
        "configuration (OutOfResources: out of resource: shared memory, Required: 262144, "
        "Hardware limit: 232448. Reducing block sizes or `num_stages` may help.); "
        "eqpdenet::euler_evolve runs on the CPU (C++ kernel) instead, copying its tensors from "
        "and to cpu"]


def test_a_compiler_error_of_the_m2_step_runs_on_the_cpu_operator(monkeypatch, fresh):
    _cpu_operator_or_skip(M2_IMPLEMENTATIONS)
    monkeypatch.setattr(cuda, "m2_unavailable_reason", lambda device=None: None)

    def does_not_compile(*args, **kwargs):
        raise CompilationError(None, ast.Pass(), "Loop-carried variable z changes type")

    monkeypatch.setattr(triton_m2, "step_forward", does_not_compile)
    args = m2_arguments(hidden=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = cuda._m2_step_cuda(*args)
    assert torch.equal(got, torch.ops.eqpdenet.m2_euler_step(*args))
    assert [str(w.message) for w in caught] == [
        "eqpdenet: the Triton kernel of eqpdenet::m2_euler_step did not compile for this "
        "configuration (CompilationError: Loop-carried variable z changes type); "
        "eqpdenet::m2_euler_step runs on the CPU (C++ kernel) instead, copying its tensors "
        "from and to cpu"]


def test_errors_other_than_the_compilers_are_raised(monkeypatch, fresh):
    monkeypatch.setattr(cuda, "unavailable_reason", lambda device=None: None)

    def refuses(*args, **kwargs):
        raise InputError("euler_evolve: bad input")

    monkeypatch.setattr(triton_euler, "forward", refuses)
    with pytest.raises(InputError, match="bad input"):
        cuda._evolve_cuda(**euler_arguments())

    def fails_at_run_time(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(triton_euler, "forward", fails_at_run_time)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        cuda._evolve_cuda(**euler_arguments())
    assert not cuda._failed
    # what counts as the compiler's: its own errors, and an MLIR pass failing in C++
    assert cuda._compile_failure(RuntimeError("PassManager::run failed"))
    assert cuda._compile_failure(CompilationError(None, ast.Pass(), "x"))
    assert not cuda._compile_failure(triton.runtime.errors.InterpreterError("x"))


def test_a_card_that_cannot_run_the_kernels_uses_the_cpu_operator(monkeypatch, fresh):
    # A direct call of the operator (or a layer that asked about the current card only) on a
    # card older than sm_80: the CPU implementation, one warning, no Triton error.
    _cpu_operator_or_skip(op.IMPLEMENTATIONS)
    old_card = "the Triton kernels need compute capability 8.0 or newer, cuda:1 has 7.5"
    asked = []
    monkeypatch.setattr(cuda, "unavailable_reason",
                        lambda device=None: asked.append(device) or old_card)
    monkeypatch.setattr(triton_euler, "forward", lambda *a, **k: pytest.fail("launched"))
    args = euler_arguments()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = cuda._evolve_cuda(**args)
    assert asked == [args["u"].device]
    assert torch.equal(got[0], torch.ops.eqpdenet.euler_evolve(**args)[0])
    assert [str(w.message) for w in caught] == [
        f"eqpdenet: {old_card}; eqpdenet::euler_evolve runs on the CPU (C++ kernel) instead, "
        f"copying its tensors from and to cpu"]


# ----------------------------------------------------------------------------- int64 offsets

_OFFSETS = r"""
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from eqpdenet.kernels import triton_euler as te, triton_m2 as m2

def ttir(kernel, constexprs, warps, pointers):
    signature = {n: "constexpr" if n in constexprs else
                 (pointers.get(n, "*fp32") if n.endswith("_ptr") else "i32")
                 for n in kernel.arg_names}
    return triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps, "num_stages": 1}).asm["ttir"]

def products(ir, hw):
    # multiplications by the plane size H W: (int32, int64) counts
    counts = []
    for bits in (32, 64):
        names = set(re.findall(rf"(%\w+) = arith.constant (?:dense<{hw}> : tensor<[^>]*xi{bits}>"
                               rf"|{hw} : i{bits})", ir))
        counts.append(sum("arith.muli" in line and any(re.search(re.escape(n) + r"\b", line)
                                                       for n in names)
                          for line in ir.splitlines()))
    return counts

result = {}
euler = {"first_bad_ptr": "*i32", "recipe_ptr": "*i64", "stencil_ptr": "*fp64",
         "ipar_ptr": "*i32", "partial_ptr": "*fp64"}
H = W = 2048
result["euler forward"] = products(ttir(te._forward_kernel, {"H": H, "W": W, "BLOCK": 256,
    "LINEAR": True, "STORE": True, "CHECK": False}, 4, euler), H * W)
for stored in (False, True):
    result[f"euler backward stored={stored}"] = products(ttir(te._backward_kernel, {"H": H,
        "W": W, "BLOCK": 256, "LINEAR": True, "STORED": stored}, 4, euler), H * W)
H = W = 181
taps, radius, n = 5, 2, 8
common = {"N": n, "H": H, "W": W, "KT": taps, "BOUNDARY": 0}
band = {**common, "TR": 1, "BL": 256, "XBL": 256, "OB": 4}
whole = {**common, "BL": 256, "XBL": 256, "OB": 4, "ADD": True,
         "XWS": max(9 * (H + 2 * radius) * W, H * (W + 2 * radius))}
fp64 = {"partial_ptr": "*fp64"}
result["m2 step forward"] = products(ttir(m2._forward_kernel, {**band, "STEP": True}, 8, fp64), H * W)
result["m2 hidden backward"] = products(ttir(m2._hidden_backward_kernel, band, 8, fp64), H * W)
result["m2 mixing backward"] = products(ttir(m2._mix_backward_kernel, whole, 8, fp64), H * W)
print(json.dumps(result))
"""


@pytest.mark.slow
def test_offsets_by_the_plane_size_are_int64_in_the_compiled_kernels():
    """``step * H * W`` was computed in int32 and wrapped once steps x H x W reached 2**31 (a
    2048 x 2048 image and 512 Euler steps: stored states written over one another, silently);
    the M2 kernels' ``k * H * W`` likewise for N x H x W. No product by the plane size may be
    int32 in the TTIR of the kernels compiled for sm_90 (no GPU needed, a fresh process)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "src")
    result = subprocess.run([sys.executable, "-c", _OFFSETS], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.splitlines()[-1])
    assert sorted(counts) == ["euler backward stored=False", "euler backward stored=True",
                              "euler forward", "m2 hidden backward", "m2 mixing backward",
                              "m2 step forward"]
    # none in int32; some in int64 (the stored states, the workspace's halves, the maps k +- 1)
    assert all(int32 == 0 and int64 > 0 for int32, int64 in counts.values()), counts


# ----------------------------------------------------------------------------- M2 without hidden


@pytest.mark.skipif(DEVICE.type == "cpu" and not INTERPRETED,
                    reason="no GPU, and the Triton kernels were compiled (TRITON_INTERPRET is off)")
def test_m2_step_without_hidden_units_is_u_plus_dt_b2():
    _cpu_operator_or_skip(M2_IMPLEMENTATIONS)
    args = m2_arguments(hidden=0)  # w1 (0, C, 10): F = w2 relu(empty) + b2 = b2
    u, w1, b1, w2, b2, stencils, frame, boundary, dt = args
    expected = u + dt * b2.view(1, 2, 1, 1, 1)
    cpp = torch.ops.eqpdenet.m2_euler_step(*args)
    torch.testing.assert_close(cpp, expected, rtol=1e-15, atol=1e-15)
    on_device = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
    got = triton_m2.step_forward(*on_device)  # was uninitialised memory (4.7e204)
    torch.testing.assert_close(got.cpu(), cpp, rtol=1e-15, atol=1e-15)
    # the backward: grad_u = g, and b2's gradient sum_p dt g per image (it was zero)
    g = torch.randn(u.shape, generator=torch.Generator().manual_seed(4), dtype=u.dtype)
    grad_u, per_image = triton_m2.step_backward(g.to(DEVICE), *on_device)
    cpp_grad_u, cpp_per_image = torch.ops.eqpdenet.m2_euler_step_backward(g, *args)
    torch.testing.assert_close(grad_u.cpu(), cpp_grad_u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per_image.cpu(), cpp_per_image, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per_image.cpu(), dt * g.sum(dim=(2, 3, 4)), rtol=1e-12,
                               atol=1e-12)


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_euler_launchers_refuse_half_precision(dtype):
    args = euler_arguments()
    half = {**args, "u": args["u"].to(dtype), "weight": args["weight"].to(dtype),
            "bias": args["bias"].to(dtype)}
    with pytest.raises(InputError, match=rf"euler_evolve: the tensors must all be float32 or "
                                         rf"all float64, got u {dtype}, weight {dtype}"):
        triton_euler.forward(**half)
    backward = {k: v for k, v in half.items() if k not in ("check_finite", "store_states")}
    with pytest.raises(InputError, match="euler_evolve_backward: the tensors must all be"):
        triton_euler.backward(torch.zeros(2, 2, 1, 5, 5, dtype=dtype), **backward,
                              states=torch.empty(0, dtype=dtype))


def test_euler_launchers_refuse_mixed_precision():
    args = euler_arguments()
    with pytest.raises(InputError, match="got u torch.float32, weight torch.float64, bias "
                                         "torch.float32"):
        triton_euler.forward(**{**args, "weight": args["weight"].double()})


def test_the_operators_ask_about_the_tensors_own_device(monkeypatch):
    """The layers asked each device type's implementation about the current card only
    (``IMPLEMENTATIONS.get("cuda")()``); they now pass the tensor's device, so a model on
    cuda:1 is judged by cuda:1's capability."""
    from eqpdenet import PDELayer
    from eqpdenet.kernels import m2_op, op

    asked = []

    def recorder(device=None):
        asked.append(device)
        return None

    monkeypatch.setattr(op.IMPLEMENTATIONS, "get", lambda kind: recorder)
    monkeypatch.setattr(m2_op.M2_IMPLEMENTATIONS, "get", lambda kind: recorder)
    u = torch.zeros(1, 1, 8, 8)
    layer = PDELayer.build(["se2"])
    assert op.unsupported_reason(u, layer.kernel_specs()) is None
    field = torch.zeros(1, 2, 8, 8, 8)
    assert m2_op.m2_unsupported_reason(field, torch.zeros(3, 2, 10), "replicate", 1) is None
    assert asked == [u.device, field.device]
