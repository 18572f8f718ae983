"""Phase 2 of the corpus build: corpus-wide dedup over every unit, the final shards, the yield report.

`finalize` reads every finished unit's results in key order, removes duplicates over the whole run
(the same id twice, exact text, near-duplicate text; keeping the latest, then longest), copies the
kept candidates' lines, unparsed, into `shards/arxiv-NNNNN.jsonl.zst`, and writes `yield.json` and
`yield.png` (and, when asked, the rejected-paper log). Every input ends in exactly one funnel row:
written, or rejected at a named stage with a reason.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from megasci.corpus.config import BuildConfig
from megasci.corpus.dedup import ExactDeduplicator, NearDuplicateIndex
from megasci.corpus.pipeline import CORPUS_STAGES, EXACT_DEDUP, NEAR_DEDUP
from megasci.corpus.rejected import RejectedLog, open_rejected_log
from megasci.corpus.report import FunnelTally, YieldReport, plot_funnel
from megasci.corpus.units import EXCERPT_CHARS, check_units, finished_unit_keys, iter_unit_results
from megasci.utils.io import atomic_text_output, iter_numbered_lines, jsonable, write_json_atomic


@dataclass(frozen=True)
class Candidate:
    """What finalize holds per candidate paper: its dedup keys and priority, never its text."""

    id: str
    exact_key: str
    minhash: np.ndarray
    priority: tuple  # (metadata year or 0, text length): newest, then longest, wins


@dataclass(frozen=True)
class Drop:
    """A candidate a corpus-wide stage removed, and the source kept in its place."""

    stage: str
    reason: str
    kept: str


@dataclass
class DedupOutcome:
    keep: set[str]
    drops: dict[str, Drop]  # source -> why it is not written
    after_exact: list[str]  # sources left after the exact stage, in candidate order
    near_clusters: list[list[str]]  # sources, as NearDuplicateIndex.clusters gives them


def drop_duplicates(candidates: dict[str, Candidate], near_dup_threshold: float) -> DedupOutcome:
    """The corpus-wide stages over `candidates` (source -> candidate, in unit and input order): the
    same paper id from two inputs, then exact text, then near-duplicate text. In each group the
    highest priority survives (ties: the smallest source)."""
    drops: dict[str, Drop] = {}
    best_by_id: dict[str, str] = {}  # the same paper from two inputs (a bulk tar and a per-paper file, two versions)
    for source, candidate in sorted(candidates.items()):
        other = best_by_id.get(candidate.id)
        if other is None or candidate.priority > candidates[other].priority:
            best_by_id[candidate.id] = source
    for source in sorted(set(candidates) - set(best_by_id.values())):
        drops[source] = Drop(EXACT_DEDUP, "duplicate_id", best_by_id[candidates[source].id])
    exact = ExactDeduplicator()
    for source, candidate in candidates.items():
        if source not in drops:
            exact.add_key(source, candidate.exact_key, candidate.priority)
    for source, kept in exact.dropped().items():
        drops[source] = Drop(EXACT_DEDUP, "exact_duplicate", kept)
    after_exact = [source for source in candidates if source not in drops]
    near = NearDuplicateIndex(threshold=near_dup_threshold)
    for source in after_exact:
        near.add_signature(source, candidates[source].minhash, candidates[source].priority)
    keep = near.keep_set()
    clusters = near.clusters()
    for cluster in clusters:
        kept = next(source for source in cluster if source in keep)
        drops.update({source: Drop(NEAR_DEDUP, "near_duplicate", kept) for source in cluster if source != kept})
    return DedupOutcome(keep, drops, after_exact, clusters)


def finalize(cfg: BuildConfig) -> YieldReport:
    """Phase 2: global dedup over all units, final shards and the yield report."""
    unit_dir = os.path.join(cfg.output, "units")
    keys = finished_unit_keys(unit_dir)
    check_units(unit_dir, keys)
    tally = FunnelTally(cfg.stages)
    candidates: dict[str, Candidate] = {}
    unit_candidates: dict[str, list[tuple[str, str]]] = {key: [] for key in keys}  # (source, encoding), in order
    metadata_counts = os.path.join(cfg.output, "metadata_counts.json")
    if os.path.exists(metadata_counts):
        with open(metadata_counts, encoding="utf-8") as f:
            tally.report.metadata_lines = json.load(f)["counts"]
    with open_rejected_log(cfg.rejected_dir) as out:
        rejected = RejectedLog(out)
        for key in keys:
            for result in iter_unit_results(unit_dir, [key]):
                tally.add_input(result)
                if result.rejection:
                    rejected.add(
                        result.id, result.source, result.rejection.stage, result.rejection.reason, result.excerpt
                    )
                else:
                    assert result.id is not None and result.encoding is not None, "a candidate has both"
                    candidates[result.source] = Candidate(
                        result.id,
                        result.exact_key,
                        np.array(result.minhash, dtype=np.uint32),
                        (result.year or 0, result.text_chars),
                    )
                    unit_candidates[key].append((result.source, result.encoding))
        outcome = drop_duplicates(candidates, cfg.near_dup_threshold)
        for stage, reason in (
            (EXACT_DEDUP, "duplicate_id"),
            (EXACT_DEDUP, "exact_duplicate"),
            (NEAR_DEDUP, "near_duplicate"),
        ):
            dropped = sum(drop.stage == stage and drop.reason == reason for drop in outcome.drops.values())
            if dropped:
                tally.reject(stage, reason, dropped)
        for stage, survivors in zip(CORPUS_STAGES, (outcome.after_exact, outcome.keep)):
            tally.survivors(stage, len(survivors), sum(candidates[s].priority[1] for s in survivors))
        report = tally.report
        report.near_duplicate_clusters = [[candidates[s].id for s in cluster] for cluster in outcome.near_clusters]
        report.written, report.encodings = _write_shards(cfg, unit_dir, unit_candidates, outcome, candidates, rejected)
    report = tally.finish()
    write_json_atomic(os.path.join(cfg.output, "yield.json"), {"config": cfg.reported(), **jsonable(report)})
    plot_funnel(report, os.path.join(cfg.output, "yield.png"))
    return report


def _write_shards(
    cfg: BuildConfig,
    unit_dir: str,
    unit_candidates: dict[str, list[tuple[str, str]]],
    outcome: DedupOutcome,
    candidates: dict[str, Candidate],
    rejected: RejectedLog,
) -> tuple[int, dict[str, int]]:
    """Kept records in unit order, `records_per_shard` to a file; a failure leaves no partial shard.
    Returns (records written, their encodings)."""
    shard_dir = os.path.join(cfg.output, "shards")
    os.makedirs(shard_dir, exist_ok=True)
    encodings: Counter[str] = Counter()
    lines = _kept_record_lines(unit_dir, unit_candidates, outcome, candidates, encodings, rejected)
    written = 0
    for shard in itertools.count():
        batch = list(itertools.islice(lines, cfg.records_per_shard))
        if not batch:
            break
        with atomic_text_output(os.path.join(shard_dir, f"arxiv-{shard:05d}.jsonl.zst")) as out:
            out.writelines(batch)
        written += len(batch)
    return written, dict(encodings)


def _kept_record_lines(
    unit_dir: str,
    unit_candidates: dict[str, list[tuple[str, str]]],
    outcome: DedupOutcome,
    candidates: dict[str, Candidate],
    encodings: Counter,
    rejected: RejectedLog,
) -> Iterator[str]:
    """The records-file lines of the kept candidates, as the workers wrote them; counts their encodings
    and logs the dropped ones. `unit_candidates`: each unit's candidates in order, as finalize's one
    pass over the results saw them."""
    for key, unit in unit_candidates.items():
        path = os.path.join(unit_dir, f"{key}.records.jsonl.zst")
        records = (line for _, _, line in iter_numbered_lines([path]))
        matched = 0
        for (source, encoding), line in zip(unit, records):  # zip pulls `records` last
            matched += 1
            if source in outcome.keep:
                encodings[encoding] += 1
                yield line.decode("utf-8")
            elif rejected.active:
                drop = outcome.drops[source]
                rejected.add(
                    candidates[source].id,
                    source,
                    drop.stage,
                    drop.reason,
                    json.loads(line)["text"][:EXCERPT_CHARS],
                    kept=drop.kept,
                )
        if matched != len(unit) or next(records, None) is not None:
            raise ValueError(
                f"{path}: its records do not match the {len(unit)} candidates of its results; "
                "delete that unit's .done.json so phase 1 redoes it"
            )
