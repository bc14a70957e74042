"""Round 17 (an outside probe of the plugin path): a built-in data set name replaced by a plugin
is the user's set for every rule (a benchmark refused its own runs, at every rerun); a family
returning more logits than the data has classes is refused at the first batch and before
``evaluate`` scores it; an exception of a plugin's loader, constructor or first forward pass
names the data set or model kind and the module, exit 2 (it was "a bug in eqpdenet?", exit 1);
``symbolic`` shows a registered group at orders 1 to 3, and an unknown group, data set or
``--dataset`` name hints at EQPDENET_PLUGINS.

Everything is registered in this process for the test only (``helpers.registered``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from data_helpers import tiny_config
from eqpdenet.app import cli
from eqpdenet.app.config import ExperimentConfig, apply_overrides, data_resolved_fields, to_dict
from eqpdenet.app.training import (
    Data,
    Split,
    load_checkpoint,
    prepare_data,
    resolve_for_data,
    run_experiment,
    save_checkpoint,
    train_model,
)
from eqpdenet.data.datasets import DATASETS, ImageDataset, load_dataset
from eqpdenet.errors import ConfigError, DataFileError, InputError
from eqpdenet.models import MODELS, build_model
from helpers import banded_loader, registered

SIZE, CLASSES = 8, 3

# what training says of the families of one's own here, beside the point of these tests
pytestmark = [pytest.mark.filterwarnings("ignore:the memory check cannot estimate:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:.* has no effect on model.kind:RuntimeWarning")]


_toy = banded_loader("r17toy", SIZE, CLASSES)  # 60 + 30 images of 8x8, 3 classes


class Wide(nn.Module):
    """A family returning ``classes + 2`` logits (a wrong-shape family of one's own)."""

    def __init__(self, image_size: int = 28, in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(in_channels * image_size ** 2, classes + 2)

    def forward(self, images):
        return self.linear(images.flatten(1))


class TenOut(nn.Module):
    """A family written for MNIST: 10 logits hard-coded, no ``classes`` option."""

    def __init__(self, image_size: int = 28, in_channels: int = 1):
        super().__init__()
        self.linear = nn.Linear(in_channels * image_size ** 2, 10)

    def forward(self, images):
        return self.linear(images.flatten(1))


class Fits(nn.Module):
    """A family returning ``classes`` logits, as every built-in one does."""

    def __init__(self, image_size: int = 28, in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(in_channels * image_size ** 2, classes)

    def forward(self, images):
        return self.linear(images.flatten(1))


class Fixed28(nn.Module):
    """A family that ignores ``image_size``: 28x28 images only."""

    def __init__(self, image_size: int = 28, in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(28 * 28, classes)

    def forward(self, images):
        return self.linear(images.flatten(1))


class Broken(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        raise RuntimeError("ctor broke: weights file missing")


def _config(kind: str, *overrides: str) -> ExperimentConfig:
    return tiny_config(f"model.kind='{kind}'", "data.dataset='r17toy'", "data.validation=0",
                       *overrides)


# ----------------------------------------------------------------------------- F1


def test_a_replaced_mnist_is_the_users_data_for_training_and_for_the_sweeps_comparison():
    """Training standardises the replaced 'mnist' with its own statistics; what a recorded run
    may differ in follows the same rule, so the sweep's comparison of the recorded (resolved)
    configuration with the one it would run finds no difference (it found input_mean 0.35
    recorded, 0.1307 now, and refused the run after training it, at every rerun)."""
    from eqpdenet.app.sweeps import _config_differences

    config = apply_overrides(ExperimentConfig(), ["data.dataset='mnist'", "data.validation=0"])
    with registered(DATASETS, "mnist", _toy, replace=True):
        resolved = resolve_for_data(config, prepare_data(config.data))
        pixels = _toy().train_images.double()
        assert (resolved.model.input_mean, resolved.model.input_std) == (
            float(pixels.mean()), float(pixels.std()))
        fields = data_resolved_fields(config)
        assert ("model", "input_mean") in fields and ("model", "input_std") in fields
        assert _config_differences(to_dict(resolved), config) == []
    # the built-in MNIST keeps its fixed statistics, not compared as data-resolved
    assert data_resolved_fields(config) == [("model", "image_size"), ("model", "in_channels"),
                                            ("model", "classes")]


def test_describe_draws_a_replaced_mnists_own_test_images():
    """describe chose MNIST's digits by data.dataset = 'mnist' (28x28, for a model of the
    plugin's 8x8 images): the same rule now, the set's own test images."""
    config = apply_overrides(ExperimentConfig(), ["data.dataset='mnist'", "data.validation=0"])
    with registered(DATASETS, "mnist", _toy, replace=True):
        resolved = resolve_for_data(config, prepare_data(config.data))
        images, labels = cli._describe_images("model.pt", resolved, {}, None, [0, 2])
    assert torch.equal(images, _toy().test_images[[0, 2]])
    assert labels == ["mnist test #0", "mnist test #2"]


def test_one_rule_for_mnists_family():
    from eqpdenet.data.datasets import is_built_in, mnist_family

    assert mnist_family("mnist") and mnist_family("rotmnist") and is_built_in("mnist")
    assert not mnist_family("r17toy") and not mnist_family("mnist-rotated")
    with registered(DATASETS, "rotmnist", _toy, replace=True):
        assert not mnist_family("rotmnist") and not is_built_in("rotmnist")
        assert mnist_family("mnist")
    assert mnist_family("rotmnist")


# ----------------------------------------------------------------------------- F2


def test_more_logits_than_classes_are_refused_at_the_first_batch():
    with registered(DATASETS, "r17toy", _toy), registered(MODELS, "r17wide", Wide), \
            pytest.raises(InputError) as error:
        config = _config("r17wide")
        train_model(config, prepare_data(config.data), progress=False)
    assert str(error.value) == (
        "model 'r17wide' returns 5 logits per image, but r17toy has 3 classes (model.classes = "
        "3): its predictions could be classes 3 ... 4, which no image has; a model family must "
        "return model.classes logits (a family of one's own: take a 'classes' option, which "
        "build_model sets from the data)")


def test_a_family_without_a_classes_option_is_refused_before_it_is_scored():
    with registered(DATASETS, "r17toy", _toy), registered(MODELS, "r17ten", TenOut), \
            pytest.warns(RuntimeWarning), pytest.raises(InputError, match=(
                r"^model 'r17ten' returns 10 logits per image, but r17toy has 3 classes "
                r"\(model\.classes = 3\): its predictions could be classes 3 \.\.\. 9, ")):
        config = _config("r17ten")
        run_experiment(config, prepare_data(config.data), progress=False)


def test_a_family_returning_the_classes_trains_as_before():
    with registered(DATASETS, "r17toy", _toy), registered(MODELS, "r17fits", Fits):
        config = _config("r17fits")
        record = run_experiment(config, prepare_data(config.data), progress=False)
    assert record["status"] == "ok" and record["config"]["model"]["classes"] == CLASSES


def test_evaluate_refuses_a_checkpoint_of_more_logits_than_classes(tmp_path, capsys,
                                                                    monkeypatch):
    """A checkpoint written before training checked the logits: evaluate refuses it before
    scoring, naming the kind and both numbers (it scored 40 % with predictions no label can
    match, exit 0)."""
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    with registered(DATASETS, "r17toy", _toy), registered(MODELS, "r17wide", Wide):
        config = _config("r17wide")
        data = prepare_data(config.data)
        resolved = resolve_for_data(config, data)
        save_checkpoint(tmp_path / "model.pt", build_model("r17wide", image_size=SIZE,
                                                            classes=CLASSES), resolved)
        status = cli.main(["evaluate", str(tmp_path / "model.pt")])
        model, saved, _ = load_checkpoint(tmp_path / "model.pt")
        from eqpdenet.app.training import check_evaluated_classes

        with pytest.raises(InputError, match=r"^model 'r17wide' returns 5 logits per image, "
                                             r"but r17toy has 3 classes"):
            check_evaluated_classes(model, saved, data.test.images)
    err = capsys.readouterr().err
    assert status == 2
    assert err.splitlines()[0] == (
        "eqpdenet: error: model 'r17wide' returns 5 logits per image, but r17toy has 3 classes "
        "(model.classes = 3): its predictions could be classes 3 ... 4, which no image has; a "
        "model family must return model.classes logits (a family of one's own: take a "
        "'classes' option, which build_model sets from the data) (EQPDENET_DEBUG=1 shows the "
        "traceback)")


# ----------------------------------------------------------------------------- F3


def _raising(error: Exception):
    def _loader(data_dir=None, cache_dir=None, seed=0):
        raise error
    return _loader


@pytest.mark.parametrize("error, said", [
    (RuntimeError("download server said 503"), "RuntimeError: download server said 503"),
    (KeyError("images"), "KeyError: 'images'"),
    (FileNotFoundError("my data is not at /nowhere/x.bin"),
     "FileNotFoundError: my data is not at /nowhere/x.bin"),
    (ValueError(), "ValueError"),
], ids=["runtime", "key", "file", "no-text"])
def test_a_plugin_loaders_error_names_the_set_the_loader_and_its_module(error, said):
    with registered(DATASETS, "r17err", _raising(error)), \
            pytest.raises(ConfigError) as raised:
        load_dataset("r17err")
    assert str(raised.value) == (f"data set 'r17err': its loader "
                                 f"(_raising.<locals>._loader, module {__name__}) raised {said}")
    assert raised.value.__cause__ is error


def test_eqpdenets_own_errors_in_a_loader_pass_unchanged():
    """The checks of the ImageDataset a loader builds are eqpdenet's, in their words."""
    def nan_pixels(data_dir=None, cache_dir=None, seed=0):
        dataset = _toy()
        dataset.train_images[0, 0, 0, 0] = float("nan")
        return ImageDataset("r17nan", dataset.train_images, dataset.train_labels,
                            dataset.test_images, dataset.test_labels, classes=CLASSES)

    with registered(DATASETS, "r17nan", nan_pixels), pytest.raises(DataFileError) as raised:
        load_dataset("r17nan")
    assert str(raised.value).startswith("r17nan: ") and "its loader" not in str(raised.value)


def test_a_plugin_familys_constructor_error_names_the_kind_and_its_module():
    with registered(MODELS, "r17broken", Broken), pytest.raises(ConfigError) as raised:
        build_model("r17broken", classes=3)
    assert str(raised.value) == (f"model 'r17broken': its class (Broken, module {__name__}) "
                                 f"raised RuntimeError: ctor broke: weights file missing")
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_a_built_in_familys_error_is_said_as_it_was():
    with pytest.raises(ConfigError) as raised:
        build_model("fcnn", hidden=0)
    assert "its class" not in str(raised.value) and "FCNN, module" not in str(raised.value)


def test_a_family_failing_on_its_first_batch_is_named_with_the_sizes_the_data_gave():
    with registered(DATASETS, "r17toy", _toy), registered(MODELS, "r17fixed", Fixed28), \
            pytest.raises(InputError) as raised:
        config = _config("r17fixed")
        train_model(config, prepare_data(config.data), progress=False)
    assert str(raised.value) == (
        f"model 'r17fixed' (Fixed28, module {__name__}) failed on the first training batch, "
        f"images of shape (16, 1, 8, 8): RuntimeError: mat1 and mat2 shapes cannot be "
        f"multiplied (16x64 and 784x3) (it is built with model.image_size = 8 and "
        f"model.in_channels = 1, from the data: a family of one's own must take images of that "
        f"size)")


def test_the_command_line_says_a_plugins_error_in_one_line_with_status_2(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    with registered(DATASETS, "r17err", _raising(RuntimeError("download server said 503"))):
        status = cli.main(["train", "--model", "fcnn", "--hidden", "4", "--dataset", "r17err",
                           "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"eqpdenet: error: data set 'r17err': its loader (_raising.<locals>._loader, module "
        f"{__name__}) raised RuntimeError: download server said 503 (EQPDENET_DEBUG=1 shows "
        f"the traceback)"]


# ----------------------------------------------------------------------------- F4


def test_a_registered_group_is_shown_at_orders_1_to_3():
    from eqpdenet.app.symbolic_table import symbolic_table
    from eqpdenet.pde.symbolic import GROUPS, LieGroupAction, VectorField, u, x, y

    group = LieGroupAction("r17_se2_contrast", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                                VectorField(-y, x, 0), VectorField(0, 0, u)])
    with registered(GROUPS, "r17_se2_contrast", group):
        _, results = symbolic_table(["r17_se2_contrast"])
    # SE(2) x contrast: dim J - orbit dim = 5 - 4, 8 - 4, 12 - 4 invariants, all found
    assert [(r.order, r.expected_count, r.found_count) for r in results] == [
        (1, 1, 1), (2, 4, 4), (3, 8, 8)]


def test_an_unknown_group_hints_at_a_plugin():
    from eqpdenet.app.symbolic_table import symbolic_table
    from eqpdenet.pde.symbolic import GROUPS

    with pytest.raises(ConfigError) as raised:
        symbolic_table(["r17_nope"])
    assert str(raised.value) == (
        f"unknown group 'r17_nope'; available: {', '.join(GROUPS.names())} (registered by a "
        f"plugin? this process has not imported it: name the module that registers it in "
        f"EQPDENET_PLUGINS)")


def test_an_unknown_data_set_name_hints_at_a_plugin_and_a_path_does_not(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_dataset("r17nope")
    assert str(raised.value).endswith(
        "; registered by a plugin? this process has not imported it: name the module that "
        "registers it in EQPDENET_PLUGINS (in Python, import it first)")
    with pytest.raises(ConfigError) as raised:
        load_dataset(str(tmp_path / "nope.npz"))
    assert str(raised.value).endswith("nor an existing .npz file or IDX folder")


def test_train_help_lists_the_registered_data_sets():
    with registered(DATASETS, "r17toy", _toy):
        text = " ".join(cli.build_parser()._subparsers._group_actions[0]
                        .choices["train"].format_help().split())
    assert "a data set name (mnist, r17toy, rotmnist) or the path of a .npz file" in text


def test_the_logits_of_a_given_model_are_checked_against_its_labels_only():
    """A model given to train_model: a Data need not declare its classes (10 by default), so
    only its labels are checked, as before."""
    images = torch.rand(30, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(30) % CLASSES
    data = Data(train=Split(images, labels), validation=Split(images[:0], labels[:0]),
                test=Split(images, labels), name="given")  # classes: 10, the default
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, CLASSES))
    trained, history = train_model(tiny_config(), data, model=model, progress=False)
    assert trained is model and len(history) == 1
