"""``eqpdenet export``: a checkpoint written by ``train`` becomes a verified file on real test
digits; bad input is one line before any work and leaves nothing in the output folder (the
one-line cases are in test_cli_errors.py)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from data_helpers import data_dir_or_skip, mnist_or_skip
from eqpdenet.app import cli, training
from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
from eqpdenet.export import load_exported


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small EqPdeNet checkpoint (paper layer, 2 Euler steps, F not zero)."""
    path = tmp_path_factory.mktemp("export") / "model.pt"
    config = apply_overrides(ExperimentConfig(), [
        "model.hidden=8", "model.layer.T=0.2", "model.layer.init='normal'",
        "model.layer.init_scale=0.05"])
    torch.manual_seed(0)
    training.save_checkpoint(path, build_model(config.model), config)
    return path


def test_export_writes_a_verified_file_that_computes_the_checkpoints_logits(
        checkpoint, tmp_path, capsys):
    data = data_dir_or_skip()
    out = tmp_path / "model.onnx"
    status = main(["export", str(checkpoint), "--format", "onnx", "--out", str(out), "--images",
                   "200", "--data-dir", str(data)])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "largest logit difference to PyTorch" in printed.out and "on 200 images" in printed.out
    assert "eqpdenet: verifying with onnxruntime on 200 images" in printed.err
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    model, _, _ = training.load_checkpoint(checkpoint)
    images = torch.from_numpy(mnist_or_skip().test_images[:300]).float().div(255.0)[:, None]
    with torch.no_grad():
        expected = model.eval()(images)
    logits = load_exported(out)(images)
    assert float((logits - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_a_missing_optional_dependency_is_one_line_before_any_work(checkpoint, tmp_path, capsys,
                                                                    monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    monkeypatch.setattr(training, "load_checkpoint", None)  # must not be reached
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    status = main(["export", str(checkpoint), "--format", "onnx", "--out",
                   str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "the onnx format needs onnx (optional dependencies): pip install 'eqpdenet[export]'" \
        in err
    assert not list(tmp_path.iterdir())


def test_outputs_never_replace_the_input_checkpoint_or_a_runs_results(checkpoint, tmp_path, capsys):
    """``evaluate --json``, ``export --out`` and ``figure --out`` onto the checkpoint they read,
    or onto a result of a folder a command marked (a train run's ``result.json``), are refused
    before any work and leave the file as it was; a new file in that folder, or an earlier
    summary of the user's, is written as asked."""
    from eqpdenet.app.runfolder import write_marker

    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, "train")
    model = run / "model.pt"
    model.write_bytes(checkpoint.read_bytes())
    (run / "result.json").write_text("{}")
    (run / "config.toml").write_text("# the run's")
    before = model.read_bytes()
    commands = [["evaluate", str(model), "--instances", "1", "--json", str(model)],
                ["export", str(model), "--format", "program", "--out", str(model)],
                ["figure", "diagram", "--pde", "0", "--checkpoint", str(model), "--out", str(model)],
                ["evaluate", str(model), "--instances", "1", "--json", str(run / "result.json")],
                ["figure", "diagram", "--out", str(run / "config.toml")]]
    for command in commands:
        capsys.readouterr()
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "is the command's own input" in err or "would replace a result of" in err, err
    assert model.read_bytes() == before and (run / "result.json").read_text() == "{}"
    assert (run / "config.toml").read_text() == "# the run's"
    from eqpdenet.app.runfolder import check_output_keeps

    check_output_keeps(run / "summary.json", "--json", [model])  # a new file: fine
    (run / "summary.json").write_text("earlier")
    check_output_keeps(run / "summary.json", "--json", [model])  # the user's earlier summary


def test_export_and_every_atomic_write_follow_a_symbolic_link_and_keep_it(checkpoint, tmp_path,
                                                                          capsys):
    """``export --out`` and ``atomic_write`` (``evaluate --json``, run files, tables) onto a link
    write the file it leads to, relative links read from the link's folder, a dangling link's
    target created; they replaced the link with a regular file (docs/reliability.md: "Symbolic
    links are followed, never replaced")."""
    import os

    from eqpdenet.app.files import atomic_write

    data = data_dir_or_skip()
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "real.pt2").write_bytes(b"old")
    os.symlink("deploy/real.pt2", tmp_path / "current.pt2")
    status = main(["export", str(checkpoint), "--format", "exported-program", "--out",
                   str(tmp_path / "current.pt2"), "--images", "20", "--data-dir", str(data)])
    assert status == 0, capsys.readouterr().err
    assert (tmp_path / "current.pt2").is_symlink()
    assert (deploy / "real.pt2").read_bytes()[:2] == b"PK"  # a zip: torch.export.save's file
    assert sorted(p.name for p in deploy.iterdir()) == ["real.pt2"]

    (deploy / "summary.json").write_text("{}")
    os.symlink("deploy/summary.json", tmp_path / "middle.json")
    os.symlink("middle.json", tmp_path / "summary.json")
    os.symlink(str(deploy / "new.json"), tmp_path / "dangling.json")
    atomic_write(tmp_path / "summary.json", b'{"accuracy": 97.5}\n')
    atomic_write(tmp_path / "dangling.json", b"[]\n")
    assert (tmp_path / "summary.json").is_symlink() and (tmp_path / "middle.json").is_symlink()
    assert (tmp_path / "dangling.json").is_symlink()
    assert (deploy / "summary.json").read_text() == '{"accuracy": 97.5}\n'
    assert (deploy / "new.json").read_text() == "[]\n"
    assert sorted(p.name for p in deploy.iterdir()) == ["new.json", "real.pt2", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.pt2", "dangling.json", "deploy",
                                                          "middle.json", "summary.json"]
    os.symlink("loop.json", tmp_path / "loop.json")
    with pytest.raises(OSError, match=r"Too many levels of symbolic links: '.*loop\.json'"):
        atomic_write(tmp_path / "loop.json", b"{}")
