"""One optimizer step: `accumulation` micro-batches of forward and backward, then the guard and AdamW.

The ZeRO hooks accumulate fp32 gradients and, during the last backward, reduce-scatter each
finished bucket; then come the global gradient norm, the loss-spike / NaN guard, and the sharded
AdamW step that all-gathers the updated parameters (or, for a skipped step, nothing changes).
Parameters live in the model dtype with fp32 masters in the optimizer: Megatron-style mixed
precision, no autocast.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from megasci.distributed import print_rank0

from .guard import SpikeGuard


@dataclasses.dataclass
class StepResult:
    """What one step measured; the times split `seconds` into data wait, compute and optimizer."""

    loss: float  # mean over the global batch
    grad_norm: float
    skipped: str | None  # why the optimizer step was skipped; None when it was taken
    seconds: float
    data_wait_s: float
    forward_backward_s: float  # without the data wait
    optimizer_s: float  # gradient sync, norm, guard and AdamW (communication included)


def _sync(device, enabled: bool) -> None:
    if enabled and device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainStep:
    """Callable once per optimizer step; `data_wait()` is the loader's running total of seconds
    spent waiting for batches, so the step can tell data wait from compute."""

    def __init__(self, model, optimizer, guard: SpikeGuard, *, accumulation: int, device, world_size: int,
                 timing_sync: bool, data_wait: Callable[[], float]):
        self.model, self.optimizer, self.guard = model, optimizer, guard
        self.accumulation, self.device, self.world_size = accumulation, device, world_size
        self.timing_sync, self.data_wait = timing_sync, data_wait

    def __call__(self, batches: Iterator[dict], step: int, lr: float) -> StepResult:
        """Optimizer step `step` (0-based) at learning rate `lr`, over the next micro-batches."""
        started = time.perf_counter()
        waited = self.data_wait()
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        for micro in range(self.accumulation):
            batch = next(batches)
            self.optimizer.prepare_backward(last_micro_batch=micro == self.accumulation - 1)
            loss = self.model(batch["tokens"], batch["labels"])
            (loss / self.accumulation).backward()
            loss_sum += loss.detach().float()
        _sync(self.device, self.timing_sync)
        backward_done = time.perf_counter()
        grad_norm = self.optimizer.finish_gradient_sync()
        if self.world_size > 1:
            dist.all_reduce(loss_sum)
        loss_value = float(loss_sum) / (self.accumulation * self.world_size)
        norm_value = float(grad_norm)
        reason = self.guard.check(step, loss_value, norm_value)
        if reason is None:
            self.optimizer.step(lr, grad_norm)
        else:
            self.optimizer.skip_step()
            print_rank0(f"step {step + 1}: skipped, {reason}")
        _sync(self.device, self.timing_sync)
        finished = time.perf_counter()
        data_wait = self.data_wait() - waited
        return StepResult(loss=loss_value, grad_norm=norm_value, skipped=reason, seconds=finished - started,
                          data_wait_s=data_wait, forward_backward_s=backward_done - started - data_wait,
                          optimizer_s=finished - backward_done)
