"""The GPU training path (``app/accelerate.py``): the same training as the loop of train_model.

On the CPU the runner (without graphs) must reproduce the loop bit for bit: the same batches,
updates, statistics and errors. On a GPU, the step replayed as a CUDA graph must train as the
same step run without the graph. The CUDA cases skip without a GPU.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from eqpdenet.app import accelerate
from eqpdenet.app.config import ExperimentConfig, build_model
from eqpdenet.app.optim import LR_SCHEDULES, OPTIMIZERS
from eqpdenet.app.training import Split, train_model
from eqpdenet.errors import NonFiniteStateError


def tiny_data(n: int = 150, seed: int = 0) -> dict[str, Split]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    empty = Split(images[:0], labels[:0])
    return {"train": Split(images, labels), "validation": empty, "test": empty}


def tiny_config(kind: str, device: str = "cpu", **layer) -> ExperimentConfig:
    config = ExperimentConfig()
    config.model.kind, config.model.hidden = kind, 8
    config.model.layer.T = layer.pop("T", 0.2)
    for key, value in layer.items():
        setattr(config.model.layer, key, value)
    # 150 digits in batches of 64: two full batches and a partial one per epoch
    config.train.epochs, config.train.batch_size, config.train.device = 2, 64, device
    config.train.lr_schedule, config.train.grad_clip = "cosine", 1.0
    return config


def without_seconds(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


@pytest.mark.parametrize("kind", ["fcnn", "eqpdenet"])
def test_runner_reproduces_the_cpu_loop_exactly(kind, monkeypatch):
    config, data = tiny_config(kind), tiny_data()
    loop_model, loop_history = train_model(config, data, progress=False)
    monkeypatch.setattr(accelerate, "applies_to", lambda device: True)
    runner_model, runner_history = train_model(config, data, progress=False)
    assert without_seconds(runner_history) == without_seconds(loop_history)
    for (name, a), b in zip(runner_model.state_dict().items(),
                            loop_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_runner_raises_the_first_non_finite_state_as_the_loop(monkeypatch):
    # F = 1e4 Laplacian with dt = 0.1: the explicit scheme grows by ~8000 per step
    config = tiny_config("eqpdenet", T=1.0, init="heat", init_scale=1e4)
    errors = []
    for use_runner in (False, True):
        monkeypatch.setattr(accelerate, "applies_to", lambda device, use=use_runner: use)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*explicit Euler bound")
            with pytest.raises(NonFiniteStateError) as info:
                train_model(config, tiny_data(), progress=False)
        errors.append((info.value.pde, info.value.step))
    assert errors[0] == errors[1] and errors[0][0] == "pde0:se2"


def _runner(kind: str, device: str, **options):
    torch.manual_seed(0)
    model = build_model(tiny_config(kind).model).to(device)
    optimizer = OPTIMIZERS.get("adam")(model.parameters(), 1e-3, 0.0)
    scheduler = LR_SCHEDULES.get("cosine")(optimizer, 6)
    data = tiny_data()["train"]
    return model, accelerate.EpochRunner(model, optimizer, scheduler, data.images, data.labels,
                                         64, grad_clip=1.0, **options)


def test_a_non_finite_loss_is_reported_after_the_epoch():
    _, runner = _runner("fcnn", "cpu", loss_fn=lambda logits, y: F.cross_entropy(logits, y)
                        * float("nan"))
    with pytest.raises(FloatingPointError, match="^non-finite training loss at epoch 3$"):
        runner.run_epoch(torch.randperm(150, generator=torch.Generator().manual_seed(0)), 2)


def test_a_non_finite_loss_says_the_remedy_train_model_gives():
    # round 14: the CPU loop's message named weight decay among the remedies, this one nothing
    _, runner = _runner("fcnn", "cpu", loss_fn=lambda logits, y: F.cross_entropy(logits, y)
                        * float("nan"), remedy="training diverged (a smaller train.lr ...)")
    with pytest.raises(FloatingPointError, match=r"^non-finite training loss at epoch 1; "
                                                 r"training diverged \(a smaller train\.lr "
                                                 r"\.\.\.\)$"):
        runner.run_epoch(torch.randperm(150, generator=torch.Generator().manual_seed(0)), 0)


@pytest.mark.parametrize("kind", ["fcnn", "eqpdenet"])
def test_graph_replays_train_as_the_step_without_graph(kind, device):
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    results = []
    for graphs in (True, False):
        model, runner = _runner(kind, "cuda", graphs=graphs)
        generator = torch.Generator().manual_seed(1)
        stats = [runner.run_epoch(torch.randperm(150, generator=generator), epoch)
                 for epoch in range(3)]
        assert (runner.graph is not None) == graphs
        results.append((stats, copy.deepcopy(model.state_dict())))
    (graph_stats, graph_state), (eager_stats, eager_state) = results
    for (loss_a, correct_a), (loss_b, correct_b) in zip(graph_stats, eager_stats, strict=True):
        assert loss_a == pytest.approx(loss_b, rel=1e-5) and correct_a == correct_b
    for name, value in graph_state.items():
        torch.testing.assert_close(value, eager_state[name], rtol=1e-5, atol=1e-6, msg=name)


def test_train_model_on_the_gpu_uses_the_graph_and_matches_the_cpu(device):
    if device.type != "cuda":
        pytest.skip("needs a GPU")
    data = tiny_data()  # (the reference on the CPU: no C++ build on the GPU machine)
    cpu_model, cpu_history = train_model(tiny_config("eqpdenet", backend="reference"), data,
                                         progress=False)
    gpu_model, gpu_history = train_model(tiny_config("eqpdenet", "cuda"), data, progress=False)
    for a, b in zip(without_seconds(gpu_history), without_seconds(cpu_history), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for name, value in gpu_model.state_dict().items():
        torch.testing.assert_close(value.cpu(), cpu_model.state_dict()[name], rtol=1e-3,
                                   atol=1e-5, msg=name)
