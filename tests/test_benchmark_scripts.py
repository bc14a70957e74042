"""The scripts of ``benchmarks/``: each answers ``--help``, refuses bad arguments with one line
(exit 2) before any long work, and never writes into the committed results by default.

The scripts run in ONE subprocess (:data:`_DRIVER`: ``runpy`` with ``sys.argv`` set, torch
imported once), so that the whole file stays within seconds.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
CHECKPOINT = "results/benchmark/checkpoints/fcnn-seed0.pt"

#: Runs each ``[script, *args]`` of the JSON list argv[1] as ``python benchmarks/script args``
#: would, and prints one JSON record per case: exit code, stdout, stderr.
_DRIVER = r"""
import contextlib, io, json, runpy, sys, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, "benchmarks")
records = []
for script, *args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [f"benchmarks/{script}", *args]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(f"benchmarks/{script}", run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException as error:  # a traceback: what the scripts must not give
            code, _ = "traceback", err.write(f"{type(error).__name__}: {error}")
    records.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(records))
"""


def _run_scripts(cases: list[list[str]], timeout: int = 240) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(cases)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def not_a_folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("out") / "a-file"
    path.write_text("")
    return path


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_every_script_answers_help():
    """Every script imports (fragility.py and interpolation_sensitivity.py did not: a private
    helper of eqpdenet.analysis.robustness was gone) and has an argument parser, so that
    ``--help`` describes it instead of starting the benchmark."""
    records = _run_scripts([[name, "--help"] for name in SCRIPTS])
    failed = {name: (r["code"], r["err"][-300:]) for name, r in zip(SCRIPTS, records, strict=True)
              if r["code"] != 0 or "usage:" not in r["out"]}
    assert not failed


#: (script and arguments, what the one-line error must say). {bad} is a path under a file.
BAD_ARGUMENTS = [
    (["train_throughput.py", "fcnn", "--steps", "0"], "--steps: must be at least 1, got 0"),
    (["train_throughput.py", "fcnn", "--steps", "-1"], "--steps: must be at least 1, got -1"),
    (["train_throughput.py", "fcnn", "--repeats", "0"], "--repeats: must be at least 1"),
    (["train_throughput.py", "fcnn", "--threads", "0"], "--threads: must be at least 1"),
    (["train_throughput.py", "fcnn", "--batch", "0"], "--batch: must be at least 1"),
    (["train_throughput.py", "fcnn", "--json", "{bad}/x.json"], "--json"),
    (["train_throughput.py", "fcnn", "--set", "fcnnn", "model.hidden=4"],
     "--set fcnnn: not among the models measured (fcnn)"),
    (["train_throughput.py", "fcnn", "--set", "fcnn", "model.nosuch=1"], "unknown field 'nosuch'"),
    (["train_throughput.py", "fcnn", "--recipe", "nosuch.toml"], "--recipe nosuch.toml: no such file"),
    (["bench_export.py", "--checkpoint", "nofile.pt"], "no such checkpoint: nofile.pt"),
    (["bench_export.py", "--threads", "0"], "--threads: must be at least 1"),
    (["bench_export.py", "--rounds", "0"], "--rounds: must be at least 1"),
    (["bench_export.py", "--batches", "64", "0"], "--batches: must be at least 1"),
    (["bench_pde_layer.py", "--threads", "0"], "--threads: must be at least 1"),
    (["bench_pde_layer.py", "--memory-probe", "nosuch", "4"], "--memory-probe nosuch"),
    (["bench_layer_presets.py", "--rounds", "0"], "--rounds: must be at least 1"),
    (["bench_m2_batchnorm.py", "--repeats", "0"], "--repeats: must be at least 1"),
    (["m2_orientation_costs.py", "--repeats", "0"], "--repeats: must be at least 1"),
    (["bench_joint.py", "--rounds", "0"], "--rounds: must be at least 1"),
    (["bench_m2_lift.py", "--models", "nosuch"], "no model 'nosuch'"),
    (["profile_train_step.py", "nosuch"], "no model 'nosuch'"),
    (["border_sensitivity.py", "nofile.pt"], "no such checkpoint: nofile.pt"),
    (["border_sensitivity.py", CHECKPOINT, "--images", "0"], "--images: must be at least 1"),
    (["border_sensitivity.py", CHECKPOINT, "--out", "{bad}/border"], "--out"),
    (["logit_outliers.py", "nofile.pt"], "no such checkpoint: nofile.pt"),
    (["logit_outliers.py", CHECKPOINT, "--images", "0"], "--images: must be at least 1"),
    (["export_checkpoints.py", "nofile.pt"], "no such checkpoint"),
    (["confusions.py", CHECKPOINT, "--threads", "0"], "--threads: must be at least 1"),
    (["round_trip_probe.py", CHECKPOINT, "--images", "-5"], "--images: must be at least 1"),
    (["bench_ray.py", "--seeds", "abc"], "--seeds: not a whole number: 'abc'"),
    (["bench_ray.py", "--seeds"], "--seeds: expected one argument"),
    (["recipe_validation.py", "x", "0", "--log", "{bad}/log.jsonl"], "epochs: must be at least 1"),
    (["recipe_validation.py", "x", "1", "model.nosuch=1", "--log", "log.jsonl"],
     "unknown field 'nosuch'"),
    (["recipe_validation.py", "x", "1", "--log", "{bad}/log.jsonl"], "--log"),
    (["compare_entries.py", "nofolder", "fcnn"], "no such folder: nofolder"),
    (["interpolation_sensitivity.py", "nofolder"], "no checkpoints in nofolder"),
    (["fragility.py", "--epochs", "0"], "--epochs: must be at least 1"),
    (["bench_gpu.py", "--device", "cpu", "--smoke", "--rounds", "0"], "--rounds: must be at least 1"),
    (["bench_gpu_m2.py", "--device", "cpu", "--smoke", "--out", "{bad}/gpu"], "--out"),
    (["reliability_campaign.py", "--only", "nosuch"], "--only: no case nosuch"),
    (["reliability_campaign.py", "--only", "evaluate-blow-up", "--write", "x.md"],
     "--write takes the whole campaign: leave out --only"),
]


def test_bad_arguments_get_one_line_and_exit_2(not_a_folder):
    """Zero or negative counts, missing files, unwritable outputs, unknown names and fields:
    one ``SCRIPT: error: ...`` line and exit 2, before any work (these gave tracebacks, ``inf``
    tables, a training of 77 s appended to the committed log, or silence)."""
    cases = [[a.replace("{bad}", str(not_a_folder)) for a in argv] for argv, _ in BAD_ARGUMENTS]
    records = _run_scripts(cases)
    wrong = {}
    for (argv, expected), record in zip(BAD_ARGUMENTS, records, strict=True):
        last = record["err"].strip().splitlines()[-1] if record["err"].strip() else ""
        if (record["code"] != 2 or not last.startswith(f"{argv[0]}: error:")
                or expected not in last):
            wrong[" ".join(argv)] = (record["code"], record["err"][-300:])
    assert not wrong


def test_train_throughput_prints_each_model_relative_to_the_first():
    (record,) = _run_scripts([["train_throughput.py", "fcnn", "again:fcnn", "--steps", "1",
                               "--repeats", "1", "--batch", "2", "--threads", "1"]])
    assert record["code"] == 0, record["err"]
    rows = [line for line in record["out"].splitlines() if line.startswith("| ")]
    assert rows[0].endswith("| : fcnn |")
    assert rows[1].startswith("| fcnn |") and rows[1].endswith("| 1.00 |")
    assert rows[2].startswith("| again |") and len(rows[2].split("|")) == len(rows[0].split("|"))


def test_gpu_benchmarks_write_into_results_only_for_a_full_gpu_run():
    bench_gpu = _load("bench_gpu")
    folder = bench_gpu.output_folder
    assert folder(argparse.Namespace(out=None, smoke=True, device="cpu")) is None
    assert folder(argparse.Namespace(out=None, smoke=True, device="cuda")) is None
    assert folder(argparse.Namespace(out=None, smoke=False, device="cpu")) is None
    assert folder(argparse.Namespace(out=None, smoke=False, device="cuda")) == Path("results/gpu")
    assert folder(argparse.Namespace(out="/tmp/x", smoke=True, device="cpu")) == Path("/tmp/x")
    bench_gpu_m2 = _load("bench_gpu_m2")
    bench_gpu_m2.save({"environment": {}}, None, 0.0)  # no folder: nothing written, no error


def _fake_python(folder: Path, cuda: bool) -> dict:
    """An environment whose ``python3`` says whether CUDA is there and fails everything else."""
    folder.mkdir()
    fake = folder / "python3"
    fake.write_text(f"#!/bin/sh\ncase \"$*\" in *cuda.is_available*) exit {0 if cuda else 1};; esac\n"
                    "exit 1\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "EQPDENET_DATA"}
    return dict(env, PATH=f"{folder}{os.pathsep}{env['PATH']}", BUDGET="570")


def test_gpu_session_without_a_gpu_stops_at_once(tmp_path):
    env = _fake_python(tmp_path / "bin", cuda=False)
    out = tmp_path / "gpu"
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=dict(env, OUT=str(out)))
    assert done.returncode == 2
    assert done.stderr.strip() == ("gpu_session.sh: error: no CUDA GPU visible to torch (or torch "
                                   "does not import): nothing run")
    assert not out.exists()


def test_gpu_session_reports_failed_parts_and_exits_nonzero(tmp_path):
    env = _fake_python(tmp_path / "bin", cuda=True)
    out = tmp_path / "gpu"
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=dict(env, OUT=str(out)))
    assert done.returncode == 1
    last = (out / "gpu.txt").read_text().strip().splitlines()[-1]
    assert last.startswith("FAILED: PDE-layer benchmark, LiftedPDENet benchmark, CUDA tests, "
                           "training throughput, profile (")
    assert "all done" not in done.stdout


def test_bench_reliability_times_the_current_entry_check(capsys):
    _load("bench_reliability").check_overhead(rounds=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("training step, EqPdeNet h=256, batch 128")
    assert lines[1].startswith("the entry checks alone: ")


def test_ratio_conditioning_gives_every_stencil_its_background_noise():
    noise = _load("ratio_conditioning").background_noise()
    assert noise["central"] == 0.0
    assert 4e-8 < noise["isotropic"] < 6e-8  # docs/choices.md: 4.9e-8 (the last digit varies)
    assert 0 < noise["gaussian (sigma 1)"] < 1e-7


def test_gaussian_symbol_by_matrix_products():
    module = _load("gaussian_stencil_accuracy")
    lam, top = module.laplacian_symbol(4.0)
    assert f"{lam:.4f}" == "0.0463" and f"{top:.1e}" == "2.4e-05"
    lam1, _ = module.laplacian_symbol(1.0, points=301)
    assert lam1 == pytest.approx(0.7365, abs=1e-4)


class _BlowsUpOnBrightCentres(nn.Module):
    """Logits of a linear map; NaN (as a blown-up PDE's image gets) where the centre is > 2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x):
        out = self.linear(x.flatten(1))
        return torch.where((x[:, 0, 14, 14] > 2)[:, None], float("nan"), out)


def test_fragility_per_image_leaves_out_images_without_logits():
    fragility = _load("fragility")
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    images[0, :, 11:18, 11:18] = 5.0
    record = fragility.per_image(_BlowsUpOnBrightCentres(), images, torch.zeros(6), 0)
    assert record["round_trip_37_no_prediction"] == 1
    assert record["round_trip_37_kept"] <= 100.0 * 5 / 6
    assert all(v == v for v in record.values())  # no NaN
