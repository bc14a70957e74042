"""Round 18 of `eqpdenet report`: a cell of another architecture than the paper's row (another
parameter count) is marked and gets no Δ or Δ/σ; a record whose own configuration or stored
key contradicts its run key is refused with or without a config.toml (without one it was
averaged into the cell its key names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eqpdenet.app.benchmark import benchmark_run_key
from eqpdenet.app.config import ReproduceConfig, apply_overrides, to_dict, to_toml
from eqpdenet.app.report import (
    Described,
    aggregate,
    key_differences,
    other_models_note,
    protocol_table,
    sweep_records,
    write_report,
)
from eqpdenet.app.sweeps import grid, run_key
from eqpdenet.app.training import fingerprint
from eqpdenet.errors import DataFileError


def _record(model: str, hidden: int, seed: int, params: int, test: float, **extra) -> dict:
    return {"key": run_key(model, hidden, seed), "model": model, "hidden": hidden, "seed": seed,
            "status": "ok", "params": params,
            "accuracy": {"test": test, "iso": test - 30.0, "sca": test - 40.0}, **extra}


def _folder(path: Path, records: list[dict], config: ReproduceConfig | None = None) -> Path:
    path.mkdir()
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config is not None:
        (path / "config.toml").write_text(to_toml(config))
    return path


# ------------------------------------------------------------- F1: another model than the paper's


def test_a_cell_of_another_parameter_count_is_marked_and_has_no_difference():
    """The probe's case: an EqPdeNet h = 16 of 50,660 parameters (concat reduction) beside the
    paper's 13,033-parameter one printed Δ -48.7, Δ/σ -18.0 as a reproduction result."""
    ours = aggregate([_record("eqpdenet", 16, 0, 50660, 70.0),
                      _record("eqpdenet", 32, 0, 26537, 80.0)])
    rows = [line for line in protocol_table(ours).splitlines() if line[:3] in ("| 1", "| 3")]
    assert rows[0] == ("| 16 | 50660 [paper: 13033] | 1 | 70.7 (2.7) | 70.0 | – | – | "
                       "37.3 (1.6) | 40.0 | – | – | 23.1 (1.3) | 30.0 | – | – |")
    # the paper's own model: as before (80.0 - 77.9 = +2.1, / 0.6 = +3.5)
    assert rows[1] == ("| 32 | 26537 | 1 | 77.9 (0.6) | 80.0 | +2.1 | +3.5 | 39.6 (1.3) | "
                       "50.0 | +10.4 | +8.0 | 24.2 (1.1) | 40.0 | +15.8 | +14.4 |")


def test_the_note_names_each_other_model_with_both_counts():
    ours = aggregate([_record("eqpdenet", 16, 0, 50660, 70.0), _record("fcnn", 16, 0, 13002, 60.0),
                      _record("fcnn", 64, 0, 55051, 80.0)])
    assert other_models_note(ours) == (
        " Not the paper's models: EqPdeNet h = 16 (50,660 parameters, the paper's 13,033); "
        "FCNN h = 64 (55,051 parameters, the paper's 55,050). Their rows (`[paper: N]` beside "
        "#params) set the paper's accuracy beside another architecture's: their Δ and Δ/σ are "
        "left out, and the paper's EqPdeNet − FCNN gap at h = 16 is that of other models than "
        "ours.")
    assert other_models_note(aggregate([_record("fcnn", 16, 0, 13002, 60.0)])) == ""


def test_a_cell_whose_runs_all_failed_is_not_said_to_be_another_model():
    ours = aggregate([{"key": "fcnn-h16-seed0", "model": "fcnn", "hidden": 16, "seed": 0,
                       "status": "diverged", "error": "NaN"}])
    assert other_models_note(ours) == ""
    assert "| 16 | – | 0 (+1 failed) | 65.5 (1.5) | – | – | – |" in protocol_table(ours)


def test_the_report_header_names_the_other_model(tmp_path):
    folder = _folder(tmp_path / "sweep", [_record("eqpdenet", 16, 0, 50660, 70.0)])
    write_report(folder)
    header = (folder / "table.md").read_text().split("\n\n")[0]
    assert header.endswith(
        "config.toml`: each run's configuration is in its record). Not the paper's models: "
        "EqPdeNet h = 16 (50,660 parameters, the paper's 13,033). Their rows (`[paper: N]` "
        "beside #params) set the paper's accuracy beside another architecture's: their Δ and "
        "Δ/σ are left out.")


# ---------------------------------------------- F3: a record's key against its own configuration


def _config(model: str = "fcnn", hidden: int = 16, seed: int = 0) -> dict:
    run = next(iter(grid(apply_overrides(ReproduceConfig(), [
        f"models=['{model}']", f"hidden_sizes=[{hidden}]", f"seeds=[{seed}]"]))))
    return to_dict(run)


@pytest.mark.parametrize(("section", "field", "value", "shown"), [
    ("model", "kind", "eqpdenet", "model.kind: 'eqpdenet' recorded, 'fcnn' as its model"),
    ("model", "hidden", 32, "model.hidden: 32 recorded, 16 as its hidden"),
    ("train", "seed", 5, "train.seed: 5 recorded, 0 as its seed"),
])
def test_without_config_toml_a_record_contradicting_its_key_is_refused(
        tmp_path, section, field, value, shown):
    """It was averaged into the FCNN h = 16 cell, exit 0; with config.toml it was refused."""
    bad = _record("fcnn", 16, 0, 13002, 60.0, config=_config())
    bad["config"][section][field] = value
    good = _record("fcnn", 16, 1, 13002, 62.0, config=_config(seed=1))
    folder = _folder(tmp_path / "sweep", [bad, good])
    with pytest.raises(DataFileError) as error:
        write_report(folder)
    assert str(error.value) == (
        f"{folder / 'results.jsonl'}: 1 run(s) were made with another configuration than their "
        f"record's key gives them: fcnn-h16-seed0 ({shown}); a table would count them as runs "
        f"they are not. Move them to another folder (their runs/<key>.json and results.jsonl "
        f"lines), or run them anew (to rerun it, delete both runs/<key>.json (if there is one) "
        f"and its line in results.jsonl, then rerun the sweep's command)")
    assert not (folder / "table.md").exists()


def test_a_stored_key_other_than_the_fields_key_is_refused_with_or_without_config_toml():
    """The sweep counts a run done by its stored key (its run file's name), the report tables it
    by its fields: a record keyed fcnn-h32-seed0 was tabled as fcnn-h16-seed0."""
    record = _record("fcnn", 16, 0, 13002, 60.0, config=_config())
    record["key"] = "fcnn-h32-seed0"
    assert key_differences(record) == ["key: 'fcnn-h32-seed0' recorded, 'fcnn-h16-seed0' of its "
                                       "fields"]
    described = Described(["fcnn-h16-seed0"], ("fp",), None)
    for given in (None, described):
        with pytest.raises(DataFileError, match=r"fcnn-h16-seed0 \(key: 'fcnn-h32-seed0' "
                                                r"recorded, 'fcnn-h16-seed0' of its fields\)"):
            sweep_records([record], given)


def test_with_config_toml_a_partial_configuration_contradicting_its_key_is_refused():
    """A hand-written record holding no whole run's configuration is not compared with
    config.toml's run (recipe_differences), so its model.kind went unchecked there too."""
    record = _record("fcnn", 16, 0, 13002, 60.0, config={"model": {"kind": "eqpdenet"}})
    with pytest.raises(DataFileError, match=r"fcnn-h16-seed0 \(model.kind: 'eqpdenet' recorded, "
                                            r"'fcnn' as its model\)"):
        sweep_records([record], Described(["fcnn-h16-seed0"], ("fp",), None))
    # a record config.toml does not list is left out, not judged
    assert sweep_records([record], Described(["fcnn-h16-seed1"], ("fp",), None)) == (
        [], ["fcnn-h16-seed0"])


def test_with_config_toml_the_message_is_the_one_it_was(tmp_path):
    config = apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[16]",
                                                 "seeds=[0]"])
    record = _record("fcnn", 16, 0, 13002, 60.0, config=_config(),
                     base_fingerprint=fingerprint(config.base))
    record["config"]["model"]["kind"] = "eqpdenet"
    folder = _folder(tmp_path / "sweep", [record], config)
    with pytest.raises(DataFileError, match=r"were made with another configuration than its "
                                            r"config.toml gives them: fcnn-h16-seed0 \(model.kind: "
                                            r"'eqpdenet' recorded, 'fcnn' now\)"):
        write_report(folder)


def test_records_that_agree_with_their_keys_are_kept_as_they_are():
    records = [_record("fcnn", 16, s, 13002, 60.0 + s, config=_config(seed=s)) for s in (0, 1)]
    records.append(_record("eqpdenet", 16, 0, 13033, 70.0))  # no configuration: nothing to compare
    assert [key_differences(r) for r in records] == [[], [], []]
    assert sweep_records(records, None) == (records, [])


def test_a_benchmark_record_is_judged_by_the_fields_of_its_own_key():
    """The benchmark's key is <entry>-seed<seed>: its seed is judged, not its hidden size."""
    config = _config(seed=2)
    record = {"key": "small-seed2", "entry": "small", "model": "fcnn", "hidden": 32, "seed": 2,
              "status": "ok", "params": 13002, "accuracy": {"test": 60.0}, "config": config}
    assert key_differences(record, benchmark_run_key) == []
    assert sweep_records([record], None, key=benchmark_run_key) == ([record], [])
    record["seed"] = 3
    record["key"] = "small-seed3"
    assert key_differences(record, benchmark_run_key) == ["train.seed: 2 recorded, 3 as its seed"]
    with pytest.raises(DataFileError, match=r"small-seed3 \(train.seed: 2 recorded, 3 as its "
                                            r"seed\)"):
        sweep_records([record], None, key=benchmark_run_key)


@pytest.mark.parametrize("value", [None, "sixteen", float("inf"), "16", 16.5])
def test_a_configuration_value_that_makes_no_key_is_a_contradiction(value):
    """Round 18 review: a null, a word or inf in config.model.hidden reached int() in the key
    (a raw TypeError or OverflowError, 'a bug in eqpdenet?'; the table was written before)."""
    record = _record("fcnn", 16, 0, 13002, 60.0, config=_config())
    record["config"]["model"]["hidden"] = value
    assert key_differences(record) == [f"model.hidden: {value!r} recorded, 16 as its hidden"]


def test_a_record_stored_under_a_wanted_key_whose_fields_give_another_is_refused():
    """Round 18 review: its fields' key was not wanted, so it was neither checked nor tabled,
    while the sweep counted it done by its stored key: "incomplete, rerun" at every report."""
    record = _record("fcnn", 16, 0, 13002, 60.0, config=_config(hidden=8))
    record["key"] = "fcnn-h8-seed0"  # run file and configuration say 8, the field says 16
    described = Described(["fcnn-h8-seed0"], ("fp",), None)
    with pytest.raises(DataFileError, match=r"fcnn-h16-seed0 \(model.hidden: 8 recorded, 16 as "
                                            r"its hidden\)"):
        sweep_records([record], described)


def test_a_whole_float_equal_to_the_records_value_is_no_contradiction():
    record = _record("fcnn", 16, 0, 13002, 60.0, config=_config())
    record["config"]["model"]["hidden"] = 16.0
    assert key_differences(record) == []
