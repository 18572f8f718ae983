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
open quickly; opening checks that the index is consistent (byte pointers are the running sum of the
lengths times the item size, the `.bin` holds exactly the tokens the index addresses, the dtype can
hold the recorded tokenizer's ids) and that the files match their commit record. The writer streams
tokens to temporary files and makes them visible only in `finalize()`, by the commit protocol of
megasci/data/commit.py: an interrupted job leaves nothing under the final names, and a crash between
renames leaves a dataset that refuses to open instead of one that mixes two writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from array import array
from collections.abc import Iterable, Sequence

import numpy as np

from megasci.data.commit import commit_datasets, verify_commit
from megasci.data.naming import data_file_path, index_file_path, sidecar_path
from megasci.data.provenance import recorded_tokenizer, tokenizer_record_path
from megasci.utils.io import AtomicFile

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


_CHECK_CHUNK = 1 << 22  # elements per step of the open-time checks: bounded memory on any index


def _first_bad_pointer(sizes: np.ndarray, pointers: np.ndarray, itemsize: int) -> tuple[int, int] | None:
    """(sequence, expected pointer) of the first pointer that is not the running sum of the lengths
    before it times `itemsize` (how Megatron writes them), or None when all are."""
    start_bytes = 0
    for start in range(0, len(sizes), _CHECK_CHUNK):
        chunk = sizes[start : start + _CHECK_CHUNK].astype(np.int64) * itemsize
        expected = np.empty(len(chunk), np.int64)
        expected[0] = start_bytes
        np.cumsum(chunk[:-1], out=expected[1:])
        expected[1:] += start_bytes
        bad = np.flatnonzero(pointers[start : start + _CHECK_CHUNK] != expected)
        if len(bad):
            return start + int(bad[0]), int(expected[bad[0]])
        start_bytes = int(expected[-1] + chunk[-1])
    return None


class IndexedDataset:
    """Memory-mapped reader. `ds[i]` is sequence i; `get(i, offset, length)` a slice of it.

    `commit` is the dataset's commit record (None for a dataset written without one, e.g. by
    Megatron-LM); opening verifies the files against it and checks the index's consistency.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        idx_path, bin_path = index_file_path(prefix), data_file_path(prefix)
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: indexed dataset file not found")
        self.commit = verify_commit(self.prefix)
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

        self._check_index(idx_path, bin_path)
        # np.memmap refuses empty files; an empty dataset has nothing to map.
        bin_bytes = os.path.getsize(bin_path)
        self._bin = np.memmap(bin_path, mode="r", dtype=self.dtype) if bin_bytes else np.empty(0, self.dtype)

    def _check_index(self, idx_path: str, bin_path: str) -> None:
        """The index against itself, the `.bin`'s size and the recorded tokenizer; errors name the file."""
        num_seq, itemsize = len(self.sizes), self.dtype.itemsize
        if num_seq and int(self.sizes.min()) < 0:
            first = int(np.flatnonzero(self.sizes < 0)[0])
            raise IndexedDatasetError(
                f"{idx_path}: sequence {first} has a negative length {int(self.sizes[first])} (corrupt)"
            )
        bad = _first_bad_pointer(self.sizes, self.pointers, itemsize)
        if bad is not None:
            raise IndexedDatasetError(
                f"{idx_path}: sequence {bad[0]} starts at byte {int(self.pointers[bad[0]])}, but the lengths before it "
                f"put it at {bad[1]} (pointers are the running sum of the lengths times {itemsize}, the size of "
                f"{self.dtype}): the index is corrupt"
            )
        doc = self.document_indices
        if len(doc) == 0 or doc[0] != 0 or doc[-1] != num_seq:
            raise IndexedDatasetError(f"{idx_path}: document indices must run from 0 to the sequence count {num_seq}")
        if len(doc) > 1 and bool((doc[1:] < doc[:-1]).any()):
            raise IndexedDatasetError(f"{idx_path}: document indices decrease (corrupt)")
        bin_bytes = os.path.getsize(bin_path)
        need = self.num_tokens * itemsize
        if bin_bytes < need:
            raise IndexedDatasetError(f"{bin_path}: {bin_bytes} bytes, but the index addresses {need} (truncated)")
        if bin_bytes != need:
            raise IndexedDatasetError(
                f"{bin_path}: {bin_bytes} bytes, but the {self.num_tokens} tokens of {idx_path} take {need} as "
                f"{self.dtype}: the .bin belongs to another index, or the index names the wrong dtype"
            )
        vocab_size = (recorded_tokenizer(self.prefix) or {}).get("vocab_size")
        if (
            isinstance(vocab_size, int)
            and np.issubdtype(self.dtype, np.integer)
            and vocab_size - 1 > np.iinfo(self.dtype).max
        ):
            raise IndexedDatasetError(
                f"{idx_path}: dtype {self.dtype} cannot hold the ids of the tokenizer that "
                f"{tokenizer_record_path(self.prefix)} records (vocabulary {vocab_size}): "
                "the index names the wrong dtype"
            )

    def token_id_range(self) -> tuple[int, int] | None:
        """(smallest, largest) token id as the commit record states them; None when unknown or empty."""
        if self.commit is None or self.commit.get("max_token_id") is None:
            return None
        return int(self.commit["min_token_id"]), int(self.commit["max_token_id"])

    def first_token_outside(self, vocab_size: int) -> tuple[int, int] | None:
        """(document, token id) of the first token id outside [0, vocab_size), scanning `.bin` in order."""
        ends = np.cumsum(self.document_lengths())
        for start in range(0, len(self._bin), _CHECK_CHUNK):
            chunk = np.asarray(self._bin[start : start + _CHECK_CHUNK])
            bad = np.flatnonzero((chunk >= vocab_size) | (chunk < 0))
            if len(bad):
                position = start + int(bad[0])
                return int(np.searchsorted(ends, position, side="right")), int(chunk[bad[0]])
        return None

    def check_token_ids(self, vocab_size: int) -> None:
        """Refuse a dataset whose commit record shows a token id outside [0, vocab_size), naming the first;
        a dataset without a record is checked sample by sample instead (GPTDataset)."""
        id_range = self.token_id_range()
        if id_range is None or (id_range[0] >= 0 and id_range[1] < vocab_size):
            return
        found = self.first_token_outside(vocab_size)
        document, token = found if found is not None else (None, id_range[1])
        raise IndexedDatasetError(
            f"{data_file_path(self.prefix)}: token id {token} (document {document}) is outside the vocabulary "
            f"of {vocab_size}; the dataset was written with another tokenizer, or the model's vocab_size is too small"
        )

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
    temporary files. Files that belong to the dataset (its sidecar, its tokenizer record) are
    `attach`ed and committed with it; several writers of one output (SFT tokens and loss mask)
    commit together with `finalize_together`.
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.int32):
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        dtype_code(self.dtype)  # reject dtypes the format cannot name, before writing anything
        self._bin_target = AtomicFile(data_file_path(prefix), "wb")
        self._bin = self._bin_target.file
        self._bin_sha256 = hashlib.sha256()
        self._idx_target: AtomicFile | None = None
        self._attached: list[AtomicFile] = []
        self._sizes = array("i")  # int32, like the on-disk lengths
        self._doc_idx = array("q", [0])
        self._id_range: list[int] | None = None  # [min, max] token id written (integer dtypes)
        self._done = False

    def _write(self, arr: np.ndarray) -> None:
        data = arr.tobytes()
        self._bin.write(data)
        self._bin_sha256.update(data)
        if arr.size and np.issubdtype(arr.dtype, np.integer):
            self._note_range(int(arr.min()), int(arr.max()))

    def _note_range(self, lo: int, hi: int) -> None:
        if self._id_range is None:
            self._id_range = [lo, hi]
        else:
            self._id_range = [min(self._id_range[0], lo), max(self._id_range[1], hi)]

    def add_item(self, tokens) -> None:
        """Append one sequence without closing the current document (Megatron's `add_item`)."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
        arr = self._cast(arr)
        self._write(arr)
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
        self._write(arr)
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
        self._write(arr)
        first = len(self._sizes)
        self._sizes.extend(lengths.astype(np.int32).tolist())
        self._doc_idx.extend(range(first + 1, first + len(lengths) + 1))

    def add_index(self, other_prefix: str | os.PathLike) -> None:
        """Append a whole existing dataset (same dtype): the merge step. Its `.bin` is checked against
        the checksum its commit record holds as it is copied, so a damaged input is not merged."""
        other = IndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(
                f"{index_file_path(other_prefix)}: dtype {other.dtype} differs from the merge target's {self.dtype}"
            )
        offset = len(self._sizes)
        self._sizes.extend(other.sizes.tolist())
        self._doc_idx.extend((other.document_indices[1:] + offset).tolist())
        copied = hashlib.sha256()
        with open(data_file_path(other_prefix), "rb") as f:
            for block in iter(lambda: f.read(16 << 20), b""):
                self._bin.write(block)
                self._bin_sha256.update(block)
                copied.update(block)
        expected = ((other.commit or {}).get("files") or {}).get(".bin", {}).get("sha256")
        if expected is not None and copied.hexdigest() != expected:
            raise IndexedDatasetError(
                f"{data_file_path(other_prefix)}: its sha256 differs from the one its commit "
                "record holds: the file was changed or damaged after it was written"
            )
        id_range = other.token_id_range()
        if id_range is None and other.num_tokens and np.issubdtype(other.dtype, np.integer):
            id_range = (int(other._bin.min()), int(other._bin.max()))
        if id_range is not None:
            self._note_range(*id_range)

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

    def attach(self, target: AtomicFile) -> None:
        """Commit `target` (a file of this dataset, `<prefix>.<something>`) together with `.bin/.idx`."""
        if not target.path.startswith(self.prefix):
            raise ValueError(f"{target.path} is not a file of dataset {self.prefix}")
        self._attached.append(target)

    def attach_json(self, path: str, obj) -> None:
        """Write `obj` as the JSON file `path` of this dataset, committed with it (e.g. its tokenizer record)."""
        target = AtomicFile(path, "w")
        json.dump(obj, target.file, indent=2, ensure_ascii=False)
        target.file.write("\n")
        self.attach(target)

    def stage(self) -> None:
        """Write the index under a temporary name: the files are then ready to commit."""
        if self._idx_target is not None:
            return
        if len(self._doc_idx) == 0 or self._doc_idx[-1] != len(self._sizes):
            self.end_document()  # trailing sequences added with add_item form a last document
        self._idx_target = AtomicFile(index_file_path(self.prefix), "wb")
        _write_index_to(
            self._idx_target.file,
            self.dtype,
            np.frombuffer(self._sizes, dtype=np.int32),
            np.frombuffer(self._doc_idx, dtype=np.int64),
        )

    def staged_files(self) -> list[AtomicFile]:
        if self._idx_target is None:
            raise RuntimeError(f"{self.prefix}: stage() the dataset before committing it")
        return [self._bin_target, *self._attached, self._idx_target]

    def commit_facts(self) -> dict:
        facts = {
            "dtype": self.dtype.name,
            "documents": self.num_documents,
            "sequences": len(self._sizes),
            "tokens": int(np.frombuffer(self._sizes, dtype=np.int32).sum(dtype=np.int64)),
            "bin_sha256": self._bin_sha256.hexdigest(),
        }
        if self._id_range is not None:
            facts["min_token_id"], facts["max_token_id"] = self._id_range
        return facts

    def finalize(self) -> None:
        """Write the index and make the dataset's files visible together (commit protocol, commit.py)."""
        finalize_together([self])

    def discard(self) -> None:
        if self._done:
            return
        for target in [self._bin_target, *self._attached] + ([self._idx_target] if self._idx_target else []):
            target.discard()
        self._done = True

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.discard()


def finalize_together(writers: Sequence[IndexedDatasetWriter], links: dict[str, dict] | None = None) -> None:
    """Commit several datasets as one write (one write id), e.g. SFT tokens and their loss mask;
    `links` adds fields to a dataset's commit record by prefix. On failure the temporary files go."""
    pending = [w for w in writers if not w._done]
    if not pending:
        return
    try:
        for writer in pending:
            writer.stage()
        commit_datasets(pending, links)
    except BaseException:
        for writer in pending:
            writer.discard()
        raise
    for writer in pending:
        writer._done = True


def _write_index_to(f, dtype, sizes: np.ndarray, document_indices: np.ndarray) -> None:
    """The `.idx` bytes; byte pointers are the running sum of sizes times the item size."""
    dtype = np.dtype(dtype)
    sizes = np.ascontiguousarray(sizes, dtype=np.int32)
    document_indices = np.ascontiguousarray(document_indices, dtype=np.int64)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= dtype.itemsize
    f.write(_HEADER.pack(_MAGIC, _VERSION, dtype_code(dtype), len(sizes), len(document_indices)))
    f.write(sizes.tobytes())
    f.write(pointers.tobytes())
    f.write(document_indices.tobytes())


def merge_datasets(
    prefixes: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    sidecar: bool = False,
    tokenizer: dict | None = None,
) -> IndexedDataset:
    """Concatenate datasets of one dtype, in the given order, into `output_prefix`, committed as one
    write with the inputs' sidecars concatenated (`sidecar`: each input must have one) and the
    `tokenizer` record (the identity every input records, `provenance.common_tokenizer`)."""
    from megasci.data.sidecar import SidecarWriter  # sidecar.py reads datasets: imported here, not at the top

    if not prefixes:
        raise ValueError("nothing to merge: no input prefixes")
    dtype = IndexedDataset(prefixes[0]).dtype
    writer = IndexedDatasetWriter(output_prefix, dtype=dtype)
    try:
        for prefix in prefixes:
            writer.add_index(prefix)
        if sidecar:
            lines = SidecarWriter(output_prefix)
            writer.attach(lines.target)
            for prefix in prefixes:
                with open(sidecar_path(prefix), encoding="utf-8") as f:
                    lines.add_lines([line.rstrip("\n") for line in f])
        if tokenizer is not None:
            writer.attach_json(tokenizer_record_path(output_prefix), tokenizer)
        writer.finalize()
    except BaseException:
        writer.discard()
        raise
    return IndexedDataset(output_prefix)
