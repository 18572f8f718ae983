"""One metadata record, as every channel gives it: the fields later stages need, the text rules
(titles and abstracts unwrapped, withdrawal notices recognised, v1 dates read) and `make_record`,
the one place a channel's fields become a record, so all channels judge papers alike.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import re
from collections.abc import Iterable

from megasci.corpus.arxiv_ids import canonical_id


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


class BadRecord(ValueError):
    """An entry that parses but lacks what the filter needs (id, categories, v1 date)."""


_ISO_DATE = re.compile(r"\s*(\d{4})-(\d{2})-(\d{2})(?:T[0-9:]+Z?)?\s*")


def _year_of(created: object) -> int:
    """The year of an RFC 2822 date (snapshot, arXivRaw, ``.abs``) or an ISO date (arXiv, oai_dc)."""
    if isinstance(created, str) and (iso := _ISO_DATE.fullmatch(created)):
        try:
            return datetime.date(*map(int, iso.groups())).year
        except ValueError as exc:
            raise BadRecord(f"unparseable v1 date {created!r}") from exc
    try:
        return email.utils.parsedate_to_datetime(created).year
    except (TypeError, ValueError, IndexError) as exc:
        raise BadRecord(f"unparseable v1 date {created!r}") from exc


def make_record(
    arxiv_id: object,
    title: str | None,
    abstract: str | None,
    categories: object,
    created: object,
    latest_version: str | None,
    update_date: str | None,
    notices: Iterable[str | None],
    withdrawn_flag: bool = False,
    missing_date: str = "no v1 date",
) -> MetadataRecord:
    """The one place every channel's fields become a record, so all channels judge papers alike.

    Checked in order: id, categories, v1 date. ``notices`` are the texts that may announce a
    withdrawal (comments, abstract).
    """
    try:
        key = canonical_id(arxiv_id)
    except ValueError as exc:
        raise BadRecord(str(exc)) from exc
    if isinstance(categories, str):
        categories = categories.split()
    if not isinstance(categories, list) or not categories:
        raise BadRecord("no categories")
    if created is None:
        raise BadRecord(missing_date)
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


# An entry of a channel: a record, or (kind, why) where kind is "bad_json", "bad_record" or "note"
# (a file-level remark, such as an OAI-PMH error response, that is reported but not counted).
Entry = tuple[int, "MetadataRecord | tuple[str, str]"]
