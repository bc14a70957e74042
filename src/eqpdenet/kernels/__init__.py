"""Compiled kernels of the PDE layer, behind PyTorch operators, and the backend choice.

The PDE layer (:class:`~eqpdenet.pde.PDELayer`) integrates through one of the backends in
:data:`BACKENDS`:

``"auto"`` (default)
    The fused operator where the layer declares the capability (its invariant sets name a
    kernel, its ``F`` are :class:`~eqpdenet.pde.rhs.MonomialF`, 3x3 stencils of the supported
    form) and the input's device has an implementation, else the reference, with one warning
    per reason and process. The environment variable ``EQPDENET_BACKEND`` (``reference``,
    ``fused`` or ``auto``) overrides ``"auto"``.
``"reference"``
    Always the plain PyTorch implementation (:mod:`eqpdenet.pde`), which defines the semantics.
``"fused"``
    The fused operator; where it cannot be used, the reference with one warning (never an error).

While a model is exported (:func:`eqpdenet.checks.exporting`), every backend resolves to
``"reference"``: an exported graph holds only standard PyTorch operators, which every runtime
knows, never ``torch.ops.eqpdenet.*`` (docs/deployment.md). A layer or model with a fused path
of its own chooses it through :func:`resolve_backend` and so inherits this.

The fused operators have reverse-mode derivatives only: no forward-mode derivative, no batching
rule, and backward kernels that are not themselves differentiable. Under a ``torch.func``
transform (``vmap``, ``jvp``, ``grad``, ``jacrev``, ...) or with forward-mode AD the layers take
the reference (:func:`~eqpdenet.kernels.op.transform_reason`, one of the reasons above); a
backward pass with ``create_graph=True`` through a fused operator (a gradient of a gradient)
raises ``NotImplementedError`` naming the fix, ``backend="reference"``
(:func:`~eqpdenet.kernels.op.require_first_order`). Before 2026-12-04 the first gave zeros
for forward-mode derivatives and the second second derivatives with terms missing, silently.

The operators and their schema are in :mod:`eqpdenet.kernels.op`; the ``cpu`` implementation is
the C++ kernel of :mod:`eqpdenet.kernels.cpu`, the ``cuda`` implementation the Triton kernels of
:mod:`eqpdenet.kernels.triton_euler` (registered by :mod:`eqpdenet.kernels.cuda`; Triton is an
optional dependency, imported only when a kernel runs).
"""

from __future__ import annotations

import os

from ..checks import exporting
from ..registry import Registry
from . import (
    cpu,  # noqa: F401  (registers the CPU implementation of the operators)
    cuda,  # noqa: F401  (registers the CUDA implementation; imports no Triton)
)
from .op import (
    IMPLEMENTATIONS,
    KERNEL_INVARIANT_SETS,
    KERNEL_RATIO_REGULARISATIONS,
    PDESpec,
    fused_evolve,
    stencil_is_supported,
    unsupported_reason,
    warn_once,
)

__all__ = [
    "BACKENDS",
    "ENV_BACKEND",
    "IMPLEMENTATIONS",
    "KERNEL_INVARIANT_SETS",
    "KERNEL_RATIO_REGULARISATIONS",
    "PDESpec",
    "fused_evolve",
    "resolve_backend",
    "stencil_is_supported",
    "unsupported_reason",
    "warn_once",
]

ENV_BACKEND = "EQPDENET_BACKEND"

#: Backends of the PDE layer: name -> description.
BACKENDS: Registry[str] = Registry("backend")
BACKENDS.register("auto", "the fused operator where supported, else the reference")
BACKENDS.register("reference", "plain PyTorch")
BACKENDS.register("fused", "the fused operator (C++ on CPU, Triton on CUDA)")


def resolve_backend(requested: str) -> str:
    """The backend to use for a layer asking for ``requested`` (``EQPDENET_BACKEND`` overrides
    ``"auto"``; an unknown value there is ignored with one warning); ``"reference"`` whatever
    was requested while :func:`~eqpdenet.checks.exporting`."""
    BACKENDS.get(requested)
    if exporting():
        return "reference"
    if requested != "auto":
        return requested
    env = os.environ.get(ENV_BACKEND, "").strip().lower()
    if not env:
        return "auto"
    if env not in BACKENDS:
        warn_once(f"{ENV_BACKEND}={env!r} is not one of {', '.join(BACKENDS.names())}; ignored")
        return "auto"
    return env
