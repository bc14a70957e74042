"""``benchmarks/confusions.py``: the counts behind docs/lifted.md's 6-9 finding."""

import importlib.util
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "confusions.py"
_SPEC = importlib.util.spec_from_file_location("confusions", _PATH)
confusions = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(confusions)


def test_confusion_and_summary_count_pairs():
    labels = torch.tensor([6, 6, 9, 9, 9, 1, 2, 2])
    predicted = torch.tensor([6, 9, 6, 6, 9, 7, 2, 7])
    matrix = confusions.confusion(predicted, labels)
    assert matrix[6, 9] == 1 and matrix[9, 6] == 2 and matrix[1, 7] == 1 and matrix.sum() == 8
    summary = confusions.summarize(matrix, top=2)
    assert summary["errors"] == 5 and summary["errors_6_9"] == 3
    assert summary["accuracy"] == pytest.approx(100 * 3 / 8)
    assert summary["top_pairs"][0] == [9, 6, 2]


def test_move_is_a_zero_filled_whole_pixel_shift():
    images = torch.arange(16.0).view(1, 1, 4, 4)
    moved = confusions.move(images, 1, -2)
    expected = torch.tensor([[0, 0, 0, 0], [2, 3, 0, 0], [6, 7, 0, 0], [10, 11, 0, 0.]])
    assert torch.equal(moved[0, 0], expected)
    assert torch.equal(confusions.transform("turn180", images, 0)[0, 0], images[0, 0].flip(0, 1))


def test_unknown_probe_fails_before_any_work():
    with pytest.raises(ValueError, match="move:DY,DX"):
        confusions.check_name("move:1")


def test_records_name_their_checkpoint_by_digest(tmp_path):
    """A rerun writes a new model under the same path: the digest tells the two apart."""
    import hashlib
    import sys
    sys.path.insert(0, str(_PATH.parent))
    from _args import checkpoint_fields
    path = tmp_path / "model.pt"
    path.write_bytes(b"first model" * 100_000)  # over one read block
    first = checkpoint_fields(path)
    assert first == {"checkpoint": str(path),
                     "checkpoint_sha256": hashlib.sha256(b"first model" * 100_000).hexdigest()}
    path.write_bytes(b"second model")
    assert checkpoint_fields(path)["checkpoint_sha256"] != first["checkpoint_sha256"]
