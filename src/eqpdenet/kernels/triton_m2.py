"""Triton kernels of the fused M2 operators: the CUDA implementation of
``eqpdenet::m2_mix_invariants`` and ``eqpdenet::m2_euler_step`` (schema and autograd:
:mod:`eqpdenet.kernels.m2_op`; registered for ``cuda`` tensors by :mod:`eqpdenet.kernels.cuda`).

This module imports Triton (the optional extra ``eqpdenet[gpu]``) and is imported only when a
kernel is launched. The launchers take exactly the operators' arguments and run on CUDA tensors,
or on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, set by the repository's
``conftest.py`` where no GPU exists). The semantics are those of the plain-PyTorch reference
(:mod:`eqpdenet.pde.m2`: :class:`~eqpdenet.pde.m2.M2Jet`, :data:`~eqpdenet.pde.m2.M2_SE2`) and of
the C++ kernel (``csrc/m2_invariants.cpp``), to rounding: the spatial Gaussian 2-jet from the
separable 1-D stencils ``(S, 3, K)`` (scale level ``s`` for the ``s``-th chunk of the batch), the
four boundaries as :func:`torch.nn.functional.pad` pads them (by index arithmetic, no padded
copy), periodic central differences over the ``N`` orientations, the steering by the caller's
``(cos, sin)`` of each orientation, the ten symmetrised invariants, their mixing and, for the Euler
step, ``u + dt (W2 relu(W1 I + b1) + b2)``; the backward passes are the exact adjoint of the same
discrete map, boundary padding included.

Design (H100/H200 in mind; nothing here was measured on a GPU: ``docs/performance.md``):

* **Work items, persistent programs.** As in :mod:`eqpdenet.kernels.triton_euler`, a fixed grid
  of programs (:data:`PROGRAMS_PER_SM` per multiprocessor) loops over work items, and each
  program owns a slice of a workspace in global memory that stays in L1/L2. Threads of a program
  exchange values through it, separated by ``tl.debug_barrier()``; the launches use
  ``num_stages=1`` so that no load is software-pipelined across a barrier. One pixel per thread
  (a block of :data:`BLOCK` pixels is eight warps).
* **Forward** (both operators): one item is one *orientation band*: image ``b``, orientation
  ``k``, ``TR`` consecutive rows (as many as fit one block; one image row if wider), and for the
  mixing also one block of at most :data:`OUT_BLOCK` outputs. Per input channel the program runs
  the x pass of the separable stencils over the band and its halo of ``R`` rows for the maps
  ``k`` and ``k +- 1`` (nine planes of ``(TR + 2R) x W`` in the workspace), then, one pixel per
  lane, the y pass (the 2-jet at ``k`` and ``u, u_x, u_y`` at ``k +- 1``, so that the orientation
  differences need no exchange between items), the steering and the ten invariants in
  registers, and adds ``W[:, c, :] I`` to a ``(pixels, outputs)`` tile kept in registers over
  the channel loop. The mixing writes the tile; the Euler step applies ``relu``, ``W2`` and the
  update in the same program and writes ``u_next`` of every channel at its pixels. Nothing of
  size ``(B, 10 C, N, H, W)`` is written.
* **Backward of the mixing**: one item is one *map* ``(b, c, k)`` over the whole image (the
  adjoint of the spatial stencils reaches ``R`` pixels and, for the circular boundary, across the
  image: items own whole maps so that no gradient pixel is written by two programs). Pass 1
  recomputes the x pass; pass 2 (per block of pixels) the jet and the invariants, their
  cotangents ``W^T gZ`` at ``k`` and, for the four that are orientation differences, at
  ``k +- 1`` (from ``gZ`` there: no exchange), by a loop over the outputs with the weights as
  uniform scalars; the weight gradient ``sum_p gZ[o, p] I_j[p]`` by ``(pixels, outputs)`` tiles
  of ``gZ`` (:data:`GRAD_BLOCK` outputs) reduced over the block of pixels; the adjoint of the
  invariants and of the orientation differences; the six cotangents of the spatial jet go to the
  workspace. Passes 3-6 apply the transposed y stencils onto the padded rows, fold the halo rows
  back onto the rows they copy (the boundary's adjoint), apply the transposed x stencils onto the
  padded columns and fold the halo columns, adding the result into ``grad_u``.
* **Backward of the Euler step**: one launch over orientation bands recomputes the hidden layer,
  forms ``gH = relu'(W1 I + b1) (W2^T dt g)`` and the gradients of ``b1, W2, b2``, and writes
  ``gH`` ``(B, O, N, H, W)``; the backward of the mixing with ``gZ = gH`` and ``W = W1`` then
  gives ``grad_u`` (plus the identity part ``g``) and the gradient of ``W1``. This ``gH`` is the
  one intermediate the Triton backward writes that the C++ kernel does not: ``O / (10 C)`` of the
  invariants the reference materialises.
* **Parameter gradients** are reduced per item: each block of pixels is summed in the working
  precision (a fixed tree), added in float64 to the item's own row of a partial tensor, and the
  rows are summed afterwards by PyTorch in a fixed order: no atomics, no address written by two
  programs, the same bits whatever the number of programs and on every run. The operators
  return them per image, as the schema says.
* **Rounding**: multiply-adds are fused (``tl.fma``, ``enable_fp_fusion``); the orientation
  differences are taken after the spatial stencils, as in the reference and the C++ kernel.
  Results agree with both to rounding, not bit for bit.

Expected limits (estimates; ``benchmarks/bench_gpu.py`` measures, ``benchmarks/triton_compile.py
--m2`` gives the registers: 48-123 per thread in float32, no spills, Triton 3.9 for sm_90):
the mixing is CUDA-core FMA work (no tensor cores: the float32 accuracy the tests demand rules
out TF32), a uniform weight load per output and invariant; the x pass is repeated for the halo
rows (``(TR + 2R) / TR``, about 2x for 28 x 28 images and ``sigma = 1``) and for the maps
``k +- 1`` (3x); more than :data:`OUT_BLOCK` outputs recompute the jet per block of outputs;
the weight gradient of the backward costs ten block reductions per block of pixels and of
outputs, likely its largest cost for small ``O``; the backward reads ``gZ`` three times (at
``k`` and ``k +- 1``) and its workspace is about ``9 (H + 2R) W + 6 H W`` values per program
(55 KB in float32 for 28 x 28, ``sigma = 1``), so few programs per multiprocessor stay in L1.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..errors import ConfigError, InputError
from .m2_op import KERNEL_ORIENTATIONS
from .triton_euler import on_tensor_device

__all__ = ["BLOCK", "BOUNDARY_CODES", "GRAD_BLOCK", "N_INVARIANTS", "OUT_BLOCK", "mix_backward",
           "mix_forward", "step_backward", "step_forward"]

BOUNDARY_CODES = {"replicate": 0, "zeros": 1, "reflect": 2, "circular": 3}
#: Invariants per channel (:data:`eqpdenet.pde.m2.M2_SE2`).
N_INVARIANTS = 10
#: Longest 1-D stencil (as the C++ kernel).
MAX_TAPS = 63
#: Pixels per block (lanes): a band of the forward is at most this many pixels (one image row
#: if wider), the backward works through a map in blocks of this many.
BLOCK = 256
#: Outputs per register tile of the forward's ``(pixels, outputs)`` tile (more outputs: several
#: tiles, each recomputing the jet).
OUT_BLOCK = 16
#: Outputs per ``gZ`` tile of the backward's weight-gradient reductions.
GRAD_BLOCK = 8
#: Programs per streaming multiprocessor (persistent grid).
PROGRAMS_PER_SM = 4
#: Programs when running on the CPU (Triton's interpreter runs them one after the other).
CPU_PROGRAMS = 3


# ----------------------------------------------------------------------------- shared pieces


@triton.jit
def _source(q, n: tl.constexpr, BOUNDARY: tl.constexpr):
    """The index in ``[0, n)`` that position ``q`` of the padded axis copies, as F.pad pads
    (reflect and circular: one fold, so ``n`` must exceed the radius), and whether it exists
    (zeros: not outside). The index is clamped, so that masked addresses stay in range."""
    if BOUNDARY == 0:  # replicate
        ok = q == q
        s = q
    elif BOUNDARY == 1:  # zeros
        ok = (q >= 0) & (q < n)
        s = q
    elif BOUNDARY == 2:  # reflect: the edge is not repeated
        ok = q == q
        s = tl.where(q < 0, -q, tl.where(q >= n, 2 * (n - 1) - q, q))
    else:  # circular
        ok = q == q
        s = tl.where(q < 0, q + n, tl.where(q >= n, q - n, q))
    return tl.minimum(tl.maximum(s, 0), n - 1), ok


@triton.jit
def _x_pass(umap, k, kp, km, st, xws, i0, N: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
            KT: tl.constexpr, TRP: tl.constexpr, XBL: tl.constexpr, BOUNDARY: tl.constexpr):
    """The x pass of the three 1-D stencils over padded rows ``i0 - R .. i0 - R + TRP - 1`` of
    the maps ``k, k + 1, k - 1`` (``umap``: the channel's N maps) into the workspace, planes
    ``3 m + a`` (map m, stencil a) of ``TRP x W``: ``X_a[r, j] = sum_t g_a[t] P[r, j + t]``."""
    R: tl.constexpr = KT // 2
    HW: tl.constexpr = H * W
    PLANE: tl.constexpr = TRP * W
    NX: tl.constexpr = 3 * PLANE
    dtype = xws.dtype.element_ty
    lanes = tl.arange(0, XBL).to(tl.int64)
    for start in range(0, NX, XBL):
        q = start + lanes
        inside = q < NX
        m = q // PLANE
        rem = q - m * PLANE
        r = rem // W
        j = rem - r * W
        kk = tl.where(m == 0, k, tl.where(m == 1, kp, km))
        y = i0 + r - R
        row, ok_row = _source(y, H, BOUNDARY)
        ok_row = ok_row & inside & (y < H + R)  # rows past the padded image: not needed
        base = umap + tl.cast(kk, tl.int64) * HW + row * W  # int64: N H W may pass 2**31
        a0 = tl.zeros([XBL], dtype)
        a1 = tl.zeros([XBL], dtype)
        a2 = tl.zeros([XBL], dtype)
        for t in tl.static_range(KT):
            # _source inlined: a jit call per tap costs milliseconds in the interpreter
            col = j + (t - R)
            ok = ok_row
            if BOUNDARY == 1:
                ok = ok & (col >= 0) & (col < W)
            elif BOUNDARY == 2:
                col = tl.where(col < 0, -col, tl.where(col >= W, 2 * (W - 1) - col, col))
            elif BOUNDARY == 3:
                col = tl.where(col < 0, col + W, tl.where(col >= W, col - W, col))
            col = tl.minimum(tl.maximum(col, 0), W - 1)
            v = tl.load(base + col, mask=ok, other=0.0)
            a0 = tl.fma(tl.load(st + t), v, a0)
            a1 = tl.fma(tl.load(st + KT + t), v, a1)
            a2 = tl.fma(tl.load(st + 2 * KT + t), v, a2)
        out = xws + m * (3 * PLANE) + rem
        tl.store(out, a0, mask=inside)
        tl.store(out + PLANE, a1, mask=inside)
        tl.store(out + 2 * PLANE, a2, mask=inside)


@triton.jit
def _jet(xws, i, j, ok, st, W: tl.constexpr, KT: tl.constexpr, TRP: tl.constexpr,
         BL: tl.constexpr):
    """The y pass at rows ``i`` (of the x-pass planes), columns ``j``: the spatial 2-jet ``u,
    u_x, u_y, u_xx, u_xy, u_yy`` of map ``k`` and ``u, u_x, u_y`` of maps ``k + 1`` and ``k - 1``
    (y points up: the stencils reversed)."""
    PLANE: tl.constexpr = TRP * W
    dtype = xws.dtype.element_ty
    zero = tl.zeros([BL], dtype)
    u = zero
    ux = zero
    uy = zero
    uxx = zero
    uxy = zero
    uyy = zero
    up = zero
    uxp = zero
    uyp = zero
    um = zero
    uxm = zero
    uym = zero
    base = xws + i * W + j
    for t in tl.static_range(KT):
        h0 = tl.load(st + (KT - 1 - t))
        h1 = tl.load(st + KT + (KT - 1 - t))
        h2 = tl.load(st + 2 * KT + (KT - 1 - t))
        x = base + t * W
        x0 = tl.load(x, mask=ok, other=0.0)
        x1 = tl.load(x + PLANE, mask=ok, other=0.0)
        x2 = tl.load(x + 2 * PLANE, mask=ok, other=0.0)
        p0 = tl.load(x + 3 * PLANE, mask=ok, other=0.0)
        p1 = tl.load(x + 4 * PLANE, mask=ok, other=0.0)
        m0 = tl.load(x + 6 * PLANE, mask=ok, other=0.0)
        m1 = tl.load(x + 7 * PLANE, mask=ok, other=0.0)
        u = tl.fma(h0, x0, u)
        ux = tl.fma(h0, x1, ux)
        uy = tl.fma(h1, x0, uy)
        uxx = tl.fma(h0, x2, uxx)
        uxy = tl.fma(h1, x1, uxy)
        uyy = tl.fma(h2, x0, uyy)
        up = tl.fma(h0, p0, up)
        uxp = tl.fma(h0, p1, uxp)
        uyp = tl.fma(h1, p0, uyp)
        um = tl.fma(h0, m0, um)
        uxm = tl.fma(h0, m1, uxm)
        uym = tl.fma(h1, m0, uym)
    return u, ux, uy, uxx, uxy, uyy, up, uxp, uyp, um, uxm, uym


@triton.jit
def _invariants(u, ux, uy, uxx, uxy, uyy, up, uxp, uyp, um, uxm, uym, cs, sn, d1, d2):
    """The ten invariants of :data:`~eqpdenet.pde.m2.M2_SE2` at orientation ``(cs, sn)``, the
    orientation derivatives by periodic central differences (``d1 = 1 / (2 dtheta)``,
    ``d2 = 1 / dtheta^2``), grouped as in the C++ kernel."""
    a1 = cs * ux + sn * uy
    a2 = cs * uy - sn * ux
    uxt = (uxp - uxm) * d1
    uyt = (uyp - uym) * d1
    cc = cs * cs
    ss = sn * sn
    cn = cs * sn
    i3 = (up - um) * d1
    i4 = cc * uxx + 2.0 * cn * uxy + ss * uyy
    i5 = cn * (uyy - uxx) + (cc - ss) * uxy
    i6 = cs * uxt + sn * uyt + 0.5 * a2
    i7 = ss * uxx - 2.0 * cn * uxy + cc * uyy
    i8 = cs * uyt - sn * uxt - 0.5 * a1
    i9 = (up - 2.0 * u + um) * d2
    return u, a1, a2, i3, i4, i5, i6, i7, i8, i9


@triton.jit
def _mixed_tile(u_ptr, w_ptr, st, xws, b, k, kp, km, cs, sn, d1, d2, i0, o0, C, n_out, ocols,
                i, j, ok, N: tl.constexpr, H: tl.constexpr, W: tl.constexpr, KT: tl.constexpr,
                TR: tl.constexpr, BL: tl.constexpr, XBL: tl.constexpr, OB: tl.constexpr,
                BOUNDARY: tl.constexpr):
    """``z[p, o] = sum_{c, j} w[o0 + o, c, j] I_j(u[b, c])(p, theta_k)`` at the band's pixels:
    a ``(BL, OB)`` tile, kept in registers over the channel loop."""
    R: tl.constexpr = KT // 2
    TRP: tl.constexpr = TR + 2 * R
    HW: tl.constexpr = H * W
    dtype = xws.dtype.element_ty
    z = tl.zeros([BL, OB], dtype)
    o_ok = (o0 + ocols) < n_out
    w_row = w_ptr + (o0 + ocols) * (C * 10)
    for c in range(C):
        umap = u_ptr + tl.cast((b * C + c), tl.int64) * (N * HW)
        _x_pass(umap, k, kp, km, st, xws, i0, N, H, W, KT, TRP, XBL, BOUNDARY)
        tl.debug_barrier()
        u, ux, uy, uxx, uxy, uyy, up, uxp, uyp, um, uxm, uym = _jet(xws, i, j, ok, st, W, KT,
                                                                    TRP, BL)
        v0, v1, v2, v3, v4, v5, v6, v7, v8, v9 = _invariants(
            u, ux, uy, uxx, uxy, uyy, up, uxp, uyp, um, uxm, uym, cs, sn, d1, d2)
        wc = w_row + c * 10
        z = tl.fma(v0[:, None], tl.load(wc, mask=o_ok, other=0.0)[None, :], z)
        z = tl.fma(v1[:, None], tl.load(wc + 1, mask=o_ok, other=0.0)[None, :], z)
        z = tl.fma(v2[:, None], tl.load(wc + 2, mask=o_ok, other=0.0)[None, :], z)
        z = tl.fma(v3[:, None], tl.load(wc + 3, mask=o_ok, other=0.0)[None, :], z)
        z = tl.fma(v4[:, None], tl.load(wc + 4, mask=o_ok, other=0.0)[None, :], z)
        z = tl.fma(v5[:, None], tl.load(wc + 5, mask=o_ok, other=0.0)[None, :], z)
        z = tl.fma(v6[:, None], tl.load(wc + 6, mask=o_ok, other=0.0)[None, :], z)
        z = tl.fma(v7[:, None], tl.load(wc + 7, mask=o_ok, other=0.0)[None, :], z)
        z = tl.fma(v8[:, None], tl.load(wc + 8, mask=o_ok, other=0.0)[None, :], z)
        z = tl.fma(v9[:, None], tl.load(wc + 9, mask=o_ok, other=0.0)[None, :], z)
        tl.debug_barrier()  # the next channel's x pass overwrites the planes
    return z


@triton.jit
def _band_item(item, per_item, st_ptr, per_scale, lanes, N: tl.constexpr,
               H: tl.constexpr, W: tl.constexpr, KT: tl.constexpr, TR: tl.constexpr):
    """Decode an orientation band ``((b N + k) BANDS + band) per_item + rest``."""
    BANDS: tl.constexpr = (H + TR - 1) // TR
    rest = item % per_item
    band_id = item // per_item
    band = band_id % BANDS
    map_id = band_id // BANDS
    k = map_id % N
    b = map_id // N
    i0 = band * TR
    i = lanes // W
    j = lanes - i * W
    ok = (lanes < TR * W) & (i0 + i < H)
    st = st_ptr + (b // per_scale) * (3 * KT)
    return rest, b, k, (k + 1) % N, (k + N - 1) % N, i0, i, j, ok, st


# ----------------------------------------------------------------------------- forward


@triton.jit
def _forward_kernel(u_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, stencil_ptr, frame_ptr,
                    par_ptr, ws_ptr, n_items, C, n_out, per_scale, ws_stride, N: tl.constexpr,
                    H: tl.constexpr, W: tl.constexpr, KT: tl.constexpr, TR: tl.constexpr,
                    BL: tl.constexpr, XBL: tl.constexpr, OB: tl.constexpr,
                    BOUNDARY: tl.constexpr, STEP: tl.constexpr):
    """Mixing (``STEP`` false: ``out = z`` ``(B, O, N, H, W)``, items are orientation bands x
    output blocks) or the Euler step (``out = u + dt (w2 relu(z + b1) + b2)``, items are
    orientation bands, all output blocks in turn)."""
    HW: tl.constexpr = H * W
    pid = tl.program_id(0)
    lanes = tl.arange(0, BL).to(tl.int64)  # int64: no int32 overflow checks or risks
    ocols = tl.arange(0, OB)
    xws = ws_ptr + tl.cast(pid, tl.int64) * ws_stride
    d1 = tl.load(par_ptr)
    d2 = tl.load(par_ptr + 1)
    dt = tl.load(par_ptr + 2)
    n_ob = tl.cdiv(n_out, OB)
    for item in range(pid, n_items, tl.num_programs(0)):
        if STEP:
            rest, b, k, kp, km, i0, i, j, ok, st = _band_item(item, 1, stencil_ptr, per_scale,
                                                               lanes, N, H, W, KT, TR)
            ob_first = 0
            ob_last = n_ob
        else:
            rest, b, k, kp, km, i0, i, j, ok, st = _band_item(item, n_ob, stencil_ptr, per_scale,
                                                               lanes, N, H, W, KT, TR)
            ob_first = rest
            ob_last = rest + 1
        cs = tl.load(frame_ptr + 2 * k)
        sn = tl.load(frame_ptr + 2 * k + 1)
        pix = i0 * W + lanes
        for ob in range(ob_first, ob_last):
            o0 = ob * OB
            o_ok = (o0 + ocols) < n_out
            z = _mixed_tile(u_ptr, w1_ptr, st, xws, b, k, kp, km, cs, sn, d1, d2, i0, o0, C, n_out,
                            ocols, i, j, ok, N, H, W, KT, TR, BL, XBL, OB, BOUNDARY)
            if STEP:
                a = tl.maximum(z + tl.load(b1_ptr + o0 + ocols, mask=o_ok, other=0.0)[None, :],
                               0.0)
                first = (lanes * 0 + ob) == 0  # a block, not a scalar (masks need blocks)
                for c2 in range(C):
                    f = tl.sum(a * tl.load(w2_ptr + c2 * n_out + o0 + ocols, mask=o_ok,
                                           other=0.0)[None, :], axis=1)
                    plane = tl.cast(((b * C + c2) * N + k), tl.int64) * HW + pix
                    start = tl.load(u_ptr + plane, mask=ok & first, other=0.0)
                    so_far = tl.load(out_ptr + plane, mask=ok & ~first, other=0.0)
                    new = tl.where(first, start + dt * (f + tl.load(b2_ptr + c2)),
                                   so_far + dt * f)
                    tl.store(out_ptr + plane, new, mask=ok)
            else:
                planes = tl.cast(((b * n_out + o0 + ocols) * N + k), tl.int64) * HW
                tl.store(out_ptr + planes[None, :] + pix[:, None], z,
                         mask=ok[:, None] & o_ok[None, :])


# ----------------------------------------------------------------------------- backward


@triton.jit
def _hidden_backward_kernel(g_ptr, u_ptr, w1_ptr, b1_ptr, w2_ptr, gh_ptr, partial_ptr,
                            stencil_ptr, frame_ptr, par_ptr, ws_ptr, n_items, C, n_out, per_scale,
                            ws_stride, N: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                            KT: tl.constexpr, TR: tl.constexpr, BL: tl.constexpr,
                            XBL: tl.constexpr, OB: tl.constexpr, BOUNDARY: tl.constexpr):
    """The Euler step's backward through ``F`` down to the hidden layer, per orientation band:
    ``gh = [z + b1 > 0] (w2^T dt g)`` ``(B, O, N, H, W)``, and the band's gradients of ``b1``
    ``(O)``, ``w2`` ``(C, O)`` and ``b2`` ``(C)`` in its own float64 row of ``partial``."""
    HW: tl.constexpr = H * W
    pid = tl.program_id(0)
    lanes = tl.arange(0, BL).to(tl.int64)  # int64: no int32 overflow checks or risks
    ocols = tl.arange(0, OB)
    xws = ws_ptr + tl.cast(pid, tl.int64) * ws_stride
    dtype = u_ptr.dtype.element_ty
    d1 = tl.load(par_ptr)
    d2 = tl.load(par_ptr + 1)
    dt = tl.load(par_ptr + 2)
    n_ob = tl.cdiv(n_out, OB)
    for item in range(pid, n_items, tl.num_programs(0)):
        rest, b, k, kp, km, i0, i, j, ok, st = _band_item(item, 1, stencil_ptr, per_scale,
                                                           lanes, N, H, W, KT, TR)
        cs = tl.load(frame_ptr + 2 * k)
        sn = tl.load(frame_ptr + 2 * k + 1)
        pix = i0 * W + lanes
        row = partial_ptr + tl.cast(item, tl.int64) * (n_out + C * n_out + C)
        for c2 in range(C):  # b2
            g = dt * tl.load(g_ptr + tl.cast(((b * C + c2) * N + k), tl.int64) * HW + pix, mask=ok,
                             other=0.0)
            tl.store(row + n_out + C * n_out + c2, tl.sum(g, axis=0).to(tl.float64))
        for ob in range(0, n_ob):
            o0 = ob * OB
            o_ok = (o0 + ocols) < n_out
            z = _mixed_tile(u_ptr, w1_ptr, st, xws, b, k, kp, km, cs, sn, d1, d2, i0, o0, C, n_out,
                            ocols, i, j, ok, N, H, W, KT, TR, BL, XBL, OB, BOUNDARY)
            pre = z + tl.load(b1_ptr + o0 + ocols, mask=o_ok, other=0.0)[None, :]
            a = tl.maximum(pre, 0.0)
            ga = tl.zeros([BL, OB], dtype)
            for c2 in range(C):
                g = dt * tl.load(g_ptr + tl.cast(((b * C + c2) * N + k), tl.int64) * HW + pix, mask=ok,
                                 other=0.0)
                w2_row = tl.load(w2_ptr + c2 * n_out + o0 + ocols, mask=o_ok, other=0.0)
                ga += g[:, None] * w2_row[None, :]
                tl.store(row + n_out + c2 * n_out + o0 + ocols,
                         tl.sum(g[:, None] * a, axis=0).to(tl.float64), mask=o_ok)
            gh = tl.where(pre > 0.0, ga, 0.0)  # relu'(0) = 0, as torch's relu
            planes = tl.cast(((b * n_out + o0 + ocols) * N + k), tl.int64) * HW
            tl.store(gh_ptr + planes[None, :] + pix[:, None], gh,
                     mask=ok[:, None] & o_ok[None, :])
            tl.store(row + o0 + ocols, tl.sum(gh, axis=0).to(tl.float64), mask=o_ok)


@triton.jit
def _fold(line, index, inside, step: tl.constexpr, n: tl.constexpr, R: tl.constexpr,
          BOUNDARY: tl.constexpr):
    """The adjoint of the padding along one axis of length ``n``: at each pixel, the value at
    its own padded position ``index + R`` plus those at the halo positions that copy it
    (``line``: the start of each lane's padded line, ``step``: the stride along it). The halo
    position ``m - R`` (before the axis) copies ``before``, ``n + m`` (after it) ``after``, as
    :func:`_source` says; zeros copy nothing."""
    total = tl.load(line + (index + R) * step, mask=inside, other=0.0)
    if BOUNDARY != 1:
        for m in tl.static_range(R):
            if BOUNDARY == 0:
                before = 0
                after = n - 1
            elif BOUNDARY == 2:
                before = R - m
                after = n - 2 - m
            else:
                before = n + m - R
                after = m
            total += tl.load(line + m * step, mask=inside & (index == before), other=0.0)
            total += tl.load(line + (n + R + m) * step, mask=inside & (index == after),
                             other=0.0)
    return total


@triton.jit
def _accumulate(row, n_out, o0, ocols, o_ok, gz, v0, v1, v2, v3, v4, v5, v6, v7, v8, v9):
    """``row[j, o0 + o] += sum_p gz[p, o] v_j[p]`` (float64, ``row`` ``(10, n_out)``: this
    item's own)."""
    cells = row + o0 + ocols
    tl.store(cells, tl.load(cells, mask=o_ok, other=0.0)
             + tl.sum(gz * v0[:, None], axis=0).to(tl.float64), mask=o_ok)
    cells += n_out
    tl.store(cells, tl.load(cells, mask=o_ok, other=0.0)
             + tl.sum(gz * v1[:, None], axis=0).to(tl.float64), mask=o_ok)
    cells += n_out
    tl.store(cells, tl.load(cells, mask=o_ok, other=0.0)
             + tl.sum(gz * v2[:, None], axis=0).to(tl.float64), mask=o_ok)
    cells += n_out
    tl.store(cells, tl.load(cells, mask=o_ok, other=0.0)
             + tl.sum(gz * v3[:, None], axis=0).to(tl.float64), mask=o_ok)
    cells += n_out
    tl.store(cells, tl.load(cells, mask=o_ok, other=0.0)
             + tl.sum(gz * v4[:, None], axis=0).to(tl.float64), mask=o_ok)
    cells += n_out
    tl.store(cells, tl.load(cells, mask=o_ok, other=0.0)
             + tl.sum(gz * v5[:, None], axis=0).to(tl.float64), mask=o_ok)
    cells += n_out
    tl.store(cells, tl.load(cells, mask=o_ok, other=0.0)
             + tl.sum(gz * v6[:, None], axis=0).to(tl.float64), mask=o_ok)
    cells += n_out
    tl.store(cells, tl.load(cells, mask=o_ok, other=0.0)
             + tl.sum(gz * v7[:, None], axis=0).to(tl.float64), mask=o_ok)
    cells += n_out
    tl.store(cells, tl.load(cells, mask=o_ok, other=0.0)
             + tl.sum(gz * v8[:, None], axis=0).to(tl.float64), mask=o_ok)
    cells += n_out
    tl.store(cells, tl.load(cells, mask=o_ok, other=0.0)
             + tl.sum(gz * v9[:, None], axis=0).to(tl.float64), mask=o_ok)


@triton.jit
def _mix_backward_kernel(gz_ptr, u_ptr, w_ptr, add_ptr, gu_ptr, partial_ptr, stencil_ptr,
                         frame_ptr, par_ptr, ws_ptr, n_items, C, n_out, per_scale, ws_stride,
                         N: tl.constexpr, H: tl.constexpr, W: tl.constexpr, KT: tl.constexpr,
                         BL: tl.constexpr, XBL: tl.constexpr, OB: tl.constexpr,
                         BOUNDARY: tl.constexpr, ADD: tl.constexpr, XWS: tl.constexpr):
    """Per map ``(b, c, k)``: ``gu[b, c, k] = (add[b, c, k] if ADD) + the adjoint of the
    mixing``, and the map's weight gradient ``sum_p gz[b, o, k, p] I_j(u[b, c])(p, k)`` in
    its own float64 row ``(10, O)`` of ``partial``."""
    R: tl.constexpr = KT // 2
    HP: tl.constexpr = H + 2 * R
    WP: tl.constexpr = W + 2 * R
    HW: tl.constexpr = H * W
    pid = tl.program_id(0)
    lanes = tl.arange(0, BL).to(tl.int64)  # int64: no int32 overflow checks or risks
    ocols = tl.arange(0, OB)
    wide = tl.arange(0, XBL).to(tl.int64)
    xws = ws_ptr + tl.cast(pid, tl.int64) * ws_stride  # x planes; later padded-grid cotangents
    gws = xws + XWS  # six jet cotangents; later the row-folded ones
    dtype = u_ptr.dtype.element_ty
    d1 = tl.load(par_ptr)
    d2 = tl.load(par_ptr + 1)
    for item in range(pid, n_items, tl.num_programs(0)):
        k = item % N
        map_bc = item // N
        c = map_bc % C
        b = map_bc // C
        kp = (k + 1) % N
        km = (k + N - 1) % N
        st = stencil_ptr + (b // per_scale) * (3 * KT)
        cs = tl.load(frame_ptr + 2 * k)
        sn = tl.load(frame_ptr + 2 * k + 1)
        csp = tl.load(frame_ptr + 2 * kp)
        snp = tl.load(frame_ptr + 2 * kp + 1)
        csm = tl.load(frame_ptr + 2 * km)
        snm = tl.load(frame_ptr + 2 * km + 1)
        cc = cs * cs
        ss = sn * sn
        cn = cs * sn
        umap = u_ptr + tl.cast(map_bc, tl.int64) * (N * HW)
        plane = tl.cast(item, tl.int64) * HW  # this map in u, gu, add
        row = partial_ptr + tl.cast(item, tl.int64) * (10 * n_out)
        # 1. the x pass of the maps k, k +- 1 over all padded rows
        _x_pass(umap, k, kp, km, st, xws, 0, N, H, W, KT, HP, XBL, BOUNDARY)
        tl.debug_barrier()
        # 2. per block of pixels: jet, invariants, their cotangents, weight gradient, the six
        # cotangents of the spatial jet
        for start in range(0, HW, BL):
            p = start + lanes
            inside = p < HW
            i = p // W
            j = p - i * W
            u, ux, uy, uxx, uxy, uyy, up, uxp, uyp, um, uxm, uym = _jet(xws, i, j, inside, st,
                                                                        W, KT, HP, BL)
            v0, v1, v2, v3, v4, v5, v6, v7, v8, v9 = _invariants(
                u, ux, uy, uxx, uxy, uyy, up, uxp, uyp, um, uxm, uym, cs, sn, d1, d2)
            zero = tl.zeros([BL], dtype)
            g0 = zero
            g1 = zero
            g2 = zero
            g3 = zero
            g4 = zero
            g5 = zero
            g6 = zero
            g7 = zero
            g8 = zero
            g9 = zero
            g3p = zero
            g6p = zero
            g8p = zero
            g9p = zero
            g3m = zero
            g6m = zero
            g8m = zero
            g9m = zero
            for o in range(n_out):  # W^T gz at k, and the four differences' at k +- 1
                plane_o = tl.cast((b * n_out + o) * N, tl.int64) * HW + p
                gzk = tl.load(gz_ptr + plane_o + tl.cast(k, tl.int64) * HW, mask=inside,
                              other=0.0)
                gzp = tl.load(gz_ptr + plane_o + tl.cast(kp, tl.int64) * HW, mask=inside,
                              other=0.0)
                gzm = tl.load(gz_ptr + plane_o + tl.cast(km, tl.int64) * HW, mask=inside,
                              other=0.0)
                w = w_ptr + (o * C + c) * 10  # uniform scalars: no per-thread weight vectors
                g0 = tl.fma(tl.load(w), gzk, g0)
                g1 = tl.fma(tl.load(w + 1), gzk, g1)
                g2 = tl.fma(tl.load(w + 2), gzk, g2)
                w3 = tl.load(w + 3)
                g3 = tl.fma(w3, gzk, g3)
                g3p = tl.fma(w3, gzp, g3p)
                g3m = tl.fma(w3, gzm, g3m)
                g4 = tl.fma(tl.load(w + 4), gzk, g4)
                g5 = tl.fma(tl.load(w + 5), gzk, g5)
                w6 = tl.load(w + 6)
                g6 = tl.fma(w6, gzk, g6)
                g6p = tl.fma(w6, gzp, g6p)
                g6m = tl.fma(w6, gzm, g6m)
                g7 = tl.fma(tl.load(w + 7), gzk, g7)
                w8 = tl.load(w + 8)
                g8 = tl.fma(w8, gzk, g8)
                g8p = tl.fma(w8, gzp, g8p)
                g8m = tl.fma(w8, gzm, g8m)
                w9 = tl.load(w + 9)
                g9 = tl.fma(w9, gzk, g9)
                g9p = tl.fma(w9, gzp, g9p)
                g9m = tl.fma(w9, gzm, g9m)
            for o0 in range(0, n_out, OB):  # the weight gradient, a block of outputs at a time
                o_ok = (o0 + ocols) < n_out
                planes = tl.cast((b * n_out + o0 + ocols) * N + k, tl.int64) * HW
                gz = tl.load(gz_ptr + planes[None, :] + p[:, None],
                             mask=inside[:, None] & o_ok[None, :], other=0.0)
                _accumulate(row, n_out, o0, ocols, o_ok, gz, v0, v1, v2, v3, v4, v5, v6, v7, v8,
                            v9)
            # adjoint of the invariants (the C++ kernel's grouping) ...
            e1 = g1 - 0.5 * g8
            e2 = g2 + 0.5 * g6
            gu = g0
            gux = cs * e1 - sn * e2
            guy = sn * e1 + cs * e2
            guxx = cc * g4 - cn * g5 + ss * g7
            guxy = 2.0 * cn * g4 + (cc - ss) * g5 - 2.0 * cn * g7
            guyy = ss * g4 + cn * g5 + cc * g7
            # ... and of the orientation differences, gathered from k +- 1
            gxtp = csp * g6p - snp * g8p
            gytp = snp * g6p + csp * g8p
            gxtm = csm * g6m - snm * g8m
            gytm = snm * g6m + csm * g8m
            gu += (g3m - g3p) * d1 + (g9m - 2.0 * g9 + g9p) * d2
            gux += (gxtm - gxtp) * d1
            guy += (gytm - gytp) * d1
            tl.store(gws + p, gu, mask=inside)
            tl.store(gws + HW + p, gux, mask=inside)
            tl.store(gws + 2 * HW + p, guy, mask=inside)
            tl.store(gws + 3 * HW + p, guxx, mask=inside)
            tl.store(gws + 4 * HW + p, guxy, mask=inside)
            tl.store(gws + 5 * HW + p, guyy, mask=inside)
        tl.debug_barrier()
        # 3. transposed y stencils onto the padded rows: gX_a[r, j] (planes a of HP x W)
        for start in range(0, HP * W, XBL):
            q = start + wide
            inside = q < HP * W
            r = q // W
            j = q - r * W
            x0 = tl.zeros([XBL], dtype)
            x1 = tl.zeros([XBL], dtype)
            x2 = tl.zeros([XBL], dtype)
            for t in tl.static_range(KT):
                h0 = tl.load(st + (KT - 1 - t))
                h1 = tl.load(st + KT + (KT - 1 - t))
                h2 = tl.load(st + 2 * KT + (KT - 1 - t))
                i = r - t
                ok = inside & (i >= 0) & (i < H)
                cell = gws + i * W + j
                x0 = tl.fma(h0, tl.load(cell, mask=ok, other=0.0), x0)
                x0 = tl.fma(h1, tl.load(cell + 2 * HW, mask=ok, other=0.0), x0)
                x0 = tl.fma(h2, tl.load(cell + 5 * HW, mask=ok, other=0.0), x0)
                x1 = tl.fma(h0, tl.load(cell + HW, mask=ok, other=0.0), x1)
                x1 = tl.fma(h1, tl.load(cell + 4 * HW, mask=ok, other=0.0), x1)
                x2 = tl.fma(h0, tl.load(cell + 3 * HW, mask=ok, other=0.0), x2)
            tl.store(xws + q, x0, mask=inside)
            tl.store(xws + HP * W + q, x1, mask=inside)
            tl.store(xws + 2 * HP * W + q, x2, mask=inside)
        tl.debug_barrier()
        # 4. the rows' padding adjoint: planes a of H x W
        for start in range(0, HW, BL):
            p = start + lanes
            inside = p < HW
            i = p // W
            j = p - i * W
            tl.store(gws + p, _fold(xws + j, i, inside, W, H, R, BOUNDARY), mask=inside)
            tl.store(gws + HW + p, _fold(xws + HP * W + j, i, inside, W, H, R, BOUNDARY),
                     mask=inside)
            tl.store(gws + 2 * HW + p, _fold(xws + 2 * HP * W + j, i, inside, W, H, R, BOUNDARY),
                     mask=inside)
        tl.debug_barrier()
        # 5. transposed x stencils onto the padded columns: H x WP
        for start in range(0, H * WP, XBL):
            q = start + wide
            inside = q < H * WP
            i = q // WP
            s = q - i * WP
            acc = tl.zeros([XBL], dtype)
            for t in tl.static_range(KT):
                j = s - t
                ok = inside & (j >= 0) & (j < W)
                cell = gws + i * W + j
                acc = tl.fma(tl.load(st + t), tl.load(cell, mask=ok, other=0.0), acc)
                acc = tl.fma(tl.load(st + KT + t), tl.load(cell + HW, mask=ok, other=0.0), acc)
                acc = tl.fma(tl.load(st + 2 * KT + t), tl.load(cell + 2 * HW, mask=ok, other=0.0),
                             acc)
            tl.store(xws + q, acc, mask=inside)
        tl.debug_barrier()
        # 6. the columns' padding adjoint, into grad u
        for start in range(0, HW, BL):
            p = start + lanes
            inside = p < HW
            i = p // W
            j = p - i * W
            g = _fold(xws + i * WP, j, inside, 1, W, R, BOUNDARY)
            if ADD:
                g += tl.load(add_ptr + plane + p, mask=inside, other=0.0)
            tl.store(gu_ptr + plane + p, g, mask=inside)
        tl.debug_barrier()  # the next item's x pass overwrites the planes


# ----------------------------------------------------------------------------- launchers


def _check(u: Tensor, weight: Tensor, stencils: Tensor, frame: Tensor, boundary: str,
           what: str) -> tuple[int, int, int]:
    """Shapes and dtypes as the schema says, and the C++ kernel's numbers of orientations
    :data:`~eqpdenet.kernels.m2_op.KERNEL_ORIENTATIONS` (one-line errors); returns
    (S, K, radius)."""
    if u.dim() != 5:
        raise InputError(f"{what}: u must be (B, C, N, H, W), got {tuple(u.shape)}")
    if u.dtype not in (torch.float32, torch.float64) or weight.dtype != u.dtype:
        raise InputError(f"{what}: u and the weights must both be float32 or both float64, got "
                         f"{u.dtype} and {weight.dtype}")
    if weight.dim() != 3 or weight.shape[1] != u.shape[1] or weight.shape[2] != N_INVARIANTS:
        raise InputError(f"{what}: weight must be (O, C, 10) with C = {u.shape[1]}, got "
                         f"{tuple(weight.shape)}")
    if (stencils.dim() != 3 or stencils.shape[1] != 3 or stencils.shape[2] % 2 == 0
            or stencils.shape[2] > MAX_TAPS or stencils.dtype != torch.float64):
        raise InputError(f"{what}: stencils must be float64 (S, 3, K) with odd K <= {MAX_TAPS}, "
                         f"got {stencils.dtype} {tuple(stencils.shape)}")
    if stencils.shape[0] < 1 or u.shape[0] % stencils.shape[0]:
        raise InputError(f"{what}: the batch of {u.shape[0]} must hold {stencils.shape[0]} "
                         "equal scale chunks")
    if frame.dtype != torch.float64 or tuple(frame.shape) != (u.shape[2], 2):
        raise InputError(f"{what}: frame must be float64 (N, 2) with N = {u.shape[2]}, got "
                         f"{frame.dtype} {tuple(frame.shape)}")
    if u.shape[2] not in KERNEL_ORIENTATIONS:  # as the C++ kernel (built for these N only)
        *most, last = map(str, KERNEL_ORIENTATIONS)
        raise InputError(f"{what}: N must be {', '.join(most)} or {last}, got {u.shape[2]}")
    if boundary not in BOUNDARY_CODES:
        raise ConfigError(f"{what}: unknown boundary {boundary!r} (known: "
                          f"{', '.join(BOUNDARY_CODES)})")
    radius = stencils.shape[2] // 2
    if boundary in ("reflect", "circular") and min(u.shape[3], u.shape[4]) <= radius:
        raise InputError(f"{what}: the {boundary!r} boundary needs maps larger than the stencil "
                         f"radius {radius}, got {u.shape[3]}x{u.shape[4]}")
    for t in (weight, stencils, frame):
        if t.device != u.device:
            raise InputError(f"{what}: all tensors must be on {u.device}, got one on {t.device}")
    return stencils.shape[0], stencils.shape[2], radius


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def _parameters(device: torch.device, dtype: torch.dtype, n: int, dt: float) -> Tensor:
    """``(1 / (2 dtheta), 1 / dtheta^2, dt)`` in the working precision on the device, made once
    per configuration (no host-to-device copy in a training step; CUDA graphs can capture the
    launches). Computed in double and rounded once, as the C++ kernel does; outside inference
    mode, so that training after an evaluation under ``torch.inference_mode()`` can use it."""
    step = 2.0 * math.pi / n
    return torch.tensor([1.0 / (2.0 * step), 1.0 / (step * step), dt], dtype=dtype).to(device)


def _programs(device: torch.device, items: int, programs: int | None) -> int:
    if programs is None:
        if device.type == "cuda":
            programs = PROGRAMS_PER_SM * torch.cuda.get_device_properties(
                device).multi_processor_count
        else:
            programs = CPU_PROGRAMS
    return max(1, min(programs, items))


def _warps(block: int) -> int:
    """One lane per thread (up to 8 warps): the per-lane state (jet, invariants, cotangents)
    and the output tiles are what fills the registers."""
    return max(1, min(8, block // 32))


def _wide(elements: int, block: int, device: torch.device) -> int:
    """Lanes of the passes over whole planes (x pass, transposed stencils): those of a block
    on a GPU (more per thread cost registers), the whole plane on the CPU (the interpreter's
    cost is per block operation; the values do not depend on the split)."""
    if device.type == "cuda":
        return block
    return min(triton.next_power_of_2(elements), 4096)


def _tables(u: Tensor, stencils: Tensor, frame: Tensor) -> tuple[Tensor, Tensor]:
    """The stencils and the frame in the working precision (rounded once, as the C++ kernel
    does), so that the kernels convert nothing."""
    return stencils.to(u.dtype).contiguous(), frame.to(u.dtype).contiguous()


def _bands(height: int, width: int, block: int | None, band_rows: int | None) -> tuple[int, int]:
    """Rows per band and lanes: a band is one block, at most ``block`` pixels (one row if the
    image is wider), the bands of an image of (nearly) equal height."""
    if band_rows is None:
        rows = max(1, min(height, (block or BLOCK) // width))
        rows = -(-height // -(-height // rows))
    else:
        rows = max(1, min(int(band_rows), height))
    return rows, triton.next_power_of_2(rows * width)


def _out_block(outputs: int, lanes: int, cap: int, o_block: int | None) -> int:
    if o_block is not None:
        return triton.next_power_of_2(max(1, int(o_block)))
    return max(1, min(triton.next_power_of_2(max(outputs, 1)), cap, max(1, 16384 // lanes)))


def _forward(u, w1, b1, w2, b2, stencils, frame, boundary, dt, step, programs, block, band_rows,
             o_block):
    scales, taps, radius = _check(u, w1, stencils, frame, boundary,
                                  "m2_euler_step" if step else "m2_mix_invariants")
    batch, channels, n, height, width = u.shape
    outputs = w1.shape[0]
    # contiguous whatever u's strides: the kernels write in that order (empty_like kept a
    # channels-last or transposed u's strides, and the results were scrambled)
    out = (torch.empty_like(u, memory_format=torch.contiguous_format) if step
           else u.new_empty(batch, outputs, n, height, width))
    if out.numel() == 0 or (step and channels == 0):  # maps of 0 pixels too: as the C++ op
        return out.copy_(u) if step else out
    rows, lanes = _bands(height, width, block, band_rows)
    ob = _out_block(outputs, lanes, OUT_BLOCK, o_block)
    bands = -(-height // rows)
    maps = batch * n * bands
    items = maps if step else maps * (-(-outputs // ob))
    if step and outputs == 0:
        # No hidden unit: F = b2. The kernel's loop over blocks of outputs, which also writes
        # u_next, would not run at all and leave ``out`` uninitialised.
        return torch.add(u, b2.view(1, channels, 1, 1, 1), alpha=float(dt)).contiguous()
    count = _programs(u.device, items, programs)
    stride = 9 * (rows + 2 * radius) * width
    workspace = u.new_empty(count * stride)
    _forward_kernel[(count,)](
        u.contiguous(), w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous(), out,
        *_tables(u, stencils, frame), _parameters(u.device, u.dtype, n, float(dt)), workspace,
        items, channels, outputs, batch // scales, stride, N=n, H=height, W=width, KT=taps,
        TR=rows, BL=lanes, XBL=_wide(stride // 3, lanes, u.device), OB=ob,
        BOUNDARY=BOUNDARY_CODES[boundary], STEP=step, num_warps=_warps(lanes), num_stages=1,
        enable_fp_fusion=True)
    return out


@on_tensor_device
def mix_forward(u: Tensor, weight: Tensor, stencils: Tensor, frame: Tensor, boundary: str, *,
                programs: int | None = None, block: int | None = None,
                band_rows: int | None = None, o_block: int | None = None) -> Tensor:
    """``eqpdenet::m2_mix_invariants``: ``z`` ``(B, O, N, H, W)``.

    ``programs``, ``block``, ``band_rows`` and ``o_block`` override the launch configuration
    (tests, benchmarks); the results do not depend on them except through summation order.
    """
    return _forward(u, weight, weight, weight, weight, stencils, frame, boundary, 0.0, False, programs,
                    block, band_rows, o_block)


@on_tensor_device
def step_forward(u: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, stencils: Tensor,
                 frame: Tensor, boundary: str, dt: float, *, programs: int | None = None,
                 block: int | None = None, band_rows: int | None = None,
                 o_block: int | None = None) -> Tensor:
    """``eqpdenet::m2_euler_step``: ``u + dt (w2 relu(w1 I(u) + b1) + b2)``."""
    _check_step(u, w1, b1, w2, b2)
    return _forward(u, w1, b1, w2, b2, stencils, frame, boundary, dt, True, programs, block,
                    band_rows, o_block)


def _check_step(u, w1, b1, w2, b2) -> None:
    if u.dim() != 5 or w1.dim() != 3:  # before their shapes are read
        raise InputError(f"m2_euler_step: u must be (B, C, N, H, W) and w1 (O, C, 10), got "
                         f"{tuple(u.shape)} and {tuple(w1.shape)}")
    outputs, channels = w1.shape[0], u.shape[1]
    shapes = ((b1, (outputs,), "b1"), (w2, (channels, outputs), "w2"), (b2, (channels,), "b2"))
    for t, shape, name in shapes:
        if tuple(t.shape) != shape or t.dtype != u.dtype or t.device != u.device:
            raise InputError(f"m2_euler_step: {name} must be {u.dtype} {shape} on {u.device}, "
                             f"got {t.dtype} {tuple(t.shape)} on {t.device}")


def _mix_backward(grad_z, u, weight, stencils, frame, boundary, add, programs, block, o_block):
    """``(grad_u, partial)``: ``partial`` ``(B, C, N, 10, O)`` float64, per map."""
    scales, taps, radius = _check(u, weight, stencils, frame, boundary,
                                  "m2_mix_invariants_backward")
    batch, channels, n, height, width = u.shape
    outputs = weight.shape[0]
    if tuple(grad_z.shape) != (batch, outputs, n, height, width) or grad_z.dtype != u.dtype:
        raise InputError(f"m2_mix_invariants_backward: grad_z must be {u.dtype} "
                         f"{(batch, outputs, n, height, width)}, got {grad_z.dtype} "
                         f"{tuple(grad_z.shape)}")
    partial = torch.zeros(batch, channels, n, N_INVARIANTS, outputs, dtype=torch.float64,
                          device=u.device)
    items = batch * channels * n
    if items == 0 or not height or not width:
        start = add if add is not None else torch.zeros_like(u)
        return start.clone(memory_format=torch.contiguous_format), partial
    grad_u = torch.empty_like(u, memory_format=torch.contiguous_format)  # as _forward's out
    lanes = min(triton.next_power_of_2(block or BLOCK),
                triton.next_power_of_2(height * width))
    ob = _out_block(outputs, lanes, GRAD_BLOCK, o_block)
    count = _programs(u.device, items, programs)
    padded_rows, padded_cols = height + 2 * radius, width + 2 * radius
    xws = max(9 * padded_rows * width, height * padded_cols)
    stride = xws + 6 * height * width
    workspace = u.new_empty(count * stride)
    _mix_backward_kernel[(count,)](
        grad_z.contiguous(), u.contiguous(), weight.contiguous(),
        (add if add is not None else u).contiguous(), grad_u, partial,
        *_tables(u, stencils, frame), _parameters(u.device, u.dtype, n, 0.0), workspace, items,
        channels, outputs, batch // scales, stride, N=n, H=height, W=width, KT=taps, BL=lanes,
        XBL=_wide(max(3 * padded_rows * width, height * padded_cols), lanes, u.device), OB=ob,
        BOUNDARY=BOUNDARY_CODES[boundary], ADD=add is not None, XWS=xws,
        num_warps=_warps(lanes), num_stages=1, enable_fp_fusion=True)
    return grad_u, partial


@on_tensor_device
def mix_backward(grad_z: Tensor, u: Tensor, weight: Tensor, stencils: Tensor, frame: Tensor,
                 boundary: str, *, programs: int | None = None, block: int | None = None,
                 o_block: int | None = None) -> tuple[Tensor, Tensor]:
    """``eqpdenet::m2_mix_invariants_backward``: ``(grad_u, grad_weight per image (B, O, C, 10)
    float64)``."""
    grad_u, partial = _mix_backward(grad_z, u, weight, stencils, frame, boundary, None,
                                    programs, block, o_block)
    return grad_u, partial.sum(2).permute(0, 3, 1, 2).contiguous()


@on_tensor_device
def step_backward(grad_next: Tensor, u: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                  stencils: Tensor, frame: Tensor, boundary: str, dt: float, *,
                  programs: int | None = None, block: int | None = None,
                  band_rows: int | None = None, o_block: int | None = None
                  ) -> tuple[Tensor, Tensor]:
    """``eqpdenet::m2_euler_step_backward``: ``(grad_u, per image (B, O C 10 + O + C O + C)
    float64)``, the gradients of ``w1, b1, w2, b2`` of each image in that order."""
    _check_step(u, w1, b1, w2, b2)
    scales, taps, radius = _check(u, w1, stencils, frame, boundary, "m2_euler_step_backward")
    if grad_next.shape != u.shape or grad_next.dtype != u.dtype:
        raise InputError(f"m2_euler_step_backward: grad_next must be {u.dtype} "
                         f"{tuple(u.shape)}, got {grad_next.dtype} {tuple(grad_next.shape)}")
    batch, channels, n, height, width = u.shape
    outputs = w1.shape[0]
    width_tail = outputs + channels * outputs + channels
    if not height or not width:  # maps of 0 pixels: nothing depends on anything
        return (torch.zeros_like(u, memory_format=torch.contiguous_format),
                torch.zeros(batch, outputs * channels * N_INVARIANTS + width_tail,
                            dtype=torch.float64, device=u.device))
    rows, lanes = _bands(height, width, block, band_rows)
    ob = _out_block(outputs, lanes, OUT_BLOCK, o_block)
    bands = -(-height // rows)
    items = batch * n * bands
    tail = torch.zeros(batch, n * bands, width_tail, dtype=torch.float64, device=u.device)
    grad_hidden = u.new_empty(batch, outputs, n, height, width)
    if items and channels and outputs:
        count = _programs(u.device, items, programs)
        stride = 9 * (rows + 2 * radius) * width
        workspace = u.new_empty(count * stride)
        _hidden_backward_kernel[(count,)](
            grad_next.contiguous(), u.contiguous(), w1.contiguous(), b1.contiguous(),
            w2.contiguous(), grad_hidden, tail, *_tables(u, stencils, frame),
            _parameters(u.device, u.dtype, n, float(dt)), workspace, items, channels, outputs,
            batch // scales, stride, N=n, H=height, W=width, KT=taps, TR=rows, BL=lanes,
            XBL=_wide(stride // 3, lanes, u.device), OB=ob, BOUNDARY=BOUNDARY_CODES[boundary],
            num_warps=_warps(lanes), num_stages=1, enable_fp_fusion=True)
    else:
        grad_hidden.zero_()
        if outputs == 0 and tail.numel():
            # F = b2 without hidden units: its gradient is what the kernel (not launched, its
            # loop over outputs would not run) adds for every band, sum_p dt g.
            tail[:, 0] = (grad_next * float(dt)).sum(dim=(2, 3, 4), dtype=torch.float64)
    grad_u, partial = _mix_backward(grad_hidden, u, w1, stencils, frame, boundary,
                                    grad_next.contiguous(), programs, block,
                                    o_block)
    grad_w1 = partial.sum(2).permute(0, 3, 1, 2).flatten(1)
    tail = tail.sum(1)  # b1 (O), w2 (C, O), b2 (C)
    return grad_u, torch.cat([grad_w1, tail], dim=1)
