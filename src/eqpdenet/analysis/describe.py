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

from torch import nn

from ..errors import ConfigError
from ..models import EqPdeNet
from ..pde.integrators import EulerFlow, EulerStep
from ..pde.layer import LinearCombination, PDELayer

__all__ = ["pde_formula", "reduction_formula", "describe_layer", "describe_model"]

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


def describe_model(model: nn.Module, digits: int = 3) -> str:
    """:func:`describe_layer` of an :class:`EqPdeNet`, with its input standardisation."""
    if not isinstance(model, EqPdeNet):
        return f"{type(model).__name__}: no PDE layer to describe"
    s = model.standardize
    head = (f"EqPdeNet: input u(0) = (image - {s.mean:g}) / {s.std:g}, "
            f"{model.pde_layer.n_pdes} PDEs, perceptron {model.mlp[0].in_features}-"
            f"{model.mlp[0].out_features}-{model.mlp[2].out_features}-{model.mlp[4].out_features}")
    return head + "\n" + describe_layer(model.pde_layer, digits)
