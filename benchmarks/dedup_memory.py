"""deduped_shards' peak memory at large document counts, without running the stages before it.

    python benchmarks/dedup_memory.py --docs 100000 1000000 [--modes single tasks ray] [--task-rows 1000]
    python benchmarks/dedup_memory.py --child prepare ROOT N [SHARD_ROWS TASK_ROWS]   # one step, as the test runs it
    python benchmarks/dedup_memory.py --child stage ROOT single|tasks|ray

A cleaned_corpus of short synthetic documents (60 words from a 5,000-word vocabulary, 10% near copies of a recent
document, sources ``part-K.jsonl#L<n>``) is written straight into a data folder by one process; the stage then runs
in a fresh process, single-stream (``single``) or split into tasks in that one process (``tasks``: compute.dedup
with the local executor, so the driver's and the workers' memory add up), or on the Ray engine (``ray``: a
single-node Ray the run starts, 2 workers; the driver's peak, and the largest sampled RSS of its workers). The figure is the stage's peak (VmHWM)
less what the process held after its imports, with the system allocator for Arrow and two malloc arenas (the
defaults keep freed memory for a time that depends on thread timing; see
llm_pipeline_tests/stages/test_deduped_shards_memory.py, which runs the same at 5k and 50k).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import OUT_DIR, emit, table  # noqa: E402


def prepare(root: Path, n: int, shard_rows: int | None = None, task_rows: int | None = None) -> None:
    """The corpus and config; `shard_rows`/`task_rows` (small in the test) set the shard and task sizes."""
    import random

    import xxhash
    import yaml

    from llm_pipeline.io import MANIFEST, ShardWriter

    rng = random.Random(n)
    vocab = [f"w{i}" for i in range(5000)]
    folder = root / "data" / "cleaned_corpus" / "bench"
    with ShardWriter(folder, max_rows=shard_rows or 10_000) as w:
        prev: list[str] = []
        for i in range(n):
            if prev and rng.random() < 0.1:
                words = rng.choice(prev).split()
                words[rng.randrange(len(words))] = "edited"
                text = " ".join(words)
            else:
                text = " ".join(rng.choice(vocab) for _ in range(60)) + "."
                prev = (prev + [text])[-50:]
            w.write({"id": xxhash.xxh3_128_hexdigest(f"{i}{text}".encode()), "domain": "bench",
                     "source": f"part-{i // 1000}.jsonl#L{i % 1000}", "text": text, "licence": "CC0"})
    (folder / MANIFEST).write_text(json.dumps({"stage": "cleaned_corpus"}))
    conf = {"data_dir": str(root / "data"), "domains": {"bench": {"sources": [{"path": "unused"}]}}}
    if shard_rows:
        conf["deduped_shards"] = {"shard_rows": shard_rows}
    if task_rows:
        conf["compute"] = {"task_rows": task_rows}
    (root / "config.yaml").write_text(yaml.safe_dump(conf))


def stage(root: Path, mode: str) -> None:
    import time

    from llm_pipeline.compute import dedup
    from llm_pipeline.compute.executor import LocalExecutor
    from llm_pipeline.config import load_config
    from llm_pipeline.memory import peak_rss_mb
    from llm_pipeline.stages import deduped_shards

    cfg = load_config(root / "config.yaml", root=root)
    folder = cfg.data_path / "cleaned_corpus" / "bench"
    out = root / f"out-{mode}"
    out.mkdir()
    before = peak_rss_mb()
    workers = None
    t0 = time.perf_counter()
    if mode == "tasks":
        result = dedup.run(cfg, {"cleaned_corpus": folder}, out, "bench", None, executor=LocalExecutor())
    elif mode == "ray":  # a single-node Ray started by the run, 2 workers: the driver's peak, and its workers'
        from stage_memory import WorkerPeaks

        cfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"engine": "ray", "address": None})})
        workers = WorkerPeaks()
        workers.start()
        result = dedup.run(cfg, {"cleaned_corpus": folder}, out, "bench", None)
        workers.stop.set()
        workers.join()
    else:
        result = deduped_shards.run(cfg, {"cleaned_corpus": folder}, out, "bench")
    emit({"mode": mode, "documents_in": result.stats["documents_in"], "dropped": result.stats["dropped"],
          "seconds": round(time.perf_counter() - t0, 1), "after_imports_mb": round(before, 1),
          "peak_mb": round(peak_rss_mb(), 1), "added_mb": round(peak_rss_mb() - before, 1),
          "worker_peak_mb": workers.worker_peak_mb() if workers else None})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--modes", nargs="+", default=["single", "tasks"], choices=["single", "tasks", "ray"])
    ap.add_argument("--task-rows", type=int, default=0,
                    help="rows per task in tasks mode (default: compute.task_rows); 1000 gives 1,000 tasks at 1M "
                         "documents, as the Ray engine makes from 1,000 input files")
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "prepare":
            prepare(Path(args.child[1]), *map(int, args.child[2:]))
        else:
            stage(Path(args.child[1]), args.child[2])
        return
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dedup-memory-") as tmp:
        for n in args.docs:
            root = Path(tmp) / str(n)
            root.mkdir()
            sizes = ["0", str(args.task_rows)] if args.task_rows else []
            subprocess.run([sys.executable, __file__, "--child", "prepare", str(root), str(n), *sizes], check=True, env=env)
            for mode in args.modes:
                proc = subprocess.run([sys.executable, __file__, "--child", "stage", str(root), mode], env=env,
                                      stdout=subprocess.PIPE, text=True, check=True)
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["docs"] = n
                print(json.dumps(row), flush=True)
                rows.append(row)
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    small, large = min(args.docs), max(args.docs)
    for mode in args.modes:
        a = next(r for r in rows if r["mode"] == mode and r["docs"] == small)
        b = next(r for r in rows if r["mode"] == mode and r["docs"] == large)
        if large > small:
            b["b_per_added_doc"] = round((b["added_mb"] - a["added_mb"]) * 2**20 / (large - small), 1)
            b["peak_ratio"] = round(b["peak_mb"] / a["peak_mb"], 3)
    print(table(rows, [("mode", "mode", ""), ("docs", "docs", ","), ("seconds", "s", ""), ("after_imports_mb", "imports MB", ""),
                       ("peak_mb", "peak MB", ""), ("added_mb", "stage adds MB", ""), ("b_per_added_doc", "B/doc added", ""),
                       ("peak_ratio", "peak x", ""), ("worker_peak_mb", "worker peak MB", "")]))
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "dedup_memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
