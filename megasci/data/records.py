"""Input records for preprocessing: JSON lines (plain, `.gz`, `.zst`) and Parquet, read in blocks.

One reader for pretraining (`preprocess.py`, blocks handed to workers) and post-training data
(`sft.py`, read in order). A block is a run of whole lines or one Parquet row group (Parquet is
streamed a row group at a time, reading only the columns asked for). Bad records come back as
`BadRecord` values in their place, never as exceptions, so callers count, report or stop as they
choose; each record has a 1-based number within its file: a line, or a row for Parquet.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

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


def read_block(block: RecordBlock, columns: Sequence[str] | None = None) -> tuple[int, list[tuple[int, dict | BadRecord]]]:
    """(lines or rows in the block, [(0-based index in the block, record or BadRecord)]); blank lines yield nothing.

    `columns` limits what Parquet reads (names the file lacks are left out); JSON lines are whole.
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
        items.append((index, record))
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


def iter_records(path: str, block_bytes: int = 1 << 20) -> Iterator[tuple[str, dict | BadRecord]]:
    """(location, record or BadRecord) for every record of one JSONL or Parquet file, in order."""
    before = 0
    for block in iter_blocks([path], block_bytes):
        units, items = read_block(block)
        for index, item in items:
            yield block.where(before + index + 1), item
        before += units
