"""The raw fused operators check what the C++ kernel checks, on every device (round 15).

* ``ratio_regularisations``: the Triton launchers (the ``cuda`` implementation of
  ``eqpdenet::euler_evolve``) ran a short list, or an unknown string, in the absolute mode where
  the C++ operator refuses them; they now refuse them with the C++ kernel's messages.
* ``stencils`` must be float64 (the schema's) for the Triton launchers too, and the Triton M2
  launchers take the C++ kernel's numbers of orientations only (4, 8, 12 or 16).
* A jet stencil not of the structured form the kernels read (a centre tap on ``u_x``, a corner
  tap on ``u``) was ignored, silently, by the C++ and the Triton kernels alike: every device's
  implementation now refuses it (``op.check_stencil_form``), judged once per stencils tensor
  and version.

The Triton checks run before any launch: they need Triton, neither a GPU nor its interpreter.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor

from eqpdenet.errors import ConfigError, InputError
from eqpdenet.kernels import cpu, op
from eqpdenet.pde import PDELayer
from eqpdenet.pde.m2 import orientation_frame, scale_levels, separable_stencils

needs_cpp = pytest.mark.skipif(not cpu.is_available(), reason="no C++ toolchain")


def triton_euler():
    pytest.importorskip("triton")
    from eqpdenet.kernels import triton_euler

    return triton_euler


def arguments(store_states: bool = True) -> dict:
    """The operator's named arguments for two PDEs (se2, scaling; absolute) of two steps on a
    batch of 2 images 5 x 5."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = PDELayer.build(["se2", "scaling"], rhs="linear", T=0.2, dt=0.1, init="normal",
                               init_scale=0.05, init_noise=0.0, ratio_regularisation="absolute")
    u = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return op.operator_arguments(u, layer.kernel_specs(), store_states)


def backward_arguments(args: dict) -> dict:
    rest = {k: v for k, v in args.items() if k not in ("check_finite", "store_states")}
    return dict(rest, grad_out=torch.ones(2, 2, 1, 5, 5), states=torch.empty(0))


def cpp_message(call) -> str:
    with pytest.raises(RuntimeError) as caught:
        call()
    return str(caught.value).splitlines()[0]


# ----------------------------------------------------------------------------- F1: regularisations

SHORT = [([], 0), (["covariant"], 1), (["absolute", "absolute", "absolute"], 3)]


@pytest.mark.parametrize("modes, count", SHORT)
def test_the_triton_launchers_refuse_a_ratio_regularisation_list_of_another_length(modes, count):
    kernels = triton_euler()
    args = dict(arguments(), ratio_regularisations=modes)
    message = f"ratio_regularisations must hold one value per PDE (2), got {count}"
    with pytest.raises(InputError) as caught:
        kernels.forward(**args)
    assert str(caught.value) == f"euler_evolve: {message}"
    with pytest.raises(InputError) as caught:
        kernels.backward(**backward_arguments(args))
    assert str(caught.value) == f"euler_evolve_backward: {message}"


@pytest.mark.parametrize("modes", [["bogus", "absolute"], ["absolute", "Absolute"]])
def test_the_triton_launchers_refuse_an_unknown_ratio_regularisation(modes):
    """``bogus`` is the se2 PDE's: its value was not looked at."""
    kernels = triton_euler()
    args = dict(arguments(), ratio_regularisations=modes)
    bad = next(mode for mode in modes if mode != "absolute")
    with pytest.raises(ConfigError) as caught:
        kernels.forward(**args)
    assert str(caught.value) == f"euler_evolve: unknown ratio regularisation {bad!r}"
    with pytest.raises(ConfigError) as caught:
        kernels.backward(**backward_arguments(args))
    assert str(caught.value) == f"euler_evolve_backward: unknown ratio regularisation {bad!r}"


@needs_cpp
@pytest.mark.parametrize("modes", [[], ["covariant"], ["bogus", "absolute"]])
def test_triton_and_cpp_refuse_ratio_regularisations_with_the_same_message(modes):
    kernels = triton_euler()
    args = dict(arguments(), ratio_regularisations=modes)
    cpp = cpp_message(lambda: torch.ops.eqpdenet.euler_evolve(**args))
    with pytest.raises((InputError, ConfigError)) as caught:
        kernels.forward(**args)
    assert cpp.startswith("fused_euler: ")
    assert str(caught.value) == cpp.replace("fused_euler: ", "euler_evolve: ", 1)


def test_the_registered_cuda_implementation_refuses_a_short_list(monkeypatch):
    """Through ``cuda._evolve_cuda`` (what ``torch.ops.eqpdenet.euler_evolve`` runs for CUDA
    tensors), with the card judged capable: the launcher runs under the interpreter here."""
    triton_euler()
    from eqpdenet.kernels import cuda

    monkeypatch.setattr(cuda, "unavailable_reason", lambda device=None: None)
    args = dict(arguments(), ratio_regularisations=["covariant"])
    with pytest.raises(InputError) as caught:
        cuda._evolve_cuda(**args)
    assert str(caught.value) == ("euler_evolve: ratio_regularisations must hold one value per "
                                 "PDE (2), got 1")


def test_a_covariant_se2_pde_is_still_computed():
    """se2 has no ratio: its regularisation is only checked to be known, as in C++."""
    kernels = triton_euler()
    args = arguments(store_states=False)
    given = kernels.forward(**dict(args, ratio_regularisations=["covariant", "absolute"]))
    default = kernels.forward(**dict(args, ratio_regularisations=None))
    for a, b in zip(given, default, strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- F1: siblings


def test_the_triton_launchers_refuse_float32_stencils():
    kernels = triton_euler()
    args = arguments()
    args["stencils"] = args["stencils"].float()
    with pytest.raises(InputError) as caught:
        kernels.forward(**args)
    assert str(caught.value) == "euler_evolve: stencils must be float64, got torch.float32"
    with pytest.raises(InputError) as caught:
        kernels.backward(**backward_arguments(args))
    assert str(caught.value) == ("euler_evolve_backward: stencils must be float64, got "
                                 "torch.float32")


def m2_arguments(n: int) -> tuple:
    u = torch.randn(1, 1, n, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weight = torch.randn(2, 1, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return u, weight, separable_stencils(scale_levels(0.5, 1)), orientation_frame(n)


@pytest.mark.parametrize("n", [2, 3, 6, 20])
def test_the_triton_m2_launchers_take_the_cpp_numbers_of_orientations_only(n):
    pytest.importorskip("triton")
    from eqpdenet.kernels import triton_m2

    u, weight, stencils, frame = m2_arguments(n)
    with pytest.raises(InputError) as caught:
        triton_m2.mix_forward(u, weight, stencils, frame, "zeros")
    assert str(caught.value) == f"m2_mix_invariants: N must be 4, 8, 12 or 16, got {n}"
    z = torch.ones(1, 2, n, 4, 5, dtype=torch.float64)
    with pytest.raises(InputError) as caught:
        triton_m2.mix_backward(z, u, weight, stencils, frame, "zeros")
    assert str(caught.value) == f"m2_mix_invariants_backward: N must be 4, 8, 12 or 16, got {n}"
    w1, b1 = weight, torch.zeros(2, dtype=torch.float64)
    w2, b2 = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    with pytest.raises(InputError) as caught:
        triton_m2.step_forward(u, w1, b1, w2, b2, stencils, frame, "zeros", 0.1)
    assert str(caught.value) == f"m2_euler_step: N must be 4, 8, 12 or 16, got {n}"
    with pytest.raises(InputError) as caught:
        triton_m2.step_backward(torch.ones_like(u), u, w1, b1, w2, b2, stencils, frame, "zeros",
                                0.1)
    assert str(caught.value) == f"m2_euler_step_backward: N must be 4, 8, 12 or 16, got {n}"


@needs_cpp
def test_the_cpp_m2_operator_says_the_same_about_orientations():
    u, weight, stencils, frame = m2_arguments(6)
    assert cpp_message(lambda: torch.ops.eqpdenet.m2_mix_invariants(
        u, weight, stencils, frame, "zeros")) == "m2_invariants: N must be 4, 8, 12 or 16, got 6"


# ----------------------------------------------------------------------------- F2: stencil form


def off_form(stencils: Tensor) -> Tensor:
    """``stencils`` with a centre tap on PDE 1's ``u_x``: ignored by both kernels before."""
    changed = stencils.clone()
    changed[1, 1, 1, 1] += 0.5
    return changed


FORM = ("u the centre tap only; u_x and u_y odd along their axis and even across it; u_xx and "
        "u_yy even both ways; u_xy a multiple of [[-1, 0, 1], [0, 0, 0], [1, 0, -1]] (the "
        "central and isotropic stencils)")


def form_message(what: str, e: int) -> str:
    return (f"{what}: stencils[{e}] is not of the form the fused kernels compute with ({FORM}); "
            f"its other taps would be ignored. Other stencils run on the reference PDE layer "
            f"(backend='reference')")


@needs_cpp
def test_the_cpp_operator_refuses_a_stencil_not_of_the_form_it_reads():
    args = arguments()
    args["stencils"] = off_form(args["stencils"])
    with pytest.raises(InputError) as caught:
        torch.ops.eqpdenet.euler_evolve(**args)
    assert str(caught.value) == form_message("euler_evolve", 1)
    with pytest.raises(InputError) as caught:
        torch.ops.eqpdenet.euler_evolve_backward(**backward_arguments(args))
    assert str(caught.value) == form_message("euler_evolve_backward", 1)


def test_the_triton_launchers_refuse_a_stencil_not_of_the_form_they_read():
    kernels = triton_euler()
    args = arguments()
    args["stencils"] = args["stencils"].clone()
    args["stencils"][0, 0, 0, 0] = 0.3  # a corner tap on u
    with pytest.raises(InputError) as caught:
        kernels.forward(**args)
    assert str(caught.value) == form_message("euler_evolve", 0)
    with pytest.raises(InputError) as caught:
        kernels.backward(**backward_arguments(args))
    assert str(caught.value) == form_message("euler_evolve_backward", 0)


def test_a_non_finite_stencil_is_named_as_such():
    stencils = arguments()["stencils"].clone()
    stencils[1, 3, 1, 1] = float("nan")
    with pytest.raises(InputError) as caught:
        op.check_stencil_form("euler_evolve", stencils)
    assert str(caught.value) == "euler_evolve: stencils[1] holds a non-finite value"


@needs_cpp
def test_stencils_are_judged_once_per_tensor_and_version(monkeypatch):
    """The layer's stencils (one tensor per configuration) are judged at their first call only;
    an in-place change is judged again, and one that leaves the form is refused."""
    args = arguments()
    stencils = args["stencils"]
    judged = []
    real = op._has_supported_form
    monkeypatch.setattr(op, "_has_supported_form", lambda k: judged.append(1) or real(k))
    op._form_checked.pop(stencils, None)
    first = torch.ops.eqpdenet.euler_evolve(**args)
    second = torch.ops.eqpdenet.euler_evolve(**args)
    assert len(judged) == 2  # two PDEs, once
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    saved = stencils.clone()
    try:
        stencils[1, 1, 1, 1] += 0.5  # in place: a new version
        with pytest.raises(InputError) as caught:
            torch.ops.eqpdenet.euler_evolve(**args)
        assert str(caught.value) == form_message("euler_evolve", 1)
    finally:
        stencils.copy_(saved)  # the entry is shared with other tests of this configuration
    torch.ops.eqpdenet.euler_evolve(**args)
    assert len(judged) == 2 + 2 + 2  # refused at PDE 1 (0 and 1), then both again


def test_stencils_made_in_inference_mode_are_judged_at_every_call():
    """Inference tensors have no version counter (reading it raised)."""
    made = arguments()["stencils"]
    with torch.inference_mode():
        stencils = made.clone()
        assert stencils.is_inference()
        op.check_stencil_form("euler_evolve", stencils)
        stencils[0, 4, 0, 0] += 1.0  # u_xy no longer a multiple of the cross pattern
        with pytest.raises(InputError) as caught:
            op.check_stencil_form("euler_evolve", stencils)
    assert str(caught.value) == form_message("euler_evolve", 0)
