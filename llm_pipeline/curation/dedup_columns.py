"""deduped_shards' pass 1: per document, the fixed-width columns its decisions need, kept on disk, and the order of
preference.

Per document: its id as bytes (32 for the pipeline's xxh3-128 ids), its source as two integers (the rank of its file
and its trailing line or row number: ``a.jsonl#L9``), its text length and its normalized-text hash, ~70 bytes. They
are appended batch by batch to files beside the signatures (curation.dedup_spill), one file per column and part
(``<part>.ids``, ``<part>.line``, ...), not held in memory: at a million documents they were ~80 MB resident for
the whole stage, on top of every later step's working memory. Each decision step reads back only the column it
needs, for as long as it needs it (8 bytes per document for an integer column), and the ids are read row by row
for the rows that need one (kept copies, the preview's pair). The distinct file names are the one list of strings
kept, one entry per source file.

The order of preference sorts these columns (packed into one 8-byte key where they fit 63 bits, else with
``np.lexsort``): ``longest`` = the longest text first, then the earliest source (files in natural order, ``part-2``
before ``part-10``, then the line number), then the smallest id; ``earliest_source`` = the source first, then the
length; ``smallest_id`` = the id. Rows that tie on every key are
then ordered on their ids: on their first 8 bytes (a big-endian integer: the same order as the bytes; for
``smallest_id`` these are the sort's key), then, for rows that tie on those too, on their whole ids, read for those
rows only. The sorts are stable, so rows that tie on everything stay in stream order.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_pipeline.curation.dedup import MinHasher, band_keys, exact_hash
from llm_pipeline.curation.dedup_spill import Part, Spilled, SpillWriter, ascending, gather_sorted, row_index

_DIGITS = re.compile(r"(\d+)")
_TRAILING = re.compile(r"^(.*?)(\d{1,18})$", re.S)  # at most 18 digits: the number fits an int64
COLUMNS = {"file_of": np.int32, "line": np.int64, "lengths": np.int64, "hashes": np.uint64}
ID_WIDTH = 32  # the pipeline's ids: 32 hex digits; a longer id widens the part's id file
_COPY_ROWS = 1 << 16  # rows per read when an id file is widened or its prefixes are read
_TIE_ROWS = 1 << 13  # rows per block when the sorted keys are compared for ties


def natural_key(text: str | None) -> tuple:
    """A name that sorts numbers in it as numbers: ``a-9`` before ``a-10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(text or "") if p)


def split_source(source: str | None) -> tuple[str, int]:
    """(file, trailing number or -1): ``legal/a.jsonl#L12`` -> (``legal/a.jsonl#L``, 12)."""
    m = _TRAILING.match(source or "")
    return (m.group(1), int(m.group(2))) if m else (source or "", -1)


@dataclass(frozen=True)
class ColumnPart:
    """One stream of rows' columns on disk (the single-process stage: one part; the task split: one per hash task).
    `files` are the source file names its ``file_of`` column indexes."""

    folder: str
    name: str
    n: int
    width: int
    files: tuple[str, ...]

    def path(self, column: str) -> Path:
        return Path(self.folder) / f"{self.name}.{column}"

    def column(self, column: str) -> np.ndarray:
        return np.fromfile(self.path(column), dtype=COLUMNS[column])

    def id_prefixes(self) -> np.ndarray:
        """Each row's first 8 id bytes as a big-endian integer (zero-padded): the ids' byte order, 8 bytes a row."""
        out = np.zeros(self.n, dtype=np.uint64)
        take = min(8, self.width)
        with open(self.path("ids"), "rb") as f:
            for lo in range(0, self.n, _COPY_ROWS):
                k = min(_COPY_ROWS, self.n - lo)
                raw = np.frombuffer(f.read(k * self.width), dtype=np.uint8).reshape(k, self.width)
                head = np.zeros((k, 8), dtype=np.uint8)
                head[:, :take] = raw[:, :take]
                out[lo: lo + k] = head.view(">u8").ravel()
        return out

    def ids(self, rows: np.ndarray) -> np.ndarray:
        """Ids of rows of this part (in the order given), one read per row, as the signatures are read."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(len(rows), dtype=f"S{self.width}")
        if len(rows) == 0:
            return out
        view = memoryview(out).cast("B")
        w = self.width
        fd = os.open(self.path("ids"), os.O_RDONLY)
        try:
            for k in np.argsort(rows, kind="stable").tolist():
                if os.preadv(fd, [view[k * w: (k + 1) * w]], int(rows[k]) * w) != w:
                    raise OSError(f"{self.path('ids')}: short read at row {rows[k]}")
        finally:
            os.close(fd)
        return out

    def remove(self) -> None:
        for column in ["ids", *COLUMNS]:
            try:
                os.unlink(self.path(column))
            except FileNotFoundError:
                pass


class ColumnWriter:
    """Appends one part's columns, batch by batch."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name, self.n, self.width = Path(folder), name, 0, ID_WIDTH
        self.folder.mkdir(parents=True, exist_ok=True)
        self.out = {c: open(self.folder / f"{name}.{c}", "wb") for c in ["ids", *COLUMNS]}

    def append(self, ids: np.ndarray, **columns: np.ndarray) -> None:
        if ids.dtype.itemsize > self.width:
            self._widen(ids.dtype.itemsize)
        np.ascontiguousarray(ids, dtype=f"S{self.width}").tofile(self.out["ids"])
        for c, dtype in COLUMNS.items():
            np.ascontiguousarray(columns[c], dtype=dtype).tofile(self.out[c])
        self.n += len(ids)

    def _widen(self, width: int) -> None:
        """Rewrite the ids written so far at a new width (a longer id than any before: rare, one copy)."""
        self.out["ids"].close()
        path = self.folder / f"{self.name}.ids"
        tmp = path.with_name(path.name + ".wide")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            for lo in range(0, self.n, _COPY_ROWS):
                k = min(_COPY_ROWS, self.n - lo)
                np.frombuffer(src.read(k * self.width), dtype=f"S{self.width}").astype(f"S{width}").tofile(dst)
        os.replace(tmp, path)
        self.width = width
        self.out["ids"] = open(path, "ab")

    def close(self, files: list[str]) -> ColumnPart:
        for f in self.out.values():
            f.close()
        return ColumnPart(str(self.folder), self.name, self.n, self.width, tuple(files))


def _narrow(values: np.ndarray) -> np.ndarray:
    """`values` as int32 when every one fits (the same order, half the bytes), else as they are."""
    if len(values) and np.iinfo(np.int32).min <= values.min() and values.max() <= np.iinfo(np.int32).max:
        return values.astype(np.int32)
    return values


def _ties(by: np.ndarray, keys: list[np.ndarray]) -> np.ndarray:
    """``tied[p]``: the rows at sorted positions p and p + 1 are equal on every key (compared a block of
    ``_TIE_ROWS`` at a time: no sorted copy of a whole key)."""
    tied = np.ones(max(len(by) - 1, 0), dtype=bool)
    for lo in range(0, len(by) - 1, _TIE_ROWS):
        at = by[lo: lo + _TIE_ROWS + 1]
        for key in keys:
            ordered = key[at]
            tied[lo: lo + len(at) - 1] &= ordered[1:] == ordered[:-1]
    return tied


class Hashed:
    """Pass 1's per-document columns, in stream order, on disk as consecutive parts (the text is read again in
    pass 2). Nothing per document is held here."""

    def __init__(self, parts: list[ColumnPart], bytes_in: int, spilled: Spilled | None):
        self.parts, self.bytes_in, self.spilled = list(parts), bytes_in, spilled
        self.starts = np.cumsum([0] + [p.n for p in self.parts]).astype(np.int64)
        files: dict[str, int] = {}
        self._remap = [np.array([files.setdefault(f, len(files)) for f in p.files] or [0], dtype=np.int32)
                       for p in self.parts]
        self.files = list(files)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @classmethod
    def concat(cls, parts: list["Hashed"]) -> "Hashed":
        """One stream of the parts' rows, in part order (the hash tasks of compute.dedup): the parts' files are
        joined, nothing is copied."""
        spilled = [p.spilled for p in parts if p.spilled is not None]
        joined = Spilled([q for s in spilled for q in s.parts], spilled[0].num_perm, spilled[0].bands) if spilled else None
        return cls([c for p in parts for c in p.parts], sum(p.bytes_in for p in parts), joined)

    def column(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """One column over every row (or `rows`, in their order; ascending rows are read part by part, without the
        whole column); ``file_of`` indexes ``self.files``."""
        def part(k: int) -> np.ndarray:
            values = self.parts[k].column(name)
            return self._remap[k][values] if name == "file_of" else values

        if rows is not None and ascending(rows):
            return gather_sorted(self.starts, rows, part, COLUMNS[name])
        col = np.zeros(len(self), dtype=COLUMNS[name])
        for k in range(len(self.parts)):
            col[self.starts[k]: self.starts[k + 1]] = part(k)
        return col if rows is None else col[row_index(rows)]

    def ids(self, rows: np.ndarray) -> np.ndarray:
        """Ids (bytes) of stream rows, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        width = max([p.width for p in self.parts] or [1])
        out = np.zeros(len(rows), dtype=f"S{width}")
        t = np.searchsorted(self.starts, rows, side="right") - 1
        for k in np.unique(t).tolist():
            sel = np.flatnonzero(t == k)
            out[sel] = self.parts[k].ids(rows[sel] - self.starts[k])
        return out

    def id_of(self, row: int) -> str:
        return self.ids(np.array([row]))[0].decode("utf-8")

    def _id_prefixes(self) -> np.ndarray:
        out = np.zeros(len(self), dtype=np.uint64)
        for k, p in enumerate(self.parts):
            out[self.starts[k]: self.starts[k + 1]] = p.id_prefixes()
        return out

    def preference_order(self, keep: str) -> np.ndarray:
        """Rows from the one to keep first to the one to keep last (``deduped_shards.keep``); ties end on the id, so
        the order, and the kept set, do not depend on the order rows arrived in."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        order = sorted(range(len(self.files)), key=lambda k: natural_key(self.files[k]))
        rank = np.empty(len(self.files), dtype=np.int32)
        rank[order] = np.arange(len(self.files))
        # The keys and the sort are a peak of the driver's memory in deduped_shards: one packed 8-byte key where the
        # columns fit 63 bits (they do in practice), else 4-byte keys where their values fit. With ``longest`` and
        # ``earliest_source`` the ids stay out of the sort: a file and a line name one document, so rows that tie on
        # every key are few, and only those are then ordered on their ids.
        primary_first = {"longest": [("lengths", -1), ("file_of", 1), ("line", 1)],
                         "earliest_source": [("file_of", 1), ("line", 1), ("lengths", -1)]}.get(keep)
        packed = self._packed_key(primary_first, rank) if primary_first else None
        if packed is not None:  # one 8-byte key: its stable sort holds 20 bytes a row, a lexsort of three 24
            keys = [packed]
            by = np.argsort(packed, kind="stable")
        else:
            if keep == "longest":  # np.lexsort: the last key is the primary one
                keys = [_narrow(self.column("line")), rank[self.column("file_of")], _narrow(-self.column("lengths"))]
            elif keep == "earliest_source":
                keys = [_narrow(-self.column("lengths")), _narrow(self.column("line")), rank[self.column("file_of")]]
            else:
                keys = [self._id_prefixes()]
            by = np.lexsort(keys)
        by = by.astype(np.int64, copy=False)  # intp already: no second copy
        tied = _ties(by, keys)
        del keys, packed
        if keep != "smallest_id" and tied.sum() > len(by) // 64:  # many ties: the prefixes first, read in one pass
            tied = self._order_ties(by, tied, prefixes=True)
        if tied.any():  # the whole ids of the rows still tied (read row by row)
            self._order_ties(by, tied, prefixes=False)
        return by

    def _packed_key(self, columns: list[tuple[str, int]], rank: np.ndarray) -> np.ndarray | None:
        """The columns (primary first; sign -1: descending) packed into one int64 that sorts as they do, each
        shifted to start at 0 and given the bits its range needs, built part by part; None when they need more
        than 63 bits."""
        def part(k: int, name: str, sign: int) -> np.ndarray:
            values = self.parts[k].column(name)
            values = rank[self._remap[k][values]] if name == "file_of" else values
            return values.astype(np.int64, copy=False) * sign

        spans = []
        for name, sign in columns:
            lows, highs = [], []
            for k, p in enumerate(self.parts):
                if p.n:
                    values = part(k, name, sign)
                    lows.append(int(values.min()))
                    highs.append(int(values.max()))
            low, high = min(lows), max(highs)
            spans.append((name, sign, low, max(1, (high - low).bit_length())))
        if sum(bits for *_, bits in spans) > 63:
            return None
        packed = np.empty(len(self), dtype=np.int64)
        for k, p in enumerate(self.parts):
            key = np.zeros(p.n, dtype=np.int64)
            for name, sign, low, bits in spans:
                key = (key << np.int64(bits)) | (part(k, name, sign) - np.int64(low))
            packed[self.starts[k]: self.starts[k + 1]] = key
        return packed

    def _order_ties(self, by: np.ndarray, tied: np.ndarray, prefixes: bool) -> np.ndarray:
        """Each run of tied positions of `by` (``tied[p]``: positions p and p + 1 tie) ordered, stably, on the ids'
        first 8 bytes (`prefixes`) or on the whole ids; returns which neighbours still tie after that."""
        after = np.concatenate([[False], tied])  # position p ties with p - 1
        pos = np.flatnonzero(after | np.concatenate([tied, [False]]))
        del after
        run = np.cumsum(np.concatenate([[True], ~tied[pos[:-1]]]))  # runs of consecutive tied positions
        rows = by[pos]
        values = self._id_prefixes()[rows] if prefixes else self.ids(rows)
        sub = np.lexsort((values, run))
        by[pos] = rows[sub]
        values, run = values[sub], run[sub]
        still = np.zeros(len(tied), dtype=bool)
        still[pos[:-1][(run[1:] == run[:-1]) & (values[1:] == values[:-1])]] = True
        return still


def hash_pass(batches, hasher: MinHasher | None, banding: tuple[int, int] | None, spill_to, meter=None) -> Hashed:
    """Pass 1 over record batches (id, source, text): the columns, and the signatures and band keys (when `banding`
    is given), appended to files in ``spill_to = (folder, part name)``."""
    folder, name = spill_to
    columns = ColumnWriter(folder, name)
    files: dict[str, int] = {}
    writer = SpillWriter(folder, name, hasher.num_perm, banding[0]) if banding is not None else None
    bytes_in = 0
    for batch in batches:
        texts = [r["text"] or "" for r in batch]
        where = [split_source(r.get("source")) for r in batch]
        columns.append(np.array([(r["id"] or "").encode("utf-8") for r in batch], dtype="S"),
                       file_of=np.array([files.setdefault(f, len(files)) for f, _ in where], dtype=np.int32),
                       line=np.array([k for _, k in where], dtype=np.int64),
                       lengths=np.array([len(t) for t in texts], dtype=np.int64),
                       hashes=np.array([exact_hash(t) for t in texts], dtype=np.uint64))
        bytes_in += sum(len(t.encode("utf-8")) for t in texts)
        if writer is not None:
            sigs = hasher.signatures(texts)
            writer.append(sigs, band_keys(sigs, *banding))
        if meter is not None:
            meter.update(columns.n)
    spilled = Spilled([writer.close()], hasher.num_perm, banding[0]) if writer is not None else None
    return Hashed([columns.close(list(files))], bytes_in, spilled)


__all__ = ["ColumnPart", "Hashed", "Part", "hash_pass", "natural_key", "split_source"]
