"""Triton kernels of the fused PDE evolution: the CUDA implementation of the operators declared in
:mod:`eqpdenet.kernels.op` (registered for ``cuda`` tensors by :mod:`eqpdenet.kernels.cuda`).

This module imports Triton, an optional dependency (``pip install 'eqpdenet[gpu]'``), and is
imported only when a kernel is launched. :func:`forward` and :func:`backward` take exactly the
operators' arguments. They run on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, which Triton reads when this module is imported: the tests set it in
``conftest.py`` where no GPU exists). The semantics are those of the plain PyTorch reference
(:mod:`eqpdenet.pde`) and of the C++ kernel (``csrc/fused_euler.cpp``): 3x3 stencils of the
structured form of :func:`~eqpdenet.kernels.op.stencil_is_supported` (any other refused:
:func:`~eqpdenet.kernels.op.check_stencil_form`), the four boundaries as
:func:`torch.nn.functional.pad` pads, the invariant sets of :data:`SET_CODES`, any ``MonomialF``
through its monomial recipe, and the exact adjoint of the discrete scheme.

Design (one launch for the forward pass, one for the backward pass, whatever ``E`` and the
number of steps):

* **Work items** are (image, PDE) pairs. A fixed grid of programs (a few per multiprocessor:
  :data:`FORWARD_PROGRAMS_PER_SM`, :data:`BACKWARD_PROGRAMS_PER_SM`) loops over them, and each
  program owns a slice of a workspace in global memory, a few tens of KiB that stay in the L1/L2
  caches. All Euler steps of an item run inside
  the program: the state never leaves the workspace between steps; a barrier separates steps.
* **Forward**: each step reads the 3x3 neighbourhood of every pixel (the boundary padding done
  by index arithmetic, no padded copy), computes the jet, the invariants, ``F`` and
  ``u + dt (F + b)`` in registers and writes the next state to the other half of the workspace.
  Only the final state (and, with ``store_states``, every state) is written to the outputs.
* **Backward**: the states come from ``states`` or are recomputed into the workspace (the
  ``recompute`` option: memory O(programs), not O(batch x steps)). Each adjoint step is three
  passes over the image separated by barriers: (a) jet, invariants and the cotangent of the jet,
  folded at once into the nine stencil taps ``H_o = sum_d K_d[o] G_d``, with the parameter
  gradients accumulated per lane; (b) the transposed stencil on the padded grid,
  ``sum_o H_o[P - o]``; (c) the adjoint of the padding (the halo added back onto the pixels it
  was copied from), added to the state's cotangent.
* **Parameter gradients** are summed per lane (registers for a linear ``F``, the workspace for a
  polynomial one), reduced in float64 per work item and added to the program's own row of a
  ``(programs, E, M + 1)`` float64 tensor, summed afterwards: no atomics, no address written by
  two programs, and the same numbers on every run. The input gradient is written per (image,
  PDE) and summed over PDEs afterwards, for the same reason.
* **Barriers**: threads of a program exchange pixels through the workspace, separated by
  ``tl.debug_barrier()`` (``bar.sync``: prior global stores visible to the whole block); the
  launches use ``num_stages=1`` so that no load is software-pipelined across a barrier.
* **Rounding**: multiply-adds are contracted (``enable_fp_fusion``), so results agree with the
  reference and the C++ kernel to rounding, not bit for bit.
* **Finiteness**: every lane keeps the first step at which one of its pixels was not finite (a
  non-finite pixel stays non-finite under ``u + dt F``); one reduction per work item gives
  ``first_bad``. Nothing is read back to the host here.

Adding an invariant set is local: a code in :data:`SET_CODES` and :data:`N_INVARIANTS`, its
invariants and their adjoint (``_<set>_invariants`` and ``_<set>_adjoint``, at most
:data:`KMAX` invariants, zeros past its own count) and one branch in :func:`_invariants` and
:func:`_invariants_adjoint`. A new per-PDE setting (a regularisation mode, say) is a column of
the small settings tensors built by :func:`_settings`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..errors import ConfigError, InputError
from .op import KERNEL_MAX_STEPS, KERNEL_RATIO_REGULARISATIONS, check_stencil_form, host_copy

__all__ = ["BOUNDARY_CODES", "KMAX", "N_INVARIANTS", "SET_CODES", "backward", "device_guard",
           "forward", "on_tensor_device"]

#: Invariant sets these kernels implement (kernel name -> code) and their numbers of invariants.
SET_CODES = {"se2": 0, "scaling": 1}
N_INVARIANTS = {"se2": 5, "scaling": 6}
#: Invariants per set, at most: the per-set functions return this many values.
KMAX = 6
BOUNDARY_CODES = {"replicate": 0, "zeros": 1, "reflect": 2, "circular": 3}

#: Programs per streaming multiprocessor (persistent grid) of the forward and backward kernels;
#: each owns a workspace slice (the backward's is about ten images, the forward's two).
FORWARD_PROGRAMS_PER_SM = 8
BACKWARD_PROGRAMS_PER_SM = 4
#: Pixels per block: images are processed in chunks of this many, two pixels per thread of four
#: warps (ptxas for sm_90: 64 registers per thread forward, 80 backward, no spills; a block of
#: 1024 needed 217 and 255 plus spills).
MAX_BLOCK = 256
#: Programs when running on the CPU (Triton's interpreter runs them one after the other).
CPU_PROGRAMS = 4

# Columns of the per-PDE integer settings (ipar) and floating-point settings (fpar).
_IPAR = ("set", "steps", "check", "nmono", "zeros", "top", "bottom", "left", "right")
_FPAR = ("dt", "eps2")
_NO_BAD = tl.constexpr(2147483647)  # "no non-finite step" while taking minima
# _MASK_NOTE: masks combine blocks with conditions on scalars only after broadcasting the scalar
# (``i * 0 + zeros``): Triton 3.9's interpreter rejects a mask made of a block and a scalar
# condition ("mask has unsupported dtype"); compiled code is the same either way.
# _INT64_NOTE: an index times the plane size HW is widened to int64 before the product. Scalars
# (loop counters, settings) are int32, and ``step * HW`` wrapped once max steps x H x W reached
# 2**31 (a 2048 x 2048 image and 512 steps): states stored and recomputed at wrong addresses.
# Offsets within one plane (pixel indices, bounded by HW) stay int32.

# ----------------------------------------------------------------------------- pointwise math


@triton.jit
def _taps(ptr, i, j, inside, zeros, top, bottom, left, right, H: tl.constexpr, W: tl.constexpr):
    """The 3x3 neighbourhood of pixels (i, j) of the image at ``ptr`` (row-major, H x W), padded
    by one pixel as torch.nn.functional.pad pads: the padded row -1 is row ``top``, row H is row
    ``bottom`` (columns likewise; the padding is separable), or zero where ``zeros``."""
    im = tl.where(i == 0, top, i - 1)
    ip = tl.where(i == H - 1, bottom, i + 1)
    jm = tl.where(j == 0, left, j - 1)
    jp = tl.where(j == W - 1, right, j + 1)
    copies = (i * 0 + zeros) == 0  # a block, not a scalar: see _MASK_NOTE
    ok_im = inside & ((i > 0) | copies)
    ok_ip = inside & ((i < H - 1) | copies)
    ok_jm = (j > 0) | copies
    ok_jp = (j < W - 1) | copies
    row_t = ptr + im * W
    row_c = ptr + i * W
    row_b = ptr + ip * W
    t_l = tl.load(row_t + jm, mask=ok_im & ok_jm, other=0.0)
    t_c = tl.load(row_t + j, mask=ok_im, other=0.0)
    t_r = tl.load(row_t + jp, mask=ok_im & ok_jp, other=0.0)
    c_l = tl.load(row_c + jm, mask=inside & ok_jm, other=0.0)
    c_c = tl.load(row_c + j, mask=inside, other=0.0)
    c_r = tl.load(row_c + jp, mask=inside & ok_jp, other=0.0)
    b_l = tl.load(row_b + jm, mask=ok_ip & ok_jm, other=0.0)
    b_c = tl.load(row_b + j, mask=ok_ip, other=0.0)
    b_r = tl.load(row_b + jp, mask=ok_ip & ok_jp, other=0.0)
    return c_c, c_l, c_r, t_c, b_c, t_l, t_r, b_l, b_r


@triton.jit
def _jet(c_c, c_l, c_r, t_c, b_c, t_l, t_r, b_l, b_r, cu, ax0, ax1, ay0, ay1, b0, b1, b2, b3, cxy,
         e0, e1, e2, e3):
    """u, u_x, u_y, u_xx, u_xy, u_yy from the nine taps (row t(op), c(entre), b(ottom) by column
    l, c, r; y points up, so the top row is +y) and the structured stencil coefficients, grouped
    as in the C++ kernel."""
    corners = (t_l + t_r) + (b_l + b_r)
    u = cu * c_c
    ux = ax0 * (c_r - c_l) + ax1 * ((t_r - t_l) + (b_r - b_l))
    uy = ay0 * (t_c - b_c) + ay1 * ((t_l - b_l) + (t_r - b_r))
    uxx = b0 * (c_l + c_r) + b1 * c_c + b2 * corners + b3 * (t_c + b_c)
    uxy = cxy * ((t_r - t_l) + (b_l - b_r))
    uyy = e0 * (t_c + b_c) + e1 * c_c + e2 * corners + e3 * (c_l + c_r)
    return u, ux, uy, uxx, uxy, uyy


@triton.jit
def _adjoint_taps(g0, gx, gy, gxx, gxy, gyy, cu, ax0, ax1, ay0, ay1, b0, b1, b2, b3, cxy, e0, e1,
                  e2, e3):
    """``H_o = sum_d K_d[o] G_d`` for the nine taps o (c, l, r, t, b, tl, tr, bl, br): the
    cotangents of the jet folded into the weight each neighbour received."""
    h_c = cu * g0 + b1 * gxx + e1 * gyy
    h_l = -ax0 * gx + b0 * gxx + e3 * gyy
    h_r = ax0 * gx + b0 * gxx + e3 * gyy
    h_t = ay0 * gy + b3 * gxx + e0 * gyy
    h_b = -ay0 * gy + b3 * gxx + e0 * gyy
    h_tl = -ax1 * gx + ay1 * gy + b2 * gxx - cxy * gxy + e2 * gyy
    h_tr = ax1 * gx + ay1 * gy + b2 * gxx + cxy * gxy + e2 * gyy
    h_bl = -ax1 * gx - ay1 * gy + b2 * gxx + cxy * gxy + e2 * gyy
    h_br = ax1 * gx - ay1 * gy + b2 * gxx - cxy * gxy + e2 * gyy
    return h_c, h_l, h_r, h_t, h_b, h_tl, h_tr, h_bl, h_br


# --- per invariant set: the invariants (KMAX values) and the adjoint of the jet -> invariants map


@triton.jit
def _se2_invariants(u, ux, uy, uxx, uxy, uyy):
    """eq. (4): u, |grad u|^2, Laplacian, grad u . H grad u, |H|^2."""
    return (u, ux * ux + uy * uy, uxx + uyy, ux * ux * uxx + 2.0 * ux * uy * uxy + uy * uy * uyy,
            uxx * uxx + 2.0 * uxy * uxy + uyy * uyy, tl.zeros_like(u))


@triton.jit
def _se2_adjoint(ux, uy, uxx, uxy, uyy, g0, g1, g2, g3, g4, gd):
    """Jet cotangents ``gd sum_k g_k dI_k/d(jet_d)`` of the se2 invariants."""
    return (gd * g0,
            gd * (2.0 * ux * g1 + 2.0 * (ux * uxx + uy * uxy) * g3),
            gd * (2.0 * uy * g1 + 2.0 * (ux * uxy + uy * uyy) * g3),
            gd * (g2 + ux * ux * g3 + 2.0 * uxx * g4),
            gd * (2.0 * ux * uy * g3 + 4.0 * uxy * g4),
            gd * (g2 + uy * uy * g3 + 2.0 * uyy * g4))


@triton.jit
def _scaling_invariants(ux, uy, uxx, uxy, uyy, eps2):
    """eq. (5): u_a^2 / u_bc, each ratio regularised as ``n d / (d^2 + eps^2)``."""
    ax = ux * ux
    ay = uy * uy
    sxx = uxx / (uxx * uxx + eps2)
    sxy = uxy / (uxy * uxy + eps2)
    syy = uyy / (uyy * uyy + eps2)
    return ax * sxx, ax * sxy, ax * syy, ay * sxx, ay * sxy, ay * syy


@triton.jit
def _scaling_adjoint(ux, uy, uxx, uxy, uyy, eps2, g0, g1, g2, g3, g4, g5, gd):
    """Jet cotangents of the scaling invariants (d/dd of d / (d^2 + eps^2) is
    (eps^2 - d^2) / (d^2 + eps^2)^2)."""
    ax = ux * ux
    ay = uy * uy
    rxx = 1.0 / (uxx * uxx + eps2)
    rxy = 1.0 / (uxy * uxy + eps2)
    ryy = 1.0 / (uyy * uyy + eps2)
    sxx = uxx * rxx
    sxy = uxy * rxy
    syy = uyy * ryy
    pxx = (eps2 - uxx * uxx) * rxx * rxx
    pxy = (eps2 - uxy * uxy) * rxy * rxy
    pyy = (eps2 - uyy * uyy) * ryy * ryy
    return (tl.zeros_like(ux),
            gd * (2.0 * ux * (g0 * sxx + g1 * sxy + g2 * syy)),
            gd * (2.0 * uy * (g3 * sxx + g4 * sxy + g5 * syy)),
            gd * (pxx * (ax * g0 + ay * g3)),
            gd * (pxy * (ax * g1 + ay * g4)),
            gd * (pyy * (ax * g2 + ay * g5)))


@triton.jit
def _invariants(set_code, u, ux, uy, uxx, uxy, uyy, eps2):
    """The KMAX invariants of the set ``set_code`` (zeros past the set's own count)."""
    if set_code == 0:
        i0, i1, i2, i3, i4, i5 = _se2_invariants(u, ux, uy, uxx, uxy, uyy)
    else:
        i0, i1, i2, i3, i4, i5 = _scaling_invariants(ux, uy, uxx, uxy, uyy, eps2)
    return i0, i1, i2, i3, i4, i5


@triton.jit
def _invariants_adjoint(set_code, ux, uy, uxx, uxy, uyy, eps2, g0, g1, g2, g3, g4, g5, gd):
    """Jet cotangents (u, u_x, u_y, u_xx, u_xy, u_yy) of ``gd sum_k g_k I_k``."""
    if set_code == 0:
        d0, d1, d2, d3, d4, d5 = _se2_adjoint(ux, uy, uxx, uxy, uyy, g0, g1, g2, g3, g4, gd)
    else:
        d0, d1, d2, d3, d4, d5 = _scaling_adjoint(ux, uy, uxx, uxy, uyy, eps2, g0, g1, g2, g3,
                                                  g4, g5, gd)
    return d0, d1, d2, d3, d4, d5


# --- F as a sum of monomials, from its recipe (for F that is not the linear one)


@triton.jit
def _pick(k, a0, a1, a2, a3, a4, a5):
    """``a_k`` for a scalar k in 0 .. 5."""
    return tl.where(k == 0, a0, tl.where(k == 1, a1, tl.where(k == 2, a2, tl.where(
        k == 3, a3, tl.where(k == 4, a4, a5)))))


@triton.jit
def _monomials_forward(i0, i1, i2, i3, i4, i5, recipe, weight, nmono, tbuf, lanes, inside,
                       BLOCK: tl.constexpr):
    """``sum_m w_m T_m`` with ``T_m = T_lower * I_k`` from the recipe ``(lower or -1, k)``; the
    T_m go to the lane's own column of ``tbuf`` (MMAX x BLOCK)."""
    f = tl.zeros_like(i0)
    for m in range(nmono):
        lower = tl.load(recipe + 2 * m)
        k = tl.load(recipe + 2 * m + 1)
        has_lower = inside & ((lanes * 0 + lower) >= 0)  # see _MASK_NOTE
        t_lower = tl.load(tbuf + tl.maximum(lower, 0) * BLOCK + lanes, mask=has_lower, other=1.0)
        t_m = t_lower * _pick(k, i0, i1, i2, i3, i4, i5)
        tl.store(tbuf + m * BLOCK + lanes, t_m, mask=inside)
        f += tl.load(weight + m) * t_m
    return f


@triton.jit
def _monomials_backward(i0, i1, i2, i3, i4, i5, gd, recipe, weight, nmono, tbuf, gtbuf, abuf,
                        lanes, inside, BLOCK: tl.constexpr):
    """Adds ``gd T_m`` to the lane's parameter-gradient column ``abuf`` and returns
    ``dF/dI_k`` (reverse mode through the recipe, with ``dF/dT_m = w_m``)."""
    for m in range(nmono):
        lower = tl.load(recipe + 2 * m)
        k = tl.load(recipe + 2 * m + 1)
        has_lower = inside & ((lanes * 0 + lower) >= 0)  # see _MASK_NOTE
        t_lower = tl.load(tbuf + tl.maximum(lower, 0) * BLOCK + lanes, mask=has_lower, other=1.0)
        t_m = t_lower * _pick(k, i0, i1, i2, i3, i4, i5)
        tl.store(tbuf + m * BLOCK + lanes, t_m, mask=inside)
        column = abuf + m * BLOCK + lanes
        tl.store(column, tl.load(column, mask=inside, other=0.0) + gd * t_m, mask=inside)
        tl.store(gtbuf + m * BLOCK + lanes, tl.zeros_like(i0) + tl.load(weight + m), mask=inside)
    g0 = tl.zeros_like(i0)
    g1 = tl.zeros_like(i0)
    g2 = tl.zeros_like(i0)
    g3 = tl.zeros_like(i0)
    g4 = tl.zeros_like(i0)
    g5 = tl.zeros_like(i0)
    for back in range(nmono):
        m = nmono - 1 - back
        lower = tl.load(recipe + 2 * m)
        k = tl.load(recipe + 2 * m + 1)
        g_t = tl.load(gtbuf + m * BLOCK + lanes, mask=inside, other=0.0)
        has_lower = inside & ((lanes * 0 + lower) >= 0)  # see _MASK_NOTE
        t_lower = tl.load(tbuf + tl.maximum(lower, 0) * BLOCK + lanes, mask=has_lower, other=1.0)
        contribution = g_t * t_lower
        g0 += tl.where(k == 0, contribution, 0.0)
        g1 += tl.where(k == 1, contribution, 0.0)
        g2 += tl.where(k == 2, contribution, 0.0)
        g3 += tl.where(k == 3, contribution, 0.0)
        g4 += tl.where(k == 4, contribution, 0.0)
        g5 += tl.where(k == 5, contribution, 0.0)
        lower_column = gtbuf + tl.maximum(lower, 0) * BLOCK + lanes
        tl.store(lower_column, tl.load(lower_column, mask=has_lower, other=0.0)
                 + g_t * _pick(k, i0, i1, i2, i3, i4, i5), mask=has_lower)
    return g0, g1, g2, g3, g4, g5


# --- one Euler step at a block of pixels, shared by the forward pass and the recomputation


@triton.jit
def _euler_update(cur, p, inside, zeros, top, bottom, left, right, cu, ax0, ax1, ay0, ay1, b0,
                  b1, b2, b3, cxy, e0, e1, e2, e3, set_code, eps2, dt, bias, w0, w1, w2, w3, w4,
                  w5, recipe, weight, nmono, tbuf, lanes, H: tl.constexpr, W: tl.constexpr,
                  BLOCK: tl.constexpr, LINEAR: tl.constexpr):
    """``(u_l, u_l + dt (F(I(jet u_l)) + b))`` at pixels ``p`` of the state at ``cur``."""
    i = p // W
    j = p - i * W
    c_c, c_l, c_r, t_c, b_c, t_l, t_r, b_l, b_r = _taps(cur, i, j, inside, zeros, top, bottom,
                                                        left, right, H, W)
    u, ux, uy, uxx, uxy, uyy = _jet(c_c, c_l, c_r, t_c, b_c, t_l, t_r, b_l, b_r, cu, ax0, ax1, ay0,
                                    ay1, b0, b1, b2, b3, cxy, e0, e1, e2, e3)
    i0, i1, i2, i3, i4, i5 = _invariants(set_code, u, ux, uy, uxx, uxy, uyy, eps2)
    if LINEAR:
        f = w0 * i0 + w1 * i1 + w2 * i2 + w3 * i3 + w4 * i4 + w5 * i5
    else:
        f = _monomials_forward(i0, i1, i2, i3, i4, i5, recipe, weight, nmono, tbuf, lanes, inside,
                               BLOCK)
    return c_c, c_c + dt * (f + bias)


@triton.jit
def _copy(src, dst, lanes, n: tl.constexpr, BLOCK: tl.constexpr):
    for start in range(0, n, BLOCK):
        p = start + lanes
        tl.store(dst + p, tl.load(src + p, mask=p < n), mask=p < n)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _forward_kernel(u_ptr, out_ptr, states_ptr, first_bad_ptr, ws_ptr, weight_ptr, bias_ptr,
                    recipe_ptr, stencil_ptr, ipar_ptr, fpar_ptr, n_items, E, C, MMAX, SMAX,
                    ws_stride, H: tl.constexpr, W: tl.constexpr, BLOCK: tl.constexpr,
                    LINEAR: tl.constexpr, STORE: tl.constexpr, CHECK: tl.constexpr):
    HW: tl.constexpr = H * W
    pid = tl.program_id(0)
    lanes = tl.arange(0, BLOCK)
    ws = ws_ptr + pid.to(tl.int64) * ws_stride  # two states, then (generic F) MMAX x BLOCK
    tbuf = ws + 2 * HW
    dtype = u_ptr.dtype.element_ty
    for item in range(pid, n_items, tl.num_programs(0)):
        b = item // E
        e = item - b * E
        settings = ipar_ptr + e * 9
        set_code = tl.load(settings)
        steps = tl.load(settings + 1)
        check = tl.load(settings + 2)
        nmono = tl.load(settings + 3)
        zeros = tl.load(settings + 4)
        top = tl.load(settings + 5)
        bottom = tl.load(settings + 6)
        left = tl.load(settings + 7)
        right = tl.load(settings + 8)
        dt = tl.load(fpar_ptr + e * 2)
        eps2 = tl.load(fpar_ptr + e * 2 + 1)
        k = stencil_ptr + e * 54
        cu = tl.load(k + 4).to(dtype)
        ax0 = tl.load(k + 14).to(dtype)
        ax1 = tl.load(k + 11).to(dtype)
        ay0 = tl.load(k + 19).to(dtype)
        ay1 = tl.load(k + 18).to(dtype)
        b0 = tl.load(k + 30).to(dtype)
        b1 = tl.load(k + 31).to(dtype)
        b2 = tl.load(k + 27).to(dtype)
        b3 = tl.load(k + 28).to(dtype)
        cxy = tl.load(k + 38).to(dtype)
        e0 = tl.load(k + 46).to(dtype)
        e1 = tl.load(k + 49).to(dtype)
        e2 = tl.load(k + 45).to(dtype)
        e3 = tl.load(k + 48).to(dtype)
        weight = weight_ptr + e * MMAX
        recipe = recipe_ptr + e * MMAX * 2
        bias = tl.load(bias_ptr + e)
        w0 = tl.load(weight, mask=MMAX > 0, other=0.0)
        w1 = tl.load(weight + 1, mask=MMAX > 1, other=0.0)
        w2 = tl.load(weight + 2, mask=MMAX > 2, other=0.0)
        w3 = tl.load(weight + 3, mask=MMAX > 3, other=0.0)
        w4 = tl.load(weight + 4, mask=MMAX > 4, other=0.0)
        w5 = tl.load(weight + 5, mask=MMAX > 5, other=0.0)
        first_bad = tl.full([BLOCK], _NO_BAD, tl.int32)
        for c in range(C):
            plane = (item * C + c).to(tl.int64) * HW
            _copy(u_ptr + (b * C + c).to(tl.int64) * HW, ws, lanes, HW, BLOCK)
            tl.debug_barrier()
            for step in range(steps):
                # Offsets of the form index x HW in int64 (_INT64_NOTE).
                at = tl.cast(step, tl.int64) * HW
                cur = ws + tl.cast(step % 2, tl.int64) * HW
                nxt = ws + tl.cast((step + 1) % 2, tl.int64) * HW
                for start in range(0, HW, BLOCK):
                    p = start + lanes
                    inside = p < HW
                    now, new = _euler_update(
                        cur, p, inside, zeros, top, bottom, left, right, cu, ax0, ax1, ay0, ay1,
                        b0, b1, b2, b3, cxy, e0, e1, e2, e3, set_code, eps2, dt, bias, w0, w1, w2,
                        w3, w4, w5, recipe, weight, nmono, tbuf, lanes, H, W, BLOCK, LINEAR)
                    tl.store(nxt + p, new, mask=inside)
                    if STORE:
                        tl.store(states_ptr + (plane * SMAX + at) + p, now, mask=inside)
                    if CHECK:
                        bad = inside & ~(tl.abs(new) < float("inf"))
                        first_bad = tl.minimum(first_bad, tl.where(bad, step + 1, _NO_BAD))
                tl.debug_barrier()
            _copy(ws + tl.cast(steps % 2, tl.int64) * HW, out_ptr + plane, lanes, HW, BLOCK)
            tl.debug_barrier()
        if CHECK:
            first = tl.min(first_bad, axis=0)
            tl.store(first_bad_ptr + item, tl.where((first < _NO_BAD) & (check != 0), first, 0))


@triton.jit
def _backward_kernel(grad_out_ptr, u_ptr, states_ptr, grad_ptr, partial_ptr, ws_ptr, weight_ptr,
                     bias_ptr, recipe_ptr, stencil_ptr, ipar_ptr, fpar_ptr, n_items, E, C, MMAX,
                     SMAX, ws_stride, H: tl.constexpr, W: tl.constexpr, BLOCK: tl.constexpr,
                     LINEAR: tl.constexpr, STORED: tl.constexpr):
    HW: tl.constexpr = H * W
    WP: tl.constexpr = W + 2
    HWP: tl.constexpr = (H + 2) * (W + 2)
    pid = tl.program_id(0)
    lanes = tl.arange(0, BLOCK)
    dtype = u_ptr.dtype.element_ty
    # Workspace: g (HW) | nine adjoint taps (9 HW) | padded adjoint (HWP) | states (SMAX HW,
    # unless STORED) | generic F: T, dF/dT, parameter gradients (3 MMAX BLOCK).
    gbuf = ws_ptr + pid.to(tl.int64) * ws_stride
    hbuf = gbuf + HW
    pbuf = gbuf + 10 * HW
    traj = pbuf + HWP
    if STORED:
        tbuf = traj
    else:  # the recomputation writes u_0 even where no step is taken
        tbuf = traj + tl.cast(tl.maximum(SMAX, 1), tl.int64) * HW  # _INT64_NOTE
    gtbuf = tbuf + MMAX * BLOCK
    abuf = gtbuf + MMAX * BLOCK
    for item in range(pid, n_items, tl.num_programs(0)):
        b = item // E
        e = item - b * E
        settings = ipar_ptr + e * 9
        set_code = tl.load(settings)
        steps = tl.load(settings + 1)
        nmono = tl.load(settings + 3)
        zeros = tl.load(settings + 4)
        top = tl.load(settings + 5)
        bottom = tl.load(settings + 6)
        left = tl.load(settings + 7)
        right = tl.load(settings + 8)
        dt = tl.load(fpar_ptr + e * 2)
        eps2 = tl.load(fpar_ptr + e * 2 + 1)
        k = stencil_ptr + e * 54
        cu = tl.load(k + 4).to(dtype)
        ax0 = tl.load(k + 14).to(dtype)
        ax1 = tl.load(k + 11).to(dtype)
        ay0 = tl.load(k + 19).to(dtype)
        ay1 = tl.load(k + 18).to(dtype)
        b0 = tl.load(k + 30).to(dtype)
        b1 = tl.load(k + 31).to(dtype)
        b2 = tl.load(k + 27).to(dtype)
        b3 = tl.load(k + 28).to(dtype)
        cxy = tl.load(k + 38).to(dtype)
        e0 = tl.load(k + 46).to(dtype)
        e1 = tl.load(k + 49).to(dtype)
        e2 = tl.load(k + 45).to(dtype)
        e3 = tl.load(k + 48).to(dtype)
        weight = weight_ptr + e * MMAX
        recipe = recipe_ptr + e * MMAX * 2
        bias = tl.load(bias_ptr + e)
        w0 = tl.load(weight, mask=MMAX > 0, other=0.0)
        w1 = tl.load(weight + 1, mask=MMAX > 1, other=0.0)
        w2 = tl.load(weight + 2, mask=MMAX > 2, other=0.0)
        w3 = tl.load(weight + 3, mask=MMAX > 3, other=0.0)
        w4 = tl.load(weight + 4, mask=MMAX > 4, other=0.0)
        w5 = tl.load(weight + 5, mask=MMAX > 5, other=0.0)
        zero = tl.zeros([BLOCK], dtype)
        acc0 = zero
        acc1 = zero
        acc2 = zero
        acc3 = zero
        acc4 = zero
        acc5 = zero
        acc_bias = zero
        if not LINEAR:
            for m in range(nmono):
                tl.store(abuf + m * BLOCK + lanes, zero)
        for c in range(C):
            plane = (item * C + c).to(tl.int64) * HW
            if STORED:
                states = states_ptr + plane * SMAX
            else:  # recompute u_0 .. u_{steps-1} into the workspace
                states = traj
                _copy(u_ptr + (b * C + c).to(tl.int64) * HW, traj, lanes, HW, BLOCK)
                tl.debug_barrier()
                for step in range(steps - 1):
                    at = tl.cast(step, tl.int64) * HW  # _INT64_NOTE
                    for start in range(0, HW, BLOCK):
                        p = start + lanes
                        inside = p < HW
                        now, new = _euler_update(
                            traj + at, p, inside, zeros, top, bottom, left, right, cu, ax0,
                            ax1, ay0, ay1, b0, b1, b2, b3, cxy, e0, e1, e2, e3, set_code, eps2,
                            dt, bias, w0, w1, w2, w3, w4, w5, recipe, weight, nmono, tbuf, lanes,
                            H, W, BLOCK, LINEAR)
                        tl.store(traj + (at + HW) + p, new, mask=inside)
                    tl.debug_barrier()
            _copy(grad_out_ptr + plane, gbuf, lanes, HW, BLOCK)
            tl.debug_barrier()
            for back in range(steps):
                cur = states + tl.cast(steps - 1 - back, tl.int64) * HW  # _INT64_NOTE
                # (a) jet cotangents at every pixel, as nine adjoint taps; parameter gradients
                for start in range(0, HW, BLOCK):
                    p = start + lanes
                    inside = p < HW
                    i = p // W
                    j = p - i * W
                    c_c, c_l, c_r, t_c, b_c, t_l, t_r, b_l, b_r = _taps(
                        cur, i, j, inside, zeros, top, bottom, left, right, H, W)
                    u, ux, uy, uxx, uxy, uyy = _jet(c_c, c_l, c_r, t_c, b_c, t_l, t_r, b_l, b_r,
                                                    cu, ax0, ax1, ay0, ay1, b0, b1, b2, b3, cxy,
                                                    e0, e1, e2, e3)
                    i0, i1, i2, i3, i4, i5 = _invariants(set_code, u, ux, uy, uxx, uxy, uyy, eps2)
                    gd = dt * tl.load(gbuf + p, mask=inside, other=0.0)
                    acc_bias += gd
                    if LINEAR:
                        acc0 += gd * i0
                        acc1 += gd * i1
                        acc2 += gd * i2
                        acc3 += gd * i3
                        acc4 += gd * i4
                        acc5 += gd * i5
                        g0 = zero + w0
                        g1 = zero + w1
                        g2 = zero + w2
                        g3 = zero + w3
                        g4 = zero + w4
                        g5 = zero + w5
                    else:
                        g0, g1, g2, g3, g4, g5 = _monomials_backward(
                            i0, i1, i2, i3, i4, i5, gd, recipe, weight, nmono, tbuf, gtbuf, abuf,
                            lanes, inside, BLOCK)
                    d0, d1, d2, d3, d4, d5 = _invariants_adjoint(set_code, ux, uy, uxx, uxy, uyy,
                                                                 eps2, g0, g1, g2, g3, g4, g5, gd)
                    h_c, h_l, h_r, h_t, h_b, h_tl, h_tr, h_bl, h_br = _adjoint_taps(
                        d0, d1, d2, d3, d4, d5, cu, ax0, ax1, ay0, ay1, b0, b1, b2, b3, cxy, e0,
                        e1, e2, e3)
                    tl.store(hbuf + p, h_c, mask=inside)
                    tl.store(hbuf + HW + p, h_l, mask=inside)
                    tl.store(hbuf + 2 * HW + p, h_r, mask=inside)
                    tl.store(hbuf + 3 * HW + p, h_t, mask=inside)
                    tl.store(hbuf + 4 * HW + p, h_b, mask=inside)
                    tl.store(hbuf + 5 * HW + p, h_tl, mask=inside)
                    tl.store(hbuf + 6 * HW + p, h_tr, mask=inside)
                    tl.store(hbuf + 7 * HW + p, h_bl, mask=inside)
                    tl.store(hbuf + 8 * HW + p, h_br, mask=inside)
                tl.debug_barrier()
                # (b) the transposed stencil on the padded grid: sum_o H_o[P - o]
                for start in range(0, HWP, BLOCK):
                    q = start + lanes
                    inside = q < HWP
                    i = q // WP - 1
                    j = q - (i + 1) * WP - 1
                    # H_o[P - o] is a pixel's value only where P - o lies inside the image
                    up = inside & (i >= 1)  # row i - 1
                    mid = inside & (i >= 0) & (i < H)  # row i
                    down = inside & (i < H - 1)  # row i + 1
                    lft = j >= 1  # column j - 1
                    ctr = (j >= 0) & (j < W)  # column j
                    rgt = j < W - 1  # column j + 1
                    s = tl.load(hbuf + i * W + j, mask=mid & ctr, other=0.0)
                    s += tl.load(hbuf + HW + i * W + (j + 1), mask=mid & rgt, other=0.0)
                    s += tl.load(hbuf + 2 * HW + i * W + (j - 1), mask=mid & lft, other=0.0)
                    s += tl.load(hbuf + 3 * HW + (i + 1) * W + j, mask=down & ctr, other=0.0)
                    s += tl.load(hbuf + 4 * HW + (i - 1) * W + j, mask=up & ctr, other=0.0)
                    s += tl.load(hbuf + 5 * HW + (i + 1) * W + (j + 1), mask=down & rgt,
                                 other=0.0)
                    s += tl.load(hbuf + 6 * HW + (i + 1) * W + (j - 1), mask=down & lft,
                                 other=0.0)
                    s += tl.load(hbuf + 7 * HW + (i - 1) * W + (j + 1), mask=up & rgt, other=0.0)
                    s += tl.load(hbuf + 8 * HW + (i - 1) * W + (j - 1), mask=up & lft, other=0.0)
                    tl.store(pbuf + q, s, mask=inside)
                tl.debug_barrier()
                # (c) the adjoint of the padding: each halo value back onto its source pixel
                for start in range(0, HW, BLOCK):
                    p = start + lanes
                    inside = p < HW
                    i = p // W
                    j = p - i * W
                    copies = (i * 0 + zeros) == 0  # a block, not a scalar: see _MASK_NOTE
                    from_top = copies & (i == top)
                    from_bottom = copies & (i == bottom)
                    from_left = copies & (j == left)
                    from_right = copies & (j == right)
                    first = pbuf + p * 0  # padded row -1, as a block of pointers
                    row = pbuf + (i + 1) * WP
                    last = first + (H + 1) * WP  # padded row H
                    s = tl.load(row + j + 1, mask=inside, other=0.0)
                    s += tl.load(row, mask=inside & from_left, other=0.0)
                    s += tl.load(row + W + 1, mask=inside & from_right, other=0.0)
                    s += tl.load(first + j + 1, mask=inside & from_top, other=0.0)
                    s += tl.load(first, mask=inside & from_top & from_left, other=0.0)
                    s += tl.load(first + W + 1, mask=inside & from_top & from_right, other=0.0)
                    s += tl.load(last + j + 1, mask=inside & from_bottom, other=0.0)
                    s += tl.load(last, mask=inside & from_bottom & from_left, other=0.0)
                    s += tl.load(last + W + 1, mask=inside & from_bottom & from_right, other=0.0)
                    tl.store(gbuf + p, tl.load(gbuf + p, mask=inside, other=0.0) + s, mask=inside)
                tl.debug_barrier()
            _copy(gbuf, grad_ptr + plane, lanes, HW, BLOCK)
            tl.debug_barrier()
        # This item's parameter gradients, reduced in float64 into the program's own row.
        row = partial_ptr + (pid * E + e).to(tl.int64) * (MMAX + 1)
        if LINEAR:
            # a linear F has K >= 5 monomials, so MMAX >= 5
            tl.store(row, tl.load(row) + tl.sum(acc0.to(tl.float64), axis=0))
            tl.store(row + 1, tl.load(row + 1) + tl.sum(acc1.to(tl.float64), axis=0))
            tl.store(row + 2, tl.load(row + 2) + tl.sum(acc2.to(tl.float64), axis=0))
            tl.store(row + 3, tl.load(row + 3) + tl.sum(acc3.to(tl.float64), axis=0))
            tl.store(row + 4, tl.load(row + 4) + tl.sum(acc4.to(tl.float64), axis=0))
            tl.store(row + 5, tl.load(row + 5, mask=MMAX > 5, other=0.0)
                     + tl.sum(acc5.to(tl.float64), axis=0), mask=MMAX > 5)
        else:
            for m in range(nmono):
                column = tl.load(abuf + m * BLOCK + lanes)
                tl.store(row + m, tl.load(row + m) + tl.sum(column.to(tl.float64), axis=0))
        tl.store(row + MMAX, tl.load(row + MMAX) + tl.sum(acc_bias.to(tl.float64), axis=0))


# ----------------------------------------------------------------------------- launchers


def device_guard(tensor: Tensor):
    """A context in which ``tensor``'s CUDA device is the current one (nothing for other
    devices)."""
    if tensor.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(tensor.device)


def on_tensor_device(launcher):
    """``launcher`` run under :func:`device_guard` of its first argument: Triton launches on
    the current device and its stream, so a model on ``cuda:1`` would otherwise get a Triton
    error or a launch on the wrong GPU."""
    first = next(iter(inspect.signature(launcher).parameters))

    @functools.wraps(launcher)
    def launch(*args, **kwargs):
        with device_guard(args[0] if args else kwargs[first]):
            return launcher(*args, **kwargs)

    return launch


def _boundary_sources(boundary: str, n: int) -> tuple[int, int]:
    """Rows (or columns) that the padded row -1 and row n copy, as torch.nn.functional.pad
    does (zeros: unused)."""
    return {"replicate": (0, n - 1), "reflect": (1, n - 2), "circular": (n - 1, 0),
            "zeros": (0, 0)}[boundary]


@functools.lru_cache(maxsize=64)
def _settings(device: torch.device, dtype: torch.dtype, sets: tuple, boundaries: tuple,
              dt: tuple, eps: tuple, steps: tuple, check: tuple, nmono: tuple, height: int,
              width: int) -> tuple[Tensor, Tensor]:
    """The per-PDE settings as two small device tensors, made once per configuration (so no
    host-to-device copy happens in a training step, and CUDA graphs can capture the launch)."""
    rows = []
    for e, (name, boundary) in enumerate(zip(sets, boundaries, strict=True)):
        if name not in SET_CODES:
            raise ConfigError(f"the Triton kernel has no invariant set {name!r} (known: "
                              f"{', '.join(SET_CODES)})")
        if boundary not in BOUNDARY_CODES:
            raise ConfigError(f"the Triton kernel has no boundary {boundary!r} (known: "
                              f"{', '.join(BOUNDARY_CODES)})")
        top, bottom = _boundary_sources(boundary, height)
        left, right = _boundary_sources(boundary, width)
        rows.append([SET_CODES[name], int(steps[e]), int(bool(check[e])), nmono[e],
                     int(boundary == "zeros"), top, bottom, left, right])
    ipar = torch.tensor(rows, dtype=torch.int32).reshape(len(sets), len(_IPAR))
    eps_t = torch.tensor(eps, dtype=dtype)
    fpar = torch.stack([torch.tensor(dt, dtype=dtype), eps_t * eps_t], dim=1)  # as the reference
    return ipar.to(device), fpar.to(device).contiguous()


def _recipes(monomials: Tensor, sets) -> tuple[tuple[int, ...], bool]:
    """Monomials per PDE, and whether every F is the linear one (``T_k = I_k``, k < K). F ends
    at its first row with a negative invariant index; that row and every later one must be the
    padding ``(-1, -1)`` (else an :class:`~eqpdenet.errors.InputError`, as the C++ kernel)."""
    table = host_copy(monomials).tolist()
    counts, linear = [], True
    for e, rows in enumerate(table):
        n = 0
        while n < len(rows) and rows[n][1] >= 0:
            n += 1
        # F ends at its first row with a negative invariant index; the rows from there on only
        # pad (the schema's (-1, -1)): a real row after a padding row was dropped, silently.
        for m in range(n, len(rows)):
            if rows[m] != [-1, -1]:
                raise InputError(f"euler_evolve: monomial {m} of a {sets[e]!r} PDE must be the "
                                 f"padding (-1, -1), as every row from F's first padding row on, "
                                 f"got {tuple(rows[m])}")
        known = N_INVARIANTS.get(sets[e])  # (an unknown set: _settings says so)
        for m in range(n if known else 0):  # an earlier monomial times an invariant: other
            if not (-1 <= rows[m][0] < m and rows[m][1] < known):  # indices read outside
                raise InputError(f"euler_evolve: monomial {m} of a {sets[e]!r} PDE must be (an "
                                 f"earlier monomial or -1, an invariant below {known}), got "
                                 f"{tuple(rows[m])}")
        counts.append(n)
        linear &= n == N_INVARIANTS.get(sets[e], -1) and all(
            rows[m][0] == -1 and rows[m][1] == m for m in range(n))
    return tuple(counts), linear


def _launch_config(u: Tensor, n_items: int, per_sm: int, programs: int | None,
                   block: int | None, num_warps: int | None) -> tuple[int, int, int]:
    height, width = u.shape[-2:]
    if block is None:
        block = min(triton.next_power_of_2((height + 2) * (width + 2)), MAX_BLOCK)
    if programs is None:
        if u.is_cuda:
            programs = per_sm * torch.cuda.get_device_properties(u.device).multi_processor_count
        else:
            programs = CPU_PROGRAMS
    programs = max(1, min(programs, n_items))
    if num_warps is None:
        num_warps = max(1, min(4, block // 64))
    return programs, block, num_warps


def _check_arguments(what: str, u, weight, bias, monomials, stencils, invariant_sets, boundaries,
                     dt, ratio_eps, steps, check_finite=(), grad_out=None, states=None,
                     ratio_regularisations=None) -> None:
    """An :class:`~eqpdenet.errors.InputError` unless the operator's arguments fit each other:
    the kernels read every tensor at the offsets these shapes give, so a tensor of another shape
    or device was read out of bounds (an illegal access on a GPU; NaN or garbage under the
    interpreter), not refused. The same rules as the C++ kernel's (``csrc/fused_euler.cpp``):
    ``stencils`` float64, and every per-PDE list (``ratio_regularisations`` where given, not
    None) one value per PDE. A ``ratio_eps`` not positive and finite is a
    :class:`~eqpdenet.errors.ConfigError`, as in the reference (for every invariant set)."""
    if u.dim() != 4:
        raise InputError(f"{what}: u must be (B, C, H, W), got shape {tuple(u.shape)}")
    batch, channels, height, width = u.shape
    if weight.dim() != 2 or bias.shape != weight.shape[:1]:
        raise InputError(f"{what}: weight must be (E, M) and bias (E,), got "
                         f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    pdes, mmax = weight.shape
    if monomials.shape != (pdes, mmax, 2) or monomials.dtype != torch.int64:
        raise InputError(f"{what}: monomials must be (E, M, 2) = {(pdes, mmax, 2)} int64, got "
                         f"{tuple(monomials.shape)} {monomials.dtype}")
    # read as E blocks of (6, 3, 3): the same values in another layout gave another PDE
    if tuple(stencils.shape) != (pdes, 6, 3, 3):
        raise InputError(f"{what}: stencils must be (E, 6, 3, 3) = {(pdes, 6, 3, 3)}, got "
                         f"{tuple(stencils.shape)}")
    if stencils.dtype != torch.float64:  # the schema's: float32 ones were taken, and rounded
        raise InputError(f"{what}: stencils must be float64, got {stencils.dtype}")
    settings = dict(invariant_sets=invariant_sets, boundaries=boundaries, dt=dt,
                    ratio_eps=ratio_eps)
    if ratio_regularisations is not None:  # a short list ran the missing PDEs as absolute
        settings["ratio_regularisations"] = ratio_regularisations
    settings["steps"] = steps
    if check_finite:
        settings["check_finite"] = check_finite
    for name, values in settings.items():
        if len(values) != pdes:
            raise InputError(f"{what}: {name} must hold one value per PDE ({pdes}), got "
                             f"{len(values)}")
    others = dict(weight=weight, bias=bias, monomials=monomials, stencils=stencils,
                  grad_out=grad_out, states=states)
    elsewhere = [name for name, t in others.items()
                 if t is not None and t.numel() and t.device != u.device]
    if elsewhere:
        raise InputError(f"{what}: {', '.join(elsewhere)} not on u's device {u.device}")
    for e, (boundary, count, eps) in enumerate(zip(boundaries, steps, ratio_eps, strict=True)):
        # as the reference (eqpdenet.pde.invariants.RatioRegularisation), for every set: eps 0
        # gave NaN on flat images, a negative one acted as its absolute value, inf zero ratios
        if not 0 < float(eps) < math.inf:
            raise ConfigError(f"{what}: ratio regularisation eps must be positive and finite, "
                              f"got {eps!r} for PDE {e}")
        if int(count) < 0:
            raise InputError(f"{what}: steps must be >= 0, got {count} for PDE {e}")
        if int(count) > KERNEL_MAX_STEPS:  # the settings are int32: more were taken mod 2**32
            raise InputError(f"{what}: steps must be <= {KERNEL_MAX_STEPS}, got {count} for PDE {e}")
        # The padded row -1 copies row 1 and row H row H - 2: one row has neither.
        if boundary == "reflect" and min(height, width) < 2:
            raise InputError(f"{what}: a reflect boundary needs images of at least 2 x 2 pixels, "
                             f"got {height} x {width}")
    if grad_out is not None and tuple(grad_out.shape) != (batch, pdes, channels, height, width):
        raise InputError(f"{what}: grad_out must be (B, E, C, H, W) = "
                         f"{(batch, pdes, channels, height, width)} like the forward's output, "
                         f"got {tuple(grad_out.shape)}")
    smax = max((int(x) for x in steps), default=0)
    if states is not None and states.numel() and tuple(states.shape) != (
            batch, pdes, channels, smax, height, width):
        raise InputError(f"{what}: states must be empty or (B, E, C, max(steps), H, W) = "
                         f"{(batch, pdes, channels, smax, height, width)}, got "
                         f"{tuple(states.shape)}")


def _common(u, weight, monomials, stencils, invariant_sets, boundaries, dt, ratio_eps, steps,
            check_finite):
    sets = tuple(invariant_sets)
    counts, linear = _recipes(monomials, sets)
    ipar, fpar = _settings(u.device, u.dtype, sets, tuple(boundaries),
                           tuple(float(x) for x in dt), tuple(float(x) for x in ratio_eps),
                           tuple(int(s) for s in steps), tuple(bool(c) for c in check_finite),
                           counts, int(u.shape[2]), int(u.shape[3]))
    return ipar, fpar, linear


def _absolute_only(what: str, invariant_sets, ratio_regularisations) -> None:
    """The kernels divide with the absolute ``eps`` (``n d / (d² + eps²)``) only: a ratio set
    asked for with another regularisation is refused, never computed differently. Every PDE's
    value (an ``se2`` PDE's too) must be one the C++ kernel knows
    (:data:`~eqpdenet.kernels.op.KERNEL_RATIO_REGULARISATIONS`), as there. None (the launchers'
    default for direct calls): absolute for every PDE. :func:`_check_arguments` has checked
    the lengths."""
    if ratio_regularisations is None:
        return
    for mode in ratio_regularisations:
        if mode not in KERNEL_RATIO_REGULARISATIONS:
            raise ConfigError(f"{what}: unknown ratio regularisation {mode!r}")
    for name, mode in zip(invariant_sets, ratio_regularisations, strict=True):
        if name != "se2" and mode != "absolute":
            raise ConfigError(f"the Triton kernels compute ratio invariants with the absolute "
                              f"regularisation only, not {mode!r} ({name!r})")


def _check_dtypes(what: str, **tensors: Tensor) -> None:
    """The schema's float32 or float64, the same for ``u`` and every other floating-point
    argument (a float16 or bfloat16 input used to run in its own precision, silently)."""
    u = tensors["u"]
    if u.dtype not in (torch.float32, torch.float64) or any(
            t.dtype != u.dtype for t in tensors.values() if t.numel()):
        got = ", ".join(f"{name} {t.dtype}" for name, t in tensors.items())
        raise InputError(f"{what}: the tensors must all be float32 or all float64, got {got}")


@on_tensor_device
def forward(u: Tensor, weight: Tensor, bias: Tensor, monomials: Tensor, stencils: Tensor,
            invariant_sets, boundaries, dt, ratio_eps, steps, check_finite, store_states: bool,
            *, ratio_regularisations=None, programs: int | None = None, block: int | None = None,
            num_warps: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``eqpdenet::euler_evolve``: ``(out (B, E, C, H, W), states, first_bad (B, E) int32)``.

    ``programs``, ``block`` and ``num_warps`` override the launch configuration (tests,
    benchmarks); the results do not depend on them except through summation order. Runs on
    ``u``'s device; ``u``, ``weight`` and ``bias`` are all float32 or all float64
    (:class:`~eqpdenet.errors.InputError` otherwise). ``ratio_regularisations`` is the schema's:
    one value per PDE (an ``InputError`` otherwise), each ``covariant`` or ``absolute``, and
    ``absolute`` for the ratio sets (a :class:`~eqpdenet.errors.ConfigError` otherwise); None
    computes every PDE as absolute.
    """
    _check_arguments("euler_evolve", u, weight, bias, monomials, stencils, invariant_sets,
                     boundaries, dt, ratio_eps, steps, check_finite,
                     ratio_regularisations=ratio_regularisations)
    _check_dtypes("euler_evolve", u=u, weight=weight, bias=bias)
    _absolute_only("euler_evolve", invariant_sets, ratio_regularisations)
    check_stencil_form("euler_evolve", stencils)
    batch, channels, height, width = u.shape
    pdes = len(steps)
    check_finite = list(check_finite) or [False] * pdes
    smax = max(steps) if pdes else 0
    out = u.new_empty(batch, pdes, channels, height, width)
    states = (u.new_empty(batch, pdes, channels, smax, height, width) if store_states
              else u.new_empty(0))
    for e, count in enumerate(steps):  # past a PDE's own steps: zeros, as the C++ kernel's
        if store_states and int(count) < smax:
            states[:, e, :, int(count):].zero_()
    first_bad = torch.zeros(batch, pdes, dtype=torch.int32, device=u.device)
    n_items = batch * pdes
    if n_items == 0:
        return out, states, first_bad
    ipar, fpar, linear = _common(u, weight, monomials, stencils, invariant_sets, boundaries, dt,
                                 ratio_eps, steps, check_finite)
    programs, block, num_warps = _launch_config(u, n_items, FORWARD_PROGRAMS_PER_SM, programs,
                                                block, num_warps)
    mmax = weight.shape[1]
    stride = 2 * height * width + (0 if linear else mmax * block)
    workspace = u.new_empty(programs * stride)
    _forward_kernel[(programs,)](
        u.contiguous(), out, states, first_bad, workspace, weight.contiguous(), bias.contiguous(),
        monomials.contiguous(), stencils.contiguous(), ipar, fpar, n_items, pdes, channels, mmax,
        smax, stride, H=height, W=width, BLOCK=block, LINEAR=linear, STORE=bool(store_states),
        CHECK=any(check_finite), num_warps=num_warps, num_stages=1,
        enable_fp_fusion=True)
    return out, states, first_bad


@on_tensor_device
def backward(grad_out: Tensor, u: Tensor, weight: Tensor, bias: Tensor, monomials: Tensor,
             stencils: Tensor, invariant_sets, boundaries, dt, ratio_eps, steps, states: Tensor,
             *, ratio_regularisations=None, programs: int | None = None,
             block: int | None = None, num_warps: int | None = None
             ) -> tuple[Tensor, Tensor, Tensor]:
    """``eqpdenet::euler_evolve_backward``: ``(grad_u, grad_weight, grad_bias)``, from the stored
    ``states`` or, where it is empty, recomputing them in the workspace (same dtype rules as
    :func:`forward`)."""
    _check_arguments("euler_evolve_backward", u, weight, bias, monomials, stencils,
                     invariant_sets, boundaries, dt, ratio_eps, steps, grad_out=grad_out,
                     states=states, ratio_regularisations=ratio_regularisations)
    _check_dtypes("euler_evolve_backward", u=u, weight=weight, bias=bias, grad_out=grad_out,
                  states=states)
    _absolute_only("euler_evolve_backward", invariant_sets, ratio_regularisations)
    check_stencil_form("euler_evolve_backward", stencils)
    batch, channels, height, width = u.shape
    pdes, mmax = weight.shape
    smax = max(steps) if pdes else 0
    n_items = batch * pdes
    if n_items == 0:
        # contiguous whatever u's strides, as the kernels' results
        return u.new_zeros(u.shape), weight.new_zeros(weight.shape), bias.new_zeros(bias.shape)
    ipar, fpar, linear = _common(u, weight, monomials, stencils, invariant_sets, boundaries, dt,
                                 ratio_eps, steps, [False] * pdes)
    programs, block, num_warps = _launch_config(u, n_items, BACKWARD_PROGRAMS_PER_SM, programs,
                                                block, num_warps)
    stored = states.numel() > 0
    hw = height * width
    stride = (10 * hw + (height + 2) * (width + 2) + (0 if stored else max(smax, 1) * hw)
              + (0 if linear else 3 * mmax * block))
    workspace = u.new_empty(programs * stride)
    partial = torch.zeros(programs, pdes, mmax + 1, dtype=torch.float64, device=u.device)
    grad_per_pde = u.new_empty(batch, pdes, channels, height, width)
    _backward_kernel[(programs,)](
        grad_out.contiguous(), u.contiguous(), states.contiguous(), grad_per_pde, partial,
        workspace, weight.contiguous(), bias.contiguous(), monomials.contiguous(),
        stencils.contiguous(), ipar, fpar, n_items, pdes, channels, mmax, smax, stride, H=height,
        W=width, BLOCK=block, LINEAR=linear, STORED=stored, num_warps=num_warps,
        num_stages=1, enable_fp_fusion=True)
    grad_u = grad_per_pde.sum(1) if pdes > 1 else grad_per_pde[:, 0].contiguous()
    sums = partial.sum(0).to(u.dtype)  # (E, M + 1), the bias last
    return grad_u, sums[:, :-1].contiguous(), sums[:, -1].contiguous()
