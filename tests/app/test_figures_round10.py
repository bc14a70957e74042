"""Figures draw what they say and refuse what they cannot draw (round 10).

Before: the dashed disk of a non-square diagram was centred at ((W-1)/2, (W-1)/2) with radius
0.35 W, not where the difference is measured; a blank image printed "= nan"; a 2x2 image raised
a bare reduction error; a batch of two was measured over both and drawn of the first;
``frame_steps(10, 0)`` returned ``[]``; labels fewer than images an ``IndexError``; ``figure
--out x.pdf`` wrote PNG bytes under that name; a refused ``figure`` left ``--out``'s folders."""

from __future__ import annotations

import pytest
import torch
from matplotlib.patches import Circle

from eqpdenet.analysis.references import heat_pde
from eqpdenet.app import figures
from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, build_model
from eqpdenet.app.training import save_checkpoint
from eqpdenet.errors import ConfigError, InputError
from eqpdenet.pde import PDELayer

HEAT = heat_pde(T=0.2, dt=0.1)


def test_the_dashed_disk_is_the_measured_disk_on_a_non_square_image(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, guard=None: drawn.append(fig))
    image = torch.rand(1, 1, 20, 30, generator=torch.Generator().manual_seed(0))
    figures.figure_diagram(image, HEAT, tmp_path / "d.png")
    [circle] = [p for ax in drawn[0].axes for p in ax.patches if isinstance(p, Circle)]
    assert circle.center == ((30 - 1) / 2, (20 - 1) / 2) and circle.radius == pytest.approx(7.0)


@pytest.mark.parametrize(("image", "message"), [
    (torch.zeros(1, 1, 28, 28), "u_T\\(I0\\) is 0 on the central disk"),
    (torch.rand(1, 1, 2, 2), "2x2 pixels: its central disk .* holds no pixel"),
    (torch.rand(2, 1, 28, 28), r"one image \(1, C, H, W\), got \(2, 1, 28, 28\)"),
])
def test_a_diagram_that_cannot_be_measured_is_refused(image, message):
    with pytest.raises(InputError, match=message):
        figures.diagram_arrays(image, HEAT)


def test_frames_and_labels_of_an_evolution_grid_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="frames: at least 1"):
        figures.frame_steps(10, 0)
    layer = PDELayer.build(["se2"])
    with pytest.raises(InputError, match="labels: one per image, got 1 for 2 images"):
        figures.evolution_grid(layer, torch.rand(2, 1, 12, 12), tmp_path / "g.png", labels=["a"])
    with pytest.raises(InputError, match=r"N >= 1"):
        figures.evolution_grid(layer, torch.rand(0, 1, 12, 12), tmp_path / "g.png")
    assert list(tmp_path.iterdir()) == []


def test_a_refused_figure_leaves_no_folder_and_only_png_is_written(tmp_path, capsys):
    config = ExperimentConfig()
    save_checkpoint(tmp_path / "m.pt", build_model(config.model), config)
    assert main(["figure", "diagram", "--checkpoint", str(tmp_path / "m.pt"), "--pde", "99",
                 "--out", str(tmp_path / "new" / "x.png")]) == 2
    assert "--pde 99: the checkpoint has" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert main(["figure", "diagram", "--out", str(tmp_path / "x.pdf")]) == 2
    assert "figure writes a PNG image; name the file .png" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
