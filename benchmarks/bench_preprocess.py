#!/usr/bin/env python
"""Tokens/s of tools/preprocess_data.py per worker against raw SentencePieceProcessor.encode, same text, same run.

The baseline encodes every document's text, already in memory, in one process: the ceiling for
one core. The pipeline adds reading, JSON parsing, inter-process transfer, packing and writing.
Overhead = 1 - (pipeline tokens/s per worker) / (raw list-output tokens/s). "raw xN" runs N raw
encoders in N processes at once, which shares clock boost and memory bandwidth the way N workers
do; "vs raw xN" is the pipeline's shortfall against it. In-worker overhead
compares the CPU time workers spent per token with raw encoding's CPU time per token, which
separates per-token costs (JSON, packing) from fixed ones (start-up, finalize) and is less
sensitive to other load on the machine; scaling = tokens/s at N workers
over N x tokens/s at 1 worker.

    python benchmarks/bench_preprocess.py --papers 3000 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time

import sentencepiece as spm

from megasci.corpus.synthetic import generate_papers
from megasci.data.preprocess import PreprocessConfig, preprocess
from megasci.tokenizer import SentencePieceTrainConfig, train_sentencepiece


def raw_encode_rate(model: str, texts: list[str], repeats: int, out_type=int) -> tuple[float, float, int]:
    """Best of `repeats` passes of plain per-document encode: tokens per wall second and per CPU second."""
    sp = spm.SentencePieceProcessor(model_file=model)
    best, best_cpu, tokens = 0.0, 0.0, 0
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        tokens = sum(len(sp.encode(t, out_type=out_type)) for t in texts)
        best = max(best, tokens / (time.perf_counter() - start))
        best_cpu = max(best_cpu, tokens / (time.process_time() - cpu_start))
    return best, best_cpu, tokens


_shared: dict = {}  # set before forking, so raw-encode processes inherit the texts without copying


def _raw_share(index: int) -> tuple[int, float]:
    texts, model, parts = _shared["texts"], _shared["model"], _shared["parts"]
    rate, _, tokens = raw_encode_rate(model, texts[index::parts], repeats=1)
    return tokens, rate


def raw_parallel_rate(model: str, texts: list[str], processes: int, repeats: int) -> float:
    """N independent processes encoding N shares of the texts at once: what N cores can do with no
    pipeline at all, under the same clock-speed and memory-bandwidth sharing as N workers."""
    _shared.update(texts=texts, model=model, parts=processes)
    best = 0.0
    with mp.get_context("fork").Pool(processes) as pool:
        for _ in range(repeats):
            best = max(best, sum(rate for _, rate in pool.map(_raw_share, range(processes))))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--papers", type=int, default=3000, help="synthetic papers in the benchmark corpus")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokenizer-model", help="an existing .model (default: train one on the corpus)")
    p.add_argument("--vocab-size", type=int, default=16000)
    p.add_argument(
        "--copies",
        type=int,
        default=1,
        help="write the corpus this many times over, so runs with many workers last long enough",
    )
    p.add_argument(
        "--start-methods", nargs="+", default=["forkserver"], help="multiprocessing start methods to compare"
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json-out", help="append the results as one JSON line to this file")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        texts = []
        lines = []
        for paper in generate_papers(args.papers, seed=2024):
            texts.append(paper["text"])
            lines.append(json.dumps({"id": paper["id"], "text": paper["text"]}, ensure_ascii=False) + "\n")
        with open(corpus, "w", encoding="utf-8") as f:
            for _ in range(args.copies):
                f.writelines(lines)
        model = args.tokenizer_model
        if model is None:
            model = os.path.join(tmp, "bench.model")
            train_sentencepiece(texts[:1000], model, SentencePieceTrainConfig(vocab_size=args.vocab_size))
        mb = os.path.getsize(corpus) / 1e6
        raw, raw_cpu, tokens = raw_encode_rate(model, texts, args.repeats)  # one copy: the same text, the same rate
        tokens *= args.copies
        raw_numpy, _, _ = raw_encode_rate(model, texts, args.repeats, out_type="numpy")
        raw_parallel = {n: raw_parallel_rate(model, texts, n, args.repeats) for n in sorted(set(args.workers))}
        rows = []
        for method, workers in ((m, w) for m in args.start_methods for w in args.workers):
            best, best_cpu = 0.0, 0.0
            for r in range(args.repeats):
                cfg = PreprocessConfig(
                    inputs=[corpus],
                    output_prefix=os.path.join(tmp, f"out{workers}_{r}"),
                    tokenizer_model=model,
                    workers=workers,
                    append_eod=True,
                    start_method=method,
                )
                start = time.perf_counter()
                summary = preprocess(cfg, progress=False)
                seconds = time.perf_counter() - start  # pool start-up and finalize included
                best = max(best, summary.tokens["text"] / seconds)
                best_cpu = max(best_cpu, summary.tokens["text"] / summary.worker_cpu_seconds)
            rows.append(
                {
                    "start_method": method,
                    "workers": workers,
                    "tokens_per_s": best,
                    "per_worker": best / workers,
                    "overhead": 1 - best / workers / raw,
                    "raw_parallel": raw_parallel[workers],
                    "overhead_vs_parallel": 1 - best / raw_parallel[workers],
                    "in_worker_overhead": 1 - best_cpu / raw_cpu,
                }
            )
        for row in rows:
            first = next(r for r in rows if r["start_method"] == row["start_method"])
            row["scaling"] = row["tokens_per_s"] / (first["tokens_per_s"] / first["workers"] * row["workers"])

    print(
        f"corpus: {args.papers} synthetic papers x {args.copies}, {mb:.1f} MB, {tokens:,} tokens; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, sentencepiece {spm.__version__}"
    )
    print(
        f"raw SentencePieceProcessor.encode, 1 process: {raw:,.0f} tokens/s (list of ids); "
        f"{raw_numpy:,.0f} tokens/s (out_type='numpy', what the workers call)"
    )
    print(
        f"{'start':>10} {'workers':>7} {'tokens/s':>12} {'per worker':>12} {'overhead':>9} {'raw xN':>12} "
        f"{'vs raw xN':>9} {'in-worker':>9} {'scaling':>8}"
    )
    for row in rows:
        print(
            f"{row['start_method']:>10} {row['workers']:>7} {row['tokens_per_s']:>12,.0f} {row['per_worker']:>12,.0f} "
            f"{row['overhead']:>8.1%} {row['raw_parallel']:>12,.0f} {row['overhead_vs_parallel']:>8.1%} "
            f"{row['in_worker_overhead']:>8.1%} {row['scaling']:>8.2f}"
        )
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(
                json.dumps(
                    {
                        "papers": args.papers,
                        "copies": args.copies,
                        "mb": mb,
                        "tokens": tokens,
                        "cpus": os.cpu_count(),
                        "raw_tokens_per_s": raw,
                        "raw_tokens_per_cpu_s": raw_cpu,
                        "raw_numpy_tokens_per_s": raw_numpy,
                        "rows": rows,
                    }
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
