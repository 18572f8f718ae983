"""Statistics of an indexed dataset: what a user checks before spending GPU days on it."""

from __future__ import annotations

import collections
import os

import numpy as np

from megasci.data.indexed_dataset import IndexedDataset
from megasci.data.naming import data_file_path, sidecar_path
from megasci.data.sidecar import read_sidecar


def dataset_statistics(prefix: str, label_key: str = "section") -> dict:
    """Counts, document-length distribution (tokens) and, when a sidecar exists, documents per label."""
    ds = IndexedDataset(prefix)
    doc_lengths = ds.document_lengths()
    stats = {
        "prefix": prefix,
        "dtype": ds.dtype.name,
        "documents": ds.num_documents,
        "sequences": len(ds),
        "tokens": ds.num_tokens,
        "bin_bytes": os.path.getsize(data_file_path(prefix)),
    }
    if ds.num_documents:
        stats["doc_tokens"] = {
            "min": int(doc_lengths.min()),
            "mean": float(doc_lengths.mean()),
            "p50": float(np.percentile(doc_lengths, 50)),
            "p95": float(np.percentile(doc_lengths, 95)),
            "max": int(doc_lengths.max()),
        }
    if os.path.isfile(sidecar_path(prefix)):
        records = read_sidecar(prefix)
        labels = collections.Counter(str(r.get(label_key)) for r in records if r.get(label_key) is not None)
        if labels:
            stats[f"documents_by_{label_key}"] = dict(labels.most_common())
    return stats


def format_statistics(stats: dict) -> str:
    lines = [
        f"dataset    {stats['prefix']}.bin/.idx",
        f"documents  {stats['documents']:,} ({stats['sequences']:,} sequences)",
        f"tokens     {stats['tokens']:,} ({stats['dtype']}, {stats['bin_bytes'] / 1e6:.2f} MB .bin)",
    ]
    if "doc_tokens" in stats:
        d = stats["doc_tokens"]
        lines.append(
            f"doc tokens min {d['min']:,}  mean {d['mean']:,.1f}  median {d['p50']:,.0f}  "
            f"p95 {d['p95']:,.0f}  max {d['max']:,}"
        )
    for key, counts in stats.items():
        if key.startswith("documents_by_"):
            lines.append(f"{key.replace('_', ' ')}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return "\n".join(lines)
