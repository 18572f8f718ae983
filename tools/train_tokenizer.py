#!/usr/bin/env python
"""Train a SentencePiece tokenizer for LaTeX on JSONL (plain, .gz, .zst) or Parquet documents.

Writes `<output>.model` and `<output>.meta.json` (special ids, config, mined commands). A bad record
is reported as `file:line` and skipped (`--strict`: stops); a truncated compressed file is an error. Example:
    python tools/train_tokenizer.py --input 'corpus/*.jsonl.zst' --output tokenizer/arxiv \
        --vocab-size 102400 --max-documents 200000
"""

import argparse
import sys

from megasci.data.records import iter_texts
from megasci.tokenizer import CHAT_TEMPLATES, SentencePieceTrainConfig, train_sentencepiece
from megasci.utils.io import expand_inputs


def main(argv=None) -> int:
    d = SentencePieceTrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="JSONL files (.jsonl/.gz/.zst), Parquet files or globs")
    p.add_argument("--json-key", default="text")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    p.add_argument("--output", required=True, help="output path without extension (writes .model and .meta.json)")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--model-type", choices=["unigram", "bpe"], default=d.model_type)
    p.add_argument("--character-coverage", type=float, default=d.character_coverage)
    p.add_argument(
        "--input-sentence-size",
        type=int,
        default=d.input_sentence_size,
        help="lines sampled from the corpus for training (reservoir sampling, shuffled)",
    )
    p.add_argument("--max-documents", type=int, default=None, help="read at most this many documents")
    p.add_argument("--max-sentencepiece-length", type=int, default=d.max_sentencepiece_length)
    p.add_argument(
        "--mined-commands",
        type=int,
        default=d.mined_commands,
        help="most frequent LaTeX commands made whole pieces (unigram only)",
    )
    p.add_argument("--num-threads", type=int, default=d.num_threads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--chat-template",
        choices=sorted(CHAT_TEMPLATES),
        default=None,
        help="reserve this conversation format's markers as single tokens and store the template "
        "in the .meta.json (for SFT data); off by default, which leaves the vocabulary as before",
    )
    args = p.parse_args(argv)
    cfg = SentencePieceTrainConfig(
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size,
        max_documents=args.max_documents,
        max_sentencepiece_length=args.max_sentencepiece_length,
        mined_commands=args.mined_commands,
        num_threads=args.num_threads,
        seed=args.seed,
        chat_template=args.chat_template,
    )
    skipped: dict[str, int] = {}
    try:
        documents = iter_texts(
            expand_inputs(args.input),
            args.json_key,
            strict=args.strict,
            log=lambda line: print(line, file=sys.stderr),
            counts=skipped,
        )
        report = train_sentencepiece(documents, args.output + ".model", cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if skipped:
        print("skipped records: " + ", ".join(f"{kind}: {n}" for kind, n in sorted(skipped.items())))
    print(
        f"trained {report.model_path}: vocabulary {report.vocab_size:,} ({args.model_type}) from "
        f"{report.documents:,} documents, {report.lines:,} lines, {report.characters:,} characters"
    )
    print(
        f"LaTeX commands: {report.commands_seen:,} distinct, {len(report.commands_mined)} mined as whole pieces"
        f" ({len(report.commands_added)} added to the vocabulary), {len(report.commands_not_whole)} still split"
        + (f": {' '.join(report.commands_not_whole[:20])}" if report.commands_not_whole else "")
    )
    if args.chat_template:
        print(
            f"chat template {args.chat_template}: markers are single tokens; {len(report.pieces_unused_for_chat)} "
            f"learned pieces that could cross a marker's edge left unused"
            + (f": {' '.join(map(repr, report.pieces_unused_for_chat[:20]))}" if report.pieces_unused_for_chat else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
