"""``train.compile`` over several runs in one process (``run_sweep``, ``reproduce --jobs 1``).

Dynamo keeps compiled code on the code objects every FCNN shares (``FCNN.forward``,
``check_model_input``, the frames resumed after a graph break) and counted its
``recompile_limit`` over all runs: from about the fourth run on, every run trained eagerly while
its record said ``compile = true``, with one log line. And the frame resumed after
``check_values``' host read guarded on the input's minimum, so every batch of another minimum
compiled again. Inductor is replaced by Dynamo's ``eager`` backend here: what is tested is which
frames Dynamo compiles, not Inductor's code, and a compilation costs milliseconds, not seconds.
"""

import functools
import warnings

import pytest
import torch
import torch._dynamo
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch._dynamo.utils import counters

from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.training import Split, compiled_for_training, train_model
from eqpdenet.errors import InputError
from eqpdenet.models import FCNN


@pytest.fixture
def eager_backend(monkeypatch):
    """``torch.compile`` with Dynamo's ``eager`` backend, from a clean Dynamo state."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _data() -> dict:
    # 10 images in batches of 8: two sizes (8 and 2), so two compilations of each frame per run
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 6, 6, generator=generator)
    labels = torch.arange(12) % 10
    return {"train": Split(images[:10], labels[:10]), "test": Split(images[10:], labels[10:])}


def _run(hidden: int) -> tuple[list[dict], int, list[str]]:
    """One compiled run: its history, the graphs Dynamo compiled in it, its compile warnings."""
    config = apply_overrides(ExperimentConfig(), [
        "model.kind='fcnn'", f"model.hidden={hidden}", "train.epochs=1", "train.batch_size=8",
        "train.compile=true", "data.validation=0"])
    graphs = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, history = train_model(config, _data(), progress=False)
    return (history, counters["stats"]["unique_graphs"] - graphs,
            [str(w.message) for w in caught if "train.compile" in str(w.message)])


def test_every_run_of_a_process_compiles_past_the_recompile_limit(eager_backend):
    # A limit of 4 entries per code object: two runs of two sizes filled it, and the third
    # trained eagerly (no graph compiled, no warning). Each run now has a limit of its own.
    with torch._dynamo.config.patch(recompile_limit=4):
        runs = [_run(hidden) for hidden in (4, 8, 12)]
    for history, graphs, warned in runs:
        assert graphs > 0 and not warned and "compile_fallbacks" not in history[0]
    # and what a run compiled goes with it: nothing stays on FCNN.forward for the next run
    assert _debug_get_cache_entry_list(FCNN.forward.__code__) == []


def test_a_frame_left_to_eager_is_warned_about_and_recorded(eager_backend):
    # A limit of 1: the last, shorter batch cannot compile again; that was one dynamo log line
    with torch._dynamo.config.patch(recompile_limit=1):
        history, graphs, warned = _run(4)
    assert graphs > 0 and len(warned) == 1
    assert "fell back to eager PyTorch in epoch 1: Dynamo recompile limit exceeded " \
        "(torch._dynamo.config.recompile_limit = 1)" in warned[0]
    [recorded] = history[0]["compile_fallbacks"]
    assert recorded.endswith(" frame(s): Dynamo recompile limit exceeded "
                             "(torch._dynamo.config.recompile_limit = 1)")


def test_the_run_leaves_a_users_compiled_function_alone(eager_backend):
    def own(x):
        return x.sin() * 2

    compiled = torch.compile(own)
    compiled(torch.ones(3))
    entries = _debug_get_cache_entry_list(own.__code__)
    _run(4)
    assert len(entries) == 1 and _debug_get_cache_entry_list(own.__code__) == entries
    frames = counters["frames"]["ok"]
    compiled(torch.ones(3))  # still compiled: no frame to compile again
    assert counters["frames"]["ok"] == frames


def test_batches_of_other_values_compile_nothing_more_and_nan_is_still_refused(eager_backend):
    torch.manual_seed(0)
    step = compiled_for_training(FCNN(hidden=4, image_size=6).train())
    images = torch.rand(4, 1, 6, 6)
    for shift in (0.0, 0.25):  # the first batches compile (the checks' reader is made once)
        step(images + shift).sum().backward()
    frames = counters["frames"]["total"]
    for shift in (0.5, 0.75, 1.0):  # each with another minimum and maximum
        step(images + shift).sum().backward()
    assert counters["frames"]["total"] == frames  # was one compilation per batch
    with pytest.raises(InputError, match=r"images contains non-finite values \(1 NaN, 0 inf"):
        step(torch.where(images == images.max(), torch.nan, images))
    assert step.fallbacks() == []
