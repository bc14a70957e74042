"""Round 11: ``plot_accuracy`` with nothing of ours to draw (``{}``, other models, other
scenarios) drew the paper's lines alone, a figure that passes for a result; now a ConfigError
before anything is drawn or written."""

from __future__ import annotations

import pytest

from eqpdenet.app.report import SCENARIOS, plot_accuracy
from eqpdenet.errors import ConfigError

OURS = {("eqpdenet", 16): {"params": 1234, "test": (95.0, 0.5), "iso": (90.0, 1.0),
                           "sca": (85.0, float("nan"))},
        ("fcnn", 64): {"params": 50890, "test": (97.0, 0.1)}}


def test_an_aggregate_is_drawn_as_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_accuracy(OURS, tmp_path / "accuracy.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["accuracy.png"]


@pytest.mark.parametrize("ours, scenarios, said", [
    ({}, SCENARIOS, "ours holds no accuracy of the paper's models"),
    ({("cnn", 4): {"params": 10, "test": (90.0, 0.0)}}, SCENARIOS, "nothing of ours to draw"),
    (OURS, ("validation",), "on validation, so there is nothing of ours to draw"),
    (OURS, (), "scenarios is empty"),
])
def test_nothing_of_ours_to_draw_is_one_error_and_no_file(ours, scenarios, said, tmp_path):
    with pytest.raises(ConfigError, match=said):
        plot_accuracy(ours, tmp_path / "accuracy.png", scenarios=scenarios)
    assert list(tmp_path.iterdir()) == []
