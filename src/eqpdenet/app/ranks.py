"""The ranks of ``eqpdenet train --distributed`` waiting for one another's work, without a
deadline (:class:`RankWaits`), and the failures of their collectives told apart from eqpdenet's
own (:func:`collective_failure`). Its own module, below both :mod:`~eqpdenet.app.training`
(whose ``data_parallel_group`` opens the waits) and :mod:`~eqpdenet.app.distributed` (the
executors), which imports training: the two would import each other otherwise.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["WAIT_POLL", "RankWaits", "collective_failure", "current_rank_waits", "lost_rank_text",
           "rank_waits"]

#: How often a rank of ``train --distributed`` that waits for another rank's work alone looks
#: again, in seconds; a signal (Ctrl-C, SIGTERM) is handled between two looks.
WAIT_POLL = 0.1

#: The :class:`RankWaits` of the process group open now, if any.
_WAITS: RankWaits | None = None


def collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective's (or the job's store's) failure to reach another rank:
    torch's ``DistError`` (NCCL, the store), or gloo's plain ``RuntimeError``, whose text starts
    with gloo's source path (``[.../gloo/transport/tcp/pair.cc:537] Read error ...: Connection
    reset by peer``, ``Connection closed by peer``, ``Timed out waiting ...``)."""
    try:
        from torch.distributed import DistError
    except ImportError:  # a torch without distributed support raises none of them
        return False
    return isinstance(error, DistError) or (type(error) is RuntimeError
                                            and "gloo/" in str(error))


def lost_rank_text(error: BaseException) -> str:
    """What :func:`collective_failure` ``error`` says happened, in a few words."""
    text = " ".join(str(error).split())
    if "closed by peer" in text or "reset by peer" in text:
        return "its connection closed"
    if "Timed out" in text or "timed out" in text:
        return "no answer within torch's collective timeout"
    return text.split("] ", 1)[-1][:160]  # gloo's source path is no help


@dataclass
class RankWaits:
    """The waits of the ranks of a process group for work that one rank does alone, without a
    deadline: rank 0 alone checks the output folder and prepares the data before training,
    and alone evaluates and writes the result after it, for as long as that takes (the full
    ROTMNIST test split on a deep PDE model can take more than torch's 30-minute collective
    timeout, which used to end the waiting ranks, and with them the run). A waiting rank asks
    the job's store every :data:`WAIT_POLL` seconds (each request answered at once, so no
    timeout applies), and between two looks handles signals; it stops, one line, when a rank
    that stopped says so (:meth:`stopped`), or when the store answers no more (its rank 0, which
    holds it unless torchrun's agent does, is gone). Under torchrun, the agent stops the
    waiting ranks of a job whose rank died."""

    store: object  # torch.distributed.Store
    rank: int
    world_size: int
    prefix: str

    @property
    def _problem(self) -> str:
        return self.prefix + "problem"

    def done(self, step: str, problem: str | None = None) -> None:
        """This rank (the one that works alone) has finished ``step``; ``problem``: why it
        stopped instead, which every rank waiting for the step then raises."""
        self.store.set(self.prefix + "done/" + step, "" if problem is None else "!" + problem)

    def wait_for(self, step: str, rank: int = 0) -> None:
        """Return once ``rank`` has finished ``step`` (:meth:`done`), however long that takes; a
        :class:`ConfigError` ``rank R stopped: ...`` if it stopped instead."""
        key = self.prefix + "done/" + step
        self._wait(lambda: self.store.check([key]), rank)
        value = self.store.get(key).decode()
        if value.startswith("!"):
            raise ConfigError(f"rank {rank} stopped: {value[1:]}")

    def leave(self) -> None:
        """The group's last meeting, where the other ranks wait for rank 0 to evaluate and
        write: they return once rank 0 has called this, however long that takes; rank 0 returns
        at once, and the caller's barrier then meets them (a collective: a rank that died
        without a word ends it with gloo's "closed by peer" in seconds, where waiting on the
        store, which rank 0 holds, would never notice it)."""
        key = self.prefix + "done/leave"
        if self.rank == 0:
            self.store.set(key, "")
        else:
            self._wait(lambda: self.store.check([key]), 0)

    def stopped(self, error: BaseException) -> None:
        """Tell the waiting ranks that this one stopped, with ``error`` (best effort: the store
        may be gone too)."""
        if isinstance(error, KeyboardInterrupt):
            text = "interrupted"
        elif collective_failure(error):
            text = f"lost another rank ({lost_rank_text(error)})"
        else:
            text = " ".join(f"{type(error).__name__}: {error}".split())
        with contextlib.suppress(Exception):
            self.store.compare_set(self._problem, "", f"rank {self.rank} stopped: {text}")

    def _wait(self, ready: Callable[[], bool], rank: int) -> None:
        try:
            while not ready():
                if self.store.check([self._problem]):
                    raise ConfigError(self.store.get(self._problem).decode())
                time.sleep(WAIT_POLL)
        except ConfigError:
            raise
        except Exception as error:
            if not collective_failure(error):
                raise
            raise ConfigError(f"rank {self.rank}: the job's store answers no more while this "
                              f"rank waits for rank {rank} ({lost_rank_text(error)}): rank 0 "
                              f"stopped or was lost; see its error") from None


@contextlib.contextmanager
def rank_waits() -> Iterator[RankWaits]:
    """The :class:`RankWaits` of the process group just initialised (``data_parallel_group``),
    for the block; :func:`current_rank_waits` returns it meanwhile. The block's exception is
    told to the waiting ranks (:meth:`RankWaits.stopped`); a block that ends without one ends
    with :meth:`RankWaits.leave`: the other ranks wait for rank 0 without a deadline (the
    caller's barrier follows)."""
    global _WAITS
    import torch
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _get_default_store

    # The keys of this group: a number rank 0 draws from the store and sends to every rank (a
    # collective as the group starts, when every rank is there). A count kept by each process
    # named different keys in a rank started afresh beside a rank 0 on its second group, and
    # both waited forever (round 14); torchrun's agent keeps its store across groups and
    # restarts, so the number is never reused within a job.
    store = _get_default_store()
    generation = torch.zeros(1, dtype=torch.int64)
    if dist.get_rank() == 0:
        generation += store.add("eqpdenet/waits/generation", 1)
    dist.broadcast(generation, 0)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    waits = RankWaits(store, dist.get_rank(), dist.get_world_size(),
                      f"eqpdenet/waits/{restart}/{int(generation)}/")
    outer, _WAITS = _WAITS, waits
    try:
        try:
            yield waits
        except BaseException as error:
            waits.stopped(error)
            raise
        waits.leave()
    finally:
        _WAITS = outer


def current_rank_waits() -> RankWaits:
    """The :class:`RankWaits` of the open process group (inside ``data_parallel_group``)."""
    if _WAITS is None:
        raise RuntimeError("no process group of data_parallel_group is open")
    return _WAITS


