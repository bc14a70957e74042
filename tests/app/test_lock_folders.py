"""A command refused (or interrupted) before it wrote anything leaves no folder behind: `hold`
created the folder and its lock file, and a refusal after that left both (a probe found
`train` runs refused in preflight leaving `out/.eqpdenet.lock` alone)."""

from __future__ import annotations

import pytest

from eqpdenet.app.cli import main
from eqpdenet.app.locks import LOCK_NAME, hold
from eqpdenet.errors import ConfigError


def test_a_folder_created_for_a_refused_block_is_removed_with_its_new_parents(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(ConfigError), hold(out, "train"):
        assert (out / LOCK_NAME).is_file()
        raise ConfigError("refused")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_received_a_file_or_existed_before_is_kept(tmp_path):
    written = tmp_path / "written"
    with pytest.raises(KeyboardInterrupt), hold(written, "train"):
        (written / "result.json").write_text("{}")
        raise KeyboardInterrupt
    assert sorted(p.name for p in written.iterdir()) == [LOCK_NAME, "result.json"]
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ConfigError), hold(existing, "train"):
        raise ConfigError("refused")
    assert [p.name for p in existing.iterdir()] == [LOCK_NAME]


def test_an_inner_hold_leaves_the_outer_holders_folder(tmp_path):
    out = tmp_path / "out"
    with hold(out, "study"):
        with pytest.raises(ConfigError), hold(out, "reproduce"):
            raise ConfigError("refused")
        assert (out / LOCK_NAME).is_file()
    assert out.is_dir()


def test_a_train_run_refused_in_preflight_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["train", "--model", "invariant_pde", "--dataset", "mnist", "--out", str(out),
                   "--set", "model.invariant_pde.downsample=blur",
                   "--set", "model.invariant_pde.boundary=reflect",
                   "--set", "model.invariant_pde.stencil=gaussian",
                   "--set", "model.invariant_pde.sigma=2.0",
                   "--set", "model.invariant_pde.channels=[2,2,2]"])
    assert status == 2
    assert "eqpdenet: error:" in capsys.readouterr().err
    assert not out.exists()
