"""Fast path of the PDE layer: a fused C++/OpenMP Euler integrator with an analytic backward.

:meth:`eqpdenet.pde.PDELayer.evolve` integrates every PDE of the layer with one call of a C++
kernel (``csrc/fused_euler.cpp``), built with :func:`torch.utils.cpp_extension.load` the first time
it is needed (about a minute) and cached: in ``$EQPDENET_BUILD_DIR`` if set, else in torch's
extension directory (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). The kernel
runs one OpenMP task per image of the batch (and PDE), each doing all Euler steps in
cache-resident buffers: jet (3x3 stencil with the boundary padding), invariants, ``F_theta`` and
the update in one pass per step. Its backward is the exact discrete adjoint, either from the
states stored by the forward or, with ``checkpoint=True``, recomputing them per image from the
input (no stored states at all).

The plain PyTorch code in :mod:`eqpdenet.pde` is the reference and defines the semantics; the
fused path agrees with it to rounding (``tests/test_fused.py``).

Backend selection (``PDELayer(..., backend=...)``):

``"auto"`` (default)
    The fused kernel where the configuration is supported and the extension builds, else the
    reference, with one warning per reason and process. The environment variable
    ``EQPDENET_BACKEND`` (``reference``, ``fused`` or ``auto``) overrides ``"auto"``.
``"reference"``
    Always the plain PyTorch implementation.
``"fused"``
    The fused kernel; where it cannot be used, the reference with one warning (never an error).

Supported: CPU tensors of dtype float32 or float64, the registered ``se2`` and ``scaling``
invariant sets, :class:`~eqpdenet.pde.LinearF` and :class:`~eqpdenet.pde.PolynomialF`, jet
order 2 with any 3x3 stencil of the ``central``/``isotropic`` form (symmetric second
derivatives, antisymmetric first ones; checked from the layer's own stencil weights), all four
boundaries, any spacing, ``dt``, ``ratio_eps``, steps, channels and number of PDEs. Anything
else (CUDA tensors, other invariant sets, subclasses) falls back to the reference.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import invariants as _invariants
from .stencils import Jet

__all__ = [
    "BACKENDS",
    "build_error",
    "build_seconds",
    "fused_evolve",
    "is_available",
    "load_extension",
    "resolve_backend",
    "unsupported_reason",
]

BACKENDS = ("auto", "reference", "fused")
ENV_BACKEND = "EQPDENET_BACKEND"
ENV_BUILD_DIR = "EQPDENET_BUILD_DIR"
SOURCE = Path(__file__).parent / "csrc" / "fused_euler.cpp"
CFLAGS = ["-O3", "-march=native", "-fopenmp"]

_BOUNDARY_CODES = {"replicate": 0, "zeros": 1, "reflect": 2, "circular": 3}
_N_CFG = 23  # must match enum Cfg in csrc/fused_euler.cpp

_lock = threading.Lock()
_extension = None
_build_error: str | None = None
_build_seconds: float | None = None
_warned: set[str] = set()


# ----------------------------------------------------------------------------- build


def _extension_name(source: str) -> str:
    key = "\n".join([source, " ".join(CFLAGS), torch.__version__, platform.machine(),
                     platform.processor(), _cpu_model()])
    return "eqpdenet_fused_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _cpu_model() -> str:
    """CPU model and feature flags: the build uses -march=native, so the cache is per CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    model = next((line for line in lines if line.startswith("model name")), "")
    flags = next((line for line in lines if line.startswith("flags")), "")
    return model + "\n" + flags


def load_extension():
    """The compiled kernel module, building it on first use; raises RuntimeError if it cannot."""
    global _extension, _build_error, _build_seconds
    with _lock:
        if _extension is not None:
            return _extension
        if _build_error is not None:
            raise RuntimeError(_build_error)
        try:
            from torch.utils import cpp_extension

            source = SOURCE.read_text()
            name = _extension_name(source)
            build_dir = os.environ.get(ENV_BUILD_DIR)
            if build_dir:
                build_dir = os.path.join(build_dir, name)
                os.makedirs(build_dir, exist_ok=True)
            start = time.perf_counter()
            _extension = cpp_extension.load(
                name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS,
                extra_ldflags=["-fopenmp"], build_directory=build_dir, verbose=False,
            )
            _build_seconds = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - any failure means "use the reference"
            message = str(error).strip().splitlines()
            _build_error = (f"could not build the C++ extension ({type(error).__name__}: "
                            f"{message[0] if message else ''})")
            raise RuntimeError(_build_error) from error
        return _extension


def is_available() -> bool:
    """Whether the fused kernel builds (or is already built) on this machine."""
    try:
        load_extension()
    except RuntimeError:
        return False
    return True


def build_error() -> str | None:
    """Why the extension could not be built, or None."""
    return _build_error


def build_seconds() -> float | None:
    """Seconds the (possibly cached) build/load of the extension took in this process."""
    return _build_seconds


# ----------------------------------------------------------------------------- selection


def resolve_backend(requested: str) -> str:
    """The backend to use for a layer asking for ``requested`` (env var overrides ``"auto"``)."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; available: {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested
    env = os.environ.get(ENV_BACKEND, "").strip().lower()
    if not env:
        return "auto"
    if env not in BACKENDS:
        warn_once(f"{ENV_BACKEND}={env!r} is not one of {', '.join(BACKENDS)}; ignored")
        return "auto"
    return env


def warn_once(reason: str) -> None:
    """One warning per reason and process."""
    if reason in _warned:
        return
    _warned.add(reason)
    warnings.warn(f"eqpdenet: {reason}", RuntimeWarning, stacklevel=4)


def _stencil_coefficients(weight: Tensor) -> list[float] | None:
    """The 14 structured coefficients of a (6, 1, 3, 3) jet weight, or None if not of that form."""
    if weight.shape != (6, 1, 3, 3):
        return None
    k = weight.detach().to(device="cpu", dtype=torch.float64).numpy()[:, 0]
    cu, ax0, ax1, ay0, ay1 = k[0, 1, 1], k[1, 1, 2], k[1, 0, 2], k[2, 0, 1], k[2, 0, 0]
    b0, b1, b2, b3, c = k[3, 1, 0], k[3, 1, 1], k[3, 0, 0], k[3, 0, 1], k[4, 0, 2]
    e0, e1, e2, e3 = k[5, 0, 1], k[5, 1, 1], k[5, 0, 0], k[5, 1, 0]
    rebuilt = np.array([
        [[0, 0, 0], [0, cu, 0], [0, 0, 0]],
        [[-ax1, 0, ax1], [-ax0, 0, ax0], [-ax1, 0, ax1]],
        [[ay1, ay0, ay1], [0, 0, 0], [-ay1, -ay0, -ay1]],
        [[b2, b3, b2], [b0, b1, b0], [b2, b3, b2]],
        [[-c, 0, c], [0, 0, 0], [c, 0, -c]],
        [[e2, e0, e2], [e3, e1, e3], [e2, e0, e2]],
    ])
    if not np.array_equal(rebuilt, k):
        return None
    return [float(v) for v in (cu, ax0, ax1, ay0, ay1, b0, b1, b2, b3, c, e0, e1, e2, e3)]


def _recipe(F) -> list[tuple[int, int]]:
    """(lower monomial, invariant) per weight of F, from its public monomial table."""
    monomials = [tuple(m) for m in F.monomials()]
    index = {m: i for i, m in enumerate(monomials)}
    recipe = []
    for m in monomials:
        if sum(m) == 1:
            recipe.append((-1, m.index(1)))
        else:
            k = next(i for i, e in enumerate(m) if e)
            lower = tuple(e - (i == k) for i, e in enumerate(m))
            if lower not in index:
                raise ValueError("monomial table not closed under lowering")
            recipe.append((index[lower], k))
    return recipe


def _layer_plan(layer, u: Tensor):
    """(cfg, recipe, weights, biases, names) for the kernel, or a string saying why not."""
    from .pde import ConvInt, EulerConv, LinearF, PolynomialF

    if u.device.type != "cpu":
        return f"the fused kernel is CPU-only (input on {u.device.type}); using the reference"
    if u.dtype not in (torch.float32, torch.float64):
        return f"the fused kernel supports float32 and float64, not {u.dtype}; using the reference"
    sets = {id(_invariants.SE2): 0, id(_invariants.SCALING): 1}
    cfg, recipes, weights, biases = [], [], [], []
    for pde in layer.pdes:
        if type(pde) is not ConvInt or type(pde.step) is not EulerConv:
            return "the fused kernel supports ConvInt/EulerConv only (not subclasses)"
        step = pde.step
        if id(step.invariant_set) not in sets:
            return (f"the fused kernel has no invariant set {step.invariant_set.name!r} "
                    f"(only se2, scaling); using the reference")
        if type(step.F) not in (LinearF, PolynomialF):
            return f"the fused kernel has no F of type {type(step.F).__name__}; using the reference"
        if type(step.jet) is not Jet or step.jet.order != 2:
            return "the fused kernel needs a jet of order 2; using the reference"
        coefficients = _stencil_coefficients(step.jet.weight)
        if coefficients is None:
            return (f"the fused kernel does not support the stencil {step.jet.stencil!r} "
                    f"(3x3 central/isotropic form only); using the reference")
        boundary = step.jet.boundary
        if boundary not in _BOUNDARY_CODES:
            return f"unknown boundary {boundary!r}; using the reference"
        if boundary == "reflect" and min(u.shape[-2:]) <= 1:
            return "reflect boundary on images of 1 pixel; using the reference"
        w, b = step.F.weight, step.F.bias
        if w.dtype != u.dtype or b.dtype != u.dtype or w.device != u.device:
            return (f"parameters ({w.dtype}) and input ({u.dtype}) differ in dtype or device; "
                    f"using the reference")
        recipe = _recipe(step.F)
        k = len(step.invariant_set)
        linear = recipe == [(-1, i) for i in range(k)]
        cfg.append([sets[id(step.invariant_set)], _BOUNDARY_CODES[boundary], step.dt,
                    step.ratio_eps, pde.steps, bool(pde.check_finite),
                    any(coefficients[i] != 0 for i in (2, 4, 7, 8, 12, 13)), linear, len(recipe),
                    *coefficients])
        recipes.append(recipe)
        weights.append(w)
        biases.append(b)
    return cfg, recipes, weights, biases


def unsupported_reason(layer, u: Tensor) -> str | None:
    """Why the fused kernel cannot run ``layer`` on ``u`` (None if it can, build aside)."""
    plan = _layer_plan(layer, u)
    return plan if isinstance(plan, str) else None


# ----------------------------------------------------------------------------- autograd


class _FusedEvolve(torch.autograd.Function):
    """``u (B, C, H, W)`` and the F parameters -> states ``(B, n_e, C, H, W)``."""

    @staticmethod
    def forward(ctx, plan, u, *params):
        ext, cfg, recipe, names, store, nthreads = plan
        weights, biases = params[0::2], params[1::2]
        mmax = recipe.shape[1]
        w = torch.stack([torch.nn.functional.pad(x.detach(), (0, mmax - x.numel()))
                         for x in weights]).contiguous()
        b = torch.stack([x.detach() for x in biases]).contiguous()
        u = u.detach().contiguous()
        out, states, bad = ext.forward(u, w, b, cfg, recipe, store, nthreads)
        if bool((bad > 0).any()):
            from .pde import NonFiniteStateError

            for e, name in enumerate(names):
                column = bad[:, e]
                if bool((column > 0).any()):
                    step = int(column[column > 0].min())
                    raise NonFiniteStateError(name, step, float(cfg[e, 2]))
        ctx.plan = (ext, cfg, recipe, nthreads, [x.numel() for x in weights])
        ctx.save_for_backward(u, w, b, states)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        ext, cfg, recipe, nthreads, sizes = ctx.plan
        u, w, b, states = ctx.saved_tensors
        grad_u, grad_params = ext.backward(grad_out.contiguous(), u, w, b, cfg, recipe, states,
                                           nthreads)
        grad_params = grad_params.sum(0).to(u.dtype)  # (E, Mmax + 1), bias last
        grads = []
        for e, size in enumerate(sizes):
            grads += [grad_params[e, :size], grad_params[e, -1]]
        return (None, grad_u, *grads)


def fused_evolve(layer, u: Tensor, checkpoint: bool = False) -> Tensor | None:
    """States ``(B, n_e, C, H, W)`` of ``layer`` from the fused kernel, or None (with one warning)
    where it cannot be used."""
    plan = _layer_plan(layer, u)
    if isinstance(plan, str):
        warn_once(plan)
        return None
    try:
        ext = load_extension()
    except RuntimeError as error:
        warn_once(f"{error}; using the reference PDE layer")
        return None
    cfg, recipes, weights, biases = plan
    mmax = max(len(r) for r in recipes)
    recipe = torch.zeros(len(recipes), mmax, 2, dtype=torch.int64)
    for e, r in enumerate(recipes):
        recipe[e, : len(r)] = torch.tensor(r, dtype=torch.int64)
    cfg_t = torch.tensor(cfg, dtype=torch.float64)
    params = [p for pair in zip(weights, biases, strict=True) for p in pair]
    needs_grad = torch.is_grad_enabled() and (u.requires_grad or any(p.requires_grad for p in params))
    store = needs_grad and not checkpoint
    names = [pde.name for pde in layer.pdes]
    return _FusedEvolve.apply((ext, cfg_t, recipe, names, store, torch.get_num_threads()),
                              u, *params)
