"""The error-analysis loop: the held-out examples the DPO model does worst on, out to reviewers and back as pairs.

Export (`export_review`) writes an Argilla-compatible dataset folder: `settings.json` (fields, questions and
metadata properties in the shape of Argilla v2's `Settings.to_json`) and `records.json` (a list of records in the
shape of `Record.to_dict`: `id`, `fields`, `metadata`, `suggestions`, `responses`, `vectors`). Each record offers a
prompt and two responses, the document's true continuation (`response_a`) and the DPO model's own greedy one
(`response_b`), with the model's implied choice (the higher DPO implicit reward) as a suggestion for the
`preference` question. Reviewers answer `preference` (which response is better), or rank them (`ranking`), or
write a better answer (`better_response`).

Import (`import_reviews`) turns reviewed records back into prompt/chosen/rejected pairs; `write_pairs` writes them
as JSON lines that `dpo_model.data` accepts for the next DPO run:

    pairs = import_reviews("data/eval_report/review/records.json")
    write_pairs(pairs, "data/reviews/pairs.jsonl")          # then dpo_model.data: [data/reviews/pairs.jsonl]

or ``python -m llm_pipeline.evaluation.review records.json pairs.jsonl``.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from llm_pipeline.io import write_json

RESPONSES = ("response_a", "response_b")
GUIDELINES = (
    "Each record is a held-out document the model found hard. Response A is how the document really continues; "
    "response B is what the model wrote. Pick the better continuation of the prompt, or write a better one. "
    "Discard a record whose prompt is unusable (boilerplate, a table, a fragment)."
)


def settings(domains: list[str]) -> dict[str, Any]:
    """Dataset settings: two text fields per response, three questions, and the metadata reviewers filter on."""
    text = lambda name, title, required=True: {"name": name, "title": title, "required": required, "settings": {"type": "text", "use_markdown": False}}  # noqa: E731
    options = [{"value": "response_a", "text": "Response A is better"}, {"value": "response_b", "text": "Response B is better"}]
    return {
        "guidelines": GUIDELINES,
        "allow_extra_metadata": False,
        # A small model's own response may be blank (it stopped at once); a required field would reject the record.
        "fields": [text("prompt", "Prompt"), text("response_a", "Response A"), text("response_b", "Response B", required=False)],
        "questions": [
            {"name": "preference", "title": "Which response is better?", "description": None, "required": True,
             "settings": {"type": "label_selection", "options": options, "visible_options": None}},
            {"name": "ranking", "title": "Rank the responses (1 = best)", "description": None, "required": False,
             "settings": {"type": "ranking", "options": [{"value": v, "text": o["text"].split(" is")[0]} for v, o in zip(RESPONSES, options)]}},
            {"name": "better_response", "title": "A better response (optional)", "description": "Becomes the chosen answer when given.",
             "required": False, "settings": {"type": "text", "use_markdown": False}},
        ],
        "metadata": [
            {"name": "domain", "title": "Domain", "visible_for_annotators": True, "settings": {"type": "terms", "values": sorted(domains)}},
            {"name": "doc_id", "title": "Document id", "visible_for_annotators": True, "settings": {"type": "terms", "values": None}},
            {"name": "nll", "title": "Mean NLL per token (DPO model)", "visible_for_annotators": True, "settings": {"type": "float", "min": None, "max": None}},
            {"name": "reward_margin", "title": "DPO implicit reward, A minus B", "visible_for_annotators": False, "settings": {"type": "float", "min": None, "max": None}},
        ],
        "vectors": [],
    }


def record(item: dict) -> dict[str, Any]:
    """One review record from a worst-example item: {doc_id, domain, nll, prompt, response_a, response_b, margin}."""
    margin = float(item["margin"])
    choice = "response_a" if margin > 0 else "response_b"
    # The suggestion's score: how sure the DPO model is, as the Bradley-Terry probability of its choice.
    confidence = 1 / (1 + math.exp(-abs(margin)))
    return {
        "id": f"{item['domain']}:{item['doc_id']}",
        "fields": {"prompt": item["prompt"], "response_a": item["response_a"], "response_b": item["response_b"]},
        "metadata": {"domain": item["domain"], "doc_id": item["doc_id"], "nll": round(float(item["nll"]), 4), "reward_margin": round(margin, 4)},
        "suggestions": {"preference": {"value": choice, "score": round(confidence, 4), "agent": "dpo_model implicit reward"}},
        "responses": {},
        "vectors": {},
        "_server_id": None,
    }


def export_review(folder: Path, items: list[dict], domains: list[str]) -> dict[str, Any]:
    """Write settings.json and records.json into `folder`; returns counts for the report."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = [record(x) for x in items]
    write_json(folder / "settings.json", settings(domains))
    write_json(folder / "records.json", records)
    by_domain = Counter(r["metadata"]["domain"] for r in records)
    return {"records": len(records), "by_domain": dict(by_domain), "files": ["review/settings.json", "review/records.json"]}


# ---------------------------------------------------------------- import
def _read_records(path: Path) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else data.get("records", [])


def _responses(rec: dict) -> dict[str, list[Any]]:
    """Answers per question. Accepts Argilla's exported mapping {question: [{value, user_id}]} and the flat list
    [{question_name, value, status}] of its API; discarded answers are dropped."""
    raw = rec.get("responses") or {}
    out: dict[str, list[Any]] = {}
    items = [dict(v, question_name=q) for q, vs in raw.items() for v in (vs if isinstance(vs, list) else [vs])] if isinstance(raw, dict) else raw
    for r in items:
        if isinstance(r, dict) and r.get("status", "submitted") != "discarded" and r.get("value") not in (None, "", []):
            out.setdefault(str(r.get("question_name")), []).append(r["value"])
    return out


def _majority(values: list[str]) -> str | None:
    counts = Counter(v for v in values if v in RESPONSES).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def _ranked_first(rankings: list[Any]) -> list[str]:
    firsts = []
    for ranking in rankings:
        ranks = {r.get("value"): r.get("rank") for r in ranking if isinstance(r, dict)} if isinstance(ranking, list) else {}
        if all(isinstance(ranks.get(v), int) for v in RESPONSES) and ranks["response_a"] != ranks["response_b"]:
            firsts.append(min(RESPONSES, key=lambda v: ranks[v]))
    return firsts


def pair_of(rec: dict) -> tuple[dict | None, str]:
    """The preference pair a reviewed record gives, or None and the named reason it gives none."""
    fields = rec.get("fields") or {}
    if not all(isinstance(fields.get(k), str) for k in ("prompt", *RESPONSES)):
        return None, "missing_fields"
    if rec.get("status") == "discarded":
        return None, "discarded"
    answers = _responses(rec)
    if not answers:
        return None, "not_reviewed"
    meta = rec.get("metadata") or {}
    pair = {"prompt": fields["prompt"], "domain": str(meta.get("domain") or "review"), "review_id": rec.get("id"), "source_id": meta.get("doc_id")}
    written = [v.strip() for v in answers.get("better_response", []) if isinstance(v, str) and v.strip()]
    preferred = _majority([v for v in answers.get("preference", []) if isinstance(v, str)] + _ranked_first(answers.get("ranking", [])))
    if written:
        # A reviewer's own answer beats both; the rejected side is the worse of the two shown (the model's own
        # response unless the reviewers preferred it).
        rejected = "response_a" if preferred == "response_b" else "response_b"
        pair.update(chosen=written[0], rejected=fields[rejected], label="better_response")
    elif preferred is not None:
        other = "response_b" if preferred == "response_a" else "response_a"
        pair.update(chosen=fields[preferred], rejected=fields[other], label=preferred)
    elif answers.get("preference") or answers.get("ranking"):
        return None, "reviewers_disagree"
    else:
        return None, "no_preference_answer"
    if pair["chosen"].strip() == pair["rejected"].strip():
        return None, "identical_responses"
    return pair, "ok"


def import_reviews(path: Path | str, skipped: Counter | None = None) -> list[dict]:
    """Preference pairs ({prompt, chosen, rejected, domain, ...}) from reviewed records; records that give none are
    counted by reason in `skipped` (not_reviewed, discarded, reviewers_disagree, ...)."""
    pairs = []
    for rec in _read_records(Path(path)):
        pair, reason = pair_of(rec) if isinstance(rec, dict) else (None, "not_a_record")
        if pair is None:
            if skipped is not None:
                skipped[reason] += 1
            continue
        pairs.append(pair)
    return pairs


def write_pairs(pairs: list[dict], path: Path | str) -> Path:
    """JSON lines of prompt/chosen/rejected (+ domain and provenance), the format `dpo_model.data` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m llm_pipeline.evaluation.review REVIEWED_RECORDS.json PAIRS.jsonl", file=sys.stderr)
        return 2
    skipped: Counter = Counter()
    pairs = import_reviews(args[0], skipped)
    write_pairs(pairs, args[1])
    print(f"{len(pairs)} preference pairs written to {args[1]}" + (f"; skipped: {dict(skipped)}" if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
