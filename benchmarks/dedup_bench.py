"""Near-duplicate detection: our numpy MinHash LSH vs datasketch's MinHashLSH at the same parameters.

Same corpus (benchmarks/synthetic.py: documents with planted near copies), same word 5-gram shingles, 128
permutations, 16 bands x 8 rows, and the same verification (estimated Jaccard >= 0.7 on the candidate pairs).
Each implementation runs in its own process, so docs/s and peak RSS are its own. Duplicate pairs are scored
against the planted ones: a found pair is correct when both documents belong to the same planted cluster; a planted
pair is recalled when the found pairs connect its two documents.

    .venv/bin/python benchmarks/dedup_bench.py --docs 20000
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT_DIR, emit, peak_rss_mb, run_child, table  # noqa: E402
from synthetic import dedup_corpus  # noqa: E402

NGRAM, NUM_PERM, BANDS, ROWS, THRESHOLD, SEED = 5, 128, 16, 8, 0.7, 1234
BATCH = 1024  # documents per signature batch, as deduped_shards reads them
_WORD = re.compile(r"\w+")


def ours(docs: list[str]) -> set[tuple[int, int]]:
    import numpy as np

    from llm_pipeline.curation.dedup import MinHasher, band_keys, candidate_pairs, jaccard_estimate

    hasher = MinHasher(NUM_PERM, NGRAM, SEED)
    sigs = np.concatenate([hasher.signatures(docs[i : i + BATCH]) for i in range(0, len(docs), BATCH)])
    keys = band_keys(sigs, BANDS, ROWS)
    return {(i, j) for i, j in candidate_pairs(keys) if jaccard_estimate(sigs[i], sigs[j]) >= THRESHOLD}


def datasketch_lsh(docs: list[str]) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(BANDS, ROWS))
    found = set()
    for start in range(0, len(docs), BATCH):
        chunk = docs[start : start + BATCH]
        shingles = []
        for text in chunk:
            w = _WORD.findall(text.lower())
            n = min(NGRAM, len(w))
            shingles.append([" ".join(w[k : k + n]).encode("utf-8") for k in range(len(w) - n + 1)] or [b""])
        # MinHash.bulk builds the permutations once per batch: datasketch's own fast path for many documents.
        for k, m in enumerate(MinHash.bulk(shingles, num_perm=NUM_PERM, seed=SEED)):
            i = start + k
            for j in lsh.query(m):  # query before insert: each pair is seen once, from its later document
                if m.jaccard(lsh_minhashes[j]) >= THRESHOLD:
                    found.add((j, i))
            lsh.insert(i, m)
            lsh_minhashes[i] = m
    return found


lsh_minhashes: dict = {}


def score(found: set[tuple[int, int]], planted: set[tuple[int, int]], n: int) -> dict:
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    truth = list(range(n))  # planted cluster of each document: the original it was copied from
    for a, b in planted:
        truth[b] = a
    for a, b in found:
        parent[root(a)] = root(b)
    correct = sum(truth[a] == truth[b] for a, b in found)
    recalled = sum(root(a) == root(b) for a, b in planted)
    return {"pairs_found": len(found), "precision": correct / max(1, len(found)), "recall": recalled / max(1, len(planted))}


def child(step: str, n: int, seed: int) -> None:
    docs, planted = dedup_corpus(n, seed=seed, edits=2)
    if step == "ours":  # imports outside the timed region, for both sides
        import llm_pipeline.curation.dedup  # noqa: F401
    else:
        import datasketch  # noqa: F401
    base_rss = peak_rss_mb()
    t0 = time.perf_counter()
    found = ours(docs) if step == "ours" else datasketch_lsh(docs)
    secs = time.perf_counter() - t0
    mb = sum(len(d.encode()) for d in docs) / 1e6
    emit({"step": step, "documents": n, "seconds": secs, "docs_per_s": n / secs, "mb_per_s": mb / secs,
          "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base_rss, **score(found, planted, n)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.docs, args.seed)
    rows = [run_child(Path(__file__), step, ["--docs", str(args.docs), "--seed", str(args.seed)]) for step in ("ours", "datasketch")]
    rows[0]["x_datasketch"] = rows[0]["docs_per_s"] / rows[1]["docs_per_s"]
    print(f"near-dup, {args.docs} documents, {NGRAM}-gram shingles, {NUM_PERM} perms, {BANDS}x{ROWS} bands, threshold {THRESHOLD}")
    print(table(rows, [("step", "implementation", ""), ("docs_per_s", "docs/s", ".0f"), ("mb_per_s", "MB/s", ".2f"),
                       ("peak_rss_mb", "peak RSS MB", ".0f"), ("precision", "precision", ".4f"), ("recall", "recall", ".4f"),
                       ("x_datasketch", "x datasketch", ".1f")]))
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "dedup_bench.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
