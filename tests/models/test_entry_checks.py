"""Every registered model family goes through the same entry check (eqpdenet.models.inputs):
parametrised over MODELS, so a family added to the registry without it fails here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from eqpdenet.errors import (
    ConfigError,
    InputError,
    InputRangeWarning,
    InputTypeError,
    NonFiniteStateError,
)
from eqpdenet.models import (
    MODELS,
    CNNConfig,
    GCNNConfig,
    InvariantPDEConfig,
    InvariantPDENet,
    build_model,
    min_image_size,
)

MNIST_STATS = dict(input_mean=0.1307, input_std=0.3081)


def _build(kind: str, **options):
    if kind == "gcnn":
        pytest.importorskip("e2cnn")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an initial stability report, say
        return build_model(kind, hidden=8, **{**MNIST_STATS, **options})


def _digits(n=2, size=28, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _calibrated(model):
    """``model`` in evaluation mode with the batch-norm statistics of a batch of digits (an
    untrained deep model's default statistics let its Euler steps blow up)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: after one batch, that batch's
            module.reset_running_stats()
    with torch.no_grad():
        model.train()(_digits(8, model.image_size, seed=1))
    return model.eval()


@pytest.fixture(scope="module", params=MODELS.names())
def family(request):
    """(kind, a model of that kind in evaluation mode)."""
    return request.param, _calibrated(_build(request.param))


def test_valid_images_give_logits_of_their_dtype(family):
    kind, model = family
    out = model(_digits())
    assert out.shape == (2, model_classes(model)) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def model_classes(model) -> int:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_the_inputs_fault(family, bad):
    _, model = family
    images = _digits()
    images[1, 0, 5, 7] = bad
    with pytest.raises(InputError, match=r"images contains non-finite values \(\d NaN, \d inf "
                                         r"of 1568\): the input is at fault"):
        model(images)


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_lower_precision_is_computed_in_the_models_dtype(family, low):
    _, model = family
    images = _digits().to(low)
    out = model(images)
    assert out.dtype == low
    assert torch.equal(out, model(images.float()).to(low))  # the same values, computed in float32


def test_higher_precision_is_a_clear_error(family):
    _, model = family
    with pytest.raises(InputTypeError, match=r"images is torch.float64 but the module computes in "
                                             r"torch.float32: convert the module"):
        model(_digits().double())


@pytest.mark.parametrize(("images", "error", "message"), [
    (lambda: torch.rand(2, 28, 28), InputError, r"must have shape \(batch, channels, height, "),
    (lambda: torch.rand(2, 3, 28, 28), InputError, r"expected images of shape \(batch, 1, 28, 28\)"),
    (lambda: torch.rand(2, 1, 32, 32), InputError, r"expected images of shape \(batch, 1, 28, 28\)"),
    (lambda: (torch.rand(2, 1, 28, 28) * 255).to(torch.uint8), InputTypeError,
     "must be a floating-point tensor"),
    (lambda: np.zeros((2, 1, 28, 28), dtype=np.float32), InputTypeError, "must be a torch.Tensor"),
])
def test_wrong_shapes_and_types_are_named(family, images, error, message):
    _, model = family
    with pytest.raises(error, match=message):
        model(images())


def test_far_range_warns(family):
    kind, _ = family
    model = _calibrated(_build(kind))  # a fresh model: the warning is once per model
    with pytest.warns(InputRangeWarning, match="0-255 instead of 0-1"):
        try:
            model(_digits() * 255)
        except FloatingPointError:  # a PDE may blow up on such pixels: said elsewhere
            pass


def test_a_batch_of_one_in_training_mode(family):
    """With batch normalisation it is a clear error (not PyTorch's, deep inside); without, it
    trains; in evaluation mode every family takes one image."""
    kind, _ = family
    model = _build(kind).train()
    has_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_norm:
        with pytest.raises(InputError, match=r"a batch of one image in training mode: \w+ has "
                                             r"batch normalisation .* at least 2 images per batch"):
            model(_digits(1))
    else:
        assert model(_digits(1)).shape[0] == 1
    assert _calibrated(model)(_digits(1)).shape[0] == 1


def test_the_smallest_declared_size_runs_and_one_less_is_refused(family):
    kind, model = family
    smallest = min_image_size(model)
    small = _calibrated(_build(kind, image_size=smallest))
    assert torch.isfinite(small(_digits(3, smallest))).all()
    assert torch.isfinite(small.train()(_digits(3, smallest))).all()
    if smallest > 1:
        with pytest.raises(ConfigError, match=rf"image_size: {smallest - 1} pixels is too small "
                                              rf"for this model: it needs images of at least "
                                              rf"{smallest}x{smallest}"):
            _build(kind, image_size=smallest - 1)


@pytest.mark.parametrize(("kind", "options", "smallest"), [
    ("fcnn", {}, 1),
    ("eqpdenet", {}, 1),  # replicate boundary: any size
    ("cnn", {}, 2),
    ("cnn", {"cnn": CNNConfig(pool_after=0)}, 1),
    ("gcnn", {}, 4),  # two poolings
    ("invariant_pde", {}, 4),  # three stages: two poolings
    ("invariant_pde", {"invariant_pde": InvariantPDEConfig(boundary="reflect")}, 8),
    ("invariant_pde", {"invariant_pde": InvariantPDEConfig(downsample="none")}, 1),
])
def test_minimum_sizes_follow_pooling_and_stencils(kind, options, smallest):
    assert min_image_size(_build(kind, **options)) == smallest


def test_the_gcnn_minimum_counts_its_poolings():
    pytest.importorskip("e2cnn")
    model = _build("gcnn", gcnn=GCNNConfig(channels=[2, 2, 2], kernels=[3, 3, 3],
                                           pool_after=[1, 2, 3]))
    assert min_image_size(model) == 8


def test_features_are_checked_too():
    net = InvariantPDENet(InvariantPDEConfig(channels=[4], blocks=[1])).eval()
    with pytest.raises(InputError, match="the input is at fault"):
        net.features(torch.full((2, 1, 28, 28), float("nan")))


def test_a_deep_model_whose_states_blow_up_says_which_block():
    """Untrained, in evaluation mode (default batch-norm statistics), the deep model's Euler
    steps overflow: a NonFiniteStateError naming the block, never NaN logits."""
    net = _build("invariant_pde").eval()
    with pytest.raises(NonFiniteStateError, match=r"PDE 'stage\d\.block\d' produced a non-finite "
                                                  r"state .*The input was finite, with values in"):
        net(_digits())
