"""Figure 2: the commutative diagram."""

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

from eqpdenet.analysis.equivariance import central_disk
from eqpdenet.analysis.references import heat_pde
from eqpdenet.app.figures import diagram_arrays, figure_diagram


def digit() -> torch.Tensor:
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 6:22, 12:15] = 1.0
    image[0, 0, 6:9, 8:20] = 1.0
    return image


def test_diagram_arrays_commute_for_heat_at_90():
    panels = diagram_arrays(digit(), heat_pde(T=1.0), angle=90.0)
    assert float(panels["relative_error"]) < 1e-5
    panels = diagram_arrays(digit(), heat_pde(T=1.0), angle=30.0, shift=(1.0, 0.5))
    assert 0 < float(panels["relative_error"]) < 0.1
    assert panels["difference"].shape == (28, 28)


def test_figure_png_written_with_the_right_size(tmp_path):
    path = tmp_path / "fig2.png"
    error = figure_diagram(digit(), heat_pde(T=2.0), path, angle=30.0)
    assert 0 < error < 0.1
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[:2] == (620, 1200)
    assert path.stat().st_size < 300_000


def test_cli_help_lists_new_commands():
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "eqpdenet", "--help"], capture_output=True,
                         text=True, check=True, env=env).stdout
    for command in ("equivariance", "describe", "figure"):
        assert command in out


def test_g_fills_with_the_pde_background_and_the_max_is_on_the_disk():
    """A PDE that standardises its input (blank value -0.42): the identity map commutes with g
    exactly, also where g moves new corners into the frame; the printed maximum is on the disk."""
    image = digit()

    def standardised(u):
        return (u - 0.1307) / 0.3081

    panels = diagram_arrays(image, standardised, angle=30.0)
    assert float(panels["background"]) == pytest.approx(-0.1307 / 0.3081)
    assert float(panels["g_uT"][0, 0]) == pytest.approx(-0.1307 / 0.3081)
    assert float(panels["difference"].abs().max()) < 1e-5
    assert float(panels["max_difference"]) < 1e-5
    image[0, 0, 10:18, 24:27] = 1.0  # a stroke that the shift moves out of the frame
    heat = diagram_arrays(image, heat_pde(T=1.0), angle=30.0, shift=(3.0, 0.0))
    assert float(heat["background"]) == 0.0
    disk = central_disk(28, 28)
    assert float(heat["max_difference"]) == float(heat["difference"][disk].abs().max())
    assert float(heat["max_difference"]) < float(heat["difference"].abs().max())
