"""Where training numbers go: TensorBoard scalars, a JSON-lines file and a console line (rank 0).

`MetricsLog` writes scalars; `TrainingMetrics` is what the trainer measures and when it reports it.

MFU follows the model's FLOP convention (`megasci.model.flops_per_token`: 6 N_matmul + 12 L h s,
no causal discount, no recomputation) against the device's dense bf16 peak.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from megasci.distributed import print_rank0

# Dense (no 2:4 sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets (the dense figure,
# or half the sparse one where only that is printed), keyed by the exact `torch.cuda.get_device_name`
# string: variants of one chip differ in clocks and power (H100 PCIe and NVL are not the SXM part), and
# a substring would let "NVIDIA L40" match "NVIDIA L4".
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.5,
    "NVIDIA H200": 989.4,  # H200 SXM
    "NVIDIA H200 NVL": 835.5,
    "NVIDIA H800": 989.4,  # H800 SXM5
    "NVIDIA H800 PCIe": 756.0,
    "NVIDIA H20": 148.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA L4": 121.0,
    "NVIDIA L40": 181.05,
    "NVIDIA L40S": 362.05,
    "NVIDIA B200": 2250.0,
}


def device_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of a known GPU by exact name; None on CPU or an unknown GPU (then MFU is not
    reported unless `train.peak_tflops` gives the peak)."""
    if device.type != "cuda":
        return None
    return PEAK_TFLOPS.get(torch.cuda.get_device_name(device).strip())


class MetricsLog:
    """Scalars to TensorBoard and `metrics.jsonl` under `log_dir`; inactive on ranks other than 0."""

    def __init__(self, log_dir: str, active: bool):
        self.active = active
        self.log_dir = log_dir
        self.writer = None
        self._jsonl = None
        if active:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

            os.makedirs(log_dir, exist_ok=True)
            self.writer = SummaryWriter(log_dir)
            self._jsonl = open(os.path.join(log_dir, "metrics.jsonl"), "a", encoding="utf-8")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()

    def text(self, tag: str, text: str) -> None:
        if self.active:
            self.writer.add_text(tag, f"```\n{text}\n```", 0)

    def close(self) -> None:
        if self.active:
            self.writer.close()
            self._jsonl.close()
            self.active = False


def read_metrics(log_dir: str) -> dict[int, dict]:
    """`metrics.jsonl` per step: the last logged value of each scalar (a resumed run logs its steps again)."""
    rows = {}
    with open(os.path.join(log_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            rows.setdefault(record["step"], {}).update(record)
    return rows


class TrainingMetrics:
    """The trainer's numbers: per-step scalars, and every `log_interval` steps the interval's means
    (throughput, TFLOP/s and MFU, the step-time split, data position and curriculum stage, peak
    memory) as scalars and one console line on rank 0.

    With a curriculum whose stages change the sequence length (`data.seq_length_at`), every step
    logs the length it used (`data/seq_length`), the console line names it, and throughput and
    FLOPs count each step's own tokens (`flops_at(length)`: FLOPs per token at that length)."""

    def __init__(
        self,
        log: MetricsLog,
        data,
        *,
        train_steps: int,
        global_batch_size: int,
        seq_length: int,
        flops_per_token: int,
        world_size: int,
        peak_tflops: float | None,
        device,
        rank0: bool,
        log_interval: int | None = None,
        flops_at=None,
    ):
        self.log, self.data, self.log_interval = log, data, log_interval
        self.train_steps, self.global_batch_size, self.seq_length = train_steps, global_batch_size, seq_length
        self.flops_per_token, self.world_size, self.peak, self.device, self.rank0 = (
            flops_per_token,
            world_size,
            peak_tflops,
            device,
            rank0,
        )
        self.flops_at = flops_at
        self.names = [s.name for s in data.sources]
        self._reset()

    def start(self) -> None:
        """Called as the step loop starts, so peak memory is the training steps' own."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _reset(self) -> None:
        self.interval = {
            "steps": 0,
            "time": 0.0,
            "wait": 0.0,
            "fb": 0.0,
            "opt": 0.0,
            "loss": 0.0,
            "tokens": 0,
            "flops": 0.0,
        }
        self.last_seq_length = self.seq_length

    def seq_length_of(self, consumed: int | None) -> int:
        """The length of the step that ended at `consumed` samples (the run's when the data has one length)."""
        if consumed is None or not hasattr(self.data, "seq_length_at"):
            return self.seq_length
        return int(self.data.seq_length_at(consumed - 1))

    def step(
        self, step: int, result, lr: float, total_skipped: int, consumed: int | None = None, final: bool = False
    ) -> None:
        """One finished optimizer step (`result` a `train_step.StepResult`), numbered from 1, after
        `consumed` samples; reports the interval every `log_interval` steps and at the `final` one."""
        for key, value in (
            ("time", result.seconds),
            ("wait", result.data_wait_s),
            ("fb", result.forward_backward_s),
            ("opt", result.optimizer_s),
            ("loss", result.loss),
        ):
            self.interval[key] += value
        self.interval["steps"] += 1
        length = self.seq_length_of(consumed)
        self.interval["tokens"] += self.global_batch_size * length
        per_token = self.flops_at(length) if self.flops_at is not None else self.flops_per_token
        self.interval["flops"] += self.global_batch_size * length * per_token
        self.last_seq_length = length
        self.log.scalars(
            step,
            {
                "train/loss": result.loss,
                "train/lr": lr,
                "train/grad_norm": result.grad_norm,
                "train/skipped_steps": total_skipped,
                "data/seq_length": length,
            },
        )
        if consumed is not None and (final or bool(self.log_interval) and step % self.log_interval == 0):
            self.report(step, consumed, lr, result.grad_norm, total_skipped)

    def report(self, step: int, consumed: int, lr: float, grad_norm: float, total_skipped: int) -> str:
        """The interval's scalars and console line (printed on rank 0); starts the next interval."""
        n, iv = self.interval["steps"], self.interval
        if not iv["tokens"]:  # report() called without step(): the run's length
            iv["tokens"] = n * self.global_batch_size * self.seq_length
            iv["flops"] = iv["tokens"] * self.flops_per_token
        tokens_per_s = iv["tokens"] / iv["time"]
        tflops = iv["flops"] / iv["time"] / self.world_size / 1e12
        stage = self.data.stage_of(consumed - 1)
        per_source = (
            np.bincount(self.data.source_index[:consumed], minlength=len(self.names))
            if self.rank0
            else np.zeros(len(self.names), dtype=np.int64)
        )  # only rank 0 logs
        values = {
            "perf/tokens_per_s": tokens_per_s,
            "perf/tflops_per_device": tflops,
            "time/step_s": iv["time"] / n,
            "time/data_wait_s": iv["wait"] / n,
            "time/forward_backward_s": iv["fb"] / n,
            "time/optimizer_comm_s": iv["opt"] / n,
            "data/stage": stage,
            "data/consumed_samples": consumed,
        }
        values.update({f"data/samples/{name}": int(c) for name, c in zip(self.names, per_source)})
        line = (
            f"step {step}/{self.train_steps} | loss {iv['loss'] / n:.4f} | lr {lr:.3g} | "
            f"grad norm {grad_norm:.3f} | {tokens_per_s:,.0f} tok/s | {tflops:.3g} TFLOP/s/device"
        )
        if self.peak:
            values["perf/mfu"] = tflops / self.peak
            line += f" {100 * tflops / self.peak:.1f}% MFU"
        line += (
            f" | step {iv['time'] / n:.3f}s (data {iv['wait'] / n:.3f}, "
            f"fwd+bwd {iv['fb'] / n:.3f}, opt+comm {iv['opt'] / n:.3f})"
        )
        if self.device.type == "cuda":
            values["mem/peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            line += f" | peak mem {values['mem/peak_gib']:.1f} GiB"
        line += f" | stage {self.data.stages[stage].name} | seq {self.last_seq_length}"
        if total_skipped:
            line += f" | skipped {total_skipped}"
        self.log.scalars(step, values)
        print_rank0(line)
        self._reset()
        return line
