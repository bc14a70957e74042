"""Round 18 (probe r18/c2): the exported model's runner checks its logits (NaN logits, every
prediction class 0, came back where the model raises: 0..255 pixels) and warns once of images
far outside [0, 1]; float64 images beyond float32's range are refused after the conversion, not
run as inf; ``--out`` through a link is checked at the file it leads to (its suffix, and a FIFO
or a device there is refused); a damaged ``.pt2`` is named with the cause torch logs; the
deployment doc's script keeps onnxruntime's notes off stderr."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import eqpdenet.export as export
from eqpdenet.errors import (
    ConfigError,
    DataFileError,
    InputError,
    InputRangeWarning,
    OutputFolderError,
)
from eqpdenet.export import ExportedModel, check_export, export_model, load_exported
from eqpdenet.models import FCNN

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deployment.md"


def _runner(calls: list | None = None, nan_rows: tuple[int, ...] = ()):
    """A runner of 10 logits per image (the image's mean in every one), NaN in ``nan_rows``."""
    def run(images):
        if calls is not None:
            calls.append(images)
        logits = images.mean((1, 2, 3))[:, None].expand(-1, 10).clone()
        logits[list(nan_rows)] = float("nan")
        return logits
    return run


def _model(run, path="m.pt2") -> ExportedModel:
    return ExportedModel(Path(path), "exported-program", run, (1, 28, 28))


# ----------------------------------------------------------------------------- F1: the logits


def test_non_finite_logits_are_one_error_naming_how_many_and_the_range():
    model = _model(_runner(nan_rows=(0, 2)))
    images = torch.zeros(3, 1, 28, 28)
    images[1, 0, 0, 0] = 1.0
    with pytest.raises(InputError) as caught:
        model(images)
    assert str(caught.value) == (
        "the exported model m.pt2 gave non-finite logits (NaN or inf) on 2 of 3 images, finite "
        "ones with values in [0, 1]: the likely cause is their range (the file's verification "
        "gave finite logits on test images; eqpdenet's models train on pixels in [0, 1], x / 255, "
        "and the file does not record its own range)")


def test_finite_logits_pass_unchanged_and_an_empty_batch_runs():
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model = _model(_runner())
    assert torch.equal(model(images), images.mean((1, 2, 3))[:, None].expand(-1, 10))
    assert model(images[:0]).shape == (0, 10)


def test_a_real_file_with_overflowing_states_raises_where_it_gave_nan(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "fcnn.pt2"
    export_model(FCNN(hidden=8, input_mean=0.1307, input_std=0.3081), out, "exported-program",
                 images=torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    run = load_exported(out)
    huge = torch.full((2, 1, 28, 28), 3e38)  # finite; standardised, beyond float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputRangeWarning)
        with pytest.raises(InputError, match=r"gave non-finite logits \(NaN or inf\) on 2 of 2 "
                                             r"images, finite ones with values in \[3e\+38, "
                                             r"3e\+38\]"):
            run(huge)
        assert not torch.isfinite(run._run(huge)).all()  # what the runner gave before


def test_images_far_outside_0_1_warn_once_per_loaded_file():
    model = _model(_runner())
    pixels = torch.zeros(2, 1, 28, 28)
    pixels[0, 0, 3, 4] = 255.0
    with pytest.warns(InputRangeWarning) as caught:
        model(pixels)
    assert [str(w.message) for w in caught] == [
        "eqpdenet: images with values in [0, 255] given to the exported model m.pt2: eqpdenet "
        "trains on pixels in [0, 1] (x / 255; the file does not record its own range): images at "
        "0-255 instead of 0-1? (warned once per loaded file)"]
    assert caught[0].filename == __file__  # the user's line, not the library's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(pixels)  # once per loaded file
        fresh = _model(_runner())
        fresh(torch.full((1, 1, 28, 28), 1.5))  # within the slack, and so is -0.5
        fresh(torch.full((1, 1, 28, 28), -0.5))
    below = torch.zeros(1, 1, 28, 28)
    below[0, 0, 0, 0] = -0.75
    with pytest.warns(InputRangeWarning) as caught:
        fresh(below)
    assert str(caught[0].message) == (
        "eqpdenet: images with values in [-0.75, 0] given to the exported model m.pt2: eqpdenet "
        "trains on pixels in [0, 1] (x / 255; the file does not record its own range): images "
        "standardised already? the file standardises them itself (warned once per loaded file)")


# ----------------------------------------------------------------------------- F2: float64


def test_float64_beyond_float32_is_refused_after_the_conversion_before_the_run():
    calls = []
    model = _model(_runner(calls))
    images = torch.ones(2, 1, 28, 28, dtype=torch.float64)
    images[1, 0, 5, :3] = 1e300
    with pytest.raises(InputError) as caught:
        model(images)
    assert str(caught.value) == (
        "images contains 3 of 1568 values beyond float32's range (the largest magnitude 1e+300; "
        "float32's largest is 3.403e+38), which become inf in the float32 an exported file "
        "computes in: the input is at fault; check how it was produced")
    assert calls == []
    # a float64 NaN keeps the message of a NaN
    images[1, 0, 5, :3] = float("nan")
    with pytest.raises(InputError, match=r"^images contains non-finite values \(3 NaN, 0 inf of "
                                         r"1568\)"):
        model(images)
    # float64 within float32's range runs, converted
    out = model(torch.full((1, 1, 28, 28), 0.25, dtype=torch.float64))
    assert out.dtype == torch.float32 and out.tolist() == [[0.25] * 10]


def test_export_refuses_float64_images_beyond_float32_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "trace", None)  # must not be reached
    images = torch.full((2, 1, 28, 28), 1e300, dtype=torch.float64)
    with pytest.raises(InputError, match=r"^images contains 1568 of 1568 values beyond "
                                         r"float32's range"):
        export_model(FCNN(hidden=8), tmp_path / "m.pt2", "exported-program", images=images)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- F3: --out


def test_a_link_whose_target_has_the_other_suffix_is_refused(tmp_path, monkeypatch):
    (tmp_path / "wrong.onnx").symlink_to("target.pt2")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        check_export("exported-program", "target.onnx")  # the name's own suffix still first
    with pytest.raises(ConfigError) as caught:
        check_export("exported-program", "wrong.onnx")
    assert str(caught.value) == ("--out wrong.onnx: an exported-program file is named *.pt2 (it "
                                 "is read back by its suffix); e.g. wrong.pt2")
    (tmp_path / "wrong.pt2").symlink_to("target.onnx")
    with pytest.raises(ConfigError) as caught:
        check_export("exported-program", "wrong.pt2")
    assert str(caught.value) == ("--out wrong.pt2 is a symbolic link to target.onnx, the file "
                                 "that would be written, and an exported-program file is named "
                                 "*.pt2 (it is read back by its suffix)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.onnx", "wrong.pt2"]
    (tmp_path / "right.pt2").symlink_to("target.pt2")
    assert check_export("exported-program", "right.pt2").name == "exported-program"


def test_a_fifo_at_out_or_behind_a_link_is_refused_and_left(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkfifo("pipe.pt2")
    Path("link.pt2").symlink_to("pipe.pt2")
    with pytest.raises(OutputFolderError) as caught:
        check_export("exported-program", "pipe.pt2")
    assert str(caught.value) == ("cannot write pipe.pt2: it is a FIFO (named pipe), not a file; "
                                 "give the path of a file")
    monkeypatch.setattr(export, "trace", None)  # must not be reached
    with pytest.raises(OutputFolderError) as caught:
        export_model(FCNN(hidden=8), "link.pt2", "exported-program",
                     images=torch.zeros(2, 1, 28, 28))
    assert str(caught.value) == ("cannot write link.pt2: pipe.pt2, the file the link leads to, "
                                 "is a FIFO (named pipe), not a file; give the path of a file")
    assert Path("pipe.pt2").is_fifo() and sorted(os.listdir(".")) == ["link.pt2", "pipe.pt2"]


def test_what_is_not_a_file_is_named():
    import stat
    assert export._not_a_file(Path(__file__)) is None
    assert export._not_a_file(Path(__file__).parent) is None
    assert export._not_a_file(Path(__file__).parent / "no such file") is None
    for mode, words in ((stat.S_IFCHR, "a character device"), (stat.S_IFBLK, "a block device"),
                        (stat.S_IFSOCK, "a socket")):
        fake = os.stat_result((mode | 0o666, 0, 0, 1, 0, 0, 0, 0, 0, 0))
        original = export.os.stat
        export.os.stat = lambda path, fake=fake: fake
        try:
            assert export._not_a_file(Path("x")) == words
        finally:
            export.os.stat = original


# ----------------------------------------------------------------------------- F4: a damaged .pt2


def test_a_damaged_pt2_is_named_with_the_cause_torch_logs(tmp_path, capfd):
    path = tmp_path / "ckpt.pt2"
    torch.save({"weights": torch.zeros(3)}, path)  # a zip archive, not an exported program
    logger = logging.getLogger("torch.export")
    level, filters = logger.level, list(logger.filters)
    with pytest.raises(DataFileError) as caught:
        load_exported(path)
    assert str(caught.value) == (
        f"{path}: not an exported program torch.export.load can read: damaged, or not written by "
        f"torch.export.save (RuntimeError: PytorchStreamReader failed locating file "
        f"archive_format: file not found)")
    assert "warnings above" not in str(caught.value)
    assert capfd.readouterr().err == ""  # torch's traceback stays quiet
    assert (logger.level, logger.filters) == (level, filters)


def test_a_cause_after_a_cpp_checks_location_is_kept(tmp_path):
    """Round 18 review: an empty zip named .pt2 said only "[enforce fail at ...] " (the ". "
    after the C++ location was taken for the end of the first sentence)."""
    import zipfile

    path = tmp_path / "empty.pt2"
    with zipfile.ZipFile(path, "w"):
        pass
    with pytest.raises(DataFileError) as caught:
        load_exported(path)
    assert str(caught.value).endswith(". archive does not contain any files)")
    assert export._first_sentence(RuntimeError("[enforce fail at a.cc:1] . cause. advice")) == (
        "RuntimeError: [enforce fail at a.cc:1] . cause")


# ----------------------------------------------------------------------------- F5: the doc script


def _castlike_model(path: Path) -> None:
    """A model of (batch, 1, 28, 28) -> 10 logits with a CastLike of two constants, which
    onnxruntime cannot constant-fold and says so at its default log level (as in a
    LiftedPDENet file's graph)."""
    helper = pytest.importorskip("onnx.helper")
    onnx = pytest.importorskip("onnx")
    tensor = onnx.TensorProto
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", tensor.INT64, [], [0])),
        helper.make_node("Constant", [], ["d"], value=helper.make_tensor("d", tensor.FLOAT, [], [1.0])),
        helper.make_node("CastLike", ["c", "d"], ["z"]),
        helper.make_node("Flatten", ["images"], ["f"]),
        helper.make_node("Add", ["f", "z"], ["g"]),
        helper.make_node("Slice", ["g", "start", "end", "axis"], ["logits"]),
    ]
    constants = [helper.make_tensor(name, tensor.INT64, [1], [value])
                 for name, value in (("start", 0), ("end", 10), ("axis", 1))]
    graph = helper.make_graph(
        nodes, "castlike", [helper.make_tensor_value_info("images", tensor.FLOAT, ["n", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", tensor.FLOAT, ["n", 10])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_the_doc_script_keeps_onnxruntime_notes_off_stderr(tmp_path):
    pytest.importorskip("onnxruntime")
    _castlike_model(tmp_path / "m.onnx")
    pixels = np.zeros((3, 28, 28), np.uint8)
    pixels[1, 0, 2] = 255  # the third logit, image 1
    (tmp_path / "images").write_bytes(b"\x00\x00\x08\x03" + np.array([3, 28, 28], ">u4").tobytes()
                                      + pixels.tobytes())
    (tmp_path / "labels").write_bytes(b"\x00\x00\x08\x01" + np.array([3], ">u4").tobytes()
                                      + bytes([0, 2, 0]))
    script = re.findall(r"<!-- script: classify\.py -->\n```python\n(.*?)```", DOC.read_text(),
                        re.S)[0]
    (tmp_path / "classify.py").write_text(script)
    done = subprocess.run([sys.executable, "classify.py", "m.onnx", "images", "labels"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == "predictions: 0 2 0 ...\naccuracy on 3 test digits: 100.00%\n"
