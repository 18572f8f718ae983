"""The arXiv corpus builder: source archives (+ metadata) to clean, deduplicated, section-tagged shards.

Two phases, so work splits across machines and survives being killed:
1. `process_units`: inputs are cut into units (one bulk tar, one per-paper file, or up to
   `files_per_unit` files of a directory, in sorted order). Each finished unit leaves
   `units/<key>.jsonl.zst` (its candidate records and every rejection) and `units/<key>.done.json`
   (its funnel counts); a rerun skips units whose `.done.json` exists. `--num-shards/--shard-index`
   takes every K-th unit, so K machines share one output directory.
2. `finalize`: reads every unit in key order, removes exact and near duplicates over the whole run
   (keeping the latest, then longest), writes `shards/arxiv-NNNNN.jsonl.zst` and the yield report
   (`yield.json`, a printed funnel, `yield.png`).
Every input ends in exactly one funnel row: written, or rejected at a named stage with a reason.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import signal
import time
from dataclasses import asdict, dataclass, field

from megasci.corpus.archive import ArchiveLimits, iter_source_inputs
from megasci.corpus.assemble import assemble
from megasci.corpus.clean import clean_latex
from megasci.corpus.dedup import ExactDeduplicator, NearDuplicateIndex, exact_key
from megasci.corpus.filters import detect_language, detect_language_raw, load_language_profiles, passes_length
from megasci.corpus.metadata import MetadataFilterConfig, MetadataIndex, load_metadata
from megasci.corpus.package import Rejected, SourcePackage
from megasci.corpus.sections import compose_document, math_fraction
from megasci.utils.io import atomic_text_output, iter_json_records, write_json_atomic
from megasci.utils.parallel import bounded_imap

# The funnel, in order; a paper leaves at the first stage that rejects it.
STAGES = ("archive", "metadata", "assembly", "cleaning", "length", "language", "exact_dedup", "near_dedup")


@dataclass
class BuildConfig:
    sources: list[str]
    output: str
    metadata: list[str] = field(default_factory=list)
    metadata_filter: MetadataFilterConfig = field(default_factory=MetadataFilterConfig)
    keep_without_metadata: bool = True  # sources the metadata never mentions: title/abstract from LaTeX
    min_body_chars: int = 2000
    language: str = "en"
    language_seed: int = 0
    near_dup_threshold: float = 0.8
    keep_captions: bool = True
    paper_time_limit_s: float = 60.0
    workers: int = 1
    files_per_unit: int = 500
    num_shards: int = 1
    shard_index: int = 0
    records_per_shard: int = 10_000
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)


def make_units(sources: list[str], files_per_unit: int) -> list[tuple[str, list[str]]]:
    """(key, files) work units in a fixed order; the key names the unit's files on disk."""
    units, seen = [], set()
    for source in sources:
        if os.path.abspath(source) in seen:  # a path given twice is one input, not two
            continue
        seen.add(os.path.abspath(source))
        if os.path.isdir(source):
            files = sorted(os.path.join(root, name) for root, _, names in os.walk(source) for name in names)
            groups = [files[i:i + files_per_unit] for i in range(0, len(files), files_per_unit)]
        else:
            groups = [[source]]
        for group in groups:
            digest = hashlib.sha256("\n".join(os.path.abspath(f) for f in group).encode()).hexdigest()[:16]
            units.append((f"{os.path.basename(group[0])}-{digest}", group))
    return units


_signer: NearDuplicateIndex | None = None  # per process: holds the MinHash permutations


def _near_dup_signature(text: str) -> list[int]:
    global _signer
    if _signer is None:
        _signer = NearDuplicateIndex()
    return _signer.signature(text)


class _PaperTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _PaperTimeout()


def process_paper(task: tuple[SourcePackage, dict | None, BuildConfig]) -> dict:
    """Assemble, clean, compose and filter one paper; returns its record or the stage that rejected it."""
    package, meta, cfg = task
    out = {"source": package.source, "id": package.paper_id, "seconds": {}, "has_metadata": meta is not None,
           "skipped_members": [reason for _, reason in package.skipped_members]}
    clock = time.perf_counter()

    def lap(name: str) -> None:  # per-stage time, summed by benchmarks/bench_corpus.py
        nonlocal clock
        now = time.perf_counter()
        out["seconds"][name] = round(now - clock, 6)
        clock = now

    stage = "assembly"
    previous_handler = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, cfg.paper_time_limit_s)
        paper = assemble(package)
        out["assembled_chars"] = len(paper.text)
        lap("assembly")
        stage = "cleaning"
        cleaned = clean_latex(paper.text, keep_captions=cfg.keep_captions)
        title = meta["title"] if meta else cleaned.title
        abstract = meta["abstract"] if meta else cleaned.abstract
        text, sections = compose_document(title, abstract, cleaned.text)
        out["cleaned_chars"] = len(text)
        lap("cleaning")
        if not passes_length(cleaned.text, cfg.min_body_chars):
            return {**out, "stage": "length", "reason": "too_short"}
        language = detect_language(title, abstract, cleaned.text, cfg.language_seed)
        out["language_flip"] = detect_language_raw(text) != language
        lap("language")
        if language != cfg.language:
            return {**out, "stage": "language", "reason": f"language_{language}"}
        # Dedup keys are made here, beside the text, so finalize never holds the corpus in memory.
        out["exact_key"] = exact_key(text)
        out["minhash"] = _near_dup_signature(text)
        lap("dedup_keys")
        out["record"] = {
            "id": package.paper_id,
            "title": title or "",
            "text": text,
            "sections": sections,
            "categories": meta["categories"] if meta else [],
            "year": meta["year"] if meta else None,
            "math_fraction": round(math_fraction(text), 4),
            "source": package.source,
            "encoding": paper.encoding,
        }
        return out
    except Rejected as e:
        return {**out, "stage": stage, "reason": e.reason}
    except _PaperTimeout:
        return {**out, "stage": stage, "reason": "time_limit"}
    except Exception as e:  # one pathological paper must not stop a run of millions
        return {**out, "stage": stage, "reason": f"error_{type(e).__name__}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)


def _metadata_for(index: MetadataIndex | None, paper_id: str, cfg: BuildConfig) -> tuple[dict | None, str | None]:
    """(metadata to use, rejection reason) for one paper."""
    if index is None:
        return None, None
    outcome = index.outcome(paper_id)
    if outcome == "kept":
        record = index.get(paper_id)
        return {"title": record.title, "abstract": record.abstract, "categories": record.categories,
                "year": record.year}, None
    if outcome is None:
        return None, None if cfg.keep_without_metadata else "no_metadata"
    return None, f"metadata_{outcome}"


def process_units(cfg: BuildConfig, progress: bool = True) -> list[str]:
    """Phase 1 over this shard's units; returns the keys of the units processed now."""
    from tqdm import tqdm

    index = load_metadata(cfg.metadata, cfg.metadata_filter) if cfg.metadata else None
    if index is not None:
        write_json_atomic(os.path.join(cfg.output, "metadata_counts.json"),
                          {"files": cfg.metadata, "counts": dict(index.counts), "problems": index.problems})
    units = make_units(cfg.sources, cfg.files_per_unit)[cfg.shard_index::cfg.num_shards]
    unit_dir = os.path.join(cfg.output, "units")
    os.makedirs(unit_dir, exist_ok=True)
    todo = [(key, files) for key, files in units if not os.path.exists(os.path.join(unit_dir, f"{key}.done.json"))]
    load_language_profiles()  # once here; forked workers inherit them
    pool = mp.get_context("fork").Pool(cfg.workers) if cfg.workers > 1 else None
    bar = tqdm(desc="papers", unit=" papers", disable=not progress, dynamic_ncols=True)
    try:
        for key, files in todo:
            counts = collections.Counter()
            with atomic_text_output(os.path.join(unit_dir, f"{key}.jsonl.zst")) as out:
                for result in _unit_results(files, index, cfg, pool):
                    counts["inputs"] += 1
                    counts[f"{result['stage']}:{result['reason']}" if "reason" in result else "candidates"] += 1
                    out.write(json.dumps(result, ensure_ascii=False) + "\n")
                    bar.update(1)
            write_json_atomic(os.path.join(unit_dir, f"{key}.done.json"), {"files": files, "counts": counts})
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return [key for key, _ in todo]


def _unit_results(files: list[str], index: MetadataIndex | None, cfg: BuildConfig, pool):
    """One result per input of the unit, in input order."""
    def tasks():
        for source, outcome in iter_source_inputs(files, cfg.limits):
            if isinstance(outcome, Rejected):
                yield {"source": source, "stage": "archive", "reason": outcome.reason,
                       "skipped_members": [why for _, why in outcome.skipped_members]}
                continue
            meta, reason = _metadata_for(index, outcome.paper_id, cfg)
            if reason:
                yield {"source": source, "id": outcome.paper_id, "stage": "metadata", "reason": reason,
                       "skipped_members": [why for _, why in outcome.skipped_members]}
                continue
            yield (outcome, meta, cfg)

    work = (t for t in tasks())
    for task, result in bounded_imap(pool, _process_or_pass, work, in_flight=4 * max(cfg.workers, 1)):
        yield result


def _process_or_pass(task):
    return task if isinstance(task, dict) else process_paper(task)


@dataclass
class YieldReport:
    inputs: int = 0
    written: int = 0
    funnel: list[dict] = field(default_factory=list)  # per stage: papers and characters left after it
    rejections: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> reason -> papers
    language_flips: int = 0
    metadata_lines: dict[str, int] = field(default_factory=dict)  # snapshot lines by filter outcome
    sources_with_metadata: int = 0  # packages that reached assembly with / without a metadata record
    sources_without_metadata: int = 0
    skipped_members: dict[str, int] = field(default_factory=dict)  # members dropped inside sound packages
    encodings: dict[str, int] = field(default_factory=dict)
    near_duplicate_clusters: list[list[str]] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{'stage':<12} {'papers left':>12} {'chars left':>15}  rejected (reason: papers)"]
        for row in self.funnel:
            reasons = self.rejections.get(row["stage"], {})
            chars = f"{row['chars']:,}" if row["stage"] not in ("inputs", "archive", "metadata") else "-"
            lines.append(f"{row['stage']:<12} {row['papers']:>12,} {chars:>15}  "
                         + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])))
        lines.append(f"{self.written:,} of {self.inputs:,} inputs written; language detection changed for "
                     f"{self.language_flips:,} papers when math was masked")
        if self.metadata_lines:
            lines.append(f"metadata: {sum(self.metadata_lines.values()):,} snapshot lines, "
                         f"{self.metadata_lines.get('kept', 0):,} in scope; sources with metadata "
                         f"{self.sources_with_metadata:,}, without {self.sources_without_metadata:,}")
        if self.skipped_members:
            lines.append("members skipped inside packages: "
                         + ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped_members.items())))
        return "\n".join(lines)


def finalize(cfg: BuildConfig) -> YieldReport:
    """Phase 2: global dedup over all units, final shards and the yield report."""
    unit_dir = os.path.join(cfg.output, "units")
    keys = sorted(name[: -len(".done.json")] for name in os.listdir(unit_dir) if name.endswith(".done.json"))
    exact, near = ExactDeduplicator(), NearDuplicateIndex(threshold=cfg.near_dup_threshold)
    report = YieldReport()
    rejections: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    chars_after: dict[str, int] = collections.Counter()
    left_after: dict[str, int] = collections.Counter()
    candidates: dict[str, tuple] = {}  # source -> priority (year, characters)
    keys_by_source: dict[str, tuple[str, str, list[int]]] = {}  # source -> (paper id, exact key, MinHash)
    skipped = collections.Counter()
    metadata_counts = os.path.join(cfg.output, "metadata_counts.json")
    if os.path.exists(metadata_counts):
        with open(metadata_counts, encoding="utf-8") as f:
            report.metadata_lines = json.load(f)["counts"]
    for key in keys:
        for result in iter_json_records(os.path.join(unit_dir, f"{key}.jsonl.zst")):
            report.inputs += 1
            report.language_flips += bool(result.get("language_flip"))
            skipped.update(result.get("skipped_members", []))
            if "has_metadata" in result:
                report.sources_with_metadata += result["has_metadata"]
                report.sources_without_metadata += not result["has_metadata"]
            if "reason" in result:
                rejections[result["stage"]][result["reason"]] += 1
                stage_index = STAGES.index(result["stage"])
            else:
                record = result["record"]
                candidates[result["source"]] = (record["year"] or 0, len(record["text"]))
                keys_by_source[result["source"]] = (record["id"], result["exact_key"], result["minhash"])
                stage_index = STAGES.index("exact_dedup")
            for stage in STAGES[:stage_index]:
                left_after[stage] += 1
                chars_after[stage] += _chars_at(result, stage)
    # The same paper from two inputs (a bulk tar and a per-paper file, two versions): keep the best one.
    best_by_id: dict[str, str] = {}
    for source, priority in sorted(candidates.items()):
        paper_id = keys_by_source[source][0]
        other = best_by_id.get(paper_id)
        if other is None or priority > candidates[other]:
            best_by_id[paper_id] = source
    for source in sorted(set(candidates) - set(best_by_id.values())):
        rejections["exact_dedup"]["duplicate_id"] += 1
        del candidates[source]
    for source, priority in candidates.items():
        exact.add_key(source, keys_by_source[source][1], priority)
    for source in exact.dropped():
        rejections["exact_dedup"]["exact_duplicate"] += 1
        del candidates[source]
    for source, priority in candidates.items():
        near.add_signature(source, keys_by_source[source][2], priority)
    keep = near.keep_set()
    report.near_duplicate_clusters = [[keys_by_source[s][0] for s in cluster] for cluster in near.clusters()]
    if len(candidates) > len(keep):
        rejections["near_dedup"]["near_duplicate"] += len(candidates) - len(keep)
    for stage, survivors in (("exact_dedup", candidates), ("near_dedup", keep)):
        left_after[stage] = len(survivors)
        chars_after[stage] = sum(candidates[s][1] for s in survivors)
    report.written = _write_shards(cfg, unit_dir, keys, keep, report)
    report.funnel = [{"stage": "inputs", "papers": report.inputs, "chars": 0}] + [
        {"stage": stage, "papers": left_after[stage], "chars": chars_after[stage]} for stage in STAGES]
    report.rejections = {stage: dict(counter) for stage, counter in rejections.items()}
    report.skipped_members = dict(skipped)
    write_json_atomic(os.path.join(cfg.output, "yield.json"), {"config": _jsonable(cfg), **asdict(report)})
    _plot_funnel(report, os.path.join(cfg.output, "yield.png"))
    return report


def _chars_at(result: dict, stage: str) -> int:
    """Characters a paper still has after `stage`: assembled LaTeX until cleaning, clean text after."""
    if stage in ("archive", "metadata"):
        return 0
    if stage == "assembly":
        return result.get("assembled_chars", 0)
    return result.get("cleaned_chars", 0)


def _write_shards(cfg: BuildConfig, unit_dir: str, keys: list[str], keep: set, report: YieldReport) -> int:
    """Kept records in unit order, `records_per_shard` to a file; a failure leaves no partial shard."""
    shard_dir = os.path.join(cfg.output, "shards")
    os.makedirs(shard_dir, exist_ok=True)
    records = (result["record"] for key in keys
               for result in iter_json_records(os.path.join(unit_dir, f"{key}.jsonl.zst"))
               if "record" in result and result["source"] in keep)
    written, encodings = 0, collections.Counter()
    for shard in itertools.count():
        batch = list(itertools.islice(records, cfg.records_per_shard))
        if not batch:
            break
        with atomic_text_output(os.path.join(shard_dir, f"arxiv-{shard:05d}.jsonl.zst")) as out:
            for record in batch:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                encodings[record["encoding"]] += 1
        written += len(batch)
    report.encodings = dict(encodings)
    return written


def _plot_funnel(report: YieldReport, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [row["stage"] for row in report.funnel]
    papers = [row["papers"] for row in report.funnel]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(stages[::-1], papers[::-1], color="#4c72b0")
    for y, value in enumerate(papers[::-1]):
        ax.text(value, y, f" {value:,}", va="center")
    ax.set_xlabel("papers left after stage")
    ax.set_title(f"arXiv corpus yield: {report.written:,} of {report.inputs:,} inputs written")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _jsonable(cfg: BuildConfig) -> dict:
    data = asdict(cfg)
    data["metadata_filter"]["categories"] = list(data["metadata_filter"]["categories"])
    return data


def build(cfg: BuildConfig, progress: bool = True, finalize_run: bool | None = None) -> YieldReport | None:
    """Phase 1 for this shard, then phase 2 when this is the only shard (or when asked)."""
    started = time.perf_counter()
    process_units(cfg, progress=progress)
    if finalize_run is None:
        finalize_run = cfg.num_shards == 1
    if not finalize_run:
        return None
    report = finalize(cfg)
    report_seconds = time.perf_counter() - started
    print(report.format())
    print(f"built in {report_seconds:.1f} s -> {cfg.output}/shards, {cfg.output}/yield.json, {cfg.output}/yield.png")
    return report
