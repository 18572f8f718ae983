"""One optimizer step: `accumulation` micro-batches of forward and backward, then the guard and AdamW.

The ZeRO hooks accumulate fp32 gradients and, during the last backward, reduce-scatter each
finished bucket; then come the global gradient norm, the loss-spike / NaN guard, and the sharded
AdamW step that all-gathers the updated parameters (or, for a skipped step, nothing changes).

**The loss** is the mean over the scored tokens of the whole global batch, on one path whether
every token is scored or some are not (SFT loss masks, `data.eod_mask_loss`). The step counts the
scored tokens of its micro-batches (all-reducing the count N when some may be unscored; with every
token scored N is known); micro-batch i, whose op returns the mean over its n_i scored tokens, then
backpropagates mean_i / (N / (n_i * D)) (ZeRO averages over the D ranks), so every scored token
weighs 1/N and an unscored one nothing. With every token scored N / (n_i * D) is the accumulation
count exactly, so the gradients are those of the mean of micro-batch means, bit for bit. A
micro-batch with no scored token still runs its backward (the ZeRO hooks reduce during it) with
weight zero.
Parameters live in the model dtype with fp32 masters in the optimizer: Megatron-style mixed
precision, no autocast.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

from megasci import ops
from megasci.data.loader import IGNORE_INDEX
from megasci.distributed import print_rank0

from .guard import SpikeGuard


def check_loss_options(options: dict) -> None:
    """Fails before the first step if the loss op does not take these keywords (e.g. z_loss)."""
    accepted = inspect.signature(ops.cross_entropy_loss).parameters
    missing = sorted(set(options) - set(accepted))
    if missing:
        raise ValueError(
            f"megasci.ops.cross_entropy_loss takes no {', '.join(missing)} keyword; "
            f"optim.{missing[0]} needs a loss op that supports it"
        )


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

    def __init__(
        self,
        model,
        optimizer,
        guard: SpikeGuard,
        *,
        accumulation: int,
        device,
        world_size: int,
        timing_sync: bool,
        data_wait: Callable[[], float],
        count_scored_tokens: bool = False,
        loss_options: dict | None = None,
    ):
        self.model, self.optimizer, self.guard = model, optimizer, guard
        self.accumulation, self.device, self.world_size = accumulation, device, world_size
        self.timing_sync, self.data_wait = timing_sync, data_wait
        self.count_scored_tokens = count_scored_tokens  # some labels are IGNORE_INDEX: weigh by scored tokens
        self.loss_options = loss_options or {}  # keywords for ops.cross_entropy_loss (z_loss)
        self._last_batch: dict | None = None  # the last micro-batch, for `probe_loss`

    def _loss(self, batch: dict, labels=None):
        packed = {name: batch[name] for name in ("positions", "segment_ids") if name in batch}
        if self.count_scored_tokens:  # loss masks: project only the scored tokens' hidden states
            packed["scored_only"] = True
        return self.model(batch["tokens"], batch["labels"] if labels is None else labels, **packed, **self.loss_options)

    def _forward_backward(self, batches: Iterator[dict]) -> tuple[torch.Tensor, float]:
        """Mean over the global batch's scored tokens; returns this rank's (sum of token losses, N).

        Every token is scored unless `count_scored_tokens`: then each micro-batch counts its scored
        labels and the count N is all-reduced; otherwise each micro-batch holds mb x seq and N is
        known without communication. Micro-batch i backpropagates loss_i / (N / (n_i * D)), which
        with every token scored is loss_i / accumulation, exactly."""
        micro_batches = [next(batches) for _ in range(self.accumulation)]
        self._last_batch = micro_batches[-1]
        if self.count_scored_tokens:
            counts = [int((batch["labels"] != IGNORE_INDEX).sum()) for batch in micro_batches]
            total = torch.tensor(float(sum(counts)), dtype=torch.float64, device=self.device)
            if self.world_size > 1:
                dist.all_reduce(total)
            total_tokens = float(total)
        else:
            counts = [batch["labels"].numel() for batch in micro_batches]
            total_tokens = float(sum(counts) * self.world_size)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for micro, (batch, count) in enumerate(zip(micro_batches, counts)):
            self.optimizer.prepare_backward(last_micro_batch=micro == self.accumulation - 1)
            if count == 0:  # every label scored, weight zero: a finite loss whose gradient is exactly zero
                (self._loss(batch, labels=batch["tokens"]) * 0.0).backward()
                continue
            loss = self._loss(batch)
            (loss / (total_tokens / (count * self.world_size))).backward()
            loss_sum += loss.detach().double() * count
        return loss_sum, total_tokens

    @torch.no_grad()
    def unsafe_to_save(self, probe_loss: Callable[[], float | None] | None = None) -> str | None:
        """Collective. Why the current state must not become a checkpoint, or None: the guard is in a
        skip streak, a weight is not finite, or the updated weights fail the guard on `probe_loss()`
        (default: the loss of the step's last micro-batch through them). A divergence therefore never
        reaches a checkpoint, and the checkpoints before it survive."""
        if self.guard.consecutive:
            return f"the spike guard skipped the last {self.guard.consecutive} step(s)"
        finite = torch.stack(
            [torch.isfinite(p).all() for p in self.model.parameters()]
            + [torch.isfinite(b.master).all() for b in self.optimizer.buckets]
        ).all()
        if self.world_size > 1:
            flag = finite.to(torch.float32).reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag[0] > 0
        if not bool(finite):
            return "the updated weights hold non-finite values"
        loss = (probe_loss or self.probe_loss)()
        reason = None if loss is None else self.guard.verdict(loss)
        if reason is not None:
            return f"the updated weights fail the spike guard on the step's last micro-batch ({reason})"
        return None

    @torch.no_grad()
    def probe_loss(self) -> float | None:
        """Collective: the current weights' loss on the last micro-batch of each rank (the mean over
        ranks, or over their scored tokens), so a checkpoint is written only for weights that still
        pass the guard after their update. None before any step, or with no scored token anywhere."""
        if self._last_batch is None:
            return None
        batch = self._last_batch
        count = float((batch["labels"] != IGNORE_INDEX).sum()) if self.count_scored_tokens else 1.0
        loss = float(self._loss(batch)) if count else 0.0
        total = torch.tensor([loss * count, count], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(total)
        return float(total[0] / total[1]) if float(total[1]) else None

    def __call__(self, batches: Iterator[dict], step: int, lr: float) -> StepResult:
        """Optimizer step `step` (0-based) at learning rate `lr`, over the next micro-batches."""
        started = time.perf_counter()
        waited = self.data_wait()
        loss_sum, scored = self._forward_backward(batches)
        _sync(self.device, self.timing_sync)
        backward_done = time.perf_counter()
        grad_norm = self.optimizer.finish_gradient_sync()
        if self.world_size > 1:
            dist.all_reduce(loss_sum)
        loss_value = float(loss_sum) / scored if scored else math.nan  # no scored token: NaN, which the guard skips
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
        return StepResult(
            loss=loss_value,
            grad_norm=norm_value,
            skipped=reason,
            seconds=finished - started,
            data_wait_s=data_wait,
            forward_backward_s=backward_done - started - data_wait,
            optimizer_s=finished - backward_done,
        )
