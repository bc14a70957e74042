"""``export --format exported-program`` past the file size limit (or on a full disk): torch's
zip writer raised, then threw again from its destructor, and the process aborted (exit 134, a
C++ stack dump, "FCNN cannot be written as exported-program", no word of the disk). Python
ignores SIGXFSZ, so a write past ``ulimit -f`` is an ``OSError`` (EFBIG) as a full disk's is."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

from eqpdenet.app import training
from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model

ROOT = Path(__file__).resolve().parents[2]


def test_an_export_past_the_file_size_limit_is_one_line_naming_it(tmp_path):
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4"])
    torch.manual_seed(0)
    training.save_checkpoint(tmp_path / "model.pt", build_model(config.model), config)
    out = tmp_path / "model.pt2"
    out.write_bytes(b"an earlier export")

    def limit():  # 16 KiB: the checkpoint reads, the program (about 30 KiB) cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("EQPDENET_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "eqpdenet", "export", str(tmp_path / "model.pt"),
                           "--format", "exported-program", "--out", str(out), "--images", "4",
                           "--data-dir", str(tmp_path / "no-data")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
                          preexec_fn=limit)
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and "terminate called" not in done.stderr
    assert (f"cannot write {out}: File too large (beyond this process's file size limit: "
            f"ulimit -f); the file there, if any, is unchanged") in error[0]
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt2"]
