#!/usr/bin/env python
"""Build a clean, deduplicated, section-tagged arXiv corpus from source archives (+ optional metadata).

    python tools/build_arxiv_corpus.py --metadata arxiv-metadata-oai-snapshot.json \
        --sources arXiv_src_2301_*.tar --output corpus/ --workers 16

Across machines: run with --num-shards K --shard-index i (same --output on a shared file system),
then once with --finalize-only for the global dedup and the yield report. A killed run resumes:
finished units are skipped. --rejected-dir DIR also lists every rejected paper (id, stage, reason, the
start of its text) in DIR/rejected.jsonl.zst; with --finalize-only it lists those of a finished run.
"""

import argparse
import sys

from megasci.corpus.builder import build
from megasci.corpus.config import BuildConfig
from megasci.corpus.finalize import finalize
from megasci.corpus.metadata import MetadataFilterConfig


def main(argv=None) -> int:
    d = BuildConfig(sources=[], output="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sources", nargs="+", required=False, default=[], help="bulk tars, per-paper files, or directories of them"
    )
    p.add_argument("--output", required=True)
    p.add_argument(
        "--metadata",
        nargs="*",
        default=[],
        help="snapshot JSON lines, OAI-PMH responses (arXivRaw/arXiv/oai_dc), .abs files, or directories of them",
    )
    p.add_argument(
        "--categories",
        nargs="+",
        default=list(MetadataFilterConfig().categories),
        help="glob patterns; a paper matches if any of its categories does",
    )
    p.add_argument("--min-year", type=int, default=MetadataFilterConfig().min_first_version_year)
    p.add_argument(
        "--drop-without-metadata",
        action="store_true",
        help="drop sources the metadata does not mention (default: keep, title/abstract from LaTeX)",
    )
    p.add_argument("--min-body-chars", type=int, default=d.min_body_chars)
    p.add_argument("--language", default=d.language)
    p.add_argument("--near-dup-threshold", type=float, default=d.near_dup_threshold)
    p.add_argument("--no-captions", action="store_true", help="drop figure and table captions too")
    p.add_argument("--paper-time-limit", type=float, default=d.paper_time_limit_s, help="seconds per paper")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--shard-index", type=int, default=0)
    p.add_argument("--finalize-only", action="store_true", help="only the global dedup, shards and yield report")
    p.add_argument(
        "--rejected-dir",
        default=None,
        help="write every rejected paper's id, stage, reason and a text excerpt to "
        "DIR/rejected.jsonl.zst (at finalize)",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not args.finalize_only and not args.sources:
        p.error("--sources is required unless --finalize-only")
    if not 0 <= args.shard_index < args.num_shards:
        p.error(f"--shard-index must be in [0, {args.num_shards})")
    cfg = BuildConfig(
        sources=args.sources,
        output=args.output,
        metadata=args.metadata,
        metadata_filter=MetadataFilterConfig(categories=tuple(args.categories), min_first_version_year=args.min_year),
        keep_without_metadata=not args.drop_without_metadata,
        min_body_chars=args.min_body_chars,
        language=args.language,
        near_dup_threshold=args.near_dup_threshold,
        keep_captions=not args.no_captions,
        paper_time_limit_s=args.paper_time_limit,
        workers=args.workers,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        rejected_dir=args.rejected_dir,
    )
    try:
        if args.finalize_only:
            report = finalize(cfg)
            print(report.format())
        else:
            build(cfg, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
