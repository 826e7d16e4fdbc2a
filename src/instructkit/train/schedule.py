"""Learning-rate schedule: linear warmup, then constant or cosine decay (the book's appendix D).

The schedule is a pure function of the optimizer step, wrapped in a `LambdaLR`, so its
state is just the step count and a resumed run continues on the same curve.
"""

from __future__ import annotations

import math

import torch


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "constant",
    min_lr_ratio: float = 0.1,
) -> float:
    """Multiplier of the peak learning rate for the update that follows `step` updates."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        decay_steps = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / decay_steps, 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "constant",
    min_lr_ratio: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, warmup_steps, schedule, min_lr_ratio),
    )
