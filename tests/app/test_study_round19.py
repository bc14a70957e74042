"""The study's faults an outside probe found (round 19): a candidate that changes the data or
its validation split (scored on other images, and chosen); candidates checked only on the
starting configuration (one refused with an earlier stage's choice failed after that stage
trained); ``report`` on a set-aside summary, on a study stopped before its first stage, and on a
study's ``runs/``; study.md's first paragraph giving the starting epochs as every stage's."""

from __future__ import annotations

import json

import pytest

from eqpdenet.app.cli import main
from eqpdenet.app.config import apply_overrides
from eqpdenet.app.study import STAGES, Stage, _check_candidates, run_study, study_base
from eqpdenet.app.training import fingerprint
from eqpdenet.errors import ConfigError
from study_helpers import fake_study_reproduce


def _quiet(*args):
    pass


def _base(**options):
    return study_base(hidden_sizes=(16,), seeds=(0,), **options)


WHY = ("every candidate is scored on the same validation split, the last data.validation "
       "training images of the same data, so a candidate may change only "
       "base.data.train_subset and base.data.test_subset of base.data")


# ----------------------------------------------------------------------------- F1: the data


@pytest.mark.parametrize("override, changed", [
    ("base.data.validation=10", "base.data.validation = 10 (the incumbent's 2000)"),
    ("base.data={validation=10}", "base.data.validation = 10 (the incumbent's 2000)"),
    ("base.data.dataset='mnist'", "base.data.dataset = 'mnist' (the incumbent's 'rotmnist')"),
    ("base.data.rotmnist_seed=1", "base.data.rotmnist_seed = 1 (the incumbent's 0)"),
    ("base.data.source='official'", "base.data.source = 'official' (the incumbent's 'auto')"),
    ("base.data.rotation_centre='mass'",
     "base.data.rotation_centre = 'mass' (the incumbent's 'frame')"),
])
def test_a_candidate_changing_the_data_or_its_validation_split_is_refused(override, changed):
    """The probe's v10 (validation 10 of 60) was trained and chosen, scored on other images."""
    with pytest.raises(ConfigError) as caught:
        _check_candidates(_base(), [Stage("split", "shared", "?", {"other": [override]})])
    assert str(caught.value) == f"invalid config: stage split, candidate other: {changed}: {WHY}"


def test_a_candidate_rotating_the_data_is_refused():
    base = apply_overrides(_base(), ["base.data.dataset='mnist'"])
    with pytest.raises(ConfigError) as caught:
        _check_candidates(base, [Stage("rot", "shared", "?", {"rot": ["base.data.rotated=true"]})])
    assert str(caught.value) == ("invalid config: stage rot, candidate rot: base.data.rotated = "
                                 f"True (the incumbent's False): {WHY}")


def test_a_candidate_may_change_the_training_and_test_subsets():
    """Neither changes the validation images (the last 2,000 of the training split, whatever
    the first images kept for training); the test set is never scored in a study."""
    checked = _check_candidates(_base(), [Stage("n", "shared", "?", {
        "less": ["base.data.train_subset=5000"], "test": ["base.data.test_subset=100"],
        "same": ["base.data.validation=2000"]})])
    assert [(label, c.base.data.train_subset, c.base.data.test_subset, c.base.data.validation)
            for label, c in checked] == [("the starting configuration", 0, 0, 2000),
                                         ("stage n, candidate less", 5000, 0, 2000),
                                         ("stage n, candidate test", 0, 100, 2000),
                                         ("stage n, candidate same", 0, 0, 2000)]


def test_run_study_refuses_it_before_any_work(tmp_path, monkeypatch):
    trained = fake_study_reproduce(monkeypatch)
    out = tmp_path / "s"
    stages = [Stage("lr", "shared", "?", {"lr": ["base.train.lr=0.01"]}),
              Stage("split", "shared", "?", {"v10": ["base.data.validation=10"]})]
    with pytest.raises(ConfigError) as caught:
        run_study(out, base=_base(), stages=stages, echo=_quiet)
    assert str(caught.value) == (f"invalid config: stage split, candidate v10: "
                                 f"base.data.validation = 10 (the incumbent's 2000): {WHY}")
    assert trained == [] and not out.exists()


# ----------------------------------------------------------------------------- F2: each stage


def _by_lr(run):
    return 70.0 if run.train.lr == 0.01 else 60.0


def _log_training_and_preflights(monkeypatch) -> list[tuple]:
    """The study's trainings and preflights, in order, each with its (lr, weight decay)."""
    from eqpdenet.app import study

    events, reproduce, preflight = [], study.reproduce, study.preflight

    def logged_reproduce(config, folder, **kwargs):
        events.append(("train", config.base.train.lr, config.base.train.weight_decay))
        reproduce(config, folder, **kwargs)

    def logged_preflight(runs, *args, **kwargs):
        run = next(iter(runs.values()))
        events.append(("preflight", run.train.lr, run.train.weight_decay))
        return preflight(runs, *args, **kwargs)

    monkeypatch.setattr(study, "reproduce", logged_reproduce)
    monkeypatch.setattr(study, "preflight", logged_preflight)
    return events


def test_a_candidate_refused_with_an_earlier_stages_choice_is_refused_before_its_stage_trains(
        tmp_path, monkeypatch):
    """Weight decay 150 is valid at the start's lr 1e-3 (1e-3 * 150 < 1) and not at the 0.01
    the lr stage chooses: it was refused after the wd stage had trained its incumbent."""

    trained = fake_study_reproduce(monkeypatch, _by_lr)
    events = _log_training_and_preflights(monkeypatch)
    out = tmp_path / "s"
    stages = [Stage("lr", "shared", "?", {"lr-1e-3": ["base.train.lr=0.001"],
                                          "lr-0.01": ["base.train.lr=0.01"]}),
              Stage("wd", "shared", "?", {"wd-0": ["base.train.weight_decay=0.0"],
                                          "wd-150": ["base.train.weight_decay=150"]})]
    with pytest.raises(ConfigError) as caught:
        run_study(out, base=_base(), stages=stages, echo=_quiet)
    message = str(caught.value)
    # (the middle is TrainConfig's own words on the decay, asserted by its tests)
    assert message.startswith("invalid config: stage wd, candidate wd-150: "
                              "base.train.weight_decay: 150 with train.lr = 0.01 gives "
                              "lr * weight_decay = 1.5")
    assert message.endswith(
        " (checked before the stage trained anything, on the configuration the stages before "
        f"it chose: lr = lr-0.01; those stages' runs and study.md stay in {out}: correct the "
        f"stage and run the study again with --rerun-changed, which sets their summary aside "
        f"and reuses the runs)")
    assert message.count("(checked before") == 1
    # the start and both candidates preflighted before any work; nothing of the wd stage trained
    assert events == [("preflight", 0.001, 0.0), ("preflight", 0.01, 0.0),
                      ("preflight", 0.001, 150.0), ("train", 0.001, 0.0), ("train", 0.01, 0.0)]
    assert len(trained) == 4  # the lr stage's two configurations, both models


def test_each_later_stage_preflights_its_candidates_on_the_incumbent_before_training(
        tmp_path, monkeypatch):
    """One preflight per stage whose incumbent moved, of the candidates applied to it."""

    fake_study_reproduce(monkeypatch, _by_lr)
    events = _log_training_and_preflights(monkeypatch)
    stages = [Stage("lr", "shared", "?", {"lr-0.01": ["base.train.lr=0.01"]}),
              Stage("wd", "shared", "?", {"wd-0.05": ["base.train.weight_decay=0.05"]})]
    chosen = run_study(tmp_path / "s", base=_base(), stages=stages, echo=_quiet)
    assert chosen.base.train.lr == 0.01 and chosen.base.train.weight_decay == 0.0
    assert events == [("preflight", 0.001, 0.0), ("preflight", 0.01, 0.0),
                      ("preflight", 0.001, 0.05),
                      ("train", 0.001, 0.0), ("train", 0.01, 0.0),
                      ("preflight", 0.01, 0.05),  # the wd stage's, before it trains
                      ("train", 0.01, 0.0), ("train", 0.01, 0.05)]


def test_a_candidate_setting_what_the_incumbents_data_gives_is_refused_before_its_stage(
        tmp_path, monkeypatch):
    """A sibling: the checks of a candidate's fields ran on the starting configuration only.
    input_mean has an effect at the start ('auto' on ROTMNIST: the fixed mean) and none once an
    earlier stage chose 'train' (the training split's own): its runs were the incumbent's,
    trained again and compared with themselves."""
    trained = fake_study_reproduce(
        monkeypatch, lambda run: 70.0 if run.model.standardize == "train" else 60.0)
    out = tmp_path / "s"
    stages = [Stage("std", "shared", "?", {"own": ["base.model.standardize='train'"]}),
              Stage("mean", "shared", "?", {"half": ["base.model.input_mean=0.5"]})]
    with pytest.raises(ConfigError) as caught:
        run_study(out, base=_base(), stages=stages, echo=_quiet)
    assert str(caught.value) == (
        "invalid config: stage mean, candidate half: base.model.input_mean=0.5 has no effect on "
        "rotmnist: model.standardize computes them from the training split there ('train', or "
        "'auto' on a data set outside MNIST's family), so the candidate would compare a "
        "configuration with itself (checked before the stage trained anything, on the "
        "configuration the stages before it chose: std = own; those stages' runs and study.md "
        f"stay in {out}: correct the stage and run the study again with --rerun-changed, which "
        "sets their summary aside and reuses the runs)")
    assert len(trained) == 4  # the std stage's two configurations, both models


# ----------------------------------------------------------------------------- F3: the epochs


def test_the_first_paragraph_gives_the_starting_epochs_where_a_stage_may_change_them(
        tmp_path, monkeypatch):
    """Run with 1 epoch, the epochs stage chose 10: the paragraph said '1 epoch'."""
    fake_study_reproduce(monkeypatch, lambda run: 50.0 + run.train.epochs)
    run_study(tmp_path / "a", base=_base(epochs=1), stages=[STAGES[0]], echo=_quiet)
    header = (tmp_path / "a" / "study.md").read_text().splitlines()[2]
    assert ("over seeds [0] and hidden sizes [16], starting from 1 epoch (the epochs stage may "
            "change them); `shared` stages") in header
    stages = [Stage("lr", "shared", "?", {"lr-0.01": ["base.train.lr=0.01"]})]
    run_study(tmp_path / "b", base=_base(epochs=1), stages=stages, echo=_quiet)
    header = (tmp_path / "b" / "study.md").read_text().splitlines()[2]
    assert "over seeds [0] and hidden sizes [16], 1 epoch; `shared` stages" in header


# ----------------------------------------------------------------------------- F4: report


def _report_error(folder, capsys) -> str:
    assert main(["report", str(folder)]) == 2
    return capsys.readouterr().err.strip().removesuffix(" (EQPDENET_DEBUG=1 shows the traceback)")


def test_report_of_a_set_aside_summary_names_the_studys_runs(tmp_path, monkeypatch, capsys):
    """It pointed at superseded/<date>/runs/<fingerprint>, which does not exist, and told to
    rerun 'the study's command' there."""
    fake_study_reproduce(monkeypatch)
    out = tmp_path / "s"
    stages = [Stage("lr", "shared", "?", {"lr-0.01": ["base.train.lr=0.01"]})]
    first = run_study(out, base=_base(), stages=stages, echo=_quiet)
    run_study(out, base=study_base(hidden_sizes=(16,), seeds=(1,)), stages=stages, echo=_quiet,
              rerun_changed=True)
    (aside,) = (out / "superseded").iterdir()
    assert _report_error(aside, capsys) == (
        f"eqpdenet: error: {aside} holds the summary of a study that --rerun-changed set aside "
        f"(chosen.json, chosen.toml, study.json, study.md), not its runs: its report is "
        f"{aside / 'study.md'}; its runs are in {out / 'runs'}, among those of the study that "
        f"replaced it; report tables one configuration's runs: give its folder, the chosen "
        f"configuration's: eqpdenet report {out / 'runs' / fingerprint(first.base)}")


def test_report_of_a_study_stopped_before_its_first_stage_names_no_study_md(tmp_path, capsys):
    out = tmp_path / "s"
    (out / "runs" / "0123456789ab").mkdir(parents=True)
    (out / "study.json").write_text(json.dumps({}))
    assert _report_error(out, capsys) == (
        f"eqpdenet: error: {out} is the folder of a study: its report, study.md, is written when "
        f"its first stage ends, and it has none yet (run the study's command again to resume "
        f"it: the runs done are reused); report tables one configuration's runs: give its "
        f"folder, none has finished a run yet (in {out / 'runs'})")
    (out / "runs" / "0123456789ab" / "results.jsonl").write_text("")
    assert _report_error(out, capsys).endswith(
        f"give its folder, one of {out / 'runs' / '0123456789ab'}")


def test_report_of_a_studys_runs_folder_names_a_configurations(tmp_path, monkeypatch, capsys):
    """It said only 'no results in .../runs/results.jsonl'."""
    fake_study_reproduce(monkeypatch)
    out = tmp_path / "s"
    chosen = run_study(out, base=_base(), stages=[Stage("lr", "shared", "?", {})], echo=_quiet)
    assert _report_error(out / "runs", capsys) == (
        f"eqpdenet: error: {out / 'runs'} holds the runs of a study, one folder per "
        f"configuration (runs/<fingerprint>), and no results of its own; report tables one "
        f"configuration's runs: give its folder, the chosen configuration's: eqpdenet report "
        f"{out / 'runs' / fingerprint(chosen.base)}")
