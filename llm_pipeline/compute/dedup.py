"""deduped_shards as tasks: the stage's own passes and decisions (stages.deduped_shards), with the signatures never
gathered in one process.

1. hash tasks, one per range of cleaned_corpus rows: exact hashes, MinHash signatures and LSH band keys; the
   signatures and keys go to the task's scratch files, only id, source, length and hash come back;
2. the driver orders the rows by preference (``keep``) and drops exact duplicates, as the single-process stage;
3. shuffle: each hash task's band keys of the remaining rows go to the partition of their key (``workers``
   partitions), so every member of an LSH bucket meets in one task;
4. bucket tasks, one per partition, list the candidate pairs of their buckets exactly as the single-process stage
   does (curation.dedup.candidate_pair_arrays over a part of the rows);
5. verify tasks, one per pair of hash tasks, load those two tasks' signatures and keep the pairs at or above the
   threshold;
6. the driver joins the verified pairs (few: one per near duplicate, give or take) into clusters; the preferred
   member of each stays -- the same clusters, kept copies and drop reasons as the single-process stage;
7. write tasks write each range's kept documents (``shard-<task>-*.parquet``) and drops.

The driver holds per document its id, source, length and hash (the order of preference needs them), never its
signature. With ``scope: global`` the survivors' signatures are read back for the cross-domain index (as the
single-process stage holds them). Semantic dedup, when on, embeds in the driver as the single-process stage does.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from llm_pipeline.compute.executor import executor_for
from llm_pipeline.compute.plan import TASK_DIR, Task, iter_task_batches, shard_tasks
from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.dedup import MinHasher, UnionFind, band_keys, candidate_pair_arrays, similar
from llm_pipeline.stages import StageOutput
from llm_pipeline.stages import deduped_shards as stage


def _scratch(out_dir: str) -> Path:
    path = Path(out_dir) / TASK_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def hash_task(state: dict, task: Task, cfg: PipelineConfig, out_dir: str) -> stage.Hashed:
    dcfg = cfg.deduped_shards
    key = ("minhash", dcfg.num_perm, dcfg.ngram, cfg.seed)
    if key not in state:  # the permutations, once per worker
        state[key] = MinHasher(dcfg.num_perm, dcfg.ngram, cfg.seed)
    batches = iter_task_batches(task, ["id", "source", "text"], stage.READ_BATCH)
    hashed = stage.hash_pass(batches, state[key], dcfg.near, dcfg.num_perm)
    if dcfg.near:
        keys = band_keys(hashed.sigs, *dcfg.banding)
        np.save(_scratch(out_dir) / f"{task.name}.sigs.npy", hashed.sigs)
        np.save(_scratch(out_dir) / f"{task.name}.keys.npy", keys)
        hashed.sigs = np.zeros((len(hashed.ids), 0), dtype=np.uint32)  # stays on disk, not in the driver
    return hashed


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())  # as candidate_pair_arrays masks keys for a set of n rows


def shuffle_task(state: dict, item: tuple[Task, np.ndarray], out_dir: str, n: int, partitions: int) -> None:
    """Band keys of one hash task's rows (`ranks`: each row's place among the n rows left after exact dedup, -1
    for a row already dropped) into one file per partition of the masked key."""
    task, ranks = item
    keys = np.load(_scratch(out_dir) / f"{task.name}.keys.npy")
    live = ranks >= 0
    keys, ranks = keys[live], ranks[live]
    low = np.uint64((1 << _bits(n)) - 1)
    masked = keys & ~low  # the bucket the single-process sort puts each key in
    band = np.broadcast_to(np.arange(keys.shape[1], dtype=np.int32), keys.shape)
    rank = np.broadcast_to(ranks[:, None], keys.shape)
    part = ((masked >> np.uint64(_bits(n))) % np.uint64(partitions)).astype(np.int64)
    for p in range(partitions):
        sel = part == p
        np.savez(_scratch(out_dir) / f"{task.name}.part{p:04d}.npz", band=band[sel], key=masked[sel], rank=rank[sel])


def bucket_task(state: dict, partition: int, out_dir: str, names: list[str], n: int, bands: int) -> np.ndarray:
    """The candidate pairs (ranks i < j) of every bucket in one partition, as the single-process stage lists them."""
    parts = [np.load(_scratch(out_dir) / f"{name}.part{partition:04d}.npz") for name in names]
    band = np.concatenate([p["band"] for p in parts])
    key = np.concatenate([p["key"] for p in parts])
    rank = np.concatenate([p["rank"] for p in parts])
    found = [np.zeros((0, 2), dtype=np.int64)]
    for b in range(bands):
        sel = band == b
        i, j = candidate_pair_arrays(key[sel][:, None], rank[sel], n)
        found.append(np.stack([i, j], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def verify_task(state: dict, item: tuple[str, str, np.ndarray, np.ndarray], out_dir: str, threshold: float) -> np.ndarray:
    """Of candidate pairs between two hash tasks' rows (local row numbers), those at or above the threshold."""
    a, b, i, j = item
    sigs_a = np.load(_scratch(out_dir) / f"{a}.sigs.npy", mmap_mode="r")
    sigs_b = sigs_a if b == a else np.load(_scratch(out_dir) / f"{b}.sigs.npy", mmap_mode="r")
    return similar(np.asarray(sigs_a), i, np.asarray(sigs_b), j, threshold)


def write_task(state: dict, item: tuple[Task, int, stage.Decided], cfg: PipelineConfig, domain: str, out_dir: str) -> dict:
    """Pass 2 over one task's rows (stream positions from `row`), into ``train-<task>-*`` / ``eval-<task>-*``."""
    task, row, decided = item
    with (
        stage.split_writers(cfg, Path(task.path).parent, Path(out_dir), task=task.name) as writers,
        open(_scratch(out_dir) / f"{task.name}.dropped.jsonl", "w", encoding="utf-8") as dropped_f,
    ):
        return stage.write_pass(cfg, domain, iter_task_batches(task, None, stage.READ_BATCH), row, decided, writers, dropped_f)


def _rows_of(decided: stage.Decided, lo: int, hi: int) -> stage.Decided:
    """The decisions about rows [lo, hi) only: what a write task needs to be sent."""
    reason = {i: r for i, r in decided.reason.items() if lo <= i < hi}
    kept_as = {i: decided.kept_as[i] for i in reason}
    return stage.Decided(reason, kept_as, decided.pair, decided.used, decided.missing)


class _Near:
    """The near-duplicate steps 3-6 over the executor, and the survivors' signatures for the global index."""

    def __init__(self, ex, cfg: PipelineConfig, tasks: list[Task], starts: np.ndarray, out_dir: Path, domain: str):
        self.ex, self.cfg, self.tasks, self.starts, self.out_dir, self.domain = ex, cfg, tasks, starts, str(out_dir), domain

    def _where(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hash task, row within it) of stream rows."""
        t = np.searchsorted(self.starts, rows, side="right") - 1
        return t, rows - self.starts[t]

    def __call__(self, rows: list[int]) -> UnionFind:
        n = len(rows)
        dcfg = self.cfg.deduped_shards
        rank_of = np.full(int(self.starts[-1]), -1, dtype=np.int64)
        rank_of[np.asarray(rows, dtype=np.int64)] = np.arange(n)
        partitions = max(1, self.cfg.compute.workers)
        label = f"deduped_shards[{self.domain}]"
        items = [(t, rank_of[self.starts[k]: self.starts[k + 1]]) for k, t in enumerate(self.tasks)]
        self.ex.map(shuffle_task, items, self.out_dir, n, partitions, label=f"{label} shuffle tasks")
        names = [t.name for t in self.tasks]
        pairs = self.ex.map(bucket_task, list(range(partitions)), self.out_dir, names, n, dcfg.banding[0],
                            label=f"{label} bucket tasks")
        pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
        rows_arr = np.asarray(rows, dtype=np.int64)
        ti, li = self._where(rows_arr[pairs[:, 0]])
        tj, lj = self._where(rows_arr[pairs[:, 1]])
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for k, key in enumerate(zip(ti.tolist(), tj.tolist())):
            groups[key].append(k)
        order = sorted(groups)
        checks = [(names[a], names[b], li[groups[(a, b)]], lj[groups[(a, b)]]) for a, b in order]
        verdicts = self.ex.map(verify_task, checks, self.out_dir, dcfg.threshold, label=f"{label} verify tasks")
        uf = UnionFind(n)
        ok = np.zeros(len(pairs), dtype=bool)
        for (a, b), verdict in zip(order, verdicts):
            ok[groups[(a, b)]] = verdict
        for i, j in sorted(map(tuple, pairs[ok].tolist())):  # the single-process order: sorted (i, j)
            uf.union(i, j)
        return uf

    def columns(self, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Signatures and band keys of `rows`, read back from the hash tasks' files (for the global index)."""
        dcfg = self.cfg.deduped_shards
        sigs = np.zeros((len(rows), dcfg.num_perm if dcfg.near else 0), dtype=np.uint32)
        keys = np.zeros((len(rows), dcfg.banding[0] if dcfg.near else 0), dtype=np.uint64)
        if not dcfg.near or not rows:
            return sigs, keys
        t, local = self._where(np.asarray(rows, dtype=np.int64))
        scratch = Path(self.out_dir) / TASK_DIR
        for k in np.unique(t).tolist():
            sel = np.flatnonzero(t == k)
            name = self.tasks[k].name
            sigs[sel] = np.load(scratch / f"{name}.sigs.npy", mmap_mode="r")[local[sel]]
            keys[sel] = np.load(scratch / f"{name}.keys.npy", mmap_mode="r")[local[sel]]
        return sigs, keys


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str, embedder, executor=None) -> StageOutput:
    src = inputs["cleaned_corpus"]
    tasks = shard_tasks(src, cfg.compute.task_rows)
    with executor or executor_for(cfg) as ex:
        parts = ex.map(hash_task, tasks, cfg, str(output_dir), label=f"deduped_shards[{domain}] hashing tasks")
        hashed = stage.Hashed.concat(parts) if parts else stage.hash_pass([], None, False, 0)
        starts = np.cumsum([0] + [len(p.ids) for p in parts])
        del parts
        near = _Near(ex, cfg, tasks, starts, output_dir, domain)
        decided = stage.decide(cfg, domain, hashed, src, embedder, near=near, columns=near.columns)
        # Each task carries its own rows' decisions, not the whole domain's.
        items = [(task, int(starts[k]), _rows_of(decided, starts[k], starts[k + 1])) for k, task in enumerate(tasks)]
        written = ex.map(write_task, items, cfg, domain, str(output_dir), label=f"deduped_shards[{domain}] writing tasks")
        placement = ex.placement.metadata()
    with open(output_dir / "dropped.jsonl", "wb") as dropped:
        for task in tasks:
            with open(output_dir / TASK_DIR / f"{task.name}.dropped.jsonl", "rb") as part:
                shutil.copyfileobj(part, dropped)
    shutil.rmtree(output_dir / TASK_DIR, ignore_errors=True)
    out = stage.stage_output(domain, hashed, decided, written)
    out.metadata.update(tasks=len(tasks), **placement)
    return out
