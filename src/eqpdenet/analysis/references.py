"""Reference maps and inputs for measuring equivariance: known PDEs, a non-equivariant control,
a random convolution, and smooth analytic images.

Every map here is deterministic (seeded generators).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..geometry import pixel_coordinates
from ..pde.integrators import EulerFlow, EulerStep, breaks_upper_bound, steps_for
from ..pde.invariants import Invariant, InvariantSet
from ..pde.rhs import InvariantRHS

__all__ = [
    "heat_pde",
    "identity",
    "non_invariant_set",
    "random_conv",
    "reference_pdes",
    "smooth_inputs",
    "upsample",
]



def non_invariant_set() -> InvariantSet:
    """An invariant set that is *not* invariant: ``{u_x}`` alone (``du/dt = w u_x`` is transport
    along x, which no rotation commutes with). The negative control of the measurement."""
    return InvariantSet("u_x only", "none (u_x is not a rotation invariant)", 1,
                        [Invariant("u_x", "u_x", "u_x", lambda d, eps: d.u_x)])


def _pde(invariants, weights: dict[str, float] | None, *, T: float, dt: float,
         stencil: str = "central", spacing: float = 1.0, seed: int | None = None,
         random_scale: float = 0.05, ratio_regularisation: str = "absolute",
         names: tuple[str, str] = ("T", "dt"), name: str | None = None) -> EulerFlow:
    rhs = InvariantRHS(invariants, stencil=stencil, spacing=spacing,
                       ratio_regularisation=ratio_regularisation)
    with torch.no_grad():
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            rhs.F.weight.copy_(random_scale * torch.randn(rhs.F.weight.shape, generator=generator))
        for invariant, value in (weights or {}).items():
            rhs.F.weight[rhs.invariant_set.names.index(invariant)] = value
    flow = EulerFlow(EulerStep(rhs, dt, name=name), steps_for(T, dt, names)).eval()
    _require_stable(flow.step, dt_name=names[1])
    return flow


def _require_stable(step: EulerStep, dt_name: str = "dt") -> None:
    """A :class:`~eqpdenet.errors.ConfigError` when ``step``'s known diffusion coefficient
    breaks the explicit Euler bound ``a dt <= 2 / lambda_max``: the reference maps have fixed
    coefficients, so an unstable scheme would be drawn or measured as if it were the PDE."""
    report = step.stability()
    if report["stable"] is False and breaks_upper_bound(report):
        a, bound = report["diffusivity"], report["max_a_dt"]
        what = (f"(diffusivity {a:g}) is unstable with dt = {step.dt:g} (a dt = {a * step.dt:g} > "
                f"{bound:g})" if a is not None else
                f"is unstable with dt = {step.dt:g} (max -dt sigma = {report['max_rate_dt']:g} > 2)")
        raise ConfigError(
            f"invalid config: {dt_name}: the explicit Euler scheme of {step.name} {what}: its "
            f"result would be the scheme's blow-up, not the PDE's; use dt <= {report['max_dt']:g}")


def heat_pde(T: float = 1.0, dt: float = 0.1, stencil: str = "central", spacing: float = 1.0,
             diffusivity: float = 1.0, names: tuple[str, str] = ("T", "dt")) -> EulerFlow:
    """The heat equation ``du/dt = a (u_xx + u_yy)`` (the paper's Figure 2) as an
    :class:`~eqpdenet.pde.EulerFlow`; ``T`` a whole multiple of ``dt``
    (:func:`~eqpdenet.pde.integrators.steps_for`; ``names``: how the caller calls the two) and
    ``dt`` within the explicit scheme's stability bound, else a
    :class:`~eqpdenet.errors.ConfigError`; so is a ``diffusivity`` that is negative or not
    finite (``a < 0`` is the backward heat equation, ill-posed: every explicit scheme amplifies
    its highest frequencies whatever ``dt``)."""
    from .equivariance import _finite_number

    if _finite_number(diffusivity, "diffusivity") < 0:
        raise ConfigError(f"invalid config: diffusivity: must be >= 0, got {diffusivity:g} (the "
                          f"backward heat equation is ill-posed: it amplifies the highest "
                          f"frequencies, which no dt mends)")
    return _pde("se2", {"laplacian": diffusivity}, T=T, dt=dt, stencil=stencil, spacing=spacing,
                names=names, name="the heat equation")


def reference_pdes(T: float = 1.0, dt: float = 0.1, stencil: str = "central",
                   spacing: float = 1.0,
                   names: tuple[str, str] = ("T", "dt")) -> dict[str, EulerFlow]:
    """The PDEs measured without a checkpoint (all seeded):

    * ``heat``: ``u_t = u_xx + u_yy``;
    * ``se2-random``: every ``se2`` invariant with a N(0, 0.05^2) weight, plus ``0.2 Δu``
      (a stable, nonlinear SE(2)-equivariant PDE);
    * ``scaling-random``: every ``scaling`` invariant with a N(0, 0.05^2) weight and the paper's
      absolute ratio regularisation (equivariant to scalings only where the denominators exceed
      ``eps``, *not* to rotations: its invariants are permuted with sign changes by them);
    * ``u_x (non-invariant)``: ``u_t = u_x``, the negative control.
    """
    common = dict(T=T, dt=dt, stencil=stencil, spacing=spacing, names=names)
    return {
        "heat": heat_pde(**common),
        "se2-random": _pde("se2", {"laplacian": 0.2}, seed=1, **common),
        "scaling-random": _pde("scaling", None, seed=2, **common),
        "u_x (non-invariant)": _pde(non_invariant_set(), {"u_x": 1.0}, **common),
    }


def random_conv(seed: int = 0) -> nn.Module:
    """A seeded random 3x3 convolution (1 -> 1 channel, replicate padding): the reference for a
    map that is *not* equivariant (weights ~ N(0, 1/9), bias 0)."""
    generator = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="replicate", bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / 3.0)
    return conv.eval()


def identity(u: Tensor) -> Tensor:
    return u



def smooth_inputs(count: int = 16, size: int = 28, seed: int = 0) -> Tensor:
    """Smooth analytic images ``(count, 1, size, size)``: sums of 3 anisotropic Gaussians of
    width ~2-4 pixels (of a 28-pixel image) placed within the central disk; values in ~[0, 1].

    Defined in units of the 28-pixel grid, so ``size=56`` samples the *same* functions twice as
    finely (used by the resolution study). ``count`` and ``size`` whole numbers >= 1, else a
    :class:`~eqpdenet.errors.ConfigError`.
    """
    for name, value in (("count", count), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"smooth_inputs: {name} must be a whole number >= 1, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    x, y = pixel_coordinates(size, size, 28.0 / size, dtype=torch.float64)
    images = []
    for _ in range(count):
        image = torch.zeros(size, size, dtype=torch.float64)
        for _ in range(3):
            cx, cy = (torch.rand(2, generator=generator, dtype=torch.float64) - 0.5) * 12
            sx, sy = 2.0 + 2.0 * torch.rand(2, generator=generator, dtype=torch.float64)
            angle = math.pi * float(torch.rand(1, generator=generator))
            c, s = math.cos(angle), math.sin(angle)
            xr, yr = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
            image += torch.exp(-0.5 * ((xr / sx) ** 2 + (yr / sy) ** 2))
        images.append(image / image.max())
    return torch.stack(images)[:, None].float()


def upsample(images: Tensor, factor: int) -> Tensor:
    """Bicubic upsampling by an integer factor (``align_corners=False``: the image centre and
    extent are kept, so the coordinates of :mod:`eqpdenet.geometry` scale by ``1 / factor``);
    ``factor`` a whole number >= 1, else a :class:`~eqpdenet.errors.ConfigError`."""
    if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
        raise ConfigError(f"upsample: factor must be a whole number >= 1, got {factor!r}")
    if factor == 1:
        return images
    return F.interpolate(images, scale_factor=factor, mode="bicubic", align_corners=False)


