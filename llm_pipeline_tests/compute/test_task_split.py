"""The task split of the curation stages, run in this process: the same documents, drops, quarantines and counts as
the single-stream stages, with the work cut into many small tasks (rows of one file split across tasks too)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_pipeline.compute import clean, dedup, raw
from llm_pipeline.compute.executor import LocalExecutor
from llm_pipeline.compute.plan import Task, iter_task_batches, row_ranges, shard_tasks
from llm_pipeline.config import load_config
from llm_pipeline.io import ShardWriter, iter_records, read_json
from llm_pipeline.runner import run_stage

STAGES = ("raw_corpus", "cleaned_corpus", "deduped_shards")


def records(folder):
    return list(iter_records(folder))


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_row_ranges_cover_every_row_once():
    assert row_ranges(0, 3) == [(0, 0)]
    assert row_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert row_ranges(6, 3) == [(0, 3), (3, 6)]


def test_task_batches_read_exactly_their_rows(tmp_path):
    with ShardWriter(tmp_path / "in", max_rows=5) as w:  # shards of 5 rows: ranges cross no row group here
        for i in range(12):
            w.write({"id": str(i), "text": f"t{i}"})
    big = tmp_path / "big.parquet"
    pq.write_table(pq.read_table(tmp_path / "in").combine_chunks(), big, row_group_size=4)  # 3 row groups
    got = [r["id"] for lo, hi in row_ranges(12, 5) for b in iter_task_batches(Task(0, str(big), lo, hi), ["id"], 2) for r in b]
    assert got == [str(i) for i in range(12)]
    tasks = shard_tasks(tmp_path / "in", 2)
    assert [(t.index, t.start, t.stop) for t in tasks] == [(0, 0, 2), (1, 2, 4), (2, 4, 5), (3, 0, 2), (4, 2, 4), (5, 4, 5), (6, 0, 2)]
    assert len({t.key for t in tasks}) == len(tasks)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, make_fast_config):
    """The medicine sample through the three stages twice: one stream, and tasks of at most 4 rows each."""
    base = tmp_path_factory.mktemp("engines")
    cfg = load_config(make_fast_config(base / "one", domains=["medicine"], deduped_shards={"scope": "domain"}))
    single = {name: run_stage(cfg, name, "medicine") for name in STAGES}
    tcfg = load_config(make_fast_config(base / "tasks", domains=["medicine"], deduped_shards={"scope": "domain"},
                                        compute={"task_rows": 4}))
    out = {name: base / "tasks" / "out" / name for name in STAGES}
    for folder in out.values():
        folder.mkdir(parents=True)
    ex = LocalExecutor()
    split = {
        "raw_corpus": raw.run(tcfg, "medicine", out["raw_corpus"], executor=ex),
        "cleaned_corpus": clean.run(tcfg, {"raw_corpus": out["raw_corpus"]}, out["cleaned_corpus"], "medicine", None, executor=ex),
    }
    split["deduped_shards"] = dedup.run(tcfg, {"cleaned_corpus": out["cleaned_corpus"]}, out["deduped_shards"], "medicine", None, executor=ex)
    return single, split, out, tcfg


@pytest.mark.parametrize("name", STAGES)
def test_tasks_give_the_single_stream_output(engines, name):
    single, split, out, _ = engines
    assert records(out[name]) == records(single[name].output_dir)
    ignore = {"shards"}  # the same rows, cut into per-task files
    assert {k: v for k, v in split[name].stats.items() if k not in ignore} == {k: v for k, v in single[name].stats.items() if k not in ignore}
    for listing in ("quarantine.jsonl", "dropped.jsonl"):
        if (single[name].output_dir / listing).exists():
            assert lines(out[name] / listing) == lines(single[name].output_dir / listing)
    assert not (out[name] / ".tasks").exists()
    s = split[name].stats
    assert s["documents_in"] == s["documents_kept"] + sum(s["dropped"].values()) + s["quarantined"]


def test_the_sample_is_cut_into_many_tasks(engines):
    single, split, out, _ = engines
    assert split["raw_corpus"].metadata["tasks"] > 10  # one per file
    assert split["cleaned_corpus"].metadata["tasks"] >= single["raw_corpus"].stats["documents_kept"] // 4
    assert all(p.name.startswith(("train-t", "eval-t")) for p in out["deduped_shards"].glob("*.parquet"))
    assert sum(split["deduped_shards"].stats["dropped"].values()) > 0  # the sample has duplicates to find


def test_a_changed_file_recomputes_only_its_task(engines, tmp_path):
    single, split, out, tcfg = engines
    assert split["cleaned_corpus"].metadata["documents_reused"] == 0
    again = tmp_path / "again"
    again.mkdir()
    first = clean.run(tcfg, {"raw_corpus": out["raw_corpus"]}, again, "medicine", None, executor=LocalExecutor())
    assert first.metadata["documents_computed"] == 0
    assert first.metadata["documents_reused"] == split["cleaned_corpus"].stats["documents_in"]
    # Rewrite one raw task's shard as a changed source file would: one document's text changes.
    shard = sorted(out["raw_corpus"].glob("shard-t*.parquet"))[1]
    table = pq.read_table(shard).to_pylist()
    table[0]["text"] += " An added closing sentence about the patient's follow-up visit."
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(shard)), shard)
    third = tmp_path / "third"
    third.mkdir()
    after = clean.run(tcfg, {"raw_corpus": out["raw_corpus"]}, third, "medicine", None, executor=LocalExecutor())
    assert after.metadata["documents_computed"] == 1
    cached = sorted(p.name for p in clean.task_cache_dir(tcfg, "medicine").glob("*.sqlite"))
    assert cached == sorted(f"{t.key}.sqlite" for t in shard_tasks(out["raw_corpus"], 4))
