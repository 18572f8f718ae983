"""Distributed micro-batch loading over a map-style dataset, resumable from one integer.

A dataset is anything with `__len__` and `__getitem__(g) -> np.ndarray` of seq_length + 1 token
ids, a pure function of g (e.g. `GPTDataset`, whose own shuffle index already randomises order).

Layout, the same contiguous-slice layout as Megatron-LM's `MegatronPretrainingSampler`, with
G = global_batch_size = micro_batch_size x accumulation_steps x dp_size:

- step t consumes global samples [t*G, (t+1)*G), in order: global sample g is `dataset[g]`;
- data-parallel rank r owns the contiguous slice [t*G + r*G/dp, t*G + (r+1)*G/dp) of that step;
- it yields the slice as `accumulation_steps` micro-batches, in order.

So concatenating, step by step, rank 0's micro-batches then rank 1's ... gives the 1-rank stream.
A dataset with `micro_batch_size_at(g)` (a curriculum whose stages change the sequence length) sets
the micro-batch of the step that starts at sample g (None: the config's); G stays the same, so the
accumulation is `G / (micro x dp)` for that step (`accumulation_at`).
The last partial global batch is dropped: every rank stops after `len(dataset) // G` steps, so no
rank waits on a step the others cannot finish.

State is `consumed_samples` alone. It advances by G when this rank yields the last micro-batch of
a step (all ranks do so in lockstep), so a checkpoint taken after an optimizer step resumes at the
next step. A loader resumed mid-step replays that step from its start.

**Packed documents and unscored tokens** (`make_batch`). With `document_mask`, a batch also
carries `positions` (each token's place in its document piece, so RoPE restarts) and `segment_ids`
(which piece, for the block-causal mask), from the dataset's `sample(g)`. Labels of unscored
targets are -100: targets an SFT source's loss mask leaves out, and with `eod_mask_id` every EOD
target. Without any of these the dataset's plain `dataset[g]` arrays are used, exactly as before.

Micro-batches are assembled by a daemon thread into a bounded queue (`prefetch` deep), pinned
when `pin_memory`; the copy to `device` is issued non-blocking by the consumer, on the training
thread's stream, so it is ordered before the compute that uses it. `wait_seconds` is the time the
consumer spent blocked on that queue: the data-wait time the training loop logs.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time

import numpy as np
import torch

_END = object()  # producer sentinel: the dataset has no further full global batch


class _ProducerFailure:
    """Carries an exception from the prefetch thread to the consumer, which re-raises it."""

    def __init__(self, error: BaseException):
        self.error = error


@dataclasses.dataclass
class DataLoaderConfig:
    """Batch geometry and resume point; validated so a wrong batch size fails before training starts."""

    micro_batch_size: int
    global_batch_size: int
    dp_rank: int = 0
    dp_size: int = 1
    consumed_samples: int = 0
    prefetch: int = 2  # micro-batches queued ahead by the background thread; 0 loads in the caller
    document_mask: bool = False  # add positions and segment_ids (block-causal attention per document)
    eod_mask_id: int | None = None  # this id as a target is not scored (data.eod_mask_loss)
    pin_memory: bool | None = None  # default: torch.cuda.is_available()
    device: str | torch.device | None = None

    def __post_init__(self):
        if self.micro_batch_size < 1 or self.global_batch_size < 1:
            raise ValueError(
                f"micro_batch_size and global_batch_size must be >= 1, "
                f"got {self.micro_batch_size} and {self.global_batch_size}"
            )
        if self.dp_size < 1 or not 0 <= self.dp_rank < self.dp_size:
            raise ValueError(f"need dp_size >= 1 and 0 <= dp_rank < dp_size, got rank {self.dp_rank} of {self.dp_size}")
        per_step = self.micro_batch_size * self.dp_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not divisible by micro_batch_size "
                f"{self.micro_batch_size} x dp_size {self.dp_size} = {per_step}; it must equal "
                f"micro_batch_size x accumulation_steps x dp_size"
            )
        if self.consumed_samples < 0 or self.consumed_samples % self.global_batch_size:
            raise ValueError(
                f"consumed_samples {self.consumed_samples} must be a non-negative multiple of "
                f"global_batch_size {self.global_batch_size} (it counts whole global steps)"
            )
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.pin_memory is None:
            self.pin_memory = torch.cuda.is_available()

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)


IGNORE_INDEX = -100  # what the loss op skips


def needs_samples(dataset, document_mask: bool, eod_mask_id: int | None) -> bool:
    """Whether batches need more than the token arrays: document pieces, loss masks or an EOD mask."""
    return document_mask or eod_mask_id is not None or bool(getattr(dataset, "has_loss_mask", False))


def make_batch(dataset, indices: np.ndarray, document_mask: bool = False, eod_mask_id: int | None = None) -> dict:
    """The micro-batch of global samples `indices`: tokens, labels ([mb, seq]) and, as the options ask,
    positions and segment_ids; the rule of the module docstring, shared by training and validation."""
    if not needs_samples(dataset, document_mask, eod_mask_id):
        samples = torch.from_numpy(np.stack([np.asarray(dataset[int(g)], dtype=np.int64) for g in indices]))
        return {
            "tokens": samples[:, :-1].contiguous(),
            "labels": samples[:, 1:].contiguous(),
            "indices": torch.from_numpy(np.asarray(indices, dtype=np.int64)),
        }
    parts = [dataset.sample(int(g)) for g in indices]
    tokens = np.stack([p.tokens for p in parts])
    labels = tokens[:, 1:].copy()
    scored = np.ones(labels.shape, dtype=bool)
    for row, part in enumerate(parts):
        if part.loss_mask is not None:
            scored[row] &= part.loss_mask[1:].astype(bool)
    if eod_mask_id is not None:
        scored &= labels != eod_mask_id
    labels[~scored] = IGNORE_INDEX
    batch = {
        "tokens": torch.from_numpy(np.ascontiguousarray(tokens[:, :-1])),
        "labels": torch.from_numpy(labels),
        "indices": torch.from_numpy(np.asarray(indices, dtype=np.int64)),
    }
    if document_mask:
        segments = np.stack([np.repeat(np.arange(len(p.document_lengths)), p.document_lengths)[:-1] for p in parts])
        positions = np.stack([np.concatenate([np.arange(n) for n in p.document_lengths])[:-1] for p in parts])
        batch["segment_ids"] = torch.from_numpy(segments.astype(np.int64))
        batch["positions"] = torch.from_numpy(positions.astype(np.int64))
    return batch


def _micro_batches(dataset, config: DataLoaderConfig, stop: threading.Event):
    """(batch, ends_step) for this rank from `config.consumed_samples` on, in the layout above.

    A module function, not a method, so the prefetch thread holds no reference to the loader and
    an abandoned loader is still collected (its `__del__` then stops the thread).
    """
    slice_size = config.global_batch_size // config.dp_size
    stage_size = getattr(dataset, "micro_batch_size_at", lambda g: None)
    for step in range(config.consumed_samples // config.global_batch_size, len(dataset) // config.global_batch_size):
        micro_batch_size = stage_size(step * config.global_batch_size) or config.micro_batch_size
        accumulation = slice_size // micro_batch_size
        slice_start = step * config.global_batch_size + config.dp_rank * slice_size
        for micro in range(accumulation):
            if stop.is_set():
                return
            first = slice_start + micro * micro_batch_size
            indices = np.arange(first, first + micro_batch_size, dtype=np.int64)
            batch = make_batch(dataset, indices, config.document_mask, config.eod_mask_id)
            if config.pin_memory:
                batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
            yield batch, micro == accumulation - 1


def _produce(batches, stop: threading.Event, out: queue.Queue) -> None:
    """Prefetch thread body: fills `out`, ends with _END or a _ProducerFailure, exits once `stop` is set."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    try:
        for item in batches:
            if not put(item):
                return
        put(_END)
    except BaseException as error:  # the consumer re-raises it; the thread must not die silently
        put(_ProducerFailure(error))


def _from_queue(source: queue.Queue, stop: threading.Event):
    """The consumer's side of the queue: items until _END; a producer failure is re-raised here."""
    while True:
        item = source.get()
        if item is _END:
            return
        if isinstance(item, _ProducerFailure):
            stop.set()
            raise item.error
        yield item


class DataLoader:
    """Iterates this rank's micro-batches as dicts of `tokens`, `labels` ([mb, seq]) and `indices`
    (plus `positions` and `segment_ids` under `document_mask`).

    `DataLoader(dataset, config)` or `DataLoader(dataset, micro_batch_size=..., global_batch_size=...)`.
    Iterating (re)starts from `consumed_samples`; use as a context manager or call `close()`.
    """

    def __init__(self, dataset, config: DataLoaderConfig | None = None, **config_fields):
        if config is None:
            config = DataLoaderConfig(**config_fields)
        elif config_fields:
            raise TypeError("pass either a DataLoaderConfig or its fields, not both")
        self.dataset = dataset
        self.config = config
        self.consumed_samples = config.consumed_samples
        self.wait_seconds = 0.0
        self._stream = iter(())
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.check_micro_batches()

    def micro_batch_size_at(self, step: int) -> int:
        """The micro-batch of global step `step` (0-based): its stage's, or the config's."""
        at = getattr(self.dataset, "micro_batch_size_at", None)
        first = step * self.config.global_batch_size
        stage_size = at(first) if at is not None and first < len(self.dataset) else None
        return stage_size or self.config.micro_batch_size

    def accumulation_at(self, step: int) -> int:
        """Micro-batches per rank in global step `step`."""
        return self.config.global_batch_size // (self.micro_batch_size_at(step) * self.config.dp_size)

    def check_micro_batches(self) -> None:
        """Every stage's micro-batch must divide the global batch per rank; fails before training."""
        for stage in getattr(self.dataset, "stages", []):
            size = getattr(stage, "micro_batch_size", None)
            if size and self.config.global_batch_size % (size * self.config.dp_size):
                raise ValueError(
                    f"stage {stage.name!r}: global_batch_size {self.config.global_batch_size} is not "
                    f"divisible by its micro_batch_size {size} x dp_size {self.config.dp_size}"
                )

    @property
    def num_steps(self) -> int:
        """Global steps in the dataset; the last partial global batch is dropped."""
        return len(self.dataset) // self.config.global_batch_size

    def state_dict(self) -> dict:
        """The position (`consumed_samples`, all that resuming needs) and, for a curriculum, the name
        of the stage it is in (for a reader of the checkpoint)."""
        state: dict = {"consumed_samples": self.consumed_samples}
        if hasattr(self.dataset, "stage_of"):
            last = max(0, self.consumed_samples - 1)
            state["stage"] = self.dataset.stages[self.dataset.stage_of(last)].name
            state["seq_length"] = self.dataset.seq_length_at(last)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume point for the next iteration; any prefetch in flight is discarded."""
        self.close()
        self.config = dataclasses.replace(self.config, consumed_samples=int(state["consumed_samples"]))
        self.consumed_samples = self.config.consumed_samples

    def reset_wait_time(self) -> float:
        """Data-wait seconds since the last reset, zeroing the counter (call once per logging interval)."""
        waited, self.wait_seconds = self.wait_seconds, 0.0
        return waited

    def __iter__(self):
        self.close()
        self._stop = threading.Event()
        config = dataclasses.replace(self.config, consumed_samples=self.consumed_samples)
        batches = _micro_batches(self.dataset, config, self._stop)
        if self.config.prefetch == 0:
            self._stream = batches
        else:
            source = queue.Queue(maxsize=self.config.prefetch)
            self._thread = threading.Thread(
                target=_produce, args=(batches, self._stop, source), name="megasci-data-prefetch", daemon=True
            )
            self._thread.start()
            self._stream = _from_queue(source, self._stop)
        return self

    def __next__(self) -> dict:
        started = time.perf_counter()
        try:
            batch, ends_step = next(self._stream)
        finally:
            self.wait_seconds += time.perf_counter() - started  # with prefetch 0, all loading is waiting
        if self.config.device is not None:
            batch = {name: tensor.to(self.config.device, non_blocking=True) for name, tensor in batch.items()}
        if ends_step:
            self.consumed_samples += self.config.global_batch_size
        return batch

    def close(self, timeout: float = 10.0) -> None:
        """Stops the prefetch thread (it exits within one sample read) and joins it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"prefetch thread still reading after {timeout} s")
            self._thread = None
        self._stream = iter(())

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        stop = getattr(self, "_stop", None)  # absent when __init__ failed
        if stop is not None:
            stop.set()
