"""Round 16: a second SIGTERM while the command cleans up after the first (a scheduler's
repeat, ``kill`` twice) cut the clean-up short or, once the handlers were restored, ended the
process with 143 instead of 130. The first interrupting signal now makes the process ignore
both SIGTERM and SIGHUP until it ends."""

from __future__ import annotations

import os
import signal

import pytest

from eqpdenet.app.cli import _terminate_as_interrupt

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")


@pytest.fixture
def restore_handlers():
    # SIGINT too: the first interrupt makes the process ignore it as well (round 18), and a
    # test process left ignoring it starts every later test's commands ignoring Ctrl-C
    saved = {number: signal.getsignal(number)
             for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_after_the_first_sigterm_later_ones_are_ignored_to_the_end(restore_handlers,
                                                                    monkeypatch):
    from eqpdenet.app import cli

    monkeypatch.setattr(cli, "ENDS_THE_PROCESS", True)  # the console's process (round 18)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    cleaned = []
    with pytest.raises(KeyboardInterrupt), _terminate_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # during the clean-up: ignored, not raised
            cleaned.append(True)
    assert cleaned == [True]
    # after the block (main returns 130): still ignored, where SIG_DFL ended the process, 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGTERM)  # would end this test process before the fix


def test_without_a_signal_the_handlers_are_restored(restore_handlers):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with _terminate_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
