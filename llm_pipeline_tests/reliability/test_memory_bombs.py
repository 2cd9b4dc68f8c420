"""Decompression and expansion bombs: raw_corpus's peak memory stays bounded whatever its input unpacks to.

The bound: BATCH_BYTES (32 MiB) of text per read batch and per shard buffer, a few copies of one document
(max_document_bytes, 8 MiB), and the interpreter with pyarrow (~150 MB): well under MAX_RSS_MB below. Each bomb
here would take 0.8-2 GB (and the unbounded code took 4-6 GB on the issue's versions) if read whole.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from llm_pipeline.io import iter_batches, ShardWriter

MAX_RSS_MB = 600
DOC = 7 << 20  # each row under the default max_document_bytes (8 MiB)
PEAK_RSS_CLI = (
    "import sys\n"
    "from llm_pipeline.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _dictionary_bomb(path: Path, rows: int) -> None:
    """`rows` rows that all point at one 7 MiB dictionary value: a file of a few kilobytes."""
    column = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["word " * (DOC // 5)]))
    pq.write_table(pa.table({"text": column}), path, compression="zstd")


def _plain_bomb(path: Path, rows: int) -> None:
    """`rows` distinct 7 MiB rows, plain-encoded and compressed to almost nothing, one row group."""
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=False) as writer:
        for i in range(rows):  # written a row at a time so this process never holds them all
            writer.write_batch(pa.record_batch([pa.array([f"row {i} " + "x" * DOC])], schema=schema), row_group_size=rows)


def _gzip_stream(path: Path, unit: bytes, total: int) -> None:
    block = unit * (1 << 20 // len(unit) + 1)
    with gzip.open(path, "wb", compresslevel=1) as f:
        for _ in range(total // len(block) + 1):
            f.write(block)


def test_bombs_keep_raw_corpus_memory_bounded(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _dictionary_bomb(corpus / "dictionary.parquet", 120)
    _plain_bomb(tmp_path / "plain.parquet", 60)
    with open(tmp_path / "plain.parquet", "rb") as src, gzip.open(corpus / "plain.parquet.gz", "wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
    _gzip_stream(corpus / "zeros.txt.gz", b"a", 300 << 20)
    _gzip_stream(corpus / "line.jsonl.gz", b"a", 300 << 20)
    _gzip_stream(corpus / "commas.csv.gz", b",", 300 << 20)
    (corpus / "good.txt").write_text("The tenant asked the landlord to repair the heating before winter arrived.")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"data_dir": "data", "domains": {"legal": {"sources": [{"path": "corpus"}]}}}))
    env = {**os.environ, "LLM_PIPELINE_CODE_VERSION": "test"}
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_CLI, "stage", "raw_corpus", "--domain", "legal",
                           "--config", str(config)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    rss_mb = int(proc.stderr.rsplit("VmHWM:", 1)[1].split()[0]) / 1024
    import json

    stats = json.loads((tmp_path / "data" / "raw_corpus" / "legal" / "stats.json").read_text())
    print(f"raw_corpus peak RSS {rss_mb:.0f} MB; {stats['documents_kept']} kept, {stats['quarantine_reasons']}")
    assert rss_mb < MAX_RSS_MB, f"raw_corpus peaked at {rss_mb:.0f} MB"
    assert stats["documents_kept"] == 120 + 60 + 1  # every row under the cap is a document
    assert stats["quarantine_reasons"] == {"document_too_large": 3}  # the .txt.gz, the jsonl line, the csv line
    assert stats["documents_in"] == stats["documents_kept"] + stats["quarantined"] + sum(stats["dropped"].values())


def test_read_batches_and_shard_buffers_are_bounded_by_bytes(tmp_path):
    with ShardWriter(tmp_path / "out", max_rows=10_000) as writer:
        for i in range(12):
            writer.write({"id": str(i), "text": f"{i} " + "y" * DOC})
    assert len(writer.files) >= 3  # flushed by weight, not only every 10,000 rows
    sizes = [len(b) for b in iter_batches(tmp_path / "out", batch_size=256)]
    assert sum(sizes) == 12 and max(sizes) <= 5  # 32 MiB of 7 MiB rows, not 256 of them
