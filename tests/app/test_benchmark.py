"""The robustness benchmark and data sets through the CLI, on a tiny synthetic data set."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from eqpdenet.analysis.robustness import logit_change, rotation_curve, scale_curve, shift_curve
from eqpdenet.app.cli import main
from eqpdenet.app.config import BenchmarkConfig, ExperimentConfig, apply_overrides
from eqpdenet.app.files import read_jsonl
from eqpdenet.app.training import prepare_data, resolve_for_data, train_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """Bars at 4 orientations-ish: class = which quarter of the image is bright (12x12)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"

    def make(n):
        labels = np.arange(n) % 4
        images = rng.integers(0, 40, (n, 12, 12)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            images[i, 6 * r:6 * r + 6, 6 * q:6 * q + 6] += 200
        return images, labels

    x_train, y_train = make(160)
    x_test, y_test = make(40)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


class SumModel(nn.Module):
    """Logits from the image's total intensity: invariant under every rotation of the grid."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 3)

    def forward(self, x):
        return self.linear(x.sum(dim=(1, 2, 3))[:, None])


def test_curves_of_an_invariant_model_are_flat_at_quarter_turns():
    torch.manual_seed(0)
    model, images = SumModel(), torch.rand(20, 1, 10, 10)
    labels = model(images).argmax(1)
    curve = rotation_curve(model, images, labels, [0, 90, 180, 270])
    assert curve == [100.0] * 4
    assert logit_change(model, images, 90) < 1e-6
    assert logit_change(model, images, 37) > 1e-3  # bilinear resampling changes the sum
    assert scale_curve(model, images, labels, [1.0]) == [100.0]
    assert shift_curve(model, images, labels, [0.0]) == [100.0]


def test_resolve_for_data_takes_sizes_classes_and_statistics(tiny):
    config = apply_overrides(ExperimentConfig(), [f"data.dataset='{tiny}'", "data.validation=40"])
    data = prepare_data(config.data)
    resolved = resolve_for_data(config, data)
    model = resolved.model
    assert (model.image_size, model.in_channels, model.classes) == (12, 1, 4)
    pixels = data["train"].images.double()  # 120 images: the validation 40 are excluded
    assert len(data["train"]) == 120 and len(data["validation"]) == 40
    assert model.input_mean == pytest.approx(float(pixels.mean()))
    assert model.input_std == pytest.approx(float(pixels.std()))
    fixed = apply_overrides(config, ["model.standardize='fixed'"])
    assert resolve_for_data(fixed, data).model.input_mean == 0.1307


def test_train_model_accepts_a_model_instance(tiny):
    config = apply_overrides(ExperimentConfig(), [f"data.dataset='{tiny}'", "train.epochs=2"])
    data = prepare_data(config.data)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 4))
    trained, history = train_model(config, data, model=model, progress=False)
    assert trained is model and len(history) == 2 and history[1]["loss"] < history[0]["loss"]


def test_train_cli_on_a_rotated_npz_data_set(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--dataset", tiny, "--rotated", "--model", "cnn",
                 "--epochs", "1", "--no-progress"]) == 0
    # The CNN ignores model.hidden: the summary line does not name a width it did not use.
    assert capsys.readouterr().out.startswith("cnn seed=0: test ")
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["data"]["rotated"] is True
    assert result["config"]["model"]["classes"] == 4 and result["config"]["model"]["image_size"] == 12


def test_describe_draws_the_checkpoints_own_test_images(tiny, tmp_path, capsys, monkeypatch):
    """``describe --out`` of an EqPdeNet trained on a user's data set evolves that data set's
    test images (it drew MNIST's, and without MNIST failed after claiming --out); a sample
    outside the test split is refused before anything is written."""
    from eqpdenet.app import figures

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--dataset", tiny, "--model", "eqpdenet",
                 "--hidden", "4", "--epochs", "1", "--no-progress"]) == 0
    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "no-mnist-here"))
    drawn = []
    monkeypatch.setattr(figures, "evolution_grid",
                        lambda layer, images, path, **kw: drawn.append((images, kw["labels"])))
    assert main(["describe", str(run / "model.pt"), "--out", str(tmp_path / "d"),
                 "--samples", "0", "3"]) == 0
    images, labels = drawn[0]
    assert labels == ["tiny.npz test #0", "tiny.npz test #3"]
    expected = torch.from_numpy(np.load(tiny)["x_test"][[0, 3]]).float()[:, None] / 255
    torch.testing.assert_close(images, expected)
    capsys.readouterr()
    assert main(["describe", str(run / "model.pt"), "--out", str(tmp_path / "e"),
                 "--samples", "40"]) == 2
    assert "--samples 40: the test split of tiny.npz has images 0 ... 39" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_benchmark_cli_end_to_end_and_resume(tiny, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["benchmark", "--out", str(out), "--no-progress", "--models", "cnn", "invariant-pde",
            "--set", f"base.data.dataset='{tiny}'", "--set", "seeds=[0, 1]",
            "--set", "base.train.epochs=1", "--set", "base.scenarios=['test', 'iso']",
            "--set", "base.model.invariant_pde.channels=[4, 6]",
            "--set", "base.model.invariant_pde.blocks=[1, 1]",
            "--set", "curves.images=20", "--set", "curves.angles=[0, 90, 45]",
            "--set", "curves.scales=[1.0]", "--set", "curves.shifts=[0, 1]"]
    assert main(args) == 0
    records = read_jsonl(out / "results.jsonl")
    assert sorted(r["key"] for r in records) == ["cnn-seed0", "cnn-seed1", "invariant-pde-seed0",
                                                 "invariant-pde-seed1"]
    # the models ran as one sweep: each record still names its entry
    assert all(r["key"] == f"{r['entry']}-seed{r['seed']}" for r in records)
    pde = next(r for r in records if r["key"] == "invariant-pde-seed0")
    assert pde["robustness"]["rotation"][0] == pde["robustness"]["rotation"][1]  # 0° and 90°
    assert pde["robustness"]["logit_change"]["90"] < 1e-4
    # rotated by 90 degrees and back is the identity on the grid: no change at all
    assert pde["robustness"]["round_trip_change"]["90"] == 0.0
    assert pde["robustness"]["round_trip_change"]["37"] > 0.0
    table = (out / "table.md").read_text()
    assert "| 37° and back |" in table
    hours = sum(r["train_seconds"] + r["eval_seconds"] for r in records) / 3600
    assert f"(4 runs; training and evaluation {hours:.1f} hours, the runs' times summed)" in table
    assert "| cnn |" in table and "| invariant-pde |" in table
    # the last column names the kind of CPU the runs recorded
    cnn_row = next(line for line in table.splitlines() if line.startswith("| cnn |"))
    assert cnn_row.endswith(f"| {torch.backends.cpu.get_cpu_capability()} |")
    assert (out / "robustness.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "cnn-seed0.pt", "invariant-pde-seed0.pt"]
    capsys.readouterr()
    assert main(args) == 0
    assert "0 to go" in capsys.readouterr().out
    assert len(read_jsonl(out / "results.jsonl")) == 4
    # the report is written under the folder's writer lock, as the runs are
    from eqpdenet.app import benchmark as benchmark_module
    from eqpdenet.app.locks import holder

    written, report = [], benchmark_module.write_benchmark_report

    def report_under_lock(folder):
        written.append((holder(folder) or {}).get("pid"))
        return report(folder)

    benchmark_module.write_benchmark_report = report_under_lock
    try:
        assert main(args) == 0
    finally:
        benchmark_module.write_benchmark_report = report
    assert written == [os.getpid()]
    # --models of one entry while another entry's recipe changed: its finished runs would sit
    # beside a config.toml describing the new recipe; refused, naming the runs and the field,
    # and with --rerun-changed set aside, to run when a sweep includes them
    capsys.readouterr()
    recipe = [*BenchmarkConfig().models["invariant-pde"], "train.lr=0.01"]
    changed = [*args[:5], "cnn", *args[7:], "--set", f"models.invariant-pde={recipe!r}"]
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "invariant-pde-seed0" in err and "invariant-pde-seed1" in err
    assert "recorded, 0.01 now" in err and "model.kind" not in err and "cnn-seed" not in err
    assert main([*changed, "--rerun-changed"]) == 0
    assert "when a sweep includes them" in capsys.readouterr().out
    assert sorted(r["key"] for r in read_jsonl(out / "results.jsonl")) == ["cnn-seed0", "cnn-seed1"]
    assert main(changed) == 0  # config.toml and the runs agree again
    capsys.readouterr()
    assert main(args) == 0  # the original recipe: invariant-pde's recorded runs are gone, so they run
    assert sorted(r["key"] for r in read_jsonl(out / "results.jsonl")) == [
        "cnn-seed0", "cnn-seed1", "invariant-pde-seed0", "invariant-pde-seed1"]
    # --models ran 2 of the configuration's entries: the table says the rest is missing, and
    # `report` on a benchmark folder writes the benchmark's table (not the paper's) and exits 3
    from eqpdenet.app.config import load_toml, to_toml

    config = load_toml(BenchmarkConfig, out / "config.toml")
    expected_missing = (len(config.models) - 2) * len(config.seeds)
    first = (out / "table.md").read_text().splitlines()[0]
    assert first.startswith("**Incomplete:**") and f"{expected_missing} of " in first
    # rerunning the --models command as it was finishes nothing (an outside probe, round 21):
    # the file, the command and report say how to finish it alike
    advice = "rerun the benchmark's command, without --models if it named some, to finish it"
    assert first.endswith(f"; {advice}.")
    capsys.readouterr()
    assert main(["report", str(out)]) == 3
    captured = capsys.readouterr()
    assert "| model | params | seeds | test | iso |" in captured.out
    assert "is incomplete" in captured.err and captured.err.rstrip().endswith(f"; {advice}")
    # once the configuration holds only what ran, the report is complete
    config.models = {name: config.models[name] for name in ("cnn", "invariant-pde")}
    (out / "config.toml").write_text(to_toml(config))
    assert main(["report", str(out)]) == 0
    assert not (out / "table.md").read_text().startswith("**Incomplete:**")
