"""What each model's training cost and what it bought: the settings each training stage chose (and why), the data it
trained on against the data it had, its wall time, and the held-out numbers that came out.

Read from what the training stages leave in their output folders, never re-derived by training again:

- `lora_adapter/` and `dpo_model/`: `training_summary.json` (settings with reasons from `training/defaults.py`,
  tokens trained, seconds; per domain for SFT) beside the runner's `stats.json`;
- `base_checkpoint/`: its `training_summary.json` when it writes one, otherwise `stats.json` (tokens trained, packed
  train tokens available, epochs, seconds, precision, device) and the `base_checkpoint` config section.

A figure that is not recorded is shown as not recorded, with a note. Units differ by stage (tokens for pretraining,
label tokens for SFT, preference pairs for DPO), so the common yardstick is *passes*: data trained on / data
available.

    compute = collect(cfg, base_dir, lora_dir, dpo_dir, notes)   # -> metrics["compute"]
    compute_table(metrics), settings_table(metrics), data_table(metrics)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_pipeline.config import PipelineConfig
from llm_pipeline.evaluation.data import Notes, read_json_file, read_jsonl
from llm_pipeline.evaluation.models import MODEL_LABELS
from llm_pipeline.evaluation.tables import Cell, Table, fmt
from llm_pipeline.io import TIMINGS, merge_measured

SUMMARY = "training_summary.json"
STATS = "stats.json"
BUILDS_ON = {"base": None, "sft": "base", "dpo": "sft"}
STAGE = {"base": "base_checkpoint", "sft": "lora_adapter", "dpo": "dpo_model"}
# Config fields shown beside the chosen settings: what shapes a step (the settings table says which were defaults).
SHAPE_FIELDS = {
    "base": ("train_steps", "max_train_seconds", "batch_size", "seq_len", "learning_rate", "lr_schedule", "warmup_ratio", "weight_decay", "grad_clip"),
    "sft": ("method", "r", "alpha", "max_steps", "max_train_seconds", "batch_size", "max_length"),
    "dpo": ("max_steps", "max_train_seconds", "batch_size", "max_length", "beta", "loss_type", "rejected", "sft_weight"),
}


def _json(path: Path) -> dict:
    """A stage's JSON file with its wall-clock figures put back from the run's timings file beside it."""
    data = read_json_file(path)
    if not isinstance(data, dict):
        return {}
    timings = read_json_file(path.parent / TIMINGS) if (path.parent / TIMINGS).is_file() else None
    return merge_measured(data, timings.get(path.name)) if isinstance(timings, dict) else data


def _adapter_files(folder: Path, notes: Notes, shown: str) -> tuple[dict, dict] | None:
    """(stats, training summary) of an adapter stage's output; a missing summary is noted (`shown`: what it costs
    the report), and None when neither file is there."""
    stats, summary = _json(folder / STATS), _json(folder / SUMMARY)
    if not summary:
        notes.add(f"`{folder.name}/{SUMMARY}` is missing: {shown} not shown.")
        if not stats:
            return None
    return stats, summary


def _config_reason(section, name: str) -> str:
    return "set in config" if name in section.model_fields_set else "config default (llm_pipeline/config.py)"


def _base_settings(cfg: PipelineConfig, stats: dict) -> dict[str, dict[str, Any]]:
    """base_checkpoint's settings when it writes no training_summary.json: precision/device as recorded in its stats,
    with the reason the device planner gives on this machine when it agrees with the record."""
    from llm_pipeline.training.device import plan_device

    bc = cfg.base_checkpoint
    out: dict[str, dict[str, Any]] = {}
    precision = stats.get("precision")
    if precision is not None:
        why = "recorded in stats.json; the reason was not recorded"
        try:
            plan = plan_device(bc.precision)
            if plan.precision == precision:
                why = plan.reason
        except ValueError:
            pass
        out["precision"] = {"value": precision, "reason": why}
    if stats.get("device") is not None:
        out["device"] = {"value": stats["device"], "reason": "recorded in stats.json"}
    for key, why in (("method", "method_reason"), ("budget_seconds", "budget")):  # continued pretraining's choices
        if stats.get(key) is not None or stats.get(why):
            out[key] = {"value": stats.get(key), "reason": stats.get(why) or "recorded in stats.json"}
    for name in SHAPE_FIELDS["base"]:
        out[name] = {"value": getattr(bc, name), "reason": _config_reason(bc, name)}
    if stats.get("method") == "lora" and stats.get("learning_rate") is not None:
        out["learning_rate"] = {"value": stats["learning_rate"], "reason": "base_checkpoint.lora_learning_rate: LoRA continued pretraining"}
    return out


def _shape(cfg: PipelineConfig, model: str, settings: dict) -> dict[str, dict[str, Any]]:
    section = {"sft": cfg.lora_adapter, "dpo": cfg.dpo_model}[model]
    out = dict(settings)
    for name in SHAPE_FIELDS[model]:
        if name not in out:
            out[name] = {"value": getattr(section, name), "reason": _config_reason(section, name)}
    return out


def _passes(used: int | float | None, available: int | float | None) -> float | None:
    return round(used / available, 3) if used is not None and available else None


def _base(cfg: PipelineConfig, folder: Path, notes: Notes) -> dict | None:
    stats, summary = _json(folder / STATS), _json(folder / SUMMARY)
    if not stats and not summary:
        notes.add(f"`{folder.name}/{STATS}` is missing: the base model's training cost is not shown.")
        return None
    used = summary.get("tokens_trained", stats.get("train_tokens"))
    available = stats.get("corpus_train_tokens")
    entry = {
        "stage": STAGE["base"],
        "steps": summary.get("steps", stats.get("steps")),
        "seconds": summary.get("seconds", stats.get("seconds")),
        "train_seconds": stats.get("seconds"),
        "tokens_trained": used,
        "tokens_per_second": stats.get("tokens_per_second"),
        "settings": summary.get("settings") or _base_settings(cfg, stats),
        "settings_source": SUMMARY if summary.get("settings") else f"{STATS} and the base_checkpoint config",
        "data": {"unit": "tokens", "used": used, "available": available, "passes": stats.get("epochs", _passes(used, available))},
        "by_domain": [],
    }
    if stats.get("source") and stats["source"] != "scratch" and not stats.get("steps"):
        entry["data"]["note"] = "pretrained model kept as loaded (no training steps)"
    return entry


def _sft(cfg: PipelineConfig, folder: Path, notes: Notes) -> dict | None:
    files = _adapter_files(folder, notes, "the SFT model's settings and tokens are")
    if files is None:
        return None
    stats, summary = files
    rows, used, available = [], 0, 0
    for d, t in sorted((summary.get("tokens") or {}).items()):
        for part, u, a in (("documents", t.get("trained_tokens"), t.get("split_tokens")),
                           ("examples", t.get("example_trained_tokens"), t.get("example_tokens"))):
            if a or u:
                rows.append({"domain": d, "part": part, "unit": "label tokens", "used": u, "available": a, "passes": _passes(u, a)})
                used += u or 0
                available += a or 0
    return {
        "stage": STAGE["sft"],
        "steps": summary.get("steps", stats.get("steps")),
        "seconds": summary.get("seconds", stats.get("seconds")),
        "train_seconds": stats.get("train_seconds"),
        "tokens_trained": summary.get("tokens_trained", stats.get("tokens_trained")),
        "tokens_per_second": stats.get("tokens_per_second"),
        "settings": _shape(cfg, "sft", summary.get("settings") or {}),
        "settings_source": SUMMARY if summary.get("settings") else "the lora_adapter config",
        "data": {"unit": "label tokens", "used": used if rows else None, "available": available if rows else None,
                 "passes": _passes(used, available) if rows else None},
        "by_domain": rows,
    }


def _dpo(cfg: PipelineConfig, folder: Path, notes: Notes) -> dict | None:
    files = _adapter_files(folder, notes, "the DPO model's settings and data use are")
    if files is None:
        return None
    stats, summary = files
    steps = summary.get("steps", stats.get("steps"))
    pairs = summary.get("pairs", stats.get("pairs"))
    # Pair rows drawn: one optimizer step takes `batch_size` pairs (the config that built this output: the runner
    # re-runs dpo_model when its config section changes).
    used = steps * cfg.dpo_model.batch_size if steps is not None else None
    written: dict[str, int] = {}
    for rec in read_jsonl(folder / "pairs_train.jsonl", Notes()):
        written[str(rec.get("domain"))] = written.get(str(rec.get("domain")), 0) + 1
    dropped = sum((summary.get("dropped_pairs") or {}).values())
    data = {"unit": "pairs", "used": used, "available": pairs, "passes": _passes(used, pairs)}
    if dropped:
        data["note"] = f"{dropped} pair(s) longer than dpo_model.max_length were dropped before training"
    return {
        "stage": STAGE["dpo"],
        "steps": steps,
        "seconds": summary.get("seconds", stats.get("seconds")),
        "train_seconds": stats.get("train_seconds"),
        "reference_seconds": stats.get("reference_seconds"),
        "tokens_trained": summary.get("tokens_trained"),
        "tokens_per_second": stats.get("tokens_per_second"),
        "settings": _shape(cfg, "dpo", summary.get("settings") or {}),
        "settings_source": SUMMARY if summary.get("settings") else "the dpo_model config",
        "data": data,
        # Per domain only what was written: which pairs a step drew is not recorded.
        "by_domain": [{"domain": d, "part": "pairs written", "unit": "pairs", "used": None, "available": n, "passes": None}
                      for d, n in sorted(written.items())],
    }


def collect(cfg: PipelineConfig, base_dir: Path, lora_dir: Path, dpo_dir: Path, notes: Notes) -> dict:
    """metrics.json's `compute` section: per model, what its training stage recorded, and the running total of
    seconds (SFT builds on the base model, DPO on SFT, so each model also cost what came before it)."""
    models: dict[str, dict] = {}
    for name, fn, folder in (("base", _base, base_dir), ("sft", _sft, lora_dir), ("dpo", _dpo, dpo_dir)):
        entry = fn(cfg, Path(folder), notes)
        if entry is not None:
            entry["builds_on"] = BUILDS_ON[name]
            models[name] = entry
    running = 0.0
    for entry in models.values():
        running += entry.get("seconds") or 0.0
        entry["cumulative_seconds"] = round(running, 3)
    return {"models": models, "total_seconds": round(running, 3)}


# ---------------------------------------------------------------- outcomes and tables
def outcomes(metrics: dict) -> dict[str, dict]:
    """Per model: held-out perplexity, its change against the model it builds on, and the stage's own outcome."""
    ppl = metrics.get("perplexity", {})
    out = {}
    for m, entry in ordered(metrics):
        p = ppl.get(m, {}).get("overall", {}).get("perplexity")
        prior = ppl.get(entry.get("builds_on") or "", {}).get("overall", {}).get("perplexity")
        row = {"perplexity": p, "perplexity_change": (p - prior) / prior if p is not None and prior else None}
        if m == "dpo" and (metrics.get("preference") or {}).get("pairs"):
            row["preference_accuracy"] = metrics["preference"]["accuracy"]
        if m != "base" and m in metrics.get("tasks", {}):
            row["rouge_l"] = metrics["tasks"][m].get("rouge_l")
        out[m] = row
    return out


def _label(m: str) -> str:
    return MODEL_LABELS.get(m, m)


def ordered(metrics: dict) -> list[tuple[str, dict]]:
    """The compute entries in build order (metrics.json stores its keys sorted)."""
    models = (metrics.get("compute") or {}).get("models", {})
    return [(m, models[m]) for m in BUILDS_ON if m in models]


def _seconds(entry: dict) -> str:
    total, train = entry.get("seconds"), entry.get("train_seconds")
    text = fmt(total, 1)
    if train is not None and total is not None and abs(train - total) > 0.05:
        text += f" (training {fmt(train, 1)})"
    return text


def _amount(n, unit: str) -> str:
    return "—" if n is None else f"{n:,} {unit}" if isinstance(n, int) else f"{fmt(n, 1)} {unit}"


def compute_table(metrics: dict) -> Table:
    result = outcomes(metrics)
    rows = []
    for m, e in ordered(metrics):
        o = result.get(m, {})
        change = o.get("perplexity_change")
        bought = f"{fmt(o.get('perplexity'), 2)}"
        if change is not None:
            bought += f" ({change:+.1%} vs {_label(e['builds_on'])})"
        extra = []
        if o.get("preference_accuracy") is not None:
            extra.append(f"preference accuracy {o['preference_accuracy']:.1%}")
        if o.get("rouge_l") is not None:
            extra.append(f"ROUGE-L {fmt(o['rouge_l'])}")
        d = e.get("data", {})
        used = f"{_amount(d.get('used'), d.get('unit', ''))} of {_amount(d.get('available'), '')}".replace(" of —", " of — (not recorded)")
        cls = "" if change is None else ("better" if change < 0 else "worse")
        rows.append([_label(m), fmt(e.get("steps")), _seconds(e), fmt(e.get("cumulative_seconds"), 1), fmt(e.get("tokens_per_second"), 0),
                     used.strip(), fmt(d.get("passes"), 2), Cell(bought, cls), "; ".join(extra) or "—"])
    return Table(["Model", "Steps", "Wall s", "Cumulative s", "Tokens/s", "Data used of available", "Passes",
                  "Held-out perplexity", "Other outcome"], rows)


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return fmt(v)


def settings_table(metrics: dict) -> Table:
    rows = []
    for m, e in ordered(metrics):
        for name, s in e.get("settings", {}).items():
            value, reason = (s.get("value"), s.get("reason", "")) if isinstance(s, dict) else (s, "")
            rows.append([_label(m), f"`{name}`", _value(value), reason or "—"])
    return Table(["Model", "Setting", "Value", "Why"], rows)


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else fmt(n)


def data_table(metrics: dict) -> Table:
    rows = []
    for m, e in ordered(metrics):
        d = e.get("data", {})
        rows.append([_label(m), "**all**", d.get("unit", ""), _count(d.get("used")), _count(d.get("available")), fmt(d.get("passes"), 2), d.get("note", "")])
        for r in e.get("by_domain", []):
            rows.append([_label(m), f"{r['domain']} · {r['part']}", r["unit"], _count(r.get("used")), _count(r.get("available")), fmt(r.get("passes"), 2), ""])
    return Table(["Model", "Domain", "Unit", "Trained on", "Available", "Passes", "Note"], rows)


def compute_intro(metrics: dict) -> str:
    comp = metrics.get("compute") or {}
    total = comp.get("total_seconds")
    sources = {_label(m): e.get("settings_source") for m, e in ordered(metrics)}
    where = "; ".join(f"{m}: {s}" for m, s in sources.items())
    return (f"Training wall time, data trained on and what came out, per model; {fmt(total, 1)} s of training in all. "
            f"Cumulative seconds add the stages a model builds on (SFT on the base, DPO on SFT). Passes = data trained on / "
            f"data available (above 1: the data was seen more than once). Recorded in: {where}.")
