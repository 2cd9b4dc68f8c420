"""The report's tables for what is checked before a model is promoted: gates, probes, safety, canaries, review.

Each builder takes metrics.json's content and returns a `Table` (see report.py), so report.md, report.html and
the Dagster metadata show the same cells. Canaries appear masked, as metrics.json holds them.
"""

from __future__ import annotations

from llm_pipeline.evaluation.models import MODEL_LABELS
from llm_pipeline.evaluation.tables import Cell, Table, fmt, pct


def _label(m: str) -> str:
    return MODEL_LABELS.get(m, m)


def gates_table(metrics: dict) -> Table:
    """Every candidate's gates (the promoted model's marked), or the one list of gates of an older metrics.json."""
    candidates = metrics.get("candidates") or [{"model": None, "gates": metrics.get("gates", [])}]
    rows = []
    for c in candidates:
        name = _label(c["model"]) + (" (promoted)" if c.get("chosen") else "") if c["model"] else "—"
        if c.get("ran") is False:
            rows.append([name, "—", Cell("NOT RUN"), "—", "—", c.get("why", "")])
            continue
        for g in c["gates"]:
            threshold = g["threshold"]
            shown = "no leak" if isinstance(threshold, bool) else fmt(threshold, 3)
            status = Cell("PASS", "ok") if g["passed"] else Cell("FAIL", "flag")
            rows.append([name, f"`{g['name']}`", status, fmt(g["observed"], 4), shown, g["why"]])
    return Table(["Model", "Gate", "Status", "Observed", "Threshold", "Why"], rows)


def gates_intro(metrics: dict) -> str:
    gates = metrics.get("gates", [])
    if metrics.get("promotion_summary"):
        shipped = metrics.get("promoted_model")
        order = ", then ".join(_label(c["model"]) for c in metrics.get("candidates") or []) or "DPO, then SFT"
        tail = (f" eval_report/serving_manifest.json names the {_label(shipped)} model (`promoted: true`)." if shipped else
                " eval_report/serving_manifest.json says `promoted: false`.")
        return f"**{metrics['promotion_summary'][0].upper()}{metrics['promotion_summary'][1:]}.** The first candidate ({order}) whose gates all pass ships.{tail}"
    if not gates:
        return "No promotion gate is configured: the model is promoted without checks."
    failed = [g["name"] for g in gates if not g["passed"]]
    if failed:
        return f"**Not promoted**: {len(failed)} of {len(gates)} gates failed ({', '.join(failed)}). eval_report/serving_manifest.json says `promoted: false`."
    return f"**Promoted**: all {len(gates)} gates passed. eval_report/serving_manifest.json says `promoted: true`."


def probe_table(metrics: dict) -> Table:
    probes = metrics.get("probes") or {}
    models = [m for m in metrics["models"] if m in probes.get("accuracy", {})]
    rows = []
    for item in probes.get("items", []):
        row: list[Cell | str] = [item["prompt"], f"{item['expected']} ({item['match']})"]
        for m in models:
            ok = item["correct"].get(m)
            answer = (item["answers"].get(m) or "").strip() or "(blank)"
            row.append(Cell(("✔ " if ok else "✘ ") + answer, "better" if ok else ""))
        rows.append(row)
    rows.append(["**accuracy**", "", *[Cell(pct(probes["accuracy"][m])) for m in models]])
    return Table(["Probe", "Expected", *[_label(m) for m in models]], rows)


def probe_intro(metrics: dict) -> str:
    probes = metrics.get("probes") or {}
    shots = probes.get("shots", 0)
    return f"Questions from the config (`eval_report.probes`), each asked after {shots} solved example(s) as earlier chat turns; greedy answers scored by exact match or contains."


def adversarial_table(metrics: dict) -> Table:
    adv = metrics.get("adversarial") or {}
    models = [m for m in metrics["models"] if m in adv.get("refusals", {})]
    rows = []
    for item in adv.get("items", []):
        cells = [Cell(((item["answers"].get(m) or "").strip() or "(blank)") + (" [refusal]" if item["refusal"].get(m) else "")) for m in models]
        rows.append([item["prompt"], *cells])
    return Table(["Adversarial prompt", *[_label(m) for m in models]], rows)


def canary_table(metrics: dict) -> Table:
    c = metrics.get("canaries") or {}
    rows = []
    for r in c.get("items", []):
        found = r.get("found_in", {})
        places = ", ".join(f"{p} ({n})" for p, n in found.items()) or "nowhere"
        tok = r.get("tokenization") or {}
        tok_text = f"{tok.get('tokens')} tokens, {tok.get('chars_per_token')} chars/token" if tok else "—"
        rows.append([f"`{r['canary']}`", r["entity"], Cell("LEAKED" if r["leaked"] else "absent", "flag" if r["leaked"] else "ok"), places, tok_text])
    return Table(["Canary (masked)", "Entity", "Status", "Found in", "Tokenization"], rows)


def canary_intro(metrics: dict) -> str:
    c = metrics.get("canaries") or {}
    if not c.get("checked"):
        return f"Not checked: {c.get('why', 'no canaries file')}."
    return (
        f"{c['canaries']} planted PII canaries looked for in the deduped shards, the tokenizer vocabulary "
        f"({c.get('vocabulary', {}).get('size', '—')} tokens; {c.get('common_parts_ignored', 0)} canary parts are ordinary corpus words and not used), "
        f"sft_*/pairs_* training sets and every generation. {c['leaked']} leaked."
    )


def review_table(metrics: dict) -> Table:
    rv = metrics.get("review") or {}
    rows = []
    for item in rv.get("items", []):
        rows.append([item["domain"], f"`{item['doc_id']}`", fmt(item["nll"], 3), item["prompt"].splitlines()[-1][:160], item["response_b"][:160] or "(blank)", item["suggestion"]])
    return Table(["Domain", "Document", "Mean NLL", "Prompt (end)", "Model's response", "Model prefers"], rows)


def review_intro(metrics: dict) -> str:
    rv = metrics.get("review") or {}
    if not rv.get("records"):
        return f"No examples exported for review{': ' + rv['why'] if rv.get('why') else ''}."
    return (
        f"The {rv['per_domain']} held-out documents per domain with the highest mean NLL under the {_label(rv['model'])} model, exported for "
        f"review as an Argilla dataset (`review/settings.json`, `review/records.json`, {rv['records']} records). Reviewed records become "
        "DPO pairs with `python -m llm_pipeline.evaluation.review review/records.json pairs.jsonl`, then `dpo_model.data: [pairs.jsonl]`."
    )
