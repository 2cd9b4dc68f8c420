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
# The documented bounds (docs/operations.md, "Memory"), per stage process, at the default settings whatever the input.
STAGE_MAX_RSS_MB = {"raw_corpus": MAX_RSS_MB, "cleaned_corpus": 1500, "deduped_shards": 1000}
DOC = 7 << 20  # each row under the default max_document_bytes (8 MiB)
PEAK_RSS_CLI = (
    "import sys\n"
    "from llm_pipeline.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _dictionary_bomb(path: Path, rows: int, size: int = DOC) -> None:
    """`rows` rows that all point at one `size` (7 MiB) dictionary value: a file of a few kilobytes."""
    column = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["word " * (size // 5)]))
    pq.write_table(pa.table({"text": column}), path, compression="zstd")


def _plain_bomb(path: Path, rows: int, size: int = DOC) -> None:
    """`rows` distinct `size` (7 MiB) rows, plain-encoded and compressed to almost nothing, one row group."""
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=False) as writer:
        for i in range(rows):  # written a row at a time so this process never holds them all
            writer.write_batch(pa.record_batch([pa.array([f"row {i} " + "x" * size])], schema=schema), row_group_size=rows)


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


def _stage_peak_mb(stage: str, config: Path, cwd: Path) -> float:
    env = {**os.environ, "LLM_PIPELINE_CODE_VERSION": "test"}
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_CLI, "stage", stage, "--domain", "legal", "--config", str(config)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return int(proc.stderr.rsplit("VmHWM:", 1)[1].split()[0]) / 1024


def _prose(size: int) -> str:
    """Ordinary sentences without a line break: one huge line that passes every filter and goes through PII."""
    import random

    rng = random.Random(0)
    words = ("the court held that a tenant may recover her deposit and the landlord shall repair the heating before "
             "winter under section twelve of this act when notice is given in writing by either party to their "
             "agent within thirty days after which any claim for damages or costs must be brought").split()
    out, n = [], 0
    while n < size:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randrange(8, 20))).capitalize() + ". "
        out.append(sentence)
        n += len(sentence)
    return "".join(out)[:size]


def test_bombs_and_hostile_documents_keep_cleaning_and_dedup_bounded(tmp_path):
    """cleaned_corpus and deduped_shards on what raw_corpus accepts from bombs (rows just under the cap) and on
    hostile documents it accepts: one line-less document that passes every filter, one long URL, zero-width soup and
    millions of two-letter words. The cap is 1 MiB here (the default 8 MiB would take minutes to clean); the peaks
    measured at 8 MiB are in docs/operations.md."""
    cap = 1 << 20
    size = cap - 4096
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _dictionary_bomb(corpus / "dictionary.parquet", 6, size)
    _plain_bomb(tmp_path / "plain.parquet", 4, size)
    with open(tmp_path / "plain.parquet", "rb") as src, gzip.open(corpus / "plain.parquet.gz", "wb") as dst:
        dst.write(src.read())
    _gzip_stream(corpus / "zeros.txt.gz", b"a", 64 << 20)
    (corpus / "oneline.txt").write_text(_prose(cap // 2))  # half the cap: PII takes ~10 s a MiB here
    (corpus / "url.txt").write_text("https://example.com/" + "a" * size)
    (corpus / "zero_width.txt").write_text("\u200b\u200d\ufeff" * (size // 9))
    (corpus / "two_letters.txt").write_text("ab " * (size // 3))
    (corpus / "good.txt").write_text("The tenant asked the landlord to repair the heating before winter arrived.")
    config = tmp_path / "pipeline.yaml"
    # max_words raised so that the line-less document is kept and reaches PII and dedup whole.
    config.write_text(yaml.safe_dump({"data_dir": "data", "cleaned_corpus": {"max_words": 200_000},
                                      "domains": {"legal": {"sources": [{"path": "corpus", "max_document_bytes": cap}]}}}))
    import json

    peaks = {}
    for stage in STAGE_MAX_RSS_MB:
        peaks[stage] = _stage_peak_mb(stage, config, tmp_path)
        stats = json.loads((tmp_path / "data" / stage / "legal" / "stats.json").read_text())
        assert stats["documents_in"] == stats["documents_kept"] + stats["quarantined"] + sum(stats["dropped"].values())
        print(f"{stage} peak RSS {peaks[stage]:.0f} MB; {stats['documents_kept']} kept, {stats['dropped']}")
    assert stats["documents_kept"] == 2  # the line-less document and the good one, through every stage
    for stage, peak in peaks.items():
        assert peak < STAGE_MAX_RSS_MB[stage], f"{stage} peaked at {peak:.0f} MB"


def test_read_batches_and_shard_buffers_are_bounded_by_bytes(tmp_path):
    with ShardWriter(tmp_path / "out", max_rows=10_000) as writer:
        for i in range(12):
            writer.write({"id": str(i), "text": f"{i} " + "y" * DOC})
    assert len(writer.files) >= 3  # flushed by weight, not only every 10,000 rows
    sizes = [len(b) for b in iter_batches(tmp_path / "out", batch_size=256)]
    assert sum(sizes) == 12 and max(sizes) <= 5  # 32 MiB of 7 MiB rows, not 256 of them
