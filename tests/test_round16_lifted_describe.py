"""Round 16, outside probes u2 (F1, F2) and u5 (F1, F2): the lifted model's stability check with
convection beside diffusion, describe's stability line where a reaction term decides, the soft
maximum's temperature underflow, and the warning for a planar PDE layer cast to half precision.
"""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from eqpdenet import PDELayer
from eqpdenet.analysis.describe import describe_layer, describe_model
from eqpdenet.errors import ConfigError
from eqpdenet.models import EqPdeNet, LiftedPDEConfig, LiftedPDENet
from eqpdenet.pde.integrators import EulerStep
from eqpdenet.pde.m2_rhs import M2SystemRHS

# ----------------------------------------------------------------------------- u2 F1

# the probe's velocities (a trained checkpoint's, made 50 times larger); D is the initial 0.05
PROBE_VELOCITY = [[0.0984, 0.0365, 0.0894], [-0.0750, 0.1000, -0.0963]]


def _m2_step(terms, velocity, orientations=4, dt=1.0) -> EulerStep:
    rhs = M2SystemRHS(2, terms, orientations=orientations, backend="reference").double()
    with torch.no_grad():
        rhs.terms["convection"].weight.copy_(torch.tensor(velocity, dtype=torch.float64))
    return EulerStep(rhs, dt, name="block")


def _growth(step: EulerStep, steps: int = 200) -> float:
    """The norm ratio after ``steps`` Euler steps of a small fixed random field (the probe's
    measure, check_m2stab.py)."""
    generator = torch.Generator().manual_seed(0)
    u = 1e-3 * torch.randn(1, 2, step.rhs.orientations, 16, 16, generator=generator,
                           dtype=torch.float64)
    start = u.norm()
    with torch.no_grad():
        for _ in range(steps):
            u = step(u)
    return float(u.norm() / start)


def test_convection_with_diffusion_is_judged_by_their_joint_symbol_as_measured():
    """The diffusion damps the transport: stable, and the field shrinks; without the diffusion
    the same velocity is unstable, and the field grows; 10 times faster, the diffusion no
    longer keeps up: unstable, and the field blows up."""
    damped = _m2_step(("convection", "diffusion"), PROBE_VELOCITY)
    report = damped.stability()
    assert report["stable"] is True and report["reason"] is None
    assert report["max_dt"] > 1.0 and report["diffusion_stable"] is True
    assert _growth(damped) < 0.5

    alone = _m2_step(("convection",), PROBE_VELOCITY)
    report = alone.stability()
    assert report["stable"] is False and "whatever dt" in report["reason"]
    assert _growth(alone) > 1.05

    fast = _m2_step(("convection", "diffusion"), [[10 * v for v in row] for row in PROBE_VELOCITY])
    report = fast.stability()
    assert report["stable"] is False
    assert report["reason"].startswith("dt = 1 is above the explicit Euler bound of the "
                                       "convection and diffusion terms together at 4 orientations")
    assert report["max_dt"] < 1.0 and report["max_rate_dt"] > 2.0
    assert _growth(fast, 50) > 1e3


def test_orientation_convection_and_diffusion_bound_is_the_analytic_one():
    """Only ``D3`` and ``v3`` (``D1, D2`` about 1e-26): at ``k = 0`` the symbol is the circulant
    ``D3 A33 - v3 A3`` with eigenvalues ``-D3 a_m - i v3 b_m``, ``a_m = (2 - 2 cos(m h)) / h^2``,
    ``b_m = sin(m h) / h``, ``h = 2 pi / N``; other frequencies only scale them down (the
    smoothing). The bound is the largest ``dt`` with ``|1 + dt sigma| <= 1.001`` for each."""
    n, d3, v3 = 4, 0.25, 1.0
    rhs = M2SystemRHS(1, ("convection", "diffusion"), orientations=n).double()
    with torch.no_grad():
        rhs.terms["diffusion"].weight.copy_(torch.tensor([[-60.0, -60.0,
                                                           math.log(math.expm1(d3))]]))
        rhs.terms["convection"].weight.copy_(torch.tensor([[0.0, 0.0, v3]]))
    d3 = float(F.softplus(rhs.terms["diffusion"].weight.detach()[0, 2]))
    h, growth = 2 * math.pi / n, 2e-3 + 1e-6
    bounds = []
    for m in range(1, n):
        re = -d3 * (2 - 2 * math.cos(m * h)) / h**2
        size = re**2 + (v3 * math.sin(m * h) / h) ** 2
        bounds.append((-re + math.sqrt(re**2 + size * growth)) / size)
    expected = min(bounds)                                       # 0.9152..., at m = 1 and 3
    assert EulerStep(rhs, 0.5).stability()["max_dt"] == pytest.approx(expected, rel=1e-9)
    assert EulerStep(rhs, 0.9 * expected).stability()["stable"] is True
    report = EulerStep(rhs, 1.1 * expected).stability()
    assert report["stable"] is False and f"above dt = {expected:.3g}" in report["reason"]


def test_convection_beside_a_linear_term_is_not_known_rather_than_unstable():
    """A nonzero ``linear`` term is not linearised here, and its decay ``W u`` might damp the
    transport: not known (it was UNSTABLE at once)."""
    rhs = M2SystemRHS(2, ("convection", "linear"), orientations=4)
    with torch.no_grad():
        rhs.terms["convection"].weight.fill_(0.1)
        rhs.terms["linear"].map.weight.copy_(-0.5 * torch.eye(2))
    report = EulerStep(rhs, 1.0).stability()
    assert report["stable"] is None
    assert report["reason"].startswith("cannot check: F's linear term is not linearised here")
    assert "; the convection term alone is unstable: the convection term's velocity" in (
        report["reason"])


def test_describe_prints_the_joint_verdict_of_a_pde_gcnn_block():
    net = LiftedPDENet(LiftedPDEConfig(orientations=4, channels=[2], blocks=[1],
                                       terms=["convection", "diffusion", "dilation", "erosion",
                                              "linear"]), image_size=16)
    rhs = net.stages[0][0].rhs
    with torch.no_grad():
        rhs.terms["convection"].weight.copy_(torch.tensor(PROBE_VELOCITY))
    line = describe_model(net).splitlines()[-1]
    assert line.startswith("  explicit Euler check, F linearised at U = 0: stable (dt ≤ ")


# ----------------------------------------------------------------------------- u2 F2


def _layer(weights: dict, dt: float = 0.1, invariants=("se2",)) -> PDELayer:
    layer = PDELayer.build(list(invariants), T=dt, dt=dt, init_noise=0.0)
    rhs = layer.pdes[0].step.rhs
    with torch.no_grad():
        for name, value in weights.items():
            rhs.F.weight[rhs.invariant_set.names.index(name)] = value
    return layer


def _check_line(layer: PDELayer) -> str:
    return describe_layer(layer).splitlines()[3].split("; ", 1)[1]


def test_describe_prints_the_check_a_decay_term_breaks():
    """``F = -25 u + 0.5 Δu``, dt = 0.1 (the probe's): ``a dt = 0.05`` is inside its bound, but
    ``dt (a lambda_max - c_u) = 0.1 (0.5 * 8 + 25) = 2.9 > 2``; with ``c_u = -5``, 0.9."""
    line = _check_line(_layer({"u": -25.0, "laplacian": 0.5}))
    assert line == ("diffusion check 0 ≤ a·dt and dt·(a·λmax − c_u) ≤ 2 (λmax = 8, c_u = −25): "
                    "a·dt = 0.05, dt·(a·λmax − c_u) = 2.9, UNSTABLE")
    assert _check_line(_layer({"u": -5.0, "laplacian": 0.5})) == (
        "diffusion check 0 ≤ a·dt and dt·(a·λmax − c_u) ≤ 2 (λmax = 8, c_u = −5): "
        "a·dt = 0.05, dt·(a·λmax − c_u) = 0.9, stable")
    # a growing reaction term does not enter the check: the line is the one it was
    assert _check_line(_layer({"u": 5.0, "laplacian": 0.5})) == (
        "diffusion check 0 ≤ a·dt ≤ 0.25: a·dt = 0.05, stable")


def test_describe_anisotropic_line_names_the_decay_and_the_failed_ellipticity():
    import sympy as sp

    from eqpdenet.pde.symbolic import compile_invariants

    u, uxx, uxy, uyy = sp.symbols("u u_xx u_xy u_yy")
    invariants = compile_invariants([u, uxx, uxy, uyy], "plain_second_order_r16")

    def line(weights):
        layer = PDELayer.build([invariants], T=0.1, dt=0.1, init_noise=0.0)
        with torch.no_grad():
            layer.pdes[0].step.rhs.F.weight.copy_(torch.tensor(weights))
        return _check_line(layer)

    # 3 u_xx + u_yy decays by at most 0.1 (4 * 3 + 4 * 1) = 1.6, plus 0.1 * 5 from c_u = -5
    assert line([-5.0, 3.0, 0.0, 1.0]) == (
        "diffusion check of 3 u_xx + 1 u_yy: elliptic and −dt·(σ + c_u) ≤ 2 at every frequency "
        "(σ its stencil's symbol, c_u = −5): max −dt·(σ + c_u) = 2.1, UNSTABLE")
    # -u_xx + u_yy: the rate is within 2, ellipticity fails; the line says so
    assert line([0.0, -1.0, 0.0, 1.0]) == (
        "diffusion check of −1 u_xx + 1 u_yy: elliptic and −dt·σ ≤ 2 at every frequency "
        "(σ its stencil's symbol): max −dt·σ = 0.4, UNSTABLE (the second-order coefficients "
        "are not elliptic: anti-diffusion in some direction, which no dt mends)")


# ----------------------------------------------------------------------------- u5 F1


@pytest.mark.parametrize(("dtype", "raw"), [(torch.float32, -120.0), (torch.float32, -1e4),
                                            (torch.float64, -800.0)])
def test_soft_maximum_with_an_underflowing_temperature_is_the_maximum(dtype, raw):
    torch.manual_seed(0)
    net = LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=[1, 1], projection="softmax"),
                       image_size=14).to(dtype).eval()
    projection = net.projection
    with torch.no_grad():
        projection.raw_temperature.fill_(raw)
    assert float(F.softplus(projection.raw_temperature.detach())[0]) == 0.0   # the underflow
    u = torch.randn(2, 4, 8, 5, 5, dtype=dtype)
    torch.testing.assert_close(projection(u), u.amax(dim=2), rtol=0.0,
                               atol=4 * torch.finfo(dtype).eps)
    images = torch.rand(2, 1, 14, 14, dtype=dtype, requires_grad=True)
    logits = net(images)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert torch.isfinite(images.grad).all()
    assert torch.isfinite(projection.raw_temperature.grad).all()


def test_soft_maximum_above_the_floor_is_unchanged_bit_for_bit():
    projection = LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=[1, 1],
                                              projection="softmax"), image_size=14).projection
    with torch.no_grad():
        projection.raw_temperature.copy_(torch.tensor([0.5413, -3.0, -40.0, 20.0]))
    u = torch.randn(2, 4, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    tau = F.softplus(projection.raw_temperature).view(1, -1, 1, 1, 1)
    expected = (tau * (torch.logsumexp(u / tau, dim=2, keepdim=True) - math.log(8))).squeeze(2)
    assert torch.equal(projection(u), expected)


# ----------------------------------------------------------------------------- u5 F2


def _warnings_of(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_a_planar_layer_in_half_precision_warns_once_per_dtype():
    layer = PDELayer.build(["se2", "sim2"], backend="reference")
    images = torch.rand(2, 1, 12, 12)
    assert _warnings_of(lambda: layer(images.half())) == []   # float32 layer: upcast, no word
    half = copy.deepcopy(layer).half()
    [message] = _warnings_of(lambda: (half(images.half()), half(images.half())))
    assert message == (
        "eqpdenet: PDELayer computes in torch.float16: its ratio invariants (the scaling and "
        "sim2 sets, any set that divides) came out 10-15 % off float64 at this precision, where "
        "se2 keeps to the precision's own rounding; keep it in float32 (module.float(): a "
        "torch.float16 input is then computed in float32 and returned in torch.float16), "
        "outside torch.autocast")
    brain = half.bfloat16()
    [message] = _warnings_of(lambda: (brain(images.bfloat16()), brain(images.bfloat16())))
    assert message.startswith("eqpdenet: PDELayer computes in torch.bfloat16: ")
    assert _warnings_of(lambda: brain(images.bfloat16())) == []


def test_a_model_holding_a_half_planar_layer_warns_too():
    model = EqPdeNet().half().eval()
    messages = _warnings_of(lambda: model(torch.rand(2, 1, 28, 28).half()))
    assert [m for m in messages if m.startswith("eqpdenet: PDELayer computes in "
                                                "torch.float16: ")] != []


def test_the_checked_symbol_is_the_systems_own_on_plane_waves():
    """The check's ``M(k)`` is what M2SystemRHS (convection and diffusion, every coefficient
    nonzero) does to ``exp(i (kx x + ky y)) w_theta`` on a periodic frame, at ``(-kx, ky)``
    (module doc of ``_m2_linear_symbol``)."""
    from eqpdenet.pde.m2 import separable_stencils
    from eqpdenet.pde.m2_rhs import _m2_linear_symbol, _stencil_symbols

    n, size = 8, 16
    rhs = M2SystemRHS(1, ("convection", "diffusion"), boundary="circular", orientations=n,
                      backend="reference").double()
    with torch.no_grad():
        rhs.terms["convection"].weight.copy_(torch.tensor([[0.3, -0.7, 0.45]]))
        rhs.terms["diffusion"].weight.copy_(torch.tensor([[0.2, -1.0, 0.5]]))
    d = F.softplus(rhs.terms["diffusion"].weight.detach())[0].tolist()
    v = rhs.terms["convection"].weight.detach()[0].tolist()
    stencils = separable_stencils(rhs.jet.sigmas)[0]
    grid = torch.arange(size, dtype=torch.float64)
    w = torch.randn(n, dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
    for jx, jy in [(1, 0), (0, 1), (3, 5), (7, 2)]:
        kx, ky = 2 * math.pi * jx / size, 2 * math.pi * jy / size
        wave = torch.exp(1j * (kx * grid[None, :] + ky * grid[:, None]))     # (rows, columns)
        field = w[:, None, None] * wave
        with torch.no_grad():
            out = rhs(field.real[None, None]) + 1j * rhs(field.imag[None, None])
        m = _m2_linear_symbol(_stencil_symbols(stencils, torch.tensor([-kx])),
                              _stencil_symbols(stencils, torch.tensor([ky])), d, v, n)[0]
        torch.testing.assert_close(out[0, 0], (m @ w)[:, None, None] * wave, rtol=0, atol=1e-7)


def test_a_half_layer_without_ratio_invariants_does_not_warn():
    # review q1 F4: se2 alone in float16 is 6e-4 off float64, float16's own rounding (1e-3)
    half = PDELayer.build(["se2", "se2"], backend="reference").half()
    messages = _warnings_of(lambda: half(torch.rand(2, 1, 12, 12).half()))
    assert [m for m in messages if "computes in torch.float16" in m] == []


def test_a_half_softmax_projection_keeps_learned_temperatures():
    # review q1 F3: float16's sqrt(tiny), 7.8e-3, had become the floor of learned temperatures
    # of 4e-3 and 1.5e-3 (errors 8.5e-3 and 1.4e-2 against float64); computed in float32 now
    from eqpdenet.models.lifted_pde import _OrientationProjection

    projection = _OrientationProjection("softmax", 2)
    u = torch.randn(3, 2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    for raw in (-5.5, -6.5):
        with torch.no_grad():
            projection.raw_temperature.fill_(raw)
        truth = copy.deepcopy(projection).double()(u.double())
        got = copy.deepcopy(projection).half()(u.half())
        assert got.dtype == torch.float16
        assert float((got.double() - truth).abs().max()) < 2e-3, raw


def test_a_velocity_beside_a_diffusion_that_breaks_its_bound_is_unstable_with_its_reason():
    # review q1 F2: just above the diffusion term's certain bound, a velocity of 1e-9 made the
    # joint check (which lets a mode grow by 1e-3 per step) say stable while diffusion_stable
    # was False, and the lifted model's refusal read "(None)"
    from eqpdenet.models.lifted_pde import refuse_unstable_steps

    def step(terms, dt, velocity=None):
        rhs = M2SystemRHS(2, terms, orientations=8, backend="reference").double()
        if velocity is not None:
            with torch.no_grad():
                rhs.terms["convection"].weight.fill_(velocity)
        return EulerStep(rhs, dt, name="b")

    certain = 2.0 / step(("diffusion",), 1.0).stability()["max_rate_dt"]
    dt = certain * 1.0002
    alone = step(("diffusion",), dt).stability()
    both = step(("convection", "diffusion"), dt, 1e-9).stability()
    assert alone["stable"] is False
    assert (both["stable"], both["diffusion_stable"]) == (False, False)
    assert both["reason"] == alone["reason"]
    assert "dt lambda_max >= 2.0004 > 2" in both["reason"]  # not "2 > 2"
    with pytest.raises(ConfigError, match=r"from its first step \(dt = "):
        refuse_unstable_steps(torch.nn.Sequential(step(("convection", "diffusion"), dt, 1e-9)))
