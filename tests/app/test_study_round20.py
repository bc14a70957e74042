"""A study checks the run records it scores (round 20, a review: a status no writer sets
failed a candidate silently, so that another one won, and a NaN validation accuracy was a bare
"cannot convert NaN to integer ratio")."""

import json
import re

import pytest

from eqpdenet.app.study import Stage, run_study, study_base
from eqpdenet.errors import DataFileError
from study_helpers import fake_study_reproduce

SHARED = Stage("weight-decay", "shared", "?", {"none": ["base.train.weight_decay=0.0"],
                                                "wd": ["base.train.weight_decay=0.05"]})


def _quiet(*args):
    pass


def _study_with_a_record_changed(tmp_path, monkeypatch, field, value):
    """A study run with stand-in runs, then its first run record's ``field`` set to ``value``:
    the folder, the study's base and the records as now written."""
    fake_study_reproduce(monkeypatch)
    out = tmp_path / "s"
    base = study_base(hidden_sizes=(16,), seeds=(0,))
    run_study(out, base=base, stages=[SHARED], echo=_quiet)
    path = next(out.glob("runs/*/results.jsonl"))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0][field] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return out, base, records


@pytest.mark.parametrize("field, value, problem", [
    ("status", "OK", "status is 'OK', not a run's status ('ok' or 'diverged')"),
    ("validation_accuracy", float("nan"),
     "validation_accuracy is nan, not a finite percentage (the study scores it)"),
    ("validation_accuracy", 250.0,
     "validation_accuracy is 250.0, not a finite percentage (the study scores it)"),
])
def test_a_record_the_study_cannot_score_is_refused_naming_it(tmp_path, monkeypatch, field,
                                                                value, problem):
    out, base, records = _study_with_a_record_changed(tmp_path, monkeypatch, field, value)
    key = f"{records[0]['model']}-h{records[0]['hidden']}-seed{records[0]['seed']}"
    with pytest.raises(DataFileError, match=re.escape(f"the run {key}: {problem}; to rerun it")):
        run_study(out, base=base, stages=[SHARED], echo=_quiet)


@pytest.mark.parametrize("field, value", [("hidden", "16"), ("seed", None), ("model", 3)])
def test_a_record_whose_key_fields_are_malformed_is_refused_not_dropped(tmp_path, monkeypatch,
                                                                        field, value):
    # a record of hidden "16" fell out of the grid unsaid, and the study averaged the others
    out, base, records = _study_with_a_record_changed(tmp_path, monkeypatch, field, value)
    kind = {"hidden": "int", "seed": "int", "model": "str"}[field]
    with pytest.raises(DataFileError, match=re.escape(f"record 1: {field} is {value!r}, not a "
                                                      f"run's {kind}")):
        run_study(out, base=base, stages=[SHARED], echo=_quiet)
