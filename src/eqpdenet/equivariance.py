"""Measuring equivariance: how far ``Phi(g . f)`` is from ``g . Phi(f)``, and against what.

Protocol (``docs/equivariance.md`` states it with the measured numbers):

* **Error.** For a map ``Phi`` (one PDE, a PDE layer, a convolution), images ``f`` and a group
  element ``g`` acting by push-forward (:mod:`eqpdenet.geometry`), the *relative equivariance
  error* is

      E(Phi, g) = || M (Phi(g . f) - g . Phi(f)) || / || M Phi(f) ||

  with the Euclidean norm taken over the whole batch (all images, channels and pixels together)
  and ``M`` the indicator of a *central disk* (radius ``0.35 x`` the image side by default): the
  corners of a rotated image leave the frame (``g . f`` is zero-filled there), so an unmasked
  error would measure the frame, not the map.
* **References.** The identity map has ``E = 0`` *exactly* for every ``g`` (both sides are the
  same resampling of ``f``), so it says nothing about interpolation. The *interpolation floor*
  is the round trip ``|| M (g^{-1} . (g . f) - f) || / || M f ||``: what one resampling forth and
  back costs on these inputs. The *non-equivariant reference* is a seeded random 3x3
  convolution. A layer is as equivariant as the grid allows when its ``E`` is of the order of
  the interpolation floor and far below the random convolution's.
* **Exact group elements.** Rotations by multiples of 90 degrees (of square images) map pixel
  centres onto pixel centres and are applied with :func:`torch.rot90`, which is exactly
  :func:`eqpdenet.geometry.rotate` there; at those angles no interpolation is involved, so an
  equivariant map must give ``E ~ 1e-7`` (float32 round-off) and a non-equivariant one cannot
  hide behind interpolation error: :func:`quarter_turn_check` uses that to flag maps.

Everything here is deterministic (seeded generators, no data augmentation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import affine_warp, pixel_coordinates, rotate, rotation_matrix, scale, translate
from .invariants import Invariant, InvariantSet
from .pde import ConvInt, EulerConv, PDELayer

__all__ = [
    "Transform",
    "central_disk",
    "equivariance_error",
    "interpolation_floor",
    "quarter_turn_check",
    "non_invariant_set",
    "random_conv",
    "heat_pde",
    "smooth_inputs",
    "run_study",
    "write_outputs",
]

#: Default radius of the measurement disk, as a fraction of the image side.
DISK_FRACTION = 0.35


# ----------------------------------------------------------------------------- group elements


@dataclass(frozen=True)
class Transform:
    """A group element ``p -> A p + t`` acting on images, with a printable name.

    ``kind`` is ``"rotation"`` (``value`` in degrees), ``"scaling"`` (``value`` = lambda),
    ``"translation"`` (``value`` = ``(t_x, t_y)`` in pixels of the *original* grid; on an image
    upsampled ``k`` times the shift is ``k`` times as many pixels) or ``"affine"``.
    """

    kind: str
    value: float | tuple[float, float]
    label: str = ""

    @staticmethod
    def rotation(degrees: float) -> Transform:
        return Transform("rotation", float(degrees), f"rot {degrees:g}°")

    @staticmethod
    def scaling(factor: float) -> Transform:
        return Transform("scaling", float(factor), f"scale {factor:g}")

    @staticmethod
    def translation(tx: float, ty: float) -> Transform:
        return Transform("translation", (float(tx), float(ty)), f"shift ({tx:g}, {ty:g})")

    @property
    def is_quarter_turn(self) -> bool:
        return self.kind == "rotation" and float(self.value) % 90.0 == 0.0

    def __call__(self, images: Tensor, *, pixels_per_unit: float = 1.0) -> Tensor:
        """Apply to ``(B, C, H, W)`` images; ``pixels_per_unit`` scales translations."""
        if self.kind == "rotation":
            if self.is_quarter_turn and images.shape[-1] == images.shape[-2]:
                return torch.rot90(images, k=int(round(float(self.value) / 90.0)) % 4,
                                   dims=(-2, -1))
            return rotate(images, math.radians(float(self.value)))
        if self.kind == "scaling":
            return scale(images, float(self.value))
        if self.kind == "translation":
            shift = torch.tensor(self.value, dtype=images.dtype) * pixels_per_unit
            return translate(images, shift)
        raise ValueError(f"unknown transform kind {self.kind!r}")

    def inverse(self) -> Transform:
        if self.kind == "rotation":
            return Transform.rotation(-float(self.value))
        if self.kind == "scaling":
            return Transform.scaling(1.0 / float(self.value))
        if self.kind == "translation":
            return Transform.translation(-self.value[0], -self.value[1])
        raise ValueError(f"unknown transform kind {self.kind!r}")


def similarity(images: Tensor, angle_degrees: float = 0.0, factor: float = 1.0,
               shift: Sequence[float] = (0.0, 0.0)) -> Tensor:
    """``p -> factor R(angle) p + shift`` by :func:`eqpdenet.geometry.affine_warp` (for figures)."""
    matrix = factor * rotation_matrix(math.radians(angle_degrees), dtype=images.dtype)
    return affine_warp(images, matrix, torch.tensor(shift, dtype=images.dtype))


# ----------------------------------------------------------------------------- the measurement


def central_disk(height: int, width: int | None = None,
                 radius_fraction: float = DISK_FRACTION) -> Tensor:
    """Boolean ``(H, W)`` mask of the pixels within ``radius_fraction * min(H, W)`` of the centre."""
    width = width or height
    x, y = pixel_coordinates(height, width, dtype=torch.float64)
    return x**2 + y**2 <= (radius_fraction * min(height, width)) ** 2


def _masked_norm(t: Tensor, mask: Tensor | None) -> Tensor:
    if mask is not None:
        t = t * mask.to(t.dtype)
    return torch.linalg.vector_norm(t.flatten())


@torch.no_grad()
def equivariance_error(phi: Callable[[Tensor], Tensor], images: Tensor,
                       transform: Callable[[Tensor], Tensor],
                       mask: Tensor | None = None) -> float:
    """``|| M (phi(g f) - g phi(f)) || / || M phi(f) ||`` over the whole batch (see module doc).

    Args:
        phi: a map ``(B, C, H, W) -> (B, C', H, W)`` (a module or any callable).
        images: ``(B, C, H, W)``.
        transform: the group action ``g`` on images (a :class:`Transform` or any callable); it
            is applied to inputs and outputs alike.
        mask: boolean ``(H, W)`` (default: :func:`central_disk`); ``None`` is not "no mask":
            pass ``torch.ones(H, W, dtype=torch.bool)`` for the whole frame.
    """
    if mask is None:
        mask = central_disk(images.shape[-2], images.shape[-1])
    out = phi(images)
    difference = phi(transform(images)) - transform(out)
    denominator = _masked_norm(out, mask)
    if denominator == 0:
        return 0.0 if _masked_norm(difference, mask) == 0 else math.inf
    return float(_masked_norm(difference, mask) / denominator)


@torch.no_grad()
def interpolation_floor(images: Tensor, transform: Transform, mask: Tensor | None = None,
                        **kwargs) -> float:
    """``|| M (g^{-1} (g f) - f) || / || M f ||``: the cost of resampling forth and back."""
    if mask is None:
        mask = central_disk(images.shape[-2], images.shape[-1])
    back = transform.inverse()(transform(images, **kwargs), **kwargs)
    return float(_masked_norm(back - images, mask) / _masked_norm(images, mask))


def quarter_turn_check(phi: Callable[[Tensor], Tensor], images: Tensor,
                       tolerance: float = 1e-4) -> dict:
    """Flag non-equivariant maps: ``E`` at the exact rotations by 90, 180, 270 degrees.

    No interpolation is involved, so a rotation-equivariant map (on the pixel grid) has
    ``E ~ 1e-7``; returns ``{"error": max E, "equivariant": error <= tolerance}``.
    """
    errors = [equivariance_error(phi, images, Transform.rotation(a)) for a in (90, 180, 270)]
    return {"error": max(errors), "equivariant": max(errors) <= tolerance}


# ----------------------------------------------------------------------------- reference maps


def non_invariant_set() -> InvariantSet:
    """An invariant set that is *not* invariant: ``{u_x}`` alone (``du/dt = w u_x`` is transport
    along x, which no rotation commutes with). The negative control of the measurement."""
    return InvariantSet("u_x only", "none (u_x is not a rotation invariant)", 1,
                        [Invariant("u_x", "u_x", "u_x", lambda d, eps: d.u_x)])


def _pde(invariants, weights: dict[str, float] | None, *, T: float, dt: float,
         stencil: str = "central", spacing: float = 1.0, seed: int | None = None,
         random_scale: float = 0.05) -> ConvInt:
    step = EulerConv(invariants, dt=dt, stencil=stencil, spacing=spacing)
    with torch.no_grad():
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            step.F.weight.copy_(random_scale * torch.randn(step.F.weight.shape,
                                                           generator=generator))
        for name, value in (weights or {}).items():
            step.F.weight[step.invariant_set.names.index(name)] = value
    steps = int(math.floor(T / dt + 1e-9))
    return ConvInt(step, steps).eval()


def heat_pde(T: float = 1.0, dt: float = 0.1, stencil: str = "central", spacing: float = 1.0,
             diffusivity: float = 1.0) -> ConvInt:
    """The heat equation ``du/dt = a (u_xx + u_yy)`` (the paper's Figure 2) as a :class:`ConvInt`."""
    return _pde("se2", {"laplacian": diffusivity}, T=T, dt=dt, stencil=stencil, spacing=spacing)


def reference_pdes(T: float = 1.0, dt: float = 0.1, stencil: str = "central",
                   spacing: float = 1.0) -> dict[str, ConvInt]:
    """The PDEs measured without a checkpoint (all seeded):

    * ``heat``: ``u_t = u_xx + u_yy``;
    * ``se2-random``: every ``se2`` invariant with a N(0, 0.05^2) weight, plus ``0.2 Δu``
      (a stable, nonlinear SE(2)-equivariant PDE);
    * ``scaling-random``: every ``scaling`` invariant with a N(0, 0.05^2) weight (equivariant to
      scalings, *not* to rotations: its invariants are permuted with sign changes by them);
    * ``u_x (non-invariant)``: ``u_t = u_x``, the negative control.
    """
    common = dict(T=T, dt=dt, stencil=stencil, spacing=spacing)
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


# ----------------------------------------------------------------------------- inputs


def smooth_inputs(count: int = 16, size: int = 28, seed: int = 0) -> Tensor:
    """Smooth analytic images ``(count, 1, size, size)``: sums of 3 anisotropic Gaussians of
    width ~2-4 pixels (of a 28-pixel image) placed within the central disk; values in ~[0, 1].

    Defined in units of the 28-pixel grid, so ``size=56`` samples the *same* functions twice as
    finely (used by the resolution study).
    """
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


def mnist_inputs(count: int = 64, data_dir=None) -> Tensor:
    """The first ``count`` MNIST *test* digits, upright, ``(count, 1, 28, 28)`` in [0, 1]."""
    from .mnist import load_mnist

    digits = load_mnist(data_dir, download=False).test_images[:count]
    return torch.as_tensor(digits, dtype=torch.float32)[:, None] / 255.0


def upsample(images: Tensor, factor: int) -> Tensor:
    """Bicubic upsampling by an integer factor (``align_corners=False``: the image centre and
    extent are kept, so the coordinates of :mod:`eqpdenet.geometry` scale by ``1 / factor``)."""
    if factor == 1:
        return images
    return F.interpolate(images, scale_factor=factor, mode="bicubic", align_corners=False)


# ----------------------------------------------------------------------------- the study


@dataclass
class Record:
    """One measurement (one row of ``table.csv``)."""

    study: str
    inputs: str
    map: str
    transform: str
    param: float
    error: float
    floor: float
    stencil: str = ""
    factor: int = 1
    dt: float = float("nan")
    steps: int = 0
    extra: dict = field(default_factory=dict)


class Study:
    """Collects records; ``run_study`` fills it."""

    def __init__(self):
        self.records: list[Record] = []
        self.seconds = 0.0

    def add(self, **kwargs) -> None:
        self.records.append(Record(**kwargs))

    def select(self, **criteria) -> list[Record]:
        return [r for r in self.records
                if all(getattr(r, k) == v for k, v in criteria.items())]


def _transform_param(t: Transform) -> float:
    return float(t.value[0]) if t.kind == "translation" else float(t.value)


def _maps(T: float, dt: float, stencil: str, checkpoint_maps: dict) -> dict[str, Callable]:
    maps: dict[str, Callable] = {"identity": identity, "random conv3x3": random_conv()}
    maps.update(reference_pdes(T, dt, stencil))
    maps.update(checkpoint_maps)
    return maps


def checkpoint_maps(path) -> tuple[dict[str, Callable], nn.Module, str]:
    """From a checkpoint: each PDE ``u -> u_T`` and the whole layer (after the model's input
    standardisation, as the model applies them); FCNN checkpoints give no maps."""
    from .experiments import load_checkpoint
    from .models import EqPdeNet

    model, config, _ = load_checkpoint(path)
    model.eval()
    tag = f"{config.model.kind}-h{config.model.hidden}"
    if not isinstance(model, EqPdeNet):
        return {}, model, tag
    maps: dict[str, Callable] = {}
    for pde in model.pde_layer.pdes:
        maps[f"{tag} {pde.name}"] = (lambda u, p=pde: p(model.standardize(u)))
    maps[f"{tag} layer"] = lambda u: model.features(u)
    return maps, model, tag


@torch.no_grad()
def model_invariance(model: nn.Module, images: Tensor, transform: Transform) -> dict:
    """Fraction of unchanged predictions and relative logit change ``||l(g f) - l(f)|| / ||l(f)||``."""
    model.eval()
    logits, moved = model(images), model(transform(images))
    unchanged = float((logits.argmax(1) == moved.argmax(1)).double().mean())
    change = float(torch.linalg.vector_norm(moved - logits) / torch.linalg.vector_norm(logits))
    return {"unchanged": unchanged, "logit_change": change}


def default_grid(quick: bool) -> dict:
    if quick:
        return dict(angles=[15, 45, 90], scales=[0.8, 1.25], shifts=[0.5], factors=[1, 2],
                    dts=[0.2, 0.1, 0.05], steps=[1, 10], count=16, stencils=["central"])
    return dict(angles=[5, 15, 30, 45, 60, 90, 135, 180], scales=[0.67, 0.8, 0.9, 1.1, 1.25, 1.5],
                shifts=[0.25, 0.5, 1.0], factors=[1, 2, 3, 4], dts=[0.2, 0.1, 0.05, 0.025],
                steps=[1, 2, 5, 10, 20], count=64, stencils=["central", "isotropic"])


def run_study(*, quick: bool = False, checkpoints: Sequence = (), data_dir=None,
              T: float = 1.0, dt: float = 0.1, echo: Callable[[str], None] = print) -> Study:
    """All measurements of ``eqpdenet equivariance`` (see the module doc and the docs)."""
    start = time.perf_counter()
    grid = default_grid(quick)
    study = Study()
    ck_maps: dict[str, Callable] = {}
    models: dict[str, nn.Module] = {}
    for path in checkpoints:
        maps, model, tag = checkpoint_maps(path)
        ck_maps.update(maps)
        models[tag] = model
    inputs = {"smooth": smooth_inputs(grid["count"] // 4 or 4)}
    try:
        inputs["mnist"] = mnist_inputs(grid["count"], data_dir)
    except Exception as error:  # noqa: BLE001 - measurement still useful on smooth inputs
        echo(f"MNIST unavailable ({error}); measuring on smooth inputs only")
    transforms = ([Transform.rotation(a) for a in grid["angles"]]
                  + [Transform.scaling(s) for s in grid["scales"]]
                  + [Transform.translation(t, 0.0) for t in grid["shifts"]])

    # 1. Every map, every transform, both inputs, at 1x.
    for stencil in grid["stencils"]:
        maps = _maps(T, dt, stencil, ck_maps if stencil == "central" else {})
        for input_name, images in inputs.items():
            for transform in transforms:
                floor = interpolation_floor(images, transform)
                for name, phi in maps.items():
                    if stencil != "central" and name in ("identity", "random conv3x3"):
                        continue
                    study.add(study="transforms", inputs=input_name, map=name,
                              transform=transform.kind, param=_transform_param(transform),
                              error=equivariance_error(phi, images, transform), floor=floor,
                              stencil=stencil if isinstance(phi, ConvInt) else "", dt=dt,
                              steps=getattr(phi, "steps", 0))
        echo(f"transforms ({stencil}): {time.perf_counter() - start:.0f} s")

    # 2. Resolution: the same continuous PDE on images upsampled k times (h = 1/k, dt / k^2).
    angle = Transform.rotation(45 if quick else 30)
    source = inputs.get("mnist", inputs["smooth"])
    for stencil in grid["stencils"]:
        for factor in grid["factors"]:
            images = {"mnist": upsample(source, factor),
                      "smooth": smooth_inputs(len(inputs["smooth"]), 28 * factor)}
            fine_dt = dt / factor**2
            pdes = reference_pdes(T, fine_dt, stencil, spacing=1.0 / factor)
            for input_name, x in images.items():
                floor = interpolation_floor(x, angle)
                for name in ("heat", "se2-random"):
                    study.add(study="resolution", inputs=input_name, map=name,
                              transform="rotation", param=float(angle.value),
                              error=equivariance_error(pdes[name], x, angle), floor=floor,
                              stencil=stencil, factor=factor, dt=fine_dt,
                              steps=pdes[name].steps)
        echo(f"resolution ({stencil}): {time.perf_counter() - start:.0f} s")

    # 3. Time step at fixed T, and number of steps at fixed dt (1x, central).
    for input_name, x in inputs.items():
        floor = interpolation_floor(x, angle)
        for value in grid["dts"]:
            pdes = reference_pdes(T, value, "central")
            for name in ("heat", "se2-random"):
                study.add(study="dt", inputs=input_name, map=name, transform="rotation",
                          param=float(angle.value), error=equivariance_error(pdes[name], x, angle),
                          floor=floor, stencil="central", dt=value, steps=pdes[name].steps)
        for steps in grid["steps"]:
            pdes = reference_pdes(steps * dt, dt, "central")
            for name in ("heat", "se2-random"):
                study.add(study="steps", inputs=input_name, map=name, transform="rotation",
                          param=float(angle.value), error=equivariance_error(pdes[name], x, angle),
                          floor=floor, stencil="central", dt=dt, steps=steps)
    echo(f"dt and steps: {time.perf_counter() - start:.0f} s")

    # 4. Whole models: predictions and logits.
    if models and "mnist" in inputs:
        for tag, model in models.items():
            for transform in transforms:
                result = model_invariance(model, inputs["mnist"], transform)
                study.add(study="model", inputs="mnist", map=tag, transform=transform.kind,
                          param=_transform_param(transform), error=result["logit_change"],
                          floor=float("nan"), extra={"unchanged": result["unchanged"]})
    study.seconds = time.perf_counter() - start
    return study


# ----------------------------------------------------------------------------- outputs


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return ""
    if value == 0:
        return "0"
    return f"{value:.2e}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.3f}"


def _pivot(records: list[Record], row_key, col_key, value=lambda r: r.error) -> list[str]:
    rows = list(dict.fromkeys(row_key(r) for r in records))
    cols = list(dict.fromkeys(col_key(r) for r in records))
    cell = {(row_key(r), col_key(r)): value(r) for r in records}
    lines = ["| | " + " | ".join(str(c) for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(_fmt(cell.get((row, c), float("nan")))
                                               for c in cols) + " |")
    return lines


def markdown_table(study: Study) -> str:
    """The Markdown summary: one pivot table per study and transform."""
    out = ["# Equivariance measurements", "",
           "Relative error ||M (Φ(g f) − g Φ(f))|| / ||M Φ(f)|| on the central disk "
           f"(radius {DISK_FRACTION} × side). 'interpolation floor' is the round trip "
           "||M (g⁻¹ g f − f)|| / ||M f||. Generated by `eqpdenet equivariance`; "
           f"{study.seconds:.0f} s.", ""]
    units = {"rotation": "degrees", "scaling": "λ", "translation": "t_x (pixels)"}
    for inputs in dict.fromkeys(r.inputs for r in study.select(study="transforms")):
        for kind in ("rotation", "scaling", "translation"):
            records = study.select(study="transforms", inputs=inputs, transform=kind)
            if not records:
                continue
            floors = {r.param: r.floor for r in records}
            label = lambda r: r.map + (f" [{r.stencil}]" if r.stencil else "")  # noqa: E731
            out += [f"## {kind.capitalize()}, {inputs} inputs (columns: {units[kind]})", ""]
            out += _pivot(records, label, lambda r: f"{r.param:g}")
            out.append("| *interpolation floor* | " + " | ".join(_fmt(v) for v in floors.values())
                       + " |")
            out.append("")
    for name, key, header in (("resolution", lambda r: f"{r.factor}x (h=1/{r.factor})",
                               "upsampling factor"),
                              ("dt", lambda r: f"dt={r.dt:g}", "time step, T fixed"),
                              ("steps", lambda r: f"{r.steps} (T={r.steps * r.dt:g})",
                               "steps, dt fixed")):
        records = study.select(study=name)
        if not records:
            continue
        angle = records[0].param
        out += [f"## Rotation by {angle:g}° against {header}", ""]
        row = lambda r: f"{r.map} [{r.stencil}], {r.inputs}"  # noqa: E731
        out += _pivot(records, row, key)
        floors = {}
        for r in records:
            floors.setdefault((r.inputs, key(r)), r.floor)
        for inputs in dict.fromkeys(r.inputs for r in records):
            cols = list(dict.fromkeys(key(r) for r in records))
            out.append(f"| *interpolation floor, {inputs}* | "
                       + " | ".join(_fmt(floors.get((inputs, c), float("nan"))) for c in cols)
                       + " |")
        out.append("")
    records = study.select(study="model")
    if records:
        out += ["## Whole models on MNIST test digits", "",
                "Fraction of predictions unchanged by g (and relative logit change).", ""]
        key = lambda r: f"{r.transform} {r.param:g}"  # noqa: E731
        out += _pivot(records, lambda r: r.map + " unchanged", key, lambda r: r.extra["unchanged"])
        out += _pivot(records, lambda r: r.map + " logit change", key)[2:]
        out.append("")
    return "\n".join(out)


def csv_table(study: Study) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["study", "inputs", "map", "stencil", "transform", "param", "factor", "dt",
                     "steps", "error", "interpolation_floor", "unchanged_predictions"])
    for r in study.records:
        writer.writerow([r.study, r.inputs, r.map, r.stencil, r.transform, f"{r.param:g}",
                         r.factor, f"{r.dt:g}", r.steps, f"{r.error:.6e}", f"{r.floor:.6e}",
                         r.extra.get("unchanged", "")])
    return buffer.getvalue()


def _save_figure(fig, path) -> None:
    import io
    from pathlib import Path

    from .experiments import atomic_write

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(Path(path), buffer.getvalue())


def plot_transforms(study: Study, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inputs = list(dict.fromkeys(r.inputs for r in study.select(study="transforms")))
    kinds = ("rotation", "scaling", "translation")
    fig, axes = plt.subplots(len(inputs), 3, figsize=(12, 3.4 * len(inputs)), squeeze=False)
    for i, name in enumerate(inputs):
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            records = [r for r in study.select(study="transforms", inputs=name, transform=kind)
                       if r.stencil in ("", "central")]  # isotropic: in the tables
            labels = dict.fromkeys(r.map + (f" [{r.stencil}]" if r.stencil else "")
                                   for r in records if r.map != "identity")
            for label in labels:
                rs = [r for r in records
                      if r.map + (f" [{r.stencil}]" if r.stencil else "") == label]
                ax.plot([r.param for r in rs], [max(r.error, 1e-9) for r in rs], marker="o",
                        label=label, ms=3, lw=1,
                        ls="--" if "isotropic" in label else "-")
            floor = {r.param: r.floor for r in records}
            ax.plot(list(floor), [max(v, 1e-9) for v in floor.values()], "k:", lw=2,
                    label="interpolation floor (g⁻¹g f − f)")
            ax.set_yscale("log")
            ax.set_title(f"{kind}, {name} inputs")
            ax.set_xlabel({"rotation": "angle (degrees)", "scaling": "λ",
                           "translation": "t_x (pixels)"}[kind])
            ax.set_ylabel("relative equivariance error (disk)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=6, loc="lower right")
    fig.suptitle("‖M(Φ(g f) − g Φ(f))‖ / ‖M Φ(f)‖, central stencil; identity map: exactly 0 "
                 "(not drawn)")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_convergence(study: Study, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (("resolution", lambda r: r.factor, "upsampling factor k (h = 1/k, dt ∝ h²)"),
              ("dt", lambda r: r.dt, "dt (T fixed)"),
              ("steps", lambda r: r.steps, "Euler steps (dt fixed, T = steps·dt)"))
    for ax, (name, xkey, xlabel) in zip(axes, panels, strict=True):
        records = study.select(study=name)
        if not records:
            ax.set_visible(False)
            continue
        for label in dict.fromkeys((r.map, r.stencil, r.inputs) for r in records):
            rs = [r for r in records if (r.map, r.stencil, r.inputs) == label]
            ax.plot([xkey(r) for r in rs], [r.error for r in rs], "o-" if label[2] == "mnist"
                    else "s--", ms=3, lw=1, label=f"{label[0]} [{label[1]}], {label[2]}")
        for inputs in dict.fromkeys(r.inputs for r in records):
            rs = {xkey(r): r.floor for r in records if r.inputs == inputs}
            ax.plot(list(rs), list(rs.values()), "k:" if inputs == "mnist" else "k-.", lw=2,
                    label=f"interpolation floor, {inputs}")
        if name == "resolution":
            ks = sorted({xkey(r) for r in records})
            top = max(r.error for r in records if r.factor == ks[0])
            ax.plot(ks, [top / k**2 for k in ks], color="grey", lw=3, alpha=0.4,
                    label="slope h²")
            ax.set_xscale("log")
            ax.set_xticks(ks, [str(k) for k in ks])
        if name == "dt":
            ax.set_xscale("log")
            values = sorted({xkey(r) for r in records})
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"error, rotation by {records[0].param:g}°")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_models(study: Study, path) -> bool:
    records = study.select(study="model", transform="rotation")
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for tag in dict.fromkeys(r.map for r in records):
        rs = [r for r in records if r.map == tag]
        axes[0].plot([r.param for r in rs], [r.extra["unchanged"] for r in rs], "o-", label=tag)
        axes[1].plot([r.param for r in rs], [r.error for r in rs], "o-", label=tag)
    axes[0].set_ylabel("fraction of predictions unchanged")
    axes[1].set_ylabel("relative logit change")
    for ax in axes:
        ax.set_xlabel("rotation (degrees)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def write_outputs(study: Study, out_dir) -> list:
    """``table.md``, ``table.csv``, ``transforms.png``, ``convergence.png`` (``models.png``)."""
    from pathlib import Path

    from .experiments import atomic_write

    out = Path(out_dir)
    atomic_write(out / "table.md", (markdown_table(study) + "\n").encode())
    atomic_write(out / "table.csv", csv_table(study).encode())
    written = [out / "table.md", out / "table.csv"]
    plot_transforms(study, out / "transforms.png")
    plot_convergence(study, out / "convergence.png")
    written += [out / "transforms.png", out / "convergence.png"]
    if plot_models(study, out / "models.png"):
        written.append(out / "models.png")
    return written


def layer_quarter_turn_report(layer: PDELayer, images: Tensor) -> list[dict]:
    """:func:`quarter_turn_check` of each PDE of a layer and of the layer."""
    rows = [{"map": pde.name, **quarter_turn_check(pde, images)} for pde in layer.pdes]
    rows.append({"map": "layer", **quarter_turn_check(layer, images)})
    return rows
