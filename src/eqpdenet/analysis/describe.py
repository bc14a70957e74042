"""Reading a learned PDE layer: each PDE as a formula, and its evolution ``u(0) ... u(T)`` as images.

:func:`pde_formula` prints ``du/dt = F_theta(invariants)`` with the invariants' own notation
(:class:`eqpdenet.pde.invariants.Invariant` ``.unicode`` / ``.latex``), e.g.::

    ∂t u = 0.12 (u_xx + u_yy) − 0.03 (u_x² + u_y²) + 0.5

Terms are in the order of ``F.monomials()`` (the invariant set's order, then products for a
polynomial ``F``); exactly zero coefficients are left out; coefficients are printed with
``digits`` significant digits; an invariant is parenthesised where juxtaposition or a power
would read otherwise (a sum, a ratio in Unicode, any non-symbol raised to a power:
``(u_x u_y)²``). :func:`describe_layer` adds ``T``, ``dt``, steps, the stencil, the stability check
``0 ≤ a·dt ≤ 2 / λ_max`` with the value of ``a·dt``, how the printed ratios are regularised
(:func:`ratio_reading`) and the reduction (``eqpdenet describe`` also renders the trajectories,
with :func:`eqpdenet.app.figures.evolution_grid`).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence, Set

import torch
from torch import nn

from ..checks import non_finite_parameters
from ..errors import ConfigError, InputError, InputTypeError
from ..models import EqPdeNet, InvariantPDENet, LiftedPDENet
from ..pde.integrators import EulerFlow, EulerStep, breaks_upper_bound
from ..pde.invariants import (
    Derivatives,
    RecordingRatio,
    hessian_reference_sq,
    ratio_rescaling,
    sample_jet,
)
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
from ..pde.rhs import InvariantRHS, InvariantSystemRHS, LinearF, MonomialF
from .predictions import evaluation_mode

__all__ = ["pde_formula", "ratio_reading", "reduction_formula", "describe_layer",
           "describe_model", "describes_pdes", "leading_terms", "describe_system",
           "describe_m2_system"]

_SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"


def _check_digits(digits) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` unless ``digits`` (significant digits) is a whole
    number >= 1 (-1 gave a bare "Format specifier missing precision"; 0 printed 1 digit)."""
    if isinstance(digits, bool) or not isinstance(digits, numbers.Integral) or digits < 1:
        raise ConfigError(f"digits must be a whole number >= 1 (significant digits), got "
                          f"{digits!r}")


#: One symbol, which a power or a neighbouring factor cannot split: ``u``, ``u_xx``, ``A13u``
#: (Unicode), ``u_{xx}``, ``u_x`` (LaTeX).
_SYMBOL = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SYMBOL_LATEX = re.compile(r"[A-Za-z][A-Za-z0-9]*(_(\{[A-Za-z0-9]+\}|[A-Za-z0-9]))?")


def _one_fraction(text: str) -> bool:
    """Whether a LaTeX formula is one ``\\frac{...}{...}`` (which groups itself)."""
    if not text.startswith(r"\frac{"):
        return False
    depth, groups = 0, 0
    for position, character in enumerate(text[len(r"\frac"):], len(r"\frac")):
        if character == "{":
            depth += 1
        elif character == "}":
            depth -= 1
            if depth == 0:
                groups += 1
                if groups == 2:
                    return position == len(text) - 1
        elif depth == 0:
            return False
    return False


def _needs_parentheses(text: str, power: int, latex: bool) -> bool:
    """Whether an invariant's formula must be parenthesised as a factor of a monomial: raised to
    a power, anything but a single symbol (``u_x u_y²`` is not ``(u_x u_y)²``, ``u_x²²`` is no
    power, ``\\frac{a}{b}^{2}`` is ambiguous); always, a sum or difference, a formula that starts
    with a number or a sign (``0.5 2 u_x`` reads as one number), and in Unicode a ratio
    (``u u_x² / u_xx`` would hide what the regularised ratio divides: :func:`ratio_reading`)."""
    if power > 1 and not (_SYMBOL_LATEX if latex else _SYMBOL).fullmatch(text):
        return True
    if text[:1].isdigit() or text[:1] in "+-−.":
        return True
    if latex:
        return not _one_fraction(text) and any(op in text for op in ("+", "-"))
    return any(op in text for op in ("+", " - ", "−", "/"))


def _factor(text: str, power: int, latex: bool) -> str:
    if _needs_parentheses(text, power, latex):
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


def _rhs_of(value) -> nn.Module | None:
    """The right-hand side of an :class:`EulerStep` or :class:`EulerFlow`, else None."""
    if isinstance(value, EulerFlow):
        value = value.step
    return value.rhs if isinstance(value, EulerStep) else None


def _given(value) -> str:
    """What a describing function was given, as its refusal names it: an Euler step or flow by
    its right-hand side's class too (``EulerStep of M2SystemRHS``)."""
    rhs = _rhs_of(value)
    if rhs is not None:
        return f"{type(value).__name__} of {type(rhs).__name__}"
    return type(value).__name__


def _reader(value) -> tuple[str, str] | None:
    """``(function, hint)``: the function here that describes ``value`` (or the object holding
    it), and the hint naming it; None where none does."""
    rhs = _rhs_of(value)
    kind = value if rhs is None else rhs
    if isinstance(kind, M2SystemRHS):
        return "describe_m2_system", "describe_m2_system(step) describes a PDE system on M2"
    if isinstance(kind, InvariantSystemRHS):
        return "describe_system", "describe_system(step) describes a PDE system"
    if isinstance(kind, InvariantRHS):
        return "pde_formula", "pde_formula(pde) writes a scalar PDE"
    if isinstance(value, PDELayer):
        return "describe_layer", "describe_layer(layer) describes a PDE layer"
    if isinstance(getattr(value, "pde_layer", None), PDELayer):
        return "", "its PDE layer is model.pde_layer (its PDEs model.pde_layer.pdes[i])"
    return None


def _refusal(function: str, accepted: str, value, fix: str | None = None) -> InputTypeError:
    """The :class:`~eqpdenet.errors.InputTypeError` of ``function`` given ``value``, which it
    does not describe: what it takes, what it got, ``fix`` (how to pass the same object in the
    form it takes), the function that describes ``value`` where another does, and
    :func:`describe_model`, which describes any module. The attribute ``function`` reads first
    was missing instead (``'EqPdeNet' object has no attribute 'pdes'``)."""
    hints = [fix] if fix else []
    reader = _reader(value)
    if reader is not None and reader[0] != function:
        hints.append(reader[1])
    hints.append("describe_model(model) describes a whole model (or any module), finding the "
                 "PDEs in it")
    return InputTypeError(f"{function} takes {accepted}, got {_given(value)}: "
                          + "; ".join(hints))


#: What :func:`pde_formula` takes, as its refusal says it.
_SCALAR_PDE = ("an EulerStep or EulerFlow of a scalar PDE, whose right-hand side is an "
               "InvariantRHS (a PDE layer's layer.pdes[i])")


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
    whose right-hand side is an :class:`~eqpdenet.pde.rhs.InvariantRHS`: the sum of its
    monomials for a polynomial ``F`` (:class:`~eqpdenet.pde.rhs.MonomialF`); an ``F`` of one's
    own is written as its class applied to the invariants (``∂t u = MLPF(u, ...)``).

    Anything else (a layer, a model, a PDE system: an Euler step of an
    :class:`~eqpdenet.pde.rhs.InvariantSystemRHS` or an
    :class:`~eqpdenet.pde.m2_rhs.M2SystemRHS`) is an :class:`~eqpdenet.errors.InputTypeError`
    saying what is taken and which function describes what was given (:func:`describe_model`
    any model)."""
    rhs = _rhs_of(pde)
    if not isinstance(rhs, InvariantRHS):
        fix = ("pass the EulerStep or EulerFlow that holds it" if isinstance(pde, InvariantRHS)
               else None)
        raise _refusal("pde_formula", _SCALAR_PDE, pde, fix)
    if style not in ("unicode", "latex"):
        raise ConfigError(f"style must be 'unicode' or 'latex', got {style!r}")
    _check_digits(digits)
    latex = style == "latex"
    invariants = rhs.invariant_set.invariants
    lhs = r"\partial_t u = " if latex else "∂t u = "
    if not isinstance(rhs.F, MonomialF):
        # an F of one's own (RIGHT_HAND_SIDES) is no sum of monomials: named, with its arguments
        names = [inv.latex if latex else inv.unicode for inv in invariants]
        return f"{lhs}{type(rhs.F).__name__}({', '.join(names)})"
    weights = rhs.F.weight.detach().double().tolist()
    terms = [(w, _monomial(m, invariants, latex))
             for w, m in zip(weights, rhs.F.monomials(), strict=True) if w != 0.0]
    bias = float(rhs.F.bias.detach())
    if bias != 0.0:
        terms.append((bias, ""))
    return lhs + _terms_to_text(terms, digits, latex)


#: ``R`` of the covariant ratio regularisation (:func:`eqpdenet.pde.invariants.hessian_reference_sq`).
_R_TEXT = "u_xx² + 2 u_xy² + u_yy² + (u_x² + u_y²)²"

#: How a covariant ``a / b`` is computed, by the reference its invariant passes.
_COVARIANT_READINGS = {
    "R": "a b / (b² + ε² R)",
    "R²": "a b / (b² + ε² R²)",
    "a²": "a b / (b² + ε² a²) = r / (1 + ε² r²) with r = a / b",
    "own": "a b / (b² + ε² ref), ref the invariant's own reference (of the scaling weight of b²)",
}


def _ratio_references(invariant_set, eps: float, mode: str) -> dict[str, list[str]]:
    """Per invariant that divides with the layer's regularisation, the reference of each of its
    divisions (a key of :data:`_COVARIANT_READINGS`): found by evaluating it on a random jet
    (what the function passes is the only record of it; ``R`` is compared by value)."""
    order = invariant_set.order
    jet = sample_jet(order)
    try:
        R = hessian_reference_sq(Derivatives(jet))
    except (InputError, AttributeError):  # a jet of order < 2 has no R
        R = None
    if R is not None:
        # The jet of the same function on a grid 2^k times coarser, with R in [1, 16) at every
        # point, so the plane's largest too: there the built-in covariant sets divide with the
        # jet as it is (their per-plane factor, invariants._ratio_operands, is 1), so the
        # references they pass compare with R.
        scale = ratio_rescaling(R)
        jet = jet * torch.stack([scale**k for k in range(order + 1) for _ in range(k + 1)])
        R = hessian_reference_sq(Derivatives(jet))
    found = {}
    for invariant in invariant_set.invariants:
        ratio = RecordingRatio(eps, mode)
        invariant.function(Derivatives(jet), ratio)
        kinds = []
        for reference in ratio.references:
            if reference is None:
                kinds.append("a²")
            elif R is not None and torch.allclose(torch.as_tensor(reference), R, rtol=1e-12):
                kinds.append("R")
            elif R is not None and torch.allclose(torch.as_tensor(reference), R**2, rtol=1e-12):
                kinds.append("R²")
            else:
                kinds.append("own")
        if kinds:
            found[invariant.name] = kinds
    return found


def ratio_reading(rhs: InvariantRHS) -> str | None:
    """How every ratio ``a / b`` printed in :func:`pde_formula` is computed, or None where no
    invariant divides: the regularised forms of :mod:`eqpdenet.pde.invariants`, with the mode and
    ``ε`` of this right-hand side. The printed ratios are the exact invariants; the model's
    ``F`` is of these (``u_x² / u_xx`` of a digit is ``0 / 0`` on most of its background).
    ``rhs`` an :class:`~eqpdenet.pde.rhs.InvariantRHS`, else an
    :class:`~eqpdenet.errors.InputTypeError`."""
    if not isinstance(rhs, InvariantRHS):
        fix = ("pass its right-hand side, pde.step.rhs" if isinstance(_rhs_of(rhs), InvariantRHS)
               else None)
        raise _refusal("ratio_reading", "an InvariantRHS (a scalar PDE's pde.step.rhs)", rhs, fix)
    invariant_set = rhs.invariant_set
    fixed = invariant_set.fixed_ratio_eps
    if fixed is not None:
        if not any("/" in inv.unicode for inv in invariant_set.invariants):
            return None
        return (f"ratios (absolute, ε = {fixed:g} fixed by the invariant set, not the layer's "
                f"ratio_eps or regularisation): every a / b above is a b / (b² + ε²) "
                f"(0 where b = 0)")
    eps, mode = rhs.ratio_eps, rhs.ratio_regularisation
    references = _ratio_references(invariant_set, eps, mode)
    if not references:
        return None
    head = f"ratios ({mode}, ε = {eps:g}): "
    if mode == "absolute":
        return head + "every a / b above is a b / (b² + ε²) (0 where b = 0)"
    groups: dict[str, list[str]] = {}
    for name, kinds in references.items():
        for kind in dict.fromkeys(kinds):
            groups.setdefault(kind, []).append(name)
    if len(groups) == 1:
        text = f"every a / b above is {_COVARIANT_READINGS[next(iter(groups))]}"
    else:
        text = "a / b above is " + "; ".join(
            f"{_COVARIANT_READINGS[kind]} in {', '.join(names)}" for kind, names in groups.items())
    text += " (0 where its denominator is 0)"
    if "R" in groups or "R²" in groups:
        text += f"; R = {_R_TEXT}"
    return head + text


def _stability_text(step: EulerStep, digits: int) -> str:
    """The explicit Euler check of :meth:`EulerStep.stability`, with its bounds and the value it
    judges: the diffusion check where ``F`` linearised at 0 is ``c_u u`` plus second-order terms,
    a reaction check where it is ``c_u u`` alone, the check of the whole linear part where it
    has other terms (first order, order > 2), and the report's reason where nothing could be
    checked or the verdict is UNSTABLE for a reason the numbers do not show. Where a decaying
    reaction term ``c_u u`` (``c_u < 0``) joins second-order terms, the check printed is the one
    with it, ``dt (a lambda_max - c_u) <= 2`` (isotropic) or ``-dt (sigma + c_u) <= 2``."""
    report = step.stability()
    verdict = "stable" if report["stable"] else "UNSTABLE"
    if non_finite_parameters(step.rhs):
        # no linear part to print: the reaction-check wording said "dt·c_u = 0" (round 17)
        return f"stability check: {verdict} ({report['reason']})"
    linearised = ("" if isinstance(getattr(step.rhs, "F", None), LinearF)
                  else " (F linearised at u = 0)")
    part = report["linear_part"] or {}
    second = ("u_xx", "u_xy", "u_yy")
    others = {name: c for name, c in part.items() if name != "u" and name not in second}
    if others:
        # first-order or higher terms: the diffusion wording ("diffusion check of 0") was false
        form = _terms_to_text([(c, name) for name, c in part.items()], digits, False)
        reason = f" ({report['reason']})" if report["reason"] else ""
        return f"stability check of {form}{linearised}: {verdict}{reason}"
    # A decaying reaction term c_u u adds to the fastest decay (EulerStep.stability): where
    # there is one, the check printed is the one with it, else a·dt = 0.05 inside its bound
    # printed "UNSTABLE" with no word of why (round 16).
    decay = min(part.get("u", 0.0), 0.0)
    decay_text = _number(decay, digits).replace("-", "−")
    if report["stable"] is not None and report["diffusivity"] is None and any(
            part.get(name) for name in second):
        # Anisotropic: a compiled set holding u_xx, u_xy, u_yy apart.
        form = _terms_to_text([(c, n) for c, n in zip(report["second_order"], second, strict=True)
                               if c != 0.0], digits, False)
        rate = _number(report["max_rate_dt"], digits).replace("-", "−")
        sigma = "−dt·(σ + c_u)" if decay else "−dt·σ"
        symbol = f"σ its stencil's symbol, c_u = {decay_text}" if decay else "σ its stencil's symbol"
        text = (f"diffusion check of {form}{linearised}: elliptic and {sigma} ≤ 2 at every "
                f"frequency ({symbol}): max {sigma} = {rate}, {verdict}")
        if not report["stable"] and not breaks_upper_bound(report):
            text += f" ({report['reason']})"   # not elliptic, which the numbers do not show
        return text
    check = f"diffusion check 0 ≤ a·dt ≤ {report['max_a_dt']:g}: "
    if report["stable"] is None:
        reason = report["reason"] or ""
        if reason.startswith("cannot check"):  # an F that is not linearised: nothing is known
            return check + f"n/a ({reason})"
        return check + "n/a (no second-order term in F linearised at u = 0)"
    if report["diffusivity"] is None:
        # c_u u alone (a set whose derivatives enter through ratios, such as sim2)
        value = _number(report["dt"] * part.get("u", 0.0), digits).replace("-", "−")
        return (check + f"n/a (no second-order term in F linearised at u = 0); reaction check "
                f"dt·c_u ≥ −2: dt·c_u = {value}{linearised.replace('(F', '(c_u of F')}, "
                f"{verdict}")
    value = _number(report["a_dt"], digits).replace("-", "−")
    if decay:
        lam = _number(2.0 / report["max_a_dt"], digits)
        rate = _number(report["max_rate_dt"], digits).replace("-", "−")
        linearised = linearised.replace("(F linearised", "(a and c_u of F linearised")
        text = (f"diffusion check 0 ≤ a·dt and dt·(a·λmax − c_u) ≤ 2 (λmax = {lam}, c_u = "
                f"{decay_text}): a·dt = {value}, dt·(a·λmax − c_u) = {rate}{linearised}, "
                f"{verdict}")
    else:
        linearised = linearised.replace("(F linearised", "(a of F linearised")
        text = check + f"a·dt = {value}{linearised}, {verdict}"
    shown = report["a_dt"] < 0 or breaks_upper_bound(report)
    if not report["stable"] and not shown and report["reason"]:
        text += f" ({report['reason']})"      # a failure the numbers printed do not show
    return text


def reduction_formula(layer: PDELayer, style: str = "unicode", digits: int = 3) -> str:
    """``u_out = w_0 u_T⁽⁰⁾ + ... + b`` for a linear reduction (its kind in words otherwise, in
    either style: :func:`describe_layer` prints no LaTeX line for it). ``layer`` a
    :class:`~eqpdenet.pde.layer.PDELayer` (else an :class:`~eqpdenet.errors.InputTypeError`),
    ``style`` ``"unicode"`` or ``"latex"`` (else a :class:`~eqpdenet.errors.ConfigError`, as
    :func:`pde_formula`'s; another word printed Unicode)."""
    if not isinstance(layer, PDELayer):
        raise _refusal("reduction_formula", "a PDELayer", layer)
    if style not in ("unicode", "latex"):
        raise ConfigError(f"style must be 'unicode' or 'latex', got {style!r}")
    latex = style == "latex"
    _check_digits(digits)
    if not isinstance(layer.reduction, LinearCombination):
        return f"reduction: {layer.reduction_kind} of the {layer.n_pdes} evolved images"
    weights = layer.reduction.weight.detach().double().tolist()
    terms = [(w, rf"u_T^{{({i})}}" if latex else f"u_T({i})") for i, w in enumerate(weights)]
    bias = float(layer.reduction.bias.detach())
    if bias != 0.0:
        terms.append((bias, ""))
    return (r"u_{\mathrm{out}} = " if latex else "u_out = ") + _terms_to_text(terms, digits, latex)


def describe_layer(layer: PDELayer, digits: int = 3) -> str:
    """Every PDE (Unicode and LaTeX formulas, invariants, T, dt, steps, stencil, stability).

    ``layer`` a :class:`~eqpdenet.pde.layer.PDELayer`; a model or anything else is an
    :class:`~eqpdenet.errors.InputTypeError` pointing to :func:`describe_model`, which
    describes a model (an :class:`EqPdeNet` with its layer)."""
    if not isinstance(layer, PDELayer):
        raise _refusal("describe_layer", "a PDELayer", layer)
    _check_digits(digits)
    lines = []
    for index, pde in enumerate(layer.pdes):
        lines += _scalar_pde_lines(pde, f"PDE {index}", digits)
    lines += ["Reduction", f"  {reduction_formula(layer, 'unicode', digits)}"]
    if isinstance(layer.reduction, LinearCombination):  # the others are a word, not a formula
        lines.append(f"  LaTeX: {reduction_formula(layer, 'latex', digits)}")
    return "\n".join(lines)


def _scalar_pde_lines(pde: EulerStep | EulerFlow, title: str, digits: int) -> list[str]:
    """The lines of one scalar PDE (an Euler step or flow of an
    :class:`~eqpdenet.pde.rhs.InvariantRHS`) under ``title``: its formulas, ``T``, ``dt`` and
    steps (one step for an :class:`EulerStep`), the stencil, the stability check, the ratios'
    reading and the invariants."""
    step = pde.step if isinstance(pde, EulerFlow) else pde
    rhs = step.rhs
    ratios = ratio_reading(rhs)
    time = (f"T = {pde.T:g}, dt = {step.dt:g}, steps = {pde.steps}"
            if isinstance(pde, EulerFlow) else f"one Euler step, dt = {step.dt:g}")
    return [
        f"{title} ({pde.name}; invariants of {rhs.invariant_set.group}"
        + (f", {rhs.invariant_set.equation}" if rhs.invariant_set.equation else "") + ")",
        f"  {pde_formula(pde, 'unicode', digits)}",
        f"  LaTeX: {pde_formula(pde, 'latex', digits)}",
        f"  {time}, stencil = {rhs.jet.stencil}"
        + ("" if rhs.jet.sigma is None else f" (σ = {rhs.jet.sigma:g})")
        + f", h = {rhs.jet.spacing:g}, boundary = {rhs.jet.boundary}; "
        + _stability_text(step, digits),
        *([f"  {ratios}"] if ratios else []),
        "  invariants: " + "; ".join(f"{inv.name} = {inv.unicode}"
                                     for inv in rhs.invariant_set.invariants),
    ]


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
    ``top`` a whole number >= 1, else a :class:`~eqpdenet.errors.ConfigError`; ``rhs`` an
    :class:`~eqpdenet.pde.rhs.InvariantSystemRHS`, else an
    :class:`~eqpdenet.errors.InputTypeError`.
    """
    if not isinstance(rhs, InvariantSystemRHS):
        fix = ("pass its right-hand side, step.rhs"
               if isinstance(_rhs_of(rhs), InvariantSystemRHS) else None)
        raise _refusal("leading_terms", "an InvariantSystemRHS (a PDE system's step.rhs)", rhs,
                       fix)
    _check_top(top)
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
    def field(i: torch.Tensor) -> torch.Tensor:
        return F(i.reshape(1, maps, 1, 1)).reshape(-1)

    with evaluation_mode(F), torch.enable_grad():  # each submodule's own mode restored
        constant = field(mean).detach()
        jacobian = torch.autograd.functional.jacobian(field, mean)  # (C, K)
    scaled = (jacobian * std).cpu()
    names = rhs.names
    out = []
    for c in range(scaled.shape[0]):
        order = scaled[c].abs().argsort(descending=True)[:top].tolist()
        out.append((float(constant[c]), [(float(scaled[c, k]), names[k]) for k in order]))
    return out


def _check_top(top) -> None:
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
        raise ConfigError(f"top must be a whole number >= 1 (terms per channel), got {top!r}")


def _constant(value: float) -> list[tuple[float, str]]:
    """A linearisation's constant term, left out where it is exactly 0 (a ``relative`` system's
    ``F(I) - F(0)`` at ``I = 0``), as :func:`pde_formula` leaves out zero coefficients."""
    return [(value, "")] if value != 0.0 else []


def describe_system(step: EulerStep, top: int = 3, digits: int = 3) -> str:
    """One Euler step ``u <- u + dt F_theta(I(u))`` of a PDE system, each channel's ``F`` read
    out as its leading terms (:func:`leading_terms`): where ``F`` normalises its invariants, at
    their running mean, ``Ĩ`` an invariant standardised by its running mean and standard
    deviation; otherwise at ``I = 0``, per unit of each (raw) invariant. ``step`` an
    :class:`EulerStep` of an :class:`~eqpdenet.pde.rhs.InvariantSystemRHS`, else an
    :class:`~eqpdenet.errors.InputTypeError`."""
    _check_step(step, "describe_system", InvariantSystemRHS)
    _check_digits(digits)
    _check_top(top)
    rhs = step.rhs
    first = rhs.F[0]
    # the same condition as leading_terms' linearisation point
    normalised = isinstance(first, nn.BatchNorm2d) and first.running_mean is not None
    where = ("the mean invariants (Ĩ = (I - mean) / std)" if normalised
             else "I = 0, per unit of each invariant")
    lines = [f"{step.name}: u <- u + {step.dt:g} F(I(u)), {rhs.channels} channels, "
             f"{rhs.invariants_of.out_channels} invariant maps; leading terms of F at {where}:"]
    for c, (constant, terms) in enumerate(leading_terms(rhs, top)):
        body = _terms_to_text([*_constant(constant), *((a, f"Ĩ[{name}]" if normalised else name)
                                                       for a, name in terms)], digits, latex=False)
        lines.append(f"  ∂t u{c + 1} ≈ {body} + ...")
    return "\n".join(lines)


def _check_step(step, function: str, kind: type) -> None:
    """The :func:`_refusal` of ``function`` unless ``step`` is an :class:`EulerStep` whose
    right-hand side is a ``kind``."""
    if isinstance(step, EulerStep) and isinstance(step.rhs, kind):
        return
    fix = None
    if isinstance(step, kind):
        fix = "pass the EulerStep that holds it"
    elif isinstance(step, EulerFlow) and isinstance(step.step.rhs, kind):
        fix = "pass its step, flow.step"
    raise _refusal(function, f"an EulerStep whose right-hand side is an {kind.__name__}", step,
                   fix)


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
    def field(i: torch.Tensor) -> torch.Tensor:
        x = term.mix(term.norm(i.reshape(1, maps, 1)))
        return term.out(torch.relu(term.hidden_norm(x))).reshape(-1)

    with evaluation_mode(term), torch.enable_grad():  # each submodule's own mode restored
        constant = field(mean).detach()
        if relative:
            constant = constant - field(torch.zeros_like(mean)).detach()
        jacobian = torch.autograd.functional.jacobian(field, mean)  # (C, 10 C)
    scaled = (jacobian * std).cpu()
    labels = [name.replace("u", f"u{c + 1}") for c in range(channels) for name in names]
    out = []
    for c in range(scaled.shape[0]):
        order = scaled[c].abs().argsort(descending=True)[:top].tolist()
        out.append((float(constant[c]), [(float(scaled[c, k]), labels[k]) for k in order
                                         if float(scaled[c, k]) != 0.0]))
    return out


#: The units of the PDE-G-CNN terms' coefficients (every derivative is taken of ``G_sigma * U``,
#: the spatial ones scale-normalised by ``sigma^n``; ``A3 = d/dtheta`` in radians), as
#: docs/lifted.md ("Units, and what the PDE-G-CNN terms compute") states and
#: tests/pde/test_gaussian_accuracy_round8.py measures.
_M2_TERM_UNITS = {
    "v": "units: v1, v2 in σ per unit time (a centroid moves v σ px per unit time), v3 in rad per unit time",
    "D": ("units: D1, D2 in σ² per unit time (the variance grows 2 D σ² px² per unit time), D3 in "
          "rad² per unit time (2 D3 rad²)"),
    "g": ("units: g weights the squared derivatives, |∇u|_g² = g1 (σ A1u)² + g2 (σ A2u)² + "
          "g3 (A3u)² (a dual metric)"),
}


def _sigma_text(sigmas: tuple[float, ...]) -> str:
    if len(sigmas) == 1:
        return f"σ = {sigmas[0]:.3g} px"
    return f"σ = {', '.join(f'{s:.3g}' for s in sigmas)} px at the {len(sigmas)} scale levels"


def describe_m2_system(step: EulerStep, top: int = 3, digits: int = 3) -> str:
    """One Euler step ``U <- U + dt F(I(U))`` of a PDE system on M2: the ``network`` term as its
    leading terms in the left-invariant derivatives ``A1u1, A13u2, ...`` (``Ĩ`` standardised
    where ``F`` normalises its invariants), the PDE-G-CNN terms by their coefficients (per
    channel: convection velocity ``v``, diffusivities ``D``, dilation/erosion metric ``g``,
    along ``A1, A2, A3``), each followed by its units (:data:`_M2_TERM_UNITS`); a term of one's
    own by one line naming it, saying that its coefficients are not read out. ``step`` an
    :class:`EulerStep` of an :class:`~eqpdenet.pde.m2_rhs.M2SystemRHS`, else an
    :class:`~eqpdenet.errors.InputTypeError`."""
    _check_step(step, "describe_m2_system", M2SystemRHS)
    _check_digits(digits)
    _check_top(top)
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
                body = _terms_to_text([*_constant(constant), *((a, f"{symbol}[{n}]" if symbol else n)
                                                               for a, n in terms)], digits, False)
                # Every first-order coefficient exactly 0: F is flat there (each hidden unit's
                # ReLU inactive at that point, or a zero output layer), which an equation of a
                # constant alone does not tell a reader from a print that lost its terms.
                flat = "" if terms else (" (no first-order term: F's derivative in every "
                                         "invariant is 0 at this point, each hidden unit inactive "
                                         "there or the output weights 0)")
                lines.append(f"    ∂t u{c + 1} ≈ {body} + ...{flat}")
        elif isinstance(term, ConvectionTerm | DiffusionTerm | DilationTerm | ErosionTerm):
            values = term.weight.detach() if isinstance(term, ConvectionTerm) else (
                torch.nn.functional.softplus(term.weight.detach()))
            label = {ConvectionTerm: "v", DiffusionTerm: "D"}.get(type(term), "g")
            rows = ", ".join(f"u{c + 1}: ({', '.join(_number(float(x), digits) for x in row)})"
                             for c, row in enumerate(values.cpu()))
            lines.append(f"  {name}, {label} along (A1, A2, A3): {rows}")
            lines.append(f"    ({_M2_TERM_UNITS[label]}; {_sigma_text(rhs.jet.sigmas)}; "
                         f"derivatives of the smoothed G_σ * U, docs/lifted.md)")
        elif isinstance(term, LinearTerm):
            norm = float(term.map.weight.detach().norm())
            bias = " + b" if term.map.bias is not None else ""
            lines.append(f"  linear: W u{bias}, |W| = {_number(norm, digits)}")
        else:  # a term of one's own (M2_TERMS.register): its form is not known here
            lines.append(f"  {name}: a term of one's own ({type(term).__name__}); its "
                         f"coefficients are not read out")
    report = step.stability()   # M2SystemRHS.euler_stability
    if report["stable"]:
        bound = ("" if report["max_dt"] is None
                 else f" (dt ≤ {_number(report['max_dt'], digits)})")
        lines.append(f"  explicit Euler check, F linearised at U = 0: stable{bound}")
    elif report["stable"] is False:
        lines.append(f"  explicit Euler check, F linearised at U = 0: UNSTABLE ({report['reason']})")
    else:
        lines.append(f"  explicit Euler check, F linearised at U = 0: n/a ({report['reason']})")
    return "\n".join(lines)


def describe_model(model: nn.Module, digits: int = 3) -> str:
    """:func:`describe_layer` of an :class:`EqPdeNet`, with its input standardisation and its
    head; for a model made of PDE systems (``InvariantPDENet``, ``LiftedPDENet`` on M2),
    :func:`describe_system` or :func:`describe_m2_system` of each block.

    A model wrapped by ``torch.compile`` (``_orig_mod``), ``AveragedModel``, ``DataParallel`` or
    ``DistributedDataParallel`` (``module``) is described as the model it wraps. Any other module
    is searched: each :class:`EqPdeNet`, :class:`~eqpdenet.pde.layer.PDELayer`,
    ``InvariantPDENet`` and ``LiftedPDENet`` inside it (README's
    ``nn.Sequential(PDELayer, nn.Flatten(), nn.Linear(...))``, a model wrapped in a
    ``Sequential``) is described under its name in the module, and so is each
    :class:`~eqpdenet.pde.integrators.EulerFlow` or
    :class:`~eqpdenet.pde.integrators.EulerStep` of a scalar PDE (an
    :class:`~eqpdenet.pde.rhs.InvariantRHS`) outside those, as :func:`describe_layer` describes a
    layer's PDE (formulas, ``T``, ``dt``, steps, stencil, stability); a bare flow or step is
    described itself. Every Euler step of PDE systems outside those is described after them
    (:func:`describe_system`, :func:`describe_m2_system`); only a module with none of these has
    "no PDE layer to describe". ``model`` an ``nn.Module``, else an
    :class:`~eqpdenet.errors.InputTypeError`."""
    _check_module(model, "describe_model")
    _check_digits(digits)
    model = _unwrapped(model)
    return _found_text(model, digits) or f"{type(model).__name__}: no PDE layer to describe"


def describes_pdes(model: nn.Module) -> bool:
    """Whether :func:`describe_model` finds a PDE in ``model`` (else it says "no PDE layer to
    describe"): decided by the modules found, never by a model kind's name (a family of one's
    own holds PDEs too). ``model`` an ``nn.Module``, else an
    :class:`~eqpdenet.errors.InputTypeError`."""
    _check_module(model, "describes_pdes")
    return _found_text(_unwrapped(model), 3) is not None


def _check_module(model, function: str) -> None:
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"{function} takes an nn.Module (a model, a layer, or any module "
                             f"holding PDEs), got {type(model).__name__}")


def _found_text(model: nn.Module, digits: int) -> str | None:
    """:func:`describe_model`'s text of an unwrapped ``model``, or None where it holds no PDE."""
    own = _describe_one(model, digits)
    if own is not None:
        return own
    found, inside = [], set()
    for name, module in model.named_modules():  # parents first: a layer before its flows
        if module is model or id(module) in inside:
            continue
        text = _describe_one(_unwrapped(module), digits)
        if text is not None:
            found.append(f"{type(model).__name__}, module {name!r}: {text}")
            inside.update(id(m) for m in module.modules())
    # The Euler steps of PDE systems outside what was described: with a PDELayer or a bare
    # scalar flow beside them they went unsaid.
    systems = _systems_text(model, digits, inside)
    if systems is not None:
        found.append(systems)
    return "\n".join(found) if found else None


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model that ``torch.compile`` (``_orig_mod``), ``AveragedModel``, ``DataParallel`` or
    ``DistributedDataParallel`` (``module``, their only child) wraps, unwrapped as often as
    wrapped."""
    while True:
        inner = model._modules.get("_orig_mod")
        if inner is None and list(model._modules) == ["module"]:
            inner = model._modules["module"]
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _describe_one(module: nn.Module, digits: int) -> str | None:
    """The description of a model or layer the library describes, else None."""
    if isinstance(module, EqPdeNet):
        return _describe_eqpdenet(module, digits)
    if isinstance(module, InvariantPDENet | LiftedPDENet):
        return _systems_text(module, digits)
    if isinstance(module, PDELayer):
        return (f"PDELayer: {module.n_pdes} PDEs, reduction {module.reduction_kind}\n"
                + describe_layer(module, digits))
    if isinstance(_rhs_of(module), InvariantRHS):
        # a scalar PDE outside a PDELayer (README: EulerStep, EulerFlow are usable alone): said
        # "no PDE layer to describe" while pde_formula wrote it
        return "\n".join(_scalar_pde_lines(module, type(module).__name__, digits))
    return None


def _systems_text(model: nn.Module, digits: int, skip: Set[int] = frozenset()) -> str | None:
    """Each Euler step of PDE systems in ``model`` (on M2 first) but those whose ``id`` is in
    ``skip`` (described already), or None where it has none."""
    m2_systems = [m for m in model.modules() if id(m) not in skip
                  and isinstance(m, EulerStep) and isinstance(m.rhs, M2SystemRHS)]
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
    systems = [m for m in model.modules() if id(m) not in skip
               and isinstance(m, EulerStep) and isinstance(m.rhs, InvariantSystemRHS)]
    if systems:
        return "\n".join([f"{type(model).__name__}: {len(systems)} Euler steps of PDE systems",
                          *(describe_system(step, digits=digits) for step in systems)])
    return None


def _describe_eqpdenet(model: EqPdeNet, digits: int) -> str:
    """The standardisation, the number of PDEs, the head (its perceptron's widths read from its
    ``nn.Linear`` modules, whatever else the head holds: an ``mlp`` of one's own), then
    :func:`describe_layer`."""
    s = model.standardize
    head = (f"EqPdeNet: input u(0) = (image - {s.mean:g}) / {s.std:g}, "
            f"{model.pde_layer.n_pdes} PDEs, {_perceptron_text(model.mlp)}"
            + _head_inputs(model))
    return head + "\n" + describe_layer(model.pde_layer, digits)


def _perceptron_text(mlp: nn.Module) -> str:
    """``perceptron 784-16-16-10``: the input width of the first ``nn.Linear`` and the output
    width of each; a head without one is named by its class."""
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return f"head {type(mlp).__name__}"
    widths = [linears[0].in_features] + [linear.out_features for linear in linears]
    return "perceptron " + "-".join(map(str, widths))


def _head_inputs(model: EqPdeNet) -> str:
    """What the inputs of an invariant head are (a perceptron head's are the output maps'
    pixels, the paper's)."""
    if getattr(model, "head", "perceptron") != "invariant":
        return ""
    invariants = model.head_invariants
    maps = model.pde_layer.out_channels(model.in_channels)
    return (f" on the mean and the maximum over the image of the {len(invariants)} "
            f"{invariants.name} invariants ({', '.join(invariants.names)}) of each of the "
            f"{maps} output map{'s' if maps != 1 else ''}, batch-normalised")
