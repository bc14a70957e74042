"""Code of one's own on the command line (round 8): the modules named in ``EQPDENET_PLUGINS``
are imported before the arguments are read, and by every ``--jobs`` worker before it unpickles
its work; a module that cannot be imported is one line naming the variable and the module.

Each command line runs in a process of its own: what a plugin registers would otherwise stay
registered in the test process (tests that go over every registered model would meet it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eqpdenet.app.plugins import PLUGINS_VARIABLE, import_plugins, plugin_names
from eqpdenet.app.workers import worker_pool
from eqpdenet.data.scenarios import available_scenarios
from eqpdenet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

#: A plugin: a model family (ModelConfig's fields as its options) and a scenario.
PLUGIN = '''
import torch
from torch import nn
from eqpdenet.data.scenarios import AffineDraw, register_scenario
from eqpdenet.models import MODELS


def flip(num, generator):
    matrix = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64).expand(num, 2, 2)
    return AffineDraw(matrix.clone(), torch.zeros(num, 2, dtype=torch.float64), {})


@MODELS.register("r8net")
class R8Net(nn.Module):
    def __init__(self, hidden=8, image_size=28, in_channels=1, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, classes))

    def forward(self, images):
        return self.net(images)


register_scenario("r8flip", flip)
'''


def write_plugins(folder: Path) -> None:
    (folder / "r8plugin.py").write_text(PLUGIN)
    (folder / "r8broken.py").write_text("raise RuntimeError('the lab server is down')\n")
    (folder / "r8needs.py").write_text("import r8_not_installed\n")


def run_cli(folder: Path, plugins: str, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{PLUGINS_VARIABLE: plugins},
               PYTHONPATH=os.pathsep.join([str(folder), str(ROOT / "src")]))
    env.pop("EQPDENET_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "eqpdenet", *argv], capture_output=True,
                          text=True, env=env, timeout=300, cwd=folder)


def test_names_are_comma_separated_module_names():
    assert plugin_names(" a.b , c,, ") == ["a.b", "c"]
    assert plugin_names("") == [] and import_plugins("") == []
    for bad in ("mylab/models.py", "my-lab", "a..b"):
        with pytest.raises(ConfigError, match=rf"{PLUGINS_VARIABLE}: {bad!r} is not a module name"):
            plugin_names(bad)


def test_the_command_line_knows_what_a_plugin_registers(tmp_path):
    write_plugins(tmp_path)
    without = run_cli(tmp_path, "", "train", "--help")
    assert without.returncode == 0 and "r8net" not in without.stdout
    done = run_cli(tmp_path, "r8plugin", "train", "--help")
    assert done.returncode == 0, done.stderr
    assert "r8net" in done.stdout  # a choice of --model


@pytest.mark.parametrize("plugins, message", [
    ("r8missing", f"eqpdenet: error: {PLUGINS_VARIABLE}: cannot import 'r8missing': "
                  f"is its folder on PYTHONPATH"),
    ("r8plugin,r8needs", f"{PLUGINS_VARIABLE}: cannot import 'r8needs' (it imports "
                         f"'r8_not_installed', which is not found)"),
    ("r8broken", f"{PLUGINS_VARIABLE}: importing 'r8broken' failed: RuntimeError: the lab server is "
                 f"down"),
    ("r8/plugin.py", f"{PLUGINS_VARIABLE}: 'r8/plugin.py' is not a module name"),
], ids=["missing", "missing-dependency", "raises", "path"])
def test_a_plugin_that_cannot_be_imported_is_one_line_before_any_work(plugins, message, tmp_path):
    write_plugins(tmp_path)
    done = run_cli(tmp_path, plugins, "train", "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def test_the_workers_of_jobs_import_the_plugins_before_their_work(tmp_path, monkeypatch):
    write_plugins(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers start with this process's path
    monkeypatch.setenv(PLUGINS_VARIABLE, "r8plugin")
    assert "r8flip" not in available_scenarios()  # this process never imports the plugin
    with worker_pool(1) as pool:
        names = pool.submit(available_scenarios).result(timeout=300)
    assert "r8flip" in names and "r8flip" not in available_scenarios()
    assert json.loads(json.dumps(names)) == names
