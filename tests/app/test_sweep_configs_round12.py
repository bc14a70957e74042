"""Sweep configuration files a user writes (probe round 12): an entry name too long for a file
is refused before training; a benchmark without scenarios writes a well-formed table; --quick
keeps only the checkpoint seeds it runs; curve scale factors beyond what float32 sampling holds
are refused; an entry named "_x" stays in the figure's legend."""

from __future__ import annotations

import pytest
from tests.data_helpers import write_npz

from eqpdenet.app.cli import main, quick_benchmark, quick_profile
from eqpdenet.app.config import BenchmarkConfig, CurvesConfig, ReproduceConfig
from eqpdenet.app.runstore import MAX_KEY_LENGTH, run_file
from eqpdenet.errors import ConfigError


def _benchmark_toml(tmp_path, entry: str, scenarios: str = '["test"]') -> str:
    data = tmp_path / "tiny.npz"
    write_npz(data, train=60, test=20, size=12, classes=3)
    path = tmp_path / "bench.toml"
    path.write_text(f"""seeds = [0]
checkpoint_seeds = []
[base]
scenarios = {scenarios}
[base.data]
dataset = "{data}"
[base.train]
epochs = 1
batch_size = 30
[models]
{entry} = ["model.kind='fcnn'", "model.hidden=4"]
[curves]
images = 10
angles = [0.0, 90.0]
scales = [1.0]
shifts = [0.0, 1.0]
""")
    return str(path)


def test_a_run_key_too_long_for_a_file_name_is_refused(tmp_path):
    assert run_file(tmp_path, "k" * MAX_KEY_LENGTH).name == "k" * MAX_KEY_LENGTH + ".json"
    with pytest.raises(ConfigError, match=f"{MAX_KEY_LENGTH + 1} characters\\) cannot name a file"):
        run_file(tmp_path, "k" * (MAX_KEY_LENGTH + 1))


def test_a_benchmark_entry_too_long_is_refused_before_training(tmp_path, capsys):
    config = _benchmark_toml(tmp_path, "c" * 246)
    out = tmp_path / "out"
    assert main(["benchmark", "--config", config, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "epoch" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("eqpdenet:")]
    assert "cannot name a file: at most 200 characters" in line
    assert not out.exists()


def test_a_benchmark_without_scenarios_writes_a_well_formed_table(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["benchmark", "--config", _benchmark_toml(tmp_path, "tiny", "[]"), "--out",
                 str(out), "--no-progress"]) == 0
    rows = [line for line in (out / "table.md").read_text().splitlines() if line.startswith("|")]
    assert len(rows) == 3  # header, rule, one entry
    assert len({row.count("|") for row in rows}) == 1, rows
    assert "|  |" not in rows[0]


def test_quick_keeps_the_checkpoint_seeds_it_runs():
    benchmark = quick_benchmark(BenchmarkConfig(seeds=[1, 2], checkpoint_seeds=[1]))
    assert (benchmark.seeds, benchmark.checkpoint_seeds) == ([0], [])
    kept = quick_benchmark(BenchmarkConfig(seeds=[0, 2], checkpoint_seeds=[0, 2]))
    assert kept.checkpoint_seeds == [0]
    reproduce = quick_profile(ReproduceConfig(seeds=[3], checkpoint_seeds=[3]))
    assert (reproduce.seeds, reproduce.checkpoint_seeds) == ([0, 1], [])


@pytest.mark.parametrize("scale", [1e-50, 1e-7, 1e7, 1e50])
def test_curve_scales_beyond_float32_sampling_are_refused(scale):
    with pytest.raises(ConfigError, match=r"curves\.scales: must be from 1e-06 to 1e\+06"):
        CurvesConfig(scales=[1.0, scale])
    assert CurvesConfig(scales=[1e-6, 1e6]).scales == [1e-6, 1e6]


def test_an_entry_named_with_a_leading_underscore_stays_in_the_legend(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from eqpdenet.app import benchmark

    legends = []
    real = Axes.legend

    def record(self, *args, **kwargs):
        legend = real(self, *args, **kwargs)
        legends.append([text.get_text() for text in legend.get_texts()])
        return legend

    monkeypatch.setattr(Axes, "legend", record)
    curve = ([0.0, 90.0], [50.0, 50.0])
    item = {"rotation": curve, "scale": ([1.0], [50.0]), "shift": ([0.0], [50.0])}
    benchmark.robustness_figure({"_hidden": item, "shown": item})
    assert legends and all(labels == ["\u200b_hidden", "shown"] for labels in legends), legends
