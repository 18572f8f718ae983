"""arXiv ``.abs`` files, one per paper, as arXiv's mirrors keep them."""

from __future__ import annotations

import re
from collections.abc import Iterator

from megasci.corpus.metadata.record import BadRecord, Entry, make_record
from megasci.utils.io import open_binary

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


def abs_entries(path: str) -> Iterator[Entry]:
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
            raise BadRecord("no Date line")
        yield (
            1,
            make_record(
                arxiv_id,
                fields.get("Title"),
                parts[2],
                fields.get("Categories"),
                dates[0],
                f"v{len(dates)}",
                None,
                (fields.get("Comments"), parts[2]),
            ),
        )
    except BadRecord as exc:
        yield 1, ("bad_record", str(exc))
