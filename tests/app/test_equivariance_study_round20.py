"""The equivariance study, round 20 (an outside probe, b5): a map or a model whose output is NaN
was measured as an empty cell with exit 0 (F1), a NaN quarter turn was dropped by ``max`` (F2),
two data sets of one file name shared one table and one floor (F3), the --T / --dt advice named
values that cannot work (F4), a checkpoint of 2x2 images failed mid-study unnamed (F5), and two
checkpoints of one kind could not be told apart in table.md (F6).

The studies here run on a grid of a few transforms (``tiny_grid``): the full quick study is
among the slowest tests of CI, and these faults do not depend on the grid's size."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from eqpdenet.analysis import equivariance as analysis
from eqpdenet.analysis.equivariance import Transform, equivariance_error, quarter_turn_check
from eqpdenet.analysis.references import smooth_inputs
from eqpdenet.app import equivariance_study
from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
from eqpdenet.app.equivariance_study import (
    LearnedMap,
    StudyPlan,
    check_steps,
    equivariance_table,
    measure_equivariance,
    prepare_study,
    run_study,
)
from eqpdenet.app.training import save_checkpoint
from eqpdenet.errors import ConfigError, InputError, NonFiniteStateError
from helpers import run_cli

TINY = dict(angles=[15, 90], scales=[0.8], shifts=[0.5], factors=[1], dts=[0.2, 0.1],
            steps=[1], count=4, stencils=["central"])


@pytest.fixture
def tiny_grid(monkeypatch, tmp_path):
    """The study on :data:`TINY`, on smooth inputs only (no MNIST), without the 10 s of the
    invariant orders."""
    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(equivariance_study, "default_grid", lambda quick: dict(TINY))
    monkeypatch.setattr(equivariance_study, "invariant_orders_text", lambda: "orders\n")


def _save(path: Path, overrides: list[str], seed: int = 0, edit=None) -> Path:
    config = apply_overrides(ExperimentConfig(), overrides)
    torch.manual_seed(seed)
    model = build_model(config.model)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, config)
    return path


def _blowing_up(path: Path) -> Path:
    """An EqPdeNet whose first PDE overflows on any image (u_t = 1e30 u), saved with the
    documented ``check_finite = false``: its PDE returns NaN instead of raising."""
    def edit(model):
        model.pde_layer.pdes[0].step.rhs.F.weight[0] = 1e30

    return _save(path, ["model.hidden=8", "model.layer.check_finite=false"], edit=edit)


def _npz(path: Path, side: int, channels: int = 1, seed: int = 0) -> Path:
    generator = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=generator.random((6, side, side, channels)),
             y_train=np.arange(6) % 3, x_test=generator.random((5, side, side, channels)),
             y_test=np.arange(5) % 3)
    return path


# ----------------------------------------------------------------------------- F1


def _measured(transform: Transform, side: int = 28) -> torch.Tensor:
    """The points equivariance_error reads by default: the disk, less what ``transform`` fills."""
    return analysis.central_disk(side) & analysis.filled_region(transform, side)


def test_a_map_with_a_nan_output_is_refused_naming_it():
    images = smooth_inputs(2)

    def nan_map(u):
        return torch.where(u > 0.5, torch.full_like(u, math.nan), u)

    with pytest.raises(InputError) as caught:
        equivariance_error(nan_map, images, Transform.rotation(30))
    message = str(caught.value)
    measured = _measured(Transform.rotation(30))
    bad = ~torch.isfinite(nan_map(images)) & measured
    first = [int(i) for i in torch.nonzero(bad)[0]]
    assert message == (
        f"the map's output on the images holds non-finite values ({int(bad.sum())} NaN, 0 inf "
        f"of the {2 * int(measured.sum())} values at the measured points, which the "
        f"equivariance error reads; the first at index {first}: nan): the images are finite, "
        f"so the map made them (a PDE that blows up on these images, a division by 0), and the "
        f"error would be NaN or inf, which says nothing of the map; measure a map that is "
        f"finite on these images")


def test_a_map_that_is_inf_only_on_the_transformed_images_is_refused_naming_them():
    """The probe's map: ``u**2``, but inf wherever the top-right pixel is bright; the image's
    bottom-left pixel is, which only the half turn brings to the top right."""
    images = torch.zeros(1, 1, 28, 28)
    images[..., 10:18, 10:18] = 1.0
    images[..., -1, 0] = 0.7

    def phi(u):
        return torch.where(u[..., :1, -1:] > 0.5, torch.full_like(u, math.inf), u**2)

    assert equivariance_error(phi, images, Transform.rotation(90)) == 0.0
    measured = int(_measured(Transform.rotation(180)).sum())
    first = [int(i) for i in torch.nonzero(_measured(Transform.rotation(180)))[0]]
    with pytest.raises(InputError) as caught:
        equivariance_error(phi, images, Transform.rotation(180))
    assert str(caught.value).startswith(
        f"the map's output on the transformed images (rot 180°) holds non-finite values (0 NaN, "
        f"{measured} inf of the {measured} values at the measured points, which the "
        f"equivariance error reads; the first at index {[0, 0] + first}: inf)")
    with pytest.raises(InputError, match="rot 180°"):  # quarter_turn_check refuses with it
        quarter_turn_check(phi, images)


def test_an_overflow_off_the_measured_disk_does_not_make_the_error_nan():
    """``phi(g f) - g phi(f)`` of two finite float32 maps overflows to inf in the corner pixel,
    outside the disk: the mask multiplied it by 0, which gave NaN (a sibling of F1). Inside the
    disk the pointwise map commutes with the exact quarter turn: the error is 0 exactly."""
    images = torch.zeros(1, 1, 28, 28)
    images[..., 8:20, 11:17] = 1.0
    sign = torch.ones(28, 28)
    sign[0, 0] = -1.0  # the top-left corner flips sign: not equivariant there

    def phi(u):
        return 3e38 * (2 * u - 1) * sign

    assert torch.isfinite(phi(images)).all()
    assert equivariance_error(phi, images, Transform.rotation(90)) == 0.0


# ----------------------------------------------------------------------------- review r4 F2:
# only the points the error reads are checked (a NaN or inf elsewhere never reaches it)


def _inf_at(row: int, col: int):
    """The identity, but inf at pixel ``(row, col)`` of every map."""
    def phi(u):
        out = u.clone()
        out[..., row, col] = math.inf
        return out
    return phi


def test_an_inf_off_the_measured_disk_that_no_resampling_reads_is_measured_exactly():
    """The probe's map: the identity with the corner pixel inf. On the disk it is the identity,
    whose error is 0 exactly; it was refused as "the error would be NaN", which was false."""
    images = smooth_inputs(2)
    for transform in (Transform.rotation(90), Transform.rotation(30), Transform.scale(0.8)):
        assert equivariance_error(_inf_at(0, 0), images, transform) == 0.0
    assert quarter_turn_check(_inf_at(0, 0), images) == {"error": 0.0, "equivariant": True}


def test_an_inf_off_the_disk_that_the_resampling_carries_onto_it_is_refused_naming_g():
    """Pixel (3, 14) is 10.5 px from the centre, off the 9.8 px disk; the bilinear resampling
    of a rotation by 30 degrees reads it for a point of the disk (g . phi(f) is inf there), the
    exact quarter turn does not."""
    images = smooth_inputs(2)
    phi = _inf_at(3, 14)
    assert not bool(_measured(Transform.rotation(30))[3, 14])
    assert equivariance_error(phi, images, Transform.rotation(90)) == 0.0
    carried = ~torch.isfinite(Transform.rotation(30)(phi(images))) & _measured(
        Transform.rotation(30))
    with pytest.raises(InputError) as caught:
        equivariance_error(phi, images, Transform.rotation(30))
    assert str(caught.value) == (
        f"the map's output on the images holds non-finite values off the measured points (0 "
        f"NaN, 2 inf of 1568; the first at index [0, 0, 3, 14]: inf), and the resampling of "
        f"rot 30° carries them onto {int(carried.sum())} of the "
        f"{2 * int(_measured(Transform.rotation(30)).sum())} values at the measured points that "
        f"the equivariance error reads: the images are finite, so the map made them (a PDE "
        f"that blows up on these images, a division by 0), and the error would be NaN or inf, "
        f"which says nothing of the map; measure a map that is finite on these images, or a "
        f"transform that does not read these points")


def _nan_making(at_call: int, row: int, col: int):
    """A transform of one's own (a flip) that writes NaN at pixel ``(row, col)`` of its
    ``at_call``-th result: 1, the map's output moved (``g . phi(f)``); 2, the images (``g f``)."""
    calls = []

    def transform(u):
        calls.append(1)
        out = torch.flip(u, [-1]).clone()
        if len(calls) == at_call:
            out[..., row, col] = math.nan
        return out
    return transform


@pytest.mark.parametrize("at_call, what, count", [
    (1, "g . phi(f), the map's finite output on the images moved by it", "values at the "
        "measured points"),
    (2, "g f, the images moved by it", "values"),
])
def test_a_transform_that_makes_nan_itself_is_blamed_not_the_map(at_call, what, count):
    """Review r5: the NaN a transform of one's own made from finite values was blamed on the map
    ("the images are finite, so the map made them"), which was finite on finite input."""
    images = smooth_inputs(2)
    mask = analysis._measurement_mask(None, None, (28, 28), (28, 28))
    counted = 2 * int(mask.sum()) if at_call == 1 else images.numel()
    with pytest.raises(InputError) as caught:
        equivariance_error(lambda u: 2 * u, images, _nan_making(at_call, 14, 14))
    assert str(caught.value) == (
        f"the transform g makes non-finite values from finite ones: {what} holds 2 NaN and 0 "
        f"inf of its {counted} {count} (the first at index [0, 0, 14, 14]: nan); the "
        f"equivariance error would be NaN or inf, which says nothing of the map; use a "
        f"transform that keeps finite values finite")

def test_the_study_refuses_a_map_that_is_inf_anywhere_and_says_why():
    """The study's one check before measuring stands for all of its transforms: the whole
    frame, with its own reason (not "the error would be NaN", false for the corner)."""
    with pytest.raises(InputError) as caught:
        equivariance_study._try_checkpoint("ck.pt", "tag", {"m": _inf_at(0, 0)}, None,
                                           {"smooth": smooth_inputs(2)}, "smooth", [], False)
    assert str(caught.value) == (
        "--checkpoint ck.pt: its map 'm' on the smooth inputs: the map's output on these images "
        "holds non-finite values (0 NaN, 2 inf of 1568; the first at index [0, 0, 0, 0]: inf): "
        "the images are finite, so the map made them (a PDE that blows up on these images, a "
        "division by 0), and the study refuses a checkpoint's map that is NaN or inf anywhere "
        "on its inputs before it measures any transform (each reads other points; a learned "
        "PDE whose state is non-finite is blowing up); measure a map that is finite on these "
        "images")


def test_a_checkpoint_whose_pde_gives_nan_is_refused_before_the_folder(tiny_grid, tmp_path,
                                                                      capsys):
    path = _blowing_up(tmp_path / "ck" / "blowup.pt")
    out = tmp_path / "deep" / "eq"
    status, err = run_cli(["equivariance", "--quick", "--out", out, "--checkpoint", path], capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(
        f"eqpdenet: error: --checkpoint {path}: its map 'eqpdenet-h8 pde0:se2' on the smooth "
        f"inputs: the map's output on the images holds non-finite values ("), err
    assert not (tmp_path / "deep").exists()


def test_a_model_without_finite_logits_is_refused_naming_the_checkpoint(tiny_grid, tmp_path):
    """A model without maps (an FCNN) is measured by its logits alone: here every one is NaN
    (its huge weights overflow to inf, and inf - inf), so there is nothing to measure."""
    def edit(model):
        for parameter in model.parameters():
            parameter.fill_(1e38)
        model.mlp[2].weight[:, ::2] = -1e38

    path = _save(tmp_path / "ck" / "model.pt", ["model.kind='fcnn'", "model.hidden=8"],
                 edit=edit)
    count = len(equivariance_study.smooth_inputs(TINY["count"] // 4 or 4))
    with pytest.raises(InputError) as caught:
        prepare_study(quick=True, checkpoints=[path], echo=lambda text: None)
    assert str(caught.value) == (
        f"--checkpoint {path}: the model gives no finite logits on any of the {count} smooth "
        f"images it is measured on: its predictions and logit changes would be NaN, not a "
        f"measurement")


class _FiniteOnItsOwnImages(nn.Module):
    """Logits of the images it was given, NaN for any other (a transformed one)."""

    def __init__(self, images):
        super().__init__()
        self.register_buffer("known", images.clone())

    def forward(self, x):
        known = (x[:, None] == self.known[None]).flatten(2).all(-1).any(1)
        logits = x.flatten(1)[:, :3].clone()
        logits[~known] = math.nan
        return logits


def test_a_model_without_finite_logits_after_a_transform_is_an_error_not_a_blank_cell():
    images = smooth_inputs(4)
    plan = StudyPlan(quick=True, T=0.2, dt=0.1, grid=dict(TINY, angles=[90], scales=[],
                                                          shifts=[], dts=[0.1]),
                     ck_maps={}, models={"fragile": _FiniteOnItsOwnImages(images)}, own=[],
                     inputs={"smooth": images})
    with pytest.raises(InputError) as caught:
        run_study(plan, echo=lambda text: None)
    assert str(caught.value) == (
        "'fragile': the model gives no finite logits on any of the 4 smooth "
        "images before and after rot 90° (it blows up on them): its predictions and logit "
        "change would be NaN, not a measurement")


def test_a_nan_cell_reads_nan_and_a_missing_one_stays_empty():
    study = equivariance_study.Study()
    for transform, value in (("rotation", math.nan), ("scale", 0.5)):
        study.add(study="model", inputs="mnist", map="m", transform=transform, param=1.0,
                  error=value, floor=math.nan, extra={"unchanged": 1.0})
    study.add(study="model", inputs="mnist", map="n", transform="scale", param=1.0, error=0.25,
              floor=math.nan, extra={"unchanged": 1.0})
    table = equivariance_table(study)
    assert "| m logit change | nan | 0.500 |" in table
    assert "| n logit change |  | 0.250 |" in table


# ----------------------------------------------------------------------------- F2


@pytest.mark.parametrize("errors", [[0.0, math.nan, 0.0], [1e-8, 2e-8, math.nan]])
def test_quarter_turn_check_keeps_a_nan_and_never_calls_it_equivariant(errors, monkeypatch):
    """Python's max kept 0.0 against a later NaN: the map was called equivariant."""
    values = iter(errors)
    monkeypatch.setattr(analysis, "equivariance_error", lambda phi, images, g: next(values))
    result = quarter_turn_check(lambda u: u, smooth_inputs(1))
    assert math.isnan(result["error"]) and result["equivariant"] is False


# ----------------------------------------------------------------------------- F3


def test_test_images_of_different_data_sets_get_different_names():
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    names = equivariance_study._test_image_names
    assert names([("rgb.npz", "/x/d1/rgb.npz", a), ("rgb.npz", "/x/d2/rgb.npz", b)]) == [
        "d1/rgb.npz", "d2/rgb.npz"]
    # equal images (one data set, or a copy): one name, one table
    assert names([("rgb.npz", "/x/d1/rgb.npz", a), ("rgb.npz", "/x/d2/rgb.npz", a.clone())]) == [
        "rgb.npz", "rgb.npz"]
    # the folders alike too: the whole paths
    assert names([("rgb.npz", "/x/d/rgb.npz", a), ("rgb.npz", "/y/d/rgb.npz", b)]) == [
        "/x/d/rgb.npz", "/y/d/rgb.npz"]
    # one file read otherwise (data.rotated): numbered
    assert names([("rgb.npz", "/x/d/rgb.npz", a), ("rgb.npz", "/x/d/rgb.npz", b),
                  ("rgb.npz", "/x/d/rgb.npz", a)]) == [
        "/x/d/rgb.npz", "/x/d/rgb.npz #2", "/x/d/rgb.npz"]
    # the study's own names (titled as MNIST, or as the smooth fields)
    assert names([("mnist", "/data/mnist", a), ("smooth 1x4x4", "/d/smooth 1x4x4", b),
                  ("other.npz", "/d/other.npz", b)]) == [
        "data/mnist", "d/smooth 1x4x4", "other.npz"]


def test_two_data_sets_of_one_file_name_keep_their_own_tables(tiny_grid, tmp_path):
    paths = []
    for index, folder in enumerate(("d1", "d2")):
        data = _npz(tmp_path / folder / "colour.npz", 8, channels=3, seed=index)
        paths.append(_save(tmp_path / folder / "model.pt", [
            "model.kind='fcnn'", "model.hidden=4", f"data.dataset='{data}'",
            "model.in_channels=3", "model.image_size=8", "model.classes=3"], seed=index))
    study = measure_equivariance(quick=True, checkpoints=paths, echo=lambda text: None)
    models = study.select(study="model")
    assert sorted({(r.map, r.inputs) for r in models}) == [
        ("fcnn-h4", "d1/colour.npz"), ("fcnn-h4 (d2/model.pt)", "d2/colour.npz")]
    table = equivariance_table(study)
    assert "## Whole models on test images of d1/colour.npz" in table
    assert "## Whole models on test images of d2/colour.npz" in table
    # F6: the file of each tag, the bare one too
    assert (f"## Checkpoints\n\n| tag | file |\n|---|---|\n| fcnn-h4 | `{paths[0]}` |\n"
            f"| fcnn-h4 (d2/model.pt) | `{paths[1]}` |\n") in table


# ----------------------------------------------------------------------------- F4


@pytest.mark.parametrize("T, dt, message", [
    (0.3, 0.1, "invalid config: --T: the dt study integrates to --T = 0.3 with each dt of "
               "[0.2, 0.1, 0.05], its own time steps whatever --dt is, so --T must be a whole "
               "multiple of 0.2, the largest of them (--T = 0.3 is 1.5 steps of 0.2): 0.2 or 0.4"),
    (0.1, 0.1, "invalid config: --T: the dt study integrates to --T = 0.1 with each dt of "
               "[0.2, 0.1, 0.05], its own time steps whatever --dt is, so --T must be a whole "
               "multiple of 0.2, the largest of them (--T = 0.1 is 0.5 steps of 0.2): 0.2"),
    (0.9, 0.15, "invalid config: --T: the dt study integrates to --T = 0.9 with each dt of "
                "[0.2, 0.1, 0.05], its own time steps whatever --dt is, so --T must be a whole "
                "multiple of 0.2, the largest of them (--T = 0.9 is 4.5 steps of 0.2): 0.6 or "
                "1.2 (the nearest whole multiples of both 0.2 and --dt = 0.15)"),
    (6000, 0.25, "invalid config: --T: the dt study integrates to --T = 6000 with each dt of "
                 "[0.2, 0.1, 0.05], its own time steps whatever --dt is: 6000 / 0.05 is about "
                 "1.2e+05 Euler steps, more than the bound of 100,000; --T must be at most "
                 "5000"),
])
def test_the_dt_study_names_the_t_it_needs_and_no_dt(T, dt, message):
    """Its steps are its own: the advice "or another dt" / "or a smaller dt" changed nothing.
    Each --T it names is accepted with this --dt (review r5: --T 0.9 --dt 0.15 was told 0.8 or
    1, multiples of 0.2 that --dt 0.15 refuses next)."""
    grid = equivariance_study.default_grid(quick=True)
    with pytest.raises(ConfigError) as caught:
        check_steps(T, dt, grid)
    assert str(caught.value) == message
    named = message.rsplit("steps of 0.2): ", 1)[-1].split(" (")[0]
    for value in named.split(" or ") if "steps of 0.2): " in message else ():
        check_steps(float(value), dt, grid)


@pytest.mark.parametrize("T, dt, message, named", [
    (1, 0.15, "invalid config: --T / --dt: T = 1 is not a whole multiple of dt = 0.15 (6.667 "
              "steps): the Euler steps would stop at t = 0.9; choose a --T among the whole "
              "multiples of both --dt and 0.2, the largest step of the dt study ([0.2, 0.1, "
              "0.05], its own steps whatever --dt is): 0.6 or 1.2; or another --dt", (0.6, 1.2)),
    (0.2, 0.25, "invalid config: --T / --dt: T = 0.2 is smaller than dt = 0.25: not one Euler "
                "step would run; choose a --T among the whole multiples of both --dt and 0.2, "
                "the largest step of the dt study ([0.2, 0.1, 0.05], its own steps whatever "
                "--dt is): 1; or another --dt", (1.0,)),
    (1, 0.3, "invalid config: --dt: the explicit Euler scheme of the heat equation (diffusivity "
             "1) is unstable with dt = 0.3 (a dt = 0.3 > 0.25): its result would be the scheme's "
             "blow-up, not the PDE's; use dt <= 0.25", ()),
])
def test_the_first_t_dt_advice_names_values_the_study_accepts(T, dt, message, named):
    """Review r4 F4: the --T / --dt refusal named multiples of --dt alone (0.9 or 1.05 for
    --dt 0.15, which the dt study's 0.2 refuses next), and values of --T for an unstable --dt
    (0.9 or 1.2 for --dt 0.3, refused next as unstable). Each value it names is accepted."""
    grid = equivariance_study.default_grid(quick=True)
    with pytest.raises(ConfigError) as caught:
        check_steps(T, dt, grid)
    assert str(caught.value) == message
    for value in named:
        check_steps(value, dt, grid)


@pytest.mark.parametrize("limit, option, T, dt, expected", [
    (6.7, "--T", 1.0, 0.1, 6.6),      # 6.7 is 33.5 steps of the dt study's 0.2
    (6.7, "--T", 1.0, 0.15, 6.6),     # and a multiple of --dt = 0.15 too
    (9.5, "--T", 1.0, 0.1, 9.4),
    (0.1, "--T", 1.0, 0.1, None),     # below the dt study's 0.2
    (0.0333, "--dt", 1.0, 0.1, 0.03125),  # 1/31 prints as 0.0322581, not a divisor of 1
])
def test_the_growth_advice_names_a_value_the_study_accepts(limit, option, T, dt, expected):
    grid = equivariance_study.default_grid(quick=True)
    got = equivariance_study._accepted_at_most(limit, option, T, dt, grid)
    assert got == expected
    if got is not None:
        check_steps(*((got, dt) if option == "--T" else (T, got)), grid)


def test_the_growth_refusal_advises_the_smallest_bound_over_every_input(monkeypatch):
    """Review r4 F3: the refusal came from the first (map, inputs) to blow up, in the order of
    the runs, and its --T was refused next for other inputs (--T 200 was told 67.4, then 31.6,
    then 6.8). Here 'scaling-random' passes 1.2 times the bar's largest value after step 23
    (bounded to t = 2.2), the strokes' after step 20: the one error names the strokes and a
    --T at which neither blows up. (The upwind-less u_x is left out: it grows on any stroke.)"""
    monkeypatch.setattr(equivariance_study, "GROWTH_LIMIT", 1.2)
    monkeypatch.setattr(equivariance_study, "REFERENCE_MAPS",
                        ("heat", "se2-random", "scaling-random"))
    strokes = torch.zeros(4, 1, 28, 28)
    for n in range(4):
        strokes[n, 0, 6 + n:22, 12 + n:15 + n] = 1.0
        strokes[n, 0, 8:11, 8:20 - n] = 1.0
    bar = torch.zeros(1, 1, 28, 28)
    bar[..., 6:22, 12:15] = 1.0
    inputs = {"bar": bar, "strokes": strokes}  # the bar first: its bound is the larger one
    grid = equivariance_study.default_grid(quick=True)
    with pytest.raises(ConfigError) as caught:
        equivariance_study.check_reference_growth(3, 0.1, grid, inputs)
    assert str(caught.value) == (
        "--T = 3: the reference PDE 'scaling-random' (central stencil, dt = 0.1) blows up on "
        "the strokes inputs: its state reaches 1.21, 1.21 times the inputs' largest value 1 "
        "(the bound is 1.2 times) after Euler step 20 (t = 2 of 3); that is the nonlinear "
        "PDE's own growth, not an unstable scheme, so a smaller dt does not help; it stays "
        "within the bound to t = 1.9: use --T <= 1.8 (the largest --T up to 1.9 that the study "
        "accepts: a whole multiple of --dt and of the dt study's steps [0.2, 0.1, 0.05]; 1.9 is "
        "the smallest such bound of every reference PDE on every input)")
    equivariance_study.check_reference_growth(1.8, 0.1, grid, inputs)  # the advice holds


def test_a_checkpoints_map_that_blows_up_is_not_told_to_lower_t():
    def blows_up(u):
        raise NonFiniteStateError("pde0:se2", 3, 0.1)

    with pytest.raises(NonFiniteStateError) as learned:
        equivariance_study._error_of(LearnedMap(blows_up), "eqpdenet-h8 pde0:se2", "mnist",
                                     smooth_inputs(2), Transform.rotation(15))
    assert str(learned.value).endswith(
        "The checkpoint's map 'eqpdenet-h8 pde0:se2' on the mnist inputs (rot 15°) blew up: "
        "that checkpoint does not integrate these inputs stably (its PDE's T and dt are its "
        "own, not --T and --dt).")
    with pytest.raises(NonFiniteStateError) as reference:
        equivariance_study._error_of(blows_up, "heat", "mnist", smooth_inputs(2),
                                     Transform.rotation(15), "--dt")
    assert str(reference.value).endswith(
        "The equivariance study's map 'heat' on the mnist inputs (rot 15°) blew up: the PDE's "
        "own growth over its horizon; lower --dt.")


# ----------------------------------------------------------------------------- F5


def test_a_checkpoint_of_tiny_images_without_maps_has_its_logits_measured(tiny_grid, tmp_path):
    data = _npz(tmp_path / "tiny.npz", 2)
    path = _save(tmp_path / "ck" / "model.pt", [
        "model.kind='fcnn'", "model.hidden=4", f"data.dataset='{data}'", "model.image_size=2",
        "model.classes=3"])
    study = measure_equivariance(quick=True, checkpoints=[path], echo=lambda text: None)
    assert not [r for r in study.select(study="transforms") if r.inputs == "tiny.npz"]
    models = study.select(study="model")
    assert {(r.map, r.inputs) for r in models} == {("fcnn-h4", "tiny.npz")}
    assert len(models) == 4 and all(math.isfinite(r.error) for r in models)


def test_a_checkpoint_of_tiny_images_with_maps_is_refused_before_the_study(tiny_grid, tmp_path):
    data = _npz(tmp_path / "tiny.npz", 2)
    path = _save(tmp_path / "ck" / "model.pt", [
        "model.hidden=4", f"data.dataset='{data}'", "model.image_size=2", "model.classes=3"])
    with pytest.raises(ConfigError) as caught:
        prepare_study(quick=True, checkpoints=[path], echo=lambda text: None)
    assert str(caught.value) == (
        f"--checkpoint {path}: its maps cannot be measured on its smooth 1x2x2 inputs of 2x2 "
        f"pixels: rot 15° leaves no point of the measured disk on real pixels both ways (p, "
        f"g p and g^-1 p all within the frame), and the study's transforms are fixed; images "
        f"this small have no room for them")


def test_the_transport_controls_growth_is_called_the_discretisations(monkeypatch):
    """u_t = u_x moves values without growing them; its refusal called the growth "the
    nonlinear PDE's own growth ... a smaller dt does not help". It is the discretisation's:
    explicit Euler's factor sqrt(1 + dt²) a step (checked below), and the central differences'
    growth at the frame's boundary, which no dt removes (review r1: the bound exp(T dt / 2) the
    first fix named does not hold), so a smaller dt slows it only in part."""
    monkeypatch.setattr(equivariance_study, "REFERENCE_MAPS", ("heat", "u_x (non-invariant)"))
    strokes = torch.zeros(1, 1, 28, 28)
    strokes[0, 0, 6:22, 12:15] = 1.0
    grid = dict(equivariance_study.default_grid(quick=True), dts=[0.2], steps=[1])
    with pytest.raises(ConfigError) as caught:
        equivariance_study.check_reference_growth(30, 0.2, grid, {"strokes": strokes})
    assert ("'u_x (non-invariant)' (central stencil, dt = 0.2) blows up on the strokes inputs: "
            "its state reaches 4.04, 4.04 times the inputs' largest value 1 (the bound is 4 "
            "times) after Euler step 144 (t = 28.8 of 30); that is the discretisation's own "
            "growth, not the transport's (u_t = u_x moves values without growing them; its "
            "central differences at the frame's boundary grow some states whatever dt, and "
            "explicit Euler multiplies a frequency by up to sqrt(1 + dt²) a step), so a smaller "
            "--dt slows it only in part") in str(caught.value)
    # the factor it names, on the frequency pi/2 (sin k = 1) away from the frame
    x = torch.arange(28, dtype=torch.float64)
    wave = torch.sin(math.pi / 2 * x).expand(1, 1, 8, 28)
    for dt in (0.2, 0.1):
        flow = equivariance_study.reference_pdes(dt, dt)["u_x (non-invariant)"].double()
        inner = (..., slice(2, -2), slice(2, 26))  # six whole periods
        with torch.no_grad():
            growth = flow.step(wave)[inner].norm() / wave[inner].norm()
        assert float(growth) == pytest.approx(math.sqrt(1 + dt**2), rel=1e-7)


def _nan_fill(images):
    """A flip of one's own that fills the frame's four corner pixels with NaN (what a
    resampling of one's own may bring in from outside the frame), all off the measured disk."""
    out = torch.flip(images, [-1]).clone()
    out[..., 0, 0] = out[..., 0, -1] = out[..., -1, 0] = out[..., -1, -1] = math.nan
    return out


def test_a_transform_whose_nan_stays_off_the_disk_is_measured():
    """Review r1: the first fix refused g f with a NaN anywhere, and 2u measured 0 before it.
    A pointwise map keeps the NaN off the disk: measured; the heat flow spreads it onto the
    disk: refused, naming the transform."""
    images = smooth_inputs(2)
    assert equivariance_error(lambda u: 2 * u, images, _nan_fill) == 0.0
    heat = equivariance_study.reference_pdes(1.0, 0.1)["heat"]
    with pytest.raises(InputError) as caught:
        equivariance_error(heat, images, _nan_fill)
    assert str(caught.value).startswith(
        "the transform g makes non-finite values from finite ones: g f, the images moved by it "
        "holds 8 NaN and 0 inf of its 1568 values (the first at index [0, 0, 0, 0]: nan)")


@pytest.mark.parametrize("T, dt, named", [
    (0.5, 0.1666667, ("1",)),           # 1 = 6 x 0.1666667 within the steps' tolerance
    (0.3, 0.03333333, ("0.2", "0.4")),
])
def test_the_advice_takes_a_dt_within_the_steps_tolerance(T, dt, named):
    """Review r1: the search's filter (1e-9) was 1000 times tighter than the steps' tolerance,
    so --T 0.5 --dt 0.1666667 was told "choose another --dt", though --T 1 runs."""
    grid = equivariance_study.default_grid(quick=True)
    with pytest.raises(ConfigError) as caught:
        check_steps(T, dt, grid)
    assert f"): {' or '.join(named)}" in str(caught.value), str(caught.value)
    for value in named:
        check_steps(float(value), dt, grid)
