"""Reading a learned PDE layer: each PDE as a formula, and its evolution ``u(0) ... u(T)`` as images.

:func:`pde_formula` prints ``du/dt = F_theta(invariants)`` with the invariants' own notation
(:class:`eqpdenet.invariants.Invariant` ``.unicode`` / ``.latex``), e.g.::

    ∂t u = 0.12 (u_xx + u_yy) − 0.03 (u_x² + u_y²) + 0.5

Terms are in the order of ``F.monomials()`` (the invariant set's order, then products for a
polynomial ``F``); exactly zero coefficients are left out; coefficients are printed with
``digits`` significant digits. :func:`describe_layer` adds ``T``, ``dt``, steps, the stencil,
the stability check and the reduction (``eqpdenet describe`` also renders the trajectories, with
:func:`eqpdenet.app.figures.evolution_grid`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..models import EqPdeNet
from ..pde.integrators import EulerFlow, EulerStep
from ..pde.layer import LinearCombination, PDELayer
from ..pde.m2_rhs import (
    ConvectionTerm,
    DiffusionTerm,
    DilationTerm,
    ErosionTerm,
    LinearTerm,
    M2SystemRHS,
    NetworkTerm,
)
from ..pde.rhs import InvariantSystemRHS

__all__ = ["pde_formula", "reduction_formula", "describe_layer", "describe_model",
           "leading_terms", "describe_system", "describe_m2_system"]

_SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"


def _needs_parentheses(text: str, latex: bool) -> bool:
    if latex:
        return any(op in text for op in ("+", "-"))
    return any(op in text for op in ("+", " - ", "−", "/"))


def _factor(text: str, power: int, latex: bool) -> str:
    if _needs_parentheses(text, latex):
        text = rf"\left({text}\right)" if latex else f"({text})"
    if power > 1:
        text = f"{text}^{{{power}}}" if latex else text + str(power).translate(_SUPERSCRIPTS)
    return text


def _monomial(exponents: Sequence[int], invariants, latex: bool) -> str:
    factors = [(inv.latex if latex else inv.unicode, e)
               for inv, e in zip(invariants, exponents, strict=True) if e]
    parts = [_factor(text, power, latex) for text, power in factors]
    if latex:
        return r" \, ".join(parts)
    joined = ""
    for part in parts:  # "(a)(b)" needs no separator, "u u_x" needs a space
        joined += part if (not joined or joined.endswith(")") and part.startswith("(")) else (
            " " + part)
    return joined


def _terms_to_text(terms: list[tuple[float, str]], digits: int, latex: bool) -> str:
    minus = "-" if latex else "−"
    out = ""
    for coefficient, monomial in terms:
        magnitude = _number(abs(coefficient), digits)
        body = f"{magnitude} {monomial}".strip() if monomial else magnitude
        if not out:
            out = (minus if coefficient < 0 else "") + body
        else:
            out += f" {minus if coefficient < 0 else '+'} {body}"
    return out or "0"


def pde_formula(pde: EulerStep | EulerFlow, style: str = "unicode", digits: int = 3) -> str:
    """``∂t u = ...`` (``style="unicode"``) or ``\\partial_t u = ...`` (``style="latex"``) of a PDE
    whose right-hand side is an :class:`~eqpdenet.pde.rhs.InvariantRHS`."""
    if style not in ("unicode", "latex"):
        raise ConfigError(f"style must be 'unicode' or 'latex', got {style!r}")
    rhs = (pde.step if isinstance(pde, EulerFlow) else pde).rhs
    latex = style == "latex"
    invariants = rhs.invariant_set.invariants
    weights = rhs.F.weight.detach().double().tolist()
    terms = [(w, _monomial(m, invariants, latex))
             for w, m in zip(weights, rhs.F.monomials(), strict=True) if w != 0.0]
    bias = float(rhs.F.bias.detach())
    if bias != 0.0:
        terms.append((bias, ""))
    lhs = r"\partial_t u = " if latex else "∂t u = "
    return lhs + _terms_to_text(terms, digits, latex)


def reduction_formula(layer: PDELayer, style: str = "unicode", digits: int = 3) -> str:
    """``u_out = w_0 u_T⁽⁰⁾ + ... + b`` for a linear reduction (its kind otherwise)."""
    latex = style == "latex"
    if not isinstance(layer.reduction, LinearCombination):
        return f"reduction: {layer.reduction_kind} of the {layer.n_pdes} evolved images"
    weights = layer.reduction.weight.detach().double().tolist()
    terms = [(w, rf"u_T^{{({i})}}" if latex else f"u_T({i})") for i, w in enumerate(weights)]
    bias = float(layer.reduction.bias.detach())
    if bias != 0.0:
        terms.append((bias, ""))
    return (r"u_{\mathrm{out}} = " if latex else "u_out = ") + _terms_to_text(terms, digits, latex)


def describe_layer(layer: PDELayer, digits: int = 3) -> str:
    """Every PDE (Unicode and LaTeX formulas, invariants, T, dt, steps, stencil, stability)."""
    lines = []
    for index, pde in enumerate(layer.pdes):
        step, rhs = pde.step, pde.step.rhs
        stability = step.stability()
        stable = {True: "stable", False: "UNSTABLE", None: "n/a"}[stability["stable"]]
        lines += [
            f"PDE {index} ({pde.name}; invariants of {rhs.invariant_set.group}"
            + (f", {rhs.invariant_set.equation}" if rhs.invariant_set.equation else "") + ")",
            f"  {pde_formula(pde, 'unicode', digits)}",
            f"  LaTeX: {pde_formula(pde, 'latex', digits)}",
            f"  T = {pde.T:g}, dt = {step.dt:g}, steps = {pde.steps}, stencil = "
            f"{rhs.jet.stencil}"
            + ("" if rhs.jet.sigma is None else f" (σ = {rhs.jet.sigma:g})")
            + f", h = {rhs.jet.spacing:g}, boundary = {rhs.jet.boundary}; "
            f"diffusion check a·dt <= {stability['max_a_dt']:g}: {stable}",
            "  invariants: " + "; ".join(f"{inv.name} = {inv.unicode}"
                                         for inv in rhs.invariant_set.invariants),
        ]
    lines += ["Reduction", f"  {reduction_formula(layer, 'unicode', digits)}",
              f"  LaTeX: {reduction_formula(layer, 'latex', digits)}"]
    return "\n".join(lines)


def leading_terms(rhs: InvariantSystemRHS, top: int = 3
                  ) -> list[tuple[float, list[tuple[float, str]]]]:
    """The leading terms of a PDE system's right-hand side ``F_theta(I)``, per channel ``c``:
    ``(F_c(mu), [(a_ck, name_k), ...])`` for the ``top`` largest ``|a_ck|``, where

        ``du_c/dt ≈ F_c(mu) + Σ_k a_ck (I_k − mu_k) / sigma_k``

    is ``F`` linearised (in evaluation mode) at the invariants' running mean ``mu`` with their
    running standard deviation ``sigma`` (from the batch normalisation that ``F`` applies to the
    invariant maps first; ``mu = 0``, ``sigma = 1`` without it). ``a_ck`` is the change of
    ``du_c/dt`` per standard deviation of invariant ``k``, so the terms of invariants of very
    different scales compare. ``F`` has a ReLU: the linearisation holds near ``mu`` only.
    """
    F = rhs.F
    first = F[0] if isinstance(F[0], nn.BatchNorm2d) else None
    maps = rhs.invariants_of.out_channels
    parameter = next(F.parameters())
    options = dict(dtype=parameter.dtype, device=parameter.device)
    if first is not None and first.running_mean is not None:
        mean = first.running_mean.detach().to(**options)
        std = (first.running_var.detach().to(**options) + first.eps).sqrt()
    else:
        mean, std = torch.zeros(maps, **options), torch.ones(maps, **options)
    was_training = F.training
    F.eval()
    try:
        def field(i: torch.Tensor) -> torch.Tensor:
            return F(i.reshape(1, maps, 1, 1)).reshape(-1)

        with torch.enable_grad():
            constant = field(mean).detach()
            jacobian = torch.autograd.functional.jacobian(field, mean)  # (C, K)
    finally:
        F.train(was_training)
    scaled = (jacobian * std).cpu()
    names = rhs.names
    out = []
    for c in range(scaled.shape[0]):
        order = scaled[c].abs().argsort(descending=True)[:top].tolist()
        out.append((float(constant[c]), [(float(scaled[c, k]), names[k]) for k in order]))
    return out


def describe_system(step: EulerStep, top: int = 3, digits: int = 3) -> str:
    """One Euler step ``u <- u + dt F_theta(I(u))`` of a PDE system, each channel's ``F`` read
    out as its leading terms (:func:`leading_terms`; ``Ĩ`` is an invariant standardised by its
    running mean and standard deviation)."""
    rhs = step.rhs
    lines = [f"{step.name}: u <- u + {step.dt:g} F(I(u)), {rhs.channels} channels, "
             f"{rhs.invariants_of.out_channels} invariant maps; leading terms of F at the mean "
             f"invariants (Ĩ = (I - mean) / std):"]
    for c, (constant, terms) in enumerate(leading_terms(rhs, top)):
        body = _terms_to_text([(constant, ""), *((a, f"Ĩ[{name}]") for a, name in terms)],
                              digits, latex=False)
        lines.append(f"  ∂t u{c + 1} ≈ {body} + ...")
    return "\n".join(lines)


def _network_leading_terms(term: NetworkTerm, channels: int, names: Sequence[str], top: int,
                           relative: bool = False) -> list[tuple[float, list[tuple[float, str]]]]:
    """:func:`leading_terms` of the ``network`` term of an M2 system: ``F`` linearised (evaluation
    mode) at the mean invariants (running mean and std of its invariant batch norm) or, without
    it, at ``I = 0`` (the invariants of ``u = 0``, all linear in ``u``), per unit of each. For a
    ``relative`` system, of ``F(I) - F(0)``."""
    maps = channels * len(names)
    parameter = term.mix.weight
    options = dict(dtype=parameter.dtype, device=parameter.device)
    if isinstance(term.norm, nn.BatchNorm1d) and term.norm.running_mean is not None:
        mean = term.norm.running_mean.detach().to(**options)
        std = (term.norm.running_var.detach().to(**options) + term.norm.eps).sqrt()
    else:
        mean, std = torch.zeros(maps, **options), torch.ones(maps, **options)
    was_training = term.training
    term.eval()
    try:
        def field(i: torch.Tensor) -> torch.Tensor:
            x = term.mix(term.norm(i.reshape(1, maps, 1)))
            return term.out(torch.relu(term.hidden_norm(x))).reshape(-1)

        with torch.enable_grad():
            constant = field(mean).detach()
            if relative:
                constant = constant - field(torch.zeros_like(mean)).detach()
            jacobian = torch.autograd.functional.jacobian(field, mean)  # (C, 10 C)
    finally:
        term.train(was_training)
    scaled = (jacobian * std).cpu()
    labels = [name.replace("u", f"u{c + 1}") for c in range(channels) for name in names]
    out = []
    for c in range(scaled.shape[0]):
        order = scaled[c].abs().argsort(descending=True)[:top].tolist()
        out.append((float(constant[c]), [(float(scaled[c, k]), labels[k]) for k in order
                                         if float(scaled[c, k]) != 0.0]))
    return out


def describe_m2_system(step: EulerStep, top: int = 3, digits: int = 3) -> str:
    """One Euler step ``U <- U + dt F(I(U))`` of a PDE system on M2: the ``network`` term as its
    leading terms in the left-invariant derivatives ``A1u1, A13u2, ...`` (``Ĩ`` standardised
    where ``F`` normalises its invariants), the PDE-G-CNN terms by their coefficients (per
    channel: convection velocity ``v``, diffusivities ``D``, dilation/erosion metric ``g``,
    along ``A1, A2, A3``)."""
    rhs: M2SystemRHS = step.rhs
    names = rhs.invariant_set.names
    if rhs.relative:  # the deviation V = U - U_0 from a blank image's fields U_0
        update = f"V <- V + {step.dt:g} (F(I(V)) - F(0)), V = U - U_blank,"
    else:
        update = f"U <- U + {step.dt:g} F(I(U))"
    lines = [f"{step.name}: {update} on M2, {rhs.channels} channels, "
             f"F = {' + '.join(rhs.term_names)}"]
    for name, term in rhs.terms.items():
        if isinstance(term, NetworkTerm):
            where = ("the mean invariants (Ĩ = (I - mean) / std)"
                     if isinstance(term.norm, nn.BatchNorm1d) else "I = 0")
            lines.append(f"  network, leading terms at {where}:")
            for c, (constant, terms) in enumerate(_network_leading_terms(
                    term, rhs.channels, names, top, rhs.relative)):
                symbol = "Ĩ" if isinstance(term.norm, nn.BatchNorm1d) else ""
                body = _terms_to_text([(constant, ""), *((a, f"{symbol}[{n}]" if symbol else n)
                                                         for a, n in terms)], digits, False)
                lines.append(f"    ∂t u{c + 1} ≈ {body} + ...")
        elif isinstance(term, ConvectionTerm | DiffusionTerm | DilationTerm | ErosionTerm):
            values = term.weight.detach() if isinstance(term, ConvectionTerm) else (
                torch.nn.functional.softplus(term.weight.detach()))
            label = {ConvectionTerm: "v", DiffusionTerm: "D"}.get(type(term), "g")
            rows = ", ".join(f"u{c + 1}: ({', '.join(_number(float(x), digits) for x in row)})"
                             for c, row in enumerate(values.cpu()))
            lines.append(f"  {name}, {label} along (A1, A2, A3): {rows}")
        elif isinstance(term, LinearTerm):
            norm = float(term.map.weight.detach().norm())
            bias = " + b" if term.map.bias is not None else ""
            lines.append(f"  linear: W u{bias}, |W| = {_number(norm, digits)}")
    return "\n".join(lines)


def describe_model(model: nn.Module, digits: int = 3) -> str:
    """:func:`describe_layer` of an :class:`EqPdeNet`, with its input standardisation; for a
    model made of PDE systems (``InvariantPDENet``, ``LiftedPDENet`` on M2),
    :func:`describe_system` or :func:`describe_m2_system` of each block."""
    m2_systems = [m for m in model.modules()
                  if isinstance(m, EulerStep) and isinstance(m.rhs, M2SystemRHS)]
    if m2_systems:
        config = getattr(model, "config", None)
        centred = ("; each image first moved by whole pixels to put its centre of mass at the "
                   "frame's centre" if getattr(config, "center", False) else "")
        counts = (f"; orientations {config.orientations} lifted, "
                  f"{', '.join(map(str, config.stage_orientations))} in the stages (each the "
                  f"max over the old ones within half a new bin)"
                  if getattr(config, "stage_orientations", None) else "")
        return "\n".join([f"{type(model).__name__}: {len(m2_systems)} Euler steps of PDE "
                          f"systems on M2 (position x orientation){centred}{counts}",
                          *(describe_m2_system(step, digits=digits) for step in m2_systems)])
    systems = [m for m in model.modules()
               if isinstance(m, EulerStep) and isinstance(m.rhs, InvariantSystemRHS)]
    if not isinstance(model, EqPdeNet) and systems:
        return "\n".join([f"{type(model).__name__}: {len(systems)} Euler steps of PDE systems",
                          *(describe_system(step, digits=digits) for step in systems)])
    if not isinstance(model, EqPdeNet):
        return f"{type(model).__name__}: no PDE layer to describe"
    s = model.standardize
    head = (f"EqPdeNet: input u(0) = (image - {s.mean:g}) / {s.std:g}, "
            f"{model.pde_layer.n_pdes} PDEs, perceptron {model.mlp[0].in_features}-"
            f"{model.mlp[0].out_features}-{model.mlp[2].out_features}-{model.mlp[4].out_features}")
    return head + "\n" + describe_layer(model.pde_layer, digits)
