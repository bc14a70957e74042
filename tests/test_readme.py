"""README's Python examples run as written (documentation that cannot silently rot)."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec("\n".join(blocks), namespace)  # our own documentation
    assert namespace["logits"].shape == (32, 10)
    assert "u_x² + u_y²" in printed.getvalue()
    # the last layer: sim2 (4 invariants + bias) + se2 (5 + bias) + reduction (2 weights + bias)
    assert sum(p.numel() for p in namespace["layer"].parameters()) == 5 + 6 + 3
    assert len(namespace["sim2"]) == 4
    # the lifted example: a max over the orientations of fields on M2 is quarter-turn invariant
    lifted_logits, turned_logits = namespace["lifted_logits"], namespace["turned_logits"]
    assert lifted_logits.shape == (4, 10)
    assert (turned_logits - lifted_logits).abs().max() <= 1e-5 * lifted_logits.abs().max()


def test_readme_test_command_is_the_one_ci_runs():
    # .ci/run runs README's test command; the two drifted once (README lacked the fixed
    # hypothesis profile, so a user's run drew other examples than CI's).
    commands = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)[0].splitlines()
    tests = [line for line in commands if "python -m pytest" in line]
    assert len(tests) == 1
    ci = (README.parent / ".ci" / "run").read_text()
    assert "export HYPOTHESIS_PROFILE=ci" in ci and "HYPOTHESIS_PROFILE=ci " in tests[0]
    assert "pip install torch==2.13.0 && pip install -e \".[dev]\"" in tests[0]
    assert "python -m pip install -q torch==2.13.0" in ci and "pip install -q -e \".[dev]\"" in ci
    # and the same pytest arguments (two xdist workers, whole files), so a user's run is CI's
    readme_arguments = tests[0].split("python -m pytest", 1)[1].split()
    ci_line = next(line for line in ci.splitlines()
                   if "python -m pytest" in line and not line.lstrip().startswith("#"))
    assert ci_line.split("python -m pytest", 1)[1].split() == readme_arguments
    assert readme_arguments == ["-n", "2", "--dist", "loadfile"]
