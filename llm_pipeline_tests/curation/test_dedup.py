"""Dedup primitives: normalized exact hashes, vectorized MinHash, LSH banding and clustering."""

import random

import numpy as np
import pytest

from llm_pipeline.curation.dedup import (
    MAX_BUCKET_ALL_PAIRS,
    MinHasher,
    UnionFind,
    band_keys,
    candidate_pair_arrays,
    candidate_pairs,
    candidate_probability,
    exact_hash,
    jaccard_estimate,
    lowest_threshold,
    lsh_banding,
    match_against,
    near_duplicate_clusters,
    normalize_text,
    pair_clusters,
)

rng = random.Random(7)
VOCAB = [f"w{i}" for i in range(2_000)]


def random_doc(n_words: int = 200) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n_words))


def edit(text: str, n_changes: int, seed: int) -> str:
    r = random.Random(seed)
    words = text.split()
    for _ in range(n_changes):
        words[r.randrange(len(words))] = "changed"
    return " ".join(words)


def true_jaccard(a: str, b: str, n: int) -> float:
    def grams(t):
        w = t.lower().split()
        return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("Hello, World!", "hello world", True),
        ("The  cat\nsat.", "the cat sat", True),
        ("“Quoted” — text…", "quoted text", True),
        ("the cat sat", "the cat sat down", False),
    ],
)
def test_exact_hash_ignores_case_punctuation_spacing(a, b, same):
    assert (exact_hash(a) == exact_hash(b)) is same
    assert (normalize_text(a) == normalize_text(b)) is same


def test_signature_shape_dtype_and_determinism():
    h = MinHasher(num_perm=64, ngram=3, seed=1)
    sigs = h.signatures([random_doc(), random_doc(), ""])
    assert sigs.shape == (3, 64) and sigs.dtype == np.uint32
    text = "the same text hashed by two hashers built with the same seed"
    assert np.array_equal(MinHasher(64, 3, 1).signatures([text]), h.signatures([text]))
    assert not np.array_equal(MinHasher(64, 3, 2).signatures([text]), h.signatures([text]))
    assert h.signatures([]).shape == (0, 64)


@pytest.mark.parametrize("n_changes", [0, 5, 20, 60])
def test_minhash_estimates_jaccard(n_changes):
    h = MinHasher(num_perm=256, ngram=3, seed=3)
    a = random_doc(300)
    b = edit(a, n_changes, seed=n_changes)
    sigs = h.signatures([a, b])
    assert abs(jaccard_estimate(sigs[0], sigs[1]) - true_jaccard(a, b, 3)) < 0.1


def test_estimate_errors_match_random_permutations():
    """Over many pairs of varied size and similarity, the one-multiply permutations err no more than fully random
    permutations would: root-mean-square error sqrt(J (1 - J) / num_perm), unbiased."""
    h = MinHasher(num_perm=128, ngram=3, seed=9)
    r = random.Random(9)
    pairs, truth = [], []
    for k in range(300):
        a = random_doc(r.choice([15, 40, 120, 400]))
        b = edit(a, r.randrange(1, max(2, len(a.split()) // 4)), seed=k)
        pairs += [a, b]
        truth.append(true_jaccard(a, b, 3))
    sigs = h.signatures(pairs)
    est = (sigs[0::2] == sigs[1::2]).mean(axis=1)
    truth = np.array(truth)
    expected_rmse = np.sqrt(np.mean(truth * (1 - truth) / 128))
    assert np.sqrt(np.mean((est - truth) ** 2)) < 1.2 * expected_rmse
    assert abs(np.mean(est - truth)) < 0.01


def test_short_documents_are_one_shingle():
    h = MinHasher(num_perm=32, ngram=5, seed=0)
    sigs = h.signatures(["two words", "two words", "other words"])
    assert jaccard_estimate(sigs[0], sigs[1]) == 1.0
    assert jaccard_estimate(sigs[0], sigs[2]) < 0.5


def test_band_keys_match_only_on_equal_bands():
    sigs = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [5, 6, 3, 4]], dtype=np.uint32)
    keys = band_keys(sigs, bands=2, rows=2)
    assert keys.shape == (3, 2)
    assert keys[0, 0] == keys[1, 0] and keys[0, 1] != keys[1, 1]
    assert keys[0, 1] == keys[2, 1] and keys[0, 0] != keys[2, 0]
    assert candidate_pairs(keys) == {(0, 1), (0, 2)}


def test_candidates_all_pairs_in_small_buckets_and_a_chain_in_large_ones():
    small = np.array([[7], [1], [7], [2], [7]], dtype=np.uint64) << np.uint64(40)  # keys are hashes: high bits differ
    assert candidate_pairs(small) == {(0, 2), (0, 4), (2, 4)}
    size = MAX_BUCKET_ALL_PAIRS + 1
    big = np.zeros((size, 1), dtype=np.uint64)
    i, j = candidate_pair_arrays(big)
    assert list(zip(i.tolist(), j.tolist())) == [(k, k + 1) for k in range(size - 1)]
    assert candidate_pair_arrays(np.zeros((0, 4), dtype=np.uint64))[0].shape == (0,)


def test_match_against_verifies_every_bucket_member():
    rng = np.random.default_rng(3)
    index = rng.integers(0, 4, size=(60, 32), dtype=np.uint32)  # few values: many shared bands, many near pairs
    queries = rng.integers(0, 4, size=(25, 32), dtype=np.uint32)
    keys_q, keys_i = band_keys(queries, 8, 4), band_keys(index, 8, 4)
    found = match_against(queries, keys_q, index, keys_i, threshold=0.4)
    expected = {}
    for q in range(len(queries)):
        js = [j for j in range(len(index)) if (keys_q[q] == keys_i[j]).any() and jaccard_estimate(queries[q], index[j]) >= 0.4]
        if js:
            expected[q] = js
    assert found == expected and found


def test_clusters_find_near_duplicates_and_keep_distinct_documents():
    h = MinHasher(num_perm=128, ngram=5, seed=11)
    base = [random_doc(250) for _ in range(20)]
    docs = base + [edit(base[0], 3, 1), edit(base[0], 4, 2), edit(base[5], 2, 3)]
    sigs = h.signatures(docs)
    uf = near_duplicate_clusters(sigs, band_keys(sigs, 16, 8), threshold=0.7)
    roots = [uf.find(i) for i in range(len(docs))]
    assert roots[20] == roots[21] == roots[0] == 0
    assert roots[22] == 5
    assert len(set(roots[:20])) == 20  # unrelated documents stay apart


def test_match_against_another_index():
    h = MinHasher(num_perm=128, ngram=5, seed=11)
    indexed = [random_doc(200) for _ in range(10)]
    queries = [edit(indexed[3], 2, 9), random_doc(200)]
    s_idx, s_q = h.signatures(indexed), h.signatures(queries)
    found = match_against(s_q, band_keys(s_q, 16, 8), s_idx, band_keys(s_idx, 16, 8), threshold=0.7)
    assert found == {0: [3]}


def test_union_find_root_is_smallest():
    uf = UnionFind(5)
    uf.union(4, 2)
    uf.union(2, 3)
    uf.union(3, 1)
    assert {uf.find(i) for i in (1, 2, 3, 4)} == {1}
    assert uf.find(0) == 0


def _graphs():
    rng = np.random.default_rng(4)
    n = 1_000
    codes = np.unique(rng.integers(0, n, size=(300, 2)) @ np.array([n, 1]))
    yield "random", codes // n, codes % n
    codes = np.unique(rng.integers(0, n, size=(3_000, 2)) @ np.array([n, 1]))  # dense: a few large clusters
    yield "dense", codes // n, codes % n
    path = rng.permutation(n)  # one long chain over shuffled members: many hooking rounds
    yield "chain", path[:-1], path[1:]
    yield "star", np.zeros(n - 1, dtype=np.int64), np.arange(1, n)


@pytest.mark.parametrize("name", ["random", "dense", "chain", "star"])
def test_pair_clusters_are_the_union_find_over_every_member(name):
    _, i, j = next(g for g in _graphs() if g[0] == name)
    i, j = np.minimum(i, j), np.maximum(i, j)
    i, j = i[i < j], j[i < j]
    uf = UnionFind(1_000)
    for a, b in zip(i.tolist(), j.tolist()):
        uf.union(a, b)
    moved, roots = pair_clusters(i, j)
    expected_moved, expected_roots = uf.moved()
    assert moved.tolist() == expected_moved.tolist() and roots.tolist() == expected_roots.tolist()
    assert len(moved) > 50
    assert [a.tolist() for a in pair_clusters(np.zeros(0, np.int64), np.zeros(0, np.int64))] == [[], []]


def test_batch_signatures_equal_one_document_at_a_time_and_the_plain_definition():
    h = MinHasher(num_perm=32, ngram=3, seed=5)
    docs = [random_doc(50), "", "two words", random_doc(3000), "Ünïcode wörds “quoted” — text…", random_doc(7)]
    batch = h.signatures(docs)
    for i, d in enumerate(docs):
        assert np.array_equal(batch[i], h.signatures([d])[0])
        shingles = h.shingle_hashes(d).astype(np.uint32)
        if len(shingles):  # the definition: per permutation, the min of (a * s) mod 2^32 over the shingles
            expected = (h.a * shingles[None, :]).min(axis=1)
            assert np.array_equal(batch[i], expected)
        else:
            assert (batch[i] == 0xFFFFFFFF).all()


@pytest.mark.parametrize("num_perm", [64, 128, 256])
@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.65, 0.7, 0.85, 0.95])
def test_banding_at_equal_weights_is_datasketchs_optimal_param(threshold, num_perm):
    # Same criterion, computed independently (a fixed grid here, adaptive quadrature there).
    from datasketch.lsh import _optimal_param

    assert lsh_banding(threshold, num_perm, 0.5) == _optimal_param(threshold, num_perm, 0.5, 0.5)


@pytest.mark.parametrize("threshold", [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
def test_the_derived_banding_puts_the_s_curve_at_the_threshold(threshold):
    bands, rows = lsh_banding(threshold, 128)
    assert bands * rows <= 128
    # Pairs at the threshold are mostly proposed, pairs 0.1 above it almost always, pairs far below it rarely.
    assert candidate_probability(threshold, bands, rows) >= 0.75
    assert candidate_probability(min(1.0, threshold + 0.1), bands, rows) >= 0.97
    assert lowest_threshold(bands, rows) < threshold
    if threshold >= 0.5:
        assert candidate_probability(threshold - 0.3, bands, rows) < 0.25


def test_misses_weigh_more_than_needless_candidates_by_default():
    # 0.9 moves the curve below the threshold: a pair at it is proposed more often than at datasketch's weighting.
    for t in (0.5, 0.7, 0.9):
        assert candidate_probability(t, *lsh_banding(t, 128)) > candidate_probability(t, *lsh_banding(t, 128, 0.5))


def test_the_old_fixed_banding_missed_pairs_below_its_own_threshold():
    assert candidate_probability(0.5, 16, 8) < 0.07  # why a threshold of 0.5 found almost nothing more
    assert 0.65 < lowest_threshold(16, 8) < 0.7
