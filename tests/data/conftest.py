"""Fixtures of the data tests."""

import socket

import pytest


@pytest.fixture
def refused() -> str:
    """A mirror that refuses every connection at once (a port nothing listens on)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
