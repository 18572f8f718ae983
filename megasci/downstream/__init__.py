"""Downstream evaluation below the trainer: the log-likelihood scorer, tasks, metrics, decontamination.

The trainer may call it (`evaluate_tasks(model, tasks, tokenizer, device=..., rank=..., world_size=...)`);
it imports nothing from training. See docs/evaluation.md.
"""

from .metrics import TaskResult, bootstrap_stderr, evaluate_tasks, example_metrics, format_table
from .scorer import Encoder, Score, TokenRequest, as_encoder, bits_per_byte, encode_pair, encode_requests, score
from .tasks import BPB, MC, Example, Task, TaskError, known_tasks, load_jsonl, load_task

__all__ = [
    "BPB",
    "MC",
    "Encoder",
    "Example",
    "Score",
    "Task",
    "TaskError",
    "TaskResult",
    "TokenRequest",
    "as_encoder",
    "bits_per_byte",
    "bootstrap_stderr",
    "encode_pair",
    "encode_requests",
    "evaluate_tasks",
    "example_metrics",
    "format_table",
    "known_tasks",
    "load_jsonl",
    "load_task",
    "score",
]
