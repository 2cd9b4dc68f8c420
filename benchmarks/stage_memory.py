"""Peak memory of each curation stage, per process, at two or more corpus sizes: is it flat in the corpus size?

    python benchmarks/stage_memory.py --docs 5000 50000 [--engines local ray] [--steps ...] [--pii]

For each size a synthetic corpus (benchmarks/synthetic.curation_corpus: ~1.5 KB prose documents, 15% near copies,
in JSONL files of 1,000 documents) is written once; then, per engine, raw_corpus, cleaned_corpus, cleaned_corpus
again (the reuse path: every result from the task caches) and deduped_shards each run in a fresh process. Figures:
the stage process's own peak (VmHWM: the driver, for the Ray engine) and, for Ray, the largest peak RSS of any of
its worker processes (sampled every 0.1 s, a floor); wall seconds, and CPU seconds of the stage process and its
descendants (sampled too, so a floor for Ray) per MB of the JSONL files. The table ends with the growth from the smallest to the largest
size, in bytes per added document, and the ratio of the peaks: flat means the ratio stays near 1 (issue target: at
10x the documents, <= 1.2x). PII redaction is off unless --pii: it changes the time, not the memory per document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import OUT_DIR, emit, run_child, table  # noqa: E402

STEPS = ("raw_corpus", "cleaned_corpus", "cleaned_corpus_reuse", "deduped_shards")
FILE_DOCS = 1_000
GENERATE_BLOCK = 20_000  # documents generated at once (near copies are of documents in the same block)


def prepare(root: Path, docs: int, pii: bool, engines: list[str]) -> None:
    import yaml
    from synthetic import curation_corpus

    src = root / "corpus"
    src.mkdir(parents=True, exist_ok=True)
    k = 0
    for block in range(0, docs, GENERATE_BLOCK):
        texts = curation_corpus(min(GENERATE_BLOCK, docs - block), seed=block)
        for lo in range(0, len(texts), FILE_DOCS):
            with open(src / f"part-{k:05d}.jsonl", "w", encoding="utf-8") as f:
                for t in texts[lo: lo + FILE_DOCS]:
                    f.write(json.dumps({"text": t}) + "\n")
            k += 1
    for engine in engines:
        conf = {"data_dir": str(root / f"data-{engine}"), "domains": {"bench": {"sources": [{"path": str(src)}]}},
                "cleaned_corpus": {"pii": pii}, "validation": {"enabled": False},
                "compute": {"engine": engine, "workers": 2}}
        (root / f"config-{engine}.yaml").write_text(yaml.safe_dump(conf))


class WorkerPeaks(threading.Thread):
    """Largest RSS seen per descendant process (Ray's actors and its own daemons), sampled until stopped."""

    def __init__(self, every: float = 0.1):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.every = psutil, every
        self.peak: dict[int, tuple[str, int]] = {}
        self.cpu: dict[int, float] = {}  # last CPU seconds seen per descendant (one that lives < a sample is missed)
        self.stop = threading.Event()

    def run(self) -> None:
        me = self.psutil.Process()
        while not self.stop.is_set():
            for p in me.children(recursive=True):
                try:
                    rss, name = p.memory_info().rss, p.name()
                    t = p.cpu_times()
                except self.psutil.Error:
                    continue
                self.cpu[p.pid] = t.user + t.system
                self.peak[p.pid] = (name, max(rss, self.peak.get(p.pid, ("", 0))[1]))
            self.stop.wait(self.every)

    def worker_peak_mb(self) -> float | None:
        """The largest peak among Ray's task workers (processes named ``ray::...``)."""
        rss = [r for name, r in self.peak.values() if name.startswith("ray::")]
        return round(max(rss) / 2**20, 1) if rss else None


def stage(root: Path, engine: str, step: str) -> None:
    from llm_pipeline.config import load_config
    from llm_pipeline.memory import peak_rss_mb
    from llm_pipeline.runner import run_stage

    cfg = load_config(root / f"config-{engine}.yaml", root=root)
    sampler = WorkerPeaks()
    sampler.start()
    result = run_stage(cfg, step.removesuffix("_reuse"), "bench")
    sampler.stop.set()
    sampler.join()
    own = os.times()
    cpu = own.user + own.system + sum(sampler.cpu.values())
    raw_mb = sum(f.stat().st_size for f in (root / "corpus").iterdir()) / 1e6  # the JSONL files, text and framing
    emit({"engine": engine, "step": step, "documents_in": result.stats.get("documents_in"),
          "peak_mb": round(peak_rss_mb(), 1), "worker_peak_mb": sampler.worker_peak_mb(),
          "reused": result.metadata.get("documents_reused"), "seconds": round(result.seconds, 1),
          "cpu_s": round(cpu, 1), "cpu_s_per_mb": round(cpu / raw_mb, 3), "raw_mb": round(raw_mb, 1)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, nargs="+", default=[5_000, 50_000])
    ap.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--pii", action="store_true")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "prepare":
            prepare(Path(args.child[1]), int(args.child[2]), args.child[3] == "1", args.child[4:])
            emit({"prepared": args.child[2]})
        else:
            stage(Path(args.child[1]), args.child[2], args.child[3])
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for docs in args.docs:
            root = Path(tmp) / str(docs)
            run_child(Path(__file__), "prepare", [str(root), str(docs), "1" if args.pii else "0", *args.engines])
            for engine in args.engines:
                last = max(STEPS.index(s) for s in args.steps)  # a stage needs the ones before it to have run
                for step in [s for k, s in enumerate(STEPS) if s in args.steps or (k < last and s != "cleaned_corpus_reuse")]:
                    row = run_child(Path(__file__), "stage", [str(root), engine, step], timeout=7200)
                    row.update(docs=docs, engine=engine, step=step)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    ok = [r for r in rows if "error" not in r]
    small, large = min(args.docs), max(args.docs)
    for engine in args.engines:
        for step in STEPS:
            a = next((r for r in ok if r["engine"] == engine and r["step"] == step and r["docs"] == small), None)
            b = next((r for r in ok if r["engine"] == engine and r["step"] == step and r["docs"] == large), None)
            if a and b and large > small:
                for key, out in (("peak_mb", "growth"), ("worker_peak_mb", "worker_growth")):
                    if a.get(key) and b.get(key):
                        b[f"{out}_b_per_doc"] = round((b[key] - a[key]) * 2**20 / (large - small), 1)
                        b[f"{out}_ratio"] = round(b[key] / a[key], 3)
    print(table(ok, [("engine", "engine", ""), ("step", "stage", ""), ("docs", "docs", ","), ("seconds", "s", ""),
                     ("cpu_s_per_mb", "CPU-s/MB", ""),
                     ("peak_mb", "peak MB", ""), ("growth_b_per_doc", "B/doc added", ""), ("growth_ratio", "x", ""),
                     ("worker_peak_mb", "worker peak MB", ""), ("worker_growth_b_per_doc", "worker B/doc", ""),
                     ("worker_growth_ratio", "worker x", "")]))
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "stage_memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # As dedup_memory.py: Arrow's default pool and glibc's per-thread arenas keep freed memory for a time that
    # depends on thread timing, which moves a peak by +-15 MB; with these the same run repeats to ~1 MB.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    main()
