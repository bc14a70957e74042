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

from torch import nn

__all__ = ["SHAPE_FIELDS", "mismatch"]

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
