"""Exact and near-duplicate detection: normalized-text hashes, vectorized MinHash signatures and LSH banding.

Exact duplicates share the xxh3 hash of their normalized text (lowercased, punctuation and whitespace runs folded).
Near duplicates are found with MinHash over word n-gram shingles: each document's shingles are hashed once
(curation.shingles, vectorized over the batch), then all ``num_perm`` permutations ``(a * h + b) mod 2^32`` are
applied to a whole batch's shingles as one uint32 matrix operation and reduced with a min per document
(``np.minimum.reduceat``). LSH splits a signature into ``bands`` of ``rows`` values;
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

from llm_pipeline.curation.shingles import ShingleHasher

# Bumped whenever signatures for the same text and parameters change, so persisted indexes from before are not mixed in.
SIGNATURE_SCHEME = 3
MAX_HASH_32 = np.uint64(0xFFFFFFFF)
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}“”‘’«»–—…]+")
# Shingles per matrix block: num_perm x 4096 x 4 bytes (2 MB at 128) stays in cache; larger blocks ran slower.
_SHINGLE_BLOCK = 4096


def normalize_text(text: str) -> str:
    """Text as exact dedup compares it: case, punctuation and spacing differences do not count."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(normalize_text(text).encode("utf-8"))


class MinHasher:
    def __init__(self, num_perm: int, ngram: int, seed: int):
        self.num_perm, self.ngram, self.seed = num_perm, ngram, seed
        rng = np.random.default_rng(seed)
        # (a * h + b) mod 2^32 with odd a is a permutation of the 32-bit values. The shingle hashes it permutes are
        # already well mixed (curation.shingles), so this cheap family estimates Jaccard as well as the mod-prime one
        # (tests/test_dedup.py and benchmarks/dedup_bench.py check it), at half the memory traffic of 64-bit math.
        self.a = rng.integers(0, 1 << 32, size=(num_perm, 1), dtype=np.uint64).astype(np.uint32) | np.uint32(1)
        self.b = rng.integers(0, 1 << 32, size=(num_perm, 1), dtype=np.uint64).astype(np.uint32)
        self.shingler = ShingleHasher(ngram, seed)

    def shingle_hashes(self, text: str) -> np.ndarray:
        """Unique 32-bit hashes of the text's word n-grams (the whole text is one shingle if it is shorter)."""
        return np.unique(self.shingler.hash_batch([text])[0])

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures; a text with no words gets the all-max signature.

        The whole batch is one computation: the shingle hashes of every document (curation.shingles) are permuted
        in blocks of columns and reduced per document with ``np.minimum.reduceat``. Repeated shingles need no
        ``unique``: they cannot change a minimum."""
        sigs = np.full((len(texts), self.num_perm), MAX_HASH_32, dtype=np.uint32)
        hashes, owner = self.shingler.hash_batch(texts)
        if len(hashes):
            lengths = np.bincount(owner, minlength=len(texts))
            owners = np.flatnonzero(lengths)
            self._min_per_document(hashes.astype(np.uint32), lengths[owners], owners, sigs)
        return sigs

    def _permuted(self, block: np.ndarray) -> np.ndarray:
        """(num_perm, len(block)) uint32 values (a * h + b) mod 2^32, computed in place in one buffer."""
        with np.errstate(over="ignore"):  # the mod 2^32 is uint32 wrap-around
            x = self.a * block[None, :]
            x += self.b
        return x

    def _min_per_document(self, hashes: np.ndarray, lengths: np.ndarray, owners: np.ndarray, out: np.ndarray) -> None:
        """out[owner] = per-permutation min over that document's shingles, a bounded block of columns at a time."""
        ends = np.cumsum(lengths)
        starts = ends - lengths
        # Documents are grouped by the block their first shingle falls in: one pass, no search per block. A group
        # can run past the block by one document's length; a long document gets a group of its own below.
        group = starts // _SHINGLE_BLOCK
        bounds = np.flatnonzero(np.diff(group, prepend=-1, append=group[-1] + 1 if len(group) else 0))
        for doc, last in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            lo, hi = int(starts[doc]), int(ends[last - 1])
            if hi - lo > 2 * _SHINGLE_BLOCK:  # long documents: each alone, min over column chunks
                for d in range(doc, last):
                    row = out[owners[d]]
                    for a in range(int(starts[d]), int(ends[d]), _SHINGLE_BLOCK):
                        np.minimum(row, self._permuted(hashes[a : min(int(ends[d]), a + _SHINGLE_BLOCK)]).min(axis=1), out=row)
            else:
                mins = np.minimum.reduceat(self._permuted(hashes[lo:hi]), starts[doc:last] - lo, axis=1)
                out[owners[doc:last]] = np.minimum(out[owners[doc:last]], mins.T)


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
