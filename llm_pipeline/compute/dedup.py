"""deduped_shards as tasks: pass 1 (hashes and MinHash signatures, the costly part) and pass 2 (writing the kept
documents) run as tasks over ranges of cleaned_corpus rows; the decisions between them are the stage's own
(stages.deduped_shards.decide) over the columns gathered from every task, so the kept set, the drop reasons and
the documents written are the single-process stage's.

The driver holds every document's id, source, length, hash and signature while it decides (about 0.6 KB per
document at 128 permutations), as the single-process stage does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from llm_pipeline.compute.executor import executor_for
from llm_pipeline.compute.plan import TASK_DIR, Task, iter_task_batches, shard_tasks
from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.dedup import MinHasher
from llm_pipeline.io import ShardWriter
from llm_pipeline.stages import StageOutput
from llm_pipeline.stages import deduped_shards as stage


def hash_task(state: dict, task: Task, cfg: PipelineConfig) -> stage.Hashed:
    dcfg = cfg.deduped_shards
    key = ("minhash", dcfg.num_perm, dcfg.ngram, cfg.seed)
    if key not in state:  # the permutations, once per worker
        state[key] = MinHasher(dcfg.num_perm, dcfg.ngram, cfg.seed)
    batches = iter_task_batches(task, ["id", "source", "text"], stage.READ_BATCH)
    return stage.hash_pass(batches, state[key], dcfg.near, dcfg.num_perm)


def write_task(state: dict, item: tuple[Task, int, stage.Decided], cfg: PipelineConfig, domain: str, out_dir: str) -> dict:
    """Pass 2 over one task's rows (stream positions from `row`), into ``shard-<task>-*.parquet``."""
    task, row, decided = item
    scratch = Path(out_dir) / TASK_DIR
    scratch.mkdir(parents=True, exist_ok=True)
    with (
        ShardWriter(out_dir, prefix=task.shard_prefix, max_rows=cfg.deduped_shards.shard_rows) as writer,
        open(scratch / f"{task.name}.dropped.jsonl", "w", encoding="utf-8") as dropped_f,
    ):
        return stage.write_pass(cfg, domain, iter_task_batches(task, None, stage.READ_BATCH), row, decided, writer, dropped_f)


def _rows_of(decided: stage.Decided, lo: int, hi: int) -> stage.Decided:
    """The decisions about rows [lo, hi) only: what a write task needs to be sent."""
    reason = {i: r for i, r in decided.reason.items() if lo <= i < hi}
    kept_as = {i: decided.kept_as[i] for i in reason}
    return stage.Decided(reason, kept_as, decided.pair, decided.used, decided.missing)


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str, embedder, executor=None) -> StageOutput:
    src = inputs["cleaned_corpus"]
    tasks = shard_tasks(src, cfg.compute.task_rows)
    with executor or executor_for(cfg) as ex:
        parts = ex.map(hash_task, tasks, cfg, label=f"deduped_shards[{domain}] hashing tasks")
        hashed = stage.Hashed.concat(parts) if parts else stage.hash_pass([], None, False, 0)
        decided = stage.decide(cfg, domain, hashed, src, embedder)
        starts = [0]
        for p in parts:
            starts.append(starts[-1] + len(p.ids))
        del parts
        # Each task carries its own rows' decisions, not the whole domain's.
        items = [(task, starts[k], _rows_of(decided, starts[k], starts[k + 1])) for k, task in enumerate(tasks)]
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
