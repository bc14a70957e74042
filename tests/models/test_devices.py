"""Every model computes the same on every device: on a CUDA GPU (where one is present) as on the
CPU, in float64, the logits and every parameter's gradient of one training-mode forward+backward.

The CPU cannot see a tensor built on the wrong device (there is only one), so the GPU half runs
where ``benchmarks/gpu_session.sh`` runs; the first GPU session found the anti-aliased pooling
building its matrices from a buffer on the GPU and an identity on the CPU, which no CPU test
could show. On the CPU the same models are run on the ``meta`` device (shapes without values),
which checks that the entry checks and every layer infer shapes without reading data.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from eqpdenet import InputError
from eqpdenet.models import (
    CNN,
    EqPdeNet,
    InvariantPDEConfig,
    InvariantPDENet,
    LiftedPDEConfig,
    LiftedPDENet,
)

MODELS = {
    "eqpdenet": lambda: EqPdeNet(hidden=16),
    "cnn": lambda: CNN(),
    "invariant_pde blur": lambda: InvariantPDENet(InvariantPDEConfig(
        channels=[4, 6], blocks=[1, 1], downsample="blur")),
    "invariant_pde pool": lambda: InvariantPDENet(InvariantPDEConfig(
        channels=[4, 6], blocks=[1, 1], downsample="pool", readout="meanmax")),
    "invariant_pde sim2": lambda: InvariantPDENet(InvariantPDEConfig(
        channels=[4, 6], blocks=[1, 1], group="sim2")),
    "lifted_pde": lambda: LiftedPDENet(LiftedPDEConfig(channels=[4, 6], blocks=[1, 1])),
    "lifted_pde background centred": lambda: LiftedPDENet(LiftedPDEConfig(
        channels=[4, 6], blocks=[1, 1], boundary="background", center=True)),
    "lifted_pde fused step, reference": lambda: LiftedPDENet(LiftedPDEConfig(
        channels=[4, 6], blocks=[1, 1], normalize_hidden=False, backend="reference")),
    "lifted_pde fused step": lambda: LiftedPDENet(LiftedPDEConfig(
        channels=[4, 6], blocks=[1, 1], normalize_hidden=False)),
    "lifted_pde two scales, softmax projection": lambda: LiftedPDENet(LiftedPDEConfig(
        channels=[4, 6], blocks=[1, 1], scales=2, sigma=0.71, projection="softmax")),
}


def _gcnn(**options) -> torch.nn.Module:
    pytest.importorskip("e2cnn")
    from eqpdenet.models.gcnn import GCNN, GCNNConfig

    return GCNN(GCNNConfig(channels=[2, 3], kernels=[5, 3], pool_after=[1, 2], **options))


MODELS["gcnn antialiased, centred"] = lambda: _gcnn(pool="antialiased", center=True)
# e2cnn reads values while building its filters (Tensor.item()): no shapes without values.
NO_META = {"gcnn antialiased, centred"}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a backend fallback's notice, not the point here
        return MODELS[name]()


def _images(batch: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    images = torch.zeros(batch, 1, 28, 28, dtype=torch.float64)
    images[:, :, 6:22, 8:20] = torch.rand(batch, 1, 16, 12, generator=generator,
                                          dtype=torch.float64)
    return images


def _logits_and_gradients(model: torch.nn.Module, images: torch.Tensor):
    logits = model(images)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(logits.square().mean(), params)
    return logits, grads


@pytest.mark.parametrize("name", [name for name in MODELS if name not in NO_META])
def test_models_infer_shapes_on_the_meta_device(name):
    model = _model(name).to("meta")
    logits, grads = _logits_and_gradients(model, _images().float().to("meta"))
    assert logits.device.type == "meta" and logits.shape == (4, 10)
    assert [g.shape for g in grads] == [p.shape for p in model.parameters() if p.requires_grad]


def _relative_differences(expected, got) -> tuple[float, float]:
    """Max difference of the logits over their largest, of every gradient over the largest of
    all gradients: a parameter whose exact gradient is 0 (a bias before a batch norm) holds
    rounding noise, which a per-tensor scale would compare with itself."""
    (logits, grads), (logits_got, grads_got) = expected, got
    logits_diff = float((logits_got.cpu() - logits).abs().max() / logits.abs().max())
    scale = max(float(g.abs().max()) for g in grads)
    grads_diff = max(float((b.cpu() - a).abs().max()) for a, b in zip(grads, grads_got,
                                                                    strict=True)) / scale
    return logits_diff, grads_diff


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(MODELS))
def test_models_compute_the_same_on_cuda_as_on_the_cpu(name):
    cpu = _model(name).double()
    gpu = _model(name).double().cuda()
    images = _images()
    expected = _logits_and_gradients(cpu, images)
    got = _logits_and_gradients(gpu, images.cuda())
    assert got[0].device.type == "cuda"
    logits_diff, grads_diff = _relative_differences(expected, got)
    assert logits_diff < 1e-9 and grads_diff < 1e-9


@pytest.mark.parametrize("name", list(MODELS))
def test_models_are_continuous_at_the_rounding_level(name):
    """The CPU's view of the GPU test above: rounding-size changes of the input (1e-13, what a
    different convolution algorithm leaves in a flat background) change the logits and the
    gradients at the same relative level, not O(1). The SIM(2) model's scale-free maps are, only
    through their jet floor (``invariant_pde.jet_floor``; without it: 0.92 and 1.1)."""
    images = _images()
    noise = torch.randn(images.shape, dtype=images.dtype, generator=torch.Generator().manual_seed(3))
    expected = _logits_and_gradients(_model(name).double(), images)
    got = _logits_and_gradients(_model(name).double(), images + 1e-13 * noise)
    logits_diff, grads_diff = _relative_differences(expected, got)
    assert logits_diff < 1e-9 and grads_diff < 1e-9


@pytest.mark.parametrize("name", list(MODELS))
def test_models_train_after_an_evaluation_under_inference_mode(name):
    """Constants a model caches on first use (pooling matrices, stencils, orientations) are made
    outside inference mode: an evaluation under ``torch.inference_mode()`` first (a loaded
    checkpoint checked, then fine-tuned) leaves the same training step as without it."""
    images = _images()
    expected = _logits_and_gradients(_model(name).double(), images)
    model = _model(name).double()
    with torch.inference_mode():
        model.eval()(images)
    got = _logits_and_gradients(model.train(), images)
    logits_diff, grads_diff = _relative_differences(expected, got)
    assert logits_diff == 0.0 and grads_diff == 0.0


class _HostData(TorchDispatchMode):
    """Records the operators that turn host data (Python numbers, lists) into tensors."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.lift_fresh.default:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(MODELS))
def test_training_steps_after_the_first_make_no_tensors_from_host_data(name):
    """On a GPU a tensor made from host data is a host-to-device copy, which a CUDA graph cannot
    capture (the training step is captured, eqpdenet.app.accelerate): every constant is made once
    and cached, or enters as a Python number. The CPU sees such tensors being made."""
    model, images = _model(name).double(), _images()
    _logits_and_gradients(model, images)  # the first step fills the caches
    with _HostData() as recorder:
        _logits_and_gradients(model, images)
    assert recorder.seen == []


def _buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", list(MODELS))
def test_an_empty_batch_gives_empty_logits_and_leaves_the_running_statistics(name, training):
    """As PyTorch's layers do: no image in, no logit out, a backward pass through it, and a
    training-mode batch norm that has no statistics to learn from leaves its running ones alone
    (the C++ update kernel once divided by the batch size and killed the process)."""
    model = _model(name).double().train(training)
    before = _buffers(model)
    images = torch.zeros(0, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    logits = model(images)
    assert logits.shape == (0, 10) and logits.dtype == torch.float64
    logits.sum().backward()
    assert images.grad.shape == images.shape
    for key, buffer in model.named_buffers():
        if buffer.is_floating_point():
            assert torch.equal(buffer, before[key]), key
    for parameter in model.parameters():
        assert parameter.grad is None or not parameter.grad.any()


@pytest.mark.parametrize("name", [name for name in MODELS if not name.startswith("gcnn")])
def test_models_are_saved_whole_and_load_computing_the_same(name):
    """``torch.save(model)`` (pickling the module, not only its state dict): the invariant sets
    a model holds pickle as their registered names. (The G-CNN cannot: e2cnn keeps lambdas in
    its group representations; its state dict saves and loads.)"""
    import io

    model = _model(name).double().eval()
    images = _images()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(images), model(images))


@pytest.mark.parametrize("name", [name for name in MODELS if not name.startswith("gcnn")])
def test_torch_func_transforms_compute_what_the_model_does(name):
    """A forward-mode derivative (``torch.func.jvp``) is the adjoint of the reverse-mode one:
    ``<J v, w> = <v, J^T w>`` (exact, kinks of relu and max included, which central differences
    straddle); ``vmap`` over single images equals the batch. The fused operators have neither a
    forward-mode derivative nor a batching rule: ``jvp`` through them once returned zeros,
    silently, and ``vmap`` failed reading values on the host; under a transform the layers now
    take their plain-PyTorch path, and nothing is read on the host under ``vmap``."""
    model = _model(name).double().eval()
    images = _images(2)
    generator = torch.Generator().manual_seed(4)
    direction = torch.randn(images.shape, dtype=torch.float64, generator=generator)
    weights = torch.randn(2, 10, dtype=torch.float64, generator=generator)
    _, tangent = torch.func.jvp(model, (images,), (direction,))
    inputs = images.clone().requires_grad_(True)
    (adjoint,) = torch.autograd.grad((model(inputs) * weights).sum(), inputs)  # the fused path
    forward_mode, reverse_mode = float((tangent * weights).sum()), float((direction * adjoint).sum())
    assert abs(forward_mode - reverse_mode) < 1e-9 * max(abs(reverse_mode), 1e-3)
    per_image = torch.func.vmap(lambda image: model(image[None])[0])(images)
    torch.testing.assert_close(per_image, model(images), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", [
    {"boundary": "background"}, {"stage_orientations": [8, 4]}, {"scales": 2}])
def test_a_gradient_of_a_gradient_through_the_reference_backend(options):
    """What README promises for second derivatives (gradient penalties): with the reference
    backend, ``create_graph=True`` works through every lifted piece (batch statistics and the
    orientation pooling have backward passes of their own), and the Hessian-vector product it
    gives is the derivative of the gradient, by central differences. In training mode: the
    batch statistics make the network curved; in evaluation mode it is piecewise linear in the
    image (the invariants on M2 are linear in u), with a zero Hessian. Random images: a blank
    background ties the maxima, where the gradient jumps and no difference quotient converges."""
    torch.manual_seed(0)
    model = LiftedPDENet(LiftedPDEConfig(channels=[4, 4], blocks=[1, 1], backend="reference",
                                         **options)).double().train()
    images = torch.rand(2, 1, 28, 28, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    direction = torch.randn(images.shape, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(6))
    weights = torch.randn(2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def gradient(x, create_graph=False):
        x = x.clone().requires_grad_(True)
        return x, torch.autograd.grad((model(x) * weights).sum(), x, create_graph=create_graph)[0]

    x, g = gradient(images, create_graph=True)
    (hessian_direction,) = torch.autograd.grad((g * direction).sum(), x)
    eps = 1e-6  # ReLUs and maxima have kinks: a step small enough to cross none
    difference = (gradient(images + eps * direction)[1]
                  - gradient(images - eps * direction)[1]) / (2 * eps)
    scale = float(difference.abs().max())
    assert scale > 0
    torch.testing.assert_close(hessian_direction, difference, rtol=0, atol=1e-5 * scale)


def test_vmap_in_training_mode_names_the_batch_norm_way_out():
    """Per-sample batch statistics cannot update the running ones in place: one clear error
    naming the two ways out (PyTorch's batch norm refuses too), and the documented way gives
    what a loop over the samples gives."""
    torch.manual_seed(0)
    model = LiftedPDENet(LiftedPDEConfig(channels=[4, 6], blocks=[1, 1])).double().train()
    images = torch.rand(3, 2, 1, 28, 28, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    with pytest.raises(InputError, match="replace_all_batch_norm_modules_"):
        torch.func.vmap(model, randomness="different")(images)
    torch.func.replace_all_batch_norm_modules_(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fused kernels' notice: vmap takes the reference
        batched = torch.func.vmap(model, randomness="different")(images)
    torch.testing.assert_close(batched, torch.stack([model(x) for x in images]),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["eqpdenet", "lifted_pde", "lifted_pde fused step"])
def test_a_gradient_of_a_gradient_through_a_fused_kernel_is_an_error(name):
    """The fused backward kernels are not differentiable: ``create_graph=True`` through them
    used to give second derivatives with their terms silently missing (zero for the paper's
    model, whose true ones are not). Now an error at that backward pass, saying how to get them."""
    model = _model(name).double().eval()
    images = _images(2).requires_grad_(True)
    with pytest.raises(NotImplementedError, match="backward is not differentiable"):
        torch.autograd.grad(model(images).sum(), images, create_graph=True)
