"""Export a model to a file that runs without eqpdenet, and verify the file before keeping it.

Formats (:data:`FORMATS`):

``"onnx"``
    An ONNX model (opset :data:`ONNX_OPSET`, IR version 8: the lowest that carries it; input
    ``images`` ``(batch, C, H, W)`` float32, output ``logits`` ``(batch, classes)``), written
    by PyTorch's ONNX exporter from the :class:`torch.export.ExportedProgram` below and run by
    onnxruntime (1.15.1 and newer read it: docs/deployment.md). Needs the optional ``export``
    extra: ``pip install 'eqpdenet[export]'`` (onnx, onnxscript, onnxruntime).
``"exported-program"``
    The :class:`torch.export.ExportedProgram` itself (:func:`torch.export.save`, usually
    ``.pt2``), run by ``torch.export.load(path).module()``: PyTorch alone, no eqpdenet.

How a model is traced (:func:`trace`): the module its family gives for export
(``model.export_module()`` where the family defines one, e.g. the G-CNN's plain-PyTorch copy
made by e2cnn's own ``export()``; else the model itself), in evaluation mode, by
:func:`torch.export.export` with a batch axis of any size, inside
:func:`~eqpdenet.checks.export_mode`. There the fused operators take their plain PyTorch
reference path (:func:`~eqpdenet.kernels.resolve_backend`) and no check reads a value on the
host, so the graph holds only standard PyTorch operators (the Euler steps unrolled: a fixed
number of them); a graph that still calls a custom operator (``torch.ops.eqpdenet.*``, which
no other runtime knows) is refused with an :class:`~eqpdenet.errors.ExportError`.

Only a float32 model is exported (its floating-point parameters; the file's input is float32):
any other is refused before any work.

Running a file: :func:`load_exported` checks the file when it loads it and returns an
:class:`ExportedModel`, which checks its images as the models do (a tensor, of the file's
channels and size, finite as float32), runs them as float32 (float64 images converted, as
:func:`export_model` converts those it verifies on) and checks the logits (non-finite ones are
an :class:`~eqpdenet.errors.InputError`: the graph has no value checks); the verification runs
the same runner and judges the logits itself.

Verification is part of :func:`export_model`: the file is written to a temporary sibling (locked
by the export until it is renamed or deleted; one a killed export left is removed by the next
export to the same path), loaded
with the runtime it targets (:func:`load_exported`), run on the given images (in batches of
:data:`VERIFY_BATCH`, and the first image alone) and compared with the model's own logits in
PyTorch (its default backend: the C++ kernel where it applies); for a model that claims
invariance under quarter turns (``model.quarter_turn_invariant``) the exported model is run on
the images turned by 90, 180 and 270 degrees as well. Differences are relative to the largest
logit of the batch: ``max |exported - pytorch| / max |pytorch|``. Only a file that passes
(within ``tolerance``, default :data:`DEFAULT_TOLERANCE`, or within twice PyTorch's own float32
rounding of the model up to :data:`ROUNDING_CEILING`: :func:`export_model`) and whose top-1
classes are PyTorch's (but at ties within float32 rounding) replaces ``out``; otherwise the
temporary file is deleted and an :class:`~eqpdenet.errors.ExportError` names the difference.
``out`` is never half-written; where it is a symbolic link, the file it leads to is replaced
and the link kept.

Example:
    >>> from eqpdenet.models import FCNN
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "fcnn.pt2"
    >>> report = export_model(FCNN(hidden=8), out, "exported-program", images=torch.rand(4, 1, 28, 28))
    >>> report.relative_difference <= DEFAULT_TOLERANCE, out.exists()
    (True, True)
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import math
import os
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .checks import check_images, check_values, evaluation_mode, export_mode
from .errors import (
    ConfigError,
    DataFileError,
    ExportError,
    InputError,
    InputRangeWarning,
    InputTypeError,
    MissingDependencyError,
    OutputFolderError,
    warn_at_caller,
)
from .files import (
    STALE_AGE,
    STALE_GRACE,
    link_target,
    remove_stale_beside,
    temporary_beside,
    write_cause,
)
from .process_state import EXPORT_LOCK, quiet_warnings
from .registry import Registry

__all__ = [
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "ONNX_OPSET",
    "ROUNDING_CEILING",
    "VERIFY_BATCH",
    "ExportFormat",
    "ExportReport",
    "ExportedModel",
    "check_export",
    "export_model",
    "load_exported",
    "portable_module",
    "trace",
    "unwrapped",
]

#: The largest accepted ``max |exported - pytorch| / max |pytorch|`` (and the same for the
#: quarter-turn invariance of the exported model), the issue's target.
DEFAULT_TOLERANCE = 1e-5
#: The largest bound the model's own float32 rounding raises the tolerance to (the raise is
#: ``2 float32_noise``: :func:`export_model`). Above it the model is ill-conditioned in float32 at
#: its weights, and a bound that large no longer tells a wrong export from rounding: a probe's
#: EqPdeNet (sim2, ratio_eps 1e-3, perturbed weights) had 2 noise about 1 and kept an export whose
#: logits were 1.3 times the model's. The committed checkpoints raise to at most 3.7e-5
#: (InvariantPDENet; the others ~1e-7 and need no raise), and ratio_eps 0.1 gave 1.6e-4: 1e-3 (100
#: times the default tolerance) leaves them 6 to 27 times room, and keeps the logits to 3 digits
#: of the largest. An explicit larger ``tolerance`` is the user's own bound and is not capped.
ROUNDING_CEILING = 1e-3
#: The ONNX opset written: 18 is the oldest the PyTorch exporter writes, so the widest choice of
#: runtimes can read the file. The exporter stamps the IR version of the onnx package installed
#: (10 with onnx >= 1.16), which onnxruntime < 1.18 refuses ("Unsupported model IR version: 10,
#: max supported IR version: 9") although nothing in the file needs it; the file is stamped with
#: the lowest IR version that carries opset 18 instead (8: :func:`_lowest_ir_version`), and the
#: verification runs that file. Read by onnxruntime 1.15.1, 1.17.3 and 1.20.1 (docs/deployment.md).
ONNX_OPSET = 18
#: Images per call of the verification (the logits of a batch of any size are computed in
#: chunks of this many: memory stays bounded for large models and 1,000 images).
VERIFY_BATCH = 100
#: The operator namespaces every runtime knows (PyTorch's own); any other is a custom operator.
STANDARD_NAMESPACES = ("aten", "prims")
#: The ending of the temporary file an export writes and verifies beside ``out``
#: (``.<name>.XXXXXXXX.tmp``); one a killed export left is removed by the next, after
#: :data:`~eqpdenet.files.STALE_GRACE` seconds untouched with its lock free
#: (:data:`~eqpdenet.files.STALE_AGE` where locks cannot be tested).
STAGING_SUFFIX = ".tmp"
#: ``(low, high)``: images of an exported model with values beyond these warn once
#: (:class:`~eqpdenet.errors.InputRangeWarning`): eqpdenet trains on pixels in [0, 1] (its data
#: sets and files), and values that far outside are the 0-255 pixels of a missing ``x / 255`` (the
#: models' own warning names that cause from the same bounds). A file does not record the range
#: its model was trained on, so this is a fixed guess, not the model's standardisation.
PIXEL_RANGE_SLACK = (-0.5, 1.5)

Runner = Callable[[Tensor], Tensor]
#: ``(C, H, W)`` of an exported file's input, each None where the file leaves it free.
InputShape = tuple[int | None, int | None, int | None]


@dataclass(frozen=True)
class ExportFormat:
    """One file format: how to write a traced model and how to run the file.

    Attributes:
        name: the format's name (``--format``).
        suffix: the file name's usual ending.
        runtime: what runs the file, in words.
        requires: modules that must be importable to write the file (optional dependencies),
            checked first.
        write: ``write(exported_program, path)``.
        load: ``load(path) -> (run, input_shape)``: ``run(images) -> logits`` on float32 CPU
            tensors, checked already (:class:`ExportedModel` wraps it), and the ``(C, H, W)`` of
            the file's input (None where free); a file that is not of the format is a
            :class:`~eqpdenet.errors.DataFileError` naming it.
    """

    name: str
    suffix: str
    runtime: str
    requires: tuple[str, ...]
    write: Callable[[torch.export.ExportedProgram, Path], None]
    load: Callable[[Path], tuple[Runner, InputShape]]
    #: modules that must be importable to run the file (None: ``requires``)
    runs_with: tuple[str, ...] | None = None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """A call into torch's exporters (``torch.export``, ``torch.onnx``): one at a time in the
    process (:data:`~eqpdenet.process_state.EXPORT_LOCK`: they are not thread-safe, two at once
    failed with "Trying to pop empty mode stack"), their log lines below errors and their
    warnings (about optional packages this project does not use: torchvision) not shown: the
    command reports what it does itself. ``sys.stdout`` is left alone (``verbose=False`` keeps
    the ONNX exporter's progress lines off it): a redirection would swallow every other
    thread's prints meanwhile. Logger levels and warning filters belong to the process; under
    the lock the changes of two exports nest, and they are restored after."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export",
                                                    "torch.fx.experimental.symbolic_shapes")]
    with EXPORT_LOCK:
        levels = [logger.level for logger in loggers]
        try:
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            # every category: which warnings an exporter gives changes with each torch release
            with quiet_warnings():
                yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _lowest_ir_version(model) -> int | None:
    """The lowest ONNX IR version that carries the opsets ``model`` (an ``onnx_ir`` model)
    imports, by onnx's own table of releases (``onnx.helper.VERSION_TABLE``); None where it
    imports more than the standard domain or defines functions (then its stamp is kept)."""
    import onnx.helper

    opsets = dict(model.opset_imports)
    if set(opsets) - {"", "ai.onnx"} or len(model.functions):
        return None
    opset = max(opsets.values(), default=ONNX_OPSET)
    return min((row[1] for row in onnx.helper.VERSION_TABLE if row[2] >= opset), default=None)


def _write_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    # optimize=False: onnxscript's optimizer (0.7) rewrites x + c as x for every |c| < 1e-8, so
    # it deletes the guard of the covariant ratio (2^-63 in float32) and 0 / 0 gives NaN on
    # flat image regions; onnxruntime optimises the graph itself when it loads it, exactly.
    with _quiet():
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=ONNX_OPSET,
                                         input_names=["images"], output_names=["logits"],
                                         optimize=False, verbose=False)
        for node in onnx_program.model.graph.all_nodes():
            # keep which module a node comes from; drop the exporter's stack traces (paths of
            # this machine) and FX dumps, three quarters of the file
            for key in [k for k in node.metadata_props if k != "namespace"]:
                del node.metadata_props[key]
        lowest = _lowest_ir_version(onnx_program.model)
        if lowest is not None and lowest < onnx_program.model.ir_version:
            onnx_program.model.ir_version = lowest
        onnx_program.save(path, external_data=False)


def _first_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message, after its type."""
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first.strip()}" if first else type(error).__name__


def _known(dims) -> InputShape:
    """``(C, H, W)`` of an input's ``(batch, C, H, W)``, each an int or None where not fixed."""
    dims = list(dims)
    if len(dims) != 4:
        return (None, None, None)
    return tuple(int(d) if isinstance(d, int) and not isinstance(d, bool) else None
                 for d in dims[1:])


def _load_onnx(path: Path) -> tuple[Runner, InputShape]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own classes (InvalidProtobuf, ...)
        raise DataFileError(path, f"not an ONNX model onnxruntime can load "
                                  f"({_first_line(error)})") from None
    spec = session.get_inputs()[0]
    name = spec.name

    def run(images: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: images.numpy()})[0])

    return run, _known(spec.shape)


def _write_program(program: torch.export.ExportedProgram, path: Path) -> None:
    for node in program.graph.nodes:  # stack traces name paths of this machine
        node.meta.pop("stack_trace", None)
    # Into memory, then one ordinary write: torch's zip writer, failing on a full disk or past
    # the file size limit, raised and then threw again from its destructor, which aborted the
    # process (exit 134, a C++ stack dump, no word of the disk).
    buffer = io.BytesIO()
    with _quiet():
        torch.export.save(program, buffer)
    Path(path).write_bytes(buffer.getbuffer())


@contextlib.contextmanager
def _logged_errors(name: str, into: list[BaseException]) -> Iterator[None]:
    """The exceptions logger ``name`` logs (``exc_info``) at warnings and above appended to
    ``into``, and its records dropped (a filter on the logger: torch's loggers have stream
    handlers of their own); its level lowered to warnings for that, which its child loggers
    inherit, so the handlers the records reach show errors only meanwhile, as :func:`_quiet`
    does. Inside :func:`_quiet` (under its lock: loggers belong to the process); restored
    after."""
    logger = logging.getLogger(name)

    def keep(record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            into.append(record.exc_info[1])
        return False

    def errors_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    handlers, current = [], logger
    while current is not None:  # where a child's records go: up the loggers they propagate to
        handlers += current.handlers
        current = current.parent if current.propagate else None
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addFilter(keep)
    for handler in handlers:
        handler.addFilter(errors_only)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(errors_only)
        logger.removeFilter(keep)
        logger.setLevel(level)


def _first_sentence(error: BaseException) -> str:
    """:func:`_first_line` of ``error`` up to the end of its first sentence (torch's reader
    follows the cause with a paragraph of advice), a C++ check's location kept with its cause
    (``[enforce fail at inline_container.cc:171] . archive does not contain any files``: the
    ``". "`` after the location ends no sentence, and cutting there lost the cause)."""
    line = _first_line(error)
    located = line.find("] . ") if "[enforce fail at " in line else -1
    end = line.find(". ", located + 4 if located >= 0 else 0)
    return line if end < 0 else line[:end]


def _load_program(path: Path) -> tuple[Runner, InputShape]:
    if not zipfile.is_zipfile(path):
        raise DataFileError(path, "not an exported program: a .pt2 file (torch.export.save) is a "
                                  "zip archive and this one is not (an ONNX file is named .onnx)")
    causes: list[BaseException] = []
    try:
        with _quiet(), _logged_errors("torch.export", causes):
            program = torch.export.load(path)
    except Exception as error:
        # torch logs the real cause as a warning ("Ran into the following error when
        # deserializing", hidden by _quiet) and raises "Please check the warnings above"
        cause = _first_sentence(causes[-1] if causes else error)
        raise DataFileError(path, f"not an exported program torch.export.load can read: "
                                  f"damaged, or not written by torch.export.save ({cause})"
                            ) from None
    module = program.module()
    inputs = [node for node in program.graph.nodes
              if node.op == "placeholder" and node.name in program.graph_signature.user_inputs]
    value = inputs[0].meta.get("val") if len(inputs) == 1 else None
    shape = _known(value.shape) if value is not None else (None, None, None)

    def run(images: Tensor) -> Tensor:
        with torch.no_grad():
            return module(images)

    return run, shape


def _as_float32(images: Tensor) -> tuple[Tensor, tuple[float, float]]:
    """``images`` as an exported file takes them (float32, contiguous, on the CPU, detached),
    with their ``(min, max)``; an :class:`~eqpdenet.errors.InputError` where they hold NaN or
    inf, checked after the conversion: float64 values beyond float32's range (finite in float64)
    become inf in it, and before round 18 passed the check made before converting."""
    converted = images.detach().to("cpu", torch.float32).contiguous()
    try:
        return converted, check_values(converted, "images")
    except InputError:
        if images.dtype == torch.float32 or not bool(torch.isfinite(images).all()):
            raise
    largest = float(images.detach().abs().max())
    overflowed = int((~torch.isfinite(converted)).sum())
    raise InputError(f"images contains {overflowed} of {images.numel()} values beyond float32's "
                     f"range (the largest magnitude {largest:.4g}; float32's largest is "
                     f"{torch.finfo(torch.float32).max:.4g}), which become inf in the float32 an "
                     f"exported file computes in: the input is at fault; check how it was "
                     f"produced")


class ExportedModel:
    """An exported file, loaded: ``model(images) -> logits`` (:func:`load_exported`).

    ``images`` go through the checks the models make at their entry, each one line naming
    ``images``: a ``torch.Tensor`` (a NumPy array is refused: ``torch.from_numpy(array)``
    converts it), floating-point, ``(batch, C, H, W)`` with the channels and size of the file's
    input (:attr:`input_shape`), no NaN or inf in float32 (an exported graph has no value checks
    of its own: docs/deployment.md). They are then run as float32 on the CPU: the file's input is
    float32, so float64 images are converted to float32 as :func:`export_model` converts those
    it verifies on (float16 and bfloat16 convert exactly), before the check (float64 values
    beyond float32's range are refused). Images with values beyond :data:`PIXEL_RANGE_SLACK`
    warn once per loaded file (:class:`~eqpdenet.errors.InputRangeWarning`: 0-255 pixels?).
    The logits are a float32 CPU tensor ``(batch, classes)``, detached from any graph, and
    finite: where any image's are NaN or inf (a state of the model that overflowed, where the
    model in eqpdenet raises :class:`~eqpdenet.errors.NonFiniteStateError`), an
    :class:`~eqpdenet.errors.InputError` names how many and the images' range.

    Attributes:
        path: the file.
        format: its format (:data:`FORMATS`).
        input_shape: ``(C, H, W)`` of the file's input, each None where the file leaves it free.
    """

    def __init__(self, path: Path, format: str, run: Runner, input_shape: InputShape):
        self.path, self.format, self._run, self.input_shape = path, format, run, input_shape
        self._range_warned = False

    def __call__(self, images: Tensor) -> Tensor:
        images, (low, high) = self._checked(images)
        if not self._range_warned and (high > PIXEL_RANGE_SLACK[1] or low < PIXEL_RANGE_SLACK[0]):
            self._range_warned = True
            cause = ("images at 0-255 instead of 0-1?" if high > PIXEL_RANGE_SLACK[1] else
                     "images standardised already? the file standardises them itself")
            warn_at_caller(f"eqpdenet: images with values in [{low:.4g}, {high:.4g}] given to the "
                           f"exported model {self.path}: eqpdenet trains on pixels in [0, 1] "
                           f"(x / 255; the file does not record its own range): {cause} (warned "
                           f"once per loaded file)", InputRangeWarning)
        logits = self._run(images)
        bad = ~torch.isfinite(logits)
        if bool(bad.any()):
            # the graph has no value checks (a state of a PDE overflowing is the model's
            # NonFiniteStateError in eqpdenet): NaN logits argmax to class 0 without a word
            rows = int(bad.flatten(1).any(1).sum())
            raise InputError(f"the exported model {self.path} gave non-finite logits (NaN or inf) "
                             f"on {rows} of {len(images)} images, finite ones with values in "
                             f"[{low:.4g}, {high:.4g}]: the likely cause is their range (the "
                             f"file's verification gave finite logits on test images; eqpdenet's "
                             f"models train on pixels in [0, 1], x / 255, and the file does not "
                             f"record its own range)")
        return logits

    def _checked(self, images: Tensor) -> tuple[Tensor, tuple[float, float]]:
        """``images`` checked (type, shape, finite as float32) and as the file's input: a float32
        contiguous CPU tensor, detached; with its ``(min, max)``."""
        if not isinstance(images, Tensor):
            hint = " (torch.from_numpy(images) converts a NumPy array)" \
                if type(images).__module__ == "numpy" else ""
            raise InputTypeError(f"images must be a torch.Tensor, got "
                                 f"{type(images).__name__}{hint}")
        channels, height, width = self.input_shape
        check_images(images, "images", channels=channels,
                     size=(height, width) if None not in (height, width) else None)
        return _as_float32(images)

    def _unchecked_logits(self, images: Tensor) -> Tensor:
        """The logits of ``images`` (checked as by ``__call__``), whatever their values: the
        verification of :func:`export_model` names a file giving non-finite logits itself."""
        return self._run(self._checked(images)[0])

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.path)!r}, format={self.format!r}, input_shape={self.input_shape})"


#: Export formats: name -> :class:`ExportFormat`.
FORMATS: Registry[ExportFormat] = Registry("export format")
FORMATS.register("onnx", ExportFormat("onnx", ".onnx", "onnxruntime",
                                      ("onnx", "onnxscript", "onnxruntime"), _write_onnx, _load_onnx,
                                      runs_with=("onnxruntime",)))
FORMATS.register("exported-program", ExportFormat(
    "exported-program", ".pt2", "torch.export.load", (), _write_program, _load_program))


# ----------------------------------------------------------------------------- before any work


def _article(word: str) -> str:
    """``"an"`` before a vowel, else ``"a"``."""
    return "an" if word[:1] in tuple("aeiou") else "a"


def _not_a_file(path: Path) -> str | None:
    """What ``path`` is in words where it exists and is neither a regular file nor a folder
    (a FIFO, a device, a socket); None otherwise (a folder is refused with its own message)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing (a new file), or unreadable: the write probe names that
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, words in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "a special file"


def check_export(format: str, out: str | os.PathLike) -> ExportFormat:
    """The format named ``format``, after the checks that need no model: the format is known,
    its optional dependencies are installed, ``out`` can be written (its folder exists and takes
    a new file; ``out`` is not a folder, nor an existing FIFO, device or socket; where ``out`` is
    a symbolic link, the same of the file it leads to, whose suffix is the format's too).
    Raises :class:`~eqpdenet.errors.ConfigError`,
    :class:`~eqpdenet.errors.MissingDependencyError` or
    :class:`~eqpdenet.errors.OutputFolderError`, one line each; writes nothing."""
    if not isinstance(format, str) or format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; known: {', '.join(FORMATS.names())}")
    chosen = FORMATS.get(format)
    missing = [name for name in chosen.requires if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(
            f"the {format} format needs {', '.join(missing)} (optional dependencies): "
            f"pip install 'eqpdenet[export]'")
    out = Path(out)
    if out.is_dir():
        raise OutputFolderError(f"cannot write {out}: it is a folder; give a file name "
                                f"(e.g. {out / ('model' + chosen.suffix)})")
    if out.suffix != chosen.suffix:
        # load_exported and the runtimes go by the suffix: an ONNX file named .pt2 would be
        # read as an exported program and fail ("BadZipFile"), a program without .pt2 warns
        raise ConfigError(f"--out {out}: {_article(format)} {format} file is named *{chosen.suffix} (it is "
                          f"read back by its suffix); e.g. {out.with_suffix(chosen.suffix)}")
    try:
        target = link_target(out)
    except OSError as error:
        raise OutputFolderError(f"cannot write {out}: {error.strerror or error}") from None
    if target.suffix != chosen.suffix:
        # the file written is the target, read back by its own name (round 18: an ONNX file
        # was written into the .pt2 a link named .onnx led to)
        raise ConfigError(f"--out {out} is a symbolic link to {target}, the file that would be "
                          f"written, and {_article(format)} {format} file is named "
                          f"*{chosen.suffix} (it is read back by its suffix)")
    kind = _not_a_file(target)
    if kind is not None:
        # replacing it would put a file where a pipe or a device was (a probe's link to
        # /dev/full replaced the device node)
        what = "it" if target == out else f"{target}, the file the link leads to,"
        raise OutputFolderError(f"cannot write {out}: {what} is {kind}, not a file; give the "
                                f"path of a file")
    folder = target.parent
    if not folder.is_dir():
        # the nearest path above that exists: a file there is the cause, not a missing folder
        blocking = next((above for above in (folder, *folder.parents) if os.path.lexists(above)),
                        None)
        if blocking is not None and not blocking.is_dir():
            raise OutputFolderError(f"cannot write {out}: {blocking} is a file, not a folder")
        raise OutputFolderError(f"cannot write {out}: the folder {folder} does not exist")
    try:  # the only sure test of writing is to write (permissions, read-only file systems)
        handle, probe = temporary_beside(target, STAGING_SUFFIX)
    except OSError as error:
        raise OutputFolderError(f"cannot write {out}: {error.strerror or error}") from None
    os.close(handle)
    probe.unlink(missing_ok=True)
    return chosen


# ----------------------------------------------------------------------------- tracing


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s and the data-parallel wrappers (``_orig_mod``,
    ``module``), which compute its logits: a wrapper's ``forward(*args)`` did not take the
    trace's dynamic batch axis (a torch-internal "mismatch between the structure of inputs and
    dynamic_shapes")."""
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, parallel):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(
                getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def portable_module(model: nn.Module) -> nn.Module:
    """The module an exporter traces for ``model``: ``model.export_module()`` where its family
    defines one (plain PyTorch modules computing the same logits), else ``model``."""
    make = getattr(model, "export_module", None)
    return make() if callable(make) else model


def _foreign_operators(program: torch.export.ExportedProgram) -> list[str]:
    found = set()
    for node in program.graph.nodes:
        target = node.target
        namespace = getattr(target, "namespace", None)  # OpOverload / OpOverloadPacket
        if node.op == "call_function" and namespace and namespace not in STANDARD_NAMESPACES:
            found.add(f"{namespace}::{target._opname if hasattr(target, '_opname') else target}")
    return sorted(found)


def trace(model: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """``model`` as an :class:`~torch.export.ExportedProgram` of standard PyTorch operators, in
    evaluation mode, the batch axis of its input dynamic (``example``: a batch of at least two
    inputs of the right shape). Raises :class:`~eqpdenet.errors.ExportError` naming the family
    and the cause where it cannot be traced or the graph calls a custom operator, and the
    model's own :class:`~eqpdenet.errors.InputError` as it is where it refuses ``example``."""
    _check_model(model)
    model = unwrapped(model)
    family = type(model).__name__
    check_images(example, "example")
    if len(example) < 2:  # a batch of 1 would be traced as a constant size
        example = example.expand(2, *example.shape[1:])
    # a copy: the program keeps its example, and a view would keep the whole batch it is cut from
    example = example.detach().clone(memory_format=torch.contiguous_format)
    try:
        with evaluation_mode(model):
            module = portable_module(model).eval()
            with export_mode():
                with torch.no_grad():
                    # one eager pass first, on the path the trace takes (the reference, inside
                    # export_mode): constants a module computes once and caches (the anti-aliased
                    # downsampling's matrices, the orientations' cos and sin of every stage) are
                    # built here as real tensors and enter the graph as constants, not as the
                    # float64 operations that build them (onnxruntime has no float64 Conv); the
                    # fused path, outside export_mode, left those of the reference unbuilt, and
                    # the trace built them as fake tensors
                    module(example)
                with _quiet():
                    program = torch.export.export(module, (example,),
                                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    except (ExportError, MissingDependencyError, InputError):
        # InputError: the model refused the example (images of another shape than it was built
        # for): the user's input, named by the model's own check, not a family that cannot export
        raise
    except Exception as error:
        first = next((line for line in str(error).splitlines() if line.strip()), "")
        raise ExportError(f"{family} cannot be exported: torch.export failed with "
                          f"{type(error).__name__}: {first.strip()} (docs/deployment.md: what a "
                          f"family needs to export)") from None
    foreign = _foreign_operators(program)
    if foreign:
        raise ExportError(
            f"{family} cannot be exported: its graph calls {', '.join(foreign)}, which no runtime "
            f"but eqpdenet knows; a fused operator must give way to its reference path while "
            f"eqpdenet.checks.exporting() (kernels.resolve_backend does; docs/deployment.md)")
    return program


# ----------------------------------------------------------------------------- export + verify


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and measured (differences relative to the largest
    logit of the batch; see the module docstring).

    Attributes:
        path, format, family: the file, its format and the model's class.
        images: how many images the verification ran.
        max_difference: ``max |exported - pytorch|`` over those logits (float32).
        relative_difference: ``max_difference / max |pytorch|``.
        quarter_turn_error: for a model claiming quarter-turn invariance,
            ``max_k max |exported(rot90^k x) - exported(x)| / max |exported(x)|``; else None.
        float32_noise: where a check exceeded the tolerance: the float32 rounding of the
            model itself, ``max |pytorch - pytorch in float64| / max |pytorch in float64|``
            over the images (and their quarter turns, for an invariant model); else None.
        tolerance: the bound of the checks.
        seconds: wall-clock time of ``trace``, ``write`` and ``verify``.
        top1_ties: images whose top-1 class in the file is not PyTorch's, each at a tie within
            float32 rounding (:func:`export_model`), so accepted; the first image run alone (the
            batch of one) counts as one more.
    """

    path: Path
    format: str
    family: str
    images: int
    max_difference: float
    relative_difference: float
    quarter_turn_error: float | None
    tolerance: float
    seconds: dict
    float32_noise: float | None = None
    top1_ties: int = 0

    @property
    def bound(self) -> float:
        """What both differences were held to:
        ``max(tolerance, min(2 float32_noise, ROUNDING_CEILING))``."""
        return max(self.tolerance, min(2 * (self.float32_noise or 0.0), ROUNDING_CEILING))

    @property
    def ill_conditioned(self) -> bool:
        """Whether the raise the model's float32 rounding asks for, ``2 float32_noise``, is above
        both the tolerance and :data:`ROUNDING_CEILING` (then capped there)."""
        return 2 * (self.float32_noise or 0.0) > max(self.tolerance, ROUNDING_CEILING)

    def summary(self) -> str:
        """One line for the command line."""
        line = (f"{self.family} -> {self.path} ({self.format}, {self.path.stat().st_size:,} "
                f"bytes): largest logit difference to PyTorch {self.max_difference:.1e} "
                f"({self.relative_difference:.1e} relative) on {self.images} images")
        if self.quarter_turn_error is not None:
            line += (f"; quarter-turn invariance of the exported model "
                     f"{self.quarter_turn_error:.1e}")
        line += f"; tolerance {self.tolerance:g}"
        if self.float32_noise is not None and self.ill_conditioned:
            line += (f", raised to {self.bound:.1e}, the ceiling of the raise: twice the float32 "
                     f"rounding of the model in PyTorch itself ({self.float32_noise:.1e} from "
                     f"its float64 logits) is above it")
        elif self.float32_noise is not None:
            line += (f", raised to {self.bound:.1e}: twice the float32 rounding of the model "
                     f"in PyTorch itself ({self.float32_noise:.1e} from its float64 logits)")
        if self.top1_ties:
            line += (f"; top-1 class as PyTorch's but at {self.top1_ties} ties within float32 "
                     f"rounding")
        return line


def _relative(difference: float, scale: float) -> float:
    return difference / scale if scale > 0 else (0.0 if difference == 0 else math.inf)


def _largest(*differences: Tensor) -> float:
    """The largest ``|difference|``; inf where any is NaN (Python's ``max`` drops a NaN that does
    not come first: a runtime's NaN logits at a batch of one passed as a difference of 0)."""
    values = [float(d.abs().max()) for d in differences]
    return math.inf if any(math.isnan(value) for value in values) else max(values)


def _chunked(run: Runner, images: Tensor) -> Tensor:
    """``run`` on ``images`` in chunks of :data:`VERIFY_BATCH`, the logits concatenated."""
    return torch.cat([run(images[i:i + VERIFY_BATCH].contiguous())
                      for i in range(0, len(images), VERIFY_BATCH)])


def _turn_error(run: Runner, images: Tensor, logits: Tensor) -> float:
    scale = float(logits.abs().max())
    return max(_relative(_largest(_chunked(run, torch.rot90(images, k, (-2, -1))) - logits),
                         scale) for k in (1, 2, 3))  # never NaN: _largest makes one inf


def _float32_rounding(model: nn.Module, images: Tensor, turns: bool
                      ) -> tuple[float, Tensor] | None:
    """How far ``model``'s float32 logits are from those of its float64 copy, relative to the
    largest, over ``images`` (and their quarter turns where ``turns``), and the float64 logits
    of ``images`` themselves; None where the model cannot compute in float64 (a family that
    supports float32 only)."""
    try:
        exact_model = copy.deepcopy(model).double().eval()
        noise, unturned = 0.0, None
        with evaluation_mode(model), torch.no_grad():
            for k in (0, 1, 2, 3) if turns else (0,):
                turned = torch.rot90(images, k, (-2, -1)).contiguous()
                exact = _chunked(exact_model, turned.double())
                unturned = exact if k == 0 else unturned
                noise = max(noise, _relative(_largest(_chunked(model, turned).double() - exact),
                                             float(exact.abs().max())))
        return noise, unturned
    except Exception:
        return None


def _float32_noise(model: nn.Module, images: Tensor, turns: bool) -> float | None:
    """The first of :func:`_float32_rounding`: the model's float32 rounding, relative."""
    rounding = _float32_rounding(model, images, turns)
    return None if rounding is None else rounding[0]


def _top1_disagreements(expected: Tensor, exported: Tensor, exact: Tensor | None
                        ) -> tuple[Tensor, Tensor]:
    """The rows where ``exported``'s top-1 class is not ``expected``'s (PyTorch's float32
    logits): ``(ties, real)``, index tensors. A tie within float32 rounding (given the float64
    logits ``exact``) is a row where the exported class's float64 logit is at most twice the
    row's float32 rounding ``max |expected - exact|`` below the float64 maximum: an
    implementation that rounds as much may order the two either way. Whatever PyTorch's own
    float32 top-1 is: a row where float32 and float64 disagree excused any class the file
    picked before round 17. Without ``exact`` (no float64 copy of the model) no row is a tie."""
    ours, theirs = expected.argmax(1), exported.argmax(1)
    rows = torch.nonzero(ours != theirs).flatten()
    if exact is None or len(rows) == 0:
        return rows[:0], rows
    exact = exact[rows]
    rounding = (expected[rows].double() - exact).abs().amax(1)
    gap = exact.amax(1) - exact.gather(1, theirs[rows, None])[:, 0]
    tie = gap <= 2 * rounding
    return rows[tie], rows[~tie]


def _round_up(value: float) -> str:
    """``value`` rounded up to two significant digits, as written (``3.9e-01`` for 0.384);
    a value that is not finite as Python writes it."""
    if not math.isfinite(value):
        return f"{value}"
    text = f"{value:.1e}"
    mantissa, exponent = text.split("e")
    while float(text) < value:  # rounded down: the next step of the second digit
        mantissa = f"{float(mantissa) + 0.1:.1f}"
        text = f"{mantissa}e{exponent}"
    return text


def _check_model(model) -> None:
    """A :class:`~eqpdenet.errors.ConfigError` unless ``model`` is an ``nn.Module`` (a family's
    name, ``"fcnn"``, is not a model: ``build_model("fcnn")`` or a checkpoint builds one)."""
    if not isinstance(model, nn.Module):
        if isinstance(model, str):
            raise ConfigError(f"model must be a torch.nn.Module, got the string {model!r}: "
                              f"eqpdenet.models.build_model({model!r}) builds one of a family")
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_float32(model: nn.Module) -> None:
    """Refuse a model whose floating-point parameters are not all float32, before any work:
    the file's input is float32 (docs/deployment.md), and a float64 model traced as it is gave
    a float64 input (FCNN) or a file onnxruntime cannot run (a float64 Conv), found only after
    tracing and writing. Buffers are not checked: families keep float64 constants on purpose."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                     if p.is_floating_point() and p.dtype != torch.float32})
    if dtypes:
        raise ExportError(f"{type(model).__name__} cannot be exported: its parameters are "
                          f"{' and '.join(dtypes)}, and an exported file computes in float32 "
                          f"(its input is float32 images); export model.float()")


def export_model(model: nn.Module, out: str | os.PathLike, format: str = "onnx", *,
                 images: Tensor, tolerance: float = DEFAULT_TOLERANCE,
                 log: Callable[[str], None] | None = None,
                 guard: Callable[[], contextlib.AbstractContextManager] | None = None,
                 ) -> ExportReport:
    """Export ``model`` to ``out`` in ``format`` (:data:`FORMATS`) and verify the file on
    ``images`` ``(N, C, H, W)`` (real inputs: test images) before it replaces ``out``. ``log``
    receives one line per stage. ``guard``: a context manager factory entered around the
    replacement of ``out`` alone (the command line's check, under a lock, that no run replaces
    the folder meanwhile: :func:`eqpdenet.app.runfolder.writing_beside_runs`).

    The file passes where its logits are within ``tolerance`` of the model's (relative to the
    largest logit) and, for a model that claims quarter-turn invariance, the exported model
    changes its logits under quarter turns by at most as much. Where either exceeds
    ``tolerance``, the bound becomes ``max(tolerance, min(2 noise, ROUNDING_CEILING))``,
    ``noise`` the float32 rounding of the model in PyTorch itself (its distance to the same
    model in float64, over the same images): two float32 computations each that close to the
    exact logits can differ by twice that, and a deep model amplifies rounding
    (docs/deployment.md). Where ``2 noise`` is above both ``tolerance`` and
    :data:`ROUNDING_CEILING` and a check fails, the error says that the model is ill-conditioned
    in float32 at its weights, by how much, and which ``tolerance`` would accept the file: a
    ``tolerance`` given is the caller's own bound and is never capped.

    The file's top-1 class must also be PyTorch's on every image (and at the batch of one), but
    at ties within float32 rounding (where the float64 logit of the file's class is within twice
    that image's float32 rounding of the float64 maximum: counted in
    :attr:`ExportReport.top1_ties`); that needs the model in float64, and a family that cannot
    compute in float64 has no ties.

    The model must compute in float32 (every floating-point parameter float32; ``images`` are
    converted to float32 and must be finite there): any other is refused with an
    :class:`~eqpdenet.errors.ExportError` before any work (images with NaN or inf an
    :class:`~eqpdenet.errors.InputError`). ``out`` a symbolic link: the file it leads to is
    replaced, the link kept.

    Raises :class:`~eqpdenet.errors.ExportError` where the model cannot be exported or the file
    fails the verification; nothing is written then (a failed file is deleted: it is not the
    model, and rerunning the command re-creates it). The file is written and verified as a
    temporary sibling ``.<name>.XXXXXXXX.tmp`` of ``out`` (of the link's target), locked
    (:func:`eqpdenet.files.temporary_beside`) until it is renamed or deleted; those of exports
    killed meanwhile (SIGKILL) are removed by the next export to the same ``out``
    (:func:`eqpdenet.files.remove_stale_beside`, once unlocked and untouched for
    :data:`STALE_GRACE` seconds).
    """
    _check_model(model)
    model = unwrapped(model)  # the model a compiled or data-parallel wrapper computes with
    chosen = check_export(format, out)
    out = Path(out)
    if not (isinstance(tolerance, float | int) and not isinstance(tolerance, bool)
            and math.isfinite(tolerance) and tolerance > 0):
        raise ConfigError(f"tolerance must be a positive number, got {tolerance!r}")
    check_images(images, "images")
    if len(images) == 0:
        raise ConfigError("the verification needs at least one image")
    # before tracing and writing, not at the model's first call; in float32, as verified
    images, _ = _as_float32(images)
    log = log or (lambda line: None)
    family = type(model).__name__
    _check_float32(model)
    seconds = {}
    target = link_target(out)  # a symbolic link is kept: the file it leads to is replaced
    # exports killed before their rename (SIGKILL) left their temporary files here
    for written in dict.fromkeys((out, target)):
        remove_stale_beside(written, STAGING_SUFFIX, age=STALE_AGE, grace=STALE_GRACE)

    start = time.perf_counter()
    log(f"tracing {family} (reference path, batch axis of any size)")
    program = trace(model, images[:2])
    seconds["trace"] = time.perf_counter() - start

    # ``handle`` stays open until the end: its lock marks the file as a live export's, which
    # the sweep above (of a concurrent export) leaves alone however long the verification takes
    handle, staging = temporary_beside(target, STAGING_SUFFIX)
    try:
        start = time.perf_counter()
        log(f"writing {chosen.name}")
        try:
            chosen.write(program, staging)
        except OSError as error:  # the disk, not the model: no space, ulimit -f, read-only
            raise ExportError(f"cannot write {out}: {write_cause(error)}; the file there, if "
                              f"any, is unchanged") from None
        except Exception as error:
            first = next((line for line in str(error).splitlines() if line.strip()), "")
            raise ExportError(f"{family} cannot be written as {chosen.name}: "
                              f"{type(error).__name__}: {first.strip()}") from None
        seconds["write"] = time.perf_counter() - start

        start = time.perf_counter()
        log(f"verifying with {chosen.runtime} on {len(images)} images")
        with evaluation_mode(model), torch.no_grad():
            expected = _chunked(model, images)
        unusable = int((~torch.isfinite(expected)).any(1).sum())
        if unusable:
            # nothing to hold the file to (before, a NaN made every bound inf and the file
            # passed; round 16)
            raise ExportError(f"verification failed: PyTorch's own logits of {family} are not "
                              f"finite (NaN or inf) on {unusable} of the {len(images)} "
                              f"verification images (in float32: weights or activations beyond "
                              f"its range?), so the exported file cannot be checked against "
                              f"them; no file written")
        try:
            # the runner load_exported gives, its images checked; its logits are compared here
            run = _open(chosen, staging)._unchecked_logits
            exported = _chunked(run, images)
            single = run(images[:1])  # a batch of one through the dynamic axis
        except Exception as error:
            first = next((line for line in str(error).splitlines() if line.strip()), "")
            raise ExportError(f"verification failed: {chosen.runtime} cannot run {family} as "
                              f"{chosen.name}: {type(error).__name__}: {first.strip()}; no "
                              f"file written") from None
        bad = int((~torch.isfinite(exported)).any(1).sum()) + int(not torch.isfinite(single).all())
        if bad and bool(torch.isfinite(expected).all()):
            raise ExportError(f"verification failed: {chosen.runtime} gives non-finite logits "
                              f"(NaN or inf) for {family} as {chosen.name} on {bad} of the "
                              f"{len(images) + 1} images run (the batch of one included), where "
                              f"PyTorch's are finite; no file written")
        difference = _largest(exported - expected, single - expected[:1])
        relative = _relative(difference, float(expected.abs().max()))
        report = ExportReport(out, chosen.name, family, len(images), difference, relative, None,
                              float(tolerance), seconds)
        if getattr(model, "quarter_turn_invariant", False):
            report.quarter_turn_error = _turn_error(run, images, exported)
        both = torch.cat([expected, expected[:1]])  # the batch of one is its own row
        got = torch.cat([exported, single])
        top1_differs = bool((both.argmax(1) != got.argmax(1)).any())
        rounding = None
        if max(relative, report.quarter_turn_error or 0.0) > tolerance or top1_differs:
            # the float64 copy only where a check needs it: a second model of the same size
            rounding = _float32_rounding(model, images, report.quarter_turn_error is not None)
        if rounding is not None and max(relative, report.quarter_turn_error or 0.0) > tolerance:
            report.float32_noise = rounding[0]
        bound = report.bound
        where = (f"{family} as {chosen.name}, on {len(images)} images; tolerance {tolerance:g}"
                 + ("" if report.float32_noise is None else
                    f", twice the model's own float32 rounding {2 * report.float32_noise:.2e}")
                 + "; no file written")
        failures = []
        if not relative <= bound:
            failures.append(f"the exported logits differ from PyTorch's by {relative:.2e} "
                            f"relative (max |difference| {difference:.2e})")
        if report.quarter_turn_error is not None and not report.quarter_turn_error <= bound:
            failures.append(f"the exported model changes its logits by "
                            f"{report.quarter_turn_error:.2e} relative under quarter turns")
        if failures and report.ill_conditioned:
            # the raise is capped: above the ceiling no bound separates a wrong export from the
            # model's own rounding (a file 1.3 times the logits passed at 2 noise about 1)
            noise = report.float32_noise
            raise ExportError(
                f"verification failed: {failures[0]}, above the tolerance {tolerance:g}, and "
                f"{family} is ill-conditioned in float32 at these weights: PyTorch's own float32 "
                f"logits are {noise:.2e} relative from its float64 logits, and twice that, "
                f"{2 * noise:.2e}, is {2 * noise / ROUNDING_CEILING:.3g} times the "
                f"{ROUNDING_CEILING:g} up to which the tolerance is raised for rounding, so the "
                f"check cannot tell a wrong export from rounding; an explicit --tolerance "
                f"{_round_up(max(relative, report.quarter_turn_error or 0.0))} (tolerance= of "
                f"export_model) accepts this file if you accept that difference ({family} as "
                f"{chosen.name}, on {len(images)} images; no file written)")
        if failures:
            raise ExportError(f"verification failed: {failures[0]} ({where})")
        exact = None if rounding is None else rounding[1]
        ties, real = _top1_disagreements(both, got, None if exact is None
                                         else torch.cat([exact, exact[:1]]))
        if len(real):
            first = int(real[0])
            image = f"image {first}" if first < len(images) else "image 0 run alone"
            ours, theirs = int(both[first].argmax()), int(got[first].argmax())
            reason = ("the float64 logit of the file's class is below the float64 maximum by "
                      "more than twice its float32 rounding"
                      if exact is not None else
                      f"{family} cannot compute in float64, so no tie can be told")
            raise ExportError(
                f"verification failed: the exported model's top-1 class is not PyTorch's on "
                f"{len(real)} of the {len(images) + 1} images run (the batch of one included; "
                f"first: {image}, PyTorch class {ours}, the file class {theirs}), and not at a "
                f"tie within float32 rounding ({reason}) ({where})")
        report.top1_ties = len(ties)
        seconds["verify"] = time.perf_counter() - start
        with guard() if guard is not None else contextlib.nullcontext():
            os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
        os.close(handle)
    return report


def load_exported(path: str | os.PathLike, format: str | None = None) -> ExportedModel:
    """An exported file, loaded by the runtime its format targets, as an :class:`ExportedModel`:
    ``load_exported(path)(images) -> logits``, ``images`` checked as the models check theirs
    (``format`` default: from the suffix, ``.onnx`` or else ``exported-program``).

    Raises, one line each, before the runtime is involved where it can: a
    :class:`~eqpdenet.errors.ConfigError` for an unknown format, a
    :class:`~eqpdenet.errors.MissingDependencyError` for a runtime that is not installed, a
    :class:`~eqpdenet.errors.DataFileError` naming ``path`` where it does not exist, is a folder
    or is not a file of the format (an ONNX file named ``.pt2``, a truncated file)."""
    path = Path(path)
    if format is None:
        format = "onnx" if path.suffix == ".onnx" else "exported-program"
    chosen = FORMATS.get(format)
    needs = chosen.requires if chosen.runs_with is None else chosen.runs_with
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(f"running {format} needs {', '.join(missing)}: "
                                     f"pip install {' '.join(missing)}")
    return _open(chosen, path)


def _open(chosen: ExportFormat, path: Path) -> ExportedModel:
    """``path`` loaded by ``chosen``'s runtime, after the checks that need no runtime."""
    if not path.exists():
        raise DataFileError(path, "no such file (an exported model: eqpdenet export, or "
                                  "eqpdenet.export.export_model)")
    if not path.is_file():
        raise DataFileError(path, f"not a file (a folder?): an exported model is one "
                                  f"*{chosen.suffix} file")
    run, input_shape = chosen.load(path)
    return ExportedModel(path, chosen.name, run, input_shape)
