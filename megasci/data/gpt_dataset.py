"""GPT pretraining samples over a Megatron `.bin/.idx` dataset, with cached sampling indices.

A sample is `seq_length + 1` token ids (inputs plus the shifted labels). Samples are cut from the
token stream made by reading the split's documents in *document order*, and they cross document
boundaries freely. Three index arrays define the dataset:

- **split** (`split_documents`): a permutation of all document ids, seeded by `split_seed`
  (default `seed`), is cut at the cumulative, normalised `split_fractions` (rounded to whole
  documents): train is the first part, valid the second, test the last. Every document lands in
  exactly one split. The split is computed over *all* documents before `document_filter` is
  applied, so curriculum stages that filter the same `.bin` differently never move a document
  between train and valid/test. `min_document_tokens` then keeps only documents at least that
  long (the long-context stage's way to upsample long papers); the filtered ids are cached as
  `<hash>-documents.npy` (`select_documents`), so neither filter is recomputed per process.
- **document order** (`document_order`): the split's documents (sorted ids) shuffled once per
  epoch, seeded by `(seed, epoch)`, concatenated over the fewest epochs whose tokens hold
  `num_samples` samples (`num_samples * seq_length + 1` tokens). Each document appears once per
  epoch. A "document" is a Megatron document, i.e. all its sequences: they are contiguous in
  `.bin`, so a document is the token range starting at its first sequence's pointer.
- **sample index** (`sample_index`, from `helpers.build_sample_idx`): row s is the (position in
  document order, token offset) where sample s starts; sample s ends where sample s + 1 starts, so
  sample s is tokens `[s * seq_length, s * seq_length + seq_length + 1)` of the stream.
- **shuffle index** (`shuffle_index`): one seeded permutation of all `num_samples` sample ids.
  Simpler than Megatron, which shuffles full epochs and a partial last epoch separately.

**Packed documents.** `ds[i]` is the token array alone, as it always was. `ds.sample(i)` is a
`Sample`: the same tokens, the lengths of the document pieces they were cut from (the sample index
already knows where each document starts), and, for an SFT prefix (one with a loss-mask dataset
beside it, as `tools/preprocess_sft.py` writes), the loss mask of the same tokens. The loader turns
these into positions, segment ids and ignored labels (document masking, SFT loss).

The arrays are built once and saved as `.npy` in `cache_dir` under a sha256 of everything they
depend on: the dataset's absolute path, file sizes and modification times, the sidecar's too when
filtering, and every sampling parameter. Changing any input changes the name, so a stale cache is
never read. Loading memory-maps them. The dataset does no distributed coordination (data sits
below `megasci.distributed`): with several processes the caller builds first in one of them and the
others construct with `may_build=False`, loading what it wrote (`megasci.training.data` does this
on rank 0, so the cache directory must be on a filesystem all ranks share).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from megasci.data import helpers
from megasci.data.commit import read_commit
from megasci.data.indexed_dataset import IndexedDataset
from megasci.data.naming import (
    data_file_path,
    index_file_path,
    sft_output_prefix_of,
    sft_output_prefixes,
    sft_report_path,
    sidecar_path,
)
from megasci.data.sidecar import read_sidecar
from megasci.utils.io import atomic_output

CACHE_FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
_INDEX_NAMES = ("doc_idx", "sample_idx", "shuffle_idx")
# Salts that give the split, document and sample shuffles independent random streams.
_SPLIT_STREAM, _DOCUMENT_STREAM, _SAMPLE_STREAM = 1, 2, 3


@dataclasses.dataclass
class GPTDatasetConfig:
    """Everything that decides which samples a `GPTDataset` yields.

    `document_filter` maps sidecar keys to allowed values, e.g. `{"section": {"abstract",
    "introduction"}}`: only documents whose `<prefix>.docs.jsonl` record has, for every key, one of
    the allowed values are sampled, so curriculum stages select sections from one `.bin`.
    """

    prefix: str
    split: str = "train"
    split_fractions: tuple[float, float, float] = (0.98, 0.01, 0.01)
    seq_length: int = 2048
    num_samples: int = 0
    seed: int = 1234
    cache_dir: str | None = None  # default: `<prefix>_cache/`
    document_filter: dict[str, set] | None = None
    add_extra_token: bool = True  # samples of seq_length + 1 tokens; False gives seq_length
    split_seed: int | None = None  # default: seed; fix it to keep held-out documents across runs
    min_document_tokens: int = 0  # keep only documents of at least this many tokens (0: all)

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        fractions = tuple(float(f) for f in self.split_fractions)
        if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
            raise ValueError(f"split_fractions must be 3 non-negative numbers with a positive sum, got {fractions}")
        self.split_fractions = fractions
        if self.min_document_tokens < 0:
            raise ValueError(f"min_document_tokens must be >= 0, got {self.min_document_tokens}")
        if self.seq_length <= 0 or self.num_samples < 0:
            raise ValueError(f"need seq_length > 0 and num_samples >= 0, got {self.seq_length}, {self.num_samples}")
        if self.cache_dir is None:
            self.cache_dir = f"{os.fspath(self.prefix)}_cache"

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed


@dataclasses.dataclass
class Sample:
    """One sample with what document masking and the SFT loss need to know about it."""

    tokens: np.ndarray  # int64 [seq_length + 1]
    document_lengths: np.ndarray  # int64: the document pieces the tokens are cut from, in order; sums to len(tokens)
    loss_mask: np.ndarray | None = None  # uint8 like tokens, 1 where the token is a scored target; None: all are


def loss_mask_prefix(prefix: str) -> str | None:
    """The loss-mask dataset written beside an SFT token dataset (`sft_output_prefixes`), or None for
    a dataset that is not SFT.

    A dataset is SFT when its name says so and its loss mask exists, or when the SFT run recorded it:
    the tokens' commit record names the mask, or (datasets from before commit records) the run's
    report `<out>_sft.json` is beside it. An SFT dataset whose mask is missing is an error: without
    it every token, prompts and template markers included, would silently become a target.
    """
    prefix = os.fspath(prefix)
    out = sft_output_prefix_of(prefix)
    if out is None:
        return None
    candidate = sft_output_prefixes(out)["loss_mask"]
    if os.path.isfile(index_file_path(candidate)):
        return candidate
    record = read_commit(prefix) or {}
    if record.get("loss_mask") or (not record and os.path.isfile(sft_report_path(out))):
        said_by = "its commit record" if record else sft_report_path(out)
        raise FileNotFoundError(
            f"{index_file_path(candidate)}: the loss mask of SFT dataset {prefix} is missing ({said_by} says it "
            "was written with one); without it every token would be scored. Restore it or preprocess again"
        )
    return None


def split_documents(num_documents: int, fractions, seed: int) -> dict[str, np.ndarray]:
    """Sorted document ids of each split: a seeded permutation cut at the cumulative fractions."""
    fractions = np.asarray(fractions, dtype=np.float64)
    bounds = np.round(np.cumsum(fractions) / fractions.sum() * num_documents).astype(np.int64)
    bounds = np.concatenate([[0], bounds[:-1], [num_documents]])
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(num_documents)
    return {name: np.sort(order[bounds[k] : bounds[k + 1]]) for k, name in enumerate(SPLITS)}


def filter_documents(prefix: str, documents: np.ndarray, document_filter: dict[str, set]) -> np.ndarray:
    records = read_sidecar(prefix)
    keep = [
        d for d in documents.tolist() if all(records[d].get(key) in allowed for key, allowed in document_filter.items())
    ]
    return np.asarray(keep, dtype=np.int64)


def _file_identity(path: str) -> dict[str, int]:
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_description(config: GPTDatasetConfig) -> dict[str, Any]:
    """The canonical inputs of the index arrays; their sha256 names the cache files.

    `add_extra_token` and `cache_dir` are left out: they do not change the arrays.
    """
    prefix = os.path.abspath(os.fspath(config.prefix))
    files = {"bin": _file_identity(data_file_path(prefix)), "idx": _file_identity(index_file_path(prefix))}
    document_filter = None
    if config.document_filter is not None:
        files["sidecar"] = _file_identity(sidecar_path(prefix))
        document_filter = {
            key: sorted(json.dumps(v, sort_keys=True) for v in allowed)
            for key, allowed in sorted(config.document_filter.items())
        }
    description = {
        "format_version": CACHE_FORMAT_VERSION,
        "prefix": prefix,
        "files": files,
        "split": config.split,
        "split_fractions": list(config.split_fractions),
        "split_seed": config.effective_split_seed,
        "seed": config.seed,
        "seq_length": config.seq_length,
        "num_samples": config.num_samples,
        "document_filter": document_filter,
    }
    if config.min_document_tokens:  # only when set, so caches built before the length filter keep their names
        description["min_document_tokens"] = config.min_document_tokens
    return description


def cache_hash(description: dict[str, Any]) -> str:
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _selection_description(config: GPTDatasetConfig) -> dict[str, Any]:
    """What the split's filtered document ids depend on (no sampling parameters): their cache key."""
    description = cache_description(config)
    for key in ("seed", "seq_length", "num_samples"):
        description.pop(key)
    description["split_seed"] = config.effective_split_seed
    return description


def select_documents(config: GPTDatasetConfig, dataset: IndexedDataset | None = None) -> np.ndarray:
    """The split's document ids after the filters: exactly the documents a `GPTDataset` with `config` samples.

    With a filter (sidecar or length), the ids are cached in `cache_dir` under the sha256 of what
    they depend on, written atomically, so every stage, length and process reuses one selection."""
    if dataset is None:
        dataset = IndexedDataset(config.prefix)
    filtered = config.document_filter is not None or config.min_document_tokens > 0
    path = (
        os.path.join(config.cache_dir, cache_hash(_selection_description(config)) + "-documents.npy")
        if filtered
        else None
    )
    if path is not None and os.path.isfile(path):
        return np.load(path)
    documents = split_documents(dataset.num_documents, config.split_fractions, config.effective_split_seed)[
        config.split
    ]
    if config.document_filter is not None:
        documents = filter_documents(config.prefix, documents, config.document_filter)
    if config.min_document_tokens:
        documents = documents[dataset.document_lengths()[documents] >= config.min_document_tokens]
    if path is not None:
        os.makedirs(config.cache_dir, exist_ok=True)
        with atomic_output(path) as f:
            np.save(f, np.asarray(documents, dtype=np.int64))
    return documents


def build_indices(config: GPTDatasetConfig, dataset: IndexedDataset) -> tuple[dict[str, np.ndarray], dict]:
    """Document order, sample index and shuffle index for `config`, plus facts for the cache's JSON."""
    documents = select_documents(config, dataset)
    lengths = dataset.document_lengths()
    if len(lengths) and lengths.max() >= 2**31:
        raise ValueError(f"{config.prefix}: a document of {int(lengths.max())} tokens is too long to sample")
    tokens_per_epoch = int(lengths[documents].sum())
    tokens_needed = config.num_samples * config.seq_length + 1
    if config.num_samples == 0:
        num_epochs = 1
    elif tokens_per_epoch == 0:
        raise ValueError(
            f"{config.prefix}: the {config.split} split has no tokens "
            f"({len(documents)} documents after filtering); cannot draw {config.num_samples} samples"
        )
    else:
        num_epochs = -(-tokens_needed // tokens_per_epoch)
    doc_idx = np.concatenate(
        [
            np.random.default_rng([config.seed, _DOCUMENT_STREAM, epoch]).permutation(documents)
            for epoch in range(num_epochs)
        ]
    ).astype(np.int64)
    sample_idx = helpers.build_sample_idx(lengths.astype(np.int32), doc_idx, config.seq_length, config.num_samples)
    shuffle_dtype = np.int32 if config.num_samples < 2**31 else np.int64
    shuffle_idx = np.random.default_rng([config.seed, _SAMPLE_STREAM]).permutation(config.num_samples)
    facts = {
        "num_epochs": num_epochs,
        "tokens_per_epoch": tokens_per_epoch,
        "split_documents": len(documents),
        "dataset_documents": dataset.num_documents,
    }
    return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle_idx.astype(shuffle_dtype)}, facts


def split_tokens(config: GPTDatasetConfig) -> int:
    """Tokens of the split after the filter: of the documents a `GPTDataset` with `config` samples."""
    dataset = IndexedDataset(config.prefix)
    return int(dataset.document_lengths()[select_documents(config, dataset)].sum())


def check_loss_mask(tokens: IndexedDataset, mask: IndexedDataset) -> None:
    """A loss mask must be the one written with its tokens: same document lengths and, when the SFT
    run committed them as one write, the same write id (another run's mask can match in lengths)."""
    if not np.array_equal(mask.document_lengths(), tokens.document_lengths()):
        raise ValueError(f"{mask.prefix}: the loss mask's documents do not have the lengths of {tokens.prefix}'s")
    written_with = (tokens.commit or {}).get("loss_mask") and tokens.commit["write_id"]
    mask_write = (mask.commit or {}).get("write_id")
    if written_with and mask_write != written_with:
        raise ValueError(
            f"{mask.prefix}: the loss mask comes from write {mask_write}, its tokens {tokens.prefix} "
            f"from write {written_with}: they are not one SFT run's output"
        )


def _piece_spans(pieces) -> Iterator[tuple[int, int, int]]:
    """(document, first, end) positions of each piece within the sample's tokens."""
    at = 0
    for document, start, stop in pieces:
        yield document, at, at + stop - start
        at += stop - start


class GPTDataset:
    """Map-style dataset: `ds[i]` is sample i as an int64 array; `len(ds)` is `num_samples`.

    `may_build=False` only loads: a missing cache is an error instead of a build, for processes
    that must read what another one built. With `vocab_size` (the model's embedding rows), a token
    id outside [0, vocab_size) is an error naming the dataset and the id before it can reach the
    embedding: at once when the commit record shows one, else in the first sample that holds one.
    """

    def __init__(
        self,
        config: GPTDatasetConfig,
        builder: Callable = build_indices,
        may_build: bool = True,
        vocab_size: int | None = None,
    ):
        self.config = config
        self.vocab_size = vocab_size
        self.dataset = IndexedDataset(config.prefix)
        if vocab_size is not None:
            self.dataset.check_token_ids(vocab_size)
        self.description = cache_description(config)
        self.hash = cache_hash(self.description)
        self.built = False  # whether this process built the indices (False: loaded from the cache)
        if may_build and not self._cache_complete():
            self._build_and_save(builder)
        if not self._cache_complete():
            raise RuntimeError(
                f"{self.config.cache_dir}: the index cache {self.hash} was not built "
                f"(the process that builds it failed, or this directory is not the one it wrote)"
            )
        self.document_order, self.sample_index, self.shuffle_index = (
            np.load(self._cache_path(f"-{name}.npy"), mmap_mode="r") for name in _INDEX_NAMES
        )
        with open(self._cache_path(".json"), encoding="utf-8") as f:
            self.num_epochs = json.load(f)["num_epochs"]
        self._sample_tokens = config.seq_length + (1 if config.add_extra_token else 0)
        mask_prefix = loss_mask_prefix(config.prefix)
        self.loss_mask = None if mask_prefix is None else IndexedDataset(mask_prefix)
        if self.loss_mask is not None:
            check_loss_mask(self.dataset, self.loss_mask)

    def _cache_path(self, suffix: str) -> str:
        return os.path.join(self.config.cache_dir, self.hash + suffix)

    def _cache_complete(self) -> bool:
        return all(os.path.isfile(self._cache_path(f"-{name}.npy")) for name in _INDEX_NAMES) and os.path.isfile(
            self._cache_path(".json")
        )

    def _build_and_save(self, builder: Callable) -> None:
        """Each file is written under a temp name and renamed; the JSON comes last and marks completion."""
        started = time.time()
        indices, facts = builder(self.config, self.dataset)
        os.makedirs(self.config.cache_dir, exist_ok=True)
        for name in _INDEX_NAMES:
            with atomic_output(self._cache_path(f"-{name}.npy")) as f:
                np.save(f, indices[name])
        with atomic_output(self._cache_path(".json"), "w") as f:
            json.dump({**self.description, **facts, "build_seconds": round(time.time() - started, 3)}, f, indent=2)
        self.built = True

    @property
    def split_documents(self) -> np.ndarray:
        """The split's document ids (after filtering), sorted: the first epoch of the order, sorted."""
        per_epoch = len(self.document_order) // max(self.num_epochs, 1)
        return np.sort(np.asarray(self.document_order[:per_epoch]))

    def __len__(self) -> int:
        return self.config.num_samples

    @property
    def has_loss_mask(self) -> bool:
        return self.loss_mask is not None

    def _pieces(self, i: int) -> list[tuple[int, int, int]]:
        """(document, start, stop) of each document piece sample i is cut from, in order (none empty)."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        sample = int(self.shuffle_index[i])
        first_pos, first_offset = (int(v) for v in self.sample_index[sample])
        last_pos, last_offset = (int(v) for v in self.sample_index[sample + 1])
        if self.config.add_extra_token:
            last_offset += 1  # sample s ends on the token where sample s + 1 starts
        pieces = []
        for pos in range(first_pos, last_pos + 1):
            document = int(self.document_order[pos])
            start = first_offset if pos == first_pos else 0
            stop = last_offset if pos == last_pos else len(self.dataset.get_document(document))
            if stop > start:
                pieces.append((document, start, stop))
        return pieces

    @staticmethod
    def _gather(source: IndexedDataset, pieces) -> np.ndarray:
        return np.concatenate([source.get_document(d)[start:stop] for d, start, stop in pieces])

    def _tokens(self, i: int, pieces) -> np.ndarray:
        tokens = self._gather(self.dataset, pieces).astype(np.int64)
        assert len(tokens) == self._sample_tokens, (len(tokens), self._sample_tokens)
        if self.vocab_size is not None and len(tokens) and (tokens.max() >= self.vocab_size or tokens.min() < 0):
            at = int(np.flatnonzero((tokens >= self.vocab_size) | (tokens < 0))[0])
            document = next(d for d, start, stop in _piece_spans(pieces) if start <= at < stop)
            raise ValueError(
                f"{data_file_path(self.config.prefix)}: token id {int(tokens[at])} (sample {i}, "
                f"document {document}) is outside the model's vocabulary of {self.vocab_size}; the "
                "dataset was tokenized with another tokenizer, or the model's vocab_size is too small"
            )
        return tokens

    def __getitem__(self, i: int) -> np.ndarray:
        return self._tokens(i, self._pieces(i))

    def sample(self, i: int) -> Sample:
        """Sample i with its document pieces and (SFT prefixes) loss mask; its tokens are `self[i]`."""
        pieces = self._pieces(i)
        tokens = self._tokens(i, pieces)
        lengths = np.asarray([stop - start for _, start, stop in pieces], dtype=np.int64)
        mask = None if self.loss_mask is None else self._gather(self.loss_mask, pieces).astype(np.uint8)
        return Sample(tokens=tokens, document_lengths=lengths, loss_mask=mask)
