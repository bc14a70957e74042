"""The Triton launchers keep the C++ operator's rules (round 8): the stored states past a PDE's
own steps are zeros, stencils are taken only as ``(E, 6, 3, 3)``, steps beyond an int32 are
refused, and results are contiguous whatever the input's strides. Run in Triton's interpreter on
CPU tensors (``TRITON_INTERPRET=1``, set by ``conftest.py``), on tiny images."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqpdenet.errors import InputError
from eqpdenet.kernels import op
from eqpdenet.pde import PDELayer
from eqpdenet.pde.m2 import orientation_frame, scale_levels, separable_stencils

triton = pytest.importorskip("triton")
from eqpdenet.kernels import triton_euler, triton_m2  # noqa: E402  (needs Triton)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and type(triton_euler._forward_kernel).__name__ != "InterpretedFunction":
    pytest.skip("no GPU, and the Triton kernels were compiled (TRITON_INTERPRET is off)",
                allow_module_level=True)


def arguments(steps, store_states=True):
    """The operator's arguments for a two-PDE layer on a 1 x 1 x 4 x 5 image, with the PDEs'
    step counts set to ``steps``."""
    torch.manual_seed(0)
    with warnings.catch_warnings():  # random coefficients may break the diffusion bound: fine
        warnings.simplefilter("ignore")
        layer = PDELayer.build(["se2", "se2"], rhs="linear", T=0.2, dt=0.1, init="normal",
                               init_scale=0.05, init_noise=0.0, ratio_regularisation="absolute")
    layer = layer.to(DEVICE, torch.float64)
    for pde, count in zip(layer.pdes, steps, strict=True):
        pde.steps = count
    u = torch.rand(1, 1, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return op.operator_arguments(u.to(DEVICE), layer.kernel_specs(), store_states)


def test_the_states_past_a_pdes_own_steps_are_zeros_as_the_cpp_operators():
    args = arguments([0, 2])
    out, states, _ = triton_euler.forward(**args)
    assert states.shape[3] == 2
    assert not states[:, 0].any()  # never written: zeros, not what the allocator gave
    # the written slots: the second PDE's trajectory, u_0 = u and u_1
    torch.testing.assert_close(states[:, 1, :, 0], args["u"], rtol=0, atol=0)
    assert states[:, 1, :, 1].ne(args["u"]).any()


def test_stencils_of_another_layout_and_steps_beyond_an_int32_are_refused():
    args = arguments([1, 1])
    permuted = dict(args, stencils=args["stencils"].permute(0, 2, 3, 1).contiguous())
    with pytest.raises(InputError, match=r"stencils must be \(E, 6, 3, 3\) = \(2, 6, 3, 3\), got "
                                         r"\(2, 3, 3, 6\)"):
        triton_euler.forward(**permuted)
    with pytest.raises(InputError, match=r"steps must be <= 2147483647, got 4294967297 for PDE 1"):
        triton_euler.forward(**dict(args, steps=[1, 2**32 + 1]))


def test_no_pde_gives_contiguous_zero_gradients_whatever_the_strides():
    u = torch.rand(1, 1, 4, 5, dtype=torch.float64, device=DEVICE).transpose(2, 3)  # (1, 1, 5, 4)
    assert not u.is_contiguous()
    weight, bias = u.new_zeros(0, 1), u.new_zeros(0)
    monomials = torch.zeros(0, 1, 2, dtype=torch.int64, device=DEVICE)
    stencils = torch.zeros(0, 6, 3, 3, dtype=torch.float64, device=DEVICE)
    grads = triton_euler.backward(u.new_zeros(1, 0, 1, 5, 4), u, weight, bias, monomials,
                                  stencils, [], [], [], [], [], u.new_empty(0))
    assert [tuple(g.shape) for g in grads] == [(1, 1, 5, 4), (0, 1), (0,)]
    assert all(g.is_contiguous() for g in grads) and not grads[0].any()


def test_the_m2_step_without_hidden_units_is_contiguous_for_a_strided_field():
    u = torch.rand(1, 2, 4, 3, 5, dtype=torch.float64).transpose(3, 4)  # (1, 2, 4, 5, 3)
    assert not u.is_contiguous()
    w1, b1 = u.new_zeros(0, 2, 10), u.new_zeros(0)
    w2, b2 = u.new_zeros(2, 0), torch.tensor([0.5, -1.0], dtype=torch.float64)
    stencils = separable_stencils(scale_levels(0.5, 1)).to(DEVICE)
    frame = orientation_frame(4).to(DEVICE)
    out = triton_m2.step_forward(u, w1, b1, w2, b2, stencils, frame, "zeros", 0.3)
    assert out.is_contiguous()
    torch.testing.assert_close(out, u + 0.3 * b2.view(1, 2, 1, 1, 1), rtol=0, atol=0)
