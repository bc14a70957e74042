"""Predictions over many images where a model's PDE blows up on a few: those images get no
prediction (counted as errors by the callers), the others exactly the logits of the whole batch."""

import pytest
import torch
from torch import nn

from eqpdenet.analysis.predictions import NO_PREDICTION, logits_by_image, predictions
from eqpdenet.errors import NonFiniteStateError


class BlowsUpOnBrightImages(nn.Module):
    """Logits ``W flatten(x)``; a batch holding an image brighter than 0.9 somewhere raises, as a
    PDE model whose state overflowed on it does. Counts its calls and checks it is evaluated."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.batches = []

    def forward(self, x):
        assert not self.training
        self.batches.append(len(x))
        if (x.flatten(1).amax(1) > 0.9).any():
            raise NonFiniteStateError("stage2.block1", 1, 1.0)
        return self.linear(x.flatten(1))


def _images(n, bright):
    images = 0.5 * torch.rand(n, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    images[bright, 0, 1, 0] = 1.0
    return images


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_only_the_images_that_blow_up_lose_their_prediction(batch_size):
    model = BlowsUpOnBrightImages().train()
    images = _images(50, [3, 4, 31])
    predicted, failed = predictions(model, images, batch_size)
    assert failed.nonzero().flatten().tolist() == [3, 4, 31]
    assert (predicted[failed] == NO_PREDICTION).all()
    keep = ~failed
    with torch.no_grad():
        expected = model.linear(images[keep].flatten(1)).argmax(1)
    assert torch.equal(predicted[keep], expected)
    assert model.training  # its mode restored
    logits, failed_again = logits_by_image(model, images, batch_size)
    assert torch.equal(failed, failed_again) and logits.shape == (50, 3)
    assert torch.isnan(logits[failed]).all() and torch.isfinite(logits[keep]).all()


def test_a_model_that_blows_up_on_every_image_raises_its_own_error():
    images = _images(4, [0, 1, 2, 3])
    with pytest.raises(NonFiniteStateError, match="stage2.block1"):
        predictions(BlowsUpOnBrightImages(), images)


def test_non_finite_logits_without_an_error_are_no_prediction_either():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.fill_(1e38)  # finite weights, logits beyond float32
    images = torch.zeros(3, 1, 2, 2)
    images[1] = 1.0
    predicted, failed = predictions(model, images)
    assert failed.tolist() == [False, True, False] and predicted[1] == NO_PREDICTION


def test_no_images_no_predictions():
    predicted, failed = predictions(BlowsUpOnBrightImages(), torch.zeros(0, 1, 2, 2))
    assert predicted.shape == failed.shape == (0,)


def test_robustness_counts_blown_up_images_as_errors_and_compares_the_others():
    """accuracy_under scores an image the model blows up on as an error (it stopped the whole
    measurement); the logit changes compare the images with finite logits on both sides."""
    from eqpdenet.analysis.robustness import accuracy_under, logit_change

    model = BlowsUpOnBrightImages()
    images = _images(20, [5])
    with torch.no_grad():
        labels = model.linear(images.flatten(1)).argmax(1)  # right on every computable image
    assert accuracy_under(model, images, labels, lambda x: x) == pytest.approx(95.0)
    # a half turn moves the bright pixel but keeps it: the same image fails on both sides
    keep = torch.arange(20) != 5
    with torch.no_grad():
        before = model.linear(images[keep].flatten(1)).double()
        after = model.linear(torch.rot90(images[keep], 2, (-2, -1)).flatten(1)).double()
    expected = float(torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before))
    assert logit_change(model, images, 180.0) == pytest.approx(expected, rel=1e-6)


def test_evaluation_scores_blown_up_images_as_errors_and_counts_them():
    """evaluate and every sweep stopped at the first such image (a committed invariant-pde
    checkpoint could not be evaluated at all: one ROTMNIST test digit of 5,000 overflows it);
    now it is an error, counted per scenario and recorded as ``non_finite_images``."""
    from eqpdenet.app.training import Split, evaluate_scenarios, predict

    model = BlowsUpOnBrightImages()
    images = _images(10, [2, 7])
    with torch.no_grad():
        labels = model.linear(images.flatten(1)).argmax(1)
    assert predict(model, images).tolist()[2] == NO_PREDICTION
    counts = {}
    scores = evaluate_scenarios(model, Split(images, labels), ["test"], seed=0, non_finite=counts)
    assert scores == {"test": pytest.approx(80.0)} and counts == {"test": 2}
    counts = {}
    evaluate_scenarios(model, Split(images[:2], labels[:2]), ["test"], seed=0, non_finite=counts)
    assert counts == {}  # none: nothing recorded
