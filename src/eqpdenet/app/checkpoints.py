"""Whether a checkpoint's weights fit the model its saved configuration describes, and if not,
which configuration field is at odds with them (a checkpoint whose config was edited, or weights
from another run).

Example:
    >>> from eqpdenet.models import FCNN
    >>> mismatch(FCNN(hidden=8), FCNN(hidden=16).state_dict()).split(" (")[0]
    'model.hidden is 8 in the configuration but 16 in the weights'
    >>> mismatch(FCNN(hidden=8), FCNN(hidden=8).state_dict()) is None
    True
"""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["SHAPE_FIELDS", "describe_non_finite", "mismatch", "non_finite_tensors"]

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
