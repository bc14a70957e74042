"""LiftedPDENet: invariant PDEs on position x orientation (M2), robust to rotations by
construction and able to see the relative orientation of strokes.

The path of an image ``f`` (``(B, C_in, H, W)``):

1. **Lift** to M2 (:class:`M2Lift`): the Gaussian 2-jet of ``f`` at scale ``sigma`` steered to
   each orientation ``theta_k = 2 pi k / N`` (``f, A1 f, A2 f, A11 f, A12 f, A22 f``; exact
   arithmetic on one Cartesian jet, no interpolation), batch-normalised and mixed pointwise into
   ``C_0`` channels: a field ``U (B, C_0, N, H, W)``.
2. **Stages** of explicit Euler steps ``U <- U + dt F_theta(I(U))``, ``I`` the SE(2)
   differential invariants of every channel on M2 (the left-invariant 2-jet,
   :data:`~eqpdenet.pde.m2.M2_SE2`), ``F_theta`` a sum of pointwise terms shared over ``x`` and
   ``theta`` (:class:`~eqpdenet.pde.m2_rhs.M2SystemRHS`: a network of the invariants, or the
   convection, diffusion, dilation and erosion of PDE-G-CNNs). Each step is a block with its own
   ``F``. Between stages, an anti-aliased downsampling by 2
   (:class:`~eqpdenet.models.pooling.AntiAliasedDownsample`; or a plain 2x2 average, or none)
   and a pointwise channel map; optionally (``stage_orientations``) a stage keeps fewer
   orientations than the one before, each the max over its neighbours
   (:class:`~eqpdenet.models.pooling.OrientationMaxPool`), which makes its blocks cheaper.
3. **Projection** over orientations (max, mean, or a learned-temperature soft maximum), then,
   with several scales, the max over scales; then global mean and max pooling over space, batch
   norm and a linear classifier.

Why it is invariant: the lift and the jets commute with rotations by multiples of 90 degrees
exactly (spatially ``rot90``, on the orientation axis a cyclic shift by ``N / 4``), every other
operation is pointwise in ``(x, theta)``, a downsampling that commutes with ``rot90``, or a pooling
over the whole orientation axis and the whole plane. So the logits of ``rot90(f)`` equal those of
``f`` to rounding; other angles are approximate (interpolation, the orientation grid).

The frame's border (``boundary = "background"``): every boundary rule of a finite image makes
the fields near the border depend on where the digit sits in the frame (``replicate`` repeats the
digit's own values into the outside). With ``"background"`` the network carries every field as
its deviation from the field a blank image has at the same point (a constant per channel, at
every stage: blank images lift to constants, which pointwise steps keep constant), pads the
deviations with zeros, and subtracts from every ``F`` its value on that blank field
(:class:`~eqpdenet.pde.m2_rhs.M2SystemRHS`, ``relative``): the plane outside the frame is the
blank image's own fields, at no cost. The constant itself never needs computing: the projection
and the global pooling commute with adding it, and the batch norm before the classifier removes
it.

Multi-scale (``scales = S > 1``): the network runs on ``S`` copies of the batch, copy ``s`` with
every Gaussian derivative at ``sigma 2^(s/2)`` (scale-normalised, so the same ``F`` serves every
scale), and the projected maps are maxed over the copies: a digit magnified by ``2^(1/2)`` is seen
at scale ``s + 1`` much as the original at ``s``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
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
    require_int,
    require_lists,
    require_per_layer,
    require_positive,
)
from ..errors import ConfigError, InputError
from ..geometry import halvings_stay_even
from ..kernels.m2_op import m2_kernel_reason
from ..pde.batch_norm import batch_norm_affine_of, batch_norm_at
from ..pde.integrators import EulerStep, input_checked
from ..pde.m2 import (
    M2_SE2,
    check_orientations,
    gaussian_jet,
    gaussian_radius,
    orientation_cos_sin,
    scale_levels,
    steered_jet,
    steering_matrices,
)
from ..pde.m2_rhs import M2_TERMS, M2SystemRHS, Pointwise, is_network_term
from ..pde.stencils import BOUNDARIES, MIN_GAUSSIAN_SIGMA, ConstantBuffers
from .centering import recenter
from .inputs import (
    ModelInput,
    check_model_input,
    family_options,
    require_bools,
    require_image_size,
)
from .invariant_pde import MAX_BLOCKS, run_stages, smallest_image
from .perceptron import Standardize
from .pooling import (
    MAX_LOWPASS_SIGMA,
    AntiAliasedDownsample,
    OrientationMaxPool,
    downsampled_size,
    require_lowpass_fits,
    require_lowpass_sigma,
)

__all__ = ["LiftedPDEConfig", "LiftedPDENet", "M2Lift"]

PROJECTIONS = ("max", "mean", "softmax")
#: The largest Gaussian scale, in pixels, of any scale level (``sigma 2^((scales - 1) / 2)``),
#: the low-pass's bound (:data:`~eqpdenet.models.pooling.MAX_LOWPASS_SIGMA`): a stencil of radius
#: 40,000 px, beyond any image one trains on (those up to it are refused by their size, naming
#: the images of at least the size they need). The levels grow exponentially with ``scales``;
#: without a bound, ``scales = 1000`` asked for images of a 151-digit size, ``scales = 3000`` and
#: ``sigma = 1e308`` overflowed (an unexpected OverflowError).
MAX_SCALE_SIGMA = MAX_LOWPASS_SIGMA
#: The most halvings of the maps between stages (``len(channels) - 1`` with a ``downsample``):
#: the smallest image doubles with each, 16 already need images of about 330,000 px a side.
MAX_HALVINGS = 16
#: The largest ``hidden`` (the ``network`` term's hidden width in multiples of the channels).
MAX_HIDDEN = 1024.0
#: ``lifted_pde.boundary``: the plane outside the frame holds the fields of a blank image.
BACKGROUND = "background"


@dataclass
class LiftedPDEConfig:
    """Options of :class:`LiftedPDENet`.

    Attributes:
        orientations: ``N``, a positive multiple of 4 (quarter turns exact): the lift's
            orientations, and every stage's unless ``stage_orientations`` says otherwise.
        stage_orientations: ``N_s``, the orientations of each stage (one entry per entry of
            ``channels``), each a multiple of 4 that divides the one before (``orientations``
            before the first stage); where ``N_s < N_{s-1}`` the stage starts with an
            :class:`~eqpdenet.models.pooling.OrientationMaxPool` by ``N_{s-1} / N_s`` (before
            its downsampling). A block's cost grows with ``N_s``. Empty (the default):
            ``orientations`` in every stage.
        channels: channels ``C_s`` of each stage.
        blocks: Euler steps (blocks, each with its own ``F``) of each stage.
        hidden: width of the ``network`` term's hidden layer, a multiple of the stage's channels.
        terms: the terms of ``F`` (:data:`~eqpdenet.pde.m2_rhs.M2_TERMS`): ``["network"]``, or
            ``["convection", "diffusion", "dilation", "erosion", "linear"]`` (a PDE-G-CNN), or
            any other combination.
        dt: Euler step.
        sigma: scale of the Gaussian derivatives, in pixels of each stage's own grid.
        scales: ``S`` scale levels ``sigma 2^(s/2)``, max over them after the projection.
        boundary: boundary of the jets and of the downsampling: a name of
            :data:`~eqpdenet.pde.stencils.BOUNDARIES`, or ``"background"`` (the plane outside
            the frame holds the fields of a blank image; the module doc).
        downsample: between stages: ``"blur"`` (Gaussian low-pass of std ``downsample_sigma``
            pixels, then one sample per 2x2 cell), ``"pool"`` (2x2 average) or ``"none"``.
        downsample_sigma: the low-pass's standard deviation, in pixels.
        projection: over orientations: ``"max"``, ``"mean"`` or ``"softmax"`` (``tau log mean
            exp(u / tau)`` with a learned temperature ``tau > 0`` per channel, between the two;
            ``tau`` floored at ``sqrt(finfo(float32).tiny)`` (float64's in float64), where it is
            the max, never NaN; computed in float32 for float16 and bfloat16 fields).
            The temperatures belong to the last stage's channels: the fields of earlier stages
            (:meth:`LiftedPDENet.projected_fields` with ``stages`` below the last) are projected
            by the max over orientations.
        readout: global pooling over space: ``"max"``, ``"mean"`` or ``"meanmax"``.
        normalize_invariants: batch-normalise the invariant maps before ``F`` mixes them
            (without, the ``network`` term's first layer runs fused with the invariants).
        normalize_hidden: batch-normalise the ``network`` term's hidden layer (else a bias, and
            its output layer starts at zero: every Euler step starts as the identity).
            This, ``normalize_invariants`` and ``center`` must be ``True`` or ``False`` (a
            string ``"false"`` or an integer is a ConfigError naming the field).
        backend: :data:`~eqpdenet.kernels.BACKENDS`: ``"auto"`` (the fused C++ operator on the
            CPU where it applies) or ``"reference"`` (plain PyTorch).
        margin: pixels of blank background (zeros of the raw input) added on every side of the
            image before the lift, so that the digit's neighbourhood at every stage (the
            stencils' reach grows with each downsampling) lies further from the frame's border,
            where every boundary rule departs from the plane's translation equivariance. Costs
            ``((H + 2 margin) / H)^2`` in time and memory. 0: none (the earlier behaviour).
        center: move every image by whole pixels so that its centre of mass (of the raw
            intensities above zero) sits at the frame's centre, first
            (:mod:`eqpdenet.models.centering`): whole-pixel shifts then change nothing, and the
            model cannot learn where a digit sits in its frame. No parameters, no cost to speak
            of.
    """

    orientations: int = 8
    stage_orientations: list[int] = field(default_factory=list)
    channels: list[int] = field(default_factory=lambda: [8, 16, 24])
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2])
    hidden: float = 1.0
    terms: list[str] = field(default_factory=lambda: ["network"])
    dt: float = 1.0
    sigma: float = 1.0
    scales: int = 1
    boundary: str = "replicate"
    downsample: str = "blur"
    downsample_sigma: float = 1.0
    projection: str = "max"
    readout: str = "meanmax"
    normalize_invariants: bool = False
    normalize_hidden: bool = True
    backend: str = "auto"
    margin: int = 0
    center: bool = False

    def __post_init__(self):
        require_lists(self, "lifted_pde.")
        check_orientations(self.orientations, "lifted_pde.orientations")
        require_per_layer(self, "lifted_pde.", "channels", "blocks", "stage")
        for index, (c, b) in enumerate(zip(self.channels, self.blocks, strict=True)):
            require_int(c, f"lifted_pde.channels[{index}]", 1)
            require_int(b, f"lifted_pde.blocks[{index}]", 0)  # 0: a stage without Euler steps
        require(sum(self.blocks) <= MAX_BLOCKS and len(self.channels) <= MAX_BLOCKS,
                "lifted_pde.blocks", f"{sum(self.blocks):,} blocks in {len(self.channels):,} "
                f"stages, more than the bound of {MAX_BLOCKS:,} (the default model has 6)")
        if self.stage_orientations:
            require(len(self.stage_orientations) == len(self.channels),
                    "lifted_pde.stage_orientations", f"needs one entry per stage "
                    f"({len(self.channels)}), or none, got {self.stage_orientations!r}")
            previous = self.orientations
            for index, n in enumerate(self.stage_orientations):
                name = f"lifted_pde.stage_orientations[{index}]"
                check_orientations(n, name)
                require(previous % n == 0, name, f"must divide the orientations before it "
                        f"({previous}), so that each new orientation is one of the old ones, got {n}")
                previous = n
        require_positive(self.hidden, "lifted_pde.hidden")
        require(self.hidden <= MAX_HIDDEN, "lifted_pde.hidden",
                f"must be at most {MAX_HIDDEN:,g} (the network term's hidden width in multiples "
                f"of the stage's channels; the default is 1), got {self.hidden:.3g}")
        require(len(self.terms) >= 1 and len(set(self.terms)) == len(self.terms), "lifted_pde.terms",
                f"must name each term of F once, at least one, got {self.terms!r}")
        for index, term in enumerate(self.terms):
            M2_TERMS.check(term, f"lifted_pde.terms[{index}]")
        require_positive(self.dt, "lifted_pde.dt")
        require_positive(self.sigma, "lifted_pde.sigma")
        require(self.sigma >= MIN_GAUSSIAN_SIGMA, "lifted_pde.sigma",
                f"must be at least {MIN_GAUSSIAN_SIGMA} pixels, got {self.sigma:g}")
        require(self.sigma <= MAX_SCALE_SIGMA, "lifted_pde.sigma",
                f"must be at most {MAX_SCALE_SIGMA:,g} pixels (a stencil of radius "
                f"{gaussian_radius(MAX_SCALE_SIGMA):,} px), got {self.sigma:.3g}")
        require_int(self.scales, "lifted_pde.scales", 1)
        # in logarithms: the level itself overflows a float from scales ~ 2,000
        most = 1 + math.floor(2 * (math.log2(MAX_SCALE_SIGMA) - math.log2(self.sigma)) + 1e-9)
        require(self.scales <= most, "lifted_pde.scales",
                f"must be at most {most:,} with sigma {self.sigma:g} px: the largest scale level, "
                f"sigma 2^((scales - 1) / 2) px, must be at most {MAX_SCALE_SIGMA:,g} px (a "
                f"stencil of radius {gaussian_radius(MAX_SCALE_SIGMA):,} px), got {self.scales:,}")
        if self.boundary != BACKGROUND:
            BOUNDARIES.check(self.boundary, "lifted_pde.boundary")
        require(self.downsample in ("blur", "pool", "none"), "lifted_pde.downsample",
                f"must be 'blur', 'pool' or 'none', got {self.downsample!r}")
        halvings = len(self.channels) - 1 if self.downsample != "none" else 0
        require(halvings <= MAX_HALVINGS, "lifted_pde.channels",
                f"{len(self.channels):,} stages halve the maps {halvings:,} times (downsample "
                f"{self.downsample!r}), and each halving doubles the smallest image: at most "
                f"{MAX_HALVINGS + 1} stages, or downsample 'none'")
        require_lowpass_sigma(self.downsample_sigma, "lifted_pde.downsample_sigma")
        require(self.projection in PROJECTIONS, "lifted_pde.projection",
                f"must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        require(self.readout in ("max", "mean", "meanmax"), "lifted_pde.readout",
                f"must be 'max', 'mean' or 'meanmax', got {self.readout!r}")
        kernels.BACKENDS.check(self.backend, "lifted_pde.backend")
        require_int(self.margin, "lifted_pde.margin", 0)
        # every field declared bool (center, normalize_invariants, normalize_hidden): a truth
        # test took the string "false" or 1 as true and built a batch norm no one asked for
        require_bools(self, "lifted_pde.")

    @property
    def padding(self) -> str:
        """The boundary rule of every jet and downsampling: ``zeros`` (of the deviations from a
        blank image's fields) for ``"background"``, else ``boundary``."""
        return "zeros" if self.boundary == BACKGROUND else self.boundary

    def orientations_of_stages(self) -> list[int]:
        """``N_s`` of each stage (``stage_orientations``, or ``orientations`` everywhere)."""
        return list(self.stage_orientations) or [self.orientations] * len(self.channels)

    def stage_sizes(self, image_size: int) -> list[int]:
        """The map size of each stage for square images of ``image_size`` pixels (the margin
        included)."""
        sizes = [image_size + 2 * self.margin]
        for _ in self.channels[1:]:
            size = sizes[-1]
            sizes.append({"blur": downsampled_size(size), "pool": size // 2, "none": size}[
                self.downsample])
        return sizes

    def radius(self) -> int:
        """Half-width in pixels of the widest Gaussian stencil (the largest scale level), in
        closed form (:func:`~eqpdenet.pde.m2.gaussian_radius`)."""
        return gaussian_radius(scale_levels(self.sigma, self.scales)[-1])

    def fused_kernel_reason(self, orientations: int) -> str | None:
        """Why the fused M2 kernels cannot run a stage on ``orientations`` orientations of this
        configuration (on any device), or None: :func:`~eqpdenet.kernels.m2_op.m2_kernel_reason`,
        the rule the blocks' dispatch applies (the backend and the device aside)."""
        return m2_kernel_reason(orientations, self.padding, self.radius())

    def min_image_size(self) -> int:
        """The smallest image side whose every stage has maps larger than the stencils' radius
        (the margin counted): from the last stage back through the downsamplings, a bisection
        per stage (:func:`~eqpdenet.models.invariant_pde.smallest_image`, the same halvings as
        :meth:`stage_sizes`), so that a huge ``sigma`` is refused at once rather than after
        trying every size up to it."""
        return max(1, smallest_image(self, self.radius() + 1) - 2 * self.margin)

    def check_downsampling(self, image_size: int) -> None:
        """A ConfigError naming ``lifted_pde.downsample_sigma`` where the ``blur`` low-pass
        reaches as far as the map it filters, for images of ``image_size`` pixels: such a
        low-pass only averages the map out (its cost grows with ``sigma``: minutes and then out
        of memory from about 1e6), and ``reflect`` or ``circular`` padding would not be defined
        (:class:`~eqpdenet.models.pooling.AntiAliasedDownsample`)."""
        if self.downsample == "blur":
            require_lowpass_fits(self.downsample_sigma, self.stage_sizes(image_size),
                                 "lifted_pde.downsample_sigma", image_size)


class M2Lift(ConstantBuffers):
    """Images ``(B, C_in, H, W)`` -> fields ``(B, C, N, H, W)``: the steered Gaussian 2-jet of
    each input channel at each orientation (6 ``C_in`` maps), batch-normalised, mixed pointwise.

    With ``scales = S`` the output holds ``S`` copies of the batch (``(S B, C, N, H, W)``), copy
    ``s`` lifted at ``sigma 2^(s/2)``. With ``relative``, the output minus the lift of a blank
    image (with the same batch statistics): the deviation that ``boundary = "background"``
    carries, for images given as their deviation from the blank one.

    The map is ``U_k(p) = s2 (W (s1 (S_k J(p)) + b1)) + b2`` at every pixel ``p``, ``J`` the
    ``6 C_in`` Cartesian jet, ``S_k`` its steering to ``theta_k``, ``(s1, b1)`` and ``(s2, b2)``
    the two batch norms as affine maps: linear in ``J`` per orientation. ``backend = "auto"``
    computes it so: the batch norms' statistics over ``(B, N, H, W)`` from the mean and
    covariance of ``J`` over ``(B, H, W)`` (exact: the steered jet and the mixed maps are linear
    in ``J``), then one ``(C N) x 6 C_in`` matrix per image, without writing the ``6 C_in N``
    steered maps; ``"reference"`` composes the modules as written above. The two agree to
    rounding (values, gradients, running statistics; tests/models/test_lifted.py).
    """

    def __init__(self, in_channels: int, channels: int, orientations: int, sigma: float,
                 boundary: str, scales: int = 1, relative: bool = False, backend: str = "auto"):
        super().__init__()
        self.relative = bool(relative)
        self.orientations = check_orientations(orientations)
        # checked here, as the other pieces check theirs (a ConfigError at the first call before)
        require_positive(sigma, "sigma")
        require(sigma >= MIN_GAUSSIAN_SIGMA, "sigma",
                f"must be at least {MIN_GAUSSIAN_SIGMA} pixels, got {sigma:g}")
        self.sigmas = scale_levels(sigma, scales)
        require(self.sigmas[-1] <= MAX_SCALE_SIGMA, "sigma",
                f"the largest scale level, sigma 2^((scales - 1) / 2) = {self.sigmas[-1]:.3g} px, "
                f"must be at most {MAX_SCALE_SIGMA:,g} px")
        BOUNDARIES.check(boundary, "boundary")
        self.boundary = boundary
        kernels.BACKENDS.check(backend, "backend")
        self.backend = backend
        features = 6 * require_int(in_channels, "in_channels", 1)
        self.norm = nn.BatchNorm1d(features)
        self.mix = Pointwise(features, require_int(channels, "channels", 1), bias=False)
        self.out_norm = nn.BatchNorm1d(channels)
        self.register_buffer("channel_identity",
                             self._constant("channel_identity", torch.get_default_dtype(), None),
                             persistent=False)

    def _constant(self, name: str, dtype: torch.dtype, device) -> Tensor | None:
        # at construction, and again after a move (ConstantBuffers: to_empty leaves it
        # uninitialised)
        if name != "channel_identity":
            return None
        return torch.eye(self.in_channels, dtype=dtype, device=device)

    _input_checked = False  # while compiling only: see eqpdenet.checks.input_checked

    def enter(self, f: Tensor) -> Tensor:
        """The entry checks: images this lift takes, ``(B, C_in, H, W)`` on its device, with
        finite values and at least 1x1 pixels, returned in its dtype (lower precision converted
        up, higher an error: :func:`~eqpdenet.checks.match_dtype`): an
        :class:`~eqpdenet.errors.InputError` naming the cause (else a shape or dtype error from
        deep inside, on either backend), before any batch statistic is updated (one NaN pixel
        made every running statistic NaN, and every later clean image an error). Skipped inside
        :class:`~eqpdenet.pde.integrators.input_checked` (the model checked its images)."""
        f = check_images(f, "M2Lift's images", channels=self.in_channels)
        height, width = f.shape[-2:]
        if not height or not width:  # as the other pieces; gaussian_jet refuses them too
            raise InputError(f"M2Lift needs images of at least 1x1 pixels, got {height}x{width} "
                             f"(shape {tuple(f.shape)})")
        check_device(f, self, "M2Lift's images")
        check_values(f, "M2Lift's images")
        return match_dtype(f, module_dtype(self), "M2Lift's images")

    @property
    def in_channels(self) -> int:
        return self.norm.num_features // 6

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, channels={self.mix.weight.shape[0]}, "
                f"orientations={self.orientations}, sigma={self.sigmas[0]}, "
                f"boundary={self.boundary!r}"
                + (f", scales={len(self.sigmas)}" if len(self.sigmas) > 1 else "")
                + (", relative=True" if self.relative else "")
                + f", backend={self.backend!r}")

    def forward(self, f: Tensor) -> Tensor:
        """Lower precision is computed in the module's dtype and returned in the input's."""
        x = f if is_input_checked(self) else self.enter(f)
        # The reference also where a hook is registered: the lift by moments reads mix.weight
        # and the batch norms without calling them.
        if self.backend == "reference" or hooks_registered(self.modules()):
            out = self._composed(x)
        else:
            out = self._by_moments(x)
        return out if x is f else out.to(f.dtype)

    def _by_moments(self, f: Tensor) -> Tensor:
        """The lift by the moments of the Cartesian jet (``backend = "auto"``; class doc)."""
        n = self.orientations
        cos, sin = orientation_cos_sin(n, f.dtype, f.device)
        jets = [gaussian_jet(f, sigma, self.boundary) for sigma in self.sigmas]
        jet = (torch.cat(jets, 0) if len(jets) > 1 else jets[0]).flatten(1, 2)
        batch, features, height, width = jet.shape               # (S B, 6 C_in, H, W)
        jet = jet.flatten(2)
        # Mean and covariance of the steered features over (B, N, H, W): those of each
        # orientation's S_k J, averaged over the orientations (the law of total covariance).
        # Centred before the product, so that a large mean costs no precision.
        mean = jet.mean(dim=(0, 2))
        centred = jet - mean[:, None]
        # bmm rather than einsum or matmul: these fold the batch into one product through
        # copies, about 1.6 (here) and 5.8 (below) times slower forward and backward on the CPU
        covariance = torch.bmm(centred, centred.transpose(1, 2)).sum(0) / (batch * jet.shape[2])
        # The identity is a buffer: torch.eye in the graph is exported to ONNX as
        # Range/Cast/Equal on uint8, which onnxruntime 1.18 cannot run.
        steering = torch.kron(self.channel_identity.to(f.dtype)[None],
                              steering_matrices(cos, sin))           # (N, 6 C_in, 6 C_in)
        means = steering @ mean                                      # (N, 6 C_in)
        steered_mean = means.mean(dim=0)
        spread = means - steered_mean
        steered_covariance = ((steering @ covariance @ steering.transpose(1, 2)).mean(dim=0)
                              + spread.T @ spread / n)
        count = batch * n * jet.shape[2]
        scale, shift = batch_norm_affine_of(self.norm, steered_mean,
                                            torch.diagonal(steered_covariance), count)
        mix = self.mix.weight * scale                                # (C, 6 C_in)
        mixed_shift = self.mix.weight @ shift                        # the mix of a zero jet
        mixed_mean = mix @ steered_mean + mixed_shift
        mixed_var = torch.einsum("cd,de,ce->c", mix, steered_covariance, mix)
        out_scale, out_shift = batch_norm_affine_of(self.out_norm, mixed_mean, mixed_var, count)
        maps = (out_scale[:, None] * mix) @ steering                 # (N, C, 6 C_in)
        offset = out_scale * mixed_shift + out_shift                 # the blank image's lift
        if self.relative:
            # The offset cancels; kept in the graph, so that the biases' gradients are zero
            # rather than absent, as in the composed modules.
            maps = maps + (offset - offset)[None, :, None]
        channels = maps.shape[1]
        maps = maps.transpose(0, 1).reshape(channels * n, features)
        out = torch.bmm(maps.expand(batch, -1, -1), jet)                # (S B, C N, H W)
        if not self.relative:
            out = out + offset.repeat_interleave(n)[:, None]
        return out.view(batch, channels, n, height, width)

    def _composed(self, f: Tensor) -> Tensor:
        """The lift as the composition of its modules (``backend = "reference"``)."""
        n = self.orientations
        cos, sin = orientation_cos_sin(n, f.dtype, f.device)
        copies = [steered_jet(gaussian_jet(f, sigma, self.boundary).unsqueeze(-4), cos, sin)
                  for sigma in self.sigmas]          # each (B, C_in, N, 6, H, W)
        x = torch.cat(copies, 0) if len(copies) > 1 else copies[0]
        batch, _, _, _, height, width = x.shape
        x = x.transpose(2, 3).flatten(3).flatten(1, 2)        # (B, 6 C_in, N H W)
        if self.relative:
            # Minus the lift of a blank image (a zero jet), with this batch's statistics
            # (batch_norm_at). The modules are called, so that their hooks fire. (The out norm's
            # shift cancels; it stays in the graph, so that its gradient is zero rather than
            # absent, as without relative.)
            mixed = self.mix(self.norm(x))
            zero = batch_norm_at(self.norm, x, x.new_zeros(x.shape[1]))
            blank = batch_norm_at(self.out_norm, mixed, self.mix(zero[None, :, None])[0, :, 0])
            out = self.out_norm(mixed) - blank[:, None]
        else:
            out = self.out_norm(self.mix(self.norm(x)))
        return out.unflatten(2, (n, height, width))


class _OrientationProjection(nn.Module):
    """``(B, C, N, H, W) -> (B, C, H, W)``: max, mean or soft maximum over orientations; the
    soft maximum has a temperature per channel, so it takes fields of ``channels`` channels
    only, ``tau = softplus(raw_temperature)`` floored at ``sqrt(finfo(dtype).tiny)`` (about
    1e-19 in float32), so that a learned or loaded temperature that underflows gives the
    maximum, never NaN (float16 and bfloat16 fields: computed in float32, returned in theirs)."""

    def __init__(self, kind: str, channels: int):
        super().__init__()
        self.kind = kind
        if kind == "softmax":  # tau = softplus(raw), initially 1
            self.raw_temperature = nn.Parameter(torch.full((channels,), 0.5413))

    @property
    def learned(self) -> bool:
        """Whether it has parameters (the soft maximum's temperatures, one per channel)."""
        return self.kind == "softmax"

    def forward(self, u: Tensor) -> Tensor:
        if self.kind == "max":
            return u.amax(dim=2)
        if self.kind == "mean":
            return u.mean(dim=2)
        # Floored at sqrt(tiny): softplus is exactly 0 below raw = -104 in float32 (-745 in
        # float64), and u / 0 made the logits NaN with no word (round 16). At the floor the soft
        # maximum is the maximum to rounding (logsumexp shifts by it), and u / tau stays finite
        # for |u| < 1 / sqrt(tiny); above it nothing changes, bit for bit. float16 and bfloat16
        # compute it in float32: float16's sqrt(tiny), 8e-3, is an ordinary temperature (a floor
        # there changed learned ones), and u / tau overflows float16 long before.
        dtype = u.dtype
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        tau = F.softplus(self.raw_temperature.to(work))
        tau = tau.clamp_min(torch.finfo(work).tiny ** 0.5).view(1, -1, 1, 1, 1)
        return (tau * (torch.logsumexp(u.to(work) / tau, dim=2, keepdim=True)
                       - math.log(u.shape[2]))).squeeze(2).to(dtype)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class LiftedPDENet(nn.Module):
    """Invariant PDEs on M2 (see the module doc).

    ``forward``: images ``(B, in_channels, image_size, image_size)`` -> logits ``(B, classes)``,
    the images checked first (:func:`~eqpdenet.models.inputs.check_model_input`) and every
    block's state after it (a :class:`~eqpdenet.errors.NonFiniteStateError` names the first
    block whose state was not finite, never NaN logits; one host read per call, as
    :class:`~eqpdenet.models.invariant_pde.InvariantPDENet`); :meth:`features` the pooled,
    invariant features before the classifier, :meth:`fields` the fields on M2 at the end of the
    last stage.

    ``lifted_pde``: a :class:`LiftedPDEConfig`, or a mapping of its fields (an unknown field is
    a ConfigError naming it).

    Example:
        >>> config = LiftedPDEConfig(channels=[4, 6], blocks=[1, 1])
        >>> net = LiftedPDENet(config)
        >>> net(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, lifted_pde: LiftedPDEConfig | None = None, image_size: int = 28,
                 in_channels: int = 1, classes: int = 10, input_mean: float = 0.0,
                 input_std: float = 1.0):
        super().__init__()
        self.config = config = family_options(lifted_pde, LiftedPDEConfig, "lifted_pde")
        radius = config.radius()
        self.min_image_size = config.min_image_size()
        self.image_size = require_image_size(
            image_size, self.min_image_size,
            f"every stage's maps larger than the radius {radius} of its Gaussian stencils, "
            f"sigma {config.sigma:g} px, {config.scales} scale(s), {len(config.channels)} stages")
        config.check_downsampling(self.image_size)
        self.in_channels = require_int(in_channels, "in_channels", 1)
        self.standardize = Standardize(input_mean, input_std)
        background = config.boundary == BACKGROUND
        self.lift = M2Lift(in_channels, config.channels[0], config.orientations, config.sigma,
                           config.padding, config.scales, relative=background,
                           backend=config.backend)
        stages = []
        counts = [config.orientations, *config.orientations_of_stages()]
        for index, (channels, blocks) in enumerate(zip(config.channels, config.blocks,
                                                       strict=True)):
            modules: list[nn.Module] = []
            if counts[index + 1] < counts[index]:
                # Before the downsampling: its low-pass then also smooths what the max adds.
                modules.append(OrientationMaxPool(counts[index] // counts[index + 1]))
            if index:
                # Downsampling first: both are linear and commute (the channel map is pointwise,
                # the downsampling the same on every map), and the map then runs on a quarter of
                # the points.
                if config.downsample == "blur":
                    modules.append(AntiAliasedDownsample(config.downsample_sigma, config.padding))
                elif config.downsample == "pool":
                    modules.append(_AveragePool2x2())
                modules.append(_ChannelMap(config.channels[index - 1], channels))
            for block in range(blocks):
                rhs = M2SystemRHS(channels, config.terms, max(1, round(config.hidden * channels)),
                                  sigma=config.sigma, boundary=config.padding,
                                  relative=background,
                                  scales=config.scales,
                                  normalize_invariants=config.normalize_invariants,
                                  normalize_hidden=config.normalize_hidden,
                                  backend=config.backend, orientations=counts[index + 1])
                modules.append(EulerStep(rhs, config.dt, name=f"stage{index}.block{block}"))
            stages.append(nn.Sequential(*modules))
        self.stages = nn.Sequential(*stages)
        self.projection = _OrientationProjection(config.projection, config.channels[-1])
        width = config.channels[-1] * (2 if config.readout == "meanmax" else 1)
        self.norm = nn.BatchNorm1d(width)
        self.classifier = nn.Linear(width, require_int(classes, "classes", 1))
        self.register_load_state_dict_pre_hook(_channel_maps_moved)

    def backward_bytes(self, batch_size: int, element_size: int = 4) -> int:
        """An estimate of the bytes one training step on ``batch_size`` images keeps for its
        backward pass (what the memory preflight of :mod:`eqpdenet.app.preflight` needs).

        In units of one stage's field, ``batch x scales x C_s x N x h_s^2 x element_size``,
        every Euler block keeps about ``1.3 + 1.2 hidden/C_s`` with the fused kernel (its input,
        the hidden layer before and after batch normalisation); about ``18 + 3 hidden/C_s`` (+10
        with ``normalize_invariants``, +6 with other ``terms`` than ``network``) where the
        invariants are written out (the reference, other ``terms``), and on the reference the
        jet's padded maps besides, ``((h_s + 2 R)^2 - h_s^2) / h_s^2 + 6 R / h_s`` (``R`` the
        widest stencil's radius); whether the fused kernel runs is decided by the rule the
        blocks' dispatch applies (:meth:`LiftedPDEConfig.fused_kernel_reason`: orientations,
        boundary, at most 63 taps); the lift keeps its
        Cartesian jet (``6 C_in`` maps), or with ``backend = "reference"`` about its steered jet
        twice and three fields; each channel map between stages its input, each orientation
        pooling 1.5 times its input, the projection 1.125 times the last field. Measured with
        ``torch.autograd.graph.saved_tensors_hooks``;
        tests/models/test_memory_estimates.py holds the estimate within 1 to 1.6 times the
        measurement. The fused factor assumes the C++ or Triton kernel runs: where it cannot,
        training falls back to the reference (with a warning) and needs up to 20 times more.
        """
        config = self.config
        sizes = config.stage_sizes(self.image_size)
        per_image = batch_size * config.scales * element_size
        counts = config.orientations_of_stages()
        backend = kernels.resolve_backend(config.backend) != "reference"
        network = len(config.terms) == 1 and is_network_term(config.terms[0])
        radius = config.radius()
        if config.backend == "reference":  # the steered jet and three fields, written out
            total = (per_image * config.orientations * sizes[0] ** 2
                     * (12 * self.in_channels + 3 * config.channels[0]))
        else:  # the Cartesian jet, 6 C_in maps (M2Lift: the lift by moments)
            total = per_image * sizes[0] ** 2 * 7 * self.in_channels
        before = [(config.channels[0], config.orientations, sizes[0]),
                  *zip(config.channels, counts, sizes, strict=True)]
        for index, n in enumerate(counts):
            previous, previous_n, previous_size = before[index]
            if n < previous_n:  # the orientation pooling's input and indices
                total += 1.5 * per_image * previous * previous_n * previous_size**2
            if index:  # the channel map's input, after the downsampling
                total += per_image * previous * n * sizes[index] ** 2
        total += 1.125 * per_image * config.channels[-1] * counts[-1] * sizes[-1] ** 2  # projection
        for channels, blocks, size, n in zip(config.channels, config.blocks, sizes, counts,
                                             strict=True):
            per_point = per_image * n
            hidden = (max(1, round(config.hidden * channels)) / channels
                      if config.normalize_hidden else 0.0)
            # what the blocks' dispatch decides (M2SystemRHS.fused: m2_unsupported_reason), by
            # the same rule: the orientations, the boundary, the widest stencil's taps
            kernel = backend and config.fused_kernel_reason(n) is None
            if kernel and network and not config.normalize_invariants:
                factor = 1.3 + 1.2 * hidden
            elif kernel and network:  # the invariants written out for their batch norm, then fused
                factor = 24 + 2 * hidden
            else:  # the invariants written out (by the kernel, else by the reference)
                factor = 18 + 3 * hidden + (10 if config.normalize_invariants else 0) \
                    + (0 if network else 6)
                if not kernel:
                    # the reference's jet keeps its padded input and the padded x pass (3 maps):
                    # 7 more fields with sigma 4 at 28 px, 12 at radius 32 on 36 px
                    factor += ((size + 2 * radius) ** 2 - size**2) / size**2 + 6 * radius / size
            total += blocks * factor * per_point * channels * size**2
        return int(total)

    @property
    def invariant_set(self):
        return M2_SE2

    @property
    def quarter_turn_invariant(self) -> bool:
        """Whether the logits are invariant under quarter turns of the input (to rounding):
        where every term of ``F`` is known to commute with them (the built-in terms; a term of
        one's own only where it declares ``quarter_turn_equivariant = True``:
        :func:`~eqpdenet.pde.m2_rhs.commutes_with_quarter_turns`), N being a multiple of 4, but
        where a plain 2x2 average between stages meets a map of odd size (the anti-aliased
        downsampling is exact on every size)."""
        poolings = len(self.config.channels) - 1 if self.config.downsample == "pool" else 0
        return halvings_stay_even(self.image_size + 2 * self.config.margin, poolings) and all(
            rhs.quarter_turn_equivariant for rhs in self.modules()
            if isinstance(rhs, M2SystemRHS))

    def _lifted(self, images: Tensor, entered: ModelInput | None = None) -> Tensor:
        """The images (checked here, unless ``entered`` holds them checked), centred
        (``center``), framed by the margin of blank background, lifted to M2."""
        x = (entered or check_model_input(self, images)).images
        if self.config.center:
            x = recenter(x)
        if self.config.margin:
            # Zeros of the raw input are the blank background; padding before standardising
            # makes the margin look like the rest of the background to every later layer.
            x = F.pad(x, (self.config.margin,) * 4)
        if self.config.boundary == BACKGROUND:  # the deviation from a blank (zero) image
            x = self.standardize(x) - self.standardize(torch.zeros_like(x[:1]))
        else:
            x = self.standardize(x)
        with input_checked(self.lift):  # checked on entry
            return self.lift(x)

    def _staged(self, images: Tensor, count: int) -> Tensor:
        """The lift and the first ``count`` stages of the checked images; every block's state
        checked for NaN and inf on the device, read once at the end (the first bad block raises
        :class:`~eqpdenet.errors.NonFiniteStateError`, explained by the input's range)."""
        entered = check_model_input(self, images)
        u = self._lifted(images, entered)
        # all stages: the container itself, so that a hook on it fires (a slice is another one)
        stages = self.stages if count == len(self.stages) else self.stages[:count]
        return run_stages(stages, u, entered, self.standardize, model=self)

    def fields(self, images: Tensor) -> Tensor:
        """The fields ``(S B, C, N, h, w)`` after the last stage (``S`` scale copies), in the
        images' dtype: images of lower precision than the model (float16, bfloat16) are
        computed in the model's dtype, as :meth:`forward` computes them, then converted."""
        return self._staged(images, len(self.stages)).to(images.dtype)

    def projected_fields(self, images: Tensor, stages: int | None = None) -> Tensor:
        """The fields after the lift and the first ``stages`` stages (default all), projected
        over orientations and maxed over scales: planar maps ``(B, C, h, w)`` that rotate with
        the image (exactly for quarter turns), what ``eqpdenet equivariance`` measures; in the
        images' dtype (computed as :meth:`fields`).

        The fields of the last stage (``stages`` None or ``len(self.stages)``) are projected as
        :meth:`features` projects them (``projection``). Those of an earlier stage (0: the
        lift) are projected by ``projection`` where it has no parameters (``max``, ``mean``),
        and by the max over orientations where it is ``softmax``: its learned temperatures are
        one per channel of the last stage, and no other stage has any (so ``eqpdenet
        equivariance`` measures the lift and the first stage of a ``softmax`` model through the
        max)."""
        return self._projected(images, stages).to(images.dtype)

    def _projected(self, images: Tensor, stages: int | None = None) -> Tensor:
        """:meth:`projected_fields` in the model's dtype: what :meth:`features` and
        :meth:`forward` pool, normalise and classify in it, as every family does."""
        count = len(self.stages) if stages is None else stages
        if not (isinstance(count, numbers.Integral) and not isinstance(count, bool)
                and 0 <= count <= len(self.stages)):
            raise ConfigError(f"invalid config: stages must be in 0..{len(self.stages)} (an "
                              f"integer, or None for all), got {stages!r}")
        fields = self._staged(images, count)
        if count == len(self.stages) or not self.projection.learned:
            u = self.projection(fields)
        else:
            # The soft maximum's temperatures are the last stage's (one per channel of it):
            # applied here they were another stage's, or a size mismatch where the counts differ.
            u = fields.amax(dim=2)
        if self.config.scales > 1:                               # (S B, C, h, w) -> (B, C, h, w)
            u = u.unflatten(0, (self.config.scales, -1)).amax(dim=0)
        return u

    def features(self, images: Tensor) -> Tensor:
        """Pooled features ``(B, F)``: invariant under quarter turns (to rounding); in the
        images' dtype (computed as :meth:`fields`)."""
        return self._features(images).to(images.dtype)

    def _features(self, images: Tensor) -> Tensor:
        u = self._projected(images)                             # (B, C, h, w)
        pooled = {"max": lambda: u.amax(dim=(-2, -1)), "mean": lambda: u.mean(dim=(-2, -1)),
                  "meanmax": lambda: torch.cat([u.mean(dim=(-2, -1)), u.amax(dim=(-2, -1))], 1)}
        return self.norm(pooled[self.config.readout]())

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self._features(images)).to(images.dtype)


def refuse_unstable_steps(model: nn.Module) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` where an Euler step on M2 of ``model`` is unstable
    under explicit Euler at the coefficients it holds now
    (:meth:`~eqpdenet.pde.m2_rhs.M2SystemRHS.euler_stability`: the ``diffusion`` term along
    ``theta`` at many orientations, ``D3 dt > (2 pi / N)^2 / 2``; the diffusion term alone
    decides where the ``network`` term, not linearised, is there too). Such a step amplifies the
    rounding of every pass from its first, finite for many steps (so no
    :class:`~eqpdenet.errors.NonFiniteStateError`) and silently wrong. Called by the preflight
    (a model on the meta device: its initial coefficients, before any run of a sweep trains) and
    where training starts (:func:`~eqpdenet.app.training.train_model`), not when a model is
    built: a checkpoint whose trained coefficients are stable is built with the initial ones
    first, and loads."""
    for step in model.modules():
        if not (isinstance(step, EulerStep) and isinstance(step.rhs, M2SystemRHS)):
            continue
        report = step.stability()
        if report["stable"] is False or report.get("diffusion_stable") is False:
            raise ConfigError(f"invalid config: lifted_pde.dt / lifted_pde.orientations: "
                              f"{step.name} would be unstable from its first step "
                              f"({report['reason'] or 'its linearised step grows'}); lower "
                              f"dt, or use fewer orientations")


def _channel_maps_moved(module, state_dict, prefix, *args) -> None:
    """Load state dicts saved while each stage's channel map came before its downsampling
    (``stages.<s>.0.map.weight``, now ``stages.<s>.1.map.weight``; the downsampling has no
    state). Unambiguous: in the current order ``stages.<s>.0`` is the downsampling, which has no
    ``map``."""
    if module.config.downsample == "none":
        return
    for stage in range(1, len(module.config.channels)):
        old, new = f"{prefix}stages.{stage}.0.map.weight", f"{prefix}stages.{stage}.1.map.weight"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)


class _ChannelMap(nn.Module):
    """A pointwise linear map of the channels of a field ``(B, C, N, H, W)``, no bias."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.map = Pointwise(in_channels, out_channels, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        return self.map(u.flatten(2)).unflatten(2, u.shape[2:])


class _AveragePool2x2(nn.Module):
    """2x2 average pooling of every map of a field ``(..., H, W)`` (drops an odd last row)."""

    def forward(self, u: Tensor) -> Tensor:
        *lead, height, width = u.shape
        return F.avg_pool2d(u.reshape(-1, 1, height, width), 2).reshape(
            *lead, height // 2, width // 2)
