"""Argument checks shared by the scripts of ``benchmarks/``: a bad argument is answered with one
line (``SCRIPT: error: ...``, exit 2, as argparse answers) before any long work starts, never a
traceback after minutes of measuring nor a table of ``inf``.

* :func:`positive_int` (and :func:`nonnegative_int`): ``type=`` of every count (rounds, repeats,
  steps, images, threads, batch sizes, seeds);
* :func:`finite_float`, :func:`nonnegative_float`, :func:`positive_float`: ``type=`` of every real number that
  must be finite (``nan`` and ``inf`` parse as floats: a timing loop waiting for
  ``elapsed >= nan`` never ends);
* :func:`power_of_two`: ``type=`` of a Triton block or warp count (``tl.arange`` and the
  launcher take powers of 2 only);
* :func:`available_device`: ``type=`` of ``--device``: what ``torch.device`` accepts, on a
  device this process can use;
* :func:`check_output`: an output file or folder that can be written (its nearest existing
  folder is a writable folder; the parent must exist where the script does not create it),
  checked before measuring;
* :func:`existing_files`: checkpoints and other inputs that must exist;
* :func:`run`: runs a script's ``main`` and turns the package's errors for bad input
  (:class:`~eqpdenet.errors.ConfigError`, :class:`~eqpdenet.errors.InputError`, a missing or
  unreadable file, ...) into one line and exit 2.

The scripts import it as ``from _args import ...`` (``python benchmarks/X.py`` puts this folder
on ``sys.path``).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from eqpdenet.errors import (
    CheckpointError,
    ConfigError,
    DataFileError,
    DownloadError,
    FolderLockedError,
    InputError,
    MissingDependencyError,
    OutputFolderError,
)

#: The errors that say the input (arguments, files, environment) is wrong, not the code.
INPUT_ERRORS = (ConfigError, InputError, CheckpointError, DataFileError, DownloadError,
                MissingDependencyError, OutputFolderError, FolderLockedError, FileNotFoundError)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def positive_int(text: str) -> int:
    """``type=`` of a count that must be at least 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """``type=`` of a number that must be at least 0 (a seed, a frame width)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """``type=`` of a finite number of either sign (an angle in degrees)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """``type=`` of a finite number that must be at least 0 (a minimum time per measurement)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """``type=`` of a finite number that must be above 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def power_of_two(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """``type=`` of a whole number that must be a power of 2 from ``low`` to ``high``."""
    def check(text: str) -> int:
        value = _int(text)
        if value < 1 or value & (value - 1) or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be a power of 2 {span}, got {value}")
        return value
    return check


def available_device(text: str):
    """``type=`` of ``--device``: a ``torch.device`` (``cpu``, ``cuda``, ``cuda:1``, ...) that
    this process can use; returns the device."""
    import torch  # here, not at the top: most scripts set OMP_WAIT_POLICY before torch loads

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda, cuda:N, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is visible to torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text}: torch sees {torch.cuda.device_count()} CUDA GPU(s) only")
        return device
    if device.type == "meta":  # tensors without data: nothing to measure
        raise argparse.ArgumentTypeError(f"{text}: holds no data, nothing can be run on it")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, AttributeError):  # a backend torch was built without
        raise argparse.ArgumentTypeError(f"{text}: not available in this torch") from None
    return device


def check_output(parser: argparse.ArgumentParser, option: str, path: Path | str | None, *,
                 folder: bool = False, create_parents: bool = True) -> None:
    """``parser.error`` unless ``path`` (``None``: nothing to check) can be written: a file
    (``folder=False``) or a folder; missing folders above it may be created only where the
    script creates them (``create_parents``), else the parent must exist."""
    if path is None:
        return
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            parser.error(f"{option} {path}: not a folder")
        if not folder and path.is_dir():
            parser.error(f"{option} {path}: a folder, not a file")
        if not os.access(path, os.W_OK):
            parser.error(f"{option} {path}: not writable")
        return
    parent = path.absolute().parent
    if not create_parents and not parent.is_dir():
        parser.error(f"{option} {path}: no such folder {parent}")
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        parser.error(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        parser.error(f"{option} {path}: folder {parent} is not writable")


def existing_files(parser: argparse.ArgumentParser, paths, what: str = "checkpoint") -> None:
    """``parser.error`` naming every path of ``paths`` that is not a file."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        parser.error(f"no such {what}: {', '.join(missing)}")


def checkpoint_fields(path) -> dict:
    """``{"checkpoint": path, "checkpoint_sha256": the file's SHA-256}``: the fields a script's
    record names its checkpoint by. A benchmark rerun (``--rerun-changed``) writes a new model
    under the same path and sets the old file aside, so the path alone cannot tell which model a
    record measured; the digest can (``sha256sum`` of the file, set aside or not)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"checkpoint": str(path), "checkpoint_sha256": digest.hexdigest()}


def run(main: Callable[[], int | None]) -> None:
    """``sys.exit(main())``, an error of :data:`INPUT_ERRORS` answered with one line, exit 2."""
    try:
        code = main()
    except INPUT_ERRORS as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
