"""Exact and near-duplicate removal across papers (arXiv holds re-submissions, cross-listed copies
and conference/journal versions of one text under different ids).

In every group of duplicates the member with the highest caller-given ``priority`` survives (the
builder passes e.g. ``(year, length)``: newest, then longest); ties go to the smallest id, so the
result does not depend on insertion order.

Near duplicates: MinHash over word 5-grams (lowercased, math kept: formulas are a large part of
what makes two versions of a paper the same, and dropping them would make papers that share only
boilerplate prose look alike). 5-grams are the usual choice for documents (shorter n-grams make
unrelated papers of one field share many shingles; longer ones let a few edits break too many).
128 permutations give a Jaccard estimate with standard error ≤ 0.045, and 0.8 is the usual
"same document, light edits" threshold (a version with fixed typos stays above it; two papers by
one group on one topic stay far below it). LSH candidates are verified by the estimated Jaccard.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Hashable
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH


def exact_key(text: str) -> str:
    """sha256 hex of ``text`` in NFC with whitespace runs collapsed to one space and ends stripped
    (`str.split` and `\\s` know the same whitespace; the split is 4x faster than the regex)."""
    canonical = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _winner(members: list[tuple[Any, str]]) -> str:
    """Id of the highest ``(priority, id)`` member; ties on priority go to the smallest id."""
    return max(sorted(members, key=lambda member: member[1]), key=lambda member: member[0])[1]


class ExactDeduplicator:
    """Groups documents by ``exact_key``; keeps the highest priority in each group."""

    def __init__(self) -> None:
        self._groups: dict[str, list[tuple[Any, str]]] = {}

    def add(self, doc_id: str, text: str, priority: Any = 0) -> str:
        """Register a document; returns its key."""
        key = exact_key(text)
        self.add_key(doc_id, key, priority)
        return key

    def add_key(self, doc_id: str, key: str, priority: Any = 0) -> None:
        """Register a document by a key computed elsewhere (in a worker, next to the text)."""
        self._groups.setdefault(key, []).append((priority, doc_id))

    def dropped(self) -> dict[str, str]:
        """``{dropped id: id kept in its place}``."""
        out = {}
        for members in self._groups.values():
            kept = _winner(members)
            out.update({doc_id: kept for _, doc_id in members if doc_id != kept})
        return out

    def keep_set(self) -> set[str]:
        return {_winner(members) for members in self._groups.values()}


def shingles(text: str, width: int) -> set[bytes]:
    """UTF-8 word ``width``-grams of the lowercased text (a shorter text is one shingle)."""
    words = text.lower().split()
    if len(words) <= width:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + width]).encode("utf-8") for i in range(len(words) - width + 1)}


# A shingle's hash is defined word by word so that a paper's shingles hash in a few numpy passes
# (a SHA-1 per shingle, datasketch's default, was 80% of a paper's MinHash time): each distinct word
# gets a 64-bit BLAKE2b, a shingle folds its words' hashes as a polynomial mod 2^64, splitmix64's
# finalizer mixes the fold, and its high 32 bits go to datasketch's affine32 permutations. Changing
# any of this changes every signature: `SIGNATURE_SCHEME` names it, and the builder will not
# compare signatures made under another name.
SIGNATURE_SCHEME = "word-blake2b64-poly-splitmix64-hi32+affine32"
_FOLD = 0x9E3779B97F4A7C15
_MIX = (30, 0xBF58476D1CE4E5B9, 27, 0x94D049BB133111EB, 31)  # splitmix64's finalizer
_FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)  # MurmurHash3's, which datasketch's affine32 applies first
_MASK64 = (1 << 64) - 1
_BLOCK = 4096  # shingles per permutation pass: a 4096 x num_perm uint32 block, 2 MiB at 128


def _word_hash(word: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(word, digest_size=8).digest(), "little")


def shingle_hash(shingle: bytes) -> int:
    """The 32-bit hash of one shingle of `shingles` (its words are the pieces between spaces), one
    at a time: the definition that `shingle_hashes` computes for a whole text at once."""
    words = shingle.split(b" ")
    value = _word_hash(words[0])
    for word in words[1:]:
        value = (value * _FOLD + _word_hash(word)) & _MASK64
    shift1, mult1, shift2, mult2, shift3 = _MIX
    value ^= value >> shift1
    value = (value * mult1) & _MASK64
    value ^= value >> shift2
    value = (value * mult2) & _MASK64
    value ^= value >> shift3
    return value >> 32


def _xorshift_multiply(h: np.ndarray, constants: tuple[int, int, int, int, int]) -> np.ndarray:
    """An xorshift-multiply finalizer (`_MIX` or `_FMIX32`) on `h` in place, wrapping in its dtype."""
    shift1, mult1, shift2, mult2, shift3 = (h.dtype.type(c) for c in constants)
    h ^= h >> shift1
    h *= mult1
    h ^= h >> shift2
    h *= mult2
    h ^= h >> shift3
    return h


def shingle_hashes(text: str, width: int) -> np.ndarray:
    """`shingle_hash` of every shingle of `shingles(text, width)` as uint32, repeats included (they
    do not change a minimum): one BLAKE2b per distinct word, the rest in numpy."""
    words = text.lower().split()
    if len(words) <= width:
        return np.array([shingle_hash(" ".join(words).encode("utf-8"))], dtype=np.uint32)
    distinct = {word: i for i, word in enumerate(dict.fromkeys(words))}
    digests = b"".join([hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest() for word in distinct])
    positions = np.fromiter(map(distinct.__getitem__, words), dtype=np.intp, count=len(words))
    word_hashes = np.frombuffer(digests, dtype="<u8")[positions]
    count = len(words) - width + 1
    value = word_hashes[:count].copy()
    for offset in range(1, width):
        value *= np.uint64(_FOLD)
        value += word_hashes[offset : offset + count]
    return (_xorshift_multiply(value, _MIX) >> np.uint64(32)).astype(np.uint32)


def affine32_minhash(values: np.ndarray, permutations: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """What datasketch's affine32 `update_batch` gives a fresh sketch for these hash values (fmix32,
    then a*h + b mod 2^32 per permutation, then the minimum), on a uint32 array in blocks instead
    of one Python call per value."""
    h = _xorshift_multiply(values.astype(np.uint32), _FMIX32)
    a, b = (np.asarray(p, dtype=np.uint32) for p in permutations)
    result = np.full(len(a), np.iinfo(np.uint32).max, dtype=np.uint32)
    for start in range(0, len(h), _BLOCK):
        block = h[start : start + _BLOCK, None] * a
        block += b
        np.minimum(result, block.min(axis=0), out=result)
    return result


class NearDuplicateIndex:
    """MinHash-LSH index; clusters are connected components of verified near-duplicate pairs."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_words: int = 5, seed: int = 1):
        self.threshold = threshold
        self.shingle_words = shingle_words
        self._template = MinHash(num_perm=num_perm, seed=seed, scheme="affine32")
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._minhashes: dict[str, MinHash] = {}
        self._priority: dict[str, Any] = {}
        self._parent: dict[str, str] = {}

    def signature(self, text: str) -> list[int]:
        """The MinHash values of a text (`SIGNATURE_SCHEME`): what a worker computes so the index never
        needs the text. Equal to datasketch's `update_batch` with `hashfunc=shingle_hash` over
        `shingles(text)`, made without a Python call per shingle."""
        return affine32_minhash(shingle_hashes(text, self.shingle_words), self._template.permutations).tolist()

    def add(self, doc_id: str, text: str, priority: Any = 0) -> None:
        """Index a document and link it to every earlier one whose estimated Jaccard ≥ threshold."""
        self.add_signature(doc_id, self.signature(text), priority)

    def add_signature(self, doc_id: str, signature: list[int] | np.ndarray, priority: Any = 0) -> None:
        """`add` for a signature made by `signature` with the same settings."""
        if doc_id in self._minhashes:
            raise ValueError(f"duplicate document id {doc_id!r}")
        # The template's permutations, shared: made afresh they cost ~0.3 ms and 1 KiB a paper.
        sketch = MinHash(
            seed=self._template.seed,
            hashvalues=np.asarray(signature, dtype=np.uint32),
            permutations=self._template.permutations,
            scheme=self._template.scheme,
        )
        self._parent[doc_id] = doc_id
        for other in self._lsh.query(sketch):
            if sketch.jaccard(self._minhashes[other]) >= self.threshold:
                self._union(doc_id, other)
        self._lsh.insert(doc_id, sketch)
        self._minhashes[doc_id] = sketch
        self._priority[doc_id] = priority

    def _find(self, doc_id: str) -> str:
        root = doc_id
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[doc_id] != root:
            self._parent[doc_id], doc_id = root, self._parent[doc_id]
        return root

    def _union(self, a: str, b: str) -> None:
        root_a, root_b = self._find(a), self._find(b)
        if root_a != root_b:
            self._parent[max(root_a, root_b)] = min(root_a, root_b)

    def clusters(self) -> list[list[str]]:
        """Groups of two or more near duplicates, each sorted by id, the list sorted by first id."""
        groups: dict[Hashable, list[str]] = {}
        for doc_id in self._parent:
            groups.setdefault(self._find(doc_id), []).append(doc_id)
        return sorted(sorted(group) for group in groups.values() if len(group) > 1)

    def keep_set(self) -> set[str]:
        """Ids to keep: every singleton, and the highest-priority member of each cluster."""
        dropped: set[str] = set()
        for group in self.clusters():
            kept = _winner([(self._priority[doc_id], doc_id) for doc_id in group])
            dropped.update(doc_id for doc_id in group if doc_id != kept)
        return set(self._parent) - dropped
