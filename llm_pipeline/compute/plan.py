"""The cut of a domain's input into tasks: deterministic, so a re-run, a retry or another engine sees the same tasks.

A task is one file, or a range of rows of one Parquet file when the file holds more than ``compute.task_rows``
rows. Tasks are numbered in input order and each writes shards named after its number (``shard-t00003-00000``), so
the sorted shard names of an output read back in exactly the order a single process would have written them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from llm_pipeline.io import shard_files

TASK_DIR = ".tasks"  # per-task scratch inside an output folder (dot-named: never read as a shard)


@dataclass(frozen=True)
class Task:
    index: int
    path: str  # the file the task reads
    start: int = 0  # first row
    stop: int | None = None  # one past the last row; None: to the end of the file

    @property
    def name(self) -> str:
        return f"t{self.index:05d}"

    @property
    def shard_prefix(self) -> str:
        return f"shard-{self.name}"

    @property
    def key(self) -> str:
        """What the task reads, independent of its number: names its result cache."""
        stop = "end" if self.stop is None else self.stop
        return f"{Path(self.path).name}@{self.start}-{stop}"


def row_ranges(rows: int, task_rows: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `task_rows` rows covering `rows` rows (one empty range for an empty file)."""
    if rows == 0:
        return [(0, 0)]
    return [(lo, min(lo + task_rows, rows)) for lo in range(0, rows, task_rows)]


def shard_tasks(folder: Path, task_rows: int) -> list[Task]:
    """Tasks over the Parquet shards of a stage output, in read order, large files cut by rows."""
    tasks: list[Task] = []
    for path in shard_files(folder):
        rows = pq.ParquetFile(path).metadata.num_rows
        for lo, hi in row_ranges(rows, task_rows):
            tasks.append(Task(len(tasks), str(path), lo, hi))
    return tasks


def iter_task_batches(task: Task, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[list[dict]]:
    """The task's rows as record batches, reading only the row groups that overlap its range."""
    pf = pq.ParquetFile(task.path)
    stop = pf.metadata.num_rows if task.stop is None else task.stop
    first = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        lo, hi = max(task.start, first), min(stop, first + n)
        if lo < hi:
            table = pf.read_row_group(g, columns=columns).slice(lo - first, hi - lo)
            for batch in table.to_batches(max_chunksize=batch_size):
                yield batch.to_pylist()
        first += n
        if first >= stop:
            break
