"""PII canaries: strings planted in the raw data that redaction must remove, looked for everywhere downstream.

A canaries file (``{"canaries": [{"text": ..., "entity": ...}]}``) names the planted strings. Each one is looked
for, case-insensitively and with runs of whitespace collapsed, in:

- the deduped shards (every split of every domain): redaction missed it;
- the tokenizer vocabulary: a token holding a *distinctive part* of the canary (a run of letters/digits of at least
  `min_part_chars`, or the digits of a number-like canary run together) means the tokenizer learned it from text
  that still held it. Parts that are ordinary words of the corpus ("clinic" in an e-mail domain, found in more than
  `common_part_max_documents` documents) prove nothing and are not used. The canary's own tokenization is shown too:
  a distinctive part encoded as a single token is the same finding seen from the other side;
- the SFT and DPO training sets (`sft_*.jsonl`, `pairs_*.jsonl`) and every generation of every model.

A canary found anywhere is a leak. The report shows canaries masked (``Le…te``): it must not spread them further.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from llm_pipeline.evaluation.data import Notes

RUN = re.compile(r"[^\W_]+", re.UNICODE)  # letters/digits without the underscore
SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    return SPACE.sub(" ", text).lower()


def mask(text: str) -> str:
    """Enough of a canary to tell which one it is, not enough to spread it."""
    return f"{text[:2]}…{text[-2:]}" if len(text) > 6 else "…"


def distinctive_parts(text: str, min_chars: int) -> list[str]:
    """Lower-cased letter/digit runs of at least `min_chars`, plus the digits run together for a number-like canary
    ("+1 (617) 555-0147" -> "16175550147"), whose own runs are all short."""
    runs = [r.lower() for r in RUN.findall(text)]
    parts = [r for r in runs if len(r) >= min_chars]
    joined = "".join(runs)
    if any(c.isdigit() for c in joined) and len(joined) >= min_chars and joined not in parts and len(runs) > 1:
        parts.append(joined)
    return list(dict.fromkeys(parts))


@dataclass
class Canary:
    text: str
    entity: str
    parts: list[str]
    needle: str = ""  # the normalized full string searched for
    found: dict[str, dict[str, Any]] = field(default_factory=dict)  # place -> {"count": n, "examples": [...]}
    vocabulary: dict[str, Any] | None = None  # what the vocabulary check saw (None: not checked)
    tokenization: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.needle = normalize(self.text)

    def hit(self, place: str, example: str) -> None:
        slot = self.found.setdefault(place, {"count": 0, "examples": []})
        slot["count"] += 1
        if len(slot["examples"]) < 3:
            slot["examples"].append(example)


def load_canaries(path: Path | None, notes: Notes, min_part_chars: int, shown: str | None = None) -> list[Canary] | None:
    """The canaries of a file; None (with a note) when there is no file or it cannot be read as canaries. `shown`:
    the path as the config wrote it, for the note (the report must not carry this machine's folders)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        notes.add(f"canaries file `{shown or path}` not found: the PII canary check is skipped.")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        notes.add(f"canaries file `{path.name}` is not valid JSON ({exc}); the PII canary check is skipped.")
        return None
    rows = data.get("canaries") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        notes.add(f"canaries file `{path.name}` has no `canaries` list; the PII canary check is skipped.")
        return None
    out, bad = [], 0
    for row in rows:
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            bad += 1
            continue
        out.append(Canary(text=text, entity=str(row.get("entity") or "UNKNOWN"), parts=distinctive_parts(text, min_part_chars)))
    if bad:
        notes.add(f"canaries file `{path.name}`: skipped {bad} entr(y/ies) without a `text` string.")
    return out


class CanaryScan:
    """Collects where each canary appears; feed it texts place by place, then ask for `results()`."""

    def __init__(self, canaries: list[Canary], common_part_max_documents: int):
        self.canaries = canaries
        self.common_max = common_part_max_documents
        self.part_docs: dict[str, int] = {p: 0 for c in canaries for p in c.parts}
        self._part_re = {p: re.compile(rf"(?<![^\W_]){re.escape(p)}(?![^\W_])") for p in self.part_docs}
        self.vocabulary: dict[str, Any] = {"checked": False}

    def scan(self, place: str, example: str, text: str) -> None:
        low = normalize(text)
        for c in self.canaries:
            if c.needle in low:
                c.hit(place, example)

    def scan_document(self, place: str, doc_id: str, text: str) -> None:
        """A shard document: looked through for canaries, and counted for how common each canary part is."""
        self.scan(place, doc_id, text)
        low = text.lower()
        for part, rx in self._part_re.items():
            if part in low and rx.search(low):
                self.part_docs[part] += 1

    def scan_records(self, place: str, path: Path) -> None:
        """Every string value of every JSON line of a training file (a missing file is simply not scanned)."""
        if not Path(path).is_file():
            return
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.scan(place, f"line {n}", " ".join(_strings(rec)))

    def common_parts(self) -> set[str]:
        return {p for p, n in self.part_docs.items() if n > self.common_max}

    def scan_tokenizer(self, tokenizer) -> None:
        """Vocabulary tokens holding a distinctive part, and how each canary itself is tokenized."""
        common = self.common_parts()
        vocab = []
        for token in tokenizer.get_vocab():
            shown = tokenizer.convert_tokens_to_string([token]).strip().lower()
            if len(shown) >= 3:
                vocab.append((token, shown))
        for c in self.canaries:
            parts = [p for p in c.parts if p not in common]
            matches = sorted({shown for _, shown in vocab if any(p in shown for p in parts)})
            ids = tokenizer(c.text, add_special_tokens=False)["input_ids"]
            pieces = [tokenizer.decode([i]) for i in ids]
            whole = [p for p in parts if any(p in piece.strip().lower() for piece in pieces)]
            c.vocabulary = {"tokens": matches[:5], "parts_checked": len(parts), "parts_common": sorted(set(c.parts) & common)}
            c.tokenization = {"tokens": len(ids), "chars_per_token": round(len(c.text) / max(1, len(ids)), 2), "single_token_parts": len(whole)}
            if matches:
                c.hit("tokenizer vocabulary", f"{len(matches)} token(s)")
            if whole:
                c.hit("tokenizer encoding", f"{len(whole)} part(s) as one token")
        self.vocabulary = {"checked": True, "size": len(tokenizer.get_vocab())}

    def results(self) -> dict:
        rows = []
        for i, c in enumerate(self.canaries):
            rows.append({
                "index": i,
                "canary": mask(c.text),
                "entity": c.entity,
                "leaked": bool(c.found),
                "found_in": {place: slot["count"] for place, slot in c.found.items()},
                "examples": {place: slot["examples"] for place, slot in c.found.items()},
                "vocabulary": c.vocabulary and {**c.vocabulary, "tokens": [mask(t) for t in c.vocabulary["tokens"]]},
                "tokenization": c.tokenization,
            })
        return {
            "checked": True,
            "canaries": len(rows),
            "leaked": sum(r["leaked"] for r in rows),
            "vocabulary": self.vocabulary,
            "common_parts_ignored": len(self.common_parts()),
            "items": rows,
        }


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
