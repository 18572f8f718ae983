#!/usr/bin/env python
"""Synthetic retrieval training data for a long-context stage: passkey and span-copy documents.

A small model learns no retrieval from papers alone, so a context extension has nothing to extend;
these documents teach it (megasci/downstream/passkey.py's `RetrievalDataConfig` says what they hold).
The filler text comes from --filler's *training* split as the checkpoint was trained (so the
evaluation's held-out filler stays unseen), tokenized with the checkpoint's tokenizer. Writes
`<prefix>_text_document` and `<prefix>_loss_mask_document` (.bin/.idx, committed as one write, the
mask scoring only the answers), the tokenizer record and the report `<prefix>_passkey.json`; a blend
entry `<prefix>_text_document` then trains on the answers alone. Give --length the stage's
data.seq_length, so each sample is one whole document. Example:
    python tools/make_passkey_data.py --checkpoint runs/demo --filler data/arxiv_text_document \\
        --length 512 --count 2000 --output-prefix data/passkey_512
"""

import argparse
import sys
import time

from megasci.data.indexed_dataset import IndexedDatasetError
from megasci.data.sft import MaskedDatasetWriter
from megasci.downstream.passkey import RetrievalDataConfig, retrieval_documents
from megasci.evaluation import passkey_filler, run_tokenizer_path
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import read_meta, resolve_checkpoint
from megasci.utils.io import jsonable, write_json_atomic


def write_retrieval_data(output_prefix: str, documents, tokenizer) -> dict:
    """The token and loss-mask datasets of `documents` as one write; returns their prefixes."""
    out = MaskedDatasetWriter(output_prefix, tokenizer)
    try:
        for ids, mask in documents:
            out.add_document(ids, mask)
        out.finalize()
    except BaseException:
        out.discard()
        raise
    return out.outputs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the run the data is for: its tokenizer and its data split")
    p.add_argument("--filler", required=True, metavar="PREFIX", help="dataset prefix of the filler text")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--length", type=int, required=True, help="tokens per document: the stage's data.seq_length")
    p.add_argument("--count", type=int, required=True, help="documents to write")
    p.add_argument("--min-episode", type=int, default=32, help="shortest episode: start to answer, in tokens")
    p.add_argument("--digits", type=int, default=5, help="digits of each passkey")
    p.add_argument("--copy-share", type=float, default=0.5, help="share of span-copy documents")
    p.add_argument("--span", type=int, nargs=2, default=[8, 32], metavar=("MIN", "MAX"), help="span-copy lengths")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = time.perf_counter()
    try:
        config = RetrievalDataConfig(
            length=args.length,
            count=args.count,
            min_episode=args.min_episode,
            digits=args.digits,
            copy_share=args.copy_share,
            span=tuple(args.span),
            seed=args.seed,
        )
        checkpoint = resolve_checkpoint(args.checkpoint)
        meta = read_meta(checkpoint)
        tokenizer = load_tokenizer(run_tokenizer_path(checkpoint, meta))
        filler = passkey_filler(args.filler, meta, checkpoint, max(100 * args.length, 200_000), split="train")
        documents = retrieval_documents(tokenizer.encode, filler, config)
        outputs = write_retrieval_data(args.output_prefix, documents, tokenizer)
    except (OSError, ValueError, IndexedDatasetError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    scored = sum(int(mask.sum()) for _, mask in documents)
    report = {
        "config": jsonable(config),
        "checkpoint": checkpoint,
        "filler": args.filler,
        "tokenizer": tokenizer.identity(),
        "documents": len(documents),
        "tokens": len(documents) * args.length,
        "scored_tokens": scored,
        "outputs": outputs,
    }
    write_json_atomic(f"{args.output_prefix}_passkey.json", report)
    print(
        f"wrote {len(documents):,} documents of {args.length} tokens ({report['tokens']:,} tokens, {scored:,} scored: "
        f"{100 * scored / report['tokens']:.1f}%) -> {outputs['tokens']} in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
