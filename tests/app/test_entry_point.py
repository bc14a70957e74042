"""An interrupt while the command starts (``import eqpdenet`` imports PyTorch: seconds) ends it as
one arriving later does: one line and exit status 130. It printed a 30-70-line KeyboardInterrupt
traceback and died of SIGINT (SIGTERM: died silently), the command line's own handling coming
after its import."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Sends this process ``{signal}`` when the import of ``{module}`` (a name ending so, where it
#: starts with a dot) begins: an interrupt at that moment, deterministically.
TRIP = """
import os, signal, sys
class Trip:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r} or {module!r}.startswith(".") and name.endswith({module!r}):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.{signal})
        return None
sys.meta_path.insert(0, Trip())
sys.argv = ["eqpdenet", "info"]
"""


def _console_script() -> str:
    """The script pip writes for the ``eqpdenet`` console script that pyproject.toml declares."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["eqpdenet"].split(":")
    return (f"import sys\nfrom {module} import {function}\nif __name__ == '__main__':\n"
            f"    sys.exit({function}())\n")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("signal, module", [
    ("SIGINT", "torch"), ("SIGTERM", "torch"),
    # NumPy's extension, loaded by PyTorch's: a KeyboardInterrupt raised there was swallowed and
    # the command ran on (exit 0), so the interrupt is not raised into the imports at all
    ("SIGINT", "._multiarray_umath")])
def test_an_interrupt_while_the_console_script_imports_torch_is_one_line(signal, module, tmp_path):
    script = tmp_path / "eqpdenet"
    script.write_text(_console_script())
    done = _run(TRIP.format(module=module, signal=signal)
                + f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')")
    assert (done.returncode, done.stderr) == (130, "eqpdenet: interrupted: no result was written\n")
    assert done.stdout == ""


def test_an_interrupt_while_python_m_eqpdenet_imports_the_command_line_is_one_line():
    """``python -m eqpdenet``: the package itself is imported by Python before its __main__
    runs (an interrupt then is Python's); the command line's import after it is answered."""
    done = _run(TRIP.format(module="eqpdenet.app.cli", signal="SIGINT")
                + "import runpy; runpy.run_module('eqpdenet', run_name='__main__', alter_sys=True)")
    assert (done.returncode, done.stderr) == (130, "eqpdenet: interrupted: no result was written\n")


def test_the_entry_point_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "eqpdenet", "--version"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.startswith("eqpdenet "), done.stderr
