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


def residual_pii(folder: Path, cfg: PipelineConfig, batch_size: int = 256) -> tuple[int, list[dict]]:
    """(documents scanned, findings) for every shard below `folder`; a finding that is only type tags is ignored."""
    from llm_pipeline.curation.pii import PiiRedactor, only_tags

    findings: list[dict] = []
    scanned = 0
    with PiiRedactor(cfg.cleaned_corpus) as redactor:
        for batch in iter_batches(folder, columns=["source", "text"], batch_size=batch_size):
            scanned += len(batch)
            for doc, results in zip(batch, redactor.analyze_batch([d["text"] for d in batch])):
                for r in results:
                    span = doc["text"][r.start : r.end]
                    if only_tags(span):
                        continue  # the redaction's own tag, maybe with punctuation around it
                    findings.append({"source": doc["source"], "entity": r.entity_type, "score": round(float(r.score), 2),
                                     "span": _mask(span)})
    return scanned, findings
