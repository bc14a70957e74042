"""Training, evaluation and the paper's protocol (Tables 1 and 2), resumable and reproducible.

One *run* trains one model (EqPdeNet or FCNN, any hidden size and PDE configuration) with one
seed on ROTMNIST and evaluates it on scenarios (``test``, ``iso``, ``sca``), the scenario draws
seeded by the same seed. :func:`reproduce` runs the grid models x hidden sizes x seeds and appends
one JSON line per finished run to ``results.jsonl`` (atomically: the whole file is rewritten to a
temporary file and renamed, so a killed job never leaves a partial or duplicated line); a restart
skips the runs already there.

Determinism: the seed fixes parameter initialisation (``torch.manual_seed``), the mini-batch order
(a dedicated ``torch.Generator``) and the scenario draws; with the same thread count and backend
the same command gives the same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import multiprocessing
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from .config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    ReproduceConfig,
    TrainConfig,
    from_dict,
    to_dict,
    to_toml,
)
from .models import build_model, count_parameters
from .pde import NonFiniteStateError

__all__ = [
    "Split",
    "accuracy",
    "evaluate_scenarios",
    "load_checkpoint",
    "prepare_data",
    "reproduce",
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
    from .rotmnist import load_rotmnist

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
    if train.optimizer == "adam":
        optimizer = torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, lr=train.lr, momentum=0.9,
                                    weight_decay=train.weight_decay)
    steps_per_epoch = math.ceil(len(data["train"]) / train.batch_size)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, train.epochs * steps_per_epoch)
                 if train.lr_schedule == "cosine" else None)
    validation = data.get("validation")
    has_validation = validation is not None and len(validation) > 0
    if train.select_on_validation and not has_validation:
        raise ConfigError("invalid config: train.select_on_validation needs data.validation > 0")
    images, labels = data["train"].images, data["train"].labels
    history, best = [], (-1.0, None, -1)
    epochs = _progress(range(train.epochs), progress, desc=f"train {config.model.kind} "
                       f"h={config.model.hidden} seed={train.seed}", unit="epoch", leave=False)
    for epoch in epochs:
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        total_loss, correct = 0.0, 0
        for first in range(0, len(order), train.batch_size):
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
    from .scenarios import apply_scenario

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


def fingerprint(config) -> str:
    """Short hash of a configuration (as canonical JSON)."""
    text = json.dumps(to_dict(config) if not isinstance(config, dict) else config, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def environment() -> dict:
    return {"eqpdenet": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(), "git": git_commit()}


# ----------------------------------------------------------------------------- files


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results private
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file (empty if missing); a malformed line is a clear error."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
    return records


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record: the file is rewritten whole, atomically, so lines are never partial."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write(path, old + (json.dumps(record, sort_keys=True) + "\n").encode())


def save_checkpoint(path: Path, model: nn.Module, config: ExperimentConfig, **extra) -> None:
    """``state_dict`` + full config + provenance, written atomically."""
    import io

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
        raise ValueError(f"{path} is not a readable eqpdenet checkpoint: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != "eqpdenet-checkpoint-1":
        raise ValueError(f"{path} is not an eqpdenet checkpoint (missing format tag)")
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


def run_key(kind: str, hidden: int, seed: int) -> str:
    return f"{kind}-h{hidden}-seed{seed}"


def grid(config: ReproduceConfig) -> list[ExperimentConfig]:
    """Every run of the protocol: the base recipe with model kind, hidden size and seed set."""
    runs = []
    for hidden in config.hidden_sizes:
        for seed in config.seeds:
            for kind in config.models:
                run = copy.deepcopy(config.base)
                run.model.kind, run.model.hidden, run.train.seed = kind, hidden, seed
                runs.append(run)
    return runs


def _worker(args) -> dict:
    config_dict, data_dir, cache_dir, threads, checkpoint = args
    torch.set_num_threads(threads)
    config = from_dict(ExperimentConfig, config_dict)
    data = _cached_data(config.data, data_dir, cache_dir)
    return run_experiment(config, data, progress=False, checkpoint=checkpoint)


_DATA_CACHE: dict = {}


def _cached_data(config: DataConfig, data_dir, cache_dir) -> dict[str, Split]:
    key = (json.dumps(to_dict(config), sort_keys=True), str(data_dir), str(cache_dir))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = prepare_data(config, data_dir, cache_dir)
    return _DATA_CACHE[key]


def reproduce(config: ReproduceConfig, out_dir: Path, *, jobs: int = 1, data_dir=None,
              cache_dir=None, progress: bool = True, echo: Callable[[str], None] = print) -> Path:
    """Run every missing run of the protocol, appending results to ``out_dir/results.jsonl``.

    The base configuration is written to ``out_dir/config.toml``; a results file produced with a
    different base configuration is refused (use another ``out_dir``). Returns the results path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.jsonl"
    base_print = fingerprint(config.base)
    config_path = out_dir / "config.toml"
    if config_path.exists() and read_jsonl(results):
        existing = {r.get("base_fingerprint") for r in read_jsonl(results)}
        if existing != {base_print}:
            raise ConfigError(f"{results} holds runs of another configuration "
                              f"(fingerprints {sorted(map(str, existing))}, this one {base_print}); "
                              f"choose another output folder")
    atomic_write(config_path, to_toml(config).encode())
    done = {r["key"] for r in read_jsonl(results)}
    todo = [run for run in grid(config)
            if run_key(run.model.kind, run.model.hidden, run.train.seed) not in done]
    echo(f"reproduce: {len(done)} runs done, {len(todo)} to go -> {results}")
    if not todo:
        return results

    def finish(record: dict) -> None:
        record["key"] = run_key(record["model"], record["hidden"], record["seed"])
        record["base_fingerprint"] = base_print
        append_jsonl(results, record)
        if record["status"] == "ok":
            scores = "  ".join(f"{k} {v:5.2f}" for k, v in record["accuracy"].items())
            echo(f"{record['key']:>24}: {scores}  ({record['train_seconds']:.0f} s train, "
                 f"{record['eval_seconds']:.0f} s eval)")
        else:
            echo(f"{record['key']:>24}: {record['status']}: {record['error']}")

    def checkpoint_for(run: ExperimentConfig) -> Path | None:
        if run.train.seed not in config.checkpoint_seeds:
            return None
        return out_dir / "checkpoints" / f"{run_key(run.model.kind, run.model.hidden, run.train.seed)}.pt"

    bar = _progress(range(len(todo)), progress, desc="reproduce", unit="run")
    bar_update = getattr(bar, "update", lambda n: None)
    if jobs <= 1:
        data = _cached_data(config.base.data, data_dir, cache_dir)
        for run in todo:
            finish(run_experiment(run, data, progress=progress, checkpoint=checkpoint_for(run)))
            bar_update(1)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")  # fork + torch threads is unsafe
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = [pool.submit(_worker, (to_dict(run), data_dir, cache_dir, threads,
                                             checkpoint_for(run))) for run in todo]
            for future in as_completed(futures):
                finish(future.result())
                bar_update(1)
    if hasattr(bar, "close"):
        bar.close()
    return results
