#!/usr/bin/env python
"""Sampling benchmarks: one function per measurement, `--only` picks which run (default: all).

index: index build time at the reference scale, the C++ helpers against references in the same run.
  - Sample index: 2.6M documents with lognormal lengths of mean 20k tokens (seeded), one epoch
    in shuffled order, seq 768: about 68M samples. Two baselines: the tests' reference, Megatron's
    sample-by-sample walk in Python (run on a prefix of `--blend-reference-samples` samples, scaled
    linearly, prefix checked equal to the C++ output); and, stronger, a vectorised numpy build
    (cumsum of document lengths, then searchsorted of every sample's first token), checked equal
    to the C++ output in full.
  - Blending index for as many samples with 3 sources, plain and as a 3-stage curriculum. The
    reference is the tests' greedy rule as a Python loop (source and sample number per step, as the
    C++ returns), run on a prefix of `--blend-reference-samples`
    and scaled linearly to the full count (its cost per sample is constant); that prefix is
    checked equal to the C++ output.

Each time is the best of `--repeats` runs. The run also prints the time to fill an array of the
sample index's shape, the floor for any builder that returns a new array.

read: tokens/s read from a memory-mapped dataset, the process pinned to one core.
  - Writes `--read-gb` (default 1) GiB of seeded random int32 tokens (vocab 102,400) in documents
    of lognormal length, mean 20k tokens, under a temporary directory in `--read-dir`, and deletes
    it afterwards.
  - (i) raw `IndexedDataset.get` of seq_length + 1 windows at random (document, offset);
    (ii) `GPTDataset` samples (its shuffle index makes the ids random) through `DataLoader`,
    micro-batch `--read-micro-batch`, prefetch 2, single process.
  - Each runs for `--read-seconds` (or to the end of the samples) three ways. "cold": the file's
    pages dropped with fsync + posix_fadvise(DONTNEED) (no root needed; a VM's host may still
    cache the disk), default readahead, which can pull a 1 GB file into the cache within the run.
    "cold, MADV_RANDOM": dropped again, readahead off on the mapping, the larger-than-RAM case.
    "warm": the whole file read into the page cache first. fincore's resident fraction is printed
    before and after each run.
  Tokens counted are seq_length per sample, the tokens a training step consumes.

    python benchmarks/bench_sampling.py --only index
    python benchmarks/bench_sampling.py --only read
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megasci.data.helpers import build_blending_indices, build_curriculum_blending_indices, build_sample_idx
from megasci.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter, data_file_path

# The references are the tests' own functions, so the benchmark times exactly what the C++ is checked against.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_blending_index import reference_blending  # noqa: E402
from test_helpers import megatron_walk  # noqa: E402


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
    prefix = min(args.blend_reference_samples, num_samples)
    start = time.perf_counter()
    walk_idx = megatron_walk(sizes.tolist(), doc_idx.tolist(), args.seq_length, prefix)
    walk_s = (time.perf_counter() - start) * num_samples / prefix
    if not np.array_equal(build_sample_idx(sizes, doc_idx, args.seq_length, prefix), walk_idx):
        raise SystemExit("Python walk differs from the C++ sample index")
    rows.append(
        (
            "sample index",
            num_samples,
            cpp_s,
            walk_s,
            f"the tests' reference: Megatron's walk in Python on {prefix:,}, scaled linearly",
        )
    )

    weights = [0.5, 0.3, 0.2]
    prefix = min(args.blend_reference_samples, num_samples)
    cpp_s, (cpp_sources, _) = best_time(
        lambda: build_blending_indices(weights, num_samples, rule="greedy"), args.repeats
    )
    start = time.perf_counter()
    ref_sources, _ = reference_blending(weights, prefix, "greedy")
    ref_s = (time.perf_counter() - start) * num_samples / prefix
    if not np.array_equal(cpp_sources[:prefix], ref_sources):
        raise SystemExit("Python blending reference differs from the C++ one")
    del cpp_sources
    rows.append(("blending, 3 sources", num_samples, cpp_s, ref_s, f"Python loop on {prefix:,}, scaled linearly"))

    stage_ends = np.array([num_samples // 4, num_samples // 2, num_samples])
    stage_weights = np.array([[0.8, 0.2, 0.0], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    cpp_s, (cpp_sources, _, _) = best_time(
        lambda: build_curriculum_blending_indices(stage_ends, stage_weights, rule="greedy"), args.repeats
    )
    start = time.perf_counter()
    ref_sources, _ = reference_blending(stage_weights[0].tolist(), prefix, "greedy")
    ref_s = (time.perf_counter() - start) * num_samples / prefix
    if prefix <= stage_ends[0] and not np.array_equal(cpp_sources[:prefix], ref_sources):
        raise SystemExit("Python curriculum reference differs from the C++ one in the first stage")
    del cpp_sources
    rows.append(
        (
            "curriculum blending, 3 stages x 3 sources",
            num_samples,
            cpp_s,
            ref_s,
            f"Python loop on {prefix:,} (first stage), scaled linearly",
        )
    )
    return rows


def print_index_rows(rows) -> None:
    print("\n| what | N | C++ s | reference s | speedup | reference |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for what, n, cpp_s, ref_s, note in rows:
        print(f"| {what} | {n:,} | {cpp_s:.2f} | {ref_s:.2f} | {ref_s / cpp_s:.0f}x | {note} |")


def write_random_dataset(prefix: str, num_tokens: int, mean_tokens: float, vocab: int, seed: int) -> None:
    """`num_tokens` seeded random int32 tokens in lognormal-length documents, written in ~64 MiB chunks."""
    rng = np.random.default_rng(seed)
    chunk_tokens = 16 << 20
    with IndexedDatasetWriter(prefix, dtype=np.int32) as writer:
        written = 0
        while written < num_tokens:
            want = min(chunk_tokens, num_tokens - written)
            draws = 4 * want // int(mean_tokens) + 4  # lengths average mean_tokens: 4x covers `want` in practice
            lengths = np.maximum(1, np.rint(rng.lognormal(np.log(mean_tokens) - 0.5, 1.0, draws))).astype(np.int64)
            ends = np.cumsum(lengths)
            if ends[-1] < want:
                raise RuntimeError(f"{draws} document lengths sum to {ends[-1]}, fewer than {want} tokens")
            count = int(np.searchsorted(ends, want)) + 1
            lengths = lengths[:count]
            lengths[-1] -= int(ends[count - 1]) - want  # the last document ends exactly at `want`
            writer.add_documents_flat(rng.integers(0, vocab, size=want, dtype=np.int32), lengths)
            written += want


def resident_fraction(path: str) -> float | None:
    """Fraction of `path` in the page cache, from util-linux `fincore`; None where it is missing."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", path], capture_output=True, text=True
    )
    return int(out.stdout.split()[0]) / os.path.getsize(path) if out.returncode == 0 and out.stdout.strip() else None


def drop_from_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_into_page_cache(path: str) -> None:
    with open(path, "rb") as f:
        while f.readinto(bytearray(64 << 20)):
            pass


def advise_random(dataset: IndexedDataset) -> None:
    """MADV_RANDOM on the token mapping: no readahead, so a cold read costs what it would on a
    dataset far larger than RAM, where the default readahead (read_ahead_kb) cannot pre-warm it."""
    dataset._bin._mmap.madvise(mmap.MADV_RANDOM)


def tokens_per_second(read_one_batch, tokens_per_batch: int, seconds: float) -> tuple[float, int]:
    """(tokens/s, batches) calling `read_one_batch` until `seconds` have passed or it returns False."""
    start, batches = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        if not read_one_batch():
            break
        batches += 1
    return batches * tokens_per_batch / (time.perf_counter() - start), batches


def bench_read(args) -> list[tuple]:
    """Rows of (what, page cache, resident fraction before, after, tokens/s, samples read)."""
    from megasci.data.loader import DataLoader

    pinned = hasattr(os, "sched_setaffinity")
    if pinned:
        saved_affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(saved_affinity)})
    workdir = tempfile.mkdtemp(prefix="megasci-read-", dir=args.read_dir)
    rows = []
    try:
        prefix = os.path.join(workdir, "random")
        num_tokens = int(args.read_gb * (1 << 30)) // 4
        start = time.perf_counter()
        write_random_dataset(prefix, num_tokens, args.mean_tokens, vocab=102_400, seed=args.seed)
        bin_path = data_file_path(prefix)
        print(
            f"wrote {os.path.getsize(bin_path) / (1 << 30):.2f} GiB ({num_tokens:,} int32 tokens) "
            f"to {workdir} in {time.perf_counter() - start:.1f} s"
        )
        seq, micro = args.seq_length, args.read_micro_batch
        rng = np.random.default_rng(args.seed)
        sample_config = GPTDatasetConfig(
            prefix,
            seq_length=seq,
            num_samples=(num_tokens - 1) // seq,
            split_fractions=(1, 0, 0),
            cache_dir=os.path.join(workdir, "cache"),
        )
        start = time.perf_counter()
        num_samples = len(GPTDataset(sample_config))
        print(
            f"GPTDataset: {num_samples:,} samples of {seq} tokens, indices built in {time.perf_counter() - start:.1f} s"
        )

        def raw_run(no_readahead: bool) -> tuple[str, float, int]:
            raw = IndexedDataset(prefix)
            if no_readahead:
                advise_random(raw)
            long_enough = np.flatnonzero(raw.sizes > seq).astype(np.int64)

            def read_windows() -> bool:
                docs = rng.choice(long_enough, size=micro)
                offsets = rng.integers(0, raw.sizes[docs] - seq)
                np.stack([raw.get(int(d), int(o), seq + 1).astype(np.int64) for d, o in zip(docs, offsets)])
                return True

            rate, batches = tokens_per_second(read_windows, micro * seq, args.read_seconds)
            return "IndexedDataset.get, random windows", rate, batches * micro

        def loader_run(no_readahead: bool) -> tuple[str, float, int]:
            samples = GPTDataset(sample_config)
            if no_readahead:
                advise_random(samples.dataset)
            with DataLoader(
                samples, micro_batch_size=micro, global_batch_size=micro, prefetch=2, pin_memory=False
            ) as loader:
                stream = iter(loader)
                rate, batches = tokens_per_second(
                    lambda: next(stream, None) is not None, micro * seq, args.read_seconds
                )
                waited = loader.wait_seconds
            return f"GPTDataset + DataLoader, prefetch 2 (consumer waited {waited:.1f} s)", rate, batches * micro

        for cache in ("cold", "cold, MADV_RANDOM", "warm"):
            for run in (raw_run, loader_run):
                # Each run maps the file afresh: fadvise cannot drop pages a live mapping still holds.
                if cache == "warm":
                    read_into_page_cache(bin_path)
                else:
                    drop_from_page_cache(bin_path)
                before = resident_fraction(bin_path)
                what, rate, samples_read = run(no_readahead=cache == "cold, MADV_RANDOM")
                rows.append((what, cache, before, resident_fraction(bin_path), rate, samples_read))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if pinned:
            os.sched_setaffinity(0, saved_affinity)
    return rows


def print_read_rows(rows) -> None:
    def percent(fraction):
        return "n/a" if fraction is None else f"{fraction:.0%}"

    print("\n| what | page cache | resident before | after | tokens/s | samples read |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for what, cache, before, after, rate, samples in rows:
        print(f"| {what} | {cache} | {percent(before)} | {percent(after)} | {rate / 1e6:.2f}M | {samples:,} |")


MEASUREMENTS = {"index": bench_index, "read": bench_read}
ROW_PRINTERS = {"read": print_read_rows}  # the rest print index-style rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(MEASUREMENTS), default=sorted(MEASUREMENTS))
    parser.add_argument("--documents", type=int, default=2_600_000)
    parser.add_argument("--mean-tokens", type=float, default=20_000)
    parser.add_argument("--seq-length", type=int, default=768)
    parser.add_argument(
        "--blend-reference-samples",
        type=int,
        default=1_000_000,
        help="prefix the Python blending reference runs on before linear scaling",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--read-gb", type=float, default=1.0, help="GiB of int32 tokens the read measurement writes")
    parser.add_argument("--read-dir", default=None, help="where its temporary dataset goes (default: the system's)")
    parser.add_argument("--read-seconds", type=float, default=10.0, help="duration of each read run")
    parser.add_argument("--read-micro-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}"
    )
    for name in args.only:
        ROW_PRINTERS.get(name, print_index_rows)(MEASUREMENTS[name](args))


if __name__ == "__main__":
    main()
