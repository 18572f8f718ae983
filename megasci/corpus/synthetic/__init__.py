"""Deterministic synthetic arXiv-style data for the demo and the tests, in place of real arXiv files.

`papers.py` writes the papers (corpus records); `dump.py` packages them as arXiv's bulk access gives
them (source tars, metadata-snapshot lines). The names below are the ones callers use.
"""

from megasci.corpus.synthetic.dump import gzip_bytes, write_arxiv_dump, write_arxiv_metadata, write_source_packages
from megasci.corpus.synthetic.papers import generate_papers, write_corpus_jsonl

__all__ = [
    "generate_papers",
    "gzip_bytes",
    "write_arxiv_dump",
    "write_arxiv_metadata",
    "write_corpus_jsonl",
    "write_source_packages",
]
