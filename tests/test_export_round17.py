"""Round 17: export's top-1 check excused a row whatever class the file picked wherever
PyTorch's float32 and float64 top-1 differed (an outside probe: float64 logits [10, 10 + 1e-7,
5], a real tie of classes 0 and 1, and a file that picked class 2, 5 below both). A row is now a
tie only where the file's class is within twice the row's float32 rounding of the float64
maximum."""

from __future__ import annotations

import torch

from eqpdenet.export import _top1_disagreements


def test_a_tie_excuses_only_the_tied_classes():
    exact = torch.tensor([[10.0, 10.0 + 1e-7, 5.0]] * 3, dtype=torch.float64)
    expected = torch.tensor([[10.0, 10.0, 5.0]] * 3)                  # float32: class 0
    exported = torch.tensor([[9.0, 9.0, 9.5],                         # class 2: far below
                             [9.0, 9.5, 9.0],                         # class 1: the tie
                             [10.0, 10.0, 5.0]])                      # class 0: agrees
    ties, real = _top1_disagreements(expected, exported, exact)
    assert ties.tolist() == [1] and real.tolist() == [0]
