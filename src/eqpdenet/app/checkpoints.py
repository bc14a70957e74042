"""Whether a checkpoint's weights fit the model its saved configuration describes, and if not,
which configuration field is at odds with them (a checkpoint whose config was edited, or weights
from another run); and, before a checkpoint is written, whether its configuration rebuilds the
model at all (:func:`rebuild_problem`: a family's own options, which no configuration records).

Example:
    >>> from eqpdenet.models import FCNN
    >>> mismatch(FCNN(hidden=8), FCNN(hidden=16).state_dict()).split(" (")[0]
    'model.hidden is 8 in the configuration but 16 in the weights'
    >>> mismatch(FCNN(hidden=8), FCNN(hidden=8).state_dict()) is None
    True
"""

from __future__ import annotations

import re
import sys

import torch
from torch import nn

from ..process_state import GLOBAL_RNG_LOCK, quiet_warnings
from .plugins import PLUGIN_HINT, is_unregistered

__all__ = ["REBUILD_TOLERANCE", "SHAPE_FIELDS", "describe_non_finite", "mismatch",
           "non_finite_tensors", "rebuild_problem", "unwrapped"]

#: (parameter name pattern, axis, the configuration field that sets that axis), first match wins.
SHAPE_FIELDS = [
    (r"(^|\.)mlp\.0\.weight$", 0, "model.hidden"),
    (r"(^|\.)mlp\.0\.bias$", 0, "model.hidden"),
    (r"(^|\.)mlp\.2\.(weight|bias)$", 0, "model.hidden"),
    (r"(^|\.)mlp\.4\.(weight|bias)$", 0, "model.classes"),
    (r"(^|\.)mlp\.4\.weight$", 1, "model.hidden"),
    (r"(^|\.)mlp\.0\.weight$", 1,
     "the perceptron's input size (model.image_size squared, or model.layer.reduction)"),
    (r"(^|\.)pdes\.\d+\.step\.rhs\.F\.weight$", 0,
     "the number of F's terms (model.layer.invariants, model.layer.rhs or model.layer.degree)"),
    (r"(^|\.)reduction\.weight$", 0, "model.layer.invariants (the number of PDEs)"),
]


def _count_pdes(names) -> int:
    return len({m.group(1) for n in names if (m := re.search(r"(?:^|\.)pdes\.(\d+)\.", n))})


def mismatch(model: nn.Module, state_dict: dict) -> str | None:
    """None if ``state_dict`` loads into ``model``; else what does not fit, naming the field."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    for name, tensor in expected.items():
        if name not in state_dict or not hasattr(state_dict[name], "shape"):
            continue
        saved, configured = tuple(state_dict[name].shape), tuple(tensor.shape)
        if saved == configured:
            continue
        detail = f"{name}: saved {saved}, configured {configured}"
        for pattern, axis, field in SHAPE_FIELDS:
            if (re.search(pattern, name) and len(saved) == len(configured) > axis
                    and saved[axis] != configured[axis]):
                return (f"{field} is {configured[axis]} in the configuration but "
                        f"{saved[axis]} in the weights ({detail})")
        return f"the shapes differ ({detail})"
    if missing or unexpected:
        saved_pdes, configured_pdes = _count_pdes(state_dict), _count_pdes(expected)
        if saved_pdes != configured_pdes:
            if not saved_pdes or not configured_pdes:
                return (f"model.kind: the weights {'have a' if saved_pdes else 'have no'} PDE "
                        f"layer, the configured model {'has one' if configured_pdes else 'none'} "
                        f"(e.g. {(unexpected or missing)[0]})")
            return (f"model.layer.invariants has {configured_pdes} PDEs in the configuration but "
                    f"{saved_pdes} in the weights")
        if any("reduction" in k for k in missing + unexpected):
            return "model.layer.reduction differs from the weights' (its parameters differ)"
        shown = ", ".join((missing + unexpected)[:3])
        return (f"the parameter names differ ({len(missing)} missing, {len(unexpected)} "
                f"unexpected: {shown})")
    return None


def non_finite_tensors(state_dict: dict) -> dict[str, tuple[int, int]]:
    """``{name: (NaN count, inf count)}`` of every floating-point tensor of ``state_dict``
    (weights and buffers such as batch-norm statistics) that is not all finite."""
    bad = {}
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad[name] = (int(torch.isnan(tensor).sum()), int((~finite).sum()
                                                                  - torch.isnan(tensor).sum()))
    return bad


def describe_non_finite(bad: dict[str, tuple[int, int]]) -> str:
    """``bad`` of :func:`non_finite_tensors` in a few words: ``"2 tensors, e.g. mlp.0.weight (5
    NaN, 0 inf)"``."""
    name, (nan, inf) = next(iter(bad.items()))
    count = f"{len(bad)} tensor{'s' if len(bad) > 1 else ''}"
    return f"{count}, e.g. {name} ({nan} NaN, {inf} inf)"


#: The largest difference :func:`rebuild_problem` lets pass between a model's outputs and its
#: rebuild's on the probe input, relative to the outputs' largest magnitude (at least 1). A
#: model and its rebuild with the same weights compute the same thing: on the same arithmetic
#: path their outputs are identical (0). The tolerance only lets a model pass whose layer takes
#: another path to the same numbers (``layer.backend``: the fused operator and the reference
#: differ by 2 float32 ulps on the paper's model, 1.8e-7 at logits of 0.65); an option the
#: configuration does not record changes them by orders of magnitude more (a family's own
#: activation: 0.18; the horizon T doubled: 4e-3 to 0.9).
REBUILD_TOLERANCE = 1e-5

#: What outputs that differ point at.
_UNRECORDED = ("an option the configuration does not record, such as a family's own options, or "
               "records with another value, such as the layer's T")

#: The batch of the probe input (:func:`rebuild_problem`): two images, so that a batch norm in
#: evaluation mode and a model that squeezes a batch of one are both exercised as in use.
_PROBE_BATCH = 2


def unwrapped(model: nn.Module) -> nn.Module:
    """``model`` without the wrappers that training may put around it and whose
    ``state_dict`` prefixes every name (``DataParallel``, ``DistributedDataParallel``: ``module.``;
    ``torch.compile``'s ``OptimizedModule``: ``_orig_mod.``). Neither ``torch._dynamo`` nor
    ``torch.distributed`` is imported to tell: a wrapper exists only where its module is loaded."""
    ddp = getattr(sys.modules.get("torch.nn.parallel.distributed"), "DistributedDataParallel",
                  None)
    optimized = getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", None)
    while True:
        if isinstance(model, nn.DataParallel) or (ddp is not None and isinstance(model, ddp)):
            model = model.module
        elif optimized is not None and isinstance(model, optimized):
            model = model._orig_mod
        else:
            return model


def rebuild_problem(model: nn.Module, model_config) -> str | None:
    """None if ``build_model(model_config)`` rebuilds ``model`` (what
    :func:`~eqpdenet.app.training.load_checkpoint` will do with the checkpoint); else what
    differs, in a few words: the type, a parameter's name or shape (naming the configuration
    field, :func:`mismatch`), or the outputs.

    The outputs are compared after loading ``model``'s ``state_dict`` into the rebuild, both in
    evaluation mode, on a fixed probe input: :data:`_PROBE_BATCH` images of
    ``model_config.in_channels`` x ``image_size`` from a generator seeded 0 (uniform in [0, 1),
    like images), on ``model``'s device and in its dtype, within :data:`REBUILD_TOLERANCE`. This
    catches what no shape shows: an option the configuration does not record (a family's own,
    or a layer's ``T``). Where both fail on the probe alike (an untrained model whose batch-norm
    statistics let its PDE blow up), the outputs cannot be compared and the structure alone
    decides. Nothing is disturbed: torch's random state (the rebuild draws its initial weights
    under :func:`torch.random.fork_rng`, holding
    :data:`~eqpdenet.process_state.GLOBAL_RNG_LOCK`), ``model``'s training mode (each submodule's) and its
    warned-once flags are as they were; warnings of the rebuild and of the probe are not shown
    (they would speak of the probe, not of the user's data)."""
    from .config import build_model  # config imports nothing of this module

    state = model.state_dict()
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    floats = [t for t in tensors if t.is_floating_point()]
    dtype = floats[0].dtype if floats else torch.get_default_dtype()
    forked = ([device.index if device.index is not None else torch.cuda.current_device()]
              if device.type == "cuda" else [])
    # the lock: restoring the generator's state while another thread's training has seeded it
    # and is drawing would undo that seed
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=forked), quiet_warnings():
        try:
            rebuilt = build_model(model_config)
        except Exception as error:  # whatever a family's constructor raises, said in one line
            hint = f" {PLUGIN_HINT}" if is_unregistered(str(error)) else ""
            return f"the configuration builds no model ({_one_line(error)}{hint})"
        if type(rebuilt) is not type(model):
            return (f"model.kind {model_config.kind!r} builds {type(rebuilt).__name__}, not the "
                    f"model's type, {type(model).__name__}")
        problem = mismatch(rebuilt, state)
        if problem is not None:
            return problem
        rebuilt.to(device)
        if any(t.is_floating_point() and t.dtype != dtype for t in rebuilt.parameters()):
            rebuilt.to(dtype)  # a model cast as a whole (model.double()): its rebuild cast alike
        try:
            rebuilt.load_state_dict(state)
        except RuntimeError as error:
            return f"its weights do not load into the rebuilt model ({_one_line(error)})"
        size, channels = model_config.image_size, model_config.in_channels
        probe = torch.rand(_PROBE_BATCH, channels, size, size, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(0)).to(device, dtype)
        modes = [(module, module.training) for module in model.modules()]
        flags = [(module, module._range_warned) for module in model.modules()
                 if isinstance(getattr(module, "_range_warned", None), bool)]
        try:
            model.eval()
            rebuilt.eval()
            # the same random state for both (a family that draws in evaluation mode, noise or
            # dropout left on, draws the same numbers in the two), all within the fork
            states = (torch.get_rng_state(), [torch.cuda.get_rng_state(i) for i in forked])
            with torch.no_grad():
                ours, our_error = _outputs(model, probe)
                torch.set_rng_state(states[0])
                for index, cuda_state in zip(forked, states[1], strict=True):
                    torch.cuda.set_rng_state(cuda_state, index)
                theirs, their_error = _outputs(rebuilt, probe)
        finally:
            for module, mode in modes:  # in order, parents first: each ends as it was
                module.train(mode)
            for module, flag in flags:
                module._range_warned = flag
    shape = f"{tuple(probe.shape)} (model.in_channels, model.image_size)"
    if our_error is not None or their_error is not None:
        if our_error == their_error:
            return None
        if their_error is None:
            return f"the model fails on an input of the configuration's shape {shape} ({our_error})"
        if our_error is None:
            return f"the rebuilt model fails on an input the model takes ({their_error})"
        return (f"on a probe input of shape {shape} the model and its rebuild fail differently "
                f"({our_error}; rebuilt: {their_error})")
    if [t.shape for t in ours] != [t.shape for t in theirs]:
        return (f"the outputs' shapes differ (the model's {[tuple(t.shape) for t in ours]}, the "
                f"rebuilt model's {[tuple(t.shape) for t in theirs]})")
    difference, scale = 0.0, 1.0
    for a, b in zip(ours, theirs, strict=True):
        a, b = a.detach().double(), b.detach().double()
        finite = torch.isfinite(a)
        if not torch.equal(finite, torch.isfinite(b)) or not torch.equal(a[~finite].nan_to_num(),
                                                                         b[~finite].nan_to_num()):
            return (f"on a probe input the outputs differ: non-finite where the rebuilt model's "
                    f"are not, or the other way round: {_UNRECORDED}")
        if bool(finite.any()):
            difference = max(difference, float((a[finite] - b[finite]).abs().max()))
            scale = max(scale, float(a[finite].abs().max()))
    if difference > REBUILD_TOLERANCE * scale:
        return (f"on a probe input the outputs differ by {difference:.3g}: {_UNRECORDED}")
    return None


def _outputs(module: nn.Module, probe: torch.Tensor) -> tuple[list, str | None]:
    """``module(probe)``'s tensors (a tuple's or a dict's, flattened), or the error it raised."""
    try:
        output = module(probe)
    except Exception as error:  # compared with the rebuild's, then said in one line
        return [], f"{type(error).__name__}: {_one_line(error)}"
    return list(_tensors(output)), None


def _tensors(output):
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from _tensors(value)
    elif isinstance(output, (list, tuple)):
        for value in output:
            yield from _tensors(value)


def _one_line(error: Exception, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + " ..."
