"""The blur-consistency penalty (``train.blur_consistency``): the per-image Gaussian blur against
its analytic moments and its adjoint, the draws, the relative change, and the training loop's
promises (the objective is the one documented, the batch order unchanged, off by default,
fingerprints kept, bad options named)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
from eqpdenet.app.preflight import training_bytes
from eqpdenet.app.training import fingerprint, resolve_for_data, train_model
from eqpdenet.data.augment import BlurConsistency, blur_generator, gaussian_blur, relative_change
from eqpdenet.errors import ConfigError
from eqpdenet.geometry import pixel_coordinates
from helpers import BatchRecorder, framed_data


def points(n: int, size: int = 31) -> torch.Tensor:
    """Unit impulses at the centre, float64: a blur's output is its kernel."""
    images = torch.zeros(n, 1, size, size, dtype=torch.float64)
    images[:, :, size // 2, size // 2] = 1.0
    return images


def test_each_image_is_blurred_by_its_own_gaussian():
    """A point blurred at sigma has mass 1, stays centred, and has variance sigma^2 along each
    axis, up to two known errors: sampling (Poisson summation: a relative error of about
    8 pi^2 sigma^2 exp(-2 pi^2 sigma^2), 1.7e-4 at sigma = 0.8, nothing measurable at 1.5) and the
    kernels' end at 4 times the largest sigma (about 5e-4 of the largest one's variance)."""
    sigma = torch.tensor([0.8, 1.5, 2.5], dtype=torch.float64)
    out = gaussian_blur(points(3), sigma)
    x, y = pixel_coordinates(31, 31, dtype=torch.float64)
    mass = out.sum((1, 2, 3))
    assert torch.allclose(mass, torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose((out[:, 0] * x).sum((1, 2)), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    for coordinate in (x, y):
        relative = (out[:, 0] * coordinate**2).sum((1, 2)) / sigma**2 - 1
        assert abs(float(relative[1])) < 1e-9
        assert -3e-4 < float(relative[0]) < -1e-4
        assert -1e-3 < float(relative[2]) < 0
    # Separable: the 2-D kernel is the outer product of its row and column.
    kernel = out[1, 0]
    assert torch.allclose(kernel, torch.outer(kernel.sum(1), kernel.sum(0)), atol=1e-15)


def test_blur_is_self_adjoint_and_channels_are_blurred_alike():
    """A symmetric kernel with a zero boundary is a symmetric linear map: <B x, y> = <x, B y>."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 13, 11, generator=generator, dtype=torch.float64)
    y = torch.rand(4, 2, 13, 11, generator=generator, dtype=torch.float64)
    sigma = torch.tensor([0.3, 0.71, 1.2, 2.0], dtype=torch.float64)
    left = (gaussian_blur(x, sigma) * y).sum((1, 2, 3))
    right = (x * gaussian_blur(y, sigma)).sum((1, 2, 3))
    assert torch.allclose(left, right, rtol=1e-12)
    same = x[:, :1].expand(4, 2, 13, 11).contiguous()
    blurred = gaussian_blur(same, sigma)
    assert torch.equal(blurred[:, 0], blurred[:, 1])
    assert not torch.allclose(blurred[0], blurred[3])  # sigma matters


@pytest.mark.parametrize("sigma, message", [
    (torch.tensor([1.0]), r"one standard deviation per image, shape \(2,\)"),
    (torch.tensor([1.0, 0.0]), "finite number of pixels > 0"),
    (torch.tensor([1.0, float("nan")]), "finite number of pixels > 0"),
])
def test_bad_sigma_is_named(sigma, message):
    with pytest.raises(ConfigError, match="sigma: .*" + message):
        gaussian_blur(points(2), sigma)


def test_off_by_default_draws_nothing_and_copies_nothing():
    blur, generator = BlurConsistency(), torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert blur.is_off and blur.copies(64) == 0
    assert blur(points(5), generator).shape == (0, 1, 31, 31)
    assert torch.equal(generator.get_state(), state)


def test_copies_and_draws():
    blur = BlurConsistency(weight=1.0, max_sigma=0.5, fraction=0.25)
    assert [blur.copies(n) for n in (64, 5, 3, 1, 0)] == [16, 1, 1, 1, 0]
    assert BlurConsistency(weight=1.0, fraction=1.0).copies(7) == 7
    sigma = blur.draw(5000, torch.Generator().manual_seed(0))
    assert sigma.dtype == torch.float64
    assert 0 < float(sigma.min()) < 0.001 and 0.499 < float(sigma.max()) <= 0.5
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    one = blur(images, torch.Generator().manual_seed(5))
    two = blur(images, torch.Generator().manual_seed(5))
    expected = gaussian_blur(images[:2], blur.draw(2, torch.Generator().manual_seed(5)).float())
    assert one.shape == (2, 1, 28, 28) and torch.equal(one, two)
    assert torch.allclose(one, expected, atol=1e-7)


def test_relative_change_is_the_squared_ratio():
    logits = torch.tensor([[3.0, -4.0], [1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(relative_change(logits, 1.1 * logits),
                          torch.tensor([0.01, 0.01], dtype=torch.float64), rtol=1e-12)
    # Scale-free: the same change of logits twice as large counts the same.
    changed = logits + torch.tensor([[0.5, 0.0], [0.0, 0.2]], dtype=torch.float64)
    assert torch.allclose(relative_change(2 * logits, 2 * changed), relative_change(logits, changed))
    assert torch.allclose(relative_change(logits, changed),
                          torch.tensor([0.25 / 25, 0.04], dtype=torch.float64))
    assert torch.isfinite(relative_change(torch.zeros(1, 3), torch.ones(1, 3))).all()


@pytest.mark.parametrize("field, value, message", [
    ("weight", -1.0, "train.blur_consistency.weight: must be >= 0"),
    ("max_sigma", 0.0, "train.blur_consistency.max_sigma: must be positive"),
    ("max_sigma", 6.0, "train.blur_consistency.max_sigma: must be <= 5 pixels"),
    ("fraction", 0.0, "train.blur_consistency.fraction: must be positive"),
    ("fraction", 1.5, "train.blur_consistency.fraction: is the share of a batch"),
    ("weight", float("inf"), "train.blur_consistency.weight: must be a finite number"),
])
def test_bad_options_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        BlurConsistency(**{field: value})
    with pytest.raises(ConfigError, match=f"train.blur_consistency.{field}"):
        apply_overrides(ExperimentConfig(), [f"train.blur_consistency.{field}={value!r}"])


def test_config_default_keeps_fingerprints_and_the_option_changes_them():
    base = ExperimentConfig()
    assert base.train.blur_consistency.is_off
    assert fingerprint(base) == fingerprint(
        apply_overrides(base, ["train.blur_consistency.weight=0"]))
    assert fingerprint(base) != fingerprint(
        apply_overrides(base, ["train.blur_consistency.weight=1"]))


def one_step_config(*overrides):
    return apply_overrides(ExperimentConfig(), [
        "model.kind='fcnn'", "model.hidden=16", "train.epochs=1", "train.batch_size=40",
        "train.optimizer='sgd'", "train.lr=0.5", "train.seed=9", *overrides])


def test_the_step_descends_the_documented_objective():
    """One SGD step on one batch (momentum adds nothing to a first step): the parameters move by
    ``-lr`` times the gradient of ``CE + weight * mean relative change`` over the first
    ``round(fraction B)`` images and their copies, blurred with the seed's stream; the history's
    ``loss`` is the cross-entropy alone and ``blur_consistency`` the penalty."""
    config = one_step_config("train.blur_consistency.weight=3.0", "train.blur_consistency.fraction=0.3")
    data = framed_data(40)
    model, history = train_model(config, data, progress=False)

    torch.manual_seed(config.train.seed)
    reference = build_model(resolve_for_data(config, data).model)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(config.train.seed))
    x, y = data["train"].images[order], data["train"].labels[order]
    copies = config.train.blur_consistency(x, blur_generator(config.train.seed))
    assert len(copies) == 12
    logits = reference(x)
    cross_entropy = F.cross_entropy(logits, y)
    penalty = relative_change(logits[:12], reference(copies)).mean()
    assert float(penalty.detach()) > 1e-6  # the blur moved the logits: the test can tell the terms apart
    (cross_entropy + 3.0 * penalty).backward()
    for (name, value), parameter in zip(model.state_dict().items(), reference.parameters(),
                                        strict=True):
        expected = parameter.detach() - 0.5 * parameter.grad
        assert torch.allclose(value, expected, atol=1e-6), name
    assert history[0]["loss"] == pytest.approx(float(cross_entropy.detach()), rel=1e-6)
    assert history[0]["blur_consistency"] == pytest.approx(float(penalty.detach()), rel=1e-5)

    plain, plain_history = train_model(one_step_config(), data, progress=False)
    assert "blur_consistency" not in plain_history[0]
    assert plain_history[0]["loss"] == pytest.approx(float(cross_entropy.detach()), rel=1e-6)
    assert not all(torch.allclose(a, b, atol=1e-6)  # the penalty changed the step
                   for a, b in zip(plain.parameters(), model.parameters(), strict=True))


def test_the_penalty_keeps_the_batch_order_of_the_seed():
    """The σ draws come from their own stream: with the penalty on, the same images arrive in
    the same order (recorded by a model that sees the batch first, then the copies)."""
    config = apply_overrides(ExperimentConfig(), ["train.epochs=2", "train.batch_size=16"])
    runs = []
    for overrides in ((), ("train.blur_consistency.weight=1.0",)):
        torch.manual_seed(0)
        model = BatchRecorder()
        train_model(apply_overrides(config, list(overrides)), framed_data(40), model=model,
                    progress=False)
        runs.append(model.seen)
    plain, penalised = runs
    assert len(plain) == len(penalised) == 6  # 40 images in batches of 16, two epochs
    for batch, both in zip(plain, penalised, strict=True):
        k = BlurConsistency(weight=1.0).copies(len(batch))
        assert both.shape[0] == len(batch) + k
        assert torch.equal(both[:len(batch)], batch)
        assert not torch.allclose(both[len(batch):], batch[:k])  # the copies are blurred


def test_preflight_counts_the_copies():
    config = apply_overrides(ExperimentConfig(), [
        "model.kind='lifted_pde'", "model.image_size=28", "train.batch_size=64"])
    penalised = apply_overrides(config, ["train.blur_consistency.weight=1.0",
                                         "train.blur_consistency.fraction=0.5"])
    assert training_bytes(penalised) == pytest.approx(1.5 * training_bytes(config), rel=0.02)
