"""One command for the curation benchmark: per step, docs/s, MB/s and peak RSS, ours side by side with the references.

Generates a synthetic corpus of ``--docs`` documents (benchmarks/synthetic.py: ~1.4 KB of prose each, 30% with PII
sentences, 15% near copies, a few fragments), writes it to ``benchmarks/out/corpus.jsonl``, and runs every step in a
fresh process (so each peak RSS is that step's own):

  step               ours                                           reference(s)
  clean + filters    cleaning + C4 lines + Gopher/C4 filters         DataTrove GopherRepetition + GopherQuality + C4Quality
                     (with and without language id)
  PII                PiiRedactor.redact_batch (batches of 256; the   Presidio AnalyzerEngine.analyze, one document at a time
                     default worker processes, and one process)      (half before ours, half after)
  exact + near dedup normalized-text hash + numpy MinHash LSH        datasketch MinHashLSH (same shingles, 128 perms,
                     (5-grams, 128 perms, 16 x 8 bands, 0.7)          16 x 8 bands, same verification); DataTrove MinhashDedup

Presidio per document is slow (~10 docs/s here), so it runs on the first ``--pii-reference-docs`` documents only.
DataTrove runs when ``--datatrove-python`` points at an interpreter that has it (see datatrove_child.py).

    .venv/bin/python benchmarks/run_curation.py --docs 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import OUT_DIR, emit, peak_rss_mb, run_child, table  # noqa: E402

CORPUS = OUT_DIR / "corpus.jsonl"
PII_BATCH = 256


def _texts(limit: int | None = None) -> list[str]:
    out = []
    with CORPUS.open(encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if limit and len(out) >= limit:
                break
    return out


def _result(step: str, texts: list[str], secs: float, **extra) -> dict:
    mb = sum(len(t.encode()) for t in texts) / 1e6
    return {"step": step, "documents": len(texts), "seconds": secs, "docs_per_s": len(texts) / secs,
            "mb_per_s": mb / secs, "peak_rss_mb": peak_rss_mb(), **extra}


def step_filters(language_id: bool) -> dict:
    from llm_pipeline.config import CleanedCorpusConfig
    from llm_pipeline.curation.cleaning import clean_document
    from llm_pipeline.curation.filters import C4Lines, Doc, build_filters, first_failure

    texts = _texts()
    cfg = CleanedCorpusConfig(language_id=language_id)
    filters, c4 = build_filters(cfg, ["en"]), C4Lines(cfg.c4_terminal_punct, cfg.c4_curly_braces)
    first_failure(Doc("Warm up the language model and the filters, which load lazily."), filters)
    kept = 0
    t0 = time.perf_counter()
    for raw in texts:
        text, _ = clean_document(raw, "txt", cfg)
        text, reason = c4.apply(text)
        kept += not reason and first_failure(Doc(text), filters) is None
    return _result("ours_clean_filters" + ("" if language_id else "_no_langid"), texts, time.perf_counter() - t0, kept=kept)


def step_pii(kind: str, limit: int, seed: int) -> dict:
    """One PII run: ours with the default worker processes ("pii"), ours in one process ("pii_1proc"), or Presidio
    one document at a time on half of the first `limit` documents ("pii_reference:0" / ":1": the halves run before
    and after ours, so a change in the machine's load during the run falls on both sides)."""
    from synthetic import curation_corpus

    from llm_pipeline.config import CleanedCorpusConfig
    from llm_pipeline.curation.pii import PiiRedactor, analyzer_engine

    cfg = CleanedCorpusConfig()
    warm = curation_corpus(2 * PII_BATCH, seed=seed + 1)  # warm-up on documents that are not measured
    if kind.startswith("pii_reference"):
        texts = _texts(limit)
        half = int(kind.rsplit(":", 1)[1])
        texts = texts[: len(texts) // 2] if half == 0 else texts[len(texts) // 2 :]
        engine = analyzer_engine(cfg.spacy_model)
        for t in warm[:20]:
            engine.analyze(t, language="en", entities=cfg.pii_entities, score_threshold=cfg.pii_score_threshold)
        t0 = time.perf_counter()
        found = sum(len(engine.analyze(t, language="en", entities=cfg.pii_entities, score_threshold=cfg.pii_score_threshold)) for t in texts)
        return _result("presidio_per_doc", texts, time.perf_counter() - t0, findings=found, load=os.getloadavg()[0])
    texts = _texts()
    with PiiRedactor(cfg.model_copy(update={"pii_processes": 1 if kind == "pii_1proc" else None})) as redactor:
        redactor.start_workers()
        redactor.redact_batch(warm)
        t0 = time.perf_counter()
        found = sum(sum(c.values()) for i in range(0, len(texts), PII_BATCH) for _, c in redactor.redact_batch(texts[i : i + PII_BATCH]))
        secs = time.perf_counter() - t0
    from common import children_peak_rss_mb

    return _result("ours_pii" if kind == "pii" else "ours_pii_1_process", texts, secs, replaced=found,
                   processes=redactor.processes, workers_peak_rss_mb=children_peak_rss_mb(), load=os.getloadavg()[0])


def step_dedup(impl: str) -> dict:
    import numpy as np

    texts = _texts()
    if impl == "ours":
        from llm_pipeline.curation.dedup import MinHasher, band_keys, exact_hash, near_duplicate_clusters

        t0 = time.perf_counter()
        hashes = [exact_hash(t) for t in texts]
        first: dict[int, int] = {}
        exact_dups = sum(first.setdefault(h, i) != i for i, h in enumerate(hashes))
        hasher = MinHasher(128, 5, 1234)
        sigs = np.concatenate([hasher.signatures(texts[i : i + 1024]) for i in range(0, len(texts), 1024)])
        uf = near_duplicate_clusters(sigs, band_keys(sigs, 16, 8), 0.7)
        near = sum(uf.find(i) != i for i in range(len(texts)))
        return _result("ours_dedup", texts, time.perf_counter() - t0, exact_duplicates=exact_dups, removed=near)
    import dedup_bench

    t0 = time.perf_counter()
    pairs = dedup_bench.datasketch_lsh(texts)
    return _result("datasketch_minhash_lsh", texts, time.perf_counter() - t0, removed=len({j for _, j in pairs}))


def child(step: str, args) -> None:
    if step.startswith("filters"):
        emit(step_filters(language_id=step == "filters"))
    elif step.startswith("pii"):
        emit(step_pii(step, limit=args.pii_reference_docs, seed=args.seed))
    else:
        emit(step_dedup("ours" if step == "dedup" else "datasketch"))


def datatrove(python: str, step: str) -> dict:
    proc = subprocess.run([python, str(HERE / "datatrove_child.py"), step, str(CORPUS)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"step": f"datatrove_{step}", "error": f"did not run (exit code {proc.returncode})"}
    out = json.loads(lines[-1])
    out.pop("removed_ids", None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pii-reference-docs", type=int, default=200)
    ap.add_argument("--datatrove-python", default="/tmp/dtvenv/bin/python")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args)

    from synthetic import curation_corpus

    OUT_DIR.mkdir(exist_ok=True)
    with CORPUS.open("w", encoding="utf-8") as f:
        for i, text in enumerate(curation_corpus(args.docs, seed=args.seed)):
            f.write(json.dumps({"id": f"{i:08d}", "text": text}) + "\n")
    pass_on = ["--docs", str(args.docs), "--seed", str(args.seed), "--pii-reference-docs", str(args.pii_reference_docs)]
    have_dt = Path(args.datatrove_python).exists()
    rows: dict[str, dict] = {}
    steps = ("filters", "filters_no_langid", "pii_reference:0", "pii", "pii_1proc", "pii_reference:1", "dedup", "dedup_datasketch")
    for step in steps:
        r = run_child(Path(__file__), step, pass_on)
        key = r["step"] if "error" not in r else step
        if key in rows and "seconds" in rows[key]:  # the second half of Presidio's documents: one row for both
            a = rows[key]
            r = {**r, "documents": a["documents"] + r["documents"], "seconds": a["seconds"] + r["seconds"],
                 "findings": a.get("findings", 0) + r.get("findings", 0), "peak_rss_mb": max(a["peak_rss_mb"], r["peak_rss_mb"]),
                 "mb_per_s": (a["mb_per_s"] * a["seconds"] + r["mb_per_s"] * r["seconds"]) / (a["seconds"] + r["seconds"])}
            r["docs_per_s"] = r["documents"] / r["seconds"]
        rows[key] = r
        print(f"  ran {step}: {r.get('docs_per_s', 0):.1f} docs/s", file=sys.stderr, flush=True)
    for step in ("filters", "minhash"):
        r = datatrove(args.datatrove_python, step) if have_dt else {"step": f"datatrove_{step}", "error": "no datatrove interpreter"}
        rows[r["step"]] = r
    ratios = {
        "filters: ours (no langid) / DataTrove Gopher+C4": ("ours_clean_filters_no_langid", "datatrove_filters"),
        "filters: ours (with langid) / DataTrove Gopher+C4": ("ours_clean_filters", "datatrove_filters"),
        "PII: ours batched / Presidio per document": ("ours_pii", "presidio_per_doc"),
        "PII: ours in one process / Presidio per document": ("ours_pii_1_process", "presidio_per_doc"),
        "dedup: ours exact+near / datasketch MinHashLSH": ("ours_dedup", "datasketch_minhash_lsh"),
        "dedup: ours exact+near / DataTrove MinhashDedup": ("ours_dedup", "datatrove_minhash"),
    }
    mb = CORPUS.stat().st_size / 1e6
    print(f"\ncuration benchmark: {args.docs} synthetic documents (~{mb:.1f} MB as JSONL)")
    print(table(list(rows.values()), [("step", "step", ""), ("documents", "docs", "d"), ("docs_per_s", "docs/s", ".1f"),
                                      ("mb_per_s", "MB/s", ".3f"), ("peak_rss_mb", "peak RSS MB", ".0f"),
                                      ("kept", "kept", ""), ("removed", "removed", ""), ("error", "note", "")]))
    print()
    summary = {}
    for label, (a, b) in ratios.items():
        if "docs_per_s" in rows.get(a, {}) and "docs_per_s" in rows.get(b, {}):
            summary[label] = rows[a]["docs_per_s"] / rows[b]["docs_per_s"]
            print(f"{label:<52} {summary[label]:6.1f}x")
        else:
            print(f"{label:<52}    n/a")
    (OUT_DIR / "run_curation.json").write_text(json.dumps({"rows": rows, "ratios": summary}, indent=2))


if __name__ == "__main__":
    main()
