#!/usr/bin/env python
"""Corpus-builder throughput: papers/s and MB/s per worker, and where the time goes.

Runs the real builder (phase 1 and finalize) on the real arXiv sample (../shared/arxiv_sample,
when present), on that sample replicated (every input copied `--copies` times under new ids, into
bulk tars: the issue's setting for papers/s per core on real papers) and on synthetic arXiv-style
bulk tars, at each worker count. Start-up (language profiles, metadata) is excluded from phase 1.
Per-stage times are summed from the builder's own per-input times: opening each object (archive)
and one per step of the default pipeline (`steps.DEFAULT_PIPELINE`: assembly, cleaning with
composition, length, language ID, exact_dedup's keys); what phase 1 spends beyond them is the
reading process's tar reads and unit writes. Finalize (dedup, shards, yield report) is timed separately.

    python benchmarks/bench_corpus.py --synthetic-papers 400 --workers 1 2 --copies 10

`--metadata-lines N` also times loading a snapshot of N lines, the sample's own lines under new ids
(start-up that the phase-1 figures leave out, paid once per builder process).
`--dedup-index N` also times finalize's near-duplicate index alone on N random signatures (insert and
query per paper, and the bytes each paper holds there, with tracemalloc): the corpus-wide part of
finalize that grows with the run, to scale to all of arXiv without building it.
"""

from __future__ import annotations

import argparse
import collections
import glob
import io
import json
import os
import tarfile
import tempfile
import time
import tracemalloc

import numpy as np

from megasci.corpus.config import BuildConfig
from megasci.corpus.dedup import NearDuplicateIndex
from megasci.corpus.filters import load_language_profiles
from megasci.corpus.finalize import finalize
from megasci.corpus.metadata import load_metadata
from megasci.corpus.synthetic import generate_papers, write_arxiv_metadata, write_source_packages
from megasci.corpus.units import finished_unit_keys, iter_unit_results, process_units

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "arxiv_sample")


def input_bytes(sources: list[str]) -> int:
    files = [
        f for s in sources for f in (glob.glob(os.path.join(s, "**", "*"), recursive=True) if os.path.isdir(s) else [s])
    ]
    return sum(os.path.getsize(f) for f in files if os.path.isfile(f))


def sample_objects(sample: str) -> list[tuple[str, bytes]]:
    """Every input of the sample as (suffix, bytes): bulk-tar members and the per-paper files."""
    objects = []
    for path in sorted(glob.glob(os.path.join(sample, "bulk", "*.tar"))):
        with tarfile.open(path) as tar:
            objects += [
                (".pdf" if m.name.endswith(".pdf") else ".gz", tar.extractfile(m).read())
                for m in tar.getmembers()
                if m.isfile()
            ]
    for folder in ("packages", "hostile"):
        for path in sorted(glob.glob(os.path.join(sample, folder, "*"))):
            with open(path, "rb") as handle:
                objects.append((".pdf" if path.endswith(".pdf") else ".gz", handle.read()))
    return objects


def write_replicated_sample(sample: str, out_dir: str, copies: int) -> list[str]:
    """The sample's inputs copied `copies` times under new ids (`25MM.NNNNN`), one bulk tar per copy."""
    objects, tars = sample_objects(sample), []
    os.makedirs(out_dir, exist_ok=True)
    for copy in range(copies):
        yymm = f"25{copy % 12 + 1:02d}"
        tars.append(os.path.join(out_dir, f"arXiv_src_{yymm}_{copy // 12 + 1:03d}.tar"))
        with tarfile.open(tars[-1], "w", format=tarfile.GNU_FORMAT) as tar:
            for number, (suffix, data) in enumerate(objects, 1):
                info = tarfile.TarInfo(f"{yymm}/{yymm}.{copy // 12 * 1000 + number:05d}{suffix}")
                info.size, info.mtime = len(data), 1_262_304_000
                tar.addfile(info, io.BytesIO(data))
    return tars


def run(name: str, sources: list[str], metadata: list[str], workers: int) -> dict:
    load_language_profiles()  # start-up, as in process_units; timed out of phase 1
    with tempfile.TemporaryDirectory() as out:
        cfg = BuildConfig(sources=sources, output=out, metadata=metadata, workers=workers)
        start, cpu_start = time.perf_counter(), time.process_time()
        process_units(cfg, progress=False)
        phase1, phase1_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        start = time.perf_counter()
        report = finalize(cfg)
        final = time.perf_counter() - start
        stage_seconds = collections.Counter()
        unit_dir = os.path.join(out, "units")
        for result in iter_unit_results(unit_dir, finished_unit_keys(unit_dir)):
            stage_seconds.update(result.seconds)
    mb = input_bytes(sources) / 1e6
    return {
        "corpus": name,
        "workers": workers,
        "inputs": report.inputs,
        "written": report.written,
        "mb": mb,
        "phase1_s": phase1,
        "phase1_cpu_s": phase1_cpu,
        "finalize_s": final,
        "papers_per_s": report.inputs / phase1,
        "papers_per_s_per_worker": report.inputs / phase1 / workers,
        "mb_per_s_per_worker": mb / phase1 / workers,
        "stage_seconds": dict(stage_seconds),
    }


def metadata_loading(sample: str, lines: int, tmp: str) -> dict:
    """CPU seconds per line of `load_metadata` on a snapshot of `lines` lines made from the sample's."""
    with open(os.path.join(sample, "metadata", "arxiv-metadata-oai-snapshot.json"), encoding="utf-8") as f:
        entries = [json.loads(line) for line in f if line.strip()]
    path = os.path.join(tmp, "snapshot.json")
    with open(path, "w", encoding="utf-8") as out:
        for i in range(lines):
            out.write(json.dumps({**entries[i % len(entries)], "id": f"{2001 + i // 90_000}.{i % 90_000:05d}"}) + "\n")
    start = time.process_time()
    index = load_metadata(path)
    seconds = time.process_time() - start
    return {"lines": lines, "us_per_line": seconds / lines * 1e6, "kept": len(index)}


def dedup_index(papers: int) -> dict:
    """Seconds and bytes per paper of `NearDuplicateIndex.add_signature` with finalize's own keys
    (source, id, exact key, uint32 signature), on random signatures (no near duplicates)."""
    signatures = np.random.default_rng(0).integers(0, 2**32, size=(papers, 128), dtype=np.uint64).astype(np.uint32)
    sources = [f"arXiv_src_2101_{i // 1000:03d}.tar:2101/2101.{i:05d}.gz" for i in range(papers)]
    index = NearDuplicateIndex()
    start = time.perf_counter()
    for source, signature in zip(sources, signatures):
        index.add_signature(source, signature, (2021, 50_000))
    seconds = time.perf_counter() - start
    tracemalloc.start()
    index, keys = NearDuplicateIndex(), {}
    for i, (source, signature) in enumerate(zip(sources, signatures)):
        keys[source] = (f"2101.{i:05d}", f"{i:064x}", signature.copy())
        index.add_signature(source, signature.copy(), (2021, 50_000))
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"papers": papers, "us_per_paper": seconds / papers * 1e6, "bytes_per_paper": held / papers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic-papers", type=int, default=400)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--copies", type=int, default=10, help="copies of the sample in the replicated corpus (0: none)")
    p.add_argument("--dedup-index", type=int, default=0, metavar="N", help="also time the near-dup index on N papers")
    p.add_argument("--metadata-lines", type=int, default=0, metavar="N", help="also time loading an N-line snapshot")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpora = []
        if os.path.isdir(SAMPLE):
            corpora.append(
                (
                    "arxiv_sample",
                    [os.path.join(SAMPLE, d) for d in ("bulk", "packages", "hostile")],
                    glob.glob(os.path.join(SAMPLE, "metadata", "*.json")),
                )
            )
            if args.copies:
                corpora.append(
                    (
                        f"sample_x{args.copies}",
                        write_replicated_sample(SAMPLE, os.path.join(tmp, "rep"), args.copies),
                        [],
                    )
                )
        records = list(generate_papers(args.synthetic_papers, seed=7))
        paths = write_source_packages(os.path.join(tmp, "src"), records, bulk_tar=True)
        tars = [p for p in paths if os.path.basename(p).startswith("arXiv_src_")]
        write_arxiv_metadata(os.path.join(tmp, "meta.jsonl"), records)
        corpora.append((f"synthetic_{args.synthetic_papers}", tars, [os.path.join(tmp, "meta.jsonl")]))
        for name, sources, metadata in corpora:
            for workers in args.workers:
                rows.append(run(name, sources, metadata, workers))
        loading = (
            metadata_loading(SAMPLE, args.metadata_lines, tmp)
            if args.metadata_lines and os.path.isdir(SAMPLE)
            else None
        )
    # papers/CPU-s: inputs per second of this process's CPU time (1 worker: the paper stages run here), the
    # per-core figure on a machine whose other cores are busy, where wall-clock papers/s understates it.
    # e2e papers/s: inputs per wall second of phase 1 and finalize together (start-up still excluded).
    print(
        f"{'corpus':<16} {'workers':>7} {'inputs':>6} {'written':>7} {'MB':>6} {'phase1 s':>8} {'papers/s':>8} "
        f"{'/worker':>8} {'papers/CPU-s':>12} {'MB/s/worker':>11} {'finalize s':>10} {'e2e papers/s':>12}"
    )
    for r in rows:
        per_cpu = f"{r['inputs'] / r['phase1_cpu_s']:>12.1f}" if r["workers"] == 1 else f"{'-':>12}"
        print(
            f"{r['corpus']:<16} {r['workers']:>7} {r['inputs']:>6} {r['written']:>7} {r['mb']:>6.1f} "
            f"{r['phase1_s']:>8.2f} {r['papers_per_s']:>8.1f} {r['papers_per_s_per_worker']:>8.1f} {per_cpu} "
            f"{r['mb_per_s_per_worker']:>11.2f} {r['finalize_s']:>10.2f} "
            f"{r['inputs'] / (r['phase1_s'] + r['finalize_s']):>12.1f}"
        )
    print("\nSeconds per stage, summed over papers (1-worker runs); papers per second of stage time leaves out")
    print("fixed costs (start-up, metadata loading, finalize) that a long run amortises:")
    for r in rows:
        if r["workers"] == 1:
            total = sum(r["stage_seconds"].values())
            print(
                f"{r['corpus']:<16} "
                + "  ".join(f"{k} {v:.2f}" for k, v in sorted(r["stage_seconds"].items()))
                + f"  -> {r['inputs'] / total:.1f} inputs/s, {r['written'] / total:.1f} written papers/s"
            )
    if loading:
        print(
            f"\nmetadata: {loading['lines']:,} snapshot lines loaded at {loading['us_per_line']:.0f} CPU-us a line "
            f"({loading['kept']:,} kept; 2.7M lines: {loading['us_per_line'] * 2.7e6 / 6e7:.1f} min)"
        )
    if args.dedup_index:
        d = dedup_index(args.dedup_index)
        print(
            f"\nnear-duplicate index, {d['papers']:,} random signatures: {d['us_per_paper']:.0f} us and "
            f"{d['bytes_per_paper']:,.0f} bytes per paper (2.5M papers: {d['us_per_paper'] * 2.5e6 / 6e7:.1f} min, "
            f"{d['bytes_per_paper'] * 2.5e6 / 2**30:.1f} GiB)"
        )


if __name__ == "__main__":
    main()
