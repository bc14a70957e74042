"""How an epoch's images are cut into mini-batches, in one place for every training loop (the
CPU loop and torchrun's in :func:`eqpdenet.app.training.train_model`, the GPU's in
:mod:`eqpdenet.app.accelerate`).

Consecutive batches of ``batch_size`` images in the epoch's order; the last one holds the
remainder, except that a remainder of fewer than two images per process joins the batch before
it: batch normalisation cannot estimate statistics from one image (every family with it refuses
such a batch in training, :func:`eqpdenet.models.check_model_input`), and under torchrun
(``processes`` > 1) each process normalises its own part of the batch, so a remainder of fewer
than ``2 processes`` images would leave a process one image or none.

Example:
    >>> [(s.start, s.stop) for s in mini_batches(10, 4)]
    [(0, 4), (4, 8), (8, 10)]
    >>> [(s.start, s.stop) for s in mini_batches(9, 4)]
    [(0, 4), (4, 9)]
    >>> [(s.start, s.stop) for s in mini_batches(6, 4, processes=2)]  # not 2: one image each
    [(0, 6)]
"""

from __future__ import annotations

__all__ = ["mini_batches"]


def mini_batches(count: int, batch_size: int, processes: int = 1) -> list[slice]:
    """The slices of an epoch of ``count`` images, each shared out among ``processes``
    (module docstring)."""
    starts = list(range(0, count, batch_size))
    if len(starts) > 1 and count - starts[-1] < 2 * processes:
        starts.pop()
    return [slice(start, stops) for start, stops in zip(starts, [*starts[1:], count], strict=True)]
