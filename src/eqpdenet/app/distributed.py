"""Where a sweep's runs execute: here (a local process pool) or on a Ray cluster.

:class:`Executor` names the choice (``eqpdenet reproduce|benchmark|study --executor``).
:func:`run_on_ray` runs each run as a Ray task:

* the task declares what it needs: ``cpus_per_run`` CPUs (its torch threads, fixed so that the
  numbers do not depend on the machine it lands on) and one GPU when the run's device is
  ``cuda`` (or ``auto`` on a cluster that has GPUs);
* ``max_retries``: a task whose worker process dies (killed, out of memory, node lost) is run
  again from the start; runs are seeded, so the retry gives the numbers the first try would have;
* the data are prepared once, by the driver, and put in Ray's object store (one copy per node,
  shared by that node's workers); each worker process keeps the last data it read, so a worker
  that runs several runs reads them once;
* each task imports the driver's ``EQPDENET_PLUGINS`` modules first (passed as an argument: a
  worker does not read the driver's environment), so that a model family, data set or scenario
  of one's own is known there; each module must be importable on every node;
* the driver collects results as tasks complete (``ray.wait``) and writes them itself (the run
  files, ``results.jsonl``, the checkpoints, which tasks return as bytes), so the workers need no
  access to the results folder.

:func:`ray_session` keeps one Ray instance (and each data set's copy in the object store) for
several sweeps: ``study`` runs all its stages in one, instead of starting Ray for each. From
before Ray starts to after it stops, the driver keeps eqpdenet's SIGTERM/SIGHUP/SIGINT handlers
(:func:`_ray_leaves_signals_alone`: ``ray.init`` installed its own, which ended the driver on
SIGTERM with exit 15, or aborted it, and ``ray.shutdown`` left SIGTERM's default, death, in place
while it stopped Ray's processes): a SIGTERM ends the command like Ctrl-C, with the unfinished
tasks cancelled; one that comes while Ray stops is held until it has stopped
(:func:`_signals_held`).

A task trains a run that wants a checkpoint in a folder of its own, ``eqpdenet-run-HOST-PID-*`` in the
temporary directory, removed after the run; one left by a worker that was killed is removed by a
later task on that machine (:func:`_sweep_run_folders`). A warning in a task is shown as the
driver shows its own (the command line: one line, ``eqpdenet: warning: ...``).

Ray is an optional dependency (``pip install 'eqpdenet[distributed]'``), imported only here and
only when the Ray executor is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .plugins import plugin_names

__all__ = ["CONNECT_SECONDS", "EXECUTORS", "Executor", "check_address", "import_ray", "ray_session",
           "run_on_ray", "task_failure"]

EXECUTORS = ("local", "ray")

#: How long a cluster's head may take to answer before ``--address`` is refused (Ray itself
#: would wait without end for a head that is not there, or for something else that listens at
#: the address): an address where nothing listens, or something that is not a Ray head (an
#: HTTP server, the dashboard's port), is refused in a second; one that never answers, in this.
CONNECT_SECONDS = 10.0

#: The port of a Ray head given without one (Ray's default).
RAY_PORT = 6379

#: The first bytes of an HTTP/2 connection (the client preface, then an empty SETTINGS frame):
#: a Ray head (gRPC) answers with its own SETTINGS frame at once, an HTTP/1 server with a status
#: line.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS_FRAME = 4

#: Asks the GCS at ``argv[1]`` for its cluster id, as a driver does first, in a process of its
#: own: Ray's client retries for longer than asked and logs every try to stderr, so the process
#: is killed at the deadline and its output kept to itself. With ``argv[3] == "auto"`` it first
#: turns token authentication on where a token exists, as ``ray.init(address="auto")`` does (an
#: address given explicitly never does: Ray sends its token there only under
#: ``RAY_AUTH_MODE=token``). Exit status 3: this Ray has no such client (another version),
#: nothing could be checked; 4: the head requires a token and this process sends none; 5: it
#: refused the token sent.
_GCS_PROBE = """
import sys
try:
    from ray._raylet import InnerGcsClient
    connect = InnerGcsClient.standalone
except (ImportError, AttributeError):
    sys.exit(3)
if sys.argv[3] == "auto":
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:
        pass
try:
    connect(sys.argv[1], None, int(sys.argv[2]))
except Exception as error:
    if type(error).__name__ == "AuthenticationError":
        try:
            from ray._raylet import AuthenticationMode, get_authentication_mode
            sys.exit(5 if get_authentication_mode() == AuthenticationMode.TOKEN else 4)
        except ImportError:
            sys.exit(5)
    print(type(error).__name__ + ": " + " ".join(str(error).split()))
    sys.exit(1)
"""

#: What to do about a head that requires token authentication (probe exit status 4 and 5).
_TOKEN_ADVICE = ("`ray get-auth-token` on the head prints its token; put it in ~/.ray/auth_token "
                 "or RAY_AUTH_TOKEN here")


def _tls() -> bool:
    """Whether Ray talks TLS (``RAY_USE_TLS``): then no plain HTTP/2 greeting is answered."""
    return os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true", "yes")


def _http2_answer(sock: socket.socket, deadline: float) -> str | None:
    """None when the server on ``sock`` greets an HTTP/2 client as a gRPC server does, else what
    it did instead."""
    try:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        sock.sendall(_HTTP2_HELLO)
        answer = b""
        while len(answer) < 9:  # a frame header
            chunk = sock.recv(512)
            if not chunk:
                break
            answer += chunk
    except TimeoutError:
        return "something accepts connections there but does not answer as a Ray head does"
    except OSError as error:
        return f"something accepts connections there but {(error.strerror or str(error)).lower()}"
    if len(answer) >= 9 and answer[3] == _SETTINGS_FRAME:
        return None
    if not answer:
        return "something accepts connections there but closes them without answering"
    line = answer.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    shown = "".join(c if c.isprintable() else "?" for c in line)[:60]
    return (f"something listens there, but not a Ray head: it answered {shown!r}, where a head "
            f"answers in gRPC; a web server, or the dashboard's port?")


def _gcs_answer(address: str, deadline: float, shown: str, auto: bool = False) -> str | None:
    """None when a Ray head's GCS at ``address`` answers (or this Ray cannot ask), else why
    not; a :class:`ConfigError` when the head is there but refuses this process's
    authentication (``auto``: the token rule of ``--address auto``)."""
    left = max(1.0, deadline - time.monotonic())
    try:
        probe = subprocess.run([sys.executable, "-c", _GCS_PROBE, address, str(int(left * 1000)),
                                "auto" if auto else "explicit"],
                               capture_output=True, text=True, timeout=left,
                               stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:  # (the probe is killed)
        return f"a server answers there, but no Ray head's GCS within {left:.0f} s"
    if probe.returncode in (0, 3):
        return None
    if probe.returncode == 4:
        raise ConfigError(f"--address {shown}: the Ray head there requires token authentication, "
                          f"and Ray sends a token to an address given explicitly only under "
                          f"RAY_AUTH_MODE=token: set RAY_AUTH_MODE=token ({_TOKEN_ADVICE}), or "
                          f"use --address auto on a machine of the cluster")
    if probe.returncode == 5:
        raise ConfigError(f"--address {shown}: the Ray head there refused this machine's "
                          f"authentication token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                          f"~/.ray/auth_token); {_TOKEN_ADVICE}")
    detail = (probe.stdout.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
    return f"a server answers there, but not as a Ray head's GCS: {detail[:200]}"


def _auto_address() -> str | None:
    """The cluster ``--address auto`` joins, found as ``ray.init`` finds it (``RAY_ADDRESS``,
    else the last ``ray start`` on this machine, else a head running here); a
    :class:`ConfigError` when there is none; None where this version of Ray cannot say."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    try:
        return canonicalize_bootstrap_address("auto")
    except ConnectionError as error:
        raise ConfigError(f"--address auto: no Ray cluster to join ({' '.join(str(error).split())})"
                          f"; start one with `ray start --head`, or leave out --address to start "
                          f"Ray here") from None
    except Exception:  # noqa: BLE001 - an address Ray parses otherwise: ray.init will say
        return None


def check_address(address: str | None, timeout: float = CONNECT_SECONDS) -> None:
    """A :class:`ConfigError` within about ``timeout`` seconds unless a Ray head answers at
    ``address`` (``HOST[:PORT]``, ``ray://HOST:PORT``, ``auto``: the cluster Ray would join):
    something must accept connections there and greet an HTTP/2 client as gRPC does (not under
    ``RAY_USE_TLS``), and for a head's address, its GCS must answer Ray's own first request
    (from a process of its own, killed at the deadline, so Ray's retries and logs stay there),
    with the authentication ``ray.init`` would send: a head that requires token authentication
    is refused, naming what to set, where this process would send no token (an address given
    explicitly without ``RAY_AUTH_MODE=token``, Ray's rule; ``ray.init`` logged a screen of
    retries, after eqpdenet had written its files) or one the head refuses. A Ray client server
    (``ray://``) is checked up to the greeting. ``None`` and ``"local"`` (a new instance here)
    pass."""
    if address in (None, "local"):
        return
    deadline = time.monotonic() + timeout
    shown, auto = address, address == "auto"
    if address == "auto":
        found = _auto_address()
        if found is None:
            return
        address, shown = found, f"auto ({found})"
    where = address.split("://", 1)[-1].rstrip("/")
    host, _, port = where.rpartition(":") if ":" in where else (where, "", str(RAY_PORT))
    try:
        port_number = int(port)
    except ValueError:
        raise ConfigError(f"--address {shown}: expected HOST:PORT (e.g. 10.0.0.5:6379)") \
            from None
    reason = None
    try:
        with socket.create_connection((host.strip("[]"), port_number), timeout=timeout) as sock:
            if not _tls():
                reason = _http2_answer(sock, deadline)
    except socket.gaierror:
        reason = f"the host {host!r} is unknown"
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except ConnectionRefusedError:
        reason = "connection refused: nothing listens on that port"
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
    if reason is None and not address.startswith("ray://"):
        reason = _gcs_answer(f"{host}:{port_number}", deadline, shown, auto)
    if reason is None:
        return
    raise ConfigError(f"--address {shown}: no Ray cluster there ({reason}); start one with "
                      f"`ray start --head` on that machine, or leave out --address to start Ray "
                      f"here")


@dataclass(frozen=True)
class Executor:
    """Where runs execute.

    Attributes:
        kind: ``"local"`` (this machine; ``jobs`` processes) or ``"ray"``.
        address: the Ray cluster: ``None`` starts a Ray instance on this machine for the sweep,
            ``"auto"`` joins the cluster this machine belongs to, ``"HOST:PORT"`` a given head.
        cpus_per_run: CPUs each Ray task declares, and its torch threads (the local executor
            takes 1 only: another value is a :class:`ConfigError`, not ignored).
        max_retries: how often Ray reruns a task whose worker died.
    """

    kind: str = "local"
    address: str | None = None
    cpus_per_run: int = 1
    max_retries: int = 3

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise ConfigError(f"executor {self.kind!r}: choose one of {', '.join(EXECUTORS)}")
        if self.address is not None and self.kind != "ray":
            raise ConfigError("--address is for --executor ray")
        if self.cpus_per_run < 1:
            raise ConfigError(f"cpus per run must be >= 1, got {self.cpus_per_run}")
        if self.cpus_per_run != 1 and self.kind != "ray":  # the local pool would ignore it
            raise ConfigError(f"--cpus-per-run {self.cpus_per_run} is for --executor ray (the "
                              f"local executor gives each of --jobs processes an equal share "
                              f"of this machine's CPUs)")
        if self.max_retries < 0:
            raise ConfigError(f"max retries must be >= 0, got {self.max_retries}")
        cpus = os.cpu_count()
        if self.kind == "ray" and self.address is None and cpus and self.cpus_per_run > cpus:
            # known now, not after Ray's start-up and the sweep's first files
            raise ConfigError(f"--cpus-per-run {self.cpus_per_run}: this machine has {cpus} "
                              f"CPUs, and the Ray instance started here for the sweep gets no "
                              f"more, so no run could ever start; lower --cpus-per-run, or join "
                              f"a larger cluster with --address")


def import_ray():
    """The ``ray`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'eqpdenet[distributed]' "
                          "(or pip install ray)") from None
    return ray


# ----------------------------------------------------------------------------- inside a task

#: The data last read by this worker process: (object id, data).
_WORKER_DATA: tuple[str, object] | None = None


def _data_of(boxed: list):
    """The data behind ``boxed[0]`` (an object reference, boxed so that Ray does not resolve it
    for every task), read from the object store once per worker process."""
    global _WORKER_DATA
    import ray

    ref = boxed[0]
    if _WORKER_DATA is None or _WORKER_DATA[0] != ref.hex():
        _WORKER_DATA = None  # the previous data set can go before the next one is read
        _WORKER_DATA = (ref.hex(), ray.get(ref))
    return _WORKER_DATA[1]


#: The name of a task's checkpoint folder, in the temporary directory:
#: ``eqpdenet-run-HOST-PID-*``, HOST the first 8 hex digits of the SHA-256 of the machine's host
#: name and PID the worker process's (:func:`_sweep_run_folders`).
_RUN_FOLDER = "eqpdenet-run-"
_OWNED_RUN_FOLDER = re.compile(re.escape(_RUN_FOLDER) + r"([0-9a-f]{8})-(\d+)-")


def _host_tag() -> str:
    """This machine's part of a run folder's name (a host name may hold any character)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` may exist here: False only where the system says there is
    none (one of another user's counts; a number no process id can be is not known dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # another user's; or not a process id at all
        return True
    return True


def _sweep_run_folders(root: Path) -> None:
    """Remove the checkpoint folders under ``root`` (``eqpdenet-run-HOST-PID-*``) of this user
    and this machine (``HOST``, :func:`_host_tag`) whose worker process ``PID`` has died: a
    worker killed (SIGKILL, out of memory, a forced ``ray.cancel``) never ran the clean-up of its
    run's folder, which then stayed, empty or with a half-written ``model.pt``. A folder whose
    process lives is never touched, nor this process's, nor another machine's (a temporary
    directory shared by nodes or containers: their process ids are not this machine's), nor one
    named otherwise, such as those of earlier versions, which recorded no owner; a PID that a
    live process has taken again keeps its folder until that one ends. Containers that share
    both a host name and a temporary directory but not their process ids are not told apart."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    own, host = os.getpid(), _host_tag()
    for entry in entries:
        found = _OWNED_RUN_FOLDER.match(entry.name)
        if not found or found.group(1) != host or int(found.group(2)) == own:
            continue
        try:
            # another user's folder is theirs to sweep (a PID may name another namespace's
            # process where /tmp is shared)
            if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if not _process_alive(int(found.group(2))):
            shutil.rmtree(entry.path, ignore_errors=True)


def _ray_task(runner: Callable[..., dict], config_dict: dict, boxed: list, threads: int,
              want_checkpoint: bool, options: dict,
              plugins: tuple[str, ...] = (), display: bytes | None = None,
              ) -> tuple[dict, bytes | None]:
    """One run in a Ray worker: its record, and its checkpoint's bytes when one is wanted.
    ``plugins``: the driver's ``EQPDENET_PLUGINS`` modules, imported first (a worker does not
    read the driver's environment variable; each module must be importable on its node).
    ``display``: the driver's ``warnings.showwarning``, pickled (the command line's one-line
    format), shown the run's warnings with; unpickled after the plugins, as a ``--jobs`` worker
    does it, and put back after the run (the worker process runs other tasks). A checkpoint is
    written in a folder ``eqpdenet-run-HOST-PID-*`` of the temporary directory, removed after the run
    and, where the worker is killed first, by a later task (:func:`_sweep_run_folders`)."""
    import torch

    from .config import ExperimentConfig, from_dict
    from .plugins import import_plugins

    shown = warnings.showwarning
    try:
        import_plugins(",".join(plugins))
        if display is not None:
            try:
                warnings.showwarning = pickle.loads(display)
            except Exception:  # noqa: BLE001 - a display this node cannot import: Ray's stays
                pass
        torch.set_num_threads(threads)
        config = from_dict(ExperimentConfig, config_dict)
        data = _data_of(boxed)
        if not want_checkpoint:
            return runner(config, data, progress=False, checkpoint=None, **options), None
        root = Path(tempfile.gettempdir())
        _sweep_run_folders(root)
        with tempfile.TemporaryDirectory(prefix=f"{_RUN_FOLDER}{_host_tag()}-{os.getpid()}-",
                                         dir=root) as folder:
            path = Path(folder) / "model.pt"
            record = runner(config, data, progress=False, checkpoint=path, **options)
            return record, (path.read_bytes() if path.exists() else None)
    finally:
        warnings.showwarning = shown


# ----------------------------------------------------------------------------- the driver


def _compact(data):
    """``data`` with every split copied to its own storage: a split that is the head of a larger
    tensor would otherwise carry the whole tensor into the object store."""
    import copy

    from .training import Split

    data = copy.copy(data)
    for name in ("train", "validation", "test"):
        split = getattr(data, name)
        setattr(data, name, Split(split.images.clone(), split.labels.clone()))
    return data


def _gpus_for(device: str, cluster_gpus: float) -> float:
    if device == "cuda":
        return 1
    return 1 if device == "auto" and cluster_gpus > 0 else 0


#: The signals whose handlers stay eqpdenet's while Ray runs in this process.
_KEPT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                      if hasattr(signal, name))


def _handlers() -> dict:
    """This process's Python handlers of :data:`_KEPT_SIGNALS` (none outside the main thread,
    which alone may set them; none for a handler not set from Python)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: handler for number in _KEPT_SIGNALS
            if (handler := signal.getsignal(number)) is not None}


def _reinstall(handlers: dict) -> None:
    """Set ``handlers`` again (in Python, and so in the C library too)."""
    for number, handler in handlers.items():
        signal.signal(number, handler)


@contextlib.contextmanager
def _ray_leaves_signals_alone(ray) -> Iterator[None]:
    """Within the block, ``ray.init`` installs no signal handler in this process, so that the
    driver's (eqpdenet's: a SIGTERM ends the command like Ctrl-C, exit 130) stay in place while
    Ray starts, runs and stops. Ray would install three: in Python, its driver's
    ``sys.exit(15)`` and its local node's clean-up that exits 1 (both through
    ``ray._private.utils.set_sigterm_handler``, made a no-op here), and in C, under Python's,
    its core worker's "failure signal handler" (SIGTERM among the fatal signals: "*** SIGTERM
    received", then the process aborted), which ``ray.shutdown`` then removes by setting
    SIGTERM's default, death, for the seconds it spends stopping Ray's processes. The C one is
    turned off for this process's core worker through the constant behind
    ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER`` (read when the core worker starts; Ray's worker
    processes keep theirs). What it gave, a stack trace where the driver's C++ crashes, is
    lost; a handler that runs at a moment no one chooses and ends the command with the wrong
    status is worse. Putting the handlers back
    after ``ray.init`` (:func:`_reinstall`, still done) cannot close the windows: during
    ``ray.init`` and ``ray.shutdown`` Ray's handler or the default action held. Both names are
    Ray's internals: one a version lacks is left alone. Both are put back after the block."""
    private = getattr(ray, "_private", None)
    utils = getattr(private, "utils", None)
    constants = getattr(private, "ray_constants", None)
    saved = []
    if hasattr(utils, "set_sigterm_handler"):
        saved.append((utils, "set_sigterm_handler", utils.set_sigterm_handler))
        utils.set_sigterm_handler = lambda handler: None
    if hasattr(constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"):
        saved.append((constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER",
                      constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER))
        constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Within the block, a SIGINT, SIGTERM or SIGHUP is held, and given to the handler it had
    before the block once the block ends (each signal that came, once, in the order they came):
    ``ray.shutdown`` stopped part-way by eqpdenet's handler (a KeyboardInterrupt) would leave
    Ray's processes running. A signal ignored (``SIG_IGN``) stays ignored; outside the main
    thread, which alone may set handlers, nothing changes.

    Why handlers that take note rather than ``signal.pthread_sigmask``: a mask holds a signal
    for the thread that sets it only, and Ray's threads in this process (some twenty: gRPC,
    its core worker's) leave these signals unblocked; the kernel gives a signal sent to the
    process to any thread that does not block it, and Python's C handler, whichever thread it
    runs in, has the main thread run the Python handler at once, inside ``ray.shutdown``. A
    handler that only takes note holds the signal whichever thread receives it, provided the C
    handler stays Python's, which :func:`_ray_leaves_signals_alone` sees to."""
    current = {number: handler for number, handler in _handlers().items()
               if handler is not signal.SIG_IGN}
    came: list[int] = []

    def hold(signum, frame):
        if signum not in came:
            came.append(signum)

    try:
        for number in current:
            signal.signal(number, hold)
        yield
    finally:
        _reinstall(current)
        for number in came:  # the handler's exception (KeyboardInterrupt) ends the loop
            signal.raise_signal(number)


@dataclass
class _Session:
    """The Ray of a :func:`ray_session`: started or joined on first use, with each data set put
    in the object store once."""

    executor: Executor
    started: bool = False  # whether this session started Ray (and so stops it)
    handlers: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # data key -> its object reference

    def connect(self):
        """The ``ray`` module, connected: to the Ray this process runs already, if any (left
        running at the end), else to the cluster at ``executor.address``, or to a new instance
        on this machine when it is None. Ray installs no signal handler of its own meanwhile
        (:func:`_ray_leaves_signals_alone`): a SIGTERM while it starts ends the command as
        Ctrl-C does, and this session then stops what had started."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        check_address(self.executor.address)  # (Ray would wait without end)
        self.data.clear()  # references into an object store that is gone
        self.handlers = _handlers()
        self.started = True  # before init: an interrupted start is stopped too
        try:
            # No address: a new instance on this machine ("local"), not whatever RAY_ADDRESS
            # or a `ray start` here would join. A signal while Ray starts is not held, as it is
            # while Ray stops: the start can take long (a cluster's), Ctrl-C always stopped it
            # at once, and close() stops what had started.
            with _ray_leaves_signals_alone(ray):
                ray.init(address=self.executor.address or "local", include_dashboard=False,
                         logging_level="WARNING", configure_logging=True)
        except ConnectionError as error:
            raise ConfigError(f"--address {self.executor.address}: no Ray cluster there "
                              f"({' '.join(str(error).split())})") from None
        finally:
            _reinstall(self.handlers)  # (a Ray whose internals differ from those named there)
        return ray

    def close(self) -> None:
        """Stop the Ray this session started, if any, with the interrupting signals held
        meanwhile (:func:`_signals_held`): one that came is handled once Ray has stopped."""
        self.data.clear()
        if self.started:
            self.started = False
            with _signals_held():
                import_ray().shutdown()


#: The session of the innermost :func:`ray_session` block, if any.
_SESSION: _Session | None = None


@contextlib.contextmanager
def ray_session(executor: Executor) -> Iterator[_Session]:
    """One Ray for every :func:`run_on_ray` inside the block (``study``: all its stages), started
    (or joined) by the first that needs it, not before (a study with nothing left to run starts
    none), and stopped at the end of the block if it started it; each data set goes into the
    object store once. Inside another session's block, that session (and its executor)."""
    global _SESSION
    if _SESSION is not None:
        yield _SESSION
        return
    session = _SESSION = _Session(executor)
    try:
        yield session
    finally:
        _SESSION = None
        session.close()


class RemoteTraceback(Exception):
    """The traceback of a Ray task's exception, as text (Ray's, without its terminal colour
    codes): the cause :func:`run_on_ray` gives the exception it raises, as
    ``concurrent.futures`` gives a worker's, so that ``EQPDENET_DEBUG=1`` shows where the task
    failed (and the command line can tell an allocation failure in evaluation from one in
    training)."""

    def __init__(self, error: BaseException):
        super().__init__(re.sub(r"\x1b\[[0-9;]*m", "", str(error)))

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0].rstrip()}\n"""'


def task_failure(error, key: str) -> BaseException:
    """The exception that a run's Ray task raised (``error``: Ray's ``RayTaskError``), as the
    local executor would have raised it, so that the command prints the same one line: Ray's
    own ``str()`` is the remote traceback, with terminal colour codes, and ``describe_error``
    flattened it into one line of some 1,500 characters. An eqpdenet error (bad configuration,
    a plugin that its node cannot import) gets the run's key and the node's address in its
    message, which can differ between the nodes of a cluster; any other exception (a bug of a
    model, say) is the task's own, its run named in a note that only its traceback shows
    (``EQPDENET_DEBUG``). A cause that Ray could not bring back (not serialisable) leaves
    ``error`` itself."""
    from ..errors import EqPdeNetError

    cause = getattr(error, "cause", None)
    if not isinstance(cause, BaseException):
        return error
    # The instance ray.get raises (RayTaskError and the cause's class) has no ``ip``; its text
    # starts "ray::NAME() (pid=7, ip=10.0.0.5)".
    ip = getattr(error, "ip", None)
    if not ip:
        found = re.search(r"\(pid=\d+, ip=([^\s)]+)\)", str(error))
        ip = found.group(1) if found else None
    where = f"run {key}" + (f", Ray node {ip}" if ip else "")
    if isinstance(cause, EqPdeNetError) and len(cause.args) == 1 and isinstance(cause.args[0], str):
        try:  # the same class (so the same exit status), the message with where it happened
            named = type(cause)(f"{cause.args[0]} ({where})")
        except TypeError:  # a class whose constructor takes other arguments
            named = None
        if named is not None and str(named) == f"{cause} ({where})":
            return named
    cause.add_note(f"(raised in the Ray task of {where})")
    return cause


def run_on_ray(tasks: list[tuple[str, object, Path | None]], runner: Callable[..., dict],
               options: dict, executor: Executor, *, data_dir=None,
               cache_dir=None) -> Iterator[tuple[str, dict]]:
    """Run ``tasks`` (key, configuration, checkpoint path or None) as Ray tasks; yields (key,
    record) as they complete, after writing each wanted checkpoint (atomically) here.

    Runs in the Ray of the enclosing :func:`ray_session`, else in its own: it joins the cluster
    at ``executor.address``, or starts a local Ray instance when it is None and none is running
    in this process, and leaves (and stops what it started) at the end, or when the caller stops
    iterating (Ctrl-C, SIGTERM: unfinished tasks are cancelled). The tasks show their warnings
    with this process's ``warnings.showwarning`` (the command line's: one line each).
    """
    import json

    from ..data.datasets import dataset_fingerprint
    from .config import to_dict
    from .files import atomic_write
    from .training import prepare_data
    from .workers import _parent_warning_display

    with ray_session(executor) as session:
        ray = session.connect()
        pending: dict = {}
        try:
            resources = ray.cluster_resources()
            cluster_gpus = float(resources.get("GPU", 0))
            if executor.cpus_per_run > float(resources.get("CPU", 0)):
                raise ConfigError(f"--cpus-per-run {executor.cpus_per_run}: the Ray cluster has "
                                  f"{resources.get('CPU', 0):g} CPUs, so no run could ever start")
            if cluster_gpus == 0 and any(run.train.device == "cuda" for _, run, _ in tasks):
                raise ConfigError("train.device = 'cuda', but the Ray cluster has no GPU, so no "
                                  "run could ever start")
            task = ray.remote(_ray_task)
            plugins = tuple(plugin_names())
            # the tasks show warnings as this process does (a --jobs worker does the same)
            display = _parent_warning_display()
            display = pickle.dumps(display) if display is not None else None
            keys: dict[str, str] = {}  # the data's configuration -> its key (hashed once a call)
            for key, run, checkpoint in tasks:
                config_key = json.dumps(to_dict(run.data), sort_keys=True)
                if config_key not in keys:  # the same data: its configuration, folders, file
                    keys[config_key] = json.dumps([config_key, str(data_dir), str(cache_dir),
                                                   dataset_fingerprint(run.data.dataset)])
                data_key = keys[config_key]
                if data_key not in session.data:  # once per data set, in the driver
                    session.data[data_key] = ray.put(_compact(prepare_data(run.data, data_dir,
                                                                           cache_dir)))
                ref = task.options(num_cpus=executor.cpus_per_run,
                                   num_gpus=_gpus_for(run.train.device, cluster_gpus),
                                   max_retries=executor.max_retries,
                                   name=f"eqpdenet {key}").remote(
                    runner, to_dict(run), [session.data[data_key]], executor.cpus_per_run,
                    checkpoint is not None, options, plugins, display)
                pending[ref] = (key, checkpoint)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    key, checkpoint = pending.pop(ref)
                    try:
                        record, model = ray.get(ref)
                    except ray.exceptions.RayTaskError as error:
                        raise task_failure(error, key) from RemoteTraceback(error)
                    if checkpoint is not None and model is not None:
                        atomic_write(checkpoint, model)
                    yield key, record
        finally:
            for ref in pending:  # interrupted, or a run failed: stop the others
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone: nothing to stop
                    pass
