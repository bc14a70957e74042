"""``figure`` refuses what it would ignore and names its options, and says what a learned PDE that
blows up is; ``--set``'s help and errors show each command's own field paths; ``describe`` says
what an invariant head reads and prints no formula that is not one."""

from __future__ import annotations

import pytest
import torch

from eqpdenet.analysis.describe import describe_model
from eqpdenet.app import cli
from eqpdenet.app.cli import build_parser, main
from eqpdenet.models import EqPdeNet
from eqpdenet.pde import LayerConfig
from helpers import save_blowing_up_checkpoint


def _run(argv, capsys) -> tuple[int, list[str]]:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's refusals
        status = exit_.code
    return status, capsys.readouterr().err.strip().splitlines()


def _error(text: str) -> list[str]:
    return [f"eqpdenet: error: {text} (EQPDENET_DEBUG=1 shows the traceback)"]


@pytest.fixture
def no_digits(monkeypatch):
    def forbidden(*args):
        raise AssertionError("the digits were loaded before the problem was found")

    monkeypatch.setattr(cli, "_load_digits", forbidden)


def test_figure_refuses_a_checkpoint_it_would_not_draw(tmp_path, capsys, no_digits):
    """``--checkpoint`` without ``--pde INDEX`` drew the heat equation, the checkpoint unused."""
    out = tmp_path / "f.png"
    status, err = _run(["figure", "diagram", "--checkpoint", str(tmp_path / "m.pt"), "--out",
                        str(out)], capsys)
    assert status == 2 and err == _error(
        f"--checkpoint {tmp_path / 'm.pt'}: the figure draws one of its learned PDEs when --pde "
        f"names its index (--pde 0, 1, ...); with --pde heat it draws the heat equation and would "
        f"not use the checkpoint: add --pde INDEX, or leave --checkpoint out")
    # --T and --dt are the heat equation's: a learned PDE keeps its own
    status, err = _run(["figure", "diagram", "--pde", "0", "--checkpoint", str(tmp_path / "m.pt"),
                        "--T", "1", "--out", str(out)], capsys)
    assert status == 2 and err == _error(
        "--T sets the heat equation's time; a learned PDE (--pde 0) is drawn with the T and dt it "
        "was trained with: leave --T out")
    assert not out.exists()


@pytest.mark.parametrize("text", ["²", "-1", "1.5", "wave", ""])
def test_figure_pde_is_heat_or_an_index_named_by_its_option(text, tmp_path, capsys, no_digits):
    """``--pde ²`` said "invalid literal for int() with base 10: '²'", naming no option
    (``str.isdigit`` takes superscripts, ``int`` does not)."""
    status, err = _run(["figure", "diagram", "--pde", text, "--checkpoint", str(tmp_path / "m.pt"),
                        "--out", str(tmp_path / "f.png")], capsys)
    assert status == 2
    assert err[-1] == (f"eqpdenet figure: error: argument --pde: {text!r} is not 'heat' or the "
                       f"index of a learned PDE (0, 1, ...)")


def test_a_learned_pde_that_blows_up_gets_figures_own_explanation(tmp_path, capsys,
                                                                   monkeypatch):
    """It got the training advice ("... or lower the learning rate"), which describe, for the
    same checkpoint, does not give."""
    save_blowing_up_checkpoint(tmp_path / "model.pt")  # u_t = 100 |∇u|²
    image = torch.zeros(1, 1, 28, 28)
    image[:, :, 8:20, 12:16] = 1.0
    monkeypatch.setattr(cli, "_load_digits", lambda data_dir, samples: image)
    out = tmp_path / "f.png"
    status, err = _run(["figure", "diagram", "--pde", "0", "--checkpoint",
                        str(tmp_path / "model.pt"), "--sample", "3", "--out", str(out)], capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith("eqpdenet: error: PDE 'pde0:se2' produced a non-finite state")
    assert ("The checkpoint's learned PDE 0 (pde0:se2) blows up on MNIST test #3 or on its copy "
            "moved by g, under its own explicit Euler scheme: that is the trained model's "
            "behaviour, which figure draws and does not change") in err[0]
    assert f"Nothing was written to {out}; another --sample may stay finite." in err[0]
    assert "learning rate" not in err[0] and not out.exists()


def _help(command: str) -> str:
    parser = build_parser()
    [commands] = [a for a in parser._subparsers._group_actions]
    return " ".join(commands.choices[command].format_help().split())


@pytest.mark.parametrize("command, example", [
    ("train", "--set model.layer.dt=0.05"), ("reproduce", "--set base.model.layer.dt=0.05"),
    ("benchmark", "--set base.model.layer.dt=0.05"), ("study", "--set base.model.layer.dt=0.05")])
def test_set_help_gives_each_commands_own_path(command, example):
    """The help of every command said ``--set model.layer.dt=0.05``, which the sweeps refuse."""
    assert f"override one field, e.g. {example} (repeatable)" in _help(command)


@pytest.mark.parametrize("argv, message", [
    (["study", "--set", "model.layer.dt=0.05"],
     "--set model.layer.dt: 'model' is not a config section; the runs' experiment is under "
     "base: --set base.model.layer.dt=0.05"),
    (["reproduce", "--set", "scenarios=['iso']"],
     "--set scenarios: unknown field 'scenarios'; known: ['base', 'checkpoint_seeds', "
     "'hidden_sizes', 'models', 'seeds']; the runs' experiment is under base: --set "
     "base.scenarios=['iso']"),
    (["train", "--set", "base.train.epochs=3"],
     "--set base.train.epochs: 'base' is not a config section; this configuration is one "
     "experiment, without base: --set train.epochs=3"),
])
def test_set_errors_say_the_path_meant(argv, message, tmp_path, capsys, no_data):
    out = tmp_path / "o"
    status, err = _run([*argv, "--out", str(out), "--no-progress"], capsys)
    assert status == 2 and err == _error(message)
    assert not out.exists()


def test_describe_says_what_an_invariant_head_reads_and_no_latex_that_is_not():
    """"perceptron 40-256-256-10" said nothing of what the 40 inputs are, and a concat reduction
    was printed again after "LaTeX:", though it is a word, not a formula."""
    layer = LayerConfig.paper()
    layer.reduction = "concat"
    text = describe_model(EqPdeNet(hidden=4, layer=layer, head="invariant"))
    lines = text.splitlines()
    assert lines[0].endswith(
        "4 PDEs, perceptron 40-4-4-10 on the mean and the maximum over the image of the 5 se2 "
        "invariants (u, grad_sq, laplacian, grad_hess_grad, hess_sq) of each of the 4 output "
        "maps, batch-normalised")
    assert lines[-2:] == ["Reduction", "  reduction: concat of the 4 evolved images"]
    paper = describe_model(EqPdeNet(hidden=4)).splitlines()
    assert paper[0].endswith("4 PDEs, perceptron 784-4-4-10")  # the paper's head: its pixels
    assert paper[-3] == "Reduction" and paper[-1].startswith("  LaTeX: u_{\\mathrm{out}} = ")
