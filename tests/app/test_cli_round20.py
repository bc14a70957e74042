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
