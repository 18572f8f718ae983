#!/usr/bin/env python
"""CPU instructions per token: a preprocessing worker against raw SentencePieceProcessor.encode.

Wall-clock rates on shared machines swing by ±10% between runs, while valgrind's instruction
counts are repeatable. This runs three child processes under callgrind, all with the same start:
imports, corpus loaded, tokenizer loaded, blocks cut.
  setup   that start alone
  raw     + `encode(text)` for every document (list output, as users call it)
  worker  + the worker's `encode_block` on every block (JSON parsing, encoding, packing, sidecar)
The start is subtracted from the other two. The ratio is the worker's per-token CPU overhead,
and it excludes pool start-up, transfer between processes and scheduling.

    python benchmarks/count_preprocess_instructions.py --papers 300
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile


def child(mode: str, corpus: str, model: str) -> None:
    import numpy as np
    import sentencepiece as spm

    import megasci.data.preprocess as pre
    from megasci.data.records import iter_blocks

    texts = [json.loads(line)["text"] for line in open(corpus, "rb")]
    sp = spm.SentencePieceProcessor(model_file=model)
    pre.init_worker(
        model,
        {"json_keys": ["text"], "metadata_keys": ["id", "source", "section"], "dtype": np.uint16, "append_eod": True},
    )
    blocks = list(iter_blocks([corpus], 1 << 20))
    if mode == "raw":
        tokens = sum(len(sp.encode(t)) for t in texts)
    elif mode == "worker":
        tokens = sum(len(pre.encode_block(b)["keys"]["text"][0]) for b in blocks)
    else:
        tokens = 0
    print(f"tokens={tokens}")


def count(mode: str, corpus: str, model: str) -> tuple[int, int]:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            mode,
            corpus,
            model,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    instructions = int(re.search(r"Collected : (\d+)", out.stderr).group(1))
    return instructions, int(re.search(r"tokens=(\d+)", out.stdout).group(1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--papers", type=int, default=300)
    p.add_argument("--vocab-size", type=int, default=16000)
    args = p.parse_args()
    from megasci.corpus.synthetic import generate_papers
    from megasci.tokenizer import SentencePieceTrainConfig, train_sentencepiece

    with tempfile.TemporaryDirectory() as tmp:
        corpus, model = os.path.join(tmp, "corpus.jsonl"), os.path.join(tmp, "bench.model")
        texts = []
        with open(corpus, "w", encoding="utf-8") as f:
            for paper in generate_papers(args.papers, seed=2024):
                texts.append(paper["text"])
                f.write(json.dumps({"id": paper["id"], "text": paper["text"]}, ensure_ascii=False) + "\n")
        train_sentencepiece(texts, model, SentencePieceTrainConfig(vocab_size=args.vocab_size))
        setup, _ = count("setup", corpus, model)
        raw, raw_tokens = count("raw", corpus, model)
        worker, worker_tokens = count("worker", corpus, model)
    raw_per_token = (raw - setup) / raw_tokens
    worker_per_token = (worker - setup) / worker_tokens  # EOD tokens included: one per document
    print(f"{args.papers} papers, {raw_tokens:,} tokens (+{worker_tokens - raw_tokens} EOD in the worker's output)")
    print(f"raw encode      {raw - setup:>15,} instructions  {raw_per_token:8.1f} per token")
    print(f"worker blocks   {worker - setup:>15,} instructions  {worker_per_token:8.1f} per token")
    print(f"worker overhead {(worker - setup) / (raw - setup) - 1:+.1%} instructions for the same documents")


if __name__ == "__main__":
    main()
