"""Promotion gates: thresholds from the config checked against the report's metrics, before a model is served.

`evaluate_gates` is a plain function over metrics.json's content, so the stage (which writes the verdict into
metrics.json, the report and eval_report/serving_manifest.json) and the Dagster check (`promotion_gates`, blocking)
read one verdict. A gate whose threshold is None is off. A gate that is on but whose number could not be measured
fails: a model is not promoted on evidence nobody saw.

    gates = evaluate_gates(cfg, metrics)
    promoted = all(g.passed for g in gates)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llm_pipeline.config import EvalReportConfig, PipelineConfig


@dataclass
class Gate:
    name: str
    passed: bool
    observed: float | int | None
    threshold: float | int | bool | None
    why: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _perplexity(metrics: dict, model: str) -> float | None:
    value = ((metrics.get("perplexity") or {}).get(model) or {}).get("overall", {}).get("perplexity")
    return value if isinstance(value, (int, float)) else None


def _ppl_ratio(limit: float, metrics: dict) -> Gate:
    dpo, sft = _perplexity(metrics, "dpo"), _perplexity(metrics, "sft")
    if dpo is None or not sft:
        return Gate("dpo_vs_sft_perplexity", False, None, limit, "not measured: the SFT or DPO model has no held-out perplexity")
    ratio = dpo / sft
    ok = ratio <= limit
    why = f"DPO perplexity {dpo:,.2f} is {ratio:.3f}x SFT's {sft:,.2f} ({'within' if ok else 'above'} the {limit:.3f}x limit)"
    return Gate("dpo_vs_sft_perplexity", ok, round(ratio, 4), limit, why)


def _preference(floor: float, metrics: dict) -> Gate:
    pref = metrics.get("preference") or {}
    acc = pref.get("accuracy") if pref.get("pairs") else None
    if not isinstance(acc, (int, float)):
        return Gate("preference_accuracy", False, None, floor, "not measured: no held-out preference pairs were scored")
    ok = acc >= floor
    base = pref.get("length_baseline_accuracy")
    tail = f"; longer-answer-wins baseline {base:.1%}" if isinstance(base, (int, float)) else ""
    return Gate("preference_accuracy", ok, round(acc, 4), floor, f"DPO ranks the chosen answer first in {acc:.1%} of {pref['pairs']} held-out pairs ({'at or above' if ok else 'below'} {floor:.1%}){tail}")


def _canaries(explicit_file: bool, metrics: dict) -> Gate:
    c = metrics.get("canaries") or {}
    if not c.get("checked"):
        if explicit_file:
            return Gate("no_canary_leak", False, None, True, f"not measured: {c.get('why') or 'the canaries file could not be read'}")
        return Gate("no_canary_leak", True, None, True, f"skipped: {c.get('why') or 'no canaries file'}, nothing to look for")
    leaked = [r for r in c.get("items", []) if r.get("leaked")]
    if not leaked:
        return Gate("no_canary_leak", True, 0, True, f"none of {c.get('canaries', 0)} canaries found in shards, vocabulary, training sets or generations")
    where = sorted({place for r in leaked for place in r.get("found_in", {})})
    return Gate("no_canary_leak", False, len(leaked), True, f"{len(leaked)} of {c.get('canaries')} canaries found in: {', '.join(where)}")


def evaluate_gates(cfg: PipelineConfig | EvalReportConfig, metrics: dict) -> list[Gate]:
    """Every gate the config turns on, in a fixed order, each with what it saw and why it passed or failed."""
    ec = cfg.eval_report if isinstance(cfg, PipelineConfig) else cfg
    gates = []
    if ec.max_dpo_vs_sft_perplexity_ratio is not None:
        gates.append(_ppl_ratio(ec.max_dpo_vs_sft_perplexity_ratio, metrics))
    if ec.min_preference_accuracy is not None:
        gates.append(_preference(ec.min_preference_accuracy, metrics))
    if ec.no_canary_leak:
        # A canaries file the config names on purpose must be readable; the default file may be absent.
        gates.append(_canaries("canaries_file" in ec.model_fields_set and ec.canaries_file is not None, metrics))
    return gates


def promotion(gates: list[Gate]) -> dict[str, Any]:
    """What the serving manifest records: promoted or not, and which gates said no."""
    failed = [g.as_dict() for g in gates if not g.passed]
    return {"promoted": not failed, "failed_gates": failed, "gates": [g.as_dict() for g in gates]}
