"""Word n-gram shingle hashes for a whole batch of texts, computed with numpy array operations (no Python per word).

MinHash needs, per document, the hash of every word n-gram. Tokenizing with a regex and hashing word by word in
Python costs about a microsecond per word, which made it the slowest part of near-dedup. Here the batch is one
byte array instead:

1. each text is lower-cased; in texts that are not pure ASCII, common Unicode punctuation and spaces become ASCII
   spaces. The texts are UTF-8 encoded and joined with spaces; each document's byte offset is kept;
2. word bytes are ASCII letters, digits, ``_`` and every non-ASCII byte (the letters of other scripts), so words
   start and end where that byte class changes;
3. a word's hash reads its bytes as little-endian 64-bit integers, 8 bytes at a time (one unaligned gather for
   all words, one more per further 8 bytes for the longer ones), masked to the word's length and mixed with a
   xorshift-multiply. Up to 8 bytes this is a bijection, so short words never collide; words over
   ``MAX_VECTOR_WORD`` bytes (rare: URLs, base64) are hashed with xxh3 one at a time;
4. a shingle's hash folds ``n`` consecutive word hashes with odd multipliers and keeps the high 32 bits of the last
   product; shingles that would cross a document boundary are dropped, and a document shorter than ``n`` words is
   one shingle of all its words (the fold's prefix, taken on the way).

Work is done in slices of about ``SLICE_BYTES`` of text: a slice's arrays stay in cache and their memory is reused
from slice to slice (larger slices ran slower, mostly from page faults on fresh allocations), and a batch holding
one huge document does not allocate arrays many times the batch size at once.

    hashes, owners = ShingleHasher(ngram=5, seed=1234).hash_batch(texts)   # uint32 hashes, document index of each
"""

from __future__ import annotations

import numpy as np
import xxhash

SLICE_BYTES = 256 << 10  # text bytes per vectorized slice: its arrays (~10x this) stay in cache and are reused, not re-mapped
MAX_VECTOR_WORD = 256  # longer words get one xxh3 call each instead of one more gather per 8 bytes

# Punctuation and spaces outside ASCII that would otherwise count as word bytes.
_TO_SPACE = str.maketrans({c: " " for c in "“”„‘’‚«»‹›–—―…•·\u00a0\u2002\u2003\u2009\u200a\u200b\u202f\u3000"})
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)  # mask of a word's first k bytes


def _mix64(x: np.ndarray) -> np.ndarray:
    """A xorshift-multiply finalizer (the one in splitmix64), in place: spreads every input bit over the output."""
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _word_bytes(b: np.ndarray) -> np.ndarray:
    """True for bytes that belong to words: [0-9A-Za-z_] and every byte >= 0x80 (four SIMD passes, no table lookup)."""
    m = (b | np.uint8(0x20)) - np.uint8(ord("a")) < 26
    m |= b - np.uint8(ord("0")) < 10
    m |= b >= 0x80
    m |= b == ord("_")
    return m


def _prepare(text: str) -> bytes:
    text = text.lower()
    if not text.isascii():  # O(1) in CPython; ASCII texts have nothing to translate
        text = text.translate(_TO_SPACE)
    return text.encode("utf-8", "surrogatepass")


class ShingleHasher:
    def __init__(self, ngram: int, seed: int):
        self.ngram = ngram
        rng = np.random.default_rng([seed, 0x5A1])
        self._seed = np.uint64(int(rng.integers(0, 1 << 63)))
        self._mix = rng.integers(1, 1 << 63, size=ngram, dtype=np.uint64) | np.uint64(1)
        self._xxh_seed = int(rng.integers(0, 1 << 63))

    def word_hashes(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of the words in `data` (lower-cased UTF-8) and each word's start offset in it."""
        # A space before and 8 bytes after: every word has a class change on both sides, and an 8-byte read from any
        # word start stays inside the buffer.
        buf = b" " + data + b" " * 8
        b = np.frombuffer(buf, dtype=np.uint8)
        is_word = _word_bytes(b)
        change = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1  # alternately a word's first byte and one past its last
        starts, ends = change[0::2], change[1::2]
        lengths = ends - starts
        # Every byte offset as the start of a little-endian uint64 (unaligned reads, no copy).
        u64 = np.ndarray(shape=(len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
        h = u64[starts]
        h &= _LOW_BYTES[np.minimum(lengths, 8)]
        h ^= self._seed
        longer = np.flatnonzero((lengths > 8) & (lengths <= MAX_VECTOR_WORD))
        offset = 8
        while len(longer):  # the next 8 bytes of every word that has them
            rest = lengths[longer] - offset
            chunk = u64[starts[longer] + offset] & _LOW_BYTES[np.minimum(rest, 8)]
            h[longer] = _mix64(h[longer]) ^ chunk
            longer = longer[rest > 8]
            offset += 8
        for i in np.flatnonzero(lengths > MAX_VECTOR_WORD).tolist():
            h[i] = xxhash.xxh3_64_intdigest(buf[starts[i] : ends[i]], self._xxh_seed)
        return _mix64(h), starts - 1

    def _hash_slice(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit shingle hashes of the texts, grouped by document in order, and the number of shingles of each."""
        parts = [_prepare(t) for t in texts]
        sizes = np.array([len(p) + 1 for p in parts], dtype=np.int64)
        doc_start = np.cumsum(sizes) - sizes  # byte offset of each document in the joined data
        words, word_start = self.word_hashes(b" ".join(parts))
        n, n_words = self.ngram, len(words)
        first = np.searchsorted(word_start, doc_start)  # index of each document's first word
        counts = np.diff(first, append=n_words)
        # Shingles per document: one per full n-gram, or one of all its words when it is shorter.
        per_doc = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
        if n_words == 0:
            return np.zeros(0, dtype=np.uint32), per_doc
        seq = np.concatenate([words, np.zeros(n - 1, dtype=np.uint64)])
        short = np.flatnonzero((counts > 0) & (counts < n))
        h = np.zeros(n_words, dtype=np.uint64)
        prefix = np.zeros(len(short), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                h ^= seq[k : k + n_words]
                h *= self._mix[k]
                done = counts[short] == k + 1
                prefix[done] = h[first[short[done]]]  # a short document's shingle: the fold of its k + 1 words
        h[first[short]] = prefix  # an n-gram starting there would cross into the next document anyway
        # Drop the n-grams that start in a document's last n - 1 words (or after a short document's first word):
        # at most n - 1 positions per document, so this touches far fewer values than a per-word test would.
        drop_from, drop_count = first + per_doc, counts - per_doc
        step = np.arange(n - 1)
        drop = (drop_from[:, None] + step)[step < drop_count[:, None]]
        keep = np.ones(n_words, dtype=bool)
        keep[drop] = False
        # The high half of the last odd multiply depends on every bit of the fold: a well-mixed 32-bit hash.
        return (h[keep] >> np.uint64(32)).astype(np.uint32), per_doc

    def slices(self, texts: list[str]):
        """(start, stop, hashes, counts) per slice of texts of about ``SLICE_BYTES``: see ``hash_counts``."""
        start = 0
        while start < len(texts):
            stop, size = start, 0
            while stop < len(texts) and (stop == start or size + len(texts[stop]) <= SLICE_BYTES):
                size += len(texts[stop])
                stop += 1
            yield (start, stop, *self._hash_slice(texts[start:stop]))
            start = stop

    def hash_counts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit shingle hashes of every text, grouped by document in order, and the number of shingles of each."""
        out_h, out_n = [np.zeros(0, dtype=np.uint32)], [np.zeros(0, dtype=np.int64)]
        for _, _, h, n in self.slices(texts):
            out_h.append(h)
            out_n.append(n)
        return np.concatenate(out_h), np.concatenate(out_n)

    def hash_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit shingle hashes of every text, grouped by document, and the document index of each."""
        hashes, counts = self.hash_counts(texts)
        return hashes, np.repeat(np.arange(len(texts)), counts)
