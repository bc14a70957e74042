"""Round 14 of the preflight, the plugins and the model registry (probes r14/p2 and r14/p7): the
memory of evaluation (128 images per pass whatever ``train.batch_size``), a warning for a family
of one's own without ``backward_bytes``, the worker processes named in a ``--jobs`` refusal, the
buffers of a checkpoint in the disk estimate, a plugin that exits while it is imported, and
families and options that no configuration can build."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

from eqpdenet.app import plugins, preflight
from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.errors import ConfigError, OutputFolderError
from eqpdenet.models import FCNN, MODELS
from eqpdenet.models.inputs import family_options


def _config(*assignments: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), list(assignments))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- p2 F1: evaluation's memory -------------------------------------------------------------------

SMALL_BATCH = ["model.kind='cnn'", "model.image_size=64", "train.batch_size=2",
               "train.device='cpu'"]


def test_evaluation_is_counted_at_128_images_whatever_the_training_batch():
    run = _config(*SMALL_BATCH)
    model = preflight._model(run)
    assert preflight.evaluation_batch(run) == 128
    assert preflight.evaluation_bytes(run, model) == int(0.8 * model.backward_bytes(128))
    # the training step at 2 images is far smaller: it alone would have passed
    assert preflight.peak_bytes(run, model) == int(2.25 * model.backward_bytes(2))
    assert 20 * preflight.peak_bytes(run, model) < preflight.evaluation_bytes(run, model)
    # fewer test (and validation) images than 128: passes of that many
    few = _config(*SMALL_BATCH, "data.test_subset=10", "data.validation=30")
    assert preflight.evaluation_batch(few) == 30
    assert preflight.evaluation_batch(run, tests=5) == 5
    assert preflight.evaluation_bytes(few, model) == int(0.8 * model.backward_bytes(30))


def test_a_run_whose_evaluation_does_not_fit_is_refused_naming_evaluation(monkeypatch):
    run = _config(*SMALL_BATCH)
    model = preflight._model(run)
    need = int(0.8 * model.backward_bytes(128)) + 16 * _params(model)
    monkeypatch.setattr(preflight, "available_memory", lambda device: need)
    preflight.preflight([run], None)
    monkeypatch.setattr(preflight, "available_memory", lambda device: need - 1)
    with pytest.raises(ConfigError) as caught:
        preflight.preflight([run], None)
    message = str(caught.value)
    assert message.startswith("invalid config: evaluating the trained model would need about ")
    assert "for the fields a forward pass of 128 images holds (evaluation passes take 128 " \
           "images at most, whatever train.batch_size)" in message
    # the remedy is the model's size, not the batch that plays no part in evaluation
    assert message.endswith(": make its fields smaller (model.cnn: channels, layers, pool_after)")
    assert "train.batch_size (" not in message


def test_a_large_training_batch_is_still_refused_as_training(monkeypatch):
    run = _config("model.kind='cnn'", "model.image_size=64", "train.batch_size=256",
                  "train.device='cpu'")
    model = preflight._model(run)
    step = preflight.peak_bytes(run, model)
    assert step > preflight.evaluation_bytes(run, model)
    monkeypatch.setattr(preflight, "available_memory",
                        lambda device: step + 16 * _params(model) - 1)
    with pytest.raises(ConfigError, match=r"^invalid config: training would need about .* "
                                          r"lower train.batch_size \(256\)"):
        preflight.preflight([run], None)


# -- p2 F3: a family of one's own without backward_bytes ------------------------------------------

class _Unestimated(FCNN):
    """A family of one's own: no ``backward_bytes``."""


def test_a_family_without_backward_bytes_is_warned_about_once(monkeypatch):
    monkeypatch.setitem(MODELS._items, "r14_unestimated", _Unestimated)
    monkeypatch.setattr(preflight, "_UNESTIMATED_WARNED", set(), raising=False)
    run = _config("model.kind='r14_unestimated'", "model.hidden=4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert preflight.peak_bytes(run) == 0
        assert preflight.peak_bytes(run) == 0
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == [
        f"the memory check cannot estimate the activations of _Unestimated ({__name__}): it has "
        f"no backward_bytes(batch_size) method, so only its parameters are counted and a run too "
        f"large for this machine is not refused before it starts (docs/architecture.md, \"A "
        f"family of one's own\")"]
    # eqpdenet's own fcnn keeps next to nothing and says nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preflight.peak_bytes(_config("model.kind='fcnn'", "model.hidden=4"))


# -- p2 F4: the worker processes in a --jobs refusal ----------------------------------------------

def test_a_jobs_refusal_names_every_part_largest_first(monkeypatch):
    run = _config("model.kind='fcnn'", "model.hidden=4", "train.device='cpu'")
    monkeypatch.setattr(preflight, "available_memory", lambda device: 2**30)
    with pytest.raises(ConfigError) as caught:
        preflight.preflight([run, run], None, jobs=2)
    params = _params(preflight._model(run))
    assert str(caught.value) == (
        f"invalid config: training would need about 1.17 GiB of memory (1.17 GiB for the 2 worker "
        f"processes; 2 runs at once, each {16 * params / 2**20:.3g} MiB for {params:,} parameters "
        f"with their gradients and optimiser state), more than the 1 GiB available on cpu: make "
        f"the model smaller (model.hidden = 4, or its model.fcnn options), or lower --jobs")


# -- p2 F5: a checkpoint's buffers ----------------------------------------------------------------

class _Buffered(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(10))
        self.register_buffer("basis", torch.zeros(1000, dtype=torch.float64))
        self.register_buffer("scratch", torch.zeros(5000), persistent=False)


def test_the_disk_estimate_counts_a_checkpoints_buffers(tmp_path, monkeypatch):
    assert preflight.saved_bytes(_Buffered()) == 10 * 4 + 1000 * 8  # not the scratch
    with torch.device("meta"):
        assert preflight.saved_bytes(_Buffered()) == 10 * 4 + 1000 * 8
    free = 4 * 10 + preflight.RECORD_BYTES * 2 + 4000  # the parameters fit, the buffers do not
    monkeypatch.setattr(preflight.shutil, "disk_usage",
                        lambda folder: type("Usage", (), {"free": free})())
    out = tmp_path / "out"
    preflight.check_output_space(out, runs=1, checkpoints=1, parameters=10, sweep=False)
    with pytest.raises(OutputFolderError) as caught:
        preflight.check_output_space(out, runs=1, checkpoints=1, parameters=10, sweep=False,
                                     state_bytes=8040)
    # two records and the checkpoint's 8,040 bytes of tensors: 139,112 bytes
    assert str(caught.value) == (f"not enough space for the results in {out}: about 0.133 MiB "
                                 f"to write, 0.129 MiB free")


def test_a_gcnn_checkpoint_is_estimated_with_its_sampled_bases():
    pytest.importorskip("e2cnn")
    model = preflight._model(_config("model.kind='gcnn'"))
    assert preflight.saved_bytes(model) > 3 * 4 * _params(model)


# -- p7 F1: a plugin that exits while it is imported ----------------------------------------------

def test_a_plugin_that_exits_at_import_is_one_config_error(tmp_path, monkeypatch):
    (tmp_path / "r14_exits.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "r14_parses.py").write_text(
        "import argparse\nargparse.ArgumentParser().parse_args(['--what'])\n")
    (tmp_path / "r14_interrupted.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    guard = ("sys.exit() or argparse at its top level): guard the script's code with 'if "
             "__name__ == \"__main__\":' so that importing it only registers")
    with pytest.raises(ConfigError) as caught:
        plugins.import_plugins("r14_exits")
    assert str(caught.value) == f"EQPDENET_PLUGINS: importing 'r14_exits' exited (SystemExit(0): {guard}"
    with pytest.raises(ConfigError) as caught:
        plugins.import_plugins("r14_parses")
    assert str(caught.value) == f"EQPDENET_PLUGINS: importing 'r14_parses' exited (SystemExit(2): {guard}"
    with pytest.raises(KeyboardInterrupt):  # the user's interrupt stays one
        plugins.import_plugins("r14_interrupted")


# -- p7 F4: families and options that no configuration can build ----------------------------------

class _NoDefaults(FCNN):
    def __init__(self, width, hidden=8):
        super().__init__(hidden=hidden)


def test_a_family_no_configuration_can_build_is_refused_when_registered(monkeypatch):
    registry = MODELS
    builtin = registry.names()
    monkeypatch.setattr(registry, "_items", dict(registry._items))  # registrations undone after
    with pytest.raises(ConfigError) as caught:
        registry.register("instance", FCNN(hidden=8))
    assert str(caught.value) == ("a model 'instance' must be a class or a factory that "
                                 "build_model calls with the options, got an instance of FCNN: "
                                 "register the class (FCNN) itself")
    with pytest.raises(ConfigError) as caught:
        registry.register("nodefaults", _NoDefaults)
    assert str(caught.value) == (
        "a model 'nodefaults' (_NoDefaults): its parameter 'width' has no default; build_model "
        "passes only the options of the configuration's model table that the constructor names "
        "(none to build_model(kind)), so give it a default (width=...)")

    def positional(hidden=8, /):
        return FCNN(hidden=hidden)

    with pytest.raises(ConfigError, match=r"^a model 'positional' \(.*positional\): its "
                                          r"parameter 'hidden' is positional-only; build_model "
                                          r"passes the options by name$"):
        registry.register("positional", positional)

    def factory(hidden=8, image_size=28, **_):
        return FCNN(hidden=hidden, image_size=image_size)

    assert registry.register("factory", factory) is factory
    assert registry.names() == tuple(sorted((*builtin, "factory")))


@dataclasses.dataclass
class _Options:
    width: int
    depth: int = 2
    name: str = "a"
    scale: float = 1.0


def test_family_options_names_a_missing_field_and_a_wrong_type():
    for value in (None, {"depth": 3}):
        with pytest.raises(ConfigError) as caught:
            family_options(value, _Options, "mynet")
        assert str(caught.value) == ("invalid config: mynet: _Options's field width has no "
                                     "default: give it (width = ...)")
    with pytest.raises(ConfigError) as caught:
        family_options({"width": "8"}, _Options, "mynet")
    assert str(caught.value) == "invalid config: mynet.width: must be an integer, got str '8'"
    with pytest.raises(ConfigError, match=r"^invalid config: mynet.scale: must be a number, "
                                          r"got bool True$"):
        family_options({"width": 8, "scale": True}, _Options, "mynet")
    with pytest.raises(ConfigError, match=r"^invalid config: mynet.name: must be a string, "
                                          r"got int 3$"):
        family_options({"width": 8, "name": 3}, _Options, "mynet")
    assert family_options({"width": 8, "scale": 2}, _Options, "mynet") == _Options(8, scale=2)
