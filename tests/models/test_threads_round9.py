"""Models shared between threads (round 9). A module's entry checks are skipped only inside the
``input_checked`` block of the thread that checked its input: the flag was an attribute saved and
restored per block, and two threads calling one model (serving, or training in one thread while
another evaluates) interleaved their saves and left the sub-layers unchecked for good (a NaN
image through ``model.lift`` went into its batch norm's running mean without an error).

The interleavings are forced with events, not left to the scheduler: each test is deterministic.
"""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch

from eqpdenet.app.config import LiftedPDEConfig, ModelConfig, build_model
from eqpdenet.checks import input_checked, is_input_checked
from eqpdenet.errors import InputError


def lifted():
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="lifted_pde", image_size=12, lifted_pde=LiftedPDEConfig(
        orientations=4, channels=[2, 3], blocks=[1, 1])))


def nan_images():
    images = torch.rand(2, 1, 12, 12)
    images[0, 0, 3, 3] = float("nan")
    return images


def in_thread(target):
    """Run ``target`` in a thread; its exception (if any) raised here."""
    errors = []

    def run():
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_a_block_in_one_thread_skips_no_check_in_another():
    model = lifted()
    inside, done = threading.Event(), threading.Event()

    def hold():  # thread B: inside the block of the lift until the main thread is done
        with input_checked(model.lift):
            assert is_input_checked(model.lift)
            inside.set()
            assert done.wait(60)

    thread, errors = in_thread(hold)
    try:
        assert inside.wait(60)
        assert not is_input_checked(model.lift)
        with pytest.raises(InputError, match="non-finite"):
            model.lift(nan_images())
    finally:
        done.set()
        thread.join(60)
    assert not errors


def test_interleaved_blocks_leave_every_module_checked():
    """A enters, B enters, A exits, B exits: the order that left the flag set."""
    model = lifted()
    modules = [model.lift, *model.modules()]
    b_inside, a_left = threading.Event(), threading.Event()

    def b():
        with input_checked(*modules):
            b_inside.set()
            assert a_left.wait(60)

    with input_checked(*modules):  # A
        thread, errors = in_thread(b)
        assert b_inside.wait(60)
    a_left.set()
    thread.join(60)
    assert not errors
    assert not any(is_input_checked(module) for module in modules)
    assert not any("_input_checked" in vars(module) for module in modules)
    running_mean = [m.running_mean.clone() for m in model.lift.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with pytest.raises(InputError, match="non-finite"):
        model.lift(nan_images())
    after = [m.running_mean for m in model.lift.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(torch.equal(a, b) for a, b in zip(running_mean, after, strict=True))


def test_two_threads_serving_one_model_give_the_sequential_logits_and_keep_the_checks():
    model = lifted().eval()
    images = [torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(i))
              for i in range(4)]
    with torch.no_grad():
        expected = [model(x) for x in images]
    start = threading.Barrier(2)
    got = {}

    def serve(index):
        start.wait(60)
        with torch.no_grad():
            got[index] = [model(x) for x in images for _ in range(5)][::5]

    threads = [in_thread(lambda i=i: serve(i)) for i in range(2)]
    for thread, errors in threads:
        thread.join(120)
        assert not errors
    for index in range(2):
        assert all(torch.equal(a, b) for a, b in zip(got[index], expected, strict=True))
    with pytest.raises(InputError, match="non-finite"):
        model.lift(nan_images())


def test_a_copy_made_inside_a_block_is_checked():
    model = lifted()
    with input_checked(model.lift):
        copied = copy.deepcopy(model.lift)
        pickled = pickle.loads(pickle.dumps(model.lift))
        assert is_input_checked(model.lift)
    for module in (copied, pickled):
        assert not is_input_checked(module)
        with pytest.raises(InputError, match="non-finite"):
            module(nan_images())


def test_nested_and_failing_blocks_restore_the_state():
    model = lifted()
    with pytest.raises(RuntimeError, match="inside"):
        with input_checked(model.lift):
            with input_checked(model.lift, model.stages):
                assert is_input_checked(model.stages)
            assert is_input_checked(model.lift) and not is_input_checked(model.stages)
            raise RuntimeError("inside")
    assert not is_input_checked(model.lift)
