"""The stop request: SIGTERM (what torchrun and schedulers send) asks for a checkpoint and a clean exit."""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist


class StopRequest:
    """While entered, SIGTERM sets `requested` instead of killing the process; the previous handler
    comes back on exit. Outside the main thread there is no signal handling, and nothing is requested.
    `exit_interval` stops a run every that many steps too (a scheduler's time slice)."""

    def __init__(self, exit_interval: int | None = None):
        self.requested = False
        self.exit_interval = exit_interval
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def exit_due(self, step: int, final: bool) -> bool:
        """Whether `exit_interval` ends the run after `step` (never at the last step, which ends it anyway)."""
        return bool(self.exit_interval) and step % self.exit_interval == 0 and not final

    def agreed(self, device, dp_size: int) -> bool:
        """Whether any rank was asked to stop, agreed across ranks so they stop at the same step."""
        if dp_size == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
