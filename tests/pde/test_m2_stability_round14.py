"""Round 14: explicit Euler's stability on M2 is checked (it said "M2SystemRHS has no
linearisation" for every system).

The ``diffusion`` term's ``A33`` is a periodic second difference over the orientations, step
``dtheta = 2 pi / N``: explicit Euler is stable only for ``D3 dt <= dtheta^2 / 2 = 2 pi^2 / N^2``.
With the initial ``D = 0.05`` and ``dt = 1`` that fails from ``N = 20`` on: the checkerboard over
orientations grew by 1.03 (N = 20) to 4.2 (N = 32) per step, finite for many steps (no
``NonFiniteStateError``), and a lifted model with that configuration computed garbage silently.
``M2SystemRHS.euler_stability`` now bounds the largest decay rate from both sides, ``EulerStep``
and ``describe`` report it, and a lifted model unstable at its initial coefficients is refused.
"""

from __future__ import annotations

import math

import pytest
import torch

from eqpdenet.analysis.describe import describe_m2_system
from eqpdenet.errors import ConfigError
from eqpdenet.models.lifted_pde import LiftedPDEConfig, LiftedPDENet, refuse_unstable_steps
from eqpdenet.pde.integrators import EulerStep
from eqpdenet.pde.m2_rhs import M2SystemRHS

D0 = 0.05  # the diffusion term's initial coefficients


def theta_bound(n: int) -> float:
    """The largest dt with D3 dt <= dtheta^2 / 2 at the initial D3."""
    return (2 * math.pi / n) ** 2 / 2 / D0


@pytest.mark.parametrize("n", [8, 12, 16, 20, 24, 32])
def test_the_verdict_follows_the_theta_bound(n):
    report = EulerStep(M2SystemRHS(2, "diffusion", orientations=n), 1.0).stability()
    # the theta checkerboard alone: certainly unstable where dt breaks its bound
    if 1.0 > theta_bound(n):
        assert report["stable"] is False
        assert f"along theta at {n} orientations" in report["reason"]
        assert report["max_rate_dt"] >= 4 * D0 / (2 * math.pi / n) ** 2 - 1e-9
    else:
        assert report["stable"] is True and report["reason"] is None
    # the certain bound: the theta part plus the spatial part's largest symbol, about 2 D / e
    spatial = 2 * D0 / math.e
    assert report["max_dt"] == pytest.approx(2 / (spatial + 4 * D0 / (2 * math.pi / n) ** 2),
                                             rel=2e-3)


def test_the_spatial_symbol_is_the_scale_normalised_gaussians():
    # max over k of sigma^2 k^2 exp(-sigma^2 k^2 / 2) = 2 / e, at any sigma (scale-normalised)
    for sigma in (1.0, 1.5):
        rhs = M2SystemRHS(1, "diffusion", orientations=8, sigma=sigma)
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        # (the stencils' moment correction moves it by a few 1e-3)
        assert float(rhs._diffusion_symbol_max(one, zero, 8)) == pytest.approx(2 / math.e,
                                                                               rel=5e-3)


@pytest.mark.parametrize("n", [16, 24])
def test_the_verdict_matches_the_evolution(n):
    """Twelve explicit Euler steps of a random field: bounded where the check says stable,
    growing where it says unstable (the reference path, float64)."""
    torch.manual_seed(0)
    rhs = M2SystemRHS(1, "diffusion", orientations=n, backend="reference").double()
    step = EulerStep(rhs, 1.0)
    u = torch.randn(1, 1, n, 16, 16, dtype=torch.float64)
    start = float(u.abs().max())
    with torch.no_grad():
        for _ in range(12):
            u = step(u)
    grown = float(u.abs().max()) / start
    if step.stability()["stable"]:
        assert grown <= 1.0
    else:
        assert grown > 10.0


def test_a_network_term_is_not_linearised_but_the_diffusion_term_alone_decides():
    rhs = M2SystemRHS(2, ("network", "diffusion"), orientations=32)
    report = EulerStep(rhs, 1.0).stability()
    assert report["stable"] is None and report["diffusion_stable"] is False
    assert report["reason"].startswith("cannot check: F's network term is not linearised")
    # without the hidden batch norm the output weights start at 0: nothing to linearise yet
    rhs = M2SystemRHS(2, ("network", "diffusion"), orientations=32, normalize_hidden=False)
    assert EulerStep(rhs, 1.0).stability()["stable"] is False


def test_convection_with_a_velocity_is_unstable_whatever_dt():
    rhs = M2SystemRHS(1, ("convection",), orientations=8)
    assert EulerStep(rhs, 1e-3).stability()["stable"] is True     # v = 0 as built
    with torch.no_grad():
        rhs.terms["convection"].weight[0, 0] = 0.1
    report = EulerStep(rhs, 1e-3).stability()
    assert report["stable"] is False and "whatever dt" in report["reason"]


def test_a_lifted_model_unstable_from_its_first_step_is_refused_before_training():
    config = dict(channels=[2], blocks=[1], terms=["diffusion"])
    with pytest.raises(ConfigError, match=r"^invalid config: lifted_pde\.dt / "
                                          r"lifted_pde\.orientations: stage0\.block0 would be "
                                          r"unstable from its first step \(dt = 1 is above"):
        refuse_unstable_steps(LiftedPDENet(LiftedPDEConfig(orientations=24, **config),
                                           image_size=16))
    # the same at a dt within the bound, or at 16 orientations, passes
    refuse_unstable_steps(LiftedPDENet(LiftedPDEConfig(orientations=24, dt=0.5, **config),
                                       image_size=16))
    refuse_unstable_steps(LiftedPDENet(LiftedPDEConfig(orientations=16, **config), image_size=16))
    # a stage's blocks run on its own orientations (after the pooling), not the lift's 24
    refuse_unstable_steps(LiftedPDENet(LiftedPDEConfig(orientations=24, stage_orientations=[12],
                                                       **config), image_size=16))


def test_a_checkpoint_with_stable_trained_coefficients_loads(tmp_path):
    """Round 14 (review): the check ran when the model was built, so a checkpoint whose trained
    D was stable could not be loaded (it is built with the initial D first). It now runs where
    training starts, on the coefficients held then."""
    from eqpdenet.app.config import ExperimentConfig, build_model
    from eqpdenet.app.training import load_checkpoint, save_checkpoint

    config = ExperimentConfig()
    config.model.kind = "lifted_pde"
    config.model.lifted_pde = LiftedPDEConfig(orientations=24, channels=[2], blocks=[1],
                                              terms=["network", "diffusion"])
    model = build_model(config.model)
    with torch.no_grad():  # trained to a stable D3
        model.stages[0][0].rhs.terms["diffusion"].weight.fill_(-6.0)   # softplus: 0.0025
    refuse_unstable_steps(model)
    save_checkpoint(tmp_path / "model.pt", model, config)
    loaded = load_checkpoint(tmp_path / "model.pt")[0]
    assert torch.equal(loaded.stages[0][0].rhs.terms["diffusion"].weight,
                       model.stages[0][0].rhs.terms["diffusion"].weight)


def test_describe_prints_the_check():
    text = describe_m2_system(EulerStep(M2SystemRHS(2, ("diffusion", "erosion"), orientations=8),
                                        1.0, name="s0"))
    assert text.splitlines()[-1] == ("  explicit Euler check, F linearised at U = 0: stable "
                                     "(dt ≤ 5.54)")


def test_the_preflight_refuses_it_before_any_run_of_a_sweep_trains():
    """Round 14 (review): the preflight's models are on the meta device, where the check said
    "cannot check", so a sweep trained its earlier runs before the lifted one was refused. A
    model there holds its initial coefficients, which are known."""
    from eqpdenet.app.config import ExperimentConfig
    from eqpdenet.app.preflight import preflight

    config = ExperimentConfig()
    config.model.kind = "lifted_pde"
    config.model.lifted_pde = LiftedPDEConfig(orientations=24, channels=[2], blocks=[1],
                                              terms=["diffusion"])
    with pytest.raises(ConfigError, match=r"^run lifted: invalid config: lifted_pde\.dt / "
                                          r"lifted_pde\.orientations: stage0\.block0 would be "
                                          r"unstable"):
        preflight({"lifted": config}, None)
    config.model.lifted_pde.dt = 0.5
    preflight({"lifted": config}, None)
    with torch.device("meta"):  # the initial coefficients, as built
        report = EulerStep(M2SystemRHS(2, ("network", "diffusion"), orientations=8,
                                       normalize_hidden=False), 1.0).stability()
    assert report["stable"] is True and report["linear_part"]["D3"] == pytest.approx(D0)
