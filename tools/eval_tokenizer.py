#!/usr/bin/env python
"""Compare tokenizers on LaTeX documents: tokens per document, per command, per equation.

Example:
    python tools/eval_tokenizer.py --tokenizers tokenizer/arxiv.model llama3/tokenizer.json \
        --input 'corpus/val*.jsonl.zst' --max-documents 1000 --output-json tokenizer_eval.json
"""

import argparse
import itertools
import sys
from dataclasses import asdict

from megasci.tokenizer import load_tokenizer
from megasci.tokenizer.evaluate import evaluate_tokenizers, format_table
from megasci.utils.io import expand_inputs, iter_jsonl_field, write_json_atomic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tokenizers",
        nargs="+",
        required=True,
        help="SentencePiece .model, HuggingFace tokenizer.json, or a directory holding either",
    )
    p.add_argument("--input", nargs="+", required=True, help="JSONL files (.jsonl/.gz/.zst) or globs")
    p.add_argument("--json-key", default="text")
    p.add_argument("--max-documents", type=int, default=1000, help="evaluate on the first N documents")
    p.add_argument("--output-json", default=None, help="also write the stats here as JSON")
    args = p.parse_args(argv)
    if args.max_documents < 1:
        p.error("--max-documents must be at least 1")
    try:
        tokenizers = [load_tokenizer(path) for path in args.tokenizers]
        names = [t.name for t in tokenizers]
        if len(set(names)) < len(names):  # e.g. two directories that both hold tokenizer.model
            for tokenizer, path in zip(tokenizers, args.tokenizers):
                tokenizer.name = path
        documents = list(
            itertools.islice(iter_jsonl_field(expand_inputs(args.input), args.json_key), args.max_documents)
        )
        stats = evaluate_tokenizers(tokenizers, documents)
        if args.output_json:
            write_json_atomic(args.output_json, [asdict(row) for row in stats])
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
