"""Plan a run before anything is downloaded: which bulk tars, how many papers, characters, tokens, bytes, hours.

Inputs are arXiv's ``arXiv_src_manifest.xml`` (one ``<file>`` per bulk tar: ``filename``, ``size``,
``yymm``, ``num_items``, ``first_item``, ``last_item``, ``md5sum``, ``seq_num``, ``timestamp``), optional
metadata (any channel ``load_metadata`` reads), an optional measured ``yield.json`` and an optional
tokenizer. Every figure not measured on the user's data comes from ``DEFAULTS`` and is marked so.
It sits above the tokenizer and data layers because it measures with both.
"""

from __future__ import annotations

import dataclasses
import math
import os
import xml.etree.ElementTree as ElementTree

from megasci.corpus.arxiv_ids import bulk_member_stem, id_year_month
from megasci.corpus.metadata import MetadataFilterConfig, load_metadata, metadata_files
from megasci.corpus.steps import DEFAULT_STAGES
from megasci.data.indexed_dataset import best_token_dtype

DEFAULTS = {
    # The real-sample build (tools/build_arxiv_corpus.py over ../shared/arxiv_sample/bulk and packages,
    # 25 real inputs): 18 passed the archive stage (4 encrypted, 3 PDF-only) and all 18 were written,
    # 1,198,107 clean characters in all (2026-12-01, after the residue work).
    "funnel": [
        {"stage": "inputs", "papers": 25, "chars": 0},
        {"stage": "archive", "papers": 18, "chars": 0},
        {"stage": "metadata", "papers": 18, "chars": 0},
        {"stage": "assembly", "papers": 18, "chars": 1_330_689},
    ]
    + [{"stage": s, "papers": 18, "chars": 1_198_107} for s in DEFAULT_STAGES[3:]],
    # SentencePiece, 8,000 pieces, trained on 14 of those papers, measured on the other 4:
    # 159,849 characters -> 53,681 tokens.
    "chars_per_token": 159_849 / 53_681,
    # That build's zstd files (level 3, utils.io.ZSTD_LEVEL): units/ 389,242 bytes and shards/ 371,121
    # bytes for 1,198,107 characters.
    "unit_bytes_per_char": 389_242 / 1_198_107,
    "shard_bytes_per_char": 371_121 / 1_198_107,
    "vocab_size": 102_400,  # ModelConfig's default vocabulary, when no tokenizer is given
}
IDX_HEADER_BYTES = 34  # magic 9, version 8, dtype 1, sequence count 8, document count 8
IDX_BYTES_PER_DOCUMENT = 4 + 8 + 8  # int32 length, int64 offset, int64 document index (one sequence per paper)
TOKENIZER_SAMPLE_RECORDS = 2000


@dataclasses.dataclass(frozen=True)
class BulkTar:
    """One ``<file>`` of arXiv's source manifest."""

    filename: str
    size: int
    yymm: str
    num_items: int
    first_item: str
    last_item: str
    md5sum: str
    seq_num: int
    timestamp: str

    @property
    def year(self) -> int:
        yy = int(self.yymm[:2])
        return 1900 + yy if yy >= 91 else 2000 + yy

    def holds(self, arxiv_id: str) -> bool:
        """True if the paper's member name falls in this tar's [first_item, last_item] range."""
        yymm, stem = bulk_member_stem(arxiv_id).split("/", 1)
        return yymm == self.yymm and self.first_item <= stem <= self.last_item


def read_manifest(path: str) -> list[BulkTar]:
    """The manifest's tars in file order; a missing or malformed field is an error naming the entry."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise ValueError(f"{path}:{exc.position[0]}: not well-formed XML ({exc})") from None
    tars = []
    for number, entry in enumerate(root.iter("file"), 1):
        values = {f.name: (entry.findtext(f.name) or "").strip() for f in dataclasses.fields(BulkTar)}
        try:
            tars.append(
                BulkTar(
                    **{
                        **values,
                        "size": int(values["size"]),
                        "num_items": int(values["num_items"]),
                        "seq_num": int(values["seq_num"]),
                    }
                )
            )
        except ValueError as exc:
            raise ValueError(f"{path}: <file> {number} ({values['filename'] or 'no filename'}): {exc}") from None
        if not (len(tars[-1].yymm) == 4 and tars[-1].yymm.isdigit()):
            raise ValueError(f"{path}: <file> {number} ({tars[-1].filename}): yymm {tars[-1].yymm!r} is not YYMM")
    return tars


def _stage_rows(yield_path: str | None) -> tuple[list[dict], str]:
    if yield_path is None:
        return DEFAULTS["funnel"], "default (real-sample build, see megasci/plan.py)"
    import json

    with open(yield_path, encoding="utf-8") as f:
        return json.load(f)["funnel"], f"measured ({yield_path})"


def expected_funnel(in_scope: int, rows: list[dict]) -> list[dict]:
    """Papers and characters after each stage for ``in_scope`` papers, scaled from a measured funnel.

    In-scope papers still fail the archive stage (PDF-only, encrypted) at the measured rate; after the
    metadata stage, each stage keeps the measured share of what reached it, at the measured characters
    per paper. Characters are 0 before assembly, as in ``yield.json``.
    """
    by_stage = {row["stage"]: row for row in rows}
    archive_rate = by_stage["archive"]["papers"] / by_stage["inputs"]["papers"] if by_stage["inputs"]["papers"] else 0
    reference = by_stage["metadata"]["papers"]
    out = []
    for stage in DEFAULT_STAGES:
        row = by_stage[stage]
        share = archive_rate * (row["papers"] / reference if reference and stage not in ("archive", "metadata") else 1)
        papers = round(in_scope * share)
        chars = round(papers * row["chars"] / row["papers"]) if row["papers"] else 0
        out.append({"stage": stage, "papers": papers, "chars": chars})
    return out


def _chars_per_token(tokenizer_path: str | None, records: list) -> tuple[float, int, str]:
    """(characters per token, vocabulary size, where the figure comes from)."""
    if tokenizer_path is None:
        return DEFAULTS["chars_per_token"], DEFAULTS["vocab_size"], "default (real-sample measurement)"
    from megasci.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    if not records:
        raise ValueError("--tokenizer needs in-scope metadata to measure on (titles and abstracts)")
    texts = [f"{r.title}\n{r.abstract}" for r in records[:TOKENIZER_SAMPLE_RECORDS]]
    tokens = sum(len(tokenizer.encode(text)) for text in texts)
    return (
        sum(map(len, texts)) / tokens,
        tokenizer.vocab_size,
        f"measured with {tokenizer_path} on {len(texts)} in-scope titles and abstracts",
    )


def plan_run(
    manifest: str,
    metadata: list[str],
    categories: tuple[str, ...],
    years: tuple[int, int],
    yield_path: str | None = None,
    tokenizer: str | None = None,
    gpus: int = 1,
    tokens_per_s: float = 45_000.0,
    train_tokens: int | None = None,
) -> dict:
    """The plan as a JSON-ready dict: exact integers for counts and bytes, sources named for each estimate."""
    first_year, last_year = years
    tars = [t for t in read_manifest(manifest) if first_year <= t.year <= last_year]
    in_scope_ids: list[str] = []
    if metadata:
        index = load_metadata(metadata, MetadataFilterConfig(categories=categories, min_first_version_year=first_year))
        in_scope_ids = [key for key, record in index.records.items() if record.year <= last_year]
        months = {}
        for key in in_scope_ids:
            year, month = id_year_month(key)
            months.setdefault(f"{year % 100:02d}{month:02d}", []).append(key)
        tars = [t for t in tars if any(t.holds(key) for key in months.get(t.yymm, ()))]
        in_scope = sum(
            any(t.holds(key) for t in tars if t.yymm == yymm) for yymm, keys in months.items() for key in keys
        )
        in_scope_source = (
            f"metadata filter over {len(metadata)} input(s): {len(in_scope_ids):,} papers, "
            f"{in_scope:,} of them in the manifest's tars"
        )
    else:
        in_scope = sum(t.num_items for t in tars)
        in_scope_source = "no metadata: every item of the selected tars (no category filter)"
    rows, funnel_source = _stage_rows(yield_path)
    funnel = expected_funnel(in_scope, rows)
    written = funnel[-1]
    chars_per_token, vocab_size, token_source = _chars_per_token(
        tokenizer, [index.records[key] for key in in_scope_ids] if metadata else []
    )
    tokens = round(written["chars"] / chars_per_token)
    token_bytes = best_token_dtype(vocab_size)().itemsize
    budget = tokens if train_tokens is None else train_tokens
    metadata_bytes = sum(os.path.getsize(p) for p in metadata_files(metadata))
    disk = {
        "bulk_tars": sum(t.size for t in tars),
        "metadata": metadata_bytes,
        "builder_units": math.ceil(funnel[DEFAULT_STAGES.index("language")]["chars"] * DEFAULTS["unit_bytes_per_char"]),
        "corpus_shards": math.ceil(written["chars"] * DEFAULTS["shard_bytes_per_char"]),
        "dataset_bin": tokens * token_bytes,
        "dataset_idx": IDX_HEADER_BYTES + IDX_BYTES_PER_DOCUMENT * written["papers"],
    }
    disk["total"] = sum(disk.values())
    return {
        "years": list(years),
        "categories": list(categories),
        "fetch": {
            "tars": len(tars),
            "bytes": disk["bulk_tars"],
            "items": sum(t.num_items for t in tars),
            "keys": [t.filename for t in tars],
        },
        "papers_in_scope": in_scope,
        "papers_in_scope_source": in_scope_source,
        "funnel": funnel,
        "funnel_source": funnel_source,
        "chars_per_token": round(chars_per_token, 4),
        "chars_per_token_source": token_source,
        "vocab_size": vocab_size,
        "token_dtype": best_token_dtype(vocab_size).__name__,
        "tokens": tokens,
        "disk_bytes": disk,
        "disk_bytes_source": "compression ratios: default (real-sample build)",
        "training": {
            "tokens": budget,
            "gpus": gpus,
            "tokens_per_s_per_gpu": tokens_per_s,
            "seconds": round(budget / (gpus * tokens_per_s)),
            "hours": round(budget / (gpus * tokens_per_s) / 3600, 2),
        },
    }


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError


def format_plan(plan: dict) -> str:
    fetch, disk, train = plan["fetch"], plan["disk_bytes"], plan["training"]
    lines = [
        f"fetch: {fetch['tars']:,} bulk tars, {_size(fetch['bytes'])} ({fetch['bytes']:,} bytes), "
        f"{fetch['items']:,} items, years {plan['years'][0]}-{plan['years'][1]}",
        f"papers after the metadata filter: {plan['papers_in_scope']:,} ({plan['papers_in_scope_source']})",
        f"expected after each stage, {plan['funnel_source']}:",
    ]
    lines += [f"  {row['stage']:<12} {row['papers']:>12,} papers {row['chars']:>18,} chars" for row in plan["funnel"]]
    lines += [
        f"tokens: {plan['tokens']:,} at {plan['chars_per_token']} chars/token ({plan['chars_per_token_source']}); "
        f"vocabulary {plan['vocab_size']:,} -> {plan['token_dtype']}",
        f"disk ({plan['disk_bytes_source']}):",
    ]
    lines += [f"  {name:<14} {_size(value):>12}" for name, value in disk.items()]
    lines.append(
        f"training: {train['tokens']:,} tokens on {train['gpus']} GPU(s) at {train['tokens_per_s_per_gpu']:,.0f} "
        f"tokens/s each: {train['hours']:,} h"
    )
    return "\n".join(lines)
