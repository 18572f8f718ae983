"""Where training numbers go: TensorBoard scalars, a JSON-lines file and a console line (rank 0).

MFU follows the model's FLOP convention (`megasci.model.flops_per_token`: 6 N_matmul + 12 L h s,
no causal discount, no recomputation) against the device's dense bf16 peak.
"""

from __future__ import annotations

import json
import os

import torch

# Dense bf16 tensor-core peak per device, TFLOP/s (vendor data sheets, SXM parts).
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}


def device_peak_tflops(device: torch.device) -> float | None:
    """The bf16 peak of a known GPU by name; None on CPU or an unknown GPU (MFU is then not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_TFLOPS.items():
        if key in name:
            return peak
    return None


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
