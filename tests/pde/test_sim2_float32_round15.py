"""Round 15: the scale-invariant ratios of ``sim2`` and ``scaling`` in float32 away from unit
grid spacing (probe s5, F1).

The det-H ratios of ``sim2`` divide by ``det H`` with the reference ``R^2``: numerator and
denominator of degree 8 in the second derivatives. In float32 they overflowed at spacing 1e-5
(inf / inf = NaN, and a PDE layer blamed an unstable scheme) and fell to the guard (2^-63) at
spacing 30 and above (errors up to 0.7, silently); the second-order ratios fell to it at 1e3 and
above. The ratios are now formed from the jet rescaled per pixel by an exact power of two, which
leaves every value where none of that happened the same to the last bit.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from eqpdenet.errors import NonFiniteStateError
from eqpdenet.pde import PDELayer, invariants
from eqpdenet.pde.integrators import input_range_hint
from eqpdenet.pde.invariants import get_invariant_set, ratio_guard
from eqpdenet.pde.stencils import jet


def images(dtype=torch.float32) -> torch.Tensor:
    return torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)).to(dtype)


def values(name: str, spacing: float, dtype=torch.float32) -> torch.Tensor:
    return get_invariant_set(name)(jet(images(dtype), 2, "central", spacing))


def assert_matches_unit_spacing_float64(name: str, spacing: float) -> None:
    truth = values(name, 1.0, torch.float64)
    got = values(name, spacing).double()
    assert bool(torch.isfinite(got).all()), f"{name} at spacing {spacing}: not finite"
    # float32 rounding of the jet (relative ~1e-7, more where a difference cancels) against
    # each invariant's own size
    for k in range(truth.shape[-3]):
        scale = float(truth[..., k, :, :].abs().max())
        error = float((got[..., k, :, :] - truth[..., k, :, :]).abs().max())
        assert error <= 1e-4 * scale, (name, spacing, k, error / scale)


@pytest.mark.parametrize("spacing", [1e-6, 1e-5, 1e-3, 30.0, 100.0, 1e6])
def test_sim2_in_float32_matches_float64_at_unit_spacing(spacing):
    # before: NaN at 1e-5 and 1e-6, relative errors 1e-2 to 1.0 at 30 and above
    assert_matches_unit_spacing_float64("sim2", spacing)


@pytest.mark.parametrize("spacing", [1e3, 1e4, 1e6])
def test_scaling_in_float32_matches_float64_at_unit_spacing(spacing):
    # the second-order sibling: before, 6e-4 at 1e3, 0.33 at 1e4, 1.0 at 1e6 (the guard)
    assert_matches_unit_spacing_float64("scaling", spacing)


def test_the_det_h_ratios_neither_overflow_nor_meet_the_guard_at_the_extremes():
    # the two invariants the probe named, exactly: the ratio of the rescaled operands
    for spacing in (1e-6, 1e6):
        got = values("sim2", spacing)
        assert got.dtype == torch.float32
        assert int(torch.isnan(got).sum()) == 0
        assert int(torch.isinf(got).sum()) == 0
        assert float(got[..., 2:, :, :].abs().max()) > 0.01


# ----------------------------------------------------------------------------- bit for bit


def old_sim2(j: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """The pre-fix covariant sim2 expressions, copied (invariants.py before round 15)."""
    u, ux, uy, uxx, uxy, uyy = j.unbind(-3)
    guard = ratio_guard(j.dtype)

    def ratio(a, b, reference_sq):
        denominator = b * b + eps * eps * reference_sq
        return a * b / (denominator + guard)

    grad_sq = ux**2 + uy**2
    laplacian = uxx + uyy
    det = uxx * uyy - uxy**2
    ghg = ux**2 * uxx + 2 * ux * uy * uxy + uy**2 * uyy
    r = uxx**2 + 2 * uxy**2 + uyy**2 + grad_sq**2
    return torch.stack([u, ratio(grad_sq, laplacian, r), ratio(grad_sq * laplacian, det, r**2),
                        ratio(ghg, det, r**2)], dim=-3)


def old_scaling(j: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """The pre-fix covariant scaling expressions, copied."""
    _, ux, uy, uxx, uxy, uyy = j.unbind(-3)
    guard = ratio_guard(j.dtype)
    r = uxx**2 + 2 * uxy**2 + uyy**2 + (ux**2 + uy**2) ** 2
    return torch.stack([a**2 * b / (b * b + eps * eps * r + guard)
                        for a in (ux, uy) for b in (uxx, uxy, uyy)], dim=-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, old", [("sim2", old_sim2), ("scaling", old_scaling)])
def test_unit_spacing_values_are_bit_for_bit_the_old_formula(name, old, dtype):
    j = jet(images(dtype), 2, "central", 1.0)
    assert torch.equal(get_invariant_set(name)(j), old(j))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["sim2", "scaling"])
def test_the_rescaling_changes_no_bit_of_values_or_gradients(name, dtype, monkeypatch):
    # Against the same code without the rescaling (the pre-fix computation graph: a copied
    # formula sums the gradient's paths in another order), on images where nothing overflows
    # or meets the guard, and on the same images at spacing 1/8 and 2 (other factors; at 8 the
    # unscaled det-H ratios already meet the guard in float32 on some pixels).
    for spacing in (1.0, 0.125, 2.0):
        results = []
        for rescale in (True, False):
            if not rescale:
                monkeypatch.setattr(invariants, "_ratio_operands", lambda d, ratio: d)
            x = images(dtype).requires_grad_(True)
            got = get_invariant_set(name)(jet(x, 2, "central", spacing))
            weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(1),
                                  dtype=dtype)
            (gradient,) = torch.autograd.grad((got * weights).sum(), x)
            results.append((got, gradient))
            monkeypatch.undo()
        (new_values, new_gradient), (old_values, old_gradient) = results
        assert torch.equal(new_values, old_values), spacing
        assert torch.equal(new_gradient, old_gradient), spacing


def test_exp2_of_an_integer_is_exact():
    # the rescaling relies on it (a factor that is not a power of two changes the last bits)
    for dtype, low, high in ((torch.float32, -140, 127), (torch.float64, -1000, 1000)):
        exponents = torch.arange(low, high + 1, dtype=dtype)
        assert torch.exp2(exponents).tolist() == [math.ldexp(1.0, k) for k in range(low, high + 1)]


def test_a_flat_jet_still_gives_zero_and_zero_gradients():
    x = torch.full((1, 1, 5, 5), 0.25, requires_grad=True)
    got = get_invariant_set("sim2")(jet(x, 2, "central", 1e-5))
    assert got[..., 1:, :, :].abs().max().item() == 0.0
    (gradient,) = torch.autograd.grad(got.sum(), x)
    assert torch.isfinite(gradient).all()


def test_a_reference_sim2_layer_in_float32_does_not_depend_on_the_spacing():
    torch.manual_seed(0)
    outputs = {}
    for spacing in (1.0, 1e-5, 100.0):
        layer = PDELayer.build(["sim2", "sim2"], T=0.2, dt=0.1, spacing=spacing, init="normal",
                               init_scale=0.05, init_noise=0.0, backend="reference")
        with torch.no_grad():  # the same F for every spacing
            for index, pde in enumerate(layer.pdes):
                weight = pde.step.rhs.F.weight
                weight.copy_(torch.linspace(-0.05, 0.05, weight.numel()).reshape(weight.shape)
                             * (index + 1))
        outputs[spacing] = layer(images())  # before: NonFiniteStateError at 1e-5
    for spacing in (1e-5, 100.0):
        torch.testing.assert_close(outputs[spacing], outputs[1.0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the hint


def test_a_first_step_failure_names_the_right_hand_side_as_a_possible_cause():
    error = NonFiniteStateError("pde0:sim2", 1, 0.1, input_range_hint(0.0, 1.0))
    assert str(error) == (
        "PDE 'pde0:sim2' produced a non-finite state (NaN or inf) at Euler step 1 (dt=0.1). "
        "The explicit scheme is probably unstable: lower dt, bound the coefficients (see "
        "EulerStep.stability()) or lower the learning rate. (The input was finite, with values "
        "in [0, 1]: if that is not the range the PDE was made for, rescale the input.) At step 1 "
        "the cause may instead be the right-hand side itself: a term of the PDE (an invariant, a "
        "ratio) that is not finite on this finite state, e.g. one that overflows in the dtype; "
        "lowering dt does not cure that (evaluate the PDE's invariants on the input to tell).")
    assert error.hint == input_range_hint(0.0, 1.0)  # the attribute as given
    assert NonFiniteStateError.FIRST_STEP_NOTE in str(NonFiniteStateError("p", 1, 0.5))
    # later steps and other explanations are unchanged
    assert NonFiniteStateError.FIRST_STEP_NOTE not in str(NonFiniteStateError("p", 2, 0.5))
    assert str(NonFiniteStateError("p", 1, 0.5, "The input was not finite.")) == (
        "PDE 'p' produced a non-finite state (NaN or inf) at Euler step 1 (dt=0.5). The input "
        "was not finite.")
    # pickled (worker processes) it reads the same
    assert str(pickle.loads(pickle.dumps(error))) == str(error)

