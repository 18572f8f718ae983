"""The Kaggle arXiv metadata snapshot: one JSON object per line, plain or compressed."""

from __future__ import annotations

import json
from collections.abc import Iterator

from megasci.corpus.metadata.record import BadRecord, Entry, MetadataRecord, make_record
from megasci.utils.io import iter_numbered_lines


def _first_version(entry: dict) -> tuple[str | None, str | None]:
    """(v1 created date, latest version label), or Nones without a version list; listed oldest first."""
    versions = entry.get("versions")
    if not isinstance(versions, list) or not versions or not all(isinstance(v, dict) for v in versions):
        return None, None
    return versions[0].get("created"), str(versions[-1].get("version") or f"v{len(versions)}")


def _parse_record(entry: object) -> MetadataRecord:
    """One snapshot line, already JSON-decoded."""
    if not isinstance(entry, dict):
        raise BadRecord("not a JSON object")
    categories = entry.get("categories")
    created, latest = _first_version(entry)
    return make_record(
        entry.get("id"),
        entry.get("title"),
        entry.get("abstract"),
        categories if isinstance(categories, str) else None,
        created,
        latest,
        entry.get("update_date"),
        (entry.get("comments"), entry.get("abstract")),
        missing_date="no versions",
    )


def snapshot_entries(path: str) -> Iterator[Entry]:
    """The Kaggle snapshot: one JSON object per line, plain or compressed."""
    for _, number, line in iter_numbered_lines([path]):
        try:
            entry = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            yield number, ("bad_json", str(exc))
            continue
        try:
            yield number, _parse_record(entry)
        except BadRecord as exc:
            yield number, ("bad_record", str(exc))
