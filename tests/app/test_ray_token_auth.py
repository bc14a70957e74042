"""A Ray head that requires token authentication, started as docs/distributed.md says
(``ray start --head``), and ``--address HOST:PORT``.

Ray 2.60 starts heads with token authentication, and ``ray.init`` sends this machine's token to
an address given explicitly only under ``RAY_AUTH_MODE=token`` (``--address auto`` turns it on
where a token exists). eqpdenet's check of the address took the head's refusal for a head, wrote
the sweep's folder, and ``ray.init`` then printed 20 lines of Ray's retries and "no Ray cluster
there". Now the check asks with the authentication ``ray.init`` would send, and refuses, before
anything is written, in one line saying what to set.

The head is this test's own: a token of its own (``RAY_AUTH_TOKEN``), its own temporary folder
(so ``--address auto`` elsewhere on this machine does not find it), free ports, and ``ray start
--block``, whose SIGTERM stops every process it started; whatever of them is still alive after
that is killed by its process id.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from eqpdenet.app.cli import main
from eqpdenet.app.distributed import check_address
from eqpdenet.errors import ConfigError
from process_helpers import alive, descendants, poll

HANG = 120  # seconds: only bounds a hang


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def token_head():
    """``(address, token)`` of a Ray head started by ``ray start --head`` with token
    authentication."""
    pytest.importorskip("ray")
    ray_command = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray_command is None:
        pytest.skip("no `ray` command beside this Python")
    token = secrets.token_hex(16)
    folder = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    head = subprocess.Popen(
        [ray_command, "start", "--head", "--block", "--port", str(port), "--num-cpus", "1",
         "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", folder,
         "--node-ip-address", "127.0.0.1", "--dashboard-port", str(free_port())],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        if not poll(lambda: head.poll() is not None or _listening(port), HANG) \
                or head.poll() is not None:
            pytest.fail(f"`ray start --head` did not start: {head.communicate()[1][-2000:]}")
        yield f"127.0.0.1:{port}", token
    finally:
        started = descendants(head.pid)
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            head.kill()
            head.communicate()
        for pid in started:  # anything it left
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def no_ray_settings(monkeypatch, tmp_path_factory):
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))  # no ~/.ray/auth_token


def test_an_explicit_address_without_token_mode_is_refused_saying_what_to_set(token_head,
                                                                              no_ray_settings):
    address, _ = token_head
    with pytest.raises(ConfigError) as caught:
        check_address(address, timeout=60)
    assert str(caught.value) == (
        f"--address {address}: the Ray head there requires token authentication, and Ray sends "
        f"a token to an address given explicitly only under RAY_AUTH_MODE=token: set "
        f"RAY_AUTH_MODE=token (`ray get-auth-token` on the head prints its token; put it in "
        f"~/.ray/auth_token or RAY_AUTH_TOKEN here), or use --address auto on a machine of the "
        f"cluster")


def test_token_mode_with_the_heads_token_passes_and_a_wrong_token_is_named(token_head,
                                                                          no_ray_settings,
                                                                          monkeypatch):
    address, token = token_head
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    check_address(address, timeout=60)
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    with pytest.raises(ConfigError, match="the Ray head there refused this machine's "
                                          "authentication token"):
        check_address(address, timeout=60)


def test_address_auto_sends_the_token_as_ray_init_does(token_head, no_ray_settings, monkeypatch):
    """``ray.init(address="auto")`` turns token authentication on where a token exists; the
    check does the same (it refused a head that ``auto`` joins)."""
    address, token = token_head
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    check_address("auto", timeout=60)


def test_the_command_refuses_before_writing_anything(token_head, no_ray_settings, tmp_path,
                                                     capsys):
    address, _ = token_head
    out = tmp_path / "sweep"
    status = main(["reproduce", "--out", str(out), "--no-progress", "--executor", "ray",
                   "--address", address, "--set", "hidden_sizes=[8]", "--set", "seeds=[0]"])
    assert status == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"eqpdenet: error: --address {address}: the "
                                                   f"Ray head there requires token "
                                                   f"authentication"), lines
    assert not out.exists()
    assert not list(Path(tmp_path).iterdir())
