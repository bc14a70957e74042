"""Round 12 of the benchmark scripts: finite numbers and usable devices checked up front, no
Triton sweep off CUDA, no model dropped for a repeated label, a reference row that runs no
fused operator, temporary folders removed, warm-up calls before timing, compile times measured
in a fresh Triton cache, and ``gpu_session.sh --help``."""

import argparse
import importlib.util
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from eqpdenet.models import LiftedPDEConfig, LiftedPDENet
from test_benchmark_scripts import _fake_python, _load, _run_scripts

ROOT = Path(__file__).resolve().parents[1]
FCNN_CHECKPOINT = "results/benchmark/checkpoints/fcnn-seed0.pt"
HAS_TRITON = importlib.util.find_spec("triton") is not None

#: (script and arguments, the exact one-line error after ``SCRIPT: error: ``).
BAD_ARGUMENTS = [
    # nan and inf parse as floats; a timing loop waiting for ``elapsed >= nan`` never ended
    (["bench_pde_layer.py", "--quick", "--rounds", "1", "--threads", "1", "--min-seconds", "nan"],
     "argument --min-seconds: must be a finite number, got 'nan'"),
    (["bench_export.py", "--checkpoint", FCNN_CHECKPOINT, "--min-seconds", "inf"],
     "argument --min-seconds: must be a finite number, got 'inf'"),
    (["bench_export.py", "--checkpoint", FCNN_CHECKPOINT, "--min-seconds", "-0.5"],
     "argument --min-seconds: must be at least 0, got -0.5"),
    (["bench_gpu.py", "--device", "cpu", "--min-seconds", "nan"],
     "argument --min-seconds: must be a finite number, got 'nan'"),
    (["bench_gpu_m2.py", "--device", "cpu", "--min-seconds", "abc"],
     "argument --min-seconds: not a number: 'abc'"),
    # the sweep times Triton's launch settings: off CUDA it printed the C++ kernel's noise
    (["bench_gpu_m2.py", "--device", "cpu", "--smoke", "--sweep", "--skip-throughput"],
     "--sweep: the Triton launch configurations need --device cuda"),
    (["bench_gpu.py", "--device", "cpu", "--smoke", "--sweep"],
     "--sweep: the Triton launch configurations need --device cuda"),
    # the models are kept by label: the second of a label replaced the first without a word
    (["train_throughput.py", "a:fcnn", "a:cnn", "--steps", "1", "--repeats", "1"],
     "model label a given twice: name each one (LABEL:ENTRY, e.g. a-2:a)"),
    (["train_throughput.py", "fcnn", "fcnn", "--steps", "1", "--repeats", "1"],
     "model label fcnn given twice: name each one (LABEL:ENTRY, e.g. fcnn-2:fcnn)"),
    # torch.device's RuntimeError came out as a traceback
    (["train_throughput.py", "fcnn", "--device", "foo"],
     "argument --device: not a device: 'foo' (cpu, cuda, cuda:N, ...)"),
    (["profile_train_step.py", "fcnn", "--device", "foo"],
     "argument --device: not a device: 'foo' (cpu, cuda, cuda:N, ...)"),
    (["profile_train_step.py", "fcnn", "--device", "meta"],
     "argument --device: meta: holds no data, nothing can be run on it"),
    (["bench_gpu.py", "--device", "foo", "--smoke"],
     "argument --device: not a device: 'foo' (cpu, cuda, cuda:N, ...)"),
    (["bench_gpu_m2.py", "--device", "cuda:x", "--smoke"],
     "argument --device: not a device: 'cuda:x' (cpu, cuda, cuda:N, ...)"),
]
if not torch.cuda.is_available():
    BAD_ARGUMENTS += [
        (["train_throughput.py", "fcnn", "--device", "cuda"],
         "argument --device: cuda: no CUDA GPU is visible to torch"),
        (["bench_gpu.py", "--smoke"], "argument --device: cuda: no CUDA GPU is visible to torch"),
    ]
if HAS_TRITON:
    BAD_ARGUMENTS += [
        # tl.arange takes powers of 2 only: Triton's compile error came out as a traceback
        (["triton_compile.py", "--block", "3", "--quick"],
         "argument --block: must be a power of 2 from 1 to 4096, got 3"),
        (["triton_compile.py", "--block", "8192", "--quick"],
         "argument --block: must be a power of 2 from 1 to 4096, got 8192"),
        (["triton_compile.py", "--num-warps", "3", "--quick"],
         "argument --num-warps: must be a power of 2 from 1 to 32, got 3"),
    ]


def test_bad_arguments_get_one_line_and_exit_2():
    """Each case: exit 2 and exactly one stderr line, ``SCRIPT: error: ...`` (the old code hung
    on nan, ran a sweep of noise, dropped a model, or gave a traceback)."""
    records = _run_scripts([argv for argv, _ in BAD_ARGUMENTS], timeout=180)
    wrong = {}
    for (argv, expected), record in zip(BAD_ARGUMENTS, records, strict=True):
        lines = record["err"].strip().splitlines()
        if record["code"] != 2 or lines[-1:] != [f"{argv[0]}: error: {expected}"]:
            wrong[" ".join(argv)] = (record["code"], record["err"][-300:])
    assert not wrong


@pytest.fixture
def args_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _args
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return _args


def test_shared_checkers(args_module):
    a = args_module
    assert a.nonnegative_float("0") == 0.0 and a.nonnegative_float("0.25") == 0.25
    assert a.positive_float("1e-3") == 1e-3
    for checker, text, message in [
            (a.nonnegative_float, "nan", "must be a finite number, got 'nan'"),
            (a.nonnegative_float, "-inf", "must be a finite number, got '-inf'"),
            (a.nonnegative_float, "1e999", "must be a finite number, got '1e999'"),
            (a.nonnegative_float, "-1", "must be at least 0, got -1"),
            (a.positive_float, "0", "must be above 0, got 0"),
            (a.power_of_two(1, 32), "0", "must be a power of 2 from 1 to 32, got 0"),
            (a.power_of_two(1, 32), "6", "must be a power of 2 from 1 to 32, got 6"),
            (a.power_of_two(4), "2", "must be a power of 2 at least 4, got 2"),
            (a.available_device, "gpu", "not a device: 'gpu' (cpu, cuda, cuda:N, ...)")]:
        with pytest.raises(argparse.ArgumentTypeError) as raised:
            checker(text)
        assert str(raised.value) == message
    assert a.power_of_two(1, 32)("16") == 16
    assert a.available_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        with pytest.raises(argparse.ArgumentTypeError, match=f"sees {count} CUDA GPU"):
            a.available_device(f"cuda:{count}")


def test_gpu_benchmark_output_folder_takes_a_device():
    folder = _load("bench_gpu").output_folder
    assert folder(argparse.Namespace(out=None, smoke=False, device=torch.device("cpu"))) is None
    assert folder(argparse.Namespace(out=None, smoke=False, device=torch.device("cuda", 0))) \
        == Path("results/gpu")


def _tiny_lifted() -> LiftedPDENet:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LiftedPDENet(LiftedPDEConfig(orientations=4, channels=[2, 3], blocks=[1, 1])).eval()


def test_bench_export_reference_row_runs_no_fused_operator():
    """A lifted model has no ``pde_layer``: its lift and M2 blocks kept the fused C++ kernel in
    the row named ``eager, reference``."""
    bench_export = _load("bench_export")
    model = _tiny_lifted()
    x = bench_export.images(2)
    assert bench_export.fused_operators(model, x) == ["eqpdenet::m2_mix_invariants",
                                                      "eqpdenet::m2_update"]
    reference = bench_export.reference_copy(model)
    assert bench_export.fused_operators(reference, x) == []
    assert {type(m).__name__: m.backend for m in reference.modules() if hasattr(m, "backend")} \
        == {"M2Lift": "reference", "M2SystemRHS": "reference"}
    assert all(m.backend == "auto" for m in model.modules() if hasattr(m, "backend"))
    with torch.no_grad():
        torch.testing.assert_close(reference(x), model(x), rtol=1e-4, atol=1e-5)


def _temporary_env(tmp_path: Path) -> tuple[dict, Path]:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"), TMPDIR=str(temporary))
    env.pop("TRITON_INTERPRET", None)
    return env, temporary


def test_bench_export_removes_its_folder_and_says_the_reference_is_plain(tmp_path):
    env, temporary = _temporary_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_export.py", "--checkpoint", FCNN_CHECKPOINT,
         "--threads", "1", "--rounds", "1", "--min-seconds", "0", "--batches", "1", "--profile"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "# eager, reference: fused operators run: none" in lines
    rows = [line.split(" | ")[:2] for line in lines if line.startswith("| 1 | ")]
    assert rows == [["| 1", v] for v in ("eager, C++ kernel", "eager, reference",
                                           "exported program", "onnxruntime")]
    assert "## onnxruntime's time per operator type (batch 1, 2 runs)" in lines
    assert not list(temporary.glob("bench-export-*"))


@pytest.mark.skipif(not (Path(os.environ.get("EQPDENET_DATA", "/nonexistent")) / "mnist").is_dir(),
                    reason="needs MNIST in $EQPDENET_DATA")
def test_export_checkpoints_removes_its_folder(tmp_path):
    env, temporary = _temporary_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "benchmarks/export_checkpoints.py", FCNN_CHECKPOINT, "--images", "8",
         "--formats", "onnx"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| fcnn-seed0.pt |")]
    assert len(rows) == 1 and rows[0].startswith("| fcnn-seed0.pt | FCNN | onnx | ")
    assert not list(temporary.glob("export-checkpoints-*"))


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_triton_compile_times_compiles_in_a_fresh_cache(tmp_path):
    """The user's cache is neither read (a second run timed cache hits: 0.0 s) nor filled, and
    the run's own cache is removed."""
    env, temporary = _temporary_env(tmp_path)
    cache = tmp_path / "user-cache"
    done = subprocess.run([sys.executable, "benchmarks/triton_compile.py", "--quick"], cwd=ROOT,
                          env=dict(env, TRITON_CACHE_DIR=str(cache)), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    compiled = [line for line in done.stdout.splitlines() if line.startswith("sm_90 ")]
    assert len(compiled) == 4
    assert not cache.exists() or not any(cache.iterdir())
    assert not list(temporary.glob("triton-compile-*"))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _main(module, monkeypatch, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.main()


def test_bench_joint_calls_each_variant_once_before_timing():
    calls = Counter()
    functions = {name: (lambda n=name: calls.update([n])) for name in ("a", "b")}
    seconds = _load("bench_joint").median_seconds(functions, rounds=1)
    assert set(seconds) == {"a", "b"} and calls == {"a": 2, "b": 2}


def test_m2_orientation_costs_warms_every_case_up(monkeypatch, capsys, one_thread):
    module = _load("m2_orientation_costs")
    calls = Counter()
    timed = module.forward_backward

    def counted(block, u):
        calls[(id(block), u.shape)] += 1
        return timed(block, u)

    monkeypatch.setattr(module, "forward_backward", counted)
    _main(module, monkeypatch, ["--batch", "1", "--repeats", "1"])
    assert len(calls) == 9 and set(calls.values()) == {2}
    assert len([line for line in capsys.readouterr().out.splitlines()
                if line.startswith("| block") or line.startswith("| pool")]) == 9


def test_bench_m2_batchnorm_warms_every_variant_up(monkeypatch, capsys, one_thread):
    module = _load("bench_m2_batchnorm")
    calls = Counter()
    step = module.step

    def counted(variant, norm, u, z, w2):
        calls[(variant, u.shape)] += 1
        return step(variant, norm, u, z, w2)

    monkeypatch.setattr(module, "step", counted)
    _main(module, monkeypatch, ["--repeats", "1"])
    assert len(calls) == 9 and set(calls.values()) == {2}
    assert len([line for line in capsys.readouterr().out.splitlines()
                if line.startswith("C=")]) == 3


def test_bench_m2_lift_warms_the_standalone_lifts_up(monkeypatch, capsys, one_thread):
    module = _load("bench_m2_lift")
    calls = Counter()
    timed = module.lift_seconds

    def counted(lift, images, probe):
        calls[(lift.relative, lift.backend)] += 1
        return timed(lift, images, probe)

    monkeypatch.setattr(module, "lift_seconds", counted)
    _main(module, monkeypatch, ["--batch", "2", "--repeats", "1"])
    assert calls == {(r, b): 2 for r in (False, True) for b in ("auto", "reference")}
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" forward")[0] for line in out if line.startswith("lift ")] \
        == ["lift plain   ", "lift relative"]
    assert len([line for line in out if line.startswith("training step lifted-centered:")]) == 1


def test_gpu_session_help_and_unknown_arguments(tmp_path):
    """On a GPU machine ``--help`` started the whole session and wrote ``$OUT``."""
    env = _fake_python(tmp_path / "bin", cuda=True)
    out = tmp_path / "gpu"
    for flag in ("--help", "-h"):
        done = subprocess.run(["bash", "benchmarks/gpu_session.sh", flag], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, env=dict(env, OUT=str(out)))
        assert done.returncode == 0 and done.stderr == ""
        assert done.stdout.startswith("usage: benchmarks/gpu_session.sh [-h | --help]\n")
        assert "1. benchmarks/bench_gpu.py --sweep" in done.stdout
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--out", "x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=dict(env, OUT=str(out)))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("gpu_session.sh: error: unknown argument: --out (it takes none; "
                           "see --help)\n")
    assert not out.exists()
