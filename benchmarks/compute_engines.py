"""Local engine vs Ray engine (2 workers) on raw_corpus -> cleaned_corpus -> deduped_shards of one synthetic domain.

    python benchmarks/compute_engines.py --docs 1000 3000 [--no-pii] [--engines local ray datatrove]

The corpus of each size is written once, by a process of its own, and read by every engine. Each (engine, size) runs
in a fresh process. Figures per run: wall seconds, docs/s and MB/s (raw MB over the three
stages' wall time), CPU seconds of the whole process tree (the driver, Ray's own processes and its workers, sampled
every 0.2 s by psutil; a process that lives less than one sample is missed, so the figure is a floor), CPU-s per
raw MB, peak RSS of the driver and the largest sum of RSS over the tree, and the near-dup index's bytes per indexed
document. The corpus is benchmarks/synthetic.curation_corpus (prose with PII sentences and 15% near copies) in
jsonl files of 1,000 documents (a task each). ``datatrove`` runs DataTrove's LocalPipelineExecutor with 2 workers over
the same files (datatrove_child.pipeline: its Gopher and C4 filters, its regex PIIFormatter when PII is on, and its
four MinHash stages at our 5-grams and banding), in the interpreter given by --datatrove-python. The Ray engine here is a single-node Ray that the run starts itself
(``compute.address: null``): it shows the engine's overhead, not a multi-machine speed-up. Projection for 1 TB
uses the measured CPU-s/MB: CPU-days = CPU-s/MB x 1e6 / 86400, wall on N machines of C cores = that / (N x C),
assuming the per-task work spreads evenly (the bucket, verify and decision steps are a small part at these sizes;
at 1 TB the deduped_shards step's per-document columns (~175 B/doc, benchmarks/dedup_memory.py) are the first
limit, see docs/operations.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import OUT_DIR, emit, run_child, table  # noqa: E402

STAGES = ("raw_corpus", "cleaned_corpus", "deduped_shards")


class TreeSampler(threading.Thread):
    """CPU seconds and RSS of this process and all its descendants, sampled until stopped."""

    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.every = psutil, every
        self.cpu: dict[int, float] = {}
        self.peak_tree_rss = 0
        self.peak_process_rss = 0  # the largest RSS of any one process of the tree (a worker, or the driver)
        self.stop = threading.Event()

    def run(self) -> None:
        me = self.psutil.Process()
        while not self.stop.is_set():
            rss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                    one = p.memory_info().rss
                except self.psutil.Error:
                    continue
                rss += one
                self.peak_process_rss = max(self.peak_process_rss, one)
            self.peak_tree_rss = max(self.peak_tree_rss, rss)
            self.stop.wait(self.every)


FILE_DOCS = 1_000


def write_corpus(src: Path, docs: int) -> float:
    """The synthetic corpus as JSONL files of FILE_DOCS documents; its text MB."""
    from synthetic import curation_corpus

    src.mkdir()
    texts = curation_corpus(docs, seed=1)
    for k in range(0, len(texts), FILE_DOCS):
        with open(src / f"part-{k // FILE_DOCS:05d}.jsonl", "w", encoding="utf-8") as f:
            for t in texts[k: k + FILE_DOCS]:
                f.write(json.dumps({"text": t}) + "\n")
    return sum(len(t.encode()) for t in texts) / 1e6


def corpus_mb(src: Path) -> float:
    """The text MB of a corpus write_corpus wrote (what every engine's MB/s and CPU-s/MB divide by)."""
    return sum(len(json.loads(line)["text"].encode()) for f in sorted(src.iterdir()) for line in open(f, encoding="utf-8")) / 1e6


def child_timeout(docs: int) -> int:
    """Seconds a run may take: an hour, or 20 ms per document (the local engine with PII goes at ~200-260 docs/s here)."""
    return max(3600, docs // 50)


def datatrove(python: str, src: Path, docs: int, pii: bool) -> None:
    """DataTrove's LocalPipelineExecutor (2 workers) on the same corpus (datatrove_child.pipeline), in its own venv."""
    import subprocess

    from llm_pipeline.config import load_config

    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        root = Path(tmp)
        raw_mb = corpus_mb(src)
        (root / "config.yaml").write_text(json.dumps({"domains": {"bench": {"sources": [{"path": "x"}]}}}))
        bands, rows = load_config(root / "config.yaml", root=root).deduped_shards.banding
        sampler = TreeSampler()
        sampler.start()
        started = time.perf_counter()
        proc = subprocess.run([python, str(Path(__file__).with_name("datatrove_child.py")), "pipeline", str(src),
                               "2", "1" if pii else "0", str(bands), str(rows)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, timeout=child_timeout(docs))
        wall = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        out = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
        cpu = sum(sampler.cpu.values())
        emit({"engine": "datatrove (LocalPipelineExecutor, 2 workers)", "docs": docs, "raw_mb": round(raw_mb, 2),
              "wall_s": round(wall, 1), "stage_wall_s": out.get("stage_wall_s"), "docs_per_s": round(docs / wall, 1),
              "mb_per_s": round(raw_mb / wall, 3),
              "cpu_s": round(cpu, 1), "cpu_s_per_mb": round(cpu / raw_mb, 2), "driver_peak_rss_mb": round(out["peak_rss_mb"], 1),
              "tree_peak_rss_mb": round(sampler.peak_tree_rss / 2**20, 1),
              "process_peak_rss_mb": round(sampler.peak_process_rss / 2**20, 1), "index_bytes_per_doc": None,
              "kept": out["kept"], "pii": pii, "banding": [bands, rows]})


def child(engine: str, src: Path, docs: int, pii: bool) -> None:
    import yaml

    from llm_pipeline.config import load_config
    from llm_pipeline.memory import peak_rss_mb
    from llm_pipeline.runner import run_stage
    from llm_pipeline.stages.deduped_shards import index_path

    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        root = Path(tmp)
        raw_mb = corpus_mb(src)
        conf = {"data_dir": str(root / "data"), "domains": {"bench": {"sources": [{"path": str(src)}]}},
                "allowed_roots": [str(src)],
                "cleaned_corpus": {"pii": pii}, "validation": {"enabled": False},
                "compute": {"engine": engine, "workers": 2, "task_rows": FILE_DOCS}}
        (root / "config.yaml").write_text(yaml.safe_dump(conf))
        cfg = load_config(root / "config.yaml", root=root)
        sampler = TreeSampler()
        sampler.start()
        walls = {}
        started = time.perf_counter()
        for name in STAGES:
            t0 = time.perf_counter()
            result = run_stage(cfg, name, "bench")
            walls[name] = round(time.perf_counter() - t0, 2)
        wall = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        cpu = sum(sampler.cpu.values())
        index = index_path(cfg, "bench")
        kept = result.stats["documents_kept"]
        emit({"engine": engine if engine == "local" else "ray (2 workers, 1 node)", "docs": docs, "raw_mb": round(raw_mb, 2),
              "wall_s": round(wall, 1), "stage_wall_s": walls, "docs_per_s": round(docs / wall, 1),
              "mb_per_s": round(raw_mb / wall, 3), "cpu_s": round(cpu, 1), "cpu_s_per_mb": round(cpu / raw_mb, 2),
              "driver_peak_rss_mb": round(peak_rss_mb(), 1), "tree_peak_rss_mb": round(sampler.peak_tree_rss / 2**20, 1),
              "process_peak_rss_mb": round(sampler.peak_process_rss / 2**20, 1),
              "index_bytes_per_doc": round(sum(p.stat().st_size for p in index.iterdir()) / max(kept, 1), 1) if index.is_dir() else None,
              "kept": kept, "dropped": result.stats["dropped"], "pii": pii})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, nargs="+", default=[1000, 3000])
    ap.add_argument("--no-pii", action="store_true")
    ap.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray", "datatrove"])
    ap.add_argument("--datatrove-python", default="/work/venvs/datatrove/bin/python",
                    help="an interpreter with datatrove==0.10.1 installed (see datatrove_child.py)")
    ap.add_argument("--out", default="compute_engines.json")
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    if args.child:
        engine, src, docs, pii = args.child[0], Path(args.child[1]), int(args.child[2]), args.child[3] == "1"
        if engine == "prepare":
            emit({"raw_mb": round(write_corpus(src, docs), 2)})
        elif engine == "datatrove":
            datatrove(args.child[4], src, docs, pii)
        else:
            child(engine, src, docs, pii)
        return
    rows = []
    for docs in args.docs:
        with tempfile.TemporaryDirectory(prefix="bench-engines-corpus-") as tmp:
            src = Path(tmp) / "corpus"
            # one corpus per size, written by a process of its own (so no engine's peak RSS holds the generator's texts)
            run_child(Path(__file__), "prepare", [str(src), str(docs), "0"], timeout=child_timeout(docs))
            for engine in args.engines:
                extra = [args.datatrove_python] if engine == "datatrove" else []
                row = run_child(Path(__file__), engine, [str(src), str(docs), "0" if args.no_pii else "1", *extra],
                                timeout=child_timeout(docs))
                row.setdefault("engine", engine)
                row.setdefault("docs", docs)
                print(json.dumps(row), flush=True)
                rows.append(row)
    ok = [r for r in rows if "error" not in r]
    print(table(ok, [("engine", "engine", ""), ("docs", "docs", ","), ("wall_s", "wall s", ""),
                     ("docs_per_s", "docs/s", ""), ("mb_per_s", "MB/s", ""), ("cpu_s_per_mb", "CPU-s/MB", ""),
                     ("driver_peak_rss_mb", "driver peak MB", ""), ("process_peak_rss_mb", "largest process MB", ""),
                     ("tree_peak_rss_mb", "tree peak MB", ""),
                     ("index_bytes_per_doc", "index B/doc", "")]))
    for docs in args.docs:  # each engine against the local engine of the same run, same corpus
        base = next((r for r in ok if r["docs"] == docs and r["engine"] == "local"), None)
        for r in (r for r in ok if base and r["docs"] == docs and r is not base):
            print(f"{r['engine']} at {docs:,} docs: {r['docs_per_s'] / base['docs_per_s']:.2f}x the local engine's docs/s "
                  f"(local {base['docs_per_s'] / r['docs_per_s']:.2f}x it), {r['cpu_s_per_mb'] / base['cpu_s_per_mb']:.2f}x "
                  f"its CPU-s/MB")
    for r in ok:
        cpu_days = r["cpu_s_per_mb"] * 1e6 / 86400
        print(f"{r['engine']} at {r['docs']:,} docs: 1 TB = {cpu_days:,.0f} CPU-days; on 10 machines x 16 cores "
              f"{cpu_days / 160:,.1f} days, on 100 x 16 {cpu_days / 1600:,.2f} days (if the tasks spread evenly)")
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
