"""raw_corpus as tasks: one task per source file, and a large file cut into several (a Hugging Face source, or one
capped by ``max_documents``, is one task: its cap counts across files). The listing (folders walked, paths refused
before they are opened) happens in the driver, in the same order as the single-process reader, so the output and its
quarantine list come out in the same order under every engine.

A file is cut by ``compute.task_rows``, always at the same places for the same bytes:
  - uncompressed JSON Lines: the driver reads the file once, counting lines, and cuts it every ``task_rows`` lines
    (formats.line_cuts); a task reads the lines that start in its byte range, numbered as in the whole file, so the
    documents, their ``source`` (``file#L<n>``) and the quarantine items are those of one reader over the file;
  - Parquet: consecutive row groups up to ``task_rows`` rows per task (at least one group; rows are numbered from
    the file's first row);
  - everything else (CSV, whose quoted fields may hold newlines; gzip, which cannot be entered mid-stream; UTF-16
    text; whole-file formats) stays one task per file.
A change to one file changes only its tasks' cuts from the changed line on; the other files' tasks, and the shards
they write, stay the same.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from llm_pipeline.compute.executor import executor_for
from llm_pipeline.compute.plan import TASK_DIR
from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.formats import SNIFF_BYTES, line_cuts, line_encoding
from llm_pipeline.curation.readers import Quarantined, document, file_format, iter_files, read_file, read_source, shown_path
from llm_pipeline.io import ShardWriter
from llm_pipeline.security import OUTSIDE_ROOT, allowed_roots, is_inside, outside_detail
from llm_pipeline.stages import StageOutput, raw_corpus


# A JSON Lines file smaller than this many bytes per task_rows lines is not scanned for cuts: shorter lines than
# this hold no document worth a task of their own, and small files cost the driver no extra read.
MIN_LINE_BYTES = 64


@dataclass(frozen=True)
class RawTask:
    index: int
    source_index: int  # in the domain's sources
    path: str | None = None  # one file; None: the whole source
    shown: str = ""  # the file's name in `source` fields
    part: tuple[int, int, int] | None = None  # a share of the file (readers.read_file); None: all of it

    @property
    def name(self) -> str:
        return f"t{self.index:05d}"


def file_parts(path: Path, task_rows: int) -> list[tuple[int, int, int] | None]:
    """The shares a file is read in: [None] for the whole file, else read_file's `part` per task, in file order."""
    fmt, gz = file_format(path.name)
    try:
        size = path.stat().st_size
    except OSError:
        return [None]  # the task's reader reports what is wrong with it
    if gz or fmt not in ("jsonl", "parquet"):
        return [None]
    if fmt == "parquet":
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowException, OSError):
            return [None]
        parts, first, rows = [], 0, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if g > first and rows + n > task_rows:
                parts.append((first, g, 0))
                first, rows = g, 0
            rows += n
        parts.append((first, meta.num_row_groups, 0))
        return parts if len(parts) > 1 else [None]
    if size <= task_rows * MIN_LINE_BYTES:
        return [None]
    with open(path, "rb") as f:
        if line_encoding(f.read(SNIFF_BYTES)) is None:  # empty, binary, UTF-16: one task, which reports or reads it
            return [None]
    cuts = line_cuts(path, task_rows)
    if len(cuts) == 1:
        return [None]
    return [(start, stop, lines) for (start, lines), (stop, _) in zip(cuts, cuts[1:] + [(size, 0)])]


def plan(cfg: PipelineConfig, domain: str) -> list[RawTask | Quarantined]:
    """The domain's tasks and, in their places, what the listing itself quarantined."""
    out: list[RawTask | Quarantined] = []
    roots = allowed_roots(cfg)
    for s, src in enumerate(cfg.domains[domain].sources):
        if src.hf_dataset or src.max_documents is not None:
            out.append(RawTask(0, s))
            continue
        root = cfg.resolve(src.path)
        shown = shown_path(cfg, root)
        if not is_inside(root, roots):
            out.append(Quarantined(shown, OUTSIDE_ROOT, outside_detail(root, roots)))
            continue
        if not root.exists():  # whole-source problems: the reader words them, one task reports them
            out.append(RawTask(0, s))
            continue
        if root.is_file():
            out += [RawTask(0, s, str(root), shown, part) for part in file_parts(root, cfg.compute.task_rows)]
            continue
        matched = 0
        for entry in iter_files(root, src.glob, shown, roots):
            if isinstance(entry, Quarantined):
                out.append(entry)
            else:
                matched += 1
                name = f"{shown}/{entry.relative_to(root).as_posix()}"
                out += [RawTask(0, s, str(entry), name, part) for part in file_parts(entry, cfg.compute.task_rows)]
        if matched == 0:
            out.append(Quarantined(shown, "no_files", f"the glob {src.glob!r} matched no file under {root}"))
    k = 0
    for i, item in enumerate(out):
        if isinstance(item, RawTask):
            out[i] = RawTask(k, item.source_index, item.path, item.shown, item.part)
            k += 1
    return out


def raw_task(state: dict, task: RawTask, cfg: PipelineConfig, domain: str, out_dir: str) -> dict:
    """Read one task's documents into ``shard-<task>-*.parquet``; quarantined items into the task's scratch file."""
    src = cfg.domains[domain].sources[task.source_index]
    licence = src.licence or cfg.domains[domain].licence
    if task.path is None:
        items = read_source(cfg, domain, src, licence)
    else:
        items = (item if isinstance(item, Quarantined) else
                 document(item[2], domain=domain, source=item[0], licence=licence, fmt=item[1], max_bytes=src.max_document_bytes)
                 for item in read_file(Path(task.path), task.shown, src.text_field, src.max_document_bytes, task.part))
    n = {"kept": 0, "bytes_kept": 0, "bytes_quarantined": 0, "formats": Counter(), "reasons": Counter(), "samples": [],
         "first_quarantined": None}
    scratch = Path(out_dir) / TASK_DIR
    scratch.mkdir(parents=True, exist_ok=True)
    schema = raw_corpus.SCHEMA
    writer = ShardWriter(out_dir, prefix=f"shard-{task.name}", max_rows=raw_corpus.SHARD_ROWS, schema=schema)
    with open(scratch / f"{task.name}.quarantine.jsonl", "w", encoding="utf-8") as quarantine:
        for item in items:
            if isinstance(item, Quarantined):
                quarantine.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
                n["reasons"][item.reason] += 1
                n["first_quarantined"] = n["first_quarantined"] or item
                n["bytes_quarantined"] += item.nbytes
                continue
            writer.write({name: item[name] for name in schema.names})
            n["kept"] += 1
            n["bytes_kept"] += item["bytes"]
            n["formats"][item["format"]] += 1
            raw_corpus._keep_sample(n["samples"], item)
    n["shards"] = len(writer.close())
    return n


def run(cfg: PipelineConfig, domain: str, output_dir: Path, executor=None) -> StageOutput:
    """Every task of the domain on the configured engine; counts merged into the single-process stage's stats."""
    items = plan(cfg, domain)
    tasks = [t for t in items if isinstance(t, RawTask)]
    with executor or executor_for(cfg) as ex:
        results = ex.map(raw_task, tasks, cfg, domain, str(output_dir), label=f"raw_corpus[{domain}] tasks")
        placement = ex.placement.metadata()
    kept = bytes_kept = bytes_quarantined = 0
    formats: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    samples: list[dict] = []
    first: Quarantined | None = None
    scratch = output_dir / TASK_DIR
    by_task = iter(results)
    with open(output_dir / raw_corpus.QUARANTINE_FILE, "w", encoding="utf-8") as quarantine:
        for item in items:  # in input order: what the listing quarantined sits between the tasks around it
            if isinstance(item, Quarantined):
                quarantine.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
                reasons[item.reason] += 1
                first = first or item
                bytes_quarantined += item.nbytes
                continue
            n = next(by_task)
            with open(scratch / f"{item.name}.quarantine.jsonl", encoding="utf-8") as part:
                shutil.copyfileobj(part, quarantine)
            kept += n["kept"]
            bytes_kept += n["bytes_kept"]
            bytes_quarantined += n["bytes_quarantined"]
            formats.update(n["formats"])
            reasons.update(n["reasons"])
            first = first or n["first_quarantined"]
            for s in n["samples"]:
                raw_corpus._keep_sample(samples, s)
    shutil.rmtree(scratch, ignore_errors=True)
    shards = sorted(output_dir.glob("shard-*.parquet"))
    if kept == 0:
        raise raw_corpus.SourceError(raw_corpus.empty_domain_message(cfg, domain, reasons, first))
    return raw_corpus.stage_output(cfg, domain, kept, reasons, bytes_kept, bytes_quarantined, formats, len(shards), samples,
                                   metadata={"tasks": len(tasks), **placement})
