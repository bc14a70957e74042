"""The library's warnings name the user's line: a fixed ``stacklevel`` named
``torch/nn/modules/module.py`` for the input-range warning of ``model(x)`` (a module's
``__call__`` lies between), and a library file for warnings reached through other depths, so a
filter on one's own module never matched them."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqpdenet.errors import InputRangeWarning, warn_at_caller
from eqpdenet.models import build_model
from eqpdenet.pde import PDELayer


def _caught(action):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return caught


def _line_of(text: str) -> int:
    lines = open(__file__, encoding="utf-8").read().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line and "_line_of" not in line)


@pytest.mark.parametrize("kind", ["fcnn", "cnn", "lifted_pde"])
def test_the_input_range_warning_names_the_line_calling_the_model(kind):
    torch.manual_seed(0)
    model = build_model(kind).eval()
    images = torch.rand(2, 1, 28, 28) * 255
    caught = _caught(lambda: model(images))  # the model's call
    [warning] = [w for w in caught if issubclass(w.category, InputRangeWarning)]
    assert (warning.filename, warning.lineno) == (__file__, _line_of("# the model's call"))


def test_the_stability_warning_names_the_line_building_the_layer():
    caught = _caught(lambda: PDELayer.build(["se2"], dt=0.5, init="heat", init_scale=1.0))
    [warning] = [w for w in caught if "explicit Euler bound" in str(w.message)]
    assert warning.category is UserWarning
    assert (warning.filename, warning.lineno) == (__file__, _line_of("caught = _caught(lambda: "
                                                                     "PDELayer.build"))


def test_warn_at_caller_skips_every_library_frame():
    caught = _caught(lambda: warn_at_caller("x", UserWarning))  # from a test: this line
    assert caught[0].filename == __file__ and caught[0].category is UserWarning


def test_a_warning_of_run_experiment_names_the_line_calling_it():
    from data_helpers import tiny_config, tiny_data
    from eqpdenet.app.training import run_experiment

    config = tiny_config("model.layer.dt=0.2")  # a field fcnn does not use
    caught = _caught(lambda: run_experiment(config, tiny_data(), progress=False))  # the run
    [warning] = [w for w in caught if "model.layer.dt" in str(w.message)]
    assert (warning.filename, warning.lineno) == (__file__, _line_of("# the run"))
