"""Supervised fine-tuning examples: read from the user's files, or derived from the corpus with templates.

Derived examples come from train-split documents (training set) and eval-split documents (held-out set), so the SFT
eval loss never sees a document the model trained on. Templates:

- ``continue``: the first part of a document → its next words;
- ``summarise``: a document → its lead sentence (the corpus has no human summaries; the lead stands in for one);
- ``heading``: a heading line → the body under it.

Each record is ``{prompt, completion, domain, template}``; examples from ``messages``/``text`` files keep their own
fields instead. Short documents are skipped with a counted reason.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import xxhash

from llm_pipeline.training.corpus import iter_documents
from llm_pipeline.training.tag_fill import TagFiller

TEMPLATES = ("continue", "summarise", "heading")
MIN_WORDS = 12  # below this a document cannot give both a meaningful prompt and a completion
PROMPT_WORDS = 48  # caps keep examples inside max_length on small models
COMPLETION_WORDS = 40
HEADING = re.compile(r"^\s*(?:#{1,6}\s+)?(?P<title>[^\n]{3,100})\n+(?P<body>.+)", re.DOTALL)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
EVAL_SHARE = 0.15  # held-out share of user-supplied examples (by content hash) when no eval file is given


class SftDataError(ValueError):
    """SFT data that cannot be used (unknown format, missing fields, nothing left)."""


def _words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def make_example(text: str, domain: str, template: str) -> tuple[dict | None, str]:
    """One example from one document with one template, or (None, reason)."""
    words = text.split()
    if len(words) < MIN_WORDS:
        return None, "too_short"
    if template == "continue":
        cut = min(PROMPT_WORDS, max(6, len(words) // 2))
        prompt = f"Continue this {domain} text:\n{' '.join(words[:cut])}"
        return {"prompt": prompt, "completion": " ".join(words[cut : cut + COMPLETION_WORDS])}, ""
    if template == "summarise":
        # A markdown heading is a title, not the lead sentence: summarise the prose under it.
        prose = re.sub(r"^\s*#{1,6}\s+[^\n]*\n+", "", text.strip()).strip()
        lead = SENTENCE_END.split(prose, maxsplit=1)[0]
        body = prose[len(lead):].strip()
        if len(lead.split()) < 4 or len(body.split()) < 6:
            return None, "no_lead_sentence"
        return {"prompt": f"Summarise this {domain} text in one sentence:\n{_words(body, PROMPT_WORDS)}", "completion": _words(lead, COMPLETION_WORDS)}, ""
    if template == "heading":
        m = HEADING.match(text)
        if not m or len(m["body"].split()) < 6 or len(m["title"].split()) > 15:
            return None, "no_heading"
        return {"prompt": f"Write the {domain} section titled: {m['title'].strip()}", "completion": _words(m["body"], COMPLETION_WORDS)}, ""
    raise ValueError(f"unknown template {template!r}")


def derive_examples(shards: Path, domain: str, split: str, limit: int, seed: int, skipped: Counter,
                    filler: TagFiller | None = None) -> Iterator[dict]:
    """Up to `limit` examples from one domain's documents of `split`, templates in rotation (falling back in turn
    when a document does not fit one); PII tags filled with `filler`, if given."""
    made = 0
    for i, rec in enumerate(iter_documents(shards, domain, split, filler=filler)):
        if made >= limit:
            return
        start = (i + seed) % len(TEMPLATES)
        for k in range(len(TEMPLATES)):
            template = TEMPLATES[(start + k) % len(TEMPLATES)]
            example, reason = make_example(rec["text"], domain, template)
            if example is not None:
                made += 1
                yield {**example, "domain": domain, "template": template, "source_id": rec["id"]}
                break
        else:
            skipped[reason] += 1


def fit_words(text: str, tokenizer, max_tokens: int, keep: str = "start") -> str:
    """The longest run of whole words from the start (or end) of `text` that stays within `max_tokens` tokens."""
    words = text.split()
    count = lambda n: len(tokenizer(" ".join(words[:n] if keep == "start" else words[len(words) - n :]), add_special_tokens=False)["input_ids"])  # noqa: E731
    if count(len(words)) <= max_tokens:
        return text
    lo, hi = 0, len(words)
    while lo < hi:  # binary search on the number of words kept
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(mid) <= max_tokens else (lo, mid - 1)
    return " ".join(words[:lo] if keep == "start" else words[len(words) - lo :])


def fit_example(rec: dict, tokenizer, max_length: int, prompt_key: str = "prompt", answer_keys: tuple[str, ...] = ("completion",)) -> dict | None:
    """Trim a derived example so prompt and answer both fit in `max_length` tokens with the chat framing.

    The trainers truncate from the end: an over-long prompt would leave no answer tokens and the example would be
    dropped (or worse, train on nothing). The prompt keeps its first line (the instruction) and the end of its text,
    next to where the answer starts; answers keep their start. None when nothing of the text or the answer fits.
    """
    overhead = 8  # chat markers, newlines and eos
    prompt_budget = int((max_length - overhead) * 0.6)
    answer_budget = max_length - overhead - prompt_budget
    head, _, body = rec[prompt_key].partition("\n")
    head_tokens = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    if body:
        body = fit_words(body, tokenizer, max(1, prompt_budget - head_tokens), keep="end")
        rec[prompt_key] = f"{head}\n{body}"
    else:
        body = rec[prompt_key] = fit_words(head, tokenizer, prompt_budget, keep="start")
    for key in answer_keys:
        rec[key] = fit_words(rec[key], tokenizer, answer_budget, keep="start")
    if not body.strip() or not all(rec[k].strip() for k in answer_keys):
        return None
    return rec


def fit_all(records: list[dict], tokenizer, max_length: int, skipped: Counter, **keys) -> list[dict]:
    """`fit_example` over records; those that cannot fit are counted under `does_not_fit_max_length`."""
    kept = []
    for rec in records:
        if fit_example(rec, tokenizer, max_length, **keys) is None:
            skipped["does_not_fit_max_length"] += 1
        else:
            kept.append(rec)
    return kept


# ---------------------------------------------------------------- user files
def _read_table(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else data.get("data", [])
    if suffix == ".parquet":
        return pd.read_parquet(path).to_dict("records")
    if suffix == ".csv":
        return pd.read_csv(path).to_dict("records")
    raise SftDataError(f"{path}: unsupported SFT file type {suffix!r} (use .jsonl, .json, .parquet or .csv)")


def detect_format(row: dict) -> str:
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    raise SftDataError(f"cannot tell the SFT format of a row with fields {sorted(row)}; set lora_adapter.data_format")


def normalise(row: dict, fmt: str, where: str) -> dict:
    """A user row as a training record in one of TRL's dataset shapes."""
    try:
        if fmt == "prompt_completion":
            return {"prompt": str(row["prompt"]), "completion": str(row["completion"])}
        if fmt == "alpaca":
            extra = str(row.get("input") or "").strip()
            prompt = str(row["instruction"]).strip() + (f"\n\n{extra}" if extra else "")
            return {"prompt": prompt, "completion": str(row["output"])}
        if fmt == "messages":
            msgs = row["messages"]
            if not isinstance(msgs, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in msgs):
                raise SftDataError(f"{where}: 'messages' must be a list of {{role, content}} objects")
            return {"messages": [{"role": m["role"], "content": str(m["content"])} for m in msgs]}
        if fmt == "text":
            return {"text": str(row["text"])}
    except KeyError as exc:
        raise SftDataError(f"{where}: a {fmt} row lacks the field {exc}") from None
    raise SftDataError(f"unknown SFT data format {fmt!r}")


def map_fields(row: dict, field_map: dict[str, str]) -> dict:
    """The row with the user's field names renamed to ours ({"prompt": "question"} reads `question` as the prompt)."""
    if not field_map:
        return row
    out = dict(row)
    for ours, theirs in field_map.items():
        if theirs in row:
            out[ours] = row[theirs]
    return out


def read_user_examples(paths: list[Path], fmt: str, field_map: dict[str, str] | None = None) -> tuple[list[dict], list[dict]]:
    """Train and held-out records from user files; held out by a hash of the content (stable across runs)."""
    train, held = [], []
    for path in paths:
        if not path.exists():
            raise SftDataError(f"SFT data file not found: {path}")
        for n, row in enumerate(_read_table(path)):
            where = f"{path}:{n + 1}"
            row = map_fields(row, field_map or {})
            rec = normalise(row, detect_format(row) if fmt == "auto" else fmt, where)
            rec.update(domain=str(row.get("domain", "user")), template=f"file:{path.name}")
            key = json.dumps(rec, sort_keys=True).encode()
            (held if xxhash.xxh64_intdigest(key) / 2**64 < EVAL_SHARE else train).append(rec)
    if not train:
        raise SftDataError(f"no SFT training examples in {', '.join(map(str, paths))}")
    return train, held


def corpus_texts(shards: Path, domain: str, split: str, filler: TagFiller | None = None) -> list[dict]:
    """Every document of one domain's split as a plain-text record, for packing into training rows.

    The documents are held in memory as text: the packer needs all of them to fill rows best-fit (the sample's train
    split is about 1 MB; a corpus of gigabytes wants a streaming packer over a token file instead).
    """
    out = []
    for rec in iter_documents(shards, domain, split):
        if not rec["text"].strip():
            continue
        text, spans = filler.fill_with_spans(rec["text"]) if filler is not None else (rec["text"], [])
        # The surrogates that fill PII tags are read but not predicted (`no_loss`, as in continued pretraining).
        out.append({"text": text, "domain": domain, "source_id": rec["id"], **({"no_loss": spans} if spans else {})})
    return out


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def as_conversation(rec: dict) -> dict:
    """A prompt/completion record in TRL's conversational shape, so the tokenizer's chat template frames it."""
    if "prompt" in rec:
        return {"prompt": [{"role": "user", "content": rec["prompt"]}], "completion": [{"role": "assistant", "content": rec["completion"]}]}
    return {k: v for k, v in rec.items() if k in ("messages", "text")}
