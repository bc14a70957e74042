"""The equivariance study of ``eqpdenet equivariance``: tables and plots."""

from eqpdenet.app.equivariance_study import equivariance_table, measure_equivariance, write_outputs


def test_quick_study_writes_tables_and_plots(tmp_path, monkeypatch):
    monkeypatch.delenv("EQPDENET_DATA", raising=False)
    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))
    study = measure_equivariance(quick=True, echo=lambda text: None)
    assert {r.study for r in study.records} == {"transforms", "resolution", "dt", "steps"}
    table = equivariance_table(study)
    assert "| identity |" in table and "interpolation floor" in table
    written = write_outputs(study, tmp_path / "out")
    names = {p.name for p in written}
    assert {"table.md", "table.csv", "transforms.png", "convergence.png"} <= names
    for path in written:
        assert path.stat().st_size > 0
    csv_lines = (tmp_path / "out" / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("study,inputs,map") and len(csv_lines) == len(study.records) + 1
