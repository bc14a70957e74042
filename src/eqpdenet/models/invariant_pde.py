"""InvariantPDENet: a deep network of invariant PDEs, robust to rotations and translations by
construction.

The image ``f`` is lifted to ``C_0`` channels by a pointwise map of its own differential
invariants; then each *stage* ``s`` integrates a system of PDEs

    du/dt = F_theta_b(I(u)),        u = (u^1, ..., u^{C_s})

by ``blocks[s]`` explicit Euler steps ``u <- u + dt F_theta_b(I(u))`` (each step a block with its
own ``F``: :class:`~eqpdenet.pde.rhs.InvariantSystemRHS`, a pointwise network of the
differential invariants of all channels); between stages a pointwise channel map and, optionally,
a 2x2 average pooling (a coarser scale). The readout pools every channel globally over space
(max or mean) and a linear classifier gives the logits.

Why it is invariant: the jet commutes with rotations by multiples of 90 degrees exactly (and
with other rotations up to its discretisation error), the invariants are rotation and
translation invariant functions of the jet, everything else is pointwise (1x1 convolutions,
batch norm, ReLU) or commutes with quarter turns (pooling of even-sized maps, global pooling).
So ``rot90`` of the input leaves the logits unchanged up to rounding. Translations by whole
pixels change them through the image border, and, where stages downsample (``pool`` or
``blur``), also through the 2x2 grid: a stride-2 map commutes only with shifts by multiples of
``2**k`` pixels (``k`` halvings), so a one-pixel shift changes the logits even with a
``circular`` boundary (``downsample = "none"`` keeps every whole-pixel shift exact there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..checks import (
    exporting,
    hooks_registered,
    non_finite_hint,
    report_non_finite,
    require,
    require_int,
    require_lists,
    require_nonnegative,
    require_per_layer,
    require_positive,
    vmapped,
)
from ..errors import NonFiniteStateError
from ..geometry import halvings_stay_even
from ..pde.integrators import EulerStep, input_checked, input_range_hint
from ..pde.invariants import DEFAULT_RATIO_EPS
from ..pde.joint import DEFAULT_JET_FLOOR, JOINT_GROUPS, require_joint_size
from ..pde.rhs import InvariantSystemRHS, invariant_maps
from ..pde.stencils import BOUNDARIES, STENCILS, Jet, check_sigma, stencil_has_scale
from .inputs import (
    ModelInput,
    check_model_input,
    family_options,
    require_bools,
    require_image_size,
)
from .perceptron import Standardize
from .pooling import (
    AntiAliasedDownsample,
    downsampled_size,
    require_lowpass_fits,
    require_lowpass_sigma,
)

__all__ = ["InvariantPDEConfig", "InvariantPDENet"]


#: The most Euler-step blocks (each a module with its own F) an InvariantPDENet may have.
MAX_BLOCKS = 1000

#: The widest hidden layer of an ``F`` (``hidden`` times a stage's channels).
MAX_HIDDEN_WIDTH = 65536


@dataclass
class InvariantPDEConfig:
    """Options of :class:`InvariantPDENet` (defaults: the benchmark's ~24k-parameter model).

    Attributes:
        channels: channels ``C_s`` of each stage.
        blocks: Euler steps (blocks, each with its own ``F``) of each stage.
        hidden: width of each ``F``'s hidden layer, as a multiple of the stage's channels.
        group: the invariants' group, ``"se2"`` or ``"sim2"`` (scale invariant too).
        joint, mixtures: which invariants each ``F`` sees: ``"channel"`` (each channel's
            own), ``"mixtures"`` (plus the joint invariants of ``mixtures`` learned combinations
            of the channels) or ``"all"`` (:class:`~eqpdenet.pde.rhs.InvariantSystemRHS`).
        dt: Euler step.
        stencil, sigma, boundary: the jet's derivatives (``sigma`` in pixels, for the
            ``gaussian`` stencil) and boundary.
        ratio_eps: regularisation of ratio invariants (``sim2``).
        jet_floor: second-derivative size (``u`` per pixel², >= 0) below which the ``sim2``
            invariants treat a region as flat (:mod:`eqpdenet.pde.joint`; 0: exactly scale
            invariant, and discontinuous in flat regions).
        downsample: between stages: ``"pool"`` (2x2 average pooling), ``"blur"`` (a Gaussian
            low-pass of std ``downsample_sigma`` pixels first: anti-aliased,
            :class:`~eqpdenet.models.pooling.AntiAliasedDownsample`) or ``"none"``.
        downsample_sigma: the low-pass's standard deviation, in pixels, for ``"blur"``. The
            model refuses, when built, one that reaches as far as the maps it would filter
            (:func:`~eqpdenet.models.pooling.require_lowpass_fits`, as ``lifted_pde`` does).
        readout: global pooling over space: ``"max"``, ``"mean"`` or ``"meanmax"`` (both,
            concatenated).
        normalize_invariants: batch-normalise each invariant map before ``F`` mixes them.
    """

    channels: list[int] = field(default_factory=lambda: [12, 24, 32])
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2])
    hidden: float = 1.0
    group: str = "se2"
    joint: str = "channel"
    mixtures: int = 4
    dt: float = 1.0
    stencil: str = "isotropic"
    sigma: float = 1.0
    boundary: str = "zeros"
    ratio_eps: float = DEFAULT_RATIO_EPS
    jet_floor: float = DEFAULT_JET_FLOOR
    downsample: str = "pool"
    downsample_sigma: float = 1.0
    readout: str = "max"
    normalize_invariants: bool = True

    def __post_init__(self):
        require_lists(self, "invariant_pde.")
        require_per_layer(self, "invariant_pde.", "channels", "blocks", "stage")
        for index, (c, b) in enumerate(zip(self.channels, self.blocks, strict=True)):
            require_int(c, f"invariant_pde.channels[{index}]", 1)
            require_int(b, f"invariant_pde.blocks[{index}]", 0)
        require(sum(self.blocks) <= MAX_BLOCKS and len(self.channels) <= MAX_BLOCKS,
                "invariant_pde.blocks", f"{sum(self.blocks):,} blocks in {len(self.channels)} "
                f"stages, more than the bound of {MAX_BLOCKS:,} (the benchmark's model has 6)")
        hidden = require_positive(self.hidden, "invariant_pde.hidden")
        # 1e300 reached InvariantSystemRHS as a 301-digit width, named "hidden" without its table
        widest = max(self.channels)
        require(hidden * widest <= MAX_HIDDEN_WIDTH, "invariant_pde.hidden",
                f"{hidden:.3g} times {widest} channels is a hidden layer of "
                f"{hidden * widest:.3g} channels, more than the bound of {MAX_HIDDEN_WIDTH:,}")
        JOINT_GROUPS.check(self.group, "invariant_pde.group")
        require(self.joint in ("channel", "mixtures", "all"), "invariant_pde.joint",
                "must be 'channel', 'mixtures' or 'all'")
        require_int(self.mixtures, "invariant_pde.mixtures", 1)
        # Before any module is built: joint='all' on 400 channels set up 32 million maps for
        # 90 s, then ran out of memory in a way that blamed the batch size.
        for index, channels in enumerate(self.channels):
            require_joint_size(channels, self.group, self.joint, self.mixtures,
                               (f"invariant_pde.channels[{index}]", "invariant_pde.mixtures"))
        require_positive(self.sigma, "invariant_pde.sigma")
        require_positive(self.dt, "invariant_pde.dt")
        require_bools(self, "invariant_pde.")  # "false" read by a truth test was true
        STENCILS.check(self.stencil, "invariant_pde.stencil")
        if stencil_has_scale(self.stencil):  # its bounds (1e300 failed in NumPy), in pixels
            check_sigma(self.stencil, self.sigma, 1.0, "invariant_pde.sigma")
        BOUNDARIES.check(self.boundary, "invariant_pde.boundary")
        require_positive(self.ratio_eps, "invariant_pde.ratio_eps")
        require_nonnegative(self.jet_floor, "invariant_pde.jet_floor")
        require(self.downsample in ("pool", "blur", "none"), "invariant_pde.downsample",
                "must be 'pool', 'blur' or 'none'")
        require_lowpass_sigma(self.downsample_sigma, "invariant_pde.downsample_sigma")
        require(self.readout in ("max", "mean", "meanmax"), "invariant_pde.readout",
                "must be 'max', 'mean' or 'meanmax'")


def _sigma(config: InvariantPDEConfig) -> float | None:
    return config.sigma if stencil_has_scale(config.stencil) else None


#: How each ``downsample`` option changes a map's side between stages: the rounding of the
#: module the forward uses (``nn.AvgPool2d(2)`` rounds down, ``AntiAliasedDownsample`` up). The
#: sizes of the stages and the smallest image are computed from these, never separately.
HALVINGS = {"pool": lambda size: size // 2, "blur": downsampled_size, "none": lambda size: size}


def stage_sizes(image_size: int, config: InvariantPDEConfig) -> list[int]:
    """The side of the maps in each stage for images of side ``image_size``."""
    halve, sizes = HALVINGS[config.downsample], [image_size]
    for _ in config.channels[1:]:
        sizes.append(halve(sizes[-1]))
    return sizes


def _smallest_before(halve, target: int) -> int:
    """The smallest side ``s >= target`` with ``halve(s) >= target``: a bisection on
    ``[target, 2 target]`` (every halving is monotone, at most the identity and
    ``halve(2 target) >= target``), so a thousand stages cost a few thousand calls."""
    low, high = target, 2 * target
    while low < high:
        middle = (low + high) // 2
        if halve(middle) >= target:
            high = middle
        else:
            low = middle + 1
    return low


def smallest_image(config: InvariantPDEConfig, stencil_size: int) -> int:
    """The smallest image side whose every stage (:func:`stage_sizes`) is at least
    ``stencil_size``, the jet's minimum with its boundary."""
    halve, size = HALVINGS[config.downsample], stencil_size
    for _ in config.channels[1:]:
        size = _smallest_before(halve, size)
    return size


class _Lift(nn.Module):
    """``f (B, C_in, H, W) -> (B, C_0, H, W)``: a pointwise map of the input's invariants."""

    def __init__(self, in_channels: int, channels: int, config: InvariantPDEConfig):
        super().__init__()
        self.invariants_of = invariant_maps(in_channels, config.group, "channel",
                                            ratio_eps=config.ratio_eps, jet_floor=config.jet_floor)
        self.jet = Jet(2, config.stencil, 1.0, config.boundary, sigma=_sigma(config))
        maps = self.invariants_of.out_channels
        self.map = nn.Sequential(
            *([nn.BatchNorm2d(maps)] if config.normalize_invariants else []),
            nn.Conv2d(maps, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, f: Tensor) -> Tensor:
        return self.map(self.invariants_of(self.jet(f)))


class InvariantPDENet(nn.Module):
    """A deep invariant-PDE network (see the module doc).

    ``forward``: images ``(B, in_channels, image_size, image_size)`` -> logits ``(B, classes)``,
    the images checked first (:func:`~eqpdenet.models.inputs.check_model_input`) and every
    block's state after it (a :class:`~eqpdenet.errors.NonFiniteStateError` names the first
    block whose state was not finite, never NaN logits). :meth:`features` gives the pooled,
    invariant features ``(B, F)`` before the classifier.

    Example:
        >>> net = InvariantPDENet(InvariantPDEConfig(channels=[4, 8], blocks=[1, 1]))
        >>> net(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, invariant_pde: InvariantPDEConfig | None = None, image_size: int = 28,
                 in_channels: int = 1, classes: int = 10, input_mean: float = 0.0,
                 input_std: float = 1.0):
        super().__init__()
        self.config = config = family_options(invariant_pde, InvariantPDEConfig, "invariant_pde")
        halvings = len(config.channels) - 1 if config.downsample != "none" else 0
        stencil = Jet(2, config.stencil, 1.0, config.boundary, sigma=_sigma(config))
        #: Every stage's jet needs ``stencil.min_image_size`` pixels a side, after the
        #: downsamplings before it (:data:`HALVINGS`). With ``downsample = "blur"`` the
        #: low-pass may need larger maps still: refused next, naming
        #: ``invariant_pde.downsample_sigma``, as :class:`~eqpdenet.models.lifted_pde.LiftedPDENet`
        #: refuses it after its own smallest image.
        self.min_image_size = smallest_image(config, stencil.min_image_size)
        how = {"pool": "2x2 average poolings (rounding down)",
               "blur": "anti-aliased halvings (rounding up)"}.get(config.downsample)
        self.image_size = require_image_size(
            image_size, self.min_image_size,
            (f"{halvings} {how} between its stages, then " if halvings else "")
            + f"the {config.stencil!r} stencil with the {config.boundary!r} boundary in every "
              f"stage")
        if config.downsample == "blur":
            # The rule LiftedPDENet applies (LiftedPDEConfig.check_downsampling): a low-pass
            # reaching as far as its map only averages it out, and AntiAliasedDownsample pads
            # that map by replicate whatever the configured boundary (reflect and circular are
            # not defined there), which the model would otherwise do without a word.
            require_lowpass_fits(config.downsample_sigma, stage_sizes(self.image_size, config),
                                 "invariant_pde.downsample_sigma", self.image_size)
        self.in_channels = require_int(in_channels, "in_channels", 1)
        self.standardize = Standardize(input_mean, input_std)
        self.lift = _Lift(in_channels, config.channels[0], config)
        stages = []
        for index, (channels, blocks) in enumerate(zip(config.channels, config.blocks,
                                                       strict=True)):
            modules: list[nn.Module] = []
            if index:
                modules.append(nn.Conv2d(config.channels[index - 1], channels, 1, bias=False))
                if config.downsample == "pool":
                    modules.append(nn.AvgPool2d(2))
                elif config.downsample == "blur":
                    modules.append(AntiAliasedDownsample(config.downsample_sigma, config.boundary))
            for block in range(blocks):
                rhs = InvariantSystemRHS(
                    channels, config.group, max(1, round(config.hidden * channels)),
                    joint=config.joint, mixtures=config.mixtures, stencil=config.stencil,
                    boundary=config.boundary, sigma=_sigma(config), ratio_eps=config.ratio_eps,
                    jet_floor=config.jet_floor, normalize_invariants=config.normalize_invariants)
                modules.append(EulerStep(rhs, config.dt, name=f"stage{index}.block{block}"))
            stages.append(nn.Sequential(*modules))
        self.stages = nn.Sequential(*stages)
        width = config.channels[-1] * (2 if config.readout == "meanmax" else 1)
        self.norm = nn.BatchNorm1d(width)
        self.classifier = nn.Linear(width, require_int(classes, "classes", 1))

    def backward_bytes(self, batch_size: int, element_size: int = 4) -> int:
        """An estimate of the bytes one training step on ``batch_size`` images keeps for its
        backward pass (what the memory preflight of :mod:`eqpdenet.app.preflight` needs).

        In units of one map, ``batch x h_s^2 x element_size``, every Euler block keeps about
        ``f (K + C_s + hidden)`` for its ``K`` invariant maps, ``C_s`` channels and hidden layer:
        ``f = 4`` for each channel's own SE(2) invariants, 7.5 for SIM(2) or joint invariants
        (their intermediate products); the lift about 7 fields of ``C_0`` channels. Measured with
        ``torch.autograd.graph.saved_tensors_hooks``; tests/models/test_memory_estimates.py holds
        the estimate within 1 to 1.6 times the measurement.
        """
        config = self.config
        sizes = stage_sizes(self.image_size, config)
        factor = 4.0 if config.group == "se2" and config.joint == "channel" else 7.5
        per_map = batch_size * element_size
        total = 7 * config.channels[0] * per_map * sizes[0] ** 2
        blocks = iter(m.rhs for m in self.stages.modules() if isinstance(m, EulerStep))
        for stage, size in zip(config.blocks, sizes, strict=True):
            for _ in range(stage):
                rhs = next(blocks)
                maps = rhs.invariants_of.out_channels + rhs.channels + rhs.F[-3].num_features
                total += factor * maps * per_map * size**2
        return int(total)

    @property
    def quarter_turn_invariant(self) -> bool:
        """Whether the logits are invariant under quarter turns of the input (to rounding):
        always, but where a 2x2 pooling between stages meets a map of odd size."""
        poolings = len(self.config.channels) - 1 if self.config.downsample == "pool" else 0
        return halvings_stay_even(self.image_size, poolings)

    def features(self, images: Tensor) -> Tensor:
        """Globally pooled features ``(B, F)``: invariant under rotations (up to the grid)."""
        return self._features(check_model_input(self, images)).to(images.dtype)

    def _features(self, entered: ModelInput) -> Tensor:
        u = run_stages(self.stages, self.lift(self.standardize(entered.images)), entered,
                       self.standardize, model=self)
        pooled = {"max": lambda: u.amax(dim=(-2, -1)), "mean": lambda: u.mean(dim=(-2, -1)),
                  "meanmax": lambda: torch.cat([u.mean(dim=(-2, -1)), u.amax(dim=(-2, -1))], 1)}
        return self.norm(pooled[self.config.readout]())

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self._features(check_model_input(self, images))).to(images.dtype)


def run_stages(stages, u: Tensor, entered: ModelInput, standardize: Standardize,
               model: nn.Module | None = None) -> Tensor:
    """``u`` through ``stages`` (sequences of modules, the Euler blocks among them), every
    block's state checked for NaN and inf on the device and read once at the end: the first
    block whose state was not finite raises :class:`~eqpdenet.errors.NonFiniteStateError` (as
    "its Euler step 1"), explained by the range of the images ``entered`` (never NaN logits),
    and first, where ``model`` is given, by batch norms of its ``lift`` or of ``stages`` that
    are in evaluation mode with untrained statistics (:func:`~eqpdenet.checks.non_finite_hint`).
    The blocks are not checked on entry (the model checked its images). A stage (or ``stages``
    itself) with a hook is called as a module, so that its hooks fire, and its state checked at
    its end only (the report names its first and last block); without one the stage's modules
    are called one by one, each block's state checked."""
    def steps_of(module: nn.Module) -> list[EulerStep]:
        return [m for m in module.modules() if isinstance(m, EulerStep)]

    blocks = [block for stage in stages for block in steps_of(stage)]
    # an exported graph reports nothing; under vmap no value can be read; an empty batch has
    # no extremes
    check = not exporting() and not vmapped(u) and u.numel() > 0
    finite, names, dts = [], [], []

    def checked(state: Tensor, group: list[EulerStep]) -> None:
        if check and group:  # on the device; NaN and inf show in the extremes: one pass, and
            # no temporary the size of the field (isfinite(u).all() writes one per block)
            finite.append(torch.stack(torch.aminmax(state.detach())).isfinite().all())
            names.append(group[0].name if len(group) == 1 else
                         f"{group[0].name} .. {group[-1].name} (hooked: checked at the end)")
            dts.append(group[0].dt)

    with input_checked(*blocks):  # checked on entry: no host read per block
        if isinstance(stages, nn.Module) and hooks_registered([stages]):
            u = stages(u)  # called as a module, so that its hooks fire: checked as a whole
            checked(u, blocks)
        else:
            for stage in stages:
                if hooks_registered([stage]):  # the same for one stage
                    u = stage(u)
                    checked(u, steps_of(stage))
                    continue
                for module in stage:
                    u = module(u)
                    if isinstance(module, EulerStep):
                        checked(u, [module])
    if finite:
        try:
            report_non_finite(names, dts, (~torch.stack(finite)).to(torch.int64))
        except NonFiniteStateError as error:
            values = (entered.low, entered.high)
            hint = standardize.explain(*values) or input_range_hint(
                *values, model, (standardize.mean, standardize.std))
            if model is not None:  # the batch norms the states went through
                hint = non_finite_hint(model, hint, within=(getattr(model, "lift", None), stages))
            raise error.with_hint(hint) from None
    return u
