"""Reading what the upstream stages left on disk, tolerantly: a missing optional file becomes a note, not a crash.

The report should still render when, say, the DPO stage wrote no held-out pairs; the note says what is missing and
the section that needed it shows the note instead of numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_pipeline.io import iter_records
from llm_pipeline.splits import split_of


@dataclass
class Notes:
    """Human-readable remarks collected while evaluating; each names the file or item it is about."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        if text not in self.items:
            self.items.append(text)


@dataclass
class EvalDocument:
    id: str
    domain: str
    text: str  # already cut to max_document_chars, so bytes and tokens describe the same text


def read_jsonl(path: Path, notes: Notes, required: tuple[str, ...] = (), limit: int | None = None) -> list[dict]:
    """Records of a JSON-lines file; a missing file or a bad line is noted and skipped, never fatal."""
    path = Path(path)
    if not path.is_file():
        notes.add(f"`{path.parent.name}/{path.name}` is missing; the sections that need it are skipped.")
        return []
    records: list[dict] = []
    bad = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(rec, dict) or any(not isinstance(rec.get(k), str) for k in required):
                bad += 1
                continue
            records.append(rec)
            if limit is not None and len(records) >= limit:
                break
    if bad:
        notes.add(f"`{path.parent.name}/{path.name}`: skipped {bad} line(s) that are not JSON objects with {', '.join(required)}.")
    return records


def read_training_log(path: Path, notes: Notes) -> list[dict[str, Any]]:
    """A training log as a list of dicts. Accepts a plain list or a `{"log_history": [...]}` trainer state."""
    path = Path(path)
    if not path.is_file():
        notes.add(f"`{path.parent.name}/{path.name}` is missing; its loss curve is not drawn.")
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        notes.add(f"`{path.parent.name}/{path.name}` is not valid JSON ({exc.msg}); its loss curve is not drawn.")
        return []
    if isinstance(data, dict):
        data = data.get("log_history", [])
    return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []


def read_json_file(path: Path) -> Any | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def domain_folders(shards_root: Path, domains: list[str], notes: Notes) -> dict[str, Path]:
    """The shard folder of each configured domain that exists; a missing one is noted."""
    found = {}
    for d in domains:
        folder = Path(shards_root) / d
        if folder.is_dir():
            found[d] = folder
        else:
            notes.add(f"deduped_shards has no folder for domain `{d}`; it is left out of the per-domain tables.")
    return found


def _split(rec: dict, eval_fraction: float) -> str:
    # Shards written before the split column existed are split the same way the training stages split them.
    return rec.get("split") or split_of(str(rec["id"]), eval_fraction)


def iter_documents(folder: Path, split: str, eval_fraction: float) -> Iterator[dict]:
    """Documents of one domain folder whose split is `split`, streamed."""
    for rec in iter_records(folder):
        if rec.get("text") and _split(rec, eval_fraction) == split:
            yield rec


def iter_all_documents(folder: Path) -> Iterator[dict]:
    """Every document of one domain folder with text, whatever its split (for searches over all the data)."""
    for rec in iter_records(folder):
        if isinstance(rec.get("text"), str):
            yield rec


def eval_documents(folder: Path, domain: str, eval_fraction: float, limit: int, max_chars: int) -> list[EvalDocument]:
    """Up to `limit` held-out documents of one domain, in shard order (stable across runs)."""
    docs = []
    for rec in iter_documents(folder, "eval", eval_fraction):
        docs.append(EvalDocument(id=str(rec["id"]), domain=domain, text=rec["text"][:max_chars]))
        if len(docs) >= limit:
            break
    return docs


def _content(value: Any) -> str | None:
    """A completion given as text, or as TRL's conversational list of messages (the assistant's content)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return "".join(str(m.get("content", "")) for m in value if m.get("role", "assistant") == "assistant")
    return None


def _prompt(value: Any) -> str | list[dict] | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value
    return None


def sft_examples(path: Path, notes: Notes) -> list[dict]:
    """sft_eval/sft_train records as {prompt, completion, domain}; `messages` records split at the last assistant turn."""
    out, bad = [], 0
    for rec in read_jsonl(path, notes):
        prompt, completion = _prompt(rec.get("prompt")), _content(rec.get("completion"))
        msgs = rec.get("messages")
        if prompt is None and isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            prompt, completion = _prompt(msgs[:-1]), _content(msgs[-1:])
        if prompt is None or completion is None:
            bad += 1
            continue
        out.append({"prompt": prompt, "completion": completion, "domain": rec.get("domain")})
    if bad:
        notes.add(f"`{Path(path).parent.name}/{Path(path).name}`: skipped {bad} record(s) with neither prompt/completion nor messages ending in an assistant turn.")
    return out


def preference_pairs(path: Path, notes: Notes) -> list[dict]:
    """pairs_eval/pairs_train records as {prompt, chosen, rejected, domain} (text or conversational fields)."""
    out, bad = [], 0
    for rec in read_jsonl(path, notes):
        prompt, chosen, rejected = _prompt(rec.get("prompt")), _content(rec.get("chosen")), _content(rec.get("rejected"))
        if prompt is None or chosen is None or rejected is None:
            bad += 1
            continue
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "domain": rec.get("domain")})
    if bad:
        notes.add(f"`{Path(path).parent.name}/{Path(path).name}`: skipped {bad} record(s) without prompt, chosen and rejected.")
    return out
