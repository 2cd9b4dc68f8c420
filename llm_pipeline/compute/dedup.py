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
   into a file each, sorted;
5. the driver reads the pairs in ranges of their first member (PAIRS_PER_RANGE pairs or about), each range from
   every partition's file and merged (each pair once); verify tasks load the signatures of the pairs' members from
   the two hash tasks' files each pair joins, and keep the pairs at or above the threshold; a task takes the pairs
   of several pairs of hash tasks, at least VERIFY_PAIRS, so their number follows the pairs, not the square of the
   tasks;
6. the driver joins the verified pairs (few: one per near duplicate, give or take) into clusters over their members
   only (curation.dedup.pair_clusters); the preferred member of each stays -- the same clusters, kept copies and
   drop reasons as the single-process stage;
7. write tasks write each range's kept documents (``shard-<task>-*.parquet``) and drops.

The driver reads the columns from the tasks' files one at a time, for the step that needs them (the order of
preference, the exact groups), and holds per document the order of preference (4 bytes) and the decision (one
byte), and while a step runs a sort's key and order or a column (~20 bytes per document at the peak), never a
signature, a candidate pair per document or a Python object per document. The decisions run with glibc's mmap
threshold fixed (llm_pipeline.memory.large_frees_returned): each step's freed arrays leave the resident set at once.
With ``scope: global`` the cross-domain query and the index read the survivors' keys and signatures from the hash
tasks' files, one band or block at a time, as the single-process stage reads its own. Semantic dedup, when on,
embeds in the driver as the single-process stage does.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llm_pipeline.compute.executor import executor_for
from llm_pipeline.compute.plan import TASK_DIR, Task, iter_task_batches, shard_tasks
from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.dedup import MinHasher, candidate_pair_arrays, pair_clusters, similar
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
PAIRS_PER_RANGE = 65_536  # candidate pairs the driver holds at once (~100 bytes each with their task numbers)
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
    into ``pairs<partition>.bin`` as sorted int64 codes ``i * n + j``; returns how many."""
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
    flat.tofile(_scratch(out_dir) / f"pairs{partition:04d}.bin")  # raw int64: the driver reads ranges of it
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

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(rows)
        dcfg = self.cfg.deduped_shards
        starts, parts = self.spilled.starts, self.spilled.parts
        rank_of = np.full(len(self.spilled), -1, dtype=np.int32 if n < 2**31 else np.int64)
        for lo in range(0, n, 1 << 16):  # each row's place in `rows` (no second column of n for the right side)
            rank_of[rows[lo: lo + (1 << 16)]] = np.arange(lo, min(n, lo + (1 << 16)))
        # At most KEYS_PER_PARTITION keys a bucket task (at least one task per worker): a bucket task's memory is
        # bounded whatever the corpus size, and the shuffle writes one file per hash task.
        partitions = max(1, self.cfg.compute.workers, -(-n * dcfg.banding[0] // KEYS_PER_PARTITION))
        label = f"deduped_shards[{self.domain}]"
        items = [(p, rank_of[starts[k]: starts[k + 1]]) for k, p in enumerate(parts)]
        del rank_of
        self.ex.map(shuffle_task, items, self.out_dir, n, partitions, dcfg.banding[0], label=f"{label} shuffle tasks")
        del items
        names = [p.name for p in parts]
        counts = self.ex.map(bucket_task, list(range(partitions)), self.out_dir, names, n, dcfg.banding[0],
                             label=f"{label} bucket tasks")
        # The pairs in ranges of their first member (each partition's file is sorted by i * n + j): one range's pairs
        # are merged across the partitions' files (a pair that shares several bands can come from several, once per
        # band key) and verified before the next range is read. The driver holds one range's pairs (PAIRS_PER_RANGE
        # or about) and the verified ones, never every candidate pair.
        paths = [_scratch(self.out_dir) / f"pairs{p:04d}.bin" for p in range(partitions)]
        ranges = max(1, -(-sum(counts) // PAIRS_PER_RANGE))
        bounds = [n * (n * r // ranges) for r in range(ranges + 1)]  # codes from i = n * r // ranges on
        cuts = [_cuts(path, count, bounds) for path, count in zip(paths, counts)]
        verified = [np.zeros(0, dtype=np.int64)]
        for r in range(ranges):
            flat = np.unique(np.concatenate([np.zeros(0, np.int64)] + [
                np.fromfile(path, dtype=np.int64, count=int(c[r + 1] - c[r]), offset=int(c[r]) * 8)
                for path, c in zip(paths, cuts) if c[r + 1] > c[r]]))
            where = f" (pairs {r + 1} of {ranges})" if ranges > 1 else ""
            verified.append(flat[self._verify(flat, rows, f"{label} verify tasks{where}")])
            del flat
        for path in paths:
            path.unlink()
        ok = np.concatenate(verified)  # sorted and unique: the ranges are disjoint and in order
        return pair_clusters(ok // max(n, 1), ok % max(n, 1))

    def _verify(self, flat: np.ndarray, rows: np.ndarray, label: str) -> np.ndarray:
        """Which of the candidate pairs (codes i * n + j of positions in `rows`) are near duplicates, by verify tasks
        grouped by the pair of hash tasks their members come from."""
        n, parts, dcfg = len(rows), self.spilled.parts, self.cfg.deduped_shards
        ti, li = self.spilled.where(rows[flat // max(n, 1)])
        tj, lj = self.spilled.where(rows[flat % max(n, 1)])
        group = ti * len(parts) + tj
        del ti, tj
        order = np.argsort(group, kind="stable")
        keys, first = np.unique(group[order], return_index=True)
        del group
        bounds = np.append(first, len(order))
        sel = [order[bounds[k]: bounds[k + 1]] for k in range(len(keys))]
        checks = [(parts[int(g) // len(parts)], parts[int(g) % len(parts)], li[at], lj[at]) for g, at in zip(keys, sel)]
        batches = verify_batches([len(at) for at in sel])
        verdicts = self.ex.map(verify_task, [checks[b.start: b.stop] for b in batches], dcfg.num_perm, dcfg.threshold,
                               label=label)
        ok = np.zeros(len(flat), dtype=bool)
        for b, verdict in zip(batches, verdicts):
            ok[np.concatenate([sel[k] for k in b])] = verdict  # a batch holds one group at least
        return ok


def _cuts(path: Path, count: int, bounds: list[int]) -> np.ndarray:
    """Where each bound falls in a sorted pairs file; the mapping is dropped at once (it touched a few pages)."""
    if count == 0:
        return np.zeros(len(bounds), dtype=np.int64)
    codes = np.memmap(path, dtype=np.int64, mode="r", shape=(count,))
    cuts = np.searchsorted(codes, bounds)
    del codes
    return cuts


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
