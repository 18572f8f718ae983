"""GPTDataset samples against a slow reference: the split's documents concatenated in order, sliced."""

import json
import os
import time

import numpy as np
import pytest

from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig, split_documents
from megasci.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from megasci.data.sidecar import SidecarWriter


def write_dataset(prefix, docs, labels=None, multi_sequence=False):
    """Documents as given; with multi_sequence, each non-empty document is cut into up to 3 sequences."""
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as writer:
        for doc in docs:
            if multi_sequence and len(doc) > 2:
                cuts = np.sort(rng.choice(np.arange(1, len(doc)), size=2, replace=False))
                writer.add_document(doc, lengths=np.diff([0, *cuts, len(doc)]).tolist())
            else:
                writer.add_document(doc)
    if labels is not None:
        sidecar = SidecarWriter(prefix)
        for label in labels:
            sidecar.add({"section": label})
        sidecar.finalize()
    return prefix


def random_docs(seed, n, max_len=120, vocab=5000):
    """Random lengths, with empty documents and documents longer than a sample mixed in."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab, size=int(rng.integers(0, max_len))) for _ in range(n)]
    docs[0] = np.array([], dtype=np.int64)
    docs[n // 2] = rng.integers(0, vocab, size=max_len * 3)
    return docs


def reference_samples(ds):
    """Every sample, the slow way: tokens of the document order concatenated, then sliced."""
    reader = IndexedDataset(ds.config.prefix)
    stream = np.concatenate([reader.get_document(int(d)) for d in ds.document_order] + [np.zeros(0, np.uint16)])
    length = ds.config.seq_length
    extra = 1 if ds.config.add_extra_token else 0
    return [stream[s * length : s * length + length + extra].astype(np.int64) for s in ds.shuffle_index]


def assert_matches_reference(ds):
    expected = reference_samples(ds)
    assert len(ds) == len(expected)
    for i, want in enumerate(expected):
        got = ds[i]
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want, err_msg=f"sample {i}")


@pytest.fixture
def corpus(tmp_path):
    return write_dataset(str(tmp_path / "corpus"), random_docs(1, 200), multi_sequence=True)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
@pytest.mark.parametrize("seq_length,num_samples", [(16, 50), (7, 300), (64, 1)])
def test_every_sample_matches_reference(corpus, split, seq_length, num_samples):
    config = GPTDatasetConfig(
        corpus, split=split, split_fractions=(0.8, 0.1, 0.1), seq_length=seq_length, num_samples=num_samples, seed=3
    )
    assert_matches_reference(GPTDataset(config))


def test_without_extra_token_samples_tile_the_stream(corpus):
    ds = GPTDataset(GPTDatasetConfig(corpus, seq_length=10, num_samples=100, add_extra_token=False))
    assert all(len(ds[i]) == 10 for i in range(len(ds)))
    assert_matches_reference(ds)


def test_one_document_dataset(tmp_path):
    prefix = write_dataset(str(tmp_path / "one"), [np.arange(1, 30)])
    ds = GPTDataset(GPTDatasetConfig(prefix, split_fractions=(1, 0, 0), seq_length=8, num_samples=20))
    assert ds.num_epochs == 6  # 20 * 8 + 1 = 161 tokens need 6 passes over 29
    np.testing.assert_array_equal(ds.document_order, np.zeros(6))
    assert_matches_reference(ds)


def test_splits_are_disjoint_cover_everything_and_follow_the_fractions(corpus):
    parts = split_documents(1000, (0.8, 0.15, 0.05), seed=7)
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [800, 150, 50]
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(1000))
    assert not np.array_equal(parts["valid"], split_documents(1000, (0.8, 0.15, 0.05), seed=8)["valid"])

    seen = []
    for split in ("train", "valid", "test"):
        ds = GPTDataset(GPTDatasetConfig(corpus, split=split, split_fractions=(0.7, 0.2, 0.1), num_samples=0))
        seen.append(ds.split_documents)
        np.testing.assert_array_equal(ds.split_documents, split_documents(200, (0.7, 0.2, 0.1), 1234)[split])
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(200))


def test_deterministic_by_seed(corpus, tmp_path):
    def samples(seed, cache):
        ds = GPTDataset(GPTDatasetConfig(corpus, seq_length=12, num_samples=40, seed=seed, cache_dir=str(cache)))
        return np.stack([ds[i] for i in range(len(ds))])

    first = samples(5, tmp_path / "a")
    np.testing.assert_array_equal(first, samples(5, tmp_path / "b"))  # rebuilt from scratch: identical
    assert not np.array_equal(first, samples(6, tmp_path / "a"))


def test_multi_epoch_order_holds_each_document_once_per_epoch(corpus):
    config = GPTDatasetConfig(corpus, split="valid", split_fractions=(0.5, 0.3, 0.2), seq_length=32, num_samples=200)
    ds = GPTDataset(config)
    documents = ds.split_documents
    tokens_per_epoch = sum(len(IndexedDataset(corpus).get_document(int(d))) for d in documents)
    expected_epochs = -(-(200 * 32 + 1) // tokens_per_epoch)
    assert ds.num_epochs == expected_epochs > 1
    epochs = np.asarray(ds.document_order).reshape(ds.num_epochs, len(documents))
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), documents)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    assert_matches_reference(ds)


def test_shuffle_index_is_a_permutation(corpus):
    ds = GPTDataset(GPTDatasetConfig(corpus, seq_length=8, num_samples=500))
    assert np.array_equal(np.sort(ds.shuffle_index), np.arange(500))
    assert not np.array_equal(ds.shuffle_index, np.arange(500))


def test_cache_is_reused_memory_mapped_and_described(corpus):
    config = GPTDatasetConfig(corpus, seq_length=16, num_samples=64)
    first = GPTDataset(config)
    assert first.built

    def must_not_build(*args):
        raise AssertionError("the cache should have been reused")

    second = GPTDataset(config, builder=must_not_build)
    assert not second.built
    assert isinstance(second.sample_index, np.memmap)
    np.testing.assert_array_equal(first.shuffle_index, second.shuffle_index)
    assert os.path.dirname(first._cache_path(".json")) == corpus + "_cache"
    names = sorted(os.listdir(corpus + "_cache"))
    assert names == sorted(
        f"{first.hash}{suffix}" for suffix in ("-doc_idx.npy", "-sample_idx.npy", "-shuffle_idx.npy", ".json")
    )
    with open(first._cache_path(".json")) as f:
        described = json.load(f)
    assert described["num_samples"] == 64 and described["prefix"] == os.path.abspath(corpus)


CHANGED_VALUES = {"num_samples": 65, "seq_length": 17, "seed": 2, "split": "test", "split_fractions": (0.8, 0.1, 0.1)}


@pytest.mark.parametrize("change", sorted(CHANGED_VALUES))
def test_any_parameter_change_gives_a_new_cache(corpus, change):
    base = dict(seq_length=16, num_samples=64, seed=1, split="train", split_fractions=(0.9, 0.05, 0.05))
    changed = dict(base, **{change: CHANGED_VALUES[change]})
    assert GPTDataset(GPTDatasetConfig(corpus, **base)).hash != GPTDataset(GPTDatasetConfig(corpus, **changed)).hash


def test_rewritten_dataset_invalidates_the_cache(tmp_path):
    prefix = write_dataset(str(tmp_path / "c"), random_docs(1, 50))
    config = GPTDatasetConfig(prefix, seq_length=8, num_samples=30)
    old = GPTDataset(config)
    time.sleep(0.01)
    write_dataset(prefix, random_docs(2, 50))
    new = GPTDataset(config)
    assert new.built and new.hash != old.hash
    assert_matches_reference(new)


def test_document_filter_selects_labelled_documents(tmp_path):
    labels = ["abstract", "introduction", "method", "proof", "conclusion"] * 40
    prefix = write_dataset(str(tmp_path / "sections"), random_docs(3, 200), labels=labels)
    allowed = {"abstract", "introduction"}
    config = GPTDatasetConfig(
        prefix, split_fractions=(0.9, 0.05, 0.05), seq_length=16, num_samples=80, document_filter={"section": allowed}
    )
    ds = GPTDataset(config)
    train = split_documents(200, (0.9, 0.05, 0.05), 1234)["train"]
    expected = [d for d in train if labels[d] in allowed]
    np.testing.assert_array_equal(ds.split_documents, expected)
    assert set(np.asarray(ds.document_order).tolist()) <= set(expected)
    assert_matches_reference(ds)
    unfiltered = GPTDataset(GPTDatasetConfig(prefix, split_fractions=(0.9, 0.05, 0.05), seq_length=16, num_samples=80))
    assert unfiltered.hash != ds.hash


def test_empty_split_cannot_be_sampled(tmp_path):
    prefix = write_dataset(str(tmp_path / "tiny"), [np.arange(5), np.arange(5)])
    with pytest.raises(ValueError, match="no tokens"):
        GPTDataset(GPTDatasetConfig(prefix, split="test", split_fractions=(1, 0, 0), num_samples=3))


def test_a_dataset_that_may_not_build_only_loads(corpus):
    """may_build=False: a missing cache is an error, not a build; once built, it loads the same samples."""
    config = GPTDatasetConfig(corpus, seq_length=16, num_samples=50)
    with pytest.raises(RuntimeError, match="was not built"):
        GPTDataset(config, may_build=False)
    assert not os.path.exists(corpus + "_cache") or os.listdir(corpus + "_cache") == []
    built = GPTDataset(config)
    loaded = GPTDataset(config, may_build=False)
    assert built.built and not loaded.built
    np.testing.assert_array_equal(np.stack([loaded[i] for i in range(50)]), np.stack([built[i] for i in range(50)]))


# --- samples with their document pieces and loss masks ------------------------------------------------


def reference_pieces(ds):
    """Per sample, the (document id, token offset) of each token in the document-order stream, the slow way."""
    reader = IndexedDataset(ds.config.prefix)
    owner = np.concatenate([np.full(len(reader.get_document(int(d))), k) for k, d in enumerate(ds.document_order)])
    length = ds.config.seq_length
    return [owner[s * length : s * length + length + 1] for s in ds.shuffle_index]


def test_sample_pieces_are_where_documents_start(corpus):
    ds = GPTDataset(GPTDatasetConfig(prefix=corpus, seq_length=37, num_samples=60, cache_dir=os.path.dirname(corpus)))
    for i, owners in enumerate(reference_pieces(ds)):
        sample = ds.sample(i)
        np.testing.assert_array_equal(sample.tokens, ds[i])
        expected = np.diff(np.flatnonzero(np.diff(np.concatenate([[-1], owners, [-1]])) != 0))
        np.testing.assert_array_equal(sample.document_lengths, expected, err_msg=f"sample {i}")
        assert sample.loss_mask is None and not ds.has_loss_mask


def test_an_sft_prefix_carries_its_loss_mask(tmp_path):
    """`<p>_text_document` with `<p>_loss_mask_document` beside it: each sample's mask is its tokens' mask."""
    docs = random_docs(3, 40, vocab=200)
    tokens = write_dataset(str(tmp_path / "chat_text_document"), docs)
    masks = [(d % 3 == 0).astype(np.uint8) for d in docs]  # a mask that is a function of the token
    with IndexedDatasetWriter(str(tmp_path / "chat_loss_mask_document"), dtype=np.uint8) as writer:
        for mask in masks:
            writer.add_document(mask)
    ds = GPTDataset(GPTDatasetConfig(prefix=tokens, seq_length=25, num_samples=30, cache_dir=str(tmp_path / "c")))
    assert ds.has_loss_mask
    for i in range(len(ds)):
        sample = ds.sample(i)
        np.testing.assert_array_equal(sample.loss_mask, (sample.tokens % 3 == 0).astype(np.uint8))
    with IndexedDatasetWriter(str(tmp_path / "chat_loss_mask_document"), dtype=np.uint8) as writer:
        writer.add_document(np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="lengths"):
        GPTDataset(GPTDatasetConfig(prefix=tokens, seq_length=25, num_samples=30, cache_dir=str(tmp_path / "c")))
