"""Stage cleaned_corpus end to end through the runner, on a raw_corpus domain folder built inline."""

import json

import pyarrow.parquet as pq
import pytest
import xxhash
import yaml

from llm_pipeline.config import load_config
from llm_pipeline.io import MANIFEST, ShardWriter, iter_records, read_json
from llm_pipeline.runner import run_stage

PARA = (
    "The court considered whether the tenant had given proper notice to the landlord before leaving the flat. "
    "It found that the letter was sent on time and that the landlord had received it within the agreed period. "
    "The judge therefore held that the deposit must be returned in full, together with the interest it earned."
)
PARA2 = (
    "On appeal, the landlord argued that the notice lacked a signature and so could not count as valid. "
    "The higher court disagreed, noting that nothing in the lease required a signed letter for this purpose."
)
GUIDE = (
    "Before you sign a lease, read every clause with care and ask questions about anything unclear. "
    "Keep a copy of the signed agreement, and write down the state of the flat on the day you move in."
)
HTML = f"""<html><head><script>track()</script></head><body><nav>Home | News | Contact</nav>
<article><h1>Notice ruling</h1><p>{PARA}</p><p>{PARA2}</p></article>
<footer>All rights reserved.</footer></body></html>"""
DOCS = [
    ("good.html", "html", HTML),
    ("good.md", "md", f"# Guide\n\n{GUIDE} See [the form](https://example.com/form).\n\n* **Step one**: ask the landlord."),
    ("pii.txt", "txt", f"{PARA2} Questions go to Maria Lopez at maria.lopez@example.com or 212-555-0147."),
    ("short.txt", "txt", "Just a fragment."),
    ("french.txt", "txt", "Le tribunal a examiné si le locataire avait donné un préavis suffisant au propriétaire avant "
     "de quitter l'appartement. Il a constaté que la lettre avait été envoyée à temps et reçue dans le délai convenu."),
    ("lorem.txt", "txt", f"{GUIDE} Lorem ipsum dolor sit amet, consectetur adipiscing elit."),
    ("broken.txt", "txt", None),
]


def write_raw(data_dir, domain="legal", docs=DOCS):
    folder = data_dir / "raw_corpus" / domain
    with ShardWriter(folder, max_rows=3) as w:
        for source, fmt, text in docs:
            w.write({
                "id": xxhash.xxh3_128_hexdigest((text or source).encode()), "domain": domain, "source": source,
                "text": text, "licence": "CC-BY-4.0", "language": "", "format": fmt,
                "bytes": len((text or "").encode()),
            })
    (folder / MANIFEST).write_text(json.dumps({"stage": "raw_corpus"}))


def make_cfg(tmp_path, **cleaned):
    conf = {
        "data_dir": str(tmp_path / "data"),
        "domains": {"legal": {"languages": ["en"], "sources": [{"path": "unused"}]}},
        "cleaned_corpus": {"min_words": 8, **cleaned},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(conf))
    return load_config(path, root=tmp_path)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cleaned")
    cfg = make_cfg(tmp_path)
    write_raw(cfg.data_path)
    return run_stage(cfg, "cleaned_corpus", "legal")


def test_every_document_is_accounted_for(result):
    s = result.stats
    assert s["documents_in"] == 7
    assert s["documents_in"] == s["documents_kept"] + sum(s["dropped"].values()) + s["quarantined"]
    assert s["documents_kept"] == 3
    assert s["dropped"] == {"language_not_allowed": 1, "lorem_ipsum": 1, "too_few_words": 1}
    assert s["quarantined"] == 1
    assert s["bytes_in"] > s["bytes_kept"] > 0
    assert s["languages"] == {"en": 3}


def test_drop_and_quarantine_records(result):
    out = result.output_dir
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert {d["source"]: d["reason"] for d in dropped} == {
        "short.txt": "too_few_words", "french.txt": "language_not_allowed", "lorem.txt": "lorem_ipsum",
    }
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [q["source"] for q in quarantined] == ["broken.txt"]
    assert quarantined[0]["reason"].startswith("cleaning_error: TypeError")
    assert (out / MANIFEST).exists() and read_json(out / "stats.json") == result.stats


def test_output_columns_and_content(result):
    rows = {r["source"]: r for r in iter_records(result.output_dir)}
    first = next(result.output_dir.glob("*.parquet"))
    assert pq.read_schema(first).names == [
        "id", "domain", "source", "text", "licence", "language", "format", "n_words", "pii_counts", "extractor",
    ]
    assert rows["good.html"]["extractor"] == "trafilatura"
    assert "Home | News" not in rows["good.html"]["text"] and "track()" not in rows["good.html"]["text"]
    assert rows["good.md"]["extractor"] == "markdown"
    assert "https://" not in rows["good.md"]["text"] and "**" not in rows["good.md"]["text"]
    pii = rows["pii.txt"]
    assert "maria.lopez@example.com" not in pii["text"] and "<EMAIL_ADDRESS>" in pii["text"]
    counts = json.loads(pii["pii_counts"])
    assert counts["EMAIL_ADDRESS"] == 1 and counts["PHONE_NUMBER"] == 1
    assert all(r["language"] == "en" and r["n_words"] > 8 for r in rows.values())
    assert result.stats["pii_entities"]["EMAIL_ADDRESS"] == 1


def test_preview_shows_counts_reasons_and_redacted_samples(result):
    assert "| documents in |" in result.preview
    assert "`too_few_words`" in result.preview
    assert "<EMAIL_ADDRESS>" in result.preview


def test_switches_turn_rules_off(tmp_path):
    cfg = make_cfg(tmp_path, language_id=False, c4_rules=False, pii=False, min_words=0, gopher_quality=False)
    write_raw(cfg.data_path)
    s = run_stage(cfg, "cleaned_corpus", "legal").stats
    assert s["dropped"] == {} and s["documents_kept"] == 6 and s["pii_entities"] == {}


def test_hash_mode_without_salt_fails_before_reading(tmp_path, monkeypatch):
    monkeypatch.delenv("LLM_PIPELINE_PII_SALT", raising=False)
    cfg = make_cfg(tmp_path, pii_mode="hash")
    write_raw(cfg.data_path)
    with pytest.raises(RuntimeError, match="LLM_PIPELINE_PII_SALT"):
        run_stage(cfg, "cleaned_corpus", "legal")
    assert not (cfg.data_path / "cleaned_corpus" / "legal").exists()


def test_rerun_reuses_unchanged_documents_and_writes_the_same_output(tmp_path):
    """After one document changes, only it is computed again, and the output equals a run that computed everything."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = make_cfg(tmp_path / "a")
    write_raw(cfg.data_path)
    first = run_stage(cfg, "cleaned_corpus", "legal")
    assert first.metadata["documents_reused"] == 0 and first.metadata["documents_computed"] == 7
    again = run_stage(cfg, "cleaned_corpus", "legal")
    # The quarantined document is never stored: it is tried again every run.
    assert again.metadata["documents_reused"] == 6 and again.metadata["documents_computed"] == 1
    assert again.dvc_hash == first.dvc_hash

    changed = [(s, f, t + " Call Jonas Berg on 212-555-0199 about it." if s == "pii.txt" else t) for s, f, t in DOCS]
    write_raw(cfg.data_path, docs=changed)
    reused = run_stage(cfg, "cleaned_corpus", "legal")
    assert reused.metadata["documents_reused"] == 5 and reused.metadata["documents_computed"] == 2
    fresh_cfg = make_cfg(tmp_path / "b", reuse_results=False)
    write_raw(fresh_cfg.data_path, docs=changed)
    fresh = run_stage(fresh_cfg, "cleaned_corpus", "legal")
    assert fresh.metadata["documents_reused"] == 0 and "off in the config" in fresh.metadata["reuse_note"]
    assert reused.stats == fresh.stats and reused.stats["pii_entities"] != first.stats["pii_entities"]
    for name in ("dropped.jsonl", "quarantine.jsonl"):
        assert (reused.output_dir / name).read_text() == (fresh.output_dir / name).read_text()
    assert list(iter_records(reused.output_dir)) == list(iter_records(fresh.output_dir))
    assert "Jonas Berg" not in json.dumps(list(iter_records(reused.output_dir)))


def test_changed_settings_reuse_nothing(tmp_path):
    cfg = make_cfg(tmp_path)
    write_raw(cfg.data_path)
    run_stage(cfg, "cleaned_corpus", "legal")
    stricter = make_cfg(tmp_path, min_words=9)
    assert run_stage(stricter, "cleaned_corpus", "legal").metadata["documents_reused"] == 0
    # Batch size and worker count do not change a result, so they do not invalidate it.
    wider = make_cfg(tmp_path, min_words=9, batch_size=2, pii_processes=1)
    assert run_stage(wider, "cleaned_corpus", "legal").metadata["documents_reused"] == 6


def test_unreadable_cache_is_ignored_with_a_note(tmp_path):
    from llm_pipeline.curation.result_cache import cache_path

    cfg = make_cfg(tmp_path)
    write_raw(cfg.data_path)
    first = run_stage(cfg, "cleaned_corpus", "legal")
    cache_path(cfg.data_path, "cleaned_corpus", "legal").write_bytes(b"not a database")
    again = run_stage(cfg, "cleaned_corpus", "legal")
    assert again.metadata["documents_reused"] == 0 and "unreadable" in again.metadata["reuse_note"]
    assert again.dvc_hash == first.dvc_hash
    assert run_stage(cfg, "cleaned_corpus", "legal").metadata["documents_reused"] == 6  # rebuilt by that run


def test_reasons_over_the_drop_share_are_named_with_redacted_examples(tmp_path):
    docs = [d for d in DOCS if d[0] != "broken.txt"] + [("short2.txt", "txt", "Write to maria.lopez@example.com today.")]
    cfg = make_cfg(tmp_path, max_drop_share=0.2)
    write_raw(cfg.data_path, docs=docs)
    result = run_stage(cfg, "cleaned_corpus", "legal")
    # too_few_words: 2 of 7 (29%) is over 20%; language and lorem ipsum (1 of 7 each) are not.
    assert result.stats["drop_share_over_limit"] == {"too_few_words": round(2 / 7, 4)}
    report = json.loads((result.output_dir / "drop_examples.json").read_text())
    assert list(report) == ["too_few_words"] and report["too_few_words"]["documents"] == 2
    examples = report["too_few_words"]["examples"]
    assert [e["source"] for e in examples] == ["short.txt", "short2.txt"]
    # Dropped documents never went through the PII step: their examples are redacted before anyone reads them.
    assert "maria.lopez@example.com" not in examples[1]["text"] and "<EMAIL_ADDRESS>" in examples[1]["text"]
    assert "`too_few_words` dropped 29%" in result.preview


def test_no_reason_over_the_limit_writes_an_empty_report(result):
    assert result.stats["drop_share_over_limit"] == {}
    assert json.loads((result.output_dir / "drop_examples.json").read_text()) == {}
