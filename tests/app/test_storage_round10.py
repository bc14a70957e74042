"""Round 10, storage. Outputs that belong together are written as one set (a report's table and
plot, a study's summary and choice): a plot that cannot be written left the new table beside
the plot of other runs. A folder a command holds that is moved or deleted while it runs is not
made anew at its path (a sweep went on into a new folder without marker, configuration or lock,
and said "finished"). The room for the outputs is checked where they go, before the work: a
checkpoints folder linked to another disk, an output file on a full disk, the file size limit
(``ulimit -f``). Legal long file names are written (their temporary names were too long). A
sweep stopped by a full disk says that its finished runs are saved. (Runs are faked: no data
is loaded; full disks and limits are simulated.)"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_helpers import write_npz
from eqpdenet.app import files, preflight, sweeps
from eqpdenet.app.benchmark import benchmark, write_benchmark_report
from eqpdenet.app.config import (
    BenchmarkConfig,
    ExperimentConfig,
    ReproduceConfig,
    apply_overrides,
    to_dict,
)
from eqpdenet.app.files import atomic_write, check_output_file
from eqpdenet.app.locks import hold
from eqpdenet.app.report import write_report
from eqpdenet.app.runfolder import staged
from eqpdenet.app.study import Stage, run_study, study_base
from eqpdenet.app.sweeps import reproduce, run_sweep
from eqpdenet.errors import OutputFolderError
from eqpdenet.files import remove_stale_beside, temporary_beside
from helpers import full_disk_for
from study_helpers import fake_record, fake_study_reproduce, fake_sweep_runs

ROOT = Path(__file__).resolve().parents[2]


_record = fake_record


@pytest.fixture
def fake_runs(monkeypatch):
    """No data, no training: a run's record is :func:`fake_record` of its configuration."""
    fake_sweep_runs(monkeypatch)


@pytest.fixture
def file_size_limit():
    """Sets this process's file size limit (``ulimit -f``) for one call: restored after it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limited(size, call, *args, **kwargs):
        if hard != resource.RLIM_INFINITY and hard < size:
            pytest.skip("the hard file size limit is lower than the test's")
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
        try:
            return call(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    return limited


def _reproduce_config(seeds) -> ReproduceConfig:
    return apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[4]",
                                               f"seeds={list(seeds)}", "checkpoint_seeds=[]"])


def _benchmark_config(seeds) -> BenchmarkConfig:
    config = BenchmarkConfig(models={"fcnn": ["model.kind='fcnn'", "model.hidden=4"]},
                             seeds=list(seeds), checkpoint_seeds=[])
    config.base.scenarios = ["test"]
    return config


def _quiet(*args):
    pass


_full_for = full_disk_for


def _contents(folder: Path, names) -> dict[str, bytes | None]:
    return {name: (folder / name).read_bytes() if (folder / name).exists() else None
            for name in names}


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(files.TEMPORARY_SUFFIX))


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


# ----------------------------------------------------------------------------- 1. one set


@pytest.mark.parametrize("kind", ["reproduce", "benchmark"])
def test_a_report_whose_plot_cannot_be_written_keeps_its_previous_table_and_plot(
        kind, tmp_path, fake_runs, file_size_limit):
    """table.md was replaced, then the plot failed (here past ``ulimit -f``; a full disk alike):
    the folder's two files described different runs (exit 2)."""
    out = tmp_path / "sweep"
    if kind == "reproduce":
        sweep, write, plot = (lambda seeds: reproduce(_reproduce_config(seeds), out,
                                                      progress=False, echo=_quiet),
                              write_report, "accuracy_vs_params.png")
    else:
        sweep, write, plot = (lambda seeds: benchmark(_benchmark_config(seeds), out,
                                                      progress=False, echo=_quiet),
                              write_benchmark_report, "robustness.png")
    sweep([0])
    write(out)
    before = _contents(out, ["table.md", plot])
    assert len(before[plot]) > 16 * 1024 > len(before["table.md"])
    sweep([0, 1])  # a new table would say 2 runs
    with pytest.raises(OutputFolderError) as caught:  # 16 KiB: the table fits, the plot not
        file_size_limit(16 * 1024, write, out)
    assert str(caught.value) == (f"cannot write {out / plot}: the file would exceed this "
                                 f"process's file size limit (ulimit -f)")
    assert caught.value.errno == errno.EFBIG
    assert _contents(out, ["table.md", plot]) == before
    assert _temporaries(out) == []
    write(out)  # and once there is room, the new set
    assert "2 runs" in (out / "table.md").read_text()


def test_a_studys_summary_and_choice_are_written_all_or_none(tmp_path, monkeypatch):
    """study.md, chosen.toml and chosen.json were written one after another: a full disk at
    chosen.json left a finished study.md and a chosen.toml without their chosen.json."""
    fake_study_reproduce(monkeypatch)
    stage = Stage("weight-decay", "shared", "?", {"none": ["base.train.weight_decay=0.0"],
                                                   "wd": ["base.train.weight_decay=0.05"]})
    out = tmp_path / "study"
    _full_for(monkeypatch, "chosen.json")
    with pytest.raises(OutputFolderError, match=r"cannot write .*chosen.json: no space left"):
        run_study(out, base=study_base(hidden_sizes=(16,), seeds=(0,)), stages=[stage],
                  echo=_quiet)
    assert not (out / "chosen.toml").exists() and not (out / "chosen.json").exists()
    # the summary of the stages so far, not the finished one that names the choice
    assert "## Chosen configuration" not in (out / "study.md").read_text()
    assert _temporaries(out) == []
    monkeypatch.setattr(files, "temporary_beside", temporary_beside)
    run_study(out, base=study_base(hidden_sizes=(16,), seeds=(0,)), stages=[stage], echo=_quiet)
    assert "## Chosen configuration" in (out / "study.md").read_text()
    assert (out / "chosen.toml").is_file() and (out / "chosen.json").is_file()


def test_an_interrupt_during_the_commit_of_a_set_is_taken_after_it(tmp_path, monkeypatch):
    """Once the first file of the set is replaced, SIGTERM (which the CLI makes an interrupt,
    as Ctrl-C is one) waits for the last rename: the folder never holds files of two sets."""
    from eqpdenet.app.files import write_set

    folder = tmp_path / "set"
    write_set(folder, {"table.md": b"old", "plot.png": b"old"})
    real, renamed = os.replace, []

    def replace(source, target):
        real(source, target)
        renamed.append(Path(target).name)
        if len(renamed) == 1:
            signal.raise_signal(signal.SIGTERM)

    def interrupt(signum, frame):  # as the CLI's _terminate_as_interrupt
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            write_set(folder, {"table.md": b"new", "plot.png": b"new"})
        assert signal.getsignal(signal.SIGTERM) is interrupt  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert renamed == ["table.md", "plot.png"]
    assert _contents(folder, ["table.md", "plot.png"]) == {"table.md": b"new", "plot.png": b"new"}


# ----------------------------------------------------------------------------- 2. folder moved


def test_a_sweep_whose_folder_is_moved_stops_and_says_where_its_runs_are(tmp_path, monkeypatch,
                                                                           fake_runs):
    """``mv OUT OUT-old`` mid-sweep: the remaining runs went into a new OUT (no config.toml,
    no marker, no lock), exit 0, and a table of a part of the runs without a word."""
    out, moved = _real(tmp_path) / "out", _real(tmp_path) / "out-old"
    trained = []

    def runner(run, data, **options):
        trained.append(run.train.seed)
        if len(trained) == 2:
            out.rename(moved)
        return _record(run)

    monkeypatch.setattr(sweeps, "run_experiment", runner)
    with pytest.raises(OutputFolderError) as caught:
        reproduce(_reproduce_config([0, 1, 2]), out, progress=False, echo=_quiet)
    assert str(caught.value) == (
        f"the results folder {out} was moved or deleted while `eqpdenet reproduce` ran (it is "
        f"now {moved}): nothing more was written, nor a folder made anew at {out}; its finished "
        f"runs are saved in {moved}: move it back to {out} and rerun the same command to resume")
    assert trained == [0, 1] and not out.exists()
    assert sorted(p.name for p in (moved / "runs").iterdir()) == ["fcnn-h4-seed0.json"]
    moved.rename(out)  # moved back, the same command resumes
    reproduce(_reproduce_config([0, 1, 2]), out, progress=False, echo=_quiet)
    assert trained == [0, 1, 1, 2]
    assert write_report(out).missing == []


def test_a_sweep_whose_folder_is_deleted_says_so(tmp_path, monkeypatch, fake_runs):
    out = _real(tmp_path) / "out"

    def runner(run, data, **options):
        if run.train.seed == 1:
            shutil.rmtree(out)
        return _record(run)

    monkeypatch.setattr(sweeps, "run_experiment", runner)
    with pytest.raises(OutputFolderError, match=r"while `eqpdenet reproduce` ran \(it was "
                                                r"deleted\): .* its finished runs went with it"):
        reproduce(_reproduce_config([0, 1, 2]), out, progress=False, echo=_quiet)
    assert not out.exists()


def test_a_worker_process_never_writes_into_a_new_folder_at_a_moved_sweeps_path(tmp_path,
                                                                                monkeypatch):
    """With --jobs N a run's checkpoint is written by its worker, which holds no lock: it
    recreated OUT/checkpoints at the old path."""
    out = tmp_path / "out"
    out.mkdir()
    identity = (os.stat(out).st_dev, os.stat(out).st_ino)
    out.rename(tmp_path / "out-old")
    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})

    def runner(config, data, *, progress, checkpoint, **options):
        atomic_write(checkpoint, b"weights")
        return _record(config)

    args = (runner, "fcnn-seed0", to_dict(ExperimentConfig()), None, None,
            torch.get_num_threads(), out / "checkpoints" / "fcnn-seed0.pt", {}, False,
            (str(_real(out)), identity, "reproduce"))
    with pytest.raises(OutputFolderError, match="was moved or deleted while `eqpdenet reproduce`"):
        sweeps._worker(args)
    assert not out.exists()


def test_a_run_is_not_swapped_into_a_folder_put_where_its_folder_was(tmp_path):
    """``train``'s folder moved during training and another folder made at its path: the run
    replaced that folder, deleting its files."""
    out, moved = _real(tmp_path) / "run", _real(tmp_path) / "run-old"
    with pytest.raises(OutputFolderError) as caught:
        with hold(out, "train"), staged(out) as stage:
            (stage / "model.pt").write_bytes(b"weights")
            out.rename(moved)
            out.mkdir()
            (out / "notes.txt").write_text("mine")
    assert str(caught.value).startswith(
        f"the run folder {out} was moved or deleted while `eqpdenet train` ran (it is now "
        f"{moved}): the new run was not written")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run-old"]  # no staging left


def test_a_held_folder_that_is_moved_is_never_made_anew(tmp_path):
    """A command's write into its folder (equivariance's outputs, describe's figure, a report),
    or a study's sweep folder inside it, after the folder was moved: it was made anew."""
    out, moved = _real(tmp_path) / "eq", _real(tmp_path) / "eq-old"
    with hold(out, "equivariance"):
        out.rename(moved)
        with pytest.raises(OutputFolderError, match=rf"the folder {out} was moved or deleted while "
                                                    rf"`eqpdenet equivariance` wrote into it \(it "
                                                    rf"is now {moved}\)"):
            atomic_write(out / "table.md", b"| table |")
        with pytest.raises(OutputFolderError, match="was moved or deleted"):  # its set of outputs
            files.write_set(out, {"table.md": b"| table |", "transforms.png": b"png"})
        assert not out.exists()
    study = _real(tmp_path) / "study"
    with hold(study, "study"):
        study.rename(_real(tmp_path) / "study-old")
        with pytest.raises(OutputFolderError, match="the results folder .* `eqpdenet study`"), \
                hold(study / "runs" / "0123abcd", "reproduce"):
            pass
        assert not study.exists()


# ----------------------------------------------------------------------------- 3. room


def _config(*overrides) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", *overrides])


def test_checkpoints_linked_to_another_disk_are_measured_there(tmp_path, monkeypatch):
    """OUT/checkpoints a link to another file system (a bigger disk, docs/reliability.md): only
    OUT's was measured, so a full one there failed at the end, and a full OUT refused a sweep
    whose checkpoints had room."""
    out, disk = tmp_path / "out", tmp_path / "disk"
    out.mkdir()
    disk.mkdir()
    (out / "checkpoints").symlink_to(disk)
    on_disk = lambda folder: disk in (Path(folder), *Path(folder).parents)  # noqa: E731
    monkeypatch.setattr(preflight, "_file_system", lambda folder: 2 if on_disk(folder) else 1,
                        raising=False)
    free = {"out": 2**40, "disk": 2**20}
    monkeypatch.setattr(preflight.shutil, "disk_usage",
                        lambda folder: type("Usage", (), {
                            "free": free["disk" if on_disk(folder) else "out"]}))
    runs = {f"fcnn-seed{seed}": _config("model.hidden=64") for seed in range(10)}
    with pytest.raises(OutputFolderError, match=rf"not enough space for the checkpoints in "
                                                rf"{out / 'checkpoints'}, a link to {disk} on "
                                                rf"another file system than {out}: about "):
        preflight.preflight(runs, out, checkpoints=10)
    free.update(out=2**20, disk=2**40)  # the records fit on OUT, the checkpoints on the disk
    preflight.preflight(runs, out, checkpoints=10)


def test_an_output_file_on_a_full_disk_is_refused_before_the_work(tmp_path, monkeypatch):
    """``evaluate --json`` onto a file system with 0 bytes free: the empty probe file was
    created all the same, and the whole evaluation ran before its write failed."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full to write as a full disk")
    real = files.temporary_beside

    def on_a_full_disk(path, suffix):  # the probe's data go to /dev/full: ENOSPC
        fd, tmp = real(path, suffix)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), tmp

    monkeypatch.setattr(files, "temporary_beside", on_a_full_disk)
    with pytest.raises(OutputFolderError) as caught:
        check_output_file(tmp_path / "summary.json", "--json")
    assert str(caught.value).startswith(f"--json {tmp_path / 'summary.json'}: cannot write into "
                                        f"{tmp_path}: no space left on the device")
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_larger_than_the_file_size_limit_is_refused_before_the_work(
        tmp_path, file_size_limit):
    """``ulimit -f`` below the checkpoint's size was never compared with it: train trained,
    then failed writing model.pt."""
    with pytest.raises(OutputFolderError) as caught:
        file_size_limit(100 * 1024, preflight.preflight, [_config("model.hidden=256")],
                        tmp_path / "run")
    assert "ulimit -f 100" in str(caught.value) and "a checkpoint in" in str(caught.value)
    assert caught.value.errno == errno.EFBIG
    file_size_limit(100 * 1024, preflight.preflight, [_config("model.hidden=4")], tmp_path / "run")
    with pytest.raises(OutputFolderError, match=r"--json .*: at least 4 KiB to write to one file, "
                                                r"more than .* \(1 KiB: ulimit -f 1\)"):
        file_size_limit(1024, check_output_file, tmp_path / "summary.json", "--json")


def test_train_past_the_file_size_limit_stops_before_it_trains(tmp_path):
    """The command line: one line naming ulimit -f, before any data is read or folder made."""
    write_npz(tmp_path / "tiny.npz")

    def limit():  # 64 KiB: the checkpoint of a 256-wide FCNN is about 400 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(
            resource.RLIMIT_FSIZE)[1]))

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    env.pop("EQPDENET_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "eqpdenet", "train", "--no-progress", "--out",
                           str(tmp_path / "run"), "--dataset", str(tmp_path / "tiny.npz"),
                           "--model", "fcnn", "--hidden", "256", "--epochs", "1"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
                          preexec_fn=limit)
    assert done.returncode == 2, done.stderr
    assert "ulimit -f 64" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.npz"]


# ----------------------------------------------------------------------------- 4. long names


@pytest.mark.parametrize("name", ["j" * 228 + ".json", "j" * 250 + ".json", "é" * 122 + ".json"])
def test_a_long_legal_file_name_is_written(tmp_path, name):
    """A name ``open`` takes (up to 255 bytes) was refused "file name too long": its temporary
    file's name, ``.<name>.XXXXXXXX.eqpdenet.tmp``, was longer."""
    path = tmp_path / name
    check_output_file(path, "--json")
    atomic_write(path, b"{}\n")
    assert path.read_bytes() == b"{}\n" and os.listdir(tmp_path) == [name]


def test_the_shortened_temporary_names_are_found_as_stale_and_no_other(tmp_path):
    """Two long names that begin alike: each one's killed writers' files, and only those, are
    removed beside it."""
    first, second = tmp_path / ("a" * 60 + "1" * 180), tmp_path / ("a" * 60 + "2" * 180)
    left = []
    for path in (first, second):
        fd, tmp = temporary_beside(path, ".eqpdenet.tmp")
        os.close(fd)
        os.utime(tmp, (0, 0))
        assert len(os.fsencode(tmp.name)) <= 255
        left.append(tmp)
    assert remove_stale_beside(first, ".eqpdenet.tmp", age=60) == [left[0]]
    assert left[1].exists()
    assert remove_stale_beside(second, ".eqpdenet.tmp", age=60) == [left[1]]


# ----------------------------------------------------------------------------- 5. resumable


def test_a_sweep_stopped_by_a_full_disk_says_its_finished_runs_are_saved(tmp_path, monkeypatch):
    """An interrupt says "finished runs are saved; rerun the same command to resume"; a full
    disk said only "No space left on device: .../runs/<key>.json"."""
    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})
    out = tmp_path / "sweep"
    real = sweeps.save_run

    def save_run(out_dir, key, record):
        if key.endswith("seed1"):
            path = Path(out_dir) / "runs" / f"{key}.json"
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(out_dir, key, record)

    monkeypatch.setattr(sweeps, "save_run", save_run)
    runs = {f"fcnn-h4-seed{seed}": _config("model.hidden=4", f"train.seed={seed}")
            for seed in (0, 1)}
    with pytest.raises(OutputFolderError) as caught:
        run_sweep("reproduce", runs, out, base_fingerprint="fp", progress=False, echo=_quiet,
                  runner=lambda config, data, **options: _record(config))
    assert str(caught.value) == (f"cannot write {out / 'runs' / 'fcnn-h4-seed1.json'}: No space "
                                 f"left on device; finished runs are saved: make room (or raise "
                                 f"the limit), then rerun the same command to resume")
    assert caught.value.errno == errno.ENOSPC
    assert [p.name for p in (out / "runs").iterdir()] == ["fcnn-h4-seed0.json"]
