"""No command prints a traceback (issue 14, item 6): every subcommand with bad input ends with one
line naming the problem and a non-zero status; ``EQPDENET_DEBUG=1`` shows the traceback.

The cases run in-process (an exception escaping ``main`` fails the test); two run as real
processes to see exactly what a user sees. ``benchmarks/reliability_campaign.py`` runs a wider
campaign as real processes and writes the table of ``docs/reliability.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_helpers import data_dir_or_skip
from eqpdenet.app import cli, training
from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run(argv, capsys) -> tuple[int, str]:
    """``eqpdenet argv`` in-process: the exit status and stderr (argparse exits via SystemExit)."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def assert_one_line(status: int, err: str, message: str) -> None:
    assert status not in (0, None), err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    assert message in errors[0], err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small valid checkpoint, an edited one, a folder, a file, a corrupt results folder."""
    root = tmp_path_factory.mktemp("bad-inputs")
    config = apply_overrides(ExperimentConfig(), ["model.hidden=8"])
    torch.manual_seed(0)
    training.save_checkpoint(root / "model.pt", build_model(config.model), config)
    payload = torch.load(root / "model.pt", weights_only=True)
    payload["config"]["model"]["hidden"] = 32
    torch.save(payload, root / "edited.pt")
    (root / "folder").mkdir()
    (root / "folder.png").mkdir()  # a folder named as the file figure would write
    (root / "file.txt").write_text("not a folder, not a checkpoint, not TOML = [")
    (root / "results").mkdir()
    (root / "results" / "results.jsonl").write_text('{"model": "fcnn"}\n{"model": \n')
    (root / "binary.toml").write_bytes(b"\xff\xfe\x00binary")
    return root


CASES = [  # (id, argv with {root} for the files fixture, part of the message)
    ("no-command", [], None),
    ("unknown-command", ["trian"], "invalid choice: 'trian'"),
    ("info-extra", ["info", "extra"], "unrecognized arguments: extra"),
    ("train-out-is-file", ["train", "--out", "{root}/file.txt"], "is a file, not a folder"),
    ("train-out-under-file", ["train", "--out", "{root}/file.txt/run"], "is a file, not a folder"),
    ("train-epochs-0", ["train", "--out", "{root}/r", "--epochs", "0"], "train.epochs: must be"),
    ("train-epochs-text", ["train", "--out", "{root}/r", "--epochs", "ten"], "invalid int value"),
    ("train-model", ["train", "--out", "{root}/r", "--model", "resnet"], "invalid choice: 'resnet'"),
    ("train-set-section", ["train", "--out", "{root}/r", "--set", "model=3"],
     "model: expects a table of ModelConfig fields, got 3"),
    ("train-set-unknown", ["train", "--out", "{root}/r", "--set", "train.lrr=1"],
     "unknown field 'lrr'"),
    ("train-set-no-equals", ["train", "--out", "{root}/r", "--set", "train.lr"],
     "--set expects section.field=value"),
    ("train-lr-inf", ["train", "--out", "{root}/r", "--set", "train.lr=inf"],
     "train.lr: must be a finite number, got inf"),
    ("train-config-folder", ["train", "--out", "{root}/r", "--config", "{root}/folder"],
     "is a folder; give the TOML file in it"),
    ("train-config-missing", ["train", "--out", "{root}/r", "--config", "{root}/none.toml"],
     "config file not found"),
    ("train-config-not-toml", ["train", "--out", "{root}/r", "--config", "{root}/file.txt"],
     "is not valid TOML"),
    ("train-config-binary", ["train", "--out", "{root}/r", "--config", "{root}/binary.toml"],
     "is not UTF-8 text"),
    ("train-steps", ["train", "--out", "{root}/r", "--set", "model.layer.T=1e6", "--set",
                     "model.layer.dt=1e-3"], "Euler steps per PDE, more than the bound"),
    ("train-no-data", ["train", "--out", "{root}/r", "--data-dir", "{root}/folder", "--cache-dir",
                       "{root}/cache"], "mnist"),
    ("evaluate-missing", ["evaluate", "{root}/none.pt"], "checkpoint not found"),
    ("evaluate-folder", ["evaluate", "{root}/folder"], "is a folder; give the checkpoint file"),
    ("evaluate-not-checkpoint", ["evaluate", "{root}/file.txt"],
     "is not a readable eqpdenet checkpoint"),
    ("evaluate-edited", ["evaluate", "{root}/edited.pt"],
     "model.hidden is 32 in the configuration but 8 in the weights"),
    ("evaluate-instances-0", ["evaluate", "{root}/model.pt", "--instances", "0"],
     "'0' is not a number of instances from 1 to 1000"),
    ("evaluate-scenario", ["evaluate", "{root}/model.pt", "--scenarios", "rotated"],
     "unknown scenario 'rotated'"),
    ("export-format", ["export", "{root}/model.pt", "--format", "tflite", "--out",
                       "{root}/m.onnx"], "unknown export format 'tflite'; known: exported-program"),
    ("export-not-checkpoint", ["export", "{root}/file.txt", "--format", "exported-program",
                               "--out", "{root}/m.pt2"], "is not a readable eqpdenet checkpoint"),
    ("export-checkpoint-missing", ["export", "{root}/none.pt", "--format", "exported-program",
                                   "--out", "{root}/m.pt2"], "checkpoint not found"),
    ("export-out-folder", ["export", "{root}/model.pt", "--format", "exported-program", "--out",
                           "{root}/folder"], "it is a folder; give a file name"),
    ("export-out-no-folder", ["export", "{root}/model.pt", "--format", "exported-program",
                              "--out", "{root}/none/m.pt2"], "the folder {root}/none does not"),
    ("export-out-under-file", ["export", "{root}/model.pt", "--format", "exported-program",
                               "--out", "{root}/file.txt/m.pt2"], "file.txt is a file, not a folder"),
    ("export-images-0", ["export", "{root}/model.pt", "--format", "onnx", "--out", "{root}/m",
                         "--images", "0"], "'0' is not a positive integer"),
    ("export-tolerance-nan", ["export", "{root}/model.pt", "--format", "onnx", "--out",
                              "{root}/m", "--tolerance", "nan"], "'nan' is not a positive number"),
    ("export-no-format", ["export", "{root}/model.pt", "--out", "{root}/m"],
     "the following arguments are required: --format"),
    ("reproduce-jobs-0", ["reproduce", "--out", "{root}/p", "--jobs", "0"],
     "'0' is not a positive integer"),
    ("reproduce-no-seeds", ["reproduce", "--out", "{root}/p", "--set", "seeds=[]"],
     "seeds: must be distinct and non-empty"),
    ("reproduce-out-is-file", ["reproduce", "--out", "{root}/file.txt"], "is a file"),
    ("study-stages", ["study", "--out", "{root}/s", "--stages", "all"], "invalid choice: 'all'"),
    ("study-epochs-0", ["study", "--out", "{root}/s", "--epochs", "0"], "train.epochs: must be"),
    ("symbolic-group", ["symbolic", "lorentz"], "lorentz"),
    ("report-missing", ["report", "{root}/none"], "no results in"),
    ("report-corrupt", ["report", "{root}/results"], "results.jsonl:2: not a JSON line"),
    ("equivariance-T-0", ["equivariance", "--T", "0"], "'0' is not a positive number"),
    ("equivariance-dt-nan", ["equivariance", "--dt", "nan"], "'nan' is not a positive number"),
    ("equivariance-checkpoint", ["equivariance", "--quick", "--checkpoint", "{root}/none.pt",
                                 "--out", "{root}/eq"], "checkpoint not found"),
    ("describe-missing", ["describe", "{root}/none.pt"], "checkpoint not found"),
    ("describe-frames-0", ["describe", "{root}/model.pt", "--frames", "0"],
     "'0' is not a number of frames from 1 to 64"),
    ("figure-which", ["figure", "diagramm", "--out", "{root}/f.png"], "invalid choice"),
    ("figure-angle-nan", ["figure", "diagram", "--angle", "nan", "--out", "{root}/f.png"],
     "'nan' is not an angle in degrees within ±1e6"),
    ("figure-angle-huge", ["figure", "diagram", "--angle", "1e40", "--out", "{root}/f.png"],
     "'1e40' is not an angle in degrees within ±1e6"),
    ("figure-scale-0", ["figure", "diagram", "--scale", "0", "--out", "{root}/f.png"],
     "'0' is not a scale between 0.001 and 1000"),
    ("figure-scale-tiny", ["figure", "diagram", "--scale", "1e-300", "--out", "{root}/f.png"],
     "'1e-300' is not a scale between 0.001 and 1000"),
    ("figure-shift-huge", ["figure", "diagram", "--shift", "1e40", "0", "--out", "{root}/f.png"],
     "'1e40' is not a shift in pixels within ±10000"),
    ("figure-sample-negative", ["figure", "diagram", "--sample", "-1", "--out", "{root}/f.png"],
     "'-1' is not an integer >= 0"),
]


@pytest.mark.parametrize("case, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_not_a_traceback(case, argv, message, files, capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    status, err = run([a.format(root=files) for a in argv], capsys)
    if message is None:  # no command: the help, status 2
        assert status == 2 and "Traceback" not in err
        return
    assert_one_line(status, err, message.format(root=files))


DATA_CASES = [
    ("figure-sample-too-large", ["figure", "diagram", "--sample", "99999", "--out",
                                 "{root}/f.png"], "sample 99999: MNIST's test set has digits"),
    ("figure-pde-without-checkpoint", ["figure", "diagram", "--pde", "1", "--out",
                                       "{root}/f.png"], "--pde INDEX needs --checkpoint"),
    ("figure-pde-index", ["figure", "diagram", "--pde", "7", "--checkpoint", "{root}/model.pt",
                          "--out", "{root}/f.png"], "--pde 7: the checkpoint has 4 PDEs"),
    ("figure-pde-text", ["figure", "diagram", "--pde", "wave", "--checkpoint",
                         "{root}/model.pt", "--out", "{root}/f.png"], "'heat' or the index"),
    ("figure-out-is-folder", ["figure", "diagram", "--out", "{root}/folder.png"],
     "a folder is in the way of the file"),
    ("describe-samples", ["describe", "{root}/model.pt", "--out", "{root}/d", "--samples",
                          "10000"], "sample 10000: MNIST's test set has digits 0 ... 9999"),
]


@pytest.mark.parametrize("case, argv, message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_input_with_data_is_one_line(case, argv, message, files, capsys, monkeypatch):
    data = data_dir_or_skip()
    monkeypatch.setenv("EQPDENET_DATA", str(data))
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    status, err = run([a.format(root=files) for a in argv] + ["--data-dir", str(data)], capsys)
    assert_one_line(status, err, message.format(root=files))


def test_an_unexpected_exception_is_one_line_and_debug_shows_it(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("division by zero in a bug")

    monkeypatch.setattr(cli, "_info", broken)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    status, err = run(["info"], capsys)
    assert status == 1
    assert_one_line(status, err, "unexpected ZeroDivisionError: division by zero in a bug (a bug "
                                 "in eqpdenet? please report it with the traceback) "
                                 "(EQPDENET_DEBUG=1 shows the traceback)")
    monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
    with pytest.raises(ZeroDivisionError):
        main(["info"])


def test_multi_line_messages_become_one_line():
    text, status = cli.describe_error(ValueError("first line\n  second line"))
    assert (text, status) == ("first line second line", 2)
    text, status = cli.describe_error(OSError(28, "No space left on device", "/full/model.pt"))
    assert (text, status) == ("No space left on device: /full/model.pt", 2)


@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "{file}", "--no-progress"], "is a file, not a folder"),
    (["evaluate", "{file}"], "is not a readable eqpdenet checkpoint"),
])
def test_a_real_process_prints_one_line(argv, message, tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("x")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(cli.DEBUG_VARIABLE, None)
    done = subprocess.run([sys.executable, "-m", "eqpdenet", *[a.format(file=file) for a in argv]],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert done.stderr.startswith("eqpdenet: error: ")


def test_small_messages_say_what_is_true(tmp_path, capsys):
    """describe --out of a network without PDEs does not
    say its PDEs were printed; figure --pde on a model without an image-plane layer says what
    figure draws; an interrupted command that resumes nothing does not say it resumes."""
    from eqpdenet.app import cli
    from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
    from eqpdenet.app.training import save_checkpoint

    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4"])
    save_checkpoint(tmp_path / "fcnn.pt", build_model(config.model), config)
    assert main(["describe", str(tmp_path / "fcnn.pt"), "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert "this fcnn checkpoint: it has no PDEs" in err and "printed above" not in err
    assert main(["figure", "diagram", "--pde", "0", "--checkpoint", str(tmp_path / "fcnn.pt"),
                 "--out", str(tmp_path / "f.png")]) == 2
    assert "(FCNN) has no PDE layer on the image plane" in capsys.readouterr().err

    def interrupted(_args):
        raise KeyboardInterrupt

    parser = cli.build_parser
    try:
        cli.build_parser = lambda: _with_handler(parser(), interrupted)
        assert main(["symbolic", "se2"]) == 130
    finally:
        cli.build_parser = parser
    assert "interrupted: no result was written" in capsys.readouterr().err


def _with_handler(parser, handler):
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(handler=handler)
    return parser


def _npz_checkpoints(folder: Path, size: int = 16) -> Path:
    """An FCNN and an EqPdeNet checkpoint of a data file of ``size`` x ``size`` images (built,
    not trained), and the data file."""
    import numpy as np

    data = folder / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.integers(0, 256, (40, size, size), dtype=np.uint8),
             y_train=np.arange(40) % 4, x_test=rng.integers(0, 256, (12, size, size), dtype=np.uint8),
             y_test=np.arange(12) % 4)
    for kind in ("fcnn", "eqpdenet"):
        config = apply_overrides(ExperimentConfig(), [
            f"model.kind='{kind}'", "model.hidden=4", f"data.dataset='{data}'",
            f"model.image_size={size}", "model.classes=4"])
        torch.manual_seed(0)
        training.save_checkpoint(folder / f"{kind}.pt", build_model(config.model), config)
    return data


def test_export_says_the_data_no_longer_match_the_checkpoint(tmp_path, capsys):
    """The checkpoint's data file replaced by one of other images: export said "FCNN cannot be
    exported: torch.export failed with InputError: expected images of shape ..."; it says what
    evaluate says, before any export, and so does describe --out."""
    data = _npz_checkpoints(tmp_path)
    (tmp_path / "other").mkdir()
    _npz_checkpoints(tmp_path / "other", size=32).replace(data)
    for kind, argv in (("fcnn", ["export", str(tmp_path / "fcnn.pt"), "--format",
                                 "exported-program", "--out", str(tmp_path / "m.pt2")]),
                       ("fcnn", ["evaluate", str(tmp_path / "fcnn.pt")]),
                       # describe drew the evolutions of a 16x16 model on 32x32 images
                       ("eqpdenet", ["describe", str(tmp_path / "eqpdenet.pt"), "--out",
                                     str(tmp_path / "d")])):
        status, err = run(argv, capsys)
        assert_one_line(status, err, f"{data}: 4 classes of 1x32x32 images, but the model of "
                                     f"{tmp_path / kind}.pt was trained on 4 classes of 1x16x16 "
                                     f"images (channels x height x width): not the data set it "
                                     f"was trained on")
    assert not (tmp_path / "m.pt2").exists() and not (tmp_path / "d").exists()


def test_a_checkpoints_data_file_moved_away_is_said_to_come_from_the_checkpoint(tmp_path, capsys):
    data = _npz_checkpoints(tmp_path)
    data.rename(tmp_path / "moved.npz")
    fcnn, eqpdenet = tmp_path / "fcnn.pt", tmp_path / "eqpdenet.pt"
    for checkpoint, argv in (
            (fcnn, ["evaluate", str(fcnn)]),
            (fcnn, ["export", str(fcnn), "--format", "exported-program", "--out",
                    str(tmp_path / "m.pt2")]),
            (eqpdenet, ["describe", str(eqpdenet), "--out", str(tmp_path / "d")])):
        status, err = run(argv, capsys)
        command = argv[0]
        assert_one_line(status, err, (
            f"{checkpoint} was trained on the data set '{data}' (the path its configuration recorded), "
            f"which is no longer there (moved or deleted?); put the data back at that path, or a "
            f"link to its new place there (ln -s NEW {data}): {command} reads the data set the "
            f"checkpoint names and has no option to choose another"))
    assert not (tmp_path / "m.pt2").exists() and not (tmp_path / "d").exists()
