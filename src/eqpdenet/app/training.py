"""Training and evaluation of one run, checkpoints, provenance.

One *run* trains one model (any registered kind, any hidden size and PDE configuration) with one
seed on ROTMNIST and evaluates it on scenarios (``test``, ``iso``, ``sca``), the scenario draws
seeded by the same seed (:func:`run_experiment`). Sweeps of runs are in
:mod:`eqpdenet.app.sweeps`.

Determinism: the seed fixes parameter initialisation (``torch.manual_seed``), the mini-batch order
(a dedicated ``torch.Generator``) and the scenario draws; with the same thread count and backend
the same command gives the same numbers.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import __version__
from ..data.rotmnist import load_rotmnist
from ..data.scenarios import apply_scenario
from ..errors import CheckpointError, ConfigError, NonFiniteStateError
from ..models import count_parameters
from . import accelerate
from .config import DataConfig, ExperimentConfig, TrainConfig, build_model, from_dict, to_dict
from .files import atomic_write
from .optim import LR_SCHEDULES, OPTIMIZERS

__all__ = [
    "Split",
    "environment",
    "fingerprint",
    "accuracy",
    "evaluate_scenarios",
    "load_checkpoint",
    "prepare_data",
    "run_experiment",
    "save_checkpoint",
    "train_model",
]


@dataclass
class Split:
    """Images ``(N, 1, 28, 28)`` float32 in [0, 1] and labels ``(N,)`` int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Split:
        return self if not n or n >= len(self) else Split(self.images[:n], self.labels[:n])


def prepare_data(config: DataConfig, data_dir=None, cache_dir=None) -> dict[str, Split]:
    """ROTMNIST as ``{"train", "validation", "test"}`` splits (``validation`` may be empty)."""
    rot = load_rotmnist(data_dir=data_dir, cache_dir=cache_dir, seed=config.rotmnist_seed,
                        source=config.source)
    if config.validation:
        train_x, train_y, val_x, val_y = rot.train_validation_split(config.validation)
    else:
        train_x, train_y = rot.train_images, rot.train_labels
        val_x, val_y = rot.train_images[:0], rot.train_labels[:0]
    as_split = lambda x, y: Split(torch.as_tensor(x), torch.as_tensor(y))  # noqa: E731
    return {
        "train": as_split(train_x, train_y).head(config.train_subset),
        "validation": as_split(val_x, val_y),
        "test": as_split(rot.test_images, rot.test_labels).head(config.test_subset),
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("invalid config: train.device: 'cuda' requested but no GPU is available")
    return torch.device(name)


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Predicted classes ``(N,)`` for images ``(N, C, H, W)``, in evaluation mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(images[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def accuracy(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Fraction of correctly classified digits, in [0, 1]."""
    if len(split) == 0:
        raise ValueError("cannot measure accuracy on an empty split")
    return float((predict(model, split.images, batch_size) == split.labels).double().mean())


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def train_model(
    config: ExperimentConfig,
    data: dict[str, Split],
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train ``config.model`` on ``data["train"]`` with ``config.train``; returns (model, history).

    ``history`` holds one dict per epoch (loss, training accuracy of the epoch, validation
    accuracy where a validation split exists, seconds). Raises :class:`NonFiniteStateError`
    (or ``FloatingPointError`` for a non-finite loss) if training diverges.
    """
    train: TrainConfig = config.train
    device = resolve_device(train.device)
    torch.manual_seed(train.seed)
    model = build_model(config.model).to(device)
    generator = torch.Generator().manual_seed(train.seed)
    pde_layer = getattr(model, "pde_layer", None)
    pde_ids = {id(p) for p in pde_layer.parameters()} if pde_layer is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in pde_ids]}]
    if pde_ids:
        groups.append({"params": list(pde_layer.parameters()), "lr": train.lr * train.pde_lr_scale})
    optimizer = OPTIMIZERS.get(train.optimizer)(groups, train.lr, train.weight_decay)
    steps_per_epoch = math.ceil(len(data["train"]) / train.batch_size)
    scheduler = LR_SCHEDULES.get(train.lr_schedule)(optimizer, train.epochs * steps_per_epoch)
    validation = data.get("validation")
    has_validation = validation is not None and len(validation) > 0
    if train.select_on_validation and not has_validation:
        raise ConfigError("invalid config: train.select_on_validation needs data.validation > 0")
    images, labels = data["train"].images, data["train"].labels
    # On a GPU the epochs run in app/accelerate.py: the same batches and updates, with the data
    # on the device, the step as a CUDA graph and one host read per epoch.
    gpu = (accelerate.EpochRunner(model, optimizer, scheduler, images, labels, train.batch_size,
                                  train.grad_clip) if accelerate.applies_to(device) else None)
    history, best = [], (-1.0, None, -1)
    epochs = _progress(range(train.epochs), progress, desc=f"train {config.model.kind} "
                       f"h={config.model.hidden} seed={train.seed}", unit="epoch", leave=False)
    for epoch in epochs:
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        total_loss, correct = 0.0, 0
        for first in range(0, len(order), train.batch_size) if gpu is None else ():
            index = order[first:first + train.batch_size]
            x, y = images[index].to(device), labels[index].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += float(loss.detach()) * len(index)
            correct += int((logits.argmax(1) == y).sum())
        if gpu is not None:
            total_loss, correct = gpu.run_epoch(order, epoch)
        record = {"epoch": epoch + 1, "loss": total_loss / len(labels),
                  "train_accuracy": correct / len(labels),
                  "seconds": time.perf_counter() - start}
        if has_validation:
            record["validation_accuracy"] = accuracy(model, validation)
            if train.select_on_validation and record["validation_accuracy"] > best[0]:
                best = (record["validation_accuracy"], copy.deepcopy(model.state_dict()), epoch + 1)
        history.append(record)
        if progress and hasattr(epochs, "set_postfix"):
            epochs.set_postfix({k: round(v, 4) for k, v in record.items()
                                if k in ("loss", "validation_accuracy")})
        if log:
            log(json.dumps(record))
    if train.select_on_validation:
        model.load_state_dict(best[1])
        history.append({"selected_epoch": best[2], "validation_accuracy": best[0]})
    return model, history


def evaluate_scenarios(model: nn.Module, test: Split, scenarios: Iterable[str], seed: int,
                       batch_size: int = 1000) -> dict[str, float]:
    """Accuracy (in percent) on each scenario applied to ``test`` with draws seeded by ``seed``."""
    results = {}
    for name in scenarios:
        images = apply_scenario(name, test.images, seed=seed)
        results[name] = 100.0 * accuracy(model, Split(images, test.labels), batch_size)
    return results


# ----------------------------------------------------------------------------- provenance


def git_commit() -> str:
    """The commit of the source tree, with ``-dirty`` for uncommitted changes, or ``unknown``."""
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: Fields added after results were first recorded, with the behaviour from before they existed.
#: :func:`fingerprint` leaves a field out while it has that value, so a configuration recorded
#: before the field existed keeps its fingerprint (and its results folder stays resumable).
LATER_FIELDS: dict[tuple[str, ...], object] = {
    ("model", "layer", "backend"): "auto",
    ("model", "layer", "recompute"): False,
}


def fingerprint(config) -> str:
    """Short hash of a configuration (canonical JSON), independent of :data:`LATER_FIELDS` at
    their earlier behaviour. Works on an :class:`ExperimentConfig` or its dict."""
    data = copy.deepcopy(to_dict(config) if not isinstance(config, dict) else config)
    for path, value in LATER_FIELDS.items():
        node = data
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] == value:
            del node[path[-1]]
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def environment() -> dict:
    return {"eqpdenet": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(), "git": git_commit()}


def save_checkpoint(path: Path, model: nn.Module, config: ExperimentConfig, **extra) -> None:
    """``state_dict`` + full config + provenance, written atomically."""
    buffer = io.BytesIO()
    torch.save({"format": "eqpdenet-checkpoint-1", "config": to_dict(config),
                "state_dict": model.state_dict(), "environment": environment(), **extra}, buffer)
    atomic_write(Path(path), buffer.getvalue())


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[nn.Module, ExperimentConfig, dict]:
    """The model, its config and the checkpoint's other contents."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as error:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path} is not a readable eqpdenet checkpoint: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != "eqpdenet-checkpoint-1":
        raise CheckpointError(f"{path} is not an eqpdenet checkpoint (missing format tag)")
    config = from_dict(ExperimentConfig, payload["config"])
    model = build_model(config.model)
    model.load_state_dict(payload["state_dict"])
    return model.to(device), config, payload


# ----------------------------------------------------------------------------- runs


def run_experiment(config: ExperimentConfig, data: dict[str, Split], *, progress: bool = True,
                   checkpoint: Path | None = None) -> dict:
    """Train and evaluate one run; returns its JSON-ready result record."""
    record = {"model": config.model.kind, "hidden": config.model.hidden, "seed": config.train.seed,
              "config": to_dict(config), "environment": environment()}
    start = time.perf_counter()
    try:
        model, history = train_model(config, data, progress=progress)
    except (NonFiniteStateError, FloatingPointError) as error:
        record.update(status="diverged", error=str(error),
                      train_seconds=time.perf_counter() - start)
        return record
    record["train_seconds"] = time.perf_counter() - start
    record["params"] = count_parameters(model)
    record["history"] = history
    start = time.perf_counter()
    try:
        record["accuracy"] = evaluate_scenarios(model, data["test"], config.scenarios,
                                                seed=config.train.seed)
    except NonFiniteStateError as error:
        record.update(status="diverged", error=f"during evaluation: {error}")
        return record
    record["eval_seconds"] = time.perf_counter() - start
    if len(data.get("validation", ())):
        record["validation_accuracy"] = 100.0 * accuracy(model, data["validation"])
    record["status"] = "ok"
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, config, history=history, accuracy=record["accuracy"])
    return record
