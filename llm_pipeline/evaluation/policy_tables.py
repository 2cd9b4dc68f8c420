"""The report's SFT vs DPO vs RL section: one table of every model on the same held-out prompts, and the answers
side by side with their rewards. Built from metrics.json's `policies` (evaluation/policy_rewards.py) and
`perplexity`, so report.md, report.html and the Dagster metadata (`policies_md`) show the same cells.
"""

from __future__ import annotations

from llm_pipeline.evaluation.models import MODEL_LABELS
from llm_pipeline.evaluation.tables import Cell, Table, fmt, pct

ORDER = ("base", "sft", "dpo", "rl")
SCORER_LABELS = {"reward_model": "reward model", "judge": "judge"}
PROMPT_CHARS = 160  # of a prompt shown beside the answers


def _label(m: str) -> str:
    return MODEL_LABELS.get(m, m)


def _signed(v) -> str:
    return "—" if v is None else f"{v:+.4f}"


def policy_intro(metrics: dict) -> str:
    p = metrics.get("policies") or {}
    if p.get("why"):
        return f"Not measured: {p['why']}."
    scorers = p.get("scorers") or {}
    about = []
    for s in ("reward_model", "judge"):
        info = scorers.get(s) or {}
        if info.get("why"):
            about.append(f"{SCORER_LABELS[s]}: not used ({info['why']})")
        elif info.get("eval_accuracy") is not None:
            about.append(f"{SCORER_LABELS[s]}: held-out pair accuracy {pct(info['eval_accuracy'])} on {info.get('pairs_trained', '?')} training pairs")
    return (f"Every model answers the same {p.get('prompts')} held-out preference prompts ({p.get('prompt_source')}), "
            f"{p.get('samples')} sampled answers each, up to {p.get('max_new_tokens')} new tokens, with the same seed (so "
            f"where two models agree their samples are the same: a paired comparison). Mean reward under "
            f"the reward model RL trained against and under its judge, trained on the other half of the pairs (split by "
            f"prompt), which RL never saw; in brackets the change from SFT. KL to SFT: {p.get('kl')}. Preference "
            f"accuracy: held-out pairs whose chosen answer the model finds more likely (summed log-likelihood). "
            f"Perplexity and bits per byte: the held-out documents, as in the tables below. "
            + ("; ".join(about) + "." if about else ""))


def policy_table(metrics: dict) -> Table:
    p = metrics.get("policies") or {}
    ppl = metrics.get("perplexity") or {}
    domains = sorted({d for m in ORDER for d in ((ppl.get(m) or {}).get("by_domain") or {})})
    models = p.get("models") or {}
    not_run = p.get("not_run") or {}
    gains = p.get("gains") or {}
    headers = ["Model", "Reward (reward model) ↑", "Reward (judge) ↑", "KL to SFT (nats/answer)", "Answer tokens",
               "Preference accuracy ↑", *[f"Perplexity {d} ↓" for d in domains], "Perplexity all ↓", "Bits/byte all ↓"]
    rows: list[list[Cell | str]] = []
    for m in ORDER:
        if m in not_run and m not in models:
            rows.append([_label(m), Cell(f"not run: {not_run[m]}"), *["—"] * (len(headers) - 2)])
            continue
        if m not in models and m not in ppl:
            continue
        r = models.get(m) or {}
        row: list[Cell | str] = [_label(m)]
        for s in ("reward_model", "judge"):
            v = (r.get("reward") or {}).get(s)
            g = (gains.get(m) or {}).get(s)
            text = fmt(v, 4) + (f" ({_signed(g)})" if g is not None else "")
            row.append(Cell(text, "" if g is None or g == 0 else "better" if g > 0 else "worse"))
        row += [fmt(r.get("kl_to_sft"), 3), fmt(r.get("answer_tokens"), 1), pct(r.get("preference_accuracy"))]
        by_domain = (ppl.get(m) or {}).get("by_domain") or {}
        row += [fmt((by_domain.get(d) or {}).get("perplexity"), 2) for d in domains]
        overall = (ppl.get(m) or {}).get("overall") or {}
        row += [fmt(overall.get("perplexity"), 2), fmt(overall.get("bits_per_byte"), 3)]
        if m not in models and m in not_run:
            row[1] = Cell(f"not sampled: {not_run[m]}")
        rows.append(row)
    return Table(headers, rows)


def side_by_side_table(metrics: dict) -> Table:
    """Each prompt with the first sampled answer of SFT, DPO and RL (those measured) and its two rewards."""
    p = metrics.get("policies") or {}
    rows_in = p.get("side_by_side") or []
    models = [m for m in ("sft", "dpo", "rl") if m in (p.get("models") or {})]
    rows = []
    for s in rows_in:
        prompt = str(s["prompt"] if isinstance(s["prompt"], str) else s["prompt"][-1].get("content", ""))
        # The prompt's end is what the answers continue: a long one keeps its last words.
        row: list[Cell | str] = [prompt if len(prompt) <= PROMPT_CHARS else "…" + prompt[-PROMPT_CHARS:].lstrip()]
        for m in models:
            rewards = s["rewards"].get(m) or {}
            tail = ", ".join(f"{'RM' if k == 'reward_model' else 'judge'} {v:+.4f}" for k, v in rewards.items())
            answer = (s["answers"].get(m) or "").strip() or "(blank)"
            row.append(f"{answer} [{tail}]" if tail else answer)
        rows.append(row)
    return Table(["Prompt", *[_label(m) for m in models]], rows)


def policy_markdown(metrics: dict, md_table) -> str:
    """The section as one markdown document (the eval_report asset's `policies_md` metadata)."""
    parts = [policy_intro(metrics), ""]
    table = policy_table(metrics)
    if table.rows:
        parts += [md_table(table), ""]
    sbs = side_by_side_table(metrics)
    if sbs.rows:
        parts += ["Samples side by side (each model's first answer, with its reward model / judge rewards):", "", md_table(sbs), ""]
    return "\n".join(parts)
