"""Downstream tasks in the training loop: the offline scorer (megasci.downstream) on the live model.

Every `eval.interval` steps (and at step 0 of a fresh run and at the last step, as validation) each
data-parallel rank scores its share of the tasks' requests (`evaluate_tasks` shards them and gathers
the scores to every rank), and rank 0 logs `eval/<task>/<metric>` with `eval/<task>/<metric>_stderr`,
the macro average over the tasks `eval/macro/<metric>` (its stderr from the tasks' as independent
samples), and the time spent: the evaluation's seconds and their share of the training steps' time
since the previous evaluation, printed too. The scores are the offline tool's (tools/eval_tasks.py) on
the same weights: the same function, tasks and batch size.

The tasks are read when the run is set up, so an unknown name or a bad task file fails before the
first step. The component keeps no state a resume needs: nothing goes into checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import time

import torch

from megasci.distributed import print_rank0
from megasci.downstream import Task, TaskResult, evaluate_tasks, load_task
from megasci.utils.io import atomic_text_output

from .metrics import MetricsLog


def load_tasks(specs: list[str], limit: int | None) -> list[Task]:
    """The configured tasks, each cut to its first `limit` examples; two tasks of one name are refused,
    since their scores would share one `eval/<task>/...` tag."""
    tasks = [load_task(spec, limit) for spec in specs]
    names = [task.name for task in tasks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"eval.tasks: more than one task is named {', '.join(repeated)} (a file's name is its "
            f"base name); rename one"
        )
    return tasks


def scalars(results: list[TaskResult]) -> dict[str, float]:
    """`eval/<task>/<metric>` and `_stderr` per task, and the macro average over the tasks having a metric."""
    values: dict[str, float] = {}
    per_metric: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        for metric, (value, stderr) in r.metrics.items():
            values[f"eval/{r.name}/{metric}"] = value
            values[f"eval/{r.name}/{metric}_stderr"] = stderr
            per_metric.setdefault(metric, []).append((value, stderr))
    for metric, pairs in per_metric.items():
        values[f"eval/macro/{metric}"] = sum(v for v, _ in pairs) / len(pairs)
        values[f"eval/macro/{metric}_stderr"] = math.sqrt(sum(s * s for _, s in pairs)) / len(pairs)
    return values


class DownstreamEval:
    """The trainer's downstream evaluation (see the module docstring); falsy with no tasks."""

    def __init__(
        self,
        model,
        tasks: list[Task],
        tokenizer,
        log: MetricsLog,
        *,
        device,
        rank: int,
        world_size: int,
        interval: int,
        batch_size: int = 16,
        per_example_dir: str | None = None,
    ):
        self.model, self.tasks, self.tokenizer, self.log = model, tasks, tokenizer, log
        self.device, self.rank, self.world_size = device, rank, world_size
        self.interval, self.batch_size, self.per_example_dir = interval, batch_size, per_example_dir
        self.train_seconds = 0.0  # training steps' time since the last evaluation (`count_step`)
        self.total_eval_seconds = self.total_train_seconds = 0.0

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def due(self, step: int) -> bool:
        """Whether to evaluate after `step`: every `interval` steps, when there are tasks."""
        return bool(self.tasks) and bool(self.interval) and step % self.interval == 0

    def count_step(self, seconds: float) -> None:
        """One training step's time, the denominator of the evaluation's share."""
        self.train_seconds += seconds
        self.total_train_seconds += seconds

    def __call__(self, step: int) -> dict[str, float]:
        """The scores at `step` (every rank gets them; rank 0 logs and prints); leaves the model training."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        self.model.eval()
        try:
            results = evaluate_tasks(
                self.model,
                self.tasks,
                self.tokenizer,
                device=self.device,
                batch_size=self.batch_size,
                rank=self.rank,
                world_size=self.world_size,
            )
        finally:
            self.model.train()
        seconds = time.perf_counter() - start  # evaluate_tasks ends in a gather: the scores are on the host
        self.total_eval_seconds += seconds
        values = scalars(results)
        values["time/downstream_eval_s"] = seconds
        timing = f"{seconds:.2f} s"
        if self.train_seconds > 0:
            values["time/downstream_eval_share"] = share = seconds / self.train_seconds
            timing += f", {100 * share:.1f}% of the {self.train_seconds:.1f} s of training steps since the last"
        self.train_seconds = 0.0
        self.log.scalars(step, values)
        lines = [f"downstream eval at step {step} ({timing}):"]
        for r in results:
            shown = ", ".join(f"{m} {v:.4f} ± {s:.4f}" for m, (v, s) in r.metrics.items())
            lines.append(f"  {r.name} ({r.examples} examples): {shown}")
        if len(results) > 1:
            macro = sorted(k for k in values if k.startswith("eval/macro/") and not k.endswith("_stderr"))
            lines.append(
                "  macro: "
                + ", ".join(f"{k.split('/')[-1]} {values[k]:.4f} ± {values[k + '_stderr']:.4f}" for k in macro)
            )
        print_rank0("\n".join(lines))
        if self.per_example_dir and self.rank == 0:
            os.makedirs(self.per_example_dir, exist_ok=True)
            with atomic_text_output(os.path.join(self.per_example_dir, f"step_{step:08d}.jsonl")) as f:
                for r in results:
                    for row in r.per_example:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return values

    def report(self) -> str | None:
        """The run's total evaluation time and its share of the training steps' time (printed at the end)."""
        if not self.tasks or not self.total_eval_seconds:
            return None
        line = f"downstream evaluation took {self.total_eval_seconds:.1f} s in all"
        if self.total_train_seconds > 0:
            line += (
                f", {100 * self.total_eval_seconds / self.total_train_seconds:.1f}% of the "
                f"{self.total_train_seconds:.1f} s of training steps"
            )
        print_rank0(line)
        return line
