"""The CUDA implementation of the fused operators: the Triton kernels of
:mod:`eqpdenet.kernels.triton_euler` (the PDE layer's evolution, ``eqpdenet::euler_evolve``) and
of :mod:`eqpdenet.kernels.triton_m2` (the M2 operators ``eqpdenet::m2_mix_invariants`` and
``eqpdenet::m2_euler_step``), registered for ``cuda`` tensors.

Triton is an optional dependency (``pip install 'eqpdenet[gpu]'``) and is imported only when a
kernel runs, so ``import eqpdenet`` works without it and without a GPU. Where it cannot run
(:func:`unavailable_reason`, :func:`m2_unavailable_reason`: no Triton, no CUDA device, a device
older than compute capability 8.0), the layers use the plain PyTorch reference with one warning,
as for any unsupported configuration.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from .m2_op import M2_IMPLEMENTATIONS
from .op import (
    _LIBRARY,
    DEVICE_INVARIANT_SETS,
    DEVICE_RATIO_REGULARISATIONS,
    IMPLEMENTATIONS,
)

__all__ = ["INVARIANT_SETS", "MIN_CAPABILITY", "RATIO_REGULARISATIONS", "m2_unavailable_reason",
           "unavailable_reason"]

#: The invariant sets the Triton kernels compute (``triton_euler.SET_CODES``).
INVARIANT_SETS = ("se2", "scaling")
#: The Triton kernels divide with the paper's absolute ``eps`` only (the covariant mode and
#: ``sim2`` run on the reference there, with one warning).
RATIO_REGULARISATIONS = ("absolute",)

#: Oldest compute capability the Triton kernels are built for.
MIN_CAPABILITY = (8, 0)


def _kernels():
    from . import triton_euler

    return triton_euler


def _m2_kernels():
    from . import triton_m2

    return triton_m2


def _reason(load) -> str | None:
    """Why Triton kernels cannot run here (``load`` imports their module), or None."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'eqpdenet[gpu]')"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        return (f"the Triton kernels need compute capability {MIN_CAPABILITY[0]}."
                f"{MIN_CAPABILITY[1]} or newer, this GPU has {capability[0]}.{capability[1]}")
    try:
        load()
    except Exception as error:  # noqa: BLE001 - any failure means "use the reference"
        message = str(error).strip().splitlines()
        return (f"the Triton kernels could not be loaded ({type(error).__name__}: "
                f"{message[0] if message else ''})")
    return None


@functools.cache
def unavailable_reason() -> str | None:
    """Why the Triton kernels of the PDE layer cannot run here, or None."""
    return _reason(_kernels)


@functools.cache
def m2_unavailable_reason() -> str | None:
    """Why the Triton kernels of the M2 operators cannot run here, or None."""
    return _reason(_m2_kernels)


@torch.library.register_kernel("eqpdenet::euler_evolve", "cuda", lib=_LIBRARY)
def _evolve_cuda(u, weight, bias, monomials, stencils, invariant_sets, boundaries, dt, ratio_eps,
                 ratio_regularisations, steps, check_finite, store_states):
    return _kernels().forward(u, weight, bias, monomials, stencils, invariant_sets, boundaries,
                              dt, ratio_eps, steps, check_finite, store_states,
                              ratio_regularisations=ratio_regularisations)


@torch.library.register_kernel("eqpdenet::euler_evolve_backward", "cuda", lib=_LIBRARY)
def _evolve_backward_cuda(grad_out, u, weight, bias, monomials, stencils, invariant_sets,
                          boundaries, dt, ratio_eps, ratio_regularisations, steps, states):
    return _kernels().backward(grad_out, u, weight, bias, monomials, stencils, invariant_sets,
                               boundaries, dt, ratio_eps, steps, states,
                               ratio_regularisations=ratio_regularisations)


IMPLEMENTATIONS.register("cuda", unavailable_reason)
DEVICE_INVARIANT_SETS["cuda"] = INVARIANT_SETS
DEVICE_RATIO_REGULARISATIONS["cuda"] = RATIO_REGULARISATIONS


@torch.library.register_kernel("eqpdenet::m2_mix_invariants", "cuda", lib=_LIBRARY)
def _m2_cuda(u, weight, stencils, frame, boundary):
    return _m2_kernels().mix_forward(u, weight, stencils, frame, boundary)


@torch.library.register_kernel("eqpdenet::m2_mix_invariants_backward", "cuda", lib=_LIBRARY)
def _m2_backward_cuda(grad_z, u, weight, stencils, frame, boundary):
    return _m2_kernels().mix_backward(grad_z, u, weight, stencils, frame, boundary)


@torch.library.register_kernel("eqpdenet::m2_euler_step", "cuda", lib=_LIBRARY)
def _m2_step_cuda(u, w1, b1, w2, b2, stencils, frame, boundary, dt):
    return _m2_kernels().step_forward(u, w1, b1, w2, b2, stencils, frame, boundary, dt)


@torch.library.register_kernel("eqpdenet::m2_euler_step_backward", "cuda", lib=_LIBRARY)
def _m2_step_backward_cuda(grad_next, u, w1, b1, w2, b2, stencils, frame, boundary, dt):
    return _m2_kernels().step_backward(grad_next, u, w1, b1, w2, b2, stencils, frame, boundary,
                                       dt)


M2_IMPLEMENTATIONS.register("cuda", m2_unavailable_reason)
