"""Stage 1 of the corpus builder: choose papers from the arXiv metadata snapshot.

Later stages match source archives against this index by canonical id (see ``arxiv_ids``), so a
source without a kept metadata record is dropped and every drop here is counted by reason.
"""

from __future__ import annotations

import dataclasses
import email.utils
import fnmatch
import json
import re
from collections import Counter
from typing import Iterable

from megasci.corpus.arxiv_ids import canonical_id
from megasci.utils.io import iter_numbered_lines

OUTCOMES = ("kept", "category", "before_min_year", "withdrawn", "bad_json", "bad_record", "duplicate_id")
"""Every non-blank line lands in exactly one of these, so the counts add up to the lines read."""

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
class MetadataRecord:
    """What later stages need from one snapshot line; ``id`` is canonical, ``year`` is that of v1."""

    id: str
    title: str
    abstract: str
    categories: list[str]
    first_version_date: str
    latest_version: str
    year: int
    update_date: str | None
    withdrawn: bool


@dataclasses.dataclass
class MetadataIndex:
    """Kept records by canonical id, with per-outcome line counts and the first few problem locations."""

    records: dict[str, MetadataRecord] = dataclasses.field(default_factory=dict)
    counts: Counter = dataclasses.field(default_factory=Counter)
    problems: list[str] = dataclasses.field(default_factory=list)
    excluded: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> why the filter dropped it

    def outcome(self, arxiv_id: str) -> str | None:
        """"kept", the filter's reason for dropping the paper, or None when the metadata never mentions it."""
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


# Withdrawal notices name the paper itself as withdrawn or retracted ("This paper has been withdrawn
# by the author", "Paper withdrawn", "The authors have withdrawn this paper", "withdrawn by arXiv
# admin"), or the whole field is just "Withdrawn." Bare words are not enough: abstracts discuss
# withdrawal symptoms, a withdrawn probe, or a deformation retract of a space.
_PAPER = r"(?:paper|article|manuscript|submission|preprint|e-?print)"
_OWN_WORK = rf"(?:(?:this|the|our|present)\s+{_PAPER}|(?:this|our)\s+(?:work|note|letter|report))"
WITHDRAWN_PATTERN = re.compile(
    rf"""
    \b{_OWN_WORK}\s+(?:has|have|is|are|was|were|had)\s+(?:been\s+|being\s+)?
        (?:now\s+|hereby\s+|temporarily\s+|permanently\s+|officially\s+)?(?:withdrawn|retracted)\b
    | (?:\A|[.;:!?(])\W*{_PAPER}\s+(?:withdrawn|retracted)\b
    | \b(?:withdrawn|retracted)\s+by\s+(?:the\s+)?(?:authors?|submitter|arxiv)\b
    | \b(?:authors?|submitter|we)\s+(?:has\s+|have\s+|hereby\s+)?(?:withdrawn?|retract(?:ed)?)\s+{_OWN_WORK}\b
    | \A\W*(?:withdrawn|retracted)\W*\Z
    """,
    re.IGNORECASE | re.VERBOSE,
)


def is_withdrawn_text(text: str | None) -> bool:
    """True if a comments or abstract field announces that the paper itself is withdrawn or retracted."""
    return bool(text) and WITHDRAWN_PATTERN.search(text) is not None


_LINE_BREAK = re.compile(r"[ \t]*\r?\n[ \t]*")
_PARAGRAPH_BREAK = re.compile(r"[ \t]*\r?\n[ \t]+(?=\S)")


def normalize_title(title: str | None) -> str:
    """Join the snapshot's wrapped title lines (``"...at Tevatron and\\n  LHC energies"``) with one space."""
    return _LINE_BREAK.sub(" ", title or "").strip()


def normalize_abstract(abstract: str | None) -> str:
    """Unwrap abstract lines but keep paragraphs, one per line.

    The snapshot wraps abstracts at ~80 columns with unindented continuation lines and starts every
    paragraph with two spaces, so an indented line start is a paragraph break, not a wrap.
    LaTeX and spacing inside a line are left untouched.
    """
    paragraphs = _PARAGRAPH_BREAK.split((abstract or "").strip())
    return "\n".join(_LINE_BREAK.sub(" ", p).strip() for p in paragraphs if p.strip())


class _BadRecord(ValueError):
    """A line that is valid JSON but lacks what the filter needs (id, categories, v1 date)."""


def _first_version(entry: dict) -> tuple[str, int, str]:
    """(v1 created date, its year, latest version label); versions are listed oldest first."""
    versions = entry.get("versions")
    if not isinstance(versions, list) or not versions or not all(isinstance(v, dict) for v in versions):
        raise _BadRecord("no versions")
    created = versions[0].get("created")
    try:
        year = email.utils.parsedate_to_datetime(created).year
    except (TypeError, ValueError, IndexError) as exc:
        raise _BadRecord(f"unparseable v1 date {created!r}") from exc
    latest = str(versions[-1].get("version") or f"v{len(versions)}")
    return created, year, latest


def _parse_record(entry: object) -> MetadataRecord:
    if not isinstance(entry, dict):
        raise _BadRecord("not a JSON object")
    try:
        arxiv_id = canonical_id(entry.get("id"))
    except ValueError as exc:
        raise _BadRecord(str(exc)) from exc
    categories = entry.get("categories")
    if not isinstance(categories, str) or not categories.split():
        raise _BadRecord("no categories")
    created, year, latest = _first_version(entry)
    return MetadataRecord(
        id=arxiv_id,
        title=normalize_title(entry.get("title")),
        abstract=normalize_abstract(entry.get("abstract")),
        categories=categories.split(),
        first_version_date=created,
        latest_version=latest,
        year=year,
        update_date=entry.get("update_date"),
        withdrawn=is_withdrawn_text(entry.get("comments")) or is_withdrawn_text(entry.get("abstract")),
    )


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
    """Stream snapshot JSON lines (plain, ``.gz`` or ``.zst``) and keep the papers ``cfg`` admits.

    Blank lines are skipped; every other line counts once in ``OUTCOMES``. When an id repeats, the
    later line is the newer metadata and wins: its own outcome is counted, the earlier line moves to
    ``duplicate_id``, and the record is replaced or removed accordingly. So ``counts["kept"]``
    always equals ``len(index)`` and the other reasons count distinct papers. That needs one remembered
    outcome per id seen (roughly 0.3 GB for the full ~2.7M-line snapshot).
    """
    cfg = cfg or MetadataFilterConfig()
    if isinstance(paths, str):
        paths = [paths]
    index = MetadataIndex()
    outcome_by_id: dict[str, str] = {}

    def problem(kind: str, path: str, number: int, why: str) -> None:
        index.counts[kind] += 1
        if len(index.problems) < MAX_REPORTED_PROBLEMS:
            index.problems.append(f"{path}:{number}: {kind}: {why}")

    for path, number, line in iter_numbered_lines(list(paths)):
        try:
            entry = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            problem("bad_json", path, number, str(exc))
            continue
        try:
            record = _parse_record(entry)
        except _BadRecord as exc:
            problem("bad_record", path, number, str(exc))
            continue
        outcome = _outcome(record, cfg)
        earlier = outcome_by_id.get(record.id)
        if earlier is not None:
            index.counts[earlier] -= 1
            index.counts["duplicate_id"] += 1
            index.records.pop(record.id, None)
        outcome_by_id[record.id] = outcome
        index.counts[outcome] += 1
        if outcome == "kept":
            index.records[record.id] = record
    for kind in OUTCOMES:
        index.counts.setdefault(kind, 0)
    index.excluded = {key: outcome for key, outcome in outcome_by_id.items() if outcome != "kept"}
    return index
