"""Stage `raw_corpus`: read one domain's sources into Parquet shards, quarantining what cannot be read.

    llm-pipeline stage raw_corpus --domain legal     # or: run_stage(cfg, "raw_corpus", "legal")

Output (``data/raw_corpus/<domain>/``): ``shard-*.parquet`` with ``id, domain, source, text, licence, language,
format, bytes`` (raw text: HTML keeps its markup for the cleaning stage), and ``quarantine.jsonl`` with one
``{source, reason, detail}`` object per unreadable input. This stage drops nothing that it can read, so
``documents_in == documents_kept + quarantined``. Besides unreadable input, two limits quarantine: a document over
its source's ``max_document_bytes`` (``document_too_large``, refused before it is read whole, so memory stays
bounded) and a path that resolves outside the config's allowed roots (``path_outside_root``, see
llm_pipeline.security).

Two things stop the stage instead (a `SourceError` naming the path and the reason): a configured source path that
does not exist, and a domain whose sources yield no document at all. Either is a mistake in the config or a missing
mount; an empty partition would only fail later, in a check far from its cause.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.readers import Quarantined, read_domain
from llm_pipeline.io import DOC_COLUMNS, ShardWriter
from llm_pipeline.stages import StageOutput

# Raw documents are at most a few hundred KB each; 5,000 rows keep a shard to tens of MB and a reader's batch small.
SHARD_ROWS = 5_000
QUARANTINE_FILE = "quarantine.jsonl"
PREVIEW_SAMPLES = 3


class SourceError(ValueError):
    """A domain's sources are missing or hold no document: retrying cannot help, the config or the mount must change."""

SCHEMA = pa.schema([(name, pa.string()) for name in DOC_COLUMNS] + [("format", pa.string()), ("bytes", pa.int64())])


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    if domain is None:
        raise ValueError("raw_corpus is partitioned by domain: give a domain")
    check_sources_exist(cfg, domain)
    if cfg.compute.engine != "local":  # the same reading, as one task per file on the configured engine
        from llm_pipeline.compute import raw

        return raw.run(cfg, domain, output_dir)
    kept = 0
    bytes_kept = bytes_quarantined = 0
    formats: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    samples: list[dict] = []
    first_quarantined: Quarantined | None = None
    writer = ShardWriter(output_dir, max_rows=SHARD_ROWS, schema=SCHEMA)
    with open(output_dir / QUARANTINE_FILE, "w", encoding="utf-8") as quarantine:
        for item in read_domain(cfg, domain):
            if isinstance(item, Quarantined):
                quarantine.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
                reasons[item.reason] += 1
                first_quarantined = first_quarantined or item
                bytes_quarantined += item.nbytes
                continue
            writer.write({name: item[name] for name in SCHEMA.names})
            kept += 1
            bytes_kept += item["bytes"]
            formats[item["format"]] += 1
            _keep_sample(samples, item)
    shards = writer.close()
    if kept == 0:
        raise SourceError(empty_domain_message(cfg, domain, reasons, first_quarantined))
    if not shards:
        # An empty domain still gets one (empty) shard, so readers downstream see the schema instead of nothing.
        path = output_dir / "shard-00000.parquet"
        pq.write_table(SCHEMA.empty_table(), path, compression="zstd")
        shards = [path]

    return stage_output(cfg, domain, kept, reasons, bytes_kept, bytes_quarantined, formats, len(shards), samples)


def stage_output(cfg: PipelineConfig, domain: str, kept: int, reasons: Counter, bytes_kept: int, bytes_quarantined: int,
                 formats: Counter, n_shards: int, samples: list[dict], metadata: dict | None = None) -> StageOutput:
    """Stats and preview from the counts (one pass, or the tasks' counts merged)."""
    quarantined = sum(reasons.values())
    stats = {
        "documents_in": kept + quarantined,
        "documents_kept": kept,
        "dropped": {},
        "quarantined": quarantined,
        "quarantine_reasons": dict(sorted(reasons.items())),
        "bytes_in": bytes_kept + bytes_quarantined,
        "bytes_kept": bytes_kept,
        "bytes_quarantined": bytes_quarantined,
        "formats": dict(sorted(formats.items())),
        "shards": n_shards,
    }
    return StageOutput(stats=stats, preview=preview(domain, stats, _shown_sources(cfg, samples)), metadata=metadata or {})


def _shown_sources(cfg: PipelineConfig, samples: list[dict]) -> list[dict]:
    """The samples with each source path replaced by a digest of it: a file name carries personal data as often as a
    text does ("jane_doe_discharge.txt"), and the preview ends up in Dagster's event log. raw_corpus does not load
    the PII analyzer for three names (its memory bound counts no model): cleaned_corpus writes them redacted."""
    if not samples or not cfg.cleaned_corpus.pii:
        return samples
    shown = []
    for s in samples:
        src = s["source"]
        # A record inside a file ("a.jsonl#L3") keeps its record suffix, which names no one.
        path, sep, rest = str(src).partition("#")
        p = Path(path)
        digest = hashlib.sha256(path.encode()).hexdigest()[:8]  # folders name people too ("jane_doe/notes.txt")
        shown.append({**s, "source": f"<{digest}>{p.suffix}{sep}{rest}"})
    return shown


def check_sources_exist(cfg: PipelineConfig, domain: str) -> None:
    """Every local source path of the domain exists (paths outside the allowed roots are left to the reader, which
    quarantines them without probing them)."""
    from llm_pipeline.security import allowed_roots, is_inside

    roots = allowed_roots(cfg)
    for src in cfg.domains[domain].sources:
        if src.path is None:
            continue
        path = cfg.resolve(src.path)
        if is_inside(path, roots) and not path.exists():
            what = f"a broken link to {os.readlink(path)}" if path.is_symlink() else "no such file or folder"
            raise SourceError(f"raw_corpus[{domain}]: source path {path} does not exist ({what}); fix "
                              f"domains.{domain}.sources in {cfg.config_path or 'the config'}")


def empty_domain_message(cfg: PipelineConfig, domain: str, reasons: Counter[str], first: Quarantined | None) -> str:
    where = ", ".join(str(cfg.resolve(s.path)) if s.path else f"hf_dataset {s.hf_dataset}" for s in cfg.domains[domain].sources)
    why = "nothing to read"
    if first is not None:
        counts = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        why = f"quarantined {counts}; first: {first.source}: {first.reason}, {first.detail}"
    return f"raw_corpus[{domain}]: the domain's sources hold no document ({where}; {why})"


def _keep_sample(samples: list[dict], doc: dict) -> None:
    """The first documents of distinct formats, so the preview shows the variety of what was read."""
    if len(samples) < PREVIEW_SAMPLES and all(s["format"] != doc["format"] for s in samples):
        # No text: raw documents are not yet PII-redacted, and previews end up in Dagster's metadata and logs.
        samples.append({"source": doc["source"], "format": doc["format"], "bytes": doc["bytes"]})


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#])")


def md_escape(text: str) -> str:
    """Plain text that renders as itself in markdown: one line, every markup character escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def preview(domain: str, stats: dict, samples: list[dict]) -> str:
    rows = [
        ("documents kept", stats["documents_kept"]),
        ("quarantined", stats["quarantined"]),
        ("bytes kept", stats["bytes_kept"]),
        ("shards", stats["shards"]),
    ]
    rows += [(f"format {fmt}", n) for fmt, n in stats["formats"].items()]
    rows += [(f"quarantine: {reason}", n) for reason, n in stats["quarantine_reasons"].items()]
    lines = [f"### raw_corpus: {domain}", "", "| | count |", "|---|---:|"]
    lines += [f"| {md_escape(label)} | {value:,} |" for label, value in rows]
    if samples:
        lines += ["", "**Sample sources** (text previews start at cleaned_corpus, after PII redaction)", ""]
        for s in samples:
            lines.append(f"- {md_escape(s['source'])} ({s['format']}, {s['bytes']:,} bytes)")
    return "\n".join(lines) + "\n"
