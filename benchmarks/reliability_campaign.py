"""The fault and bad-input campaign of ``docs/reliability.md``: every case tried as a new user would
meet it, each in a fresh process, and the table of what each gets now.

Usage::

    EQPDENET_DATA=../shared/data python benchmarks/reliability_campaign.py \\
        [--write docs/reliability.md] [--only ID ...] [--skip-slow]

``--write`` replaces the table between the ``campaign`` markers of that file; ``--skip-slow``
leaves out the kill during the C++ kernel's first build (it builds the kernel from scratch in a
temporary folder, minutes on a loaded machine). Cases that need root (a full and a read-only
file system, made with ``mount -t tmpfs``) are reported as skipped elsewhere.

A case passes when the outcome is the one expected: for an error, a non-zero exit status, no
traceback, and one line naming the cause (the expected fragment); for a library call, the
expected exception or warning; for a fault, the property stated (no orphan, no duplicate...).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(ROOT / "tests"))

from process_helpers import alive, cpu_seconds, descendants, poll, pool_workers  # noqa: E402

START, END = "<!-- campaign:start -->", "<!-- campaign:end -->"


@dataclass
class Outcome:
    status: int | None
    message: str
    traceback: bool
    seconds: float
    passed: bool
    note: str = ""


@dataclass
class Case:
    id: str
    group: str
    what: str
    run: Callable[[Path], Outcome]
    slow: bool = False


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", **extra)
    env.pop("EQPDENET_DEBUG", None)
    return env


def _message(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line or line.startswith("eqpdenet: ")]
    return (errors or lines or [""])[-1].strip()


def _run(argv: list[str], timeout: float = 600, env: dict | None = None, **kwargs):
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=env or _env(), **kwargs)
    return done, time.monotonic() - start


def cli(*args: str, fragment: str, expect: str = "error", timeout: float = 600,
        env: dict | None = None, cwd: str | None = None, status: int | None = None,
        setup: Callable[[Path], None] | None = None,
        after: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None,
        ) -> Callable[[Path], Outcome]:
    """``eqpdenet args`` ({tmp}, {data}, {ckpt}... substituted); expect an error line with
    ``fragment``, a warning with it (``"warning"``), or success with it in the output; ``status``
    the exit status where it matters. ``setup(tmp)`` prepares the case's files; ``after(tmp,
    done)`` checks what the command left (None: as it should be; else what is wrong)."""
    def run(tmp: Path) -> Outcome:
        if setup is not None:
            setup(tmp)
        argv = [a.format(**PLACES, tmp=tmp) for a in args]
        where = cwd.format(**PLACES, tmp=tmp) if cwd else None
        here = None if env is None else {key: value.replace("{tmp}", str(tmp))
                                         for key, value in env.items()}
        done, seconds = _run([sys.executable, "-m", "eqpdenet", *argv], timeout, here, cwd=where)
        traceback = "Traceback" in done.stderr
        message = _message(done.stderr) if expect != "ok" else (done.stdout.strip().splitlines()
                                                                 or [""])[-1]
        errors = [line for line in done.stderr.splitlines() if ": error: " in line]
        wanted = done.returncode == status if status is not None else (
            done.returncode != 0 if expect == "error" else done.returncode == 0)
        if expect == "error":
            passed = wanted and len(errors) == 1 and fragment in errors[0]
        elif expect == "warning":
            passed = wanted and fragment in done.stderr
        else:
            passed = wanted and fragment in done.stdout + done.stderr
        note = after(tmp, done) if after is not None else None
        if note:
            message, passed = f"{message}; BUT {note}", False
        elif after is not None:
            message += f"; {getattr(after, 'says', 'left as it should be')}"
        return Outcome(done.returncode, message, traceback, seconds, passed and not traceback)
    return run


def lib(snippet: str, *, expect: str, fragment: str) -> Callable[[Path], Outcome]:
    """A Python snippet using the library; ``expect`` an exception class name, ``"warning"``
    (an ``InputRangeWarning``) or ``"ok"``; ``fragment`` must be in the exception or result."""
    code = textwrap.dedent('''
        import warnings, torch
        import eqpdenet
        from eqpdenet import *
        from eqpdenet import models
        from eqpdenet.errors import *
        torch.manual_seed(0)
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            try:
                result = eval(compile(SNIPPET, "<case>", "eval"))
                print("RESULT", result)
            except Exception as error:
                print("RAISED", type(error).__name__ + ":", " ".join(str(error).split()))
        for w in caught:
            print("WARNED", w.category.__name__ + ":", " ".join(str(w.message).split()))
    ''').replace("SNIPPET", repr(snippet))

    def run(tmp: Path) -> Outcome:
        done, seconds = _run([sys.executable, "-c", code], 600, cwd=tmp)
        lines = done.stdout.splitlines()
        raised = next((line[7:] for line in lines if line.startswith("RAISED ")), "")
        warned = [line[7:] for line in lines if line.startswith("WARNED ")
                  and "InputRangeWarning" in line]
        result = next((line[7:] for line in lines if line.startswith("RESULT ")), "")
        if expect == "ok":
            passed, message = not raised and fragment in result, result or raised
        elif expect == "warning":
            passed = bool(warned) and fragment in " ".join(warned + [raised, result])
            message = " / ".join(warned[:1] + ([raised] if raised else [f"then: {result}"]))
        else:
            passed, message = raised.startswith(expect + ":") and fragment in raised, raised
        return Outcome(None, message or done.stderr.strip()[-200:], False, seconds, passed)
    return run


# ----------------------------------------------------------------------------- shared files


PLACES: dict[str, str] = {}
TINY = ["--set", "data.train_subset=300", "--set", "data.test_subset=200", "--set",
        "model.layer.T=0.2", "--hidden", "8", "--epochs", "1", "--no-progress"]
TINY_SWEEP = ["base.data.train_subset=300", "base.data.test_subset=200", "base.train.epochs=1",
              "base.model.layer.T=0.2", "hidden_sizes=[8]"]
LONG_SWEEP = ["base.data.train_subset=2000", "base.data.test_subset=200",
              "base.train.epochs=200", "base.model.layer.T=0.2", "hidden_sizes=[8]",
              "seeds=[0, 1]"]


def sweep_args(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def prepare(root: Path, data: str) -> None:
    """Checkpoints, broken files and folders the cases use; the C++ kernel built once."""
    code = textwrap.dedent(f'''
        import torch
        from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
        from eqpdenet.app.training import save_checkpoint
        from eqpdenet.kernels import cpu
        cpu.is_available()
        root = {str(root)!r}
        config = apply_overrides(ExperimentConfig(), ["model.hidden=8", "data.test_subset=200"])
        torch.manual_seed(0)
        model = build_model(config.model)
        save_checkpoint(root + "/model.pt", model, config)
        torch.save(model.state_dict(), root + "/state_dict.pt")
        payload = torch.load(root + "/model.pt", weights_only=True)
        for name, edit in [("hidden", ("hidden", 32)), ("kind", ("kind", "fcnn"))]:
            edited = {{**payload, "config": {{**payload["config"],
                       "model": {{**payload["config"]["model"], edit[0]: edit[1]}}}}}}
            torch.save(edited, root + f"/edited-{{name}}.pt")
        layer = dict(payload["config"]["model"]["layer"], invariants=["se2"])
        edited = {{**payload, "config": {{**payload["config"],
                   "model": {{**payload["config"]["model"], "layer": layer}}}}}}
        torch.save(edited, root + "/edited-invariants.pt")
        invalid = {{**payload, "config": {{**payload["config"],
                    "model": {{**payload["config"]["model"], "hidden": 0}}}}}}
        torch.save(invalid, root + "/edited-invalid.pt")
        broken = {{**payload, "state_dict": {{k: v.clone() for k, v in payload["state_dict"].items()}}}}
        broken["state_dict"]["mlp.2.weight"][0, :3] = float("nan")
        torch.save(broken, root + "/nan.pt")
    ''')
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), timeout=1800)
    (root / "model.pt").read_bytes()
    (root / "truncated.pt").write_bytes((root / "model.pt").read_bytes()[:2000])
    (root / "flipped.pt").write_bytes(_flipped(root / "model.pt"))
    (root / "not-a-record").mkdir()
    (root / "not-a-record" / "results.jsonl").write_text(_record(0, 70.0) + '\n"x"\n')
    (root / "folder").mkdir()
    (root / "folder.png").mkdir()  # a folder named as the file figure would write
    (root / "file.txt").write_text("a file, not a folder, not a checkpoint, not TOML = [")
    (root / "binary.toml").write_bytes(b"\xff\xfe\x00\x01binary")
    (root / "empty-data" / "mnist").mkdir(parents=True)
    broken = root / "broken-data" / "mnist"
    shutil.copytree(Path(data) / "mnist", broken)
    images = broken / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100_000])
    for name, lines in [("corrupt", ['{"model": "fcnn"}', '{"model": ']),
                        ("duplicates", [_record(0, 70.0), _record(1, 74.0), _record(0, 70.0),
                                        _record(1, 74.0)]),
                        ("contradictory", [_record(0, 70.0), _record(0, 71.5)])]:
        (root / name).mkdir()
        (root / name / "results.jsonl").write_text("\n".join(lines) + "\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("my notes")
    _data_files(root / "npz")
    _sweep_folders(root)
    PLACES.update(root=str(root), data=data, ckpt=str(root / "model.pt"))


def _flipped(checkpoint: Path) -> bytes:
    """The checkpoint's bytes with one byte of its largest member (the weights) changed, its
    zip directory and CRCs as they were: what a bad disk or a copy gone wrong leaves."""
    import zipfile

    raw = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as archive:
        member = max(archive.infolist(), key=lambda info: info.compress_size)
    at = member.header_offset
    start = (at + 30 + int.from_bytes(raw[at + 26:at + 28], "little")
             + int.from_bytes(raw[at + 28:at + 30], "little"))
    raw[start + member.compress_size // 2] ^= 0xFF
    return bytes(raw)


def _npz(path: Path, n_train: int = 60, n_test: int = 20, classes: int = 3, size: int = 8,
         stray: int | None = None, sort: bool = False) -> None:
    """A small data set; ``stray``: one training label replaced by it (stored as uint32);
    ``sort``: the training images ordered by class."""
    import numpy as np

    rng = np.random.default_rng(0)
    labels = np.arange(n_train) % classes
    if sort:
        labels = np.sort(labels)
    if stray is not None:
        labels = labels.astype(np.uint32)
        labels[5] = stray
    with open(path, "wb") as handle:  # a handle: np.savez would add ".npz" to "DIGITS.NPZ"
        np.savez(handle, x_train=rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
                 y_train=labels,
                 x_test=rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
                 y_test=np.arange(n_test) % classes)


def _data_files(folder: Path) -> None:
    folder.mkdir()
    _npz(folder / "one-class.npz", classes=1)
    _npz(folder / "empty.npz", n_train=0, n_test=0)
    _npz(folder / "DIGITS.NPZ")
    _npz(folder / "tiny.npz", size=2)
    raw = (folder / "DIGITS.NPZ").read_bytes()
    (folder / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    _npz(folder / "stray-label.npz", stray=2**32 - 1)
    _npz(folder / "sorted.npz", sort=True)


def _sweep_folders(root: Path) -> None:
    """A sweep whose results hold a NaN accuracy, and a sweep killed after one run of three."""
    config = "\n".join(['models = ["fcnn"]', "hidden_sizes = [16]", "seeds = [0, 1, 2]", ""])
    for name, lines in (("sweep-nan", [_record(0, 70.0), _record(1, float("nan"))]),
                        ("sweep-killed", [_record(0, 70.0)])):
        (root / name).mkdir()
        (root / name / "config.toml").write_text(config)
        (root / name / "results.jsonl").write_text("\n".join(lines) + "\n")


def _record(seed: int, test: float) -> str:
    return json.dumps({"model": "fcnn", "hidden": 16, "seed": seed, "status": "ok",
                       "params": 13002, "key": f"fcnn-h16-seed{seed}",
                       "accuracy": {"test": test, "iso": 30.0, "sca": 20.0}})


# ----------------------------------------------------------------------------- faults


def _eqpdenet(*args: str) -> list[str]:
    return [sys.executable, "-m", "eqpdenet", *args]


def fault_two_writers(tmp: Path) -> Outcome:
    from eqpdenet.app.locks import holder

    out, start = tmp / "results", time.monotonic()
    argv = _eqpdenet("reproduce", "--out", str(out), "--data-dir", PLACES["data"], "--cache-dir",
                     str(tmp / "cache"), "--no-progress", *sweep_args(LONG_SWEEP))
    first = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        poll(lambda: (holder(out, wait=0) or {}).get("pid") == first.pid, 1800)
        second, _ = _run(argv, 900)
        overlapped = first.poll() is None
    finally:
        first.kill()
        first.wait()
    message = _message(second.stderr)
    passed = (overlapped and second.returncode == 2 and f"(pid {first.pid} on" in message
              and "Traceback" not in second.stderr)
    return Outcome(second.returncode, message, "Traceback" in second.stderr,
                   time.monotonic() - start, passed, "second started while the first ran")


def fault_kill_sweep(tmp: Path) -> Outcome:
    from eqpdenet.app.files import read_jsonl

    out, start = tmp / "killed", time.monotonic()
    argv = _eqpdenet("reproduce", "--out", str(out), "--data-dir", PLACES["data"], "--cache-dir",
                     str(tmp / "cache"), "--no-progress",
                     *sweep_args(TINY_SWEEP + ["seeds=[0, 1, 2]", "models=['fcnn']"]))
    process = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    poll(lambda: (out / "results.jsonl").exists() and read_jsonl(out / "results.jsonl"), 1800,
          0.05)
    process.kill()
    process.wait()
    before = len(read_jsonl(out / "results.jsonl"))
    again, _ = _run(argv, 600)
    keys = [r["key"] for r in read_jsonl(out / "results.jsonl")]
    passed = again.returncode == 0 and sorted(keys) == sorted(set(keys)) and len(keys) == 3
    said = next((line for line in again.stdout.splitlines() if line.startswith("reproduce:")), "")
    return Outcome(again.returncode, f"killed after {before} run(s); the rerun: {said!r} -> "
                   f"{len(keys)} lines, {len(set(keys))} keys",
                   "Traceback" in again.stderr, time.monotonic() - start, passed)


def fault_orphans(tmp: Path, sig: int = signal.SIGKILL) -> Outcome:
    start = time.monotonic()
    argv = _eqpdenet("reproduce", "--out", str(tmp / "jobs"), "--data-dir", PLACES["data"],
                     "--cache-dir", str(tmp / "cache"), "--no-progress", "--jobs", "2",
                     *sweep_args(LONG_SWEEP))
    # SIGINT as in a terminal: a shell started in the background may have set it to "ignore"
    parent = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def training():
        workers = pool_workers(parent.pid)
        return len(workers) >= 2 and all(cpu_seconds(w) > 8 for w in workers[:2]) and workers

    workers = poll(training, 1800, 0.5) or []
    family = descendants(parent.pid)
    parent.send_signal(sig)
    try:
        _, err = parent.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        parent.kill()
        _, err = parent.communicate()
        err += "\n(the parent did not exit within 120 s: killed)"
    gone = poll(lambda: not any(alive(p) for p in family), 60)
    left = sorted(p for p in family if alive(p))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    name = signal.Signals(sig).name
    message = (f"{len(workers)} training workers; {len(family)} descendants all gone "
               f"{'within 60 s' if gone else f'NOT gone: {left}'}")
    if sig != signal.SIGKILL:
        message += f"; parent: {_message(err)}"
    passed = bool(workers) and bool(gone) and "Traceback" not in err
    return Outcome(parent.returncode, f"{name}: {message}", "Traceback" in err,
                   time.monotonic() - start, passed)


def fault_sigterm_train(tmp: Path, sig: int = signal.SIGTERM) -> Outcome:
    out, start = tmp / "run", time.monotonic()
    base = ["train", "--out", str(out), "--data-dir", PLACES["data"], "--cache-dir",
            str(tmp / "cache")]
    first, _ = _run(_eqpdenet(*base, *TINY))
    before = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}
    longer = [a if a != "300" and a != "data.train_subset=300" else "data.train_subset=4000"
              for a in TINY]
    # Far more epochs than can finish before the signal, whatever the load: with 100 epochs a
    # loaded machine once finished training before the poll saw 6 CPU seconds, and the signal
    # reached a process that had already exited (status 0, the rerun rightly replacing the run).
    longer[longer.index("--epochs") + 1] = "5000"
    process = subprocess.Popen(_eqpdenet(*base, *longer), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    poll(lambda: any(tmp.glob(".run.staging-*")) and cpu_seconds(process.pid) > 6, 1800)
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        err = f"did not stop within 300 s of the signal; {err}"
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    staging = list(tmp.glob(".run.staging-*"))
    passed = (first.returncode == 0 and after == before and not staging
              and process.returncode == 130 and "Traceback" not in err)
    return Outcome(process.returncode, f"{_message(err)}; previous run "
                   f"{'intact' if after == before else 'CHANGED'}, "
                   f"{len(staging)} staging folder(s) left", "Traceback" in err,
                   time.monotonic() - start, passed)


def fault_failed_rerun(tmp: Path) -> Outcome:
    out, start = tmp / "run", time.monotonic()
    base = ["train", "--out", str(out), "--data-dir", PLACES["data"], "--cache-dir",
            str(tmp / "cache"), *TINY]
    first, _ = _run(_eqpdenet(*base))
    # heat flow with a dt = 100 >> 1/4: the Euler steps blow up at the first batch
    rerun, _ = _run(_eqpdenet(*base, "--set", "model.layer.init='heat'", "--set",
                              "model.layer.init_scale=1000.0", "--set", "model.layer.T=2.0"))
    scored, _ = _run(_eqpdenet("evaluate", str(out / "model.pt"), "--instances", "1"))
    files = sorted(p.name for p in out.iterdir())
    status = json.loads((out / "result.json").read_text())["status"]
    passed = (first.returncode == 0 and rerun.returncode == 1 and "model.pt" not in files
              and status == "diverged" and scored.returncode == 2)
    return Outcome(rerun.returncode, f"{_message(rerun.stderr)}; folder now {files} "
                   f"(status {status}); evaluate: {_message(scored.stderr)}",
                   "Traceback" in rerun.stderr + scored.stderr, time.monotonic() - start, passed)


def fault_rerun_replaces(tmp: Path) -> Outcome:
    out, start = tmp / "run", time.monotonic()
    base = ["train", "--out", str(out), "--data-dir", PLACES["data"], "--cache-dir",
            str(tmp / "cache"), *TINY]
    _run(_eqpdenet(*base))
    again, _ = _run(_eqpdenet(*base, "--seed", "1"))
    from eqpdenet.app.training import load_checkpoint

    _, config, payload = load_checkpoint(out / "model.pt")
    result = json.loads((out / "result.json").read_text())
    passed = (again.returncode == 0 and config.train.seed == 1 and result["seed"] == 1
              and payload["accuracy"] == result["accuracy"])
    return Outcome(again.returncode, f"folder replaced whole: model, config and result all of "
                   f"seed {config.train.seed}", "Traceback" in again.stderr,
                   time.monotonic() - start, passed)


def fault_interrupt_jobs(tmp: Path) -> Outcome:
    return fault_orphans(tmp, signal.SIGINT)


def fault_terminate_jobs(tmp: Path) -> Outcome:
    """SIGTERM while two workers train and save: no process and no temporary file survive."""
    outcome = fault_orphans(tmp, signal.SIGTERM)
    left = [str(p.relative_to(tmp)) for p in tmp.rglob("*.tmp")]
    if left:
        outcome.passed, outcome.message = False, f"{outcome.message}; BUT left {left}"
    else:
        outcome.message += "; no temporary file left"
    return outcome


def fault_hangup_train(tmp: Path) -> Outcome:
    """SIGHUP (the terminal or SSH session closed) ends `train` like SIGTERM."""
    return fault_sigterm_train(tmp, signal.SIGHUP)


def fault_progress_log(tmp: Path) -> Outcome:
    """`train` with its progress on, stderr a file (a log, not a terminal): one plain line per
    epoch, no escape sequences or carriage returns."""
    start = time.monotonic()
    log = tmp / "train.log"
    with open(log, "w") as handle:
        process = subprocess.run(
            _eqpdenet("train", "--out", str(tmp / "run"), "--data-dir", PLACES["data"],
                      "--cache-dir", str(tmp / "cache"), "--model", "fcnn", "--hidden", "8",
                      "--epochs", "3", "--set", "data.train_subset=300", "--set",
                      "data.test_subset=200"),
            env=_env(), stdout=subprocess.DEVNULL, stderr=handle, timeout=600)
    text = log.read_text()
    epochs = [line for line in text.splitlines() if ": epoch " in line]
    clean = "\r" not in text and "\x1b" not in text
    passed = process.returncode == 0 and len(epochs) == 3 and clean
    return Outcome(process.returncode, f"{len(epochs)} epoch lines, "
                   f"{'no' if clean else 'SOME'} escape sequences or carriage returns; the last: "
                   f"{epochs[-1] if epochs else ''!r}", "Traceback" in text,
                   time.monotonic() - start, passed)


def fault_kill_build(tmp: Path) -> Outcome:
    start = time.monotonic()
    env = _env(EQPDENET_BUILD_DIR=str(tmp / "build"))
    code = "from eqpdenet.kernels import cpu; cpu.load_extension(); print('loaded')"
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    poll(lambda: list((tmp / "build").glob("*/lock")), 1800, 0.1)
    os.killpg(process.pid, signal.SIGKILL)  # the build, ninja and the compiler with it
    process.wait()
    stale = [str(p.relative_to(tmp)) for p in (tmp / "build").glob("*/lock")]
    try:
        done, _ = _run([sys.executable, "-c", code], 1200, env)
        passed, message = done.returncode == 0 and "loaded" in done.stdout, \
            f"killed while building (left {stale}); the next process built and loaded the kernel"
    except subprocess.TimeoutExpired:
        done, passed, message = None, False, "the next process hung for 20 min (stale lock)"
    return Outcome(done.returncode if done else None, message, False, time.monotonic() - start,
                   passed)


def fault_broken_pipe(tmp: Path) -> Outcome:
    start = time.monotonic()
    done = subprocess.run(f"{sys.executable} -m eqpdenet info | head -1", shell=True,
                          capture_output=True, text=True, env=_env(), timeout=300)
    passed = "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr \
        and done.stdout.startswith("eqpdenet ")
    return Outcome(done.returncode, f"stdout: {done.stdout.strip()!r}; stderr: "
                   f"{done.stderr.strip()!r}", "Traceback" in done.stderr,
                   time.monotonic() - start, passed)


def _tmpfs(tmp: Path, size: str, readonly: bool) -> Path | None:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return None
    mount = tmp / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        return None
    if readonly:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    return mount


def _on_tmpfs(size: str, free: int | None, argv: list[str], fragment: str):
    """``argv`` with ``{mnt}`` a fresh tmpfs of ``size`` with ``free`` bytes left (None: mounted
    read-only)."""
    def run(tmp: Path) -> Outcome:
        mount = _tmpfs(tmp, size, readonly=free is None)
        if mount is None:
            return Outcome(None, "skipped: needs root to mount a tmpfs", False, 0.0, True, "skip")
        try:
            if free is not None:  # fill it, then give back ``free`` bytes
                filler = mount / "filler"
                with open(filler, "wb", buffering=0) as handle:
                    try:
                        while True:
                            handle.write(b"\0" * 4096)
                    except OSError:
                        pass
                    handle.truncate(max(0, filler.stat().st_size - free))
            return cli(*[a.replace("{mnt}", str(mount)) for a in argv], fragment=fragment)(tmp)
        finally:
            subprocess.run(["umount", str(mount)], capture_output=True)
    return run



# ----------------------------------------------------------------------------- round 2 helpers
# (issue 20: the kinds of case a campaign from outside found, and their siblings)


def _user_folder(tmp: Path) -> None:
    mine = tmp / "mine"
    mine.mkdir()
    for name, text in (("model.pt", "my model"), ("config.toml", "mine = 1"),
                       ("notes.txt", "my notes")):
        (mine / name).write_text(text)


def _user_folder_intact(tmp: Path, done) -> str | None:
    names = sorted(p.name for p in (tmp / "mine").iterdir())
    if names != ["config.toml", "model.pt", "notes.txt"]:
        return f"the folder now holds {names}"
    if (tmp / "mine" / "model.pt").read_text() != "my model" or \
            (tmp / "mine" / "config.toml").read_text() != "mine = 1":
        return "a file of the user's was changed"
    return None


_user_folder_intact.says = "the user's files untouched, nothing added"


def _run_behind_a_link(tmp: Path) -> None:
    first, _ = _run(_eqpdenet("train", "--out", str(tmp / "real"), "--data-dir", PLACES["data"],
                              "--cache-dir", str(tmp / "cache"), *TINY))
    if first.returncode:
        raise RuntimeError(f"the first run failed: {_message(first.stderr)}")
    (tmp / "link").symlink_to(tmp / "real", target_is_directory=True)


def _link_kept(tmp: Path, done) -> str | None:
    if not (tmp / "link").is_symlink():
        return "the link was replaced"
    left = sorted(p.name for p in tmp.iterdir() if p.name not in ("real", "link", "cache"))
    if left:
        return f"left {left}"
    seed = json.loads((tmp / "real" / "result.json").read_text())["seed"]
    return None if seed == 1 else f"the run behind the link is of seed {seed}"


_link_kept.says = "the link kept, the run behind it replaced (seed 1), no staging left"


def _here(tmp: Path) -> None:
    (tmp / "here").mkdir()


def _here_untouched(tmp: Path, done) -> str | None:
    names = sorted(p.name for p in (tmp / "here").iterdir()) if (tmp / "here").is_dir() else None
    return None if names == [] else f"the current folder now holds {names}"


_here_untouched.says = "the current folder untouched"


def _nothing_at(name: str):
    def check(tmp: Path, done) -> str | None:
        return f"{name} was created" if (tmp / name).exists() else None

    check.says = f"nothing written ({name} not created)"
    return check


def _equivariance_default(tmp: Path, done) -> str | None:
    table = tmp / "runs" / "equivariance-quick" / "table.md"
    docs = ROOT / "docs" / "equivariance" / "table.md"
    if not table.is_file():
        return "no table under runs/equivariance-quick"
    return None if docs.stat().st_mtime < START_TIME else "docs/equivariance/table.md changed"


_equivariance_default.says = "written to runs/equivariance-quick; docs/equivariance untouched"

START_TIME = time.time()

# ----------------------------------------------------------------------------- the cases


def _ray_at_a_silent_listener(tmp: Path) -> Outcome:
    """``--address`` where something accepts connections but is no Ray head (a web server, the
    dashboard's port): ``ray.init`` waited for it without end."""
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        return R("--executor", "ray", "--address", f"127.0.0.1:{port}",
                 fragment="does not answer as a Ray head does", timeout=120,
                 after=_nothing_at("results"))(tmp)


def T(*args, fragment, **kwargs):  # noqa: N802 - a short name for the long table below
    return cli("train", "--out", "{tmp}/run", "--data-dir", "{data}", "--cache-dir", "{tmp}/c",
               "--no-progress", *args, fragment=fragment, **kwargs)


def R(*args, fragment, **kwargs):  # noqa: N802
    return cli("reproduce", "--out", "{tmp}/results", "--data-dir", "{data}", "--no-progress",
               *args, fragment=fragment, **kwargs)


MODEL = "EqPdeNet(8, input_mean=0.1307, input_std=0.3081)"
X = "torch.rand(2, 1, 28, 28)"

def _marked_sweep_with_plot(tmp: Path) -> None:
    (tmp / "S").mkdir()
    (tmp / "S" / ".eqpdenet-folder").write_text('{"kind": "reproduce"}\n')
    (tmp / "S" / "accuracy_vs_params.png").write_bytes(b"the sweep's plot")


def _plot_kept(tmp: Path, done) -> str | None:
    kept = (tmp / "S" / "accuracy_vs_params.png").read_bytes() == b"the sweep's plot"
    return None if kept else "the sweep's plot was replaced"


_plot_kept.says = "the sweep's plot kept"


def _usetex_rc(tmp: Path) -> None:
    (tmp / "rc").mkdir()
    (tmp / "rc" / "matplotlibrc").write_text("text.usetex: True\n")


ROUND15_SWEEP = sweep_args(TINY_SWEEP + ["seeds=[0, 1]", "models=['fcnn']",
                                         "checkpoint_seeds=[0]"])


def _resumable_sweep_without_checkpoints_folder(tmp: Path) -> None:
    """A finished tiny sweep whose seed-0 run (which keeps a checkpoint) is to be done again,
    and a file where its ``checkpoints`` folder was."""
    out = tmp / "S"
    done, _ = _run(_eqpdenet("reproduce", "--out", str(out), "--data-dir", PLACES["data"],
                             "--cache-dir", str(tmp / "c"), "--no-progress", *ROUND15_SWEEP), 900)
    assert done.returncode == 0, done.stderr[-500:]
    (out / "runs" / "fcnn-h8-seed0.json").unlink()
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("".join(line + "\n" for line in lines
                                               if '"fcnn-h8-seed0"' not in line))
    shutil.rmtree(out / "checkpoints")
    (out / "checkpoints").write_text("a file in the way")


def _no_run_redone(tmp: Path, done) -> str | None:
    return ("the seed-0 run was trained again" if (tmp / "S" / "runs" / "fcnn-h8-seed0.json")
            .exists() else None)


_no_run_redone.says = "no run trained"


def _small_npz(tmp: Path, train_classes: int, test_classes: int) -> None:
    """t.npz: 60 training and 30 test images, 8x8 random pixels, labels cycling through
    ``train_classes`` and ``test_classes`` classes."""
    import numpy as np

    rng = np.random.default_rng(0)
    with open(tmp / "t.npz", "wb") as handle:
        np.savez(handle, x_train=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8),
                 y_train=np.arange(60) % train_classes,
                 x_test=rng.integers(0, 256, (30, 8, 8), dtype=np.uint8),
                 y_test=np.arange(30) % test_classes)


def _class_only_in_test(tmp: Path) -> None:
    """t.npz: 3 classes, class 2 in the test split only."""
    _small_npz(tmp, 2, 3)


_TEN_LOGITS_PLUGIN = """
from torch import nn
from eqpdenet.models import MODELS

class TenOut(nn.Module):
    def __init__(self, image_size: int = 28, in_channels: int = 1):
        super().__init__()
        self.linear = nn.Linear(in_channels * image_size * image_size, 10)

    def forward(self, images):
        return self.linear(images.flatten(1))

MODELS.register("tenout", TenOut)
"""

_EVAL_FAILING_PLUGIN = """
from torch import nn
from eqpdenet.models import MODELS

class TrainOnly(nn.Module):
    def __init__(self, image_size: int = 28, in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(in_channels * image_size * image_size, classes)

    def forward(self, images):
        if not self.training:
            raise RuntimeError("eval mode broke")
        return self.linear(images.flatten(1))

MODELS.register("trainonly", TrainOnly)
"""

_FAILING_LOADER_PLUGIN = """
from eqpdenet.data.datasets import register_dataset

def _down(data_dir=None, cache_dir=None, seed=0):
    raise RuntimeError("download server said 503")

register_dataset("flaky", _down)
"""


def _plugin(name: str, text: str, with_data: bool = False) -> Callable[[Path], None]:
    """setup: the module ``name`` (``text``) in the case's folder, and with ``with_data`` a
    t.npz of 3 classes in both splits (:func:`_small_npz`)."""
    def setup(tmp: Path) -> None:
        (tmp / f"{name}.py").write_text(text)
        if with_data:
            _small_npz(tmp, 3, 3)
    return setup


def _plugin_env(name: str) -> dict:
    return {**_env(EQPDENET_PLUGINS=name),
            "PYTHONPATH": "{tmp}" + os.pathsep + _env()["PYTHONPATH"]}


CASES = [
    # configuration and flags: refused before any data is loaded
    Case("epochs-0", "config", "`train --epochs 0`", T("--epochs", "0", fragment="train.epochs")),
    Case("hidden-0", "config", "`train --hidden 0`", T("--hidden", "0", fragment="model.hidden")),
    Case("set-epochs-0", "config", "`--set train.epochs=0`",
         T("--set", "train.epochs=0", fragment="train.epochs: must be >= 1")),
    Case("epochs-negative", "config", "`--epochs -1`", T("--epochs", "-1", fragment="train.epochs")),
    Case("seed-negative", "config", "`--seed -1`", T("--seed", "-1", fragment="train.seed")),
    Case("lr-inf", "config", "`--set train.lr=inf`",
         T("--set", "train.lr=inf", fragment="train.lr: must be a finite number")),
    Case("lr-nan", "config", "`--set train.lr=nan`",
         T("--set", "train.lr=nan", fragment="train.lr: must be a finite number")),
    Case("lr-negative", "config", "`--set train.lr=-1`",
         T("--set", "train.lr=-1", fragment="train.lr: must be positive")),
    Case("lr-huge-toml", "config", "`--set train.lr=1e400` (TOML reads inf)",
         T("--set", "train.lr=1e400", fragment="train.lr: must be a finite number")),
    Case("std-inf", "config", "`--set model.input_std=inf`",
         T("--set", "model.input_std=inf", fragment="model.input_std")),
    Case("std-0", "config", "`--set model.input_std=0`",
         T("--set", "model.input_std=0", fragment="model.input_std: must be positive")),
    Case("mean-nan", "config", "`--set model.input_mean=nan`",
         T("--set", "model.input_mean=nan", fragment="model.input_mean")),
    Case("steps", "config", "`--set model.layer.T=1e6 --set model.layer.dt=1e-3` (1e9 steps)",
         T("--set", "model.layer.T=1e6", "--set", "model.layer.dt=1e-3",
           fragment="Euler steps per PDE, more than the bound of 100,000")),
    Case("memory", "config", "`T=1000, dt=0.01` (1e5 steps: ~400 GB of stored states)",
         T("--set", "model.layer.T=1000", "--set", "model.layer.dt=0.01",
           fragment="training would need about")),
    Case("dt-0", "config", "`--set model.layer.dt=0`",
         T("--set", "model.layer.dt=0", fragment="layer.dt: must be positive")),
    Case("set-section", "config", "`--set model=3`",
         T("--set", "model=3", fragment="model: expects a table of ModelConfig fields")),
    Case("set-subsection", "config", "`--set model.layer=3`",
         T("--set", "model.layer=3", fragment="model.layer: expects a table")),
    Case("set-type", "config", "`--set model.hidden='a'`",
         T("--set", "model.hidden='a'", fragment="model.hidden: must be an integer")),
    Case("set-bool", "config", "`--set train.select_on_validation=1`",
         T("--set", "train.select_on_validation=1", fragment="must be true or false")),
    Case("set-unknown", "config", "`--set train.lrr=1`",
         T("--set", "train.lrr=1", fragment="unknown field 'lrr'")),
    Case("set-no-value", "config", "`--set train.lr`",
         T("--set", "train.lr", fragment="--set expects section.field=value")),
    Case("select-no-validation", "config", "`--set train.select_on_validation=true`",
         T("--set", "train.select_on_validation=true", fragment="needs data.validation > 0")),
    Case("validation-range", "config", "`--set data.validation=12000`",
         T("--set", "data.validation=12000", fragment="data.validation")),
    Case("subset-negative", "config", "`--set data.train_subset=-5`",
         T("--set", "data.train_subset=-5", fragment="data.train_subset")),
    Case("subset-float", "config", "`--set data.train_subset=1.5`",
         T("--set", "data.train_subset=1.5", fragment="data.train_subset: must be an integer")),
    Case("batch-0", "config", "`--set train.batch_size=0`",
         T("--set", "train.batch_size=0", fragment="train.batch_size")),
    Case("invariant-set", "config", "`--set model.layer.invariants=['affine']`",
         T("--set", "model.layer.invariants=['affine']", fragment="unknown invariant set")),
    Case("stencil", "config", "`--set model.layer.stencil='sobel'`",
         T("--set", "model.layer.stencil='sobel'", fragment="unknown stencil 'sobel'")),
    Case("optimizer", "config", "`--set train.optimizer='lbfgs'`",
         T("--set", "train.optimizer='lbfgs'", fragment="train.optimizer")),
    Case("scenario", "config", "`--set scenarios=['rotated']`",
         T("--set", "scenarios=['rotated']", fragment="unknown scenario 'rotated'")),
    Case("model-kind", "config", "`--model resnet`", T("--model", "resnet", fragment="invalid choice")),
    Case("no-gpu", "config", "`--device cuda` without a GPU",
         T("--device", "cuda", fragment="no GPU is available")),
    Case("config-folder", "config", "`--config <a folder>`",
         T("--config", "{root}/folder", fragment="is a folder; give the TOML file")),
    Case("config-missing", "config", "`--config <missing file>`",
         T("--config", "{root}/none.toml", fragment="config file not found")),
    Case("config-not-toml", "config", "`--config <not TOML>`",
         T("--config", "{root}/file.txt", fragment="is not valid TOML")),
    Case("config-binary", "config", "`--config <binary file>`",
         T("--config", "{root}/binary.toml", fragment="is not UTF-8 text")),
    Case("jobs-0", "config", "`reproduce --jobs 0`",
         R("--jobs", "0", fragment="'0' is not a positive integer")),
    Case("jobs-64", "config", "`reproduce --jobs 64` (64 workers of ~0.6 GB)",
         R("--jobs", "64", fragment="or lower --jobs")),
    Case("seeds-empty", "config", "`reproduce --set seeds=[]`",
         R("--set", "seeds=[]", fragment="seeds: must be distinct and non-empty")),
    Case("seeds-repeated", "config", "`reproduce --set seeds=[1, 1]`",
         R("--set", "seeds=[1, 1]", fragment="seeds: must be distinct")),
    Case("hidden-sizes-0", "config", "`reproduce --set hidden_sizes=[0]`",
         R("--set", "hidden_sizes=[0]", fragment="hidden_sizes[0]: must be >= 1")),
    Case("models-unknown", "config", "`reproduce --set models=['resnet']`",
         R("--set", "models=['resnet']",
           fragment="models[0]: 'resnet' is not a model of the paper's tables")),
    Case("study-epochs-0", "config", "`study --epochs 0`",
         cli("study", "--out", "{tmp}/s", "--epochs", "0", fragment="train.epochs")),
    Case("study-hidden-0", "config", "`study --hidden 0`",
         cli("study", "--out", "{tmp}/s", "--hidden", "0", fragment="hidden_sizes[0]")),
    Case("evaluate-instances-0", "config", "`evaluate --instances 0`",
         cli("evaluate", "{ckpt}", "--instances", "0",
             fragment="is not a number of instances from 1 to 1000")),
    Case("evaluate-scenario", "config", "`evaluate --scenarios rotated`",
         cli("evaluate", "{ckpt}", "--scenarios", "rotated", fragment="unknown scenario")),
    Case("figure-angle-nan", "config", "`figure diagram --angle nan`",
         cli("figure", "diagram", "--angle", "nan", "--out", "{tmp}/f.png",
             fragment="'nan' is not an angle in degrees within ±1e6")),
    Case("figure-scale-0", "config", "`figure diagram --scale 0`",
         cli("figure", "diagram", "--scale", "0", "--out", "{tmp}/f.png",
             fragment="'0' is not a scale between 0.001 and 1000")),
    Case("figure-sample", "config", "`figure diagram --sample 99999`",
         cli("figure", "diagram", "--sample", "99999", "--data-dir", "{data}", "--out",
             "{tmp}/f.png", fragment="sample 99999: MNIST's test set has digits 0 ... 9999")),
    Case("figure-pde-index", "config", "`figure diagram --pde 9 --checkpoint <4 PDEs>`",
         cli("figure", "diagram", "--pde", "9", "--checkpoint", "{ckpt}", "--data-dir", "{data}",
             "--out", "{tmp}/f.png", fragment="--pde 9: the checkpoint has 4 PDEs")),
    Case("figure-out-folder", "config", "`figure diagram --out <a folder named .png>`",
         cli("figure", "diagram", "--out", "{root}/folder.png", "--data-dir", "{data}",
             fragment="a folder is in the way of the file")),
    Case("describe-samples", "config", "`describe --samples 10000 --out d`",
         cli("describe", "{ckpt}", "--samples", "10000", "--out", "{tmp}/d", "--data-dir",
             "{data}", fragment="sample 10000")),
    Case("describe-frames-0", "config", "`describe --frames 0`",
         cli("describe", "{ckpt}", "--frames", "0", fragment="is not a number of frames")),
    Case("equivariance-T-0", "config", "`equivariance --T 0`",
         cli("equivariance", "--T", "0", fragment="is not a positive number")),
    Case("equivariance-checkpoint", "config", "`equivariance --quick --checkpoint <missing>`",
         cli("equivariance", "--quick", "--checkpoint", "{root}/none.pt", "--out", "{tmp}/eq",
             fragment="checkpoint not found")),
    Case("symbolic-group", "config", "`symbolic lorentz`",
         cli("symbolic", "lorentz", fragment="lorentz")),
    Case("unknown-command", "config", "`eqpdenet trian`",
         cli("trian", fragment="invalid choice: 'trian'")),
    # output folders and files
    Case("out-is-file", "output", "`train --out <an existing file>`",
         T("--out", "{root}/file.txt", fragment="is a file, not a folder")),
    Case("out-under-file", "output", "`train --out <file>/run`",
         T("--out", "{root}/file.txt/run", fragment="is a file, not a folder")),
    Case("out-cannot-create", "output", "`train --out /proc/eqpdenet-run`",
         T("--out", "/proc/eqpdenet-run", fragment="cannot create the folder")),
    Case("out-foreign-files", "output", "`train --out <a folder with other files>`",
         T("--out", "{root}/foreign", fragment="holds files that eqpdenet did not write as a run")),
    Case("reproduce-out-file", "output", "`reproduce --out <an existing file>`",
         R("--out", "{root}/file.txt", fragment="is a file, not a folder")),
    Case("disk-full", "output", "`train --out` on a full file system (tmpfs)",
         _on_tmpfs("1m", 0, ["train", "--out", "{mnt}/run", "--data-dir", "{data}",
                             "--no-progress"], "no space left on the device")),
    Case("disk-nearly-full", "output", "`train --out` with 256 KiB free (the model needs ~1 MB)",
         _on_tmpfs("2m", 256 * 1024, ["train", "--out", "{mnt}/run", "--data-dir", "{data}",
                                      "--no-progress"], "not enough space for the results")),
    Case("read-only", "output", "`train --out` on a read-only file system",
         _on_tmpfs("1m", None, ["train", "--out", "{mnt}/run", "--data-dir", "{data}",
                                "--no-progress"], "read-only file system")),
    Case("json-full", "output", "`evaluate --json /dev/full` (the device is full)",
         cli("evaluate", "{ckpt}", "--instances", "1", "--scenarios", "test", "--data-dir",
             "{data}", "--cache-dir", "{tmp}/c", "--json", "/dev/full",
             fragment="No space left on device")),
    Case("report-missing", "output", "`report <folder without results>`",
         cli("report", "{root}/folder", fragment="no results in")),
    Case("report-corrupt", "output", "`report` with a truncated line in results.jsonl",
         cli("report", "{root}/corrupt", fragment="results.jsonl:2: not a JSON line")),
    Case("report-duplicates", "output", "`report` with every run recorded twice (two writers)",
         cli("report", "{root}/duplicates", fragment="wrote", expect="ok")),
    Case("report-contradictory", "output", "`report` with one run recorded with two accuracies",
         cli("report", "{root}/contradictory", fragment="is recorded twice with different "
                                                       "accuracy")),
    Case("data-missing", "output", "`train --data-dir <folder without MNIST>`",
         T("--data-dir", "{root}/empty-data", "--cache-dir", "{tmp}/c2", "--set",
           "data.source='generated'", fragment="mnist")),
    Case("data-truncated", "output", "`train` with a truncated MNIST file",
         T("--data-dir", "{root}/broken-data", "--cache-dir", "{tmp}/c3", *TINY,
           fragment="train-images-idx3-ubyte.gz")),
    Case("cache-is-file", "output", "`train --cache-dir <an existing file>` (a warning after "
         "ROTMNIST's generation until round 12; refused before it now, as a mistyped folder is)",
         cli("train", "--out", "{tmp}/run", "--data-dir", "{data}", "--cache-dir",
             "{root}/file.txt", *TINY, fragment="is a file, not a folder",
             after=_nothing_at("run"))),
    # checkpoints
    Case("ckpt-missing", "checkpoint", "`evaluate <missing file>`",
         cli("evaluate", "{root}/none.pt", fragment="checkpoint not found")),
    Case("ckpt-folder", "checkpoint", "`evaluate <a folder>`",
         cli("evaluate", "{root}/folder", fragment="is a folder; give the checkpoint file")),
    Case("ckpt-text", "checkpoint", "`evaluate <a text file>`",
         cli("evaluate", "{root}/file.txt", fragment="is not a readable eqpdenet checkpoint")),
    Case("ckpt-truncated", "checkpoint", "`evaluate <a truncated checkpoint>`",
         cli("evaluate", "{root}/truncated.pt", fragment="is not a readable eqpdenet checkpoint")),
    Case("ckpt-state-dict", "checkpoint", "`evaluate <a bare state_dict>`",
         cli("evaluate", "{root}/state_dict.pt", fragment="missing format tag")),
    Case("ckpt-edited-hidden", "checkpoint", "`evaluate` a checkpoint whose config says h=32",
         cli("evaluate", "{root}/edited-hidden.pt", fragment="model.hidden is 32 in the "
                                                            "configuration but 8 in the weights")),
    Case("ckpt-edited-invariants", "checkpoint", "... whose config has 1 PDE instead of 4",
         cli("evaluate", "{root}/edited-invariants.pt",
             fragment="model.layer.invariants (the number of PDEs) is 1")),
    Case("ckpt-edited-kind", "checkpoint", "... whose config says fcnn",
         cli("evaluate", "{root}/edited-kind.pt", fragment="model.kind: the weights have a PDE")),
    Case("ckpt-invalid-config", "checkpoint", "... whose config says hidden = 0",
         cli("evaluate", "{root}/edited-invalid.pt",
             fragment="the saved configuration is invalid")),
    Case("ckpt-no-gpu", "checkpoint", "`evaluate --device cuda` without a GPU",
         cli("evaluate", "{ckpt}", "--device", "cuda", fragment="no GPU is available")),
    # library inputs
    Case("nan-pixel", "library", "EqPdeNet on images with one NaN pixel",
         lib(f"{MODEL}({X}.index_fill_(3, torch.tensor([5]), float('nan')))",
             expect="InputError", fragment="the input is at fault, not the PDE scheme")),
    Case("inf-pixel", "library", "EqPdeNet on images with an inf pixel",
         lib(f"{MODEL}({X}.index_fill_(2, torch.tensor([3]), float('inf')))",
             expect="InputError", fragment="inf")),
    Case("nan-layer", "library", "PDELayer.paper() on a NaN image",
         lib("PDELayer.paper()(torch.full((1, 1, 8, 8), float('nan')))", expect="InputError",
             fragment="u contains non-finite values")),
    Case("nan-fcnn", "library", "FCNN on a NaN image (no PDE to catch it)",
         lib("FCNN(8)(torch.full((1, 1, 28, 28), float('nan')))", expect="InputError",
             fragment="the input is at fault")),
    Case("0-255-eqpdenet", "library", "0-255 images into a model standardised for 0-1",
         lib(f"{MODEL}({X} * 255)", expect="warning", fragment="0-255 instead of 0-1")),
    Case("0-255-fcnn", "library", "0-255 images into FCNN standardised for 0-1",
         lib(f"FCNN(8, input_mean=0.1307, input_std=0.3081)({X} * 255).shape", expect="warning",
             fragment="torch.Size([2, 10])")),
    Case("float16", "library", "float16 images into a float32 EqPdeNet",
         lib(f"{MODEL}({X}.half()).dtype", expect="ok", fragment="torch.float16")),
    Case("bfloat16", "library", "bfloat16 images into a float32 EqPdeNet",
         lib(f"{MODEL}({X}.bfloat16()).dtype", expect="ok", fragment="torch.bfloat16")),
    Case("float64", "library", "float64 images into a float32 PDELayer",
         lib(f"PDELayer.paper()({X}.double())", expect="InputTypeError",
             fragment="is torch.float64 but the module computes in torch.float32")),
    Case("float32-into-64", "library", "float32 images into a float64 PDELayer",
         lib(f"PDELayer.paper().double()({X}).dtype", expect="ok", fragment="torch.float32")),
    Case("uint8", "library", "uint8 images (0-255 integers)",
         lib(f"{MODEL}(({X} * 255).to(torch.uint8))", expect="InputTypeError",
             fragment="must be a floating-point tensor")),
    Case("no-channel-axis", "library", "images of shape (B, 28, 28)",
         lib(f"{MODEL}(torch.rand(2, 28, 28))", expect="InputError",
             fragment="must have shape (batch, channels, height, width)")),
    Case("wrong-size", "library", "32x32 images into a 28x28 model",
         lib(f"{MODEL}(torch.rand(2, 1, 32, 32))", expect="InputError",
             fragment="expected images of shape (batch, 1, 28, 28)")),
    Case("numpy", "library", "a NumPy array instead of a tensor",
         lib(f"{MODEL}({X}.numpy())", expect="InputTypeError", fragment="must be a torch.Tensor")),
    Case("empty-batch", "library", "an empty batch (0, 1, 28, 28)",
         lib(f"{MODEL}(torch.rand(0, 1, 28, 28)).shape", expect="ok",
             fragment="torch.Size([0, 10])")),
    Case("empty-batch-lifted", "library", "an empty batch into `LiftedPDENet` (C++ kernels)",
         lib("models.LiftedPDENet()(torch.rand(0, 1, 28, 28)).shape", expect="ok",
             fragment="torch.Size([0, 10])")),
    Case("empty-batch-gcnn", "library", "an empty batch into the G-CNN (e2cnn)",
         lib("models.GCNN()(torch.rand(0, 1, 28, 28)).shape", expect="ok",
             fragment="torch.Size([0, 10])")),
    Case("pickle-lifted", "library", "`pickle.dumps(LiftedPDENet())` (what `torch.save(model)` does)",
         lib("len(__import__('pickle').dumps(models.LiftedPDENet())) > 0", expect="ok",
             fragment="True")),
    Case("config-tuple", "library", "`LiftedPDEConfig(channels=(8, 16, 24))` (a tuple)",
         lib("models.LiftedPDEConfig(channels=(8, 16, 24)).channels", expect="ok",
             fragment="[8, 16, 24]")),
    Case("config-not-list", "library", "`LiftedPDEConfig(channels=8)`",
         lib("models.LiftedPDEConfig(channels=8)", expect="ConfigError",
             fragment="lifted_pde.channels: must be a list")),
    Case("jvp-lifted", "library", "`torch.func.jvp` through `LiftedPDENet` (C++ kernels)",
         lib("bool(torch.func.jvp(models.LiftedPDENet().eval(), (torch.rand(1, 1, 28, 28),), "
             "(torch.rand(1, 1, 28, 28),))[1].abs().sum() > 0)", expect="ok", fragment="True")),
    Case("create-graph", "library", "`create_graph=True` through EqPdeNet's fused kernel",
         lib("torch.autograd.grad(EqPdeNet()((x := torch.rand(2, 1, 28, 28, "
             "requires_grad=True))).sum(), x, create_graph=True)", expect="NotImplementedError",
             fragment="backend='reference'")),
    Case("layer-steps", "library", "`LayerConfig(T=1e6, dt=1e-3)`",
         lib("LayerConfig(T=1e6, dt=1e-3)", expect="ConfigError", fragment="Euler steps")),
    Case("layer-dt", "library", "`PDELayer.build(dt=-1)`",
         lib("PDELayer.build(dt=-1.0)", expect="ConfigError", fragment="layer.dt")),
    Case("model-hidden-0", "library", "`EqPdeNet(hidden=0)`",
         lib("EqPdeNet(hidden=0)", expect="ConfigError", fragment="hidden")),
    # round 2 (issue 20): horizons, bounds and waits
    Case("T-not-multiple", "config", "`--set model.layer.T=0.25` (dt 0.1: 2.5 steps)",
         T("--set", "model.layer.T=0.25", fragment="T = 0.25 is not a whole multiple of dt = 0.1")),
    Case("T-below-dt", "config", "`--set model.layer.T=0.05` (dt 0.1: no step)",
         T("--set", "model.layer.T=0.05", fragment="T = 0.05 is smaller than dt = 0.1")),
    Case("figure-unstable", "config", "`figure diagram --dt 0.5` (heat: a dt > 1/4)",
         cli("figure", "diagram", "--dt", "0.5", "--out", "{tmp}/f.png",
             fragment="is unstable with dt = 0.5")),
    Case("figure-T-not-multiple", "config", "`figure diagram --T 0.25`",
         cli("figure", "diagram", "--T", "0.25", "--out", "{tmp}/f.png",
             fragment="T = 0.25 is not a whole multiple of dt = 0.1")),
    Case("equivariance-steps", "config", "`equivariance --quick --T 1e7` (1e8 Euler steps)",
         cli("equivariance", "--quick", "--T", "1e7", "--out", "{tmp}/eq",
             fragment="more than the bound of 100,000")),
    Case("equivariance-dt-grid", "config", "`equivariance --quick --T 0.3` (its dt study uses 0.2)",
         cli("equivariance", "--quick", "--T", "0.3", "--out", "{tmp}/eq",
             fragment="the dt study integrates to --T = 0.3")),
    Case("epochs-huge", "config", "`--set train.epochs=1000000000000`",
         T("--set", "train.epochs=1000000000000", fragment="more than the bound of 100,000 epochs")),
    Case("hidden-1e8", "config", "`--set model.hidden=100000000` (a 313 GB perceptron)",
         T("--set", "model.hidden=100000000", fragment="parameters with their gradients")),
    Case("hidden-1e20", "config", "`--set model.hidden=100000000000000000000` (beyond 64 bits)",
         T("--set", "model.hidden=100000000000000000000", fragment="must be below 2**63")),
    Case("degree-50", "config", "`--set model.layer.rhs='polynomial' --set model.layer.degree=50`",
         T("--set", "model.layer.rhs='polynomial'", "--set", "model.layer.degree=50",
           fragment="3,478,760 terms, more than the bound of 10,000")),
    Case("blocks-huge", "config", "`--model invariant_pde --set model.invariant_pde.blocks=[100000]`",
         T("--model", "invariant_pde", "--set", "model.invariant_pde.channels=[4]", "--set",
           "model.invariant_pde.blocks=[100000]", fragment="more than the bound of 1,000")),
    Case("cnn-layers-huge", "config", "`--model cnn --set model.cnn.layers=100000`",
         T("--model", "cnn", "--set", "model.cnn.layers=100000", fragment="cnn.layers: must be <=")),
    Case("symbolic-channels", "config", "`symbolic --channels 9` (hours of SymPy)",
         cli("symbolic", "--channels", "9", fragment="at most 4")),
    Case("instances-huge", "config", "`evaluate --instances 100000`",
         cli("evaluate", "{ckpt}", "--instances", "100000",
             fragment="is not a number of instances from 1 to 1000")),
    Case("benchmark-jobs-0", "config", "`benchmark --jobs 0` (nothing may be written)",
         cli("benchmark", "--jobs", "0", "--out", "{tmp}/bench", fragment="is not a positive",
             after=_nothing_at("bench"))),
    Case("ray-no-cluster", "config", "`reproduce --executor ray --address 127.0.0.1:9` (no head)",
         R("--executor", "ray", "--address", "127.0.0.1:9", fragment="no Ray cluster there",
           timeout=120)),
    # round 2: output folders never the user's
    Case("out-empty", "output", "`train --out ''`",
         T("--out", "", fragment="is not a path (it is empty)")),
    Case("out-current", "output", "`train --out .` in an empty folder",
         T("--out", ".", fragment="is the current folder or holds it", cwd="{tmp}/here",
           setup=_here, after=_here_untouched)),
    Case("out-users-model", "output", "`train --out <a folder with a model.pt of the user's>`",
         T("--out", "{tmp}/mine", fragment="eqpdenet did not write as a run", setup=_user_folder,
           after=_user_folder_intact)),
    Case("reproduce-users-config", "output", "`reproduce --out <a folder with the user's "
         "config.toml>`", R("--out", "{tmp}/mine", fragment="eqpdenet did not write",
                            setup=_user_folder, after=_user_folder_intact)),
    Case("out-symlink", "output", "`train --out <a link to a run folder>` (a rerun, seed 1)",
         T("--out", "{tmp}/link", "--data-dir", "{data}", "--cache-dir", "{tmp}/cache", *TINY,
           "--seed", "1", expect="ok", fragment="->", setup=_run_behind_a_link,
           after=_link_kept)),
    Case("json-under-file", "output", "`evaluate --json <a file>/summary.json`",
         cli("evaluate", "{ckpt}", "--json", "{root}/file.txt/summary.json",
             fragment="file.txt is a file, not a folder")),
    Case("equivariance-default", "output", "`equivariance --quick` without --out",
         cli("equivariance", "--quick", "--data-dir", "{data}", expect="ok", fragment="wrote",
             cwd="{tmp}", after=_equivariance_default)),
    Case("report-nan", "output", "`report` of results with a NaN accuracy",
         cli("report", "{root}/sweep-nan", fragment="accuracy test is nan, not a finite")),
    Case("report-killed", "output", "`report` of a sweep killed after 1 run of 3",
         cli("report", "{root}/sweep-killed", expect="warning", status=3,
             fragment="the sweep is incomplete: 2 of 3 runs have no result")),
    Case("report-file", "output", "`report <a file>`",
         cli("report", "{root}/file.txt", fragment="a file, not a results folder")),
    # round 3 (2026-12-05): found by the outside probes of that session
    Case("ckpt-flipped", "output", "`evaluate <a checkpoint with one byte changed>`",
         cli("evaluate", "{root}/flipped.pt", "--data-dir", "{data}",
             fragment="fails its CRC check")),
    Case("json-onto-ckpt", "output", "`evaluate M.pt --json M.pt`",
         cli("evaluate", "{tmp}/model.pt", "--json", "{tmp}/model.pt", "--data-dir", "{data}",
             fragment="is the command's own input",
             setup=lambda tmp: shutil.copy(PLACES["ckpt"], tmp / "model.pt"))),
    Case("export-suffix", "output", "`export --format onnx --out m.pt2`",
         cli("export", "{ckpt}", "--format", "onnx", "--out", "{tmp}/m.pt2", "--data-dir", "{data}",
             fragment="file is named *.onnx")),
    Case("figure-scale-tiny", "config", "`figure diagram --scale 1e-300`",
         cli("figure", "diagram", "--scale", "1e-300", "--out", "{tmp}/f.png",
             fragment="is not a scale between 0.001 and 1000")),
    Case("report-not-a-record", "output", "`report` of results with a line `\"x\"`",
         cli("report", "{root}/not-a-record", fragment="not a run record")),
    Case("batch-one-cnn", "config", "`train --model cnn --set train.batch_size=1`",
         T("--model", "cnn", "--set", "train.batch_size=1", fragment="train.batch_size")),
    Case("data-npz-truncated", "data", "`train --dataset <a .npz cut in half>`",
         T("--dataset", "{root}/npz/truncated.npz", fragment="not a readable .npz file")),
    Case("data-stray-label", "data", "`train --dataset <one label 2**32-1>`",
         T("--dataset", "{root}/npz/stray-label.npz",
           fragment="the largest label is 4294967295")),
    Case("data-sorted-subset", "data", "`train --dataset <sorted by class> --set "
         "data.train_subset=20`",
         T("--dataset", "{root}/npz/sorted.npz", "--set", "data.train_subset=20",
           fragment="hold class 0 only")),
    # round 2: data files
    Case("data-one-class", "data", "`train --dataset <a .npz of one class>`",
         T("--dataset", "{root}/npz/one-class.npz", fragment="at least two classes")),
    Case("data-empty", "data", "`train --dataset <a .npz without images>`",
         T("--dataset", "{root}/npz/empty.npz", fragment="holds no labels (no images)")),
    Case("data-upper-suffix", "data", "`train --dataset DIGITS.NPZ`",
         T("--dataset", "{root}/npz/DIGITS.NPZ", "--model", "fcnn", "--hidden", "4", "--epochs",
           "1", expect="ok", fragment="->")),
    Case("data-too-small", "data", "`train --dataset <2x2 images> --model invariant_pde`",
         T("--dataset", "{root}/npz/tiny.npz", "--model", "invariant_pde",
           fragment="it needs images of at least 4x4")),
    Case("data-subset-large", "data", "`--set data.train_subset=99999` (12,000 images)",
         T("--set", "data.train_subset=99999", "--data-dir", "{data}", "--cache-dir", "{tmp}/c",
           fragment="is more than the 12000 training images")),
    Case("ckpt-nan", "checkpoint", "`evaluate <a checkpoint with NaN weights>`",
         cli("evaluate", "{root}/nan.pt", fragment="the weights are not all finite")),
    # round 2: every model family through the same entry check
    Case("deep-nan", "library", "InvariantPDENet on a NaN image",
         lib("models.InvariantPDENet()(torch.full((2, 1, 28, 28), float('nan')))",
             expect="InputError", fragment="the input is at fault")),
    Case("deep-float64", "library", "float64 images into a float32 InvariantPDENet",
         lib(f"models.InvariantPDENet()({X}.double())", expect="InputTypeError",
             fragment="is torch.float64 but the module computes in torch.float32")),
    Case("deep-float16", "library", "float16 images into a float32 InvariantPDENet",
         lib(f"models.InvariantPDENet()({X}.half()).dtype", expect="ok",
             fragment="torch.float16")),
    Case("deep-batch-1", "library", "a batch of one image, InvariantPDENet in training mode",
         lib("models.InvariantPDENet()(torch.rand(1, 1, 28, 28))", expect="InputError",
             fragment="a batch of one image in training mode")),
    Case("head-batch-1", "library", "a batch of one image, EqPdeNet(head='invariant') training",
         lib("EqPdeNet(8, head='invariant')(torch.rand(1, 1, 28, 28))", expect="InputError",
             fragment="batch normalisation")),
    Case("deep-too-small", "library", "`InvariantPDENet(image_size=2)` (two 2x2 poolings)",
         lib("models.InvariantPDENet(image_size=2)", expect="ConfigError",
             fragment="it needs images of at least 4x4")),
    Case("cnn-nan", "library", "CNN on a NaN image",
         lib("models.CNN()(torch.full((2, 1, 28, 28), float('nan')))", expect="InputError",
             fragment="the input is at fault")),
    Case("layer-T-not-multiple", "library", "`PDELayer.build(T=0.25)`",
         lib("PDELayer.build(T=0.25)", expect="ConfigError", fragment="not a whole multiple")),
    Case("flow-steps", "library", "`EulerFlow(EulerStep(InvariantRHS('se2')), 10**8)`",
         lib("EulerFlow(EulerStep(InvariantRHS('se2')), 10**8)", expect="ConfigError",
             fragment="steps: must be <= 100,000")),
    # faults
    Case("two-writers", "fault", "two `reproduce` on one `--out` at once", fault_two_writers),
    Case("kill-sweep", "fault", "SIGKILL of `reproduce` mid-sweep, then the same command",
         fault_kill_sweep),
    Case("orphans", "fault", "SIGKILL of `reproduce --jobs 2` while both workers train",
         fault_orphans),
    Case("interrupt-jobs", "fault", "Ctrl-C (SIGINT) to `reproduce --jobs 2`",
         fault_interrupt_jobs),
    Case("sigterm-train", "fault", "SIGTERM of `train` into a folder holding a previous run",
         fault_sigterm_train),
    Case("failed-rerun", "fault", "a rerun that diverges, into a folder holding a run",
         fault_failed_rerun),
    Case("rerun-replaces", "fault", "a rerun (another seed) into a folder holding a run",
         fault_rerun_replaces),
    Case("sigterm-jobs", "fault", "SIGTERM to `reproduce --jobs 2` while both workers train",
         fault_terminate_jobs),
    Case("sighup-train", "fault", "SIGHUP of `train` into a folder holding a previous run",
         fault_hangup_train),
    Case("progress-log", "fault", "`train` with progress on, stderr a log file",
         fault_progress_log),
    Case("kill-build", "fault", "SIGKILL during the C++ kernel's first build, then a new process",
         fault_kill_build, slow=True),
    Case("broken-pipe", "fault", "`eqpdenet info | head -1`", fault_broken_pipe),
    # round 3 (outside-in probes of 2026-12-05, second session)
    Case("study-validation-0", "config", "`study --set base.data.validation=0` (it scores on it)",
         cli("study", "--out", "{tmp}/s", "--set", "base.data.validation=0",
             fragment="base.data.validation: the study scores every candidate on the validation",
             after=_nothing_at("s"))),
    Case("refused-leaves-no-folder", "config",
         "`train --model invariant_pde` with blur pooling too deep for 28x28 (nothing may be left)",
         T("--model", "invariant_pde", "--set", "model.invariant_pde.downsample=blur",
           "--set", "model.invariant_pde.boundary=reflect",
           "--set", "model.invariant_pde.stencil=gaussian", "--set", "model.invariant_pde.sigma=2.0",
           "--set", "model.invariant_pde.channels=[2,2,2]",
           fragment="it needs images of at least 33x33", after=_nothing_at("run"))),
    Case("ray-not-a-head", "config",
         "`reproduce --executor ray --address` a port that accepts but is no Ray head",
         _ray_at_a_silent_listener),
    Case("gcnn-weight-average", "config",
         "`train --model gcnn --set train.weight_average=0.9` (a 64-image smoke run that must "
         "finish: it crashed deep-copying the G-CNN)",
         T("--model", "gcnn", "--epochs", "1", "--set", "data.train_subset=64",
           "--set", "data.test_subset=32", "--set", "train.weight_average=0.9",
           "--set", "model.gcnn.channels=[2,2]", "--set", "model.gcnn.kernels=[3,3]",
           "--set", "model.gcnn.group_order=4", "--set", "model.gcnn.pool_after=[1]",
           fragment="test", expect="ok")),
    # round 4 (outside-in probes of 2026-12-05, third session)
    Case("lifted-huge-sigma", "config",
         "`train --model lifted_pde --set model.lifted_pde.sigma=1e4` (it hung for minutes)",
         T("--model", "lifted_pde", "--set", "model.lifted_pde.sigma=1e4",
           fragment="it needs images of at least 160001x160001", after=_nothing_at("run"))),
    Case("lifted-huge-downsample-sigma", "config",
         "`train --model lifted_pde --set model.lifted_pde.downsample_sigma=1e7` (minutes, then "
         "an out-of-memory error blaming the batch)",
         T("--model", "lifted_pde", "--set", "model.lifted_pde.downsample_sigma=1e7",
           fragment="lifted_pde.downsample_sigma: must be at most 10000 pixels",
           after=_nothing_at("run"))),
    Case("benchmark-empty-curve", "config",
         "`benchmark --set curves.angles=[]` (it trained, then crashed at every rerun)",
         cli("benchmark", "--quick", "--models", "fcnn", "--out", "{tmp}/b", "--no-progress",
             "--set", "curves.angles=[]", fragment="curves.angles: must hold at least one value",
             after=_nothing_at("b"))),
    Case("reproduce-other-kind", "config",
         "`reproduce --set models=['cnn']` (it trained, then wrote a table without rows)",
         R("--quick", "--set", "models=['cnn']",
           fragment="models[0]: 'cnn' is not a model of the paper's tables",
           after=_nothing_at("results"))),
    Case("reproduce-grid-field", "config",
         "`reproduce --set base.train.seed=5` (recorded, never used, then blocked resuming)",
         R("--quick", "--set", "base.train.seed=5",
           fragment="base.train.seed: 5 is never used: the grid sets each run's seed",
           after=_nothing_at("results"))),
    Case("equivariance-blow-up", "config",
         "`equivariance --quick --T 10` (a reference PDE blows up: it failed mid-run and left "
         "a folder)",
         cli("equivariance", "--quick", "--out", "{tmp}/q", "--T", "10",
             fragment="the reference PDE 'scaling-random' (central stencil, dt = 0.1) blows up",
             after=_nothing_at("q"))),
    Case("rotated-rotmnist", "config",
         "`train --rotated` on ROTMNIST (refused only after generating ROTMNIST)",
         T("--rotated", fragment="data.rotated: ROTMNIST is rotated already",
           after=_nothing_at("c"))),
    # round 5 (outside-in probes of 2026-12-06)
    Case("symbolic-mixed-name", "config",
         "`is_invariant('u_yx', 'se2')` (u_yx, not a jet coordinate, was a constant: True)",
         lib("[__import__('eqpdenet.pde.symbolic', fromlist=['s']).is_invariant(name, 'se2') "
             "for name in ('u_yx', 'u_xy')]",
             expect="ok", fragment="[False, False]")),
    Case("joint-all-huge", "config",
         "`train --model invariant_pde` with `joint='all'` on 400 channels (90 s, then an "
         "out-of-memory error blaming the batch)",
         T("--model", "invariant_pde", "--set", "model.invariant_pde.joint='all'",
           "--set", "model.invariant_pde.channels=[400, 24, 32]",
           fragment="invariant_pde.channels[0]: joint='all' (every pair and triple) of 400 "
                    "channels: 32,321,000 invariant maps", after=_nothing_at("run"))),
    Case("evaluate-blow-up", "checkpoint",
         "`evaluate` the committed `results/benchmark` invariant-pde checkpoint (its PDE "
         "overflows on one ROTMNIST test digit: evaluation stopped there)",
         cli("evaluate", str(ROOT / "results/benchmark/checkpoints/invariant-pde-seed0.pt"),
             "--scenarios", "test",  # EQPDENET_DATA and the user's ROTMNIST cache, as a user
             fragment="blew up (non-finite state) on 1 of the 5,000 test images",
             expect="warning"), slow=True),
    Case("figure-checkpoint-without-pde", "config",
         "`figure diagram --checkpoint C` without `--pde` (the checkpoint was ignored: heat drawn)",
         cli("figure", "diagram", "--checkpoint", "{ckpt}", "--out", "{tmp}/f.png",
             fragment="--pde", after=_nothing_at("f.png"))),
    Case("distributed-rank-not-a-number", "config",
         "`train --distributed` with `RANK=abc` (\"invalid literal for int()\", naming nothing)",
         T("--distributed", "--model", "fcnn", "--hidden", "8",
           env=_env(RANK="abc", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                    MASTER_PORT="29517"),
           fragment="RANK='abc': expected an integer from 0 to 1", after=_nothing_at("run"))),
    Case("deep-huge-downsample-sigma", "config",
         "`train --model invariant_pde --set model.invariant_pde.downsample_sigma=1e7` "
         "(unbounded: seconds per map size, then out of memory)",
         T("--model", "invariant_pde", "--set", "model.invariant_pde.downsample=blur",
           "--set", "model.invariant_pde.downsample_sigma=1e7",
           fragment="invariant_pde.downsample_sigma: must be at most 10000 pixels",
           after=_nothing_at("run"))),
    # round 12 (outside-in probes of 2026-12-07)
    Case("invariant-set-false-claim", "library",
         "`InvariantSet(..., [u_xx² + u_yy²], invariant_under=['rotations'])` (unchanged by "
         "quarter turns only; the claim was trusted)",
         lib("__import__('eqpdenet.pde.invariants', fromlist=['x']).InvariantSet('claimed', "
             "'by hand', 2, [__import__('eqpdenet.pde.invariants', fromlist=['x']).Invariant("
             "'q', 'q', 'q', lambda d, r: d.u_xx ** 2 + d.u_yy ** 2)], "
             "invariant_under=['rotations'])",
             expect="ConfigError",
             fragment="declares invariant_under 'rotations', but invariant 'q' changes under a "
                      "rotation")),
    Case("dataset-not-utf8", "config",
         "`train --dataset` a file named in another encoding (trained, then failed saving its "
         "configuration, naming neither)",
         T("--model", "fcnn", "--hidden", "8", "--epochs", "1",
           "--dataset", os.fsdecode(b"{tmp}/bad\xff.npz"),
           setup=lambda tmp: _npz(Path(os.fsdecode(os.fsencode(str(tmp)) + b"/bad\xff.npz"))),
           fragment="is not UTF-8 text", after=_nothing_at("run"))),
    Case("data-dir-is-mnist", "data",
         "`train --data-dir DATA/mnist` (the folder holding the files, not its parent: made "
         "mnist/mnist/ and advised putting the files there)",
         cli("train", "--out", "{tmp}/run", "--data-dir", "{data}/mnist", "--cache-dir",
             "{tmp}/c", "--no-progress", "--model", "fcnn", "--epochs", "1",
             fragment="holds MNIST's files itself", after=_nothing_at("run"))),
    Case("cache-dir-typo", "config",
         "`train --cache-dir` a path whose parent does not exist (made the whole chain and "
         "wrote the 196 MB cache there)",
         cli("train", "--out", "{tmp}/run", "--data-dir", "{data}", "--cache-dir",
             "{tmp}/no/such/cache", "--no-progress", "--model", "fcnn", "--epochs", "1",
             fragment="does not exist, nor does its parent", after=_nothing_at("no"))),
    Case("data-variable-crlf", "config",
         "`EQPDENET_DATA` ending in a carriage return (a `.env` file with Windows line ends: "
         "made a folder `data\\r` beside the data)",
         cli("train", "--out", "{tmp}/run", "--cache-dir", "{tmp}/c", "--no-progress",
             "--model", "fcnn", "--epochs", "1",
             env=_env(EQPDENET_DATA=os.environ.get("EQPDENET_DATA", "data") + "\r"),
             fragment="is not a usable path: it holds the control character '\\r'",
             after=_nothing_at("run"))),
    Case("debug-off", "config",
         "`EQPDENET_DEBUG=0` with a bad flag (any value turned the tracebacks on)",
         cli("train", "--out", "{tmp}/run", "--epochs", "0", "--no-progress",
             env={**_env(), "EQPDENET_DEBUG": "0"}, fragment="train.epochs: must be >= 1",
             after=_nothing_at("run"))),
    Case("benchmark-entry-too-long", "config",
         "`benchmark --config` with an entry name of 246 characters (trained, then failed "
         "saving: \"File name too long\", every rerun the same)",
         cli("benchmark", "--config", "{tmp}/b.toml", "--out", "{tmp}/out", "--no-progress",
             setup=lambda tmp: _benchmark_file(tmp, "c" * 246),
             fragment="cannot name a file: at most 200 characters", after=_nothing_at("out"))),
    Case("curves-scale-underflow", "config",
         "`benchmark --config` with `curves.scales = [1e-50]` (after training: \"linalg.inv ... "
         "singular (a bug in eqpdenet?)\")",
         cli("benchmark", "--config", "{tmp}/b.toml", "--out", "{tmp}/out", "--no-progress",
             setup=lambda tmp: _benchmark_file(tmp, "tiny", scales="[1e-50]"),
             fragment="curves.scales: must be from 1e-06 to 1e+06", after=_nothing_at("out"))),
    # round 13 (outside-in probes of 2026-12-07, second session)
    Case("default-cache-is-a-file", "data",
         "`train` on ROTMNIST with the per-user cache folder (`$XDG_CACHE_HOME/eqpdenet`) a file "
         "(made after the work, \"File exists\")",
         cli("train", "--out", "{tmp}/run", "--data-dir", "{data}", "--no-progress", "--model",
             "fcnn", "--epochs", "1",
             env={key: value for key, value in _env(XDG_CACHE_HOME="{tmp}").items()
                  if key != "EQPDENET_CACHE"},
             setup=lambda tmp: (tmp / "eqpdenet").write_text("a file"),
             fragment="where the per-user cache folder", after=_nothing_at("run"))),
    Case("npz-validation-leaves-one", "config",
         "`train --dataset` a 60-image file with `data.validation=59` (named `data.dataset`)",
         T("--model", "fcnn", "--hidden", "4", "--epochs", "1", "--dataset", "{tmp}/d.npz",
           "--set", "data.validation=59", setup=lambda tmp: _npz(tmp / "d.npz"),
           fragment="data.validation: 59 held out of the 60 training images leave 1",
           after=_nothing_at("run"))),
    Case("npz-unread-arrays", "data",
         "`train --dataset` a file with its own `x_val, y_val` (silently not read)",
         T("--model", "fcnn", "--hidden", "4", "--epochs", "1", "--dataset", "{tmp}/v.npz",
           setup=lambda tmp: _npz_with_validation(tmp / "v.npz"), expect="warning",
           fragment="array(s) x_val, y_val not used")),
    Case("lifted-bool-string", "library",
         "`LiftedPDEConfig(normalize_hidden='false')` (a truth test built the batch norm)",
         lib("models.LiftedPDEConfig(normalize_hidden='false')", expect="ConfigError",
             fragment="lifted_pde.normalize_hidden: must be true or false, got 'false'")),
    Case("lifted-config-changed", "library",
         "a `LiftedPDEConfig` whose margin is set to -2 after construction (built, and cropped "
         "the images)",
         lib("(lambda c: (setattr(c, 'margin', -2), models.LiftedPDENet(c)))"
             "(models.LiftedPDEConfig(channels=[2], blocks=[1]))", expect="ConfigError",
             fragment="lifted_pde.margin: must be >= 0")),
    Case("gaussian-jet-order-1", "library",
         "`jet(blob, order=1, stencil='gaussian')`: u_x of a blob at x > 0 (the kernel's "
         "singular moment system gave the wrong sign)",
         lib("float(jet(torch.exp(-((torch.arange(41.) - 20)[None, :] ** 2 + (torch.arange(41.) "
             "- 20)[:, None] ** 2) / 50)[None, None].double(), order=1, stencil='gaussian', "
             "sigma=2.0)[0, 0, 1, 20, 25]) < 0", expect="ok", fragment="True")),
    Case("sim2-reaction-stability", "library",
         "`stability()` of a sim2 layer whose F is u_t = -25 u at dt = 0.1 (\"nothing to check\" "
         "while it grew 57x)",
         lib("(lambda layer: (layer.pdes[0].step.rhs.F.weight.data.__setitem__(0, -25.0), "
             "layer.stability()[0]['stable'])[1])(PDELayer.build(['sim2'], init_noise=0.0, "
             "init='zeros'))", expect="ok", fragment="False")),
    Case("euler-step-alone-overflow", "library",
         "an `EulerStep` called alone whose state overflows (returned inf without a word)",
         lib("(lambda rhs: (rhs.F.weight.data.fill_(1e38), EulerStep(rhs, 1.0)("
             "torch.rand(1, 1, 6, 6) * 100))[1])(InvariantRHS('se2'))",
             expect="NonFiniteStateError", fragment="produced a non-finite state")),
    Case("figure-onto-sweep-plot", "output",
         "`figure diagram --out` a sweep's `accuracy_vs_params.png` (replaced it, exit 0)",
         cli("figure", "diagram", "--data-dir", "{data}", "--out", "{tmp}/S/accuracy_vs_params.png",
             setup=_marked_sweep_with_plot, fragment="would replace a result of",
             after=_plot_kept)),
    Case("usetex-without-latex", "config",
         "`figure diagram` under a matplotlibrc with `text.usetex: True` and no LaTeX (failed "
         "after the work, said as a bug)",
         cli("figure", "diagram", "--data-dir", "{data}", "--out", "{tmp}/f.png",
             env=_env(MATPLOTLIBRC="{tmp}/rc"), setup=_usetex_rc,
             fragment="matplotlib's text.usetex is on", after=_nothing_at("f.png"))),
    # round 14 (outside-in probes of 2026-12-07, third session)
    Case("lifted-diffusion-unstable", "config",
         "`train --model lifted_pde` with the diffusion term at 24 orientations and dt = 1 "
         "(explicit Euler unstable along theta: garbage, finite, without a word)",
         T("--model", "lifted_pde", "--set", "model.lifted_pde.orientations=24", "--set",
           "model.lifted_pde.terms=['diffusion']",
           fragment="stage0.block0 would be unstable from its first step",
           after=_nothing_at("run"))),
    Case("warp-zero-factor", "library",
         "`geometry.scale(images, 0)`: a map without inverse, its own error type (told apart "
         "from an overflow by the message's text)",
         lib("eqpdenet.geometry.scale(torch.rand(1, 1, 8, 8), 0.0)", expect="SingularMapError",
             fragment="factor must be non-zero")),
    Case("plugin-exits-at-import", "config",
         "`EQPDENET_PLUGINS` naming a script that calls `sys.exit()` at import (exit 0, nothing "
         "done)",
         cli("info", env={**_env(EQPDENET_PLUGINS="exiting_plugin"),
                          "PYTHONPATH": "{tmp}" + os.pathsep + _env()["PYTHONPATH"]},
             setup=lambda tmp: (tmp / "exiting_plugin.py").write_text(
                 "import sys\nsys.exit(0)\n"),
             fragment="importing 'exiting_plugin' exited", status=2)),
    Case("weight-decay-amplifies", "config",
         "`train --set train.weight_decay=1e6` at lr 1e-3 (AdamW multiplied each weight by -999 "
         "per step; recorded as an ordinary run)",
         T("--set", "train.weight_decay=1e6", fragment="train.weight_decay",
           after=_nothing_at("run"))),
    Case("cpus-per-run-local", "config",
         "`reproduce --quick --cpus-per-run 2` with the local executor (ignored without a word)",
         R("--quick", "--cpus-per-run", "2", fragment="--cpus-per-run 2 is for --executor ray",
           after=_nothing_at("results"))),
    Case("api-one-class", "library",
         "`run_experiment` on splits of one class given in Python (trained to \"100 %\")",
         lib("(lambda tr, cf: tr.run_experiment(cf.ExperimentConfig(model=cf.ModelConfig("
             "kind='fcnn', hidden=4)), {'train': tr.Split(torch.rand(8, 1, 8, 8), torch.zeros("
             "8, dtype=torch.long)), 'test': tr.Split(torch.rand(4, 1, 8, 8), torch.zeros(4, "
             "dtype=torch.long))}))(__import__('eqpdenet.app.training', fromlist=['Split']), "
             "__import__('eqpdenet.app.config', fromlist=['ModelConfig']))", expect="InputError",
             fragment="a classifier needs two")),
    Case("api-int32-labels", "library",
         "a `Split` with int32 labels (a raw `cross_entropy` error when trained on)",
         lib("__import__('eqpdenet.app.training', fromlist=['Split']).Split(torch.rand(4, 1, 8, "
             "8), torch.tensor([0, 1, 0, 1], dtype=torch.int32)).labels.dtype", expect="ok",
             fragment="torch.int64")),
    Case("model-registered-instance", "library",
         "`MODELS.register` of a model instance (a raw TypeError, read as eqpdenet's bug, when a "
         "run built it)",
         lib("models.MODELS.register('campaign_instance', models.FCNN(hidden=8))",
             expect="ConfigError", fragment="register the class")),
    Case("rate-of-another-dtype", "library",
         "an `EulerStep` whose right-hand side computes in float64 (a float32 state turned "
         "float64 without a word)",
         lib("EulerStep(type('F64', (torch.nn.Module,), {'forward': lambda self, u: -u.double()})"
             "(), 0.1)(torch.rand(1, 1, 5, 5))", expect="ConfigError",
             fragment="must return du/dt in the state's dtype torch.float32")),
    # round 15 (outside-in probes of 2026-12-07, fourth session)
    Case("recompute-inplace-weight", "library",
         "a PDE parameter changed in place between forward and backward with `recompute=True` "
         "(the reference recomputed the states from the new values: a wrong gradient, no error)",
         lib("(lambda layer, x: (lambda out: (next(layer.pdes[0].parameters()).detach()"
             ".add_(1.0), out.sum().backward())[1])(layer(x)))(PDELayer.build(['se2'], "
             "recompute=True, backend='reference', init_noise=0.01), torch.rand(2, 1, 8, 8, "
             "requires_grad=True))", expect="RuntimeError",
             fragment="modified by an inplace operation")),
    Case("symbolic-derivative-notation", "library",
         "`is_invariant('Derivative(u, x)', 'se2')` in SymPy's calculus notation (True: u_x "
         "read as a constant)",
         lib("__import__('eqpdenet.pde.symbolic', fromlist=['is_invariant']).is_invariant("
             "'Derivative(u, x)', 'se2')", expect="ConfigError", fragment="write u_x for")),
    Case("warp-subnormal-factor", "library",
         "`geometry.scale(images, 1e-40)`: non-zero, but its reciprocal overflows float32 (the "
         "message named `matrix`, which the caller never passed)",
         lib("eqpdenet.geometry.scale(torch.rand(1, 1, 8, 8), 1e-40)", expect="SingularMapError",
             fragment="factor must have a finite reciprocal")),
    Case("rotmnist-seed-on-mnist", "config",
         "`train --dataset mnist --set data.rotmnist_seed=3` (no effect, and said nothing)",
         T("--dataset", "mnist", "--set", "data.rotmnist_seed=3", "--set",
           "data.train_subset=300", "--set", "data.test_subset=200", "--model", "fcnn",
           "--hidden", "8", "--epochs", "1", expect="warning",
           fragment="data.rotmnist_seed = 3 has no effect with data.dataset = 'mnist'")),
    Case("sweep-checkpoints-file", "output",
         "a resumed sweep whose `checkpoints` folder is a file (trained the missing run to its "
         "end, then failed)",
         cli("reproduce", "--out", "{tmp}/S", "--data-dir", "{data}", "--cache-dir", "{tmp}/c",
             "--no-progress", *ROUND15_SWEEP,
             setup=_resumable_sweep_without_checkpoints_folder,
             fragment="the sweep's checkpoints folder", after=_no_run_redone)),
    Case("set-unquoted-list", "config",
         "`train --set scenarios=[test,iso]` (strings unquoted: said to be 'must be a list')",
         T("--set", "scenarios=[test,iso]", fragment="is not valid TOML",
           after=_nothing_at("run"))),
    Case("set-table-whole", "config",
         "`--set train.epochs=3 --set \"train={lr=0.01}\"` (the table rebuilt from defaults: 20 "
         "epochs)",
         lib("(lambda c: c.apply_overrides(c.ExperimentConfig(), ['train.epochs=3', "
             "'train={lr=0.01}']).train.epochs)(__import__('eqpdenet.app.config', "
             "fromlist=['apply_overrides']))", expect="ok", fragment="3")),
    Case("study-margin-nan", "config",
         "`run_study(out, margin=nan)` (chose nothing, wrote NaN into study.json, and the folder "
         "could never be resumed)",
         lib("__import__('eqpdenet.app.study', fromlist=['run_study']).run_study("
             "__import__('pathlib').Path('S'), margin=float('nan'))", expect="ConfigError",
             fragment="margin")),
    Case("sim2-float32-fine-grid", "library",
         "the `sim2` invariants of float32 images differentiated at spacing 1e-5 (degree-8 "
         "products overflowed: NaN)",
         lib("bool(torch.isfinite(__import__('eqpdenet.pde.invariants', fromlist=['x'])"
             ".get_invariant_set('sim2')(__import__('eqpdenet.pde.stencils', fromlist=['x'])"
             ".jet(torch.rand(1, 1, 16, 16), 2, 'central', 1e-5))).all())", expect="ok",
             fragment="True")),
    Case("download-mirrors-string", "library",
         "`download_mnist(folder, mirrors='http://...')`, a string for the list (tried one "
         "character at a time)",
         lib("__import__('eqpdenet.data.mnist', fromlist=['download_mnist']).download_mnist("
             "'D', mirrors='http://127.0.0.1:9/')", expect="ConfigError", fragment="mirrors")),
    # round 16 (outside-in probes of 2026-12-07, fifth session)
    Case("sim2-fused-fine-grid", "library",
         "a `sim2` layer on the fused C++ kernel in float32 at spacing 1e-5 (its unscaled det-H "
         "products overflowed: NonFiniteStateError at step 1)",
         lib("bool(torch.isfinite(PDELayer.build(['sim2'], spacing=1e-5, backend='fused', "
             "init_noise=0.05)(torch.rand(2, 1, 12, 12))).all())", expect="ok",
             fragment="True")),
    Case("lifted-softmax-underflow", "library",
         "a lifted model's softmax projection whose temperature underflows (raw -120: NaN "
         "logits, no word)",
         lib("(lambda m: (m.projection.raw_temperature.data.fill_(-120.0), bool(torch.isfinite("
             "m(torch.rand(2, 1, 14, 14))).all()))[1])(models.LiftedPDENet(models.LiftedPDEConfig("
             "channels=[3, 4], blocks=[1, 1], projection='softmax'), image_size=14).eval())",
             expect="ok", fragment="True")),
    Case("m2-convection-diffusion", "library",
         "the stability of an M2 step with convection beside diffusion (called UNSTABLE "
         "whatever the diffusion)",
         lib("(lambda rhs: (rhs.terms['convection'].weight.data.fill_(0.02), __import__("
             "'eqpdenet.pde.integrators', fromlist=['x']).EulerStep(rhs, 0.5).stability()"
             "['stable'])[1])(__import__('eqpdenet.pde.m2_rhs', fromlist=['x']).M2SystemRHS(2, "
             "('convection', 'diffusion'), orientations=8))", expect="ok", fragment="True")),
    Case("export-nan-logits", "library",
         "`export_model` of a model whose own float32 logits are not finite (kept, 'raised to "
         "inf')",
         lib("(lambda m, x: (m.eval(), [p.data.mul_(1e30) for p in m.parameters() if p.dim() > 1]"
             ", __import__('eqpdenet.export', fromlist=['x']).export_model(m, 'm.onnx', images=x)"
             ")[2])(models.FCNN(hidden=8, image_size=6), torch.rand(4, 1, 6, 6))",
             expect="ExportError", fragment="PyTorch's own logits of FCNN are not finite")),
    Case("json-onto-writer-lock", "output",
         "`evaluate --json S/.eqpdenet.lock` (renamed a file over a running sweep's lock: a "
         "second writer got in)",
         cli("evaluate", "{ckpt}", "--data-dir", "{data}", "--json", "{tmp}/.eqpdenet.lock",
             fragment="writer lock", after=_nothing_at(".eqpdenet.lock"))),
    Case("class-only-in-test", "data",
         "a data file whose class 2 only the test split holds (refused, where a registered set "
         "or API splits were warned about)",
         T("--model", "fcnn", "--hidden", "4", "--epochs", "1", "--dataset", "{tmp}/t.npz",
           setup=_class_only_in_test, expect="warning", fragment="lacks class(es) 2 of its 3")),
    # round 17 (outside-in probes of 2026-12-07, sixth session)
    Case("m2-nan-velocity", "library",
         "the stability of an M2 step whose convection velocity is NaN beside diffusion (LAPACK's "
         "eigvals crashed the process: segmentation fault)",
         lib("(lambda rhs: (rhs.terms['convection'].weight.data.fill_(float('nan')), __import__("
             "'eqpdenet.pde.integrators', fromlist=['x']).EulerStep(rhs, 0.5).stability()"
             "['reason'])[1])(__import__('eqpdenet.pde.m2_rhs', fromlist=['x']).M2SystemRHS(2, "
             "('convection', 'diffusion'), orientations=8))", expect="ok",
             fragment="not finite (NaN or inf, in convection.weight)")),
    Case("covariant-amplitude-1e10", "library",
         "input gradients of a covariant `scaling` layer on the fused kernel in float32 at "
         "amplitude 1e10 (R overflowed, the rescaling was off: NaN gradients, no word)",
         lib("(lambda x: (PDELayer.build(['scaling'], ratio_regularisation='covariant', "
             "backend='fused', init_noise=0.05)(x).sum().backward(), bool(torch.isfinite(x.grad)"
             ".all()))[1])((torch.rand(2, 1, 12, 12) * 1e10).requires_grad_())", expect="ok",
             fragment="True")),
    Case("recompute-jacrev", "library",
         "`torch.func.jacrev` of a layer built with `recompute=True` (raw 'don't yet support "
         "saved tensor hooks')",
         lib("tuple(torch.func.jacrev(PDELayer.paper(recompute=True))(torch.rand(1, 1, 6, 6))"
             ".shape)", expect="ok", fragment="(1, 1, 6, 6, 1, 1, 6, 6)")),
    Case("plugin-more-logits", "config",
         "`train` a plugin family that returns 10 logits on a data file of 3 classes (trained and "
         "scored silently, its argmax free to pick classes no image has)",
         T("--model", "tenout", "--epochs", "1", "--dataset", "{tmp}/t.npz",
           env=_plugin_env("tenout_plugin"), setup=_plugin("tenout_plugin", _TEN_LOGITS_PLUGIN,
                                                            with_data=True),
           fragment="returns 10 logits per image, but", status=2)),
    Case("plugin-loader-raises", "config",
         "`train --dataset flaky`, a plugin loader that raises RuntimeError ('unexpected "
         "RuntimeError ... a bug in eqpdenet?', exit 1)",
         T("--model", "fcnn", "--hidden", "4", "--epochs", "1", "--dataset", "flaky",
           env=_plugin_env("flaky_plugin"), setup=_plugin("flaky_plugin", _FAILING_LOADER_PLUGIN),
           fragment="data set 'flaky': its loader (_down, module flaky_plugin) raised "
                    "RuntimeError: download server said 503", status=2)),
    # round 18 (outside-in probes of 2026-12-07, seventh session)
    Case("jet-module-integer", "library",
         "the `Jet` module given an integer image (its ±0.5 weights cast to 0: a wrong jet, no "
         "word)",
         lib("eqpdenet.pde.stencils.Jet(2, 'central', 1.0, 'replicate')(torch.ones(1, 1, 5, 5, "
             "dtype=torch.int64))", expect="InputTypeError", fragment="must be a floating-point")),
    Case("plugin-fails-in-eval", "config",
         "`train` a plugin family whose forward raises in evaluation mode only ('unexpected "
         "RuntimeError ... a bug in eqpdenet?', exit 1)",
         T("--model", "trainonly", "--epochs", "1", "--dataset", "{tmp}/t.npz", "--set",
           "data.validation=0", env=_plugin_env("trainonly_plugin"),
           setup=_plugin("trainonly_plugin", _EVAL_FAILING_PLUGIN, with_data=True),
           fragment="failed in evaluation mode", status=2)),
    Case("study-loader-raises", "config",
         "`study` on a plugin data set whose loader raises (the study wrote study.json first, "
         "then refused the corrected command as another configuration)",
         cli("study", "--out", "{tmp}/s", "--set", "base.data.dataset=\"flaky\"", "--hidden",
             "4", "--seeds", "0", "--epochs", "1", "--no-progress",
             env=_plugin_env("flaky_plugin"), setup=_plugin("flaky_plugin", _FAILING_LOADER_PLUGIN),
             fragment="download server said 503", status=2, after=_nothing_at("s"))),
]


def _npz_with_validation(path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    with open(path, "wb") as handle:
        np.savez(handle, x_train=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8),
                 y_train=np.arange(60) % 3, x_test=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
                 y_test=np.arange(20) % 3, x_val=rng.integers(0, 256, (10, 8, 8), dtype=np.uint8),
                 y_val=np.arange(10) % 3)


def _benchmark_file(tmp: Path, entry: str, scales: str = "[1.0]") -> None:
    """A tiny benchmark configuration at ``tmp/b.toml``: one fcnn entry on 60 8x8 images."""
    _npz(tmp / "tiny.npz")
    (tmp / "b.toml").write_text(
        f"seeds = [0]\ncheckpoint_seeds = []\n[base]\nscenarios = [\"test\"]\n[base.data]\n"
        f"dataset = \"{tmp / 'tiny.npz'}\"\n[base.train]\nepochs = 1\n[models]\n"
        f"{entry} = [\"model.kind='fcnn'\", \"model.hidden=4\"]\n[curves]\nimages = 10\n"
        f"angles = [0.0]\nscales = {scales}\nshifts = [0.0]\n")


def table(results: list[tuple[Case, Outcome]]) -> str:
    lines = ["| # | group | bad input or fault | exit | what eqpdenet says / does now | ok |",
             "|---:|---|---|---:|---|---|"]
    for number, (case, outcome) in enumerate(results, 1):
        message = outcome.message.replace("|", "\\|")
        message = re.sub(r"/tmp/[^\s:;,)'\]]*?/(?=[\w.-]+)", ".../", message)
        if len(message) > 260:
            message = message[:257] + "..."
        verdict = "skip" if outcome.note == "skip" else ("yes" if outcome.passed else "**NO**")
        status = "–" if outcome.status is None else str(outcome.status)
        lines.append(f"| {number} | {case.group} | {case.what} | {status} | {message} | "
                     f"{verdict} |")
    return "\n".join(lines)


def _machine(load: float) -> str:
    """The CPU, its cores and the load when the campaign started, for the table's last line."""
    from eqpdenet.kernels.cpu import cpu_name  # here: the campaign's own process stays light

    model = cpu_name() or "unknown CPU"
    return f"{os.cpu_count()} cores of an {model}, load average {load:.1f} at the start"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="Markdown file whose campaign table to replace")
    parser.add_argument("--only", nargs="+", help="case ids")
    parser.add_argument("--skip-slow", action="store_true")
    args = parser.parse_args()
    unknown = sorted(set(args.only or ()) - {c.id for c in CASES})
    if unknown:
        parser.error(f"--only: no case {', '.join(unknown)} (the ids are the table's first column)")
    if args.write and args.only:
        # the table is the whole campaign's: a partial run would replace it with a few rows
        parser.error("--write takes the whole campaign: leave out --only")
    data = os.environ.get("EQPDENET_DATA")
    if not data:
        sys.exit("set EQPDENET_DATA to the folder containing mnist/")
    cases = [c for c in CASES if (not args.only or c.id in args.only)
             and not (args.skip_slow and c.slow)]
    start, load = time.monotonic(), os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="eqpdenet-campaign-") as scratch:
        prepare(Path(scratch) / "shared", data)
        for case in cases:
            tmp = Path(scratch) / case.id
            tmp.mkdir()
            try:
                outcome = case.run(tmp)
            except Exception as error:  # noqa: BLE001 - the campaign reports, never stops
                outcome = Outcome(None, f"campaign error: {type(error).__name__}: {error}",
                                  False, 0.0, False)
            results.append((case, outcome))
            mark = "ok  " if outcome.passed else "FAIL"
            print(f"{mark} {case.id:<24} {outcome.seconds:6.1f} s  {outcome.message[:150]}",
                  flush=True)
    minutes = (time.monotonic() - start) / 60
    failed = [c.id for c, o in results if not o.passed]
    summary = (f"{len(results)} cases, {len(results) - len(failed)} as expected"
               + (f", not as expected: {', '.join(failed)}" if failed else "")
               + f"; {minutes:.0f} min")
    print(summary)
    if args.write:
        path = Path(args.write)
        text = path.read_text()
        body = (f"{START}\n\n{table(results)}\n\n{summary} (`python "
                f"benchmarks/reliability_campaign.py{' --skip-slow' if args.skip_slow else ''}"
                f"`, {time.strftime('%Y-%m-%d')}, {_machine(load)}).\n\n{END}")
        path.write_text(text[:text.index(START)] + body + text[text.index(END) + len(END):])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
