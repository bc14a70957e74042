"""One registry helper for every named choice (stencils, invariant sets, right-hand sides,
reductions, initialisations, backends, scenarios, models, data sets, symbolic groups).

A :class:`Registry` maps names to objects. Registering a taken name is an error unless
``replace=True`` (one convention everywhere); looking up an unknown name raises
:class:`~eqpdenet.errors.ConfigError` listing the names that exist (a name that is not a string,
e.g. arguments passed in the wrong order, says so instead of printing the object as a name), and
configuration validation reads the registries instead of keeping its own tuples of allowed values.

A registry holds one kind of object. Where every item registered so far is callable (builders,
samplers, classes: stencils, scenarios, models, ...), a new item must be callable too: a
non-callable is refused with a :class:`~eqpdenet.errors.ConfigError` when it is registered
(``register_stencil("mine", 5)``), not met as ``'int' object is not callable`` at its first use.

Example:
    >>> colours = Registry("colour")
    >>> _ = colours.register("red", (1, 0, 0))
    >>> colours.get("red")
    (1, 0, 0)
    >>> colours.get("blue")
    Traceback (most recent call last):
    ...
    eqpdenet.errors.ConfigError: unknown colour 'blue'; available: red
"""

from __future__ import annotations

import inspect
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError, EqPdeNetError, is_allocation_failure

__all__ = ["CallRegistry", "Registry", "call_own_code", "checked_signature", "own_code_error",
           "own_code_frame", "own_code_name"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one kind (``kind`` names them in error messages)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._listeners: list[Callable[[], None]] = []
        self._sealed: str | None = None

    def register(self, name: str, item: T | None = None, *, replace: bool = False):
        """Register ``item`` under ``name`` and return it; without ``item``, a decorator."""
        if item is None:
            def decorator(obj: T) -> T:
                self.register(name, obj, replace=replace)
                return obj

            return decorator
        if self._sealed is not None:
            raise ConfigError(f"no {self.kind} can be registered (asked for {_shown(name)}): "
                              f"{self._sealed}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{_a(self.kind)} needs a non-empty string name, got {_shown(name)}")
        self.check_item(item)
        if name in self._items and not replace:
            raise ConfigError(f"{_a(self.kind)} named {name!r} is already registered "
                              f"(pass replace=True to replace it)")
        self._items[name] = item
        for listener in self._listeners:
            listener()
        return item

    def check_item(self, item) -> None:
        """Raise a :class:`ConfigError` where ``item`` cannot join this registry: where every
        registered item is callable, ``item`` must be callable too."""
        items = list(self._items.values())
        if items and all(callable(existing) for existing in items) and not callable(item):
            raise ConfigError(f"{_a(self.kind)} must be callable, as the registered ones are "
                              f"({', '.join(self.names())}), got {_shown(item)}")

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name is a :class:`ConfigError`, and so is
        a name that is not a string (saying so: the arguments were probably swapped)."""
        if not isinstance(name, str):
            raise ConfigError(f"{_a(self.kind)} is named by a string, got {_shown(name)}; "
                              f"available: {', '.join(self.names())}")
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: "
                              f"{', '.join(self.names())}") from None

    def check(self, name, field: str) -> None:
        """Raise a :class:`ConfigError` naming the configuration ``field`` unless ``name`` exists."""
        if not isinstance(name, str) or name not in self._items:
            raise ConfigError(f"invalid config: {field}: unknown {self.kind} {name!r}; "
                              f"available: {', '.join(self.names())}")

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._items))

    def seal(self, why: str) -> None:
        """Refuse every later registration with a :class:`ConfigError` ending in ``why``: for a
        registry whose items the code behind it handles one by one (a new item would be used
        without its mathematics)."""
        self._sealed = why

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every registration (e.g. to clear a cache)."""
        self._listeners.append(listener)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def checked_signature(item, where: str, role: str, form: str) -> inspect.Signature:
    """``item``'s signature, for the checks an item of a registry gets when it is registered:
    a :class:`~eqpdenet.errors.ConfigError` beginning ``where`` for an item that is not callable
    or whose signature Python cannot read (``form`` says what to give instead: ``role`` is what
    the item is, a ``"loader"``, a ``"sampler"``)."""
    if not callable(item):
        raise ConfigError(f"{where}: the {role} must be callable, got {_shown(item)}")
    try:
        return inspect.signature(item)
    except (TypeError, ValueError):
        shown = getattr(item, "__qualname__", None) or type(item).__name__
        raise ConfigError(f"{where}: the signature of its {role} {shown} cannot be read; give a "
                          f"function {form} (a def wrapping it)") from None


def own_code_name(item) -> str:
    """``item`` as an error names a registered item of the user's: its qualified name and the
    module that defines it (``_rt, module dataplug2``)."""
    shown = getattr(item, "__qualname__", None) or type(item).__qualname__
    module = getattr(item, "__module__", None) or type(item).__module__
    return f"{shown}, module {module}" if module else shown


def call_own_code(item, where: str, role: str, /, **keywords):
    """``item(**keywords)`` for a registered item of the user's (a plugin's data set loader, a
    model family's constructor): an exception its own code raises is re-raised as one
    :class:`~eqpdenet.errors.ConfigError` beginning ``where`` (``data set 'toy'``), naming the
    ``role`` (``loader``) and the item with its module (:func:`own_code_name`), and giving the
    original type and message, the original chained as its cause. It reached the command line
    as "unexpected RuntimeError ... (a bug in eqpdenet?)", exit 1, naming neither the item nor
    its module. Passed through unchanged: eqpdenet's own errors (raised by what the item calls,
    e.g. the checks of the ``ImageDataset`` a loader builds: they name their cause already),
    failed memory allocations (Python's, and :func:`~eqpdenet.errors.is_allocation_failure`: the
    command line advises on memory), and
    what is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``)."""
    try:
        return item(**keywords)
    except Exception as error:
        said = own_code_error(error)
        if said is None:
            raise
        raise ConfigError(f"{where}: its {role} ({own_code_name(item)}) raised {said}") from error


def own_code_error(error: Exception) -> str | None:
    """``error`` as one line (``RuntimeError: text``) where it is the user's code's own, to be
    named as such (:func:`call_own_code`; a forward pass, where :func:`own_code_frame` finds the
    user's frame: ``analysis.predictions.own_code_culprit``); None for eqpdenet's own errors and
    failed memory allocations, which pass unchanged."""
    if isinstance(error, EqPdeNetError | MemoryError) or is_allocation_failure(error):
        return None
    text = " ".join(str(error).split())
    return f"{type(error).__name__}{f': {text}' if text else ''}"


def own_code_frame(error: BaseException, modules: Iterable[str]) -> types.FrameType | None:
    """The frame of the user's code that raised ``error``, or None where eqpdenet's code raised
    it. ``modules``: the modules of the user's items that the failed call ran (a plugin's model
    family, its invariant functions); each stands for its whole top-level package
    (``mylab.models`` for ``mylab.layers`` too), eqpdenet's own are left out.

    The rule (docs/architecture.md, "A family of one's own"): ``error``'s traceback is read from the
    innermost frame outward, and the first frame whose module is eqpdenet's or one of
    ``modules``' decides. Frames of other code (torch, numpy, the standard library) are passed
    over: they ran on behalf of whichever of the two called them (a family's ``nn.Linear`` fed
    the wrong size raises inside torch, and the family's ``forward`` called it). Nothing of
    either (an empty traceback): None. It reads the traceback only, where an exception is
    already raised: no cost on the path that raises none."""
    packages = {(module or "").partition(".")[0] for module in modules} - {"", "eqpdenet"}
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    for frame in reversed(frames):
        package = str(frame.f_globals.get("__name__") or "").partition(".")[0]
        if package == "eqpdenet":
            return None
        if package in packages:
            return frame
    return None


class CallRegistry(Registry):
    """A :class:`~eqpdenet.registry.Registry` of callables that the library calls one way,
    ``item(*args, **kwargs)`` (``call`` spells it for messages): an item whose signature cannot
    take that call is refused when it is registered, in one :class:`~eqpdenet.errors.ConfigError`
    naming it, not met as a raw ``TypeError`` at its first use. A callable whose signature
    Python cannot read (some built-ins) is accepted unchecked.

    Example:
        >>> builders = CallRegistry("builder", "builder(n)", 1)
        >>> _ = builders.register("one", lambda n: n)
        >>> try:
        ...     builders.register("none", lambda: 0)
        ... except ConfigError as error:
        ...     print(error)
        a builder 'none' cannot be called as builder(n): too many positional arguments
    """

    def __init__(self, kind: str, call: str, *args, **kwargs):
        super().__init__(kind)
        self.call, self._args, self._kwargs = call, args, kwargs

    def register(self, name: str, item=None, *, replace: bool = False):
        if item is not None and isinstance(name, str) and callable(item):
            try:
                signature = inspect.signature(item)
            except (TypeError, ValueError):  # no signature to read: accepted unchecked
                signature = None
            if signature is not None:
                try:
                    signature.bind(*self._args, **self._kwargs)
                except TypeError as error:
                    raise ConfigError(f"{_a(self.kind)} {name!r} cannot be called as {self.call}: "
                                      f"{error}") from None
        return super().register(name, item, replace=replace)


def _a(noun: str) -> str:
    """``noun`` with its indefinite article (by its first letter: "an invariant set")."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _shown(value, limit: int = 60) -> str:
    """``value`` as a message shows it: its type and a short repr (a tensor's or an array's
    repr runs over many lines; a name is never one)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    text = " ".join(repr(value).split())
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{type(value).__name__} {text}"
