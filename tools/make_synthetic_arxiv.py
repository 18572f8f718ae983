#!/usr/bin/env python
"""Write generated arXiv-style papers the way arXiv's bulk access serves them, for trying the pipeline.

    python tools/make_synthetic_arxiv.py --papers 200 --output raw/

Writes `raw/arXiv_src_YYMM_001.tar` (gzipped LaTeX sources, multi-file packages, some PDF-only)
and `raw/metadata.jsonl` (metadata-snapshot lines). Real arXiv data: see the README.
"""

import argparse
import sys

from megasci.corpus.synthetic import write_arxiv_dump


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--papers", type=int, default=1000)
    p.add_argument("--output", required=True, help="directory for the tars and metadata.jsonl")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.papers < 1:
        p.error("--papers must be at least 1")
    tars, metadata = write_arxiv_dump(args.output, args.papers, seed=args.seed)
    print(f"{args.papers} papers in {len(tars)} bulk tar(s) under {args.output}; metadata {metadata}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
