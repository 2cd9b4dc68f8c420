"""Word n-gram shingle hashes for a whole batch of texts, computed with numpy array operations (no Python per word).

MinHash needs, per document, the hash of every word n-gram. Tokenizing with a regex and hashing word by word in
Python costs about a microsecond per word, which made it the slowest part of near-dedup. Here the batch is one
byte array instead:

1. each text is lower-cased, common Unicode punctuation and spaces become ASCII spaces (``str.translate``), and the
   texts are joined with NUL separators and UTF-8 encoded;
2. a lookup table marks word bytes (ASCII letters, digits, ``_`` and every non-ASCII byte, i.e. the letters of
   other scripts), so word starts and ends are where that mask changes;
3. a word's hash is the wrap-around sum of ``byte * multiplier[position in word]`` (``np.add.reduceat``), mixed
   with the word length and a seed and finalized with a xorshift-multiply; a shingle's hash folds ``n``
   consecutive word hashes with odd multipliers, and shingles that would cross a document boundary are dropped.

A document shorter than ``n`` words is one shingle of all its words. Work is done in slices of bounded bytes, so a
batch holding one huge document does not allocate arrays many times the batch size at once.

    hashes, owners = ShingleHasher(ngram=5, seed=1234).hash_batch(texts)   # uint64 hashes, document index of each
"""

from __future__ import annotations

import numpy as np

MAX_HASH_32 = np.uint64(0xFFFFFFFF)
SLICE_BYTES = 8 << 20  # text bytes per vectorized slice: ~10 uint64 arrays of this length live at once (~0.6 GB max)
MAX_WORD_POSITION = 64  # characters after the 64th of a word share a multiplier: such "words" are rare and still hashed

# Punctuation and spaces outside ASCII that would otherwise count as word bytes; NUL is the document separator.
_TO_SPACE = str.maketrans({c: " " for c in "\x00“”„‘’‚«»‹›–—―…•·\u00a0\u2002\u2003\u2009\u200a\u200b\u202f\u3000"})
_IS_WORD = np.zeros(256, dtype=bool)
_IS_WORD[np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", dtype=np.uint8)] = True
_IS_WORD[128:] = True


def _mix64(x: np.ndarray) -> np.ndarray:
    """A xorshift-multiply finalizer (the one in splitmix64), in place: spreads every input bit over the output."""
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


class ShingleHasher:
    def __init__(self, ngram: int, seed: int):
        self.ngram = ngram
        rng = np.random.default_rng([seed, 0x5A1])
        self._pos_mult = rng.integers(1, 1 << 63, size=MAX_WORD_POSITION, dtype=np.uint64) | np.uint64(1)
        self._len_mult = np.uint64(int(rng.integers(1, 1 << 62)) | 1)
        self._seed = np.uint64(int(rng.integers(0, 1 << 62)))
        self._mix = rng.integers(1, 1 << 63, size=ngram, dtype=np.uint64) | np.uint64(1)

    def word_hashes(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of the words in NUL-separated `data`, and each word's document number within it."""
        b = np.frombuffer(data, dtype=np.uint8)
        is_word = _IS_WORD[b]
        edges = np.diff(is_word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edges == 1)
        if len(starts) == 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        ends = np.flatnonzero(edges == -1)
        lengths = ends - starts
        first = np.zeros(len(starts), dtype=np.int64)  # index among the word bytes of each word's first byte
        np.cumsum(lengths[:-1], out=first[1:])
        position = np.arange(int(lengths.sum())) - np.repeat(first, lengths)
        np.minimum(position, MAX_WORD_POSITION - 1, out=position)
        with np.errstate(over="ignore"):
            values = b[is_word].astype(np.uint64) * self._pos_mult[position]
            h = np.add.reduceat(values, first)
            h += lengths.astype(np.uint64) * self._len_mult + self._seed
        doc = np.searchsorted(np.flatnonzero(b == 0), starts)  # NULs before the word = its document number
        return _mix64(h), doc

    def _fold(self, seq: np.ndarray, n: int) -> np.ndarray:
        """Hashes of the n-grams of a word-hash sequence: len(seq) - n + 1 values."""
        width = len(seq) - n + 1
        with np.errstate(over="ignore"):
            h = np.zeros(width, dtype=np.uint64)
            for k in range(n):
                h = (h ^ seq[k : k + width]) * self._mix[k]
        return _mix64(h) & MAX_HASH_32

    def _hash_slice(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        data = "\x00".join(t.lower().translate(_TO_SPACE) for t in texts).encode("utf-8", "surrogatepass")
        words, doc = self.word_hashes(data)
        n = self.ngram
        parts, owners = [], []
        if len(words) >= n:
            full = self._fold(words, n)
            ok = doc[: len(full)] == doc[n - 1 :]  # all n words in one document
            parts.append(full[ok])
            owners.append(doc[: len(full)][ok])
        counts = np.bincount(doc, minlength=len(texts))
        for d in np.flatnonzero((counts > 0) & (counts < n)):  # short documents: one shingle of all their words
            parts.append(self._fold(words[doc == d], int(counts[d])))
            owners.append(np.array([d]))
        if not parts:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        hashes, owner = np.concatenate(parts), np.concatenate(owners)
        order = np.argsort(owner, kind="stable")  # shingles grouped by document, documents in order
        return hashes[order], owner[order]

    def hash_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit shingle hashes (in uint64) of every text, grouped by document, and the document index of each."""
        out_h, out_d = [], []
        start = 0
        while start < len(texts):
            stop, size = start, 0
            while stop < len(texts) and (stop == start or size + len(texts[stop]) <= SLICE_BYTES):
                size += len(texts[stop])
                stop += 1
            h, d = self._hash_slice(texts[start:stop])
            out_h.append(h)
            out_d.append(d + start)
            start = stop
        if not out_h:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        return np.concatenate(out_h), np.concatenate(out_d)
