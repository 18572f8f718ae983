"""Input records for preprocessing: JSON lines (plain, `.gz`, `.zst`) and Parquet, read in blocks.

One reader for pretraining (`preprocess.py`, blocks handed to workers) and post-training data
(`sft.py`, read in order). A block is a run of whole lines or one Parquet row group (Parquet is
streamed a row group at a time, reading only the columns asked for). Bad records come back as
`BadRecord` values in their place, never as exceptions, so callers count, report or stop as they
choose; each record has a 1-based number within its file: a line, or a row for Parquet.

A record is bad when it is not a JSON object, or when a string it holds is not valid Unicode: JSON
can spell a lone UTF-16 surrogate (`"\\ud800"`), which no tokenizer or UTF-8 writer accepts, so
such a record is reported by its place instead of aborting the run when it reaches a tokenizer.
A compressed file cut short is not a bad record but an error naming the file (utils/io.open_binary).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from megasci.utils.io import COMPRESSED_SUFFIXES, open_binary

PARQUET_SUFFIXES = (".parquet", ".pq")


class BadRecord(NamedTuple):
    kind: str
    message: str


def is_parquet(path: str) -> bool:
    return path.endswith(PARQUET_SUFFIXES)


def _parquet_file(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install 'megasci[parquet]')") from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError family
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None


@dataclass
class RecordBlock:
    """A run of whole lines, or one Parquet row group (`row_group` set).

    Plain JSONL travels as (path, start, length) and workers read the bytes themselves; compressed
    files cannot be entered mid-stream, so their bytes travel with the block. For Parquet, `length`
    is the row group's compressed size (for progress) and workers open the file themselves.
    """

    path: str
    start: int
    length: int
    data: bytes | None = None
    row_group: int | None = None

    def where(self, number: int) -> str:
        """`file:line`, or `file:row N` for Parquet, for the record numbered `number` in its file."""
        return f"{self.path}:row {number}" if self.row_group is not None else f"{self.path}:{number}"

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(self.length)


def _surrogate_in(value) -> str | None:
    """Where in `value` (a JSON value) a string holds a lone surrogate, as text for a message; None if none does."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f" (character {e.start}: U+{ord(value[e.start]):04X})"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = _surrogate_in(item)
        if where is not None:
            return f"[{key!r}]{where}"
    return None


def _unicode_problem(raw: bytes, record: dict, columns: Sequence[str] | None) -> BadRecord | None:
    """A BadRecord when a field in `columns` (all fields when None) holds a lone UTF-16 surrogate."""
    if b"\\ud" not in raw and b"\\uD" not in raw:  # surrogates reach a parsed str only as \uD800-\uDFFF escapes
        return None
    for key in record if columns is None else columns:
        if key in record:
            where = _surrogate_in(record[key])
            if where is not None:
                return BadRecord(
                    "bad_unicode", f"key {key!r}{where} holds a lone UTF-16 surrogate, which is not valid Unicode text"
                )
    return None


def read_block(
    block: RecordBlock, columns: Sequence[str] | None = None
) -> tuple[int, list[tuple[int, dict | BadRecord]]]:
    """(lines or rows in the block, [(0-based index in the block, record or BadRecord)]); blank lines yield nothing.

    `columns` limits what Parquet reads (names the file lacks are left out) and which fields of a JSON
    line must be valid Unicode (a bad field the caller never reads does not cost it the record);
    JSON lines are otherwise whole. Parquet strings are valid UTF-8 by the format.
    """
    if block.row_group is not None:
        parquet = _parquet_file(block.path)
        if columns is not None:
            present = set(parquet.schema_arrow.names)
            columns = [c for c in columns if c in present]
        rows = parquet.read_row_group(block.row_group, columns=columns).to_pylist()
        return len(rows), list(enumerate(rows))
    lines = block.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    items: list[tuple[int, dict | BadRecord]] = []
    for index, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as e:
            items.append((index, BadRecord("bad_json", f"not valid JSON ({e.__class__.__name__}: {str(e)[:80]})")))
            continue
        if not isinstance(record, dict):
            items.append((index, BadRecord("not_an_object", f"a JSON {type(record).__name__}, not an object")))
            continue
        items.append((index, _unicode_problem(raw, record, columns) or record))
    return len(lines), items


def iter_blocks(paths: Sequence[str], block_bytes: int) -> Iterator[RecordBlock]:
    """Each JSONL file cut into blocks of about `block_bytes` ending at line boundaries; each Parquet
    file as its row groups."""
    for path in paths:
        if is_parquet(path):
            metadata = _parquet_file(path).metadata
            start = 0
            for group in range(metadata.num_row_groups):
                meta = metadata.row_group(group)
                size = sum(meta.column(c).total_compressed_size for c in range(meta.num_columns))
                yield RecordBlock(path, start, size, row_group=group)
                start += size
            continue
        if path.endswith(COMPRESSED_SUFFIXES):
            with open_binary(path) as f:
                start = 0
                while data := f.read(block_bytes):
                    if not data.endswith(b"\n"):
                        data += f.readline()
                    yield RecordBlock(path, start, len(data), data)
                    start += len(data)
            continue
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            start = 0
            while start < size:
                if start + block_bytes >= size:
                    end = size
                else:
                    f.seek(start + block_bytes - 1)
                    f.readline()  # through the newline that ends the block's last line
                    end = f.tell()
                yield RecordBlock(path, start, end - start)
                start = end


def iter_records(
    path: str, block_bytes: int = 1 << 20, columns: Sequence[str] | None = None
) -> Iterator[tuple[str, dict | BadRecord]]:
    """(location, record or BadRecord) for every record of one JSONL or Parquet file, in order
    (`columns` as in `read_block`)."""
    before = 0
    for block in iter_blocks([path], block_bytes):
        units, items = read_block(block, columns)
        for index, item in items:
            yield block.where(before + index + 1), item
        before += units


class RecordError(ValueError):
    """A bad record under `strict`, named by its place."""


def iter_texts(
    paths: Sequence[str],
    key: str = "text",
    strict: bool = False,
    log=print,
    max_reported: int = 20,
    counts: dict | None = None,
) -> Iterator[str]:
    """`record[key]` of every record of `paths`, in order: the input of tokenizer training.

    A record that is not a JSON object, lacks a string `key` or holds text that is not valid Unicode
    is reported as `file:line` (the first `max_reported` through `log`) and skipped, or under
    `strict` stops the run with RecordError. `counts`, when given, collects the skips by kind.
    """
    skipped = 0
    for path in paths:
        for where, record in iter_records(path, columns=[key]):
            if not isinstance(record, BadRecord):
                value = record.get(key)
                if isinstance(value, str):
                    yield value
                    continue
                record = (
                    BadRecord("missing_key", f"no key {key!r}")
                    if value is None
                    else BadRecord("not_a_string", f"key {key!r} holds a {type(value).__name__}")
                )
            if strict:
                raise RecordError(f"{where}: {record.message} (--strict stops at the first bad record)")
            skipped += 1
            if counts is not None:
                counts[record.kind] = counts.get(record.kind, 0) + 1
            if skipped <= max_reported:
                log(f"skipped {where}: {record.message}")
    if skipped > max_reported:
        log(f"... {skipped - max_reported} more bad records not shown")
