"""Exact and near-duplicate detection: normalized-text hashes, vectorized MinHash signatures and LSH banding.

Exact duplicates share the xxh3 hash of their normalized text (lowercased, punctuation and whitespace runs folded).
Near duplicates are found with MinHash over word n-gram shingles: each document's shingles are hashed once
(numpy, 32-bit), then all ``num_perm`` universal hash functions ``(a * h + b) mod p`` are applied as one matrix
operation and reduced with a min over the shingle axis. LSH splits a signature into ``bands`` of ``rows`` values;
documents sharing any band key become candidates, and a candidate pair is a duplicate only if its estimated
Jaccard similarity (the share of equal signature values) reaches the threshold. Clusters are the connected
components of verified pairs; the smallest id in a cluster is its representative, so the kept set does not depend
on the order documents arrive in.

    hasher = MinHasher(num_perm=128, ngram=5, seed=1234)
    sigs = hasher.signatures(texts)              # (n, num_perm) uint32
    keys = band_keys(sigs, bands=16, rows=8)     # (n, bands) uint64
"""

from __future__ import annotations

import re
import string

import numpy as np
import xxhash

MERSENNE_61 = np.uint64((1 << 61) - 1)
MAX_HASH_32 = np.uint64(0xFFFFFFFF)
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}“”‘’«»–—…]+")
_WORD = re.compile(r"\w+")
_SHINGLE_BLOCK = 4096  # shingles per matrix block: bounds memory at num_perm x 4096 x 8 bytes (4 MB at 128)


def normalize_text(text: str) -> str:
    """Text as exact dedup compares it: case, punctuation and spacing differences do not count."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(normalize_text(text).encode("utf-8"))


class MinHasher:
    def __init__(self, num_perm: int, ngram: int, seed: int):
        self.num_perm, self.ngram, self.seed = num_perm, ngram, seed
        rng = np.random.default_rng(seed)
        # a in [1, 2^32), b in [0, 2^32): with 32-bit shingle hashes a*h + b stays below 2^64, so uint64 arithmetic
        # is exact before the mod-p reduction.
        self.a = rng.integers(1, 1 << 32, size=(num_perm, 1), dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, size=(num_perm, 1), dtype=np.uint64)
        # Odd multipliers that fold n word hashes into one shingle hash.
        self._mix = rng.integers(1, 1 << 63, size=ngram, dtype=np.uint64) | np.uint64(1)

    def shingle_hashes(self, text: str) -> np.ndarray:
        """Unique 32-bit hashes of the text's word n-grams (the whole text is one shingle if it is shorter)."""
        words = _WORD.findall(text.lower())
        if not words:
            return np.zeros(0, dtype=np.uint64)
        # One hash per distinct word (a Python call per vocabulary item, not per shingle), then numpy combines them.
        vocab, inverse = np.unique(np.array(words, dtype=object), return_inverse=True)
        word_h = np.fromiter((xxhash.xxh64_intdigest(w.encode("utf-8"), self.seed) for w in vocab), dtype=np.uint64, count=len(vocab))
        seq = word_h[inverse]
        n = min(self.ngram, len(seq))
        width = len(seq) - n + 1
        with np.errstate(over="ignore"):  # uint64 wrap-around is the intended mixing
            h = np.zeros(width, dtype=np.uint64)
            for k in range(n):
                h = (h ^ seq[k : k + width]) * self._mix[k]
            h ^= h >> np.uint64(29)
        return np.unique(h & MAX_HASH_32)

    def signature(self, text: str) -> np.ndarray:
        hashes = self.shingle_hashes(text)
        sig = np.full(self.num_perm, MAX_HASH_32, dtype=np.uint64)
        for start in range(0, len(hashes), _SHINGLE_BLOCK):
            block = hashes[start : start + _SHINGLE_BLOCK][None, :]
            permuted = ((self.a * block + self.b) % MERSENNE_61) & MAX_HASH_32
            np.minimum(sig, permuted.min(axis=1), out=sig)
        return sig.astype(np.uint32)

    def signatures(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.num_perm), dtype=np.uint32)
        return np.stack([self.signature(t) for t in texts])


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band); equal keys mean equal band values (up to 2^-64 collisions)."""
    n = sigs.shape[0]
    banded = sigs[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    mult = np.array([((0x9E3779B97F4A7C15 * (r + 1)) | 1) & 0xFFFFFFFFFFFFFFFF for r in range(rows)], dtype=np.uint64)
    keys = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            keys = (keys ^ banded[:, :, r]) * mult[r]
        keys ^= np.arange(bands, dtype=np.uint64)[None, :] * np.uint64(0xD6E8FEB86659FD93)
    return keys


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


class UnionFind:
    """Clusters with the smallest member index as root, so the representative is the first in sort order."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def candidate_pairs(keys: np.ndarray) -> set[tuple[int, int]]:
    """Index pairs (i < j) sharing a band key; within a bucket each member is paired with the one before it,
    which links the whole bucket in O(size) instead of O(size^2) pairs."""
    pairs: set[tuple[int, int]] = set()
    for band in range(keys.shape[1]):
        col = keys[:, band]
        order = np.argsort(col, kind="stable")
        same = np.nonzero(col[order][1:] == col[order][:-1])[0]
        for pos in same:
            i, j = int(order[pos]), int(order[pos + 1])
            pairs.add((min(i, j), max(i, j)))
    return pairs


def near_duplicate_clusters(sigs: np.ndarray, keys: np.ndarray, threshold: float) -> UnionFind:
    """Union-find over verified candidate pairs; row order must be the order of preference (e.g. sorted ids)."""
    uf = UnionFind(sigs.shape[0])
    for i, j in sorted(candidate_pairs(keys)):
        if jaccard_estimate(sigs[i], sigs[j]) >= threshold:
            uf.union(i, j)
    return uf


def match_against(sigs: np.ndarray, keys: np.ndarray, other_sigs: np.ndarray, other_keys: np.ndarray, threshold: float) -> dict[int, list[int]]:
    """For each row of `sigs`, the rows of another (indexed) set it near-duplicates."""
    found: dict[int, set[int]] = {}
    if len(sigs) == 0 or len(other_sigs) == 0:
        return {}
    for band in range(keys.shape[1]):
        other = other_keys[:, band]
        order = np.argsort(other, kind="stable")
        sorted_keys = other[order]
        lo = np.searchsorted(sorted_keys, keys[:, band], side="left")
        hi = np.searchsorted(sorted_keys, keys[:, band], side="right")
        for i in np.nonzero(hi > lo)[0]:
            found.setdefault(int(i), set()).update(int(order[k]) for k in range(lo[i], hi[i]))
    verified = {i: sorted(j for j in js if jaccard_estimate(sigs[i], other_sigs[j]) >= threshold) for i, js in found.items()}
    return {i: js for i, js in verified.items() if js}
