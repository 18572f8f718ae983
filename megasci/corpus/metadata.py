"""Stage 1 of the corpus builder: choose papers from arXiv's metadata.

Four channels give the same ``MetadataRecord``: the Kaggle snapshot (JSON lines), OAI-PMH responses
in the ``arXivRaw``, ``arXiv`` and ``oai_dc`` formats, and ``.abs`` files. ``load_metadata`` tells them
apart by content, so any mix of files and directories can be passed. Later stages match source archives
against this index by canonical id (see ``arxiv_ids``), so a source without a kept metadata record is
dropped and every drop here is counted by reason.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import fnmatch
import json
import os
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from typing import Iterable, Iterator

from megasci.corpus.arxiv_ids import canonical_id
from megasci.utils.io import iter_numbered_lines, open_binary

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
class MetadataRecord:
    """What later stages need from one metadata entry; ``id`` is canonical, ``year`` is that of v1.

    ``first_version_date`` is spelled as the channel spells it (RFC 2822 or ISO date);
    ``latest_version`` is None where the channel lists no versions (the ``arXiv`` and ``oai_dc`` formats).
    """

    id: str
    title: str
    abstract: str
    categories: list[str]
    first_version_date: str
    latest_version: str | None
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
    """True if a comments or abstract field announces that the paper itself is withdrawn or retracted.

    Every branch of the pattern names "withdraw" or "retract", so ASCII text without either word is
    answered by a substring test (~1 µs) instead of the search (~85 µs an abstract, 2 a snapshot line).
    Non-ASCII text always gets the search: IGNORECASE lets e.g. a dotless ı match i."""
    if not text:
        return False
    if text.isascii():
        lowered = text.lower()
        if "withdraw" not in lowered and "retract" not in lowered:
            return False
    return WITHDRAWN_PATTERN.search(text) is not None


_INDENTED = re.compile(r"[ \t]+\S")  # a line that opens a paragraph


def _unwrap(text: str) -> str:
    """Each line break with the spaces and tabs around it (and a CR before it) becomes one space: what
    ``re.sub(r"[ \\t]*\\r?\\n[ \\t]*", " ", text)`` gives, line by line in C instead of a regex
    that tries every position (a fifth of loading a snapshot line)."""
    if "\n" not in text:
        return text
    lines = text.split("\n")
    for i in range(1, len(lines)):
        lines[i] = lines[i].lstrip(" \t")
    for i in range(len(lines) - 1):
        line = lines[i][:-1] if lines[i].endswith("\r") else lines[i]
        lines[i] = line.rstrip(" \t")
    return " ".join(lines)


def normalize_title(title: str | None) -> str:
    """Join the snapshot's wrapped title lines (``"...at Tevatron and\\n  LHC energies"``) with one space."""
    return _unwrap(title or "").strip()


def normalize_abstract(abstract: str | None) -> str:
    """Unwrap abstract lines but keep paragraphs, one per line.

    The snapshot wraps abstracts at ~80 columns with unindented continuation lines and starts every
    paragraph with two spaces, so an indented line start (spaces or tabs, then text) is a paragraph
    break, not a wrap. LaTeX and spacing inside a line are left untouched.
    """
    paragraphs, lines = [], []
    for line in (abstract or "").strip().split("\n"):
        if lines and _INDENTED.match(line):
            paragraphs.append("\n".join(lines))
            lines = []
        lines.append(line)
    paragraphs.append("\n".join(lines))
    return "\n".join(_unwrap(p).strip() for p in paragraphs if p.strip())


class _BadRecord(ValueError):
    """An entry that parses but lacks what the filter needs (id, categories, v1 date)."""


_ISO_DATE = re.compile(r"\s*(\d{4})-(\d{2})-(\d{2})(?:T[0-9:]+Z?)?\s*")


def _year_of(created: object) -> int:
    """The year of an RFC 2822 date (snapshot, arXivRaw, ``.abs``) or an ISO date (arXiv, oai_dc)."""
    if isinstance(created, str) and (iso := _ISO_DATE.fullmatch(created)):
        try:
            return datetime.date(*map(int, iso.groups())).year
        except ValueError as exc:
            raise _BadRecord(f"unparseable v1 date {created!r}") from exc
    try:
        return email.utils.parsedate_to_datetime(created).year
    except (TypeError, ValueError, IndexError) as exc:
        raise _BadRecord(f"unparseable v1 date {created!r}") from exc


def _make_record(arxiv_id: object, title: str | None, abstract: str | None, categories: object, created: object,
                 latest_version: str | None, update_date: str | None, notices: Iterable[str | None],
                 withdrawn_flag: bool = False, missing_date: str = "no v1 date") -> MetadataRecord:
    """The one place every channel's fields become a record, so all channels judge papers alike.

    Checked in order: id, categories, v1 date. ``notices`` are the texts that may announce a
    withdrawal (comments, abstract).
    """
    try:
        key = canonical_id(arxiv_id)
    except ValueError as exc:
        raise _BadRecord(str(exc)) from exc
    if isinstance(categories, str):
        categories = categories.split()
    if not isinstance(categories, list) or not categories:
        raise _BadRecord("no categories")
    if created is None:
        raise _BadRecord(missing_date)
    return MetadataRecord(
        id=key,
        title=normalize_title(title),
        abstract=normalize_abstract(abstract),
        categories=categories,
        first_version_date=created,
        latest_version=latest_version,
        year=_year_of(created),
        update_date=update_date,
        withdrawn=withdrawn_flag or any(is_withdrawn_text(text) for text in notices),
    )


def _first_version(entry: dict) -> tuple[str | None, str | None]:
    """(v1 created date, latest version label), or Nones without a version list; listed oldest first."""
    versions = entry.get("versions")
    if not isinstance(versions, list) or not versions or not all(isinstance(v, dict) for v in versions):
        return None, None
    return versions[0].get("created"), str(versions[-1].get("version") or f"v{len(versions)}")


def _parse_record(entry: object) -> MetadataRecord:
    """One snapshot line, already JSON-decoded."""
    if not isinstance(entry, dict):
        raise _BadRecord("not a JSON object")
    categories = entry.get("categories")
    created, latest = _first_version(entry)
    return _make_record(entry.get("id"), entry.get("title"), entry.get("abstract"),
                        categories if isinstance(categories, str) else None, created, latest,
                        entry.get("update_date"), (entry.get("comments"), entry.get("abstract")),
                        missing_date="no versions")


# An entry of a channel: a record, or (kind, why) where kind is "bad_json", "bad_record" or "note"
# (a file-level remark, such as an OAI-PMH error response, that is reported but not counted).
_Entry = tuple[int, "MetadataRecord | tuple[str, str]"]


def _snapshot_entries(path: str) -> Iterator[_Entry]:
    """The Kaggle snapshot: one JSON object per line, plain or compressed."""
    for _, number, line in iter_numbered_lines([path]):
        try:
            entry = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            yield number, ("bad_json", str(exc))
            continue
        try:
            yield number, _parse_record(entry)
        except _BadRecord as exc:
            yield number, ("bad_record", str(exc))


OAI = "{http://www.openarchives.org/OAI/2.0/}"
ARXIV_RAW = "{http://arxiv.org/OAI/arXivRaw/}"
ARXIV = "{http://arxiv.org/OAI/arXiv/}"
OAI_DC = "{http://www.openarchives.org/OAI/2.0/oai_dc/}"
DC = "{http://purl.org/dc/elements/1.1/}"
OAI_ID_PREFIX = "oai:arXiv.org:"


def _text(parent: ElementTree.Element, tag: str) -> str | None:
    child = parent.find(tag)
    return None if child is None else (child.text or "")


def _oai_id(identifier: str | None) -> str | None:
    """``oai:arXiv.org:0704.0001`` and ``oai:arXiv.org:math/0303004`` name the paper after the prefix."""
    if identifier and identifier.strip().startswith(OAI_ID_PREFIX):
        return identifier.strip()[len(OAI_ID_PREFIX):]
    return identifier


def _arxiv_raw_record(header: ElementTree.Element, raw: ElementTree.Element) -> MetadataRecord:
    """``arXivRaw``: every version with its RFC 2822 date, oldest first; source type ``I`` marks a withdrawal."""
    versions = raw.findall(ARXIV_RAW + "version")
    if not versions:
        raise _BadRecord("no versions")
    latest = versions[-1].get("version") or f"v{len(versions)}"
    abstract = _text(raw, ARXIV_RAW + "abstract")
    return _make_record(_text(raw, ARXIV_RAW + "id"), _text(raw, ARXIV_RAW + "title"), abstract,
                        _text(raw, ARXIV_RAW + "categories"), _text(versions[0], ARXIV_RAW + "date"), latest,
                        _text(header, OAI + "datestamp"), (_text(raw, ARXIV_RAW + "comments"), abstract),
                        withdrawn_flag="I" in (_text(versions[-1], ARXIV_RAW + "source_type") or ""))


def _arxiv_record(header: ElementTree.Element, meta: ElementTree.Element) -> MetadataRecord:
    """``arXiv``: ``<created>`` is the first version's date (``<updated>`` the latest's); versions are not listed."""
    abstract = _text(meta, ARXIV + "abstract")
    return _make_record(_text(meta, ARXIV + "id"), _text(meta, ARXIV + "title"), abstract,
                        _text(meta, ARXIV + "categories"), _text(meta, ARXIV + "created"), None,
                        _text(header, OAI + "datestamp"), (_text(meta, ARXIV + "comments"), abstract))


_COMMENT_PREFIX = re.compile(r"\A\s*Comments?:\s*")


def _set_category(set_spec: str) -> str | None:
    """The category a setSpec names: ``math:math:CO`` is math.CO, ``physics:hep-th`` is hep-th; ``math`` is a group."""
    parts = set_spec.strip().split(":")
    if len(parts) == 3:
        return f"{parts[1]}.{parts[2]}"
    return parts[1] if len(parts) == 2 else None


def _oai_dc_record(header: ElementTree.Element, dc: ElementTree.Element) -> MetadataRecord:
    """``oai_dc``: categories only as header setSpecs, the v1 date as the earliest ``dc:date``.

    ``dc:subject`` holds category *names* ("Mathematics - Combinatorics"), so categories come from the
    setSpecs, which arXiv writes per category (``math:math:CO``). Group-level sets (``math``, ``cs``)
    name no category; a record with only those cannot be judged by the category rule and is refused.
    The first ``dc:description`` is the abstract, later ones the comments (``Comment:``-prefixed in
    arXiv's older service).
    """
    categories = [c for c in (_set_category(s.text or "") for s in header.findall(OAI + "setSpec")) if c]
    if not categories:
        sets = [s.text for s in header.findall(OAI + "setSpec")]
        raise _BadRecord(f"oai_dc gives categories only as setSpecs, and {sets} name none: the category rule "
                         "cannot be applied (harvest the arXivRaw or arXiv format)")
    dates = sorted(d.text.strip() for d in dc.findall(DC + "date") if d.text and d.text.strip())
    descriptions = [d.text or "" for d in dc.findall(DC + "description")]
    return _make_record(_oai_id(_text(header, OAI + "identifier")), _text(dc, DC + "title"),
                        descriptions[0] if descriptions else None, categories, dates[0] if dates else None, None,
                        _text(header, OAI + "datestamp"), (_COMMENT_PREFIX.sub("", d) for d in descriptions))


_OAI_FORMATS = {ARXIV_RAW + "arXivRaw": _arxiv_raw_record, ARXIV + "arXiv": _arxiv_record, OAI_DC + "dc": _oai_dc_record}


def _oai_record(record: ElementTree.Element) -> MetadataRecord | tuple[str, str]:
    header = record.find(OAI + "header")
    if header is None:
        return "bad_record", "record without a header"
    identifier = (_text(header, OAI + "identifier") or "").strip()
    if header.get("status") == "deleted":
        return "bad_record", f"{identifier}: deleted record"
    metadata = record.find(OAI + "metadata")
    try:
        if metadata is None or not len(metadata):
            raise _BadRecord("no metadata")
        reader = _OAI_FORMATS.get(metadata[0].tag)
        if reader is None:
            raise _BadRecord(f"unsupported metadata format <{metadata[0].tag}>")
        return reader(header, metadata[0])
    except _BadRecord as exc:
        return "bad_record", f"{identifier}: {exc}"


def _oai_entries(path: str) -> Iterator[_Entry]:
    """One OAI-PMH response (``ListRecords`` or ``GetRecord``), streamed: each record is dropped once read.

    The resumption token is ignored (each harvested page is its own file); an error response other than
    ``noRecordsMatch`` becomes a note, since it usually means the harvest missed records, and so does
    other XML (a schema saved beside the pages), which is skipped.
    """
    parser = ElementTree.XMLPullParser(events=("start", "end"))
    root, container, record_line = None, None, 0
    with open_binary(path) as stream:
        for number, line in enumerate(stream, 1):
            try:
                parser.feed(line)
                events = list(parser.read_events())
            except ElementTree.ParseError as exc:
                raise ValueError(f"{path}:{exc.position[0]}: not well-formed XML ({exc})") from None
            for event, element in events:
                if event == "start":
                    if root is None:
                        root = element
                        if element.tag != OAI + "OAI-PMH":  # a schema or feed saved beside the harvest
                            yield number, ("note", f"skipped: XML but not an OAI-PMH response (<{element.tag}>)")
                            return
                    elif element.tag in (OAI + "ListRecords", OAI + "GetRecord"):
                        container = element
                    elif element.tag == OAI + "record":
                        record_line = number
                elif element.tag == OAI + "record":
                    yield record_line, _oai_record(element)
                    if container is not None:
                        container.remove(element)
                elif element.tag == OAI + "error" and element.get("code") != "noRecordsMatch":
                    yield number, ("note", f"OAI-PMH error {element.get('code')}: {(element.text or '').strip()}")
    try:
        parser.close()
    except ElementTree.ParseError as exc:
        raise ValueError(f"{path}:{exc.position[0]}: truncated XML ({exc})") from None


_ABS_SEPARATOR = re.compile(r"^\\\\[ \t]*$", re.MULTILINE)
_ABS_FIELD = re.compile(r"(?P<name>[A-Za-z][A-Za-z-]*(?: \(revised v[0-9]+\))?):[ \t]*(?P<value>.*)")
_ABS_SIZE = re.compile(r"\s+\([^()]*\)\s*$")


def _abs_fields(header: str) -> tuple[dict[str, str], list[str]]:
    """Header fields by name (continuation lines kept as the snapshot keeps them) and the dates in order."""
    fields: dict[str, str] = {}
    dates: list[str] = []
    name = None
    for line in header.splitlines():
        if line[:1] in (" ", "\t") and name is not None:
            fields[name] += "\n" + line
        elif m := _ABS_FIELD.fullmatch(line.rstrip()):
            name = m["name"]
            fields[name] = m["value"]
            if name.startswith("Date"):
                dates.append(_ABS_SIZE.sub("", m["value"]))
        elif line.strip():
            name = None
    return fields, dates


def _abs_entries(path: str) -> Iterator[_Entry]:
    """One ``.abs`` file: a ``\\\\`` line, header fields, ``\\\\``, the abstract, ``\\\\``."""
    with open_binary(path) as stream:
        data = stream.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield 1, ("bad_record", f"not UTF-8 ({exc})")
        return
    parts = _ABS_SEPARATOR.split(text)
    if not text.strip():
        yield 1, ("bad_record", "empty .abs file")
        return
    if len(parts) < 3:
        yield 1, ("bad_record", "not an .abs file (expected \\\\ lines around the header and the abstract)")
        return
    fields, dates = _abs_fields(parts[1])
    arxiv_id = (fields.get("arXiv") or fields.get("Paper") or "").strip()
    try:
        if not dates:
            raise _BadRecord("no Date line")
        yield 1, _make_record(arxiv_id, fields.get("Title"), parts[2], fields.get("Categories"), dates[0],
                              f"v{len(dates)}", None, (fields.get("Comments"), parts[2]))
    except _BadRecord as exc:
        yield 1, ("bad_record", str(exc))


_CHANNELS = {"snapshot": _snapshot_entries, "oai": _oai_entries, "abs": _abs_entries}


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
