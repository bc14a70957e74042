"""The equivariance study behind ``eqpdenet equivariance``: measurements over maps, transforms,
resolutions, time steps and checkpoints, written as Markdown, CSV and plots; and the convergence
orders of every invariant set with every stencil (``invariant_orders.md``).

The metric and its protocol are in :mod:`eqpdenet.analysis.equivariance`; the reference maps in
:mod:`eqpdenet.analysis.references`; the invariant orders in
:mod:`eqpdenet.analysis.invariant_orders`.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..analysis.equivariance import (
    DISK_FRACTION,
    Transform,
    _check_map_values,
    equivariance_error,
    interpolation_floor,
    model_invariance,
)
from ..analysis.invariant_orders import invariant_orders, orders_table
from ..analysis.predictions import logits_by_image
from ..analysis.references import (
    heat_pde,
    identity,
    random_conv,
    reference_pdes,
    smooth_inputs,
    upsample,
)
from ..data.mnist import load_mnist
from ..errors import ConfigError, InputError, NonFiniteStateError
from ..models import EqPdeNet, LiftedPDENet
from ..pde.integrators import MAX_STEPS, STEPS_RTOL, EulerFlow, EulerStep
from .files import atomic_write, import_pyplot, write_set
from .training import load_checkpoint

__all__ = ["OUTPUT_FILES", "Record", "Study", "StudyPlan", "equivariance_table",
           "measure_equivariance", "prepare_study", "run_study", "write_invariant_orders",
           "write_outputs"]


def mnist_inputs(count: int = 64, data_dir=None) -> Tensor:
    """The first ``count`` MNIST *test* digits, upright, ``(count, 1, 28, 28)`` in [0, 1]."""
    digits = load_mnist(data_dir, download=False).test_images[:count]
    return torch.as_tensor(digits, dtype=torch.float32)[:, None] / 255.0



@dataclass
class Record:
    """One measurement (one row of ``table.csv``). ``dt`` and ``steps`` are the map's own
    explicit Euler scheme (a reference PDE's, a learned PDE's as trained); NaN and None for a
    map without one (the identity, the random convolution, a lift, a model's logits), written
    as empty cells."""

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
    steps: int | None = None
    extra: dict = field(default_factory=dict)


class Study:
    """Collects records; :func:`measure_equivariance` fills it. ``files``: each measured
    checkpoint's file (as given) by its tag, listed in ``table.md`` so that a reader can tell
    apart two checkpoints of one kind."""

    def __init__(self):
        self.records: list[Record] = []
        self.seconds = 0.0
        self.files: dict[str, str] = {}

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


#: The input shape ``(channels, side)`` of MNIST, which the study's shared inputs have.
MNIST_SHAPE = (1, 28)


def input_shape(model: nn.Module) -> tuple[int, int]:
    """``(channels, side)`` of the images ``model`` takes."""
    return int(getattr(model, "in_channels", 1)), int(getattr(model, "image_size", 28))


def checkpoint_inputs(model: nn.Module, config, count: int, data_dir=None,
                      echo: Callable[[str], None] = print, label: str = "that checkpoint"
                      ) -> tuple[dict[str, Tensor], str | None]:
    """Inputs of a checkpoint whose images are not MNIST's shape (:data:`MNIST_SHAPE`), so that
    its maps and logits are measured on what it takes: smooth fields of its shape (the functions
    of :func:`~eqpdenet.analysis.references.smooth_inputs`, one per channel, sampled at its
    side) and the first ``count`` test images of its own data set (as it was trained on them:
    rotated or not), under the data set's file name (:func:`prepare_study` gives the test
    images of different data sets that share one distinct names); without them (the data set
    cannot be read here) the smooth fields alone, with a message naming the checkpoint
    (``label``): its maps (if it has any) and its logits are then measured on them. Returns the
    inputs by name and the name of the test images (None without them)."""
    from .training import prepare_data  # the data pipeline of training, with its checks

    channels, side = input_shape(model)
    quarter = max(count // 4, 4)
    smooth = smooth_inputs(quarter * channels, side).view(quarter, channels, side, side)
    inputs = {f"smooth {channels}x{side}x{side}": smooth}
    try:
        data = prepare_data(config.data, data_dir=data_dir)
    except Exception as error:  # noqa: BLE001 - the smooth fields still measure the maps
        echo(f"{config.data.dataset} unavailable ({error}); measuring {label} on smooth "
             f"{channels}x{side}x{side} inputs only")
        return inputs, None
    name = Path(config.data.dataset).name
    inputs[name] = data.test.images[:count].float()
    return inputs, name


@dataclass(frozen=True)
class LearnedMap:
    """A checkpoint's map with its own explicit Euler scheme, which ``table.csv`` records:
    ``dt`` and ``steps`` of its PDE (of every PDE of a layer that shares them), NaN and None
    where it has none (a lift) or no one (a layer of PDEs of different schemes)."""

    function: Callable[[Tensor], Tensor]
    dt: float = float("nan")
    steps: int | None = None

    def __call__(self, images: Tensor) -> Tensor:
        return self.function(images)


def _scheme(euler_steps: Sequence, steps: int | None = None) -> tuple[float, int | None]:
    """``(dt, steps)`` of a chain of Euler steps (``steps``: how many, default one of each of
    ``euler_steps``) where they share one ``dt``; ``(nan, None)`` without any, or where their
    ``dt`` differ (no one scheme to record)."""
    dts = {float(step.dt) for step in euler_steps}
    if len(dts) != 1:
        return float("nan"), None
    return dts.pop(), len(euler_steps) if steps is None else steps


def map_scheme(phi) -> tuple[float, int | None]:
    """``(dt, steps)`` of a map of the study: an :class:`~eqpdenet.pde.integrators.EulerFlow`'s
    (a reference PDE), a :class:`LearnedMap`'s, else ``(nan, None)``."""
    if isinstance(phi, EulerFlow):
        return float(phi.step.dt), phi.steps
    if isinstance(phi, LearnedMap):
        return phi.dt, phi.steps
    return float("nan"), None


def checkpoint_maps(path, taken=()) -> tuple[dict[str, Callable], nn.Module, str, object]:
    """From a checkpoint: each PDE ``u -> u_T`` and the whole layer (after the model's input
    standardisation, as the model applies them); for a lifted model the lift and its first stage,
    projected over orientations; other families give no maps (their logits are measured).
    Each map is a :class:`LearnedMap` with its own Euler scheme (a learned PDE's ``dt`` and
    steps; the first stage's blocks, each one step; none for the lift).
    Returns the maps, the model, its tag (its kind; with its file where ``taken`` has the kind
    already) and its configuration."""
    model, config, _ = load_checkpoint(path)
    model.eval()
    tag = config.model.kind + (f"-h{config.model.hidden}" if config.model.kind in ("eqpdenet", "fcnn")
                               else "")
    if tag in taken:  # two checkpoints of one kind: tell them apart by their files
        tag = f"{tag} ({Path(path).parent.name}/{Path(path).name})"
        base, index = tag, 2
        while tag in taken:
            tag, index = f"{base} #{index}", index + 1
    if isinstance(model, LiftedPDENet):
        # Full resolution only (the lift and the first stage): the transforms act on the
        # 28x28 grid, and a downsampled map would need their action at another spacing.
        stage = [m for m in model.stages[0].modules() if isinstance(m, EulerStep)]
        maps = {f"{tag} lift": LearnedMap(lambda u: model.projected_fields(u, 0)),
                f"{tag} stage 1": LearnedMap(lambda u: model.projected_fields(u, 1),
                                             *_scheme(stage))}
        return maps, model, tag, config
    if not isinstance(model, EqPdeNet):
        return {}, model, tag, config
    maps: dict[str, Callable] = {}
    pdes = list(model.pde_layer.pdes)
    for pde in pdes:
        maps[f"{tag} {pde.name}"] = LearnedMap(lambda u, p=pde: p(model.standardize(u)),
                                               *_scheme([pde.step], pde.steps))
    schemes = {_scheme([pde.step], pde.steps) for pde in pdes}
    maps[f"{tag} layer"] = LearnedMap(lambda u: model.features(u),
                                      *(schemes.pop() if len(schemes) == 1
                                        else (float("nan"), None)))
    return maps, model, tag, config


def default_grid(quick: bool) -> dict:
    if quick:
        return dict(angles=[15, 45, 90], scales=[0.8, 1.25], shifts=[0.5], factors=[1, 2],
                    dts=[0.2, 0.1, 0.05], steps=[1, 10], count=16, stencils=["central"])
    return dict(angles=[5, 15, 30, 45, 60, 90, 135, 180], scales=[0.67, 0.8, 0.9, 1.1, 1.25, 1.5],
                shifts=[0.25, 0.5, 1.0], factors=[1, 2, 3, 4], dts=[0.2, 0.1, 0.05, 0.025],
                steps=[1, 2, 5, 10, 20], count=64, stencils=["central", "isotropic"])


def check_steps(T: float, dt: float, grid: dict, advise: bool = True) -> None:
    """Every ``(T, dt)`` of the study makes whole Euler steps within the bound and a stable heat
    equation (:func:`~eqpdenet.analysis.references.heat_pde`), or a
    :class:`~eqpdenet.errors.ConfigError` naming the study that uses it. ``advise=False``
    skips the search for ``--T`` values to name in the first refusal (:func:`_steps_refusal`;
    for the searches themselves, which only need to know whether a value is accepted)."""
    names = ("--T", "--dt")
    try:
        heat_pde(T, dt, names=names)
    except ConfigError as error:
        if not advise:
            raise
        raise ConfigError(_steps_refusal(T, dt, grid, error)) from None
    for factor in grid["factors"]:  # the resolution study: dt / k^2 at spacing 1 / k
        try:
            heat_pde(T, dt / factor**2, spacing=1.0 / factor, names=names)
        except ConfigError as error:
            raise ConfigError(f"{error} (the resolution study integrates at {factor}x with "
                              f"dt / {factor**2})") from None
    for value in grid["dts"]:
        try:
            heat_pde(T, value, names=names)
        except ConfigError as error:
            raise ConfigError(_dt_study_refusal(T, dt, grid, error)) from None


def _whole(ratio: float) -> bool:
    """Whether ``ratio`` is a whole number within the rounding that
    :func:`~eqpdenet.pde.integrators.steps_for` takes (:data:`STEPS_RTOL`)."""
    return abs(ratio - round(ratio)) <= STEPS_RTOL * max(round(ratio), 1)


def _steps_refusal(T: float, dt: float, grid: dict, error: ConfigError,
                   tries: int = 1000) -> str:
    """The refusal of a ``(--T, --dt)`` whose own integration
    (:func:`~eqpdenet.analysis.references.heat_pde`) fails. An unstable ``--dt`` is named
    first, whatever ``--T``: advice on ``--T`` for a ``--dt`` that the study refuses next
    (``--dt 0.3`` was told "0.9 or 1.2", then that 0.3 is unstable) cannot be followed. A ``--T``
    that is not a whole multiple of ``--dt`` (or smaller than it) is told the nearest values that
    the study accepts with this ``--dt``: whole multiples of both ``--dt`` and the dt study's
    largest step (the generic advice of :func:`~eqpdenet.pde.integrators.steps_for` named
    multiples of ``--dt`` alone, 0.9 or 1.05 for ``--dt 0.15``, which the dt study's 0.2
    refuses next). Any other cause is ``error`` as it is."""
    try:
        heat_pde(dt, dt, names=("--T", "--dt"))  # one step: the stability of --dt alone
    except ConfigError as unstable:
        return str(unstable)
    ratio = T / dt if math.isfinite(T) and T > 0 else math.nan
    if not 0 < ratio <= MAX_STEPS * (1 + STEPS_RTOL):
        return str(error)
    steps = round(ratio)
    if ratio >= 1 - STEPS_RTOL and abs(ratio - steps) <= STEPS_RTOL * steps:
        return str(error)  # whole steps: the error has another cause
    unit = max(grid["dts"])
    study = (f"whole multiples of both --dt and {unit:g}, the largest step of the dt study "
             f"({grid['dts']}, its own steps whatever --dt is)")
    named = [f"{v:g}" for v in _accepted_near(T, dt, grid, tries)]
    advice = (f"choose a --T among the {study}: {' or '.join(named)}; or another --dt"
              if named else f"no --T near {T:g} is one of the {study}: choose another --dt")
    if ratio < 1 - STEPS_RTOL:
        return (f"invalid config: --T / --dt: T = {T:g} is smaller than dt = {dt:g}: not one "
                f"Euler step would run; {advice}")
    return (f"invalid config: --T / --dt: T = {T:g} is not a whole multiple of dt = {dt:g} "
            f"({ratio:.4g} steps): the Euler steps would stop at t = {math.floor(ratio) * dt:g}; "
            f"{advice}")


def _accepted_near(T: float, dt: float, grid: dict, tries: int = 1000) -> list[float]:
    """The nearest values below and above ``T`` (either may be missing) that
    :func:`check_steps` accepts as ``--T`` with this ``--dt``: whole multiples of both ``--dt``
    and the dt study's largest step (the study's other steps divide it), searched over ``tries``
    multiples of that step each way."""
    unit = max(grid["dts"])

    def accepted(n: int) -> float | None:
        value = float(f"{n * unit:g}")
        ratio = value / dt
        # cheap first (most n are not multiples), with the tolerance check_steps takes: 1e-9
        # refused 1 = 6 x 0.1666667, which the study runs
        if not _whole(ratio):
            return None
        try:
            check_steps(value, dt, grid, advise=False)
        except ConfigError:
            return None
        return value

    middle = T / unit
    below = next((v for n in range(math.floor(middle), max(math.floor(middle) - tries, 0), -1)
                  if (v := accepted(n)) is not None and v < T), None)
    above = next((v for n in range(math.ceil(middle), math.ceil(middle) + tries)
                  if (v := accepted(n)) is not None and v > T), None)
    return [v for v in (below, above) if v is not None]


def _dt_study_refusal(T: float, dt: float, grid: dict, error: ConfigError) -> str:
    """The refusal of a ``--T`` that the dt study cannot integrate to with each of its own time
    steps (``grid["dts"]``). Those steps are fixed, whatever ``--dt`` is, so the advice is
    about ``--T`` (the generic advice of :func:`~eqpdenet.pde.integrators.steps_for`, "or
    another dt", named values of ``--dt`` that change nothing here). Each of the grid's steps
    divides its largest (0.2 = 2 x 0.1 = 4 x 0.05 = 8 x 0.025), so a ``--T`` is accepted by all
    of them where it is a whole multiple of the largest and makes at most ``MAX_STEPS`` steps of
    the smallest; the values named are also whole multiples of ``--dt`` (:func:`_accepted_near`:
    ``--T 0.9 --dt 0.15`` was told 0.8 or 1, which that ``--dt`` refuses next)."""
    dts = grid["dts"]
    largest, smallest = max(dts), min(dts)
    study = (f"the dt study integrates to --T = {T:g} with each dt of {dts}, its own time steps "
             f"whatever --dt is")
    if T / smallest > MAX_STEPS * (1 + STEPS_RTOL):
        return (f"invalid config: --T: {study}: {T:g} / {smallest:g} is about "
                f"{T / smallest:.3g} Euler steps, more than the bound of {MAX_STEPS:,}; --T "
                f"must be at most {MAX_STEPS * smallest:g}")
    ratio = T / largest
    if not _whole(ratio) or round(ratio) < 1:
        named = " or ".join(f"{v:g}" for v in _accepted_near(T, dt, grid))
        both = f"whole multiples of both {largest:g} and --dt = {dt:.10g}"
        divides = _whole(largest / dt)
        choices = (named if named and divides else f"{named} (the nearest {both})" if named
                   else f"none near {T:g} is one of the {both}: choose another --dt")
        return (f"invalid config: --T: {study}, so --T must be a whole multiple of "
                f"{largest:g}, the largest of them (--T = {T:g} is {ratio:.4g} steps of "
                f"{largest:g}): {choices}")
    return f"{error} ({study})"  # another cause (a step the heat equation cannot take): as said


#: A reference PDE whose state grows past this many times its input's largest magnitude is
#: blowing up (the seeded ``scaling-random`` on the first 64 MNIST digits with dt = 0.1: 1.1
#: times at T = 1, 2.3 at T = 5, 19 at T = 8, inf before T = 10); below it the tables measure the
#: PDE, above it its blow-up.
GROWTH_LIMIT = 4.0


#: Why a reference PDE's state grows (:func:`check_reference_growth`), where not
#: :data:`_NONLINEAR_GROWTH`. The transport u_t = u_x moves values without growth; its
#: discretisation grows them: central differences at the frame's boundary make a non-normal
#: operator whose exact flow grows some states whatever dt (an outside probe, round 21: the
#: sup-norm of exp(t D) is 10 at t = 5, 20 at t = 10, on 28x28 with replicate padding), and
#: explicit Euler multiplies a frequency k by |1 + i dt sin k| = sqrt(1 + dt² sin² k) a step.
#: So a smaller dt slows it only in part (MNIST digits: 1.66 times at t = 10 with dt = 0.05,
#: 1.65 with 0.025).
_GROWTH_CAUSES = {
    "u_x (non-invariant)": (
        "that is the discretisation's own growth, not the transport's (u_t = u_x moves values "
        "without growing them; its central differences at the frame's boundary grow some states "
        "whatever dt, and explicit Euler multiplies a frequency by up to sqrt(1 + dt²) a step), "
        "so a smaller --dt slows it only in part"),
}
_NONLINEAR_GROWTH = ("that is the nonlinear PDE's own growth, not an unstable scheme, so a "
                     "smaller dt does not help")

#: The maps of :func:`~eqpdenet.analysis.references.reference_pdes`.
REFERENCE_MAPS = ("heat", "se2-random", "scaling-random", "u_x (non-invariant)")


def _reference_runs(T: float, dt: float, grid: dict) -> dict[tuple[str, str, float], tuple]:
    """Every reference integration of the study at 1x, by ``(stencil, map, dt)``: the longest
    horizon integrated with it and the option that sets that horizon, with the number of steps of
    it the horizon is (``("--T", 1)``; the steps study: ``("--dt", 20)``). (A state after ``k``
    steps is the same whatever the horizon, so the longest run covers the shorter ones.)"""
    runs: dict[tuple[str, str, float], tuple] = {}

    def need(stencil, name, step, horizon, why):
        key = (stencil, name, step)
        if key not in runs or horizon > runs[key][0]:
            runs[key] = (horizon, why)

    for stencil in grid["stencils"]:
        for name in REFERENCE_MAPS:
            need(stencil, name, dt, T, ("--T", 1))
    for value in grid["dts"]:
        for name in ("heat", "se2-random"):
            need("central", name, value, T, ("--T", 1))
    longest = max(grid["steps"])
    for name in ("heat", "se2-random"):
        need("central", name, dt, longest * dt, ("--dt", longest))
    return runs


def _first_blow_up(flow: EulerFlow, images: Tensor) -> tuple[int, float] | None:
    """``(step, largest magnitude)`` of the first Euler step of ``flow`` from ``images`` whose
    state is non-finite or larger than :data:`GROWTH_LIMIT` times the input's; None if none."""
    bound = GROWTH_LIMIT * float(images.abs().max())
    u = images
    with torch.no_grad():
        for step in range(1, flow.steps + 1):
            u = flow.step(u)
            peak = float(u.abs().max())
            if not math.isfinite(peak) or peak > bound:
                return step, peak
    return None


def check_reference_growth(T: float, dt: float, grid: dict, inputs: dict[str, Tensor]) -> None:
    """Integrate every reference PDE of the study (1x, each stencil and step the study uses, to
    the longest horizon it uses) on ``inputs`` before anything is written: a state that turns
    non-finite or grows past :data:`GROWTH_LIMIT` times the input's largest magnitude is a
    :class:`~eqpdenet.errors.ConfigError` naming the map, the inputs, the option that set the
    horizon and the longest horizon that stays bounded. The stability bound of
    :func:`check_steps` cannot see it: the seeded nonlinear PDEs (``scaling-random`` above all)
    grow by their own nonlinear terms, with any ``dt``. The transformed inputs are not
    integrated here: resampling smooths them, and on them the state grows less.

    Every run is integrated first, and one error names, for each option that sets a horizon
    (``--T``; ``--dt`` for the steps study), the run that stays bounded for the shortest time,
    and advises from that: the bound over every map and every input at once (the advice of the
    first run to blow up, in the order of the runs, was refused next for another map or input:
    ``--T 200`` was told 67.4, then 31.6, then 6.8). A state after ``k`` steps is the same
    whatever the horizon, so a value within the smallest bound keeps every run bounded."""
    worst: dict[str, tuple[float, str]] = {}  # option -> (bounded horizon, its refusal)
    for (stencil, name, step), (horizon, (option, times)) in _reference_runs(T, dt, grid).items():
        flow = reference_pdes(horizon, step, stencil)[name]
        for input_name, images in inputs.items():
            found = _first_blow_up(flow, images)
            if found is None:
                continue
            at, peak = found
            limit = (at - 1) * step / times
            if option in worst and worst[option][0] <= limit:
                continue  # as bounded as one already found, or longer: its advice is weaker
            size = float(images.abs().max())
            state = ("turns non-finite" if not math.isfinite(peak) else
                     f"reaches {peak:.3g}, {peak / size:.3g} times the inputs' largest value "
                     f"{size:.3g} (the bound is {GROWTH_LIMIT:g} times)")
            study = ("" if times == 1 else
                     f" (the steps study integrates {times} steps of {option})")
            if at > 1:
                accepted = _accepted_at_most(limit, option, T, dt, grid)
                what = (f"a whole multiple of --dt and of the dt study's steps {grid['dts']}"
                        if option == "--T" else f"--T = {T:g} is a whole multiple of it")
                bounded = (f"it stays within the bound to t = {(at - 1) * step:g}: "
                           + (f"use {option} <= {accepted:g} (the largest {option} up to "
                              f"{limit:g} that the study accepts: {what}; {limit:g} is the "
                              f"smallest such bound of every reference PDE on every input)"
                              if accepted is not None else
                              f"no {option} up to {limit:g} is one that the study accepts "
                              f"({what})"))
            else:
                bounded = "not even its first step stays within the bound"
            worst[option] = (limit, (
                f"{option} = {horizon / times:g}{study}: the reference PDE {name!r} ({stencil} "
                f"stencil, dt = {step:g}) blows up on the {input_name} inputs: its state {state} "
                f"after Euler step {at} (t = {at * step:g} of {horizon:g}); "
                f"{_GROWTH_CAUSES.get(name, _NONLINEAR_GROWTH)}; {bounded}"))
    if worst:
        raise ConfigError("; and ".join(message for _, message in worst.values()))


def _accepted_at_most(limit: float, option: str, T: float, dt: float, grid: dict,
                      tries: int = 100) -> float | None:
    """The largest value of ``option`` (``"--T"`` or ``"--dt"``, the other as given) up to
    ``limit`` that :func:`check_steps` accepts, as it is printed (``:g``, and exactly a whole
    multiple, or divisor, as printed: ``1/31`` prints as 0.0322581, which the rounding
    tolerance of the steps would take, but is not a step that divides 1); None where none of
    the ``tries`` candidates nearest below ``limit`` is. A ``--T`` is a whole multiple of the dt
    study's largest step (and of ``--dt``): the growth advice named 6.7, which the dt study's
    0.2 refuses; a ``--dt`` divides ``--T``."""
    if option == "--T":
        unit = max(grid["dts"])
        top = math.floor(limit / unit * (1 + STEPS_RTOL))
        candidates = [(n * unit, unit, n) for n in range(top, max(top - tries, 0), -1)]
    else:
        first = max(math.ceil(T / limit * (1 - STEPS_RTOL)), 1)
        candidates = [(T / n, None, n) for n in range(first, first + tries)]
    for candidate, unit, n in candidates:
        value = float(f"{candidate:g}")
        ratio = value / unit if unit is not None else T / value
        if value > limit * (1 + STEPS_RTOL) or abs(ratio - n) > 1e-9 * n:
            continue
        try:
            if option == "--T":
                check_steps(value, dt, grid, advise=False)
            else:
                check_steps(T, value, grid, advise=False)
        except ConfigError:
            continue
        return value
    return None


def _named(error: NonFiniteStateError, name: str, input_name: str, transform,
           option: str | None = "--T", checkpoint: str | None = None) -> Exception:
    """``error`` with the study's map, inputs and transform as its cause (its own hint speaks of
    training, which this command does not do). ``option``: the option that sets a reference
    map's horizon; None for a checkpoint's map (``checkpoint``: its file), whose ``T`` and
    ``dt`` are its own, so that no option of the command changes them."""
    where = f"{name!r} on the {input_name} inputs ({getattr(transform, 'label', transform)})"
    if option is None:
        owner = f"--checkpoint {checkpoint}: its map" if checkpoint else "The checkpoint's map"
        return error.with_hint(f"{owner} {where} blew up: that checkpoint does not integrate "
                               f"these inputs stably (its PDE's T and dt are its own, not --T "
                               f"and --dt).")
    return error.with_hint(f"The equivariance study's map {where} blew up: the PDE's own growth "
                           f"over its horizon; lower {option}.")


def _error_of(phi, name: str, input_name: str, images: Tensor, transform,
              option: str = "--T") -> float:
    """:func:`~eqpdenet.analysis.equivariance.equivariance_error` of one map of the study, its
    refusals naming the map, the inputs and the transform (``option``: what sets a reference
    map's horizon)."""
    try:
        return equivariance_error(phi, images, transform)
    except NonFiniteStateError as error:
        raise _named(error, name, input_name, transform,
                     None if isinstance(phi, LearnedMap) else option) from None
    except InputError as error:
        raise type(error)(f"the map {name!r} on the {input_name} inputs "
                          f"({getattr(transform, 'label', transform)}): {error}") from None


def _measure_transforms(study: Study, maps: dict[str, Callable], inputs: dict[str, Tensor],
                        transforms: list[Transform], stencil: str) -> None:
    """Study 1 for ``maps`` on ``inputs``: every map, every transform (records of "transforms"),
    each with its own Euler scheme (:func:`map_scheme`)."""
    for input_name, images in inputs.items():
        for transform in transforms:
            floor = interpolation_floor(images, transform)
            for name, phi in maps.items():
                if stencil != "central" and name in ("identity", "random conv3x3"):
                    continue
                own_dt, steps = map_scheme(phi)  # a checkpoint's own: not the study's dt
                study.add(study="transforms", inputs=input_name, map=name,
                          transform=transform.kind, param=_transform_param(transform),
                          error=_error_of(phi, name, input_name, images, transform), floor=floor,
                          stencil=stencil if isinstance(phi, EulerFlow) else "", dt=own_dt,
                          steps=steps)


@dataclass
class StudyPlan:
    """What :func:`run_study` measures, every input checked and loaded (:func:`prepare_study`)."""

    quick: bool
    T: float
    dt: float
    grid: dict
    #: The maps of checkpoints of MNIST's shape, measured with the reference maps.
    ck_maps: dict[str, Callable]
    #: Checkpoints of MNIST's shape, by tag.
    models: dict[str, nn.Module]
    #: Checkpoints of other shapes: (maps, tag, model, inputs of their own, the name of their
    #: test images among those inputs or None).
    own: list[tuple[dict[str, Callable], str, nn.Module, dict[str, Tensor], str | None]]
    #: The shared inputs: "smooth", and "mnist" where MNIST can be read.
    inputs: dict[str, Tensor]
    #: Each checkpoint's file (as given) by its tag (``table.md`` lists them).
    files: dict[str, str] = field(default_factory=dict)


def study_transforms(grid: dict) -> list[Transform]:
    """The transforms of studies 1 and 4: ``grid``'s rotations, scalings and shifts."""
    return ([Transform.rotation(a) for a in grid["angles"]]
            + [Transform.scale(s) for s in grid["scales"]]
            + [Transform.translation(t, 0.0) for t in grid["shifts"]])


#: Input names of the study's own: the shared inputs, and the smooth fields of a checkpoint's
#: shape (``smooth CxSxS``); a data set's test images are never named so.
_SHARED_NAMES = ("mnist", "smooth")


def _test_image_names(entries: list[tuple[str, str, Tensor]]) -> list[str]:
    """Names for the test images of checkpoints of other shapes, ``entries`` ``(file name,
    data set, images)`` in order: the data set's file name, unless test images that differ
    share it (two data sets named alike in two folders, ``d1/rgb.npz`` and ``d2/rgb.npz``: one
    table and one interpolation floor, the last one's, held both), or it is one of the study's
    own names (``mnist``, ``smooth …``: titled as MNIST or as the smooth fields). Then each of
    that name takes its folder too (``d1/rgb.npz``), then its whole path; test images that
    still differ under one name (one file read with other options, ``data.rotated``) are
    numbered (``rgb.npz #2``). Equal images keep one name (two checkpoints of one data set)."""
    names = [base for base, _, _ in entries]

    def same(i: int, j: int) -> bool:
        a, b = entries[i][2], entries[j][2]
        return a.shape == b.shape and bool(torch.equal(a, b))

    def reserved(name: str) -> bool:
        return name in _SHARED_NAMES or name.startswith("smooth")

    def clashing() -> set[str]:
        return {names[i] for i in range(len(names)) if reserved(names[i])
                or any(names[i] == names[j] and not same(i, j) for j in range(i))}

    def with_folder(path: Path) -> str:
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name

    for qualify in (with_folder, str):
        bad = clashing()
        names = [qualify(Path(entries[i][1])) if name in bad else name
                 for i, name in enumerate(names)]
    names = [f"{name} test images" if reserved(name) else name for name in names]
    firsts: dict[str, list[int]] = {}  # by name: the first entry of each distinct content
    numbered = []
    for i, name in enumerate(names):
        seen = firsts.setdefault(name, [])
        index = next((k for k, j in enumerate(seen) if same(i, j)), None)
        if index is None:
            seen.append(i)
            index = len(seen) - 1
        numbered.append(name if index == 0 else f"{name} #{index + 1}")
    return numbered


def _renamed(inputs: dict[str, Tensor], old: str, new: str) -> dict[str, Tensor]:
    """``inputs`` with ``old`` renamed ``new``, in the same order."""
    return {new if key == old else key: value for key, value in inputs.items()}


def _refusal(error: Exception, checkpoint: str, what: str) -> Exception:
    """``error`` (a :class:`~eqpdenet.errors.ConfigError` or an
    :class:`~eqpdenet.errors.InputError`) naming the checkpoint and what of it was refused."""
    return type(error)(f"--checkpoint {checkpoint}: {what}: {error}")


def _try_checkpoint(path, tag: str, maps: dict[str, Callable], model: nn.Module,
                    where: dict[str, Tensor], logit_inputs: str,
                    transforms: list[Transform], own_shape: bool) -> None:
    """Measure a checkpoint's maps and logits once, cheaply, so that what the study cannot take
    stops the command before its folder is made, naming the checkpoint (``path``), not in the
    middle of the study, and never as an empty cell (a NaN error, written blank, exit 0):

    * for a checkpoint of another shape with maps, the interpolation floor of its own inputs
      under each transform of the study (``transforms``): a transform that leaves no point of
      images of 2x2 pixels on real pixels was refused mid-study, unnamed, with advice (a
      smaller shift) that no option of the command follows; one without maps has no transform
      study (its logits are all that is measured of it);
    * each map's equivariance error on two images of its first inputs (the measurement's own
      refusals: an output of another grid, ...), then its output on every one of its inputs,
      which must be finite everywhere in the frame, not only where one transform reads it
      (this one check stands for all of the study's transforms; a learned PDE that blows up on
      them, saved with ``check_finite = false``: its NaN was measured as an error of NaN);
    * its logits on the images they are measured on (``where[logit_inputs]``): a model with no
      finite logits on any of them had its predictions and logit changes measured as NaN.
    """
    if own_shape and maps:
        for input_name, images in where.items():
            for transform in transforms:
                try:
                    interpolation_floor(images, transform)
                except ConfigError:
                    height, width = images.shape[-2:]
                    raise ConfigError(
                        f"--checkpoint {path}: its maps cannot be measured on its {input_name} "
                        f"inputs of {height}x{width} pixels: {transform.label} leaves no point "
                        f"of the measured disk on real pixels both ways (p, g p and g^-1 p all "
                        f"within the frame), and the study's transforms are fixed; images this "
                        f"small have no room for them") from None
                except InputError as error:
                    raise _refusal(error, path, f"its {input_name} inputs "
                                                f"({transform.label})") from None
    probe = Transform.rotation(30)
    first = next(iter(where))
    for name, phi in maps.items():
        for input_name, images in where.items():
            try:
                if input_name == first:
                    equivariance_error(phi, images[:2], probe)
                with torch.no_grad():
                    out = phi(images)
                # The whole frame: this one check stands in for every transform of the study,
                # each of which reads other points (equivariance_error refuses only those).
                _check_map_values(out, "the map's output on these images", reason=(
                    "the study refuses a checkpoint's map that is NaN or inf anywhere on its "
                    "inputs before it measures any transform (each reads other points; a "
                    "learned PDE whose state is non-finite is blowing up)"))
            except NonFiniteStateError as error:
                raise _named(error, name, input_name, probe if input_name == first else "as "
                             "they are", None, str(path)) from None
            except (ConfigError, InputError) as error:
                raise _refusal(error, path, f"its map {name!r} on the {input_name} "
                                            f"inputs") from None
    images = where[logit_inputs]
    try:
        _, failed = logits_by_image(model, images)
    except NonFiniteStateError as error:  # it blew up on every image
        failed, cause = None, f" (it blows up on every one: {error})"
    except InputError as error:
        raise _refusal(error, path, f"its logits on the {logit_inputs} inputs") from None
    else:
        cause = ""
    if failed is None or (len(failed) and bool(failed.all())):
        raise InputError(
            f"--checkpoint {path}: the model gives no finite logits on any of the {len(images)} "
            f"{logit_inputs} images it is measured on{cause}: its predictions and logit changes "
            f"would be NaN, not a measurement")


def prepare_study(*, quick: bool = False, checkpoints: Sequence = (), data_dir=None,
                  T: float = 1.0, dt: float = 0.1,
                  echo: Callable[[str], None] = print) -> StudyPlan:
    """Check every input of the study and load it, before anything is measured or written:
    every horizon and step the study integrates with (:func:`check_steps`: a ``T`` and ``dt``
    that do not make whole, stable Euler steps are a :class:`~eqpdenet.errors.ConfigError`),
    every checkpoint (a missing or unreadable one is the error of
    :func:`~eqpdenet.app.training.load_checkpoint`), then the test images: MNIST's and those
    of the checkpoints of other shapes; images that cannot be read here are not an error (the
    smooth inputs stand in for them, with a message). Then the reference PDEs are integrated on
    the inputs (:func:`check_reference_growth`: a horizon at which one blows up is a
    :class:`~eqpdenet.errors.ConfigError`) and each checkpoint tried once
    (:func:`_try_checkpoint`: its maps on two images and their outputs on all of its inputs,
    finite; the interpolation floors of its own inputs where it has maps and another shape; its
    logits, finite on at least one image), so that the study itself has nothing left to refuse;
    a refusal names the checkpoint's file. A checkpoint given more than once (the same file, by
    its resolved path) is measured once, where first given, with a message (it was measured
    twice, under two names that suggested two models). The test images of checkpoints of other
    shapes are named after their data set's file, with its folder where test images that differ
    share a file name (:func:`_test_image_names`)."""
    grid = default_grid(quick)
    check_steps(T, dt, grid)
    loaded = []
    given: dict[Path, object] = {}
    for path in checkpoints:
        resolved = Path(path).resolve()
        if resolved in given:
            echo(f"--checkpoint {path}: given already (as {given[resolved]}); measured once")
            continue
        given[resolved] = path
    for path in given.values():  # all of them before any data set is read
        maps, model, tag, config = checkpoint_maps(path, [entry[2] for entry in loaded])
        loaded.append((path, maps, tag, model, config))
    ck_maps: dict[str, Callable] = {}
    models: dict[str, nn.Module] = {}
    own = []
    datasets = []
    for path, maps, tag, model, config in loaded:
        if input_shape(model) == MNIST_SHAPE:
            ck_maps.update(maps)
            models[tag] = model
        else:
            own.append((maps, tag, model, *checkpoint_inputs(model, config, grid["count"],
                                                              data_dir, echo, label=str(path))))
            datasets.append(config.data.dataset)
    # Test images of different data sets under different names: one name is one table and one
    # interpolation floor.
    read = [i for i, entry in enumerate(own) if entry[4] is not None]
    names = _test_image_names([(own[i][4], datasets[i], own[i][3][own[i][4]]) for i in read])
    for i, name in zip(read, names, strict=True):
        maps, tag, model, own_inputs, old = own[i]
        own[i] = (maps, tag, model, _renamed(own_inputs, old, name), name)
    inputs = {"smooth": smooth_inputs(grid["count"] // 4 or 4)}
    try:
        inputs["mnist"] = mnist_inputs(grid["count"], data_dir)
    except Exception as error:  # noqa: BLE001 - measurement still useful on smooth inputs
        echo(f"MNIST unavailable ({error}); measuring on smooth inputs only"
             + (" (the logits of the checkpoints of MNIST's shape too)" if models else ""))
    check_reference_growth(T, dt, grid, inputs)
    # Each checkpoint measured once, cheaply, so that a map or a model the measurement cannot
    # take stops the command here, before its folder is made, not in the middle of the study.
    transforms = study_transforms(grid)
    own_by_tag = {entry[1]: entry for entry in own}
    shared = "mnist" if "mnist" in inputs else "smooth"
    for path, maps, tag, model, _ in loaded:
        if tag in own_by_tag:
            _, _, _, own_inputs, name = own_by_tag[tag]
            _try_checkpoint(path, tag, maps, model, own_inputs,
                            name if name is not None else next(iter(own_inputs)), transforms,
                            own_shape=True)
        else:
            _try_checkpoint(path, tag, maps, model, inputs, shared, transforms, own_shape=False)
    return StudyPlan(quick=quick, T=T, dt=dt, grid=grid, ck_maps=ck_maps, models=models,
                     own=own, inputs=inputs,
                     files={tag: str(path) for path, _, tag, _, _ in loaded})


def measure_equivariance(*, quick: bool = False, checkpoints: Sequence = (), data_dir=None,
              T: float = 1.0, dt: float = 0.1, echo: Callable[[str], None] = print) -> Study:
    """All measurements of ``eqpdenet equivariance`` (see the module doc and the docs):
    :func:`run_study` of :func:`prepare_study`, so bad input stops it before any measurement."""
    return run_study(prepare_study(quick=quick, checkpoints=checkpoints, data_dir=data_dir, T=T,
                                   dt=dt, echo=echo), echo=echo)


def run_study(plan: StudyPlan, echo: Callable[[str], None] = print) -> Study:
    """The measurements of ``plan`` (:func:`prepare_study`).

    Every checkpoint's logits are measured (study "model"): on its test images (MNIST's, or its
    own data set's for another shape), or, where those could not be read, on the smooth inputs
    of its shape, which it takes as well; so no checkpoint is left out of the tables. A
    checkpoint of another shape without maps (FCNN, CNN, ...) has no transform study: its
    inputs' interpolation floors were computed for no map (and refused images of 2x2 pixels).
    A measurement that would be NaN is an error naming the map or the checkpoint, never an
    empty cell (:func:`prepare_study` tried each checkpoint on its inputs first)."""
    start = time.perf_counter()
    grid, T, dt, quick, inputs = plan.grid, plan.T, plan.dt, plan.quick, plan.inputs
    study = Study()
    study.files = dict(plan.files)
    transforms = study_transforms(grid)

    # 1. Every map, every transform, both inputs, at 1x.
    for stencil in grid["stencils"]:
        maps = _maps(T, dt, stencil, plan.ck_maps if stencil == "central" else {})
        _measure_transforms(study, maps, inputs, transforms, stencil)
        echo(f"transforms ({stencil}): {time.perf_counter() - start:.0f} s")
    for maps, _, _, own_inputs, _ in plan.own:
        if maps:  # a model without maps (FCNN, CNN, ...): its logits alone, in study 4
            _measure_transforms(study, maps, own_inputs, transforms, "central")

    # 2. Resolution: the same continuous PDE on images upsampled k times (h = 1/k, dt / k^2).
    # MNIST's rows only where MNIST was read: its rows held the smooth inputs upsampled,
    # labelled "mnist", when it was not.
    angle = Transform.rotation(45 if quick else 30)
    for stencil in grid["stencils"]:
        for factor in grid["factors"]:
            images = {"mnist": upsample(inputs["mnist"], factor)} if "mnist" in inputs else {}
            images["smooth"] = smooth_inputs(len(inputs["smooth"]), 28 * factor)
            fine_dt = dt / factor**2
            pdes = reference_pdes(T, fine_dt, stencil, spacing=1.0 / factor)
            for input_name, x in images.items():
                floor = interpolation_floor(x, angle)
                for name in ("heat", "se2-random"):
                    study.add(study="resolution", inputs=input_name, map=name,
                              transform="rotation", param=float(angle.value),
                              error=_error_of(pdes[name], name, f"{input_name} {factor}x", x,
                                              angle), floor=floor,
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
                          param=float(angle.value),
                          error=_error_of(pdes[name], name, input_name, x, angle),
                          floor=floor, stencil="central", dt=value, steps=pdes[name].steps)
        for steps in grid["steps"]:
            pdes = reference_pdes(steps * dt, dt, "central")
            for name in ("heat", "se2-random"):
                study.add(study="steps", inputs=input_name, map=name, transform="rotation",
                          param=float(angle.value),
                          error=_error_of(pdes[name], name, input_name, x, angle, "--dt"),
                          floor=floor, stencil="central", dt=dt, steps=steps)
    echo(f"dt and steps: {time.perf_counter() - start:.0f} s")

    # 4. Whole models: predictions and logits.
    shared = "mnist" if "mnist" in inputs else "smooth"
    measured = [(tag, model, shared, inputs[shared]) for tag, model in plan.models.items()]
    for _, tag, model, own_inputs, name in plan.own:
        name = name if name is not None else next(iter(own_inputs))  # the smooth fields
        measured.append((tag, model, name, own_inputs[name]))
    for tag, model, input_name, images in measured:
        for transform in transforms:
            result = model_invariance(model, images, transform)
            if math.isnan(result["logit_change"]):  # it was written as an empty cell
                who = f"--checkpoint {plan.files[tag]}" if tag in plan.files else repr(tag)
                raise InputError(
                    f"{who}: the model gives no finite logits "
                    f"on any of the {len(images)} {input_name} images before and after "
                    f"{transform.label} (it blows up on them): its predictions and logit "
                    f"change would be NaN, not a measurement")
            study.add(study="model", inputs=input_name, map=tag, transform=transform.kind,
                      param=_transform_param(transform), error=result["logit_change"],
                      floor=float("nan"), extra={"unchanged": result["unchanged"]})
    study.seconds = time.perf_counter() - start
    return study


def invariant_orders_text() -> str:
    """``invariant_orders.md``: :func:`~eqpdenet.analysis.invariant_orders.invariant_orders` of
    every registered order-2 set with every stencil, as a Markdown table. It depends on no
    option of the command."""
    start = time.perf_counter()
    rows = invariant_orders()
    return ("# Convergence orders of the invariants, per stencil\n\n"
            "Generated by `eqpdenet equivariance --invariant-orders-only` (also written by the "
            "full `eqpdenet equivariance`); protocol in `eqpdenet.analysis.invariant_orders`: "
            "analytic function exp(-(x² + 2y²)) + 0.3 sin(1.7x + 0.4y), 24 points, "
            "covariant ratio regularisation with eps = 0.1, float64; "
            f"{time.perf_counter() - start:.0f} s.\n\n" + orders_table(rows) + "\n")


def write_invariant_orders(out_dir) -> Path:
    """Write :func:`invariant_orders_text` to ``out_dir/invariant_orders.md`` (atomically); the
    other outputs are left as they are (they do not depend on it, nor it on them)."""
    path = Path(out_dir) / "invariant_orders.md"
    atomic_write(path, invariant_orders_text().encode())
    return path


def _fmt(value: float | None) -> str:
    """A table cell: empty for None (no such measurement), ``nan`` for a NaN (a measurement
    that is not a number must not read as a missing one)."""
    if value is None:
        return ""
    if value != value:  # NaN
        return "nan"
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
        lines.append(f"| {row} | " + " | ".join(_fmt(cell.get((row, c))) for c in cols) + " |")
    return lines


def equivariance_table(study: Study) -> str:
    """The Markdown summary: one pivot table per study and transform."""
    out = ["# Equivariance measurements", "",
           "Relative error ||M (Φ(g f) − g Φ(f))|| / ||M Φ(f)|| on the central disk "
           f"(radius {DISK_FRACTION} × side). 'interpolation floor' is the round trip "
           "||M (g⁻¹ g f − f)|| / ||M f||. Generated by `eqpdenet equivariance`; "
           f"{study.seconds:.0f} s.", ""]
    if study.files:  # two checkpoints of one kind: the bare tag is the first, which file?
        out += ["## Checkpoints", "", "| tag | file |", "|---|---|"]
        out += [f"| {tag} | `{path}` |" for tag, path in study.files.items()]
        out.append("")
    units = {"rotation": "degrees", "scale": "λ", "translation": "t_x (pixels)"}
    for inputs in dict.fromkeys(r.inputs for r in study.select(study="transforms")):
        for kind in ("rotation", "scale", "translation"):
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
                       + " | ".join(_fmt(floors.get((inputs, c))) for c in cols)
                       + " |")
        out.append("")
    for inputs in dict.fromkeys(r.inputs for r in study.select(study="model")):
        records = study.select(study="model", inputs=inputs)
        if inputs == "mnist":
            where = "MNIST test digits"
        elif inputs == "smooth" or inputs.startswith("smooth "):
            where = f"{inputs} inputs (their test images could not be read)"
        else:
            where = f"test images of {inputs}"
        out += [f"## Whole models on {where}", "",
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
                         r.factor, "" if math.isnan(r.dt) else f"{r.dt:g}",
                         "" if r.steps is None else r.steps, f"{r.error:.6e}", f"{r.floor:.6e}",
                         r.extra.get("unchanged", "")])
    return buffer.getvalue()


def _png(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes, then closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def plot_transforms(study: Study) -> bytes:
    plt = import_pyplot("plot_transforms")

    inputs = list(dict.fromkeys(r.inputs for r in study.select(study="transforms")))
    kinds = ("rotation", "scale", "translation")
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
            ax.set_xlabel({"rotation": "angle (degrees)", "scale": "λ",
                           "translation": "t_x (pixels)"}[kind])
            ax.set_ylabel("relative equivariance error (disk)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=6, loc="lower right")
    fig.suptitle("‖M(Φ(g f) − g Φ(f))‖ / ‖M Φ(f)‖, central stencil; identity map: exactly 0 "
                 "(not drawn)")
    fig.tight_layout()
    return _png(fig)


def plot_convergence(study: Study) -> bytes:
    plt = import_pyplot("plot_convergence")

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
    return _png(fig)


def plot_models(study: Study) -> bytes | None:
    """The whole models against rotation; None without any."""
    records = study.select(study="model", transform="rotation")
    if not records:
        return None
    plt = import_pyplot("plot_models")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for tag, inputs in dict.fromkeys((r.map, r.inputs) for r in records):
        rs = [r for r in records if (r.map, r.inputs) == (tag, inputs)]
        label = tag if inputs == "mnist" else f"{tag}, {inputs}"
        axes[0].plot([r.param for r in rs], [r.extra["unchanged"] for r in rs], "o-", label=label)
        axes[1].plot([r.param for r in rs], [r.error for r in rs], "o-", label=label)
    axes[0].set_ylabel("fraction of predictions unchanged")
    axes[1].set_ylabel("relative logit change")
    for ax in axes:
        ax.set_xlabel("rotation (degrees)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


#: Every file ``eqpdenet equivariance`` writes into its folder (``models.png``: with checkpoints).
OUTPUT_FILES = ("table.md", "table.csv", "transforms.png", "convergence.png", "models.png",
                "invariant_orders.md")


def write_outputs(study: Study, out_dir) -> list[Path]:
    """Write the outputs of ``study`` into ``out_dir`` (a folder the command owns) as one set:
    ``table.md``, ``table.csv``, ``transforms.png``, ``convergence.png``, ``models.png`` (only
    when the study measured models) and ``invariant_orders.md``; returns their paths.

    The folder never holds outputs of two runs: every file is rendered first, then they are
    written as one set (:func:`~eqpdenet.app.files.write_set`), and any output of
    :data:`OUTPUT_FILES` that this run does not write (a ``models.png`` of an earlier run with
    checkpoints) is removed with the set's older files; a failure or a kill before the commit
    (while rendering or writing, the seconds of the write) leaves the previous set whole, and
    its temporaries are removed (by this process, else by the folder's next writer lock).
    Other files of the folder are left alone. A folder the command holds that was moved or
    deleted meanwhile is not made anew (:class:`~eqpdenet.app.files.FolderMovedError`).
    Without matplotlib, nothing is written (a :class:`~eqpdenet.errors.MissingDependencyError`
    first)."""
    import_pyplot("the equivariance study's plots")
    out = Path(out_dir)
    contents = {"table.md": (equivariance_table(study) + "\n").encode(),
                "table.csv": csv_table(study).encode(),
                "transforms.png": plot_transforms(study),
                "convergence.png": plot_convergence(study)}
    models = plot_models(study)
    if models is not None:
        contents["models.png"] = models
    contents["invariant_orders.md"] = invariant_orders_text().encode()
    return write_set(out, contents, [name for name in OUTPUT_FILES if name not in contents])
