"""The study's stages and margin, checked before anything is written (round 15): candidates
named like the incumbent's row or like each other, overrides outside ``base.``, kinds other than
``shared`` and ``layer``, a margin that is not a finite number >= 0, overrides the configuration
refuses (named by stage and candidate); braces in an override; and the margin and tie rules
applied to exact scores, not to float means with their rounding."""

from __future__ import annotations

import pytest

from eqpdenet.app.config import apply_overrides
from eqpdenet.app.study import Stage, _choose, _score, run_study, study_base
from eqpdenet.errors import ConfigError
from study_helpers import fake_study_reproduce

N = 2000  # validation images, as in the study's protocol


def _accuracy(correct: int) -> float:
    """A validation accuracy as training computes it (100.0 * accuracy(), correct / n)."""
    return 100.0 * float(correct / N)


def _quiet(*args):
    pass


def _base(**options):
    return study_base(hidden_sizes=(16,), seeds=(0,), **options)


def _refused(tmp_path, stages, message, *, base=None, margin=0.25):
    """run_study refuses with exactly ``message`` and writes nothing."""
    out = tmp_path / "s"
    with pytest.raises(ConfigError) as caught:
        run_study(out, base=base or _base(), stages=stages, margin=margin, echo=_quiet)
    assert str(caught.value) == message
    assert not out.exists()


# ----------------------------------------------------------------------------- F1: names


def test_a_candidate_named_incumbent_is_refused(tmp_path, monkeypatch):
    """It replaced the incumbent's row and was 'chosen' at a margin no candidate could clear."""
    trained = fake_study_reproduce(monkeypatch)
    _refused(tmp_path, [Stage("lr", "shared", "?", {"incumbent": ["base.train.lr=0.01"]})],
             "invalid config: stage lr, candidate incumbent: the name 'incumbent' labels the "
             "incumbent's row (where no candidate holds its values): name the candidate "
             "otherwise", margin=100.0)
    assert trained == []


def test_two_candidates_of_one_name_with_other_values_are_refused(tmp_path, monkeypatch):
    """With 1 epoch, '{epochs}-epochs' (the incumbent) and '1-epochs' (lr 0.01) were one row:
    the candidate's, labelled as the incumbent, chosen without being compared."""
    fake_study_reproduce(monkeypatch)
    stage = Stage("ep", "shared", "?", {"{epochs}-epochs": ["base.train.epochs={epochs}"],
                                        "1-epochs": ["base.train.epochs=1", "base.train.lr=0.01"]})
    _refused(tmp_path, [stage], "invalid config: stage ep: candidates {epochs}-epochs and "
             "1-epochs are both named 1-epochs with {epochs} = 1, with other overrides: name "
             "them apart", base=_base(epochs=1), margin=100.0)


def test_names_that_meet_only_after_an_earlier_stage_sets_the_epochs_are_refused_first(
        tmp_path, monkeypatch):
    """From 20 epochs the names differ; after the epochs stage's '10-epochs' they would not: the
    study is refused before its first stage, not in the middle of it."""
    trained = fake_study_reproduce(monkeypatch)
    epochs = Stage("epochs", "shared", "?", {"{epochs}-epochs": ["base.train.epochs={epochs}"],
                                             "10-epochs": ["base.train.epochs=10"]})
    lr = Stage("lr", "shared", "?", {"{epochs}-x": ["base.train.lr=0.01"],
                                     "10-x": ["base.train.lr=0.02"]})
    _refused(tmp_path, [epochs, lr], "invalid config: stage lr: candidates {epochs}-x and 10-x "
             "are both named 10-x with {epochs} = 10, with other overrides: name them apart")
    assert trained == []


# ----------------------------------------------------------------------------- F2: the grid


@pytest.mark.parametrize("override", ["hidden_sizes=[32]", "seeds=[0, 1]",
                                      "models=['eqpdenet']"])
def test_a_candidate_setting_the_grid_is_refused(override, tmp_path, monkeypatch):
    """'h16' = hidden_sizes=[16] had the incumbent's base: it labelled the incumbent's row
    (hidden 8), which was reported as chosen."""
    fake_study_reproduce(monkeypatch)
    _refused(tmp_path, [Stage("grid", "shared", "?", {"c": [override]})],
             f"invalid config: stage grid, candidate c: {override}: a candidate sets fields of "
             f"base only; models, hidden_sizes and seeds are the study's grid, the same for every "
             f"candidate")


# ----------------------------------------------------------------------------- F3: kinds


KIND_WORDS = ("is not one of 'shared' (the training recipe, scored on both models) and 'layer' "
              "(the PDE layer, scored on EqPdeNet)")


@pytest.mark.parametrize("kind", ["bogus", "Layer", "layers"])
def test_a_stage_of_another_kind_is_refused(kind):
    """It was scored as 'shared': FCNN trained and averaged into a layer choice."""
    with pytest.raises(ConfigError) as caught:
        Stage("eps", kind, "?", {"eps-1.0": ["base.model.layer.ratio_eps=1.0"]})
    assert str(caught.value) == f"invalid config: stage eps: kind {kind!r} {KIND_WORDS}"


def test_a_stage_whose_kind_was_changed_afterwards_is_refused_before_any_work(tmp_path,
                                                                               monkeypatch):
    fake_study_reproduce(monkeypatch)
    stage = Stage("eps", "layer", "?", {"eps-1.0": ["base.model.layer.ratio_eps=1.0"]})
    stage.kind = "Layer"
    _refused(tmp_path, [stage], f"invalid config: stage eps: kind 'Layer' {KIND_WORDS}")


# ----------------------------------------------------------------------------- F4: margin


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), -20.0, -1, True, "0.25"])
def test_a_margin_that_is_not_a_finite_number_at_least_zero_is_refused(margin, tmp_path,
                                                                       monkeypatch):
    """NaN wrote invalid JSON into study.json (the same command refused ever after); a negative
    margin chose a candidate that only tied the incumbent."""
    fake_study_reproduce(monkeypatch)
    stage = Stage("lr", "shared", "?", {"lr-1e-2": ["base.train.lr=0.01"]})
    _refused(tmp_path, [stage], f"invalid margin: the points a candidate must beat the "
             f"incumbent by must be a finite number >= 0, got {margin!r}", margin=margin)


# ----------------------------------------------------------------------------- F5: braces


def test_braces_in_an_override_are_the_overrides_own(tmp_path, monkeypatch):
    """str.format read '{max_shift=1.0}' as a field: a raw KeyError; only {epochs} is
    replaced, in names and overrides alike."""
    fake_study_reproduce(monkeypatch, lambda run: 60.0 + 10.0 * run.train.augment.max_shift)
    stage = Stage("aug", "shared", "?", {"{epochs}-shift-1": [
        "base.train.augment={max_shift=1.0}", "base.train.epochs={epochs}"]})
    chosen = run_study(tmp_path / "s", base=_base(), stages=[stage], echo=_quiet)
    assert chosen.base.train.augment.max_shift == 1.0
    text = (tmp_path / "s" / "study.md").read_text()
    assert ("| **20-shift-1** | `base.train.augment={max_shift=1.0}`<br>`base.train.epochs=20` | "
            "70.00 | 70.00 | 70.00 | 2 |") in text


# ----------------------------------------------------------------------------- F7: exact scores


def test_a_candidate_exactly_the_margin_better_is_not_chosen():
    """100.0 * 1596 / 2000 against 100.0 * 1586 / 2000 (FCNN equal): 0.25 points exactly, but
    79.55000000000001 - 79.3 > 0.25 in floats chose it; so did +0.1 points at margin 0.1."""
    for margin, more in ((0.25, 10), (0.1, 4)):  # 1 more correct: 0.05 points, 0.025 on the mean
        for correct in range(1500, 1700):
            incumbent = _score([{"status": "ok", "model": "eqpdenet",
                                 "validation_accuracy": _accuracy(correct)},
                                {"status": "ok", "model": "fcnn",
                                 "validation_accuracy": _accuracy(correct)}], "shared")
            candidate = _score([{"status": "ok", "model": "eqpdenet",
                                 "validation_accuracy": _accuracy(correct + more)},
                                {"status": "ok", "model": "fcnn",
                                 "validation_accuracy": _accuracy(correct)}], "shared")
            scores = {"incumbent": incumbent["score"], "candidate": candidate["score"]}
            assert _choose(scores, "incumbent", margin) == "incumbent", (margin, correct)


def test_a_layer_candidate_exactly_the_margin_better_keeps_the_incumbent(tmp_path, monkeypatch):
    """EqPdeNet 1503 -> 1508 of 2000 correct: 75.14999999999999 -> 75.4, 0.2500000000000142
    apart in floats, 0.25 points exactly. The table still shows the float means."""
    correct = {1.0: 1503, 0.1: 1508}
    fake_study_reproduce(monkeypatch, lambda run: _accuracy(
        correct[run.train.pde_lr_scale] if run.model.kind == "eqpdenet" else 1400))
    stage = Stage("pde-lr", "layer", "?", {"x1": ["base.train.pde_lr_scale=1.0"],
                                           "x0.1": ["base.train.pde_lr_scale=0.1"]})
    chosen = run_study(tmp_path / "s", base=_base(), stages=[stage], echo=_quiet)
    assert chosen.base.train.pde_lr_scale == 1.0
    text = (tmp_path / "s" / "study.md").read_text()
    assert "| **x1** | (incumbent) | 75.15 | 70.00 | 75.15 | 2 |" in text
    assert "| x0.1 | `base.train.pde_lr_scale=0.1` | 75.40 | 70.00 | 75.40 | 2 |" in text


def test_equal_scores_go_to_the_name_that_sorts_first_whatever_the_rounding(tmp_path,
                                                                            monkeypatch):
    """Incumbent EqPdeNet 1500, FCNN 1502 of 2000; 'a-cand' adds 40 to EqPdeNet, 'b-cand' 40 to
    FCNN: the same score, 76.05 exactly, but 76.05 and 76.05000000000001 as float means, and
    'b-cand' was chosen."""
    correct = {("eqpdenet", 0.0): 1500, ("fcnn", 0.0): 1502,
               ("eqpdenet", 0.05): 1540, ("fcnn", 0.05): 1502,
               ("eqpdenet", 0.1): 1500, ("fcnn", 0.1): 1542}
    fake_study_reproduce(monkeypatch, lambda run: _accuracy(
        correct[run.model.kind, run.train.weight_decay]))
    stage = Stage("wd", "shared", "?", {"b-cand": ["base.train.weight_decay=0.1"],
                                        "a-cand": ["base.train.weight_decay=0.05"]})
    chosen = run_study(tmp_path / "s", base=_base(), stages=[stage], echo=_quiet)
    assert chosen.base.train.weight_decay == 0.05
    assert "Chosen: **a-cand**." in (tmp_path / "s" / "study.md").read_text()


# ----------------------------------------------------------------------------- F8: messages


def test_a_refused_override_names_its_stage_and_candidate_not_set(tmp_path, monkeypatch):
    """It read '--set base.train.nonexistent: unknown field ...', naming neither."""
    fake_study_reproduce(monkeypatch)
    out = tmp_path / "s"
    stage = Stage("lr", "shared", "?", {"bad": ["base.train.nonexistent=1"]})
    with pytest.raises(ConfigError) as caught:
        run_study(out, base=_base(), stages=[stage], echo=_quiet)
    assert str(caught.value).startswith("invalid config: stage lr, candidate bad: "
                                        "base.train.nonexistent: unknown field 'nonexistent'; "
                                        "known: [")
    assert "--set" not in str(caught.value) and not out.exists()
    _refused(tmp_path, [Stage("lr", "shared", "?", {"huge": ["base.train.lr=1e31"]})],
             "invalid config: stage lr, candidate huge: base.train.lr: 1e+31 is outside "
             "[1e-30, 1e+30] (float32 steps would round to nothing or overflow)")
    _refused(tmp_path, [Stage("lr", "shared", "?", {"bare": ["lr"]})],
             "invalid config: stage lr, candidate bare: an override is "
             "base.section.field=value, got 'lr'")


def test_the_protocol_says_equal_scores_go_to_the_name_that_sorts_first(tmp_path, monkeypatch):
    fake_study_reproduce(monkeypatch)
    base = apply_overrides(_base(), ["base.train.lr=0.001"])
    run_study(tmp_path / "s", base=base, stages=[Stage("lr", "shared", "?", {})], echo=_quiet)
    header = (tmp_path / "s" / "study.md").read_text().splitlines()[2]
    assert header.endswith("Of the candidates that beat the incumbent by more than 0.25 points "
                           "the best replaces it (equal scores: the name that sorts first).")


def test_a_candidate_writing_base_as_one_table_is_taken_by_the_fields_it_sets():
    """Round 15 review: base={train={lr=0.01}} sets base.train.lr only; it was refused as
    setting the grid (the key's text was read, not the fields set)."""
    from eqpdenet.app.study import Stage, _check_candidates
    checked = _check_candidates(_base(), [Stage("x", "shared", "q",
                                                {"a": ["base={train={lr=0.01}}"]})])
    assert [config.base.train.lr for _, config in checked][1:] == [0.01]
