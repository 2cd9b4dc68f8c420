"""Near-duplicate detection spread over tasks (signatures per task, a shuffle by band key, verification per pair of
tasks, clusters in the driver) decides exactly as the single-process stage: kept set, drop reasons, kept copies,
output rows, and the cross-domain index."""

import json
import random

import pytest
import yaml

from llm_pipeline.compute import dedup
from llm_pipeline.compute.executor import LocalExecutor
from llm_pipeline.config import load_config
from llm_pipeline.curation.dedup import MAX_BUCKET_ALL_PAIRS
from llm_pipeline.io import MANIFEST, ShardWriter, iter_records
from llm_pipeline.runner import run_stage
from llm_pipeline.stages.deduped_shards import read_index

rng = random.Random(11)
VOCAB = [f"w{i}" for i in range(2_000)]


def doc(n=100):
    return " ".join(rng.choice(VOCAB) for _ in range(n)) + "."


def edit(text, n, seed):
    r = random.Random(seed)
    words = text.split()
    for _ in range(n):
        words[r.randrange(len(words))] = "edited"
    return " ".join(words)


def corpus():
    base = [doc() for _ in range(30)]
    texts = list(base)
    texts += [edit(base[k], 3, k) for k in range(0, 30, 3)]  # near copies, spread over the stream
    texts += [base[5].upper(), base[7] + "  "]  # exact copies after normalization
    template = doc(120)  # a templated page: one bucket far over MAX_BUCKET_ALL_PAIRS in every band
    texts += [edit(template, 1 + k % 3, 100 + k) for k in range(MAX_BUCKET_ALL_PAIRS + 15)]
    texts += [edit(template, 40, 999)]  # a farther copy: a candidate that verification must weigh
    random.Random(3).shuffle(texts)
    return texts


def write_cleaned(data_dir, domain, texts):
    import xxhash

    folder = data_dir / "cleaned_corpus" / domain
    with ShardWriter(folder, max_rows=17) as w:
        for i, t in enumerate(texts):
            w.write({"id": xxhash.xxh3_128_hexdigest(t.encode()), "domain": domain, "source": f"{domain}/{i}.txt",
                     "text": t, "licence": "CC0", "language": "en", "format": "txt", "n_words": len(t.split()),
                     "pii_counts": "{}", "extractor": "plain"})
    (folder / MANIFEST).write_text(json.dumps({"stage": "cleaned_corpus"}))


def make_cfg(tmp_path, **dedup_cfg):
    conf = {"data_dir": str(tmp_path / "data"), "eval_fraction": 0.3,
            "domains": {d: {"sources": [{"path": "unused"}]} for d in ("legal", "medicine")},
            "deduped_shards": {"shard_rows": 7, **dedup_cfg},
            "compute": {"task_rows": 9, "workers": 3}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    return load_config(tmp_path / "config.yaml", root=tmp_path)


@pytest.mark.parametrize("keep", ["longest", "earliest_source", "smallest_id"])
def test_spread_near_dedup_decides_as_the_single_process(tmp_path, keep):
    texts = corpus()
    other = [doc() for _ in range(5)] + [edit(texts[0], 2, 5), texts[1]]  # medicine repeats some of legal
    results = {}
    for engine in ("single", "tasks"):
        cfg = make_cfg(tmp_path / engine, keep=keep)
        write_cleaned(cfg.data_path, "legal", texts)
        write_cleaned(cfg.data_path, "medicine", other)
        for domain in ("legal", "medicine"):
            if engine == "single":
                r = run_stage(cfg, "deduped_shards", domain)
                results[engine, domain] = (r.stats, r.output_dir)
            else:
                out = tmp_path / engine / "out" / domain
                out.mkdir(parents=True)
                r = dedup.run(cfg, {"cleaned_corpus": cfg.data_path / "cleaned_corpus" / domain}, out, domain, None,
                              executor=LocalExecutor())
                results[engine, domain] = (r.stats, out)
                assert r.metadata["tasks"] > (5 if domain == "legal" else 0)
        results[engine, "index"] = read_index(cfg, "legal")
    for domain in ("legal", "medicine"):
        (s1, o1), (s2, o2) = results["single", domain], results["tasks", domain]
        assert {k: v for k, v in s1.items() if k != "shards"} == {k: v for k, v in s2.items() if k != "shards"}
        assert list(iter_records(o1)) == list(iter_records(o2))
        assert (o1 / "dropped.jsonl").read_text() == (o2 / "dropped.jsonl").read_text()
    legal = results["single", "legal"][0]["dropped"]
    assert legal["near_duplicate"] > MAX_BUCKET_ALL_PAIRS and legal["exact_duplicate"] >= 2
    assert results["single", "medicine"][0]["dropped"].get("exact_duplicate_cross_domain") == 1
    for name in ("rows", "hashes", "keys"):
        assert (results["single", "index"][name] == results["tasks", "index"][name]).all()


@pytest.mark.parametrize("engine", ["single", "tasks"])
def test_an_empty_domain_keeps_nothing_and_indexes_nothing(tmp_path, engine):
    """No rows means no hash task and no spill files: the stage still ends with empty outputs and an index of no
    entries that a later domain can query."""
    cfg = make_cfg(tmp_path, scope="global")
    write_cleaned(cfg.data_path, "legal", [])
    src, out = cfg.data_path / "cleaned_corpus" / "legal", tmp_path / "out"
    out.mkdir()
    if engine == "tasks":
        result = dedup.run(cfg, {"cleaned_corpus": src}, out, "legal", None, executor=LocalExecutor())
    else:
        from llm_pipeline.stages import deduped_shards

        result = deduped_shards.run(cfg, {"cleaned_corpus": src}, out, "legal")
    assert result.stats["documents_in"] == result.stats["documents_kept"] == 0
    assert read_index(cfg, "legal")["keys"].shape == (0, cfg.deduped_shards.banding[0])


def test_many_partitions_and_verify_batches_decide_as_one_and_write_a_file_per_task(tmp_path, monkeypatch):
    """Small partitions (many bucket tasks) and verify tasks of several pairs of hash tasks give the single-process
    decisions; the shuffle writes one file of entries (and one of offsets) per hash task, whatever the partitions."""
    texts = corpus()
    single = make_cfg(tmp_path / "single")
    write_cleaned(single.data_path, "legal", texts)
    expected = run_stage(single, "deduped_shards", "legal")
    monkeypatch.setattr(dedup, "KEYS_PER_PARTITION", 40)
    monkeypatch.setattr(dedup, "VERIFY_PAIRS", 3)
    monkeypatch.setattr(dedup, "PAIRS_PER_RANGE", 20)  # the candidate pairs read and verified in several ranges
    seen = {}
    bucket, verify = dedup.bucket_task, dedup.verify_task

    def bucket_once(state, partition, out_dir, names, n, bands):
        if not seen:
            scratch = dedup._scratch(out_dir)
            seen.update(tasks=len(names), shuffled=len(list(scratch.glob("*.shuffled.npy"))),
                        other=len(list(scratch.glob("*.npz"))))
        seen["partitions"] = max(seen.get("partitions", 0), partition + 1)
        return bucket(state, partition, out_dir, names, n, bands)

    def verify_counted(state, items, num_perm, threshold):
        seen.setdefault("verify", []).append(len(items))
        return verify(state, items, num_perm, threshold)

    monkeypatch.setattr(dedup, "bucket_task", bucket_once)
    monkeypatch.setattr(dedup, "verify_task", verify_counted)
    cfg = make_cfg(tmp_path / "tasks")
    write_cleaned(cfg.data_path, "legal", texts)
    out = tmp_path / "tasks" / "out"
    out.mkdir()
    labels = []

    class Labelled(LocalExecutor):
        def map(self, fn, tasks, *args, label="tasks"):
            labels.append(label)
            return super().map(fn, tasks, *args, label=label)

    got = dedup.run(cfg, {"cleaned_corpus": cfg.data_path / "cleaned_corpus" / "legal"}, out, "legal", None,
                    executor=Labelled())
    assert {k: v for k, v in got.stats.items() if k != "shards"} == {k: v for k, v in expected.stats.items() if k != "shards"}
    assert list(iter_records(out)) == list(iter_records(expected.output_dir))
    ranges = [label for label in labels if "verify tasks (pairs" in label]
    assert len(ranges) > 2 and ranges[-1].endswith(f"of {len(ranges)})"), labels
    assert seen["partitions"] > seen["tasks"] > 5  # more partitions than tasks ...
    assert seen["shuffled"] == seen["tasks"] and seen["other"] == 0  # ... and still one shuffle file per task
    assert len(seen["verify"]) > 1 and max(seen["verify"]) > 1  # verify tasks over several pairs of hash tasks


def test_verify_batches_hold_at_least_the_least_pairs():
    assert dedup.verify_batches([5, 1, 1, 9, 2], least=6) == [range(0, 2), range(2, 4), range(4, 5)]
    assert dedup.verify_batches([], least=6) == []


def test_the_driver_holds_few_bytes_per_document(tmp_path):
    """The driver's own arrays (numpy allocations traced between tasks: the order of preference, the exact step,
    the ranks sent to the shuffle, the candidate pairs, the clusters, the index write) grow by under 40 bytes per
    added document from 10k to 40k documents. Measured 30; 51 before the pairs were read in ranges, the clusters
    held by their members only and the keys and rows narrowed to 4 bytes, which made the Ray driver's peak 1.37x
    from 100k to 1M documents."""
    import sys
    import tracemalloc
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from dedup_memory import prepare

    class DriverOnly(LocalExecutor):
        """The tasks run here too; what they allocate is left out of the peak."""

        peak = 0

        def map(self, fn, tasks, *args, label="tasks"):
            DriverOnly.peak = max(DriverOnly.peak, tracemalloc.get_traced_memory()[1])
            out = super().map(fn, tasks, *args, label=label)
            tracemalloc.reset_peak()
            return out

    peaks = {}
    for n in (10_000, 40_000):
        root = tmp_path / str(n)
        prepare(root, n, 2_000, 1_000)
        cfg = load_config(root / "config.yaml", root=root)
        (root / "out").mkdir()
        DriverOnly.peak = 0
        tracemalloc.start()
        try:
            got = dedup.run(cfg, {"cleaned_corpus": cfg.data_path / "cleaned_corpus" / "bench"}, root / "out", "bench",
                            None, executor=DriverOnly())
            peaks[n] = DriverOnly.peak
        finally:
            tracemalloc.stop()
        assert got.stats["dropped"]["near_duplicate"] > n * 0.05
    per_doc = (peaks[40_000] - peaks[10_000]) / 30_000
    assert per_doc < 40, (per_doc, peaks)
