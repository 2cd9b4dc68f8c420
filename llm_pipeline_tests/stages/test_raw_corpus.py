"""Stage raw_corpus through the runner: shards, quarantine file, stats accounting, preview; and the shipped sample."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from llm_pipeline.config import load_config
from llm_pipeline.io import DOC_COLUMNS, iter_records, read_json
from llm_pipeline.runner import run_stage
from llm_pipeline.stages.raw_corpus import SourceError, md_escape

REPO = Path(__file__).resolve().parents[2]
TEXT = "Clause 4.2: the tenant shall keep the premises in good repair and return them in the same condition."


def tiny_config(tmp_path: Path, files: dict[str, bytes], extra_sources: list[dict] | None = None):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in files.items():
        (corpus / name).write_bytes(data)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "domains": {"legal": {"licence": "CC0-1.0", "sources": [{"path": str(corpus)}, *(extra_sources or [])]}},
    }))
    return load_config(cfg_file, root=tmp_path)


def test_raw_corpus_stage(tmp_path):
    cfg = tiny_config(tmp_path, {
        "a.txt": TEXT.encode(),
        "b.html": f"<html><body><nav>Menu</nav><p>{TEXT}</p></body></html>".encode(),
        "rows.jsonl": b'{"text": "first row of the file"}\n{broken\n{"title": "no text"}\n',
        "image.md": b"\x00\x01\x02binary",
    })
    result = run_stage(cfg, "raw_corpus", "legal")
    out = result.output_dir
    assert out == tmp_path / "data" / "raw_corpus" / "legal"
    assert {p.name for p in out.iterdir()} == {"shard-00000.parquet", "quarantine.jsonl", "stats.json", "_manifest.json"}
    assert pq.read_schema(out / "shard-00000.parquet").names == [*DOC_COLUMNS, "format", "bytes"]

    docs = list(iter_records(out))
    assert [(Path(d["source"]).name, d["format"]) for d in docs] == [("a.txt", "txt"), ("b.html", "html"), ("rows.jsonl#L1", "jsonl")]
    assert all(d["domain"] == "legal" and d["licence"] == "CC0-1.0" and d["language"] == "" for d in docs)
    assert docs[1]["text"].startswith("<html>")  # markup survives until cleaning

    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert all(set(q) == {"source", "reason", "detail"} for q in quarantine)
    assert sorted(q["reason"] for q in quarantine) == ["binary", "malformed_json", "missing_text_field"]

    stats = read_json(out / "stats.json")
    assert stats == result.stats
    assert stats["documents_in"] == stats["documents_kept"] + sum(stats["dropped"].values()) + stats["quarantined"]
    assert (stats["documents_kept"], stats["quarantined"], stats["dropped"], stats["shards"]) == (3, 3, {}, 1)
    assert stats["quarantine_reasons"] == {"binary": 1, "malformed_json": 1, "missing_text_field": 1}
    assert stats["formats"] == {"html": 1, "jsonl": 1, "txt": 1}
    assert stats["bytes_kept"] == sum(d["bytes"] for d in docs)
    assert stats["bytes_in"] >= stats["bytes_kept"]

    assert "| documents kept | 3 |" in result.preview
    # The raw preview names sources but never shows raw (not yet redacted) text.
    assert ".html (html, 148 bytes)" in result.preview and "corpus/b.html" not in result.preview and "Clause 4.2: the tenant" not in result.preview


def test_a_domain_with_nothing_readable_stops_with_the_reason(tmp_path):
    cfg = tiny_config(tmp_path, {"only.bin.txt": b"\x00\x00"})
    with pytest.raises(SourceError, match=r"raw_corpus\[legal\]: the domain's sources hold no document .*corpus.*"
                                           r"quarantined 1 binary; first: .*only.bin.txt: binary"):
        run_stage(cfg, "raw_corpus", "legal")
    assert not (cfg.data_path / "raw_corpus" / "legal").exists()  # no empty partition for later stages to trip on


def test_a_source_path_that_does_not_exist_stops_the_domain(tmp_path):
    missing = tmp_path / "missing"
    cfg = tiny_config(tmp_path, {"a.txt": TEXT.encode()}, extra_sources=[{"path": str(missing)}])
    with pytest.raises(SourceError, match=f"raw_corpus\\[legal\\]: source path {missing} does not exist"):
        run_stage(cfg, "raw_corpus", "legal")


def test_md_escape():
    assert md_escape("a | b\n<script> *x*  [y](z)") == "a \\| b \\<script\\> \\*x\\* \\[y\\](z)"


def outside_data_dir(tmp_path):
    # data_dir outside the config's roots must be listed under allowed_roots (see llm_pipeline.security).
    return {"data_dir": str(tmp_path / "data"), "allowed_roots": [str(tmp_path)]}


def test_shipped_sample_corpus(tmp_path):
    cfg = load_config(REPO / "configs/default.yaml", overrides=outside_data_dir(tmp_path), root=REPO)
    ids: dict[str, dict[str, str]] = {}
    texts: dict[str, str] = {}
    for domain in ["legal", "medicine", "software"]:
        result = run_stage(cfg, "raw_corpus", domain)
        stats = result.stats
        assert stats["documents_kept"] >= 80, (domain, stats)
        assert stats["quarantined"] == 0, (domain, stats["quarantine_reasons"])
        assert stats["documents_in"] == stats["documents_kept"] + sum(stats["dropped"].values()) + stats["quarantined"]
        assert {"html", "md"} <= set(stats["formats"]) and len(stats["formats"]) >= 4
        docs = list(iter_records(result.output_dir))
        assert all(d["source"].startswith(f"data/sample/{domain}/") for d in docs)
        ids[domain] = {d["source"]: d["id"] for d in docs}
        texts.update({d["source"]: d["text"] for d in docs})
    # Exact duplicates across domains share an id; the software jsonl was read through its `body` field.
    assert ids["legal"]["data/sample/legal/policies/privacy_notice.txt"] == ids["software"]["data/sample/software/policies/privacy_notice.txt"]
    assert ids["legal"]["data/sample/legal/contracts/contract_007.txt"] == ids["legal"]["data/sample/legal/archive/contract_007_copy.txt"]
    assert any(s.startswith("data/sample/software/issues.jsonl#L") for s in ids["software"])
    # Every canary is in the raw corpus (raw keeps everything): later stages must be the ones that remove them.
    canaries = read_json(REPO / "data/sample/canaries.json")["canaries"]
    assert len(canaries) >= 5
    for canary in canaries:
        hits = [s for s, t in texts.items() if canary["text"] in t]
        assert hits, canary
        assert {s.split("#")[0] for s in hits} == {f"data/sample/{p}" for p in canary["planted_in"]}


def test_rerun_is_byte_identical(tmp_path):
    cfg = load_config(REPO / "configs/default.yaml", overrides=outside_data_dir(tmp_path), root=REPO)
    first = run_stage(cfg, "raw_corpus", "medicine").dvc_hash
    assert run_stage(cfg, "raw_corpus", "medicine").dvc_hash == first
