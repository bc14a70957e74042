"""Export (issue 19): every family in MODELS exports to both formats, and the file computes the
model's logits on real test digits (its batch axis of any size, its quarter-turn invariance kept);
the verification fails where it should and leaves no file; bad input is one error before any work.

A family registered in MODELS without an entry in :data:`TINY` fails here: every family exports.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data_helpers import mnist_or_skip
from eqpdenet import kernels
from eqpdenet.checks import check_values, export_mode, exporting
from eqpdenet.errors import (
    ConfigError,
    ExportError,
    InputError,
    MissingDependencyError,
    OutputFolderError,
)
from eqpdenet.export import (
    DEFAULT_TOLERANCE,
    FORMATS,
    ONNX_OPSET,
    STAGING_SUFFIX,
    STALE_GRACE,
    ExportReport,
    _float32_noise,
    export_model,
    load_exported,
    trace,
)
from eqpdenet.files import _held, temporary_beside
from eqpdenet.kernels.op import operator_arguments
from eqpdenet.models import (
    FCNN,
    MODELS,
    CNNConfig,
    EqPdeNet,
    GCNNConfig,
    InvariantPDEConfig,
    LiftedPDEConfig,
    build_model,
)
from eqpdenet.pde import LayerConfig, PDELayer
from process_helpers import poll

#: family -> [(options of a tiny model, whether it claims quarter-turn invariance)]
TINY = {
    "eqpdenet": [
        ({"hidden": 8, "layer": LayerConfig.paper(T=0.2, init="normal", init_scale=0.05)}, False),
        ({"hidden": 8, "head": "invariant",
          "layer": LayerConfig(invariants=["se2", "sim2"], reduction="concat", T=0.2,
                               init="normal", init_scale=0.05)}, True),
    ],
    "fcnn": [({"hidden": 8}, False)],
    "cnn": [({"cnn": CNNConfig(channels=4, layers=2)}, False)],
    "gcnn": [({"gcnn": GCNNConfig(channels=[2, 3], kernels=[5, 3], pool_after=[1])}, True),
             ({"gcnn": GCNNConfig(channels=[2, 3], kernels=[5, 3], pool_after=[1], center=True)},
              True)],
    "invariant_pde": [({"invariant_pde": InvariantPDEConfig(channels=[4, 6], blocks=[1, 1])},
                       True)],
    "lifted_pde": [({"lifted_pde": LiftedPDEConfig(orientations=4, channels=[3, 4],
                                                   blocks=[1, 1])}, True),
                   # the background boundary, centring and a change of orientation count in one
                   # (each lifted export takes 10-20 s: the CI budget)
                   ({"lifted_pde": LiftedPDEConfig(stage_orientations=[8, 4], channels=[3, 4],
                                                   blocks=[1, 1], boundary="background",
                                                   center=True)}, True),
                   # scales > 1: chunking the batch by scale fixed the batch size in the graph
                   ({"lifted_pde": LiftedPDEConfig(orientations=4, channels=[2, 3], blocks=[1, 1],
                                                   scales=2)}, True)],
}
CASES = [(kind, index) for kind in MODELS.names() for index in range(len(TINY.get(kind, [0])))]
# Every configuration goes to ONNX, which is made from the exported program (export.py), so it
# exercises that path too; the exported-program format itself (its file, PyTorch as the runtime)
# is checked on the paper's model, the G-CNN (e2cnn's modules) and the multi-scale lifted model,
# whose batch chunking had fixed the batch size in the graph. (Each lifted export takes 10-20 s
# here; every family's first configuration in that format as well cost a minute of CI.)
FORMAT_CASES = ([("onnx", kind, index) for kind, index in CASES]
                + [("exported-program", kind, index) for kind, index in CASES
                   if (kind, index) in (("eqpdenet", 0), ("gcnn", 0), ("lifted_pde", 2))])


def digits(count: int) -> torch.Tensor:
    """The first ``count`` MNIST test digits, ``(count, 1, 28, 28)`` in [0, 1]."""
    images = mnist_or_skip().test_images[:count]
    return torch.from_numpy(images).float().div(255.0)[:, None]


def tiny_model(kind: str, index: int) -> tuple[nn.Module, bool]:
    if kind not in TINY:
        pytest.fail(f"model family {kind!r} has no tiny configuration in tests/test_export.py "
                    f"TINY: every family in MODELS must export (docs/deployment.md)")
    options, claim = TINY[kind][index]
    if kind == "gcnn":
        pytest.importorskip("e2cnn")
    torch.manual_seed(0)
    model = build_model(kind, **options)
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval(), claim


def largest(t: torch.Tensor) -> float:
    return float(t.abs().max())


@pytest.mark.parametrize("format, kind, index", FORMAT_CASES,
                         ids=[f"{k}{i or ''}-{f}" for f, k, i in FORMAT_CASES])
def test_every_family_exports_and_the_file_computes_its_logits(kind, index, format, tmp_path):
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    model, claim = tiny_model(kind, index)
    images = digits(48)
    out = tmp_path / f"model{FORMATS.get(format).suffix}"
    report = export_model(model, out, format, images=images)
    assert out.exists() and [p.name for p in tmp_path.iterdir()] == [out.name]
    assert report.relative_difference <= DEFAULT_TOLERANCE and report.float32_noise is None

    # independently of the report: the file, by its runtime, against PyTorch's model
    run = load_exported(out)
    with torch.no_grad():
        expected = model(images)
    for batch in (images, images[:1], images[5:8]):  # a batch axis of any size
        logits = run(batch)
        assert logits.shape == (len(batch), 10)
        scale = largest(expected)
        assert largest(logits - model(batch).detach()) <= DEFAULT_TOLERANCE * scale
    # an empty batch too (onnxruntime's Einsum died of SIGFPE there while the lifted model's
    # reference path used einsum; it no longer does, and a worker that died would fail the run)
    assert run(torch.zeros(0, 1, 28, 28)).shape == (0, 10)
    if format == "onnx":
        if kind == "lifted_pde":
            # torch.eye in M2Lift.forward became Range/Cast/Equal on uint8 in the graph, which
            # onnxruntime 1.18 cannot run ("Could not find an implementation for Equal(13)")
            onnx = pytest.importorskip("onnx")
            operators = {node.op_type for node in onnx.load(out).graph.node}
            assert "Equal" not in operators and "EyeLike" not in operators

    assert getattr(model, "quarter_turn_invariant", False) is claim
    logits = run(images)
    turned = max(largest(run(torch.rot90(images, k, (-2, -1)).contiguous()) - logits)
                 for k in (1, 2, 3)) / largest(logits)
    if claim:
        assert turned <= DEFAULT_TOLERANCE and report.quarter_turn_error <= DEFAULT_TOLERANCE
    else:  # the check can fail: a model that is not invariant is far from it
        assert turned > 1e-3 and report.quarter_turn_error is None


def test_the_eager_comparison_is_against_the_fused_kernel():
    """The paper's EqPdeNet runs the C++ kernel in PyTorch, and the exported graph the
    reference: the verification compares the two implementations."""
    model, _ = tiny_model("eqpdenet", 0)
    specs = model.pde_layer.kernel_specs()
    assert not isinstance(specs, str)
    assert kernels.unsupported_reason(digits(2), specs) is None
    assert kernels.resolve_backend(model.pde_layer.backend) != "reference"
    with export_mode():
        assert kernels.resolve_backend("fused") == "reference"


def test_export_mode_reads_nothing_on_the_host():
    nan = torch.full((1, 1, 4, 4), float("nan"))
    with pytest.raises(InputError, match="non-finite"):
        check_values(nan)
    assert not exporting()
    with export_mode():
        assert exporting() and check_values(nan) == (0.0, 0.0)
        layer = PDELayer.build(["se2"], T=0.2)
        assert torch.isnan(layer(nan)).all()  # no NonFiniteStateError: nothing is read
    assert not exporting()


class _Bypass(nn.Module):
    """Calls the fused operator directly, not through kernels.resolve_backend."""

    def __init__(self):
        super().__init__()
        self.layer = PDELayer.build(["se2"], T=0.2)

    def forward(self, images):
        arguments = operator_arguments(images, self.layer.kernel_specs(), store_states=False)
        return torch.ops.eqpdenet.euler_evolve(**arguments)[0][:, 0].flatten(1)


def test_a_graph_that_calls_a_fused_operator_is_refused(tmp_path):
    model = EqPdeNet(8, LayerConfig.paper(T=0.2, backend="fused"))
    program = trace(model, digits(2))
    namespaces = {getattr(n.target, "namespace", None) for n in program.graph.nodes}
    assert "eqpdenet" not in namespaces and "aten" in namespaces
    with pytest.raises(ExportError, match="calls eqpdenet::euler_evolve, which no runtime"):
        export_model(_Bypass(), tmp_path / "m.pt2", "exported-program", images=digits(4))
    assert not list(tmp_path.iterdir())


class _Drifting(FCNN):
    """Computes other logits while it is exported: an export the verification must refuse."""

    def forward(self, images):
        logits = super().forward(images)
        return logits * 1.001 if exporting() else logits


class _FalseClaim(FCNN):
    quarter_turn_invariant = True


class _DataDependent(FCNN):
    def forward(self, images):
        logits = super().forward(images)
        return logits if float(logits.sum()) > 0 else -logits


@pytest.mark.parametrize("model, message", [
    (_Drifting(8), r"exported logits differ from PyTorch's by 1\.00e-03 relative"),
    (_FalseClaim(8), r"changes its logits by \S+ relative under quarter turns"),
    (_DataDependent(8), r"_DataDependent cannot be exported: torch.export failed"),
], ids=["drift", "false-invariance-claim", "data-dependent-control-flow"])
def test_a_failed_export_keeps_no_file_and_leaves_the_old_one(model, message, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "model.pt2"
    out.write_bytes(b"the previous export")
    with pytest.raises(ExportError, match=message):
        export_model(model, out, "exported-program", images=digits(16))
    assert out.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]


class _Float64Conv(FCNN):
    """Builds a constant by a float64 convolution at every call (onnxruntime has none)."""

    def forward(self, images):
        ones = torch.ones(1, 1, 3, dtype=torch.float64)
        return super().forward(images) * F.conv1d(ones, ones).sum().float() / 3


def test_a_file_the_runtime_cannot_run_is_one_error_and_no_file(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(ExportError, match="onnxruntime cannot run _Float64Conv as onnx: "):
        export_model(_Float64Conv(8), tmp_path / "m.onnx", "onnx", images=digits(4))
    assert not list(tmp_path.iterdir())


class _Rounding(nn.Module):
    """``(y + 1e4) - 1e4`` in PyTorch (float32 rounds ``y`` to multiples of 2^-10), ``y`` times
    ``factor`` once exported: an export whose difference is the model's own float32 rounding
    (``factor`` 1) or more than twice that."""

    def __init__(self, factor: float):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.factor = factor

    def forward(self, images):
        y = images.flatten(1)[:, 200:210] * self.scale
        return y * self.factor if exporting() else (y + 1e4) - 1e4


def test_float32_rounding_of_the_model_itself_raises_the_bound(tmp_path):
    images = digits(64)
    noise = _float32_noise(_Rounding(1.0), images, turns=False)
    # float32 spacing at 1e4 is 2^-10: the rounding error is at most 2^-11 (relative to max 1)
    assert 1e-5 < noise <= 2.0**-11 * 1.0001
    report = export_model(_Rounding(1.0), tmp_path / "ok.pt2", "exported-program", images=images)
    assert report.relative_difference > DEFAULT_TOLERANCE
    assert report.float32_noise == pytest.approx(noise) and report.bound == 2 * noise
    assert "twice the float32 rounding of the model" in report.summary()
    with pytest.raises(ExportError, match="twice the model's own float32 rounding"):
        export_model(_Rounding(1.01), tmp_path / "bad.pt2", "exported-program", images=images)
    assert ExportReport(tmp_path, "onnx", "x", 1, 0.0, 0.0, None, 1e-5, {}).bound == 1e-5


def test_bad_input_is_one_error_before_any_work(tmp_path, monkeypatch):
    model, images = FCNN(8), torch.rand(4, 1, 28, 28)
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; known: "
                                          "exported-program, onnx"):
        export_model(model, tmp_path / "m", "tflite", images=images)
    with pytest.raises(OutputFolderError, match="it is a folder"):
        export_model(model, tmp_path, "onnx", images=images)
    with pytest.raises(OutputFolderError, match="does not exist"):
        export_model(model, tmp_path / "none" / "m.onnx", "onnx", images=images)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="file is a file, not a folder"):
        export_model(model, tmp_path / "file" / "m.onnx", "onnx", images=images)
    # read back by the suffix: an ONNX file named .pt2 would be taken for a program
    with pytest.raises(ConfigError, match=r"an onnx file is named \*\.onnx .* e\.g\. .*m\.onnx"):
        export_model(model, tmp_path / "m.pt2", "onnx", images=images)
    with pytest.raises(ConfigError, match=r"an? exported-program file is named \*\.pt2"):
        export_model(model, tmp_path / "m.onnx", "exported-program", images=images)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    with pytest.raises(MissingDependencyError, match=r"the onnx format needs onnxruntime .*"
                                                     r"pip install 'eqpdenet\[export\]'"):
        export_model(model, tmp_path / "m.onnx", "onnx", images=images)
    assert isinstance(MissingDependencyError("x"), ImportError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ----------------------------------------------------------------------------- faults of the files

#: A child process that exports a small FCNN to ``argv[1]`` in ``argv[2]`` and, at the stage
#: ``argv[3]`` ("writing": its temporary file just created, empty; "verifying": written in full),
#: creates the marker ``argv[4]`` and blocks until it is killed.
_KILLED_EXPORT = """
import sys
from pathlib import Path
import torch
from eqpdenet.export import export_model
from eqpdenet.models import FCNN
out, format, stage, marker = sys.argv[1:5]
def log(line):
    if line.startswith(stage):
        Path(marker).touch()
        sys.stdin.read()  # until the test's SIGKILL
torch.manual_seed(0)
export_model(FCNN(8), out, format, images=torch.rand(4, 1, 28, 28), log=log)
raise SystemExit("the export ended: it was to be killed")
"""


def _kill_during(stage: str, out, format: str, marker) -> None:
    """Run :data:`_KILLED_EXPORT` and SIGKILL it at ``stage``, the marker read (no timing)."""
    child = subprocess.Popen([sys.executable, "-c", _KILLED_EXPORT, str(out), format, stage,
                              str(marker)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert poll(lambda: marker.exists() or child.poll() is not None, 600), "no marker"
        assert marker.exists(), child.communicate()[1][-800:]
        staging = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        # the live export's lock is held through writing and verifying (it was dropped at once)
        assert len(staging) == 1 and _held(str(staging[0])) is True, staging
        assert (staging[0].stat().st_size > 0) is (stage == "verifying")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stderr.close()
    assert _held(str(staging[0])) is False  # the kernel released it; the file is still there


@pytest.mark.parametrize("format, stage", [("onnx", "verifying"), ("exported-program", "writing")])
def test_a_killed_exports_temporary_file_is_removed_by_the_next_export(format, stage, tmp_path):
    """SIGKILL while writing (an empty temporary file) or verifying (a full, unverified one):
    the file stays until the next export to the same path, which removes it once unlocked and
    untouched for STALE_GRACE seconds; a live export's file (its lock held) is left alone."""
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    folder = tmp_path / "deploy"
    folder.mkdir()
    out = folder / f"model{FORMATS.get(format).suffix}"
    _kill_during(stage, out, format, tmp_path / "marker")
    (killed,) = folder.iterdir()
    # "untouched for STALE_GRACE seconds", without waiting for it: the clock of the file set back
    old = time.time() - STALE_GRACE - 5
    os.utime(killed, (old, old))
    handle, live = temporary_beside(out, STAGING_SUFFIX)  # another export, still running
    try:
        os.utime(live, (old, old))
        report = export_model(FCNN(8), out, format, images=digits(8))
        assert report.relative_difference <= DEFAULT_TOLERANCE
        assert sorted(p.name for p in folder.iterdir()) == sorted([out.name, live.name])
    finally:
        os.close(handle)
        live.unlink()


def test_onnx_files_carry_the_lowest_ir_version_of_their_opset(tmp_path):
    """onnxruntime < 1.18 refused the exporter's IR version 10 ("max supported IR version: 9");
    opset 18 needs IR 8 (onnx 1.13), by onnx's own table. Older runtimes: docs/deployment.md."""
    pytest.importorskip("onnxruntime")
    import onnx
    import onnx.helper

    lowest = min(row[1] for row in onnx.helper.VERSION_TABLE if row[2] >= ONNX_OPSET)
    assert lowest == 8
    model, _ = tiny_model("cnn", 0)
    export_model(model, tmp_path / "m.onnx", "onnx", images=digits(8))  # verified as stamped
    written = onnx.load(tmp_path / "m.onnx")
    assert written.ir_version == 8 and not written.functions
    assert [(o.domain, o.version) for o in written.opset_import] == [("", ONNX_OPSET)]
    onnx.checker.check_model(written, full_check=True)


@pytest.mark.parametrize("format", ["onnx", "exported-program"])
def test_a_symbolic_link_at_out_is_followed_and_kept(format, tmp_path):
    """``out`` a link (relative, through a second link; or dangling): the file it leads to is
    written, the link stays a link (a rename onto it had replaced it with a regular file)."""
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    suffix = FORMATS.get(format).suffix
    (tmp_path / "deploy").mkdir()
    real = tmp_path / "deploy" / f"real{suffix}"
    real.write_bytes(b"old")
    os.symlink(f"deploy/real{suffix}", tmp_path / f"middle{suffix}")
    os.symlink(f"middle{suffix}", tmp_path / f"current{suffix}")
    os.symlink(f"deploy/new{suffix}", tmp_path / f"dangling{suffix}")
    model = FCNN(8)
    for link in (tmp_path / f"current{suffix}", tmp_path / f"dangling{suffix}"):
        export_model(model, link, format, images=digits(4))
        assert link.is_symlink()
        logits = load_exported(link)(digits(4))
        assert largest(logits - model(digits(4)).detach()) <= 1e-5 * largest(logits)
    assert real.read_bytes() != b"old" and (tmp_path / "deploy" / f"new{suffix}").is_file()
    assert sorted(p.name for p in (tmp_path / "deploy").iterdir()) == [f"new{suffix}",
                                                                      f"real{suffix}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["deploy", f"middle{suffix}", f"current{suffix}", f"dangling{suffix}"])
    os.symlink(f"loop{suffix}", tmp_path / f"loop{suffix}")
    with pytest.raises(OutputFolderError, match="Too many levels of symbolic links"):
        export_model(model, tmp_path / f"loop{suffix}", format, images=digits(4))


@pytest.mark.parametrize("kind, dtype", [("fcnn", torch.float64), ("cnn", torch.float64),
                                         ("fcnn", torch.float16)])
def test_a_model_not_in_float32_is_one_error_before_any_work(kind, dtype, tmp_path, monkeypatch):
    """A float64 FCNN gave a file with a float64 input, a float64 CNN an error after tracing
    and writing (no float64 Conv in onnxruntime): the file's input is float32, so a model that
    does not compute in float32 is refused first, naming its dtype."""
    import eqpdenet.export

    monkeypatch.setattr(eqpdenet.export, "trace", None)  # must not be reached
    model = build_model(kind, **({"hidden": 8} if kind == "fcnn" else
                                 {"cnn": CNNConfig(channels=3, layers=2)})).to(dtype)
    name = str(dtype).removeprefix("torch.")
    for format in ("onnx", "exported-program"):
        out = tmp_path / f"m{FORMATS.get(format).suffix}"
        with pytest.raises(ExportError, match=rf"^{type(model).__name__} cannot be exported: its "
                                              rf"parameters are {name}, .* export model\.float\(\)$"):
            export_model(model, out, format, images=digits(4).to(dtype))
    assert not list(tmp_path.iterdir())


def test_images_of_another_shape_are_the_models_input_error_not_an_export_failure(tmp_path):
    """The family exports; the images do not fit it: the model's own InputError, as it is."""
    with pytest.raises(InputError) as caught:
        export_model(FCNN(8), tmp_path / "m.pt2", "exported-program",
                     images=torch.rand(5, 1, 20, 20))
    assert not isinstance(caught.value, ExportError)
    assert str(caught.value) == "expected images of shape (batch, 1, 28, 28), got (2, 1, 20, 20)"
    assert not list(tmp_path.iterdir())


def test_an_output_link_into_a_run_folder_is_judged_by_the_file_it_leads_to(tmp_path):
    """--out mine.json -> run/result.json: written through the link, it would replace a run's
    result; the check judges the link's file as well as the link."""
    from eqpdenet.app.files import check_output_file
    from eqpdenet.app.runfolder import check_output_keeps, claim_folder
    from eqpdenet.errors import OutputFolderError

    run = claim_folder(tmp_path / "run", "train")
    (run / "result.json").write_text("{}")
    link = tmp_path / "mine.json"
    link.symlink_to(run / "result.json")
    with pytest.raises(OutputFolderError, match=r"mine.json: would replace a result of .*run "
                                                r"\(the file the link .*mine.json leads to"):
        check_output_keeps(link, "--json")
    other = tmp_path / "elsewhere"
    dangling = tmp_path / "new.json"
    dangling.symlink_to(other / "sub" / "new.json")
    assert check_output_file(dangling) == dangling
    assert (other / "sub").is_dir()  # the write test ran where the file will go
