"""Phase 1 of the corpus build: the unit executor.

Inputs are cut into units (one bulk tar, one per-paper file, or up to `files_per_unit` files of a
directory, in sorted order). Each finished unit leaves `units/<key>.jsonl.zst` (one `InputResult` per
input: its rejection, or a candidate's dedup keys), `units/<key>.records.jsonl.zst` (each candidate's
shard line, in the same order) and `units/<key>.done.json` (its funnel counts, the unit format and the
MinHash scheme); a rerun skips units whose `.done.json` exists. `--num-shards/--shard-index` takes
every K-th unit, so K machines share one output directory.

One reading process reads the inputs, looks up their metadata and appends unit lines; a worker pool
opens each object (`PendingInput`), runs the config's pipeline on it under the per-paper time limit,
and serialises and compresses the record, so one reading process keeps many workers busy.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from megasci.corpus.archive import PendingInput, iter_pending_inputs
from megasci.corpus.config import BuildConfig
from megasci.corpus.dedup import SIGNATURE_SCHEME
from megasci.corpus.filters import load_language_profiles
from megasci.corpus.metadata import MetadataIndex, load_metadata
from megasci.corpus.package import Rejected, SourcePackage
from megasci.corpus.pipeline import ARCHIVE, CORPUS_STAGES, METADATA, Paper, Rejection
from megasci.utils.io import (
    atomic_output,
    atomic_text_output,
    iter_json_records,
    jsonable,
    write_json_atomic,
    zstd_frame,
)
from megasci.utils.parallel import bounded_imap

UNIT_FORMAT = 2  # results and records in two files per unit (1: each record inside its result line)
EXCERPT_CHARS = 500  # of a rejected paper's text, kept in its result for the rejected-paper log


def make_units(sources: list[str], files_per_unit: int) -> list[tuple[str, list[str]]]:
    """(key, files) work units in a fixed order; the key names the unit's files on disk."""
    units, seen = [], set()
    for source in sources:
        if os.path.abspath(source) in seen:  # a path given twice is one input, not two
            continue
        seen.add(os.path.abspath(source))
        if os.path.isdir(source):
            files = sorted(os.path.join(root, name) for root, _, names in os.walk(source) for name in names)
            groups = [files[i : i + files_per_unit] for i in range(0, len(files), files_per_unit)]
        else:
            groups = [[source]]
        for group in groups:
            digest = hashlib.sha256("\n".join(os.path.abspath(f) for f in group).encode()).hexdigest()[:16]
            units.append((f"{os.path.basename(group[0])}-{digest}", group))
    return units


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
    excerpt: str = ""  # a paper rejected by a step: the start of its text then (EXCERPT_CHARS at most)

    @classmethod
    def from_json(cls, data: dict) -> InputResult:
        rejection = data["rejection"] and Rejection(**data["rejection"])
        return cls(**{**data, "rejection": rejection})

    def passed(self, stages: tuple[str, ...]) -> tuple[str, ...]:
        """The funnel stages (of `stages`) this input has passed; a candidate has passed all before the
        corpus-wide ones."""
        leaves_at = self.rejection.stage if self.rejection else CORPUS_STAGES[0]
        return stages[: stages.index(leaves_at)]


class _PaperTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _PaperTimeout()


def process_paper(task: tuple[SourcePackage, dict | None, BuildConfig]) -> InputResult:
    """Run the config's pipeline on one paper, timing each step; the result is its record or the step
    that rejected it."""
    package, meta, cfg = task
    paper = Paper(package, meta)
    result = InputResult(
        source=package.source,
        id=package.paper_id,
        has_metadata=meta is not None,
        skipped_members=[reason for _, reason in package.skipped_members],
    )
    step = cfg.pipeline[0]
    previous_handler = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, cfg.paper_time_limit_s)
        clock = time.perf_counter()
        for step in cfg.pipeline:
            outcome = step.run(paper, cfg)
            now = time.perf_counter()
            result.seconds[step.name] = round(now - clock, 6)  # summed by benchmarks/bench_corpus.py
            clock = now
            if isinstance(outcome, Rejected):
                result.rejection = Rejection(step.name, outcome.reason)
                break
            result.chars[step.name] = paper.chars
    except _PaperTimeout:
        result.rejection = Rejection(step.name, "time_limit")
    except Exception as e:  # one pathological paper must not stop a run of millions
        result.rejection = Rejection(step.name, f"error_{type(e).__name__}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
    result.language_flip = paper.language_flip
    result.emails_removed = paper.cleaned.stats["emails_removed"] if paper.cleaned else 0
    if result.rejection is None:
        result.record, result.exact_key, result.minhash = paper.record(), paper.exact_key, paper.minhash
        result.year, result.text_chars, result.encoding = (
            result.record["year"],
            len(result.record["text"]),
            result.record["encoding"],
        )
    else:
        result.excerpt = paper.excerpt(EXCERPT_CHARS)
    return result


def _metadata_for(index: MetadataIndex | None, paper_id: str, cfg: BuildConfig) -> tuple[dict | None, str | None]:
    """(metadata to use, rejection reason) for one paper."""
    if index is None:
        return None, None
    outcome = index.outcome(paper_id)
    if outcome == "kept":
        record = index.get(paper_id)
        assert record is not None
        return {
            "title": record.title,
            "abstract": record.abstract,
            "categories": record.categories,
            "year": record.year,
        }, None
    if outcome is None:
        return None, None if cfg.keep_without_metadata else "no_metadata"
    return None, f"metadata_{outcome}"


def process_units(cfg: BuildConfig, progress: bool = True) -> list[str]:
    """Phase 1 over this shard's units; returns the keys of the units processed now."""
    from tqdm import tqdm

    index = load_metadata(cfg.metadata, cfg.metadata_filter) if cfg.metadata else None
    if index is not None:
        write_json_atomic(
            os.path.join(cfg.output, "metadata_counts.json"),
            {"files": cfg.metadata, "counts": dict(index.counts), "problems": index.problems},
        )
    units = make_units(cfg.sources, cfg.files_per_unit)[cfg.shard_index :: cfg.num_shards]
    unit_dir = os.path.join(cfg.output, "units")
    os.makedirs(unit_dir, exist_ok=True)
    todo = [(key, files) for key, files in units if not os.path.exists(os.path.join(unit_dir, f"{key}.done.json"))]
    load_language_profiles()  # once here; forked workers inherit them
    _set_worker_config(cfg)
    pool = (
        mp.get_context("fork").Pool(cfg.workers, initializer=_set_worker_config, initargs=(cfg,))
        if cfg.workers > 1
        else None
    )
    bar = tqdm(desc="papers", unit=" papers", disable=not progress, dynamic_ncols=True)
    try:
        for key, files in todo:
            counts: collections.Counter[str] = collections.Counter()
            with (
                atomic_text_output(os.path.join(unit_dir, f"{key}.jsonl.zst")) as out,
                atomic_output(os.path.join(unit_dir, f"{key}.records.jsonl.zst"), "wb") as records,
            ):
                for count_key, line, record_frame in _unit_lines(files, index, cfg, pool):
                    counts["inputs"] += 1
                    counts[count_key] += 1
                    out.write(line)
                    if record_frame is not None:
                        records.write(record_frame)
                    bar.update(1)
            write_json_atomic(
                os.path.join(unit_dir, f"{key}.done.json"),
                {"files": files, "counts": counts, "unit_format": UNIT_FORMAT, "minhash_scheme": SIGNATURE_SCHEME},
            )
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return [key for key, _ in todo]


def _unit_lines(
    files: list[str], index: MetadataIndex | None, cfg: BuildConfig, pool
) -> Iterator[tuple[str, str, bytes | None]]:
    """(funnel count key, result line, record line as a zstd frame or None) per input of the unit, in
    input order. This process reads the inputs, looks up their metadata and writes; `pool` opens each
    object (decompression and unpacking, most of the archive stage), runs the pipeline and
    serialises and compresses the record."""

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
    return InputResult(
        source=source,
        skipped_members=[reason for _, reason in rejected.skipped_members],
        rejection=Rejection(ARCHIVE, rejected.reason),
    )


def _open_and_process(pending: PendingInput, meta: dict | None, metadata_rejection: str | None) -> InputResult:
    """The input's archive stage, then its metadata decision (made from the id by the reading
    process, counted only if the archive stage passes), then its pipeline."""
    assert _worker_cfg is not None, "set by process_units, or by the pool's initializer"
    clock = time.perf_counter()
    outcome = pending.open(_worker_cfg.limits)
    opened = {ARCHIVE: round(time.perf_counter() - clock, 6)}  # summed by benchmarks/bench_corpus.py
    if isinstance(outcome, Rejected):
        result = _archive_rejection(pending.source, outcome)
    elif metadata_rejection:
        result = InputResult(
            source=pending.source,
            id=outcome.paper_id,
            skipped_members=[reason for _, reason in outcome.skipped_members],
            rejection=Rejection(METADATA, metadata_rejection),
        )
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
        for name, have, want in (
            ("unit format", done.get("unit_format", 1), UNIT_FORMAT),
            ("MinHash scheme", done.get("minhash_scheme"), SIGNATURE_SCHEME),
        ):
            if have != want:
                raise ValueError(
                    f"{path}: written with {name} {have!r}, this builder uses {want!r}; delete "
                    "that unit's .done.json so phase 1 redoes it"
                )


def iter_unit_results(unit_dir: str, keys: list[str]) -> Iterator[InputResult]:
    """Every input's result from the units `keys` of `unit_dir`, in unit and input order."""
    for key in keys:
        for data in iter_json_records(os.path.join(unit_dir, f"{key}.jsonl.zst")):
            yield InputResult.from_json(data)
