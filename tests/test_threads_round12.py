"""Calls of the library from two threads at once leave the process as they found it (round 12):
warning filters, ``warnings.showwarning``, ``sys.stdout``, and torch's global generator as each
thread seeded it. The overlaps are forced, not hoped for (:class:`Overlap`): the first thread is
inside the block when the second arrives (inside it too, or waiting at a lock the first holds),
and the first leaves before the second, the order that left state behind; every wait is bounded.
Also: ``EQPDENET_DEBUG=0`` (or false, no, off) is off."""

from __future__ import annotations

import sys
import threading
import warnings

import pytest
import torch

import eqpdenet.export as export
from data_helpers import tiny_config, tiny_data
from eqpdenet import build_model
from eqpdenet.app import cli, preflight, training
from eqpdenet.app.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig

#: Seconds: a bound on a hang, never reached when the code is right.
WAIT = 60


class Overlap:
    """Forces two threads, named ``first`` and ``second``, through a block in the order: first
    enters, second arrives, first leaves, second leaves.

    :meth:`inside` is called (by a patched function) inside the block; :meth:`arrived` where the
    second thread may wait at a lock the first holds (:class:`ArrivalLock`); :meth:`left` once the
    first thread has left the block. Failures of either thread (a wait that timed out included)
    are kept in :attr:`errors`."""

    def __init__(self):
        self.first_in = threading.Event()
        self.second_arrived = threading.Event()
        self.first_left = threading.Event()
        self.errors: list[BaseException] = []
        self.results: dict[str, object] = {}

    def inside(self) -> None:
        name = threading.current_thread().name
        if name == "first":
            self.first_in.set()
            assert self.second_arrived.wait(WAIT), "the second thread never arrived"
        elif name == "second":
            self.second_arrived.set()
            assert self.first_left.wait(WAIT), "the first thread never left"

    def arrived(self) -> None:
        if threading.current_thread().name == "second":
            self.second_arrived.set()

    def left(self) -> None:
        if threading.current_thread().name == "first":
            self.first_left.set()

    def run(self, first, second) -> dict[str, object]:
        def target(name, work):
            try:
                self.results[name] = work()
            except BaseException as error:  # noqa: BLE001 - reported by the test's thread
                self.errors.append(error)
            finally:  # never leave the other thread waiting for the bound
                if name == "first":
                    self.first_in.set()
                    self.first_left.set()
                else:
                    self.second_arrived.set()

        one = threading.Thread(target=target, args=("first", first), name="first")
        one.start()
        assert self.first_in.wait(WAIT)
        two = threading.Thread(target=target, args=("second", second), name="second")
        two.start()
        one.join(WAIT)
        two.join(WAIT)
        assert not one.is_alive() and not two.is_alive(), "a thread hung"
        if self.errors:
            raise self.errors[0]
        return self.results


class ArrivalLock:
    """``lock`` that tells ``overlap`` when a thread arrives at it (before it may wait)."""

    def __init__(self, lock, overlap: Overlap):
        self.lock, self.overlap = lock, overlap

    def __enter__(self):
        self.overlap.arrived()
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


def _wrap_lock(monkeypatch, module, name: str, overlap: Overlap) -> None:
    lock = getattr(module, name, None) or threading.RLock()  # none before round 12: unused
    monkeypatch.setattr(module, name, ArrivalLock(lock, overlap), raising=False)


def _state():
    return list(warnings.filters), warnings.showwarning, sys.stdout


def _config(kind: str = "fcnn") -> ExperimentConfig:
    return ExperimentConfig(model=ModelConfig(kind=kind, hidden=8, image_size=12, classes=3),
                            data=DataConfig(dataset="mnist", train_subset=64, test_subset=16),
                            train=TrainConfig(epochs=1, batch_size=16))


# ----------------------------------------------------------------------------- warning filters


def test_preflight_in_two_threads_leaves_the_warning_filters_as_they_were(monkeypatch):
    config = _config()
    preflight.preflight([config], None, images=64)  # imports done: their own filters in place
    before = _state()
    overlap = Overlap()
    real_build, real_model = preflight.build_model, preflight._model

    def build(model_config):
        overlap.inside()
        return real_build(model_config)

    def model(run):
        try:
            return real_model(run)
        finally:
            overlap.left()

    monkeypatch.setattr(preflight, "build_model", build)
    monkeypatch.setattr(preflight, "_model", model)
    _wrap_lock(monkeypatch, preflight, "GLOBAL_RNG_LOCK", overlap)
    work = lambda: preflight.preflight([config], None, images=64)  # noqa: E731
    overlap.run(work, work)
    assert _state() == before


def test_gcnn_built_in_two_threads_leaves_the_warning_filters_as_they_were(monkeypatch):
    e2cnn_nn = pytest.importorskip("e2cnn.nn")
    build_model("gcnn", image_size=12)
    before = _state()
    overlap = Overlap()
    real_pooling = e2cnn_nn.GroupPooling

    def pooling(*args, **kwargs):  # called inside the constructor's quiet block
        overlap.inside()
        return real_pooling(*args, **kwargs)

    monkeypatch.setattr(e2cnn_nn, "GroupPooling", pooling)

    def work():
        try:
            return build_model("gcnn", image_size=12)
        finally:
            overlap.left()

    models = overlap.run(work, work)
    assert _state() == before
    assert len(models) == 2


def test_the_gcnn_still_hides_e2cnns_uint8_mask_warning_and_nothing_of_the_user():
    pytest.importorskip("e2cnn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # a group and kernel no other test builds: e2cnn samples each basis (and warns) once
        build_model("gcnn", image_size=12, gcnn={"group_order": 3, "channels": [2], "kernels": [9],
                                                 "pool_after": []})
        warnings.warn("the user's own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["the user's own"]


def test_quiet_warnings_blocks_may_end_in_any_order_and_keep_others_filters():
    from eqpdenet.process_state import Silenced, quiet_warnings

    with warnings.catch_warnings():
        before = list(warnings.filters)
        outer = quiet_warnings(Silenced(RuntimeWarning))
        inner = quiet_warnings()
        outer.__enter__()
        inner.__enter__()
        warnings.filterwarnings("error", "someone else's")  # added meanwhile: kept
        outer.__exit__(None, None, None)  # the first block ends first, as a thread's may
        inner.__exit__(None, None, None)
        assert warnings.filters[1:] == before
        assert warnings.filters[0][:3] == ("error", warnings.filters[0][1], Warning)


def test_quiet_warnings_hides_only_what_it_names():
    from eqpdenet.process_state import Silenced, quiet_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_warnings(Silenced(RuntimeWarning, "known"), Silenced(module=r"nowhere(\.|$)")):
            warnings.warn("Known: hidden", RuntimeWarning, stacklevel=1)
            warnings.warn("known, but a UserWarning", UserWarning, stacklevel=1)
            warnings.warn("another RuntimeWarning", RuntimeWarning, stacklevel=1)
        warnings.warn("Known: after the block", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["known, but a UserWarning", "another RuntimeWarning",
                                                "Known: after the block"]


# ----------------------------------------------------------------------------- export


def test_two_exports_at_once_both_succeed_and_leave_stdout_and_filters(tmp_path, monkeypatch):
    images = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    export.export_model(build_model("fcnn", hidden=8, image_size=12).eval(), tmp_path / "warm.pt2",
                        "exported-program", images=images)
    before = _state()
    overlap = Overlap()
    streams = []
    real_export, real_trace = torch.export.export, export.trace

    def traced(*args, **kwargs):  # torch's exporter, inside the library's quiet block
        streams.append(sys.stdout)
        overlap.inside()
        return real_export(*args, **kwargs)

    def trace(*args, **kwargs):
        try:
            return real_trace(*args, **kwargs)
        finally:
            overlap.left()

    monkeypatch.setattr(torch.export, "export", traced)
    monkeypatch.setattr(export, "trace", trace)
    _wrap_lock(monkeypatch, export, "EXPORT_LOCK", overlap)

    def work(name):
        model = build_model("fcnn", hidden=8, image_size=12).eval()
        return lambda: export.export_model(model, tmp_path / name, "exported-program",
                                           images=images)

    reports = overlap.run(work("first.pt2"), work("second.pt2"))
    assert _state() == before
    # nothing redirected: another thread's prints during an export are not swallowed
    assert streams == [before[2], before[2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.pt2", "second.pt2", "warm.pt2"]
    assert all(r.relative_difference <= export.DEFAULT_TOLERANCE for r in reports.values())


# ----------------------------------------------------------------------------- training


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_threads_training_at_once_get_the_weights_of_each_alone(monkeypatch):
    data = tiny_data()
    configs = {name: tiny_config(f"train.seed={seed}", "model.hidden=8")
               for name, seed in (("first", 0), ("second", 1))}
    alone = {name: _weights(training.train_model(c, data, progress=False)[0])
             for name, c in configs.items()}
    overlap = Overlap()
    real_build = training.build_model

    def build(model_config):  # called after the seeding, where the initial weights are drawn
        overlap.inside()
        try:
            return real_build(model_config)
        finally:
            overlap.left()

    monkeypatch.setattr(training, "build_model", build)
    _wrap_lock(monkeypatch, training, "GLOBAL_RNG_LOCK", overlap)
    _wrap_lock(monkeypatch, preflight, "GLOBAL_RNG_LOCK", overlap)  # the second's preflight
    results = overlap.run(*(lambda c=c: _weights(training.train_model(c, data, progress=False)[0])
                            for c in configs.values()))
    for name in configs:
        assert results[name].keys() == alone[name].keys()
        different = [k for k in alone[name] if not torch.equal(results[name][k], alone[name][k])]
        assert different == [], f"{name}: {different}"


def test_training_alone_leaves_the_global_generator_as_manual_seed_leaves_it():
    training.train_model(tiny_config("train.seed=3"), tiny_data(), progress=False)
    after = torch.get_rng_state()
    training.train_model(tiny_config("train.seed=3"), tiny_data(), progress=False)
    assert torch.equal(torch.get_rng_state(), after)


# ----------------------------------------------------------------------------- command line


def test_the_command_line_in_two_threads_leaves_showwarning_as_it_was(monkeypatch, capsys):
    before = _state()
    overlap = Overlap()
    shown = []

    def info(args):
        shown.append(warnings.showwarning)
        overlap.inside()
        return 0

    monkeypatch.setattr(cli, "_info", info)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)

    def work():
        try:
            return cli.main(["info"])
        finally:
            overlap.left()

    assert overlap.run(work, work) == {"first": 0, "second": 0}
    assert _state() == before
    # a call from another thread than the main one leaves the host's warning format alone
    assert shown == [before[1], before[1]]


def test_the_command_line_in_the_main_thread_still_says_warnings_in_one_line(monkeypatch, capsys):
    def info(args):
        warnings.warn("eqpdenet: something to say\n  over two lines", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "_info", info)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["info"]) == 0
    assert warnings.showwarning is before
    assert capsys.readouterr().err == "eqpdenet: warning: something to say over two lines\n"


def _broken(args):
    raise ZeroDivisionError("division by zero in a bug")


@pytest.mark.parametrize("value", ["0", "false", "no", "off", " OFF ", "False", ""])
def test_eqpdenet_debug_off_values_leave_debug_off(value, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_info", _broken)
    monkeypatch.setenv(cli.DEBUG_VARIABLE, value)
    assert cli.main(["info"]) == 1
    assert capsys.readouterr().err == (
        "eqpdenet: error: unexpected ZeroDivisionError: division by zero in a bug (a bug in "
        "eqpdenet? please report it with the traceback) (EQPDENET_DEBUG=1 shows the traceback)\n")


@pytest.mark.parametrize("value", ["1", "yes", "true", "on", "2"])
def test_eqpdenet_debug_on_values_show_the_traceback(value, monkeypatch):
    monkeypatch.setattr(cli, "_info", _broken)
    monkeypatch.setenv(cli.DEBUG_VARIABLE, value)
    with pytest.raises(ZeroDivisionError):
        cli.main(["info"])


def test_env_flag_reads_on_and_off_as_the_cuda_graphs_switch_does(monkeypatch):
    from eqpdenet.process_state import env_flag

    name = "EQPDENET_TEST_FLAG_ROUND12"
    monkeypatch.delenv(name, raising=False)
    assert (env_flag(name, True), env_flag(name, False)) == (True, False)
    for value, expected in (("0", False), (" No ", False), ("OFF", False), ("false", False),
                            ("1", True), ("yes", True), ("anything", True), ("  ", None)):
        monkeypatch.setenv(name, value)
        assert env_flag(name, False) is (expected if expected is not None else False), value
        assert env_flag(name, True) is (expected if expected is not None else True), value
