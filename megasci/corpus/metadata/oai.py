"""OAI-PMH responses, arXiv's own metadata interface, in its three formats: ``arXivRaw``, ``arXiv``
and ``oai_dc``; each record becomes a `MetadataRecord` (or a counted problem)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator

from megasci.corpus.metadata.record import BadRecord, Entry, MetadataRecord, make_record
from megasci.utils.io import open_binary

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
        return identifier.strip()[len(OAI_ID_PREFIX) :]
    return identifier


def _arxiv_raw_record(header: ElementTree.Element, raw: ElementTree.Element) -> MetadataRecord:
    """``arXivRaw``: every version with its RFC 2822 date, oldest first; source type ``I`` marks a withdrawal."""
    versions = raw.findall(ARXIV_RAW + "version")
    if not versions:
        raise BadRecord("no versions")
    latest = versions[-1].get("version") or f"v{len(versions)}"
    abstract = _text(raw, ARXIV_RAW + "abstract")
    return make_record(
        _text(raw, ARXIV_RAW + "id"),
        _text(raw, ARXIV_RAW + "title"),
        abstract,
        _text(raw, ARXIV_RAW + "categories"),
        _text(versions[0], ARXIV_RAW + "date"),
        latest,
        _text(header, OAI + "datestamp"),
        (_text(raw, ARXIV_RAW + "comments"), abstract),
        withdrawn_flag="I" in (_text(versions[-1], ARXIV_RAW + "source_type") or ""),
    )


def _arxiv_record(header: ElementTree.Element, meta: ElementTree.Element) -> MetadataRecord:
    """``arXiv``: ``<created>`` is the first version's date (``<updated>`` the latest's); versions are not listed."""
    abstract = _text(meta, ARXIV + "abstract")
    return make_record(
        _text(meta, ARXIV + "id"),
        _text(meta, ARXIV + "title"),
        abstract,
        _text(meta, ARXIV + "categories"),
        _text(meta, ARXIV + "created"),
        None,
        _text(header, OAI + "datestamp"),
        (_text(meta, ARXIV + "comments"), abstract),
    )


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
        raise BadRecord(
            f"oai_dc gives categories only as setSpecs, and {sets} name none: the category rule "
            "cannot be applied (harvest the arXivRaw or arXiv format)"
        )
    dates = sorted(d.text.strip() for d in dc.findall(DC + "date") if d.text and d.text.strip())
    descriptions = [d.text or "" for d in dc.findall(DC + "description")]
    return make_record(
        _oai_id(_text(header, OAI + "identifier")),
        _text(dc, DC + "title"),
        descriptions[0] if descriptions else None,
        categories,
        dates[0] if dates else None,
        None,
        _text(header, OAI + "datestamp"),
        (_COMMENT_PREFIX.sub("", d) for d in descriptions),
    )


_OAI_FORMATS = {
    ARXIV_RAW + "arXivRaw": _arxiv_raw_record,
    ARXIV + "arXiv": _arxiv_record,
    OAI_DC + "dc": _oai_dc_record,
}


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
            raise BadRecord("no metadata")
        reader = _OAI_FORMATS.get(metadata[0].tag)
        if reader is None:
            raise BadRecord(f"unsupported metadata format <{metadata[0].tag}>")
        return reader(header, metadata[0])
    except BadRecord as exc:
        return "bad_record", f"{identifier}: {exc}"


def oai_entries(path: str) -> Iterator[Entry]:
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
