"""The arXiv corpus builder: source archives (+ metadata) to clean, deduplicated, section-tagged shards.

Two phases, so work splits across machines and survives being killed:
1. `process_units`: inputs are cut into units (one bulk tar, one per-paper file, or up to
   `files_per_unit` files of a directory, in sorted order). Each finished unit leaves
   `units/<key>.jsonl.zst` (one result per input: its rejection, or a candidate's dedup keys),
   `units/<key>.records.jsonl.zst` (each candidate's shard line, in the same order) and
   `units/<key>.done.json` (its funnel counts, the unit format and the MinHash scheme); a rerun
   skips units whose `.done.json` exists. `--num-shards/--shard-index` takes every K-th unit, so K
   machines share one output directory.
2. `finalize`: reads every unit's results in key order, removes exact and near duplicates over the
   whole run (keeping the latest, then longest), copies the kept candidates' lines, unparsed, into
   `shards/arxiv-NNNNN.jsonl.zst` and writes the yield report (`yield.json`, a printed funnel,
   `yield.png`).
Every input ends in exactly one funnel row: written, or rejected at a named stage with a reason.

The funnel is declared once: `INPUT_STAGES` (decided on an input's bytes and id), `PAPER_STAGES` (one
`Stage` per step, run per paper in the workers under the time limit, each returning the paper or
its rejection) and `CORPUS_STAGES` (finalize). `STAGES`, the unit counts, the per-stage times and
the yield report all follow from those lists.
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
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np

from megasci.corpus.archive import ArchiveLimits, PendingInput, iter_pending_inputs
from megasci.corpus.assemble import AssembledPaper, assemble
from megasci.corpus.clean import CleanedPaper, clean_latex
from megasci.corpus.dedup import SIGNATURE_SCHEME, ExactDeduplicator, NearDuplicateIndex, exact_key
from megasci.corpus.filters import (LanguageConfig, check_language, detect_language_raw, load_language_profiles,
                                    passes_length)
from megasci.corpus.metadata import MetadataFilterConfig, MetadataIndex, load_metadata
from megasci.corpus.package import Rejected, SourcePackage
from megasci.corpus.sections import compose_document, math_fraction
from megasci.utils.io import (atomic_output, atomic_text_output, iter_json_records, iter_numbered_lines, jsonable,
                              write_json_atomic, zstd_frame)
from megasci.utils.parallel import bounded_imap


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

    @property
    def language_filter(self) -> LanguageConfig:
        """The language stage's settings (flat fields here, so yield.json keeps its config layout)."""
        return LanguageConfig(seed=self.language_seed, expected=self.language)


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


@dataclass(frozen=True)
class Rejection:
    """Where and why an input left the funnel: a stage of `STAGES` and a stable reason key."""

    stage: str
    reason: str


@dataclass
class Paper:
    """One paper on its way through `PAPER_STAGES`; each step fills in what it produces."""

    package: SourcePackage
    meta: dict | None  # title, abstract, categories and year from the metadata, when it has a record
    chars: int = 0  # characters it has now: assembled LaTeX after assembly, clean text after cleaning
    assembled: AssembledPaper | None = None
    cleaned: CleanedPaper | None = None
    title: str | None = None
    abstract: str | None = None
    text: str = ""
    sections: list[dict] = field(default_factory=list)
    math_fraction: float = 0.0
    language_flip: bool = False
    exact_key: str = ""
    minhash: list[int] = field(default_factory=list)

    def record(self) -> dict:
        """The corpus record, one line of a shard."""
        return {
            "id": self.package.paper_id,
            "title": self.title or "",
            "text": self.text,
            "sections": self.sections,
            "categories": self.meta["categories"] if self.meta else [],
            "year": self.meta["year"] if self.meta else None,
            "math_fraction": self.math_fraction,
            "source": self.package.source,
            "encoding": self.assembled.encoding,
        }


@dataclass(frozen=True)
class Stage:
    """A declared step of the funnel. `step(paper, cfg)` returns the paper carried on, or `Rejected`
    with the reason it goes no further; `name` is where that rejection and the step's time are counted."""

    name: str
    step: Callable[[Paper, BuildConfig], Paper | Rejected]


def _assemble(paper: Paper, cfg: BuildConfig) -> Paper | Rejected:
    try:
        paper.assembled = assemble(paper.package)
    except Rejected as rejected:
        return rejected
    paper.chars = len(paper.assembled.text)
    return paper


def _clean(paper: Paper, cfg: BuildConfig) -> Paper | Rejected:
    """Clean the LaTeX; metadata, when present, gives the title and abstract instead of the source."""
    paper.cleaned = clean_latex(paper.assembled.text, keep_captions=cfg.keep_captions)
    paper.title = paper.meta["title"] if paper.meta else paper.cleaned.title
    paper.abstract = paper.meta["abstract"] if paper.meta else paper.cleaned.abstract
    paper.text, paper.sections = compose_document(paper.title, paper.abstract, paper.cleaned.text)
    paper.math_fraction = round(math_fraction(paper.text), 4)
    paper.chars = len(paper.text)
    return paper


def _check_length(paper: Paper, cfg: BuildConfig) -> Paper | Rejected:
    return paper if passes_length(paper.cleaned.text, cfg.min_body_chars) else Rejected("too_short")


def _check_language(paper: Paper, cfg: BuildConfig) -> Paper | Rejected:
    """Language of the prose; also notes whether masking math changed the answer, for the report."""
    settings = cfg.language_filter
    language, passes = check_language(paper.title, paper.abstract, paper.cleaned.text, settings)
    paper.language_flip = detect_language_raw(paper.text, settings.seed, settings.min_chars) != language
    return paper if passes else Rejected(f"language_{language}")


def _dedup_keys(paper: Paper, cfg: BuildConfig) -> Paper | Rejected:
    """The keys finalize compares, made here beside the text so finalize never holds the corpus."""
    paper.exact_key = exact_key(paper.text)
    paper.minhash = _near_dup_signature(paper.text)
    return paper


ARCHIVE, METADATA, EXACT_DEDUP, NEAR_DEDUP = "archive", "metadata", "exact_dedup", "near_dedup"
# Decided on the input's bytes and id, before any text exists: the reading process rejects broken bulk-tar
# members and looks up the metadata, a worker opens the object (its archive stage proper).
INPUT_STAGES = (ARCHIVE, METADATA)
# Run per paper, in the workers, under the per-paper time limit. exact_dedup starts here (its keys,
# which near_dedup uses too) and ends in finalize, where the corpus-wide comparison drops papers.
PAPER_STAGES = (
    Stage("assembly", _assemble),
    Stage("cleaning", _clean),
    Stage("length", _check_length),
    Stage("language", _check_language),
    Stage(EXACT_DEDUP, _dedup_keys),
)
CORPUS_STAGES = (EXACT_DEDUP, NEAR_DEDUP)  # decided in finalize, over every unit at once
# The funnel, in order; a paper leaves at the first stage that rejects it.
STAGES = tuple(dict.fromkeys(INPUT_STAGES + tuple(stage.name for stage in PAPER_STAGES) + CORPUS_STAGES))


UNIT_FORMAT = 2  # results and records in two files per unit (1: each record inside its result line)


@dataclass
class InputResult:
    """What phase 1 learned about one input: one line of a unit's results file, read back only by
    finalize; a candidate's `record` goes to the unit's records file instead."""

    source: str
    id: str | None = None
    skipped_members: list[str] = field(default_factory=list)  # reasons of members dropped inside it
    has_metadata: bool | None = None  # None: the input never reached the paper stages
    rejection: Rejection | None = None  # None: a candidate for the corpus-wide stages
    chars: dict[str, int] = field(default_factory=dict)  # paper stage -> characters left after it
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> its time here (archive: opening the object)
    language_flip: bool = False
    emails_removed: int = 0  # e-mail addresses cleaning took out of this paper
    record: dict | None = None  # a candidate's, in memory only: it is written to the records file
    year: int | None = None  # a candidate's metadata year, text length and encoding, for finalize
    text_chars: int = 0
    encoding: str | None = None
    exact_key: str = ""
    minhash: list[int] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> "InputResult":
        rejection = data["rejection"] and Rejection(**data["rejection"])
        return cls(**{**data, "rejection": rejection})

    def passed(self) -> tuple[str, ...]:
        """The funnel stages this input has passed; a candidate has passed all before the corpus-wide ones."""
        leaves_at = self.rejection.stage if self.rejection else CORPUS_STAGES[0]
        return STAGES[: STAGES.index(leaves_at)]


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


def process_paper(task: tuple[SourcePackage, dict | None, BuildConfig]) -> InputResult:
    """Run `PAPER_STAGES` on one paper, timing each; the result is its record or the stage that rejected it."""
    package, meta, cfg = task
    paper = Paper(package, meta)
    result = InputResult(source=package.source, id=package.paper_id, has_metadata=meta is not None,
                         skipped_members=[reason for _, reason in package.skipped_members])
    stage = PAPER_STAGES[0]
    previous_handler = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, cfg.paper_time_limit_s)
        clock = time.perf_counter()
        for stage in PAPER_STAGES:
            outcome = stage.step(paper, cfg)
            now = time.perf_counter()
            result.seconds[stage.name] = round(now - clock, 6)  # summed by benchmarks/bench_corpus.py
            clock = now
            if isinstance(outcome, Rejected):
                result.rejection = Rejection(stage.name, outcome.reason)
                break
            result.chars[stage.name] = paper.chars
    except _PaperTimeout:
        result.rejection = Rejection(stage.name, "time_limit")
    except Exception as e:  # one pathological paper must not stop a run of millions
        result.rejection = Rejection(stage.name, f"error_{type(e).__name__}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
    result.language_flip = paper.language_flip
    result.emails_removed = paper.cleaned.stats["emails_removed"] if paper.cleaned else 0
    if result.rejection is None:
        result.record, result.exact_key, result.minhash = paper.record(), paper.exact_key, paper.minhash
        result.year, result.text_chars, result.encoding = (result.record["year"], len(result.record["text"]),
                                                           result.record["encoding"])
    return result


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
    _set_worker_config(cfg)
    pool = (mp.get_context("fork").Pool(cfg.workers, initializer=_set_worker_config, initargs=(cfg,))
            if cfg.workers > 1 else None)
    bar = tqdm(desc="papers", unit=" papers", disable=not progress, dynamic_ncols=True)
    try:
        for key, files in todo:
            counts = collections.Counter()
            with (atomic_text_output(os.path.join(unit_dir, f"{key}.jsonl.zst")) as out,
                  atomic_output(os.path.join(unit_dir, f"{key}.records.jsonl.zst"), "wb") as records):
                for count_key, line, record_frame in _unit_lines(files, index, cfg, pool):
                    counts["inputs"] += 1
                    counts[count_key] += 1
                    out.write(line)
                    if record_frame is not None:
                        records.write(record_frame)
                    bar.update(1)
            write_json_atomic(os.path.join(unit_dir, f"{key}.done.json"),
                              {"files": files, "counts": counts, "unit_format": UNIT_FORMAT,
                               "minhash_scheme": SIGNATURE_SCHEME})
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return [key for key, _ in todo]


def _unit_lines(files: list[str], index: MetadataIndex | None, cfg: BuildConfig, pool
                ) -> Iterator[tuple[str, str, bytes | None]]:
    """(funnel count key, result line, record line as a zstd frame or None) per input of the unit, in
    input order. This process reads the inputs, looks up their metadata and writes; `pool` opens each
    object (decompression and unpacking, most of the archive stage), runs the paper stages and
    serialises and compresses the record, so one reading process keeps many workers busy."""
    def tasks():
        for source, item in iter_pending_inputs(files, cfg.limits):
            if isinstance(item, Rejected):
                yield _archive_rejection(source, item)
            else:
                yield item, *_metadata_for(index, item.paper_id, cfg)

    for _, line in bounded_imap(pool, _unit_line, tasks(), in_flight=4 * max(cfg.workers, 1)):
        yield line


_worker_cfg: BuildConfig | None = None  # set once per worker, not pickled with every paper


def _set_worker_config(cfg: BuildConfig) -> None:
    global _worker_cfg
    _worker_cfg = cfg


def _archive_rejection(source: str, rejected: Rejected) -> InputResult:
    return InputResult(source=source, skipped_members=[reason for _, reason in rejected.skipped_members],
                       rejection=Rejection(ARCHIVE, rejected.reason))


def _open_and_process(pending: PendingInput, meta: dict | None, metadata_rejection: str | None) -> InputResult:
    """The input's archive stage, then its metadata decision (made from the id by the reading
    process, counted only if the archive stage passes), then its paper stages."""
    clock = time.perf_counter()
    outcome = pending.open(_worker_cfg.limits)
    opened = {ARCHIVE: round(time.perf_counter() - clock, 6)}  # summed by benchmarks/bench_corpus.py
    if isinstance(outcome, Rejected):
        result = _archive_rejection(pending.source, outcome)
    elif metadata_rejection:
        result = InputResult(source=pending.source, id=outcome.paper_id,
                             skipped_members=[reason for _, reason in outcome.skipped_members],
                             rejection=Rejection(METADATA, metadata_rejection))
    else:
        result = process_paper((outcome, meta, _worker_cfg))
    result.seconds = {**opened, **result.seconds}
    return result


def _unit_line(task: InputResult | tuple[PendingInput, dict | None, str | None]) -> tuple[str, str, bytes | None]:
    result = task if isinstance(task, InputResult) else _open_and_process(*task)
    rejection = result.rejection
    key = f"{rejection.stage}:{rejection.reason}" if rejection else "candidates"
    line = json.dumps(jsonable(replace(result, record=None)), ensure_ascii=False) + "\n"
    record = result.record
    return key, line, None if record is None else zstd_frame((json.dumps(record, ensure_ascii=False) + "\n").encode())


def finished_unit_keys(unit_dir: str) -> list[str]:
    """Keys of the units phase 1 finished (their `.done.json` exists), in key order."""
    return sorted(name[: -len(".done.json")] for name in os.listdir(unit_dir) if name.endswith(".done.json"))


def check_units(unit_dir: str, keys: list[str]) -> None:
    """Refuse units another builder version wrote: another file layout, or MinHash signatures that,
    compared with this version's, would let near duplicates through silently."""
    for key in keys:
        path = os.path.join(unit_dir, f"{key}.done.json")
        with open(path, encoding="utf-8") as f:
            done = json.load(f)
        for name, have, want in (("unit format", done.get("unit_format", 1), UNIT_FORMAT),
                                 ("MinHash scheme", done.get("minhash_scheme"), SIGNATURE_SCHEME)):
            if have != want:
                raise ValueError(f"{path}: written with {name} {have!r}, this builder uses {want!r}; delete "
                                 "that unit's .done.json so phase 1 redoes it")


def iter_unit_results(unit_dir: str, keys: list[str]) -> Iterator[InputResult]:
    """Every input's result from the units `keys` of `unit_dir`, in unit and input order."""
    for key in keys:
        for data in iter_json_records(os.path.join(unit_dir, f"{key}.jsonl.zst")):
            yield InputResult.from_json(data)


INPUTS_ROW = "inputs"  # the funnel's first row: every input, before any stage


@dataclass
class YieldReport:
    inputs: int = 0
    written: int = 0
    funnel: list[dict] = field(default_factory=list)  # per stage: papers and characters left after it
    rejections: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> reason -> papers
    language_flips: int = 0
    emails_removed: int = 0  # e-mail addresses taken out of the papers that reached cleaning
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
            chars = f"{row['chars']:,}" if row["stage"] not in (INPUTS_ROW, *INPUT_STAGES) else "-"
            lines.append(f"{row['stage']:<12} {row['papers']:>12,} {chars:>15}  "
                         + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])))
        lines.append(f"{self.written:,} of {self.inputs:,} inputs written; language detection changed for "
                     f"{self.language_flips:,} papers when math was masked; "
                     f"{self.emails_removed:,} e-mail addresses removed")
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
    keys = finished_unit_keys(unit_dir)
    check_units(unit_dir, keys)
    exact, near = ExactDeduplicator(), NearDuplicateIndex(threshold=cfg.near_dup_threshold)
    report = YieldReport()
    rejections: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    chars_after: dict[str, int] = collections.Counter()
    left_after: dict[str, int] = collections.Counter()
    candidates: dict[str, tuple] = {}  # source -> priority (year, characters)
    keys_by_source: dict[str, tuple[str, str, np.ndarray]] = {}  # source -> (paper id, exact key, MinHash)
    unit_candidates: dict[str, list[tuple[str, str]]] = {key: [] for key in keys}  # (source, encoding), in order
    skipped = collections.Counter()
    metadata_counts = os.path.join(cfg.output, "metadata_counts.json")
    if os.path.exists(metadata_counts):
        with open(metadata_counts, encoding="utf-8") as f:
            report.metadata_lines = json.load(f)["counts"]
    for key, result in ((key, result) for key in keys for result in iter_unit_results(unit_dir, [key])):
        report.inputs += 1
        report.language_flips += result.language_flip
        report.emails_removed += result.emails_removed
        skipped.update(result.skipped_members)
        if result.has_metadata is not None:
            report.sources_with_metadata += result.has_metadata
            report.sources_without_metadata += not result.has_metadata
        if result.rejection:
            rejections[result.rejection.stage][result.rejection.reason] += 1
        else:
            candidates[result.source] = (result.year or 0, result.text_chars)
            keys_by_source[result.source] = (result.id, result.exact_key, np.array(result.minhash, dtype=np.uint32))
            unit_candidates[key].append((result.source, result.encoding))
        for stage in result.passed():
            left_after[stage] += 1
            chars_after[stage] += result.chars.get(stage, 0)  # the input stages leave no text yet
    # The same paper from two inputs (a bulk tar and a per-paper file, two versions): keep the best one.
    best_by_id: dict[str, str] = {}
    for source, priority in sorted(candidates.items()):
        paper_id = keys_by_source[source][0]
        other = best_by_id.get(paper_id)
        if other is None or priority > candidates[other]:
            best_by_id[paper_id] = source
    for source in sorted(set(candidates) - set(best_by_id.values())):
        rejections[EXACT_DEDUP]["duplicate_id"] += 1
        del candidates[source]
    for source, priority in candidates.items():
        exact.add_key(source, keys_by_source[source][1], priority)
    for source in exact.dropped():
        rejections[EXACT_DEDUP]["exact_duplicate"] += 1
        del candidates[source]
    for source, priority in candidates.items():
        near.add_signature(source, keys_by_source[source][2], priority)
    keep = near.keep_set()
    report.near_duplicate_clusters = [[keys_by_source[s][0] for s in cluster] for cluster in near.clusters()]
    if len(candidates) > len(keep):
        rejections[NEAR_DEDUP]["near_duplicate"] += len(candidates) - len(keep)
    for stage, survivors in zip(CORPUS_STAGES, (candidates, keep)):
        left_after[stage] = len(survivors)
        chars_after[stage] = sum(candidates[s][1] for s in survivors)
    report.written = _write_shards(cfg, unit_dir, unit_candidates, keep, report)
    report.funnel = [{"stage": INPUTS_ROW, "papers": report.inputs, "chars": 0}] + [
        {"stage": stage, "papers": left_after[stage], "chars": chars_after[stage]} for stage in STAGES]
    report.rejections = {stage: dict(counter) for stage, counter in rejections.items()}
    report.skipped_members = dict(skipped)
    write_json_atomic(os.path.join(cfg.output, "yield.json"), {"config": jsonable(cfg), **jsonable(report)})
    _plot_funnel(report, os.path.join(cfg.output, "yield.png"))
    return report


def _write_shards(cfg: BuildConfig, unit_dir: str, unit_candidates: dict[str, list[tuple[str, str]]], keep: set,
                  report: YieldReport) -> int:
    """Kept records in unit order, `records_per_shard` to a file; a failure leaves no partial shard."""
    shard_dir = os.path.join(cfg.output, "shards")
    os.makedirs(shard_dir, exist_ok=True)
    encodings = collections.Counter()
    lines = _kept_record_lines(unit_dir, unit_candidates, keep, encodings)
    written = 0
    for shard in itertools.count():
        batch = list(itertools.islice(lines, cfg.records_per_shard))
        if not batch:
            break
        with atomic_text_output(os.path.join(shard_dir, f"arxiv-{shard:05d}.jsonl.zst")) as out:
            out.writelines(batch)
        written += len(batch)
    report.encodings = dict(encodings)
    return written


def _kept_record_lines(unit_dir: str, unit_candidates: dict[str, list[tuple[str, str]]], keep: set,
                       encodings: collections.Counter) -> Iterator[str]:
    """The records-file lines of the kept candidates, as the workers wrote them; counts their encodings.
    `unit_candidates`: each unit's candidates in order, as finalize's one pass over the results saw them."""
    for key, candidates in unit_candidates.items():
        path = os.path.join(unit_dir, f"{key}.records.jsonl.zst")
        records = (line for _, _, line in iter_numbered_lines([path]))
        matched = 0
        for matched, ((source, encoding), line) in enumerate(zip(candidates, records), 1):  # zip pulls `records` last
            if source in keep:
                encodings[encoding] += 1
                yield line.decode("utf-8")
        if matched != len(candidates) or next(records, None) is not None:
            raise ValueError(f"{path}: its records do not match the {len(candidates)} candidates of its results; "
                             "delete that unit's .done.json so phase 1 redoes it")


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
    with atomic_output(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


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
