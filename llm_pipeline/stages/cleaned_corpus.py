"""Stage cleaned_corpus: raw_corpus/<domain> -> cleaned, quality-filtered, language-checked, PII-redacted shards.

Per document, in order: text extraction and normalization (curation.cleaning), C4 line rules, the quality filters
(curation.filters), language id (curation.langid); then, per batch of survivors, PII replacement with Presidio
(curation.pii). Every document ends up kept, dropped with a named reason (``dropped.jsonl``), or quarantined when
its cleaning raised (``quarantine.jsonl``), so ``documents_in == documents_kept + sum(dropped) + quarantined``.

    llm-pipeline stage cleaned_corpus --domain legal
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.cleaning import clean_document
from llm_pipeline.curation.filters import C4Lines, Doc, build_filters, first_failure
from llm_pipeline.curation.pii import PiiRedactor
from llm_pipeline.io import ShardWriter, iter_batches
from llm_pipeline.stages import StageOutput

SCHEMA = pa.schema(
    [
        ("id", pa.string()), ("domain", pa.string()), ("source", pa.string()), ("text", pa.string()),
        ("licence", pa.string()), ("language", pa.string()), ("format", pa.string()), ("n_words", pa.int64()),
        ("pii_counts", pa.string()), ("extractor", pa.string()),
    ]
)
SHARD_ROWS = 10_000
PREVIEW_SAMPLES = 3


class _Counts:
    def __init__(self) -> None:
        self.documents_in = self.documents_kept = self.quarantined = 0
        self.bytes_in = self.bytes_kept = 0
        self.dropped: Counter[str] = Counter()
        self.pii: Counter[str] = Counter()
        self.languages: Counter[str] = Counter()
        self.extractors: Counter[str] = Counter()


def _prepare(rec: dict, cfg: PipelineConfig, c4: C4Lines | None, filters: list) -> tuple[dict | None, str | None]:
    """Clean, filter and language-check one raw record: (cleaned record, None) or (None, drop reason)."""
    ccfg = cfg.cleaned_corpus
    text, extractor = clean_document(rec["text"], rec.get("format") or "", ccfg)
    if not text:
        return None, "empty_after_extraction"
    if c4 is not None:
        text, reason = c4.apply(text)
        if reason:
            return None, reason
    doc = Doc(text)
    reason = first_failure(doc, filters)
    if reason:
        return None, reason
    out = {k: rec.get(k) for k in ("id", "domain", "source", "licence", "format")}
    out.update(text=text, language=doc.language, n_words=len(doc.words), extractor=extractor, pii_counts="{}")
    return out, None


def _redact(batch: list[dict], redactor: PiiRedactor, quarantine: list[tuple[dict, str]]) -> list[dict]:
    """Replace PII in a batch; if the batch call fails, retry one by one so only the bad document is quarantined."""
    try:
        redacted = redactor.redact_batch([r["text"] for r in batch])
    except Exception:  # noqa: BLE001 - narrowed below by retrying each document alone
        redacted = []
        for r in batch:
            try:
                redacted.append(redactor.redact_batch([r["text"]])[0])
            except Exception as exc:  # noqa: BLE001 - a document that breaks the analyzer is quarantined, not fatal
                redacted.append(None)
                quarantine.append((r, f"pii_error: {type(exc).__name__}: {exc}"[:500]))
    kept = []
    for r, res in zip(batch, redacted):
        if res is None:
            continue
        r["text"], counts = res
        r["pii_counts"] = json.dumps(counts, sort_keys=True)
        kept.append(r)
    return kept


def _process(cfg, inputs, output_dir, domain, c4, filters, redactor) -> tuple[_Counts, list[dict]]:
    """Stream the domain's raw shards through cleaning, filters and PII; write kept, dropped and quarantined."""
    ccfg = cfg.cleaned_corpus
    n = _Counts()
    samples: list[dict] = []
    columns = ["id", "source", "text", "licence", "format", "domain"]
    with (
        ShardWriter(output_dir, max_rows=SHARD_ROWS, schema=SCHEMA) as writer,
        open(output_dir / "dropped.jsonl", "w", encoding="utf-8") as dropped_f,
        open(output_dir / "quarantine.jsonl", "w", encoding="utf-8") as quarantine_f,
    ):
        for batch in iter_batches(inputs["raw_corpus"], columns=columns, batch_size=ccfg.batch_size):
            survivors: list[dict] = []
            quarantine: list[tuple[dict, str]] = []
            for rec in batch:
                n.documents_in += 1
                n.bytes_in += len((rec.get("text") or "").encode("utf-8"))
                rec["domain"] = rec.get("domain") or domain
                try:
                    out, reason = _prepare(rec, cfg, c4, filters)
                except Exception as exc:  # noqa: BLE001 - one malformed document must not stop the domain
                    quarantine.append((rec, f"cleaning_error: {type(exc).__name__}: {exc}"[:500]))
                    continue
                if reason:
                    n.dropped[reason] += 1
                    dropped_f.write(json.dumps({"id": rec.get("id"), "source": rec.get("source"), "reason": reason}) + "\n")
                else:
                    survivors.append(out)
            if redactor is not None and survivors:
                survivors = _redact(survivors, redactor, quarantine)
            for rec, reason in quarantine:
                n.quarantined += 1
                quarantine_f.write(json.dumps({"id": rec.get("id"), "source": rec.get("source"), "reason": reason}) + "\n")
            for r in survivors:
                writer.write(r)
                n.documents_kept += 1
                n.bytes_kept += len(r["text"].encode("utf-8"))
                n.languages[r["language"]] += 1
                n.extractors[r["extractor"]] += 1
                counts = json.loads(r["pii_counts"])
                n.pii.update(counts)
                if counts and len(samples) < PREVIEW_SAMPLES:
                    samples.append(r)
    return n, samples


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    ccfg = cfg.cleaned_corpus
    c4 = C4Lines(ccfg.c4_terminal_punct, ccfg.c4_curly_braces) if ccfg.c4_rules else None
    filters = build_filters(ccfg, cfg.domains[domain].languages)
    redactor = PiiRedactor(ccfg) if ccfg.pii else None  # fails fast (e.g. missing salt) before reading anything
    try:
        n, samples = _process(cfg, inputs, output_dir, domain, c4, filters, redactor)
    finally:
        if redactor is not None:
            redactor.close()  # stops PII worker processes, if a large batch started them
    stats = {
        "documents_in": n.documents_in,
        "documents_kept": n.documents_kept,
        "dropped": dict(sorted(n.dropped.items())),
        "quarantined": n.quarantined,
        "bytes_in": n.bytes_in,
        "bytes_kept": n.bytes_kept,
        "pii_entities": dict(sorted(n.pii.items())),
        "languages": dict(sorted(n.languages.items())),
        "extractors": dict(sorted(n.extractors.items())),
    }
    assert n.documents_in == n.documents_kept + sum(n.dropped.values()) + n.quarantined, stats
    return StageOutput(stats=stats, preview=_preview(domain, stats, samples))


def _preview(domain: str | None, stats: dict, samples: list[dict]) -> str:
    lines = [
        f"### cleaned_corpus `{domain}`",
        "",
        "| documents in | kept | dropped | quarantined | bytes in | bytes kept |",
        "|---|---|---|---|---|---|",
        f"| {stats['documents_in']} | {stats['documents_kept']} | {sum(stats['dropped'].values())} | "
        f"{stats['quarantined']} | {stats['bytes_in']} | {stats['bytes_kept']} |",
        "",
        "| drop reason | documents |",
        "|---|---|",
    ]
    lines += [f"| `{reason}` | {count} |" for reason, count in sorted(stats["dropped"].items(), key=lambda kv: -kv[1])]
    lines += ["", f"PII replaced: {stats['pii_entities'] or 'none'}", ""]
    for s in samples:
        snippet = s["text"][:400].replace("\n", " ")
        lines += [f"**{s['id'][:12]}** ({s['source']}, {s['pii_counts']}):", f"> {snippet}", ""]
    return "\n".join(lines)
