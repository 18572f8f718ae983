"""Stage 1 of the corpus builder: choose papers from arXiv's metadata.

Four channels give the same ``MetadataRecord``: the Kaggle snapshot (JSON lines), OAI-PMH responses
in the ``arXivRaw``, ``arXiv`` and ``oai_dc`` formats, and ``.abs`` files. ``load_metadata`` tells them
apart by content, so any mix of files and directories can be passed. Later stages match source archives
against this index by canonical id (see ``arxiv_ids``), so a source without a kept metadata record is
dropped and every drop here is counted by reason.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections import Counter
from collections.abc import Iterable, Iterator

from megasci.corpus.arxiv_ids import canonical_id
from megasci.corpus.metadata.abs_files import abs_entries
from megasci.corpus.metadata.oai import oai_entries
from megasci.corpus.metadata.record import MetadataRecord
from megasci.corpus.metadata.snapshot import snapshot_entries
from megasci.utils.io import open_binary

OUTCOMES = ("kept", "category", "before_min_year", "withdrawn", "bad_json", "bad_record", "duplicate_id")
"""Every snapshot line, OAI-PMH record and ``.abs`` file lands in exactly one of these, so the counts add
up to the entries read."""

MAX_REPORTED_PROBLEMS = 5


@dataclasses.dataclass(frozen=True)
class MetadataFilterConfig:
    """Which papers enter the corpus: glob patterns over arXiv categories, a v1 year floor, no withdrawn papers."""

    categories: tuple[str, ...] = ("math.*", "cs.*", "hep-th", "hep-ph", "quant-ph", "stat.ML", "stat.TH")
    min_first_version_year: int = 2000
    drop_withdrawn: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.categories, str):
            raise TypeError("categories must be a sequence of patterns, not one string")
        object.__setattr__(self, "categories", tuple(self.categories))

    def matches_categories(self, categories: Iterable[str]) -> bool:
        """True if any category matches any pattern; case-sensitive, literal ``.``: ``math.*`` skips ``math-ph``."""
        return any(fnmatch.fnmatchcase(c, p) for c in categories for p in self.categories)


@dataclasses.dataclass
class MetadataIndex:
    """Kept records by canonical id, with per-outcome line counts and the first few problem locations."""

    records: dict[str, MetadataRecord] = dataclasses.field(default_factory=dict)
    counts: Counter = dataclasses.field(default_factory=Counter)
    problems: list[str] = dataclasses.field(default_factory=list)
    excluded: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> why the filter dropped it

    def outcome(self, arxiv_id: str) -> str | None:
        """ "kept", the filter's reason for dropping the paper, or None when the metadata never mentions it."""
        try:
            key = canonical_id(arxiv_id)
        except ValueError:
            return None
        return "kept" if key in self.records else self.excluded.get(key)

    def get(self, arxiv_id: str, default: MetadataRecord | None = None) -> MetadataRecord | None:
        """Look up by any id form (versioned, member name, ...); unparseable ids are simply absent."""
        try:
            return self.records.get(canonical_id(arxiv_id), default)
        except ValueError:
            return default

    def __contains__(self, arxiv_id: object) -> bool:
        return isinstance(arxiv_id, str) and self.get(arxiv_id) is not None

    def __len__(self) -> int:
        return len(self.records)


_CHANNELS = {"snapshot": snapshot_entries, "oai": oai_entries, "abs": abs_entries}


def metadata_channel(path: str) -> str:
    """Which reader a file needs, from its first bytes: XML is OAI-PMH, a ``\\\\`` or rule line is ``.abs``,
    anything else is snapshot JSON lines (whose bad lines are then counted, not guessed at)."""
    with open_binary(path) as stream:
        head = stream.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"<"):
        return "oai"
    if head.startswith((b"\\\\", b"---", b"arXiv:", b"Paper:")) or (not head and path.endswith(".abs")):
        return "abs"
    return "snapshot"


def metadata_files(paths: Iterable[str]) -> Iterator[str]:
    """Files in the order given, each directory expanded to its files in sorted order."""
    for path in paths:
        if os.path.isdir(path):
            yield from sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        else:
            yield path


def _outcome(record: MetadataRecord, cfg: MetadataFilterConfig) -> str:
    """The first failing rule names the outcome: category, then year, then withdrawal."""
    if not cfg.matches_categories(record.categories):
        return "category"
    if record.year < cfg.min_first_version_year:
        return "before_min_year"
    if cfg.drop_withdrawn and record.withdrawn:
        return "withdrawn"
    return "kept"


def load_metadata(paths: str | Iterable[str], cfg: MetadataFilterConfig | None = None) -> MetadataIndex:
    """Stream metadata from any mix of channels and directories, keeping the papers ``cfg`` admits.

    Snapshot lines (plain, ``.gz`` or ``.zst``; blank lines skipped), OAI-PMH records and ``.abs`` files
    each count once in ``OUTCOMES``. When an id repeats, the later entry is the newer metadata and wins:
    its own outcome is counted, the earlier one moves to ``duplicate_id``, and the record is replaced or
    removed accordingly. So ``counts["kept"]`` always equals ``len(index)`` and the other reasons count
    distinct papers. That needs one remembered outcome per id seen (roughly 0.3 GB for the full
    ~2.7M-paper snapshot). Malformed XML raises ``ValueError`` naming the file and line: a harvest
    page cut short cannot be read past the cut.
    """
    cfg = cfg or MetadataFilterConfig()
    if isinstance(paths, str):
        paths = [paths]
    index = MetadataIndex()
    outcome_by_id: dict[str, str] = {}
    notes: list[str] = []

    def problem(kind: str, path: str, number: int, why: str) -> None:
        index.counts[kind] += 1
        if len(index.problems) < MAX_REPORTED_PROBLEMS:
            index.problems.append(f"{path}:{number}: {kind}: {why}")

    for path in metadata_files(paths):
        for number, entry in _CHANNELS[metadata_channel(path)](path):
            if isinstance(entry, tuple):
                kind, why = entry
                if kind == "note":
                    if len(notes) < MAX_REPORTED_PROBLEMS:
                        notes.append(f"{path}:{number}: {why}")
                else:
                    problem(kind, path, number, why)
                continue
            outcome = _outcome(entry, cfg)
            earlier = outcome_by_id.get(entry.id)
            if earlier is not None:
                index.counts[earlier] -= 1
                index.counts["duplicate_id"] += 1
                index.records.pop(entry.id, None)
            outcome_by_id[entry.id] = outcome
            index.counts[outcome] += 1
            if outcome == "kept":
                index.records[entry.id] = entry
    for kind in OUTCOMES:
        index.counts.setdefault(kind, 0)
    index.problems = notes + index.problems
    index.excluded = {key: outcome for key, outcome in outcome_by_id.items() if outcome != "kept"}
    return index
