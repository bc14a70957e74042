"""The validation split and the test split (probe round 13): the test labels do not shape the
model that trains, a split's field is named where it leaves one image to train on, a file's
arrays that are not read are said to be unread; and every dotted ``eqpdenet.`` name in the
package's docstrings names something that exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

from data_helpers import tiny_config, write_npz
from eqpdenet.app.cli import main
from eqpdenet.app.training import Split, train_model
from eqpdenet.data.datasets import load_npz


def _splits():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(72, 1, 12, 12, generator=generator)
    labels = torch.arange(72) % 3
    return (Split(images[:48], labels[:48]), Split(images[48:64], labels[48:64]),
            Split(images[64:], labels[64:]))


def test_a_dict_without_a_test_split_trains():
    train, validation, _ = _splits()
    model, history = train_model(tiny_config("train.epochs=1"),
                                 {"train": train, "validation": validation}, progress=False)
    assert model(train.images[:2]).shape == (2, 3)
    assert len(history) == 1


def test_the_test_labels_do_not_shape_the_model_or_its_training():
    """Classes come from the splits the model learns from: a test label 9 made 10 outputs, and
    another loss and validation accuracy, before."""
    train, validation, test = _splits()
    runs = []
    for labels in (test.labels, torch.where(torch.arange(8) == 7, 9, test.labels)):
        model, history = train_model(tiny_config("train.epochs=2"),
                                     {"train": train, "validation": validation,
                                      "test": Split(test.images, labels)}, progress=False)
        runs.append((tuple(model(train.images[:1]).shape),
                     [(row["loss"], row["validation_accuracy"]) for row in history]))
    assert runs[0] == runs[1]
    assert runs[0][0] == (1, 3)


def _train_on_a_file(tmp_path, capsys, setting: str) -> tuple[int, str]:
    """``train`` on a 40-image file with ``--set setting``: the exit status and stderr."""
    write_npz(tmp_path / "d.npz", train=40, test=10)
    try:
        status = main(["train", "--out", str(tmp_path / "run"), "--model", "fcnn", "--hidden",
                       "4", "--dataset", str(tmp_path / "d.npz"), "--set", "train.epochs=1",
                       "--set", setting])
    except SystemExit as exit_:
        status = exit_.code
    return status, " ".join(capsys.readouterr().err.split())


def test_a_validation_split_leaving_one_image_of_a_file_names_data_validation(tmp_path, capsys):
    status, err = _train_on_a_file(tmp_path, capsys, "data.validation=39")
    assert status == 2
    assert ("invalid config: data.validation: 39 held out of the 40 training images leave 1 to "
            "train on") in err, err
    assert "data.dataset" not in err
    assert not (tmp_path / "run").exists()


def test_a_training_subset_of_one_still_names_data_train_subset(tmp_path, capsys):
    status, err = _train_on_a_file(tmp_path, capsys, "data.train_subset=1")
    assert status == 2
    assert "invalid config: data.train_subset: 1 training image:" in err, err


def test_arrays_of_a_file_that_are_not_read_are_named(tmp_path):
    arrays = write_npz(tmp_path / "d.npz", train=20, test=10)
    write_npz(tmp_path / "v.npz", train=20, test=10, x_val=arrays["x_test"], y_val=arrays["y_test"])
    with pytest.warns(RuntimeWarning, match=r"array\(s\) x_val, y_val not used: .* the "
                                            r"validation split is the last data.validation "
                                            r"images of x_train"):
        with_extra = load_npz(tmp_path / "v.npz")
    assert torch.equal(with_extra.train_images, load_npz(tmp_path / "d.npz").train_images)


#: Dotted names in docstrings that are not Python objects: keys of seeded generators' hashes and
#: the provenance text of derived invariant sets.
_NOT_OBJECTS = {"eqpdenet.scenario", "eqpdenet.augment", "eqpdenet.blur", "eqpdenet.symbolic"}


def _resolves(reference: str) -> bool:
    parts = reference.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                # a dataclass field or an instance attribute, documented in the class
                fields = getattr(obj, "__dataclass_fields__", {})
                init = getattr(obj, "__init__", None)
                names = getattr(getattr(init, "__code__", None), "co_names", ())
                if name not in fields and name not in names:
                    return False
                return True
            obj = getattr(obj, name)
        return True
    return False


def test_every_dotted_name_in_the_package_names_an_object():
    root = Path(__file__).resolve().parents[2] / "src" / "eqpdenet"
    missing = {}
    for path in sorted(root.rglob("*.py")):
        for found in re.finditer(r"(?<![\w/.])eqpdenet(?:\.[A-Za-z_]\w*)+",
                                 path.read_text(encoding="utf-8")):
            reference = found.group(0)
            if reference in _NOT_OBJECTS or reference.startswith("eqpdenet.symbolic"):
                continue
            if not _resolves(reference):
                missing.setdefault(reference, str(path.relative_to(root)))
    assert missing == {}
