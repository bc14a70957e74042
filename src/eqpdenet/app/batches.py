"""How an epoch's images are cut into mini-batches, in one place for every training loop (the
CPU loop and torchrun's in :func:`eqpdenet.app.training.train_model`, the GPU's in
:mod:`eqpdenet.app.accelerate`).

Consecutive batches of ``batch_size`` images in the epoch's order; the last one holds the
remainder, except that a remainder of one image joins the batch before it: batch normalisation
cannot estimate statistics from one image (every family with it refuses such a batch in training,
:func:`eqpdenet.models.check_model_input`), and under torchrun a single image would leave a
process without any.

Example:
    >>> [(s.start, s.stop) for s in mini_batches(10, 4)]
    [(0, 4), (4, 8), (8, 10)]
    >>> [(s.start, s.stop) for s in mini_batches(9, 4)]
    [(0, 4), (4, 9)]
"""

from __future__ import annotations

__all__ = ["mini_batches"]


def mini_batches(count: int, batch_size: int) -> list[slice]:
    """The slices of an epoch of ``count`` images (module docstring)."""
    starts = list(range(0, count, batch_size))
    if len(starts) > 1 and count - starts[-1] == 1:
        starts.pop()
    return [slice(start, stops) for start, stops in zip(starts, [*starts[1:], count], strict=True)]
