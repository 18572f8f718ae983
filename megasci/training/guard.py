"""The loss-spike / NaN guard: which optimizer steps to skip, and when to give up."""

from __future__ import annotations

import math


class TrainingDiverged(RuntimeError):
    """Raised after `max_skipped_steps` skipped steps in a row."""


class SpikeGuard:
    """Skips steps whose loss or gradient norm is not finite, or whose loss jumps above
    `factor` x the running mean (an EMA of accepted losses, once `warmup` steps are in).

    Its state goes into every checkpoint, so a resumed run skips exactly the steps an
    uninterrupted one would."""

    def __init__(self, factor: float, warmup: int, max_skipped: int, decay: float = 0.95):
        self.factor, self.warmup, self.max_skipped, self.decay = factor, warmup, max_skipped, decay
        self.mean: float | None = None
        self.accepted = 0
        self.consecutive = 0
        self.total_skipped = 0

    def check(self, step: int, loss: float, grad_norm: float) -> str | None:
        """None to take the step; otherwise the reason it is skipped."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            reason = f"non-finite loss {loss} or gradient norm {grad_norm}"
        elif self.factor and self.mean is not None and self.accepted >= self.warmup and loss > self.factor * self.mean:
            reason = f"loss {loss:.4f} is above {self.factor:g} x the running mean {self.mean:.4f}"
        else:
            self.mean = loss if self.mean is None else self.decay * self.mean + (1 - self.decay) * loss
            self.accepted += 1
            self.consecutive = 0
            return None
        self.consecutive += 1
        self.total_skipped += 1
        if self.consecutive > self.max_skipped:
            raise TrainingDiverged(
                f"step {step}: {self.consecutive} steps in a row skipped (last: {reason}); stopping. "
                f"Resume from the latest checkpoint with a lower learning rate or longer warm-up.")
        return reason

    def state_dict(self) -> dict:
        return {"mean": self.mean, "accepted": self.accepted, "consecutive": self.consecutive,
                "total_skipped": self.total_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.accepted = state["mean"], state["accepted"]
        self.consecutive, self.total_skipped = state["consecutive"], state["total_skipped"]
