"""``train.compile`` on a GPU: the epochs run through ``accelerate.EpochRunner``, which must step
through the compiled forward. It was given the plain model, so a run recorded ``compile = true``
and trained eagerly. Simulated on the CPU (where the runner runs without CUDA graphs) by letting
the runner apply to the CPU device, as ``device.type == "cuda"`` does on a GPU."""

import pytest
import torch

from eqpdenet.app import accelerate, training
from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.training import Split, train_model


def tiny_data(train: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"train": Split(torch.rand(train, 1, 28, 28, generator=generator),
                           torch.arange(train) % 10),
            "test": Split(torch.rand(16, 1, 28, 28, generator=generator), torch.arange(16) % 10),
            "validation": Split(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))}


@pytest.fixture
def gpu_path(monkeypatch):
    """The runner applies here, and ``compiled_for_training`` counts the calls of what it
    returns (the eager forward underneath: no Inductor compilation in a unit test)."""
    calls = {"compiled": 0, "epochs": 0}

    def counted(forward):
        def step(images):
            calls["compiled"] += 1
            return forward(images)
        return step

    run_epoch = accelerate.EpochRunner.run_epoch

    def counted_epoch(self, order, epoch):
        calls["epochs"] += 1
        return run_epoch(self, order, epoch)

    monkeypatch.setattr(training, "compiled_for_training", counted)
    monkeypatch.setattr(training.accelerate, "applies_to", lambda device: True)
    monkeypatch.setattr(accelerate.EpochRunner, "run_epoch", counted_epoch)
    return calls


def config(compile: bool) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), [
        "model.kind='fcnn'", "model.hidden=8", "train.epochs=2", f"train.compile={str(compile).lower()}",
        "train.batch_size=32"])


def test_the_runner_trains_through_the_compiled_forward(gpu_path):
    # 70 images in batches of 32: two full batches and one of 6, per epoch, two epochs
    model, history = train_model(config(True), tiny_data(70), progress=False)
    assert gpu_path["epochs"] == 2  # the runner ran the epochs, not the loop
    assert gpu_path["compiled"] == 6
    assert len(history) == 2 and all(torch.isfinite(p).all() for p in model.parameters())


def test_without_compile_the_runner_calls_the_model(gpu_path):
    train_model(config(False), tiny_data(70), progress=False)
    assert gpu_path == {"compiled": 0, "epochs": 2}


def test_the_runner_through_a_forward_computes_what_it_does_through_the_model():
    """The ``forward`` argument changes what is called, not the training: the same updates."""
    models = []
    for wrap in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        data = tiny_data(40)["train"]
        runner = accelerate.EpochRunner(model, optimizer, None, data.images, data.labels, 16,
                                        forward=(lambda x, m=model: m(x)) if wrap else None)
        loss, correct = runner.run_epoch(torch.randperm(40, generator=torch.Generator().manual_seed(1)), 0)
        models.append((model, loss, correct))
    (a, loss_a, correct_a), (b, loss_b, correct_b) = models
    assert (loss_a, correct_a) == (loss_b, correct_b)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
