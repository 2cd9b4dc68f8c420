"""Vectorized shingle hashing: words as a regex would split them, n-grams within documents only."""

import re

import numpy as np
import pytest

from llm_pipeline.curation import shingles
from llm_pipeline.curation.shingles import ShingleHasher


def reference_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_\x80-\U0010ffff]+", text.lower().translate(shingles._TO_SPACE))


LONG = "x" * 300  # over MAX_VECTOR_WORD: hashed with xxh3


@pytest.mark.parametrize(
    "text",
    ["Hello, World!", "a  b\tc\nd", "naïve café — “ok”", "", "   ", "x_1 y-2 z.3", "nul\x00inside",
     "abcdefgh abcdefghi abcdefghij abcdefghijklmnopq abcdefghijklmnopqr", f"{LONG} {LONG}y {LONG}"],
)
def test_word_hashes_split_like_a_word_regex(text):
    h = ShingleHasher(ngram=1, seed=0)
    data = shingles._prepare(text)
    words, offsets = h.word_hashes(data)
    expected = reference_words(text)
    assert len(words) == len(expected)
    assert [data[o : o + len(w.encode())].decode() for o, w in zip(offsets.tolist(), expected)] == expected
    one = {w: h.word_hashes(w.encode())[0][0] for w in expected}  # the same word hashes the same in any context
    assert [one[w] for w in expected] == words.tolist()
    assert len(set(one.values())) == len(one)  # distinct words, distinct hashes (shared 8-byte prefixes too)


def test_shingles_never_cross_documents_and_short_documents_are_one_shingle():
    h = ShingleHasher(ngram=3, seed=1)
    texts = ["a b c d", "e f", "", "g h i"]
    hashes, owner = h.hash_batch(texts)
    assert owner.tolist() == [0, 0, 1, 3]
    alone = [h.hash_batch([t])[0].tolist() for t in texts]
    assert hashes.tolist() == alone[0] + alone[1] + alone[3]
    assert h.hash_batch(["b c d"])[0][0] == hashes[1]  # the n-gram "b c d" hashes the same wherever it is


def test_slices_bound_memory_without_changing_results(monkeypatch):
    h = ShingleHasher(ngram=2, seed=2)
    texts = [f"doc {i} " + "word " * (i % 7) for i in range(50)]
    whole = h.hash_batch(texts)
    monkeypatch.setattr(shingles, "SLICE_BYTES", 40)
    sliced = h.hash_batch(texts)
    assert np.array_equal(whole[0], sliced[0]) and np.array_equal(whole[1], sliced[1])
    assert h.hash_batch([])[0].shape == (0,)


def test_shingle_hashes_look_random():
    """Distinct n-grams collide about as often as random 32-bit values would, and every bit is set half the time."""
    h = ShingleHasher(ngram=3, seed=4)
    words = [f"w{i}" for i in range(40_000)]  # 39,998 distinct trigrams, most words sharing long prefixes
    hashes = h.hash_batch([" ".join(words)])[0]
    assert len(hashes) == len(words) - 2 and hashes.dtype == np.uint32
    assert len(np.unique(hashes)) >= len(hashes) - 3  # ~0.2 collisions expected among 40k random 32-bit values
    bits = (hashes[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.02)
