"""deduped_shards as tasks: the stage's own passes and decisions (stages.deduped_shards), with the signatures never
gathered in one process.

1. hash tasks, one per range of cleaned_corpus rows: exact hashes, MinHash signatures and LSH band keys; the
   fixed-width columns (id, source, length, hash; curation.dedup_columns), signatures and keys go to the task's
   scratch files (curation.dedup_spill), only their names and row counts come back;
2. the driver orders the rows by preference (``keep``) and drops exact duplicates, as the single-process stage;
3. shuffle: each hash task's band keys of the remaining rows go to the partition of their key, so every member of an
   LSH bucket meets in one task; a hash task writes one file, its entries grouped by partition, and the offsets of
   the groups (not a file per partition: with a file per task and partition, 1,000 tasks made a million files);
4. bucket tasks, one per partition (enough partitions that each holds at most KEYS_PER_PARTITION band keys: a
   bucket task's memory does not grow with the corpus, and their number grows with the keys, not with the square of
   the tasks), read their group from every hash task's file through a memory map, list the candidate pairs of their
   buckets exactly as the single-process stage does (curation.dedup.candidate_pair_arrays over a part of the rows)
   into a file each, which the driver merges one at a time (each pair once);
5. verify tasks load the signatures of the pairs' members from the two hash tasks' files each pair joins, and keep
   the pairs at or above the threshold; a task takes the pairs of several pairs of hash tasks, at least
   VERIFY_PAIRS, so their number follows the pairs, not the square of the tasks;
6. the driver joins the verified pairs (few: one per near duplicate, give or take) into clusters; the preferred
   member of each stays -- the same clusters, kept copies and drop reasons as the single-process stage;
7. write tasks write each range's kept documents (``shard-<task>-*.parquet``) and drops.

The driver reads the columns from the tasks' files one at a time, for the step that needs them (the order of
preference, the exact groups), and holds per document the decision (one byte), never a signature or a Python object
per document. With ``scope: global`` the cross-domain
query and the index read the survivors' keys and signatures from the hash tasks' files, one band or block at a time,
as the single-process stage reads its own. Semantic dedup, when on, embeds in the driver as the single-process stage
does.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llm_pipeline.compute.executor import executor_for
from llm_pipeline.compute.plan import TASK_DIR, Task, iter_task_batches, shard_tasks
from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.dedup import MinHasher, UnionFind, candidate_pair_arrays, similar
from llm_pipeline.curation.dedup_columns import Hashed, hash_pass
from llm_pipeline.curation.dedup_spill import Part, Spilled
from llm_pipeline.stages import StageOutput
from llm_pipeline.stages import deduped_shards as stage


def _scratch(out_dir: str) -> Path:
    path = Path(out_dir) / TASK_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def hash_task(state: dict, task: Task, cfg: PipelineConfig, out_dir: str) -> Hashed:
    dcfg = cfg.deduped_shards
    key = ("minhash", dcfg.num_perm, dcfg.ngram, cfg.seed)
    if key not in state:  # the permutations, once per worker
        state[key] = MinHasher(dcfg.num_perm, dcfg.ngram, cfg.seed)
    batches = iter_task_batches(task, ["id", "source", "text"], stage.READ_BATCH)
    return hash_pass(batches, state[key], dcfg.banding if dcfg.near else None, (_scratch(out_dir), task.name))


# Band keys one bucket task reads at most (x 20 bytes: band, key and rank), but for a single LSH bucket larger than
# that. 1M documents x 20 bands = 10 partitions.
KEYS_PER_PARTITION = 2_000_000
VERIFY_PAIRS = 8_192  # candidate pairs per verify task, at least (whole groups of one pair of hash tasks)
_ENTRY = np.dtype([("band", "<i4"), ("key", "<u8"), ("rank", "<i8")])


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())  # as candidate_pair_arrays masks keys for a set of n rows


def shuffle_task(state: dict, item: tuple[Part, np.ndarray], out_dir: str, n: int, partitions: int, bands: int) -> None:
    """Band keys of one hash task's rows (`ranks`: each row's place among the n rows left after exact dedup, -1
    for a row already dropped) into one file per partition of the masked key."""
    spilled, ranks = item
    keys = spilled.keys(bands)
    live = ranks >= 0
    keys, ranks = keys[live], ranks[live]
    low = np.uint64((1 << _bits(n)) - 1)
    masked = keys & ~low  # the bucket the single-process sort puts each key in
    band = np.broadcast_to(np.arange(keys.shape[1], dtype=np.int32), keys.shape)
    rank = np.broadcast_to(ranks[:, None], keys.shape)
    part = ((masked >> np.uint64(_bits(n))) % np.uint64(partitions)).astype(np.int64).ravel()
    order = np.argsort(part, kind="stable")  # grouped by partition, each group in row order
    entries = np.empty(len(order), dtype=_ENTRY)
    entries["band"], entries["key"], entries["rank"] = band.ravel()[order], masked.ravel()[order], rank.ravel()[order]
    np.save(_scratch(out_dir) / f"{spilled.name}.shuffled.npy", entries)
    np.save(_scratch(out_dir) / f"{spilled.name}.offsets.npy", np.searchsorted(part[order], np.arange(partitions + 1)))


def bucket_task(state: dict, partition: int, out_dir: str, names: list[str], n: int, bands: int) -> int:
    """The candidate pairs (ranks i < j) of every bucket in one partition, as the single-process stage lists them,
    into ``pairs<partition>.npy`` as sorted codes ``i * n + j``; returns how many."""
    groups = []
    for name in names:
        lo, hi = np.load(_scratch(out_dir) / f"{name}.offsets.npy")[partition: partition + 2]
        if hi > lo:
            groups.append(np.array(np.load(_scratch(out_dir) / f"{name}.shuffled.npy", mmap_mode="r")[lo:hi]))
    entries = np.concatenate(groups) if groups else np.zeros(0, dtype=_ENTRY)
    del groups
    band, key, rank = entries["band"], entries["key"], entries["rank"]
    flat = np.zeros(0, dtype=np.int64)
    for b in range(bands):
        sel = band == b
        i, j = candidate_pair_arrays(key[sel][:, None], rank[sel], n)
        flat = np.union1d(flat, i * n + j)
    np.save(_scratch(out_dir) / f"pairs{partition:04d}.npy", flat)
    return len(flat)


def verify_task(state: dict, items: list[tuple[Part, Part, np.ndarray, np.ndarray]], num_perm: int, threshold: float) -> np.ndarray:
    """Of candidate pairs between two hash tasks' rows (local row numbers), those at or above the threshold; for
    several pairs of hash tasks, the verdicts one after the other."""
    out = []
    for a, b, i, j in items:
        ia, ib = np.unique(i), np.unique(j)
        out.append(similar(a.sigs(ia, num_perm), np.searchsorted(ia, i), b.sigs(ib, num_perm), np.searchsorted(ib, j), threshold))
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def verify_batches(sizes: Sequence[int], least: int | None = None) -> list[range]:
    """Consecutive groups taken together until they hold at least `least` pairs (VERIFY_PAIRS; the last batch may
    hold fewer)."""
    least = VERIFY_PAIRS if least is None else least
    out, start, held = [], 0, 0
    for k, size in enumerate(sizes):
        held += size
        if held >= least:
            out.append(range(start, k + 1))
            start, held = k + 1, 0
    if start < len(sizes):
        out.append(range(start, len(sizes)))
    return out


def write_task(state: dict, item: tuple[Task, int, stage.Decided], cfg: PipelineConfig, domain: str, out_dir: str) -> dict:
    """Pass 2 over one task's rows (stream positions from `row`), into ``train-<task>-*`` / ``eval-<task>-*``."""
    task, row, decided = item
    with (
        stage.split_writers(cfg, Path(task.path).parent, Path(out_dir), task=task.name) as writers,
        open(_scratch(out_dir) / f"{task.name}.dropped.jsonl", "w", encoding="utf-8") as dropped_f,
    ):
        return stage.write_pass(cfg, domain, iter_task_batches(task, None, stage.READ_BATCH), row, decided, writers, dropped_f)


class _Near:
    """The near-duplicate steps 3-6 over the executor."""

    def __init__(self, ex, cfg: PipelineConfig, spilled: Spilled, out_dir: Path, domain: str):
        self.ex, self.cfg, self.spilled, self.out_dir, self.domain = ex, cfg, spilled, str(out_dir), domain

    def __call__(self, rows: np.ndarray) -> UnionFind:
        n = len(rows)
        dcfg = self.cfg.deduped_shards
        starts, parts = self.spilled.starts, self.spilled.parts
        rank_of = np.full(len(self.spilled), -1, dtype=np.int64)
        rank_of[rows] = np.arange(n)
        # At most KEYS_PER_PARTITION keys a bucket task (at least one task per worker): a bucket task's memory is
        # bounded whatever the corpus size, and the shuffle writes one file per hash task.
        partitions = max(1, self.cfg.compute.workers, -(-n * dcfg.banding[0] // KEYS_PER_PARTITION))
        label = f"deduped_shards[{self.domain}]"
        items = [(p, rank_of[starts[k]: starts[k + 1]]) for k, p in enumerate(parts)]
        del rank_of
        self.ex.map(shuffle_task, items, self.out_dir, n, partitions, dcfg.banding[0], label=f"{label} shuffle tasks")
        del items
        names = [p.name for p in parts]
        self.ex.map(bucket_task, list(range(partitions)), self.out_dir, names, n, dcfg.banding[0],
                    label=f"{label} bucket tasks")
        # A pair that shares several bands can come from several partitions (one per band key): merged here one
        # partition's file at a time, so the driver holds each pair once, as codes i * n + j in (i, j) order.
        flat = np.zeros(0, dtype=np.int64)
        for p in range(partitions):
            path = _scratch(self.out_dir) / f"pairs{p:04d}.npy"
            flat = np.union1d(flat, np.load(path))
            path.unlink()
        i, j = flat // max(n, 1), flat % max(n, 1)
        del flat
        ti, li = self.spilled.where(rows[i])
        tj, lj = self.spilled.where(rows[j])
        # Grouped by the pair of hash tasks their members come from: one verify task per group.
        group = ti * len(parts) + tj
        order = np.argsort(group, kind="stable")
        keys, first = np.unique(group[order], return_index=True)
        bounds = np.append(first, len(order))
        del group, ti, tj
        sel = [order[bounds[k]: bounds[k + 1]] for k in range(len(keys))]
        checks = [(parts[int(g) // len(parts)], parts[int(g) % len(parts)], li[at], lj[at]) for g, at in zip(keys, sel)]
        batches = verify_batches([len(at) for at in sel])
        verdicts = self.ex.map(verify_task, [checks[b.start: b.stop] for b in batches], dcfg.num_perm, dcfg.threshold,
                               label=f"{label} verify tasks")
        del checks
        ok = np.zeros(len(i), dtype=bool)
        for b, verdict in zip(batches, verdicts):
            ok[np.concatenate([sel[k] for k in b])] = verdict  # a batch holds one group at least
        uf = UnionFind(n)
        for a, b in zip(i[ok].tolist(), j[ok].tolist()):  # the single-process order: sorted (i, j)
            uf.union(a, b)
        return uf


class _WriteItems(Sequence):
    """The write tasks' items, each built when the executor takes it: a task carries its own rows' decisions and
    kept ids, and the driver never holds every task's at once (a Python string per drop, ~25 MB at 100,000 drops)."""

    def __init__(self, tasks: list[Task], starts: np.ndarray, decided: stage.Decided):
        self.tasks, self.starts, self.decided = tasks, starts, decided

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, k: int) -> tuple[Task, int, stage.Decided]:
        if not 0 <= k < len(self.tasks):
            raise IndexError(k)
        lo, hi = int(self.starts[k]), int(self.starts[k + 1])
        return self.tasks[k], lo, self.decided.rows(lo, hi)


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str, embedder, executor=None) -> StageOutput:
    src = inputs["cleaned_corpus"]
    tasks = shard_tasks(src, cfg.compute.task_rows)
    with executor or executor_for(cfg) as ex:
        parts = ex.map(hash_task, tasks, cfg, str(output_dir), label=f"deduped_shards[{domain}] hashing tasks")
        starts = np.cumsum([0] + [len(p) for p in parts])
        hashed = Hashed.concat(parts)  # the tasks' column files, joined: nothing per document comes back
        near = _Near(ex, cfg, hashed.spilled, output_dir, domain) if hashed.spilled is not None else None
        decided = stage.decide(cfg, domain, hashed, src, embedder, near=near)
        written = ex.map(write_task, _WriteItems(tasks, starts, decided), cfg, domain, str(output_dir),
                         label=f"deduped_shards[{domain}] writing tasks")
        placement = ex.placement.metadata()
    with open(output_dir / "dropped.jsonl", "wb") as dropped:
        for task in tasks:
            with open(output_dir / TASK_DIR / f"{task.name}.dropped.jsonl", "rb") as part:
                shutil.copyfileobj(part, dropped)
    out = stage.stage_output(domain, hashed, decided, written)  # reads the kept copies' ids from the task files
    shutil.rmtree(output_dir / TASK_DIR, ignore_errors=True)
    out.metadata.update(tasks=len(tasks), **placement)
    return out
