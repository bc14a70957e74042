"""The equivariance study of ``eqpdenet equivariance``: tables and plots."""

import copy
from pathlib import Path

import pytest
import torch

from eqpdenet.analysis.equivariance import Transform, model_invariance
from eqpdenet.analysis.references import smooth_inputs
from eqpdenet.app import equivariance_study
from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
from eqpdenet.app.equivariance_study import equivariance_table, measure_equivariance, write_outputs
from eqpdenet.app.runfolder import MARKER
from eqpdenet.app.training import save_checkpoint
from helpers import run_cli


def test_quick_study_writes_tables_and_plots(tmp_path, monkeypatch):
    monkeypatch.delenv("EQPDENET_DATA", raising=False)
    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))
    study = measure_equivariance(quick=True, echo=lambda text: None)
    assert {r.study for r in study.records} == {"transforms", "resolution", "dt", "steps"}
    table = equivariance_table(study)
    assert "| identity |" in table and "interpolation floor" in table
    written = write_outputs(study, tmp_path / "out")
    names = {p.name for p in written}
    assert {"table.md", "table.csv", "transforms.png", "convergence.png"} <= names
    for path in written:
        assert path.stat().st_size > 0
    csv_lines = (tmp_path / "out" / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("study,inputs,map") and len(csv_lines) == len(study.records) + 1


def test_checkpoints_of_other_shapes_are_measured_on_inputs_of_their_own(tmp_path, monkeypatch):
    """A lifted checkpoint of 3-channel 16x16 images (a data set other than MNIST) is measured
    on smooth fields of its shape and on its own test images, where quarter turns are exact;
    two checkpoints of one kind keep apart in the tables."""
    import numpy as np

    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))
    generator = np.random.default_rng(0)
    np.savez(tmp_path / "colour.npz", x_train=generator.random((6, 16, 16, 3)),
             y_train=np.arange(6) % 3, x_test=generator.random((5, 16, 16, 3)),
             y_test=np.arange(5) % 3)
    config = apply_overrides(ExperimentConfig(), [
        "model.kind='lifted_pde'", f"data.dataset='{tmp_path / 'colour.npz'}'",
        "model.in_channels=3", "model.image_size=16", "model.classes=3",
        "model.lifted_pde.channels=[3, 4]", "model.lifted_pde.blocks=[1, 1]"])
    paths = []
    for index in range(2):
        torch.manual_seed(index)
        model = build_model(config.model)
        model.train()(torch.rand(4, 3, 16, 16))  # running statistics that are not the defaults
        (tmp_path / f"run{index}").mkdir()
        paths.append(tmp_path / f"run{index}" / "model.pt")
        save_checkpoint(paths[-1], model, config)
    study = measure_equivariance(quick=True, checkpoints=paths, echo=lambda text: None)
    own = [r for r in study.select(study="transforms") if r.map.startswith("lifted_pde")]
    assert {r.inputs for r in own} == {"smooth 3x16x16", "colour.npz"}
    assert len({r.map for r in own}) == 4  # lift and stage 1 of each checkpoint
    quarter = [r for r in own if r.transform == "rotation" and r.param == 90]
    assert len(quarter) == 8 and max(r.error for r in quarter) < 1e-5
    models = study.select(study="model", inputs="colour.npz")
    assert len({r.map for r in models}) == 2
    assert max(r.error for r in models if r.transform == "rotation" and r.param == 90) < 1e-5
    assert "## Whole models on test images of colour.npz" in equivariance_table(study)


# --- outputs, checkpoints without images, input checks, --invariant-orders-only -----------------

ORDERS = "# invariant orders stand-in\n"


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """The quick study without checkpoints, on smooth inputs only (no MNIST)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EQPDENET_DATA", str(tmp_path_factory.mktemp("no-data") / "nowhere"))
        return measure_equivariance(quick=True, echo=lambda text: None)


@pytest.fixture
def fast_orders(monkeypatch):
    """invariant_orders.md without its 10 s of computation (the orders are tested elsewhere)."""
    monkeypatch.setattr(equivariance_study, "invariant_orders_text", lambda: ORDERS)


def with_a_model(study):
    """``study`` with the "model" records of one checkpoint (as a run with --checkpoint has)."""
    study = copy.deepcopy(study)
    for angle, kept in ((15, 0.75), (45, 0.5), (90, 0.25)):
        study.add(study="model", inputs="mnist", map="fcnn-h8", transform="rotation",
                  param=float(angle), error=0.1 * angle / 15, floor=float("nan"),
                  extra={"unchanged": kept})
    return study


def test_a_rerun_without_models_removes_the_models_plot_of_the_previous_run(
        quick_study, fast_orders, tmp_path):
    out = tmp_path / "eq"
    first = {p.name for p in write_outputs(with_a_model(quick_study), out)}
    assert "models.png" in first and "fcnn-h8" in (out / "table.md").read_text()
    (out / "notes.txt").write_text("the user's")  # not an output: left alone
    second = write_outputs(quick_study, out)
    assert [p.name for p in second] == ["table.md", "table.csv", "transforms.png",
                                        "convergence.png", "invariant_orders.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["table.md", "table.csv", "transforms.png", "convergence.png", "invariant_orders.md",
         "notes.txt"])
    assert "fcnn-h8" not in (out / "table.md").read_text()
    assert (out / "invariant_orders.md").read_text() == ORDERS


def test_a_failed_write_leaves_the_previous_outputs_whole(quick_study, fast_orders, tmp_path,
                                                           monkeypatch):
    """A failure after some files are rendered (here the last figure) changes no file and leaves
    no temporary file: the folder keeps one run's outputs."""
    out = tmp_path / "eq"
    write_outputs(with_a_model(quick_study), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(study):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(equivariance_study, "plot_models", broken)
    with pytest.raises(OSError, match="No space left"):
        write_outputs(quick_study, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _checkpoint(path: Path, overrides: list[str], seed: int = 0) -> Path:
    config = apply_overrides(ExperimentConfig(), overrides)
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, build_model(config.model), config)
    return path


def test_checkpoints_without_maps_or_test_images_are_measured_on_smooth_inputs(tmp_path,
                                                                               monkeypatch):
    """An FCNN of MNIST's shape without MNIST, and one of 3x16x16 images whose .npz is gone:
    each has no maps, so its logits are all that is measured of it; they are measured on the
    smooth inputs of its shape (never left out of the tables), and the message says so."""
    import numpy as np

    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))
    mnist = _checkpoint(tmp_path / "mnist" / "model.pt", ["model.kind='fcnn'", "model.hidden=8"])
    data = tmp_path / "colour.npz"
    generator = np.random.default_rng(0)
    np.savez(data, x_train=generator.random((6, 16, 16, 3)), y_train=np.arange(6) % 3,
             x_test=generator.random((5, 16, 16, 3)), y_test=np.arange(5) % 3)
    colour = _checkpoint(tmp_path / "colour" / "model.pt", [
        "model.kind='fcnn'", "model.hidden=8", f"data.dataset='{data}'", "model.in_channels=3",
        "model.image_size=16", "model.classes=3"], seed=1)
    data.unlink()  # moved away after training
    messages = []
    study = measure_equivariance(quick=True, checkpoints=[mnist, colour], echo=messages.append)
    assert any(m.startswith(f"{data} unavailable") and m.endswith(
        f"; measuring {colour} on smooth 3x16x16 inputs only") for m in messages), messages
    assert any(m.startswith("MNIST unavailable") and "the logits of the checkpoints of MNIST's "
               "shape too" in m for m in messages), messages
    records = study.select(study="model")
    assert sorted({(r.map, r.inputs) for r in records}) == [("fcnn-h8", "smooth"),
                                                             ("fcnn-h8 (colour/model.pt)",
                                                              "smooth 3x16x16")]
    assert len(records) == 2 * 6  # 3 rotations, 2 scalings, 1 translation each
    # The numbers are those of the model on those inputs.
    model, _, _ = equivariance_study.load_checkpoint(mnist)
    expected = model_invariance(model, smooth_inputs(4), Transform.rotation(90))
    [got] = [r for r in records if r.map == "fcnn-h8" and r.transform == "rotation"
             and r.param == 90]
    assert got.error == pytest.approx(expected["logit_change"], rel=1e-6)
    assert got.extra["unchanged"] == expected["unchanged"]
    assert 0 < got.error < 10
    table = equivariance_table(study)
    assert "## Whole models on smooth inputs (their test images could not be read)" in table
    assert ("## Whole models on smooth 3x16x16 inputs (their test images could not be read)"
            in table)
    assert "| fcnn-h8 (colour/model.pt) logit change |" in table


@pytest.mark.parametrize("case, options, message", [
    ("T-not-whole", ["--T", "1", "--dt", "0.15"], "T = 1 is not a whole multiple of dt = 0.15"),
    ("T-huge", ["--T", "1e9"], "Euler steps per PDE, more than the bound of 100,000"),
    ("dt-unstable", ["--T", "1", "--dt", "0.5"], "is unstable with dt = 0.5"),
    ("checkpoint-missing", ["--checkpoint", "{root}/none.pt"], "checkpoint not found"),
    ("checkpoint-corrupt", ["--checkpoint", "{root}/corrupt.pt"],
     "is not a readable eqpdenet checkpoint"),
    ("second-checkpoint-corrupt", ["--checkpoint", "{root}/good.pt", "{root}/corrupt.pt"],
     "corrupt.pt is not a readable eqpdenet checkpoint"),
])
def test_bad_input_is_refused_before_the_folder_is_created(case, options, message, tmp_path,
                                                           capsys, monkeypatch):
    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))
    _checkpoint(tmp_path / "good.pt", ["model.kind='fcnn'", "model.hidden=8"])
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    out = tmp_path / "deep" / "eq"
    status, err = run_cli(["equivariance", "--quick", "--out", out,
                           *[o.format(root=tmp_path) for o in options]], capsys)
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "deep").exists()


def test_bad_input_leaves_an_earlier_results_folder_as_it_was(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))
    out = tmp_path / "eq"
    out.mkdir()
    (out / MARKER).write_text('{"kind": "equivariance"}\n')
    (out / "table.md").write_text("earlier\n")
    status, err = run_cli(["equivariance", "--quick", "--out", out, "--checkpoint",
                           tmp_path / "none.pt"], capsys)
    assert status == 2 and "checkpoint not found" in err
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "table.md"]


@pytest.mark.parametrize("options, named", [
    (["--checkpoint", "{root}/none.pt"], "--checkpoint"),
    (["--T", "1", "--dt", "0.3"], "--T, --dt"),
    (["--T", "1"], "--T"),  # the default value, given: still not used
    (["--data-dir", "{root}"], "--data-dir"),
])
def test_invariant_orders_only_refuses_the_options_it_does_not_use(options, named, tmp_path,
                                                                   capsys):
    out = tmp_path / "eq"
    status, err = run_cli(["equivariance", "--invariant-orders-only", "--out", out,
                           *[o.format(root=tmp_path) for o in options]], capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert f"error: --invariant-orders-only does not use {named}: it computes the invariant " \
           f"orders alone" in err, err
    assert not out.exists()


def test_invariant_orders_only_writes_its_file_and_keeps_the_others(tmp_path, capsys,
                                                                    fast_orders):
    out = tmp_path / "eq"
    out.mkdir()
    (out / MARKER).write_text('{"kind": "equivariance"}\n')
    (out / "table.md").write_text("earlier\n")
    status, _ = run_cli(["equivariance", "--quick", "--invariant-orders-only", "--out", out],
                        capsys)
    assert status == 0
    assert (out / "invariant_orders.md").read_text() == ORDERS
    assert (out / "table.md").read_text() == "earlier\n"


def test_a_lifted_checkpoint_with_a_margin_is_measured(tmp_path, monkeypatch):
    """Its maps are 2 margins larger than its images (32x32 for 28x28 with margin 2): measured on
    the same disk about the same centre, exact at the quarter turns; the study used to fail on
    the mask's shape after the folder was made."""
    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))
    path = _checkpoint(tmp_path / "margin" / "model.pt", [
        "model.kind='lifted_pde'", "model.lifted_pde.margin=2", "model.lifted_pde.channels=[2, 2]",
        "model.lifted_pde.blocks=[1, 1]"])
    model, _, _ = equivariance_study.load_checkpoint(path)
    assert model.eval().projected_fields(smooth_inputs(2), 0).shape[-2:] == (32, 32)
    study = measure_equivariance(quick=True, checkpoints=[path], echo=lambda text: None)
    lifted = [r for r in study.select(study="transforms") if r.map.startswith("lifted_pde")]
    assert {r.map for r in lifted} == {"lifted_pde lift", "lifted_pde stage 1"}
    assert len(lifted) == 2 * 6  # smooth inputs: 3 rotations, 2 scalings, 1 shift
    assert max(r.error for r in lifted if r.param == 90 and r.transform == "rotation") < 1e-5
    assert all(0 < r.error < 1 for r in lifted if not (r.param == 90 and r.transform == "rotation"))


def test_a_horizon_at_which_a_reference_pde_blows_up_is_refused_before_the_folder(
        tmp_path, capsys, monkeypatch):
    """The seeded nonlinear 'scaling-random' grows without bound on sharp digits (MNIST's or
    these strokes): by t = 9.6 it passes 4 times their largest value, and on MNIST it turns
    non-finite before t = 10. That is the PDE, not the scheme: no dt bound sees it, so the
    reference maps are integrated on the inputs before the folder is made."""
    strokes = torch.zeros(4, 1, 28, 28)
    for n in range(4):
        strokes[n, 0, 6 + n:22, 12 + n:15 + n] = 1.0
        strokes[n, 0, 8:11, 8:20 - n] = 1.0
    monkeypatch.setattr(equivariance_study, "mnist_inputs", lambda count, data_dir=None: strokes)
    out = tmp_path / "deep" / "eq"
    status, err = run_cli(["equivariance", "--quick", "--out", out, "--T", "10"], capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert ("error: --T = 10: the reference PDE 'scaling-random' (central stencil, dt = 0.1) "
            "blows up on the mnist inputs: its state reaches 4.04, 4.04 times the inputs' "
            "largest value 1 (the bound is 4 times) after Euler step 96 (t = 9.6 of 10); that is "
            "the nonlinear PDE's own growth, not an unstable scheme, so a smaller dt does not "
            "help; it stays within the bound to t = 9.5: use --T <= 9.4") in err, err
    assert "learning rate" not in err
    assert not (tmp_path / "deep").exists()
    flow = equivariance_study.reference_pdes(9.4, 0.1)["scaling-random"]
    assert equivariance_study._first_blow_up(flow, strokes) is None  # the bound it names holds


def test_the_steps_study_names_its_option_when_its_horizon_blows_up(monkeypatch):
    """The steps study integrates 20 steps of --dt whatever --T is: its horizon is --dt's."""
    from eqpdenet.errors import ConfigError

    monkeypatch.setattr(equivariance_study, "GROWTH_LIMIT", 1.0)  # heat never grows: se2-random
    grid = equivariance_study.default_grid(quick=True)
    with pytest.raises(ConfigError) as caught:
        equivariance_study.check_reference_growth(0.2, 0.1, grid, {"smooth": smooth_inputs(4)})
    message = str(caught.value)
    assert message.startswith("--dt = 0.1 (the steps study integrates 10 steps of --dt): the "
                              "reference PDE 'se2-random' (central stencil, dt = 0.1) blows up "
                              "on the smooth inputs"), message
