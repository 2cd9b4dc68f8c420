"""Vectorized shingle hashing: words as a regex would split them, n-grams within documents only."""

import re

import numpy as np
import pytest

from llm_pipeline.curation import shingles
from llm_pipeline.curation.shingles import ShingleHasher


def reference_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_\x80-\U0010ffff]+", text.lower().translate(shingles._TO_SPACE))


@pytest.mark.parametrize("text", ["Hello, World!", "a  b\tc\nd", "naïve café — “ok”", "", "   ", "x_1 y-2 z.3"])
def test_word_hashes_split_like_a_word_regex(text):
    h = ShingleHasher(ngram=1, seed=0)
    words, doc = h.word_hashes(text.lower().translate(shingles._TO_SPACE).encode())
    expected = reference_words(text)
    assert len(words) == len(expected) and (doc == 0).all()
    one = {w: h.word_hashes(w.encode())[0][0] for w in expected}  # the same word hashes the same in any context
    assert [one[w] for w in expected] == words.tolist()


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
