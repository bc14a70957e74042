"""The PDE layer: ``n_e`` PDEs ``du/dt = F_theta(invariants of u)`` evolved from the same input,
then reduced to one image (Fig. 3, eq. (7) of the paper).

Each PDE is an :class:`~eqpdenet.pde.integrators.EulerFlow` of an
:class:`~eqpdenet.pde.rhs.InvariantRHS`; the reduction comes from :data:`REDUCTIONS` (a learned
linear combination with bias, as in the paper; or mean, max, concatenation) and the initial
``F_theta`` from :data:`INITS`. :class:`LayerConfig` is the one place where the layer's options
and their defaults live: :meth:`PDELayer.build` and the application's configuration files both
read it. Named starting points are in :data:`LAYER_PRESETS` (``"paper"``: the paper's layer;
``"se2_sim2"``: two SE(2) and two SIM(2) PDEs).

Tensors are ``(batch, channels, height, width)``; each channel evolves independently under the
same PDE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import kernels
from ..checks import (
    check_device,
    check_images,
    check_values,
    hooks_registered,
    is_input_checked,
    match_dtype,
    module_dtype,
    require,
    require_finite,
    require_int,
    require_lists,
    require_nonnegative,
    require_positive,
    warn_low_precision,
)
from ..errors import NonFiniteStateError, warn_at_caller
from ..registry import CallRegistry, Registry
from .integrators import (
    MAX_STEPS,
    EulerFlow,
    EulerStep,
    breaks_upper_bound,
    call_checked,
    input_checked,
    input_range_hint,
    steps_for,
)
from .invariants import (
    DEFAULT_RATIO_EPS,
    DEFAULT_RATIO_REGULARISATION,
    INVARIANT_SETS,
    RATIO_REGULARISATIONS,
    Derivatives,
    InvariantSet,
    RecordingRatio,
    get_invariant_set,
    require_planar,
    sample_jet,
)
from .rhs import (
    RIGHT_HAND_SIDES,
    InvariantRHS,
    MonomialF,
    PolynomialF,
    _linear,
    require_polynomial_size,
)
from .stencils import BOUNDARIES, STENCILS, check_jet_image_size, check_sigma, check_spacing

__all__ = [
    "INITS",
    "LAYER_PRESETS",
    "MAX_STEPS",
    "REDUCTIONS",
    "Concat",
    "LayerConfig",
    "LinearCombination",
    "Max",
    "Mean",
    "PDELayer",
    "make_reduction",
]


# ----------------------------------------------------------------------------- reductions


class LinearCombination(nn.Module):
    """``sum_e w_e u_e + b`` over the PDE axis: ``(B, n_e, C, H, W) -> (B, C, H, W)``.

    ``n_e + 1`` parameters, initialised to the mean (``w_e = 1 / n_e``, ``b = 0``); ``n_pdes``
    an integer ``>= 1`` (else a :class:`~eqpdenet.errors.ConfigError` naming it).
    """

    def __init__(self, n_pdes: int):
        super().__init__()
        n_pdes = require_int(n_pdes, "n_pdes", 1)  # 0 divided by zero below
        self.weight = nn.Parameter(torch.full((n_pdes,), 1.0 / n_pdes))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, states: Tensor) -> Tensor:
        return torch.einsum("bechw,e->bchw", states, self.weight) + self.bias


class Mean(nn.Module):
    """Mean over the PDE axis, no parameters."""

    def forward(self, states: Tensor) -> Tensor:
        return states.mean(dim=1)


class Max(nn.Module):
    """Pointwise maximum over the PDE axis, no parameters."""

    def forward(self, states: Tensor) -> Tensor:
        return states.amax(dim=1)


class Concat(nn.Module):
    """All evolved images as channels: ``(B, n_e, C, H, W) -> (B, n_e C, H, W)``."""

    def forward(self, states: Tensor) -> Tensor:
        return states.flatten(1, 2)


#: Reductions over the PDE axis: name -> ``factory(n_pdes)`` returning an ``nn.Module``
#: ``(B, n_e, C, H, W) -> (B, C, H, W)`` (a :class:`Concat`, or a subclass of it, gives
#: ``(B, n_e C, H, W)``: :meth:`PDELayer.out_channels` reads the type, not the name); a factory
#: that cannot be called with ``n_pdes`` is refused when registered.
REDUCTIONS: Registry[Callable[[int], nn.Module]] = CallRegistry("reduction", "factory(n_pdes)", 1)
REDUCTIONS.register("linear", LinearCombination)
REDUCTIONS.register("mean", lambda n_pdes: Mean())
REDUCTIONS.register("max", lambda n_pdes: Max())
REDUCTIONS.register("concat", lambda n_pdes: Concat())


def make_reduction(kind: str, n_pdes: int) -> nn.Module:
    """The reduction registered as ``kind`` for ``n_pdes`` PDEs, an integer ``>= 1`` (a
    ConfigError naming ``n_pdes`` otherwise, for every reduction, also one that ignores it; and
    one naming the reduction where its factory returns anything but an ``nn.Module``)."""
    factory = REDUCTIONS.get(kind)
    # checked here, not by each factory: the parameter-free ones ignored a count of -1
    n_pdes = require_int(n_pdes, "n_pdes", 1)
    reduction = factory(n_pdes)
    require(isinstance(reduction, nn.Module), "reduction", f"the reduction {kind!r} must be "
            f"built as an nn.Module, its factory returned {type(reduction).__name__}")
    return reduction


# ----------------------------------------------------------------------------- initialisation


def _init_zeros(F: nn.Module, invariant_set: InvariantSet, scale: float, generator) -> None:
    """F as built: every PDE of a :class:`MonomialF` (which starts at zero) is the identity map
    at first; an F of another form keeps its own initialisation."""


def _init_heat(F: MonomialF, invariant_set: InvariantSet, scale: float, generator) -> None:
    """``F = scale (u_xx + u_yy)`` for sets that contain the Laplacian, zero otherwise."""
    if "laplacian" in invariant_set.names:
        target = tuple(int(n == "laplacian") for n in invariant_set.names)
        F.weight[F.monomials().index(target)] = scale


def _init_normal(F: MonomialF, invariant_set: InvariantSet, scale: float, generator) -> None:
    """Weights ~ N(0, scale^2)."""
    F.weight.copy_(scale * torch.randn(F.weight.shape, generator=generator))


# The inits that set a MonomialF's weights declare it (see INITS).
_init_heat.f_type = _init_normal.f_type = MonomialF

#: Initial ``F_theta``: name -> ``init(F, invariant_set, scale, generator)``, called with the four
#: by position (an init that cannot take them is refused when registered) on F as its form built
#: it (a :class:`MonomialF` starts at zero). An init that works only on some forms of F declares
#: it as the attribute ``f_type`` (a class; ``"heat"`` and ``"normal"`` set a MonomialF's
#: weights): a layer whose F is not an instance is refused when it is configured (forms
#: registered as a class) or built (:func:`check_init`), not met as an AttributeError.
INITS: Registry[Callable] = CallRegistry("initialisation", "init(F, invariant_set, scale, generator)",
                                         None, None, 0.0, None)
INITS.register("zeros", _init_zeros)
INITS.register("heat", _init_heat)
INITS.register("normal", _init_normal)


# ----------------------------------------------------------------------------- configuration

#: The most PDEs a :class:`LayerConfig` accepts (the paper's layer has 4).
MAX_PDES = 1024

#: The largest ``init_scale`` and ``init_noise`` (in absolute value) a :class:`LayerConfig`
#: accepts: weights of F far beyond any stable explicit scheme.
MAX_INIT = 1e6

#: :attr:`LayerConfig.init_noise`'s default.
DEFAULT_INIT_NOISE = 0.01

#: What float16 / bfloat16 cost the layer, as :func:`~eqpdenet.checks.warn_low_precision` says
#: (round 16, a layer of se2, sim2 and scaling against float64 with the same weights and input).
_LOW_PRECISION_COST = ("its ratio invariants (the scaling and sim2 sets, any set that divides) "
                       "came out 10-15 % off float64 at this precision, where se2 keeps to the "
                       "precision's own rounding")


def _divides(invariant_set: InvariantSet) -> bool:
    """Whether an invariant of ``invariant_set`` divides (calls or reads its ratio
    regularisation), found by evaluating it on :func:`sample_jet`: only the function knows."""
    for invariant in invariant_set.invariants:
        ratio = RecordingRatio()
        try:
            invariant.function(Derivatives(sample_jet(invariant_set.order)), ratio)
        except Exception:  # noqa: BLE001 - a function that cannot run here: assume it divides
            return True
        if ratio.references or ratio.floats:
            return True
    return False


def check_init(config: LayerConfig, f_type: type) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` naming the field and F where ``config``'s
    initialisation cannot apply to an F of class ``f_type`` (F of ``config.rhs``).

    The rule for an F that is not a :class:`MonomialF` (a user's form in
    :data:`~eqpdenet.pde.rhs.RIGHT_HAND_SIDES`): it keeps its own initialisation. ``init`` must
    then be one that takes it (``"zeros"``, the default: F as built; an init that declares an
    ``f_type`` it is not an instance of is refused), and ``init_noise``, noise on a MonomialF's
    weights, must be 0 or its default (:data:`DEFAULT_INIT_NOISE`, which is not applied to such
    an F): another value is refused rather than ignored. ``init_scale`` is what the init makes
    of it (``"zeros"`` ignores it, whatever F)."""
    init = INITS.get(config.init)
    needs = getattr(init, "f_type", None)
    form = f"F of rhs = {config.rhs!r} ({f_type.__name__}) is not one"
    if isinstance(needs, type) and not issubclass(f_type, needs):
        require(False, "layer.init", f"{config.init!r} sets the weights of a {needs.__name__}; "
                f"{form} and keeps its own initialisation: use init = 'zeros'")
    if not issubclass(f_type, MonomialF) and config.init_noise not in (0.0, DEFAULT_INIT_NOISE):
        require(False, "layer.init_noise", f"{config.init_noise:g} is noise on the weights of a "
                f"MonomialF; {form} and keeps its own initialisation: set init_noise = 0 "
                f"(its default, {DEFAULT_INIT_NOISE:g}, is not applied to such an F)")


@dataclass
class LayerConfig:
    """Everything that defines a PDE layer.

    The defaults are the paper's layer (its architecture: 2 ``se2`` + 2 ``scaling`` PDEs, linear
    F, linear reduction; with our choices where the paper gives none: 10 Euler steps of 0.1,
    central differences, docs/choices.md) except for the ratio regularisation, which is
    ``"covariant"`` so that the ``scaling`` invariants are scale invariant;
    :meth:`LayerConfig.paper` is the paper's layer (``"absolute"``, the same choices).

    Attributes:
        invariants: one invariant set (registered name or :class:`InvariantSet`) per PDE
            (``n_e = len(invariants)``).
        rhs: form of ``F_theta`` (:data:`~eqpdenet.pde.rhs.RIGHT_HAND_SIDES`: ``"linear"``,
            ``"polynomial"``); ``degree`` for the polynomial (with ``"linear"`` it must stay 1:
            a ConfigError rather than a degree ignored).
        T, dt: time horizon and Euler step; ``steps = T / dt``, a whole number between 1 and
            :data:`MAX_STEPS` (:func:`~eqpdenet.pde.integrators.steps_for`).
        stencil, spacing, boundary: how derivatives are computed.
        sigma: the scale of a stencil family that has one (``gaussian``: the standard deviation
            of its Gaussian, in the unit of ``x`` like ``spacing``); None (the default) for the
            others, which refuse one.
        ratio_eps: regularisation scale of ratio invariants (eq. (5)).
        ratio_regularisation: :data:`~eqpdenet.pde.invariants.RATIO_REGULARISATIONS`:
            ``"covariant"`` (``a b / (b^2 + eps^2 R)`` with ``R = |H|^2 + |∇u|^4``, ``R^2``
            where ``b = det H``, ``a^2`` for a set that names no reference: the regularisation
            scales as ``b^2`` does, so the ratio is invariant wherever ``a / b`` is;
            :mod:`~eqpdenet.pde.invariants`) or ``"absolute"`` (the paper's
            ``a b / (b^2 + eps^2)``, which fixes a length scale).
        reduction: :data:`REDUCTIONS`: ``"linear"`` (the paper's), ``"mean"``, ``"max"``,
            ``"concat"``.
        init, init_scale: initial ``F_theta`` (:data:`INITS`: ``"zeros"``, ``"heat"``,
            ``"normal"``).
        init_noise: std of Gaussian noise added to F's initial weights; breaks the symmetry
            between PDEs of the same set (see :meth:`PDELayer.build`). For an F that is not a
            :class:`MonomialF` (a user's form of ``rhs``), F keeps its own initialisation: the
            init must be ``"zeros"`` and the noise 0 or its default (not applied):
            :func:`check_init`.
        check_finite: raise on a non-finite PDE state.
        backend: :data:`~eqpdenet.kernels.BACKENDS` (``"auto"``, ``"reference"``, ``"fused"``).
        recompute: while gradients are recorded (training or not), keep no intermediate
            states and recompute them in the backward pass (less memory, about one more forward
            of work; the same gradients; not under a ``torch.func`` transform or forward-mode
            AD, which compute without it).
            For a parameter changed in place between forward and backward, see
            :class:`PDELayer`.
    """

    invariants: list = field(default_factory=lambda: ["se2", "se2", "scaling", "scaling"])
    rhs: str = "linear"
    degree: int = 1
    T: float = 1.0
    dt: float = 0.1
    stencil: str = "central"
    spacing: float = 1.0
    boundary: str = "replicate"
    sigma: float | None = None
    ratio_eps: float = DEFAULT_RATIO_EPS
    ratio_regularisation: str = DEFAULT_RATIO_REGULARISATION
    reduction: str = "linear"
    init: str = "zeros"
    init_scale: float = 0.0
    init_noise: float = DEFAULT_INIT_NOISE
    check_finite: bool = True
    backend: str = "auto"
    recompute: bool = False

    def __post_init__(self):
        require_lists(self, "layer.")
        require(len(self.invariants) >= 1, "layer.invariants",
                "needs a list of at least one invariant set")
        require(len(self.invariants) <= MAX_PDES, "layer.invariants",
                f"{len(self.invariants):,} PDEs, more than the bound of {MAX_PDES}")
        for index, name in enumerate(self.invariants):
            if not isinstance(name, InvariantSet):
                INVARIANT_SETS.check(name, f"layer.invariants[{index}]")
            require_planar(get_invariant_set(name), f"layer.invariants[{index}]")
        RIGHT_HAND_SIDES.check(self.rhs, "layer.rhs")
        require_int(self.degree, "layer.degree", 1)
        # (a degree with the linear form was ignored without a word). By the builder, not the
        # name: a form registered over "linear" or "polynomial" (replace=True) has its own rules.
        builder = RIGHT_HAND_SIDES.get(self.rhs)
        require(builder is not _linear or self.degree == 1, "layer.degree",
                f"{self.degree} has no effect on rhs = {self.rhs!r} (F is linear in the "
                f"invariants): leave degree at 1, or set rhs = 'polynomial' for a polynomial of "
                f"degree {self.degree}")
        if builder is PolynomialF:  # before any monomial is enumerated
            for spec in self.invariants:
                require_polynomial_size(len(get_invariant_set(spec)), self.degree, "layer.degree")
        require_positive(self.dt, "layer.dt")
        steps_for(self.T, self.dt, ("layer.T", "layer.dt"))
        check_spacing(self.spacing, "layer.spacing")
        require_positive(self.ratio_eps, "layer.ratio_eps")
        RATIO_REGULARISATIONS.check(self.ratio_regularisation, "layer.ratio_regularisation")
        STENCILS.check(self.stencil, "layer.stencil")
        self.sigma = check_sigma(self.stencil, self.sigma, self.spacing, "layer.sigma")
        BOUNDARIES.check(self.boundary, "layer.boundary")
        REDUCTIONS.check(self.reduction, "layer.reduction")
        INITS.check(self.init, "layer.init")
        # F's initial weights are float32: 1e300 overflowed ("value cannot be converted to type
        # float without overflow"), and far less blows up every PDE at its first step.
        for name in ("init_scale", "init_noise"):
            value = abs(require_finite(getattr(self, name), f"layer.{name}"))
            require(value <= MAX_INIT, f"layer.{name}",
                    f"{getattr(self, name):.3g} is beyond ±{MAX_INIT:g} (F's initial weights)")
        require_nonnegative(self.init_noise, "layer.init_noise")
        if isinstance(builder, type):  # F's class known before it is built (else: from_config)
            check_init(self, builder)
        require(isinstance(self.check_finite, bool), "layer.check_finite", "must be true or false")
        kernels.BACKENDS.check(self.backend, "layer.backend")
        require(isinstance(self.recompute, bool), "layer.recompute", "must be true or false")

    @property
    def steps(self) -> int:
        """``T / dt`` (:func:`~eqpdenet.pde.integrators.steps_for`)."""
        return steps_for(self.T, self.dt, ("layer.T", "layer.dt"))

    @classmethod
    def paper(cls, **options) -> LayerConfig:
        """The paper's layer: 2 ``se2`` + 2 ``scaling`` PDEs with the paper's absolute ratio
        regularisation (``ratio_regularisation="absolute"``); ``options`` override fields."""
        return cls(**{"invariants": ["se2", "se2", "scaling", "scaling"],
                      "ratio_regularisation": "absolute", **options})

    @classmethod
    def preset(cls, name: str, **options) -> LayerConfig:
        """The layer preset ``name`` (:data:`LAYER_PRESETS`), ``options`` overriding its fields.

        Example:
            >>> LayerConfig.preset("se2_sim2").invariants
            ['se2', 'se2', 'sim2', 'sim2']
        """
        _check_options(options, f"layer preset {name!r}")
        config = LAYER_PRESETS.get(name)(**options)
        require(isinstance(config, LayerConfig), f"layer preset {name!r}",
                f"its factory must return a LayerConfig, got {type(config).__name__}")
        return config


def _check_options(options: dict, where: str) -> None:
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(LayerConfig)})
    require(not unknown, where, f"unknown option(s) {unknown}; the options are the fields of "
            f"LayerConfig")


def _se2_sim2(**options) -> LayerConfig:
    return LayerConfig(**{"invariants": ["se2", "se2", "sim2", "sim2"],
                          "ratio_regularisation": "covariant", **options})


#: Named layers: name -> ``factory(**options) -> LayerConfig``; ``"paper"`` is the paper's layer,
#: ``"se2_sim2"`` two SE(2) and two SIM(2) PDEs (rotation- *and* scale-equivariant) with the
#: covariant ratio regularisation, everything else as the paper's. ``options`` override fields of
#: the LayerConfig, so a factory must take every field of LayerConfig as a keyword (``**options``
#: does): one that cannot is refused when registered.
LAYER_PRESETS: Registry[Callable[..., LayerConfig]] = CallRegistry(
    "layer preset", "factory(**options), options any fields of LayerConfig",
    **{spec.name: None for spec in dataclasses.fields(LayerConfig)})
LAYER_PRESETS.register("paper", LayerConfig.paper)
LAYER_PRESETS.register("se2_sim2", _se2_sim2)


# ----------------------------------------------------------------------------- the layer


class _SavedVersions(torch.autograd.Function):
    """``_SavedVersions.apply(out, *tensors)``: ``out`` (a view, the same values), its gradient
    passed through unchanged, with ``tensors`` saved for the backward pass. Their versions are
    checked there, before the backward of whatever computed ``out``: a tensor changed in place
    since (a parameter, by an optimizer step or under ``torch.no_grad()``) raises PyTorch's
    "modified by an inplace operation" :class:`RuntimeError` instead of letting a recomputation
    (``torch.utils.checkpoint``) differentiate the new values against the old output's gradient.
    Only this check: no gradient flows to ``tensors`` through it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(out: Tensor, *tensors: Tensor) -> Tensor:
        return out.view_as(out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[1:])

    @staticmethod
    def backward(ctx, grad: Tensor):
        saved = ctx.saved_tensors  # unpacking them is the version check
        return (grad, *(None for _ in saved))


class PDELayer(nn.Module):
    """``n_e`` PDEs evolved from the same input, then reduced (Fig. 3, eq. (7)).

    Args:
        pdes: the :class:`~eqpdenet.pde.integrators.EulerFlow` s.
        reduction: a name from :data:`REDUCTIONS` (default ``"linear"``).
        backend: how :meth:`evolve` integrates (:mod:`eqpdenet.kernels`): ``"auto"`` (default),
            ``"reference"`` or ``"fused"``. Results agree to rounding (one exception: in
            float32, the input gradients of the covariant ``scaling`` and ``sim2`` ratios where
            the jet is of the size of rounding noise, which the two round differently: both
            bounded, docs/performance.md); an unusable fast path falls back to the reference
            with one warning, never an error.
        recompute: while gradients are recorded (training or not), keep no intermediate
            states and recompute them in the backward pass (less memory, about one more forward
            of work; the same gradients; not under a ``torch.func`` transform or forward-mode
            AD, which compute without it).
            A PDE parameter changed in place between forward and backward (``optimizer.step()``
            or ``with torch.no_grad(): w.add_(1)`` before ``backward()``): the reference raises
            PyTorch's "modified by an inplace operation" :class:`RuntimeError` in the backward
            pass (without ``recompute`` for a parameter an operation saved, such as F's weight;
            with it for every parameter, a bias included, since the states would be recomputed
            from the new values); the fused operator, with or without ``recompute``,
            differentiates the copy of the weights its forward used (no error, the exact
            gradient of that forward).

    ``forward``: ``(B, C, H, W) -> (B, C, H, W)`` (``(B, n_e C, H, W)`` for ``concat``).
    :meth:`evolve` gives the unreduced ``(B, n_e, C, H, W)``.

    Hooks. The reference path calls every PDE's modules (``pdes[e]``, its ``step``,
    ``step.rhs``, ``rhs.jet``, ``rhs.F``), so their hooks fire; the fused operator calls none.
    So the layer takes the reference whenever one of them, or the process (global module
    hooks), has a forward, forward pre-, backward or backward pre-hook registered (old-style
    ``torch.nn.utils.weight_norm`` is a forward pre-hook): decided at every call, from the hook
    dictionaries alone. Under ``torch.jit.trace`` it takes the reference as well: the trace
    records the plain PyTorch operators, which give the same values to rounding, and the fused
    operator's schema (lists of strings) cannot be traced.

    Example:
        >>> layer = PDELayer.paper()
        >>> layer(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, pdes: Sequence[EulerFlow], reduction: str = "linear",
                 backend: str = "auto", recompute: bool = False):
        super().__init__()
        require(len(pdes) >= 1, "pdes", "a PDE layer needs at least one PDE")
        kernels.BACKENDS.check(backend, "backend")
        self.pdes = nn.ModuleList(pdes)
        self.reduction_kind = reduction
        self.reduction = make_reduction(reduction, len(self.pdes))
        self.backend, self.recompute = backend, bool(recompute)

    _input_checked = False  # while compiling only: see eqpdenet.checks.input_checked

    @property
    def n_pdes(self) -> int:
        return len(self.pdes)

    def out_channels(self, in_channels: int) -> int:
        """Channels out for ``in_channels`` in: ``n_e`` times as many where the reduction is a
        :class:`Concat` (by its type: a reduction registered under another name, or over
        ``"concat"``, is what it is)."""
        return in_channels * (self.n_pdes if isinstance(self.reduction, Concat) else 1)

    def forward(self, u: Tensor) -> Tensor:
        x, values = self._enter(u)
        return self.reduction(self._evolve(x, values)).to(u.dtype)

    def evolve(self, u: Tensor) -> Tensor:
        """Every PDE from the same ``u``: ``(B, C, H, W) -> (B, n_e, C, H, W)``."""
        x, values = self._enter(u)
        return self._evolve(x, values).to(u.dtype)

    def _enter(self, u: Tensor) -> tuple[Tensor, tuple[float, float] | None]:
        """The checks of the public entry points (:mod:`eqpdenet.checks`): shape, finite values
        (``(min, max)`` returned for error messages), ``u`` in the layer's dtype; none inside
        :class:`~eqpdenet.pde.integrators.input_checked` (the caller checked, and explains a
        non-finite state itself). A layer cast to float16 or bfloat16 warns once per dtype
        (:func:`~eqpdenet.checks.warn_low_precision`), inside a model too."""
        dtype = module_dtype(self)  # once per call: the warning and the dtype check read it
        if dtype in (torch.float16, torch.bfloat16):
            warn_low_precision(self, _LOW_PRECISION_COST, applies=lambda: any(
                _divides(pde.step.rhs.invariant_set) for pde in self.pdes))
        if is_input_checked(self):
            return u, None
        check_images(u, "u")
        check_device(u, self, "u")
        values = check_values(u, "u")
        return match_dtype(u, dtype, "u"), values

    def _evolve(self, u: Tensor, values: tuple[float, float] | None = None) -> Tensor:
        """:meth:`evolve` without checks; ``values`` (the input's min and max) explain a
        :class:`~eqpdenet.errors.NonFiniteStateError`."""
        try:
            return self._evolve_unchecked(u)
        except NonFiniteStateError as error:
            if values is None:
                raise
            raise error.with_hint(input_range_hint(*values, self)) from None

    def _evolve_unchecked(self, u: Tensor) -> Tensor:
        if (kernels.resolve_backend(self.backend) != "reference" and not torch.jit.is_tracing()
                and not self._hooked()):
            specs = self.kernel_specs()
            if not isinstance(specs, str):
                # The reference's size rule first, with its error (each PDE's jet, in order),
                # before a backend is chosen: the fused kernel returned an empty result for a
                # 0 x W image the reference refuses, and a reflect image of one row warned that
                # it took the reference, which then refused it.
                for spec in specs:
                    check_jet_image_size(u.shape[-2], u.shape[-1], spec.boundary,
                                         spec.stencil.shape[-1] // 2)
            reason = specs if isinstance(specs, str) else kernels.unsupported_reason(u, specs)
            if reason is None:
                return kernels.fused_evolve(u, specs, recompute=self.recompute)
            kernels.warn_once(f"{reason}; using the reference PDE layer")
        return self._evolve_reference(u)

    def _hooked(self) -> bool:
        """Whether a hook is registered that only the reference path would run (see the class
        doc): global module hooks, or hooks on any module of a PDE
        (:func:`~eqpdenet.checks.hooks_registered`)."""
        return hooks_registered(m for pde in self.pdes for m in pde.modules())

    def evolve_reference(self, u: Tensor) -> Tensor:
        """:meth:`evolve` by the plain PyTorch reference (with ``recompute``, states recomputed)."""
        x, values = self._enter(u)
        try:
            return self._evolve_reference(x).to(u.dtype)
        except NonFiniteStateError as error:
            if values is None:
                raise
            raise error.with_hint(input_range_hint(*values, self)) from None

    def _evolve_reference(self, u: Tensor) -> Tensor:
        # Each PDE called as a module, so that its hooks (and those of its parts) fire.
        # Not under a torch.func transform or with a dual tensor: torch.func's grad/jacrev refuse
        # checkpoint's saved-tensor hooks and forward AD _SavedVersions (no jvp), so recompute
        # made them fail with raw errors; recompute only saves memory, the values are the same.
        if (self.recompute and torch.is_grad_enabled()
                and kernels.op.transform_reason(u, *self.parameters()) is None):
            from torch.utils.checkpoint import checkpoint as recompute

            # checkpoint saves (and version-checks) only its arguments; the PDE reads its
            # parameters as attributes, so each PDE's output also saves them (_SavedVersions).
            return torch.stack([_SavedVersions.apply(
                recompute(call_checked, pde, u, use_reentrant=False), *pde.parameters())
                for pde in self.pdes], dim=1)
        with input_checked(*self.pdes):
            return torch.stack([pde(u) for pde in self.pdes], dim=1)

    def kernel_specs(self) -> list[kernels.PDESpec] | str:
        """What the fused operator needs of each PDE, or why a PDE declares no such capability.

        A PDE qualifies when it is an :class:`EulerFlow` of an :class:`EulerStep` of an
        :class:`InvariantRHS` whose invariant set names a kernel (``InvariantSet.kernel``) and
        whose ``F`` is a :class:`MonomialF`; the operator then checks device, dtype and stencil.
        """
        specs = []
        for pde in self.pdes:
            step = getattr(pde, "step", None)
            rhs = getattr(step, "rhs", None)
            if not (isinstance(pde, EulerFlow) and isinstance(step, EulerStep)
                    and isinstance(rhs, InvariantRHS)):
                return f"{getattr(pde, 'name', type(pde).__name__)} is not an EulerFlow of an " \
                       f"InvariantRHS"
            if rhs.invariant_set.kernel is None:
                return f"the invariant set {rhs.invariant_set.name!r} declares no kernel"
            if not isinstance(rhs.F, MonomialF) or rhs.jet.order != 2:
                return f"{pde.name}: F is not a MonomialF of an order-2 jet"
            specs.append(kernels.PDESpec(
                name=pde.name, invariant_set=rhs.invariant_set.kernel, boundary=rhs.jet.boundary,
                stencil=rhs.jet.weight, ratio_eps=rhs.ratio_eps,
                ratio_regularisation=rhs.ratio_regularisation, monomials=tuple(rhs.F.recipe()),
                weight=rhs.F.weight, bias=rhs.F.bias, dt=step.dt, steps=pde.steps,
                check_finite=pde.check_finite))
        return specs

    def stability(self) -> list[dict]:
        """:meth:`~eqpdenet.pde.integrators.EulerStep.stability` of every PDE."""
        return [pde.step.stability() for pde in self.pdes]

    @classmethod
    def build(cls, invariants: Sequence[str | InvariantSet] | None = None, **options) -> PDELayer:
        """A layer of one PDE per entry of ``invariants``; every option and default is a field
        of :class:`LayerConfig` (the paper's layer but for the ``covariant`` ratio
        regularisation; :meth:`paper` is the paper's layer exactly).

        ``init`` sets the initial ``F_theta`` (:data:`INITS`). ``init_noise`` adds
        N(0, init_noise^2) to every weight of F: without it, PDEs with the same invariant set and
        init receive identical gradients (the reduction starts as the mean) and stay identical
        for ever, so the paper's 2 + 2 PDEs would be 1 + 1. The noise (and ``"normal"``) is
        drawn from a generator seeded by ``torch.initial_seed()``, so it does not shift the
        global random stream (EqPdeNet's perceptron is initialised exactly like FCNN's for the
        same seed). An F that is not a :class:`MonomialF` (a user's form of ``rhs``) keeps its
        own initialisation and gets no noise (:func:`check_init`).

        Example:
            >>> layer = PDELayer.build(["se2", "scaling"], T=0.5, dt=0.1, init_noise=0.0)
            >>> [pde.steps for pde in layer.pdes]
            [5, 5]
        """
        if invariants is not None:
            # A string, one InvariantSet or anything not iterable is left as it is, for
            # LayerConfig to refuse as not a list ('se2' was split into the sets 's', 'e', '2').
            options["invariants"] = (
                invariants if isinstance(invariants, str | bytes | InvariantSet)
                or not isinstance(invariants, Iterable) else list(invariants))
        _check_options(options, "PDELayer.build")
        return cls.from_config(LayerConfig(**options))

    @classmethod
    def from_config(cls, config: LayerConfig) -> PDELayer:
        """The layer a :class:`LayerConfig` describes (F initialised by ``config.init``)."""
        steps = config.steps
        generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63 + 7919)
        init = INITS.get(config.init)
        pdes = []
        for index, invariants in enumerate(config.invariants):
            invariant_set = get_invariant_set(invariants)
            rhs = InvariantRHS(invariant_set, config.rhs, config.degree, config.stencil,
                               config.spacing, config.boundary, config.ratio_eps,
                               config.sigma, config.ratio_regularisation)
            check_init(config, type(rhs.F))  # before init touches F (see check_init)
            with torch.no_grad():
                init(rhs.F, invariant_set, config.init_scale, generator)
                if config.init_noise and isinstance(rhs.F, MonomialF):
                    rhs.F.weight.add_(config.init_noise * torch.randn(rhs.F.weight.shape,
                                                                      generator=generator))
            step = EulerStep(rhs, config.dt, name=f"pde{index}:{invariant_set.name}")
            pdes.append(EulerFlow(step, steps, config.check_finite))
        layer = cls(pdes, config.reduction, backend=config.backend, recompute=config.recompute)
        if any(p.is_meta for p in layer.parameters()):
            return layer  # built on the meta device to count its parameters: no values to check
        for report in layer.stability():
            # Only the upper bound warns here: a slightly negative diffusivity from init_noise
            # is anti-diffusion of growth exp(|a| lambda_max T), harmless for small |a|.
            if report["stable"] is False and breaks_upper_bound(report):
                second_order = {"u_xx", "u_xy", "u_yy", "u"}
                if report["diffusivity"] is not None:
                    what = (f"initial diffusivity {report['diffusivity']:g} with dt={config.dt:g} "
                            f"(a dt = {report['a_dt']:g}) violates the explicit Euler bound "
                            f"0 <= a dt <= {report['max_a_dt']:g}")
                elif not set(report["linear_part"] or ()) <= second_order:
                    # terms of first order or of order > 2: the coefficients above say nothing
                    what = f"initial F: {report['reason']}"
                else:
                    what = (f"initial second-order coefficients (c_xx, c_xy, c_yy) = "
                            f"{tuple(round(c, 6) for c in report['second_order'])} with "
                            f"dt={config.dt:g} violate the explicit Euler bound "
                            f"-dt sigma <= 2 at every frequency "
                            f"(max -dt sigma = {report['max_rate_dt']:g})")
                warn_at_caller(f"{report['pde']}: {what}; use dt <= {report['max_dt']:g}",
                               UserWarning)
        return layer

    @classmethod
    def paper(cls, **options) -> PDELayer:
        """The paper's layer (:meth:`LayerConfig.paper`): 2 ``se2`` and 2 ``scaling`` PDEs,
        linear ``F``, linear reduction, the paper's absolute ratio regularisation."""
        return cls.preset("paper", **options)

    @classmethod
    def preset(cls, name: str, **options) -> PDELayer:
        """The layer preset ``name`` (:data:`LAYER_PRESETS`: ``"paper"``, ``"se2_sim2"``),
        ``options`` overriding fields of its :class:`LayerConfig`."""
        return cls.from_config(LayerConfig.preset(name, **options))

    def extra_repr(self) -> str:
        return f"reduction={self.reduction_kind!r}, backend={self.backend!r}, " \
               f"recompute={self.recompute}"
