"""Files on disk: atomic output folders, Parquet document shards, JSON, and DVC-compatible content hashes.

Every stage writes into a temporary sibling folder and renames it into place when done, so a crash never leaves a
half-written output that looks finished. Document shards are Parquet files of bounded size.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
STATS = "stats.json"
# Wall-clock figures of a run (seconds, throughput, peak memory) live beside the output, in a file DVC ignores
# (.dvcignore) and `dvc_hash` skips: they change with the machine and its load, and inside the hashed output they
# would change the output's hash on every re-run and mark everything downstream modified.
TIMINGS = ".timings.json"
NOT_HASHED = frozenset({TIMINGS})
# JSON files a stage may leave in its output whose wall-clock figures the runner moves into TIMINGS.
TIMED_FILES = (STATS, "training_summary.json", "training_log.json")
# Settings that are in seconds but are chosen, not measured: they stay in the hashed output.
_CHOSEN_SECONDS = frozenset({"budget_seconds", "max_train_seconds"})
_MEASURED = frozenset({"seconds", "peak_rss_mb", "timings_s", "cpu_threads", "perplexity_cache"})

# The columns every document shard carries; stages may add more after these.
DOC_COLUMNS = ("id", "domain", "source", "text", "licence", "language")


class NotAnOutput(RuntimeError):
    """The path a stage would replace holds something that is not an earlier output of that stage."""


class OutputWriteError(OSError):
    """An output could not be written: a full disk, a quota or a file-size limit. Its message is the one line a person
    needs (what, where, why, how much room is left); the partial files are gone by the time it is raised."""


# Failures that mean "no room to write": the disk, the user's quota, or a file-size limit (ulimit -f).
_NO_ROOM = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large (a file-size limit)"}
# The same failures as the Rust and C++ writers report them (safetensors, tokenizers, torch's zip writer): an
# exception of their own type whose text carries the OS error, so only the text tells.
_NO_ROOM_TEXT = {"no space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC,
                 "disk quota exceeded": errno.EDQUOT, "os error 122": errno.EDQUOT,
                 "file too large": errno.EFBIG, "os error 27": errno.EFBIG}


def no_room_reason(exc: BaseException | None) -> str | None:
    """Why `exc` (or an exception it was raised from) means there was no room to write; None when it does not."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            return _NO_ROOM[exc.errno]
        text = str(exc).lower()
        for needle, code in _NO_ROOM_TEXT.items():
            if needle in text:
                return _NO_ROOM[code]
        exc = exc.__cause__ or exc.__context__
    return None


def free_space(path: Path) -> str:
    """The free space of the file system holding `path` (or its nearest existing parent), as people read it."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown"
    for unit in ("bytes", "KB", "MB", "GB"):
        if free < 1024 or unit == "GB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def check_replaceable(final: Path, stage: str | None = None) -> None:
    """Raise NotAnOutput unless `final` is absent, an empty folder, or an earlier output (its manifest names `stage`).

    Replacing is deleting: a folder the pipeline did not write (a source corpus placed under data/, a user's own
    files) must never be renamed aside and removed because a config or a stage name happens to point at it."""
    final = Path(final)
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink() or not final.is_dir():
        raise NotAnOutput(f"{final}: refusing to replace it: it is not a folder this pipeline wrote (move it away first)")
    manifest = final / MANIFEST
    if not manifest.is_file():
        if not any(final.iterdir()):
            return
        raise NotAnOutput(f"{final}: refusing to replace it: it holds files but no {MANIFEST}, so it is not an "
                          f"earlier output of this stage (move it away first)")
    if stage is not None:
        try:
            owner = read_json(manifest).get("stage")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner != stage:
            raise NotAnOutput(f"{final}: refusing to replace it: its {MANIFEST} names stage {owner!r}, not {stage!r}")


@contextlib.contextmanager
def atomic_dir(final: Path, stage: str | None = None,
               swap_guard: Callable[[], contextlib.AbstractContextManager] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; on success it replaces `final` in one rename.

    `final` is replaced only when it is an earlier output (see check_replaceable), checked before and again at the
    swap, since the run between the two may be long. `swap_guard` (e.g. a publish_lock) is held around the swap."""
    final = Path(final)
    check_replaceable(final, stage)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        with swap_guard() if swap_guard is not None else contextlib.nullcontext():
            check_replaceable(final, stage)
            old = None
            if final.exists():
                old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                if old is not None:  # put the earlier output back rather than leave no output at all
                    os.replace(old, final)
                    old = None
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale_temps(parent: Path, name: str | None = None) -> None:
    """Remove temp folders left by a crashed run (they never count as outputs).

    With `name`, only the temps of that one output (``.tmp-<name>-<hex>``): the folder beside it may be another
    domain's output, being written right now by another process, whose temp folder must not vanish under it."""
    if not parent.is_dir():
        return
    if name is None:
        prefixes: tuple[str, ...] = (".tmp-", ".old-")
    else:
        prefixes = (f".tmp-{name}-", f".old-{name}-")
    for p in parent.iterdir():
        if p.name.startswith(prefixes) and (name is None or len(p.name) == len(prefixes[0]) + 8):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _flock(lock_dir: Path, key: str, mode: int) -> int:
    import fcntl  # POSIX only, like the rest of the atomic-rename scheme

    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def output_lock(lock_dir: Path, key: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on one output while it is rebuilt.

    A second run of the same output (two Dagster runs, a `dvc repro` beside a sensor-triggered run) waits instead of
    deleting the first one's temp folder; the kernel releases the lock when its holder dies, even by SIGKILL, so a
    crashed run never leaves a lock behind."""
    import fcntl

    fd = _flock(lock_dir, key, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def read_lock(lock_dir: Path, keys: Iterable[str]) -> Iterator[None]:
    """Shared locks on the outputs a stage reads, held for its whole run (see publish_lock)."""
    import fcntl

    fds: list[int] = []
    try:
        for key in sorted(set(keys)):  # one order everywhere, so two readers never wait on each other
            fds.append(_flock(lock_dir, f"{key}.read", fcntl.LOCK_SH))
        yield
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def publish_lock(lock_dir: Path, key: str) -> Iterator[None]:
    """The exclusive side of read_lock: a stage swaps its new output in only when no stage is reading the old one,
    so a reader never sees its input replaced under it (a rebuilt upstream waits for its readers to finish)."""
    import fcntl

    fd = _flock(lock_dir, f"{key}.read", fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp beside the file
        raise


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# What one batch of records may weigh in memory (text columns, by their lengths): a read batch and a shard writer's
# buffer each stay near this whatever the documents weigh, so a stage's peak memory does not scale with
# `rows x max_document_bytes` (10,000 rows of 8 MiB would be 80 GB).
BATCH_BYTES = 32 * 1024 * 1024


def _weight(record: dict) -> int:
    return sum(len(v) for v in record.values() if isinstance(v, (str, bytes)))


class ShardWriter:
    """Write dict records to numbered Parquet shards of at most `max_rows` rows (or BATCH_BYTES of text) each."""

    def __init__(self, out_dir: Path, prefix: str = "shard", max_rows: int = 10_000, schema: pa.Schema | None = None,
                 max_bytes: int = BATCH_BYTES):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.schema = schema
        self._buffer: list[dict] = []
        self._bytes = 0
        self.files: list[Path] = []
        self.rows = 0

    def write(self, record: dict) -> None:
        self._buffer.append(record)
        self._bytes += _weight(record)
        if len(self._buffer) >= self.max_rows or self._bytes >= self.max_bytes:
            self.flush()

    def write_many(self, records: Iterable[dict]) -> None:
        for r in records:
            self.write(r)

    def flush(self) -> None:
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        if self.schema is None:
            self.schema = table.schema
        path = self.out_dir / f"{self.prefix}-{len(self.files):05d}.parquet"
        pq.write_table(table, path, compression="zstd")
        self.files.append(path)
        self.rows += len(self._buffer)
        self._buffer = []
        self._bytes = 0

    def close(self) -> list[Path]:
        self.flush()
        return self.files

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.close()


def shard_files(folder: Path) -> list[Path]:
    """The Parquet shards of a stage output (a domain folder, or all domain folders below it), in stable order."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*.parquet") if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def rows_per_batch(pf: pq.ParquetFile, columns: list[str] | None, batch_size: int, max_bytes: int = BATCH_BYTES) -> int:
    """`batch_size`, lowered so that a batch of the file's heaviest row group stays near `max_bytes` uncompressed."""
    meta = pf.metadata
    names = set(columns) if columns is not None else None
    widest = 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        if rg.num_rows == 0:
            continue
        size = sum(rg.column(j).total_uncompressed_size for j in range(rg.num_columns)
                   if names is None or rg.column(j).path_in_schema in names)
        widest = max(widest, -(-size // rg.num_rows))
    return max(1, min(batch_size, max_bytes // max(widest, 1)))


def iter_batches(folder: Path, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[list[dict]]:
    """Record batches from every shard below `folder`: at most `batch_size` rows and about BATCH_BYTES each."""
    for path in shard_files(folder):
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=rows_per_batch(pf, columns, batch_size), columns=columns):
            yield batch.to_pylist()


def iter_records(folder: Path, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[dict]:
    """Stream records from every shard below `folder`, a bounded batch at a time."""
    for batch in iter_batches(folder, columns, batch_size):
        yield from batch


# ---------------------------------------------------------------- wall-clock figures, kept out of the hashes
def is_measured(key: str) -> bool:
    """Whether a stats key holds a wall-clock measurement (or a fact of this machine) rather than a result."""
    if key in _CHOSEN_SECONDS:
        return False
    return key in _MEASURED or key.endswith(("_seconds", "_per_second", "_runtime", "_rss_mb"))


def split_measured(obj: Any) -> tuple[Any, Any]:
    """(obj without its measured keys, the measured keys alone), at any depth; lists keep their positions so the
    two halves merge back entry by entry."""
    if isinstance(obj, dict):
        kept, measured = {}, {}
        for key, value in obj.items():
            if is_measured(str(key)):
                measured[key] = value
                continue
            k, m = split_measured(value)
            kept[key] = k
            if m not in (None, {}, []) and not (isinstance(m, list) and not any(m)):
                measured[key] = m
        return kept, measured
    if isinstance(obj, list):
        parts = [split_measured(v) for v in obj]
        return [k for k, _ in parts], [m if m else {} for _, m in parts]
    return obj, None


def merge_measured(kept: Any, measured: Any) -> Any:
    if isinstance(kept, dict) and isinstance(measured, dict):
        out = dict(kept)
        for key, value in measured.items():
            out[key] = merge_measured(out[key], value) if key in out else value
        return out
    if isinstance(kept, list) and isinstance(measured, list) and len(kept) == len(measured):
        return [merge_measured(k, m) for k, m in zip(kept, measured)]
    return kept if measured is None else measured


def move_measured(folder: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Take the wall-clock figures out of the output's TIMED_FILES into TIMINGS (keyed by file name); returns them."""
    folder = Path(folder)
    timings: dict[str, Any] = dict(extra or {})
    for name in TIMED_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = read_json(path)
        except (OSError, ValueError):
            continue
        kept, measured = split_measured(data)
        if measured and (not isinstance(measured, list) or any(measured)):
            write_json(path, kept)
            timings[name] = measured
    if timings:
        write_json(folder / TIMINGS, timings)
    return timings


def read_timed(folder: Path, name: str = STATS) -> Any:
    """A JSON file of an output with its wall-clock figures put back (as the stage produced it); None if absent."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    data = read_json(path)
    timings = Path(folder) / TIMINGS
    if timings.is_file():
        try:
            data = merge_measured(data, read_json(timings).get(name))
        except (OSError, ValueError, AttributeError):
            pass
    return data


# ---------------------------------------------------------------- content hashes (the same values DVC computes)
def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dvc_hash(path: Path) -> str:
    """DVC 3's md5 for a file, or its `<md5>.dir` hash for a folder (sorted relpath/md5 list, as DVC builds it)."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    entries = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name not in NOT_HASHED:
            rel = p.relative_to(path).as_posix()
            entries.append({"md5": file_md5(p), "relpath": rel})
    entries.sort(key=lambda e: e["relpath"])
    blob = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(blob).hexdigest() + ".dir"


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
