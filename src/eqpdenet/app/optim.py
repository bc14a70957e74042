"""Optimisers and learning-rate schedules by name (the training configuration's choices)."""

from __future__ import annotations

import torch

from ..registry import Registry

__all__ = ["LR_SCHEDULES", "OPTIMIZERS"]

#: ``factory(parameter_groups, lr, weight_decay) -> torch.optim.Optimizer``.
OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adam", lambda groups, lr, weight_decay: torch.optim.AdamW(
    groups, lr=lr, weight_decay=weight_decay))
OPTIMIZERS.register("sgd", lambda groups, lr, weight_decay: torch.optim.SGD(
    groups, lr=lr, momentum=0.9, weight_decay=weight_decay))

#: ``factory(optimizer, total_steps) -> scheduler or None`` (stepped once per mini-batch).
LR_SCHEDULES: Registry = Registry("learning-rate schedule")
LR_SCHEDULES.register("constant", lambda optimizer, total_steps: None)
LR_SCHEDULES.register("cosine", lambda optimizer, total_steps:
                      torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps))
