"""Audit a redacted output: run the configured PII recognizers again over its shards and list what they still find.

Used by the blocking `no_pii_left` asset check on cleaned_corpus. Findings name the source, entity and score, and
show the span masked (first and last character), so the audit itself never spreads the PII it finds.
"""

from __future__ import annotations

from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import iter_batches


def _mask(span: str) -> str:
    return span[:1] + "…" + span[-1:] if len(span) > 2 else "…"


def audit_fingerprint(cfg: PipelineConfig) -> str:
    """What an audit verdict depends on besides the text: the analyzer's settings and the curation code."""
    from llm_pipeline.curation.result_cache import fingerprint

    c = cfg.cleaned_corpus
    return fingerprint(audit=True, spacy_model=c.spacy_model, entities=c.pii_entities, threshold=c.pii_score_threshold,
                       chunk_chars=c.pii_chunk_chars, keep_common_nouns=c.pii_keep_common_nouns,
                       allow=sorted(c.pii_allow))


def residual_pii(folder: Path, cfg: PipelineConfig, batch_size: int = 256, domain: str | None = None) -> tuple[int, list[dict]]:
    """(documents scanned, findings) for every shard below `folder`; a finding that is only type tags is ignored.

    With `domain` and ``cleaned_corpus.reuse_results``, a text audited by the last run of that domain (same text,
    same analyzer settings and code) takes its verdict from there; only new texts are analyzed."""
    from llm_pipeline.curation.pii import PiiRedactor, only_tags
    from llm_pipeline.curation.result_cache import ResultCache, cache_path

    findings: list[dict] = []
    scanned = 0
    enabled = domain is not None and cfg.cleaned_corpus.reuse_results
    path = cache_path(cfg.data_path, "pii_audit", domain or "_")
    redactor: PiiRedactor | None = None  # loaded on the first text without a verdict: spaCy takes seconds to load
    try:
        with ResultCache(path, audit_fingerprint(cfg), enabled=enabled) as cache:
            for batch in iter_batches(folder, columns=["source", "text"], batch_size=batch_size):
                scanned += len(batch)
                keys = [cache.key({"text": d["text"]}) for d in batch]
                verdicts = [cache.get(k) for k in keys]
                todo = [i for i, v in enumerate(verdicts) if v is None]
                if todo and redactor is None:
                    redactor = PiiRedactor(cfg.cleaned_corpus)
                for i, results in zip(todo, redactor.analyze_batch([batch[i]["text"] for i in todo]) if todo else []):
                    text = batch[i]["text"]
                    found = [{"entity": r.entity_type, "score": round(float(r.score), 2), "span": _mask(text[r.start : r.end])}
                             for r in results if not only_tags(text[r.start : r.end])]  # the redaction's own tags
                    verdicts[i] = {"findings": found}
                    cache.put(keys[i], verdicts[i])
                for doc, verdict in zip(batch, verdicts):
                    findings += [{"source": doc["source"], **f} for f in verdict["findings"]]
    finally:
        if redactor is not None:
            redactor.close()
    return scanned, findings
