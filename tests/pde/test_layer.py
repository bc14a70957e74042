"""The PDE layer: equivariance ladder, exact solutions, gradients, stability errors."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from eqpdenet.analysis.references import heat_pde
from eqpdenet.errors import ConfigError, InputError, NonFiniteStateError
from eqpdenet.geometry import pixel_coordinates, rotate
from eqpdenet.models import EqPdeNet
from eqpdenet.pde import (
    BOUNDARIES,
    EulerFlow,
    EulerStep,
    InvariantRHS,
    LayerConfig,
    LinearF,
    PDELayer,
    PolynomialF,
    available_invariant_sets,
    available_stencils,
    get_invariant_set,
    jet,
    steps_for,
)
from eqpdenet.pde.integrators import MAX_STEPS
from eqpdenet.pde.stencils import stencil_has_scale


def randomise(layer: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator,
                                                dtype=parameter.dtype))
    return layer


def smooth_image(size: int, dtype=torch.float64, batch: int = 2) -> torch.Tensor:
    """A batch of smooth images: sums of Gaussian bumps (width ~ size / 8 pixels)."""
    x, y = pixel_coordinates(size, size, 8.0 / size, dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    images = []
    for _ in range(batch):
        centres = torch.rand(3, 2, generator=generator, dtype=dtype) * 3 - 1.5
        image = sum(torch.exp(-((x - cx) ** 2 + 0.6 * (y - cy) ** 2)) for cx, cy in centres)
        images.append(image)
    return torch.stack(images)[:, None]


def disk(size: int, radius_fraction: float = 0.35) -> torch.Tensor:
    x, y = pixel_coordinates(size, size)
    return (x**2 + y**2 <= (radius_fraction * size) ** 2)


ROTATION_INVARIANT_SETS = [name for name in available_invariant_sets("plane")
                           if "rotations" in get_invariant_set(name).invariant_under]


@pytest.mark.parametrize("stencil", available_stencils())
@pytest.mark.parametrize("boundary", BOUNDARIES.names())
@pytest.mark.parametrize("name", ROTATION_INVARIANT_SETS)
def test_every_rotation_invariant_set_commutes_with_quarter_turns(name, stencil, boundary):
    """Quarter turns map the grid onto itself: the invariants of the turned image are the turned
    invariants, and so is the whole layer (reference and fused), to 1e-9 in float64."""
    u = torch.rand(3, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    invariant_set = get_invariant_set(name)
    sigma = 1.0 if stencil_has_scale(stencil) else None  # the gaussian family's scale

    def invariants(images):
        return invariant_set(jet(images, 2, stencil, 1.0, boundary, sigma))

    reference = invariants(u)
    scale = reference.abs().max()
    for k in (1, 2, 3):
        difference = invariants(torch.rot90(u, k, (-2, -1))) - torch.rot90(reference, k, (-2, -1))
        assert difference.abs().max() <= 1e-9 * scale, (k, difference.abs().max() / scale)
    for backend in ("reference", "fused"):
        layer = randomise(PDELayer.build([name, name], T=0.5, dt=0.1, stencil=stencil,
                                         sigma=sigma, boundary=boundary,
                                         backend=backend)).double()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(3x3 stencils|sigma)",
                                    category=RuntimeWarning)
            out = layer(u)
            for k in (1, 2, 3):
                turned = layer(torch.rot90(u, k, (-2, -1)))
                error = (turned - torch.rot90(out, k, (-2, -1))).abs().max()
                assert error <= 1e-9 * out.abs().max(), (backend, k, error)


def test_scaling_layer_is_not_quarter_turn_equivariant():
    """The quarter-turn check can fail: the scaling set is not rotation invariant."""
    layer = randomise(PDELayer.build(["scaling"], T=0.3, dt=0.1), scale=0.5).double()
    u = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    diff = layer(torch.rot90(u, 1, (-2, -1))) - torch.rot90(layer(u), 1, (-2, -1))
    assert diff.abs().max() > 1e-3


@pytest.mark.parametrize("invariants", [["se2"], ["scaling"], ["se2", "scaling"]])
def test_integer_shifts_with_circular_boundary(invariants):
    layer = randomise(PDELayer.build(invariants, T=0.4, dt=0.1, boundary="circular")).double()
    u = torch.rand(2, 1, 12, 10, dtype=torch.float64)
    shift = (3, -4)
    torch.testing.assert_close(layer(torch.roll(u, shift, (-2, -1))),
                               torch.roll(layer(u), shift, (-2, -1)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stencil", ["central", "isotropic"])
def test_arbitrary_angle_equivariance_error_is_small_on_smooth_inputs(stencil):
    """Relative error on a central disk, and far below that of a random 3x3 convolution."""
    size, angle = 64, math.radians(37)
    layer = PDELayer.build(["se2"], T=1.0, dt=0.1, stencil=stencil, spacing=8.0 / size)
    with torch.no_grad():  # a heat flow plus a nonlinear gradient term
        layer.pdes[0].step.rhs.F.weight.copy_(torch.tensor([0.0, -0.05, 0.02, 0.01, 0.0]))
    layer = layer.double()
    u = smooth_image(size)
    mask = disk(size)

    def relative_error(phi):
        diff = phi(rotate(u, angle)) - rotate(phi(u), angle)
        return (diff[..., mask].norm() / phi(u)[..., mask].norm()).item()

    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    torch.manual_seed(0)
    nn.init.normal_(conv.weight)
    layer_error = relative_error(layer)
    assert layer_error < 5e-3  # measured 1.3e-3 (central), see docs/equivariance.md
    assert relative_error(conv) > 10 * layer_error


@pytest.mark.parametrize("stencil", ["central", "isotropic"])
def test_heat_equation_matches_closed_form(stencil):
    """u_t = a (u_xx + u_yy) on a Gaussian: u(t) = s^2/(s^2 + 2at) exp(-r^2 / (2(s^2 + 2at)))."""
    a, sigma, T = 0.5, 1.0, 0.5

    def error(size, extent=12.0):
        h = extent / (size - 1)
        dt = 0.2 * h * h / a  # inside the stability bound for both stencils
        steps = steps_for(T, dt)
        dt = T / steps
        rhs = InvariantRHS("se2", spacing=h, stencil=stencil, boundary="zeros")
        step = EulerStep(rhs, dt).double()
        with torch.no_grad():
            step.rhs.F.weight[2] = a
        x, y = pixel_coordinates(size, size, h, dtype=torch.float64)
        r2 = x**2 + y**2
        u0 = torch.exp(-r2 / (2 * sigma**2))[None, None]
        spread = sigma**2 + 2 * a * T
        exact = sigma**2 / spread * torch.exp(-r2 / (2 * spread))
        return (EulerFlow(step, steps)(u0)[0, 0] - exact).abs().max().item()

    coarse, fine = error(49), error(97)
    assert fine < 2e-3
    assert 3.0 < coarse / fine < 5.0  # second order in h (dt ~ h^2)


def test_gradcheck_through_the_whole_layer_with_ratios():
    layer = randomise(PDELayer.build(["se2", "scaling", "scaling"], T=0.2, dt=0.1, ratio_eps=0.3,
                                     stencil="isotropic"), scale=0.1).double()
    u = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    parameters = list(layer.parameters())

    def function(u, *params):
        for parameter, value in zip(parameters, params, strict=True):
            parameter.data = value
        return layer(u)

    # gradcheck differentiates w.r.t. tensors it is given: rebuild the layer functionally
    def functional(u, *params):
        from torch.func import functional_call
        names = [name for name, _ in layer.named_parameters()]
        return functional_call(layer, dict(zip(names, params, strict=True)), (u,))

    params = tuple(p.detach().clone().requires_grad_(True) for p in parameters)
    assert torch.autograd.gradcheck(functional, (u, *params))
    del function


def test_gradcheck_polynomial_f():
    layer = randomise(PDELayer.build(["se2", "scaling"], rhs="polynomial", degree=2, T=0.2,
                                     dt=0.1), scale=0.05).double()
    u = torch.rand(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (u,))


def test_polynomial_f_terms():
    f = PolynomialF(3, degree=2)
    assert len(f.monomials()) == 9 and f.weight.numel() == 9  # 3 linear + 6 quadratic
    invariants = torch.tensor([2.0, 3.0, 5.0])[:, None, None]
    with torch.no_grad():
        f.weight.copy_(torch.arange(1.0, 10.0))
        f.bias.fill_(0.5)
    expected = 0.5 + sum(w * math.prod(v**e for v, e in zip([2.0, 3.0, 5.0], m, strict=True))
                         for w, m in zip(range(1, 10), f.monomials(), strict=True))
    assert f(invariants).item() == pytest.approx(expected)
    assert PolynomialF(3, degree=1).monomials() == LinearF(3).monomials()


def test_non_finite_state_raises_naming_pde_and_step():
    layer = PDELayer.build(["se2", "scaling"], T=10.0, dt=1.0, init_noise=0.0)
    with torch.no_grad():
        layer.pdes[0].step.rhs.F.weight[0] = 1e10 - 1  # u_l = (1e10)^l overflows float32 at l = 4
    with pytest.raises(NonFiniteStateError, match=r"'pde0:se2'.*step 4") as info:
        layer(torch.ones(1, 1, 5, 5))
    assert info.value.step == 4 and info.value.pde == "pde0:se2"
    assert "The input was finite, with values in [1, 1]" in str(info.value)
    # a NaN input is the input's fault, not the scheme's (issue 14, finding 5)
    with pytest.raises(InputError, match="u contains non-finite values .1 NaN, 0 inf of 25.: the "
                                         "input is at fault, not the PDE scheme"):
        layer(torch.full((1, 1, 5, 5), 1.0).index_put_((torch.tensor([0]),) * 2 + (
            torch.tensor([2]),) * 2, torch.tensor(float("nan"))))


def test_stability_report_and_warning():
    layer = PDELayer.build(["se2", "scaling"], dt=0.1, init="heat", init_scale=2.0,
                           init_noise=0.0)
    report = layer.stability()
    assert report[0]["diffusivity"] == pytest.approx(2.0) and report[0]["stable"] is True
    assert report[0]["max_a_dt"] == pytest.approx(0.25)
    assert report[1]["stable"] is None  # no Laplacian in the scaling set
    with pytest.warns(UserWarning, match="violates the explicit Euler bound"):
        PDELayer.build(["se2"], dt=0.5, init="heat", init_scale=1.0)


def test_steps_for_is_robust_to_rounding():
    assert steps_for(0.3, 0.1) == 3 and steps_for(1.0, 0.1) == 10 and steps_for(0.7, 0.1) == 7
    assert steps_for(2.0, 0.1) == 20 and steps_for(1.0, 0.1 / 9) == 90
    assert steps_for(1.0, float(np.float32(0.1))) == 10  # a dt that went through float32
    assert steps_for(1000.0, 0.01) == MAX_STEPS
    with pytest.raises(ValueError, match="dt: must be positive"):
        steps_for(1.0, 0.0)


@pytest.mark.parametrize(("T", "dt", "message"), [
    (0.25, 0.1, r"T = 0.25 is not a whole multiple of dt = 0.1 \(2.5 steps\): the Euler steps "
                r"would stop at t = 0.2; choose T = k dt \(0.2 or 0.3\)"),
    (1.05, 0.1, r"T = 1.05 is not a whole multiple of dt = 0.1"),
    (0.05, 0.1, r"T = 0.05 is smaller than dt = 0.1: not one Euler step would run"),
    (0.0, 0.1, r"T: must be positive, got 0.0"),
    (1e6, 1e-3, r"about 1e\+09 Euler steps per PDE, more than the bound of 100,000"),
])
def test_a_horizon_that_is_not_whole_steps_is_refused_everywhere(T, dt, message):
    """One rule: every place T and dt become steps refuses what would not integrate to T."""
    with pytest.raises(ConfigError, match=message):
        steps_for(T, dt)
    for build in (lambda: LayerConfig(T=T, dt=dt), lambda: PDELayer.build(["se2"], T=T, dt=dt),
                  lambda: EqPdeNet(8, LayerConfig.paper(T=T, dt=dt)), lambda: heat_pde(T, dt)):
        with pytest.raises(ConfigError, match=message.replace("T: must", ".*T: must")):
            build()


def test_an_unstable_reference_pde_is_refused():
    heat_pde(T=1.0, dt=0.25)  # a dt = 1/4: on the bound of the central stencil
    with pytest.raises(ConfigError, match=r"--dt: the explicit Euler scheme of the heat equation "
                                          r"\(diffusivity 1\) is unstable with dt = 0.5 .*use dt <= "
                                          r"0.25"):
        heat_pde(T=1.0, dt=0.5, names=("--T", "--dt"))


def test_zero_init_is_identity_and_reductions():
    u = torch.rand(2, 3, 8, 8)
    for reduction, shape in [("linear", (2, 3, 8, 8)), ("mean", (2, 3, 8, 8)), ("max", (2, 3, 8, 8)),
                             ("concat", (2, 12, 8, 8))]:
        layer = PDELayer.paper(reduction=reduction, init_noise=0.0)
        out = layer(u)
        assert out.shape == shape
        expected = u.repeat(1, 4, 1, 1) if reduction == "concat" else u
        torch.testing.assert_close(out, expected)
    layer = PDELayer.paper(init_noise=0.0)
    with torch.no_grad():
        layer.reduction.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        layer.reduction.bias.fill_(-1.0)
    torch.testing.assert_close(layer(u), 10 * u - 1)
    with pytest.raises(ValueError, match="unknown reduction"):
        PDELayer.paper(reduction="sum")


def test_trajectory_and_state_dict():
    layer = PDELayer.paper(init="heat", init_scale=0.1)
    pde = layer.pdes[0]
    trajectory = pde(torch.rand(2, 1, 8, 8), return_trajectory=True)
    assert trajectory.shape == (11, 2, 1, 8, 8) and pde.T == pytest.approx(1.0)
    keys = set(layer.state_dict())
    assert keys == {f"pdes.{i}.step.rhs.F.{n}" for i in range(4) for n in ("weight", "bias")} | {
        "reduction.weight", "reduction.bias"}
    assert sum(p.numel() for p in layer.parameters()) == 31


def test_runs_in_float64_and_under_torch_compile():
    layer = PDELayer.paper(init="heat", init_scale=0.1, check_finite=False)
    u = torch.rand(2, 1, 12, 12)
    assert layer.double()(u.double()).dtype == torch.float64
    layer = layer.float()
    compiled = torch.compile(layer, backend="eager")  # graph capture without a C++ build
    torch.testing.assert_close(compiled(u), layer(u))


def test_a_jet_keeps_its_float64_stencil_through_lower_precisions():
    """The stencils are not in state_dict: a cast to float32 and back must not round them."""
    reference = PDELayer.build(["se2", "sim2"], stencil="isotropic", init="normal").double()
    detour = PDELayer.build(["se2", "sim2"], stencil="isotropic", init="normal")
    detour = detour.float().half().double()
    detour.load_state_dict(reference.state_dict())  # the parameters back, exactly
    u = torch.rand(2, 1, 9, 9, dtype=torch.float64)
    for a, b in zip(reference.pdes, detour.pdes, strict=True):
        assert torch.equal(a.step.rhs.jet.weight, b.step.rhs.jet.weight)
    assert torch.equal(reference.evolve_reference(u), detour.evolve_reference(u))


def test_bad_input_errors():
    layer = PDELayer.paper()
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        layer(torch.rand(28, 28))
    with pytest.raises(ValueError, match="unknown invariant set"):
        PDELayer.build(["so3"])
    with pytest.raises(ValueError, match="unknown right-hand side 'cubic'"):
        InvariantRHS("se2", rhs="cubic")


def test_init_noise_breaks_the_symmetry_without_touching_the_global_stream():
    torch.manual_seed(3)
    plain = PDELayer.paper(init="heat", init_scale=0.2, init_noise=0.0)
    after_plain = torch.rand(3)
    torch.manual_seed(3)
    noisy = PDELayer.paper(init="heat", init_scale=0.2, init_noise=0.01)
    after_noisy = torch.rand(3)
    torch.testing.assert_close(after_plain, after_noisy)  # the perceptron would be the same
    w = [pde.step.rhs.F.weight.detach() for pde in noisy.pdes]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[2], w[3])
    assert (w[0] - plain.pdes[0].step.rhs.F.weight.detach()).abs().max() < 0.05
    torch.manual_seed(3)
    again = PDELayer.paper(init="heat", init_scale=0.2, init_noise=0.01)
    torch.testing.assert_close(again.pdes[1].step.rhs.F.weight, noisy.pdes[1].step.rhs.F.weight)


def test_symmetric_init_keeps_paired_pdes_identical():
    """Why init_noise exists: equal init + mean reduction give equal gradients for ever."""
    layer = PDELayer.paper(init="heat", init_scale=0.2, init_noise=0.0)
    u = torch.rand(2, 1, 10, 10)
    layer(u).square().sum().backward()
    torch.testing.assert_close(layer.pdes[0].step.rhs.F.weight.grad, layer.pdes[1].step.rhs.F.weight.grad)


def test_gaussian_stencil_through_the_layer(monkeypatch):
    """LayerConfig(stencil="gaussian", sigma=...) reaches the jet; the fused kernel (3x3 only)
    falls back to the reference with one warning; one Euler step is u + dt F(I(Gaussian jet))."""
    import warnings

    from eqpdenet.kernels import op
    from eqpdenet.pde import jet

    monkeypatch.setattr(op, "_warned", set())
    layer = randomise(PDELayer.build(["se2"], stencil="gaussian", sigma=1.0, T=0.1, dt=0.1,
                                     reduction="mean", init_noise=0.0)).double()
    rhs = layer.pdes[0].step.rhs
    assert rhs.jet.sigma == 1.0 and tuple(rhs.jet.weight.shape[-2:]) == (9, 9)
    u = smooth_image(16)
    with pytest.warns(RuntimeWarning, match="3x3 stencils"):
        out = layer(u)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(u)  # warns once per process
    invariants = rhs.invariant_set(jet(u, stencil="gaussian", sigma=1.0), rhs.ratio_eps)
    expected = u + 0.1 * (torch.einsum("bckhw,k->bchw", invariants, rhs.F.weight) + rhs.F.bias)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for k in (1, 2, 3):
        torch.testing.assert_close(layer(torch.rot90(u, k, (-2, -1))),
                                   torch.rot90(out, k, (-2, -1)), rtol=1e-10, atol=1e-12)


def test_sigma_is_checked_against_the_stencil():
    with pytest.raises(ValueError, match="layer.sigma: the 'gaussian' stencil needs sigma"):
        PDELayer.build(stencil="gaussian")
    with pytest.raises(ValueError, match="layer.sigma: the 'central' stencil has no scale"):
        PDELayer.build(sigma=1.0)
    with pytest.raises(ValueError, match="layer.sigma: must be at least 0.5 pixels"):
        PDELayer.build(stencil="gaussian", sigma=0.2, spacing=0.5)


def _translation_layer(weights, dt, stencil="central", boundary="replicate"):
    """A layer whose invariants hold u_xx, u_xy, u_yy apart (a group without rotations), so that
    F's second-order part is any quadratic form."""
    import sympy as sp

    from eqpdenet.pde.symbolic import compile_invariants

    u, uxx, uxy, uyy = sp.symbols("u u_xx u_xy u_yy")
    layer = PDELayer.build([compile_invariants([u, uxx, uxy, uyy], "plain_second_order")],
                           T=40 * dt, dt=dt, stencil=stencil, boundary=boundary, init_noise=0.0)
    with torch.no_grad():
        layer.pdes[0].step.rhs.F.weight.copy_(torch.tensor(weights, dtype=torch.float32))
    return layer


@pytest.mark.parametrize("coefficients", [(1.0, 0.0, 1.0), (3.0, 0.0, 1.0), (1.0, 1.5, 2.0),
                                          (0.5, -0.7, 0.25)])
def test_second_order_symbol_range_is_the_central_stencils_symbol(coefficients):
    """Central differences: sigma(a, b) = c_xx (2 cos a - 2) + c_yy (2 cos b - 2) - c_xy sin a
    sin b (up to the sign convention of u_xy, which the range is symmetric in)."""
    from eqpdenet.pde.stencils import second_order_symbol_range

    c_xx, c_xy, c_yy = coefficients
    a, b = np.meshgrid(np.linspace(-np.pi, np.pi, 257), np.linspace(-np.pi, np.pi, 257))
    symbol = c_xx * (2 * np.cos(a) - 2) + c_yy * (2 * np.cos(b) - 2) - c_xy * np.sin(a) * np.sin(b)
    low, high = second_order_symbol_range("central", 1.0, None, coefficients)
    assert low == pytest.approx(symbol.min(), abs=1e-12)
    assert high == pytest.approx(symbol.max(), abs=1e-12)
    low2, _ = second_order_symbol_range("central", 0.5, None, coefficients)
    assert low2 == pytest.approx(4 * low)  # 1 / h^2


def test_anisotropic_diffusion_is_checked_and_the_verdict_is_the_schemes():
    """F = c_xx u_xx + c_xy u_xy + c_yy u_yy of a compiled set: the check is on the symbol of
    the stencil's operator, and what it calls unstable blows up on noise while what it calls
    stable decays (circular boundary: the symbol is exactly the scheme's)."""
    stable = _translation_layer([0.0, 3.0, 0.0, 1.0], dt=0.1, boundary="circular")
    [report] = stable.stability()
    assert report["diffusivity"] is None and report["second_order"] == (3.0, 0.0, 1.0)
    assert report["max_rate_dt"] == pytest.approx(0.1 * (4 * 3.0 + 4 * 1.0))  # 1.6
    assert report["max_dt"] == pytest.approx(2 / 16) and report["stable"] is True
    too_fast = _translation_layer([0.0, 3.0, 0.0, 1.0], dt=0.15, boundary="circular")
    assert too_fast.stability()[0]["stable"] is False  # -dt sigma reaches 2.4
    not_elliptic = _translation_layer([0.0, 1.0, 5.0, 1.0], dt=0.01, boundary="circular")
    assert not_elliptic.stability()[0]["stable"] is False  # 1 * 1 < 5^2 / 4: anti-diffusion
    noise = torch.rand(1, 1, 16, 16, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0)) - 0.5
    for layer, verdict in [(stable, True), (too_fast, False), (not_elliptic, False)]:
        flow = layer.pdes[0].double()
        flow.check_finite = False
        with torch.no_grad():
            out = flow(noise)
        grew = bool(out.abs().max() > noise.abs().max())
        assert grew is not verdict


def test_an_anisotropic_initial_F_above_the_bound_warns(monkeypatch):
    import sympy as sp

    from eqpdenet.pde import layer as layer_module
    from eqpdenet.pde.symbolic import compile_invariants

    def anisotropic(F, invariant_set, scale, generator):
        F.weight.copy_(torch.tensor([0.0, 3.0, 0.0, 1.0]))

    monkeypatch.setattr(layer_module.INITS, "get", lambda name: anisotropic)
    u, uxx, uxy, uyy = sp.symbols("u u_xx u_xy u_yy")
    invariants = compile_invariants([u, uxx, uxy, uyy], "plain_second_order")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PDELayer.build([invariants], dt=0.1, init="heat", init_noise=0.0)  # 1.6: stable
    with pytest.warns(UserWarning, match=r"initial second-order coefficients \(c_xx, c_xy, c_yy\) "
                                         r"= \(3.0, 0.0, 1.0\) with dt=0.25 violate the explicit "
                                         r"Euler bound -dt sigma <= 2 at every frequency \(max -dt "
                                         r"sigma = 4\); use dt <= 0.125"):
        PDELayer.build([invariants], dt=0.25, T=0.5, init="heat", init_noise=0.0)
