"""``train`` says which scenario accuracies count PDE blow-ups as errors (round 20: it printed
the accuracies alone, where ``evaluate`` warned; the record's ``non_finite_images``)."""

import numpy as np

from eqpdenet.app import training
from eqpdenet.app.cli import main


def test_train_warns_of_the_images_on_which_the_pde_blew_up(tmp_path, monkeypatch, capsys):
    path = tmp_path / "d.npz"
    labels = np.arange(12) % 2
    np.savez(path, x_train=np.zeros((12, 8, 8), np.uint8), y_train=labels,
             x_test=np.zeros((5, 8, 8), np.uint8), y_test=labels[:5])

    def run(config, data, progress=True, checkpoint=None, **options):
        checkpoint.write_bytes(b"")
        return {"model": "fcnn", "hidden": 4, "seed": 0, "status": "ok", "params": 1,
                "accuracy": {"test": 60.0, "iso": 20.0}, "train_seconds": 0.0,
                "eval_seconds": 0.0, "non_finite_images": {"iso": 2}}

    monkeypatch.setattr(training, "run_experiment", run)
    code = main(["train", "--model", "fcnn", "--hidden", "4", "--epochs", "1", "--dataset",
                 str(path), "--set", "data.validation=0", "--no-progress",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0
    assert ("eqpdenet: warning: iso: the model's PDE blew up (non-finite state) on 2 of the 5 "
            "test images; they are counted as errors") in err.splitlines()
    assert "test:" not in err  # a scenario without a blow-up is not named


def test_figure_diagram_of_a_checkpoint_gets_its_pde_as_a_module(tmp_path, monkeypatch):
    """figure --pde passed a lambda, which figure_diagram cannot put in evaluation mode: the
    checkpoint's PDE ran in training mode (an F with a dropout drew another map each run)."""
    import torch
    from torch import nn

    from eqpdenet.app import figures

    path = tmp_path / "d.npz"
    generator = np.random.default_rng(0)
    labels = np.arange(40) % 2
    np.savez(path, x_train=generator.integers(0, 256, (40, 8, 8), dtype=np.uint8),
             y_train=labels, x_test=generator.integers(0, 256, (6, 8, 8), dtype=np.uint8),
             y_test=labels[:6])
    assert main(["train", "--model", "eqpdenet", "--hidden", "4", "--dataset", str(path),
                 "--set", "train.epochs=1", "--set", "data.validation=0", "--out",
                 str(tmp_path / "ck"), "--no-progress"]) == 0
    given = {}

    def figure_diagram(image, pde, out, **options):
        given.update(image=image, pde=pde)
        return 0.0

    monkeypatch.setattr(figures, "figure_diagram", figure_diagram)
    assert main(["figure", "diagram", "--checkpoint", str(tmp_path / "ck" / "model.pt"),
                 "--pde", "1", "--sample", "0", "--out", str(tmp_path / "f.png")]) == 0
    pde = given["pde"]
    assert isinstance(pde, nn.Module)
    model = training.load_checkpoint(tmp_path / "ck" / "model.pt")[0]
    chosen = model.pde_layer.pdes[1]
    with torch.no_grad():
        torch.testing.assert_close(pde(given["image"]),
                                   chosen(model.standardize(given["image"])), rtol=0, atol=0)
