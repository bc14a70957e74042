"""A matplotlibrc with ``text.usetex`` on and no LaTeX (probe round 13): every command that
draws failed at its end, after the work ("latex could not be found", said as a bug in
eqpdenet); it is one line among the argument checks now."""

from __future__ import annotations

import shutil

import pytest

from eqpdenet.app import files
from eqpdenet.errors import MissingDependencyError

matplotlib = pytest.importorskip("matplotlib")


def test_usetex_without_latex_is_refused_before_any_work(monkeypatch):
    monkeypatch.setitem(matplotlib.rcParams, "text.usetex", True)
    monkeypatch.setattr(shutil, "which", lambda tool, *a, **k: None)
    with pytest.raises(MissingDependencyError, match=r"eqpdenet report \(its plot\): matplotlib's "
                                                     r"text.usetex is on .* but latex and dvipng "
                                                     r"are not installed"):
        files.import_pyplot("eqpdenet report (its plot)")


def test_usetex_with_latex_or_off_is_left_to_matplotlib(monkeypatch):
    monkeypatch.setitem(matplotlib.rcParams, "text.usetex", True)
    monkeypatch.setattr(shutil, "which", lambda tool, *a, **k: f"/usr/bin/{tool}")
    assert files.import_pyplot("a plot") is not None
    monkeypatch.setitem(matplotlib.rcParams, "text.usetex", False)
    monkeypatch.setattr(shutil, "which", lambda tool, *a, **k: None)
    assert files.import_pyplot("a plot") is not None
