"""cleaned_corpus as tasks: each task cleans, filters, language-checks and PII-redacts a range of raw_corpus rows
with the stage's own code (stages.cleaned_corpus._process) and writes ``shard-<task>-*.parquet``; the driver merges
the counts, the drop list and the quarantine list in task order, so the output reads back as the single-process
stage writes it.

Each worker builds the filters (language-id model) and the PII redactor (spaCy) on its first task and keeps them
for the rest. Each task keeps its own result cache, named after what it reads
(``.cache/cleaned_corpus/<domain>/<file>@<start>-<stop>.sqlite``): after one source file changes, the tasks that
read other files find every result there; only the task reading the changed rows computes again.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from llm_pipeline.compute.executor import executor_for
from llm_pipeline.compute.plan import TASK_DIR, Task, iter_task_batches, shard_tasks
from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.filters import C4Lines, build_filters
from llm_pipeline.curation.pii import PiiRedactor
from llm_pipeline.curation.result_cache import ResultCache, cache_path
from llm_pipeline.stages import StageOutput
from llm_pipeline.stages import cleaned_corpus as stage

COLUMNS = ["id", "source", "text", "licence", "format", "domain"]


def task_cache_dir(cfg: PipelineConfig, domain: str) -> Path:
    return cache_path(cfg.data_path, "cleaned_corpus", domain).with_suffix("")


def _models(state: dict, cfg: PipelineConfig, domain: str):
    """(c4, filters, redactor, fingerprint) for this config and domain, built once per worker."""
    key = "clean:" + hashlib.sha256((cfg.model_dump_json() + domain).encode()).hexdigest()
    if key not in state:
        for old in [k for k in state if k.startswith("clean:")]:  # a new config: free the old models first
            redactor = state.pop(old)[2]
            if redactor is not None:
                redactor.close()
        ccfg = cfg.cleaned_corpus.model_copy(update={"pii_processes": 1})  # the engine's workers are the parallelism
        c4 = C4Lines(ccfg.c4_terminal_punct, ccfg.c4_curly_braces) if ccfg.c4_rules else None
        redactor = PiiRedactor(ccfg) if ccfg.pii else None
        state["model_loads"] = state.get("model_loads", 0) + 1
        state[key] = (c4, build_filters(ccfg, cfg.domains[domain].languages), redactor,
                                 stage.result_fingerprint(cfg, domain, redactor))
    return state[key]


def clean_task(state: dict, task: Task, cfg: PipelineConfig, domain: str, inputs: dict, out_dir: str) -> tuple:
    c4, filters, redactor, fp = _models(state, cfg, domain)
    ccfg = cfg.cleaned_corpus
    scratch = Path(out_dir) / TASK_DIR / task.name
    scratch.mkdir(parents=True, exist_ok=True)
    cache = ResultCache(task_cache_dir(cfg, domain) / f"{task.key}.sqlite", fp, enabled=ccfg.reuse_results)
    with cache:
        n, samples = stage._process(cfg, inputs, scratch, domain, c4, filters, redactor, cache,
                                    batches=iter_task_batches(task, COLUMNS, ccfg.batch_size),
                                    prefix=task.shard_prefix)
    for shard in scratch.glob("shard-*.parquet"):  # into the output, named after the task: read back in task order
        shard.replace(Path(out_dir) / shard.name)
    return n, samples, cache.metadata()


def _merge(parts: list) -> tuple[stage._Counts, list[dict], dict]:
    n = stage._Counts()
    samples: list[dict] = []
    meta = {"documents_reused": 0, "documents_computed": 0}
    for part, part_samples, part_meta in parts:
        for k in ("documents_in", "documents_kept", "quarantined", "bytes_in", "bytes_kept"):
            setattr(n, k, getattr(n, k) + getattr(part, k))
        for k in ("dropped", "pii", "languages", "extractors", "pii_ner"):
            getattr(n, k).update(getattr(part, k))
        for reason, examples in part.drop_examples.items():
            mine = n.drop_examples.setdefault(reason, [])
            mine.extend(examples[: stage.DROP_EXAMPLES - len(mine)])
        samples.extend(part_samples[: stage.PREVIEW_SAMPLES - len(samples)])
        meta["documents_reused"] += part_meta.get("documents_reused", 0)
        meta["documents_computed"] += part_meta.get("documents_computed", 0)
        if part_meta.get("reuse_note"):
            meta["reuse_note"] = part_meta["reuse_note"]
    return n, samples, meta


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str, redactor, executor=None) -> StageOutput:
    tasks = shard_tasks(inputs["raw_corpus"], cfg.compute.task_rows)
    try:
        with executor or executor_for(cfg) as ex:
            parts = ex.map(clean_task, tasks, cfg, domain, inputs, str(output_dir), label=f"cleaned_corpus[{domain}] tasks")
            placement = ex.placement.metadata()
        n, samples, meta = _merge(parts)
        with open(output_dir / "dropped.jsonl", "wb") as dropped, open(output_dir / "quarantine.jsonl", "wb") as quarantine:
            for task in tasks:
                scratch = output_dir / TASK_DIR / task.name
                for name, out in (("dropped.jsonl", dropped), ("quarantine.jsonl", quarantine)):
                    with open(scratch / name, "rb") as part:
                        shutil.copyfileobj(part, out)
        shutil.rmtree(output_dir / TASK_DIR)
        # Results of tasks that no longer exist (their input was cut differently) would only take space.
        used = {f"{t.key}.sqlite" for t in tasks}
        for old in task_cache_dir(cfg, domain).glob("*.sqlite"):
            if old.name not in used:
                old.unlink(missing_ok=True)
        over = stage.drop_shares_over_limit(n.dropped, n.documents_in, cfg.cleaned_corpus.max_drop_share)
        stage._write_drop_examples(output_dir, over, n, redactor)
    finally:
        if redactor is not None:
            redactor.close()
    stats = stage.stats_of(n, over)
    assert n.documents_in == n.documents_kept + sum(n.dropped.values()) + n.quarantined, stats
    meta.update(tasks=len(tasks), **placement)
    return StageOutput(stats=stats, preview=stage._preview(domain, stats, samples), metadata=meta)
