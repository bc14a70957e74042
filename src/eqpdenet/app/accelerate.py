"""Training epochs on a GPU that do not wait for it: the mechanism behind ``--device cuda``.

:func:`~eqpdenet.app.training.train_model` runs its epochs through an :class:`EpochRunner` when
the device is a GPU (the ``train``, ``reproduce`` and ``benchmark`` commands all train through
it). The runner takes the same mini-batches in the same order and makes the same updates as the
loop on the CPU, but:

* the training images and labels are copied to the device once, and each mini-batch is gathered
  there (one small copy of indices per epoch, not one batch per step);
* nothing is read back per step: the summed loss, the correct predictions and the finiteness
  checks (a non-finite loss, a non-finite PDE state: :func:`~eqpdenet.checks.deferred_state_checks`)
  are accumulated on the device and read once at the end of the epoch, which then raises the
  error of the first failing step (:class:`~eqpdenet.errors.NonFiniteStateError` naming the PDE
  and the Euler step, or ``FloatingPointError`` for the loss), as the CPU loop would have;
* the whole step (forward, loss, backward, gradient clipping, optimiser step, statistics) is
  captured once as a CUDA graph and replayed for every full mini-batch, so a step costs one
  launch instead of hundreds. The shapes are static: every full mini-batch replays the graph,
  and the last, partial mini-batch of an epoch (``N mod batch_size`` images, if any) runs the
  same step without the graph, so no image is dropped or padded and the updates are those of the
  CPU loop.

Capturing needs an optimiser whose state lives on the device: Adam and AdamW are switched to
``capturable=True`` (with a tensor learning rate where a schedule changes it), SGD is captured
only without a schedule. Before capturing, a few warm-up steps (which build lazily created state,
compile kernels and fill caches) run on a side stream; the model's parameters and buffers and the
optimiser's state are then restored, so the warm-up leaves no trace in the training. Where the
capture is not possible (another optimiser, a failed capture: one warning) or is switched off
(``EQPDENET_CUDA_GRAPHS=0``), every step runs without the graph, still without per-step reads.
With ``train.compile`` the step computes the logits through the compiled forward
(:func:`~eqpdenet.app.training.compiled_for_training`, the ``forward`` argument): the warm-up
steps compile it (static shapes: the capture meets no new shape), and the last, partial
mini-batch compiles once more for its size, as in the loop on the CPU.
On the CPU the runner is only used by tests (without graphs); ``train_model`` keeps its loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import deferred_state_checks
from ..errors import NonFiniteStateError
from ..process_state import env_flag
from .batches import mini_batches

__all__ = ["ENV_CUDA_GRAPHS", "EpochRunner", "applies_to", "graphs_enabled"]

#: Set to 0 to train on a GPU without CUDA graphs.
ENV_CUDA_GRAPHS = "EQPDENET_CUDA_GRAPHS"
WARMUP_STEPS = 3


def applies_to(device: torch.device) -> bool:
    """Whether ``train_model`` runs its epochs through :class:`EpochRunner` on ``device``."""
    return device.type == "cuda"


def graphs_enabled() -> bool:
    """Whether :class:`EpochRunner` may capture CUDA graphs (``EQPDENET_CUDA_GRAPHS``, default on)."""
    return env_flag(ENV_CUDA_GRAPHS, True)


class EpochRunner:
    """Runs training epochs with the data on the device and (on a GPU) the step as a CUDA graph.

    Args:
        model, optimizer, scheduler: as built by ``train_model`` (``scheduler`` may be None; it
            is stepped once per mini-batch).
        images, labels: the training split, ``(N, C, H, W)`` and ``(N,)``, on any device.
        batch_size: mini-batch size.
        grad_clip: clip the global gradient norm to this value (0: off).
        loss_fn: ``loss_fn(logits, labels)``, the mean loss of a mini-batch.
        graphs: capture the step as a CUDA graph (default: on a GPU, unless
            ``EQPDENET_CUDA_GRAPHS=0``).
        forward: what computes a mini-batch's logits (default: ``model`` itself); ``train_model``
            passes the compiled forward of ``train.compile``
            (:func:`~eqpdenet.app.training.compiled_for_training`) so that the runner trains
            through it. It must compute with ``model``'s parameters, which the runner clips,
            steps and restores.
        remedy: words added to the error of a non-finite training loss (``train_model``
            passes what may keep the run finite, as its CPU loop says it).

    :meth:`run_epoch` ``(order, epoch)`` trains one epoch over ``order`` (a permutation of
    ``range(N)``) and returns ``(summed loss, correct predictions)`` as the CPU loop computes them.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                 images: Tensor, labels: Tensor, batch_size: int, grad_clip: float = 0.0,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                 graphs: bool | None = None,
                 forward: Callable[[Tensor], Tensor] | None = None, remedy: str = ""):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        #: Said after "non-finite training loss at epoch E" (what may keep the run finite: the
        #: CPU loop's words, train.lr, grad_clip, weight_decay).
        self.remedy = remedy
        self.forward = model if forward is None else forward
        self.device = next(model.parameters()).device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size, self.grad_clip, self.loss_fn = int(batch_size), float(grad_clip), loss_fn
        self.parameters = list(model.parameters())
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.failures: Tensor | None = None  # per check: first failure of the epoch (0: none)
        self.names: list[str] | None = None
        self.dts: list[float] = []
        self.graph = None
        self.static_index: Tensor | None = None
        if graphs is None:
            graphs = self.device.type == "cuda" and graphs_enabled()
        self.want_graph = bool(graphs) and self.device.type == "cuda" and \
            len(self.labels) >= self.batch_size

    # ------------------------------------------------------------------------- one step

    def _step(self, index: Tensor, capturing: bool = False) -> None:
        """One mini-batch, as the CPU loop of ``train_model`` does it, with no host read."""
        x = self.images.index_select(0, index)
        y = self.labels.index_select(0, index)
        with deferred_state_checks() as reports:
            logits = self.forward(x)
            loss = self.loss_fn(logits, y)
            if not capturing:
                # (a captured backward assigns the graph's own gradient tensors; a step without
                # the graph drops them and makes new ones, while the graph keeps its memory)
                self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.optimizer.step()
        self.loss_sum += loss.detach().double() * len(index)
        self.correct += (logits.argmax(1) == y).sum()
        states = reports.flags()
        checks = [states] if states is not None else []
        flags = torch.cat(checks + [(~torch.isfinite(loss.detach())).reshape(1).to(torch.int64)])
        if self.failures is None:
            self.names, self.dts = reports.names + ["loss"], reports.dts
            self.failures = torch.zeros_like(flags)
        elif reports.names + ["loss"] != self.names:
            raise RuntimeError("the model's finiteness checks changed between training steps")
        # keep the flags of the first failing step only
        first = self.failures.eq(0).all()
        self.failures.copy_(torch.where(first, flags, self.failures))

    # ------------------------------------------------------------------------- the graph

    def _capturable(self) -> str | None:
        """Why the optimiser cannot be captured, or None (and make it capturable)."""
        optimizer = self.optimizer
        if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
            for group in optimizer.param_groups:
                group["capturable"] = True
                if self.scheduler is not None and not isinstance(group["lr"], Tensor):
                    group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            return None
        if isinstance(optimizer, torch.optim.SGD):
            if self.scheduler is not None:
                return "SGD with a learning-rate schedule cannot be captured"
            if any(group["dampening"] for group in optimizer.param_groups):
                return "SGD with dampening cannot be captured"
            return None
        return f"{type(optimizer).__name__} is not known to be capturable"

    def _snapshot(self) -> list[tuple[Tensor, Tensor]]:
        tensors = list(self.model.state_dict().values())
        return [(t, t.detach().clone()) for t in tensors]

    def _restore(self, snapshot) -> None:
        """Parameters and buffers as before the warm-up, the optimiser's state as before its
        first step (zero moments and step counts: for Adam and SGD without dampening, the same
        updates as a fresh state), the statistics cleared."""
        with torch.no_grad():
            for tensor, saved in snapshot:
                tensor.copy_(saved)
            for state in self.optimizer.state.values():
                for value in state.values():
                    if isinstance(value, Tensor):
                        value.zero_()
        self.loss_sum.zero_()
        self.correct.zero_()
        if self.failures is not None:
            self.failures.zero_()

    def _capture(self) -> None:
        reason = self._capturable()
        if reason is not None:
            warnings.warn(f"eqpdenet: training without CUDA graphs: {reason}", RuntimeWarning,
                          stacklevel=3)
            return
        snapshot = self._snapshot()
        self.static_index = torch.arange(self.batch_size, device=self.device)
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._step(self.static_index)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._restore(snapshot)
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(self.static_index, capturing=True)
            self.graph = graph
        except Exception as error:  # noqa: BLE001 - any failure: train without the graph
            self.graph = None
            self._restore(snapshot)
            warnings.warn(f"eqpdenet: training without CUDA graphs: capturing the step failed "
                          f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})",
                          RuntimeWarning, stacklevel=3)
        torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------------- an epoch

    def run_epoch(self, order: Tensor, epoch: int) -> tuple[float, int]:
        """Train one epoch over ``order``; returns ``(sum of batch-mean loss x batch size,
        correct predictions)``. Raises the error of the first failing step, after the epoch."""
        if self.want_graph and self.graph is None:
            self.want_graph = False  # capture once
            self._capture()
        self.loss_sum.zero_()
        self.correct.zero_()
        if self.failures is not None:
            self.failures.zero_()
        order = order.to(self.device)
        for batch in mini_batches(len(order), self.batch_size):
            index = order[batch]
            if self.graph is not None and len(index) == self.batch_size:
                self.static_index.copy_(index)
                self.graph.replay()
            else:
                self._step(index)
            if self.scheduler is not None:
                self.scheduler.step()
        values = torch.cat([self.loss_sum.reshape(1), self.correct.to(torch.float64).reshape(1),
                            self.failures.to(torch.float64)]).cpu().tolist()  # the one read
        self._raise_first_failure(values[2:], epoch)
        return values[0], int(values[1])

    def _raise_first_failure(self, failures: list[float], epoch: int) -> None:
        for position, value in enumerate(failures):
            if value == 0:
                continue
            if position == len(failures) - 1:
                raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}"
                                         + (f"; {self.remedy}" if self.remedy else ""))
            raise NonFiniteStateError(self.names[position], int(value), self.dts[position])
