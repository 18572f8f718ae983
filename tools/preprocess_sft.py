#!/usr/bin/env python
"""Tokenize post-training conversations into token and loss-mask datasets with the chat template.

Reads chat records (`messages`), instruction records (`instruction`/`output`) as JSONL (.jsonl,
.jsonl.gz, .jsonl.zst), a JSON array (.json, as MathInstruct and Alpaca ship) or Parquet, and Stack
Exchange `Posts.xml` dumps (question + accepted answer).
Writes `<prefix>_text_document` and `<prefix>_loss_mask_document` (.bin/.idx), the sidecar
`<prefix>_text_document.docs.jsonl` and the report `<prefix>_sft.json`. Example:
    python tools/preprocess_sft.py --input ultrachat/*.jsonl math.stackexchange.com/Posts.xml \
        --output-prefix data/sft --tokenizer-model tokenizer/arxiv_chat.model --min-score 2
"""

import argparse
import sys

from megasci.data.sft import SFTConfig, SFTError, preprocess_sft


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="JSONL, JSON array, Parquet or Posts.xml files, or globs")
    p.add_argument("--output-prefix", required=True)
    p.add_argument(
        "--tokenizer-model",
        required=True,
        help="a tokenizer with a chat template (tools/add_chat_template.py adds one), or its dir",
    )
    p.add_argument(
        "--source",
        default=None,
        help="source name for records without a 'source' field (default: the input file's name)",
    )
    p.add_argument(
        "--min-score",
        type=int,
        default=None,
        help="Stack Exchange: keep pairs whose question and answer both score at least this",
    )
    p.add_argument("--append-eod", action="store_true", help="end each conversation with EOS (not scored)")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed record instead of skipping it")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cfg = SFTConfig(
        inputs=args.input,
        output_prefix=args.output_prefix,
        tokenizer_model=args.tokenizer_model,
        source=args.source,
        min_score=args.min_score,
        append_eod=args.append_eod,
        strict=args.strict,
    )
    try:
        summary = preprocess_sft(cfg, progress=not args.no_progress)
    except (SFTError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
