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
import itertools
import re
import unicodedata
from typing import Any, Hashable

import numpy as np
from datasketch import MinHash, MinHashLSH

_WHITESPACE = re.compile(r"\s+")


def exact_key(text: str) -> str:
    """sha256 hex of ``text`` in NFC with whitespace runs collapsed to one space and ends stripped."""
    canonical = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()
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
    return {" ".join(words[i:i + width]).encode("utf-8") for i in range(len(words) - width + 1)}


def shingle_hashes(text: str, width: int) -> list[int]:
    """datasketch's default 32-bit hash (the first 4 bytes of SHA-1, little-endian) of each shingle of
    `shingles`, computed without one Python call chain per shingle: the words are encoded once and
    each shingle is a slice of their joined bytes. Same set of values, so the same MinHash."""
    words = text.lower().split()
    if len(words) <= width:
        grams = shingles(text, width)
    else:
        encoded = [word.encode("utf-8") for word in words]
        joined = b" ".join(encoded)
        starts = [0, *itertools.accumulate(len(word) + 1 for word in encoded)]
        grams = {joined[starts[i]:starts[i + width] - 1] for i in range(len(words) - width + 1)}
    sha1 = hashlib.sha1
    digests = b"".join([sha1(gram).digest()[:4] for gram in grams])
    return np.frombuffer(digests, dtype="<u4").tolist()


def _identity(value: int) -> int:
    return value


class NearDuplicateIndex:
    """MinHash-LSH index; clusters are connected components of verified near-duplicate pairs."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_words: int = 5, seed: int = 1):
        self.threshold = threshold
        self.shingle_words = shingle_words
        self._template = MinHash(num_perm=num_perm, seed=seed)
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._minhashes: dict[str, MinHash] = {}
        self._priority: dict[str, Any] = {}
        self._parent: dict[str, str] = {}

    def minhash(self, text: str) -> MinHash:
        """MinHash of the text's shingles; permutations are shared, so no per-document setup cost.

        The shingles are hashed here (`shingle_hashes`, datasketch's hash) and datasketch applies its
        permutations to those values, so the sketch is the one `update_batch(shingles(...))` gives."""
        sketch = MinHash(num_perm=len(self._template.permutations[0]), seed=self._template.seed,
                         permutations=self._template.permutations, scheme=self._template.scheme,
                         hashfunc=_identity)
        sketch.update_batch(shingle_hashes(text, self.shingle_words))
        return sketch

    def signature(self, text: str) -> list[int]:
        """The MinHash values of a text: what a worker computes so the index never needs the text."""
        return [int(v) for v in self.minhash(text).hashvalues]

    def add(self, doc_id: str, text: str, priority: Any = 0) -> None:
        """Index a document and link it to every earlier one whose estimated Jaccard ≥ threshold."""
        self.add_signature(doc_id, self.signature(text), priority)

    def add_signature(self, doc_id: str, signature: list[int], priority: Any = 0) -> None:
        """`add` for a signature made by `signature` with the same settings."""
        if doc_id in self._minhashes:
            raise ValueError(f"duplicate document id {doc_id!r}")
        sketch = MinHash(seed=self._template.seed, hashvalues=np.array(signature, dtype=np.uint64),
                         scheme=self._template.scheme)
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
        dropped = set()
        for group in self.clusters():
            kept = _winner([(self._priority[doc_id], doc_id) for doc_id in group])
            dropped.update(doc_id for doc_id in group if doc_id != kept)
        return set(self._parent) - dropped
