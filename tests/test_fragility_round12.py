"""``benchmarks/fragility.py`` never writes into the committed results unasked, and a folder
holds one number of epochs (probe round 12: a trial with ``--epochs 1`` appended to the committed
log, replaced the 6-epoch checkpoint the log's records point to, and rewrote ``table.md``)."""

import shutil

from tests.test_benchmark_scripts import ROOT, _run_scripts

COMMITTED = ROOT / "results" / "fragility"


def test_fragility_refuses_a_missing_out_and_a_folder_of_other_epochs(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(COMMITTED / "log.jsonl", copy / "log.jsonl")  # 6-epoch runs, no checkpoints
    empty = tmp_path / "empty"
    cases = [
        ["fragility.py", "--epochs", "1", "--cells", "isotropic-pool-zeros"],
        ["fragility.py", "--out", str(copy), "--epochs", "1", "--cells", "isotropic-pool-zeros",
         "--set", "data.train_subset=300"],
        ["fragility.py", "--out", str(copy), "--epochs", "1", "--table-only"],
        ["fragility.py", "--out", str(empty), "--table-only"],
        ["fragility.py", "--out", str(copy), "--table-only"],
    ]
    missing, training, table_other, table_empty, table = _run_scripts(cases)
    for record in (missing, training, table_other, table_empty):
        assert record["code"] == 2, record
    assert "the following arguments are required: --out" in missing["err"]
    for record in (training, table_other):
        assert record["err"].strip().splitlines()[-1] == (
            f"fragility.py: error: --epochs 1: {copy / 'log.jsonl'} holds runs of 6 epochs, whose "
            f"checkpoints the new runs would replace (they are named by cell and seed): give "
            f"another --out")
    assert "fragility.py: error: --table-only: no runs in" in table_empty["err"]
    assert not (empty / "table.md").exists()
    # what the refusals left: the log as it was, no table, no checkpoint
    assert (copy / "log.jsonl").read_bytes() == (COMMITTED / "log.jsonl").read_bytes()
    assert not (copy / "checkpoints").exists()
    # the committed table is what its log gives
    assert table["code"] == 0, table["err"]
    assert (copy / "table.md").read_text() == (COMMITTED / "table.md").read_text()
