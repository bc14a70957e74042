"""Checks of a whole piece of work before any data is loaded or any training starts.

:func:`preflight` takes the runs a command is about to do and its output folder, and raises
:class:`~eqpdenet.errors.ConfigError` or :class:`~eqpdenet.errors.OutputFolderError` naming the
cause when

* a configuration cannot be saved (every field is validated on construction; this also writes
  each one to TOML, as it will be saved beside its result),
* the device is not there (``train.device = "cuda"`` without a GPU),
* training would need more memory than the machine has: the states the Euler steps keep for the
  backward pass (:func:`training_bytes`; ``T = 1e6, dt = 1e-3`` asks for petabytes, so does a
  lifted model with ``margin = 1000``: the deep families estimate their own) and the
  parameters with their gradients and optimiser state (:data:`PARAMETER_BYTES` each;
  ``model.hidden = 1e8`` asks for 160 PB); the model is built on PyTorch's ``meta`` device to
  count them, so nothing is allocated,
* the output file system has not the space for the checkpoints and results.

The folder being creatable and writable is checked by taking its lock
(:func:`eqpdenet.app.locks.hold`), which writes into it.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import kernels
from ..errors import ConfigError, OutputFolderError
from ..pde.layer import PDELayer
from .config import ExperimentConfig, build_model, to_toml

__all__ = ["PARAMETER_BYTES", "WORKER_BYTES", "allocation_failure", "available_memory",
           "preflight", "resolve_device", "training_bytes"]

#: Memory kept per Euler step during training, in units of one state (batch x PDEs x pixels x 4
#: bytes), by backend and ``recompute``: the growth of the peak memory of one training step of the
#: paper's model per added step (``benchmarks/bench_reliability.py``, rounded up). The fused
#: kernel keeps the state and little else; the reference keeps the jet, invariants and products.
STATE_FACTORS = {("fused", False): 2.5, ("fused", True): 0.5,
                 ("reference", False): 40.0, ("reference", True): 15.0}

#: The options that size the fields of the deep families, named when they do not fit in memory.
DEEP_FIELDS = {"invariant_pde": "channels, blocks, hidden",
               "lifted_pde": "channels, blocks, orientations, scales, margin"}

#: Bytes per parameter during training: the float32 weight, its gradient and Adam's two moments.
PARAMETER_BYTES = 16

#: Memory of one worker process of ``--jobs N`` besides its run (PyTorch, eqpdenet, the data).
WORKER_BYTES = 600 * 2**20

#: Bytes of a run's record in results.jsonl (its history and configuration), an upper bound.
RECORD_BYTES = 64 * 2**10


def _gib(n: float) -> str:
    for unit, size in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 2**20:.3g} MiB"


def _model(config: ExperimentConfig) -> torch.nn.Module:
    """The model, built without touching the global random stream or warning: on the ``meta``
    device (shapes without memory) where the family allows it, else for real; an allocation
    that fails is a :class:`ConfigError`."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return build_model(config.model)
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - a family that cannot be built on meta: build it
            pass
        try:
            return build_model(config.model)
        except RuntimeError as error:
            wanted = allocation_failure(error)
            if wanted is None:
                raise
            raise ConfigError(f"invalid config: the {config.model.kind} model does not fit in "
                              f"memory ({wanted}); make it smaller") from None


def allocation_failure(error: BaseException) -> str | None:
    """For an error of a memory allocation that failed (PyTorch's CPU allocator, CUDA's out of
    memory), what was asked for (``"tried to allocate 292 GiB"``); None for any other error."""
    text = str(error)
    if type(error).__name__ != "OutOfMemoryError" and "can't allocate memory" not in text \
            and "out of memory" not in text.lower():
        return None
    found = re.search(r"allocate (\d+) bytes", text)
    if found:
        return f"tried to allocate {_gib(int(found.group(1)))}"
    found = re.search(r"allocate ([\d.]+ [KMGTP]i?B)", text)
    return f"tried to allocate {found.group(1)}" if found else "an allocation failed"


def training_bytes(config: ExperimentConfig, model: torch.nn.Module | None = None) -> int:
    """An estimate of the memory that training ``config`` keeps for the backward pass, dominated
    by the Euler states: ``batch x PDEs x channels x steps x pixels x bytes x factor`` for every
    PDE layer of the model (at the input's size; :data:`STATE_FACTORS`), and for the deep
    families (``invariant_pde``, ``lifted_pde``) their own estimate of what their blocks keep
    (their ``backward_bytes(batch_size)``)."""
    model = _model(config) if model is None else model
    channels = getattr(model, "in_channels", 1)
    pixels = config.model.image_size ** 2
    own = getattr(model, "backward_bytes", None)
    # The blur penalty's copies go through the model in the same pass as the batch.
    batch = config.train.batch_size + config.train.blur_consistency.copies(config.train.batch_size)
    total = int(own(batch)) if own is not None else 0
    for layer in model.modules():
        if not isinstance(layer, PDELayer):
            continue
        backend = kernels.resolve_backend(layer.backend)
        backend = "reference" if backend == "reference" else "fused"
        steps = max(getattr(pde, "steps", 1) for pde in layer.pdes)
        state = batch * channels * pixels * 4
        total += int(layer.n_pdes * max(steps, 1) * state * STATE_FACTORS[backend, layer.recompute])
    return total


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (``"cpu"``, ``"cuda"``, ``"auto"``) names, or a :class:`ConfigError`
    when it is not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("invalid config: device 'cuda' (train.device or --device) requested but "
                          "no GPU is available here")
    return torch.device(name)


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def preflight(runs: Sequence[ExperimentConfig], out: Path | None, *, jobs: int = 1,
              checkpoints: int | None = None) -> None:
    """Check ``runs`` (to be done with ``jobs`` processes, writing into ``out``, ``checkpoints``
    of them saving a model; default all) before any data is loaded (module docstring)."""
    if not runs:
        return
    largest_model, largest_run = 0, (0, 0, None, None)
    for run in runs:
        to_toml(run)
        device = resolve_device(run.train.device)
        model = _model(run)
        params = sum(p.numel() for p in model.parameters())
        largest_model = max(largest_model, params)
        states = training_bytes(run, model)
        if states + params * PARAMETER_BYTES > sum(largest_run[:2]):
            largest_run = (states, params * PARAMETER_BYTES, run, device)
    parallel = min(jobs, len(runs))
    states, weights, run, device = largest_run
    if run is not None:
        need = states + weights
        available = available_memory(device)
        workers = parallel * WORKER_BYTES if parallel > 1 else 0
        if available is not None and need * parallel + workers > available:
            layer = getattr(run.model, "layer", None)
            steps = f" ({layer.steps} Euler steps)" if layer is not None and states else ""
            per = f"{parallel} runs at once, each " if parallel > 1 else ""
            parts = [f"{_gib(states)} for the states the Euler steps keep"] if states else []
            parts.append(f"{_gib(weights)} for {weights // PARAMETER_BYTES:,} parameters with "
                         f"their gradients and optimiser state")
            kind = run.model.kind
            if states <= weights:
                remedies = [f"make the model smaller (model.hidden = {run.model.hidden}, or its "
                            f"model.{kind} options)"]
            elif kind in DEEP_FIELDS:
                remedies = [f"lower train.batch_size ({run.train.batch_size})",
                            f"make its fields smaller (model.{kind}: {DEEP_FIELDS[kind]})"]
            else:
                remedies = [f"raise model.layer.dt or lower model.layer.T{steps}",
                            f"lower train.batch_size ({run.train.batch_size})",
                            "set model.layer.recompute = true"]
            if parallel > 1:
                remedies.append("lower --jobs")
            raise ConfigError(
                f"invalid config: training would need about {_gib(need * parallel + workers)} of "
                f"memory ({per}{', '.join(parts)}), more than the {_gib(available)} available "
                f"on {device}: " + ", ".join(remedies[:-1]) + (", or " if len(remedies) > 1
                                                               else "") + remedies[-1])
    if out is None:
        return
    count = len(runs) if checkpoints is None else checkpoints
    checkpoint_bytes = count * (4 * largest_model + RECORD_BYTES) + len(runs) * RECORD_BYTES
    folder = Path(out)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if checkpoint_bytes > free:
        raise OutputFolderError(f"not enough space for the results in {out}: about "
                                f"{_gib(checkpoint_bytes)} to write, {_gib(free)} free")
