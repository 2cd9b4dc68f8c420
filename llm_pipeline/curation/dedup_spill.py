"""deduped_shards' per-document signatures and band keys, kept on disk instead of in memory.

At 128 permutations and 20 bands a document's MinHash signature is 512 bytes and its band keys 160: in memory they
made the stage's peak grow by ~0.7 KB per document. Pass 1 appends them batch by batch to files instead, one part per
stream of rows (the single-process stage: one part; the Ray engine: one per hash task, in its scratch folder):

  - ``<part>.sigs``: uint32, row-major (n x num_perm), so one document's signature is one contiguous read;
  - ``<part>.keys<b>``: uint64, one file per band, so a band's column over every row is one sequential read.

The decisions read them back one band at a time (a band column: 8 bytes per document) and read the signatures of
candidate pairs' members only, one read each, into the block being verified.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPILL_DIR = ".spill"  # inside the stage's output folder while it runs (dot-named: never read as a shard)


class SpillWriter:
    """Appends one part's signatures and band keys, batch by batch."""

    def __init__(self, folder: Path, name: str, num_perm: int, bands: int):
        self.folder, self.name, self.n = Path(folder), name, 0
        self.folder.mkdir(parents=True, exist_ok=True)
        self.num_perm, self.bands = num_perm, bands
        self.sigs = open(self.folder / f"{name}.sigs", "wb")
        self.keys = [open(self.folder / f"{name}.keys{b}", "wb") for b in range(bands)]

    def append(self, sigs: np.ndarray, keys: np.ndarray) -> None:
        np.ascontiguousarray(sigs, dtype=np.uint32).tofile(self.sigs)
        for b, f in enumerate(self.keys):
            np.ascontiguousarray(keys[:, b], dtype=np.uint64).tofile(f)
        self.n += len(sigs)

    def close(self) -> "Part":
        for f in [self.sigs, *self.keys]:
            f.close()
        return Part(str(self.folder), self.name, self.n)


@dataclass(frozen=True)
class Part:
    folder: str
    name: str
    n: int

    def sig_path(self) -> Path:
        return Path(self.folder) / f"{self.name}.sigs"

    def key_path(self, band: int) -> Path:
        return Path(self.folder) / f"{self.name}.keys{band}"

    def band(self, b: int) -> np.ndarray:
        return np.fromfile(self.key_path(b), dtype=np.uint64)

    def keys(self, bands: int) -> np.ndarray:
        """(n, bands) band keys of this part (a part is one task's rows: small)."""
        return np.stack([self.band(b) for b in range(bands)], axis=1) if bands else np.zeros((self.n, 0), np.uint64)

    def sigs(self, rows: np.ndarray, num_perm: int) -> np.ndarray:
        """Signatures of rows of this part (in the order given), one read per row into the result: a mapping of the
        file would leave every page it touched (and the pages the kernel maps around them) in the resident set."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), num_perm), dtype=np.uint32)
        if len(rows) == 0:
            return out
        width = num_perm * 4
        view = memoryview(out).cast("B")
        fd = os.open(self.sig_path(), os.O_RDONLY)
        try:
            for k in np.argsort(rows, kind="stable").tolist():  # in file order: the reads go forward
                at = int(rows[k]) * width
                if os.preadv(fd, [view[k * width: (k + 1) * width]], at) != width:
                    raise OSError(f"{self.sig_path()}: short read at row {rows[k]}")
        finally:
            os.close(fd)
        return out


class Spilled:
    """The signatures and band keys of a stream of rows, stored as consecutive parts."""

    def __init__(self, parts: list[Part], num_perm: int, bands: int):
        self.parts, self.num_perm, self.bands = list(parts), num_perm, bands
        self.starts = np.cumsum([0] + [p.n for p in self.parts]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def where(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(part, row within it) of stream rows."""
        t = np.searchsorted(self.starts, rows, side="right") - 1
        return t, rows - self.starts[t]

    def band(self, b: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Band b's keys of every row (or of `rows`, in their order): the only column of keys in memory."""
        col = np.concatenate([np.zeros(0, np.uint64)] + [p.band(b) for p in self.parts])
        return col if rows is None else col[row_index(rows)]

    def sigs(self, rows: np.ndarray) -> np.ndarray:
        """Signatures of stream rows, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.num_perm), dtype=np.uint32)
        if len(rows) == 0:
            return out
        t, local = self.where(rows)
        for k in np.unique(t).tolist():
            sel = np.flatnonzero(t == k)
            out[sel] = self.parts[k].sigs(local[sel], self.num_perm)
        return out

    def remove(self) -> None:
        for p in self.parts:
            for path in [p.sig_path(), *(p.key_path(b) for b in range(self.bands))]:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def row_index(rows) -> np.ndarray:
    """Row numbers to index with: an integer array as it is (int32 rows stay 4 bytes), anything else as int64."""
    return rows if isinstance(rows, np.ndarray) and rows.dtype.kind in "iu" else np.asarray(rows, dtype=np.int64)


def ascending(rows: np.ndarray) -> bool:
    return len(rows) < 2 or bool((rows[1:] >= rows[:-1]).all())


def gather_sorted(starts: np.ndarray, rows: np.ndarray, read_part, dtype) -> np.ndarray:
    """``read_part(k)[rows - starts[k]]`` over the parts, for ascending stream `rows`: the result and one part's
    column in memory, not a column over every row and its gathered copy."""
    out = np.empty(len(rows), dtype=dtype)
    cut = np.searchsorted(rows, starts)
    for k in range(len(starts) - 1):
        lo, hi = int(cut[k]), int(cut[k + 1])
        if hi > lo:
            out[lo:hi] = read_part(k)[rows[lo:hi] - starts[k]]
    return out
