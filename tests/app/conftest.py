"""Fixtures of the application's tests."""

from __future__ import annotations

import pytest

from eqpdenet.app import sweeps, training


@pytest.fixture
def no_data(monkeypatch):
    """Loading data (or training) fails the test: every refusal it guards comes before that."""
    def forbidden(*args, **kwargs):
        raise AssertionError("data were loaded before the problem was found")

    monkeypatch.setattr(training, "prepare_data", forbidden)
    monkeypatch.setattr(sweeps, "prepare_data", forbidden)
    monkeypatch.setattr(sweeps, "_cached_data", forbidden)
