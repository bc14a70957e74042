"""The entry point of the ``eqpdenet`` console script and of ``python -m eqpdenet``.

It lives outside the package on purpose. ``import eqpdenet`` imports PyTorch (seconds), and the
command line (:func:`eqpdenet.app.cli.main`) can only answer the interrupts that come after its
own import: a Ctrl-C, SIGTERM or SIGHUP arriving before it took over ends the command here as
one arriving later does, with one line and exit status 130, not a traceback of the imports (nor
a silent death by SIGTERM). It is also all that a worker process re-runs of the console script
before it starts (multiprocessing's ``spawn`` runs the parent's main script again), so a worker
is at its own start-up code (:mod:`eqpdenet.app.workers`) in milliseconds, not after importing
PyTorch. Standard library only.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["main"]

#: Signals that end the command like Ctrl-C (those of ``eqpdenet.app.cli``, which takes them over
#: for the command itself): ``kill`` and job schedulers (SIGTERM), a closed terminal (SIGHUP).
INTERRUPTING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                             if hasattr(signal, name))

#: What an interrupt before the command line took over says: nothing was started or written.
MESSAGE = "eqpdenet: interrupted: no result was written\n"


def _leave(signum, frame):
    # During the imports nothing is started or written: leave at once. A KeyboardInterrupt raised
    # inside third-party import code is not safe: one arriving as NumPy's extension loads is
    # swallowed and the command runs on; a little later it breaks NumPy ("cannot load module
    # more than once per process", a traceback).
    os.write(2, MESSAGE.encode())
    os._exit(130)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _install(handler, numbers) -> dict:
    """``handler`` for each signal of ``numbers`` not ignored (nohup's SIGHUP stays ignored);
    the handlers it replaced. Outside the main thread, signals are left alone."""
    previous = {}
    try:
        for number in numbers:
            current = signal.getsignal(number)
            if current != signal.SIG_IGN:
                previous[number] = current
                signal.signal(number, handler)
    except ValueError:
        pass
    return previous


def main(argv: list[str] | None = None) -> int:
    """Run the command line (``argv``, default ``sys.argv[1:]``); returns its exit status, 130
    when it was interrupted before the command line could answer the interrupt itself."""
    starting = _install(_leave, (signal.SIGINT, *INTERRUPTING_SIGNALS))
    from eqpdenet.app import cli
    from eqpdenet.app.cli import main as command_line

    cli.ENDS_THE_PROCESS = True  # this process ends with the command: signals stay ignored

    # Imported: until the command line takes the signals over, an interrupt is a
    # KeyboardInterrupt again (Ctrl-C) or becomes one (SIGTERM, SIGHUP).
    previous = {number: handler for number, handler in starting.items() if number != signal.SIGINT}
    _install(_interrupt, previous)
    if signal.SIGINT in starting:
        signal.signal(signal.SIGINT, starting[signal.SIGINT])
    try:
        return command_line(argv)
    except KeyboardInterrupt:
        # Before the command line answered (it says what it saved itself): nothing was written.
        # A second Ctrl-C while this is said ends nothing more.
        _install(signal.SIG_IGN, (signal.SIGINT, *previous))
        sys.stderr.write(MESSAGE)
        return 130
    finally:
        for number, handler in previous.items():
            if signal.getsignal(number) is _interrupt:
                signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
