"""Blocking asset checks evaluated inside each materialization (a failure stops downstream assets in the run).

A check that fails with WARN severity (drop_share, unless configured blocking) is shown but stops nothing.

They run inside the asset rather than as separate `@asset_check`s because a separate check on a partitioned asset
would load every partition (see shared notes on partitioned asset checks).
"""

from __future__ import annotations

import json
import warnings

import dagster as dg

from llm_pipeline.config import PipelineConfig
from llm_pipeline.defs.metadata import markdown
from llm_pipeline.runner import StageResult

CHECKS: dict[str, list[tuple[str, str]]] = {
    "raw_corpus": [("accounting", "documents in = kept + dropped by reason + quarantined")],
    "cleaned_corpus": [
        ("accounting", "documents in = kept + dropped by reason + quarantined"),
        ("no_pii_left", "the configured PII recognizers, run again over the output, find nothing but type tags"),
        ("drop_share", "no drop reason takes more than cleaned_corpus.max_drop_share of the domain (a warning unless "
                       "drop_share_blocking)"),
    ],
    "deduped_shards": [
        ("accounting", "documents in = kept + dropped by reason + quarantined"),
        ("great_expectations", "Great Expectations suite: non-null text, length bounds, unique ids, allowed languages, no PII pattern"),
    ],
    "eval_report": [
        ("promotion_gates", "Promotion gates from eval_report config: DPO vs SFT perplexity, preference accuracy, no PII canary leak"),
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
            "summary": markdown(outcome.summary),
        },
    )


def _promotion_gates(result: StageResult) -> dg.AssetCheckResult:
    """The gates the eval_report stage evaluated (metrics.json), as one blocking check: any failed gate fails it."""
    path = result.output_dir / "metrics.json"
    try:
        gates = json.loads(path.read_text(encoding="utf-8"))["gates"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return dg.AssetCheckResult(
            check_name="promotion_gates", asset_key="eval_report", passed=False, severity=dg.AssetCheckSeverity.ERROR,
            description=f"no gate verdict in {path} ({type(exc).__name__}): the model is not promoted",
        )
    failed = [g for g in gates if not g.get("passed")]
    rows = ["| Gate | Status | Observed | Threshold | Why |", "|---|---|---|---|---|"]
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731  (a pipe would split the markdown cell)
    rows += [f"| {g['name']} | {'PASS' if g['passed'] else 'FAIL'} | {g.get('observed')} | {g.get('threshold')} | {cell(g.get('why', ''))} |" for g in gates]
    return dg.AssetCheckResult(
        check_name="promotion_gates",
        asset_key="eval_report",
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=("not promoted: " + "; ".join(f"{g['name']}: {g.get('why', '')}" for g in failed))[:2000] if failed else None,
        metadata={
            "promoted": not failed,
            "gates": len(gates),
            "failed": dg.MetadataValue.json([g["name"] for g in failed]),
            "verdict": markdown("\n".join(rows) if gates else "No promotion gate is configured."),
        },
    )


def _no_pii_left(cfg: PipelineConfig, result: StageResult) -> dg.AssetCheckResult:
    if not cfg.cleaned_corpus.pii:
        return dg.AssetCheckResult(check_name="no_pii_left", asset_key="cleaned_corpus", passed=True,
                                   metadata={"skipped": "cleaned_corpus.pii is false"})
    from llm_pipeline.curation.pii_audit import residual_pii

    scanned, findings = residual_pii(result.output_dir, cfg, domain=result.domain)
    by_entity: dict[str, int] = {}
    for f in findings:
        by_entity[f["entity"]] = by_entity.get(f["entity"], 0) + 1
    return dg.AssetCheckResult(
        check_name="no_pii_left",
        asset_key="cleaned_corpus",
        passed=not findings,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if not findings else f"{len(findings)} PII findings left in {scanned} documents",
        metadata={"documents_scanned": scanned, "findings": len(findings), "by_entity": dg.MetadataValue.json(by_entity),
                  "examples (masked)": dg.MetadataValue.json(findings[:20])},
    )


def _drop_share(cfg: PipelineConfig, result: StageResult) -> dg.AssetCheckResult:
    """One rule dropping a large share of a domain is usually a threshold that does not fit the domain: say which, how
    much, and show what it dropped, before anything trains on the rest."""
    from llm_pipeline.stages.cleaned_corpus import DROP_EXAMPLES_FILE

    ccfg = cfg.cleaned_corpus
    over = result.stats.get("drop_share_over_limit") or {}
    try:
        report = json.loads((result.output_dir / DROP_EXAMPLES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = {}
    n_in = result.stats.get("documents_in", 0)
    lines = [f"| reason | dropped | share of {n_in} |", "|---|---|---|"]
    lines += [f"| `{r}` | {(report.get(r) or {}).get('documents', '?')} | {share:.1%} |" for r, share in over.items()]
    for reason in over:
        lines += ["", f"**`{reason}`**, first dropped documents:"]
        for e in (report.get(reason) or {}).get("examples", []):
            lines += [f"- {e.get('source')}: {e.get('text', '').replace('|', '/')[:300]}"]
    description = None
    if over:
        worst = ", ".join(f"{r} dropped {s:.0%}" for r, s in over.items())
        description = (f"{worst} of domain {result.domain} (limit {ccfg.max_drop_share:.0%}): check that the rule fits "
                       f"this domain before training (quality_profile, or the rule's threshold)")
    return dg.AssetCheckResult(
        check_name="drop_share",
        asset_key="cleaned_corpus",
        passed=not over,
        severity=dg.AssetCheckSeverity.ERROR if ccfg.drop_share_blocking else dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "max_drop_share": ccfg.max_drop_share,
            "over_limit": dg.MetadataValue.json(over),
            "examples": markdown("\n".join(lines) if over else "No reason over the limit."),
        },
    )


def check_specs(stage: str, partitions: dg.PartitionsDefinition | None) -> list[dg.AssetCheckSpec]:
    """The stage's blocking checks. A partitioned stage's checks share its partitions, so each evaluation is recorded
    against the domain it checked and the UI lists check results per partition, not one result per asset."""
    with warnings.catch_warnings():  # partitioned check specs are marked preview; we use only the partition key
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [dg.AssetCheckSpec(name, asset=stage, blocking=True, description=desc, partitions_def=partitions)
                for name, desc in CHECKS.get(stage, [])]


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
        elif name == "no_pii_left":
            out.append(_no_pii_left(cfg, result))
        elif name == "drop_share":
            out.append(_drop_share(cfg, result))
        elif name == "promotion_gates":
            out.append(_promotion_gates(result))
    if result.domain is not None:  # also in the metadata, where the result is read without its event
        out = [r.with_metadata({**r.metadata, "partition": dg.MetadataValue.text(result.domain)}) for r in out]
    return out
