"""Round 18 (an outside probe of the plugin path, findings F1 and F3).

F1: an exception of the user's code anywhere but a plugin family's first training batch (a
later batch, evaluation mode, ``evaluate``, a plugin's invariant set run by a built-in family)
was "unexpected ... (a bug in eqpdenet?)", exit 1. Now every forward pass that eqpdenet runs
(training batches, evaluation) names the family or the set and its module, exit 2; what
eqpdenet's own code raises, and every error of a model given to the Python API that runs no
plugin code, passes unchanged. The innermost traceback frame that is eqpdenet's or the
plugin's decides (``registry.own_code_frame``).

F3: a family returning too few logits, or ``(B, K, 1)``, is named by its kind (and, for a
wrong shape, its class and module); too few logits were reported as a label outside the
model's classes, naming no model.

Everything is registered in this process for the test only (``helpers.registered``)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from data_helpers import tiny_config
from eqpdenet.analysis.predictions import logits_by_image
from eqpdenet.app import cli
from eqpdenet.app.config import ExperimentConfig
from eqpdenet.app.training import prepare_data, train_model
from eqpdenet.data.augment import relative_change
from eqpdenet.data.datasets import DATASETS
from eqpdenet.errors import InputError
from eqpdenet.models import MODELS, build_model
from eqpdenet.pde.invariants import INVARIANT_SETS, Invariant, InvariantSet
from helpers import banded_loader, registered

SIZE, CLASSES = 8, 3

# what training says of the families of one's own here, beside the point of these tests
pytestmark = [pytest.mark.filterwarnings("ignore:the memory check cannot estimate:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:.* has no effect on model.kind:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:.*declares no kernel:RuntimeWarning")]

_toy = banded_loader("r18toy", SIZE, CLASSES)  # 60 + 30 images of 8x8, 3 classes


class Linear(nn.Module):
    """A family of one's own: one linear layer on the flattened image."""

    def __init__(self, image_size: int = 28, in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(in_channels * image_size ** 2, classes)

    def forward(self, images):
        return self.linear(images.flatten(1))


class Later(Linear):
    """Fails in evaluation mode only (training passes)."""

    def forward(self, images):
        if not self.training:
            raise RuntimeError("eval mode broke")
        return super().forward(images)


class SecondBatch(Linear):
    """Fails on its second call: a later training batch."""

    def forward(self, images):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            raise KeyError("batch two")
        return super().forward(images)


class TorchFails(Linear):
    """In evaluation mode feeds its layer the wrong size: torch raises, in torch's frames."""

    def forward(self, images):
        return self.linear(images.flatten(1) if self.training else images[:, :, :4].flatten(1))


class CallsEqpdenetWrongly(Linear):
    """In evaluation mode calls eqpdenet's ``relative_change`` with rows that do not match:
    the error is raised in eqpdenet's frame, and is said as eqpdenet's."""

    def forward(self, images):
        logits = super().forward(images)
        if not self.training:
            relative_change(logits[:2], logits[:3])
        return logits


class Fewer(Linear):
    def forward(self, images):
        return super().forward(images)[:, :-1]


class ThreeD(Linear):
    def forward(self, images):
        return super().forward(images)[:, :, None]


def _raising(d, ratio):
    if d.u.shape[-1] > 1:  # passes the registration's check on the 1x1 zero jet
        raise ZeroDivisionError("inv broke on big maps")
    return d.u


_INVRAISE = InvariantSet("r18invraise", "test", 1, [Invariant("u", "u", "u", lambda d, r: d.u),
                                                    Invariant("x", "x", "x", _raising)])


def _config(kind: str, *overrides: str) -> ExperimentConfig:
    return tiny_config(f"model.kind='{kind}'", "data.dataset='r18toy'", "data.validation=0",
                       *overrides)


def _images(count: int = 4) -> torch.Tensor:
    return torch.rand(count, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- F1: evaluation


def test_a_plugin_family_failing_in_evaluation_is_named_with_its_module():
    with registered(MODELS, "r18later", Later):
        model = build_model("r18later", image_size=SIZE, in_channels=1, classes=CLASSES)
        with pytest.raises(InputError) as raised:
            logits_by_image(model, _images())
    assert str(raised.value) == (f"model 'r18later' (Later, module {__name__}) failed in "
                                 f"evaluation mode, on images of shape (4, 1, 8, 8): "
                                 f"RuntimeError: eval mode broke")
    assert type(raised.value.__cause__) is RuntimeError


def test_an_error_raised_inside_torch_for_the_familys_code_is_the_familys():
    with registered(MODELS, "r18torch", TorchFails):
        model = build_model("r18torch", image_size=SIZE, in_channels=1, classes=CLASSES)
        with pytest.raises(InputError) as raised:
            logits_by_image(model, _images())
    assert str(raised.value).startswith(f"model 'r18torch' (TorchFails, module {__name__}) "
                                        f"failed in evaluation mode, on images of shape "
                                        f"(4, 1, 8, 8): RuntimeError: mat1 and mat2 shapes")


def test_an_error_raised_in_eqpdenets_code_stays_eqpdenets():
    """The plugin called eqpdenet, and eqpdenet's frame raised: not blamed on the plugin."""
    from eqpdenet.analysis.predictions import own_code_culprit

    with registered(MODELS, "r18wrongly", CallsEqpdenetWrongly):
        model = build_model("r18wrongly", image_size=SIZE, in_channels=1, classes=CLASSES)
        with pytest.raises(RuntimeError) as raised:
            logits_by_image(model, _images())
    assert type(raised.value) is RuntimeError
    assert str(raised.value).startswith("The size of tensor a (3) must match")
    assert own_code_culprit(raised.value, model) is None


def test_a_model_given_to_the_python_api_raises_as_it_did():
    """Not registered, running no plugin's invariant set: its own error, unchanged."""
    model = Later(SIZE, 1, CLASSES)
    with pytest.raises(RuntimeError, match="^eval mode broke$") as raised:
        logits_by_image(model, _images())
    assert type(raised.value) is RuntimeError


class _HoldsASet(nn.Module):
    """A model of this module holding an invariant set it never calls; its forward raises."""

    def __init__(self, invariant_set: InvariantSet):
        super().__init__()
        self.invariants = invariant_set
        self.linear = nn.Linear(SIZE * SIZE, CLASSES)

    def forward(self, images):
        raise ValueError("the model's own bug, not the set's")


_SET_OF_THIS_MODULE = InvariantSet("r18held", "rotations", 1,
                                   [Invariant("u", "u", "u", lambda d, r: d.u)])


@pytest.mark.parametrize("register", [False, True])
def test_a_set_held_but_not_on_the_way_to_the_error_is_not_blamed(register):
    """Round 18 review: a set whose module raised (by module, not by its functions) was blamed,
    and a Python-API model's own ValueError became an InputError naming a set never called."""
    model = _HoldsASet(_SET_OF_THIS_MODULE)
    if register:
        with registered(INVARIANT_SETS, "r18held", _SET_OF_THIS_MODULE), \
                pytest.raises(ValueError, match="^the model's own bug, not the set's$") as raised:
            logits_by_image(model, _images())
    else:
        with pytest.raises(ValueError, match="^the model's own bug, not the set's$") as raised:
            logits_by_image(model, _images())
    assert type(raised.value) is ValueError


def test_an_unregistered_set_of_a_python_api_model_raises_as_it_did():
    """A set the user's model builds for itself is the model's code, not a plugin's."""
    failing = InvariantSet("r18own", "rotations", 1, [Invariant("x", "x", "x", _raising)])
    model = build_model("eqpdenet", image_size=SIZE, in_channels=1, classes=CLASSES,
                        layer={"invariants": [failing, failing]})
    with pytest.raises(ZeroDivisionError, match="^inv broke on big maps$"):
        logits_by_image(model, _images())


def test_the_deciding_frame_is_the_innermost_of_eqpdenet_or_the_plugin():
    from eqpdenet.registry import own_code_frame

    def plugin():
        raise ValueError("x")

    try:
        plugin()
    except ValueError as error:
        assert own_code_frame(error, [__name__]).f_code is plugin.__code__
        assert own_code_frame(error, ["another_module"]) is None
        assert own_code_frame(error, ["eqpdenet"]) is None  # eqpdenet is never the plugin's


def test_a_plugin_invariant_set_run_by_a_built_in_family_is_named_in_evaluation():
    with registered(INVARIANT_SETS, "r18invraise", _INVRAISE):
        model = build_model("eqpdenet", image_size=SIZE, in_channels=1, classes=CLASSES,
                            layer={"invariants": ["r18invraise", "r18invraise"]})
        with pytest.raises(InputError) as raised:
            logits_by_image(model, _images())
    assert str(raised.value) == (f"invariant set 'r18invraise' (its invariant 'x': _raising, "
                                 f"module {__name__}) failed in evaluation mode, on images of "
                                 f"shape (4, 1, 8, 8): ZeroDivisionError: inv broke on big maps")


class _CallableRaising:
    """An invariant as a callable object (no __code__ of its own)."""

    def __call__(self, d, ratio):
        return _raising(d, ratio)


class _InheritsCall(_CallableRaising):
    pass


def _scaled_raising(d, ratio, k):
    if d.u.shape[-1] > 1:
        raise ZeroDivisionError("inv broke on big maps")
    return k * d.u


@pytest.mark.parametrize(("function", "shown"), [
    (_CallableRaising(), "_CallableRaising"),
    (_InheritsCall(), "_InheritsCall"),
    (functools.partial(_scaled_raising, k=2.0), "partial"),
])
def test_a_plugin_sets_callable_object_or_partial_is_named(function, shown):
    """Round 18 review: only functions with a __code__ were looked for on the traceback, and
    a set whose invariant is a callable object or a partial was not named ('a bug in
    eqpdenet?', as before round 18)."""
    invariant_set = InvariantSet("r18callable", "test", 1,
                                 [Invariant("u", "u", "u", lambda d, r: d.u),
                                  Invariant("x", "x", "x", function)])
    with registered(INVARIANT_SETS, "r18callable", invariant_set):
        model = build_model("eqpdenet", image_size=SIZE, in_channels=1, classes=CLASSES,
                            layer={"invariants": ["r18callable", "r18callable"]})
        with pytest.raises(InputError) as raised:
            logits_by_image(model, _images())
    message = str(raised.value)
    assert message.startswith("invariant set 'r18callable' (its invariant 'x': ")
    assert shown in message.split("(its invariant 'x': ", 1)[1].split(")", 1)[0]
    assert message.endswith("failed in evaluation mode, on images of shape (4, 1, 8, 8): "
                            "ZeroDivisionError: inv broke on big maps")


# ----------------------------------------------------------------------------- F1: training


def _training_error(kind: str, family) -> pytest.ExceptionInfo:
    """The InputError of training the family ``family``, registered as ``kind``, on r18toy."""
    with registered(DATASETS, "r18toy", _toy), registered(MODELS, kind, family), \
            pytest.raises(InputError) as raised:
        config = _config(kind)
        train_model(config, prepare_data(config.data), progress=False)
    return raised


def test_a_plugin_family_failing_on_a_later_training_batch_is_named():
    raised = _training_error("r18second", SecondBatch)
    assert str(raised.value) == (f"model 'r18second' (SecondBatch, module {__name__}) failed in "
                                 f"training, epoch 1: KeyError: 'batch two'")
    assert type(raised.value.__cause__) is KeyError


def test_the_epochs_of_the_gpu_runner_name_a_plugin_familys_failure(monkeypatch):
    """The epochs that app/accelerate.py runs on a GPU (here its eager steps, on the CPU) call
    the forward pass where the training loop cannot see it: named the same way."""
    from eqpdenet.app import accelerate

    monkeypatch.setattr(accelerate, "applies_to", lambda device: True)
    monkeypatch.setenv(accelerate.ENV_CUDA_GRAPHS, "0")
    raised = _training_error("r18second", SecondBatch)
    assert str(raised.value) == (f"model 'r18second' (SecondBatch, module {__name__}) failed in "
                                 f"training, epoch 1: KeyError: 'batch two'")


def test_a_plugin_invariant_set_failing_on_the_first_batch_of_a_built_in_family_is_named():
    with registered(DATASETS, "r18toy", _toy), registered(INVARIANT_SETS, "r18invraise",
                                                          _INVRAISE), \
            pytest.raises(InputError) as raised:
        config = _config("eqpdenet", "model.layer.invariants=['r18invraise','r18invraise']")
        train_model(config, prepare_data(config.data), progress=False)
    assert str(raised.value) == (f"invariant set 'r18invraise' (its invariant 'x': _raising, "
                                 f"module {__name__}) failed on the first training batch, "
                                 f"images of shape (16, 1, 8, 8): ZeroDivisionError: inv broke "
                                 f"on big maps")


def test_the_command_line_says_a_later_plugin_failure_in_one_line_with_status_2(
        tmp_path, capsys, monkeypatch):
    """Trained, then scored on the test split in evaluation mode: exit 2, not "a bug in
    eqpdenet?" with exit 1."""
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    with registered(DATASETS, "r18toy", _toy), registered(MODELS, "r18later", Later):
        status = cli.main(["train", "--model", "r18later", "--dataset", "r18toy", "--epochs",
                           "1", "--set", "data.validation=0", "--out", str(tmp_path / "run"),
                           "--no-progress"])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"eqpdenet: error: model 'r18later' (Later, module {__name__}) failed in evaluation "
        f"mode, on images of shape (30, 1, 8, 8): RuntimeError: eval mode broke "
        f"(EQPDENET_DEBUG=1 shows the traceback)")


# ----------------------------------------------------------------------------- F3


def test_too_few_logits_of_a_plugin_family_name_its_kind():
    raised = _training_error("r18fewer", Fewer)
    assert str(raised.value) == (
        "model 'r18fewer' returns 2 logits per image, but r18toy has 3 classes (model.classes = "
        "3): class 2 could never be predicted; a model family must return model.classes logits "
        "(a family of one's own: take a 'classes' option, which build_model sets from the data)")


def test_logits_of_a_wrong_shape_name_the_plugin_familys_kind_class_and_module():
    raised = _training_error("r18threed", ThreeD)
    assert str(raised.value) == (
        f"model 'r18threed' (ThreeD, module {__name__}) returned logits of shape (16, 3, 1) for "
        f"a batch of 16 image(s); expected logits of shape (16, K): one row of K class scores "
        f"per image (flatten the dimensions after the first into the classes, .flatten(1), as "
        f"after a global pooling)")
