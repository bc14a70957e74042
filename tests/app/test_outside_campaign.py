"""The findings of the fault campaign designed from outside (issue 20), one test per kind: each
case gives one clear line, refuses before work, or is handled, and nothing of the user's is
replaced."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from eqpdenet.app import training
from eqpdenet.app.batches import mini_batches
from eqpdenet.app.cli import INCOMPLETE, build_parser, describe_error, main
from eqpdenet.app.config import (
    DataConfig,
    ExperimentConfig,
    ReproduceConfig,
    apply_overrides,
    build_model,
    to_toml,
)
from eqpdenet.app.runfolder import folder_kind
from eqpdenet.app.training import (
    Split,
    evaluate_scenarios,
    load_checkpoint,
    prepare_data,
    resolve_for_data,
    save_checkpoint,
    train_model,
)
from eqpdenet.data.datasets import load_dataset
from eqpdenet.errors import CheckpointError, ConfigError, DataFileError


def _tiny_data(n: int, size: int = 8, classes: int = 2):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, size, size, generator=generator)
    labels = torch.arange(n) % classes
    return {"train": Split(images, labels), "validation": Split(images[:0], labels[:0]),
            "test": Split(images, labels)}


def test_a_last_batch_of_one_image_joins_the_batch_before():
    assert [(s.start, s.stop) for s in mini_batches(9, 4)] == [(0, 4), (4, 9)]
    assert [(s.start, s.stop) for s in mini_batches(1, 4)] == [(0, 1)]
    assert sum(s.stop - s.start for s in mini_batches(257, 128)) == 257
    # a model with batch normalisation trains on 9 images in batches of 4 (4 + 5, never a 1)
    config = apply_overrides(ExperimentConfig(), [
        "model.kind='invariant_pde'", "model.image_size=8", "model.classes=2",
        "model.invariant_pde.channels=[4]", "model.invariant_pde.blocks=[1]",
        "train.batch_size=4", "train.epochs=1"])
    _, history = train_model(config, _tiny_data(9), progress=False)
    assert len(history) == 1 and history[0]["loss"] > 0


def _nan_checkpoint(path):
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4"])
    torch.manual_seed(0)
    model = build_model(config.model)
    save_checkpoint(path, model, config)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["mlp.2.weight"][0, :3] = float("nan")
    torch.save(payload, path)
    return model, config


def test_a_checkpoint_with_nan_weights_is_refused_not_scored(tmp_path, capsys):
    model, config = _nan_checkpoint(tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan.pt: the weights are not all finite \(1 tensor, "
                                              r"e.g. mlp.2.weight \(3 NaN, 0 inf\)\)"):
        load_checkpoint(tmp_path / "nan.pt")
    assert main(["evaluate", str(tmp_path / "nan.pt"), "--instances", "1"]) == 2
    assert "the weights are not all finite" in capsys.readouterr().err
    with torch.no_grad():
        model.mlp[0].bias[0] = float("inf")
    with pytest.raises(CheckpointError, match=r"not saving .*: the model's weights are not all "
                                              r"finite \(1 tensor, e.g. mlp.0.bias \(0 NaN, 1 inf"):
        save_checkpoint(tmp_path / "inf.pt", model, config)
    assert not (tmp_path / "inf.pt").exists()


def test_a_run_whose_weights_break_in_its_last_update_is_diverged(tmp_path, monkeypatch):
    """A last optimiser step can make the weights NaN after the last finite loss: the run is
    recorded as diverged, neither scored nor saved."""
    def broken(config, data, **kwargs):
        torch.manual_seed(0)
        model = build_model(resolve_for_data(config, data).model)
        with torch.no_grad():
            model.mlp[4].weight.fill_(float("nan"))
        return model, [{"epoch": 1, "loss": 1.0}]

    monkeypatch.setattr(training, "train_model", broken)
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4"])
    record = training.run_experiment(config, _tiny_data(6, size=28, classes=10) | {},
                                     progress=False, checkpoint=tmp_path / "model.pt")
    assert record["status"] == "diverged" and "accuracy" not in record
    assert "the weights are not all finite after training" in record["error"]
    assert not (tmp_path / "model.pt").exists()


def _npz(path, n_train=20, n_test=10, classes=3, size=8):
    rng = np.random.default_rng(0)
    with open(path, "wb") as handle:  # a handle: np.savez would append ".npz" to the name
        np.savez(handle, x_train=rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
                 y_train=np.arange(n_train) % classes,
                 x_test=rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
                 y_test=np.arange(n_test) % classes)
    return path


@pytest.mark.parametrize(("options", "message"), [
    ({"classes": 1}, r"every label is 0: a classifier needs at least two classes"),
    ({"n_train": 0}, r"a split holds no labels \(no images\)"),
    ({"n_test": 0}, r"a split holds no labels \(no images\)"),
    ({"size": 0}, r"hold no pixels"),
])
def test_a_data_set_that_cannot_train_a_classifier_is_refused(tmp_path, options, message):
    with pytest.raises(DataFileError, match=message):
        load_dataset(str(_npz(tmp_path / "data.npz", **options)))


def test_a_npz_file_is_read_whatever_the_case_of_its_suffix(tmp_path):
    upper = _npz(tmp_path / "DIGITS.NPZ")
    assert load_dataset(str(upper)).classes == 3
    renamed = tmp_path / "digits.data"
    upper.rename(renamed)
    assert len(load_dataset(str(renamed)).train_images) == 20  # a zip archive by its content
    text = tmp_path / "notes.txt"
    text.write_text("not data")
    with pytest.raises(ConfigError, match="a file must be a NumPy .npz archive"):
        load_dataset(str(text))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("train_subset", 21, r"data.train_subset: 21 is more than the 20 training images"),
    ("train_subset", 16, r"data.train_subset: 16 is more than the 15 training images of .* \(5 "
                         r"held out for validation\)"),
    ("test_subset", 11, r"data.test_subset: 11 is more than the 10 test images"),
])
def test_a_subset_larger_than_the_data_is_refused_not_truncated(tmp_path, field, value, message):
    """config.toml would record 21 images where 20 trained."""
    path = _npz(tmp_path / "data.npz")
    options = {"dataset": str(path), field: value}
    if "held out" in message:
        options["validation"] = 5
    with pytest.raises(ConfigError, match=message):
        prepare_data(DataConfig(**options))


def _record(seed: int, test: float, kind: str = "fcnn") -> dict:
    return {"model": kind, "hidden": 16, "seed": seed, "status": "ok", "params": 13002,
            "key": f"{kind}-h16-seed{seed}", "accuracy": {"test": test, "iso": 30.0, "sca": 20.0}}


def _sweep_folder(folder, records, seeds=(0, 1)):
    folder.mkdir()
    config = apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[16]",
                                                 f"seeds={list(seeds)}"])
    (folder / "config.toml").write_text(to_toml(config))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r["accuracy"].update(test=float("nan")), r"accuracy test is nan, not a finite "
                                                         r"percentage"),
    (lambda r: r["accuracy"].update(iso=float("inf")), r"accuracy iso is inf"),
    (lambda r: r["accuracy"].update(sca=250.0), r"accuracy sca is 250.0"),
    (lambda r: r.update(validation_accuracy=float("nan")), r"validation_accuracy is nan"),
    (lambda r: r.pop("hidden"), r"record 2: hidden is None, not a run's int"),
    (lambda r: r.update(params="many"), r"params is 'many', not a parameter count"),
])
def test_report_refuses_numbers_it_cannot_average(tmp_path, capsys, edit, message):
    bad = _record(1, 74.0)
    edit(bad)
    folder = _sweep_folder(tmp_path / "sweep", [_record(0, 70.0), bad])
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1 and "Traceback" not in err
    assert not (folder / "table.md").exists()


def test_report_of_an_unfinished_sweep_says_so_and_exits_3(tmp_path, capsys):
    folder = _sweep_folder(tmp_path / "sweep", [_record(0, 70.0)], seeds=(0, 1, 2))
    assert main(["report", str(folder)]) == INCOMPLETE == 3
    captured = capsys.readouterr()
    assert ("eqpdenet: warning: the sweep is incomplete: 2 of 3 runs have no result "
            "(fcnn-h16-seed1, fcnn-h16-seed2)") in captured.err
    assert (folder / "table.md").read_text().startswith("**Incomplete:** the sweep is incomplete")
    complete = _sweep_folder(tmp_path / "done", [_record(0, 70.0), _record(1, 74.0)])
    assert main(["report", str(complete)]) == 0
    assert "incomplete" not in capsys.readouterr().err
    assert "Incomplete" not in (complete / "table.md").read_text()


# ----------------------------------------------------------------------------- output folders


@pytest.fixture
def fake_training(monkeypatch):
    """train without data or training: a checkpoint of the configured model, tagged by seed."""
    def run(config, data, progress=True, checkpoint=None):
        record = {"model": config.model.kind, "hidden": config.model.hidden,
                  "seed": config.train.seed, "status": "ok", "train_seconds": 0.0,
                  "eval_seconds": 0.0, "params": 1, "accuracy": {"test": 50.0}}
        training.save_checkpoint(checkpoint, build_model(config.model), config)
        return record

    monkeypatch.setattr(training, "prepare_data", lambda *args, **kwargs: {})
    monkeypatch.setattr(training, "run_experiment", run)


def _train(out, *extra) -> int:
    return main(["train", "--out", str(out), "--no-progress", "--model", "fcnn", "--hidden", "4",
                 *extra])


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_folder_of_the_users_files_is_never_replaced_whatever_their_names(
        tmp_path, fake_training, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, text in (("model.pt", "my model"), ("config.toml", "my = 1"),
                       ("result.json", "{}")):
        (mine / name).write_text(text)
    assert _train(mine) == 2
    assert "holds files that eqpdenet did not write as a run (config.toml, model.pt, " \
           "result.json; no .eqpdenet-folder marker)" in _one_error(capsys)
    assert (mine / "model.pt").read_text() == "my model"
    for command in (["reproduce", "--set", "hidden_sizes=[4]"], ["benchmark", "--models", "fcnn"],
                    ["study"], ["equivariance", "--quick"]):
        assert main([command[0], "--out", str(mine), *command[1:]]) == 2
        assert "eqpdenet did not write" in _one_error(capsys)
        assert (mine / "config.toml").read_text() == "my = 1"
    assert sorted(p.name for p in mine.iterdir()) == ["config.toml", "model.pt", "result.json"]


def test_a_run_folder_is_replaced_by_the_next_run_and_keeps_its_marker(tmp_path, fake_training):
    out = tmp_path / "run"
    assert _train(out) == 0 and folder_kind(out) == "train"
    assert _train(out, "--seed", "1") == 0
    _, config, _ = load_checkpoint(out / "model.pt")
    assert config.train.seed == 1 and folder_kind(out) == "train"
    (out / "notes.txt").write_text("added by the user")
    assert _train(out) == 2  # the user's file would go with the folder
    assert (out / "notes.txt").exists()


def test_a_run_folder_behind_a_symbolic_link_is_replaced_and_the_link_kept(tmp_path,
                                                                             fake_training):
    real, link = tmp_path / "real", tmp_path / "link"
    assert _train(real) == 0
    link.symlink_to(real, target_is_directory=True)
    assert _train(link, "--seed", "1") == 0
    assert link.is_symlink() and link.resolve() == real.resolve()
    _, config, _ = load_checkpoint(link / "model.pt")
    assert config.train.seed == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no staging left
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "later", target_is_directory=True)
    assert _train(dangling) == 0 and dangling.is_symlink() and (tmp_path / "later").is_dir()


def test_an_empty_out_or_the_current_folder_is_never_replaced(tmp_path, fake_training, capsys,
                                                               monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        _train("")
    assert exit_.value.code == 2
    assert "argument --out: '' is not a path (it is empty)" in capsys.readouterr().err
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", "..", str(here)):
        assert _train(out) == 2
        assert "is the current folder or holds it: a run replaces its whole folder" \
            in _one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_committed_result_folders_are_never_a_default_output(capsys):
    """The equivariance tables in docs/ are written only when asked for by --out."""
    args = build_parser().parse_args(["equivariance", "--quick"])
    assert args.out is None  # the command then writes runs/equivariance-quick
    root = Path(__file__).resolve().parents[2]
    assert folder_kind(root / "docs" / "equivariance") == "equivariance"
    assert folder_kind(root / "docs" / "interpretability") == "describe"


@pytest.mark.parametrize("command", [
    lambda tmp, ckpt: ["evaluate", ckpt, "--json", f"{tmp}/file.txt/summary.json"],
    lambda tmp, ckpt: ["figure", "diagram", "--out", f"{tmp}/file.txt/figure.png"],
    lambda tmp, ckpt: ["train", "--out", f"{tmp}/file.txt/run"],
    lambda tmp, ckpt: ["equivariance", "--quick", "--out", f"{tmp}/file.txt/eq"],
])
def test_a_file_in_the_way_of_an_output_is_named_before_any_work(tmp_path, capsys, command,
                                                                   monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(training, "prepare_data", forbidden)
    monkeypatch.setattr("eqpdenet.app.cli._load_digits", forbidden)
    (tmp_path / "file.txt").write_text("a file")
    _nan_free_checkpoint = tmp_path / "model.pt"
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4"])
    save_checkpoint(_nan_free_checkpoint, build_model(config.model), config)
    assert main(command(tmp_path, str(_nan_free_checkpoint))) == 2
    line = _one_error(capsys)
    assert f"{tmp_path}/file.txt is a file, not a folder" in line and "File exists" not in line


def test_temporary_files_of_killed_writers_go_with_the_lock(tmp_path):
    """A writer killed between writing and renaming (a stopped worker's checkpoint) leaves
    .<name>.<random>.eqpdenet.tmp: the lock's holder removes them when it takes the lock and
    when it lets it go; anything else stays."""
    from eqpdenet.app.files import atomic_write
    from eqpdenet.app.locks import hold

    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".results.jsonl.k2j4x9.eqpdenet.tmp",
             tmp_path / "checkpoints" / ".fcnn-h8-seed0.pt.ab12cd.eqpdenet.tmp"]
    kept = [tmp_path / ".notes.tmp", tmp_path / "mine.eqpdenet.tmp"]
    for path in stale + kept:
        path.write_text("x")
    with hold(tmp_path, "test"):
        assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
        atomic_write(tmp_path / "runs" / "a.json", b"{}")
        left = tmp_path / "runs" / ".b.json.zz9911.eqpdenet.tmp"  # a worker killed mid-write
        left.write_text("half")
    assert not left.exists() and (tmp_path / "runs" / "a.json").exists()
    assert all(p.exists() for p in kept)


# ----------------------------------------------------------------------------- bounds and waits


def test_a_ray_address_where_no_head_answers_is_refused_in_seconds():
    import socket

    from eqpdenet.app.distributed import check_address

    with socket.socket() as closed:  # a port that was free a moment ago: nothing listens
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"--address 127.0.0.1:{port}: no Ray cluster there "
                                          r"\(connection refused"):
        check_address(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"the host 'no-such-host.invalid' is unknown"):
        check_address("ray://no-such-host.invalid:10001")
    with pytest.raises(ConfigError, match=r"expected HOST:PORT"):
        check_address("head:port")
    with socket.socket() as listening:  # accepts, never greets: no Ray head (a later probe's
        listening.bind(("127.0.0.1", 0))  # web server on the port hung ray.init for ever)
        listening.listen()
        with pytest.raises(ConfigError, match="does not answer as a Ray head does"):
            check_address(f"127.0.0.1:{listening.getsockname()[1]}", timeout=2)
    check_address(None), check_address("local")


@pytest.mark.parametrize(("argv", "message"), [
    (["symbolic", "--channels", "9"], r"--channels: 9 channels: at most 4"),
    (["train", "--out", "{tmp}/run", "--epochs", "1000000000000"],
     r"train.epochs: 1,000,000,000,000 is more than the bound of 100,000 epochs \(at one second "
     r"an epoch, 31,688 years\)"),
    (["train", "--out", "{tmp}/run", "--set", "model.hidden=100000000"],
     r"training would need about 142 PiB of memory \([0-9.]+ MiB for the states the Euler steps "
     r"keep, 142 PiB for 10,000,079,600,000,041 parameters with their gradients and optimiser "
     r"state, [0-9.]+ MiB for the whole data set in float32, whatever data.train_subset\), "
     r"more than the .* available on cpu: make the model smaller \(model.hidden = "
     r"100000000"),
    (["train", "--out", "{tmp}/run", "--model", "fcnn", "--set", "model.hidden=100000000"],
     r"for 10,000,079,600,000,010 parameters"),
])
def test_work_without_bound_is_refused_before_it_starts(tmp_path, capsys, argv, message,
                                                         monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("data were loaded before the problem was found")

    monkeypatch.setattr(training, "prepare_data", forbidden)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert re.search(message, _one_error(capsys))


def test_counts_that_multiply_work_are_bounded_by_the_parser(capsys):
    for argv, message in ((["evaluate", "m.pt", "--instances", "2000"],
                           "'2000' is not a number of instances from 1 to 1000"),
                          (["describe", "m.pt", "--frames", "1000000"],
                           "'1000000' is not a number of frames from 1 to 64"),
                          (["benchmark", "--jobs", "0"], "'0' is not a positive integer")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err


def test_symbolic_prints_each_row_as_it_is_found():
    from eqpdenet.app.symbolic_table import symbolic_table

    rows = []
    table, results = symbolic_table(["se2"], on_row=rows.append)
    assert rows[0].startswith("| group | order") and len(rows) == 1 + len(results)
    assert "\n".join(rows) == table


def test_a_failed_allocation_is_named_not_an_unexpected_error():
    error = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                         "can't allocate memory: you tried to allocate 313600000000 bytes. "
                         "Error code 12 (Cannot allocate memory)")
    text, status = describe_error(error)
    assert status == 2 and text.startswith("out of memory (tried to allocate 292 GiB); lower")
    assert describe_error(RuntimeError("something else"))[1] == 1


# ----------------------------------------------------------------------------- progress in logs


def test_progress_in_a_log_is_one_plain_line_per_item():
    import io

    from eqpdenet.app.progress import LineProgress, progress

    log = io.StringIO()
    items = LineProgress(range(3), desc="train FCNN seed=0", unit="epoch", stream=log)
    for item in items:
        items.set_postfix({"loss": round(1.0 / (item + 1), 4)})
    lines = log.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "train FCNN seed=0: epoch 1/3", "train FCNN seed=0: epoch 2/3", "train FCNN seed=0: epoch 3/3"]
    assert "left" in lines[0] and "left" not in lines[2] and lines[1].endswith("(loss 0.5)")
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert progress(range(2), enabled=False) == range(2)


def test_train_into_a_log_writes_a_line_per_epoch_without_escapes(tmp_path, capsys):
    path = _npz(tmp_path / "digits.npz", n_train=40, n_test=10)
    assert main(["train", "--out", str(tmp_path / "run"), "--dataset", str(path), "--model",
                 "fcnn", "--hidden", "4", "--epochs", "3"]) == 0
    err = capsys.readouterr().err  # not a terminal: no bar
    epochs = [line for line in err.splitlines() if line.startswith("train FCNN seed=0: epoch ")]
    assert len(epochs) == 3 and "\r" not in err and "\x1b" not in err
    # then the evaluation: a line per scenario, the same accuracies as all scenarios at once
    steps = [line.split(",")[0] for line in err.splitlines() if line.startswith("evaluate ")]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    count = len(result["accuracy"])
    assert steps == [f"evaluate FCNN seed=0: step {k}/{count}" for k in range(1, count + 1)]
    model, config, _ = load_checkpoint(tmp_path / "run" / "model.pt")
    digits = prepare_data(config.data)["test"]
    assert result["accuracy"] == evaluate_scenarios(model, digits, list(result["accuracy"]), seed=0)


@pytest.mark.parametrize(("assignments", "message"), [
    (["model.hidden=100000000000000000000"], r"model.hidden: must be below 2\*\*63"),
    (["model.layer.rhs='polynomial'", "model.layer.degree=50"],
     r"layer.degree: degree 50 in 5 invariants is 3,478,760 terms, more than the bound of 10,000"),
    ([f"model.layer.invariants={['se2'] * 2000}"], r"2,000 PDEs, more than the bound of 1024"),
    (["model.kind='invariant_pde'", "model.invariant_pde.blocks=[100000, 1, 1]"],
     r"100,002 blocks in 3 stages, more than the bound of 1,000"),
    (["model.kind='cnn'", "model.cnn.layers=100000"], r"cnn.layers: must be <= 1,000"),
    (["model.kind='gcnn'", "model.gcnn.group_order=100000"], r"gcnn.group_order: must be <= 64"),
    # e2cnn refused C_1 with a raw ValueError (probe round 6)
    (["model.kind='gcnn'", "model.gcnn.group_order=1"], r"gcnn.group_order: must be >= 2, got 1"),
])
def test_model_sizes_that_would_hang_the_build_are_refused_where_they_are_read(assignments,
                                                                              message):
    """Each of these took minutes or more to build (or overflowed inside PyTorch) before."""
    with pytest.raises(ConfigError, match=message):
        apply_overrides(ExperimentConfig(), assignments)


def test_an_explicit_flow_is_bounded_like_a_configured_one():
    from eqpdenet.pde import EulerFlow, EulerStep, InvariantRHS
    from eqpdenet.pde.integrators import MAX_STEPS

    with pytest.raises(ConfigError, match=r"steps: must be <= 100,000, got 100000000"):
        EulerFlow(EulerStep(InvariantRHS("se2")), 10**8)
    assert EulerFlow(EulerStep(InvariantRHS("se2")), MAX_STEPS).steps == MAX_STEPS


def test_the_memory_check_sees_the_data_sets_image_size(tmp_path, monkeypatch):
    """The preflight runs before the data are loaded, at the configured size; training checks
    again at the data's size (a data set of large images)."""
    from eqpdenet.app import preflight

    monkeypatch.setattr(preflight, "available_memory", lambda device: 50 * 2**20)  # 50 MiB
    config = apply_overrides(ExperimentConfig(), ["model.hidden=8", "train.epochs=1"])
    with pytest.raises(ConfigError, match=r"training would need about .* for the states the "
                                          r"Euler steps keep"):
        train_model(config, _tiny_data(4, size=256, classes=2), progress=False)
    train_model(config, _tiny_data(4, size=8, classes=2), progress=False)  # small: it fits


def test_report_of_a_file_says_it_is_not_a_folder(tmp_path, capsys):
    (tmp_path / "results.txt").write_text("x")
    assert main(["report", str(tmp_path / "results.txt")]) == 2
    assert "results.txt: a file, not a results folder" in _one_error(capsys)
