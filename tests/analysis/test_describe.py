"""Formula text of learned PDEs and the evolution grid."""

import warnings

import numpy as np
import pytest
import torch

from eqpdenet.analysis.describe import describe_layer, pde_formula, reduction_formula
from eqpdenet.app.figures import evolution_grid
from eqpdenet.pde import PDELayer


def layer_with(weights: dict, bias: float = 0.0, invariants=("se2",), **kwargs) -> PDELayer:
    layer = PDELayer.build(list(invariants), T=1.0, dt=0.1, init_noise=0.0, **kwargs)
    step = layer.pdes[0].step
    with torch.no_grad():
        for name, value in weights.items():
            step.rhs.F.weight[step.rhs.invariant_set.names.index(name)] = value
        step.rhs.F.bias.fill_(bias)
    return layer


def test_unicode_formula_of_known_coefficients():
    layer = layer_with({"laplacian": 0.12, "grad_sq": -0.03})
    text = pde_formula(layer.pdes[0])
    assert text == "∂t u = −0.03 (u_x² + u_y²) + 0.12 (u_xx + u_yy)"
    assert "0.12 (u_xx + u_yy)" in text and "−0.03 (u_x² + u_y²)" in text
    layer = layer_with({"laplacian": 0.12, "u": 0.5, "grad_sq": -0.03}, bias=-0.25)
    text = pde_formula(layer.pdes[0])
    assert text == "∂t u = 0.5 u − 0.03 (u_x² + u_y²) + 0.12 (u_xx + u_yy) − 0.25"
    assert "+ 0.12 (u_xx + u_yy)" in text and "− 0.03 (u_x² + u_y²)" in text


def test_latex_formula():
    layer = layer_with({"laplacian": 0.12, "u": 0.5, "grad_sq": -0.03})
    assert pde_formula(layer.pdes[0], "latex") == (
        r"\partial_t u = 0.5 u - 0.03 \left(u_x^2 + u_y^2\right) "
        r"+ 0.12 \left(u_{xx} + u_{yy}\right)")


def test_zero_layer_and_scaling_and_polynomial():
    assert pde_formula(PDELayer.build(["se2"], init_noise=0.0).pdes[0]) == "∂t u = 0"
    scaling = layer_with({"u_x2_over_u_xx": 0.2}, invariants=("scaling",))
    assert pde_formula(scaling.pdes[0]) == "∂t u = 0.2 (u_x² / u_xx)"
    assert pde_formula(scaling.pdes[0], "latex") == r"\partial_t u = 0.2 \frac{u_x^2}{u_{xx}}"
    poly = PDELayer.build(["se2"], rhs="polynomial", degree=2, init_noise=0.0)
    step = poly.pdes[0].step
    monomials = step.rhs.F.monomials()
    with torch.no_grad():
        step.rhs.F.weight[monomials.index((0, 0, 2, 0, 0))] = 0.5   # laplacian²
        step.rhs.F.weight[monomials.index((1, 1, 0, 0, 0))] = -2.0  # u (u_x² + u_y²)
    assert pde_formula(step) == "∂t u = −2 u (u_x² + u_y²) + 0.5 (u_xx + u_yy)²"
    assert r"\left(u_{xx} + u_{yy}\right)^{2}" in pde_formula(step, "latex")


def test_describe_layer_has_T_dt_and_reduction():
    layer = layer_with({"laplacian": 0.12}, invariants=("se2", "scaling"))
    text = describe_layer(layer)
    assert "T = 1, dt = 0.1, steps = 10" in text
    assert "0.12 (u_xx + u_yy)" in text and "grad_sq = u_x² + u_y²" in text
    assert reduction_formula(layer) == "u_out = 0.5 u_T(0) + 0.5 u_T(1)"
    assert r"u_T^{(1)}" in reduction_formula(layer, "latex")


def test_evolution_grid_png(tmp_path):
    layer = layer_with({"laplacian": 0.2}, invariants=("se2", "scaling"))
    images = torch.zeros(2, 1, 28, 28)
    images[:, :, 10:18, 12:16] = 1.0
    path = tmp_path / "evolution.png"
    evolution_grid(layer, images, path, frames=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    assert width == int(100 * (1.3 * 4 + 1.6)) and height == int(100 * 1.35 * 4)


def test_leading_terms_of_a_pde_system_are_its_linearisation():
    """F = conv2(relu(bn2(conv1(bn1(I))))) set by hand so that, near the mean invariants, F is
    exactly 3 (2 Δu + 10) + 0.5 = 6 Δu + 30.5 (the ReLU is active there): the read-out must say
    constant 30.5 and a leading coefficient 6 per standard deviation of Δu (here 2, so 12)."""
    import pytest
    import torch

    from eqpdenet.analysis.describe import describe_model, describe_system, leading_terms
    from eqpdenet.pde.integrators import EulerStep
    from eqpdenet.pde.rhs import InvariantSystemRHS

    rhs = InvariantSystemRHS(1, "se2", hidden=1)
    names = rhs.names
    laplacian = next(k for k, name in enumerate(names) if name.startswith("Δ"))
    bn1, conv1, bn2, _, conv2 = rhs.F
    with torch.no_grad():
        bn1.running_mean.fill_(0.0)
        bn1.running_var.fill_(4.0 - bn1.eps)  # sigma = 2 for every invariant
        bn1.weight.fill_(2.0)  # undo the division by sigma: bn1 is the identity here
        bn1.bias.zero_()
        conv1.weight.zero_()
        conv1.weight[0, laplacian] = 2.0
        bn2.running_mean.zero_()
        bn2.running_var.fill_(1.0 - bn2.eps)
        bn2.weight.fill_(1.0)
        bn2.bias.fill_(10.0)
        conv2.weight.fill_(3.0)
        conv2.bias.fill_(0.5)
    [(constant, terms)] = leading_terms(rhs, top=2)
    assert constant == pytest.approx(30.5)
    assert terms[0][1] == names[laplacian]
    assert terms[0][0] == pytest.approx(12.0)  # 6 per unit of Δu, times its std 2
    assert terms[1][0] == pytest.approx(0.0)
    assert rhs.F.training  # the read-out leaves the mode as it found it
    text = describe_system(EulerStep(rhs, 0.25, name="block"))
    assert "0.25" in text and "30.5" in text and f"12 Ĩ[{names[laplacian]}]" in text
    model = torch.nn.Sequential(EulerStep(rhs, 0.25, name="a"), EulerStep(rhs, 0.25, name="b"))
    assert describe_model(model).count("∂t u1 ≈") == 2


def test_lifted_model_reads_out_its_m2_systems():
    # A hand-set network term without batch norms: with b1 > 0 every hidden unit is active at
    # I = 0, so F is linear there with Jacobian W2 W1: du1/dt = (0.7 + 2 relu(1)) + 2 * 0.5 A13u2
    from eqpdenet.analysis.describe import describe_model
    from eqpdenet.models import LiftedPDEConfig, LiftedPDENet

    net = LiftedPDENet(LiftedPDEConfig(channels=[2], blocks=[1], hidden=1.0,
                                       normalize_hidden=False, terms=["network", "convection"]))
    rhs = net.stages[0][0].rhs
    network = rhs.terms["network"]
    with torch.no_grad():
        network.mix.weight.zero_()
        network.mix.weight[0, 10 + 6] = 0.5          # hidden 1 <- A13u of channel 2
        network.mix.bias.fill_(1.0)
        network.out.weight.zero_()
        network.out.weight[0, 0] = 2.0                # du1/dt <- hidden 1
        network.out.bias.copy_(torch.tensor([0.7, -0.2]))
        rhs.terms["convection"].weight.copy_(torch.tensor([[0.25, 0.0, -1.5], [0.0, 0.0, 0.0]]))
    text = describe_model(net, digits=3)
    assert "LiftedPDENet: 1 Euler steps of PDE systems on M2" in text
    assert "∂t u1 ≈ 2.7 + 1 A13u2 + ..." in text
    # u2's output weights are 0: F is flat in u2, said rather than left to a bare constant
    assert "∂t u2 ≈ −0.2 + ... (no first-order term: F's derivative in every invariant is 0" in text
    assert "∂t u1 ≈ 2.7 + 1 A13u2 + ...\n" in text
    assert "convection, v along (A1, A2, A3): u1: (0.25, 0, -1.5), u2: (0, 0, 0)" in text


def test_lifted_model_with_background_reads_out_the_change_from_the_blank_field():
    # As above, relative to the blank field: F(I) - F(0) has no constant and no b2
    from eqpdenet.analysis.describe import describe_model
    from eqpdenet.models import LiftedPDEConfig, LiftedPDENet

    net = LiftedPDENet(LiftedPDEConfig(channels=[2], blocks=[1], hidden=1.0,
                                       normalize_hidden=False, terms=["network", "linear"],
                                       boundary="background"))
    rhs = net.stages[0][0].rhs
    network = rhs.terms["network"]
    assert network.out.bias is None and rhs.terms["linear"].map.bias is None
    with torch.no_grad():
        network.mix.weight.zero_()
        network.mix.weight[0, 10 + 6] = 0.5
        network.mix.bias.fill_(1.0)
        network.out.weight.zero_()
        network.out.weight[0, 0] = 2.0
    text = describe_model(net, digits=3)
    assert "V <- V + 1 (F(I(V)) - F(0)), V = U - U_blank, on M2" in text
    assert "∂t u1 ≈ 1 A13u2 + ..." in text  # 2.7 - 2.7: no constant term (and no "0 +")
    assert "linear: W u, |W| = 0" in text


def test_lifted_model_with_center_says_so():
    from eqpdenet.analysis.describe import describe_model
    from eqpdenet.models import LiftedPDEConfig, LiftedPDENet

    centred = describe_model(LiftedPDENet(LiftedPDEConfig(channels=[2], blocks=[1], center=True)))
    plain = describe_model(LiftedPDENet(LiftedPDEConfig(channels=[2], blocks=[1])))
    assert "first moved by whole pixels to put its centre of mass at the frame's centre" in centred
    assert "centre of mass" not in plain


def test_lifted_model_with_fewer_orientations_per_stage_says_so():
    from eqpdenet.analysis.describe import describe_model
    from eqpdenet.models import LiftedPDEConfig, LiftedPDENet

    plain = describe_model(LiftedPDENet(LiftedPDEConfig(channels=[2, 3], blocks=[1, 1])))
    assert "orientations" not in plain.splitlines()[0]
    text = describe_model(LiftedPDENet(LiftedPDEConfig(orientations=16, stage_orientations=[8, 4],
                                                       channels=[2, 3], blocks=[1, 1])))
    assert "orientations 16 lifted, 8, 4 in the stages" in text.splitlines()[0]


def test_describe_out_of_a_model_without_evolution_images_says_so(tmp_path, capsys):
    """``describe --out`` of a lifted checkpoint prints its PDEs and says that nothing is drawn,
    rather than leaving the asked-for folder silently absent."""
    from eqpdenet.app.cli import main
    from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
    from eqpdenet.app.training import save_checkpoint

    config = apply_overrides(ExperimentConfig(), [
        "model.kind='lifted_pde'", "model.lifted_pde.channels=[3, 4]",
        "model.lifted_pde.blocks=[1, 1]"])
    save_checkpoint(tmp_path / "model.pt", build_model(config.model), config)
    assert main(["describe", str(tmp_path / "model.pt"), "--out", str(tmp_path / "d")]) == 0
    captured = capsys.readouterr()
    assert "stage0.block0" in captured.out
    assert "evolution images are drawn of the paper's PDE layer" in captured.err
    assert "lifted_pde checkpoint" in captured.err and not (tmp_path / "d").exists()


def test_leading_terms_without_invariant_normalisation_are_at_zero_per_raw_unit():
    """Without the invariant batch norm the read-out is a linearisation at I = 0 per unit of
    each raw invariant: no Ĩ, no "mean invariants" (F = 3 relu(2 Δu + 10) + 0.5 near I = 0)."""
    from eqpdenet.analysis.describe import describe_system
    from eqpdenet.pde.integrators import EulerStep
    from eqpdenet.pde.rhs import InvariantSystemRHS

    rhs = InvariantSystemRHS(1, "se2", hidden=1, normalize_invariants=False)
    conv1, bn2, _, conv2 = rhs.F
    with torch.no_grad():
        conv1.weight.zero_()
        conv1.weight[0, rhs.names.index("Δu1")] = 2.0
        bn2.running_var.fill_(1.0 - bn2.eps)
        bn2.bias.fill_(10.0)
        conv2.weight.fill_(3.0)
        conv2.bias.fill_(0.5)
    text = describe_system(EulerStep(rhs, 0.25, name="block"), top=1)
    assert text.splitlines() == [
        "block: u <- u + 0.25 F(I(u)), 1 channels, 5 invariant maps; leading terms of F at "
        "I = 0, per unit of each invariant:",
        "  ∂t u1 ≈ 30.5 + 6 Δu1 + ..."]


def test_describe_prints_how_ratios_are_regularised():
    """Layers that differ only in the ratio regularisation (or its ε) compute different PDEs:
    their descriptions differ, and say what each computes."""
    torch.manual_seed(0)
    absolute = PDELayer.build(["scaling"], init="normal", init_scale=0.05,
                              ratio_regularisation="absolute")
    covariant = PDELayer.build(["scaling"], init="normal", init_scale=0.05,
                               ratio_regularisation="covariant", ratio_eps=1.0)
    covariant.load_state_dict(absolute.state_dict())
    lines = {layer: describe_layer(layer).splitlines()[4].strip()
             for layer in (absolute, covariant)}
    assert lines[absolute] == ("ratios (absolute, ε = 0.1): every a / b above is "
                               "a b / (b² + ε²) (0 where b = 0)")
    assert lines[covariant] == ("ratios (covariant, ε = 1): every a / b above is "
                                "a b / (b² + ε² R) (0 where its denominator is 0); "
                                "R = u_xx² + 2 u_xy² + u_yy² + (u_x² + u_y²)²")
    sim2 = describe_layer(PDELayer.build(["sim2"], init_noise=0.0)).splitlines()[4].strip()
    assert sim2 == ("ratios (covariant, ε = 0.1): a / b above is a b / (b² + ε² R) in "
                    "grad_sq_over_laplacian; a b / (b² + ε² R²) in "
                    "grad_sq_laplacian_over_hess_det, grad_hess_grad_over_hess_det "
                    "(0 where its denominator is 0); R = u_xx² + 2 u_xy² + u_yy² + (u_x² + u_y²)²")
    assert "ratios" not in describe_layer(PDELayer.build(["se2"], init_noise=0.0))


def _check_line(layer: PDELayer) -> str:
    return describe_layer(layer).splitlines()[3].split("; ", 1)[1]


def test_stability_check_prints_both_bounds_and_the_value():
    layer = layer_with({"laplacian": -0.03})
    assert _check_line(layer) == "diffusion check 0 ≤ a·dt ≤ 0.25: a·dt = −0.003, UNSTABLE"
    assert _check_line(layer_with({"laplacian": 2.0})) == (
        "diffusion check 0 ≤ a·dt ≤ 0.25: a·dt = 0.2, stable")
    assert _check_line(layer_with({}, invariants=("scaling",))) == (
        "diffusion check 0 ≤ a·dt ≤ 0.25: n/a (no second-order term in F linearised at u = 0)")


@pytest.mark.parametrize(("stencil", "a", "bound"), [("central", 2.5, "0.25"),
                                                     ("isotropic", 3.75, "0.375")])
def test_stability_exactly_at_the_bound_is_stable(stencil, a, bound):
    """a dt = 2 / lambda_max exactly (2 / (16 / 3) evaluates to 0.37499999999999994): stable,
    no warning; the next float32 coefficient above is unstable and warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = PDELayer.build(["se2"], stencil=stencil, dt=0.1, init="heat", init_scale=a,
                               init_noise=0.0)
    [report] = layer.stability()
    assert report["a_dt"] == float(bound) and report["stable"] is True
    assert _check_line(layer) == f"diffusion check 0 ≤ a·dt ≤ {bound}: a·dt = {bound}, stable"
    above = float(np.nextafter(np.float32(a), np.float32(10)))
    with pytest.warns(UserWarning, match="violates the explicit Euler bound"):
        layer = PDELayer.build(["se2"], stencil=stencil, dt=0.1, init="heat",
                               init_scale=above, init_noise=0.0)
    assert layer.stability()[0]["stable"] is False


def test_polynomial_F_gets_the_stability_check_and_the_warning():
    """A polynomial F has the Laplacian coefficient of its linearisation at u = 0 (the weight of
    its degree-1 Laplacian monomial: every se2 invariant vanishes at u = 0, so the degree-2
    terms do not contribute); heat flow with a dt = 0.5 is unstable, as for the linear F."""
    with pytest.warns(UserWarning, match=r"initial diffusivity 5 with dt=0.1 \(a dt = 0.5\) "
                                         r"violates the explicit Euler bound"):
        layer = PDELayer.build(["se2"], rhs="polynomial", degree=2, init="heat", init_scale=5.0,
                               init_noise=0.0)
    assert _check_line(layer) == ("diffusion check 0 ≤ a·dt ≤ 0.25: a·dt = 0.5 (a of F "
                                  "linearised at u = 0), UNSTABLE")
    F = layer.pdes[0].step.rhs.F
    with torch.no_grad():
        F.weight[F.monomials().index((0, 0, 2, 0, 0))] = 7.0   # (Δu)²
        F.weight[F.monomials().index((1, 0, 1, 0, 0))] = -3.0  # u Δu
        F.weight[F.monomials().index((0, 0, 1, 0, 0))] = 2.0
    [report] = layer.stability()
    assert report["diffusivity"] == 2.0 and report["stable"] is True
    # the linearisation: F(I(eps v)) / eps -> 2 Δv (+ the u term) as eps -> 0
    v = torch.randn(1, 1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rhs = layer.pdes[0].step.rhs.double()
    with torch.no_grad():
        F.weight[F.monomials().index((1, 0, 0, 0, 0))] = 0.0
        jet = rhs.jet(v)
        linear = 2.0 * (jet[:, :, 3] + jet[:, :, 5])
        torch.testing.assert_close(rhs(1e-6 * v) / 1e-6, linear, rtol=1e-4, atol=1e-4)


def test_describe_out_of_a_pde_that_blows_up_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """The learned PDE is not finite on the chosen images: describe prints the formulas, then
    says so with describe's own explanation (not a training hint) and leaves no folder."""
    from eqpdenet.app import cli
    from eqpdenet.app.training import save_checkpoint
    from helpers import save_blowing_up_checkpoint

    model, config = save_blowing_up_checkpoint(tmp_path / "model.pt")  # u_t = 100 |∇u|²
    rhs = model.pde_layer.pdes[0].step.rhs
    images = torch.zeros(2, 1, 28, 28)
    images[:, :, 8:20, 12:16] = 1.0
    monkeypatch.setattr(cli, "_describe_images",
                        lambda *args: (images, ["MNIST test #0", "MNIST test #1"]))
    out = tmp_path / "new" / "d"
    assert cli.main(["describe", str(tmp_path / "model.pt"), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "100 (u_x² + u_y²)" in captured.out
    assert captured.err.startswith("eqpdenet: error: PDE 'pde0:se2' produced a non-finite state")
    assert ("The checkpoint's learned PDE (printed above) blows up on MNIST test #0, MNIST test "
            "#1 under its own explicit Euler scheme") in captured.err
    assert f"nothing was written to {out}" in captured.err
    assert "learning rate" not in captured.err
    assert not (tmp_path / "new").exists()
    with torch.no_grad():  # the same checkpoint, finite: the folder and its image
        rhs.F.weight.zero_()
    save_checkpoint(tmp_path / "model.pt", model, config)
    assert cli.main(["describe", str(tmp_path / "model.pt"), "--out", str(out),
                     "--frames", "1"]) == 0
    assert (out / "evolution.png").is_file()


def test_one_frame_is_u_T():
    from eqpdenet.app.figures import frame_steps

    assert frame_steps(10, 1) == [10]
    assert frame_steps(10, 2) == [0, 10] and frame_steps(10, 6) == [0, 2, 4, 6, 8, 10]
    assert frame_steps(3, 8) == [0, 1, 2, 3]


def test_anisotropic_second_order_part_gets_the_symbol_check():
    """A compiled set holding u_xx, u_xy, u_yy apart: 3 u_xx + u_yy at dt = 0.1 decays at most
    by 0.1 (4 * 3 + 4 * 1) = 1.6 per step (central stencil), stable; at dt = 0.15, 2.4."""
    import sympy as sp

    from eqpdenet.pde.symbolic import compile_invariants

    u, uxx, uxy, uyy = sp.symbols("u u_xx u_xy u_yy")
    invariants = compile_invariants([u, uxx, uxy, uyy], "plain_second_order")
    for dt, rate, verdict in [(0.1, "1.6", "stable"), (0.15, "2.4", "UNSTABLE")]:
        layer = PDELayer.build([invariants], T=dt, dt=dt, init_noise=0.0)
        with torch.no_grad():
            layer.pdes[0].step.rhs.F.weight.copy_(torch.tensor([0.0, 3.0, 0.0, 1.0]))
        assert _check_line(layer) == (
            f"diffusion check of 3 u_xx + 1 u_yy: elliptic and −dt·σ ≤ 2 at every frequency "
            f"(σ its stencil's symbol): max −dt·σ = {rate}, {verdict}")
