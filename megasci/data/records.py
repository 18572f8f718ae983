"""Input records for preprocessing: JSON lines or one JSON array (plain, `.gz`, `.zst`) and Parquet, read in blocks.

One reader for pretraining (`preprocess.py`, blocks handed to workers) and post-training data
(`sft.py`, read in order). A block is a run of whole lines, a run of whole elements of a JSON
array, or one Parquet row group (Parquet is streamed a row group at a time, reading only the
columns asked for). Bad records come back as `BadRecord` values in their place, never as
exceptions, so callers count, report or stop as they choose; each record has a 1-based number
within its file: a line, a row for Parquet, an element for a JSON array (named by its 0-based
index, `file.json[46]`).

A `.json` file (plain or compressed) whose first non-whitespace character is `[` is one JSON array
of records, as MathInstruct and Alpaca ship; any other file is JSON lines. See `_iter_array_blocks`.

A record is bad when it is not a JSON object, or when a string it holds is not valid Unicode: JSON
can spell a lone UTF-16 surrogate (`"\\ud800"`), which no tokenizer or UTF-8 writer accepts, so
such a record is reported by its place instead of aborting the run when it reaches a tokenizer.
A compressed file cut short is not a bad record but an error naming the file (utils/io.open_binary).
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from megasci.utils.io import COMPRESSED_SUFFIXES, open_binary

PARQUET_SUFFIXES = (".parquet", ".pq")
JSON_ARRAY_SUFFIXES = tuple(".json" + s for s in ("", *COMPRESSED_SUFFIXES))  # read as an array if one starts it


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
    """A run of whole lines, a run of a JSON array's elements (`array` set), or one Parquet row group
    (`row_group` set).

    Plain JSONL travels as (path, start, length) and workers read the bytes themselves; compressed
    files cannot be entered mid-stream, so their bytes travel with the block. A JSON array's
    elements travel as bytes too, one element a line, so workers read them as JSON lines; `length`
    is the bytes of the file they cover. For Parquet, `length` is the row group's compressed size
    (for progress) and workers open the file themselves.
    """

    path: str
    start: int
    length: int
    data: bytes | None = None
    row_group: int | None = None
    array: bool = False

    def where(self, number: int) -> str:
        """`file:line`, `file:row N` for Parquet or `file[index]` for a JSON array's element, for the
        record numbered `number` (from 1) in its file."""
        if self.array:
            return f"{self.path}[{number - 1}]"
        return f"{self.path}:row {number}" if self.row_group is not None else f"{self.path}:{number}"

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(self.length)


class JSONArrayError(ValueError):
    """A JSON array input that is cut short or is not valid JSON, named by file and element."""


def is_json_array(path: str) -> bool:
    """Whether `path` is a `.json` file (plain or compressed) whose first non-whitespace character is `[`."""
    if not path.endswith(JSON_ARRAY_SUFFIXES):
        return False
    with open_binary(path) as f:
        head = f.read(1 << 12)
        if head.startswith(codecs.BOM_UTF8):
            head = head[len(codecs.BOM_UTF8) :]
        while head:
            stripped = head.lstrip(b" \t\r\n")
            if stripped:
                return stripped.startswith(b"[")
            head = f.read(1 << 12)
    return False


_WHITESPACE = re.compile(r"[ \t\r\n]*")
# An element that a longer buffer may change: a decode error from a string running past the buffer's end
# or in its last characters (`{"a": 1.` or `tru`, cut by the chunk boundary), or a value ending there
# (`1` of `1.5`). Any other error is in the file, wherever the chunk ends.
_NEAR_END = 8
_CLOSES = re.compile(r"[]}]")  # at the end of the file, an error with no bracket after it is a cut


def _iter_array_blocks(path: str, block_bytes: int) -> Iterator[RecordBlock]:
    """A JSON array's elements in blocks of about `block_bytes` of the file, each element one line.

    Streamed: the file is read (and decompressed) in chunks of `block_bytes`, and each element is
    parsed by the standard library's C scanner (`JSONDecoder.raw_decode`) from a buffer holding the
    unread text; an element that runs past the buffer's end is parsed again once more is read, the
    read size growing with the element. So memory is about `block_bytes` plus the largest element,
    whatever the file's size; `json.load`, which the standard library offers for arrays, would hold
    the whole file and every record at once (MathInstruct's array is 260k records).

    The element's own text (its line breaks, which valid JSON has only between tokens, made spaces)
    is what the block carries, so workers parse it as a JSON line and apply the same checks (an
    element that is not an object is a `BadRecord`; bytes that are not UTF-8 make it a `bad_json`
    one). Unlike JSON lines, an array cannot be resumed after a syntax error or a cut, so those stop
    the read with `JSONArrayError` naming the file and the element.
    """
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")("surrogateescape")  # bytes that are not UTF-8 round-trip
    f = open_binary(path)
    buf, pos, eof = "", 0, False
    covered = 0  # bytes of the file consumed since the current block began, before buf[mark]
    mark = 0  # where in buf the current block's coverage resumes
    start = 0  # byte offset of the current block in the (decompressed) file
    lines: list[str] = []  # the current block's elements, one line each
    size, index = 0, 0  # characters in `lines`; elements read

    def nbytes(s: str) -> int:
        return len(s.encode("utf-8", "surrogateescape"))

    def more() -> bool:
        """Read on, dropping what is consumed (so positions in `buf` move); False at the end of the file."""
        nonlocal buf, pos, eof, covered, mark
        if eof:
            return False
        data = f.read(max(block_bytes, len(buf) - pos))  # at least doubles the buffer an element is in
        eof = not data
        covered += nbytes(buf[mark:pos])
        buf, pos, mark = buf[pos:] + text.decode(data, final=eof), 0, 0
        return not eof

    def skip_whitespace() -> str:
        """The next character that is not whitespace, reading on as needed ("" at the end of the file)."""
        nonlocal pos
        while True:
            pos = _WHITESPACE.match(buf, pos).end()  # type: ignore[union-attr]
            if pos < len(buf) or not more():
                return buf[pos : pos + 1]

    def block() -> RecordBlock:
        """The elements read since the last block, as one; the next block's coverage starts here."""
        nonlocal lines, size, covered, mark, start
        length = covered + nbytes(buf[mark:pos])
        out = RecordBlock(path, start, length, "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n", array=True)
        start += length
        lines, size, covered, mark = [], 0, 0, pos
        return out

    try:
        while not buf and more():  # a first read may end inside a character
            pass
        if buf.startswith("\ufeff"):
            pos = 1
        if skip_whitespace() != "[":
            raise JSONArrayError(f"{path}: not a JSON array (it does not start with '[')")
        pos += 1
        closed = skip_whitespace() == "]"
        if closed:
            pos += 1
        while not closed:
            while True:
                try:
                    _, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as e:
                    unterminated = e.msg.startswith("Unterminated string")
                    if not eof and (unterminated or e.pos >= len(buf) - _NEAR_END):
                        more()
                        continue
                    if unterminated or not _CLOSES.search(buf, e.pos):  # the file ends before the element does
                        raise JSONArrayError(
                            f"{path}: truncated JSON array: the file ends inside element [{index}] "
                            "(an interrupted copy or download?)"
                        ) from None
                    raise JSONArrayError(
                        f"{path}: element [{index}] of the JSON array is not valid JSON ({e.msg}, "
                        f"{e.pos - pos} characters into the element); an array cannot be read on past a "
                        "syntax error, so the file is refused (repair it, or convert it to JSON lines)"
                    ) from None
                if end >= len(buf) - _NEAR_END and not eof:  # a number may go on in the next chunk (`1` of `1.5`)
                    more()  # which moves the buffer: parse again
                    continue
                break
            element = buf[pos:end]
            lines.append(element.replace("\n", " "))
            size += len(element)
            pos, index = end, index + 1
            after = skip_whitespace()
            if after == "]":
                pos, closed = pos + 1, True
            elif after == ",":
                pos += 1
                if skip_whitespace() == "]":
                    raise JSONArrayError(f"{path}: a comma after the JSON array's last element [{index - 1}]")
            elif after == "":
                raise JSONArrayError(
                    f"{path}: truncated JSON array: the file ends after element [{index - 1}] without the "
                    "closing ']' (an interrupted copy or download?)"
                )
            else:
                raise JSONArrayError(
                    f"{path}: expected ',' or ']' after element [{index - 1}] of the JSON array, found {after!r}"
                )
            if size >= block_bytes and not closed:
                yield block()
        if skip_whitespace() != "":
            raise JSONArrayError(f"{path}: data after the end of the JSON array (after element [{index - 1}])")
        if lines:
            yield block()  # its length runs to the end of the file
    finally:
        f.close()


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
    """Each JSONL file cut into blocks of about `block_bytes` ending at line boundaries; each JSON
    array file into blocks of whole elements; each Parquet file as its row groups."""
    for path in paths:
        if is_json_array(path):
            yield from _iter_array_blocks(path, block_bytes)
            continue
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
    """(location, record or BadRecord) for every record of one JSONL, JSON array or Parquet file, in
    order (`columns` as in `read_block`)."""
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
