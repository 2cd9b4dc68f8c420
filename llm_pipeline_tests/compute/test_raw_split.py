"""raw_corpus's large files cut into tasks: JSON Lines by lines (a task reads the lines that start in its byte range),
Parquet by row groups. The documents, their sources, the quarantine list and the counts are those of the single
reader; the cut is the same for the same bytes, and a change to a file moves only its own cuts after the change."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from llm_pipeline.compute import raw
from llm_pipeline.compute.executor import LocalExecutor
from llm_pipeline.config import load_config
from llm_pipeline.curation.formats import line_cuts
from llm_pipeline.io import iter_records
from llm_pipeline.runner import run_stage


def body(i):
    return f"Record {i} of the archive describes a clause about liability, notice periods and renewal terms."


def write_sources(folder):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": body(i)}) for i in range(40)]
    lines[5] = ""  # blank: separates nothing
    lines[9] = '{"text": "cut short'  # malformed
    lines[14] = json.dumps({"body": "no text field"})
    lines[21] = json.dumps({"text": "x" * 3000})  # over max_document_bytes
    lines[30] = '{"text": "caf\xe9 au lait, a stray Windows-1252 line in a UTF-8 file."}'
    data = "\n".join(lines[:30]).encode() + b"\n" + lines[30].encode("cp1252") + b"\n" + "\n".join(lines[31:]).encode()
    (folder / "big.jsonl").write_bytes(data)  # no newline after the last line
    rows = [{"text": body(100 + i) if i != 4 else None} for i in range(11)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "rows.parquet", row_group_size=3)  # 4 row groups
    (folder / "small.jsonl").write_text(json.dumps({"text": body(200)}) + "\n")
    with gzip.open(folder / "packed.jsonl.gz", "wt") as f:  # gzip: never cut
        f.write("\n".join(json.dumps({"text": body(300 + i)}) for i in range(9)) + "\n")


def make_cfg(root, task_rows):
    conf = {"data_dir": str(root / "data"), "validation": {"enabled": False},
            "domains": {"legal": {"sources": [{"path": str(root.parent / "src"), "max_document_bytes": 2000}]}},
            "compute": {"task_rows": task_rows}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(conf))
    return load_config(root / "config.yaml", root=root.parent)


def split_run(cfg, out):
    out.mkdir(parents=True, exist_ok=True)
    return raw.run(cfg, "legal", out, executor=LocalExecutor())


def test_line_cuts_count_lines_as_the_reader_does(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"a\nbb\n\nccc\nd\ne")
    assert line_cuts(path, 2) == [(0, 0), (5, 2), (10, 4)]
    assert line_cuts(path, 2, block=3) == line_cuts(path, 2)  # a cut across read blocks lands in the same place
    path.write_bytes(b"a\nbb\n\nccc\n")
    assert line_cuts(path, 2) == [(0, 0), (5, 2)]  # ends on a cut: no empty last share
    assert line_cuts(path, 10) == [(0, 0)]


@pytest.mark.parametrize("task_rows", [4, 7])
def test_large_files_are_cut_and_read_as_one_reader_reads_them(tmp_path, task_rows):
    write_sources(tmp_path / "src")
    single = run_stage(make_cfg(tmp_path / "single", 10_000), "raw_corpus", "legal")
    cfg = make_cfg(tmp_path / "split", task_rows)
    tasks = [t for t in raw.plan(cfg, "legal") if isinstance(t, raw.RawTask)]
    by_file = {}
    for t in tasks:
        by_file.setdefault(t.shown.rsplit("/", 1)[-1], []).append(t.part)
    assert len(by_file["big.jsonl"]) == -(-40 // task_rows) and len(by_file["rows.parquet"]) > 1
    assert by_file["small.jsonl"] == [None] and by_file["packed.jsonl.gz"] == [None]
    split = split_run(cfg, tmp_path / "split" / "out")
    assert list(iter_records(tmp_path / "split" / "out")) == list(iter_records(single.output_dir))
    assert ((tmp_path / "split" / "out" / "quarantine.jsonl").read_text()
            == (single.output_dir / "quarantine.jsonl").read_text())
    ignore = {"shards"}
    assert {k: v for k, v in split.stats.items() if k not in ignore} == {k: v for k, v in single.stats.items() if k not in ignore}
    reasons = [json.loads(line)["reason"] for line in (single.output_dir / "quarantine.jsonl").read_text().splitlines()]
    assert {"malformed_json", "missing_text_field", "document_too_large"} <= set(reasons)
    assert split.metadata["tasks"] == len(tasks)


def test_a_change_moves_only_the_changed_files_later_cuts(tmp_path):
    write_sources(tmp_path / "src")
    cfg = make_cfg(tmp_path / "split", 4)
    before = [(t.shown, t.part) for t in raw.plan(cfg, "legal") if isinstance(t, raw.RawTask)]
    big = tmp_path / "src" / "big.jsonl"
    lines = big.read_bytes().split(b"\n")
    lines[33] = json.dumps({"text": body(33) + " An added sentence."}).encode()
    big.write_bytes(b"\n".join(lines))
    after = [(t.shown, t.part) for t in raw.plan(cfg, "legal") if isinstance(t, raw.RawTask)]
    changed = [a for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and changed
    # Line 34 is in the ninth share (lines 33-36): that share's end and the last share's start move, nothing else.
    assert all(shown.endswith("big.jsonl") for shown, _ in changed)
    assert [part[2] for _, part in changed] == [32, 36]


def test_ray_reads_the_cut_files_as_the_local_executor(tmp_path, monkeypatch):
    """The same cut on Ray's actors (a single-node Ray started by the run): the same shards, rows and quarantine."""
    pytest.importorskip("ray", reason="the ray extra is not installed (scripts/setup.sh installs it)")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # compute.address unset: the run starts a Ray of its own
    write_sources(tmp_path / "src")
    local = split_run(make_cfg(tmp_path / "local", 4), tmp_path / "local" / "out")
    cfg = make_cfg(tmp_path / "ray", 4)
    cfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"engine": "ray", "workers": 2})})
    out = tmp_path / "ray" / "out"
    out.mkdir(parents=True)
    remote = raw.run(cfg, "legal", out)
    assert remote.metadata["worker_processes"] == 2 and remote.metadata["tasks"] == local.metadata["tasks"]
    assert sorted(p.name for p in out.glob("shard-*.parquet")) == sorted(p.name for p in (tmp_path / "local" / "out").glob("shard-*.parquet"))
    assert list(iter_records(out)) == list(iter_records(tmp_path / "local" / "out"))
    assert (out / "quarantine.jsonl").read_text() == (tmp_path / "local" / "out" / "quarantine.jsonl").read_text()
    assert {k: v for k, v in remote.stats.items()} == {k: v for k, v in local.stats.items()}
