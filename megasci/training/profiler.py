"""`train.profile_steps: [a, b]`: where steps a..b (1-based, inclusive) spend their time and memory.

Each rank writes `<out_dir>/trace_rank<R>_steps<a>-<b>.json`, a PyTorch profiler trace in Chrome's
format (open it in https://ui.perfetto.dev or chrome://tracing; each step is a `step N` range), and
on CUDA `memory_rank<R>_steps<a>-<b>.pickle`, the allocator's memory snapshot over the same steps
(drag it into https://pytorch.org/memory_viz). Outside those steps the profiler costs nothing.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.profiler import ProfilerActivity, profile, record_function

MEMORY_HISTORY_ENTRIES = 200_000  # allocation events kept for the snapshot


class StepProfiler:
    """Wraps each training step: `with profiler.step(n): ...` for every 1-based step number n."""

    def __init__(self, steps: tuple[int, int] | None, out_dir: str, device: torch.device, rank: int):
        if steps is not None and not 1 <= steps[0] <= steps[1]:
            raise ValueError(f"train.profile_steps must be [first, last] with 1 <= first <= last, got {list(steps)}")
        self.steps, self.out_dir, self.device, self.rank = steps, out_dir, device, rank
        self._profile = None
        self.written: list[str] = []

    def _path(self, kind: str, suffix: str) -> str:
        first, last = self.steps
        return os.path.join(self.out_dir, f"{kind}_rank{self.rank:05d}_steps{first}-{last}.{suffix}")

    @contextlib.contextmanager
    def step(self, number: int):
        if self.steps is None or not self.steps[0] <= number <= self.steps[1]:
            yield
            return
        if number == self.steps[0]:
            self._start()
        with record_function(f"step {number}"):
            yield
        if number == self.steps[1]:
            self._stop()

    def _start(self) -> None:
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
            torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)
        self._profile = profile(activities=activities, record_shapes=True, profile_memory=True)
        self._profile.start()

    def _stop(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._profile.stop()
        os.makedirs(self.out_dir, exist_ok=True)
        trace = self._path("trace", "json")
        self._profile.export_chrome_trace(trace)
        self.written.append(trace)
        self._profile = None
        if self.device.type == "cuda":
            snapshot = self._path("memory", "pickle")
            torch.cuda.memory._dump_snapshot(snapshot)
            torch.cuda.memory._record_memory_history(enabled=None)
            self.written.append(snapshot)
