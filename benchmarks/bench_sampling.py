#!/usr/bin/env python
"""Sampling benchmarks: one function per measurement, `--only` picks which run (default: all).

index: index build time at the reference scale, the C++ helpers against references in the same run.
  - Sample index: 2.6M documents with lognormal lengths of mean 20k tokens (seeded), one epoch
    in shuffled order, seq 768: about 68M samples. The baseline is a vectorised numpy build
    (cumsum of document lengths, then searchsorted of every sample's first token), checked equal
    to the C++ output in full.
  - Blending index for as many samples with 3 sources, plain and as a 3-stage curriculum. The
    reference is the greedy rule as a Python loop, run on a prefix of `--blend-reference-samples`
    and scaled linearly to the full count (its cost per sample is constant); that prefix is
    checked equal to the C++ output.

Each time is the best of `--repeats` runs. The run also prints the time to fill an array of the
sample index's shape, the floor for any builder that returns a new array.

    python benchmarks/bench_sampling.py --only index
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from megasci.data.helpers import build_blending_indices, build_curriculum_blending_indices, build_sample_idx


def best_time(function, repeats: int):
    """(fastest wall seconds, last result) over `repeats` calls."""
    best, result = float("inf"), None
    for _ in range(repeats):
        result = None  # frees the previous output before the next run allocates its own
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def reference_scale_documents(num_docs: int, mean_tokens: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Lognormal document lengths (sigma 1, mean `mean_tokens`, at least 1 token) and one shuffled epoch."""
    rng = np.random.default_rng(seed)
    sigma = 1.0
    lengths = rng.lognormal(np.log(mean_tokens) - sigma**2 / 2, sigma, num_docs)
    sizes = np.clip(np.rint(lengths), 1, np.iinfo(np.int32).max).astype(np.int32)
    return sizes, rng.permutation(num_docs).astype(np.int64)


def numpy_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, num_samples: int) -> np.ndarray:
    """build_sample_idx vectorised: sample i starts at global token i * seq_length, found by searchsorted
    in the running document ends (side="right" skips empty documents, as the C++ walk does)."""
    order_sizes = sizes[doc_idx].astype(np.int64)
    doc_ends = np.cumsum(order_sizes)
    first_tokens = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    positions = np.searchsorted(doc_ends, first_tokens, side="right")
    result = np.empty((num_samples + 1, 2), np.int32)
    result[:, 0] = positions
    result[:, 1] = first_tokens - (doc_ends[positions] - order_sizes[positions])
    result[0] = 0  # the C++ starts at (0, 0) even before an empty first document
    return result


def python_blending(weights, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The greedy rule one sample at a time, as the tests' reference computes it."""
    total = 0.0
    for w in weights:
        total += w
    weights = [w / total for w in weights]
    counts = [0] * len(weights)
    sources = []
    for i in range(num_samples):
        errors = [w * (i + 1) - c for w, c in zip(weights, counts)]
        best = errors.index(max(errors))
        counts[best] += 1
        sources.append(best)
    return np.array(sources, np.int16)


def bench_index(args) -> list[tuple]:
    """Rows of (what, N, C++ s, reference s, speedup, note)."""
    rows = []
    sizes, doc_idx = reference_scale_documents(args.documents, args.mean_tokens, args.seed)
    total_tokens = int(sizes.sum(dtype=np.int64))
    num_samples = (total_tokens - 1) // args.seq_length
    print(f"{args.documents:,} documents, {total_tokens:,} tokens, seq {args.seq_length}: {num_samples:,} samples")

    floor_s, _ = best_time(lambda: np.full((num_samples + 1, 2), 1, np.int32), args.repeats)
    print(f"filling an array of the sample index's shape alone (np.full): {floor_s:.2f} s")
    cpp_s, cpp_idx = best_time(lambda: build_sample_idx(sizes, doc_idx, args.seq_length, num_samples), args.repeats)
    ref_s, ref_idx = best_time(lambda: numpy_sample_idx(sizes, doc_idx, args.seq_length, num_samples), args.repeats)
    if not np.array_equal(cpp_idx, ref_idx):
        raise SystemExit("numpy sample index differs from the C++ one")
    del cpp_idx, ref_idx
    rows.append(("sample index", num_samples, cpp_s, ref_s, "numpy cumsum+searchsorted, equal in full"))

    weights = [0.5, 0.3, 0.2]
    prefix = min(args.blend_reference_samples, num_samples)
    cpp_s, (cpp_sources, _) = best_time(lambda: build_blending_indices(weights, num_samples), args.repeats)
    start = time.perf_counter()
    ref_sources = python_blending(weights, prefix)
    ref_s = (time.perf_counter() - start) * num_samples / prefix
    if not np.array_equal(cpp_sources[:prefix], ref_sources):
        raise SystemExit("Python blending reference differs from the C++ one")
    del cpp_sources
    rows.append(("blending, 3 sources", num_samples, cpp_s, ref_s, f"Python loop on {prefix:,}, scaled linearly"))

    stage_ends = np.array([num_samples // 4, num_samples // 2, num_samples])
    stage_weights = np.array([[0.8, 0.2, 0.0], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    cpp_s, (cpp_sources, _, _) = best_time(
        lambda: build_curriculum_blending_indices(stage_ends, stage_weights), args.repeats)
    start = time.perf_counter()
    ref_sources = python_blending(stage_weights[0].tolist(), prefix)
    ref_s = (time.perf_counter() - start) * num_samples / prefix
    if prefix <= stage_ends[0] and not np.array_equal(cpp_sources[:prefix], ref_sources):
        raise SystemExit("Python curriculum reference differs from the C++ one in the first stage")
    del cpp_sources
    rows.append(("curriculum blending, 3 stages x 3 sources", num_samples, cpp_s, ref_s,
                 f"Python loop on {prefix:,} (first stage), scaled linearly"))
    return rows


MEASUREMENTS = {"index": bench_index}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(MEASUREMENTS), default=sorted(MEASUREMENTS))
    parser.add_argument("--documents", type=int, default=2_600_000)
    parser.add_argument("--mean-tokens", type=float, default=20_000)
    parser.add_argument("--seq-length", type=int, default=768)
    parser.add_argument("--blend-reference-samples", type=int, default=1_000_000,
                        help="prefix the Python blending reference runs on before linear scaling")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}")
    for name in args.only:
        rows = MEASUREMENTS[name](args)
        print("\n| what | N | C++ s | reference s | speedup | reference |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        for what, n, cpp_s, ref_s, note in rows:
            print(f"| {what} | {n:,} | {cpp_s:.2f} | {ref_s:.2f} | {ref_s / cpp_s:.0f}x | {note} |")


if __name__ == "__main__":
    main()
