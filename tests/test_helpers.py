"""The C++ sample-index builder against a slow pure-Python walk over the tokens."""

import numpy as np
import pytest

from megasci.data.helpers import build_sample_idx


def reference_sample_starts(sizes, doc_idx, seq_length, num_samples):
    """Lay the documents out token by token; sample i starts at global token i * seq_length."""
    positions = [(pos, off) for pos, doc in enumerate(doc_idx) for off in range(sizes[doc])]
    return np.array([positions[i * seq_length] for i in range(num_samples + 1)])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_matches_reference_across_document_boundaries(seed, dtype):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, size=30).astype(np.int32)  # zero-length documents included
    sizes[0] = max(sizes[0], 1)
    doc_idx = np.concatenate([rng.permutation(30) for _ in range(3)])  # three shuffled epochs
    seq_length = int(rng.integers(1, 50))
    num_samples = (int(sizes.sum()) * 3 - 1) // seq_length
    got = build_sample_idx(sizes, doc_idx, seq_length, num_samples, dtype=dtype)
    assert got.dtype == dtype and got.shape == (num_samples + 1, 2)
    np.testing.assert_array_equal(got, reference_sample_starts(sizes, doc_idx, seq_length, num_samples))


def test_samples_overlap_by_one_token():
    """Each sample holds seq_length + 1 tokens; the last one is the next sample's first."""
    sizes = np.array([5, 3, 9], np.int32)
    idx = build_sample_idx(sizes, np.array([0, 1, 2]), seq_length=4, num_samples=4)
    tokens = np.arange(17)  # document order laid flat: doc0 = 0..4, doc1 = 5..7, doc2 = 8..16
    starts = np.concatenate([[0], np.cumsum(sizes)])
    flat = [starts[doc] + off for doc, off in idx]
    samples = [tokens[flat[i] : flat[i + 1] + 1] for i in range(4)]
    assert [s.tolist() for s in samples] == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10, 11, 12], [12, 13, 14, 15, 16]]


def test_too_few_tokens_is_an_error_not_a_read_past_the_end():
    with pytest.raises(ValueError, match="need 21 tokens"):
        build_sample_idx(np.array([10, 5], np.int32), np.array([0, 1]), seq_length=10, num_samples=2)


def test_bad_document_id_is_an_error():
    with pytest.raises(IndexError, match=r"doc_idx\[1\] = 7"):
        build_sample_idx(np.array([10, 5], np.int32), np.array([0, 7]), seq_length=2, num_samples=1)


def test_default_dtype_is_int32_when_it_fits():
    assert build_sample_idx(np.array([100], np.int32), np.array([0]), 10, 5).dtype == np.int32


def megatron_walk(sizes, doc_idx, seq_length, num_samples):
    """Megatron-LM's sample-by-sample walk (its helpers.cpp), ported line by line."""
    out = [(0, 0)]
    doc_pos, offset = 0, 0
    for _ in range(num_samples):
        remaining = seq_length + 1
        while remaining != 0:
            left_in_doc = sizes[doc_idx[doc_pos]] - offset
            remaining -= left_in_doc
            if remaining <= 0:
                offset += remaining + left_in_doc - 1
                remaining = 0
            else:
                doc_pos += 1
                offset = 0
        out.append((doc_pos, offset))
    return np.array(out)


@pytest.mark.parametrize("seed", range(20))
def test_matches_megatrons_walk_including_leading_empty_documents(seed):
    rng = np.random.default_rng(100 + seed)
    sizes = rng.integers(0, 30, size=int(rng.integers(1, 25))).astype(np.int32)
    sizes[rng.integers(0, len(sizes))] += 1  # at least one token somewhere
    if seed % 2:
        sizes[0] = 0  # an empty first document: sample 0 is still (0, 0), as in Megatron
    doc_idx = np.concatenate([rng.permutation(len(sizes)) for _ in range(2)])
    seq_length = int(rng.integers(1, 40))
    num_samples = (int(sizes.sum()) * 2 - 1) // seq_length
    got = build_sample_idx(sizes, doc_idx, seq_length, num_samples)
    np.testing.assert_array_equal(got, megatron_walk(sizes, doc_idx, seq_length, num_samples))
