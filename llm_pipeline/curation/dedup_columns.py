"""deduped_shards' pass 1: per document, the fixed-width columns its decisions need, and the order of preference.

In memory per document: its id as bytes (32 for the pipeline's xxh3-128 ids), its source as two integers (the rank
of its file and its trailing line or row number: ``a.jsonl#L9``), its text length and its normalized-text hash,
~70 bytes in numpy arrays; no Python object per document. Its MinHash signature and band keys go to disk
(curation.dedup_spill). The distinct file names are the one list of strings kept, one entry per source file.

The order of preference sorts these columns with ``np.lexsort``: ``longest`` = the longest text first, then the
earliest source (files in natural order, ``part-2`` before ``part-10``, then the line number), then the smallest id;
``earliest_source`` = the source first, then the length; ``smallest_id`` = the id. The sort is stable, so rows that
tie on everything stay in stream order.
"""

from __future__ import annotations

import re

import numpy as np

from llm_pipeline.curation.dedup import MinHasher, band_keys, exact_hash
from llm_pipeline.curation.dedup_spill import Part, Spilled, SpillWriter

_DIGITS = re.compile(r"(\d+)")
_TRAILING = re.compile(r"^(.*?)(\d{1,18})$", re.S)  # at most 18 digits: the number fits an int64


def natural_key(text: str | None) -> tuple:
    """A name that sorts numbers in it as numbers: ``a-9`` before ``a-10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(text or "") if p)


def split_source(source: str | None) -> tuple[str, int]:
    """(file, trailing number or -1): ``legal/a.jsonl#L12`` -> (``legal/a.jsonl#L``, 12)."""
    m = _TRAILING.match(source or "")
    return (m.group(1), int(m.group(2))) if m else (source or "", -1)


class Hashed:
    """Pass 1's per-document columns, in stream order (the text is read again in pass 2)."""

    def __init__(self, ids: np.ndarray, files: list[str], file_of: np.ndarray, line: np.ndarray, lengths: np.ndarray,
                 hashes: np.ndarray, bytes_in: int, spilled: Spilled | None):
        self.ids, self.files, self.file_of, self.line = ids, files, file_of, line
        self.lengths, self.hashes, self.bytes_in, self.spilled = lengths, hashes, bytes_in, spilled

    def __len__(self) -> int:
        return len(self.hashes)

    @classmethod
    def concat(cls, parts: list["Hashed"]) -> "Hashed":
        """One stream of the parts' rows, in part order (the hash tasks of compute.dedup). The list is emptied as
        each part is copied, so the columns are not held twice over."""
        n = sum(len(p) for p in parts)
        width = max([p.ids.dtype.itemsize for p in parts] or [1])
        out = cls(np.empty(n, f"S{width}"), [], np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.int64),
                  np.empty(n, np.uint64), 0, None)
        files: dict[str, int] = {}
        spilled: list[Spilled] = []
        at = 0
        while parts:
            p = parts.pop(0)
            k = len(p)
            remap = np.array([files.setdefault(f, len(files)) for f in p.files] or [0], dtype=np.int32)
            out.ids[at: at + k], out.file_of[at: at + k] = p.ids, remap[p.file_of]
            out.line[at: at + k], out.lengths[at: at + k], out.hashes[at: at + k] = p.line, p.lengths, p.hashes
            out.bytes_in += p.bytes_in
            if p.spilled is not None:
                spilled.append(p.spilled)
            at += k
        out.files = list(files)
        if spilled:
            out.spilled = Spilled([q for s in spilled for q in s.parts], spilled[0].num_perm, spilled[0].bands)
        return out

    def id_of(self, row: int) -> str:
        return self.ids[row].decode("utf-8")

    def preference_order(self, keep: str) -> np.ndarray:
        """Rows from the one to keep first to the one to keep last (``deduped_shards.keep``); ties end on the id, so
        the order, and the kept set, do not depend on the order rows arrived in."""
        order = sorted(range(len(self.files)), key=lambda k: natural_key(self.files[k]))
        rank = np.empty(len(self.files), dtype=np.int64)
        rank[order] = np.arange(len(self.files))
        src = rank[self.file_of] if len(self.files) else np.zeros(len(self), dtype=np.int64)
        if keep == "longest":
            keys = (self.ids, self.line, src, -self.lengths)  # np.lexsort: the last key is the primary one
        elif keep == "earliest_source":
            keys = (self.ids, -self.lengths, self.line, src)
        else:
            keys = (self.ids,)
        return np.lexsort(keys).astype(np.int64) if len(self) else np.zeros(0, dtype=np.int64)


class _Columns:
    """The fixed-width columns, filled batch by batch into arrays allocated once for the expected row count (grown
    by doubling if more rows come): no per-batch arrays to concatenate, which held the columns twice at the end of
    the pass and left the heap fragmented."""

    def __init__(self, rows: int):
        rows = max(rows, 1)
        self.n, self.width = 0, 32  # the pipeline's ids: 32 hex digits; a longer id widens the column
        self.ids = np.zeros(rows, dtype=f"S{self.width}")
        self.file_of = np.zeros(rows, dtype=np.int32)
        self.line = np.zeros(rows, dtype=np.int64)
        self.lengths = np.zeros(rows, dtype=np.int64)
        self.hashes = np.zeros(rows, dtype=np.uint64)

    def append(self, ids: np.ndarray, file_of, line, lengths, hashes) -> None:
        k = len(ids)
        if self.n + k > len(self.hashes):
            size = max(self.n + k, 2 * len(self.hashes))
            for name in ("ids", "file_of", "line", "lengths", "hashes"):
                old = getattr(self, name)
                new = np.zeros(size, dtype=old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        if ids.dtype.itemsize > self.width:
            self.width = ids.dtype.itemsize
            self.ids = self.ids.astype(f"S{self.width}")
        lo, hi = self.n, self.n + k
        self.ids[lo:hi], self.file_of[lo:hi], self.line[lo:hi] = ids, file_of, line
        self.lengths[lo:hi], self.hashes[lo:hi] = lengths, hashes
        self.n = hi

    def arrays(self) -> tuple:
        names = ("ids", "file_of", "line", "lengths", "hashes")
        if self.n == len(self.hashes):
            return tuple(getattr(self, name) for name in names)
        return tuple(getattr(self, name)[: self.n].copy() for name in names)


def hash_pass(batches, hasher: MinHasher | None, banding: tuple[int, int] | None, spill_to=None, meter=None,
              rows: int = 0) -> Hashed:
    """Pass 1 over record batches (id, source, text): the columns in memory (sized for `rows`, the expected count);
    signatures and band keys (when `banding` is given) appended to ``spill_to = (folder, part name)``."""
    columns = _Columns(rows)
    files: dict[str, int] = {}
    writer = None
    if banding is not None:
        folder, name = spill_to
        writer = SpillWriter(folder, name, hasher.num_perm, banding[0])
    bytes_in = 0
    for batch in batches:
        texts = [r["text"] or "" for r in batch]
        where = [split_source(r.get("source")) for r in batch]
        columns.append(np.array([(r["id"] or "").encode("utf-8") for r in batch], dtype="S"),
                       np.array([files.setdefault(f, len(files)) for f, _ in where], dtype=np.int32),
                       np.array([k for _, k in where], dtype=np.int64), np.array([len(t) for t in texts], dtype=np.int64),
                       np.array([exact_hash(t) for t in texts], dtype=np.uint64))
        bytes_in += sum(len(t.encode("utf-8")) for t in texts)
        if writer is not None:
            sigs = hasher.signatures(texts)
            writer.append(sigs, band_keys(sigs, *banding))
        if meter is not None:
            meter.update(columns.n)
    spilled = Spilled([writer.close()], hasher.num_perm, banding[0]) if writer is not None else None
    ids, file_of, line, lengths, hashes = columns.arrays()
    return Hashed(ids, list(files), file_of, line, lengths, hashes, bytes_in, spilled)


__all__ = ["Hashed", "Part", "hash_pass", "natural_key", "split_source"]
