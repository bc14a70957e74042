"""``train.weight_average``: the model returned is the exponential moving average of the
parameters over the optimiser's steps (checked against the average computed by hand from the
parameters after every step), with batch-norm statistics recomputed for those weights."""

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
    """The parameters: the average computed by hand from the parameters after every step. The
    batch-norm statistics: recomputed for the averaged weights, so the first batch norm's
    running mean and variance are the means over the training batches of its input's batch
    mean and unbiased variance under the returned weights."""
    decay = 0.7
    states = []
    hook = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: states.append(
            {k: v.detach().clone() for k, v in model_of[0].named_parameters()}))
    model_of = []  # the model being trained, for the hook
    data = synthetic_data()
    try:
        with torch_threads(1):
            torch.manual_seed(5)
            config = tiny_config(*CNN, f"train.weight_average={decay}")
            model = build_model(resolve_for_data(config, data).model)
            model_of.append(model)
            trained, _ = train_model(config, data, model=model, progress=False)
    finally:
        hook.remove()
    assert len(states) == 8  # 2 epochs of 4 batches (101 images in batches of 32)
    expected = dict(states[0])  # the average starts as the first step's weights
    for state in states[1:]:
        for name, value in state.items():
            expected[name] = decay * expected[name] + (1 - decay) * value
    parameters = {k: v.detach() for k, v in trained.named_parameters()}
    assert parameters.keys() == expected.keys()
    for name, value in parameters.items():
        scale = float(expected[name].abs().max())
        assert float((value - expected[name]).abs().max()) <= 1e-6 * max(scale, 1.0), name
        # ... and not the last step's weights, which training moved away from the average
        assert float((states[-1][name] - expected[name]).abs().max()) > 1e-4 * scale, name

    norms = [m for m in trained.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    inputs = []
    handle = norms[0].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    trained.eval()  # the first norm's input does not depend on any batch norm's mode
    with torch.no_grad():
        for start, stop in ((0, 32), (32, 64), (64, 96), (96, 101)):
            trained(data.train.images[start:stop])
    handle.remove()
    means = torch.stack([x.mean((0, 2, 3)) for x in inputs]).mean(0)
    variances = torch.stack([x.var((0, 2, 3), unbiased=True) for x in inputs]).mean(0)
    assert torch.allclose(norms[0].running_mean, means, rtol=1e-5, atol=1e-6)
    assert torch.allclose(norms[0].running_var, variances, rtol=1e-5, atol=1e-6)


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
