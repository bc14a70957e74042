"""Faults of the lifted (M2) family found by the fifth probe, each held fixed here: module-level
caches of constant tensors filled with FakeTensors while a model was being traced (a second
export failed, and every later model using them), the memory estimate that assumed the fused
kernel where its 63-tap limit sends the blocks to the reference, and ``scales`` (and other
fields growing without bound) refused by a 151-digit image size or an OverflowError."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import eqpdenet.pde.m2 as m2
from eqpdenet.checks import exporting
from eqpdenet.errors import ConfigError
from eqpdenet.export import export_model, trace
from eqpdenet.kernels import m2_op
from eqpdenet.models import LiftedPDEConfig, LiftedPDENet
from eqpdenet.pde.m2 import M2Jet
from eqpdenet.pde.m2_rhs import M2SystemRHS

CPU = torch.device("cpu")
CACHED = (m2.orientation_cos_sin, m2._separable_weights, m2.separable_stencils,
          m2.orientation_frame)


@pytest.fixture
def empty_caches():
    """Every constant cache empty, so that the test's trace is the first to need its entries
    (else whichever test ran before in this process decides)."""
    for cached in CACHED:
        cached.cache_clear()
    yield
    for cached in CACHED:  # nothing a failed test left poisoned serves the next
        cached.cache_clear()


def _real(*tensors) -> bool:
    return all(type(t) is torch.Tensor for t in tensors)


def _cached_constants_are_real(orientations=(4, 8, 16), sigmas=(1.0,)) -> None:
    for n in orientations:
        assert _real(*m2.orientation_cos_sin(n, torch.float32, CPU)), n
        assert _real(m2.orientation_frame(n)), n
    for sigma in sigmas:
        assert _real(*m2._separable_weights(sigma, torch.float32, CPU)), sigma
    assert _real(m2.separable_stencils(tuple(sigmas)))


def _small_lifted(orientations: int, blocks=(1, 1), **options) -> LiftedPDENet:
    torch.manual_seed(0)
    return LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=list(blocks),
                                        orientations=orientations, **options), image_size=16).eval()


# ----------------------------------------------------------------------------- fault 1: caches


def test_exporting_twice_then_a_new_model_in_one_process(empty_caches, tmp_path):
    """The first export traced the stage on 4 orientations with its cos and sin not yet cached
    (the eager pass before ran the fused kernel), so the trace cached FakeTensors: the second
    export failed ("We found a fake tensor in the exported program constant's list"), and a new
    model on 4 orientations after it with GuardOnDataDependentSymNode."""
    model = _small_lifted(16, blocks=(0, 1), stage_orientations=[8, 4])
    images = torch.rand(4, 1, 16, 16)
    second = "onnx" if importlib.util.find_spec("onnxruntime") else "exported-program"
    for index, format in enumerate(("exported-program", second)):
        out = tmp_path / f"lifted{index}{'.onnx' if format == 'onnx' else '.pt2'}"
        report = export_model(model, out, format, images=images)
        assert report.relative_difference <= report.bound
    _cached_constants_are_real()
    fresh = _small_lifted(4, backend="reference")
    with torch.no_grad():
        logits = fresh(images)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()


def test_torch_export_of_a_fresh_model_leaves_real_constants(empty_caches):
    """torch.export.export itself (no eager pass first: a user's own export) built every cached
    constant of the reference path in its fake mode."""
    model = _small_lifted(8, sigma=1.1)
    images = torch.rand(2, 1, 16, 16)
    torch.export.export(model, (images,))
    _cached_constants_are_real(orientations=(8,), sigmas=(1.1,))
    with torch.no_grad():  # the eager model after it, on the constants the trace cached
        assert torch.isfinite(_small_lifted(8, sigma=1.1, backend="reference")(images)).all()


def test_a_constant_built_under_fake_mode_is_real_and_kept():
    with FakeTensorMode():
        inside = m2.orientation_cos_sin(20, torch.float64, CPU)
        weights = m2._separable_weights(0.93, torch.float64, CPU)
    assert _real(*inside, *weights)
    assert m2.orientation_cos_sin(20, torch.float64, CPU) is inside  # cached, once
    assert torch.equal(inside[0].flatten()[:2], torch.tensor([1.0, torch.cos(torch.tensor(
        torch.pi / 10, dtype=torch.float64))], dtype=torch.float64))


def test_a_device_copy_made_under_fake_mode_is_real():
    """The fused kernels' per-device copies of their tables (a CUDA model's; here the meta
    device, which needs no GPU) were kept as FakeTensors when first made under a trace."""
    table = m2.separable_stencils((0.77,))
    with FakeTensorMode():
        m2_op._on_device(table, torch.device("meta"))
    assert _real(m2_op._on_device(table, torch.device("meta")))


def test_compile_and_vmap_leave_real_constants(empty_caches):
    u = torch.rand(2, 3, 8, 12, 12)
    compiled = torch.compile(M2Jet(1.3), backend="eager")
    torch.testing.assert_close(compiled(u), M2Jet(1.3)(u))
    torch.func.vmap(M2Jet(1.7))(u[None].expand(2, -1, -1, -1, -1, -1))
    _cached_constants_are_real(orientations=(8,), sigmas=(1.3, 1.7))


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(exporting())
        return x.flatten(1).sum(1, keepdim=True)


def test_the_eager_pass_before_the_trace_takes_the_traced_path():
    """The eager pass that builds the constants a module caches ran outside export_mode: on the
    fused path, leaving those of the reference (which the trace takes) to the trace."""
    module = _Recorder()
    trace(module, torch.rand(2, 1, 4, 4))
    assert module.seen and all(module.seen)


# ----------------------------------------------------------------------------- fault 2: memory


@pytest.mark.parametrize(("options", "fused"), [
    ({"sigma": 7.75}, True),                     # radius 31: 63 taps, the kernel's widest
    ({"sigma": 8.0}, False),                     # radius 32: 65 taps
    ({"sigma": 4.0, "scales": 3}, False),        # the largest level 8 px: 65 taps
    ({"orientations": 20}, False),
    ({"boundary": "reflect"}, True),
])
def test_the_estimate_and_the_dispatch_apply_one_rule(options, fused):
    config = LiftedPDEConfig(channels=[2], blocks=[1], **options)
    n = config.orientations
    rhs = M2SystemRHS(2, ["network"], 2, sigma=config.sigma, boundary=config.padding,
                      scales=config.scales)
    u = torch.rand(config.scales, 2, n, 70, 70)
    assert rhs.fused(u, torch.rand(2, 2, 10)) is fused
    assert (config.fused_kernel_reason(n) is None) is fused


# ----------------------------------------------------------------------------- fault 3: bounds


def _refused(field: str, **options) -> str:
    with pytest.raises(ConfigError, match=rf"lifted_pde\.{field}:") as error:
        LiftedPDEConfig(**options)
    message = str(error.value)
    assert not re.search(r"\d{8,}", message), message  # no number of a dozen or 150 digits
    return message


@pytest.mark.parametrize("scales", [28, 1000, 3000, 10**9])
def test_too_many_scales_are_refused_naming_scales(scales):
    message = _refused("scales", scales=scales)
    assert "must be at most 27 with sigma 1 px" in message and f"got {scales:,}" in message


def test_the_largest_scale_level_allowed_builds():
    config = LiftedPDEConfig(scales=27)
    assert config.radius() == 32_768  # sigma 2^13: refused by the image size, not overflowed
    _refused("scales", sigma=0.5, scales=30)
    assert LiftedPDEConfig(sigma=0.5, scales=29).radius() == 32_768


@pytest.mark.parametrize(("field", "options"), [
    ("sigma", {"sigma": 1e308}), ("sigma", {"sigma": 1e5}), ("hidden", {"hidden": 1e308}),
    ("channels", {"channels": [2] * 18, "blocks": [1] * 18}),
])
def test_other_unbounded_fields_are_refused_naming_them(field, options):
    _refused(field, **options)


def test_many_stages_without_downsampling_are_accepted():
    assert LiftedPDEConfig(channels=[2] * 18, blocks=[1] * 18, downsample="none").min_image_size() == 5


def test_the_anti_aliased_downsampling_keeps_no_fake_matrix():
    """The downsampling's per-size matrices are kept on the module: one built under a trace's
    fake mode first was kept fake, and the next eager call failed."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from eqpdenet.models.pooling import AntiAliasedDownsample

    pool = AntiAliasedDownsample(sigma=1.0)
    x = torch.rand(1, 2, 12, 12)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:  # as torch.export's tracing
        pool(mode.from_tensor(x))
    assert all(type(m) is torch.Tensor for m in pool._matrices.values())
    torch.testing.assert_close(pool(x), AntiAliasedDownsample(sigma=1.0)(x), rtol=0, atol=0)
