"""Stream a domain's documents from its configured sources: local files and folders, or a Hugging Face dataset.

    for item in read_domain(cfg, "legal"):
        if isinstance(item, Quarantined): ...   # bad input, with a named reason
        else: ...                               # a document record (see `document`)

Local sources are walked lazily (one file open at a time, records streamed where the format allows), in sorted
order so ids and shards come out the same on every run. Nothing bad is fatal and nothing is dropped silently: a
missing path, a broken symlink, an undecodable file, a malformed row all become `Quarantined` items. Memory stays
bounded: a document over the source's `max_document_bytes` is quarantined (`document_too_large`) without being read
whole, and no path outside the config's allowed roots is read (`path_outside_root`, see llm_pipeline.security).
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from llm_pipeline.config import DomainConfig, PipelineConfig, SourceConfig
from llm_pipeline.curation.formats import (
    PARSERS, RECORD_FORMATS, WHOLE_FILE_FORMATS, Bad, Text, field_text, parse_jsonl, parse_parquet, too_large,
)
from llm_pipeline.security import OUTSIDE_ROOT, PathOutsideRoot, allowed_roots, is_inside, looks_like_path, outside_detail

# SourceConfig's default, for callers that read a single file without a config.
DEFAULT_MAX_BYTES = SourceConfig.model_fields["max_document_bytes"].default


@dataclass(frozen=True)
class Quarantined:
    """Input that could not become a document; `nbytes` is what it weighed on disk, where known (for accounting)."""

    source: str
    reason: str
    detail: str
    nbytes: int = 0

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason, "detail": self.detail}


def doc_id(text: str) -> str:
    """A stable content id: the same text gets the same id in every domain and every run."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def document(text: str, *, domain: str, source: str, licence: str, fmt: str,
             max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any] | Quarantined:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from a "\ud800" escape in JSON
        return Quarantined(source, "decode_error", f"text is not encodable as UTF-8: {exc.reason}")
    if len(data) > max_bytes:  # a Parquet cell or a dataset row arrives whole; everything after this stays small
        bad = too_large("", len(data), max_bytes)
        return Quarantined(source, bad.reason, bad.detail, len(data))
    return {"id": doc_id(text), "domain": domain, "source": source, "text": text,
            "licence": licence, "language": "", "format": fmt, "bytes": len(data)}


def read_domain(cfg: PipelineConfig, domain: str) -> Iterator[dict[str, Any] | Quarantined]:
    dcfg: DomainConfig = cfg.domains[domain]
    for src in dcfg.sources:
        yield from read_source(cfg, domain, src, licence=src.licence or dcfg.licence)


def read_source(cfg: PipelineConfig, domain: str, src: SourceConfig, licence: str) -> Iterator[dict[str, Any] | Quarantined]:
    items = _hf_items(cfg, src) if src.hf_dataset else _path_items(cfg, src)
    kept = 0
    for item in items:
        if not isinstance(item, Quarantined):
            source, fmt, text = item
            item = document(text, domain=domain, source=source, licence=licence, fmt=fmt, max_bytes=src.max_document_bytes)
            if not isinstance(item, Quarantined):
                kept += 1
        yield item
        if src.max_documents is not None and kept >= src.max_documents:
            return  # the cap is a choice in the config, not a drop: later files are simply not read


# ---------------------------------------------------------------- local files
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over relative POSIX paths: `**/` spans folders (also none), `*` and `?` stay inside one name."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def shown_path(cfg: PipelineConfig, path: Path) -> str:
    """Relative to the config's root when inside it (`data/sample/legal/x.html`), else absolute."""
    try:
        return path.relative_to(cfg.root).as_posix()
    except ValueError:
        return path.as_posix()


def iter_files(root: Path, pattern: str, shown: str, roots: list[Path] | None = None) -> Iterator[Path | Quarantined]:
    """Regular files under `root` matching `pattern`, sorted, following symlinks but never around a loop, and
    (when `roots` is given) never to a folder or file that resolves outside those roots."""
    regex = glob_regex(pattern)
    walk_errors: list[OSError] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=walk_errors.append):
        while walk_errors:
            err = walk_errors.pop(0)
            where = _rel(shown, root, Path(err.filename or dirpath))
            yield Quarantined(where, "unreadable", f"cannot list folder: {err.strerror}")
        here = Path(dirpath)
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            looped = any(os.path.realpath(p) == real for p in list(here.parents)[: len(here.relative_to(root).parts)])
            yield Quarantined(_rel(shown, root, here), "symlink_loop" if looped else "duplicate_folder_link",
                              f"links to {real}, which is already being read")
            continue
        seen.add(real)
        if roots is not None and not is_inside(real, roots):  # a folder link out of the corpus: not one file of it
            dirnames.clear()
            yield Quarantined(_rel(shown, root, here), OUTSIDE_ROOT, outside_detail(here, roots))
            continue
        dirnames.sort()
        if roots is not None:  # pruned before os.walk lists them: a folder link out of the corpus is never listed
            for name in [d for d in dirnames if not is_inside(here / d, roots)]:
                dirnames.remove(name)
                yield Quarantined(_rel(shown, root, here / name), OUTSIDE_ROOT, outside_detail(here / name, roots))
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if not regex.match(rel):
                continue
            try:
                st = path.stat()
            except OSError as exc:
                reason = "broken_symlink" if path.is_symlink() else "vanished" if isinstance(exc, FileNotFoundError) else "unreadable"
                yield Quarantined(_rel(shown, root, path), reason, exc.strerror or str(exc))
                continue
            if not stat.S_ISREG(st.st_mode):
                yield Quarantined(_rel(shown, root, path), "not_a_file", "not a regular file (a pipe, socket or device)")
                continue
            if roots is not None and not is_inside(path, roots):
                yield Quarantined(_rel(shown, root, path), OUTSIDE_ROOT, outside_detail(path, roots), st.st_size)
                continue
            yield path
    while walk_errors:  # an error on the root itself arrives after the last folder
        err = walk_errors.pop(0)
        yield Quarantined(shown, "unreadable", f"cannot list folder: {err.strerror}")


def _rel(shown: str, root: Path, path: Path) -> str:
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
    return shown if rel == "." else f"{shown}/{rel}"


def file_format(name: str) -> tuple[str | None, bool]:
    """(`format`, gzipped?) from a file name; format None when we have no reader for it."""
    lower = name.lower()
    gz = lower.endswith(".gz")
    if gz:
        lower = lower[:-3]
    suffix = os.path.splitext(lower)[1]
    return WHOLE_FILE_FORMATS.get(suffix) or RECORD_FORMATS.get(suffix), gz


def _path_items(cfg: PipelineConfig, src: SourceConfig) -> Iterator[tuple[str, str, str] | Quarantined]:
    root = cfg.resolve(src.path)
    shown = shown_path(cfg, root)
    roots = allowed_roots(cfg)
    if not is_inside(root, roots):  # checked first: nothing outside the roots is even probed for existence
        yield Quarantined(shown, OUTSIDE_ROOT, outside_detail(root, roots))
        return
    if not root.exists():
        if root.is_symlink():
            yield Quarantined(shown, "broken_symlink", f"the source path links to {os.readlink(root)}, which does not exist")
        else:
            yield Quarantined(shown, "path_not_found", f"no file or folder at {root}")
        return
    files = [root] if root.is_file() else iter_files(root, src.glob, shown, roots)
    matched = 0
    for entry in files:
        if isinstance(entry, Quarantined):
            yield entry
            continue
        matched += 1
        yield from read_file(entry, shown if entry == root else _rel(shown, root, entry), src.text_field, src.max_document_bytes)
    if matched == 0 and not root.is_file():
        yield Quarantined(shown, "no_files", f"the glob {src.glob!r} matched no file under {root}")


def read_file(path: Path, source: str, text_field: str, max_bytes: int = DEFAULT_MAX_BYTES,
              part: tuple[int, int, int] | None = None) -> Iterator[tuple[str, str, str] | Quarantined]:
    """Every document of one file as (source, format, text), or quarantine items; never raises for bad input.
    `part` reads a share of a large file (compute.raw): for JSON Lines (start byte, stop byte, lines before), for
    Parquet (first row group, stop row group, 0)."""
    fmt, gz = file_format(path.name)
    size = _size(path)
    if fmt is None:
        yield Quarantined(source, "unsupported_format", f"no reader for {path.suffix or 'files without a suffix'}", size)
        return
    if not gz and size > max_bytes and (fmt in WHOLE_FILE_FORMATS.values() or fmt == "json"):
        bad = too_large("", size, max_bytes)  # read whole by its parser: refused from its size on disk alone
        yield Quarantined(source, bad.reason, bad.detail, size)
        return

    def open_binary():
        return gzip.open(path, "rb") if gz else open(path, "rb")

    if fmt == "parquet" and not gz:
        items = parse_parquet(path, text_field, max_bytes, row_groups=part[:2] if part else None)
    elif part is not None:  # compute.raw splits only uncompressed JSON Lines files besides Parquet
        items = parse_jsonl(open_binary, text_field, max_bytes, part)
    else:
        items = PARSERS[fmt](open_binary, text_field, max_bytes)
    count = 0
    try:
        for item in items:
            count += 1
            if isinstance(item, Text):
                yield (source + item.locator, fmt, item.text)
            else:
                nbytes = item.nbytes or (0 if item.locator else size)  # a whole-file problem weighs the whole file
                yield Quarantined(source + item.locator, item.reason, item.detail, nbytes)
    except EOFError as exc:
        yield Quarantined(source, "truncated_gzip", f"{exc} (after {count} items)", size)
    except (gzip.BadGzipFile, zlib.error) as exc:
        yield Quarantined(source, "bad_gzip", str(exc), size)
    except FileNotFoundError:  # listed, then removed before it was opened
        yield Quarantined(source, "vanished", "the file was removed while the source was read", size)
    except OSError as exc:
        yield Quarantined(source, "unreadable", exc.strerror or str(exc), size)
    except Exception as exc:  # noqa: BLE001 - a parser bug on odd input must not stop the other files
        yield Quarantined(source, "unexpected_error", f"{type(exc).__name__}: {exc}"[:300], size)
    else:
        if count == 0 and (part is None or part[0] == 0):  # a later share of a file may hold only blank lines
            yield Quarantined(source, "empty_file", "no records", size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------- Hugging Face datasets (streaming)
_HF_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def _load_hf(cfg: PipelineConfig, src: SourceConfig):
    import datasets  # imported here: it takes a second, and most sources never need it

    local = cfg.resolve(src.hf_dataset)
    if (looks_like_path(src.hf_dataset) or local.exists()) and not is_inside(local, allowed_roots(cfg)):
        raise PathOutsideRoot(outside_detail(local, allowed_roots(cfg)))
    if local.is_file():
        builder = _HF_BUILDERS.get(os.path.splitext(local.name.removesuffix(".gz"))[1].lower())
        if builder is None:
            raise ValueError(f"no datasets builder for {local.name}")
        return datasets.load_dataset(builder, data_files={src.split: str(local)}, split=src.split, streaming=True)
    if local.is_dir():
        # The datasets library opens whatever the folder holds, links included: a link out of the roots refuses
        # the whole folder rather than let one file from elsewhere in.
        roots = allowed_roots(cfg)
        for entry in iter_files(local, "**/*", src.hf_dataset, roots):
            if isinstance(entry, Quarantined) and entry.reason == OUTSIDE_ROOT:
                raise PathOutsideRoot(f"{entry.source}: {entry.detail}")
    if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
        # A `save_to_disk` folder cannot be streamed by load_dataset; load_from_disk memory-maps it instead.
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[src.split]
        return ds.to_iterable_dataset()
    target = str(local) if local.is_dir() else src.hf_dataset
    return datasets.load_dataset(target, name=src.hf_config, split=src.split, streaming=True)


def _hf_items(cfg: PipelineConfig, src: SourceConfig) -> Iterator[tuple[str, str, str] | Quarantined]:
    base = f"hf://{src.hf_dataset}/{src.split}"
    try:
        ds = _load_hf(cfg, src)
    except PathOutsideRoot as exc:
        yield Quarantined(base, OUTSIDE_ROOT, str(exc)[:500])
        return
    except Exception as exc:  # noqa: BLE001 - offline hubs, missing splits, bad files: all reported, none fatal
        yield Quarantined(base, "hf_load_error", f"{type(exc).__name__}: {exc}"[:500])
        return
    index = -1
    try:
        for index, row in enumerate(ds):
            item = field_text(row, src.text_field, f"#{index}", 0)
            if isinstance(item, Bad):
                yield Quarantined(base + item.locator, item.reason, item.detail)
            else:
                yield (base + item.locator, "hf", item.text)
    except Exception as exc:  # noqa: BLE001
        yield Quarantined(f"{base}#{index + 1}", "hf_read_error", f"{type(exc).__name__}: {exc}; the rest is skipped"[:500])
