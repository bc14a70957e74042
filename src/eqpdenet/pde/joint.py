"""Joint differential invariants of several channels ``u1 ... uC``, vectorised in torch.

A group acting on the plane acts on all channels at once: ``(g u)^c(p) = u^c(g^-1 p)``. Its
*joint* invariants are functions of the 2-jets of all channels that do not change under it;
they see how channels relate (the angle between ``∇u1`` and ``∇u2``), which the invariants of
each channel alone do not. :mod:`eqpdenet.pde.symbolic` finds them from the group's generators
and checks their number against the theory (``find_invariants(group, order, channels=C)``:
5 and 11 for SE(2) and two channels at orders 1 and 2, 4 and 10 for SIM(2));
:class:`JointInvariants` computes a readable generating family of them for any ``C``.

The SE(2) family (``group="se2"``), with ``∇u^i`` the gradient and ``H^i`` the Hessian of
channel ``i``, all polynomials in the jet:

==================  ============================  ==========================  ======
kind                map                           channels                    weight
==================  ============================  ==========================  ======
``u``               ``u^i``                       every ``i``                 0
``laplacian``       ``Δu^i = tr H^i``             every ``i``                 -2
``grad_dot``        ``∇u^i · ∇u^j``               ``i <= j``                  -2
``grad_det``        ``det(∇u^i, ∇u^j)``           ``i < j``                   -2
``hess_dot``        ``H^i : H^j = tr(H^i H^j)``   ``i <= j``                  -4
``grad_hess_grad``  ``∇u^iᵀ H^k ∇u^j``            ``i <= j``, every ``k``     -4
==================  ============================  ==========================  ======

For ``C = 1`` these are the paper's eq. (4) (``u, Δu, |∇u|², |H|², ∇uᵀH∇u``). For ``C = 2`` they
are 17 maps of Jacobian rank 11, the number of independent joint invariants (the tests check
the rank and that every map satisfies the infinitesimal criterion, symbolically). ``det`` is
invariant under rotations but changes sign under reflections: the family is SE(2)-, not
E(2)-invariant.

The *weight* says how a map scales under ``p -> λ p``: ``u_J -> λ^{-|J|} u_J``. The SIM(2) family
(``group="sim2"``) divides every map of weight ``w`` by a positive quantity of the same weight,
built from all channels of the family,

    ``G = Σ_c |∇u^c|²`` (weight -2),      ``N = G² + Σ_c |H^c|²`` (weight -4),

weight -2 maps through :func:`~eqpdenet.pde.invariants.safe_ratio` with the scale-covariant
regulariser (``T / G ≈ safe_ratio(T, G, ratio_eps, reference_sq=N') = T G / (G² + eps² N')``,
``ratio_eps`` dimensionless), weight -4 maps by ``T / N'`` (``|T| <= N``: bounded by 1, 0 where
the jet vanishes), with ``N' = N + jet_floor²``. ``u^i`` stays. ``|∇u^C|² / G``, which is 1 minus
the other ``|∇u^i|² / G``, is left out.

``jet_floor`` (units of a second derivative of ``u``: ``u`` per pixel², default
:data:`DEFAULT_JET_FLOOR`) is where a region counts as flat. A function that does not change under
``p -> λ p`` and is not constant cannot be continuous where the jet vanishes: with
``jet_floor = 0`` (``N`` then guarded by the smallest normal number only) ``T / N`` of rounding
noise is O(1), so a flat background's maps, and the model's logits, are set by rounding (a change
of the input by 1e-15 moved a SIM(2) model's logits by 180 %; a GPU gives other numbers than the
CPU; ``benchmarks/rounding_sensitivity.py``, docs/choices.md). With ``jet_floor > 0`` the maps are
smooth: ``T / N'`` is O(jet² / jet_floor²) where the jet is far below the floor, and exactly scale
invariant only where ``N >> jet_floor²``, i.e. for every structure well above the floor.

Cost
----
All pairs and triples cost ``O(C³)``: ``K(C) = (C³ + 4 C² + 5 C) / 2`` maps for SE(2) (5, 17, 39,
195, 1182 for C = 1, 2, 3, 6, 12). ``mixtures=k`` keeps it affordable: the per-channel family of
every channel (5 maps each for SE(2), 4 for SIM(2)), plus the joint family of ``k`` learned linear
combinations ``v^m = Σ_c M_mc u^c`` of the channels (a 1x1 mixing of the jet: it commutes with
derivatives and with the group, so invariance is kept), without their maps that are linear in
the jet (``v^m``, ``Δv^m``: linear combinations of the per-channel ``u^c``, ``Δu^c``). Maps and
arithmetic operations per pixel (multiplications and additions, counted from the formulas the
forward pass evaluates, :meth:`JointInvariants.cost`):

================  ==================================  =============================================
form              maps K                              operations per pixel
================  ==================================  =============================================
se2, all pairs    ``(C³ + 4C² + 5C) / 2``             ``1.5 C³ + 13.5 C² + 4 C``
se2, k mixtures   ``5 C + (k³ + 4k² + k) / 2``        ``(19 + 10 k) C + 1.5 k³ + 13.5 k² - 2 k``
sim2, all pairs   ``(C³ + 4C² + 5C) / 2 - 1``         ``2 C³ + 20.5 C² + 21.5 C - 8``
sim2, k mixtures  ``4 C + (k³ + 4k² + k) / 2 - 1``    ``(36 + 10 k) C + 2 k³ + 20.5 k² + 9.5 k - 8``
================  ==================================  =============================================

For C = 20 channels: all pairs 4,850 maps and 17,480 operations per pixel (se2; sim2 4,849 and
24,622); 4 mixtures 166 maps and 1,484 operations (sim2 145 and 2,006). The forward pass keeps
about K maps per pixel of the batch (and a few times that for the backward pass); measured
time follows K more closely than the operations (``benchmarks/bench_joint.py``, docs/symbolic.md).
The mixtures pay off once all pairs cost more: for ``k = 4`` from ``C = 5`` on (91 maps against
125); with ``k >= C`` they never do.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor, nn

from ..checks import require, require_int, require_nonnegative, require_positive
from ..errors import InputError, InputTypeError
from ..registry import Registry
from .invariants import DEFAULT_RATIO_EPS, safe_ratio
from .stencils import ConstantBuffers

__all__ = ["DEFAULT_JET_FLOOR", "JOINT_GROUPS", "MAX_JOINT_MAPS", "JointBlock", "JointInvariants",
           "JointTerm", "check_channel_jet", "joint_map_count", "joint_terms", "per_channel_terms",
           "require_joint_size"]

#: Default of ``jet_floor`` (module doc): the size of a second derivative, in ``u`` per pixel²,
#: below which the SIM(2) maps treat the jet as flat. Chosen on validation (docs/choices.md).
DEFAULT_JET_FLOOR = 0.1

#: Kinds of :class:`JointTerm`, in output order, with their weight under ``p -> λ p``, whether
#: they are linear in the jet, and the arithmetic operations per pixel of one map.
_KINDS = {
    "u": (0, True, 0),
    "laplacian": (-2, True, 1),
    "grad_dot": (-2, False, 3),
    "grad_det": (-2, False, 3),
    "hess_dot": (-4, False, 6),
    "grad_hess_grad": (-4, False, 3),  # plus 6 per (k, j) pair for H^k ∇u^j, counted once
}


@dataclasses.dataclass(frozen=True)
class JointTerm:
    """One SE(2)-invariant polynomial of the channels' 2-jets: a kind (module table) and its
    channel indices, from 0: ``(i,)``, ``(i, j)``, or ``(i, k, j)`` for ``∇u^iᵀ H^k ∇u^j``."""

    kind: str
    channels: tuple[int, ...]

    @property
    def weight(self) -> int:
        """Scaling weight: the map is multiplied by ``λ^weight`` when ``p -> λ p``."""
        return _KINDS[self.kind][0]

    @property
    def linear(self) -> bool:
        return _KINDS[self.kind][1]

    def formula(self, symbol: str = "u") -> str:
        """Readable form, channels numbered from 1: ``∇u1·∇u2``, ``|H1|²``, ``∇u1ᵀH2∇u1``."""
        n = [str(c + 1) for c in self.channels]
        if self.kind == "u":
            return f"{symbol}{n[0]}"
        if self.kind == "laplacian":
            return f"Δ{symbol}{n[0]}"
        if self.kind == "grad_dot":
            return (f"|∇{symbol}{n[0]}|²" if n[0] == n[1]
                    else f"∇{symbol}{n[0]}·∇{symbol}{n[1]}")
        if self.kind == "grad_det":
            return f"det(∇{symbol}{n[0]},∇{symbol}{n[1]})"
        hessian = "H" if symbol == "u" else f"H{symbol}"
        if self.kind == "hess_dot":
            return f"|{hessian}{n[0]}|²" if n[0] == n[1] else f"{hessian}{n[0]}:{hessian}{n[1]}"
        return f"∇{symbol}{n[0]}ᵀ{hessian}{n[1]}∇{symbol}{n[2]}"


def joint_terms(channels: int, *, linear: bool = True) -> list[JointTerm]:
    """The SE(2) family of ``channels`` channels (module table), in output order; without the
    maps linear in the jet (``u^i``, ``Δu^i``) if ``linear`` is False."""
    n = range(channels)
    pairs = [(i, j) for i in n for j in n if i <= j]
    terms = [JointTerm("u", (i,)) for i in n] + [JointTerm("laplacian", (i,)) for i in n]
    terms += [JointTerm("grad_dot", p) for p in pairs]
    terms += [JointTerm("grad_det", (i, j)) for i, j in pairs if i < j]
    terms += [JointTerm("hess_dot", p) for p in pairs]
    terms += [JointTerm("grad_hess_grad", (i, k, j)) for k in n for i, j in pairs]
    return [t for t in terms if linear or not t.linear]


def per_channel_terms(channels: int) -> list[JointTerm]:
    """Eq. (4) of every channel alone: ``u^i, Δu^i, |∇u^i|², |H^i|², ∇u^iᵀH^i∇u^i``."""
    n = range(channels)
    return ([JointTerm("u", (i,)) for i in n] + [JointTerm("laplacian", (i,)) for i in n]
            + [JointTerm("grad_dot", (i, i)) for i in n] + [JointTerm("hess_dot", (i, i)) for i in n]
            + [JointTerm("grad_hess_grad", (i, i, i)) for i in n])


@dataclasses.dataclass(frozen=True)
class JointBlock:
    """A group of output maps computed together.

    Attributes:
        source: ``"input"`` (the channels ``u``) or ``"mixture"`` (``v = M u``).
        per_channel: SIM(2) normalisers ``G, N`` of each channel alone (True) or of all channels
            of the source (False).
        terms: the SE(2) maps, before the SIM(2) normalisation.
    """

    source: str
    per_channel: bool
    terms: tuple[JointTerm, ...]


@dataclasses.dataclass(frozen=True)
class _Group:
    name: str
    description: str
    scale_invariant: bool


#: Groups :class:`JointInvariants` computes joint invariants of.
JOINT_GROUPS: Registry[_Group] = Registry("joint invariant group")
JOINT_GROUPS.register("se2", _Group("se2", "SE(2): rotations and translations", False))
JOINT_GROUPS.register("sim2", _Group("sim2", "SIM(2): rotations, isotropic scalings and "
                                             "translations", True))
# The joint invariants below are derived for these two groups; a group registered here would be
# given SE(2)'s or SIM(2)'s maps under its own name.
JOINT_GROUPS.seal("the joint invariants are derived for SE(2) and SIM(2) only; for another "
                  "group register an InvariantSet (eqpdenet.pde.INVARIANT_SETS), e.g. from "
                  "its generators (eqpdenet.pde.symbolic)")


#: The most maps a :class:`JointInvariants` (or the invariants of one Euler block of a model)
#: may have: all pairs of 32 channels are 18,512 (the widest stage of the default deep model);
#: 400 channels would be 32 million, 150 channels took 30 s only to set up, and every map is a
#: field of the batch's size in the forward pass (16 channels, 2,600 maps: 5.8 s per forward and
#: backward of 8 images, docs/symbolic.md).
MAX_JOINT_MAPS = 20_000


def joint_map_count(channels: int, group: str = "se2", mixtures: int | None = None) -> int:
    """The number of maps ``K`` of ``JointInvariants(channels, group, mixtures)``, in closed form
    (module doc), computed before anything is built."""
    scale_invariant = JOINT_GROUPS.get(group).scale_invariant
    if mixtures is None:
        return (channels**3 + 4 * channels**2 + 5 * channels) // 2 - int(scale_invariant)
    per_channel = (4 if scale_invariant else 5) * channels
    return per_channel + (mixtures**3 + 4 * mixtures**2 + mixtures) // 2 - int(scale_invariant)


def require_joint_size(channels: int, group: str, joint: str, mixtures: int,
                       fields: tuple[str, str] = ("channels", "mixtures")) -> int:
    """The number of invariant maps of ``channels`` channels in the form ``joint`` (``"channel"``,
    ``"mixtures"``, ``"all"``: :func:`~eqpdenet.pde.rhs.invariant_maps`), or a
    :class:`~eqpdenet.errors.ConfigError` naming the channels (``fields[0]``) or the mixtures
    (``fields[1]``, where they alone exceed it) when it is above :data:`MAX_JOINT_MAPS`."""
    if joint == "channel":
        maps, form = channels * joint_map_count(1, group), "the invariants of each channel"
    elif joint == "mixtures":
        maps = joint_map_count(channels, group, mixtures)
        form = f"joint='mixtures' with mixtures={mixtures}"
    else:
        maps, form = joint_map_count(channels, group), "joint='all' (every pair and triple)"
    if maps > MAX_JOINT_MAPS:
        field = fields[1] if joint == "mixtures" and joint_map_count(
            0, group, mixtures) > MAX_JOINT_MAPS else fields[0]
        advice = ("use joint='mixtures' (k learned combinations of the channels: 5 C + (k³ + 4k² + "
                  "k) / 2 maps) or fewer channels" if joint == "all" else
                  "use fewer mixtures" if field == fields[1] else "use fewer channels")
        require(False, field, f"{form} of {channels:,} channels: {maps:,} invariant maps, more "
                              f"than the bound of {MAX_JOINT_MAPS:,} (all pairs of 32 channels: "
                              f"18,512); {advice}")
    return maps


def _sim2_terms(terms: list[JointTerm], per_channel: bool) -> list[JointTerm]:
    """Leave out the ``|∇u^i|² / G`` that the others determine (all of them per channel)."""
    diagonal = [t for t in terms if t.kind == "grad_dot" and t.channels[0] == t.channels[1]]
    dropped = set(diagonal if per_channel else diagonal[-1:])
    return [t for t in terms if t not in dropped]


def check_channel_jet(jet, channels: int) -> None:
    """The checks of a jet of ``channels`` channels where it enters :class:`JointInvariants` or
    :class:`~eqpdenet.pde.rhs.PerChannelInvariants` (type, shape, channels, floating point; no
    host read): an :class:`~eqpdenet.errors.InputTypeError` or
    :class:`~eqpdenet.errors.InputError` naming what is wrong."""
    if not isinstance(jet, Tensor):
        raise InputTypeError(f"jet must be a torch.Tensor, got {type(jet).__name__}")
    if jet.dim() != 5 or jet.shape[2] < 6:
        raise InputError(f"expected an order-2 jet of shape (batch, channels, 6, height, "
                         f"width), got {tuple(jet.shape)}")
    if jet.shape[1] != channels:
        raise InputError(f"expected a jet of {channels} channels, got {jet.shape[1]}")
    if not jet.is_floating_point():
        raise InputTypeError(f"jet must be floating-point, got {jet.dtype}")


class JointInvariants(ConstantBuffers):
    """Joint SE(2) or SIM(2) differential invariants of ``C`` channels (see the module doc).

    Args:
        channels: ``C``, the number of channels of the jet.
        group: ``"se2"`` or ``"sim2"`` (:data:`JOINT_GROUPS`).
        mixtures: None (default): the joint family of all ``C`` channels, ``O(C³)`` maps. An
            integer ``k``: the per-channel family of every channel plus the joint family of ``k``
            learned combinations ``v = M u`` (``M``: the parameter ``mixing``, ``(k, C)``,
            orthogonal initialisation from the global random generator), ``O(C + k³)`` maps.
        ratio_eps: dimensionless regularisation of the SIM(2) ratios by weight -2 quantities
            (:func:`~eqpdenet.pde.invariants.safe_ratio` with ``reference_sq``).
        jet_floor: for SIM(2), the second-derivative size (``u`` per pixel², >= 0) below which
            a region counts as flat (module doc); 0: exactly scale invariant, discontinuous
            where the jet vanishes.

    Attributes:
        out_channels: ``K``, the number of maps.
        names: one readable name per map: ``"∇u1·∇u2"``, ``"det(∇u1,∇u2)"``, ``"∇v1ᵀHv2∇v1"``;
            for SIM(2) with the normaliser: ``"Δu1/G"``, ``"H1:H2/N"`` (``/|∇u1|²``, ``/N1`` for
            a channel alone, ``/G(v)``, ``/N(v)`` for the mixtures).
        blocks: the :class:`JointBlock` s, in output order.
        scale_invariant: whether the maps are divided by ``G`` and ``N`` (``sim2``).

    ``forward``: an order-2 jet ``(B, C, 6, H, W)`` (channels ``u, u_x, u_y, u_xx, u_xy, u_yy``
    as :func:`~eqpdenet.pde.stencils.jet` gives them; a higher-order jet is cut to order 2) ->
    ``(B, K, H, W)``.

    Cost (maps ``K`` and arithmetic operations per pixel; :meth:`cost`): se2 with all pairs
    ``K = (C³ + 4C² + 5C) / 2`` and ``1.5 C³ + 13.5 C² + 4 C`` operations; se2 with ``k``
    mixtures ``K = 5 C + (k³ + 4k² + k) / 2`` and ``(19 + 10 k) C + 1.5 k³ + 13.5 k² - 2 k``;
    sim2 with all pairs ``K`` one less and ``2 C³ + 20.5 C² + 21.5 C - 8``; sim2 with ``k``
    mixtures ``K = 4 C + (k³ + 4k² + k) / 2 - 1`` and
    ``(36 + 10 k) C + 2 k³ + 20.5 k² + 9.5 k - 8``.

    Example:
        >>> from eqpdenet.pde import jet
        >>> invariants = JointInvariants(2)
        >>> invariants.out_channels, invariants.names[4:7]
        (17, ['|∇u1|²', '∇u1·∇u2', '|∇u2|²'])
        >>> invariants(jet(torch.rand(8, 2, 28, 28))).shape
        torch.Size([8, 17, 28, 28])
        >>> JointInvariants(20, "sim2", mixtures=4).out_channels
        145
    """

    def __init__(self, channels: int, group: str = "se2", mixtures: int | None = None,
                 ratio_eps: float = DEFAULT_RATIO_EPS, jet_floor: float = DEFAULT_JET_FLOOR):
        super().__init__()
        self.channels = require_int(channels, "channels", 1)
        self.group = JOINT_GROUPS.get(group).name
        self.mixtures = None if mixtures is None else require_int(mixtures, "mixtures", 1)
        self.ratio_eps = require_positive(ratio_eps, "ratio_eps")
        self.jet_floor = require_nonnegative(jet_floor, "jet_floor")
        self.scale_invariant = JOINT_GROUPS.get(group).scale_invariant
        require_joint_size(self.channels, self.group,
                           "all" if self.mixtures is None else "mixtures", self.mixtures)
        if self.mixtures is None:
            specs = [("input", False, joint_terms(self.channels))]
            self.mixing = None
        else:
            specs = [("input", True, per_channel_terms(self.channels)),
                     ("mixture", False, joint_terms(self.mixtures, linear=False))]
            self.mixing = nn.Parameter(nn.init.orthogonal_(torch.empty(self.mixtures,
                                                                       self.channels)))
        self.blocks = tuple(
            JointBlock(source, per_channel, tuple(_sim2_terms(terms, per_channel)
                                                  if self.scale_invariant else terms))
            for source, per_channel, terms in specs)
        self.names = [self._name(block, term) for block in self.blocks for term in block.terms]
        self.out_channels = len(self.names)
        # Channel indices of every kind, as buffers (they follow the module to its device),
        # computed again after a move (ConstantBuffers: to_empty leaves them uninitialised).
        self._buffers_of: list[dict[str, str]] = []
        for b, block in enumerate(self.blocks):
            names = {}
            for kind, index in _index_tables(block.terms).items():
                names[kind] = f"_index_{b}_{kind}"
                self.register_buffer(names[kind], index, persistent=False)
            self._buffers_of.append(names)

    def _constant(self, name: str, dtype: torch.dtype, device) -> Tensor | None:
        for b, names in enumerate(self._buffers_of):
            for kind, buffer in names.items():
                if buffer == name:
                    index = _index_lists(tuple(self.blocks[b].terms))[kind]
                    return torch.tensor(index, dtype=dtype, device=device)
        return None

    def _name(self, block: JointBlock, term: JointTerm) -> str:
        symbol = "u" if block.source == "input" else "v"
        text = term.formula(symbol)
        if not self.scale_invariant or term.weight == 0:
            return text
        if block.per_channel:
            c = term.channels[0] + 1
            return f"{text}/|∇{symbol}{c}|²" if term.weight == -2 else f"{text}/N{c}"
        suffix = "" if symbol == "u" else f"({symbol})"
        return f"{text}/{'G' if term.weight == -2 else 'N'}{suffix}"

    # ------------------------------------------------------------------------- forward

    def forward(self, jet: Tensor) -> Tensor:
        self._check(jet)
        outputs = []
        for b, block in enumerate(self.blocks):
            # The mixed maps are never linear in the jet: the mixtures need only derivatives.
            derivatives = jet[:, :, 1:6] if block.source == "input" else torch.einsum(
                "mc,bcdhw->bmdhw", self.mixing, jet[:, :, 1:6])
            outputs.append(self._block(b, block, jet[:, :, 0], derivatives))
        return torch.cat(outputs, dim=1)

    def _block(self, b: int, block: JointBlock, values: Tensor, derivatives: Tensor) -> Tensor:
        """The maps of one block, from ``u`` ``(B, C, H, W)`` and the derivatives ``(B, n, 5, H,
        W)`` of its channels: ``(B, len(block.terms), H, W)``."""
        grad, hess = derivatives[:, :, :2], derivatives[:, :, 2:]
        maps: dict[str, Tensor] = {}
        index = {kind: getattr(self, name) for kind, name in self._buffers_of[b].items()}
        if "u" in index:
            maps["u"] = values[:, index["u"][:, 0]]
        if "laplacian" in index:
            h = hess[:, index["laplacian"][:, 0]]
            maps["laplacian"] = h[:, :, 0] + h[:, :, 2]
        if "grad_dot" in index:
            i, j = index["grad_dot"].unbind(1)
            maps["grad_dot"] = _dot(grad[:, i], grad[:, j])
        if "grad_det" in index:
            i, j = index["grad_det"].unbind(1)
            gi, gj = grad[:, i], grad[:, j]
            maps["grad_det"] = gi[:, :, 0] * gj[:, :, 1] - gi[:, :, 1] * gj[:, :, 0]
        if "hess_dot" in index:
            i, j = index["hess_dot"].unbind(1)
            maps["hess_dot"] = _hessian_dot(hess[:, i], hess[:, j])
        if "grad_hess_grad" in index:
            k, j = index["grad_hess_grad_pairs"].unbind(1)
            i, position = index["grad_hess_grad"][:, 0], index["grad_hess_grad_position"]
            hk, gj = hess[:, k], grad[:, j]
            # H^k ∇u^j once per (k, j) pair, then dotted with every ∇u^i.
            hg = torch.stack([hk[:, :, 0] * gj[:, :, 0] + hk[:, :, 1] * gj[:, :, 1],
                              hk[:, :, 1] * gj[:, :, 0] + hk[:, :, 2] * gj[:, :, 1]], dim=2)
            maps["grad_hess_grad"] = _dot(grad[:, i], hg[:, position])
        if self.scale_invariant:
            maps = self._scale_free(maps, block, grad, hess, index)
        return torch.cat([maps[kind] for kind in _KINDS if kind in maps], dim=1)

    def _scale_free(self, maps: dict[str, Tensor], block: JointBlock, grad: Tensor, hess: Tensor,
                    index: dict[str, Tensor]) -> dict[str, Tensor]:
        """Divide weight -2 maps by ``G`` (regularised by ``N``) and weight -4 maps by ``N``."""
        grad_sq = _dot(grad, grad)  # (B, n, H, W)
        hess_sq = _hessian_dot(hess, hess)
        if block.per_channel:
            g, n = grad_sq, grad_sq * grad_sq + hess_sq
        else:
            g = grad_sq.sum(dim=1, keepdim=True)
            n = g * g + hess_sq.sum(dim=1, keepdim=True)
        # N' = N + jet_floor²: T / N' is smooth where the jet vanishes (module doc); with a zero
        # floor the smallest normal number only keeps 0 / 0 finite.
        n = n + (self.jet_floor**2 if self.jet_floor > 0 else torch.finfo(grad.dtype).tiny)
        out = {}
        for kind, value in maps.items():
            weight = _KINDS[kind][0]
            if weight == 0:
                out[kind] = value
                continue
            # Per channel, each map uses the G, N of its (only) channel.
            owner = index[kind][:, 0]
            gk, nk = (g[:, owner], n[:, owner]) if block.per_channel else (g, n)
            out[kind] = (safe_ratio(value, gk, self.ratio_eps, reference_sq=nk) if weight == -2
                         else value / nk)
        return out

    def _check(self, jet: Tensor) -> None:
        check_channel_jet(jet, self.channels)
        if self.mixing is not None and self.mixing.dtype != jet.dtype:
            raise InputTypeError(f"jet is {jet.dtype} but the mixing weights are "
                                 f"{self.mixing.dtype}: move the module with .to({jet.dtype})")

    # ------------------------------------------------------------------------- cost

    def cost(self) -> dict[str, int | float]:
        """``{"maps": K, "operations": multiplications and additions per pixel}`` of the forward
        pass, counted from the formulas it evaluates (the closed forms are in the class doc)."""
        operations = 0.0
        for block in self.blocks:
            n = self.channels if block.source == "input" else self.mixtures
            terms = block.terms
            operations += sum(_KINDS[t.kind][2] for t in terms)
            pairs = {(t.channels[1], t.channels[2]) for t in terms if t.kind == "grad_hess_grad"}
            operations += 6 * len(pairs)  # H^k ∇u^j
            if block.source == "mixture":
                operations += 5 * n * (2 * self.channels - 1)  # 5 derivatives of n mixtures
            if self.scale_invariant:
                operations += self._normaliser_operations(block, n)
        return {"maps": self.out_channels, "operations": operations}

    @staticmethod
    def _normaliser_operations(block: JointBlock, n: int) -> int:
        # |∇u^c|² (3) and |H^c|² (6) for every channel, N' = G² + Q + floor² (3 each); for a joint
        # block the sums over channels (2 (n - 1)); per weight -2 map safe_ratio (6), per weight
        # -4 map the division (1).
        shared = 9 * n + (3 * n if block.per_channel else 3 + 2 * (n - 1))
        ratios = sum(6 if t.weight == -2 else 1 for t in block.terms if t.weight)
        return shared + ratios

    def extra_repr(self) -> str:
        mixtures = "" if self.mixtures is None else f", mixtures={self.mixtures}"
        eps = f", ratio_eps={self.ratio_eps}, jet_floor={self.jet_floor}" \
            if self.scale_invariant else ""
        return f"channels={self.channels}, group={self.group!r}{mixtures}{eps}, " \
               f"out_channels={self.out_channels}"


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``a_x b_x + a_y b_y`` of vectors stored in dim 2."""
    return a[:, :, 0] * b[:, :, 0] + a[:, :, 1] * b[:, :, 1]


def _hessian_dot(a: Tensor, b: Tensor) -> Tensor:
    """``tr(A B) = a_xx b_xx + 2 a_xy b_xy + a_yy b_yy`` for Hessians stored ``(xx, xy, yy)``."""
    return a[:, :, 0] * b[:, :, 0] + 2 * a[:, :, 1] * b[:, :, 1] + a[:, :, 2] * b[:, :, 2]


def _index_tables(terms, device=None) -> dict[str, Tensor]:
    """Channel indices per kind ``(maps, arity)``; for ``grad_hess_grad`` also the distinct
    ``(k, j)`` pairs and, per map, the position of its pair. Worked out in Python lists (nothing
    read back from a tensor: a default device set by ``with torch.device("meta")`` has no
    data), made tensors on ``device`` (None: the default device)."""
    return {kind: torch.tensor(index, dtype=torch.long, device=device)
            for kind, index in _index_lists(tuple(terms)).items()}


@functools.lru_cache(maxsize=64)
def _index_lists(terms: tuple[JointTerm, ...]) -> dict[str, list]:
    """:func:`_index_tables` as lists (cached: every move of the module computes them again;
    read only)."""
    lists = {}
    for kind in _KINDS:
        index = [list(t.channels) for t in terms if t.kind == kind]
        if index:
            lists[kind] = index
    if "grad_hess_grad" in lists:
        pairs = sorted({(k, j) for _, k, j in lists["grad_hess_grad"]})
        lists["grad_hess_grad_pairs"] = [list(pair) for pair in pairs]
        lists["grad_hess_grad_position"] = [pairs.index((k, j))
                                            for _, k, j in lists["grad_hess_grad"]]
    return lists
