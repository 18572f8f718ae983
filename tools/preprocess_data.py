#!/usr/bin/env python
"""Tokenize JSONL documents into Megatron-format `<prefix>_<key>_document.{bin,idx}` datasets.

Example:
    python tools/preprocess_data.py --input 'corpus/*.jsonl.zst' --output-prefix data/arxiv \
        --tokenizer-model tokenizer/arxiv.model --workers 16 --append-eod
"""

import argparse
import sys

from megasci.data.preprocess import PreprocessConfig, PreprocessError, preprocess


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or JSON array (.json[.gz, .zst]) files, or globs",
    )
    p.add_argument("--output-prefix", required=True)
    p.add_argument(
        "--tokenizer-model",
        required=True,
        help="SentencePiece .model, HF tokenizer.json, or a directory (e.g. a HF model download)",
    )
    p.add_argument("--json-keys", nargs="+", default=["text"], help="one dataset per key (default: text)")
    p.add_argument(
        "--metadata-keys",
        nargs="*",
        default=["id", "source", "section"],
        help="record fields copied into the <dataset>.docs.jsonl sidecar",
    )
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (0: in-process)")
    p.add_argument("--append-eod", action="store_true", help="end every document with the EOS id")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    p.add_argument(
        "--start-method",
        choices=["fork", "forkserver", "spawn"],
        default=PreprocessConfig.start_method,
        help="how workers start (forkserver when calling from a threaded program)",
    )
    p.add_argument("--block-mb", type=float, default=1.0, help="input block size handed to a worker")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cfg = PreprocessConfig(
        inputs=args.input,
        output_prefix=args.output_prefix,
        tokenizer_model=args.tokenizer_model,
        json_keys=args.json_keys,
        metadata_keys=args.metadata_keys,
        workers=args.workers,
        append_eod=args.append_eod,
        strict=args.strict,
        block_bytes=max(1, int(args.block_mb * (1 << 20))),
        start_method=args.start_method,
    )
    try:
        summary = preprocess(cfg, progress=not args.no_progress)
    except (PreprocessError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
