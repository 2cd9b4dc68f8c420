"""The blocking `no_pii_left` check on cleaned_corpus fails when redaction left PII, and shows it masked."""

from __future__ import annotations

import yaml

from llm_pipeline.config import load_config
from llm_pipeline.defs.checks import check_results
from llm_pipeline.io import ShardWriter
from llm_pipeline.runner import StageResult


def _result(tmp_path, texts):
    folder = tmp_path / "data/cleaned_corpus/legal"
    with ShardWriter(folder) as w:
        for i, t in enumerate(texts):
            w.write({"id": str(i), "domain": "legal", "source": f"s{i}.txt", "text": t, "licence": "x", "language": "en"})
    stats = {"documents_in": len(texts), "documents_kept": len(texts), "dropped": {}, "quarantined": 0}
    return StageResult("cleaned_corpus", "legal", folder, stats, "", "h", 0.0)


def _cfg(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "domains": {"legal": {"sources": [{"path": "x"}]}}}))
    return load_config(p, root=tmp_path)


def test_no_pii_left_passes_on_redacted_text_and_fails_on_leftovers(tmp_path):
    cfg = _cfg(tmp_path)
    clean = _result(tmp_path, ["The tenant <PERSON> may write to <EMAIL_ADDRESS> about the lease.",
                               "Rent is due on the first working day of each month."])
    check = {c.check_name: c for c in check_results("cleaned_corpus", cfg, clean)}["no_pii_left"]
    assert check.passed

    leaky = _result(tmp_path, ["Questions go to maria.lopez@example.org or call 415-555-0132 before noon."])
    check = {c.check_name: c for c in check_results("cleaned_corpus", cfg, leaky)}["no_pii_left"]
    assert not check.passed
    examples = check.metadata["examples (masked)"].value
    assert {e["entity"] for e in examples} >= {"EMAIL_ADDRESS"}
    assert "maria.lopez@example.org" not in str(examples)  # the check never spreads what it finds
