"""Round 7 of the configuration checks.

1. ``train.augment.max_shift`` not below the data's image side was refused by ``train_model``
   only, after the data were loaded, and in a benchmark after the entries before it had trained
   and been recorded: the preflight, which knows every run's image size from the data's headers,
   now refuses it before any run (:func:`eqpdenet.app.preflight.check_for_images`).
2. An option that the chosen value of another option of the same configuration makes inert
   (``lifted_pde.downsample_sigma`` with ``downsample = 'none'``, ``lifted_pde.hidden`` without
   the ``network`` term, ``gcnn.pool_sigma`` with ``pool = 'max'``, ``invariant_pde.jet_floor``
   with ``group = 'se2'``, ...) was ignored silently: it is one warning per field
   (:data:`eqpdenet.app.config.INERT_FIELDS`), each pair checked to leave the logits bitwise
   unchanged.
3. A validation split of one class or of a handful of images, on which the best epoch (or a
   study's candidate) would be chosen, was accepted silently: it is a warning.
"""

import warnings

import numpy as np
import pytest
import torch

from eqpdenet.app.benchmark import benchmark
from eqpdenet.app.config import (
    INERT_FIELDS,
    BenchmarkConfig,
    ExperimentConfig,
    apply_overrides,
    build_model,
    fields_without_effect,
)
from eqpdenet.app.preflight import preflight
from eqpdenet.app.training import (
    CONDITIONAL_FIELDS,
    MIN_VALIDATION_IMAGES,
    Split,
    fingerprint,
    prepare_data,
    train_model,
)
from eqpdenet.errors import ConfigError

SHIFT_28 = ("invalid config: train.augment.max_shift: 28 pixels is not less than the images' "
            "side (28 pixels): most shifted images would be blank")


def _npz(path, n_train=24, n_test=8, classes=3, size=16, labels=None):
    rng = np.random.default_rng(0)
    with open(path, "wb") as handle:  # a handle: np.savez would append ".npz" to the name
        np.savez(handle, x_train=rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
                 y_train=np.arange(n_train) % classes if labels is None else labels,
                 x_test=rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
                 y_test=np.arange(n_test) % classes)
    return str(path)


def _run(*overrides: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4",
                                                "scenarios=['test']", *overrides])


# ----------------------------------------------------------------------------- 1. preflight


def test_preflight_refuses_a_shift_as_large_as_a_registered_sets_images_naming_the_run():
    runs = {"fcnn-seed0": _run("data.dataset='mnist'"),
            "zz-shifted-seed0": _run("data.dataset='mnist'", "train.augment.max_shift=28.0")}
    with pytest.raises(ConfigError) as error:
        preflight(runs, None, at_data=True)
    assert str(error.value) == f"run zz-shifted-seed0: {SHIFT_28}"
    # train's preflight (one run without a key) says it as training did, before loading
    with pytest.raises(ConfigError) as error:
        preflight([runs["zz-shifted-seed0"]], None, at_data=True)
    assert str(error.value) == SHIFT_28
    preflight([_run("data.dataset='mnist'", "train.augment.max_shift=27.0")], None, at_data=True)


def test_preflight_checks_the_shift_at_the_image_size_of_a_files_headers(tmp_path):
    data = _npz(tmp_path / "s16.npz", size=16)
    run = _run(f"data.dataset='{data}'", "train.augment.max_shift=20.0")  # below 28, not 16
    with pytest.raises(ConfigError) as error:
        preflight({"fcnn-seed0": run}, None, at_data=True)
    assert str(error.value) == (
        f"run fcnn-seed0, on the 16x16 images of {data}: invalid config: train.augment."
        f"max_shift: 20 pixels is not less than the images' side (16 pixels): most shifted "
        f"images would be blank")
    # and the check at the resolved size that training makes itself
    resolved = apply_overrides(run, ["model.image_size=16"])
    with pytest.raises(ConfigError, match=r"^invalid config: train\.augment\.max_shift: 20 "):
        preflight([resolved], None, images=24)


def test_a_benchmark_with_a_bad_entry_trains_no_entry_before_it(tmp_path):
    data = _npz(tmp_path / "s16.npz", size=16)
    config = BenchmarkConfig(
        base=apply_overrides(ExperimentConfig(), [f"data.dataset='{data}'", "train.epochs=1",
                                                  "scenarios=['test']"]),
        models={"fcnn": ["model.kind='fcnn'", "model.hidden=4"],
                "zz-shifted": ["model.kind='fcnn'", "model.hidden=4",
                               "train.augment.max_shift=16.0"]},
        seeds=[0], checkpoint_seeds=[])
    out = tmp_path / "bench"
    with pytest.raises(ConfigError, match=r"^run zz-shifted-seed0, on the 16x16 images of .*"
                                          r"max_shift: 16 pixels is not less than"):
        benchmark(config, out, progress=False, echo=lambda line: None)
    assert not list(out.glob("runs/*.json")) and not (out / "results.jsonl").exists()


# ----------------------------------------------------------------------------- 2. inert fields


def lines(*overrides: str) -> list[str]:
    return fields_without_effect(apply_overrides(ExperimentConfig(), list(overrides)))


@pytest.mark.parametrize("overrides, expected", [
    (["model.kind='lifted_pde'", "model.lifted_pde.downsample='none'",
      "model.lifted_pde.downsample_sigma=2.0"],
     ["model.lifted_pde.downsample_sigma = 2.0 has no effect with model.lifted_pde.downsample "
      "= 'none': only the 'blur' downsampling has a low-pass"]),
    (["model.kind='lifted_pde'", "model.lifted_pde.terms=['diffusion']",
      "model.lifted_pde.hidden=4.0", "model.lifted_pde.normalize_hidden=false"],
     ["model.lifted_pde.hidden = 4.0 has no effect with model.lifted_pde.terms = ['diffusion']: "
      "only the 'network' term of F has a hidden layer",
      "model.lifted_pde.normalize_hidden = False has no effect with model.lifted_pde.terms = "
      "['diffusion']: only the 'network' term of F has a hidden layer"]),
    (["model.kind='gcnn'", "model.gcnn.pool_sigma=0.9"],
     ["model.gcnn.pool_sigma = 0.9 has no effect with model.gcnn.pool = 'max': only the "
      "'antialiased' pooling has a low-pass"]),
    (["model.kind='invariant_pde'", "model.invariant_pde.jet_floor=0.5"],
     ["model.invariant_pde.jet_floor = 0.5 has no effect with model.invariant_pde.group = "
      "'se2': only the SIM(2) invariants have a floor"]),
    # two conditions make it inert: one line, the first entry's
    (["model.kind='invariant_pde'", "model.invariant_pde.channels=[4]",
      "model.invariant_pde.blocks=[1]", "model.invariant_pde.downsample_sigma=2.0"],
     ["model.invariant_pde.downsample_sigma = 2.0 has no effect with model.invariant_pde."
      "downsample = 'pool': only the 'blur' downsampling has a low-pass"]),
    (["model.kind='fcnn'", "model.hidden=8", "train.blur_consistency.max_sigma=0.5"],
     ["train.blur_consistency.max_sigma = 0.5 has no effect with train.blur_consistency.weight "
      "= 0.0: the blur penalty is off"]),
    (["data.dataset='mnist'", "data.source='official'"],
     ["data.source = 'official' has no effect with data.dataset = 'mnist': only ROTMNIST has a "
      "source to choose"]),
    # a field made inert by two others together (round 15: the seed was recorded silently)
    (["data.dataset='mnist'", "data.rotmnist_seed=3"],
     ["data.rotmnist_seed = 3 has no effect with data.dataset = 'mnist' and data.rotated = "
      "False: the seed draws ROTMNIST's digits and angles, a rotated data set's angles, or "
      "goes to a registered data set's own loader"]),
    (["data.dataset='mnist'", "data.rotated=true", "data.rotmnist_seed=3"], []),
    (["data.rotmnist_seed=3"], []),
    # a table the kind does not use is said once, as unused by the kind
    (["model.kind='fcnn'", "model.invariant_pde.jet_floor=0.5"],
     ["model.invariant_pde.jet_floor = 0.5 has no effect on model.kind = 'fcnn', which does "
      "not use it"]),
    # where the other field lets it act: nothing
    (["model.kind='lifted_pde'", "model.lifted_pde.downsample_sigma=2.0"], []),
    (["model.kind='lifted_pde'", "model.lifted_pde.terms=['network', 'diffusion']",
      "model.lifted_pde.hidden=4.0"], []),
    (["model.kind='gcnn'", "model.gcnn.pool='antialiased'", "model.gcnn.pool_sigma=0.9"], []),
    (["model.kind='invariant_pde'", "model.invariant_pde.group='sim2'",
      "model.invariant_pde.jet_floor=0.5"], []),
    (["model.kind='fcnn'", "train.blur_consistency.weight=0.1",
      "train.blur_consistency.max_sigma=0.5"], []),
])
def test_a_field_made_inert_by_another_is_one_line_naming_both(overrides, expected):
    assert lines(*overrides) == expected


def test_the_fingerprints_conditional_fields_are_among_the_inert_ones():
    for path, (condition, values) in CONDITIONAL_FIELDS.items():
        inert = [f for f in INERT_FIELDS if f.path == ".".join(path)
                 and f.condition == ".".join(condition)]
        assert len(inert) == 1 and all(inert[0].acts(v) for v in values), path
    # the warning leaves the fingerprint as it was: the field still counts (a folder made
    # before recorded it so)
    plain = apply_overrides(ExperimentConfig(), ["model.kind='lifted_pde'",
                                                 "model.lifted_pde.downsample='none'"])
    assert fingerprint(apply_overrides(plain, ["model.lifted_pde.downsample_sigma=2.0"])) \
        != fingerprint(plain)


def test_the_seed_reaches_a_registered_loader_and_is_not_called_inert(monkeypatch):
    """Round 15 review: every registered loader is given data.rotmnist_seed; only the built-in
    MNIST loader ignores it (and MNIST replaced by one's own loader does not)."""
    from eqpdenet.data import datasets

    def toy(data_dir=None, cache_dir=None, seed=0):
        raise AssertionError("not loaded by the check")

    monkeypatch.setattr(datasets.DATASETS, "_items", dict(datasets.DATASETS._items))
    datasets.register_dataset("campaign_toy", toy)
    assert fields_without_effect(apply_overrides(
        ExperimentConfig(), ["data.dataset='campaign_toy'", "data.rotmnist_seed=1"])) == []
    datasets.register_dataset("mnist", toy, replace=True)
    assert fields_without_effect(apply_overrides(
        ExperimentConfig(), ["data.dataset='mnist'", "data.rotmnist_seed=1"])) == []


SMALL = {"lifted_pde": ["model.lifted_pde.channels=[3, 3]", "model.lifted_pde.blocks=[1, 1]"],
         "invariant_pde": ["model.invariant_pde.channels=[3, 3]",
                           "model.invariant_pde.blocks=[1, 1]"],
         "gcnn": ["model.gcnn.channels=[2, 2]", "model.gcnn.kernels=[3, 3]",
                  "model.gcnn.pool_after=[1]", "model.gcnn.group_order=4"]}


@pytest.mark.parametrize("kind, context, option", [
    ("lifted_pde", ["model.lifted_pde.downsample='none'"], "model.lifted_pde.downsample_sigma=2.0"),
    ("lifted_pde", ["model.lifted_pde.terms=['diffusion']"], "model.lifted_pde.hidden=4.0"),
    ("lifted_pde", ["model.lifted_pde.terms=['diffusion']"],
     "model.lifted_pde.normalize_hidden=false"),
    ("invariant_pde", [], "model.invariant_pde.jet_floor=0.5"),
    ("invariant_pde", [], "model.invariant_pde.sigma=2.0"),
    ("gcnn", [], "model.gcnn.pool_sigma=0.9"),
])
def test_an_inert_pair_leaves_the_logits_bitwise_unchanged(kind, context, option):
    if kind == "gcnn":
        pytest.importorskip("e2cnn")
    base = apply_overrides(ExperimentConfig(), [f"model.kind='{kind}'", "model.image_size=16",
                                                *SMALL[kind], *context])
    changed = apply_overrides(base, [option])
    assert len(fields_without_effect(changed)) == 1  # the pair is one the warning names
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    logits = []
    for config in (base, changed):
        torch.manual_seed(0)
        model = build_model(config.model)
        with torch.no_grad():
            logits.append([model.train()(images), model.eval()(images)])
    assert all(torch.equal(a, b) for a, b in zip(*logits, strict=True))


def test_training_warns_about_an_inert_field():
    generator = torch.Generator().manual_seed(0)
    data = {"train": Split(torch.rand(8, 1, 8, 8, generator=generator), torch.arange(8) % 2),
            "test": Split(torch.rand(4, 1, 8, 8, generator=generator), torch.arange(4) % 2),
            "validation": Split(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))}
    config = _run("train.epochs=1", "train.blur_consistency.fraction=0.5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_model(config, data, progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert said == ["train.blur_consistency.fraction = 0.5 has no effect with "
                    "train.blur_consistency.weight = 0.0: the blur penalty is off"]


# ----------------------------------------------------------------------------- 3. validation


def _validation_warnings(tmp_path, validation: int, labels=None) -> list[str]:
    data = _npz(tmp_path / "v.npz", n_train=40, size=8, labels=labels)
    config = apply_overrides(ExperimentConfig(), [f"data.dataset='{data}'",
                                                  f"data.validation={validation}"]).data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_data(config)
    return [str(w.message).replace(data, "v.npz") for w in caught
            if "validation split" in str(w.message)]


def test_a_validation_split_of_one_image_is_warned_about(tmp_path):
    assert _validation_warnings(tmp_path, 1) == [
        f"the validation split of v.npz (data.validation = 1) holds 1 image only, of class 0: "
        f"its accuracy moves in steps of 100 points, and selecting on it "
        f"(train.select_on_validation, a study's choice) is meaningless (hold out "
        f"{MIN_VALIDATION_IMAGES} images or more)"]
    assert _validation_warnings(tmp_path, 4) == [
        "the validation split of v.npz (data.validation = 4) holds 4 images only: its accuracy "
        "moves in steps of 25 points, and selecting on it (train.select_on_validation, a "
        "study's choice) is meaningless (hold out 10 images or more)"]


def test_a_validation_split_of_one_class_is_warned_about(tmp_path):
    labels = np.array([0, 1] * 10 + [2] * 20)  # the file sorted: the last 20 are class 2
    assert _validation_warnings(tmp_path, 12, labels) == [
        "the validation split of v.npz (data.validation = 12) holds class 2 only: its accuracy "
        "measures that class alone, and selecting on it (train.select_on_validation, a study's "
        "choice) is meaningless (is the file sorted by class? shuffle it, or change "
        "data.validation)"]
    assert _validation_warnings(tmp_path, 12) == []  # 12 images of 3 classes
    assert _validation_warnings(tmp_path, 0) == []  # none held out
