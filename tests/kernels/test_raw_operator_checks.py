"""The raw fused operators refuse arguments they would read out of bounds.

The layers choose the fused path only for what it supports (``op.unsupported_reason``), but the
operators themselves are public (``torch.ops.eqpdenet.*``, ``triton_euler.forward``): a reflect
boundary on an image one pixel wide, a ``grad_out`` or ``states`` of another shape, a monomial
recipe that points past the invariants were taken and read outside the tensors (NaN or garbage
here, an illegal memory access on a GPU; the C++ kernel and the Triton launcher even disagreed).
The C++ kernel now refuses them with ``TORCH_CHECK`` (a ``RuntimeError``), the Triton launchers
with an :class:`~eqpdenet.errors.InputError`, before anything runs; the M2 operators' C++
backward passes check their gradient's shape as their Triton launchers already did.

The Triton checks run before any launch, so they need Triton but neither a GPU nor its
interpreter.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from eqpdenet.errors import InputError
from eqpdenet.kernels import cpu, op
from eqpdenet.pde import PDELayer
from eqpdenet.pde.m2 import orientation_frame, scale_levels, separable_stencils

needs_cpp = pytest.mark.skipif(not cpu.is_available(), reason="no C++ toolchain")


def triton_euler():
    pytest.importorskip("triton")
    from eqpdenet.kernels import triton_euler

    return triton_euler


def arguments(height: int = 5, width: int = 5, boundary: str = "replicate",
              store_states: bool = True) -> dict:
    """The operator's named arguments for two PDEs (se2, scaling) of two steps on a batch of 2."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = PDELayer.build(["se2", "scaling"], rhs="linear", T=0.2, dt=0.1, init="normal",
                               init_scale=0.05, init_noise=0.0, ratio_regularisation="absolute",
                               boundary=boundary)
    u = torch.rand(2, 1, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return op.operator_arguments(u, layer.kernel_specs(), store_states)


def backward_arguments(args: dict) -> dict:
    return {k: v for k, v in args.items() if k not in ("check_finite", "store_states")}


# ----------------------------------------------------------------------------- reflect, 1 pixel


@needs_cpp
@pytest.mark.parametrize("height, width", [(9, 1), (1, 9)])
def test_the_cpp_operator_refuses_a_reflect_boundary_on_one_pixel(height, width):
    args = arguments(height, width, boundary="reflect")
    message = (f"fused_euler: a reflect boundary needs images of at least 2 x 2 pixels, got "
               f"{height} x {width}")
    with pytest.raises(RuntimeError, match=message):
        torch.ops.eqpdenet.euler_evolve(**args)
    grad = torch.ones(2, 2, 1, height, width)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.eqpdenet.euler_evolve_backward(grad, **backward_arguments(args),
                                                 states=torch.empty(0))


@pytest.mark.parametrize("height, width", [(9, 1), (1, 9)])
def test_the_triton_launchers_refuse_a_reflect_boundary_on_one_pixel(height, width):
    kernels = triton_euler()
    args = arguments(height, width, boundary="reflect")
    message = (f"a reflect boundary needs images of at least 2 x 2 pixels, got {height} x "
               f"{width}")
    with pytest.raises(InputError, match=f"euler_evolve: {message}"):
        kernels.forward(**args)
    with pytest.raises(InputError, match=f"euler_evolve_backward: {message}"):
        kernels.backward(torch.ones(2, 2, 1, height, width), **backward_arguments(args),
                         states=torch.empty(0))


@needs_cpp
def test_a_reflect_boundary_on_two_pixels_still_runs():
    args = arguments(2, 2, boundary="reflect")
    out, states, first_bad = torch.ops.eqpdenet.euler_evolve(**args)
    assert out.shape == (2, 2, 1, 2, 2) and bool(torch.isfinite(out).all())


# ----------------------------------------------------------------------------- the backward's inputs

WRONG_GRADS = [(2, 2, 1, 4, 4), (2, 2, 1, 25), (2, 1, 5, 5), (2, 1, 1, 5, 5)]


@needs_cpp
@pytest.mark.parametrize("shape", WRONG_GRADS)
def test_the_cpp_backward_refuses_a_grad_out_of_another_shape(shape):
    args = arguments()
    _, states, _ = torch.ops.eqpdenet.euler_evolve(**args)
    with pytest.raises(RuntimeError, match=r"fused_euler: grad_out must be \(B, E, C, H, W\) = "
                                           r"\[2, 2, 1, 5, 5\] like the forward's output"):
        torch.ops.eqpdenet.euler_evolve_backward(torch.randn(shape), **backward_arguments(args),
                                                 states=states)


@pytest.mark.parametrize("shape", WRONG_GRADS)
def test_the_triton_backward_refuses_a_grad_out_of_another_shape(shape):
    kernels = triton_euler()
    args = arguments()
    with pytest.raises(InputError, match=r"euler_evolve_backward: grad_out must be \(B, E, C, H, "
                                         r"W\) = \(2, 2, 1, 5, 5\) like the forward's output"):
        kernels.backward(torch.randn(shape), **backward_arguments(args), states=torch.empty(0))


@needs_cpp
def test_the_cpp_backward_refuses_states_of_another_shape():
    args = arguments()
    with pytest.raises(RuntimeError, match=r"fused_euler: states must be empty or \(B, E, C, "
                                           r"max\(steps\), H, W\) = \[2, 2, 1, 2, 5, 5\]"):
        torch.ops.eqpdenet.euler_evolve_backward(torch.randn(2, 2, 1, 5, 5),
                                                 **backward_arguments(args),
                                                 states=torch.randn(2, 2, 1, 1, 5, 5))


def test_the_triton_backward_refuses_states_of_another_shape():
    kernels = triton_euler()
    args = arguments()
    with pytest.raises(InputError, match=r"euler_evolve_backward: states must be empty or \(B, E, "
                                         r"C, max\(steps\), H, W\) = \(2, 2, 1, 2, 5, 5\)"):
        kernels.backward(torch.randn(2, 2, 1, 5, 5), **backward_arguments(args),
                         states=torch.randn(2, 2, 1, 1, 5, 5))


def test_the_triton_launchers_name_a_u_of_three_dimensions():
    """It was Python's "not enough values to unpack", before the launcher's own message."""
    kernels = triton_euler()
    args = arguments()
    with pytest.raises(InputError, match=r"euler_evolve: u must be \(B, C, H, W\), got shape "
                                         r"\(1, 5, 5\)"):
        kernels.forward(**{**args, "u": args["u"][0]})
    with pytest.raises(InputError, match=r"euler_evolve_backward: u must be \(B, C, H, W\)"):
        kernels.backward(torch.randn(2, 2, 1, 5, 5),
                         **{**backward_arguments(args), "u": args["u"][0]}, states=torch.empty(0))


# ----------------------------------------------------------------------------- recipes and settings


def bad_recipe(args: dict, row: tuple[int, int]) -> dict:
    monomials = args["monomials"].clone()
    monomials[1, 0] = torch.tensor(row)  # the scaling PDE's first monomial
    return {**args, "monomials": monomials}


@needs_cpp
@pytest.mark.parametrize("row", [(0, 0), (-1, 6), (-2, 0)], ids=["later", "invariant", "negative"])
def test_the_cpp_operator_refuses_a_recipe_that_points_outside(row):
    with pytest.raises(RuntimeError, match=r"fused_euler: monomial 0 of a 'scaling' PDE must be "
                                           r"\(an earlier monomial or -1, an invariant below 6\)"):
        torch.ops.eqpdenet.euler_evolve(**bad_recipe(arguments(), row))


@pytest.mark.parametrize("row", [(0, 0), (-1, 6), (-2, 0)], ids=["later", "invariant", "negative"])
def test_the_triton_launcher_refuses_a_recipe_that_points_outside(row):
    kernels = triton_euler()
    with pytest.raises(InputError, match=r"euler_evolve: monomial 0 of a 'scaling' PDE must be "
                                         r"\(an earlier monomial or -1, an invariant below 6\)"):
        kernels.forward(**bad_recipe(arguments(), row))


@needs_cpp
def test_the_cpp_operator_refuses_negative_steps():
    with pytest.raises(RuntimeError, match="fused_euler: steps must be >= 0, got -1 for PDE 1"):
        torch.ops.eqpdenet.euler_evolve(**{**arguments(), "steps": [2, -1]})


def test_the_triton_launchers_check_their_settings():
    kernels = triton_euler()
    with pytest.raises(InputError, match="euler_evolve: steps must be >= 0, got -1 for PDE 1"):
        kernels.forward(**{**arguments(), "steps": [2, -1]})
    with pytest.raises(InputError, match=r"euler_evolve: dt must hold one value per PDE \(2\), "
                                         r"got 1"):
        kernels.forward(**{**arguments(), "dt": [0.1]})


# ----------------------------------------------------------------------------- the M2 operators


def m2_arguments(dtype=torch.float64) -> tuple:
    generator = torch.Generator().manual_seed(3)
    u = torch.randn(2, 2, 4, 3, 3, generator=generator, dtype=dtype)
    w1 = torch.randn(3, 2, 10, generator=generator, dtype=dtype)
    b1 = torch.randn(3, generator=generator, dtype=dtype)
    w2 = torch.randn(2, 3, generator=generator, dtype=dtype)
    b2 = torch.tensor([1.0, -2.0], dtype=dtype)
    return (u, w1, b1, w2, b2, separable_stencils(scale_levels(0.5, 1)), orientation_frame(4),
            "replicate", 0.3)


@needs_cpp
@pytest.mark.parametrize("shape", [(2, 3, 4, 2, 2), (108,)])
def test_the_m2_cpp_backward_refuses_a_grad_of_another_shape(shape):
    """It read past the gradient (sums of 1e251 came back)."""
    u, w1, b1, w2, b2, stencils, frame, boundary, dt = args = m2_arguments()
    with pytest.raises(RuntimeError, match=r"m2_invariants: grad_z must be contiguous \(B, O, N, "
                                           r"H, W\) like the forward's output"):
        torch.ops.eqpdenet.m2_mix_invariants_backward(torch.randn(shape, dtype=u.dtype), u, w1,
                                                      stencils, frame, boundary)
    with pytest.raises(RuntimeError, match=r"m2_euler_step: grad_next must be contiguous with the "
                                           r"shape of u \[2, 2, 4, 3, 3\]"):
        torch.ops.eqpdenet.m2_euler_step_backward(torch.randn(shape, dtype=u.dtype), *args)


@needs_cpp
def test_the_m2_cpp_operator_names_a_u_of_four_dimensions():
    """It said "frame must be (N, 2)"."""
    u, *rest = m2_arguments()
    with pytest.raises(RuntimeError, match=r"m2_invariants: u must be \(B, C, N, H, W\), got "
                                           r"\[2, 4, 3, 3\]"):
        torch.ops.eqpdenet.m2_euler_step(u[0], *rest)
