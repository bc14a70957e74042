"""Round 15: a resumed sweep whose ``runs`` or ``checkpoints`` cannot be written into trained its
missing run to the end and failed only then (a whole run's training lost); a read-only folder
was told to "make room"."""

from __future__ import annotations

import errno

import pytest

from eqpdenet.app import sweeps
from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.preflight import check_output_space
from eqpdenet.app.sweeps import RESUME_HINT, _limits_named, run_sweep
from eqpdenet.errors import OutputFolderError


def _runs(*seeds):
    return {f"fcnn-h4-seed{seed}": apply_overrides(ExperimentConfig(), [
        "model.kind='fcnn'", "model.hidden=4", f"train.seed={seed}"]) for seed in seeds}


@pytest.mark.parametrize("name", ["runs", "checkpoints"])
def test_a_file_in_place_of_a_sweep_folder_is_refused_before_any_run(tmp_path, monkeypatch, name):
    monkeypatch.setattr(sweeps, "_cached_data", lambda *args: {})
    out = tmp_path / "sweep"
    out.mkdir()
    (out / name).write_text("not a folder")
    trained = []

    def runner(config, data, **options):
        trained.append(config.train.seed)
        raise AssertionError("a run started")

    with pytest.raises(OutputFolderError) as caught:
        run_sweep("test", _runs(0), out, base_fingerprint="fp", runner=runner,
                  checkpoint_keys={"fcnn-h4-seed0"}, progress=False, echo=lambda line: None)
    assert str(caught.value) == f"the sweep's {name} folder {out / name} is a file, not a folder"
    assert trained == []


def test_only_the_folders_a_sweep_writes_into_are_checked(tmp_path):
    (tmp_path / "checkpoints").write_text("x")
    # no checkpoint due: its folder is never written into
    check_output_space(tmp_path, runs=1, checkpoints=0, parameters=10)
    # train's folder holds neither sub-folder: a file of that name is its own business
    check_output_space(tmp_path, runs=1, checkpoints=1, parameters=10, sweep=False)
    with pytest.raises(OutputFolderError, match="checkpoints folder .* is a file, not a folder"):
        check_output_space(tmp_path, runs=1, checkpoints=1, parameters=10)


def test_an_existing_writable_folder_passes_and_keeps_nothing(tmp_path):
    for name in ("runs", "checkpoints"):
        (tmp_path / name).mkdir()
    check_output_space(tmp_path, runs=2, checkpoints=1, parameters=10)
    assert [list((tmp_path / name).iterdir()) for name in ("runs", "checkpoints")] == [[], []]


@pytest.mark.parametrize("code, hint", [
    (errno.EROFS, RESUME_HINT.replace("make room (or raise the limit)",
                                      "make the folder writable")),
    (errno.ENOSPC, RESUME_HINT),
])
def test_a_read_only_folder_is_told_to_be_made_writable_not_to_make_room(tmp_path, code, hint):
    target = tmp_path / "runs" / "r.json"
    with pytest.raises(OutputFolderError) as caught, _limits_named(tmp_path, resumable=True):
        raise OSError(code, "system words", str(target))
    assert str(caught.value) == f"cannot write {target}: system words; {hint}"


def test_a_link_to_nothing_in_place_of_a_sweep_folder_is_refused_naming_its_target(tmp_path):
    (tmp_path / "runs").symlink_to(tmp_path / "gone")
    with pytest.raises(OutputFolderError) as caught:
        check_output_space(tmp_path, runs=1, checkpoints=0, parameters=10)
    assert str(caught.value) == (f"the sweep's runs folder {tmp_path / 'runs'} is a link to "
                                 f"{tmp_path / 'gone'}, which does not exist: make its target, "
                                 f"or remove the link")
