"""The diagram refuses what the equivariance study refuses, and draws constant panels flat; the
evolution grid has a column per distinct step; the study's table records each map's own Euler
scheme and measures a checkpoint given twice once (round 17, an outside probe).

Before: ``figure diagram --shift 30 0`` (or ``--scale 0.001``) printed "relative difference on
the disk: 0.000e+00" of panels that were all the zero fill; the background fill was the float32
mean of the evolved blank, one rounding off it, and the three evolved panels shared a grey scale
one float32 unit wide (noise drawn as black and white blocks); ``describe --frames 50`` of 10
steps drew 39 blank columns; ``table.csv`` gave a checkpoint's learned PDEs the study's ``dt``
and 0 steps (the identity and the random convolution too); the same checkpoint given twice was
measured twice under two names."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch

from eqpdenet.analysis.equivariance import Transform, equivariance_error
from eqpdenet.analysis.references import heat_pde, identity, smooth_inputs
from eqpdenet.app import equivariance_study, figures
from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
from eqpdenet.app.training import save_checkpoint
from eqpdenet.errors import ConfigError
from eqpdenet.pde import PDELayer

HEAT = heat_pde(T=0.2, dt=0.1)
DIGIT = torch.zeros(1, 1, 28, 28)
DIGIT[..., 8:20, 10:18] = 1.0


def _captured(monkeypatch) -> list:
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, guard=None: drawn.append(fig))
    return drawn


# --- F1: a g that moves the disk off the frame ------------------------------------------------

@pytest.mark.parametrize(("options", "named"), [
    (dict(angle=0.0, shift=(30.0, 0.0)), "g = rotation 0°, shift (30, 0) px"),
    (dict(angle=30.0, factor=0.001), "g = rotation 30°, scale 0.001"),
    (dict(angle=0.0, shift=(14.0, 0.0)), "g = rotation 0°, shift (14, 0) px"),
])
def test_a_g_that_leaves_no_point_of_the_disk_on_real_pixels_is_refused(options, named):
    with pytest.raises(ConfigError) as caught:
        figures.diagram_arrays(DIGIT, HEAT, **options)
    assert str(caught.value) == (
        f"{named}: no point of the measured region of the 28x28 grid stays on real pixels both "
        f"ways (p, g p and g^-1 p all within the frame): only the zero fill would be compared, "
        f"nothing to measure; use a smaller shift or a scale factor nearer 1")


def test_the_figure_refuses_where_the_study_refuses_and_measures_where_it_measures():
    """The shift of 14 px leaves no point both ways, 13 px leaves two columns: the same rule."""
    with pytest.raises(ConfigError, match="shift \\(14, 0\\): no point"):
        equivariance_error(HEAT, DIGIT, Transform.translation(14.0, 0.0))
    equivariance_error(HEAT, DIGIT, Transform.translation(13.0, 0.0))
    out = figures.diagram_arrays(DIGIT, HEAT, angle=0.0, shift=(13.0, 0.0))
    assert 0 < float(out["relative_error"]) < 1e-6  # a whole-pixel shift: exact up to rounding


def test_the_pde_does_not_run_on_a_refused_g():
    calls = []
    with pytest.raises(ConfigError):
        figures.diagram_arrays(DIGIT, lambda u: calls.append(u) or HEAT(u), angle=0.0,
                               shift=(30.0, 0.0))
    assert calls == []


def test_a_refused_figure_writes_nothing(monkeypatch, tmp_path):
    drawn = _captured(monkeypatch)
    with pytest.raises(ConfigError, match="shift \\(30, 0\\) px: no point"):
        figures.figure_diagram(DIGIT, HEAT, tmp_path / "d.png", angle=0.0, shift=(30.0, 0.0))
    assert drawn == [] and list(tmp_path.iterdir()) == []


# --- F3: the background fill and the grey scale of constant panels ------------------------------

#: A value whose float32 mean over 2 x 12 x 12 copies is one rounding off it.
BLANK = -0.17722462117671967


def _blank_channel_image() -> torch.Tensor:
    """Channel 0 blank (the drawn one), channel 1 a bar (the PDE is not 0 on the disk)."""
    image = torch.zeros(1, 2, 12, 12)
    image[0, 1, 3:9, 5:8] = 1.0
    return image


def shifted_heat(u: torch.Tensor) -> torch.Tensor:
    """The heat equation plus a constant: the blank evolves to ``BLANK``, uniform."""
    return HEAT(u) + BLANK


def test_the_background_is_the_evolved_blanks_value_exactly():
    image = _blank_channel_image()
    assert float(torch.full(image.shape, BLANK).mean()) != BLANK  # the float32 mean is not
    out = figures.diagram_arrays(image, shifted_heat, 30.0)
    assert float(out["background"]) == BLANK and out["background"].dtype == torch.float32
    for key in ("uT", "uT_g", "g_uT"):  # channel 0: the blank, evolved and moved
        assert torch.equal(out[key], torch.full((12, 12), BLANK)), key


def test_a_constant_panel_is_drawn_on_a_grey_scale_of_the_minimum_width(monkeypatch, tmp_path):
    drawn = _captured(monkeypatch)
    figures.figure_diagram(_blank_channel_image(), shifted_heat, tmp_path / "d.png")
    [fig] = drawn
    axes = fig.axes
    for index in (1, 5, 6):  # u_T(I0), u_T(g·I0), g·u_T(I0) (rows of 4 panels)
        assert axes[index].images[0].get_clim() == (BLANK, BLANK + 1e-4)
    assert axes[0].images[0].get_clim() == (0.0, 1e-4)  # I0: the blank channel, all 0


@pytest.mark.parametrize(("low", "high", "expected"), [
    (0.0, 1.0, (0.0, 1.0)),
    (BLANK, BLANK, (BLANK, BLANK + 1e-4)),
    (BLANK, BLANK + 1.5e-8, (BLANK, BLANK + 1e-4)),
    (-200.0, -199.999, (-200.0, -200.0 + 1e-4 * 200.0)),
    (0.25, 0.25 + 1e-4, (0.25, 0.25 + 1e-4)),
])
def test_a_grey_range_is_widened_only_below_its_minimum_width(low, high, expected):
    assert figures.grey_range(low, high) == expected


# --- F5: the evolution grid's columns -----------------------------------------------------------

def test_an_evolution_grid_has_a_column_per_distinct_step_and_flat_rows(monkeypatch, tmp_path):
    drawn = _captured(monkeypatch)
    layer = PDELayer.build(["se2"], T=0.2, dt=0.1)  # 2 steps: u(0), u(dt), u(T)
    figures.evolution_grid(layer, torch.zeros(1, 1, 12, 12), tmp_path / "g.png", frames=50)
    [fig] = drawn
    assert len(fig.axes) == 3
    assert fig.get_size_inches()[0] == pytest.approx(1.3 * 3 + 1.6)
    assert [ax.get_title() for ax in fig.axes] == ["t = 0", "t = 0.1", "t = 0.2"]
    assert fig.axes[0].images[0].get_clim() == (0.0, 1e-4)  # a blank row: the minimum width


# --- F2: each map's own Euler scheme in table.csv ----------------------------------------------

def _save(path, overrides):
    config = apply_overrides(ExperimentConfig(), overrides)
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, build_model(config.model), config)
    return path


def _csv_rows(study) -> list[dict]:
    return list(csv.DictReader(io.StringIO(equivariance_study.csv_table(study))))


def test_the_table_records_a_learned_pdes_own_dt_and_steps(tmp_path):
    path = _save(tmp_path / "ck" / "model.pt", [
        "model.hidden=8", "model.layer.dt=0.05", "model.layer.T=0.5"])
    maps, _, tag, _ = equivariance_study.checkpoint_maps(path)
    study = equivariance_study.Study()
    reference = heat_pde(T=0.3, dt=0.1)
    equivariance_study._measure_transforms(
        study, {"identity": identity, "heat": reference, **maps}, {"smooth": smooth_inputs(4)},
        [Transform.rotation(90)], "central")
    study.add(study="model", inputs="smooth", map=tag, transform="rotation", param=90.0,
              error=0.5, floor=float("nan"), extra={"unchanged": 1.0})
    scheme = {row["map"]: (row["dt"], row["steps"]) for row in _csv_rows(study)}
    assert scheme.pop("identity") == ("", "")
    assert scheme.pop("heat") == ("0.1", "3")
    assert scheme.pop(tag) == ("", "")  # the model's logits (the "model" row, its tag)
    assert sorted(scheme) == sorted(f"{tag} {name}" for name in (
        "pde0:se2", "pde1:se2", "pde2:scaling", "pde3:scaling", "layer"))
    assert set(scheme.values()) == {("0.05", "10")}


def test_a_lifted_checkpoints_lift_has_no_scheme_and_its_first_stage_its_blocks(tmp_path):
    path = _save(tmp_path / "lifted" / "model.pt", [
        "model.kind='lifted_pde'", "model.lifted_pde.channels=[2, 2]",
        "model.lifted_pde.blocks=[3, 1]", "model.lifted_pde.dt=0.5"])
    maps, *_ = equivariance_study.checkpoint_maps(path)
    assert math.isnan(maps["lifted_pde lift"].dt) and maps["lifted_pde lift"].steps is None
    assert (maps["lifted_pde stage 1"].dt, maps["lifted_pde stage 1"].steps) == (0.5, 3)


# --- F4: a checkpoint given twice -------------------------------------------------------------

def test_a_checkpoint_given_twice_is_measured_once(tmp_path, monkeypatch):
    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))  # smooth inputs only
    path = _save(tmp_path / "fc" / "model.pt", ["model.kind='fcnn'", "model.hidden=8"])
    again = tmp_path / "fc" / ".." / "fc" / "model.pt"
    said = []
    plan = equivariance_study.prepare_study(quick=True, checkpoints=[path, again],
                                            echo=said.append)
    assert list(plan.models) == ["fcnn-h8"]
    assert f"--checkpoint {again}: given already (as {path}); measured once" in said
