"""How held-out text with PII tags is scored: read as training read it, with what no model learned left out.

cleaned_corpus writes ``<PERSON>``, ``<URL>``, ... (or ``<PERSON:1f3a...>``) where it found personal data, and the
training stages read each tag filled with a surrogate of its type and do not learn to predict it
(``training/tag_fill.py``). A held-out score that reads the raw tags measures how each model predicts ``<PERSON>``
strings (which no model was trained to predict, and whose tokens differ between tokenizers); one that scores the
surrogates measures how it guesses random made-up values. So every held-out score (eval_report's perplexity and
bits per byte, the DPO guard, base_checkpoint's vocabulary check) reads the text the way training did:

- ``surrogates``: tags filled with the run's filler (``tag_fill.for_config``: same seed and canaries as training,
  deterministic), the surrogates read as context but left out of the score;
- ``tags``: ``training.fill_redaction_tags`` off, so the tags are read as they are and left out of the score;
- ``none``: PII redaction off, or a mode that writes no tags: the text is scored whole.

In the first two modes each span takes the space before it along (a tokenizer joins it to the word after it), a
tag cut in two by a document character cap (``<PERS`` at the end) is left out too, and so is a tag of a type the
filler has no surrogate for.

    view = HeldOut.for_config(cfg)
    texts, spans = view.prepare(raw_texts, max_chars=4_000)
    perplexity.score_texts(lm, texts, skip=spans)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llm_pipeline.training import tag_fill

# The start of a tag a character cap cut off at the end of a text.
CUT_TAG = re.compile(r"<[A-Z][A-Z_]*(?::[0-9a-f]{0,16})?$|<$")

WHY = {
    "surrogates": "PII tags filled with surrogates as training reads them; the surrogates are read as context but not scored",
    "tags": "training.fill_redaction_tags is off: PII tags read as stored, the tags themselves not scored",
    "none": "no PII tags in the shards (redaction off or a mode that writes none): every token scored",
}


@dataclass
class HeldOut:
    mode: str  # "surrogates", "tags" or "none"
    filler: tag_fill.TagFiller | None = None
    spans: int = 0  # left out, over every `prepare` call
    chars: int = 0
    by_group: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def for_config(cls, cfg) -> "HeldOut":
        cc = cfg.cleaned_corpus
        if not cc.pii or cc.pii_mode not in ("type_tag", "hash"):
            return cls("none")
        filler = tag_fill.for_config(cfg)
        return cls("surrogates", filler) if filler is not None else cls("tags")

    def prepare_one(self, text: str, max_chars: int | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The text as scored (filled, then cut to `max_chars`) and the character spans left out of its score."""
        if self.mode == "none":
            return (text if max_chars is None else text[:max_chars]), []
        spans: list[tuple[int, int]] = []
        if self.filler is not None:
            text, spans = self.filler.fill_with_spans(text)
        # Tags left in the text: every tag in `tags` mode, those of types without a surrogate in `surrogates` mode.
        spans = sorted(spans + [m.span() for m in tag_fill.TAG.finditer(text)])
        if max_chars is not None and len(text) > max_chars:
            text = text[:max_chars]
            spans = [(a, min(b, max_chars)) for a, b in spans if a < max_chars]
        cut = CUT_TAG.search(text)
        if cut is not None and not any(a <= cut.start() < b for a, b in spans):
            spans.append((cut.start(), len(text)))
        # The space before a span goes with it: word-piece vocabularies spell " Elena" as one token, so whether that
        # space is scored would otherwise depend on which surrogate was drawn (and on the tokenizer).
        spans = [(a - 1 if a > 0 and text[a - 1] == " " else a, b) for a, b in spans]
        return text, spans

    def prepare(self, texts: list[str], max_chars: int | None = None, group: str | None = None
                ) -> tuple[list[str], list[list[tuple[int, int]]]]:
        """`prepare_one` for each text; what was left out is counted, per `group` (a domain) too."""
        out, all_spans = [], []
        for t in texts:
            text, spans = self.prepare_one(t, max_chars)
            out.append(text)
            all_spans.append(spans)
            n, c = len(spans), sum(b - a for a, b in spans)
            self.spans += n
            self.chars += c
            if group is not None:
                g = self.by_group.setdefault(group, {"spans": 0, "chars": 0})
                g["spans"] += n
                g["chars"] += c
        return out, all_spans

    def summary(self) -> dict:
        """For metrics and stats: the mode, why, and the spans and characters left out (in total and per group)."""
        return {"mode": self.mode, "why": WHY[self.mode], "spans_left_out": self.spans, "chars_left_out": self.chars,
                "by_domain": {g: dict(v) for g, v in sorted(self.by_group.items())}}

    def line(self) -> str:
        """One line for a report: what was left out of the scores, and why."""
        if self.mode == "none":
            return f"Held-out scores read every token ({WHY['none']})."
        what = "surrogates" if self.mode == "surrogates" else "PII tags"
        per = "; ".join(f"{g}: {v['spans']:,} ({v['chars']:,} characters)" for g, v in sorted(self.by_group.items()))
        return (f"Held-out scores leave out {self.spans:,} {what} ({self.chars:,} characters){f' — {per}' if per else ''}: "
                f"{WHY[self.mode]}.")
