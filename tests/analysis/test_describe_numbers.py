"""The printed PDEs are the model's: ``describe``'s formula (Unicode and LaTeX), read as a
mathematician reads it, with its ratios regularised as its ``ratios`` line says, evaluates to the
module's ``F`` on random jets, for every monomial of a polynomial ``F`` of the built-in sets and
of compiled sets (products, ratios, numbers and signs in the invariants' own formulas)."""

import ast
import copy
import re

import pytest
import sympy as sp
import torch

from eqpdenet.analysis.describe import describe_layer, pde_formula
from eqpdenet.pde import PDELayer
from eqpdenet.pde.stencils import derivative_names
from eqpdenet.pde.symbolic import compile_invariants

_SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789", strict=True))


def _juxtaposition_to_python(text: str) -> str:
    """Spaces between factors are products; spaced + and - are the sums'."""
    text = re.sub(r"(^|\()\s*-\s+", r"\1-", text)  # a leading sign: "(- 2 u_x" is "(-2 u_x"
    text = text.replace(" + ", "+").replace(" - ", "-").replace(" / ", "/")
    text = re.sub(r"\s+", "*", text.strip())
    return re.sub(r"\)\(", ")*(", text)


def unicode_to_python(text: str) -> str:
    text = text.removeprefix("∂t u = ").replace("−", "-")
    text = re.sub("[⁰¹²³⁴⁵⁶⁷⁸⁹]+", lambda m: "**" + "".join(_SUPERSCRIPTS[c] for c in m.group()),
                  text)
    return _juxtaposition_to_python(text)


def _group(text: str, start: int) -> tuple[str, int]:
    """The brace group opening at ``text[start]`` and the position after it."""
    depth = 0
    for position in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[start + 1:position], position + 1
    raise AssertionError(f"unbalanced braces in {text!r}")


def latex_to_python(text: str) -> str:
    text = text.removeprefix(r"\partial_t u = ")
    while r"\frac{" in text:
        start = text.index(r"\frac{")
        numerator, after = _group(text, start + len(r"\frac"))
        denominator, end = _group(text, after)
        text = f"{text[:start]}(({numerator})/({denominator})){text[end:]}"
    text = text.replace(r"\left(", "(").replace(r"\right)", ")").replace(r" \, ", " ")
    text = re.sub(r"_\{(\w+)\}", r"_\1", text)
    text = re.sub(r"\^\{?(\d+)\}?", r"**\1", text)
    return _juxtaposition_to_python(text)


def ratio_rules(line: str) -> tuple[float, str, dict[str, str] | str, str | None]:
    """What a printed ``ratios`` line says: ``(eps, mode, reference per invariant or for all,
    R's formula)``; the reference is ``"R"``, ``"R²"``, ``"a²"`` or ``""`` (absolute)."""
    eps = float(re.search(r"ε = ([0-9.e+-]+)", line).group(1))
    if "absolute" in line:
        assert "a b / (b² + ε²)" in line
        return eps, "absolute", "", None
    r_formula = line.split("; R = ")[1] if "; R = " in line else None
    every = re.search(r"every a / b above is a b / \(b² \+ ε² (R²|R|a²)\)", line)
    if every:
        return eps, "covariant", every.group(1), r_formula
    rules = {}
    for kind, names in re.findall(r"a b / \(b² \+ ε² (R²|R|a²)\)[^;]*? in ([\w, ]+)", line):
        rules.update({name.strip(): kind for name in names.split(",")})
    return eps, "covariant", rules, r_formula


def evaluate(text: str, env: dict, ratios: dict[str, str], rules, eps: float, R) -> torch.Tensor:
    """``text`` (Python syntax) with every division of an invariant's ratio regularised."""
    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        assert isinstance(node, ast.BinOp), ast.dump(node)
        a, b = value(node.left), value(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Pow):
            return a**b
        assert isinstance(node.op, ast.Div)
        if isinstance(b, float | int):
            return a / b
        name = ratios[ast.dump(node)]  # a division must be one of an invariant, whole
        kind = rules if isinstance(rules, str) else rules[name]
        reference = {"": 1.0, "R": R, "R²": R * R if R is not None else None, "a²": a * a}[kind]
        return a * b / (b * b + eps**2 * reference)

    return value(ast.parse(text, mode="eval"))


def check_printed_formula_is_F(layer: PDELayer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pde in layer.pdes:
            pde.step.rhs.F.weight.copy_(torch.randn(pde.step.rhs.F.weight.shape,
                                                    generator=generator))
            pde.step.rhs.F.bias.fill_(0.375)
    text = describe_layer(layer, digits=17)  # 17 digits: the printed coefficients are exact
    for index, pde in enumerate(layer.pdes):
        rhs = pde.step.rhs
        invariant_set = rhs.invariant_set
        block = text.split(f"PDE {index} (")[1].split("\nPDE ")[0]
        ratio_line = next((line.strip() for line in block.splitlines()
                           if line.strip().startswith("ratios (")), None)
        if ratio_line is None:  # no ratio: any division by a variable below is an error
            eps, rules, r_formula = 1.0, "", None
        else:
            eps, mode, rules, r_formula = ratio_rules(ratio_line)
            assert (eps, mode) == (rhs.ratio_eps, rhs.ratio_regularisation) or (
                "fixed by the invariant set" in ratio_line)
        order = invariant_set.order
        jet = torch.randn((order + 1) * (order + 2) // 2, 6, 7, dtype=torch.float64,
                          generator=generator)
        env = dict(zip(derivative_names(order), jet, strict=True))
        F = copy.deepcopy(rhs.F).double()
        with torch.no_grad():
            expected = F(invariant_set(jet, rhs.ratio_eps, rhs.ratio_regularisation))
        for style, convert, source in (("unicode", unicode_to_python, "unicode"),
                                       ("latex", latex_to_python, "latex")):
            R = (evaluate(unicode_to_python(r_formula), env, {}, "", 1.0, None)
                 if r_formula else None)
            ratios = {}
            for invariant in invariant_set.invariants:
                tree = ast.parse(convert(getattr(invariant, source)), mode="eval").body
                for node in ast.walk(tree):
                    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                        ratios[ast.dump(node)] = invariant.name
            formula = pde_formula(pde, style, digits=17)
            assert formula in block
            got = evaluate(convert(formula), env, ratios, rules, eps, R)
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9,
                                       msg=f"{pde.name} ({style}): {formula}")


@pytest.mark.parametrize("regularisation", ["covariant", "absolute"])
def test_printed_polynomial_formulas_of_the_built_in_sets_are_F(regularisation):
    layer = PDELayer.build(["se2", "scaling", "sim2"], rhs="polynomial", degree=2,
                           init_noise=0.0, ratio_regularisation=regularisation, ratio_eps=0.3)
    check_printed_formula_is_F(layer, seed=0)


def test_printed_formulas_of_compiled_sets_are_F():
    """Products (``u_x u_y``, squared: the case printed as ``u_x u_y²``), ratios, a division by
    a number and a negative coefficient inside an invariant; covariant ratios with the ``a²``
    reference, and a set that fixes its own absolute ``ratio_eps``."""
    u_x, u_y, u_xx, u_xy, u_yy = sp.symbols("u_x u_y u_xx u_xy u_yy")
    expressions = [u_x * u_y, u_x**2 / u_xx, (u_x + u_y) / u_yy, -2 * u_x * u_y * u_xy,
                   u_xx / 3]
    layer = PDELayer.build([compile_invariants(expressions, "mine"),
                            compile_invariants(expressions, "mine_fixed", ratio_eps=0.05)],
                           rhs="polynomial", degree=2, init_noise=0.0)
    text = describe_layer(layer)
    assert "ratios (covariant, ε = 0.1): every a / b above is a b / (b² + ε² a²)" in text
    assert ("ratios (absolute, ε = 0.05 fixed by the invariant set, not the layer's ratio_eps "
            "or regularisation)") in text
    check_printed_formula_is_F(layer, seed=1)
    # the monomial of the report, alone: (u_x u_y)² is 36 at u_x = 2, u_y = 3, u_x u_y² is 18
    F = layer.pdes[0].step.rhs.F
    with torch.no_grad():
        F.weight.zero_()
        F.bias.zero_()
        F.weight[F.monomials().index((2, 0, 0, 0, 0))] = 1.0
    assert pde_formula(layer.pdes[0]) == "∂t u = 1 (u_x u_y)²"
    assert pde_formula(layer.pdes[0], "latex") == r"\partial_t u = 1 \left(u_{x} u_{y}\right)^{2}"
