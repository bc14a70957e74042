"""Robustness scenarios: random affine perturbations of a test set, reproducible per seed.

The paper tests on ROTMNIST's test set unchanged (``test``) and on two perturbed copies:

* ``iso``: per image, a rotation by ``theta ~ U(-30, 30)`` degrees about the image centre followed
  by a translation ``(t_x, t_y)``, ``t_x, t_y ~ U(-2, 2)`` pixels:  ``p -> R(theta) p + t``.
* ``sca``: per image, ``(x, y) -> (lambda x, lambda y)`` about the centre, ``lambda ~ U(2/3, 1)``.

Conventions are those of :mod:`eqpdenet.geometry`: coordinates in pixels about the image centre
``((W - 1) / 2, (H - 1) / 2)`` (``(13.5, 13.5)`` for 28x28), ``x`` to the right, ``y`` *up*;
angles in radians internally, counterclockwise as displayed (ranges are given in degrees where
the argument name says so); push-forward ``out(p) = in(g^{-1} p)`` so the content moves by ``g``
(``t_y > 0`` moves it up); :func:`torch.nn.functional.grid_sample` with ``align_corners=False``,
bilinear, zero fill.

Every scenario is a *sampler*: ``sampler(num, generator, **params) -> AffineDraw`` that draws the
per-image affine maps (independently per image) from a :class:`torch.Generator`.
:func:`apply_scenario` seeds that generator from ``(name, seed)``, draws all ``N`` maps at once (so
the result does not depend on ``batch_size``) and warps the images in batches. The same
``(name, seed, params)`` and images give bit-identical results. New scenarios are added with
:func:`register_scenario`.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..checks import check_images, require_int
from ..errors import ConfigError
from ..geometry import affine_warp, rotation_matrix
from ..registry import Registry, _shown

__all__ = [
    "SCENARIOS",
    "AffineDraw",
    "register_scenario",
    "available_scenarios",
    "get_scenario",
    "scenario_defaults",
    "apply_scenario",
    "scenario_generator",
    "hashed_generator",
    "identity_scenario",
    "iso_scenario",
    "iso_corner_scenario",
    "rot_scenario",
    "sca_scenario",
    "sca_corner_scenario",
    "scale_up_scenario",
    "shift_scenario",
]


@dataclass
class AffineDraw:
    """Per-image affine maps ``p -> matrix @ p + translation`` (pixels, ``y`` up, about the centre).

    Attributes:
        matrix: ``(N, 2, 2)`` float64.
        translation: ``(N, 2)`` float64, ``(t_x, t_y)`` in pixels.
        params: named per-image parameters, each ``(N,)`` (e.g. ``angle`` in radians, ``scale``).
    """

    matrix: Tensor
    translation: Tensor
    params: dict[str, Tensor] = field(default_factory=dict)


Sampler = Callable[..., AffineDraw]
#: Scenarios by name: ``sampler(num, generator, **params) -> AffineDraw``.
SCENARIOS: Registry[Sampler] = Registry("scenario")


def register_scenario(name: str, sampler: Sampler, *, replace: bool = False) -> Sampler:
    """Register ``sampler(num: int, generator: torch.Generator, **params) -> AffineDraw`` as ``name``.

    The sampler's keyword arguments (with defaults) are the scenario's parameter ranges; it must
    draw from ``generator`` only, independently per image. Returns ``sampler``.
    """
    if not callable(sampler):
        raise ConfigError(f"sampler must be callable, got {type(sampler).__name__}")
    return SCENARIOS.register(name, sampler, replace=replace)


def available_scenarios() -> list[str]:
    """Names of the registered scenarios, sorted."""
    return list(SCENARIOS.names())


def get_scenario(name: str) -> Sampler:
    """The sampler registered as ``name``; an unknown name is a ``ConfigError`` listing the valid ones."""
    return SCENARIOS.get(name)


def scenario_defaults(name: str) -> dict:
    """The parameters of scenario ``name`` with their default values."""
    signature = inspect.signature(get_scenario(name))
    return {
        key: p.default for key, p in list(signature.parameters.items())[2:]
        if p.default is not inspect.Parameter.empty
    }


def hashed_generator(label: str) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded from SHA-256 of ``label``: streams with different
    labels (a scenario and a seed, the augmentation of a seed) are independent."""
    digest = hashlib.sha256(label.encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


def scenario_generator(name: str, seed: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded from ``(name, seed)``.

    Different scenarios with the same seed thus draw independent streams.
    """
    seed = require_int(seed, "seed")  # 2.5 gave seed 2's draws, None a raw TypeError
    return hashed_generator(f"eqpdenet.scenario:{name}:{seed}")


def apply_scenario(
    name: str,
    images: Tensor,
    seed: int,
    *,
    batch_size: int = 8192,
    return_params: bool = False,
    **params,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Perturb ``images`` with scenario ``name``, one independent draw per image.

    Args:
        name: a registered scenario (:func:`available_scenarios`), e.g. ``"test"``, ``"iso"``,
            ``"sca"``.
        images: ``(N, C, H, W)`` floating-point tensor (values in [0, 1] for digits).
        seed: with ``name`` and ``params``, determines the draws (bit-identical results).
        batch_size: images warped per call (memory only; results do not depend on it).
        return_params: also return the draws.
        **params: the scenario's parameter ranges, e.g. ``max_shift=2.0, max_angle_degrees=30.0``
            for ``iso`` (see :func:`scenario_defaults`).

    Returns:
        The perturbed images, same shape/dtype/device, or ``(images, draws)`` where ``draws`` maps
        each parameter name (e.g. ``angle`` in radians, ``shift_x``, ``shift_y`` in pixels with
        ``y`` up, ``scale``) and ``matrix`` ``(N, 2, 2)`` and ``translation`` ``(N, 2)`` to tensors.

    The result keeps the autograd graph: where ``images`` require gradients, the perturbed images
    are differentiable with respect to them (the warp is bilinear sampling; a consistency loss
    through the scenario gets its gradient); otherwise nothing is recorded. The draws carry no
    gradient. float16 and bfloat16 images are warped in float32 (the inverse of the affine maps
    has no half-precision kernel, and a sampling grid in float16 would be off by 0.01 pixel) and
    returned in their dtype.

    Raises :class:`~eqpdenet.errors.ConfigError` (an unknown scenario, a ``name`` that is not a
    string: the arguments in another order, a parameter the scenario does not take, a ``seed``
    or ``batch_size`` that is not an integer) or :class:`~eqpdenet.errors.InputError` (images),
    one line each, before any image is warped.
    """
    if not isinstance(name, str):
        raise ConfigError(f"name must be a scenario's name (a string; the order is "
                          f"apply_scenario(name, images, seed)), got {_shown(name)}; available: "
                          f"{', '.join(available_scenarios())}")
    sampler = get_scenario(name)
    check_images(images)
    accepted = list(inspect.signature(sampler).parameters)[2:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"scenario {name!r} has no parameter(s) {unknown}; it accepts {accepted}")
    require_int(batch_size, "batch_size", minimum=1)
    require_int(seed, "seed")
    num = images.shape[0]
    if "image_size" in inspect.signature(sampler).parameters and "image_size" not in params:
        params = {**params, "image_size": tuple(images.shape[-2:])}
    draw = sampler(num, scenario_generator(name, seed), **params)
    if draw.matrix.shape != (num, 2, 2) or draw.translation.shape != (num, 2):
        raise ConfigError(f"scenario {name!r} returned matrix {tuple(draw.matrix.shape)} and translation "
                         f"{tuple(draw.translation.shape)}, expected ({num}, 2, 2) and ({num}, 2)")
    identity = torch.eye(2, dtype=draw.matrix.dtype).expand(num, 2, 2)
    if torch.equal(draw.matrix, identity) and not draw.translation.any():
        out = images.clone()
    else:
        # no torch.no_grad(): the graph is kept (docstring); without inputs that require
        # gradients nothing is recorded, and the values are the same either way
        out = torch.empty_like(images)
        for start in range(0, num, batch_size):
            stop = min(start + batch_size, num)
            matrix = draw.matrix[start:stop].to(images.device)
            shift = draw.translation[start:stop].to(images.device)
            out[start:stop] = affine_warp(images[start:stop], matrix, shift)
    if not return_params:
        return out
    draws = dict(draw.params)
    draws["matrix"], draws["translation"] = draw.matrix, draw.translation
    return out, draws


# --------------------------------------------------------------------------------------------
# Built-in scenarios


def _uniform(num: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """``num`` float64 draws from ``U[low, high)``."""
    return low + (high - low) * torch.rand(num, generator=generator, dtype=torch.float64)


def _check_range(name: str, low: float, high: float, *, positive: bool = False) -> None:
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"{name}: need a finite range low <= high, got [{low}, {high}]")
    if positive and low <= 0:
        raise ConfigError(f"{name}: scale factors must be positive, got {low}")


def _draw(matrix: Tensor, translation: Tensor, **params: Tensor) -> AffineDraw:
    return AffineDraw(matrix.to(torch.float64), translation.to(torch.float64), params)


def identity_scenario(num: int, generator: torch.Generator) -> AffineDraw:
    """``test``: the images unchanged."""
    eye = torch.eye(2, dtype=torch.float64).expand(num, 2, 2).clone()
    return _draw(eye, torch.zeros(num, 2, dtype=torch.float64))


def iso_scenario(
    num: int, generator: torch.Generator, max_shift: float = 2.0, max_angle_degrees: float = 30.0
) -> AffineDraw:
    """``iso``: ``p -> R(theta) p + (t_x, t_y)``; ``theta ~ U(-a, a)`` degrees, ``t ~ U(-s, s)`` px.

    Draw order (fixed): ``shift_x``, ``shift_y``, then ``angle``. Returns ``angle`` in radians.
    """
    _check_range("max_shift", -max_shift, max_shift)
    _check_range("max_angle_degrees", -max_angle_degrees, max_angle_degrees)
    shift_x = _uniform(num, -max_shift, max_shift, generator)
    shift_y = _uniform(num, -max_shift, max_shift, generator)
    angle = _uniform(num, -max_angle_degrees, max_angle_degrees, generator) * (math.pi / 180.0)
    return _draw(rotation_matrix(angle, dtype=torch.float64), torch.stack([shift_x, shift_y], -1),
                 shift_x=shift_x, shift_y=shift_y, angle=angle)


def sca_scenario(
    num: int, generator: torch.Generator, min_scale: float = 2.0 / 3.0, max_scale: float = 1.0
) -> AffineDraw:
    """``sca``: ``(x, y) -> (lambda x, lambda y)`` about the centre, ``lambda ~ U(min, max)``."""
    _check_range("scale", min_scale, max_scale, positive=True)
    factor = _uniform(num, min_scale, max_scale, generator)
    eye = torch.eye(2, dtype=torch.float64)
    return _draw(factor[:, None, None] * eye, torch.zeros(num, 2, dtype=torch.float64), scale=factor)


def scale_up_scenario(
    num: int, generator: torch.Generator, min_scale: float = 1.0, max_scale: float = 1.5
) -> AffineDraw:
    """``scale-up``: as ``sca`` with factors ``lambda ~ U(1, 1.5)`` (digits grow, may be clipped)."""
    return sca_scenario(num, generator, min_scale, max_scale)


def rot_scenario(
    num: int, generator: torch.Generator, min_angle_degrees: float = 0.0, max_angle_degrees: float = 360.0
) -> AffineDraw:
    """``rot``: rotation about the centre by ``theta ~ U(min, max)`` degrees (full circle by default)."""
    _check_range("angle_degrees", min_angle_degrees, max_angle_degrees)
    angle = _uniform(num, min_angle_degrees, max_angle_degrees, generator) * (math.pi / 180.0)
    return _draw(rotation_matrix(angle, dtype=torch.float64), torch.zeros(num, 2, dtype=torch.float64),
                 angle=angle)


def shift_scenario(num: int, generator: torch.Generator, max_shift: float = 2.0) -> AffineDraw:
    """``shift``: translation ``(t_x, t_y)``, each ``~ U(-max_shift, max_shift)`` pixels (``t_y`` up)."""
    _check_range("max_shift", -max_shift, max_shift)
    shift_x = _uniform(num, -max_shift, max_shift, generator)
    shift_y = _uniform(num, -max_shift, max_shift, generator)
    eye = torch.eye(2, dtype=torch.float64).expand(num, 2, 2).clone()
    return _draw(eye, torch.stack([shift_x, shift_y], -1), shift_x=shift_x, shift_y=shift_y)


def _about_corner(draw: AffineDraw, image_size) -> AffineDraw:
    """The same linear maps about the array origin (the centre of pixel ``(0, 0)``, top left)
    instead of the image centre: ``p -> A (p - c) + c + t = A p + (t + c - A c)``."""
    height, width = image_size
    corner = torch.tensor([-(width - 1) / 2.0, (height - 1) / 2.0], dtype=torch.float64)
    translation = draw.translation + corner - draw.matrix @ corner
    return AffineDraw(draw.matrix, translation, draw.params)


def iso_corner_scenario(num: int, generator: torch.Generator, max_shift: float = 2.0,
                        max_angle_degrees: float = 30.0, image_size=(28, 28)) -> AffineDraw:
    """``iso-corner``: drawn as ``iso``, the rotation about the array origin (top-left pixel)
    instead of the image centre: another reading of the paper's unstated convention."""
    return _about_corner(iso_scenario(num, generator, max_shift, max_angle_degrees), image_size)


def sca_corner_scenario(num: int, generator: torch.Generator, min_scale: float = 2.0 / 3.0,
                        max_scale: float = 1.0, image_size=(28, 28)) -> AffineDraw:
    """``sca-corner``: drawn as ``sca``, scaling about the array origin (top-left pixel)."""
    return _about_corner(sca_scenario(num, generator, min_scale, max_scale), image_size)


register_scenario("test", identity_scenario)
register_scenario("iso", iso_scenario)
register_scenario("sca", sca_scenario)
register_scenario("rot", rot_scenario)
register_scenario("shift", shift_scenario)
register_scenario("scale-up", scale_up_scenario)
register_scenario("iso-corner", iso_corner_scenario)
register_scenario("sca-corner", sca_corner_scenario)
