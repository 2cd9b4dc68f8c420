"""The persisted near-dup index: under 100 bytes per document, memory-mapped on read, stale once the cleaned output
its rows point into changes, and rows read back without reading the rest."""

import json

import numpy as np

from llm_pipeline.curation import dedup_index
from llm_pipeline.curation.dedup import MinHasher, band_keys
from llm_pipeline.io import MANIFEST, ShardWriter

PARAMS = [128, 5, 20, 6, 1234, 2]


def cleaned(folder, n, shard_rows=300):
    with ShardWriter(folder, max_rows=shard_rows) as w:
        for i in range(n):
            w.write({"id": f"id{i:05d}", "text": f"document number {i} " * 5})
    (folder / MANIFEST).write_text(json.dumps({"stage": "cleaned_corpus"}))


def test_index_is_small_mapped_and_stale_after_its_source_changes(tmp_path):
    n = 5_000
    src = tmp_path / "cleaned"
    cleaned(src, n)
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(n, 128), dtype=np.uint64).astype(np.uint32)
    keys = band_keys(sigs, 20, 6)
    path = tmp_path / "legal.idx"
    hashes = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    dedup_index.write(path, np.arange(n), hashes, keys.T, PARAMS, src)
    on_disk = sum(p.stat().st_size for p in path.iterdir())
    assert on_disk / n <= 100, on_disk / n
    index = dedup_index.read(path, PARAMS, src)
    assert isinstance(index["keys"], np.memmap) and index["keys"].dtype == np.uint32 and index["keys"].shape == (n, 20)
    order = np.argsort(hashes)  # entries sorted by hash: an exact lookup is a binary search on the mapped array
    assert (index["hashes"] == hashes[order]).all() and (index["rows"] == order).all()
    assert (index["keys"] == dedup_index.fold32(keys)[order]).all()
    dedup_index.write(tmp_path / "folded.idx", np.arange(n), hashes, dedup_index.fold32(keys).T, PARAMS, src)
    assert (dedup_index.read(tmp_path / "folded.idx", PARAMS, src)["keys"] == index["keys"]).all()  # keys folded already
    assert dedup_index.read(path, [*PARAMS[:-1], 3], src) is None  # another signature scheme
    cleaned(src, n + 1)  # the cleaned output was rebuilt: rows may point elsewhere now
    assert dedup_index.read(path, PARAMS, src) is None


def test_read_rows_reads_the_rows_asked(tmp_path):
    cleaned(tmp_path, 1_000, shard_rows=70)
    got = dedup_index.read_rows(tmp_path, np.array([999, 0, 70, 69, 500, 70]), ["id"])
    assert got == {r: {"id": f"id{r:05d}"} for r in (0, 69, 70, 500, 999)}


def test_fold_keeps_equal_keys_equal():
    h = MinHasher(128, 5, 1)
    sigs = h.signatures(["the same words in the same order here", "the same words in the same order here", "other"])
    folded = dedup_index.fold32(band_keys(sigs, 20, 6))
    assert (folded[0] == folded[1]).all() and (folded[0] != folded[2]).any()


def mapped_kb(path):
    """Resident KB of this process's mapping of `path` (/proc/self/smaps): pages of a mapped file count as the
    process's memory while they are mapped."""
    rss, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:  # a mapping's first line: address range, perms, offset, dev, inode
                inside = line.rstrip().endswith(str(path))
            elif inside and head[0] == "Rss:":
                rss += int(head[1])
    return rss


def test_a_query_leaves_no_band_of_the_index_resident(tmp_path):
    """After release, the pages a query read through the mapping are no longer in the process's resident set: a
    domain querying a large earlier domain holds one band of its keys at a time, not all of them."""
    n = 50_000
    src = tmp_path / "cleaned"
    src.mkdir()
    (src / MANIFEST).write_text("{}")
    keys = np.random.default_rng(1).integers(0, 2**63, size=(20, n), dtype=np.uint64)
    dedup_index.write(tmp_path / "big.idx", np.arange(n), np.arange(n, dtype=np.uint64), keys, PARAMS, src)
    index = dedup_index.read(tmp_path / "big.idx", PARAMS, src)
    total = int(sum(int(np.asarray(index["keys"][:, b]).sum() % 7) for b in range(20)))
    assert total >= 0 and mapped_kb(tmp_path / "big.idx" / "keys.npy") > 20 * n * 4 // 1024 // 2
    dedup_index.release(index)
    assert mapped_kb(tmp_path / "big.idx" / "keys.npy") == 0


def test_hash_order_is_a_stable_argsort_bucket_by_bucket(monkeypatch):
    monkeypatch.setattr(dedup_index, "_SORT_ROWS", 333)  # the top bytes taken in several blocks
    rng = np.random.default_rng(2)
    hashes = rng.integers(0, 2**64 - 1, size=5_000, dtype=np.uint64)
    hashes[::7] = hashes[3]  # repeated hashes keep their row order
    hashes[:40] = np.arange(40, dtype=np.uint64)  # one bucket's worth of small values: top byte 0
    order = dedup_index.hash_order(hashes)
    assert order.dtype == np.int32
    assert order.tolist() == np.argsort(hashes, kind="stable").tolist()
    assert dedup_index.hash_order(np.zeros(0, dtype=np.uint64)).tolist() == []
