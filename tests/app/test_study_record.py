"""What a study records of its configuration (``study.json``): a study of another configuration is
refused in a folder holding one, naming the fields, before anything is written (it replaced
study.md and chosen.toml silently), or with ``--rerun-changed`` sets the old outcome aside; the
committed folders (from before the record) are judged by their study.md and still resume; the
default folder is not a committed result; ``models`` is kept by every stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eqpdenet.app import study, sweeps
from eqpdenet.app.cli import build_parser, main
from eqpdenet.app.config import apply_overrides
from eqpdenet.app.study import REFINE_STAGES, STAGES, Stage, run_study, study_base
from eqpdenet.errors import ConfigError
from study_helpers import fake_study_reproduce

RESULTS = Path(__file__).resolve().parents[2] / "results"


def _quiet(*args):
    pass


SHARED = Stage("weight-decay", "shared", "?", {"none": ["base.train.weight_decay=0.0"],
                                                "wd": ["base.train.weight_decay=0.05"]})
LAYER = Stage("pde-lr", "layer", "?", {"x1": ["base.train.pde_lr_scale=1.0"],
                                       "x0.1": ["base.train.pde_lr_scale=0.1"]})


def _outcome(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("study.md", "chosen.toml", "chosen.json")}


def test_a_study_of_another_configuration_is_refused_naming_the_fields(tmp_path, monkeypatch):
    trained = fake_study_reproduce(monkeypatch)
    out = tmp_path / "s"
    run_study(out, base=study_base(hidden_sizes=(16,), seeds=(0,)), stages=[SHARED], echo=_quiet)
    before = _outcome(out)
    record = json.loads((out / "study.json").read_text())
    assert record["start"]["seeds"] == [0] and record["stages"][0]["name"] == "weight-decay"
    trained.clear()
    other = study_base(hidden_sizes=(16,), seeds=(1,), epochs=7)
    with pytest.raises(ConfigError) as caught:
        run_study(out, base=other, stages=[SHARED], echo=_quiet)
    message = str(caught.value)
    assert message.startswith(f"{out} holds a study made with another configuration than the "
                              f"one now given (base.train.epochs: 20 recorded, 7 now; seeds: [0] "
                              f"recorded, [1] now): this study would replace its study.md, "
                              f"chosen.toml and chosen.json; run again with --rerun-changed")
    assert trained == [] and _outcome(out) == before
    with pytest.raises(ConfigError, match=r"\(stages: weight-decay recorded, pde-lr now\)"):
        run_study(out, base=study_base(hidden_sizes=(16,), seeds=(0,)), stages=[LAYER],
                  echo=_quiet)
    with pytest.raises(ConfigError, match=r"\(margin: 0.25 recorded, 1.0 now\)"):
        run_study(out, base=study_base(hidden_sizes=(16,), seeds=(0,)), stages=[SHARED],
                  margin=1.0, echo=_quiet)
    changed = Stage("weight-decay", "shared", "?", {"none": ["base.train.weight_decay=0.0"],
                                                     "wd": ["base.train.weight_decay=0.1"]})
    with pytest.raises(ConfigError, match=r"\(stage weight-decay: its kind or candidates changed\)"):
        run_study(out, base=study_base(hidden_sizes=(16,), seeds=(0,)), stages=[changed],
                  echo=_quiet)
    assert trained == [] and _outcome(out) == before
    # the same configuration resumes, nothing trained again
    run_study(out, base=study_base(hidden_sizes=(16,), seeds=(0,)), stages=[SHARED], echo=_quiet)
    assert trained == [] and _outcome(out) == before


def test_rerun_changed_sets_the_old_study_aside_and_reuses_shared_runs(tmp_path, monkeypatch):
    trained = fake_study_reproduce(monkeypatch)
    out = tmp_path / "s"
    first = study_base(hidden_sizes=(16,), seeds=(0,))
    run_study(out, base=first, stages=[SHARED], echo=_quiet)
    before = _outcome(out)
    trained.clear()
    lines = []
    second = study_base(hidden_sizes=(16,), seeds=(0, 1))
    run_study(out, base=second, stages=[SHARED], echo=lines.append, rerun_changed=True)
    [aside] = (out / "superseded").iterdir()
    assert {path.name: path.read_bytes() for path in aside.iterdir()
            if path.name != "study.json"} == before
    assert json.loads((aside / "study.json").read_text())["start"]["seeds"] == [0]
    assert json.loads((out / "study.json").read_text())["start"]["seeds"] == [0, 1]
    assert lines[0] == (f"{out} holds a study made with another configuration than the one now "
                        f"given (seeds: [0] recorded, [0, 1] now): its study.md, chosen.toml and "
                        f"chosen.json set aside in {aside}")
    assert "seeds [0, 1]" in (out / "study.md").read_text()
    # seed 0's runs were made for the first study and serve the second: only seed 1 trained
    assert {seed for *_, seed in trained} == {1}


def _tiny(out: Path) -> list[str]:
    return ["study", "--out", str(out), "--hidden", "8", "--seeds", "0", "--epochs", "1",
            "--no-progress", "--set", "base.data.dataset=mnist", "--set",
            "base.data.validation=100", "--set", "base.data.train_subset=200"]


def test_a_committed_study_is_not_replaced_by_another(tmp_path, capsys, no_data):
    """The probe's command: a tiny study pointed at a copy of results/study replaced its
    study.md and chosen.toml (exit 0). The folder predates study.json: its study.md says what it
    was run with."""
    out = tmp_path / "study"
    shutil.copytree(RESULTS / "study", out, ignore=shutil.ignore_patterns("checkpoints"))
    assert main(_tiny(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"eqpdenet: error: {out} holds a study made with another "
                             f"configuration than the one now given (base.data.dataset: "
                             f"'rotmnist' recorded, 'mnist' now; base.data.train_subset: 0 "
                             f"recorded, 200 now; base.data.validation: 2000 recorded, 100 now; "
                             f"base.train.epochs: 20 recorded, 1 now; hidden_sizes: [256, 32] "
                             f"recorded, [8] now; ... (6 in all))")
    assert _outcome(out) == _outcome(RESULTS / "study")
    assert not (out / "study.json").exists()
    # the second round's folder, with the first round's stages: its stages differ
    refine = tmp_path / "refine"
    shutil.copytree(RESULTS / "study-refine", refine, ignore=shutil.ignore_patterns("checkpoints"))
    assert main(["study", "--out", str(refine), "--config", str(RESULTS / "study" / "chosen.toml"),
                 "--hidden", "256", "32", "--seeds", "0", "1", "--epochs", "20",
                 "--no-progress"]) == 2
    assert ("(stages: init-after-standardize, pde-lr-after-standardize, horizon recorded, epochs, "
            "pde-lr, init, standardize, weight-decay, ratio-eps, stencil now)"
            in capsys.readouterr().err)
    assert _outcome(refine) == _outcome(RESULTS / "study-refine")


def test_a_committed_study_resumed_records_its_configuration(tmp_path, capsys, monkeypatch):
    """Its recorded command finds every run done and then writes study.json, by which the tiny
    study is refused too."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a run of the committed study would be trained again")

    monkeypatch.setattr(sweeps, "run_experiment", forbidden)
    out = tmp_path / "study"
    shutil.copytree(RESULTS / "study", out, ignore=shutil.ignore_patterns("checkpoints"))
    assert main(["study", "--out", str(out), "--hidden", "256", "32", "--seeds", "0", "1",
                 "--epochs", "20", "--no-progress"]) == 0
    record = json.loads((out / "study.json").read_text())
    assert record["start_fingerprint"] == "b6459b8a807b"
    assert [stage["name"] for stage in record["stages"]] == [stage.name for stage in STAGES]
    capsys.readouterr()
    kept = _outcome(out)
    monkeypatch.setattr(sweeps, "prepare_data", forbidden)
    assert main(_tiny(out)) == 2
    assert "hidden_sizes: [256, 32] recorded, [8] now" in capsys.readouterr().err
    assert _outcome(out) == kept


@pytest.mark.parametrize("stages, folder", [([], "runs/study"), (["--stages", "refine"],
                                                                 "runs/study-refine")])
def test_the_default_folder_is_not_a_committed_result(stages, folder, tmp_path, monkeypatch,
                                                      capsys):
    """``study`` with no --out wrote into results/study, the committed study."""
    assert build_parser().parse_args(["study"]).out is None
    seen = {}

    def fake(out, **kwargs):
        seen["out"], seen["stages"] = out, kwargs["stages"]
        return study_base()

    monkeypatch.setattr(study, "run_study", fake)
    monkeypatch.chdir(tmp_path)
    assert main(["study", "--no-progress", *stages]) == 0
    assert seen["out"] == tmp_path.resolve() / folder
    assert seen["stages"] is (REFINE_STAGES if stages else STAGES)


def test_models_are_kept_by_every_stage(tmp_path, monkeypatch):
    """``models = ['eqpdenet']`` held for the first stage only: the next incumbent got both
    models back, and FCNN was trained from the second stage on."""
    trained = fake_study_reproduce(monkeypatch)
    base = apply_overrides(study_base(hidden_sizes=(16,), seeds=(0,)), ["models=['eqpdenet']"])
    chosen = run_study(tmp_path / "s", base=base, stages=[LAYER, SHARED, LAYER], echo=_quiet)
    assert trained and {model for _, model, *_ in trained} == {"eqpdenet"}
    assert chosen.models == ["eqpdenet"]
    text = (tmp_path / "s" / "study.md").read_text()
    assert "`shared` stages score EqPdeNet alone (models = ['eqpdenet'])" in text


def test_models_without_eqpdenet_are_refused_before_any_work(tmp_path, capsys, no_data):
    out = tmp_path / "s"
    assert main(["study", "--out", str(out), "--no-progress", "--set", "models=['fcnn']"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "eqpdenet: error: invalid config: models: the study's layer stages choose the PDE layer's "
        "settings by EqPdeNet's validation accuracy, so models must include 'eqpdenet', got "
        "['fcnn'] (EQPDENET_DEBUG=1 shows the traceback)"]
    assert not out.exists()
