"""Writers that meet in one folder (sixth probe round, 2026-12-06).

A single file written beside runs (``evaluate --json``, ``export --out``, ``figure --out``) was
checked before the work but not at its write: a ``train`` that took the folder in between
replaced the folder when its run ended, and deleted the file, after the command had exited 0.
The write now holds the folders' locks shared (:func:`runfolder.writing_beside_runs`).
"""

from __future__ import annotations

import pytest
import torch

from eqpdenet.app import locks, runfolder, training
from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
from eqpdenet.app.locks import LOCK_NAME, FolderLock, hold
from eqpdenet.app.runfolder import (
    RUN_FILES,
    check_replaceable,
    write_marker,
    writing_beside_runs,
)
from eqpdenet.errors import FolderLockedError, OutputFolderError


def finished_run(folder):
    """A run folder as ``train`` leaves it (its lock file stays)."""
    folder.mkdir(parents=True)
    write_marker(folder, "train")
    for name in RUN_FILES:
        (folder / name).write_text("the run's")
    (folder / LOCK_NAME).touch()
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4",
                                                  "train.epochs=1", "scenarios=['test']"])
    torch.manual_seed(0)
    training.save_checkpoint(path, build_model(config.model), config)
    return path


def test_a_train_cannot_take_a_folder_while_a_file_is_written_into_it(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "SHARED_WAIT", 0.1)  # the wait ends in a refusal here
    run = finished_run(tmp_path / "R")
    with writing_beside_runs(run / "deep" / "eval.json", "--json"):
        (run / "deep").mkdir()
        (run / "deep" / "eval.json").write_text("{}")
        with pytest.raises(FolderLockedError, match="being written by another eqpdenet process"):
            FolderLock(run).acquire("train")
    # after the write the train takes the lock, finds the file and keeps the folder
    with hold(run, "train"), pytest.raises(OutputFolderError, match=r"not part of an eqpdenet "
                                                                    r"run \(deep"):
        check_replaceable(run)


def test_a_link_into_a_run_folder_locks_the_folder_it_leads_to(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "SHARED_WAIT", 0.1)
    run = finished_run(tmp_path / "R")
    (run / "eval.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "eval.json").symlink_to(run / "eval.json")
    with writing_beside_runs(elsewhere / "eval.json", "--json"), \
            pytest.raises(FolderLockedError):
        FolderLock(run).acquire("train")


def test_the_write_is_refused_once_a_train_has_taken_the_folder(tmp_path):
    run = finished_run(tmp_path / "R")
    with hold(run, "train"), pytest.raises(OutputFolderError, match=r"is inside .*R, a folder "
                                                                    r"that `eqpdenet train`"):
        with writing_beside_runs(run / "eval.json", "--json"):
            pytest.fail("the write went ahead inside a folder a train is writing")


def test_a_folder_a_sweep_is_writing_still_takes_a_file(tmp_path):
    """A sweep writes files into its folder and never replaces it: nothing to wait for."""
    sweep = tmp_path / "S"
    with hold(sweep, "benchmark"), writing_beside_runs(sweep / "eval.json", "--json"):
        (sweep / "eval.json").write_text("{}")
    assert (sweep / "eval.json").read_text() == "{}"


@pytest.mark.parametrize("command", ["evaluate", "export", "figure"])
def test_a_train_taking_the_folder_after_the_commands_check_is_found_at_the_write(
        tmp_path, checkpoint, capsys, monkeypatch, command):
    """The race itself: the first check passed (as if no train held the folder then), and the
    train holds it when the file is written. Before, the file was written, exit 0, and
    deleted when the train's run was swapped in."""
    monkeypatch.setattr(runfolder, "check_output_keeps", lambda *args, **kwargs: None)
    run = finished_run(tmp_path / "R")
    out = run / {"evaluate": "eval.json", "export": "m.pt2", "figure": "figure.png"}[command]
    argv = {"evaluate": ["evaluate", str(checkpoint), "--instances", "1", "--json", str(out)],
            "export": ["export", str(checkpoint), "--format", "exported-program", "--out",
                       str(out), "--images", "2"],
            "figure": ["figure", "diagram", "--out", str(out)]}[command]
    with hold(run, "train"):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"is inside {run}, a folder that `eqpdenet train`" in err, err
    assert sorted(p.name for p in run.iterdir()) == sorted([".eqpdenet-folder", LOCK_NAME,
                                                            *RUN_FILES])


def test_a_plain_subfolder_of_a_run_is_named_as_a_users_folder_not_as_a_run(tmp_path):
    """Every subfolder of a run was called "the folder of another eqpdenet run": the search
    for runs went up from the subfolder and found the run itself."""
    run = finished_run(tmp_path / "R")
    (run / "figures").mkdir()
    (run / "figures" / "a.png").write_text("the user's")
    with pytest.raises(OutputFolderError, match=r"not part of an eqpdenet run \(figures"):
        check_replaceable(run)
    (run / "figures" / "a.png").unlink()
    (run / "figures").rmdir()
    finished_run(run / "sub")
    with pytest.raises(OutputFolderError, match=r"holds the folder of another eqpdenet run "
                                                r"\(sub\)"):
        check_replaceable(run)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_equivariance_into_a_new_folder_leaves_no_folder(tmp_path, monkeypatch,
                                                                       failure):
    """The clean-up removed the new folder only when it held the marker alone; the writer lock
    file is always there too, so the folder (marker and lock) stayed."""
    from eqpdenet.app import equivariance_study

    def interrupted(out):
        raise failure("stopped while writing")

    monkeypatch.setattr(equivariance_study, "write_invariant_orders", interrupted)
    out = tmp_path / "new" / "eq"
    try:
        main(["equivariance", "--invariant-orders-only", "--out", str(out)])
    except (KeyboardInterrupt, RuntimeError):
        pass
    assert not (tmp_path / "new").exists()


def test_benchmark_and_study_called_in_a_starting_worker_say_how_to_guard_the_script(
        tmp_path, monkeypatch):
    """As reproduce: without a ``__main__`` guard, each spawned worker re-ran the script and
    failed on the folder its parent holds, a traceback in every worker."""
    import multiprocessing

    from eqpdenet.app.benchmark import benchmark
    from eqpdenet.app.config import BenchmarkConfig
    from eqpdenet.app.study import run_study

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    for call, what in ((lambda: benchmark(BenchmarkConfig(), tmp_path / "b", jobs=2), "benchmark"),
                       (lambda: run_study(tmp_path / "s", jobs=2), "study")):
        with pytest.raises(RuntimeError, match=rf'{what} was called in a worker process while '
                                               rf'it started: .*`if __name__ == "__main__":`'):
            call()
    assert list(tmp_path.iterdir()) == []
