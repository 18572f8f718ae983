#!/usr/bin/env python
"""Which task examples a training corpus contains: 13-gram overlap with lm-evaluation-harness's normalisation.

Each example's own text (question and gold answer, without few-shot demonstrations) is normalised as
lm-eval's Janitor does (ASCII lower-case, punctuation deleted), split into word 13-grams, and looked
up in every corpus document, streamed one at a time (memory: the tasks' 13-grams). The corpus is JSONL
shards (plain, .gz, .zst; --text-key) and/or .bin/.idx datasets, decoded with --tokenizer.

Prints contaminated examples per task and writes a JSON report whose ids `tools/eval_tasks.py
--exclude-contaminated` leaves out.

Example:
    python tools/decontaminate.py --tasks sciq_rc_0shot arc_easy_rc_5shot my_task.jsonl \\
        --corpus 'corpus/shards/*.jsonl.zst' data/arxiv_text_document --tokenizer tokenizer.model \\
        --out contamination.json
"""

import argparse
import glob
import sys

from megasci.downstream.decontaminate import NGRAM, find_contamination, iter_documents
from megasci.downstream.tasks import TaskError, load_task
from megasci.tokenizer import load_tokenizer
from megasci.utils.io import write_json_atomic


def expand(patterns):
    """Globs expanded (sorted); other entries (files or dataset prefixes) kept as given."""
    out = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"{pattern}: no corpus file matches")
        out += [m for m in matches if not (m.endswith(".bin") and m[:-4] + ".idx" in matches)]
    return [m[:-4] if m.endswith(".idx") else m for m in out]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", required=True, help="task names or JSONL task files")
    p.add_argument(
        "--corpus",
        nargs="+",
        required=True,
        help="JSONL shards (.jsonl/.gz/.zst, globs allowed) and/or .bin/.idx dataset prefixes",
    )
    p.add_argument("--tokenizer", help="decodes .bin/.idx datasets (SentencePiece .model or tokenizer.json)")
    p.add_argument("--text-key", default="text", help="the JSONL field holding a document's text")
    p.add_argument("--ngram", type=int, default=NGRAM, help=f"n-gram length in words (default {NGRAM}, as lm-eval)")
    p.add_argument("--limit", type=int, default=None, help="check only the first N examples of each task")
    p.add_argument("--out", metavar="FILE", help="write the report (ids of contaminated examples) as JSON")
    args = p.parse_args(argv)
    if args.ngram < 1:
        p.error("--ngram must be positive")
    try:
        tasks = [load_task(spec, args.limit) for spec in args.tasks]
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        corpus = expand(args.corpus)
        documents = 0

        def counted():
            nonlocal documents
            for item in iter_documents(corpus, args.text_key, tokenizer, warn=lambda w: print(w, file=sys.stderr)):
                documents += 1
                yield item

        reports = find_contamination(tasks, counted(), args.ngram)
    except (TaskError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{documents} corpus documents, {args.ngram}-grams")
    print(f"{'task':40s} {'examples':>8s} {'contaminated':>12s}")
    for r in reports:
        print(f"{r.task:40s} {r.examples:8d} {len(r.contaminated):12d}")
        for example_id in r.contaminated[:5]:
            print(f"    {example_id}: first seen in {r.first_seen[example_id]}")
        if len(r.contaminated) > 5:
            print(f"    ... {len(r.contaminated) - 5} more")
    if args.out:
        write_json_atomic(
            args.out,
            {
                "ngram": args.ngram,
                "corpus": corpus,
                "documents": documents,
                "tasks": {r.task: r.to_dict() for r in reports},
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
