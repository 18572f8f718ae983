"""The loss-spike / NaN guard: which optimizer steps to skip, and when to give up."""

from __future__ import annotations

import math


class TrainingDiverged(RuntimeError):
    """Raised after `max_skipped_steps` skipped steps in a row. `rollback` holds the config overrides
    that resume from the last good checkpoint past the data that led there (empty if there is none)."""

    def __init__(self, message: str, rollback: list[str] | None = None):
        super().__init__(message)
        self.rollback = list(rollback or [])


class SpikeGuard:
    """Skips steps whose loss or gradient norm is not finite, or whose loss jumps above `factor` x the
    running mean (an EMA of accepted losses) once `warmup` steps are in; during the warm-up, above
    `factor` x the highest accepted loss (early losses fall, so only a wrecked model rises that far).

    Its state goes into every checkpoint, so a resumed run skips exactly the steps an
    uninterrupted one would."""

    def __init__(self, factor: float, warmup: int, max_skipped: int, decay: float = 0.95):
        self.factor, self.warmup, self.max_skipped, self.decay = factor, warmup, max_skipped, decay
        self.mean: float | None = None
        self.peak: float | None = None
        self.accepted = 0
        self.consecutive = 0
        self.total_skipped = 0

    def verdict(self, loss: float, grad_norm: float = 0.0) -> str | None:
        """Why this loss (and gradient norm) would be skipped, or None; changes nothing."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite loss {loss} or gradient norm {grad_norm}"
        if self.factor and self.mean is not None:
            if self.accepted >= self.warmup:
                if loss > self.factor * self.mean:
                    return f"loss {loss:.4f} is above {self.factor:g} x the running mean {self.mean:.4f}"
            elif loss > self.factor * self.peak:
                return (
                    f"loss {loss:.4f} is above {self.factor:g} x the highest accepted loss {self.peak:.4f} "
                    f"(the guard's warm-up)"
                )
        return None

    def check(self, step: int, loss: float, grad_norm: float) -> str | None:
        """None to take step `step` (0-based); otherwise the reason it is skipped."""
        reason = self.verdict(loss, grad_norm)
        if reason is None:
            self.mean = loss if self.mean is None else self.decay * self.mean + (1 - self.decay) * loss
            self.peak = loss if self.peak is None else max(self.peak, loss)
            self.accepted += 1
            self.consecutive = 0
            return None
        self.consecutive += 1
        self.total_skipped += 1
        if self.consecutive > self.max_skipped:
            raise TrainingDiverged(
                f"step {step + 1}: {self.consecutive} steps in a row skipped (last: {reason}); stopping"
            )
        return reason

    def state_dict(self) -> dict:
        return {
            "mean": self.mean,
            "peak": self.peak,
            "accepted": self.accepted,
            "consecutive": self.consecutive,
            "total_skipped": self.total_skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.accepted = state["mean"], state["accepted"]
        self.peak = state.get("peak", self.mean)  # checkpoints from before the warm-up ceiling
        self.consecutive, self.total_skipped = state["consecutive"], state["total_skipped"]
