"""Drawing keeps a user's matplotlib backend: ``import_pyplot`` switched every process to Agg,
and a notebook's ``plt.show()`` then showed nothing. Each case runs in a process of its own (the
backend is the process's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _backend_after(setup: str) -> str:
    script = (f"{setup}\nfrom eqpdenet.app.files import import_pyplot\nimport_pyplot()\n"
              f"import matplotlib\nprint(matplotlib.get_backend())")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MPLBACKEND="")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def test_a_users_pyplot_keeps_its_backend():
    setup = "import matplotlib\nmatplotlib.use('svg')\nimport matplotlib.pyplot"
    assert _backend_after(setup) == "svg"


def test_a_process_that_has_not_drawn_draws_on_agg():
    assert _backend_after("").lower() == "agg"
