"""Typed configuration, in one place: dataclasses whose defaults are the paper's setup.

Every configuration converts to a plain dict (:func:`to_dict`), to TOML text (:func:`to_toml`) and
back (:func:`from_dict`, :func:`load_toml`), is validated on construction (an invalid value raises
:class:`ConfigError` naming the field), and is saved beside every result.

Where the paper leaves a choice open (T, dt, stencil, boundary, ratio regularisation,
initialisation, optimiser ...), the default is the one documented in ``docs/choices.md``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ConfigError",
    "LayerConfig",
    "ModelConfig",
    "from_dict",
    "load_toml",
    "to_dict",
    "to_toml",
]


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"invalid config: {field_name}: {message}")


@dataclass
class LayerConfig:
    """The PDE layer (defaults: the paper's 2 ``se2`` + 2 ``scaling`` linear PDEs).

    Attributes:
        invariants: one invariant-set name per PDE (``n_e = len(invariants)``).
        rhs: ``"linear"`` or ``"polynomial"`` F_theta; ``degree`` for the polynomial.
        T, dt: time horizon and Euler step; ``steps = floor(T / dt)``.
        stencil, spacing, boundary: how derivatives are computed.
        ratio_eps: regularisation scale of the ratios of eq. (5).
        reduction: ``"linear"`` (the paper's), ``"mean"``, ``"max"``, ``"concat"``.
        init, init_scale: initial F_theta (``"zeros"``, ``"heat"``, ``"normal"``).
        check_finite: raise on a non-finite PDE state.
    """

    invariants: list[str] = field(default_factory=lambda: ["se2", "se2", "scaling", "scaling"])
    rhs: str = "linear"
    degree: int = 1
    T: float = 1.0
    dt: float = 0.1
    stencil: str = "central"
    spacing: float = 1.0
    boundary: str = "replicate"
    ratio_eps: float = 0.1
    reduction: str = "linear"
    init: str = "zeros"
    init_scale: float = 0.0
    check_finite: bool = True

    def __post_init__(self):
        _require(len(self.invariants) >= 1, "layer.invariants", "needs at least one PDE")
        _require(self.rhs in ("linear", "polynomial"), "layer.rhs",
                 f"{self.rhs!r} is not 'linear' or 'polynomial'")
        _require(isinstance(self.degree, int) and self.degree >= 1, "layer.degree", "must be >= 1")
        _require(self.dt > 0 and math.isfinite(self.dt), "layer.dt", "must be positive")
        _require(self.T >= 0 and math.isfinite(self.T), "layer.T", "must be >= 0")
        _require(self.spacing > 0, "layer.spacing", "must be positive")
        _require(self.ratio_eps > 0, "layer.ratio_eps", "must be positive")
        _require(self.boundary in ("replicate", "zeros", "reflect", "circular"),
                 "layer.boundary", f"{self.boundary!r} is not a boundary mode")
        _require(self.reduction in ("linear", "mean", "max", "concat"), "layer.reduction",
                 f"{self.reduction!r} is not a reduction")
        _require(self.init in ("zeros", "heat", "normal"), "layer.init",
                 f"{self.init!r} is not 'zeros', 'heat' or 'normal'")

    @property
    def steps(self) -> int:
        return int(math.floor(self.T / self.dt + 1e-9))


@dataclass
class ModelConfig:
    """A model: ``eqpdenet`` (PDE layer + perceptron) or ``fcnn`` (perceptron alone).

    Attributes:
        kind: ``"eqpdenet"`` or ``"fcnn"``.
        hidden: width ``h`` of the two hidden layers (784-h-h-10).
        image_size: input height and width.
        classes: number of outputs.
        input_mean, input_std: fixed (non-learned) standardisation ``(x - mean) / std`` applied
            to the input of both models; ``0, 1`` leaves pixels in ``[0, 1]``.
        layer: the PDE layer (ignored for ``fcnn``).
    """

    kind: str = "eqpdenet"
    hidden: int = 256
    image_size: int = 28
    classes: int = 10
    input_mean: float = 0.0
    input_std: float = 1.0
    layer: LayerConfig = field(default_factory=LayerConfig)

    def __post_init__(self):
        if isinstance(self.layer, dict):
            self.layer = from_dict(LayerConfig, self.layer)
        _require(self.kind in ("eqpdenet", "fcnn"), "model.kind",
                 f"{self.kind!r} is not 'eqpdenet' or 'fcnn'")
        _require(isinstance(self.hidden, int) and self.hidden >= 1, "model.hidden", "must be >= 1")
        _require(self.input_std > 0, "model.input_std", "must be positive")


# ----------------------------------------------------------------------------- conversions


def to_dict(config) -> dict:
    """A dataclass as nested plain dicts and lists."""
    return dataclasses.asdict(config)


def from_dict(cls, data: dict):
    """Build dataclass ``cls`` from a (possibly partial) dict; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config: {cls.__name__} expects a table, got {data!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"invalid config: unknown field(s) {unknown} for {cls.__name__}; "
                          f"known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif typing.get_origin(hint) is list and isinstance(value, tuple):
            value = list(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"invalid config for {cls.__name__}: {error}") from None


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write non-finite float {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        raise ConfigError("TOML has no null: leave the field out instead")
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")


def to_toml(config, _prefix: str = "") -> str:
    """A dataclass (or dict) as TOML text; nested dataclasses become tables."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else config
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{key} = {_toml_value(value)}" for key, value in scalars.items()]
    for key, value in tables.items():
        name = f"{_prefix}{key}"
        lines += ["", f"[{name}]", to_toml(value, name + ".").rstrip("\n")]
    return "\n".join(lines).lstrip("\n") + "\n"


def load_toml(cls, path: str | Path):
    """Read ``cls`` from a TOML file; missing fields take their defaults."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    return from_dict(cls, data)
