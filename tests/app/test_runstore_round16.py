"""Round 16: a ``results.jsonl`` line that is not JSON (cut short by a full disk or a killed
editor) said where, but not how to mend it; a line that is not a run record said to delete or
repair it. Both now say so, and, in a folder with run files, that a line whose run has its file
is regenerated from it."""

from __future__ import annotations

import json

import pytest

from eqpdenet.app.runstore import RUNS_DIR, load_records
from eqpdenet.errors import DataFileError

RECORD = {"key": "fcnn-h4-seed0", "status": "ok"}


def test_a_truncated_line_in_a_folder_with_run_files_says_how_to_mend_it(tmp_path):
    (tmp_path / RUNS_DIR).mkdir()
    (tmp_path / RUNS_DIR / "fcnn-h4-seed0.json").write_text(json.dumps(RECORD))
    (tmp_path / "results.jsonl").write_text(json.dumps(RECORD) + "\n" + '{"key": "fcnn-h4-se')
    with pytest.raises(DataFileError) as caught:
        load_records(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'results.jsonl'}:2: not a JSON line (Unterminated string starting at: "
        f"line 1 column 9 (char 8)); delete or repair that line (where its run has a file in "
        f"runs/, the line is regenerated from it; without one, the line was the run's only "
        f"record and the run is done again)")


def test_a_truncated_line_in_a_folder_without_run_files_is_told_to_be_deleted(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"key": "fcnn-h4-se')
    with pytest.raises(DataFileError) as caught:
        load_records(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'results.jsonl'}:1: not a JSON line (Unterminated string starting at: "
        f"line 1 column 9 (char 8)); delete or repair that line")


def test_report_names_a_truncated_line_and_how_to_mend_it(tmp_path):
    from eqpdenet.app.report import read_results

    (tmp_path / "results.jsonl").write_text('{"key": "fcnn-h4-se')
    with pytest.raises(DataFileError) as caught:
        read_results(tmp_path)
    assert str(caught.value).endswith("; delete or repair that line")
