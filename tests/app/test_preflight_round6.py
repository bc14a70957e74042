"""Round 6 of the memory preflight (probe p4): the estimate follows the PDE layer's real
dispatch, the CNN baselines estimate their activations, the measured peak factors, the data set's
own memory, and the advice of the out-of-memory messages; and two messages of ``reproduce``."""

from __future__ import annotations

import errno
import multiprocessing
import os
import re
import sys
import types
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from eqpdenet.app import preflight, sweeps, training
from eqpdenet.app.cli import describe_error
from eqpdenet.app.config import DataConfig, ExperimentConfig, ReproduceConfig, apply_overrides
from eqpdenet.app.workers import worker_pool
from eqpdenet.data.datasets import REGISTERED_SHAPES, dataset_shape
from eqpdenet.errors import ConfigError, OutputFolderError
from eqpdenet.pde.layer import PDELayer


@pytest.fixture(autouse=True)
def _backend_as_configured(monkeypatch):
    monkeypatch.delenv("EQPDENET_BACKEND", raising=False)  # the layers' own choice


def _config(*assignments: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), list(assignments))


def _write_npz(path: Path, size=16, train=300, test=100) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (train, size, size), dtype=np.uint8),
             y_train=np.arange(train) % 10,
             x_test=rng.integers(0, 256, (test, size, size), dtype=np.uint8),
             y_test=np.arange(test) % 10)
    return path


# ----------------------------------------------------------- finding 1: the layer's dispatch

def _fused_kernel_or_skip() -> None:
    from eqpdenet.kernels import cpu

    if not cpu.is_available():
        pytest.skip(f"the fused CPU kernel cannot be built here: {cpu.build_error()}")


PAPER = ["model.kind='eqpdenet'", "model.hidden=8", "model.image_size=64", "data.train_subset=128",
         "train.batch_size=128", "train.device='cpu'"]


@pytest.mark.parametrize("stencil", [["model.layer.stencil='isotropic5'"],
                                     ["model.layer.stencil='gaussian'", "model.layer.sigma=1.0"]])
def test_a_stencil_the_fused_kernel_does_not_take_is_estimated_on_the_reference(stencil):
    """The layer falls back to the reference for these stencils (16 times the memory); the
    estimate assumed the fused kernel and let a 28 GiB run through as 1.8 GiB."""
    _fused_kernel_or_skip()
    fused = preflight.training_bytes(_config(*PAPER))
    reference = preflight.training_bytes(_config(*PAPER, "model.layer.backend='reference'"))
    assert reference == 16 * fused  # STATE_FACTORS: 40 against 2.5 states per step
    assert preflight.training_bytes(_config(*PAPER, *stencil)) == reference
    layer = next(m for m in preflight._model(_config(*PAPER, *stencil)).modules()
                 if isinstance(m, PDELayer))
    # the layer's own rule (kernels.unsupported_reason), on a copy with real stencils
    assert "3x3 stencils" in preflight.pde_layer_reason(layer, torch.device("cpu"), 1, 64)


def test_a_stencil_of_the_kernels_form_stays_on_the_fused_estimate(monkeypatch):
    _fused_kernel_or_skip()
    layer = next(m for m in preflight._model(_config(*PAPER, "model.layer.stencil='isotropic'"))
                 .modules() if isinstance(m, PDELayer))
    assert preflight.pde_layer_reason(layer, torch.device("cpu"), 1, 64) is None
    fused = preflight.training_bytes(_config(*PAPER))
    assert preflight.training_bytes(_config(*PAPER, "model.layer.stencil='isotropic'")) == fused
    monkeypatch.setenv("EQPDENET_BACKEND", "reference")  # the override the layer obeys
    assert preflight.training_bytes(_config(*PAPER)) == 16 * fused


def test_a_kernel_that_cannot_run_is_estimated_on_the_reference(monkeypatch):
    """The dispatch's rule includes the kernel's availability (no compiler: the reference)."""
    _fused_kernel_or_skip()
    from eqpdenet.kernels import op

    fused = preflight.training_bytes(_config(*PAPER))
    monkeypatch.setitem(op.IMPLEMENTATIONS._items, "cpu", lambda device: "no compiler")
    assert preflight.training_bytes(_config(*PAPER)) == 16 * fused


# ------------------------------------------------------ finding 2: the CNN baselines' estimate


def saved_bytes(model: torch.nn.Module, images: torch.Tensor) -> int:
    """What autograd saves in one training-mode forward pass, once per storage; the parameters
    and buffers aside (the preflight counts them apart, PARAMETER_BYTES)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.train()(images)
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    return sum(size for pointer, size in storages.items() if pointer not in own)


CNNS = [("cnn", {}, 28, 1), ("cnn", {"pool_after": 0}, 28, 1),
        ("cnn", {"readout": "mean", "layers": 3, "pool_after": 3}, 29, 3),
        ("cnn", {"layers": 2, "pool_after": 1, "channels": 5}, 9, 1),
        ("gcnn", {}, 28, 1), ("gcnn", {"pool": "antialiased"}, 28, 1),
        ("gcnn", {"group_order": 4, "center": True}, 33, 1),
        ("gcnn", {"pool": "antialiased", "pool_sigma": 2.0, "readout": "mean"}, 15, 1),
        ("gcnn", {"channels": [3, 5], "kernels": [3, 5], "pool_after": [2]}, 16, 3)]


@pytest.mark.parametrize("case", CNNS, ids=str)
def test_cnn_estimates_bound_what_autograd_keeps(case):
    """Within 1 to 1.2 times what autograd saves (the count is exact up to a few hundred bytes of
    the readout's maxima), for max and anti-aliased pooling, odd sizes, C4, channels."""
    kind, options, size, channels = case
    if kind == "gcnn":
        pytest.importorskip("e2cnn")
        from eqpdenet.models.gcnn import GCNN as Model
        from eqpdenet.models.gcnn import GCNNConfig as Options
    else:
        from eqpdenet.models.cnn import CNN as Model
        from eqpdenet.models.cnn import CNNConfig as Options
    torch.manual_seed(0)
    model = Model(Options(**options), image_size=size, in_channels=channels)
    for batch in (2, 5):
        measured = saved_bytes(model, torch.rand(batch, channels, size, size))
        assert measured <= model.backward_bytes(batch) <= 1.2 * measured


@pytest.mark.parametrize("kind", ["cnn", "gcnn"])
def test_the_cnn_baselines_are_estimated_at_their_batch_and_image_size(kind):
    """They were estimated at their parameters alone (0.3 MiB), whatever the batch or size."""
    if kind == "gcnn":
        pytest.importorskip("e2cnn")
    small = _config(f"model.kind='{kind}'", "train.batch_size=64")
    model = preflight._model(small)
    assert preflight.training_bytes(small, model) == model.backward_bytes(64) > 2**24
    assert preflight.peak_bytes(small, model) == int(2.25 * model.backward_bytes(64))
    large = _config(f"model.kind='{kind}'", "train.batch_size=128", "model.image_size=128")
    assert preflight.training_bytes(large) > 40 * preflight.training_bytes(small)


# ----------------------------------------------------------- finding 4: the measured peaks


def test_the_estimate_covers_the_peaks_measured_over_what_is_kept(monkeypatch):
    """The peak of a training step was 1.1 to 2.1 times what the deep families' estimates count
    (autograd's saves), 1.04 to 1.22 times the paper layer's Euler states: the check compares
    those peaks, with the parameters, to the memory available."""
    lifted = _config("model.kind='lifted_pde'", "train.batch_size=64")
    model = preflight._model(lifted)
    kept = preflight.training_bytes(lifted, model)
    assert kept == model.backward_bytes(64)
    assert preflight.peak_bytes(lifted, model) == int(2.25 * kept)
    _fused_kernel_or_skip()
    paper = _config("model.hidden=8", "train.batch_size=64")
    # 64 images x 4 PDEs x 10 steps x 784 pixels x 4 bytes x 2.5 states (fused) x 1.25
    assert preflight.peak_bytes(paper) == int(1.25 * 64 * 4 * 10 * 784 * 4 * 2.5)
    params = sum(p.numel() for p in model.parameters())
    need = int(2.25 * kept) + 16 * params
    monkeypatch.setattr(preflight, "available_memory", lambda device: need)
    preflight.preflight([lifted], None)
    monkeypatch.setattr(preflight, "available_memory", lambda device: need - 1)
    with pytest.raises(ConfigError, match=rf"training would need about {need / 2**20:.3g} MiB "
                                          rf"of memory \({2.25 * kept / 2**20:.3g} MiB for what "
                                          rf"the backward pass keeps of the fields, "):
        preflight.preflight([lifted], None)


# ------------------------------------------------------------ finding 5: the data's memory


def test_the_data_set_is_estimated_from_its_headers(tmp_path):
    data = _write_npz(tmp_path / "s32.npz", size=32, train=300, test=100)
    shape = dataset_shape(str(data))
    run = _config(f"data.dataset='{data}'", "data.validation=50")
    pixels = 32 * 32
    # the float32 set, and the float64 copy of the 250 training images standardize='auto' takes
    # its mean and std from on data that is not MNIST's
    assert preflight.data_bytes(run, shape) == (400 * pixels * 4, 250 * pixels * 8)
    fixed = _config(f"data.dataset='{data}'", "model.standardize='fixed'")
    assert preflight.data_bytes(fixed, shape) == (400 * pixels * 4, 0)
    rotated = _config(f"data.dataset='{data}'", "model.standardize='fixed'", "data.rotated=true")
    assert preflight.data_bytes(rotated, shape) == (400 * pixels * 4, 400 * pixels * 4)
    mnist = _config("data.dataset='mnist'")  # standardised by the configured statistics
    assert preflight.data_bytes(mnist, REGISTERED_SHAPES["mnist"]) == (70000 * 784 * 4, 0)
    assert preflight.data_bytes(run, None) == (0, 0)


def test_a_data_set_that_does_not_fit_is_refused_before_it_is_loaded(tmp_path, monkeypatch):
    data = _write_npz(tmp_path / "s64.npz", size=64, train=300, test=100)
    run = _config(f"data.dataset='{data}'", "model.kind='eqpdenet'", "model.hidden=4",
                  "train.batch_size=100", "model.standardize='fixed'")
    resized = preflight.at_data_size(run, dataset_shape(str(data)))
    model = preflight._model(resized)
    step = preflight.peak_bytes(resized, model, images=300) \
        + 16 * sum(p.numel() for p in model.parameters())
    kept = 400 * 64 * 64 * 4  # every image in float32
    monkeypatch.setattr(preflight, "available_memory", lambda device: kept + step)
    preflight.preflight([run], None, at_data=True)
    monkeypatch.setattr(preflight, "available_memory", lambda device: kept + step - 1)
    with pytest.raises(ConfigError, match=r"for the whole data set in float32, whatever "
                                          r"data.train_subset"):
        preflight.preflight([run], None, at_data=True)
    # once loaded (training's own check, ``images`` given) the data are in what is available
    preflight.preflight([run], None, images=300)
    # two workers: each loads its own copy
    monkeypatch.setattr(preflight, "available_memory",
                        lambda device: 2 * (kept + step) + 2 * preflight.WORKER_BYTES - 1)
    with pytest.raises(ConfigError, match=r"2 runs at once, each .* lower --jobs$"):
        preflight.preflight([run, run], None, jobs=2, at_data=True)
    # the float64 copy for the standardisation is gone before training: the larger counts
    auto = _config(f"data.dataset='{data}'", "model.kind='eqpdenet'", "model.hidden=4",
                   "train.batch_size=100")
    passing = 300 * 64 * 64 * 8
    monkeypatch.setattr(preflight, "available_memory",
                        lambda device: kept + max(passing, step))
    preflight.preflight([auto], None, at_data=True)
    monkeypatch.setattr(preflight, "available_memory",
                        lambda device: kept + max(passing, step) - 1)
    with pytest.raises(ConfigError):
        preflight.preflight([auto], None, at_data=True)


def test_the_float64_copy_is_named_with_its_remedy(tmp_path, monkeypatch):
    data = _write_npz(tmp_path / "s64.npz", size=64, train=3000, test=10)
    run = _config(f"data.dataset='{data}'", "model.kind='fcnn'", "model.hidden=4",
                  "train.batch_size=10")
    monkeypatch.setattr(preflight, "available_memory", lambda device: 60 * 2**20)
    with pytest.raises(ConfigError, match=r"more while it is loaded \(the float64 copy .*set "
                                          r"model.standardize = 'fixed'"):
        preflight.preflight([run], None, at_data=True)


class _Float64Copies(TorchDispatchMode):
    def __init__(self, least: int):
        super().__init__()
        self.least, self.found = least, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64 \
                and out.numel() >= self.least:
            self.found.append(str(func))
        return out


def test_loading_mnist_makes_no_float64_copy_and_keeps_its_statistics():
    """prepare_data made a float64 copy of the training images (twice the float32 set) for
    statistics that training never reads: they are computed when read, the same values."""
    data_dir = os.environ.get("EQPDENET_DATA")
    if not data_dir:
        pytest.skip("EQPDENET_DATA is not set")
    config = DataConfig(dataset="mnist", train_subset=20000, test_subset=100)
    recorder = _Float64Copies(least=20000 * 784)
    with recorder:
        data = training.prepare_data(config, data_dir)
    assert recorder.found == []
    pixels = data.train.images.double()
    assert (data.pixel_mean, data.pixel_std) == (float(pixels.mean()), float(pixels.std()))
    # the recorded standardisation (model.standardize = 'train'), as before
    run = _config("data.dataset='mnist'", "model.standardize='train'")
    resolved = training.resolve_for_data(run, data)
    assert (resolved.model.input_mean, resolved.model.input_std) == (data.pixel_mean,
                                                                     data.pixel_std)
    whole = training.prepare_data(DataConfig(dataset="mnist", validation=0), data_dir)
    assert whole.pixel_mean == 0.13066047740241013  # MNIST's 60,000 training digits


def test_pixel_statistics_given_are_kept():
    x, y = torch.rand(6, 1, 4, 4), torch.arange(6) % 2
    split = training.Split(x, y)
    given = training.Data(split, split, split, "s", 2, 0.5, 0.25)
    assert (given.pixel_mean, given.pixel_std) == (0.5, 0.25)
    computed = training.Data(split, split, split)
    assert computed.pixel_mean == float(x.double().mean())


# ------------------------------------------------------------- finding 6: messages


def test_the_out_of_memory_advice_names_euler_steps_for_pde_models_only():
    text, status = describe_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                               "tried to allocate 616562688 bytes."))
    assert status == 2 and text.startswith("out of memory (tried to allocate 588 MiB); lower "
                                           "train.batch_size, the model's width or depth (of a "
                                           "PDE model, its Euler steps")
    assert "the number of Euler steps" not in text


@pytest.mark.parametrize("kind", ["cnn", "gcnn"])
def test_a_cnn_baseline_too_large_is_refused_with_its_own_options(kind, monkeypatch):
    if kind == "gcnn":
        pytest.importorskip("e2cnn")
    run = _config(f"model.kind='{kind}'", "model.image_size=128", "train.batch_size=128")
    monkeypatch.setattr(preflight, "available_memory", lambda device: 2**30)
    with pytest.raises(ConfigError) as caught:
        preflight.preflight([run], None)
    text = str(caught.value)
    assert re.search(r"for what the backward pass keeps of the activations", text), text
    assert f"make its fields smaller (model.{kind}: channels" in text
    assert "Euler" not in text and "model.layer" not in text


def test_a_write_beyond_the_file_size_limit_names_ulimit(tmp_path, monkeypatch):
    """reproduce's results.jsonl said "File too large: path", without the limit (train's
    model.pt names it)."""
    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})

    def too_large(out_dir, key, record):
        path = Path(out_dir) / "runs" / f"{key}.json"
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))

    monkeypatch.setattr(sweeps, "save_run", too_large)
    run = _config("model.kind='fcnn'", "model.hidden=4")

    def runner(config, data, **kwargs):
        return {"status": "ok", "accuracy": {"test": 50.0}, "train_seconds": 0.0,
                "eval_seconds": 0.0}

    with pytest.raises(OutputFolderError, match=r"cannot write .*runs/fcnn-h4-seed0.json: File "
                                                r"too large \(beyond this process's file size "
                                                r"limit: ulimit -f\)"):
        sweeps.run_sweep("test", {"fcnn-h4-seed0": run}, tmp_path / "sweep",
                         base_fingerprint="fp", runner=runner, progress=False,
                         echo=lambda line: None)


def test_reproduce_in_a_starting_worker_names_the_main_guard(tmp_path, monkeypatch):
    """A script calling reproduce(jobs=2) without a ``__main__`` guard: each worker ran it again
    and failed on the parent's lock with a raw traceback."""
    def went_on(*args, **kwargs):
        raise AssertionError("reproduce went on in a starting worker")

    monkeypatch.setattr(sweeps, "check_claim", went_on)
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(RuntimeError, match=r'reproduce was called in a worker process while it '
                                           r'started: .*`if __name__ == "__main__":`'):
        sweeps.reproduce(ReproduceConfig(), tmp_path / "out", jobs=2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", [True, False])
def test_a_broken_pool_says_how_a_script_must_start_workers(script, tmp_path, monkeypatch):
    """The advice is for a script (a ``__main__`` with a file, which spawn runs again in each
    worker); an interactive session or a ``python -c`` (pytest-xdist's workers) has no script to
    guard, so it gets none."""
    main = types.ModuleType("__main__")
    if script:
        main.__file__ = str(tmp_path / "script.py")
        Path(main.__file__).write_text("SCRIPT = True\n")
    monkeypatch.setitem(sys.modules, "__main__", main)
    with pytest.raises(BrokenProcessPool) as caught, worker_pool(1) as pool:
        pool.submit(os._exit, 1).result()
    advised = any('if __name__ == "__main__":' in note
                  for note in getattr(caught.value, "__notes__", []))
    assert advised is script
