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
:func:`register_scenario`, which checks the sampler's signature and makes one trial draw from a
generator of its own (:func:`check_sampler`), so that a sampler's mistakes are one
:class:`~eqpdenet.errors.ConfigError` naming the scenario when it is registered, not an exception
after training; :func:`apply_scenario` checks the draw it uses the same way (:func:`check_draw`).
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..checks import check_images, check_values, require_int
from ..errors import ConfigError, EqPdeNetError, InputError, SingularMapError
from ..geometry import affine_warp, rotation_matrix, working_dtype
from ..process_state import GLOBAL_RNG_LOCK
from ..registry import Registry, _shown, checked_signature

__all__ = [
    "SCENARIOS",
    "AffineDraw",
    "check_draw",
    "check_sampler",
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

#: The parameter :func:`apply_scenario` fills with the images' ``(H, W)`` where a sampler takes it
#: and the call does not give it (the only parameter that may lack a default); a call may give
#: only the images' own.
IMAGE_SIZE = "image_size"
#: The number of images and the image size of the trial draw :func:`check_sampler` makes.
TRIAL_IMAGES, TRIAL_IMAGE_SIZE = 2, (28, 28)
#: The seed of the trial draw's own generator (no stream an evaluation uses is touched).
TRIAL_SEED = 0


def _sampler_name(sampler) -> str:
    return getattr(sampler, "__qualname__", None) or type(sampler).__name__


def _sampler_signature(name: str, sampler) -> inspect.Signature:
    """``sampler``'s signature, checked: ``(num, generator, <ranges with defaults>)``."""
    signature = checked_signature(sampler, f"scenario {name!r}", "sampler",
                                  "sampler(num, generator, **ranges)")
    parameters = list(signature.parameters.values())
    expected = "sampler(num, generator, <ranges with defaults>) -> AffineDraw"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(parameters) < 2 or any(p.kind not in positional for p in parameters[:2]):
        raise ConfigError(f"scenario {name!r}: its sampler {_sampler_name(sampler)}{signature} does not "
                          f"take (num, generator) as its first two positional parameters; a "
                          f"sampler is {expected}")
    for parameter in parameters[2:]:
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ConfigError(f"scenario {name!r}: its sampler {_sampler_name(sampler)}{signature} takes "
                              f"{parameter}; its ranges must be named parameters with defaults "
                              f"(apply_scenario and scenario_defaults read them from the signature)")
        if parameter.name in _apply_scenario_arguments():
            # apply_scenario takes such a keyword itself: the range was never set (batch_size=2
            # went to the warp, and seed=1.5 was a raw TypeError "multiple values")
            raise ConfigError(f"scenario {name!r}: its sampler's range {parameter.name!r} is named "
                              f"like apply_scenario's own argument {parameter.name!r}, so no call "
                              f"could set it; rename the range (apply_scenario takes "
                              f"{', '.join(_apply_scenario_arguments())} itself)")
        if parameter.kind == inspect.Parameter.POSITIONAL_ONLY or (
                parameter.default is inspect.Parameter.empty and parameter.name != IMAGE_SIZE):
            raise ConfigError(f"scenario {name!r}: its sampler's range {parameter.name!r} has no "
                              f"default; every range needs one (apply_scenario(name, images, seed) "
                              f"and scenario_defaults use it): {expected}")
    return signature


def _apply_scenario_arguments() -> tuple[str, ...]:
    """The names :func:`apply_scenario` takes itself (``name``, ``images``, ``seed``,
    ``batch_size``, ``return_params``): no range of a scenario may have one of them. Read from
    its signature, so that an argument added there is reserved here too."""
    return tuple(p.name for p in inspect.signature(apply_scenario).parameters.values()
                 if p.kind is not inspect.Parameter.VAR_KEYWORD)


def check_draw(name: str, draw, num: int, context: str = "") -> AffineDraw:
    """Raise a :class:`ConfigError` naming scenario ``name`` unless ``draw`` is an
    :class:`AffineDraw` of ``num`` maps that can be applied: ``matrix`` ``(num, 2, 2)`` and
    ``translation`` ``(num, 2)`` real floating-point tensors, finite, every matrix invertible
    (in float64), ``params`` a dict of ``(num,)`` tensors by string names other than ``matrix``
    and ``translation``. ``context`` says which draw (``" (seed 3, 100 images)"``). Returns
    ``draw``."""
    where = f"scenario {name!r}{context}"
    if not isinstance(draw, AffineDraw):
        got = (f"a {type(draw).__name__} of {len(draw)} items" if isinstance(draw, tuple | list)
               else _shown(draw))
        raise ConfigError(f"{where}: its sampler returned {got}, not an "
                          f"AffineDraw(matrix, translation, params)")
    for field_name, shape in (("matrix", (num, 2, 2)), ("translation", (num, 2))):
        value = getattr(draw, field_name)
        if not isinstance(value, Tensor):
            raise ConfigError(f"{where}: its draw's {field_name} must be a torch.Tensor {shape}, "
                              f"got {_shown(value)}")
        if not value.is_floating_point():
            raise ConfigError(f"{where}: its draw's {field_name} must be a floating-point tensor "
                              f"(float64, as the built-in scenarios draw), got {value.dtype}")
        if tuple(value.shape) != shape:
            raise ConfigError(f"{where}: its draw's {field_name} has shape {tuple(value.shape)}, "
                              f"expected {shape} (one per image)")
        finite = torch.isfinite(value).flatten(1).all(1)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            raise ConfigError(f"{where}: its draw's {field_name} holds non-finite values for "
                              f"{int((~finite).sum())} of {num} images (the first: image {first})")
    inverse, info = torch.linalg.inv_ex(draw.matrix.detach().to(torch.float64))
    singular = (info != 0) | ~torch.isfinite(inverse).flatten(1).all(1)
    if bool(singular.any()):
        first = int(singular.nonzero()[0, 0])
        raise ConfigError(f"{where}: its draw's matrix is not invertible for "
                          f"{int(singular.sum())} of {num} images (the first: image {first}, "
                          f"{draw.matrix[first].tolist()}); the warp needs its inverse")
    if not isinstance(draw.params, dict):
        raise ConfigError(f"{where}: its draw's params must be a dict of (N,) tensors, got "
                          f"{_shown(draw.params)}")
    for key, value in draw.params.items():
        if not isinstance(key, str) or key in ("matrix", "translation"):
            raise ConfigError(f"{where}: its draw's params are named by strings other than "
                              f"'matrix' and 'translation' (return_params gives those), got "
                              f"{key!r}")
        if not isinstance(value, Tensor) or tuple(value.shape) != (num,):
            raise ConfigError(f"{where}: its draw's params[{key!r}] must be a ({num},) tensor "
                              f"(one value per image), got {_shown(value)}")
    return draw


def check_sampler(name: str, sampler) -> None:
    """Raise a :class:`ConfigError` naming scenario ``name`` unless ``sampler`` is one: callable as
    ``sampler(num, generator, **ranges)`` with a default for every range (``image_size`` may
    lack one: :func:`apply_scenario` gives the images'), no range named like one of
    :func:`apply_scenario`'s own arguments (``name``, ``images``, ``seed``, ``batch_size``,
    ``return_params``: no call could set it), and, drawing :data:`TRIAL_IMAGES` maps
    with its default ranges from a generator of its own (seeded :data:`TRIAL_SEED`), it returns
    a valid draw (:func:`check_draw`), the same one twice (it draws from ``generator`` only).

    The trial touches no stream an evaluation uses: not the scenarios' generators, and not
    torch's global generator, whose state is restored (:func:`torch.random.fork_rng`)."""
    signature = _sampler_signature(name, sampler)
    params = {}
    if IMAGE_SIZE in list(signature.parameters)[2:] and (
            signature.parameters[IMAGE_SIZE].default is inspect.Parameter.empty):
        params[IMAGE_SIZE] = TRIAL_IMAGE_SIZE
    context = f" (a trial draw of {TRIAL_IMAGES} images with its default ranges)"
    draws = []
    # a user's sampler may draw from the global generator: forked under the library's lock, so
    # that the restore cannot land in the middle of another thread's seeded draws
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        for _ in range(2):
            generator = torch.Generator(device="cpu").manual_seed(TRIAL_SEED)
            try:
                draw = sampler(TRIAL_IMAGES, generator, **params)
            except Exception as error:
                raise ConfigError(f"scenario {name!r}{context}: its sampler raised "
                                  f"{type(error).__name__}: {' '.join(str(error).split())}") from error
            draws.append(check_draw(name, draw, TRIAL_IMAGES, context))
    first, second = draws
    same = (torch.equal(first.matrix, second.matrix)
            and torch.equal(first.translation, second.translation)
            and first.params.keys() == second.params.keys()
            and all(torch.equal(first.params[k], second.params[k]) for k in first.params))
    if not same:
        raise ConfigError(f"scenario {name!r}{context}: two draws from generators of the same seed "
                          f"differ; a sampler must draw from its generator argument only (not "
                          f"torch's global generator, NumPy or random), or its results are not "
                          f"reproducible per seed")


class _ScenarioRegistry(Registry):
    """The scenarios: a sampler is checked (:func:`check_sampler`) whichever way it is
    registered (:func:`register_scenario` or ``SCENARIOS.register``)."""

    def register(self, name, item=None, *, replace: bool = False):
        if item is not None and isinstance(name, str) and name and (replace or name not in self):
            check_sampler(name, item)
        return super().register(name, item, replace=replace)


#: Scenarios by name: ``sampler(num, generator, **params) -> AffineDraw``.
SCENARIOS: Registry[Sampler] = _ScenarioRegistry("scenario")


def register_scenario(name: str, sampler: Sampler, *, replace: bool = False) -> Sampler:
    """Register ``sampler(num: int, generator: torch.Generator, **params) -> AffineDraw`` as ``name``.

    The sampler's keyword arguments (with defaults) are the scenario's parameter ranges; it must
    draw from ``generator`` only, independently per image. Returns ``sampler``.

    The sampler is checked first (:func:`check_sampler`: its signature, and a trial draw from a
    generator of its own with its default ranges): a sampler that does not take
    ``(num, generator)``, a range without a default or named like one of
    :func:`apply_scenario`'s own arguments, a draw that is not an :class:`AffineDraw` of
    finite, invertible maps of the right shapes, or draws that are not a function of the
    generator are one :class:`ConfigError` naming the scenario, now rather than after training.
    """
    return SCENARIOS.register(name, sampler, replace=replace)


def available_scenarios() -> list[str]:
    """Names of the registered scenarios, sorted."""
    return list(SCENARIOS.names())


def get_scenario(name: str) -> Sampler:
    """The sampler registered as ``name``; an unknown name is a ``ConfigError`` listing the valid ones."""
    return SCENARIOS.get(name)


def scenario_defaults(name: str) -> dict:
    """The parameter ranges of scenario ``name`` with their default values, as
    :func:`apply_scenario` uses them.

    ``image_size`` is not among them, whatever default a sampler's signature gives it (the corner
    scenarios' ``(28, 28)``): :func:`apply_scenario` always passes the images' own ``(H, W)``
    (a call may give only that one), so that default is never what a scenario is applied with."""
    signature = inspect.signature(get_scenario(name))
    return {
        key: p.default for key, p in list(signature.parameters.items())[2:]
        if p.default is not inspect.Parameter.empty and key != IMAGE_SIZE
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


def _is_size(value, size: tuple[int, int]) -> bool:
    """Whether ``value`` is the pair ``size`` (a tuple, list, :class:`torch.Size` or tensor of
    the same two numbers; ``28.0`` is 28, ``True`` is no size)."""
    try:
        return len(value) == 2 and all(
            not isinstance(given, bool) and bool(given == wanted)
            for given, wanted in zip(value, size, strict=True))
    except (TypeError, ValueError, RuntimeError):  # no length, or entries that do not compare
        return False


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
            for ``iso`` (see :func:`scenario_defaults`). ``image_size``, which the corner
            scenarios take, is the images' ``(H, W)`` whether given or not (another is refused).

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
    or ``batch_size`` that is not an integer, an ``image_size`` other than the images' own
    ``(H, W)``; a sampler that raises another exception, or whose
    draw is not an :class:`AffineDraw` of finite, invertible maps of the right shapes:
    :func:`check_draw`, the scenario, seed and ranges named) or
    :class:`~eqpdenet.errors.InputError` (images that are not ``(N, C, H, W)`` floating point,
    or that hold NaN or inf, which were warped on into the result: the count and the index of
    the first, :func:`~eqpdenet.checks.check_values`), one line each, before any image is
    warped. The values are checked as a layer checks its input: one pass over the images and
    one host read per call (one synchronisation on a GPU, however many batches are warped),
    none where :func:`~eqpdenet.checks.check_values` reads nothing (a CUDA graph being
    captured, an export, ``torch.func.vmap``, the ``meta`` device).
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
    size = tuple(images.shape[-2:])
    if IMAGE_SIZE in params and not _is_size(params[IMAGE_SIZE], size):
        # its one meaning is the images' (H, W): another size warped about a point that is not
        # the corner (a 28x28 image scaled about (20, 20)'s "corner", or wiped out by (100, 3))
        raise ConfigError(f"scenario {name!r}: {IMAGE_SIZE} must be the images' own (H, W) = "
                          f"{size}, got {_shown(params[IMAGE_SIZE])}; leave it out and "
                          f"apply_scenario passes the images' own")
    check_values(images)  # after the checks that cost nothing: this one reads every pixel
    num = images.shape[0]
    if IMAGE_SIZE in inspect.signature(sampler).parameters and IMAGE_SIZE not in params:
        params = {**params, IMAGE_SIZE: size}
    shown = {k: v for k, v in params.items() if k != IMAGE_SIZE}
    context = (f" (seed {seed}, {num} images"
               + (f", {', '.join(f'{k}={v!r}' for k, v in shown.items())})" if shown else ")"))
    try:
        draw = sampler(num, scenario_generator(name, seed), **params)
    except EqPdeNetError:  # the built-ins' own checks of their ranges name the range
        raise
    except Exception as error:
        raise ConfigError(f"scenario {name!r}{context}: its sampler raised {type(error).__name__}: "
                          f"{' '.join(str(error).split())}") from error
    check_draw(name, draw, num, context)
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
            try:
                out[start:stop] = affine_warp(images[start:stop], matrix, shift)
            except InputError as error:  # finite and invertible in float64 (check_draw), not in
                # the images' working dtype: float32 overflows or rounds to a singular matrix
                problem = ("a matrix of its draw cannot be inverted"
                           if isinstance(error, SingularMapError) else "its draw is not finite")
                raise ConfigError(f"scenario {name!r} (seed {seed}): {problem} in "
                                  f"{working_dtype(images.dtype)}, the images' working dtype "
                                  f"({' '.join(str(error).split())})") from None
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
    instead of the image centre: another reading of the paper's unstated convention.
    ``image_size``: the images' ``(H, W)``, which :func:`apply_scenario` passes (and refuses
    another one from the call: the maps would be about another point than the top-left pixel);
    the default serves a direct call of the sampler only (it is no range, and
    :func:`scenario_defaults` leaves it out)."""
    return _about_corner(iso_scenario(num, generator, max_shift, max_angle_degrees), image_size)


def sca_corner_scenario(num: int, generator: torch.Generator, min_scale: float = 2.0 / 3.0,
                        max_scale: float = 1.0, image_size=(28, 28)) -> AffineDraw:
    """``sca-corner``: drawn as ``sca``, scaling about the array origin (top-left pixel);
    ``image_size`` as for :func:`iso_corner_scenario`."""
    return _about_corner(sca_scenario(num, generator, min_scale, max_scale), image_size)


register_scenario("test", identity_scenario)
register_scenario("iso", iso_scenario)
register_scenario("sca", sca_scenario)
register_scenario("rot", rot_scenario)
register_scenario("shift", shift_scenario)
register_scenario("scale-up", scale_up_scenario)
register_scenario("iso-corner", iso_corner_scenario)
register_scenario("sca-corner", sca_corner_scenario)
