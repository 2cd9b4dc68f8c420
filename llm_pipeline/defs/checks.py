"""Blocking asset checks evaluated inside each materialization (a failure stops downstream assets in the run).

They run inside the asset rather than as separate `@asset_check`s because a separate check on a partitioned asset
would load every partition (see shared notes on partitioned asset checks).
"""

from __future__ import annotations

import dagster as dg

from llm_pipeline.config import PipelineConfig
from llm_pipeline.runner import StageResult

CHECKS: dict[str, list[tuple[str, str]]] = {
    "raw_corpus": [("accounting", "documents in = kept + dropped by reason + quarantined")],
    "cleaned_corpus": [("accounting", "documents in = kept + dropped by reason + quarantined")],
    "deduped_shards": [
        ("accounting", "documents in = kept + dropped by reason + quarantined"),
        ("great_expectations", "Great Expectations suite: non-null text, length bounds, unique ids, allowed languages, no PII pattern"),
    ],
}


def _accounting(stage: str, result: StageResult) -> dg.AssetCheckResult:
    s = result.stats
    dropped = sum((s.get("dropped") or {}).values())
    total = s.get("documents_kept", 0) + dropped + s.get("quarantined", 0)
    passed = s.get("documents_in") == total
    return dg.AssetCheckResult(
        check_name="accounting",
        asset_key=stage,
        passed=bool(passed),
        metadata={
            "documents_in": s.get("documents_in"),
            "kept + dropped + quarantined": total,
            "dropped": dg.MetadataValue.json(s.get("dropped") or {}),
        },
    )


def _great_expectations(cfg: PipelineConfig, result: StageResult) -> dg.AssetCheckResult:
    from llm_pipeline.curation.validation import validate_shards

    outcome = validate_shards(result.output_dir, cfg, result.domain)
    failed = [r for r in outcome.results if not r.get("success")]
    return dg.AssetCheckResult(
        check_name="great_expectations",
        asset_key="deduped_shards",
        passed=bool(outcome.passed),
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.summary[:2000] if not outcome.passed else None,
        metadata={
            "expectations": len(outcome.results),
            "failed": dg.MetadataValue.json(failed),
            "summary": dg.MetadataValue.md(outcome.summary),
        },
    )


def check_results(stage: str, cfg: PipelineConfig, result: StageResult) -> list[dg.AssetCheckResult]:
    out = []
    for name, _ in CHECKS.get(stage, []):
        if name == "accounting":
            out.append(_accounting(stage, result))
        elif name == "great_expectations":
            if cfg.validation.enabled:
                out.append(_great_expectations(cfg, result))
            else:
                out.append(dg.AssetCheckResult(check_name=name, asset_key=stage, passed=True, metadata={"skipped": "validation.enabled is false"}))
    return out
