"""Stage cleaned_corpus: raw_corpus/<domain> -> cleaned, quality-filtered, language-checked, PII-redacted shards.

Per document, in order: text extraction and normalization (curation.cleaning), C4 line rules, the quality filters
(curation.filters), language id (curation.langid); then, per batch of survivors, PII replacement with Presidio
(curation.pii). Every document ends up kept, dropped with a named reason (``dropped.jsonl``), or quarantined when
its cleaning raised (``quarantine.jsonl``), so ``documents_in == documents_kept + sum(dropped) + quarantined``.
A reason that drops more than ``max_drop_share`` of the domain is named in the stats (``drop_share_over_limit``) and
its first dropped documents, PII redacted, go to ``drop_examples.json`` for the drop_share check.

Documents unchanged since the domain's last run reuse their result (``cleaned_corpus.reuse_results``,
curation.result_cache): after one file of a domain changes, only that file's documents are cleaned and analyzed
again. The metadata says how many were reused; the output does not depend on it.

    llm-pipeline stage cleaned_corpus --domain legal
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from importlib import metadata
from pathlib import Path

import pyarrow as pa

from llm_pipeline import progress
from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.cleaning import clean_document
from llm_pipeline.curation.filters import C4Lines, Doc, build_filters, first_failure
from llm_pipeline.curation.pii import PiiRedactor
from llm_pipeline.curation.result_cache import ResultCache, cache_path, fingerprint
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
DROP_EXAMPLES = 3  # dropped documents shown per reason that goes over max_drop_share
DROP_EXAMPLE_CHARS = 400
DROP_EXAMPLES_FILE = "drop_examples.json"


class _Counts:
    def __init__(self) -> None:
        self.documents_in = self.documents_kept = self.quarantined = 0
        self.bytes_in = self.bytes_kept = 0
        self.dropped: Counter[str] = Counter()
        self.drop_examples: dict[str, list[dict]] = {}  # the first DROP_EXAMPLES dropped documents of each reason
        self.pii: Counter[str] = Counter()
        self.languages: Counter[str] = Counter()
        self.extractors: Counter[str] = Counter()
        self.pii_ner: Counter[str] = Counter()  # kept documents per PII analyzer: the spaCy model or "patterns_only"


def result_fingerprint(cfg: PipelineConfig, domain: str, redactor: PiiRedactor | None) -> str:
    """What a document's result depends on besides its own record: the settings that change results (not batch
    sizes or worker counts), the domain's languages, the spaCy model's version, and in hash mode the salt's digest."""
    ccfg = cfg.cleaned_corpus
    settings = ccfg.model_dump(
        mode="json", exclude={"batch_size", "pii_processes", "reuse_results", "max_drop_share", "drop_share_blocking"}
    )
    try:
        model_version = metadata.version(ccfg.spacy_model)
    except metadata.PackageNotFoundError:  # a model folder rather than a package: its path is in the settings
        model_version = "-"
    salt = hashlib.sha256(redactor.salt).hexdigest() if redactor is not None and redactor.salt else ""
    return fingerprint(settings=settings, languages=cfg.domains[domain].languages, spacy_model=model_version, salt=salt)


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


def _redact(batch: list[dict], redactor: PiiRedactor, quarantine: list[tuple[dict, str]]) -> list[dict | None]:
    """Replace PII in a batch; if the batch call fails, retry one by one so only the bad document is quarantined
    (None in its place)."""
    languages = [r.get("language") for r in batch]  # NER only where its model reads the language
    try:
        redacted = redactor.redact_batch([r["text"] for r in batch], languages)
    except Exception:  # noqa: BLE001 - narrowed below by retrying each document alone
        redacted = []
        for r in batch:
            try:
                redacted.append(redactor.redact_batch([r["text"]], [r.get("language")])[0])
            except Exception as exc:  # noqa: BLE001 - a document that breaks the analyzer is quarantined, not fatal
                redacted.append(None)
                quarantine.append((r, f"pii_error: {type(exc).__name__}: {exc}"[:500]))
    out: list[dict | None] = []
    for r, res, source in zip(batch, redacted, redactor.redact_sources([r.get("source") or "" for r in batch])):
        if res is not None:
            r["text"], counts = res
            r["pii_counts"] = json.dumps(counts, sort_keys=True)
            r["source"] = source  # file names carry names too ("jane_doe_discharge.txt")
            r["pii_ner"] = redactor.ner_used(r.get("language"))  # not a column: counted into the stage's metadata
        out.append(r if res is not None else None)
    return out


def _source(rec: dict, redactor: PiiRedactor | None) -> str | None:
    """The record's source as this stage may show it: with personal data in its path replaced when PII is on."""
    source = rec.get("source")
    return redactor.redact_sources([source])[0] if redactor is not None and source else source


def _process(cfg, inputs, output_dir, domain, c4, filters, redactor, cache: ResultCache, batches=None,
             prefix: str = "shard") -> tuple[_Counts, list[dict]]:
    """Stream the domain's raw shards (or the given `batches`, one task's part of them) through cleaning, filters
    and PII; write kept, dropped and quarantined.

    A document whose result is in `cache` (same record, settings and code as a previous run) takes it from there;
    the rest are computed and added. Output order and content are the same either way."""
    ccfg = cfg.cleaned_corpus
    n = _Counts()
    samples: list[dict] = []
    columns = ["id", "source", "text", "licence", "format", "domain"]
    with (
        ShardWriter(output_dir, prefix=prefix, max_rows=SHARD_ROWS, schema=SCHEMA) as writer,
        open(output_dir / "dropped.jsonl", "w", encoding="utf-8") as dropped_f,
        open(output_dir / "quarantine.jsonl", "w", encoding="utf-8") as quarantine_f,
    ):
        if batches is None:
            meter = progress.meter(f"cleaned_corpus[{domain}]", total=_raw_kept(inputs["raw_corpus"]), unit="doc")
            batches = iter_batches(inputs["raw_corpus"], columns=columns, batch_size=ccfg.batch_size)
        else:  # one task of many: the executor reports progress by task
            meter = progress.Meter(f"cleaned_corpus[{domain}] {prefix}", unit="doc")
            meter.active = False
        for batch in batches:
            survivors: list[dict | None] = []  # kept documents in input order; None until redacted
            fresh: list[tuple[int, str, dict]] = []  # (slot, cache key, cleaned record) still to redact
            quarantine: list[tuple[dict, str]] = []
            for rec in batch:
                n.documents_in += 1
                n.bytes_in += len((rec.get("text") or "").encode("utf-8"))
                rec["domain"] = rec.get("domain") or domain
                key = cache.key(rec)
                hit = cache.get(key)
                if hit is not None:
                    out, reason = hit.get("kept"), hit.get("dropped")
                else:
                    try:
                        out, reason = _prepare(rec, cfg, c4, filters)
                    except Exception as exc:  # noqa: BLE001 - one malformed document must not stop the domain
                        quarantine.append((rec, f"cleaning_error: {type(exc).__name__}: {exc}"[:500]))
                        continue  # not cached: a quarantined document is tried again next run
                if reason:
                    n.dropped[reason] += 1
                    examples = n.drop_examples.setdefault(reason, [])
                    if len(examples) < DROP_EXAMPLES:
                        # The raw text (a cached result has no cleaned text), whitespace folded, first characters.
                        snippet = " ".join(str(rec.get("text") or "")[: DROP_EXAMPLE_CHARS * 4].split())[:DROP_EXAMPLE_CHARS]
                        examples.append({"id": rec.get("id"), "source": _source(rec, redactor), "text": snippet})
                    dropped_f.write(json.dumps({"id": rec.get("id"), "source": _source(rec, redactor), "reason": reason}) + "\n")
                    if hit is None:
                        cache.put(key, {"dropped": reason})
                elif hit is not None or redactor is None:
                    survivors.append(out)
                    if hit is None:
                        cache.put(key, {"kept": out})
                else:
                    fresh.append((len(survivors), key, out))
                    survivors.append(None)
            if fresh:
                for (slot, key, _), r in zip(fresh, _redact([r for _, _, r in fresh], redactor, quarantine)):
                    survivors[slot] = r
                    if r is not None:
                        cache.put(key, {"kept": r})
            for rec, reason in quarantine:
                n.quarantined += 1
                quarantine_f.write(json.dumps({"id": rec.get("id"), "source": _source(rec, redactor), "reason": reason}) + "\n")
            for r in survivors:
                if r is None:  # quarantined by the PII step
                    continue
                writer.write(r)
                n.documents_kept += 1
                n.bytes_kept += len(r["text"].encode("utf-8"))
                n.languages[r["language"]] += 1
                n.extractors[r["extractor"]] += 1
                if r.get("pii_ner"):
                    n.pii_ner[r["pii_ner"]] += 1
                counts = json.loads(r["pii_counts"])
                n.pii.update(counts)
                if counts and len(samples) < PREVIEW_SAMPLES:
                    samples.append(r)
            meter.update(n.documents_in, kept=n.documents_kept)
        meter.close(kept=n.documents_kept)
    return n, samples


def _raw_kept(folder: Path) -> int | None:
    """Documents raw_corpus kept (its stats.json), for progress' total; None when unknown."""
    try:
        return int(json.loads((folder / "stats.json").read_text())["documents_kept"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    ccfg = cfg.cleaned_corpus
    c4 = C4Lines(ccfg.c4_terminal_punct, ccfg.c4_curly_braces) if ccfg.c4_rules else None
    filters = build_filters(ccfg, cfg.domains[domain].languages)
    redactor = PiiRedactor(ccfg) if ccfg.pii else None  # fails fast (e.g. missing salt) before reading anything
    if cfg.compute.engine != "local":  # the same per-batch code, as tasks over the raw shards on the engine
        from llm_pipeline.compute import clean

        return clean.run(cfg, inputs, output_dir, domain, redactor)
    cache = ResultCache(cache_path(cfg.data_path, "cleaned_corpus", domain), result_fingerprint(cfg, domain, redactor),
                        enabled=ccfg.reuse_results)
    try:
        with cache:
            n, samples = _process(cfg, inputs, output_dir, domain, c4, filters, redactor, cache)
        over = drop_shares_over_limit(n.dropped, n.documents_in, ccfg.max_drop_share)
        _write_drop_examples(output_dir, over, n, redactor)
    finally:
        if redactor is not None:
            redactor.close()  # stops PII worker processes, if a large batch started them
    stats = stats_of(n, over)
    assert n.documents_in == n.documents_kept + sum(n.dropped.values()) + n.quarantined, stats
    return StageOutput(stats=stats, preview=_preview(domain, stats, samples), metadata=cache.metadata())


def stats_of(n: _Counts, over: dict[str, float]) -> dict:
    return {
        "documents_in": n.documents_in,
        "documents_kept": n.documents_kept,
        "dropped": dict(sorted(n.dropped.items())),
        "quarantined": n.quarantined,
        "bytes_in": n.bytes_in,
        "bytes_kept": n.bytes_kept,
        "pii_entities": dict(sorted(n.pii.items())),
        "languages": dict(sorted(n.languages.items())),
        "extractors": dict(sorted(n.extractors.items())),
        # Reasons that dropped more than max_drop_share of the domain (the drop_share check), with their share.
        "drop_share_over_limit": over,
        # Which PII analyzer read the kept documents: NER runs only on languages its model covers.
        "pii_ner": dict(sorted(n.pii_ner.items())),
    }


def drop_shares_over_limit(dropped: Counter[str] | dict[str, int], documents_in: int, limit: float) -> dict[str, float]:
    """Each drop reason whose share of the domain's documents is over `limit`, largest first."""
    if not documents_in:
        return {}
    shares = {reason: round(count / documents_in, 4) for reason, count in dropped.items() if count / documents_in > limit}
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def _write_drop_examples(output_dir: Path, over: dict[str, float], n: _Counts, redactor: PiiRedactor | None) -> None:
    """drop_examples.json: for each reason over the limit, its count, share and first dropped documents. Dropped
    documents never reached the PII step, so the examples are redacted here before anyone reads them."""
    report = {reason: {"documents": n.dropped[reason], "share": share, "examples": n.drop_examples.get(reason, [])}
              for reason, share in over.items()}
    examples = [e for r in report.values() for e in r["examples"]]
    if redactor is not None and examples:
        for e, (text, _) in zip(examples, redactor.redact_batch([e["text"] for e in examples])):
            e["text"] = text
    tmp = output_dir / (DROP_EXAMPLES_FILE + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(output_dir / DROP_EXAMPLES_FILE)


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
    for reason, share in stats["drop_share_over_limit"].items():
        lines += ["", f"**Warning:** `{reason}` dropped {share:.0%} of the domain (see the drop_share check)."]
    lines += ["", f"PII replaced: {stats['pii_entities'] or 'none'}", ""]
    for s in samples:
        snippet = s["text"][:400].replace("\n", " ")
        lines += [f"**{s['id'][:12]}** ({s['source']}, {s['pii_counts']}):", f"> {snippet}", ""]
    return "\n".join(lines)
