"""The plots that go with a command's tables are its results (probe round 13): ``figure --out``
and ``evaluate --json`` replaced a sweep's ``accuracy_vs_params.png`` (the second wrote JSON into
it), exit 0, beside a ``table.md`` they are never written without."""

from __future__ import annotations

import pytest

from eqpdenet.app.cli import main
from eqpdenet.app.equivariance_study import OUTPUT_FILES
from eqpdenet.app.runfolder import COMMAND_PLOTS, check_output_keeps, write_marker
from eqpdenet.errors import OutputFolderError


def test_every_command_s_plot_is_protected():
    assert {name for name in OUTPUT_FILES if not name.startswith("table.")} <= COMMAND_PLOTS
    assert {"accuracy_vs_params.png", "robustness.png", "evolution.png"} <= COMMAND_PLOTS


@pytest.mark.parametrize("kind, name", [("reproduce", "accuracy_vs_params.png"),
                                        ("benchmark", "robustness.png"),
                                        ("describe", "evolution.png"),
                                        ("equivariance", "transforms.png"),
                                        ("equivariance", "invariant_orders.md")])
def test_a_command_s_plot_is_not_replaced(tmp_path, kind, name):
    write_marker(tmp_path, kind)
    (tmp_path / name).write_bytes(b"the command's own")
    with pytest.raises(OutputFolderError, match=f"would replace a result of {tmp_path}"):
        check_output_keeps(tmp_path / name, "--json")
    check_output_keeps(tmp_path / "my-figure.png", "--out")  # another name: written as asked
    (tmp_path / "my-figure.png").write_bytes(b"an earlier figure of the user's")
    check_output_keeps(tmp_path / "my-figure.png", "--out")  # and written again


def test_figure_refuses_a_sweep_s_plot(tmp_path, capsys):
    write_marker(tmp_path, "reproduce")
    plot = tmp_path / "accuracy_vs_params.png"
    plot.write_bytes(b"the sweep's plot")
    try:
        status = main(["figure", "diagram", "--out", str(plot)])
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2
    assert "would replace a result of" in capsys.readouterr().err
    assert plot.read_bytes() == b"the sweep's plot"
