"""Rendering metrics.json as report.md (for the Dagster UI and git diffs) and a self-contained report.html.

Both renderings come from the same table builders, so they never disagree. The HTML inlines its CSS and embeds the
plots as base64 PNG: one file that can be mailed or opened from a DVC cache with no server. At its top a summary
shows each headline number per model, green where a tuned model beats the base model and red where it is worse.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from llm_pipeline.evaluation import compute, policy_tables
from llm_pipeline.evaluation import report_checks as checks
from llm_pipeline.evaluation.models import MODEL_LABELS
from llm_pipeline.evaluation.plots import COLORS
from llm_pipeline.evaluation.tables import Cell, Table, fmt, pct

__all__ = ["Cell", "Table", "fmt", "pct", "headline", "verdict", "render_markdown", "render_html", "md_table", "summary_table"]

# (key in headline, label, direction, digits): direction says which way is better.
SUMMARY_METRICS = [
    ("perplexity", "Held-out perplexity", "lower", 2),
    ("bits_per_byte", "Bits per byte", "lower", 3),
    ("rouge_l", "ROUGE-L F1 (sft_eval)", "higher", 3),
    ("exact_match", "Exact match (sft_eval)", "higher", 3),
    ("probe_accuracy", "Few-shot probe accuracy", "higher", 3),
]
PLOT_CAPTIONS = {
    "training_loss.png": "Training loss per stage (dashed: held-out loss where the trainer logged it).",
    "perplexity_by_domain.png": "Held-out perplexity by domain and model (lower is better).",
    "dpo_rewards.png": "DPO reward margin and reward accuracy over training steps.",
    "training_compute.png": "Held-out perplexity against cumulative training time, and passes over the available training data per model.",
    "policy_rewards.png": "Mean held-out reward per model under the reward model and its judge, and each model's KL to SFT.",
}


# ---------------------------------------------------------------- numbers
def headline(metrics: dict) -> dict:
    """The handful of numbers that become stats.json, DVC metrics and the summary at the report's top."""
    out: dict = {"eval_documents": sum(metrics.get("eval_documents", {}).values())}
    for key, *_ in SUMMARY_METRICS:
        vals = {}
        for m in metrics["models"]:
            if key in ("perplexity", "bits_per_byte"):
                vals[m] = metrics["perplexity"].get(m, {}).get("overall", {}).get(key)
            elif key == "probe_accuracy":
                vals[m] = ((metrics.get("probes") or {}).get("accuracy") or {}).get(m)
            elif m in metrics.get("tasks", {}):
                vals[m] = metrics["tasks"][m].get(key)
        out[key] = vals
    pref = metrics.get("preference") or {}
    if pref.get("pairs"):
        out["preference_accuracy"] = pref["accuracy"]
        out["length_baseline_accuracy"] = pref["length_baseline_accuracy"]
        out["preference_pairs"] = pref["pairs"]
    sets = metrics.get("contamination", {}).get("sets", {})
    out["contamination_max_share"] = max((s["share"] for s in sets.values()), default=0.0)
    out["contamination_flagged"] = len(metrics.get("contamination", {}).get("flagged", []))
    canaries = metrics.get("canaries") or {}
    if canaries.get("checked"):
        out["canaries_checked"], out["canaries_leaked"] = canaries["canaries"], canaries["leaked"]
    if "gates" in metrics:
        out["gates_failed"] = sum(not g["passed"] for g in metrics["gates"])
        out["gates_passed"] = len(metrics["gates"]) - out["gates_failed"]
        out["promoted"] = metrics.get("promoted", out["gates_failed"] == 0)
        if "promoted_model" in metrics:
            out["promoted_model"] = metrics["promoted_model"]
        if metrics.get("promotion_summary"):
            out["verdict"] = metrics["promotion_summary"]
    for m, ratios in reference_ratios(metrics).items():
        for ref, r in ratios.items():
            out[f"{m}_vs_{ref}_bits_per_byte"] = r
    if metrics.get("review"):
        out["review_records"] = metrics["review"].get("records", 0)
    pol = (metrics.get("policies") or {}).get("models") or {}
    for scorer in ("reward_model", "judge"):
        vals = {m: (r.get("reward") or {}).get(scorer) for m, r in pol.items()}
        if any(v is not None for v in vals.values()):
            out[f"reward_{scorer}"] = vals
    if pol:
        out["kl_to_sft"] = {m: r.get("kl_to_sft") for m, r in pol.items() if m != "sft"}
    return out


def verdict(metrics: dict) -> list[str]:
    """A few plain sentences for the top of the report: what improved, what did not, what to distrust."""
    lines = []
    gates = metrics.get("gates")
    if metrics.get("promotion_summary"):
        lines.append(metrics["promotion_summary"][0].upper() + metrics["promotion_summary"][1:] + ".")
    elif gates:
        failed = [g["name"] for g in gates if not g["passed"]]
        lines.append(f"Not promoted: gate(s) {', '.join(failed)} failed." if failed else f"Promoted: all {len(gates)} promotion gates passed.")
    for m, ratios in reference_ratios(metrics).items():
        if "original" in ratios:
            lines.append(f"{MODEL_LABELS.get(m, m)}: bits per byte {ratios['original'] - 1:+.1%} against the original pretrained model "
                         f"({ratios['base'] - 1:+.1%} against base_checkpoint)." if "base" in ratios else
                         f"{MODEL_LABELS.get(m, m)}: bits per byte {ratios['original'] - 1:+.1%} against the original pretrained model.")
    ppl = metrics.get("perplexity", {})
    base = ppl.get("base", {})
    for m in ("sft", "dpo"):
        if m not in ppl or not base:
            continue
        v, b = ppl[m]["overall"].get("perplexity"), base["overall"].get("perplexity")
        if v is None or not b:
            continue
        doms = [d for d in ppl[m]["by_domain"] if d in base["by_domain"]]
        wins = sum(ppl[m]["by_domain"][d]["perplexity"] < base["by_domain"][d]["perplexity"] for d in doms)
        lines.append(f"{MODEL_LABELS[m]}: held-out perplexity {v:,.2f} vs {b:,.2f} for the base model ({(v - b) / b:+.1%}), lower in {wins} of {len(doms)} domains.")
    pref = metrics.get("preference") or {}
    if pref.get("pairs"):
        lines.append(
            f"DPO ranks the chosen answer first in {pct(pref['accuracy'])} of {pref['pairs']} held-out pairs "
            f"(longer-answer-wins baseline: {pct(pref['length_baseline_accuracy'])})."
        )
    pol = metrics.get("policies") or {}
    for m, gains in (pol.get("gains") or {}).items():
        if m == "base":
            continue
        parts = [f"{'judge' if k == 'judge' else 'reward model'} {v:+.4f}" for k, v in sorted(gains.items(), key=lambda kv: kv[0] != "judge")]
        kl = (pol["models"].get(m) or {}).get("kl_to_sft")
        lines.append(f"{MODEL_LABELS.get(m, m)} vs SFT on {pol.get('prompts')} held-out prompts: mean reward {', '.join(parts)}"
                     + (f", KL to SFT {kl:.3f} nats per answer." if kl is not None else "."))
    for m, why in (pol.get("not_run") or {}).items():
        if m not in (pol.get("models") or {}) and m not in metrics.get("models", []):
            lines.append(f"{MODEL_LABELS.get(m, m)}: not run ({why}).")
    tasks = metrics.get("tasks", {})
    if tasks:
        best = max(tasks, key=lambda m: tasks[m].get("rouge_l") or 0)
        if tasks[best].get("rouge_l"):
            lines.append(f"Best ROUGE-L on sft_eval: {MODEL_LABELS.get(best, best)} {fmt(tasks[best].get('rouge_l'))} (base {fmt(tasks.get('base', {}).get('rouge_l'))}).")
        else:
            lines.append("No model's greedy completions share a word with the sft_eval references yet (ROUGE-L 0).")
        blank = [f"{MODEL_LABELS.get(m, m)} {pct(t['blank'])}" for m, t in tasks.items() if (t.get("blank") or 0) >= 0.5]
        if blank:
            lines.append(f"Blank (whitespace-only) greedy completions: {', '.join(blank)}; the model has not learned to answer yet.")
    c = metrics.get("contamination", {})
    if c.get("flagged"):
        parts = [f"{name} {pct(c['sets'][name]['share'])}" for name in c["flagged"]]
        lines.append(f"Contamination: held-out items sharing {c['ngram']}-word n-grams with training data above {pct(c['threshold'])}: {', '.join(parts)}. Treat those numbers with care.")
    elif c.get("sets"):
        lines.append(f"Contamination: no held-out set above {pct(c['threshold'])} overlap ({c['ngram']}-word n-grams).")
    comp = compute.ordered(metrics)
    if comp:
        parts = [f"{MODEL_LABELS.get(m, m)} {fmt(e.get('seconds'), 1)} s" for m, e in comp]
        lines.append(f"Training compute: {fmt(metrics['compute'].get('total_seconds'), 1)} s in all ({', '.join(parts)}); see Training compute.")
    canaries = metrics.get("canaries") or {}
    if canaries.get("checked"):
        leaked = [f"{r['canary']} ({', '.join(r['found_in'])})" for r in canaries["items"] if r["leaked"]]
        lines.append(f"PII canaries: {len(leaked)} of {canaries['canaries']} leaked: {'; '.join(leaked)}." if leaked else f"PII canaries: none of {canaries['canaries']} found in shards, vocabulary, training sets or generations.")
    return lines


def _compare(value, base, direction: str) -> str:
    if value is None or base is None or value == base:
        return ""
    return "better" if (value < base) == (direction == "lower") else "worse"


def summary_table(metrics: dict) -> Table:
    head = headline(metrics)
    models = metrics["models"]
    rows = []
    for key, label, direction, digits in SUMMARY_METRICS:
        vals = head.get(key, {})
        if not any(v is not None for v in vals.values()):
            continue
        row: list[Cell | str] = [f"{label} {'↓' if direction == 'lower' else '↑'}"]
        for m in models:
            v, b = vals.get(m), vals.get("base")
            text = fmt(v, digits)
            if m != "base" and v is not None and b:
                text += f" ({(v - b) / abs(b):+.1%})"
            row.append(Cell(text, _compare(v, b, direction) if m != "base" else ""))
        rows.append(row)
    if "preference_accuracy" in head:
        acc, base_acc = head["preference_accuracy"], head["length_baseline_accuracy"]
        cells = [Cell("—")] * (len(models) - 1) + [Cell(f"{pct(acc)} (longer-wins {pct(base_acc)})", _compare(acc, base_acc, "higher"))]
        rows.append(["Preference accuracy ↑", *cells])
    return Table(["Metric", *[MODEL_LABELS.get(m, m) for m in models]], rows)


def reference_ratios(metrics: dict) -> dict[str, dict[str, float]]:
    """Per tuned model, overall bits per byte over the original model's and base_checkpoint's (where measured)."""
    ppl = metrics.get("perplexity", {})
    bpb = lambda m: (ppl.get(m) or {}).get("overall", {}).get("bits_per_byte")  # noqa: E731
    out: dict[str, dict[str, float]] = {}
    for m in metrics.get("models", []):
        if m == "base" or bpb(m) is None:
            continue
        for ref in ("original", "base"):
            if bpb(ref):
                out.setdefault(m, {})[ref] = round(bpb(m) / bpb(ref), 4)
    return out


def reference_table(metrics: dict) -> Table:
    """Each model against the original pretrained model and against base_checkpoint, per domain, as the change in
    bits per byte (tokenizer-independent) and in perplexity (same tokenizer only: the original's may differ)."""
    ppl = metrics.get("perplexity", {})
    refs = [r for r in ("original", "base") if r in ppl]
    models = [m for m in metrics["models"] if m != "base"]
    domains = sorted({d for m in models for d in ppl.get(m, {}).get("by_domain", {})})
    rows = []
    for m in models:
        for d in domains + ["all"]:
            row: list[Cell | str] = [MODEL_LABELS.get(m, m), f"**{d}**" if d == "all" else d]
            for ref in refs:
                for key in ("bits_per_byte", "perplexity"):
                    part = lambda x: (ppl.get(x, {}).get("overall") if d == "all" else ppl.get(x, {}).get("by_domain", {}).get(d)) or {}  # noqa: E731
                    v, b = part(m).get(key), part(ref).get(key)
                    same_tokens = ref != "original" or part(m).get("tokens") == part(ref).get("tokens")
                    if v is None or not b or (key == "perplexity" and not same_tokens):
                        row.append(Cell("—"))
                    else:
                        row.append(Cell(f"{(v - b) / b:+.1%}", _compare(v, b, "lower")))
            rows.append(row)
    head = [h for ref in refs for h in (f"bits/byte vs {MODEL_LABELS.get(ref, ref)}", f"perplexity vs {MODEL_LABELS.get(ref, ref)}")]
    return Table(["Model", "Domain", *head], rows)


def reference_intro(metrics: dict) -> str:
    original = metrics.get("original") or {}
    if "original" in metrics.get("perplexity", {}):
        first = f"The original model is {original.get('origin', 'the pretrained model base_checkpoint started from')}, scored with its own tokenizer."
    else:
        first = f"No original pretrained model: {original.get('why', 'not measured')}."
    return (f"{first} Changes in bits per byte compare across tokenizers; a perplexity change against the original is "
            "shown only where both tokenized the text into the same number of tokens. Negative is better.")


def perplexity_table(metrics: dict, key: str, digits: int) -> Table:
    # The original model only where its tokenizer does not matter (bits per byte).
    models = (["original"] if key == "bits_per_byte" and "original" in metrics["perplexity"] else []) + metrics["models"]
    domains = sorted({d for m in models for d in metrics["perplexity"].get(m, {}).get("by_domain", {})})
    rows = []
    for d in domains + ["all"]:
        vals = {m: (metrics["perplexity"][m]["overall"] if d == "all" else metrics["perplexity"][m]["by_domain"].get(d, {})).get(key) for m in models}
        docs = metrics["eval_documents"].get(d) if d != "all" else sum(metrics["eval_documents"].values())
        row: list[Cell | str] = [f"**{d}**" if d == "all" else d, str(docs)]
        row += [Cell(fmt(vals[m], digits), _compare(vals[m], vals.get("base"), "lower") if m != "base" else "") for m in models]
        rows.append(row)
    return Table(["Domain", "Docs", *[MODEL_LABELS.get(m, m) for m in models]], rows)


def task_table(metrics: dict) -> Table:
    rows = []
    for m, t in metrics.get("tasks", {}).items():
        rows.append([MODEL_LABELS.get(m, m), str(t.get("examples", 0)), fmt(t.get("rouge_l")), fmt(t.get("exact_match")), pct(t.get("blank"))])
        for d, s in t.get("by_domain", {}).items():
            rows.append([f"  {MODEL_LABELS.get(m, m)} · {d}", str(s["examples"]), fmt(s["rouge_l"]), fmt(s["exact_match"]), pct(s.get("blank"))])
    return Table(["Model", "Examples", "ROUGE-L F1", "Exact match", "Blank completions"], rows)


def preference_table(pref: dict) -> Table:
    rows = [["all", str(pref["pairs"]), Cell(pct(pref["accuracy"]), _compare(pref["accuracy"], pref["length_baseline_accuracy"], "higher")), pct(pref["length_baseline_accuracy"]), fmt(pref["mean_margin"], 4)]]
    for d, s in pref.get("by_domain", {}).items():
        rows.append([d, str(s["pairs"]), Cell(pct(s["accuracy"]), _compare(s["accuracy"], s["length_baseline_accuracy"], "higher")), pct(s["length_baseline_accuracy"]), fmt(s["mean_margin"], 4)])
    return Table(["Domain", "Pairs", "DPO implicit-reward accuracy", "Longer-answer-wins", "Mean reward margin"], rows)


def contamination_table(contam: dict) -> Table:
    rows = []
    for name, s in contam.get("sets", {}).items():
        example = s["examples"][0]["ngram"] if s["examples"] else ""
        rows.append([name, str(s["items"]), str(s["contaminated"]), pct(s["share"]), pct(s.get("mean_ngram_overlap")), Cell("FLAGGED" if s["flagged"] else "ok", "flag" if s["flagged"] else "ok"), f"“{example}”" if example else ""])
    return Table(["Held-out set", "Items", "With overlap", "Share", "Mean n-gram overlap", "Status", "Example shared n-gram"], rows)


def training_table(training: dict) -> Table:
    rows = []
    for name, s in training.items():
        rows.append([MODEL_LABELS.get(name, name), str(s.get("steps", "")), fmt(s.get("first_loss")), fmt(s.get("final_loss")), fmt(s.get("final_eval_loss")), fmt(s.get("final_margins")), fmt(s.get("final_accuracies"))])
    return Table(["Stage", "Steps", "First loss", "Final loss", "Final held-out loss", "Final reward margin", "Final reward accuracy"], rows)


def lineage_table(lineage: dict) -> Table:
    rows = [[name, f"`{h}`"] for name, h in lineage.get("inputs", {}).items()]
    rows.append(["config", f"`{lineage.get('config_md5')}` ({lineage.get('config_path')})"])
    rows.append(["config fingerprint", f"`{lineage.get('config_fingerprint')}`"])
    rows.append(["code version", f"`{lineage.get('code_version')}`"])
    return Table(["Input", "Content hash (DVC md5)"], rows)


def sections(metrics: dict) -> list[tuple[str, str, Table | None, list[str]]]:
    """(title, intro text, table, plot file names) in report order."""
    out = [("Summary", "Held-out numbers per model; SFT and DPO are compared with the base model.", summary_table(metrics), [])]
    if "gates" in metrics:
        out.append(("Promotion gates", checks.gates_intro(metrics), checks.gates_table(metrics), []))
    scoring = (metrics.get("perplexity_scoring") or {}).get("line")
    scoring = f" {scoring}" if scoring else ""
    out.append(("Perplexity by domain", f"Token-weighted perplexity on the eval-split documents of each domain.{scoring}", perplexity_table(metrics, "perplexity", 2), ["perplexity_by_domain.png"]))
    out.append(("Bits per byte", "Total NLL / ln 2 / UTF-8 bytes outside what was left out: comparable across tokenizers.", perplexity_table(metrics, "bits_per_byte", 3), []))
    out.append(("Against the original model and base_checkpoint", reference_intro(metrics), reference_table(metrics), []))
    out.append(("SFT vs DPO vs RL on the same held-out prompts", policy_tables.policy_intro(metrics), policy_tables.policy_table(metrics)
                if (metrics.get("policies") or {}).get("models") else None, ["policy_rewards.png"]))
    if (metrics.get("policies") or {}).get("side_by_side"):
        out.append(("Sampled answers side by side, with their rewards", "Each model's first sampled answer to each held-out prompt; in "
                    "brackets its reward under the reward model (RM) and the judge.", policy_tables.side_by_side_table(metrics), []))
    pref = metrics.get("preference")
    if pref and pref.get("pairs"):
        intro = f"beta = {pref['beta']}; reward = beta·(log π(y) − log π_ref(y)), reference = the DPO adapter disabled."
        out.append(("Preference accuracy", intro, preference_table(pref), ["dpo_rewards.png"]))
    else:
        out.append(("Preference accuracy", "Not measured (see notes).", None, ["dpo_rewards.png"]))
    if metrics.get("tasks"):
        out.append(("Task metrics", "Greedy completions of the held-out SFT prompts against their references.", task_table(metrics), []))
    if (metrics.get("probes") or {}).get("probes"):
        out.append(("Few-shot probes", checks.probe_intro(metrics), checks.probe_table(metrics), []))
    if (metrics.get("adversarial") or {}).get("prompts"):
        out.append(("Safety: adversarial prompts", "Answers to the configured adversarial prompts (`eval_report.adversarial_prompts`), for a person to judge; [refusal] marks answers that read as a refusal.", checks.adversarial_table(metrics), []))
    if "canaries" in metrics:
        out.append(("Safety: PII canaries", checks.canary_intro(metrics), checks.canary_table(metrics), []))
    c = metrics.get("contamination", {})
    intro = f"Share of held-out items sharing any {c.get('ngram')}-word n-gram with training data; flagged above {pct(c.get('threshold'))}. {c.get('boilerplate_ngrams_ignored', 0)} boilerplate n-grams ignored."
    out.append(("Contamination check", intro, contamination_table(c), []))
    if "review" in metrics:
        out.append(("Error analysis: examples for review", checks.review_intro(metrics), checks.review_table(metrics) if metrics["review"].get("items") else None, []))
    out.append(("Training", "How each stage's loss moved.", training_table(metrics.get("training", {})) if metrics.get("training") else None, ["training_loss.png"]))
    out += compute_sections(metrics)
    return out


def compute_sections(metrics: dict) -> list[tuple[str, str, Table | None, list[str]]]:
    """What each model's training cost and bought (also the eval_report asset's `compute_md` metadata)."""
    if not (metrics.get("compute") or {}).get("models"):
        return [("Training compute", "Not recorded (see notes).", None, [])]
    return [
        ("Training compute: what each model cost and bought", compute.compute_intro(metrics), compute.compute_table(metrics), ["training_compute.png"]),
        ("Training settings and why", "The settings each training stage used, with the reason it recorded for each choice "
         "(`llm_pipeline/training/defaults.py` chooses precision, gradient checkpointing, threads, learning rate and warmup per device and method).",
         compute.settings_table(metrics), []),
        ("Training data used vs available", "Per model and domain, where the stage recorded it: tokens (pretraining), label tokens "
         "(SFT documents and instruction examples) or preference pairs (DPO).", compute.data_table(metrics), []),
    ]


def compute_markdown(metrics: dict) -> str:
    parts = []
    for title, intro, table, _ in compute_sections(metrics):
        parts += [f"### {title}", "", intro, ""]
        if table is not None and table.rows:
            parts += [md_table(table), ""]
    return "\n".join(parts)


# ---------------------------------------------------------------- markdown
def _md_cell(c: Cell | str) -> str:
    text = c.text if isinstance(c, Cell) else c
    mark = {"better": " ✅", "worse": " 🔻", "flag": " ⚠️"}.get(c.cls, "") if isinstance(c, Cell) else ""
    # Every kind of line break (\r, \u2028, ... that models emit too) would end the table row.
    return " ".join((text + mark).replace("|", "\\|").splitlines())


def md_table(t: Table) -> str:
    lines = ["| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def render_markdown(metrics: dict, plot_names: list[str]) -> str:
    parts = [f"# Evaluation report: {metrics.get('pipeline', 'llm-pipeline')}", ""]
    parts += [f"- {line}" for line in verdict(metrics)] + [""]
    if metrics.get("notes"):
        parts += ["> **Notes**", *[f"> - {n}" for n in metrics["notes"]], ""]
    for title, intro, table, plots in sections(metrics):
        parts += [f"## {title}", "", intro, ""]
        if table is not None and table.rows:
            parts += [md_table(table), ""]
        parts += [f"![{PLOT_CAPTIONS.get(p, p)}]({p})" for p in plots if p in plot_names] + [""]
    if metrics.get("samples"):
        parts += ["## Samples", "", "Greedy completions, side by side.", ""]
        models = metrics["models"]
        t = Table(["Prompt", "Reference", *[MODEL_LABELS.get(m, m) for m in models]], [])
        for s in metrics["samples"]:
            t.rows.append([s["prompt"], s.get("reference") or "—", *[s.get("outputs", {}).get(m, "").strip() or "(blank)" for m in models]])
        parts += [md_table(t), ""]
    parts += ["## Lineage", "", md_table(lineage_table(metrics.get("lineage", {}))), ""]
    return "\n".join(parts)


# ---------------------------------------------------------------- html
CSS = """
:root{--ink:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f7f8fa;--good:#127a4a;--goodbg:#e3f6ec;--bad:#b42318;--badbg:#fdecea}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--ink);background:var(--bg)}
main{max-width:1120px;margin:0 auto;padding:32px 24px 64px}h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:36px 0 8px;padding-bottom:6px;border-bottom:1px solid var(--line)}
.sub{color:var(--muted);margin:0 0 24px}.intro{color:var(--muted);margin:4px 0 12px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:14px;margin:18px 0}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px}.card h3{margin:0 0 10px;font-size:13px;font-weight:600;color:var(--muted);text-transform:uppercase;letter-spacing:.03em}
.card .row{display:flex;justify-content:space-between;align-items:baseline;padding:3px 0}.card .v{font-variant-numeric:tabular-nums;font-weight:600;padding:1px 6px;border-radius:5px}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:7px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line);border-radius:8px;overflow:hidden;font-size:14px}
th,td{padding:7px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}th{background:#f2f4f7;font-weight:600;font-size:13px}
td{font-variant-numeric:tabular-nums}tr:last-child td{border-bottom:0}
.better{background:var(--goodbg);color:var(--good)}.worse{background:var(--badbg);color:var(--bad)}
.flag{background:var(--badbg);color:var(--bad);font-weight:700}.ok{color:var(--good);font-weight:600}
figure{margin:14px 0;background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px}figure img{max-width:100%;display:block;margin:auto}figcaption{color:var(--muted);font-size:13px;margin-top:6px}
.verdict{background:#fff;border:1px solid var(--line);border-left:4px solid #2f6fdb;border-radius:8px;padding:10px 16px 10px 34px;margin:0 0 8px}.verdict li{margin:3px 0}
.notes{background:#fff8e6;border:1px solid #f5d48a;border-radius:8px;padding:10px 16px;margin:16px 0}.notes ul{margin:4px 0;padding-left:20px}
.sample{background:#fff;border:1px solid var(--line);border-radius:10px;margin:14px 0;overflow:hidden}
.sample .prompt{padding:10px 14px;background:#f2f4f7;white-space:pre-wrap}.sample .tag{font-size:12px;color:var(--muted)}
.outs{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr))}.out{padding:10px 14px;border-top:1px solid var(--line);border-right:1px solid var(--line);white-space:pre-wrap;font-size:14px}
.out b{display:block;font-size:12px;margin-bottom:4px}code{font-size:12.5px;word-break:break-all}details{margin-top:10px}
"""


def _html_cell(c: Cell | str, tag: str = "td") -> str:
    if isinstance(c, Cell):
        cls = f' class="{c.cls}"' if c.cls else ""
        return f"<{tag}{cls}>{_inline(c.text)}</{tag}>"
    return f"<{tag}>{_inline(c)}</{tag}>"


def _inline(text: str) -> str:
    """Escape, then honour the two markdown marks the tables use: **bold** and `code`."""
    out = html.escape(text)
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def html_table(t: Table) -> str:
    head = "".join(_html_cell(h, "th") for h in t.headers)
    body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    caption = html.escape(PLOT_CAPTIONS.get(Path(path).name, Path(path).name))
    return f'<figure><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'


def _cards(metrics: dict) -> str:
    t = summary_table(metrics)
    models = metrics["models"]
    cards = []
    for row in t.rows:
        lines = []
        for m, c in zip(models, row[1:]):
            if isinstance(c, Cell) and c.text == "—":
                continue
            cls = c.cls if isinstance(c, Cell) else ""
            text = c.text if isinstance(c, Cell) else c
            lines.append(f'<div class="row"><span><span class="dot" style="background:{COLORS.get(m, "#999")}"></span>{MODEL_LABELS.get(m, m)}</span><span class="v {cls}">{html.escape(text)}</span></div>')
        cards.append(f'<div class="card"><h3>{html.escape(row[0])}</h3>{"".join(lines)}</div>')
    return f'<div class="cards">{"".join(cards)}</div>'


def _shown(text: str) -> str:
    return html.escape(text) if text.strip() else '<i style="color:#98a2b3">(blank)</i>'


def _samples_html(metrics: dict) -> str:
    out = []
    for s in metrics.get("samples", []):
        tag = html.escape(" · ".join(x for x in (s.get("source"), s.get("domain")) if x))
        outs = [f'<div class="out"><b style="color:{COLORS.get(m, "#333")}">{MODEL_LABELS.get(m, m)}</b>{_shown(s.get("outputs", {}).get(m, ""))}</div>' for m in metrics["models"]]
        if s.get("reference"):
            outs.insert(0, f'<div class="out"><b>Reference</b>{html.escape(s["reference"])}</div>')
        out.append(f'<div class="sample"><div class="prompt"><span class="tag">{tag}</span>\n{html.escape(s["prompt"])}</div><div class="outs">{"".join(outs)}</div></div>')
    return "".join(out)


def render_html(metrics: dict, plot_paths: list[Path]) -> str:
    by_name = {Path(p).name: Path(p) for p in plot_paths}
    lin = metrics.get("lineage", {})
    body = [f"<h1>Evaluation report: {html.escape(str(metrics.get('pipeline', 'llm-pipeline')))}</h1>"]
    body.append(f'<p class="sub">Base vs SFT vs DPO vs RL on held-out data · code {html.escape(str(lin.get("code_version")))} · {sum(metrics.get("eval_documents", {}).values())} held-out documents</p>')
    lines = verdict(metrics)
    if lines:
        body.append('<ul class="verdict">' + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
    body.append(_cards(metrics))
    if metrics.get("notes"):
        body.append('<div class="notes"><b>Notes</b><ul>' + "".join(f"<li>{_inline(n)}</li>" for n in metrics["notes"]) + "</ul></div>")
    for title, intro, table, plots in sections(metrics)[1:]:
        body.append(f"<h2>{html.escape(title)}</h2><p class='intro'>{_inline(intro)}</p>")
        if table is not None and table.rows:
            body.append(html_table(table))
        body += [_figure(by_name[p]) for p in plots if p in by_name]
    if metrics.get("samples"):
        body.append("<h2>Samples</h2><p class='intro'>Greedy completions from each model, side by side.</p>" + _samples_html(metrics))
    body.append("<h2>Lineage</h2>" + html_table(lineage_table(lin)))
    body.append("<details><summary>All metrics (metrics.json)</summary><pre>" + html.escape(json.dumps(metrics, indent=1, default=str)[:200_000]) + "</pre></details>")
    return f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>Evaluation report</title><style>{CSS}</style></head><body><main>{"".join(body)}</main></body></html>\n'


def plots_markdown(plot_paths: list[Path]) -> str:
    """The plots as one markdown document with the PNGs inlined, for the Dagster UI (which has no file server)."""
    parts = []
    for p in plot_paths:
        data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        caption = PLOT_CAPTIONS.get(Path(p).name, Path(p).name)
        parts += [f"**{caption}**", "", f"![{caption}](data:image/png;base64,{data})", ""]
    return "\n".join(parts)
