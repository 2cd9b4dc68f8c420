"""deduped_shards' pass-1 columns on disk: what comes back equals what went in, the order of preference equals a
sort of the whole columns in memory (ties on the ids' first 8 bytes included), and nothing per document stays in
memory after the pass."""

import numpy as np
import pytest

from llm_pipeline.curation.dedup import MinHasher
from llm_pipeline.curation.dedup_columns import Hashed, hash_pass, natural_key, split_source


def records(ids, sources, texts):
    return [{"id": i, "source": s, "text": t} for i, s, t in zip(ids, sources, texts)]


def batches(recs, size):
    return [recs[k: k + size] for k in range(0, len(recs), size)]


def in_memory_order(recs, keep):
    """The order of preference as a lexsort of whole in-memory columns (the stage before the columns went to disk)."""
    ids = np.array([r["id"].encode() for r in recs], dtype="S")
    where = [split_source(r["source"]) for r in recs]
    names = sorted({f for f, _ in where}, key=natural_key)
    src = np.array([names.index(f) for f, _ in where])
    line = np.array([k for _, k in where])
    length = np.array([len(r["text"]) for r in recs])
    keys = {"longest": (ids, line, src, -length), "earliest_source": (ids, -length, line, src), "smallest_id": (ids,)}
    return np.lexsort(keys[keep]).tolist()


@pytest.fixture
def recs():
    rng = np.random.default_rng(3)
    n = 300
    # ids that share their first 8 bytes (and one that is a prefix of another), lengths and sources with many ties
    ids = [f"{'abcdefgh' if k % 3 == 0 else format(k * 7919 % 1000, '08d')}{rng.integers(0, 50):03d}" for k in range(n)]
    ids[5], ids[6] = "abcdefgh", "abcdefgh0"
    sources = [f"part-{rng.integers(0, 12)}.jsonl#L{rng.integers(0, 5)}" for _ in range(n)]
    texts = ["word " * int(rng.integers(1, 4)) for _ in range(n)]
    return records(ids, sources, texts)


@pytest.mark.parametrize("keep", ["longest", "earliest_source", "smallest_id"])
def test_order_of_preference_equals_a_sort_in_memory(tmp_path, recs, keep):
    hashed = hash_pass(batches(recs, 64), None, None, (tmp_path, "all"))
    assert hashed.preference_order(keep).tolist() == in_memory_order(recs, keep)


@pytest.mark.parametrize("line", [2**31 + 5, 10**18 - 1])
@pytest.mark.parametrize("keep", ["longest", "earliest_source"])
def test_order_of_preference_with_ties_across_blocks_and_a_line_past_32_bits(tmp_path, recs, keep, line, monkeypatch):
    from llm_pipeline.curation import dedup_columns

    monkeypatch.setattr(dedup_columns, "_TIE_ROWS", 7)  # ties compared in blocks: runs that cross a block's end
    packed = []
    real = Hashed._packed_key
    monkeypatch.setattr(Hashed, "_packed_key", lambda *a: packed.append(real(*a)) or packed[-1])
    # A line past 32 bits: one packed key still (2**31 + 5), or too wide to pack with the others (10**18 - 1: the
    # sort falls back to one key per column, the line's at 8 bytes).
    recs[10]["source"] = f"part-3.jsonl#L{line}"
    recs[11]["source"] = "part-3.jsonl#L2"
    hashed = hash_pass(batches(recs, 64), None, None, (tmp_path, "all"))
    assert hashed.preference_order(keep).tolist() == in_memory_order(recs, keep)
    assert (packed[0] is None) == (line > 2**40)


@pytest.mark.parametrize("keep", ["longest", "earliest_source"])
def test_order_of_preference_with_few_ties_reads_only_their_ids(tmp_path, recs, keep, monkeypatch):
    """Sources that name one document each but for a few: only the tied rows' ids are read, and the order is still
    the sort in memory."""
    for k, r in enumerate(recs):
        r["source"] = f"part-{k % 12}.jsonl#L{k}" if k % 100 else "part-0.jsonl#L0"  # rows 0, 100, 200 tie
        r["text"] = "word " * 2 if k % 100 == 0 else r["text"]
    hashed = hash_pass(batches(recs, 64), None, None, (tmp_path, "all"))
    read = []
    real = Hashed.ids
    monkeypatch.setattr(Hashed, "ids", lambda self, rows: read.append(len(rows)) or real(self, rows))
    monkeypatch.setattr(Hashed, "_id_prefixes", lambda self: pytest.fail("few ties: no pass over every id"))
    assert hashed.preference_order(keep).tolist() == in_memory_order(recs, keep)
    assert read == [3]


def test_parts_read_back_as_one_stream(tmp_path, recs):
    """Hash tasks write a part each; joined, they read as the single pass does (file names remapped)."""
    whole = hash_pass(batches(recs, 64), None, None, (tmp_path / "one", "all"))
    parts = [hash_pass(batches(recs[lo: lo + 100], 64), None, None, (tmp_path / "tasks", f"t{lo}")) for lo in (0, 100, 200)]
    joined = Hashed.concat(parts)
    assert len(joined) == len(whole) == len(recs) and joined.bytes_in == whole.bytes_in
    for name in ("hashes", "lengths", "line"):
        assert joined.column(name).tolist() == whole.column(name).tolist()
    assert [joined.files[k] for k in joined.column("file_of")] == [split_source(r["source"])[0] for r in recs]
    rows = np.array([299, 0, 150, 7, 7])
    assert joined.ids(rows).tolist() == whole.ids(rows).tolist() == [recs[r]["id"].encode() for r in rows]
    assert joined.preference_order("longest").tolist() == whole.preference_order("longest").tolist()


def test_a_longer_id_widens_the_ids_written_before_it(tmp_path):
    long_id = "x" * 45
    recs = records(["a" * 32, "b", long_id, "c" * 32], [f"f#L{k}" for k in range(4)], ["one", "two", "three", "four"])
    hashed = hash_pass(batches(recs, 2), None, None, (tmp_path, "all"))
    assert hashed.parts[0].width == 45
    assert [hashed.id_of(k) for k in range(4)] == [r["id"] for r in recs]
    assert hashed.preference_order("smallest_id").tolist() == [0, 1, 3, 2]


def test_nothing_per_document_stays_in_memory(tmp_path, recs):
    """After the pass, the columns, signatures and band keys are files: the object holds their names and per-part
    offsets, whatever the number of documents."""
    hashed = hash_pass(batches(recs * 4, 64), MinHasher(16, 2, 1), (4, 4), (tmp_path, "all"))
    assert len(hashed) == 1200
    arrays = [v for obj in (hashed, hashed.spilled) for v in vars(obj).values() if isinstance(v, np.ndarray)]
    arrays += hashed._remap
    assert max(a.size for a in arrays) <= 13  # offsets per part, one entry per source file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"all.{c}" for c in ("ids", "file_of", "line", "lengths", "hashes", "sigs")] + [f"all.keys{b}" for b in range(4)])
