"""The equivariance study of ``eqpdenet equivariance``: tables and plots."""

from eqpdenet.app.equivariance_study import equivariance_table, measure_equivariance, write_outputs


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
    import torch

    from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
    from eqpdenet.app.training import save_checkpoint

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
