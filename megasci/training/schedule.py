"""Learning rate: linear warm-up from 0, then a decay to a floor over `decay_steps`, then the floor.

Two decays: "cosine" over the whole window, and "wsd" (warmup-stable-decay, as MiniCPM and
DeepSeek use): the peak held for the window's first `1 - decay_fraction`, then linear to the floor
over its last `decay_fraction`. A WSD run can be extended from any checkpoint before its decay,
and a curriculum stage can end on one by ending the window there.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd")


def learning_rate(
    step: int,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    decay_steps: int,
    schedule: str = "cosine",
    decay_fraction: float = 0.1,
) -> float:
    """LR for optimizer step `step` (0-based): (step + 1) / warmup * lr while warming up, so the first
    step already moves; then, with t going 0 -> 1 over the decay (cosine: all `decay_steps`; wsd:
    their last round(decay_fraction * decay_steps), lr before it), min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2
    (cosine) or lr - (lr - min_lr) * t (wsd); min_lr afterwards."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay_steps <= 0:
        return min_lr
    if schedule == "cosine":
        t = min(1.0, (step - warmup_steps) / decay_steps)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    decay = round(decay_fraction * decay_steps)
    decay_start = warmup_steps + decay_steps - decay
    if step < decay_start:
        return lr
    if decay <= 0:
        return min_lr
    t = min(1.0, (step - decay_start) / decay)
    return lr - (lr - min_lr) * t
