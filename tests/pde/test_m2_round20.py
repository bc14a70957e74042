"""Round 20, the M2 pieces (outside probes a3 F1, a6 F1, a2 F1 and F2).

* ``M2SystemRHS.euler_stability``'s certain instability came from ``S + 2 D3 / dtheta^2``, which
  does not hold (``A33`` acts on ``G_sigma * U``: the theta part is damped by ``G(k)`` where the
  spatial symbol peaks): it called the stable step ``D = (1.9, 1.9, 0.2)``, ``N = 8``, ``dt = 1``
  certainly unstable. The bound now comes from the symbol's eigenvalues.
* ``M2Jet`` kept ``sigma``, ``scale_normalised`` and ``sigmas`` apart; the reference read the
  first two, the fused path the third (always scale-normalised): setting one made the two paths
  differ silently. They are read-only now, and the fused path reads the jet's own stencils.
* ``M2Lift`` and ``gaussian_jet`` failed with a raw reshape error on maps of 0 rows or columns.
* ``EulerFlow`` of an M2 step refused M2 fields, blaming their shape.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from eqpdenet.errors import ConfigError, InputError, InputTypeError, NonFiniteStateError
from eqpdenet.kernels import cpu
from eqpdenet.models.lifted_pde import M2Lift, refuse_unstable_steps
from eqpdenet.pde.integrators import EulerFlow, EulerStep
from eqpdenet.pde.m2 import M2Jet, gaussian_jet, separable_stencils
from eqpdenet.pde.m2_rhs import (
    M2SystemRHS,
    _inverse_softplus,
    _m2_linear_symbol,
    _stencil_symbols,
)

# ----------------------------------------------------------------------------- a3 F1


def _diffusion_step(d, n, sigma=1.0, dt=1.0, channels=1):
    rhs = M2SystemRHS(channels, ("diffusion",), sigma=sigma, boundary="circular",
                      orientations=n, backend="reference").double()
    with torch.no_grad():
        rhs.terms["diffusion"].weight.copy_(torch.tensor([[_inverse_softplus(x) for x in d]],
                                                         dtype=torch.float64))
    return EulerStep(rhs, dt, name="b")


def _symbol_lambda_max(d, n, sigma=1.0, points=129):
    """``max_k lambda_max(-M(k))`` over a ``points x points`` grid of ``[-pi, pi]^2``, by the
    general eigenvalue routine (not the check's symmetric one): the truth the check's bounds
    face."""
    freq = torch.linspace(-math.pi, math.pi, points, dtype=torch.float64)
    symbols = _stencil_symbols(separable_stencils((sigma,))[0], freq)
    m = _m2_linear_symbol(symbols, symbols, list(d), [0.0, 0.0, 0.0], n)
    return float((-torch.linalg.eigvals(m).real).max())


def test_the_probes_stable_diffusion_step_is_no_longer_called_certainly_unstable():
    d, n = (1.9, 1.9, 0.2), 8
    truth = _symbol_lambda_max(d, n)
    assert truth == pytest.approx(1.96768633, abs=1e-7)  # dt lambda_max < 2: stable
    step = _diffusion_step(d, n)
    report = step.stability()
    assert report["stable"] is None and report["diffusion_stable"] is None
    assert report["reason"] == ("not known: dt = 1 lies between the certain bound 0.742 and the "
                                "certain instability 1.02")
    # the certain instability is the symbol's own largest eigenvalue (on the check's coarser
    # grid: never above the truth, within 1e-4 of it)
    assert report["max_rate_dt"] <= truth * (1 + 1e-12)
    assert report["max_rate_dt"] == pytest.approx(truth, rel=1e-4)
    refuse_unstable_steps(nn.Sequential(step))  # not refused
    # and the step does shrink a field (periodic frame, float64)
    torch.manual_seed(0)
    u = torch.randn(1, 1, n, 16, 16, dtype=torch.float64)
    start = float(u.norm())
    with torch.no_grad():
        for _ in range(60):
            u = step(u)
    assert float(u.norm()) < 0.2 * start


@pytest.mark.parametrize("d, n, sigma", [((1.9, 1.9, 0.2), 8, 1.0), ((0.5, 2.0, 1.0), 12, 1.5),
                                         ((3.0, 0.1, 0.05), 4, 1.0), ((0.05,) * 3, 20, 1.0)])
def test_the_certain_instability_is_a_lower_bound_of_the_symbol(d, n, sigma):
    report = _diffusion_step(d, n, sigma).stability()
    truth = _symbol_lambda_max(d, n, sigma, 65)
    theta = 4 * d[2] / (2 * math.pi / n) ** 2
    assert theta * (1 - 1e-7) <= report["max_rate_dt"] <= truth * (1 + 1e-12)
    assert 2.0 / report["max_dt"] >= truth * (1 - 1e-12)  # the certain bound still holds


def test_an_initial_model_is_refused_as_before():
    # D = 0.05 (the initial coefficients): the theta checkerboard decides; the same reasons as
    # before round 20
    for n, rate, bound in ((20, "2.02642", "0.969"), (32, "5.18765", "0.383")):
        report = EulerStep(M2SystemRHS(2, "diffusion", orientations=n), 1.0).stability()
        assert (report["stable"], report["diffusion_stable"]) == (False, False)
        assert report["reason"] == (
            f"dt = 1 is above the explicit Euler bound of the diffusion term along theta at {n} "
            f"orientations (channel 1: D = (0.05, 0.05, 0.05), dt lambda_max >= {rate} > 2); it "
            f"is stable for dt <= {bound}")
    report = EulerStep(M2SystemRHS(2, "diffusion", orientations=16), 1.0).stability()
    assert report["stable"] is True and report["reason"] is None


# ----------------------------------------------------------------------------- a6 F1


@pytest.mark.parametrize("name, value", [("sigma", 2.0), ("sigmas", (2.0,)),
                                         ("scale_normalised", False)])
def test_the_jets_scales_are_read_only(name, value):
    jet = M2Jet(1.5, scales=2)
    with pytest.raises(ConfigError, match=rf"^M2Jet\.{name} is fixed when the jet is built \(the "
                                          r"reference and the fused kernels both derive their "
                                          r"stencils from the scales\): build a new M2Jet\("):
        setattr(jet, name, value)
    assert (jet.sigma, jet.sigmas, jet.scale_normalised) == (1.5, (1.5, 1.5 * 2**0.5), True)
    assert torch.equal(jet.stencils, separable_stencils((1.5, 1.5 * 2**0.5)))
    plain = M2Jet(1.5, scale_normalised=False)
    assert torch.equal(plain.stencils, separable_stencils((1.5,), False))
    assert not torch.equal(plain.stencils, separable_stencils((1.5,)))


def test_a_jet_pickled_before_round_20_loads_with_its_scales():
    jet = M2Jet(1.5, "zeros", scale_normalised=False, scales=2)
    state = dict(vars(jet))  # the layout before round 20: three plain attributes
    state["sigma"], state["sigmas"] = 1.5, state.pop("_sigmas")
    state["scale_normalised"] = state.pop("_scale_normalised")
    old = M2Jet.__new__(M2Jet)
    old.__setstate__(state)
    assert (old.sigma, old.sigmas, old.scale_normalised) == (1.5, (1.5, 1.5 * 2**0.5), False)
    assert "sigma" not in vars(old) and "sigmas" not in vars(old)
    u = torch.rand(2, 1, 4, 9, 9, dtype=torch.float64)
    assert torch.equal(old(u), jet(u))


@pytest.mark.skipif(not cpu.is_available(), reason="no C++ toolchain")
def test_the_fused_path_reads_the_jets_own_scale_normalisation():
    # a jet without scale normalisation put in the system: the fused path convolved with
    # scale-normalised stencils all the same, the reference did not
    torch.manual_seed(0)
    opts = dict(hidden=2, normalize_hidden=False, sigma=1.5)
    fused = M2SystemRHS(1, ("network",), **opts).double()
    for p in fused.parameters():
        p.data.normal_()
    reference = M2SystemRHS(1, ("network",), backend="reference", **opts).double()
    reference.load_state_dict(fused.state_dict())
    for rhs in (fused, reference):
        rhs.jet = M2Jet(1.5, scale_normalised=False)
    u = torch.randn(1, 1, 8, 9, 9, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fused path taken, not a fallback
        got = EulerStep(fused, 0.5)(u)
    torch.testing.assert_close(got, EulerStep(reference, 0.5)(u), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- a2 F1


@pytest.mark.parametrize("size", [(12, 0), (0, 12), (0, 0)])
@pytest.mark.parametrize("boundary", ["replicate", "zeros"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_maps_without_pixels_are_refused_before_any_work(size, boundary, backend):
    height, width = size
    lift = M2Lift(1, 4, 8, sigma=1.0, boundary=boundary, backend=backend)
    before = lift.norm.running_mean.clone(), int(lift.norm.num_batches_tracked)
    with pytest.raises(InputError, match=rf"^M2Lift needs images of at least 1x1 pixels, got "
                                         rf"{height}x{width} \(shape \(2, 1, {height}, {width}\)\)$"):
        lift(torch.rand(2, 1, height, width))
    assert torch.equal(lift.norm.running_mean, before[0])
    assert int(lift.norm.num_batches_tracked) == before[1]
    message = rf"^the Gaussian jet needs maps of at least 1x1 pixels, got {height}x{width}$"
    with pytest.raises(InputError, match=message):
        gaussian_jet(torch.rand(2, 1, height, width), 1.0, boundary)
    with pytest.raises(InputError, match=message):  # M2Jet alone, one scale: the same check
        M2Jet(1.0, boundary)(torch.rand(1, 1, 4, height, width))


def test_the_jets_other_size_rule_is_unchanged():
    with pytest.raises(InputError, match=r"^the 'reflect' boundary needs maps larger than the "
                                         r"stencil radius 4 \(sigma = 1 pixels\), got 4x9$"):
        gaussian_jet(torch.rand(1, 4, 9), 1.0, "reflect")


# ----------------------------------------------------------------------------- a2 F2


def _m2_flow(steps=3, **options):
    torch.manual_seed(0)
    rhs = M2SystemRHS(4, ("network", "diffusion"), hidden=4, backend="reference", **options)
    return EulerFlow(EulerStep(rhs, dt=0.1), steps)


def test_an_euler_flow_of_an_m2_step_runs_on_m2_fields():
    flow = _m2_flow().eval()
    u = torch.rand(2, 4, 8, 10, 10)
    out = flow(u)
    assert out.shape == (2, 4, 8, 10, 10)
    assert torch.equal(out, flow.integrate(u))
    step = flow.step
    assert torch.equal(out, step(step(step(u))))
    assert flow(u, return_trajectory=True).shape == (4, 2, 4, 8, 10, 10)
    # lower precision is computed in the module's dtype and returned in the input's
    assert flow(u.half()).dtype == torch.float16


def test_an_euler_flow_of_an_m2_step_checks_by_the_steps_own_rule():
    flow = _m2_flow()
    with pytest.raises(InputError, match=r"^M2SystemRHS takes fields \(batch, 4 channels, "
                                         r"orientations, height, width\), got \(2, 4, 10, 10\)$"):
        flow(torch.rand(2, 4, 10, 10))
    bad = torch.rand(2, 4, 8, 10, 10)
    bad[0, 1, 2, 3, 4] = math.nan
    with pytest.raises(InputError, match=r"^u contains non-finite values \(1 NaN, 0 inf"):
        flow(bad)
    with pytest.raises(InputTypeError, match=r"^u is torch.float64 but the module computes in "
                                             r"torch.float32"):
        flow(torch.rand(2, 4, 8, 10, 10, dtype=torch.float64))
    with pytest.raises(InputError, match=r"the input is on device meta but EulerFlow's "
                                         r"parameters are on cpu"):
        flow(torch.rand(2, 4, 8, 10, 10, device="meta"))


def test_a_non_finite_m2_state_names_the_input_range():
    # the theta checkerboard at 32 orientations grows about 4.2 times per step (D3 dt = 0.05)
    rhs = M2SystemRHS(1, ("diffusion",), orientations=32, backend="reference")
    flow = EulerFlow(EulerStep(rhs, 1.0, name="m2"), 100)
    u = torch.zeros(1, 1, 32, 6, 6)
    u[:, :, ::2] = 0.5
    with pytest.raises(NonFiniteStateError, match=r"The input was finite, with values in "
                                                  r"\[0, 0\.5\]"):
        flow(u)
