"""EulerStep.stability() over every order of F's linearisation (session of 2026-12-06): a
compiled set holding Δ²u (or u_x) was reported stable from its second-order part alone, and
blew up. Each verdict is run on noise: what the check calls unstable grows, what it calls stable
decays (circular boundary: the symbol is exactly the scheme's)."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("sympy")

import torch  # noqa: E402

from eqpdenet import PDELayer  # noqa: E402
from eqpdenet.pde.symbolic import compile_invariants  # noqa: E402

BILAPLACIAN = ["u", "u_xx + u_yy", "u_xxxx + 2*u_xxyy + u_yyyy"]
ADVECTION = ["u", "u_x", "u_xx + u_yy"]


def _layer(expressions, weights, dt, boundary="circular"):
    invariants = compile_invariants(expressions, "orders")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unstable initial F warns; judged below
        layer = PDELayer.build([invariants], T=40 * dt, dt=dt, boundary=boundary,
                               init_noise=0.0, backend="reference")
    with torch.no_grad():
        layer.pdes[0].step.rhs.F.weight.copy_(torch.tensor(weights))
    return layer


def _grows(layer) -> bool:
    noise = torch.rand(1, 1, 16, 16, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0)) - 0.5
    flow = layer.pdes[0].double()
    flow.check_finite = False
    with torch.no_grad():
        return bool(flow(noise).abs().max() > noise.abs().max())


@pytest.mark.parametrize(("expressions", "weights", "dt", "stable", "max_dt"), [
    # the probe's: 0.1 Δu - Δ²u at dt = 0.1 was "stable" (max_dt 2.5) and grew to 1.7e6 in 10
    # steps; central Δ² has symbol up to 64: dt <= 2 / (0.1 * 8 + 64)
    (BILAPLACIAN, [0.0, 0.1, -1.0], 0.1, False, 2 / 64.8),
    (BILAPLACIAN, [0.0, 0.1, -0.01], 0.1, True, 2 / 1.44),
    (BILAPLACIAN, [0.0, 0.1, -0.01], 1.5, False, 2 / 1.44),
    # +Δ²u is anti-diffusion only where it outgrows 0.1 Δu, beyond the grid's frequencies:
    # sigma = -0.1 λ + 0.01 λ², λ in [0, 8], most negative at λ = 5
    (BILAPLACIAN, [0.0, 0.1, 0.01], 0.01, True, 2 / 0.25),
    (BILAPLACIAN, [0.0, 0.0, 0.01], 0.01, False, None),  # anti-diffusion: no dt mends it
    # advection: central differences with Euler amplify u_x at every dt, unless diffusion
    # damps it
    (ADVECTION, [0.0, 1.0, 0.0], 0.25, False, None),
    (ADVECTION, [0.0, 0.5, 1.0], 0.1, True, 0.25),
    (ADVECTION, [0.0, 0.5, 1.0], 0.3, False, 0.25),
    (["u", "u_xxx"], [0.0, 1.0], 0.01, False, None),
    # a decaying reaction term alone: u <- (1 - 3) u; it was "stable"
    (["u", "u_xx + u_yy"], [-30.0, 0.0], 0.1, False, 2 / 30),
    (["u", "u_xx + u_yy"], [-3.0, 1.0], 0.1, True, 2 / 11),
])
def test_the_stability_check_covers_every_order_of_the_linear_part(expressions, weights, dt,
                                                                    stable, max_dt):
    layer = _layer(expressions, weights, dt)
    [report] = layer.stability()
    assert report["stable"] is stable, report
    assert report["max_dt"] == (None if max_dt is None else pytest.approx(max_dt, rel=1e-6))
    assert (report["reason"] is None) is stable
    assert _grows(layer) is not stable


def test_the_report_names_the_linear_part_and_the_reason():
    [report] = _layer(BILAPLACIAN, [0.0, 0.1, -1.0], 0.1).stability()
    assert report["linear_part"] == {"u_xx": pytest.approx(0.1), "u_yy": pytest.approx(0.1),
                                     "u_xxxx": -1.0, "u_xxyy": -2.0, "u_yyyy": -1.0}
    assert report["second_order"] == (pytest.approx(0.1), 0.0, pytest.approx(0.1))
    assert report["max_rate_dt"] == pytest.approx(2 * 0.1 / (2 / 64.8), rel=1e-6)
    assert report["reason"] == ("dt = 0.1 is above the explicit Euler bound of the linear part "
                                "(with u_xxxx -1, u_xxyy -2, u_yyyy -1): |1 + dt sigma| <= 1 needs "
                                "dt <= 0.0308642")
    [advection] = _layer(ADVECTION, [0.0, 1.0, 0.0], 0.1).stability()
    assert advection["reason"].startswith("the linear part (with u_x +1) amplifies some "
                                          "frequencies whatever dt")
    assert advection["max_rate_dt"] == 0.0  # not "above the upper bound": no dt mends it


def test_the_paper_sets_keep_their_reports():
    """Only u and second-order terms: the isotropic check, as before (a zero reaction term)."""
    layer = PDELayer.build(["se2", "scaling"], dt=0.1, init="heat", init_scale=2.0,
                           init_noise=0.0)
    se2, scaling = layer.stability()
    assert (se2["diffusivity"], se2["max_dt"], se2["stable"]) == (2.0, pytest.approx(0.125), True)
    assert se2["linear_part"] == {"u_xx": 2.0, "u_yy": 2.0} and se2["reason"] is None
    assert scaling["stable"] is None and scaling["linear_part"] is None
    assert scaling["reason"].startswith("nothing to check")


def test_the_build_warning_of_a_higher_order_f_gives_the_checks_reason():
    """The warning named (c_xx, c_xy, c_yy) and "-dt sigma <= 2", which say nothing of a Δ²u
    term: it gives the linear part's own verdict."""
    invariants = compile_invariants(BILAPLACIAN, "orders")
    torch.manual_seed(0)
    with pytest.warns(UserWarning) as caught:
        layer = PDELayer.build([invariants], T=1.0, dt=1.0, init="normal", init_scale=1.0,
                               init_noise=0.0, backend="reference")
    (report,) = layer.stability()
    assert report["stable"] is False and "u_xxxx" in " ".join(report["linear_part"])
    message = str(caught[0].message)
    assert "initial F: " in message and report["reason"] in message
    assert "(c_xx, c_xy, c_yy)" not in message
