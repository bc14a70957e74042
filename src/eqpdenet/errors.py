"""The exceptions of eqpdenet: one base class, each subclass also a built-in type callers catch.

Every error eqpdenet raises on purpose derives from :class:`EqPdeNetError`, so
``except EqPdeNetError`` catches them all; each also derives from the built-in exception a caller
would already catch for that kind of problem (``except ValueError`` keeps working for a bad
configuration value, ``except FloatingPointError`` for a diverged integration).

Example:
    >>> try:
    ...     raise ConfigError("invalid config: layer.dt: must be positive")
    ... except ValueError as error:
    ...     isinstance(error, EqPdeNetError)
    True
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataFileError",
    "DownloadError",
    "EqPdeNetError",
    "ExportError",
    "FolderLockedError",
    "InputError",
    "InputRangeWarning",
    "InputTypeError",
    "KernelUnavailableError",
    "MainGuardError",
    "MissingDependencyError",
    "NonFiniteStateError",
    "OutputFolderError",
    "SingularMapError",
]


class EqPdeNetError(Exception):
    """Base class of every error eqpdenet raises on purpose."""


class ConfigError(EqPdeNetError, ValueError):
    """An invalid configuration value or argument; the message names the field."""


class InputError(EqPdeNetError, ValueError):
    """Tensors given to a layer or model that it cannot use (shape, values)."""


class InputTypeError(InputError, TypeError):
    """An input of the wrong type or dtype (not a floating-point tensor, ...)."""


class SingularMapError(InputError):
    """A warp's linear map has no inverse in the dtype it is computed in (a singular matrix, a
    scaling by 0, or one that rounds to either): the warp samples its input at the inverse map."""


class NonFiniteStateError(EqPdeNetError, FloatingPointError):
    """The state of a PDE became NaN or infinite during integration.

    Attributes:
        pde: name of the PDE (``"pde0:se2"``).
        step: the Euler step (1-based) after which the state was first non-finite.
        dt: the time step.
    """

    #: The cause when the input was finite and in range: the scheme.
    SCHEME_HINT = ("The explicit scheme is probably unstable: lower dt, bound the coefficients "
                   "(see EulerStep.stability()) or lower the learning rate.")

    #: Added to a message that blames the scheme when the state was non-finite after the first
    #: step: there it may never have been finite to integrate (a sim2 PDE at grid spacing 1e-5
    #: in float32 overflowed in its invariants, and lowering dt could not help).
    FIRST_STEP_NOTE = ("At step 1 the cause may instead be the right-hand side itself: a term "
                       "of the PDE (an invariant, a ratio) that is not finite on this finite "
                       "state, e.g. one that overflows in the dtype; lowering dt does not cure "
                       "that (evaluate the PDE's invariants on the input to tell).")

    def __init__(self, pde: str, step: int, dt: float, hint: str | None = None):
        self.pde, self.step, self.dt, self.hint = pde, step, dt, hint
        hint = hint or self.SCHEME_HINT
        if step == 1 and self.SCHEME_HINT in hint:
            hint = f"{hint} {self.FIRST_STEP_NOTE}"
        super().__init__(f"PDE {pde!r} produced a non-finite state (NaN or inf) at Euler step "
                         f"{step} (dt={dt}). {hint}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.pde, self.step, self.dt, self.hint))

    def with_hint(self, hint: str) -> NonFiniteStateError:
        """The same error with another explanation of its cause."""
        return type(self)(self.pde, self.step, self.dt, hint)


class DataFileError(EqPdeNetError, ValueError):
    """A data file is missing, truncated, corrupt or not what its name says."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable (raised inside worker processes)
        return (type(self), (self.path, self.problem))


class DownloadError(EqPdeNetError, RuntimeError):
    """A file could not be downloaded from any mirror."""


class KernelUnavailableError(EqPdeNetError, RuntimeError):
    """A compiled kernel cannot be built or loaded on this machine."""


class MissingDependencyError(EqPdeNetError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class ExportError(EqPdeNetError, RuntimeError):
    """A model cannot be exported for another runtime, or the exported file does not reproduce
    the model within the stated tolerance (:mod:`eqpdenet.export`)."""


class CheckpointError(EqPdeNetError, ValueError):
    """A file is not a readable eqpdenet checkpoint, or does not match its configuration."""


class FolderLockedError(EqPdeNetError, RuntimeError):
    """Another process is writing to the same output folder (one writer per folder)."""


class MainGuardError(EqPdeNetError, RuntimeError):
    """Work with worker processes (``jobs > 1``) was started by a script's top-level code without
    an ``if __name__ == "__main__":`` guard: each worker runs the script again as it starts
    (multiprocessing's ``spawn``), and the call is refused there; the message names the fix."""


class OutputFolderError(EqPdeNetError, OSError):
    """An output folder cannot be created or written (a file in the way, permissions, space)."""


class InputRangeWarning(UserWarning):
    """Inputs far outside the range a model was built for (e.g. pixels at 0-255 into a model
    standardised for 0-1); warned once per model."""


def warn_at_caller(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first frame outside eqpdenet and
    torch: the user's line that called the library (``model(x)``, ``train_model(...)``). A fixed
    ``stacklevel`` named ``torch/nn/modules/module.py`` or a library file whenever the warning
    was reached through another depth of calls (a module's ``__call__``, a wrapper), and a filter
    on the user's module (``warnings.filterwarnings(..., module=...)``) never matched."""
    import os
    import sys
    import warnings

    inside = [os.path.dirname(os.path.abspath(__file__)) + os.sep]
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "__file__", None):
        inside.append(os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)
    frame, level = sys._getframe(1), 2  # stacklevel 2: warn_at_caller's caller
    while frame is not None and (frame.f_code.co_filename.startswith(tuple(inside))
                                 or frame.f_code.co_filename.startswith("<frozen")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


def is_allocation_failure(error: BaseException) -> bool:
    """Whether ``error`` is PyTorch's report of a memory allocation that failed (its CPU
    allocator's "can't allocate memory", CUDA's ``OutOfMemoryError``): the one test of the
    command line's advice on memory (``app.preflight.allocation_failure``) and of what a user's
    plugin code may raise unchanged (``registry.call_own_code``)."""
    text = str(error)
    return (type(error).__name__ == "OutOfMemoryError" or "can't allocate memory" in text
            or "out of memory" in text.lower())
