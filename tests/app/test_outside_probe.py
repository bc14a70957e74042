"""Findings of the outside probe of a sweep's life (issue 20's follow-up), one test per kind:
configurations that cannot train are refused before data is loaded, naming the field; the memory
estimate uses the batch training forms; a results file that is not UTF-8 or holds a line that is
not a run record is named, file and line; an output folder that cannot be written is found
before the work; the advice to rerun a run does rerun it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from eqpdenet.app import files, preflight, sweeps, training
from eqpdenet.app.batches import mini_batches
from eqpdenet.app.cli import describe_error, main
from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
from eqpdenet.app.files import check_output_file, read_jsonl
from eqpdenet.app.report import check_records
from eqpdenet.app.runstore import load_records, set_aside, write_aggregate
from eqpdenet.app.sweeps import run_sweep
from eqpdenet.errors import ConfigError, DataFileError, OutputFolderError


def _config(*assignments: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), list(assignments))


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------- batches of one image


@pytest.mark.parametrize(("assignments", "message"), [
    (["model.kind='cnn'", "train.batch_size=1"],
     r"invalid config: train.batch_size: batches of 1 image, but the cnn model has batch "
     r"normalisation \(features.1\), whose statistics need at least 2 images per batch; set "
     r"train.batch_size to 2 or more"),
    (["model.kind='eqpdenet'", "model.head='invariant'", "train.batch_size=1"],
     r"train.batch_size: batches of 1 image, but the eqpdenet model has batch normalisation "
     r"\(head_norm\)"),
    (["model.kind='lifted_pde'", "train.batch_size=1"],
     r"train.batch_size: batches of 1 image, but the lifted_pde model has batch normalisation "
     r"\(lift.norm\)"),
    # the blur penalty's copy makes two images of one, but the weight average's pass over the
    # batches, to recompute the statistics, has no copies
    (["model.kind='cnn'", "train.batch_size=1", "train.blur_consistency.weight=1.0",
      "train.weight_average=0.9"], r"train.batch_size: batches of 1 image"),
    (["model.kind='fcnn'", "data.train_subset=1"],
     r"invalid config: data.train_subset: 1 training image: one class, nothing a classifier can "
     r"learn"),
    (["model.kind='fcnn'", "data.validation=11999"],
     r"invalid config: data.validation: 11999 held out of the 12000 training images of rotmnist "
     r"leave 1 to train on"),
])
def test_a_batch_of_one_image_is_refused_before_any_data(assignments, message):
    with pytest.raises(ConfigError, match=message):
        preflight.preflight([_config(*assignments)], None)


@pytest.mark.parametrize("assignments", [
    ["model.kind='fcnn'", "train.batch_size=1"],  # no batch normalisation: one image is fine
    ["model.kind='cnn'", "train.batch_size=1", "train.blur_consistency.weight=1.0"],  # + its copy
    ["model.kind='cnn'", "train.batch_size=64", "data.train_subset=65"],  # one batch of 65
    ["model.kind='cnn'", "train.batch_size=2", "data.train_subset=2"],
])
def test_batches_that_hold_two_images_pass(assignments):
    preflight.preflight([_config(*assignments)], None)


def test_under_torchrun_every_process_needs_two_images_of_a_batch(monkeypatch):
    """Each process of ``train --distributed`` normalises its own share of a batch: batches of 3
    images over 2 processes give one of them a single image in every step."""
    assert preflight._processes() == 1  # no process group here
    monkeypatch.setattr(preflight, "_processes", lambda: 2)
    with pytest.raises(ConfigError, match=r"invalid config: train.batch_size: batches of 3 images "
                                          r"shared among 2 processes leave a process 1 image or "
                                          r"none, but the cnn model has batch normalisation "
                                          r"\(features.1\).*set train.batch_size to 4 or more"):
        preflight.preflight([_config("model.kind='cnn'", "train.batch_size=3")], None)
    with pytest.raises(ConfigError, match=r"data.train_subset: batches of 3 images shared among "
                                          r"2 processes .*; train on 4 images or more"):
        preflight.preflight([_config("model.kind='cnn'", "data.train_subset=3")], None)
    preflight.preflight([_config("model.kind='cnn'", "train.batch_size=4")], None)
    preflight.preflight([_config("model.kind='fcnn'", "train.batch_size=3")], None)


def test_a_sweep_with_a_batch_of_one_image_stops_before_its_first_run(tmp_path, capsys, no_data):
    """The probe's benchmark: an FCNN entry, then a CNN with batches of 1 image. It ran the FCNN
    and aborted at the CNN naming model.eval(); now nothing runs."""
    toml = tmp_path / "bench.toml"
    toml.write_text('seeds = [0]\n[base]\nscenarios = ["test"]\n[base.data]\ntrain_subset = 100\n'
                    'test_subset = 50\n[base.train]\nepochs = 1\n[models]\n'
                    'fcnn = ["model.kind=\'fcnn\'", "model.hidden=8"]\n'
                    'cnn = ["model.kind=\'cnn\'", "train.batch_size=1"]\n')
    out = tmp_path / "bench"
    assert main(["benchmark", "--config", str(toml), "--out", str(out), "--no-progress"]) == 2
    line = _one_error(capsys)
    assert "train.batch_size: batches of 1 image, but the cnn model" in line
    assert "model.eval()" not in line
    assert not (out / "runs").exists() and not (out / "results.jsonl").exists()


def test_train_refuses_a_subset_of_one_image_before_loading(tmp_path, capsys, no_data):
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", "--model", "fcnn",
                 "--set", "data.train_subset=1"]) == 2
    assert "data.train_subset: 1 training image" in _one_error(capsys)


@pytest.mark.parametrize("batch_size", range(1, 10))
def test_the_batches_the_preflight_expects_are_those_training_forms(batch_size):
    for images in range(1, 30):
        config = _config(f"train.batch_size={batch_size}", f"data.train_subset={images}")
        sizes = [s.stop - s.start for s in mini_batches(images, batch_size)]
        assert preflight.training_batches(config) == (max(sizes), min(sizes))


# ----------------------------------------------------------------------- the memory estimate


def test_the_memory_estimate_uses_the_batch_training_forms(monkeypatch):
    """``data.train_subset=500 train.batch_size=100000`` was refused as needing 29 GiB: every
    batch holds the 500 images."""
    huge = _config("model.hidden=8", "data.train_subset=500", "train.batch_size=100000")
    real = _config("model.hidden=8", "data.train_subset=500", "train.batch_size=500")
    assert preflight.training_images(huge) == 500
    assert preflight.training_bytes(huge) == preflight.training_bytes(real) > 0
    # ROTMNIST: 12,000 training images, less those held out for validation
    whole = _config("model.hidden=8", "train.batch_size=100000", "data.validation=2000")
    assert preflight.training_images(whole) == 10000
    assert preflight.training_bytes(whole) == preflight.training_bytes(
        _config("model.hidden=8", "train.batch_size=10000"))
    # 65 images in batches of 64: one batch of 65
    assert preflight.training_bytes(_config("data.train_subset=65", "train.batch_size=64")) == \
        preflight.training_bytes(_config("data.train_subset=65", "train.batch_size=65"))
    # a data set read from a file: its size is not known before loading, unless the caller says
    npz = _config("data.dataset='/no/such/file.npz'", "train.batch_size=100000")
    assert preflight.training_images(npz) is None
    assert preflight.training_bytes(npz, images=500) == preflight.training_bytes(real)
    # refused at the real batch, which the message names
    need = preflight.training_bytes(real)
    monkeypatch.setattr(preflight, "available_memory", lambda device: 2 * need)
    preflight.preflight([huge], None)
    too_many = _config("model.hidden=8", "data.train_subset=5000", "train.batch_size=100000")
    with pytest.raises(ConfigError, match=r"lower train.batch_size \(100000: batches of 5000 "
                                          r"images\)"):
        preflight.preflight([too_many], None)


# ----------------------------------------------------------------------- results files


def _record(seed: int, test: float = 70.0) -> dict:
    return {"model": "fcnn", "hidden": 4, "seed": seed, "status": "ok", "params": 1,
            "key": f"fcnn-h4-seed{seed}", "accuracy": {"test": test}, "train_seconds": 0.0,
            "eval_seconds": 0.0}


def _sweep(out, seeds, runner):
    runs = {}
    for seed in seeds:
        run = _config("model.kind='fcnn'", "model.hidden=4", f"train.seed={seed}")
        runs[f"fcnn-h4-seed{seed}"] = run
    return run_sweep("test", runs, out, base_fingerprint="fp", runner=runner, progress=False,
                     echo=lambda line: None)


@pytest.fixture
def sweep_without_data(monkeypatch):
    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})


@pytest.mark.parametrize(("line", "shown"), [
    ('"x"', '"x"'),
    ('{"model": "fcnn", "seed": 3}', '{"model": "fcnn", "seed": 3}'),
    ('{"key": 7}', '{"key": 7}'),
    ("[1, 2]", "[1, 2]"),
])
@pytest.mark.parametrize("legacy", [False, True], ids=["run-files", "results-only"])
def test_a_line_that_is_not_a_run_record_is_named_with_its_line(tmp_path, line, shown, legacy):
    folder = tmp_path / "sweep"
    (folder / "runs").mkdir(parents=True)
    records = [_record(0), _record(1)]
    for record in records:
        (folder / "runs" / f"{record['key']}.json").write_text(json.dumps(record))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records)
                                          + "\n" + line + "\n")
    if legacy:
        shutil.rmtree(folder / "runs")
    message = (rf"{re.escape(str(folder / 'results.jsonl'))}:4: not a run record "
               rf"\({re.escape(shown)}: not a JSON object with a string \"key\"\); delete or "
               rf"repair that line")
    with pytest.raises(DataFileError, match=message) as caught:
        load_records(folder)
    text, status = describe_error(caught.value)
    assert status == 2 and "a bug" not in text
    with pytest.raises(DataFileError, match=message):
        set_aside(folder, {"fcnn-h4-seed0"}, "stamp")


def test_resume_with_a_line_that_is_not_a_run_record_is_one_line(tmp_path, capsys,
                                                                 sweep_without_data):
    """The probe: ``echo '"x"' >> results.jsonl`` then resume gave 'unexpected TypeError ... a
    bug in eqpdenet?', exit 1."""
    out = tmp_path / "sweep"
    _sweep(out, [0], lambda run, data, **kwargs: _record(run.train.seed))
    with open(out / "results.jsonl", "a") as handle:
        handle.write('"x"\n')
    with pytest.raises(DataFileError) as caught:
        _sweep(out, [0, 1], lambda run, data, **kwargs: _record(run.train.seed))
    assert describe_error(caught.value) == (
        f"{out / 'results.jsonl'}:2: not a run record (\"x\": not a JSON object with a string "
        f"\"key\"); delete or repair that line (where its run has a file in runs/, the line "
        f"is regenerated from it; without one, the line was the run's only record and the run is "
        f"done again)", 2)


def test_bytes_that_are_not_utf8_are_named_with_file_and_line(tmp_path, capsys):
    folder = tmp_path / "sweep"
    folder.mkdir()
    results = folder / "results.jsonl"
    good = json.dumps(_record(0)).encode()
    results.write_bytes(good + b"\n" + good[:11] + b"\xf9" + good[12:] + b"\n")
    message = (rf"{re.escape(str(results))}:2: not UTF-8 text \(byte 0xf9 at column 12\): not a "
               rf"file eqpdenet wrote, or a damaged one")
    for read in (read_jsonl, lambda path: load_records(path.parent)):
        with pytest.raises(DataFileError, match=message):
            read(results)
    assert main(["report", str(folder)]) == 2
    assert re.search(message, _one_error(capsys))


def test_lines_are_counted_as_an_editor_counts_them(tmp_path):
    """Lines end at a newline only: U+2028 or U+0085 in a string (which str.splitlines takes
    for line ends) does not end a line, nor shift the numbers of the lines after it."""
    path = tmp_path / "results.jsonl"
    body = b'{"a": 1}\r\n\n{"b": "x\xe2\x80\xa8y\xc2\x85z"}\n'
    path.write_bytes(body + b'{"c": \n')
    with pytest.raises(DataFileError, match=r"results.jsonl:4: not a JSON line"):
        read_jsonl(path)
    path.write_bytes(body + b'{"c": 3}')
    assert read_jsonl(path) == [{"a": 1}, {"b": "x\u2028y\x85z"}, {"c": 3}]


# ----------------------------------------------------------------------- the rerun advice


def test_the_advice_to_rerun_a_run_reruns_it(tmp_path, sweep_without_data):
    """report's advice for a run it cannot average: deleting its results.jsonl line alone brings
    it back from its run file, deleting its run file alone leaves the line counted as a run of
    an old folder; both, as the advice says, rerun it."""
    out, calls = tmp_path / "sweep", []

    def runner(run, data, **kwargs):
        calls.append(run.train.seed)
        return _record(run.train.seed, 70.0)

    _sweep(out, [0, 1], runner)
    results, key = out / "results.jsonl", "fcnn-h4-seed1"
    # a NaN accuracy as a sweep recorded it before such runs were recorded as failed
    record = json.loads((out / "runs" / f"{key}.json").read_text())
    record["accuracy"]["test"] = float("nan")
    (out / "runs" / f"{key}.json").write_text(json.dumps(record) + "\n")
    write_aggregate(out)
    with pytest.raises(DataFileError, match=rf"accuracy test is nan, not a finite percentage; a "
                                            rf"report cannot average it \(to rerun it, delete "
                                            rf"both runs/{key}.json \(if there is one\) and its "
                                            rf"line in results.jsonl, then rerun the sweep's "
                                            rf"command\)"):
        check_records(read_jsonl(results), str(results))

    def without_line():
        lines = results.read_text().splitlines(keepends=True)
        results.write_text("".join(line for line in lines if f'"key": "{key}"' not in line))

    without_line()  # the line alone: back from the run file, not rerun
    _sweep(out, [0, 1], runner)
    assert calls == [0, 1] and len(read_jsonl(results)) == 2
    run_file = out / "runs" / f"{key}.json"
    saved = run_file.read_bytes()
    run_file.unlink()  # the run file alone: the line counts as a finished run
    _sweep(out, [0, 1], runner)
    assert calls == [0, 1] and len(read_jsonl(results)) == 2
    run_file.write_bytes(saved)
    run_file.unlink()  # both, as the advice says: rerun
    without_line()
    _sweep(out, [0, 1], runner)
    assert calls == [0, 1, 1]
    check_records(read_jsonl(results), str(results))  # finite now


# ----------------------------------------------------------------------- output files


@contextlib.contextmanager
def _read_only_folder(tmp_path):
    """A folder nothing can be written into: a read-only tmpfs as root (who ignores
    permissions), else one without write permission."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
            capture_output=True).returncode != 0:
        pytest.skip("root here, and a read-only tmpfs cannot be mounted")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_an_output_folder_that_cannot_be_written_is_found_before_the_work(tmp_path, capsys,
                                                                           monkeypatch):
    """The probe: ``evaluate --json`` into a read-only folder failed after the whole
    evaluation, naming a temporary file."""
    config = _config("model.kind='fcnn'", "model.hidden=4")
    checkpoint = tmp_path / "model.pt"
    training.save_checkpoint(checkpoint, build_model(config.model), config)

    def loaded(*args, **kwargs):
        raise AssertionError("data was loaded: the evaluation began")

    monkeypatch.setattr(training, "prepare_data", loaded)
    with _read_only_folder(tmp_path) as folder:
        target = folder / "summary.json"
        with pytest.raises(OutputFolderError, match=rf"--json {re.escape(str(target))}: cannot "
                                                    rf"write into {re.escape(str(folder))}: "
                                                    rf"(read-only file system|permission denied)"):
            check_output_file(target, "--json")
        assert main(["evaluate", str(checkpoint), "--json", str(target)]) == 2
        line = _one_error(capsys)
        assert f"--json {target}: cannot write into {folder}" in line and ".tmp" not in line
        # a write that fails anyway names the file asked for, not the temporary one
        with pytest.raises(OSError) as caught:
            files.atomic_write(target, b"{}")
        assert caught.value.filename == str(target)
        assert caught.value.errno in (errno.EROFS, errno.EACCES)
        assert os.listdir(folder) == []


def test_the_writability_probe_leaves_nothing_and_names_the_cause(tmp_path, monkeypatch):
    check_output_file(tmp_path / "out" / "summary.json", "--json")
    assert os.listdir(tmp_path / "out") == []

    def refused(path, suffix):
        raise PermissionError(errno.EACCES, "Permission denied", str(path) + ".x" + suffix)

    monkeypatch.setattr(files, "temporary_beside", refused)
    with pytest.raises(OutputFolderError, match=r"--out .*summary.png: cannot write into .*out: "
                                                r"permission denied$"):
        check_output_file(tmp_path / "out" / "summary.png", "--out")


def test_a_write_that_fails_for_lack_of_space_names_the_file(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        files.atomic_write(tmp_path / "results.jsonl", b"x")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC,
                                                           str(tmp_path / "results.jsonl"))
    assert describe_error(caught.value) == (
        f"No space left on device: {tmp_path / 'results.jsonl'}", 2)
    assert os.listdir(tmp_path) == []


def test_train_model_is_unchanged_for_a_batch_norm_model_on_a_last_batch_of_one():
    """65 images in batches of 64 train as one batch of 65 (mini_batches), so the preflight
    lets it through and training does not fail on the remainder."""
    config = _config("model.kind='cnn'", "model.image_size=8", "model.classes=2",
                     "train.batch_size=64", "train.epochs=1", "data.train_subset=65")
    preflight.preflight([config], None)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(65, 1, 8, 8, generator=generator)
    labels = torch.arange(65) % 2
    data = {"train": training.Split(images, labels),
            "validation": training.Split(images[:0], labels[:0]),
            "test": training.Split(images, labels)}
    _, history = training.train_model(config, data, progress=False)
    assert len(history) == 1


def test_a_benchmark_report_names_a_line_that_is_not_a_run_record(tmp_path):
    """The benchmark's report checks its records before it looks for missing runs (which read
    each record's key and crashed with an AttributeError on a JSON string)."""
    from eqpdenet.app.benchmark import write_benchmark_report

    (tmp_path / "results.jsonl").write_text('"x"\n')
    with pytest.raises(ValueError, match=r"results.jsonl: record 1 is not a run record"):
        write_benchmark_report(tmp_path)


def test_pde_lr_scale_set_for_a_model_without_the_papers_layer_is_warned_about():
    """Only EqPdeNet has a pde_layer trained at lr * pde_lr_scale; for the others the option did
    nothing, silently. The default (every configuration has it) is not warned about."""
    import warnings as _warnings

    from eqpdenet.app.config import ExperimentConfig, apply_overrides
    from eqpdenet.app.training import Data, Split, train_model

    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 2
    data = Data(train=Split(x, y), validation=Split(x[:0], y[:0]), test=Split(x, y), classes=2)
    for kind, scale, warned in (("cnn", 0.5, True), ("cnn", 0.01, False), ("eqpdenet", 0.5, False)):
        config = apply_overrides(ExperimentConfig(), [
            f"model.kind='{kind}'", "model.hidden=4", "train.epochs=1", "train.batch_size=8",
            f"train.pde_lr_scale={scale}"])
        with _warnings.catch_warnings(record=True) as caught:
            _warnings.simplefilter("always")
            train_model(config, data, progress=False)
        said = [str(w.message) for w in caught if "pde_lr_scale" in str(w.message)]
        assert bool(said) is warned, (kind, scale, said)
