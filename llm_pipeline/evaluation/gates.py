"""Promotion gates and the choice of the model that ships.

Every tuned model is a candidate, in `eval_report.promotion_order` (default RL, DPO, SFT: the most aligned first).
Each candidate has its own gates; the first candidate whose gates all pass is promoted, and the others are recorded
with the reason they were not chosen (a model in the order that was not run, say no rl_model, is recorded as such).
A run whose DPO model undoes the SFT gain therefore still ships the SFT adapter, and says so: "RL not promoted:
judge reward +0.0012 not above 0.0050 over SFT; DPO not promoted: perplexity 1.096 × SFT; SFT adapter promoted".

Gates (a threshold of None turns a gate off):

- `dpo_vs_sft_perplexity` (DPO only): DPO perplexity over SFT's, overall and on every domain, at most the limit.
- `rl_vs_sft_perplexity` (RL only): the same for the RL model (`max_rl_vs_sft_perplexity_ratio`).
- `rl_reward_gain` (RL only): RL's mean reward on the held-out prompts minus SFT's, under the judge (or the reward
  model: `rl_gate_reward`), above `min_reward_gain` (evaluation/policy_rewards.py).
- `rl_kl_to_sft` (RL only): RL's KL to SFT, nats per answer, at most `max_kl`.
- `preference_accuracy` (DPO only): held-out pair accuracy at or above the floor.
- `vs_original_bits_per_byte`: bits per byte against the original pretrained model, overall and on every domain
  (bits per byte, because the tokenizer may have been extended since; perplexity changes meaning with it). Passes
  with a note when the base model was trained from scratch: there is no original to be worse than.
- `vs_base_bits_per_byte`: the same against `base_checkpoint`.
- `no_canary_leak`: no planted PII canary anywhere (the same verdict for every candidate).

A gate that is on but whose number could not be measured fails: a model is not promoted on evidence nobody saw.
`choose` is a plain function over metrics.json's content, so the stage (which writes the verdict into metrics.json,
the report and eval_report/serving_manifest.json) and the Dagster check `promotion_gates` read one verdict.

    verdict = choose(cfg, metrics)   # {"promoted", "model", "summary", "candidates", "gates", ...}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llm_pipeline.config import EvalReportConfig, PipelineConfig

# Most aligned first: the first candidate that passes its gates ships (eval_report.promotion_order's default).
CANDIDATES = ("rl", "dpo", "sft")
LABELS = {"rl": "RL", "dpo": "DPO", "sft": "SFT", "base": "base_checkpoint", "original": "the original model"}
FOLDERS = {"rl": "rl_model", "dpo": "dpo_model", "sft": "lora_adapter"}
SHIPPED = {"rl": "RL adapter", "dpo": "DPO adapter", "sft": "SFT adapter"}
SCORER_LABELS = {"judge": "judge", "reward_model": "reward-model"}


@dataclass
class Gate:
    name: str
    passed: bool
    observed: float | int | None
    threshold: float | int | bool | None
    why: str
    short: str = ""  # a few words for the one-line summary, e.g. "perplexity 1.096 × SFT"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _score(metrics: dict, model: str, key: str, domain: str | None = None) -> float | None:
    entry = (metrics.get("perplexity") or {}).get(model) or {}
    part = entry.get("overall", {}) if domain is None else (entry.get("by_domain") or {}).get(domain, {})
    value = (part or {}).get(key)
    return value if isinstance(value, (int, float)) else None


def worst_ratio(metrics: dict, model: str, ref: str, key: str) -> tuple[float, str] | None:
    """The largest model/reference ratio of `key` over the whole held-out set and each domain both measured, with
    where it was found ("all" or the domain); None when the overall figures are missing."""
    mine, theirs = _score(metrics, model, key), _score(metrics, ref, key)
    if mine is None or not theirs:
        return None
    worst = (mine / theirs, "all")
    domains = ((metrics.get("perplexity") or {}).get(model) or {}).get("by_domain") or {}
    for d in domains:
        a, b = _score(metrics, model, key, d), _score(metrics, ref, key, d)
        if a is not None and b:
            worst = max(worst, (a / b, d))
    return worst


def _where(domain: str) -> str:
    return "overall" if domain == "all" else f"on {domain}"


def _ratio_gate(name: str, metrics: dict, model: str, ref: str, key: str, limit: float) -> Gate:
    unit = "perplexity" if key == "perplexity" else "bits per byte"
    found = worst_ratio(metrics, model, ref, key)
    if found is None:
        return Gate(name, False, None, limit, f"not measured: {LABELS[model]} or {LABELS[ref]} has no held-out {unit}", f"{unit} vs {LABELS[ref]} not measured")
    ratio, where = found
    ok = ratio <= limit
    why = (f"{LABELS[model]} {unit} is at most {ratio:.3f}x {LABELS[ref]}'s (worst {_where(where)}; "
           f"{'within' if ok else 'above'} the {limit:.3f}x limit)")
    return Gate(name, ok, round(ratio, 4), limit, why, f"{unit} {ratio:.3f} × {LABELS[ref]}{'' if where == 'all' else f' on {where}'}")


def _preference(floor: float, metrics: dict) -> Gate:
    pref = metrics.get("preference") or {}
    acc = pref.get("accuracy") if pref.get("pairs") else None
    if not isinstance(acc, (int, float)):
        return Gate("preference_accuracy", False, None, floor, "not measured: no held-out preference pairs were scored", "preference accuracy not measured")
    ok = acc >= floor
    base = pref.get("length_baseline_accuracy")
    tail = f"; longer-answer-wins baseline {base:.1%}" if isinstance(base, (int, float)) else ""
    return Gate("preference_accuracy", ok, round(acc, 4), floor,
                f"DPO ranks the chosen answer first in {acc:.1%} of {pref['pairs']} held-out pairs ({'at or above' if ok else 'below'} {floor:.1%}){tail}",
                f"preference accuracy {acc:.1%}")


def _canaries(explicit_file: bool, metrics: dict) -> Gate:
    c = metrics.get("canaries") or {}
    if not c.get("checked"):
        if explicit_file:
            return Gate("no_canary_leak", False, None, True, f"not measured: {c.get('why') or 'the canaries file could not be read'}", "canaries not checked")
        return Gate("no_canary_leak", True, None, True, f"skipped: {c.get('why') or 'no canaries file'}, nothing to look for")
    leaked = [r for r in c.get("items", []) if r.get("leaked")]
    if not leaked:
        return Gate("no_canary_leak", True, 0, True, f"none of {c.get('canaries', 0)} canaries found in shards, vocabulary, training sets or generations")
    where = sorted({place for r in leaked for place in r.get("found_in", {})})
    return Gate("no_canary_leak", False, len(leaked), True, f"{len(leaked)} of {c.get('canaries')} canaries found in: {', '.join(where)}",
                f"{len(leaked)} PII canar{'y' if len(leaked) == 1 else 'ies'} leaked")


def _policy(metrics: dict, model: str) -> dict:
    return ((metrics.get("policies") or {}).get("models") or {}).get(model) or {}


def _unmeasured_reward(metrics: dict, scorer: str) -> str:
    p = metrics.get("policies") or {}
    if p.get("why"):
        return p["why"]
    why = ((p.get("scorers") or {}).get(scorer) or {}).get("why")
    if why:
        return f"no {SCORER_LABELS[scorer].replace('-', ' ')} ({why})"
    return "RL or SFT was not sampled on the held-out prompts"


def _reward_gain(scorer: str, floor: float, metrics: dict) -> Gate:
    name, what = "rl_reward_gain", f"{SCORER_LABELS[scorer]} reward"
    rl, sft = (_policy(metrics, "rl").get("reward") or {}).get(scorer), (_policy(metrics, "sft").get("reward") or {}).get(scorer)
    if rl is None or sft is None:
        return Gate(name, False, None, floor, f"not measured: {_unmeasured_reward(metrics, scorer)}", f"{what} not measured")
    gain = rl - sft
    ok = gain > floor
    p = metrics.get("policies") or {}
    why = (f"RL's mean {what} on {p.get('prompts')} held-out prompts ({p.get('samples')} samples each) is {rl:.4f} against "
           f"SFT's {sft:.4f}: {gain:+.4f}, {'above' if ok else 'not above'} the {floor:.4f} required")
    return Gate(name, ok, round(gain, 5), floor, why, f"{what} {gain:+.4f} {'>' if ok else '≤'} {floor:.4f} over SFT")


def _kl_budget(limit: float, metrics: dict) -> Gate:
    kl = _policy(metrics, "rl").get("kl_to_sft")
    if kl is None:
        return Gate("rl_kl_to_sft", False, None, limit, f"not measured: {(metrics.get('policies') or {}).get('why') or 'RL was not sampled'}",
                    "KL to SFT not measured")
    ok = kl <= limit
    return Gate("rl_kl_to_sft", ok, round(kl, 5), limit,
                f"RL's KL to SFT is {kl:.3f} nats per answer ({'within' if ok else 'above'} the {limit:.3f} budget; sampled-token estimate)",
                f"KL to SFT {kl:.3f} {'≤' if ok else '>'} {limit:.3f} nats")


def _section(cfg: PipelineConfig | EvalReportConfig) -> EvalReportConfig:
    return cfg.eval_report if isinstance(cfg, PipelineConfig) else cfg


def evaluate_gates(cfg: PipelineConfig | EvalReportConfig, metrics: dict, model: str = "dpo") -> list[Gate]:
    """Every gate the config turns on for one candidate, in a fixed order, each with what it saw and why."""
    ec = _section(cfg)
    gates = []
    if model == "dpo" and ec.max_dpo_vs_sft_perplexity_ratio is not None:
        gates.append(_ratio_gate("dpo_vs_sft_perplexity", metrics, "dpo", "sft", "perplexity", ec.max_dpo_vs_sft_perplexity_ratio))
    if model == "dpo" and ec.min_preference_accuracy is not None:
        gates.append(_preference(ec.min_preference_accuracy, metrics))
    if model == "rl" and ec.max_rl_vs_sft_perplexity_ratio is not None:
        gates.append(_ratio_gate("rl_vs_sft_perplexity", metrics, "rl", "sft", "perplexity", ec.max_rl_vs_sft_perplexity_ratio))
    if model == "rl" and ec.min_reward_gain is not None:
        gates.append(_reward_gain(ec.rl_gate_reward, ec.min_reward_gain, metrics))
    if model == "rl" and ec.max_kl is not None:
        gates.append(_kl_budget(ec.max_kl, metrics))
    if ec.max_vs_original_bits_per_byte_ratio is not None:
        if "original" in (metrics.get("perplexity") or {}):
            gates.append(_ratio_gate("vs_original_bits_per_byte", metrics, model, "original", "bits_per_byte", ec.max_vs_original_bits_per_byte_ratio))
        else:
            why = (metrics.get("original") or {}).get("why") or "no original pretrained model was measured"
            gates.append(Gate("vs_original_bits_per_byte", True, None, ec.max_vs_original_bits_per_byte_ratio, f"skipped: {why}"))
    if ec.max_vs_base_bits_per_byte_ratio is not None:
        gates.append(_ratio_gate("vs_base_bits_per_byte", metrics, model, "base", "bits_per_byte", ec.max_vs_base_bits_per_byte_ratio))
    if ec.no_canary_leak:
        # A canaries file the config names on purpose must be readable; the default file may be absent.
        gates.append(_canaries("canaries_file" in ec.model_fields_set and ec.canaries_file is not None, metrics))
    return gates


def promotion(gates: list[Gate]) -> dict[str, Any]:
    """One candidate's verdict: promoted or not, and which gates said no."""
    failed = [g.as_dict() for g in gates if not g.passed]
    return {"promoted": not failed, "failed_gates": failed, "gates": [g.as_dict() for g in gates]}


def _reason(gates: list[dict]) -> str:
    return "; ".join(g.get("short") or g["name"] for g in gates if not g["passed"])


def choose(cfg: PipelineConfig | EvalReportConfig, metrics: dict) -> dict[str, Any]:
    """The verdict over every candidate in the promotion order: which model ships (the first whose gates all pass),
    why each other was not chosen (a candidate the report could not measure says why it was not run), and a one-line
    summary for the CLI and the report's top.

    `gates`/`failed_gates` are the shipped model's (or, when none ships, the first measured candidate's), so a reader
    of one list of gates sees the verdict on the model the manifest names."""
    ec = _section(cfg)
    measured = metrics.get("models") or []
    not_run = (metrics.get("policies") or {}).get("not_run") or {}
    candidates, skipped = [], []
    for m in ec.promotion_order:
        if m in measured:
            candidates.append({"model": m, "folder": FOLDERS[m], **promotion(evaluate_gates(cfg, metrics, m))})
        elif m in not_run:  # the report knows why it is missing (a metrics.json from before RL has no such entry)
            skipped.append({"model": m, "folder": FOLDERS[m], "promoted": False, "failed_gates": [], "gates": [], "ran": False,
                            "why": f"not run: {not_run[m]}"})
    chosen = next((c for c in candidates if c["promoted"]), None)
    order = {m: i for i, m in enumerate(ec.promotion_order)}
    parts = [f"{LABELS[c['model']]} not run ({c['why'].removeprefix('not run: ')})" for c in skipped
             if chosen is None or order[c["model"]] < order[chosen["model"]]]
    for c in candidates:
        if c is chosen:
            break
        parts.append(f"{LABELS[c['model']]} not promoted: {_reason(c['gates'])}")
    if chosen is not None:
        parts.append(f"{SHIPPED[chosen['model']]} promoted")
    elif candidates:
        parts.append("no model promoted")
    else:
        parts.append("no tuned model could be evaluated; no model promoted")
    for c in candidates:
        c["ran"] = True
        c["chosen"] = c is chosen
        c["why"] = ("promoted: every gate passed" if c is chosen else
                    f"not chosen: {_reason(c['gates'])}" if not c["promoted"] else
                    f"passed its gates, but {LABELS[chosen['model']]} comes first" if chosen else "")
    for c in skipped:
        c["chosen"] = False
    shown = chosen or (candidates[0] if candidates else {"gates": [], "failed_gates": []})
    everyone = sorted(candidates + skipped, key=lambda c: order[c["model"]])
    return {
        "promoted": chosen is not None,
        "model": chosen["model"] if chosen else None,
        "folder": chosen["folder"] if chosen else None,
        "summary": "; ".join(parts),
        "candidates": everyone,
        "gates": shown["gates"],
        "failed_gates": shown["failed_gates"],
    }
