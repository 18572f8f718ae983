"""Megatron-compatible indexed token datasets: `<prefix>.bin` + `<prefix>.idx`.

The format is byte-for-byte Megatron-LM's `MMapIndexedDataset` (also read by GPT-NeoX), so
datasets move between the projects in both directions.

`.bin` holds the tokens of every sequence back to back, in the dtype named by the index, with no
header. `.idx` is, all little-endian:

    9 bytes  magic  b"MMIDIDX\\x00\\x00"
    <Q       version, always 1
    <B       dtype code (DTYPE_CODES below)
    <Q       sequence count S
    <Q       document-index length D (number of documents + 1)
    S x int32   sequence lengths, in tokens
    S x int64   sequence byte offsets into .bin
    D x int64   document indices: document d is sequences [doc_idx[d], doc_idx[d+1])

Usually a document is one sequence (`add_document(tokens)`); Megatron also lets a document be
several sequences (sentences), which `add_document(tokens, lengths)` writes.

The reader memory-maps both files and never reads `.bin` eagerly, so datasets larger than RAM
open instantly. The writer streams tokens to temporary files and renames them into place only in
`finalize()`: an interrupted job leaves nothing under the final names.
"""

from __future__ import annotations

import os
import shutil
import struct
from array import array
from typing import Iterable, Sequence

import numpy as np

from megasci.utils.io import AtomicFile, atomic_output

_MAGIC = b"MMIDIDX\x00\x00"
_VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, doc-index length

# Megatron-LM's dtype codes (megatron/core/datasets/indexed_dataset.py, DType).
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class IndexedDatasetError(ValueError):
    """A `.bin/.idx` pair that is malformed, truncated or inconsistent."""


def data_file_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.bin"


def index_file_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.idx"


def best_token_dtype(vocab_size: int) -> type:
    """uint16 while every token id fits in it, int32 otherwise (as the format spec requires)."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.uint16 if vocab_size < 65536 else np.int32


def dtype_code(dtype) -> int:
    try:
        return _CODE_OF_DTYPE[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {np.dtype(dtype)} has no Megatron dtype code") from None


class IndexedDataset:
    """Memory-mapped reader. `ds[i]` is sequence i; `get(i, offset, length)` a slice of it."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        idx_path, bin_path = index_file_path(prefix), data_file_path(prefix)
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: indexed dataset file not found")
        idx_bytes = os.path.getsize(idx_path)
        if idx_bytes < _HEADER.size:
            raise IndexedDatasetError(f"{idx_path}: {idx_bytes} bytes is too short for an index header")
        with open(idx_path, "rb") as f:
            magic, version, code, num_seq, num_doc_idx = _HEADER.unpack(f.read(_HEADER.size))
        if magic != _MAGIC:
            raise IndexedDatasetError(f"{idx_path}: bad magic {magic!r}, expected {_MAGIC!r} (not a Megatron .idx)")
        if version != _VERSION:
            raise IndexedDatasetError(f"{idx_path}: unsupported index version {version}, expected {_VERSION}")
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(f"{idx_path}: unknown dtype code {code}")
        expected = _HEADER.size + num_seq * (4 + 8) + num_doc_idx * 8
        if idx_bytes != expected:
            raise IndexedDatasetError(
                f"{idx_path}: {idx_bytes} bytes, but a header with {num_seq} sequences and "
                f"{num_doc_idx} document indices needs {expected} (truncated or corrupt)"
            )
        self.dtype = np.dtype(DTYPE_CODES[code])
        self._index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        offset = _HEADER.size
        self.sizes = np.frombuffer(self._index, dtype=np.int32, count=num_seq, offset=offset)
        offset += self.sizes.nbytes
        self.pointers = np.frombuffer(self._index, dtype=np.int64, count=num_seq, offset=offset)
        offset += self.pointers.nbytes
        self.document_indices = np.frombuffer(self._index, dtype=np.int64, count=num_doc_idx, offset=offset)

        bin_bytes = os.path.getsize(bin_path)
        need = int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize if num_seq else 0
        if bin_bytes < need:
            raise IndexedDatasetError(f"{bin_path}: {bin_bytes} bytes, but the index addresses {need} (truncated)")
        if num_doc_idx == 0 or self.document_indices[0] != 0 or self.document_indices[-1] != num_seq:
            raise IndexedDatasetError(f"{idx_path}: document indices must run from 0 to the sequence count {num_seq}")
        # np.memmap refuses empty files; an empty dataset has nothing to map.
        self._bin = np.memmap(bin_path, mode="r", dtype=self.dtype) if bin_bytes else np.empty(0, self.dtype)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    def document_lengths(self) -> np.ndarray:
        """Tokens per document (the sum of its sequences), int64, computed from the index alone."""
        ends = np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)])
        return ends[self.document_indices[1:]] - ends[self.document_indices[:-1]]

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences in {self.prefix}")
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._bin[start : start + int(self.sizes[i])]

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset+length) of sequence i, a view into the mapped file."""
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"slice [{offset}, {offset + length}) out of range for sequence {i} of {size} tokens")
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start : start + length]

    def get_document(self, d: int) -> np.ndarray:
        """All tokens of document d (its sequences are contiguous in `.bin`)."""
        first, last = int(self.document_indices[d]), int(self.document_indices[d + 1])
        if first == last:
            return self._bin[0:0]
        start = int(self.pointers[first]) // self.dtype.itemsize
        return self._bin[start : start + int(self.sizes[first:last].sum())]


class IndexedDatasetWriter:
    """Streams documents into `<prefix>.bin/.idx`; nothing appears under those names before `finalize()`.

    Use as a context manager: leaving the block normally finalizes, an exception discards the
    temporary files.
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.int32):
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        dtype_code(self.dtype)  # reject dtypes the format cannot name, before writing anything
        self._bin_target = AtomicFile(data_file_path(prefix), "wb")
        self._bin = self._bin_target.file
        self._sizes = array("i")  # int32, like the on-disk lengths
        self._doc_idx = array("q", [0])
        self._done = False

    def add_item(self, tokens) -> None:
        """Append one sequence without closing the current document (Megatron's `add_item`)."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
        arr = self._cast(arr)
        self._bin.write(arr.tobytes())
        self._sizes.append(len(arr))

    def end_document(self) -> None:
        self._doc_idx.append(len(self._sizes))

    def add_document(self, tokens, lengths: Sequence[int] | None = None) -> None:
        """Append one document: one sequence, or several when `lengths` splits the tokens."""
        arr = self._cast(np.asarray(tokens))
        if lengths is None:
            lengths = [len(arr)]
        if sum(lengths) != len(arr):
            raise ValueError(f"lengths sum to {sum(lengths)} but the document has {len(arr)} tokens")
        self._bin.write(arr.tobytes())
        self._sizes.extend(int(n) for n in lengths)
        self.end_document()

    def add_documents_flat(self, tokens: np.ndarray, doc_lengths: Iterable[int]) -> None:
        """Append many single-sequence documents given as one flat buffer: the fast path for bulk writers."""
        arr = self._cast(np.asarray(tokens))
        lengths = np.asarray(doc_lengths, dtype=np.int64)
        if int(lengths.sum()) != len(arr):
            raise ValueError(f"document lengths sum to {int(lengths.sum())} but {len(arr)} tokens were given")
        if len(lengths) and int(lengths.max()) >= 2**31:
            raise ValueError(f"a document of {int(lengths.max())} tokens exceeds the format's int32 sequence length")
        self._bin.write(arr.tobytes())
        first = len(self._sizes)
        self._sizes.extend(lengths.astype(np.int32).tolist())
        self._doc_idx.extend(range(first + 1, first + len(lengths) + 1))

    def add_index(self, other_prefix: str | os.PathLike) -> None:
        """Append a whole existing dataset (same dtype): the merge step."""
        other = IndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(
                f"{index_file_path(other_prefix)}: dtype {other.dtype} differs from the merge target's {self.dtype}"
            )
        offset = len(self._sizes)
        self._sizes.extend(other.sizes.tolist())
        self._doc_idx.extend((other.document_indices[1:] + offset).tolist())
        with open(data_file_path(other_prefix), "rb") as f:
            shutil.copyfileobj(f, self._bin, length=16 << 20)

    @property
    def num_documents(self) -> int:
        return len(self._doc_idx) - 1

    def _cast(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype == self.dtype:
            return arr
        if arr.size and np.issubdtype(arr.dtype, np.integer) and np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            lo, hi = int(arr.min()), int(arr.max())
            if lo < info.min or hi > info.max:
                raise ValueError(f"token ids [{lo}, {hi}] do not fit {self.dtype} in {self.prefix}")
        return arr.astype(self.dtype)

    def finalize(self) -> None:
        """Write the index and move both files under their final names (`.bin` first, `.idx` last)."""
        if self._done:
            return
        if len(self._doc_idx) == 0 or self._doc_idx[-1] != len(self._sizes):
            self.end_document()  # trailing sequences added with add_item form a last document
        self._bin_target.commit()
        write_index(index_file_path(self.prefix), self.dtype, np.frombuffer(self._sizes, dtype=np.int32),
                    np.frombuffer(self._doc_idx, dtype=np.int64))
        self._done = True

    def discard(self) -> None:
        if self._done:
            return
        self._bin_target.discard()
        self._done = True

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.discard()


def write_index(path: str, dtype, sizes: np.ndarray, document_indices: np.ndarray) -> None:
    """Write a complete `.idx` file, atomically; byte pointers are the running sum of sizes times the item size."""
    dtype = np.dtype(dtype)
    sizes = np.ascontiguousarray(sizes, dtype=np.int32)
    document_indices = np.ascontiguousarray(document_indices, dtype=np.int64)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= dtype.itemsize
    with atomic_output(path, "wb") as f:
        f.write(_HEADER.pack(_MAGIC, _VERSION, dtype_code(dtype), len(sizes), len(document_indices)))
        f.write(sizes.tobytes())
        f.write(pointers.tobytes())
        f.write(document_indices.tobytes())


def merge_datasets(prefixes: Sequence[str | os.PathLike], output_prefix: str | os.PathLike) -> IndexedDataset:
    """Concatenate datasets of one dtype, in the given order, into `output_prefix`."""
    if not prefixes:
        raise ValueError("nothing to merge: no input prefixes")
    dtype = IndexedDataset(prefixes[0]).dtype
    with IndexedDatasetWriter(output_prefix, dtype=dtype) as writer:
        for prefix in prefixes:
            writer.add_index(prefix)
    return IndexedDataset(output_prefix)
