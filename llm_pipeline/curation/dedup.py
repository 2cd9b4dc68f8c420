"""Exact and near-duplicate detection: normalized-text hashes, vectorized MinHash signatures and LSH banding.

Exact duplicates share the xxh3 hash of their normalized text (lowercased, punctuation and whitespace runs folded).
Near duplicates are found with MinHash over word n-gram shingles: each document's shingles are hashed once
(curation.shingles, vectorized over the batch), then all ``num_perm`` permutations ``(a * h) mod 2^32`` are
applied to a slice's shingles as one uint32 broadcast multiply and reduced with a min per document
(``np.minimum.reduceat``). LSH splits a signature into ``bands`` of ``rows`` values; documents sharing any band key
become candidates (found by sorting each band's keys), and a candidate pair is a duplicate only if its estimated
Jaccard similarity (the share of equal signature values) reaches the threshold, checked for all pairs at once.
Clusters are the connected components of verified pairs; the first row of a cluster is its representative, so the
caller sorts rows by preference (deduped_shards: the longest text first, so a partial copy never displaces its
original) and the kept set does not depend on the order documents arrive in.

The banding is derived from the threshold (``lsh_banding``): a pair with Jaccard similarity ``s`` shares at least one
band with probability ``1 - (1 - s^rows)^bands``, an S-curve whose steep part must sit at the threshold. A fixed
16 x 8 banding sits at ~0.7, so below that a lower threshold found almost nothing more: a pair at Jaccard 0.5 became
a candidate 6% of the time.

    hasher = MinHasher(num_perm=128, ngram=5, seed=1234)
    sigs = hasher.signatures(texts)              # (n, num_perm) uint32
    bands, rows = lsh_banding(threshold=0.7, num_perm=128)   # (20, 6)
    keys = band_keys(sigs, bands, rows)          # (n, bands) uint64
"""

from __future__ import annotations

import functools
import re
import string

import numpy as np
import xxhash

from llm_pipeline.curation.shingles import ShingleHasher

# Bumped whenever signatures for the same text and parameters change, so persisted indexes from before are not mixed in.
SIGNATURE_SCHEME = 4
MAX_HASH_32 = np.uint64(0xFFFFFFFF)
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}“”‘’«»–—…]+")
# Shingles per matrix block: num_perm x 4096 x 4 bytes (2 MB at 128) stays in cache; larger blocks ran slower.
_SHINGLE_BLOCK = 4096
_PAIR_BLOCK = 1 << 13  # candidate pairs verified at once: two (block, num_perm) uint32 gathers, 8 MB at 128
MAX_BUCKET_ALL_PAIRS = 64


def normalize_text(text: str) -> str:
    """Text as exact dedup compares it: case, punctuation and spacing differences do not count."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(normalize_text(text).encode("utf-8"))


class MinHasher:
    def __init__(self, num_perm: int, ngram: int, seed: int):
        self.num_perm, self.ngram, self.seed = num_perm, ngram, seed
        rng = np.random.default_rng(seed)
        # Permutation k is h -> (a_k * h) mod 2^32 with odd a_k: a bijection of the 32-bit values, so the min over a
        # document's shingles is a MinHash. The shingle hashes it permutes are already well mixed (curation.shingles),
        # and on such inputs this one-multiply family estimates Jaccard with the variance of fully random
        # permutations, J (1 - J) / num_perm (tests/curation/test_dedup.py checks the estimates; an affine
        # a * h + b gave the same errors at one more pass over the num_perm x shingles matrix).
        self.a = rng.integers(0, 1 << 32, size=(num_perm, 1), dtype=np.uint64).astype(np.uint32) | np.uint32(1)
        self.shingler = ShingleHasher(ngram, seed)

    def shingle_hashes(self, text: str) -> np.ndarray:
        """Unique 32-bit hashes of the text's word n-grams (the whole text is one shingle if it is shorter)."""
        return np.unique(self.shingler.hash_counts([text])[0])

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures; a text with no words gets the all-max signature.

        The whole batch is one computation: the shingle hashes of every document (curation.shingles) are permuted
        in blocks of columns and reduced per document with ``np.minimum.reduceat``. Repeated shingles need no
        ``unique``: they cannot change a minimum."""
        sigs = np.full((len(texts), self.num_perm), MAX_HASH_32, dtype=np.uint32)
        for start, stop, hashes, lengths in self.shingler.slices(texts):  # slice by slice: arrays stay in cache
            if len(hashes):
                owners = np.flatnonzero(lengths)
                self._min_per_document(hashes, lengths[owners], owners, sigs[start:stop])
        return sigs

    def _permuted(self, block: np.ndarray) -> np.ndarray:
        """(num_perm, len(block)) uint32 values (a * h) mod 2^32: one broadcast multiply (wrap-around is the mod)."""
        return np.multiply(self.a, block[None, :])

    def _min_per_document(self, hashes: np.ndarray, lengths: np.ndarray, owners: np.ndarray, out: np.ndarray) -> None:
        """out[owner] = per-permutation min over that document's shingles, a bounded block of columns at a time."""
        ends = np.cumsum(lengths)
        starts = ends - lengths
        # Documents are grouped by the block their first shingle falls in: one pass, no search per block. A group
        # can run past the block by one document's length; a long document gets a group of its own below.
        group = starts // _SHINGLE_BLOCK
        bounds = np.flatnonzero(np.diff(group, prepend=-1, append=group[-1] + 1))
        for doc, last in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            lo, hi = int(starts[doc]), int(ends[last - 1])
            if hi - lo > 2 * _SHINGLE_BLOCK:  # long documents: each alone, min over column chunks
                for d in range(doc, last):
                    row = out[owners[d]]
                    for a in range(int(starts[d]), int(ends[d]), _SHINGLE_BLOCK):
                        np.minimum(row, self._permuted(hashes[a : min(int(ends[d]), a + _SHINGLE_BLOCK)]).min(axis=1), out=row)
            else:  # each document is in exactly one group, so its minima are written, not merged
                out[owners[doc:last]] = np.minimum.reduceat(self._permuted(hashes[lo:hi]), starts[doc:last] - lo, axis=1).T


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that a pair with this Jaccard similarity shares at least one of `bands` bands of `rows` values."""
    return 1.0 - (1.0 - similarity**rows) ** bands


# Integration grid per side for the banding's error masses: on 401 points the choice equals the one from adaptive
# quadrature (datasketch's optimal_param, checked in the tests) at 0.01 steps of the threshold.
_GRID = 401


@functools.lru_cache(maxsize=64)
def lsh_banding(threshold: float, num_perm: int, miss_weight: float = 0.9) -> tuple[int, int]:
    """(bands, rows) with bands x rows <= num_perm minimizing the weighted error mass of the LSH S-curve.

    False-positive mass: the integral over s in [0, threshold] of the probability that a pair of Jaccard s becomes
    a candidate; false-negative mass: the integral over [threshold, 1] of the probability that it does not. The
    result minimizes ``(1 - miss_weight) * fp + miss_weight * fn`` over every (bands, rows). A candidate costs one
    signature comparison (verification drops it), a missed pair is a duplicate that stays in the training data,
    hence misses weigh more by default; miss_weight = 0.5 is the criterion of datasketch's ``optimal_param``."""
    br = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64)
    b, r = br[:, :1], br[:, 1:]
    below = np.linspace(0.0, threshold, _GRID)[None, :]
    above = np.linspace(threshold, 1.0, _GRID)[None, :]
    fp = np.trapezoid(1.0 - (1.0 - below**r) ** b, below, axis=1)
    fn = np.trapezoid((1.0 - above**r) ** b, above, axis=1)
    best = int(np.argmin((1.0 - miss_weight) * fp + miss_weight * fn))
    return int(br[best, 0]), int(br[best, 1])


def lowest_threshold(bands: int, rows: int, probability: float = 0.5) -> float:
    """The Jaccard similarity at which a pair becomes a candidate with the given probability under this banding."""
    return (1.0 - (1.0 - probability) ** (1.0 / bands)) ** (1.0 / rows)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band); equal keys mean equal band values (up to 2^-64 collisions)."""
    n = sigs.shape[0]
    banded = np.ascontiguousarray(sigs[:, : bands * rows], dtype=np.uint32).reshape(n, bands, rows)
    if rows % 2 == 0:  # two signature values per 64-bit word: half the passes, and no widening copy
        banded = banded.view(np.uint64)
    mult = np.array([((0x9E3779B97F4A7C15 * (r + 1)) | 1) & 0xFFFFFFFFFFFFFFFF for r in range(banded.shape[2])], dtype=np.uint64)
    keys = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(banded.shape[2]):
            keys ^= banded[:, :, r]
            keys *= mult[r]
        keys ^= np.arange(bands, dtype=np.uint64)[None, :] * np.uint64(0xD6E8FEB86659FD93)
    return keys


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


class UnionFind:
    """Clusters with the smallest member index as root, so the representative is the first in sort order. The parents
    are one int64 array (8 bytes per member, not a Python object each): unions come only from verified pairs, few
    next to the members."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        root = int(i)
        while parent[root] != root:
            root = int(parent[root])
        while parent[i] != root:
            parent[i], i = root, int(parent[i])
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def roots(self) -> np.ndarray:
        """Every member's root at once (pointer jumping: each pass halves the remaining path)."""
        roots = self.parent.copy()
        while True:
            up = roots[roots]
            if (up == roots).all():
                return roots
            roots = up

    def moved(self) -> tuple[np.ndarray, np.ndarray]:
        """The members whose root is another member, sorted, and those roots."""
        roots = self.roots()
        moved = np.flatnonzero(roots != np.arange(len(roots)))
        return moved, roots[moved]


def pair_clusters(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UnionFind(n).moved() after the unions of pairs (i, j), for members in a set of any size n, holding only the
    pairs' members: the roots are the clusters' smallest members either way, so the result is the same, in memory
    that follows the pairs (one per near duplicate, give or take), not the set.

    The unions are done on whole arrays, not pair by pair: each round hooks the larger root of every pair whose
    members are in different trees under the smaller one, then points every member at its root. A Python loop over
    the pairs held two Python ints per pair (~10 MB at 100,000 pairs), memory the process kept after the loop."""
    members = np.unique(np.concatenate([i, j]))
    a, b = np.searchsorted(members, i), np.searchsorted(members, j)
    parent = np.arange(len(members), dtype=np.int64)
    while True:
        ra, rb = parent[a], parent[b]
        split = ra != rb
        if not split.any():
            break
        lo, hi = np.minimum(ra[split], rb[split]), np.maximum(ra[split], rb[split])
        np.minimum.at(parent, hi, lo)  # a root hooked under a smaller root: no cycle, the smallest member stays root
        while True:  # every member straight to its root
            up = parent[parent]
            if (up == parent).all():
                break
            parent = up
    moved = np.flatnonzero(parent != np.arange(len(parent)))
    return members[moved], members[parent[moved]]


def candidate_pair_arrays(keys: np.ndarray, rows: np.ndarray | None = None, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) sharing a band key, sorted, as two arrays. Within a bucket of up to
    ``MAX_BUCKET_ALL_PAIRS`` members every pair is a candidate, as in a plain LSH query; a larger bucket
    (boilerplate, templated pages) pairs each member with the one before it, which links it in O(size) pairs.

    With `rows` (the row numbers of `keys`' rows in a set of `n`), `keys` may be one part of that set, holding
    every member of the buckets it touches (a shuffle by band key): the pairs are those the whole set would give."""
    n = keys.shape[0] if n is None else n
    found = [np.zeros(0, dtype=np.int64)]
    for band in range(keys.shape[1]):
        found.append(band_pair_codes(keys[:, band], rows, n))
    flat = np.unique(np.concatenate(found))
    return flat // n, flat % n


def band_pair_codes(keys: np.ndarray, rows: np.ndarray | None, n: int) -> np.ndarray:
    """One band of `candidate_pair_arrays`: the pairs (i < j) of rows sharing a key, each as the code ``i * n + j``
    (unsorted, possibly repeated). `keys` is one band's column; only it and its sort are in memory."""
    m = keys.shape[0]
    # Each band is one plain sort of (key with its low bits replaced by the row index): a SIMD sort of integers
    # instead of an argsort, and members of a bucket come out in row order. Keys that agree on all but those low
    # bits share a bucket, which can only add candidates (verification drops them), never lose one.
    bits = max(1, (n - 1).bit_length())
    low = np.uint64((1 << bits) - 1)
    rows = np.arange(m, dtype=np.uint64) if rows is None else np.asarray(rows, dtype=np.uint64)
    found = [np.zeros(0, dtype=np.int64)]
    packed = np.sort((np.asarray(keys, dtype=np.uint64) & ~low) | rows)
    order = (packed & low).astype(np.int64)
    bucket = packed >> np.uint64(bits)
    del packed
    same = bucket[1:] == bucket[:-1]  # sorted positions p and p + 1 share a bucket
    if not same.any():
        return found[0]
    bucket_start = np.flatnonzero(np.concatenate([[True], ~same]))
    size = np.diff(bucket_start, append=m)
    small = np.repeat(size <= MAX_BUCKET_ALL_PAIRS, size)
    gap = 1
    while True:
        pos = np.flatnonzero(same if gap == 1 else same & small[:-gap])
        if len(pos) == 0:
            break
        found.append(order[pos] * n + order[pos + gap])  # row order within a bucket: the first is smaller
        gap += 1
        same = bucket[gap:] == bucket[:-gap]
    return np.unique(np.concatenate(found))


def candidate_pairs(keys: np.ndarray) -> set[tuple[int, int]]:
    """The candidate pairs of `candidate_pair_arrays` as a set of (i, j)."""
    i, j = candidate_pair_arrays(keys)
    return set(zip(i.tolist(), j.tolist()))


def similar(sigs: np.ndarray, i: np.ndarray, other_sigs: np.ndarray, j: np.ndarray, threshold: float) -> np.ndarray:
    """Per pair, whether ``jaccard_estimate(sigs[i], other_sigs[j]) >= threshold``, for many pairs at once."""
    ok = np.zeros(len(i), dtype=bool)
    for lo in range(0, len(i), _PAIR_BLOCK):
        hi = lo + _PAIR_BLOCK
        equal = np.count_nonzero(sigs[i[lo:hi]] == other_sigs[j[lo:hi]], axis=1)
        ok[lo:hi] = equal / sigs.shape[1] >= threshold  # the same float division as np.mean
    return ok


def verified_pairs(sigs: np.ndarray, keys: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i < j, sorted) whose estimated Jaccard similarity reaches the threshold."""
    i, j = candidate_pair_arrays(keys)
    ok = similar(sigs, i, sigs, j, threshold)
    return i[ok], j[ok]


def near_duplicate_clusters(sigs: np.ndarray, keys: np.ndarray, threshold: float) -> UnionFind:
    """Union-find over verified candidate pairs; row order must be the order of preference (e.g. sorted ids)."""
    uf = UnionFind(sigs.shape[0])
    for i, j in zip(*(a.tolist() for a in verified_pairs(sigs, keys, threshold))):
        uf.union(i, j)
    return uf


def candidates_against(keys: np.ndarray, other_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query row, other row) pairs, sorted, of rows of `keys` sharing a band key with rows of `other_keys` (every
    member of every shared bucket)."""
    m = len(other_keys)
    found = [np.zeros(0, dtype=np.int64)] + [band_match_codes(keys[:, b], other_keys[:, b]) for b in range(keys.shape[1])]
    flat = np.unique(np.concatenate(found))
    return flat // max(m, 1), flat % max(m, 1)


def band_match_codes(query: np.ndarray, other: np.ndarray) -> np.ndarray:
    """One band of `candidates_against`: each (query row q, other row o) sharing a key as the code ``q * len(other)
    + o``. Only this band's columns and one sort of `other`'s are in memory."""
    m = len(other)
    other = np.asarray(other)
    order = np.argsort(other, kind="stable")
    sorted_keys = other[order]
    del other
    lo = np.searchsorted(sorted_keys, query, side="left")
    count = np.searchsorted(sorted_keys, query, side="right") - lo
    q = np.repeat(np.arange(len(query)), count)
    # positions lo[q], lo[q] + 1, ... for each query q, laid end to end
    pos = np.arange(int(count.sum())) + np.repeat(lo - (np.cumsum(count) - count), count)
    return q * m + order[pos]


def match_against(sigs: np.ndarray, keys: np.ndarray, other_sigs: np.ndarray, other_keys: np.ndarray, threshold: float) -> dict[int, list[int]]:
    """For each row of `sigs`, the rows of another (indexed) set it near-duplicates (every member of every bucket
    it shares with that set is verified)."""
    if len(sigs) == 0 or len(other_sigs) == 0:
        return {}
    qi, oj = candidates_against(keys, other_keys)
    ok = similar(sigs, qi, other_sigs, oj, threshold)
    matches: dict[int, list[int]] = {}
    for i, j in zip(qi[ok].tolist(), oj[ok].tolist()):
        matches.setdefault(i, []).append(j)
    return matches
