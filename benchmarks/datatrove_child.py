"""The DataTrove side of run_curation.py, run with a separate interpreter that has ``datatrove`` installed.

DataTrove is not a dependency of this project; make a throwaway environment for it:

    python3 -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install datatrove regex tokenizers spacy orjson "xxhash<4"

(datatrove 0.10.1 needed those four extras to import its filters and dedup, and xxhash < 4: it hashes str, which xxhash 4 refuses). Steps:
  - ``filters``: GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter (their defaults), one ``filter(doc)``
    call per document and filter, in memory, the way our filters run;
  - ``minhash``: the four-stage MinhashDedup pipeline (signatures, buckets, clusters, filter) on a LocalPipelineExecutor
    with one worker, 5-grams, 16 buckets x 8 hashes; it exchanges data through files, which is how it runs.

    /tmp/dtvenv/bin/python benchmarks/datatrove_child.py filters CORPUS.jsonl
    /tmp/dtvenv/bin/python benchmarks/datatrove_child.py pipeline CORPUS_DIR WORKERS PII BUCKETS ROWS  (compute_engines.py)
Prints one JSON line: docs/s, MB/s, peak RSS, and the kept count or the removed ids.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def filters(corpus: Path) -> dict:
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    texts = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
    steps = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False)]
    for f in steps:  # word tokenizers and sentence splitters load lazily: keep that out of the timing
        f.filter(Document(text="Warm up the tokenizers. They load lazily on the first call.", id="0"))
    kept = 0
    t0 = time.perf_counter()
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        ok = True
        for f in steps:
            verdict = f.filter(doc)
            if verdict is not True and (verdict is False or not verdict[0]):
                ok = False
                break
        kept += ok
    secs = time.perf_counter() - t0
    mb = sum(len(t.encode()) for t in texts) / 1e6
    return {"documents": len(texts), "kept": kept, "seconds": secs, "docs_per_s": len(texts) / secs, "mb_per_s": mb / secs}


def minhash(corpus: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=8)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        data = t / "in"
        data.mkdir()
        (data / "corpus.jsonl").write_bytes(corpus.read_bytes())
        t0 = time.perf_counter()
        stages = [
            [JsonlReader(str(data)), MinhashDedupSignature(output_folder=str(t / "sigs"), config=cfg)],
            [MinhashDedupBuckets(input_folder=str(t / "sigs"), output_folder=str(t / "buckets"), config=cfg)],
            [MinhashDedupCluster(input_folder=str(t / "buckets"), output_folder=str(t / "remove"), config=cfg)],
            [JsonlReader(str(data)), MinhashDedupFilter(input_folder=str(t / "remove"), exclusion_writer=JsonlWriter(str(t / "removed"))),
             JsonlWriter(str(t / "out"))],
        ]
        tasks = [1, cfg.num_buckets, 1, 1]
        for k, (pipeline, n_tasks) in enumerate(zip(stages, tasks)):
            LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=1, logging_dir=str(t / f"logs{k}")).run()
        secs = time.perf_counter() - t0
        removed = []
        for f in (t / "removed").glob("*.jsonl*"):
            import gzip

            opener = gzip.open if f.suffix == ".gz" else open
            with opener(f, "rt", encoding="utf-8") as fh:
                removed += [json.loads(line)["id"] for line in fh]
    texts = corpus.read_text(encoding="utf-8").splitlines()
    mb = sum(len(json.loads(x)["text"].encode()) for x in texts) / 1e6
    return {"documents": len(texts), "removed": len(removed), "removed_ids": removed, "seconds": secs,
            "docs_per_s": len(texts) / secs, "mb_per_s": mb / secs}


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def pipeline(corpus: Path, workers: int = 2, pii: bool = False, buckets: int = 20, rows: int = 6) -> dict:
    """Our three curation stages' counterparts in one DataTrove run on a LocalPipelineExecutor with `workers`
    processes: read the JSONL folder, Gopher repetition / quality and C4 filters (their defaults; our cleaned_corpus
    runs its own filter set), optionally DataTrove's PIIFormatter (e-mails and IP addresses by regex, against our
    Presidio redaction), then the four MinHash stages with our parameters (5-grams, `buckets` x `rows` = our
    banding at threshold 0.7, 128 permutations). Wall time, CPU time (this process and its children) and the
    largest peak RSS of any one process."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg = MinhashConfig(n_grams=5, num_buckets=buckets, hashes_per_bucket=rows)
    files = sorted(corpus.glob("*.jsonl"))
    mb = sum(len(json.loads(line)["text"].encode()) for f in files for line in f.open(encoding="utf-8")) / 1e6
    docs = sum(1 for f in files for _ in f.open(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        clean = [JsonlReader(str(corpus)), GopherRepetitionFilter(), GopherQualityFilter(),
                 C4QualityFilter(filter_no_terminal_punct=False)]
        clean += [PIIFormatter()] if pii else []
        stages = [
            (clean + [JsonlWriter(str(t / "clean"))], len(files)),
            ([JsonlReader(str(t / "clean")), MinhashDedupSignature(output_folder=str(t / "sigs"), config=cfg)], len(files)),
            ([MinhashDedupBuckets(input_folder=str(t / "sigs"), output_folder=str(t / "buckets"), config=cfg)], cfg.num_buckets),
            ([MinhashDedupCluster(input_folder=str(t / "buckets"), output_folder=str(t / "remove"), config=cfg)], 1),
            ([JsonlReader(str(t / "clean")), MinhashDedupFilter(input_folder=str(t / "remove")), JsonlWriter(str(t / "out"))], len(files)),
        ]
        t0 = time.perf_counter()
        cpu0 = _cpu_s()
        stage_s = []
        for k, (steps, n_tasks) in enumerate(stages):
            s0 = time.perf_counter()
            LocalPipelineExecutor(pipeline=steps, tasks=n_tasks, workers=workers, logging_dir=str(t / f"logs{k}")).run()
            stage_s.append(round(time.perf_counter() - s0, 2))
        secs = time.perf_counter() - t0
        cpu = _cpu_s() - cpu0
        kept = 0
        for f in (t / "out").glob("*.jsonl*"):
            import gzip

            with (gzip.open if f.suffix == ".gz" else open)(f, "rt", encoding="utf-8") as fh:
                kept += sum(1 for _ in fh)
    return {"documents": docs, "kept": kept, "seconds": secs, "docs_per_s": docs / secs, "mb_per_s": mb / secs,
            "cpu_s": cpu, "cpu_s_per_mb": cpu / mb, "raw_mb": mb,
            # clean + filters / signatures / buckets / clusters / filter + write, in that order
            "stage_wall_s": dict(zip(["clean", "signatures", "buckets", "clusters", "dedup_filter"], stage_s))}


if __name__ == "__main__":
    step, path = sys.argv[1], Path(sys.argv[2])
    if step == "pipeline":
        result = pipeline(path, int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5]), int(sys.argv[6]))
        result.update(step="datatrove_pipeline", peak_rss_mb=_peak_mb())
        print(json.dumps(result), flush=True)
        sys.exit(0)
    result = (filters if step == "filters" else minhash)(path)
    result.update(step=f"datatrove_{step}", peak_rss_mb=_peak_mb())
    print(json.dumps(result), flush=True)
