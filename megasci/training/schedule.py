"""Learning rate: linear warm-up from 0, then cosine decay to a floor, then the floor."""

from __future__ import annotations

import math


def learning_rate(step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """LR for optimizer step `step` (0-based): (step + 1) / warmup * lr while warming up, so the first
    step already moves; then min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2 with t going 0 -> 1 over
    `decay_steps`; min_lr afterwards."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay_steps <= 0:
        return min_lr
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
