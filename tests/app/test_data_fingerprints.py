"""Results and checkpoints say which data they were made on, and which bytes a checkpoint holds.

A user data set's file regenerated under the same name (other classes, other images) is noticed:
its fingerprint (``eqpdenet.data.datasets.data_fingerprint``) is recorded in every run record
and checkpoint; a sweep refuses (or with ``--rerun-changed`` sets aside) the runs made on the old
file, and ``evaluate`` refuses data its model cannot take and warns about data that changed. A
checkpoint whose bytes changed after it was written is refused on loading (``torch.load`` does not
check the archive's CRCs).
"""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
import zipfile

import numpy as np
import pytest
import torch

from eqpdenet.app import sweeps, training
from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model, to_dict
from eqpdenet.app.files import read_jsonl
from eqpdenet.app.runstore import load_records, save_run
from eqpdenet.errors import CheckpointError


def write_set(path, classes: int, seed: int = 0, n: int = 120, size: int = 12) -> str:
    """A small .npz data set; returns its fingerprint (the shortened SHA-256 of its bytes)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = (rng.random((n, size, size)) * 255).astype(np.uint8)
    images[np.arange(n), labels, labels] = 255  # something to learn
    np.savez(path, x_train=images, y_train=labels, x_test=images[:60], y_test=labels[:60])
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def tiny(path) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), [
        f"data.dataset='{path}'", "model.kind='fcnn'", "model.hidden=4", "train.epochs=1",
        "train.batch_size=32", "scenarios=['test']"])


def error_lines(capsys) -> tuple[str, list[str]]:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.out, [line for line in captured.err.splitlines() if line.startswith("eqpdenet:")]


# ----------------------------------------------------------------------------- recorded


def test_run_records_and_checkpoints_record_the_datas_fingerprint(tmp_path):
    path = tmp_path / "data.npz"
    fingerprint = write_set(path, 10)
    config = tiny(path)
    data = training.prepare_data(config.data)
    assert data.info == {"source": str(path), "fingerprint": fingerprint}
    record = training.run_experiment(config, data, progress=False, checkpoint=tmp_path / "m.pt")
    assert record["status"] == "ok"
    assert record["dataset"] == {"source": str(path), "fingerprint": fingerprint}
    json.dumps(record)  # a JSON record still
    _, _, payload = training.load_checkpoint(tmp_path / "m.pt")
    assert payload["dataset"] == {"source": str(path), "fingerprint": fingerprint}


# ----------------------------------------------------------------------------- sweeps


def reproduce_argv(path, out, seeds="[0]") -> list[str]:
    return ["reproduce", "--out", str(out), "--no-progress", "--set", f"base.data.dataset='{path}'",
            "--set", "models=['fcnn']", "--set", "hidden_sizes=[4]", "--set", f"seeds={seeds}",
            "--set", "base.train.epochs=1", "--set", "base.train.batch_size=32",
            "--set", "base.scenarios=['test']", "--set", "checkpoint_seeds=[]"]


def test_a_sweep_notices_its_data_file_replaced_and_reruns_on_request(tmp_path, capsys):
    """The user regenerates data.npz with 3 classes instead of 10 after seed 0 finished; adding
    seed 1 used to average seed 0 (old data) with seed 1 (new data) silently."""
    path, out = tmp_path / "data.npz", tmp_path / "sweep"
    old = write_set(path, 10)
    assert main(reproduce_argv(path, out)) == 0
    assert read_jsonl(out / "results.jsonl")[0]["dataset"]["fingerprint"] == old
    new = write_set(path, 3, seed=1)
    capsys.readouterr()

    assert main(reproduce_argv(path, out, "[0, 1]")) == 2
    _, lines = error_lines(capsys)
    assert len(lines) == 1
    assert (f"fcnn-h4-seed0 (data file {path}: fingerprint {old} recorded, {new} now); run again "
            f"with --rerun-changed") in lines[0]
    assert set(load_records(out)) == {"fcnn-h4-seed0"}  # nothing ran, nothing moved

    assert main([*reproduce_argv(path, out, "[0, 1]"), "--rerun-changed"]) == 0
    records = read_jsonl(out / "results.jsonl")
    assert [(r["key"], r["dataset"]["fingerprint"]) for r in records] == [
        ("fcnn-h4-seed0", new), ("fcnn-h4-seed1", new)]
    (aside,) = (out / "superseded").iterdir()
    assert [r["dataset"]["fingerprint"] for r in read_jsonl(aside / "results.jsonl")] == [old]
    assert sweeps.changed_runs({}, out) == {}


def test_the_data_is_hashed_once_per_path_per_check_and_records_without_fingerprint_pass(
        tmp_path, monkeypatch):
    path = tmp_path / "data.npz"
    old = write_set(path, 10)
    runs = {}
    for seed in range(3):
        runs[f"fcnn-h4-seed{seed}"] = apply_overrides(tiny(path), [f"train.seed={seed}"])
        record = {"key": f"fcnn-h4-seed{seed}", "status": "ok", "accuracy": {"test": 1.0},
                  "config": to_dict(runs[f"fcnn-h4-seed{seed}"])}
        if seed:  # seed 0: recorded before fingerprints existed
            record["dataset"] = {"source": str(path), "fingerprint": old}
        save_run(tmp_path / "sweep", record["key"], record)
    hashed = []
    real = sweeps.dataset_fingerprint
    monkeypatch.setattr(sweeps, "dataset_fingerprint", lambda spec: hashed.append(spec) or real(spec))
    assert sweeps.changed_runs(runs, tmp_path / "sweep") == {}
    assert hashed == [str(path)]
    new = write_set(path, 10, seed=5)
    assert sweeps.changed_runs(runs, tmp_path / "sweep") == {
        key: [f"data file {path}: fingerprint {old} recorded, {new} now"]
        for key in ("fcnn-h4-seed1", "fcnn-h4-seed2")}  # seed 0: no fingerprint, no check
    assert hashed == [str(path)] * 2


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_refuses_data_its_model_cannot_take_and_warns_about_changed_data(
        tmp_path, capsys):
    path = tmp_path / "data.npz"
    old = write_set(path, 10)
    assert main(["train", "--no-progress", "--model", "fcnn", "--hidden", "4", "--epochs", "1",
                 "--dataset", str(path), "--set", "scenarios=['test']",
                 "--out", str(tmp_path / "run")]) == 0
    checkpoint = str(tmp_path / "run" / "model.pt")
    capsys.readouterr()
    assert main(["evaluate", checkpoint]) == 0
    out, lines = error_lines(capsys)
    assert lines == [] and "test:" in out  # the same data: no word

    write_set(path, 3, seed=1)  # regenerated: 3 classes
    assert main(["evaluate", checkpoint]) == 2
    out, lines = error_lines(capsys)
    assert out == ""  # nothing scored
    assert lines == [f"eqpdenet: error: {path}: 3 classes of 1x12x12 images, but the model of "
                     f"{checkpoint} was trained on 10 classes of 1x12x12 images (channels x height x "
                     f"width): not the data set it was trained on (the file was replaced since?) "
                     f"(EQPDENET_DEBUG=1 shows the traceback)"]
    write_set(path, 10, size=16)  # another image size
    assert main(["evaluate", checkpoint]) == 2
    assert f"{path}: 10 classes of 1x16x16 images, but the model of {checkpoint} was trained on " \
           f"10 classes of 1x12x12 images" in error_lines(capsys)[1][0]
    new = write_set(path, 10, seed=2)  # fits, other images
    assert main(["evaluate", checkpoint]) == 0
    out, lines = error_lines(capsys)
    assert "test:" in out
    assert lines == [f"eqpdenet: warning: {path} is not the file {checkpoint} was trained on "
                     f"(fingerprint {new}, recorded {old}): its content changed since; the scores "
                     f"are on the data as it is now"]

    payload = torch.load(checkpoint, weights_only=True)  # a checkpoint from before fingerprints
    del payload["dataset"]
    torch.save(payload, tmp_path / "old.pt")
    assert main(["evaluate", str(tmp_path / "old.pt")]) == 0
    assert error_lines(capsys)[1] == []  # nothing to compare: no word either


# ----------------------------------------------------------------------------- damaged bytes


def flip_a_bit(path, member: str) -> None:
    """Flip the lowest bit of the first byte of ``member``'s data (a float's last mantissa bit:
    the weight stays finite, close, and wrong)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:
                                                       info.header_offset + 30])
    raw[info.header_offset + 30 + name_length + extra_length] ^= 1
    path.write_bytes(bytes(raw))


def test_a_checkpoint_whose_bytes_changed_is_refused_naming_the_member(tmp_path, capsys):
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=8"])
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    training.save_checkpoint(path, build_model(config.model), config)
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename),
                     key=lambda i: i.file_size).filename
    flip_a_bit(path, member)
    torch.load(path, weights_only=True)  # torch itself loads it without a word
    with pytest.raises(CheckpointError) as error:
        training.load_checkpoint(path)
    assert str(error.value) == (f"{path} is damaged: member {member} of its zip archive fails its "
                                f"CRC check (its bytes changed after it was written); such a "
                                f"checkpoint cannot be trusted, use another copy")
    assert main(["evaluate", str(path)]) == 2
    assert error_lines(capsys)[1][0].startswith(f"eqpdenet: error: {path} is damaged: member {member}")


def test_every_command_loads_checkpoints_through_load_checkpoint():
    """The CRC check is in load_checkpoint; no other code of the package loads a checkpoint."""
    from pathlib import Path

    package = Path(training.__file__).resolve().parents[1]
    loaders = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                     if "torch.load(" in path.read_text())
    assert loaders == ["app/training.py"]


def test_an_intact_checkpoint_still_loads_without_a_warning(tmp_path):
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=8"])
    model = build_model(config.model)
    training.save_checkpoint(tmp_path / "m.pt", model, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, _, _ = training.load_checkpoint(tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 loaded.state_dict().values(), strict=True))


def test_runs_of_another_base_name_the_fields_that_differ(tmp_path):
    """Runs of another base configuration: the fields that differ from the folder's config.toml,
    where the caller gives its configuration, else the fingerprints."""
    config = ExperimentConfig()
    save_run(tmp_path, "k", {"key": "k", "base_fingerprint": "old", "status": "ok"})
    (tmp_path / "config.toml").write_text("[base.train]\nepochs = 3\n")
    assert sweeps.changed_runs({}, tmp_path, base_fingerprint="new", base={"base": config}) == {
        "k": ["base.train.epochs: 3 recorded, 20 now"]}
    assert sweeps.changed_runs({}, tmp_path, base_fingerprint="new") == {
        "k": ["base configuration fingerprint old recorded, new now"]}
