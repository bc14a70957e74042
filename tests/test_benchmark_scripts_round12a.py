"""Round 12 (a): the diagnostics of ``benchmarks/`` on a model whose PDE blows up on some images
(left out of every measure, the same images in every paired comparison, and counted), the border
probe on a model that takes only its trained image size, non-finite float arguments and a
missing benchmark entry (one line, exit 2).

The scripts' ``main`` runs in this process on a tiny stand-in model and a few synthetic digits
(``load_checkpoint`` and ``prepare_data`` replaced), so that each test takes well under a second;
the two quoted commands that fail before any data are loaded run as subprocesses.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from eqpdenet.app.runstore import load_records
from eqpdenet.errors import NonFiniteStateError
from eqpdenet.models.perceptron import FCNN

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_round12a", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


class _BlowsUp(nn.Module):
    """Logits of a linear map of a few global features (any image size); raises
    :class:`NonFiniteStateError` for the whole batch, as a PDE does, when an image's centre pixel
    is bright (> 4.5: only the marked digits, under every resampling the scripts apply)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(5, 10)
        self.image_size, self.in_channels = 28, 1

    def features(self, x):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        return torch.stack([x.mean((1, 2, 3)), x.amax((1, 2, 3)), x.std((1, 2, 3)),
                            x[:, 0, h - 3, w + 2], x[:, 0, h + 2, w - 1]], 1)

    def plain(self, x):
        """The logits, never blowing up."""
        return self.linear(self.features(x))

    def forward(self, x):
        if (x[:, 0, x.shape[-2] // 2, x.shape[-1] // 2] > 4.5).any():
            raise NonFiniteStateError("pde0:se2", 3, 1.0)
        return self.plain(x)


def _digits(count: int = 6) -> torch.Tensor:
    """Dim random digits (values below 1: never blowing up) with a blob off the centre."""
    images = 0.3 * torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    images[:, :, 9:16, 10:18] += 0.7
    return images


def _bright_centre(images: torch.Tensor, index: int) -> torch.Tensor:
    """``images`` with digit ``index`` bright over a block about the centre (blows up under every
    rotation, blur, whole-pixel move of up to 10 pixels and frame)."""
    images = images.clone()
    images[index, :, 8:20, 4:24] = 5.0
    return images


def _patch(monkeypatch, module, model, images, labels=None):
    """``module``'s ``load_checkpoint`` gives ``model``, its ``prepare_data`` ``images``."""
    labels = torch.arange(len(images)) % 10 if labels is None else labels
    test = SimpleNamespace(images=images, labels=labels)

    class Data(SimpleNamespace):
        def __getitem__(self, key):
            return getattr(self, key)

    config = SimpleNamespace(data="data", model=SimpleNamespace(kind="stand-in"))
    monkeypatch.setattr(module, "load_checkpoint", lambda path: (model, config, None))
    monkeypatch.setattr(module, "prepare_data", lambda data: Data(test=test))


def _main(monkeypatch, module, *argv) -> int:
    monkeypatch.setattr(sys, "argv", [f"{module.__name__.split('_round12a')[0]}.py", *map(str, argv)])
    try:
        module.main()
    except SystemExit as stop:
        return stop.code
    return 0


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "stand-in.pt"
    path.write_bytes(b"")  # only its existence is checked; load_checkpoint is replaced
    return path


# 1. logit_outliers.py


def test_logit_outliers_leaves_out_and_counts_images_without_logits(monkeypatch, capsys,
                                                                    checkpoint):
    script = _load("logit_outliers")
    images = _digits()
    _patch(monkeypatch, script, _BlowsUp(), torch.cat([images[:4], images[5:]]))
    assert _main(monkeypatch, script, checkpoint, "--images", 5) == 0
    clean = capsys.readouterr().out.splitlines()[-1]
    _patch(monkeypatch, script, _BlowsUp(), _bright_centre(images, 4))
    assert _main(monkeypatch, script, checkpoint, "--images", 6) == 0
    lines = capsys.readouterr().out.splitlines()
    # The same numbers as without the digit, and how many were left out.
    assert lines[-1] == clean.removesuffix(" |") + " (1 images without logits, left out) |"
    assert "nan" not in lines[-1]


def test_logit_outliers_on_a_model_that_blows_up_on_every_image(monkeypatch, capsys, checkpoint):
    script = _load("logit_outliers")
    images = _digits(3)
    for index in range(3):
        images = _bright_centre(images, index)
    _patch(monkeypatch, script, _BlowsUp(), images)
    assert _main(monkeypatch, script, checkpoint, "--images", 3) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row == f"| {checkpoint} | – | – | – | – | – | – (3 images without logits, left out) |"


@pytest.mark.parametrize("degrees", ["inf", "nan", "-inf"])
def test_logit_outliers_refuses_a_non_finite_angle(monkeypatch, capsys, checkpoint, degrees):
    script = _load("logit_outliers")
    _patch(monkeypatch, script, _BlowsUp(), _digits())
    assert _main(monkeypatch, script, checkpoint, f"--degrees={degrees}") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"logit_outliers.py: error: argument --degrees: must be a finite number, "
                       f"got {degrees!r}")


# 2. confusions.py


def test_confusions_leaves_a_digit_without_logits_out_of_every_scenario(monkeypatch, capsys,
                                                                       checkpoint, tmp_path):
    script = _load("confusions")
    images = _bright_centre(_digits(), 4)  # blows up in both scenarios
    images[1, :, 8:20, 0:6] = 5.0  # blows up only when moved 10 pixels right, onto the centre
    scenarios = ["test", "move:0,10"]
    _patch(monkeypatch, script, _BlowsUp(), images)
    out = tmp_path / "out"
    assert _main(monkeypatch, script, checkpoint, "--images", 6, "--scenarios", *scenarios,
                 "--threads", 1, "--out", out) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["images_without_logits"] == {"test": 1, "move:0,10": 2}
    assert record["left_out"] == 2
    # Both scenarios over the same four digits: the other four, as the model predicts them.
    keep = torch.tensor([True, False, True, True, False, True])
    labels = torch.arange(6) % 10
    for name in scenarios:
        moved = script.transform(name, images, 0)[keep]
        predicted = _BlowsUp().plain(moved).argmax(1)
        assert record[name] == script.summarize(script.confusion(predicted, labels[keep]))
        assert record[name]["images"] == 4
    md = (out / "confusions.md").read_text().splitlines()
    assert md[-1] == ("Digits left out of every scenario (the model's PDE blew up on them in at "
                      "least one): stand-in: 2.")


def test_confusions_on_a_model_that_blows_up_on_every_image(monkeypatch, capsys, checkpoint):
    script = _load("confusions")
    images = _digits(2)
    images = _bright_centre(_bright_centre(images, 0), 1)
    _patch(monkeypatch, script, _BlowsUp(), images)
    assert _main(monkeypatch, script, checkpoint, "--images", 2, "--scenarios", "test") == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["left_out"] == 2 and record["test"]["images"] == 0
    assert math.isnan(record["test"]["accuracy"])


# 3. round_trip_probe.py


def test_round_trip_probe_leaves_the_same_images_out_of_every_measure():
    script = _load("round_trip_probe")
    images = _bright_centre(_digits(), 4)
    # Digit 2 (moved right by the 1-pixel move: an even index) blows up only in that pass: its
    # bright block ends one pixel left of the centre.
    images[2, :, 8:20, 2:14] = 5.0
    model = _BlowsUp()
    record = script.probe(model, images, 37.0, 0.5)
    assert record["images_without_logits"] == 2
    keep = torch.tensor([True, True, False, True, False, True])

    @torch.no_grad()
    def relative(moved, reference):
        a, b = model.plain(moved[keep]).double(), model.plain(reference[keep]).double()
        return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))

    back = script.rotate(script.rotate(images, math.radians(37)), math.radians(-37))
    step = torch.tensor([[0, 1], [1, 0]] * 3)
    half = torch.full((6, 2), 0.5)
    expected = {
        "round_trip": relative(back, images),
        "moved_1px": relative(script.moved_by(images, step), images),
        "half_px_and_back": relative(script.translate(script.translate(images, half), -half),
                                     images),
        "blur_0.5": relative(script.blurred(images, 0.5), images)}
    for key, value in expected.items():
        assert record[key] == pytest.approx(value, rel=1e-5), key
    assert all(not math.isnan(v) for v in record.values())


@pytest.mark.parametrize("option, value, line", [
    ("--blur", "inf", "argument --blur: must be a finite number, got 'inf'"),
    ("--blur", "nan", "argument --blur: must be a finite number, got 'nan'"),
    ("--blur", "0", "argument --blur: must be above 0, got 0"),
    ("--degrees", "inf", "argument --degrees: must be a finite number, got 'inf'"),
    ("--degrees", "nan", "argument --degrees: must be a finite number, got 'nan'"),
])
def test_round_trip_probe_refuses_non_finite_numbers(monkeypatch, capsys, checkpoint, option,
                                                     value, line):
    script = _load("round_trip_probe")
    _patch(monkeypatch, script, _BlowsUp(), _digits())
    monkeypatch.setattr(script, "load_checkpoint", lambda path: pytest.fail("loaded"))
    assert _main(monkeypatch, script, checkpoint, option, value) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"round_trip_probe.py: error: {line}"


# 4. border_sensitivity.py


def test_border_sensitivity_leaves_out_and_counts_images_without_logits(monkeypatch, capsys,
                                                                       checkpoint):
    script = _load("border_sensitivity")
    images = _digits()
    _patch(monkeypatch, script, _BlowsUp(), torch.cat([images[:4], images[5:]]),
           labels=torch.tensor([0, 1, 2, 3, 5]))
    assert _main(monkeypatch, script, checkpoint, "--images", 5, "--threads", 1) == 0
    clean = json.loads(capsys.readouterr().out.splitlines()[-1])
    _patch(monkeypatch, script, _BlowsUp(), _bright_centre(images, 4),
           labels=torch.arange(6))
    assert _main(monkeypatch, script, checkpoint, "--images", 6, "--threads", 1) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["images_without_logits"] == 1 and record["canvas_without_logits"] == 0
    assert record["accuracy"] == clean["accuracy"]
    assert record["accuracy_framed"] == clean["accuracy_framed"]
    assert record["canvas_logit_change"] == clean["canvas_logit_change"]


def test_border_sensitivity_leaves_out_canvas_strokes_without_logits(monkeypatch):
    script = _load("border_sensitivity")

    class BlowsUpOnTheMovedStroke(_BlowsUp):
        """Blows up on stroke 1 moved by 8 pixels (marked by its shifted top-left corner)."""

        def forward(self, x):
            if (x[:, 0, 8, 8] > 0).any():
                raise NonFiniteStateError("pde0:se2", 3, 1.0)
            return self.plain(x)

    model = BlowsUpOnTheMovedStroke()
    changes, left_out = script.canvas_changes(model)
    assert left_out == 0  # no stroke touches (8, 8): nothing left out
    real_pad = script.F.pad

    def pad(x, widths):  # stroke 1 marked at (0, 0): at (8, 8) once rolled by 8
        x = real_pad(x, widths)
        x[1, 0, 0, 0] = 1.0
        return x

    monkeypatch.setattr(script.F, "pad", pad)
    changes, left_out = script.canvas_changes(model)
    assert left_out == 1 and not any(math.isnan(c) for c in changes)


def test_border_sensitivity_refuses_a_model_of_one_image_size_before_loading_data(
        monkeypatch, capsys, checkpoint):
    script = _load("border_sensitivity")
    torch.manual_seed(0)
    _patch(monkeypatch, script, FCNN(hidden=4).eval(), _digits())
    monkeypatch.setattr(script, "prepare_data", lambda data: pytest.fail("data loaded"))
    assert _main(monkeypatch, script, checkpoint, "--images", 6, "--threads", 1) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"border_sensitivity.py: error: {checkpoint}: its FCNN takes only 28x28 "
                          f"images, not the 36x36 ones this script feeds it (")
    assert err.endswith("this script needs a fully convolutional model with global pooling, such "
                        "as lifted_pde or gcnn")


def _script(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    env.pop("EQPDENET_DATA", None)  # both cases are refused before any data are needed
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_border_sensitivity_refuses_the_committed_fcnn_checkpoint():
    done = _script("benchmarks/border_sensitivity.py", "results/benchmark/checkpoints/fcnn-seed0.pt",
                   "--images", "10", "--threads", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr and not done.stdout
    assert done.stderr.splitlines()[-1].startswith(
        "border_sensitivity.py: error: results/benchmark/checkpoints/fcnn-seed0.pt: its FCNN "
        "takes only 28x28 images, not the 36x36 ones")


# 5. compare_entries.py


def test_compare_entries_answers_a_missing_entry_with_one_line_and_exit_2():
    done = _script("benchmarks/compare_entries.py", "results/benchmark-full", "gcnn", "no-such")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("compare_entries.py: error: results/benchmark-full: no finished run of "
                           "no-such\n")


def test_compare_entries_says_which_measures_a_folder_did_not_record():
    """``results/benchmark`` was recorded before the round-trip change existed: that row says
    so, the others are the runs' values (it raised a KeyError)."""
    done = _script("benchmarks/compare_entries.py", "results/benchmark", "gcnn")
    assert done.returncode == 0, done.stderr
    rows = {line.split(" | ")[0]: line for line in done.stdout.splitlines()}
    assert rows["| logit change, 37° and back"].endswith("| not recorded |")
    (record,) = [r for r in load_records(ROOT / "results/benchmark").values()
                 if r.get("entry") == "gcnn"]
    assert rows["| test"] == f"| test | ≥ 98.3 | {record['accuracy']['test']:.2f} (–) |"
