"""Per-step learning-rate schedule: linear warmup, then linear or cosine decay to 0, or constant.

Uses transformers' ``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``: the
multiplier at step s with W = round(warmup_ratio * total) warmup steps is s / W during warmup, then
(total - s) / (total - W) (linear) or 0.5 (1 + cos(pi (s - W) / (total - W))) (cosine), or 1 (constant:
``get_constant_schedule_with_warmup``; Hate-CLIPper's AdamW runs without a scheduler, i.e. constant, W = 0).
Call ``scheduler.step()`` after every optimiser step.
"""
from __future__ import annotations

import torch

from featstore.errors import FeatstoreError

SCHEDULES = ("linear", "cosine", "constant")


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    if not 0.0 <= warmup_ratio < 1.0:
        raise FeatstoreError(f"warmup_ratio {warmup_ratio} is out of range; pass a value in [0, 1)")
    return int(round(warmup_ratio * total_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float,
                    kind: str = "linear") -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over ``total_steps`` optimiser steps (>= 1)."""
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)

    if kind not in SCHEDULES:
        raise FeatstoreError(f"schedule {kind!r} is unknown; pass --schedule linear, cosine or constant")
    total_steps = max(1, int(total_steps))
    w = warmup_steps(total_steps, warmup_ratio)
    if kind == "linear":
        return get_linear_schedule_with_warmup(optimizer, w, total_steps)
    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, w)
    return get_cosine_schedule_with_warmup(optimizer, w, total_steps)
