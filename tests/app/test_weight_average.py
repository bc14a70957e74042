"""``train.weight_average``: the model returned is the exponential moving average of the weights
(and batch-norm statistics) over the optimiser's steps, checked against the average computed by
hand from the weights after every step."""

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from distributed_helpers import synthetic_data, tiny_config
from eqpdenet.app import training
from eqpdenet.app.config import build_model
from eqpdenet.app.training import resolve_for_data, train_model
from eqpdenet.errors import ConfigError
from helpers import torch_threads

CNN = ("model.kind='cnn'", "model.cnn.channels=4", "model.cnn.layers=2")  # has batch norm


def test_the_returned_model_is_the_moving_average_of_every_step():
    decay = 0.7
    states = []
    hook = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: states.append(
            {k: v.detach().clone() for k, v in model_of[0].state_dict().items()}))
    model_of = []  # the model being trained, for the hook
    try:
        with torch_threads(1):
            torch.manual_seed(5)
            config = tiny_config(*CNN, f"train.weight_average={decay}")
            model = build_model(resolve_for_data(config, synthetic_data()).model)
            model_of.append(model)
            trained, _ = train_model(config, synthetic_data(), model=model, progress=False)
    finally:
        hook.remove()
    assert len(states) == 8  # 2 epochs of 4 batches (101 images in batches of 32)
    expected = dict(states[0])  # the average starts as the first step's weights
    for state in states[1:]:
        for name, value in state.items():
            if value.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * value
    compared = 0
    for name, value in trained.state_dict().items():
        if not value.is_floating_point():
            continue
        scale = float(expected[name].abs().max())
        assert float((value - expected[name]).abs().max()) <= 1e-6 * max(scale, 1.0), name
        # ... and not the last step's weights, which training moved away from the average
        assert float((states[-1][name] - expected[name]).abs().max()) > 1e-4 * scale, name
        compared += 1
    assert compared == len([k for k in trained.state_dict() if "running" in k]) + \
        len(list(trained.parameters()))  # parameters and batch-norm statistics alike


def test_validation_scores_the_averaged_weights(monkeypatch):
    """Each epoch's validation accuracy is computed on the average (the model that will be
    returned), not on the last step's weights."""
    data = synthetic_data()
    split = data.train
    data = type(data)(train=type(split)(split.images[:81], split.labels[:81]),
                      validation=type(split)(split.images[81:], split.labels[81:]),
                      test=data.test, classes=data.classes)
    scored = []
    monkeypatch.setattr(training, "accuracy", lambda model, images, *args: scored.append(
        {k: v.clone() for k, v in model.state_dict().items()}) or 0.5)
    with torch_threads(1):
        model, history = train_model(tiny_config(*CNN, "train.weight_average=0.5"), data,
                                     progress=False)
    assert len(scored) == len(history) == 2
    for name, value in model.state_dict().items():
        assert torch.equal(scored[-1][name], value), name


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan")])
def test_a_decay_outside_0_to_1_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match="train.weight_average"):
        tiny_config(f"train.weight_average={value}")
