"""Multiple-choice metrics on the scorer: acc, acc_norm, bpb, each with a seeded bootstrap stderr.

Per example, with `ll[i]` the summed log-likelihood of choice i appended to the context:

- `acc`: 1 when the gold choice has the highest `ll` (ties go to the lowest index: numpy's argmax,
  as lm-evaluation-harness).
- `acc_norm`: 1 when the gold choice has the highest `ll[i] / len(choice_i)`, the length in
  characters of the choice as appended (lm-evaluation-harness's `acc_norm`, `process_results` of a
  multiple-choice task whose target delimiter is part of the choice; OLMo's `len_norm`).
- `bpb`: bits per UTF-8 byte of the gold choice, `-ll[gold] / bytes(gold) / ln 2` (OLMo's `bpb`;
  lower is better); smooth, so it moves for models too small to move acc.

A task's value is the mean over its examples; its stderr is the standard deviation of that mean
over `BOOTSTRAP_ITERS` resamples of the examples with replacement, drawn from a seeded generator,
so a rerun gives the same stderr.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .scorer import Score, TokenRequest, as_encoder, bits_per_byte, encode_requests, model_max_length, score
from .tasks import MC, Task

BOOTSTRAP_ITERS = 1000
BOOTSTRAP_SEED = 1234


def bootstrap_stderr(values: Sequence[float], iters: int = BOOTSTRAP_ITERS, seed: int = BOOTSTRAP_SEED) -> float:
    """Standard deviation of the mean of `values` over `iters` seeded resamples (nan for < 2 values)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(iters)
    chunk = max(1, (1 << 22) // x.size)  # resamples drawn per step: memory stays near 32 MiB of indices
    for start in range(0, iters, chunk):
        n = min(chunk, iters - start)
        means[start : start + n] = x[rng.integers(0, x.size, size=(n, x.size))].mean(axis=1)
    return float(means.std(ddof=1))


def example_metrics(choices: Sequence[str], gold: int, scores: Sequence[Score], kind: str = MC) -> dict:
    """acc, acc_norm and bpb of one example from its choices' scores (bpb alone for a bpb task)."""
    bpb = bits_per_byte(scores[gold].loglikelihood, len(choices[gold].encode("utf-8")))
    if kind != MC:
        return {"bpb": bpb}
    lls = np.array([s.loglikelihood for s in scores])
    lengths = np.array([float(len(c)) for c in choices])
    return {"acc": float(np.argmax(lls) == gold), "acc_norm": float(np.argmax(lls / lengths) == gold), "bpb": bpb}


@dataclass
class TaskResult:
    name: str
    kind: str
    examples: int
    excluded: int | None  # contaminated examples left out (None: not checked)
    metrics: dict[str, tuple[float, float]]  # metric -> (value, bootstrap stderr)
    per_example: list[dict] = field(default_factory=list)

    def to_dict(self, with_examples: bool = False) -> dict:
        out = {
            "task": self.name,
            "kind": self.kind,
            "examples": self.examples,
            "contaminated_excluded": self.excluded,
            "metrics": {k: {"value": v, "stderr": s} for k, (v, s) in self.metrics.items()},
        }
        if with_examples:
            out["per_example"] = self.per_example
        return out


def evaluate_tasks(
    model,
    tasks: Sequence[Task],
    tokenizer,
    *,
    device="cpu",
    batch_size: int = 16,
    max_length: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    group=None,
    excluded: dict[str, int] | None = None,
) -> list[TaskResult]:
    """Every task's metrics, all tasks' requests scored in one length-sorted pass.

    A collective under `world_size > 1` (see `scorer.score`): every rank passes the same tasks and
    gets the same results. `excluded` records, per task name, how many contaminated examples the
    caller already removed."""
    encoder = as_encoder(tokenizer)
    window = max_length or model_max_length(model)
    encoded: list[TokenRequest] = []
    where: list[tuple[int, int, int]] = []
    for t, task in enumerate(tasks):
        if not task.examples:
            raise ValueError(f"task {task.name}: no examples to score")
        for e, example in enumerate(task.examples):
            where.append((t, e, len(encoded)))
            try:
                encoded += encode_requests([(example.context, c) for c in example.choices], encoder)
            except ValueError as error:
                raise ValueError(f"task {task.name}, example {example.id}: {error}") from None
            for i, request in enumerate(encoded[-len(example.choices) :]):
                if len(request.continuation) > window:
                    raise ValueError(
                        f"task {task.name}, example {example.id}: choice {i} is "
                        f"{len(request.continuation)} tokens, more than the model's window of {window}"
                    )
    scores = score(
        model,
        encoded,
        device=device,
        batch_size=batch_size,
        max_length=window,
        rank=rank,
        world_size=world_size,
        group=group,
    )
    per_task: list[list[dict]] = [[] for _ in tasks]
    for t, e, first in where:
        example = tasks[t].examples[e]
        mine = scores[first : first + len(example.choices)]
        row = {
            "task": tasks[t].name,
            "id": example.id,
            "gold": example.gold,
            "loglikelihoods": [s.loglikelihood for s in mine],
            "tokens": [s.tokens for s in mine],
            "chars": [s.chars for s in mine],
            "bytes": [s.bytes for s in mine],
            "greedy": [s.greedy for s in mine],
            "truncated": any(s.truncated for s in mine),
        }
        row.update(example_metrics(example.choices, example.gold, mine, tasks[t].kind))
        per_task[t].append(row)
    results = []
    for task, rows in zip(tasks, per_task):
        metrics = {}
        for name in task.metrics:
            values = [r[name] for r in rows]
            metrics[name] = (float(np.mean(values)), bootstrap_stderr(values))
        results.append(TaskResult(task.name, task.kind, len(rows), (excluded or {}).get(task.name), metrics, rows))
    return results


def format_table(results: Sequence[TaskResult]) -> str:
    """task | metric | value ± stderr | examples | contaminated (excluded), one row per metric."""
    header = ("task", "metric", "value ± stderr", "examples", "contaminated")
    rows = []
    for r in results:
        for metric, (value, err) in r.metrics.items():
            rows.append(
                (
                    r.name,
                    metric,
                    f"{value:.4f} ± {err:.4f}",
                    str(r.examples),
                    "-" if r.excluded is None else f"{r.excluded} excluded",
                )
            )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
