"""The .bin/.idx format against an independent reading and writing of Megatron's layout."""

import os
import struct

import numpy as np
import pytest

from megasci.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    best_token_dtype,
    merge_datasets,
)

# Megatron-LM's codes, restated here rather than imported so the test is independent.
MEGATRON_CODES = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}


def numpy_read(prefix):
    """Parse .idx by hand: header fields, then the three arrays, in the documented order."""
    with open(prefix + ".idx", "rb") as f:
        raw = f.read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack_from("<Q", raw, 9)
    (code,) = struct.unpack_from("<B", raw, 17)
    (n_seq,) = struct.unpack_from("<Q", raw, 18)
    (n_doc,) = struct.unpack_from("<Q", raw, 26)
    pos = 34
    sizes = np.frombuffer(raw, np.int32, n_seq, pos)
    pos += 4 * n_seq
    pointers = np.frombuffer(raw, np.int64, n_seq, pos)
    pos += 8 * n_seq
    doc_idx = np.frombuffer(raw, np.int64, n_doc, pos)
    assert pos + 8 * n_doc == len(raw)
    dtype = {v: k for k, v in MEGATRON_CODES.items()}[code]
    data = np.fromfile(prefix + ".bin", dtype=dtype)
    return version, dtype, sizes, pointers, doc_idx, data


def numpy_write(prefix, docs, dtype):
    """Write the format by hand: one sequence per document."""
    dtype = np.dtype(dtype)
    sizes = np.array([len(d) for d in docs], np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1], dtype=np.int64)]).astype(np.int64) * dtype.itemsize
    doc_idx = np.arange(len(docs) + 1, dtype=np.int64)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", MEGATRON_CODES[dtype.type]))
        f.write(struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(doc_idx)))
        f.write(sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes())
    np.concatenate(docs).astype(dtype).tofile(prefix + ".bin")


def random_docs(rng, n, vocab):
    return [rng.integers(0, vocab, size=int(rng.integers(1, 50))) for _ in range(n)]


@pytest.mark.parametrize("vocab", [1000, 65535, 102400])
def test_writer_output_parses_with_numpy(tmp_path, vocab):
    rng = np.random.default_rng(vocab)
    docs = random_docs(rng, 37, vocab)
    dtype = best_token_dtype(vocab)
    prefix = str(tmp_path / "ds")
    with IndexedDatasetWriter(prefix, dtype=dtype) as w:
        for d in docs:
            w.add_document(d)
    version, read_dtype, sizes, pointers, doc_idx, data = numpy_read(prefix)
    assert version == 1
    assert read_dtype == (np.uint16 if vocab < 65536 else np.int32)
    assert sizes.tolist() == [len(d) for d in docs]
    assert pointers.tolist() == (np.cumsum([0] + [len(d) for d in docs[:-1]]) * np.dtype(dtype).itemsize).tolist()
    assert doc_idx.tolist() == list(range(len(docs) + 1))
    assert np.array_equal(data, np.concatenate(docs))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_reader_reads_numpy_written_files(tmp_path, dtype):
    rng = np.random.default_rng(1)
    docs = random_docs(rng, 25, 60000)
    prefix = str(tmp_path / "ds")
    numpy_write(prefix, docs, dtype)
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.dtype(dtype)
    assert len(ds) == 25 and ds.num_documents == 25
    assert ds.num_tokens == sum(len(d) for d in docs)
    for i, d in enumerate(docs):
        assert np.array_equal(ds[i], d)
        assert np.array_equal(ds.get_document(i), d)
    d = docs[7]
    assert np.array_equal(ds.get(7, offset=2, length=len(d) - 3), d[2 : len(d) - 1])
    assert np.array_equal(ds.get(7, offset=3), d[3:])


def test_multi_sequence_documents(tmp_path):
    """Megatron's sentence-split documents: sequences inside documents, document indices between."""
    prefix = str(tmp_path / "ds")
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as w:
        w.add_document([1, 2, 3, 4, 5], lengths=[2, 3])
        w.add_item([6, 7])
        w.add_item([8])
        w.end_document()
        w.add_document([9])
    _, _, sizes, _, doc_idx, data = numpy_read(prefix)
    assert sizes.tolist() == [2, 3, 2, 1, 1]
    assert doc_idx.tolist() == [0, 2, 4, 5]
    ds = IndexedDataset(prefix)
    assert ds.num_documents == 3 and len(ds) == 5
    assert ds.get_document(1).tolist() == [6, 7, 8]
    assert ds.document_lengths().tolist() == [5, 3, 1]
    assert ds[1].tolist() == [3, 4, 5]


def test_flat_bulk_append_matches_per_document(tmp_path):
    rng = np.random.default_rng(2)
    docs = random_docs(rng, 10, 500)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with IndexedDatasetWriter(a, np.uint16) as w:
        for d in docs:
            w.add_document(d)
    with IndexedDatasetWriter(b, np.uint16) as w:
        w.add_documents_flat(np.concatenate(docs[:4]), [len(d) for d in docs[:4]])
        w.add_documents_flat(np.concatenate(docs[4:]), [len(d) for d in docs[4:]])
    for ext in (".bin", ".idx"):
        assert open(a + ext, "rb").read() == open(b + ext, "rb").read()


def test_merge_equals_writing_everything_at_once(tmp_path):
    rng = np.random.default_rng(3)
    parts = [random_docs(rng, n, 70000) for n in (5, 1, 12)]
    prefixes = []
    for i, docs in enumerate(parts):
        prefixes.append(str(tmp_path / f"part{i}"))
        numpy_write(prefixes[-1], docs, np.int32)
    numpy_write(str(tmp_path / "whole"), [d for docs in parts for d in docs], np.int32)
    merged = merge_datasets(prefixes, str(tmp_path / "merged"))
    assert merged.num_documents == 18
    for ext in (".bin", ".idx"):
        assert open(tmp_path / f"merged{ext}", "rb").read() == open(tmp_path / f"whole{ext}", "rb").read()


def test_merge_rejects_mixed_dtypes(tmp_path):
    numpy_write(str(tmp_path / "a"), [np.arange(3)], np.uint16)
    numpy_write(str(tmp_path / "b"), [np.arange(3)], np.int32)
    with pytest.raises(IndexedDatasetError, match="b.idx: dtype int32 differs"):
        merge_datasets([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m.bin") and not os.path.exists(tmp_path / "m.idx")


def test_nothing_under_final_names_until_finalized(tmp_path):
    prefix = str(tmp_path / "ds")
    w = IndexedDatasetWriter(prefix, np.uint16)
    w.add_document([1, 2, 3])
    assert not os.path.exists(prefix + ".bin") and not os.path.exists(prefix + ".idx")
    w.finalize()
    assert IndexedDataset(prefix)[0].tolist() == [1, 2, 3]


def test_failure_inside_writer_leaves_no_files(tmp_path):
    prefix = str(tmp_path / "ds")
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(prefix, np.uint16) as w:
            w.add_document([1, 2])
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_token_ids_that_do_not_fit_are_rejected(tmp_path):
    with IndexedDatasetWriter(str(tmp_path / "ds"), np.uint16) as w:
        with pytest.raises(ValueError, match="do not fit uint16"):
            w.add_document([1, 70000])


def test_corrupt_files_give_clear_errors(tmp_path):
    prefix = str(tmp_path / "ds")
    numpy_write(prefix, [np.arange(10), np.arange(5)], np.uint16)
    idx = open(prefix + ".idx", "rb").read()
    open(prefix + ".idx", "wb").write(idx[:-4])
    with pytest.raises(IndexedDatasetError, match=r"ds\.idx: .*truncated or corrupt"):
        IndexedDataset(prefix)
    open(prefix + ".idx", "wb").write(b"NOTMAGIC!" + idx[9:])
    with pytest.raises(IndexedDatasetError, match="bad magic"):
        IndexedDataset(prefix)
    open(prefix + ".idx", "wb").write(idx)
    open(prefix + ".bin", "wb").write(b"\x00" * 10)
    with pytest.raises(IndexedDatasetError, match=r"ds\.bin: 10 bytes, but the index addresses 30"):
        IndexedDataset(prefix)


def test_reader_does_not_load_the_data_file(tmp_path):
    """A sparse 4 GiB .bin (larger than a 32-bit offset) opens instantly and reads its far end."""
    prefix = str(tmp_path / "big")
    first = 2**31 - 1  # the longest sequence the int32 lengths allow
    with open(prefix + ".bin", "wb") as f:
        f.seek(2 * first)
        f.write(np.array([7, 9], np.uint16).tobytes())
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, 2, 3))
        f.write(np.array([first, 2], np.int32).tobytes())
        f.write(np.array([0, 2 * first], np.int64).tobytes())
        f.write(np.array([0, 1, 2], np.int64).tobytes())
    ds = IndexedDataset(prefix)
    assert ds[1].tolist() == [7, 9]
    assert ds.get(0, offset=first - 1, length=1).tolist() == [0]
    assert ds.num_tokens == first + 2


def test_empty_dataset_round_trips(tmp_path):
    prefix = str(tmp_path / "empty")
    IndexedDatasetWriter(prefix, np.uint16).finalize()
    ds = IndexedDataset(prefix)
    assert len(ds) == 0 and ds.num_documents == 0 and ds.num_tokens == 0
