"""The persisted near-duplicate index of a domain, which later domains query for the cross-domain rule
(deduped_shards ``scope: global``).

One folder per domain, ``<data_dir>/.dedup_index/<domain>.idx/``, of plain ``.npy`` arrays that a later domain maps
into memory (no Python object per entry). Entries are sorted by hash, so an exact lookup is a binary search on the
mapped array; the band keys are stored band by band, so a query reads one band's column at a time. Per indexed
document:

  - ``rows`` (uint32): its row in the domain's cleaned_corpus output, where its id and text are read when a query
    needs them (only candidates' rows are read);
  - ``hashes`` (uint64): its normalized-text hash, for exact duplicates;
  - ``keys`` (uint32 x bands): its LSH band keys folded to 32 bits (a fold collision only adds a candidate, which
    verification then drops).

That is 4 + 8 + 4 x bands bytes per document: 92 at the default 20 bands (the signatures it once kept made it
~800). A candidate pair is verified on a signature recomputed from the indexed document's text with the same
MinHasher, which gives the same estimate a stored signature would. ``meta.json`` holds the MinHash parameters and
a fingerprint of the cleaned_corpus output the rows point into: once that output changes, the index is stale and
its domain counts as not indexed until its deduped_shards re-runs.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from llm_pipeline.io import MANIFEST, shard_files

ARRAYS = ("rows", "hashes", "keys")
FORMAT = 2  # 2: entries sorted by hash, keys band-major; part of the parameters, so an older index counts as stale


def fold32(keys: np.ndarray) -> np.ndarray:
    """64-bit band keys folded to 32 bits (high half xor low half)."""
    keys = np.asarray(keys, dtype=np.uint64)
    return ((keys >> np.uint64(32)) ^ keys).astype(np.uint32)


def source_fingerprint(folder: Path) -> str:
    """What the rows point into: the cleaned output's manifest and its shards' names and sizes."""
    h = hashlib.sha256()
    manifest = Path(folder) / MANIFEST
    if manifest.exists():
        h.update(manifest.read_bytes())
    for path in shard_files(folder):
        h.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\n".encode())
    return h.hexdigest()


_SORT_ROWS = 1 << 16  # entries per block when the hashes' top byte is taken


def hash_order(hashes: np.ndarray) -> np.ndarray:
    """``np.argsort(hashes, kind="stable")`` as int32 (below 2**31 entries), sorted a bucket of the top byte at a
    time: the hashes, a byte and the 4-byte order per entry at the peak (13 bytes), where one argsort held its 8-byte
    order, its buffer and then the 4-byte copy (20)."""
    n = len(hashes)
    order = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
    top = np.empty(n, dtype=np.uint8)
    for lo in range(0, n, _SORT_ROWS):
        top[lo: lo + _SORT_ROWS] = hashes[lo: lo + _SORT_ROWS] >> np.uint64(56)
    at = 0
    for b in np.flatnonzero(np.bincount(top, minlength=256)).tolist():
        rows = np.flatnonzero(top == b)  # ascending: equal hashes (one bucket) keep their order
        order[at: at + len(rows)] = rows[np.argsort(hashes[rows], kind="stable")]
        at += len(rows)
    return order


def _header(out, dtype, shape: tuple) -> None:
    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})


def _write_taken(out, values: np.ndarray, order: np.ndarray, dtype) -> None:
    """``values[order]`` appended to `out` a block of `order` at a time: no taken copy of the whole column."""
    for lo in range(0, len(order), _SORT_ROWS):
        values[order[lo: lo + _SORT_ROWS]].astype(dtype, copy=False).tofile(out)


def write(path: Path, rows: np.ndarray, hashes: np.ndarray, key_bands, params: list[int], source: Path) -> None:
    """Replace the index folder at `path` (a temp folder renamed into place). `hashes` are the entries' hashes, or a
    function that reads them (then they are freed before the bands are read). `key_bands[b]` is band b's 64-bit keys
    of the entries, or those keys folded already (uint32), as an (n, bands) array's ``.T`` or a sequence that reads
    each band when asked (so no more than one band's column is in memory); entries are stored sorted by hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    hashes = np.asarray(hashes() if callable(hashes) else hashes, dtype=np.uint64)
    order = hash_order(hashes)  # held through every band below: 4 bytes an entry
    # Every array is written in hash order a block at a time: no sorted copy of a whole column.
    for name, values, dtype in (("rows", np.asarray(rows), np.uint32), ("hashes", hashes, np.uint64)):
        with open(tmp / f"{name}.npy", "wb") as out:
            _header(out, dtype, (len(order),))
            _write_taken(out, values, order, dtype)
    del hashes, values  # read by a function: gone before the bands are read
    n_bands = len(key_bands)
    # Appended band by band through a file: a writable mapping kept every band's pages in the resident set (4 bytes
    # per entry and band, ~72 MB at a million entries) until it was closed.
    with open(tmp / "keys.npy", "wb") as out:
        _header(out, np.uint32, (n_bands, len(order)))
        for b in range(n_bands):
            band = key_bands[b]
            folded = band if band.dtype == np.uint32 else fold32(band)  # folded already, or now
            _write_taken(out, folded, order, np.uint32)
            del folded
            del band
    (tmp / "meta.json").write_text(json.dumps({"params": [int(p) for p in params] + [FORMAT], "source": source_fingerprint(source)}))
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read(path: Path, params: list[int], source: Path) -> dict[str, np.ndarray] | None:
    """The index's arrays, memory-mapped (``keys`` as an (entries, bands) view of the band-major file); None when
    missing, built with other parameters or an older format, or stale."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("params") != [int(p) for p in params] + [FORMAT] or not Path(source).is_dir() or meta.get("source") != source_fingerprint(source):
        return None
    out = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    out["keys"] = out["keys"].T
    return out


def release(index: dict[str, np.ndarray]) -> None:
    """Drop the pages a query has touched from this process's resident set (they stay in the kernel's page cache).
    A mapped file's pages count as the process's memory for as long as it is mapped: reading every band of an
    index of m entries left 4 x bands x m bytes resident, 80 MB at a million entries and 20 bands."""
    for arr in index.values():
        base = arr
        while base is not None and getattr(base, "_mmap", None) is None:
            base = getattr(base, "base", None)
        if base is not None and hasattr(mmap, "MADV_DONTNEED"):
            base._mmap.madvise(mmap.MADV_DONTNEED)


def read_rows(folder: Path, rows: np.ndarray, columns: list[str]) -> dict[int, dict]:
    """Records at the given stream rows of a stage output (its shards in read order), reading only the row groups
    that hold them."""
    wanted = np.unique(np.asarray(rows, dtype=np.int64))
    out: dict[int, dict] = {}
    first = 0
    for path in shard_files(folder):
        if len(out) == len(wanted):
            break
        pf = pq.ParquetFile(path)
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            lo, hi = np.searchsorted(wanted, [first, first + n])
            if hi > lo:
                table = pf.read_row_group(g, columns=columns)
                picked = table.take(wanted[lo:hi] - first).to_pylist()
                out.update(zip(wanted[lo:hi].tolist(), picked))
            first += n
    return out
