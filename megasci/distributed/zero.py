"""ZeRO stage 2: AdamW whose gradients and optimizer state are sharded over data-parallel ranks.

Layout. Parameters are packed, in reverse order of registration (roughly the order backward
produces their gradients), into buckets of about `bucket_numel` elements. A bucket owns two flat
buffers: the parameters themselves in the model dtype (each `param.data` becomes a view into it)
and an fp32 gradient accumulator. Both are padded to a multiple of the data-parallel size D, and
rank r owns the r-th 1/D of every bucket: its fp32 master weights, Adam's two moments, and after
the reduce-scatter, its part of the summed gradient. So optimizer state per rank is 12 bytes per
parameter / D, plus the model dtype parameters and the fp32 accumulator on every rank.

Two gradient modes (bytes per parameter on each rank, bf16 parameters, D ranks; `gradient_bytes()`
and `state_bytes()` measure them):

- default: the full fp32 accumulator on every rank, reduce-scattered once, during the last
  micro-batch's backward: 2 (parameters) + 4 (accumulator) + 12 / D (masters, moments). With
  `main_grads`, every parameter gets `param.main_grad`, an fp32 view into the accumulator, and the
  matmuls of `megasci.ops.linear` add their weight gradients into it directly (no bf16 `.grad`
  per micro-batch); they call `param.main_grad_added()`, so their buckets still launch on time.
- `shard_gradients` (DeepSpeed stage 2): every micro-batch's gradients are staged bucket by bucket
  in fp32, reduce-scattered at once, and only this rank's fp32 shard is kept: 2 + 16 / D, plus at
  most `MAX_IN_FLIGHT` + (buckets being filled) staging buffers of one bucket each. It communicates
  once per micro-batch instead of once per step, so it is the option for memory, not the default.

One optimizer step, as the training loop drives it:

1. `prepare_backward(last_micro_batch)` before each backward. A post-accumulate-grad hook adds
   each parameter's gradient into the fp32 accumulator and frees `param.grad`. During the last
   micro-batch's backward, a bucket whose every gradient has arrived is reduce-scattered at once
   (asynchronously, in place), so communication overlaps the rest of the backward pass.
2. `finish_gradient_sync()` waits for the reductions, averages over ranks and returns the global
   gradient norm (shard sums of squares, all-reduced), the same norm as unsharded training.
3. `step(lr)` clips by `max_grad_norm` exactly as `torch.nn.utils.clip_grad_norm_` does, applies
   AdamW to the shard (the same update as `torch.optim.AdamW`, decoupled weight decay only on
   parameters `decay(name)` accepts), casts the masters back into the parameter buffer and
   all-gathers each bucket as soon as it is updated, overlapping the gathers with the remaining
   buckets' updates. `skip_step()` instead discards the gradients (a loss-spike or NaN guard).
   The gathers are not overlapped with the next forward: on one node that would hide about 3 GB of
   bf16 traffic (tens of ms over NVLink) inside a step of seconds, and it would need every module,
   and the loss that reads the output weight outside any module, to wait for its own bucket.

Reductions are launched strictly in bucket order (as DDP does), and parameters are broadcast from
rank 0 when the optimizer is built, so ranks agree even if their initialisations did not.

Checkpoints hold each rank's shard with the bucket layout; loading under a different data-parallel
size or bucket size reassembles every parameter's state by name and re-shards it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

# torch >= 2.12 renamed the flat-tensor collectives; 2.4 has only the old names.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
SHARD_ALIGN = 64  # elements: every shard starts 128-byte aligned in bf16, whatever the data-parallel size
MAX_IN_FLIGHT = 2  # shard_gradients: reduce-scatters in flight before a new bucket waits for the oldest


@dataclasses.dataclass
class AdamWConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0  # None or 0: no clipping


def default_decay(name: str, param: nn.Parameter) -> bool:
    """Weight decay on matrices only: not on norm gains, and not on the input or output embedding."""
    return param.dim() >= 2 and not name.startswith(("embed.", "output."))


class _Bucket:
    """A contiguous run of parameters with their flat buffers and this rank's shard of the state."""

    def __init__(self, entries: list[tuple[str, nn.Parameter]], dp_rank: int, dp_size: int, shard_gradients: bool):
        self.names = [name for name, _ in entries]
        self.params = [p for _, p in entries]
        self.offsets, offset = [], 0
        for p in self.params:
            self.offsets.append(offset)
            offset += p.numel()
        self.numel = offset
        self.shard_size = -(-offset // (dp_size * SHARD_ALIGN)) * SHARD_ALIGN  # aligned shard starts for NCCL
        padded = self.shard_size * dp_size
        first = self.params[0]
        self.padded = padded
        self.param_buffer = torch.zeros(padded, dtype=first.dtype, device=first.device)
        self.state_dtype = state_dtype = torch.promote_types(first.dtype, torch.float32)  # fp32, or fp64 for float64
        # default mode: the full accumulator; shard_gradients: only this rank's shard of it, and a
        # staging buffer from the optimizer's pool while a micro-batch's gradients are in flight
        self.grad_buffer = None if shard_gradients else torch.zeros(padded, dtype=state_dtype, device=first.device)
        self.grad_accumulator = (
            torch.zeros(self.shard_size, dtype=state_dtype, device=first.device) if shard_gradients else None
        )
        self.staging = None
        self.staging_base = None
        self.reduced = False
        for p, start in zip(self.params, self.offsets):
            self.param_buffer[start : start + p.numel()].copy_(p.data.reshape(-1))
            p.data = self.param_buffer[start : start + p.numel()].view_as(p)
        self.shard_start = dp_rank * self.shard_size
        self.shard = slice(self.shard_start, self.shard_start + self.shard_size)
        self.master = self.param_buffer[self.shard].to(state_dtype).clone()
        self.exp_avg = torch.zeros_like(self.master)
        self.exp_avg_sq = torch.zeros_like(self.master)
        self.arrived = [False] * len(self.params)
        self.grads_ready = 0
        self.reduce_handle = None
        self.gather_handle = None

    def segments(self):
        """(index, name, start, end) of each parameter's part inside this rank's shard, in shard coordinates."""
        lo, hi = self.shard_start, self.shard_start + self.shard_size
        for i, (name, p, start) in enumerate(zip(self.names, self.params, self.offsets)):
            a, b = max(start, lo), min(start + p.numel(), hi)
            if a < b:
                yield i, name, a - lo, b - lo

    @property
    def grad_shard(self) -> torch.Tensor:
        """This rank's part of the summed gradient (after `finish_gradient_sync`)."""
        return self.grad_accumulator if self.grad_buffer is None else self.grad_buffer[self.shard]


class ZeroAdamW:
    """Sharded AdamW over `model`'s parameters for the data-parallel `group` (None: the default group).

    Construct after the model is on its device and before anything keeps references to
    `param.data`: parameters are re-pointed into the flat buffers. `main_grads` and
    `shard_gradients` choose the gradient mode (module docstring); they exclude each other, as
    a `main_grad` needs the full accumulator to add into.
    """

    def __init__(
        self,
        model: nn.Module,
        config: AdamWConfig | None = None,
        group=None,
        bucket_numel: int = 40_000_000,
        decay: Callable[[str, nn.Parameter], bool] = default_decay,
        *,
        main_grads: bool = False,
        shard_gradients: bool = False,
    ):
        if main_grads and shard_gradients:
            raise ValueError(
                "main_grads needs the full fp32 gradient buffer, shard_gradients keeps only a shard: choose one"
            )
        self.config = config if config is not None else AdamWConfig()
        self.group = group
        self.shard_gradients = shard_gradients
        self._in_flight: list[_Bucket] = []  # shard_gradients: reductions launched, not yet added to the shard
        self._free_staging: list[torch.Tensor] = []
        self._staging_allocated = 0
        self._backward_pending = False
        distributed = dist.is_available() and dist.is_initialized()
        self.dp_size = dist.get_world_size(group) if distributed else 1
        self.dp_rank = dist.get_rank(group) if distributed else 0
        self.bucket_numel = bucket_numel
        self.step_count = 0
        self._sync = True
        self._next_bucket = 0

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if len({p.dtype for _, p in named}) > 1 or len({p.device for _, p in named}) > 1:
            raise ValueError("ZeroAdamW needs every parameter in one dtype on one device")
        self.buckets: list[_Bucket] = []
        current, size = [], 0
        for name, p in reversed(named):
            current.append((name, p))
            size += p.numel()
            if size >= bucket_numel:
                self.buckets.append(_Bucket(current, self.dp_rank, self.dp_size, shard_gradients))
                current, size = [], 0
        if current:
            self.buckets.append(_Bucket(current, self.dp_rank, self.dp_size, shard_gradients))
        self._staging_numel = max(bucket.padded for bucket in self.buckets)
        if self.dp_size > 1:  # one starting point for every rank, whatever each initialised locally
            source = dist.get_global_rank(group, 0) if group is not None else 0
            for bucket in self.buckets:
                dist.broadcast(bucket.param_buffer, src=source, group=group)
                bucket.master.copy_(bucket.param_buffer[bucket.shard])
        self._decay = {name: decay(name, p) for name, p in named}
        self._model = model
        self._homes = {
            name: (bucket, start) for bucket in self.buckets for name, start in zip(bucket.names, bucket.offsets)
        }
        self._hooks = []
        for bucket in self.buckets:
            for i, p in enumerate(bucket.params):
                self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(bucket, i)))
                if main_grads:
                    start = bucket.offsets[i]
                    p.main_grad = bucket.grad_buffer[start : start + p.numel()].view_as(p)
                    p.main_grad_added = self._make_arrival(bucket, i)

    # ---- gradients -------------------------------------------------------------------------
    def _make_hook(self, bucket: _Bucket, index: int):
        start, numel = bucket.offsets[index], bucket.params[index].numel()
        arrived = self._make_arrival(bucket, index)

        def hook(param: torch.Tensor) -> None:
            if param.grad is None:  # it went into main_grad, which counted it; autograd still runs this hook
                if not bucket.arrived[index]:
                    arrived()
                return
            self._check_not_reduced(bucket, index)
            target = bucket.grad_buffer if bucket.grad_buffer is not None else self._staging_for(bucket)
            target[start : start + numel].add_(param.grad.reshape(-1))
            param.grad = None
            arrived()

        return hook

    def _make_arrival(self, bucket: _Bucket, index: int):
        """Counts parameter `index`'s gradient as in its bucket (once per backward) and launches what is ready."""

        def arrived() -> None:
            self._check_not_reduced(bucket, index)
            if not bucket.arrived[index]:
                bucket.arrived[index] = True
                bucket.grads_ready += 1
            self._launch_ready_buckets()

        return arrived

    @staticmethod
    def _check_not_reduced(bucket: _Bucket, index: int) -> None:
        if bucket.reduce_handle is not None or bucket.reduced:
            raise RuntimeError(
                f"{bucket.names[index]}: a gradient arrived after its bucket was reduced "
                f"(a second backward in the last micro-batch?)"
            )

    def _staging_for(self, bucket: _Bucket) -> torch.Tensor:
        """shard_gradients: the bucket's zeroed fp32 staging buffer for this micro-batch, from the pool."""
        if bucket.staging is None:
            while len(self._in_flight) >= MAX_IN_FLIGHT:
                self._finish_reduction(self._in_flight.pop(0))
            if self._free_staging:
                base = self._free_staging.pop()
            else:
                first = bucket.params[0]
                base = torch.empty(self._staging_numel, dtype=bucket.state_dtype, device=first.device)
                self._staging_allocated += 1
            bucket.staging_base, bucket.staging = base, base[: bucket.padded].zero_()
            self._backward_pending = True
        return bucket.staging

    def _finish_reduction(self, bucket: _Bucket) -> None:
        """shard_gradients: wait for the bucket's reduce-scatter, add its shard in, return the staging buffer."""
        if bucket.reduce_handle is not None:
            bucket.reduce_handle.wait()
            bucket.reduce_handle = None
        bucket.grad_accumulator.add_(bucket.staging[bucket.shard])
        self._free_staging.append(bucket.staging_base)
        bucket.staging = bucket.staging_base = None

    def _launch_ready_buckets(self) -> None:
        """Reduce complete buckets strictly in bucket order, so every rank issues the same collectives
        in the same order even when buckets complete in a different order on different ranks."""
        while self._sync and self._next_bucket < len(self.buckets):
            bucket = self.buckets[self._next_bucket]
            if bucket.grads_ready < len(bucket.params):
                return
            self._reduce(bucket)
            self._next_bucket += 1

    def _reduce(self, bucket: _Bucket) -> None:
        if self.shard_gradients:
            if not bucket.reduced:
                staging = self._staging_for(bucket)  # zeros if none of its parameters had a gradient
                if self.dp_size > 1:
                    bucket.reduce_handle = _reduce_scatter(
                        staging[bucket.shard], staging, group=self.group, async_op=True
                    )
                bucket.reduced = True
                self._in_flight.append(bucket)
        elif self.dp_size > 1 and bucket.reduce_handle is None:
            bucket.reduce_handle = _reduce_scatter(
                bucket.grad_shard, bucket.grad_buffer, group=self.group, async_op=True
            )

    def _reduce_micro_batch(self) -> None:
        """shard_gradients: the last backward's remaining buckets reduced in order, every reduction added in."""
        if self._backward_pending:
            for bucket in self.buckets:
                self._reduce(bucket)
            while self._in_flight:
                self._finish_reduction(self._in_flight.pop(0))
            self._backward_pending = False

    def prepare_backward(self, last_micro_batch: bool) -> None:
        """Call before each backward: only the last micro-batch's backward launches the reductions
        (with shard_gradients, every micro-batch's does)."""
        if self.shard_gradients:
            self._reduce_micro_batch()
            self._backward_pending = True
        self._sync = last_micro_batch or self.shard_gradients
        self._next_bucket = 0
        for bucket in self.buckets:
            bucket.arrived = [False] * len(bucket.params)
            bucket.grads_ready = 0
            bucket.reduced = False

    def finish_gradient_sync(self) -> torch.Tensor:
        """Waits for every bucket's reduce-scatter; returns the global L2 norm of the averaged gradient."""
        if self.shard_gradients:
            self._reduce_micro_batch()
        else:
            for bucket in self.buckets:  # in order; buckets whose hooks did not all fire (unused parameters) go now
                self._reduce(bucket)
        squares = self.buckets[0].grad_shard.new_zeros(())
        for bucket in self.buckets:
            if bucket.reduce_handle is not None:
                bucket.reduce_handle.wait()
                bucket.reduce_handle = None
            if self.dp_size > 1:
                bucket.grad_shard.div_(self.dp_size)
            squares += bucket.grad_shard.square().sum()
        if self.dp_size > 1:
            dist.all_reduce(squares, group=self.group)
        return squares.sqrt()

    def zero_grad(self) -> None:
        if self.shard_gradients:
            self._reduce_micro_batch()  # nothing may still be in flight into the shard being zeroed
        for bucket in self.buckets:
            (bucket.grad_buffer if bucket.grad_buffer is not None else bucket.grad_accumulator).zero_()
            bucket.arrived = [False] * len(bucket.params)
            bucket.grads_ready = 0
            bucket.reduced = False
        self._next_bucket = 0

    def skip_step(self) -> None:
        """Drops this step's gradients without touching weights or moments."""
        self.zero_grad()

    # ---- update --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, lr: float, grad_norm: torch.Tensor) -> None:
        """Clip by the norm from `finish_gradient_sync`, update the shard, all-gather the parameters."""
        self._check_aliasing()
        cfg = self.config
        beta1, beta2 = cfg.betas
        self.step_count += 1
        if cfg.max_grad_norm:
            clip = torch.clamp(cfg.max_grad_norm / (grad_norm + 1e-6), max=1.0)
        bias1, bias2 = 1 - beta1**self.step_count, 1 - beta2**self.step_count
        for bucket in reversed(self.buckets):  # forward order: the first layers' parameters gather first
            grad = bucket.grad_shard
            if cfg.max_grad_norm:
                grad.mul_(clip)
            if cfg.weight_decay:
                for _index, name, a, b in bucket.segments():
                    if self._decay[name]:
                        bucket.master[a:b].mul_(1 - lr * cfg.weight_decay)
            bucket.exp_avg.lerp_(grad, 1 - beta1)
            bucket.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (bucket.exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(cfg.eps)
            bucket.master.addcdiv_(bucket.exp_avg, denom, value=-lr / bias1)
            bucket.param_buffer[bucket.shard].copy_(bucket.master)
            if self.dp_size > 1:
                bucket.gather_handle = _all_gather(
                    bucket.param_buffer, bucket.param_buffer[bucket.shard], group=self.group, async_op=True
                )
        self.zero_grad()
        self.wait_for_parameters()

    def _check_aliasing(self) -> None:
        """Fails if one of the model's parameters no longer lives in its bucket (replaced, `.to()`,
        `load_state_dict(assign=True)`, ...): the step would update a buffer the model no longer reads."""
        for name, p in self._model.named_parameters():
            home = self._homes.get(name)
            if home is not None and p.data_ptr() != home[0].param_buffer[home[1] :].data_ptr():
                raise RuntimeError(
                    f"{name} was moved out of ZeroAdamW's buffer after the optimizer was built; "
                    f"build the optimizer after moving or re-assigning parameters"
                )

    @torch.no_grad()
    def sync_masters_from_params(self) -> None:
        """Copies the model's current weights into the fp32 masters: call after loading weights into the
        model without loading optimizer state (fine-tuning), or the next step would restore the old ones."""
        for bucket in self.buckets:
            bucket.master.copy_(bucket.param_buffer[bucket.shard])

    def wait_for_parameters(self) -> None:
        for bucket in self.buckets:
            if bucket.gather_handle is not None:
                bucket.gather_handle.wait()
                bucket.gather_handle = None

    # ---- memory and checkpoints ------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes of optimizer state on this rank: fp32 masters and both Adam moments of its shards."""
        return sum(t.numel() * t.element_size() for b in self.buckets for t in (b.master, b.exp_avg, b.exp_avg_sq))

    def gradient_bytes(self) -> int:
        """Bytes of gradient buffers on this rank: the full accumulators, or (shard_gradients) the
        shards plus every staging buffer allocated so far."""
        held = sum(b.grad_shard.numel() if b.grad_buffer is None else b.grad_buffer.numel() for b in self.buckets)
        held += self._staging_allocated * self._staging_numel
        return held * self.buckets[0].grad_shard.element_size()

    def _layout(self) -> list[list[tuple[str, int]]]:
        return [[(name, p.numel()) for name, p in zip(b.names, b.params)] for b in self.buckets]

    def state_dict(self) -> dict:
        """This rank's shard; `load_state_dict` needs every rank's to re-shard."""
        return {
            "dp_size": self.dp_size,
            "dp_rank": self.dp_rank,
            "step": self.step_count,
            "config": dataclasses.asdict(self.config),
            "layout": self._layout(),
            "shards": [
                {"master": b.master.cpu(), "exp_avg": b.exp_avg.cpu(), "exp_avg_sq": b.exp_avg_sq.cpu()}
                for b in self.buckets
            ],
        }

    @torch.no_grad()
    def load_state_dict(self, load_rank: Callable[[int], dict], saved_dp_size: int) -> None:
        """Loads from the saved shards; `load_rank(r)` returns saved rank r's `state_dict()`.

        Same data-parallel size and layout: only this rank's file is read. Otherwise every saved
        shard is read, each parameter's state is reassembled by name and this rank takes its part.
        """
        mine = load_rank(self.dp_rank) if saved_dp_size == self.dp_size else None
        if mine is not None and mine["layout"] == self._layout():
            for bucket, shard in zip(self.buckets, mine["shards"]):
                for key in ("master", "exp_avg", "exp_avg_sq"):
                    getattr(bucket, key).copy_(shard[key])
            step = mine["step"]
        else:
            saved = [mine if mine is not None and r == self.dp_rank else load_rank(r) for r in range(saved_dp_size)]
            full = _reassemble(saved)
            expected = {name: numel for layout in self._layout() for name, numel in layout}
            if {name: t[0].numel() for name, t in full.items()} != expected:
                raise ValueError(
                    "the saved optimizer state does not belong to this model: parameter names or sizes differ"
                )
            for bucket in self.buckets:
                for index, name, a, b in bucket.segments():
                    lo = bucket.shard_start + a - bucket.offsets[index]
                    for key, tensor in zip(("master", "exp_avg", "exp_avg_sq"), full[name]):
                        getattr(bucket, key)[a:b].copy_(tensor[lo : lo + b - a])
            step = saved[0]["step"]
        self.step_count = int(step)
        for bucket in self.buckets:
            bucket.param_buffer[bucket.shard].copy_(bucket.master)
            if self.dp_size > 1:
                _all_gather(bucket.param_buffer, bucket.param_buffer[bucket.shard], group=self.group)


def _reassemble(states: list[dict]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every parameter's full (master, exp_avg, exp_avg_sq) from all saved ranks' shards."""
    layout = states[0]["layout"]
    full = {}
    for b, params in enumerate(layout):
        numel = sum(n for _, n in params)
        flat = [torch.cat([s["shards"][b][key] for s in states])[:numel] for key in ("master", "exp_avg", "exp_avg_sq")]
        offset = 0
        for name, n in params:
            full[name] = tuple(t[offset : offset + n] for t in flat)
            offset += n
    return full
