"""Stage deduped_shards: cleaned_corpus/<domain> -> exact- and near-duplicate-free shards with a train/eval split.

Two passes over the domain's shards. Pass 1 streams the text and keeps, per document, only its id, source, length,
exact hash and MinHash signature (~0.6 KB at 128 permutations). The decisions are then made on those arrays, in the
order of preference (``keep``; by default the longest text first, then the earliest source, then the smallest id),
so the kept set does not depend on input order and a partial copy never displaces the full document:

1. exact duplicates (same normalized-text hash): the preferred copy stays;
2. near duplicates (LSH candidates verified by estimated Jaccard >= threshold, with the banding derived from the
   threshold unless set): the preferred member of a cluster stays;
   with ``semantic: true``, the survivors are then embedded (one more pass over their text) and documents whose
   embeddings reach ``semantic_threshold`` cosine are clustered the same way (``semantic_duplicate``,
   curation.semantic_dedup);
3. with ``scope: global``, the domain's survivors are checked against the persisted index of the *other* domains
   (``<data_dir>/.dedup_index/<domain>.idx/``, curation.dedup_index: ~92 bytes per document, memory-mapped, the
   candidates verified on their texts). The cross-domain rule is: a document is dropped only when its
   duplicate lives in a domain that comes *earlier* in the config's domain order, so the first domain always keeps
   its copy and the result does not depend on which partition ran first -- provided the earlier domains are
   indexed (the stats list any that are not). A domain's index entries are its within-domain survivors, written
   when it runs and replaced when it re-runs; a domain is never matched against itself.

Pass 2 streams the documents again and writes the kept ones with ``split`` (train/eval by id hash, after dedup so a
near copy of a held-out document cannot be trained on), and every drop to ``dropped.jsonl`` with the kept id.

    llm-pipeline stage deduped_shards --domain legal
"""

from __future__ import annotations

import json
import re
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llm_pipeline import progress
from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.dedup import (
    SIGNATURE_SCHEME,
    MinHasher,
    band_keys,
    exact_hash,
    candidates_against,
    near_duplicate_clusters,
    similar,
)
from llm_pipeline.curation import dedup_index
from llm_pipeline.curation.semantic_dedup import load_embedder, semantic_clusters
from llm_pipeline.io import ShardWriter, iter_batches, shard_files
from llm_pipeline.splits import split_of
from llm_pipeline.stages import StageOutput

INDEX_DIR = ".dedup_index"
READ_BATCH = 1024


def index_path(cfg: PipelineConfig, domain: str) -> Path:
    return cfg.data_path / INDEX_DIR / f"{domain}.idx"


def _params(cfg: PipelineConfig) -> np.ndarray:
    d = cfg.deduped_shards
    return np.array([d.num_perm, d.ngram, *d.banding, cfg.seed, SIGNATURE_SCHEME], dtype=np.int64)


_DIGITS = re.compile(r"(\d+)")


def _source_key(source: str | None) -> tuple:
    """A source name that sorts files and line numbers as a person would: ``a.jsonl:9`` before ``a.jsonl:10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(source or "") if p)


def preference_order(keep: str, ids: list[str], sources: list[str | None], lengths: list[int]) -> list[int]:
    """Rows from the one to keep first to the one to keep last (``deduped_shards.keep``); ties end on the id, so the
    order, and the kept set, do not depend on the order rows arrived in."""
    if keep == "longest":
        key = lambda i: (-lengths[i], _source_key(sources[i]), ids[i], i)  # noqa: E731
    elif keep == "earliest_source":
        key = lambda i: (_source_key(sources[i]), -lengths[i], ids[i], i)  # noqa: E731
    else:
        key = lambda i: (ids[i], i)  # noqa: E731
    return sorted(range(len(ids)), key=key)


def _cleaned(cfg: PipelineConfig, domain: str) -> Path:
    return cfg.data_path / "cleaned_corpus" / domain


def write_index(cfg: PipelineConfig, domain: str, rows: list[int], hashes: np.ndarray, keys: np.ndarray) -> None:
    """Replace a domain's index entries (curation.dedup_index): `rows` are the entries' rows in its cleaned_corpus."""
    dedup_index.write(index_path(cfg, domain), np.asarray(rows, dtype=np.int64), hashes, keys, _params(cfg).tolist(),
                      _cleaned(cfg, domain))


def read_index(cfg: PipelineConfig, domain: str) -> dict[str, np.ndarray] | None:
    """A domain's index, or None when it is missing, was built with other MinHash parameters (or an older signature
    scheme), or its cleaned_corpus changed since: its domain then counts as not indexed until it re-runs."""
    return dedup_index.read(index_path(cfg, domain), _params(cfg).tolist(), _cleaned(cfg, domain))


def _cross_domain(cfg, domain, hashes, sigs, keys, rows: list[int]) -> tuple[dict[int, tuple[str, str, str]], list[str], list[str]]:
    """Drops of `rows` against earlier domains: row -> (reason, kept domain, kept id); plus domains used / missing.
    Only the candidates' ids and texts are read from the earlier domain's cleaned_corpus."""
    dcfg = cfg.deduped_shards
    order = cfg.domain_names
    earlier = order[: order.index(domain)]
    drops: dict[int, tuple[str, str, str]] = {}
    used, missing = [], []
    hasher = MinHasher(dcfg.num_perm, dcfg.ngram, cfg.seed) if dcfg.near else None
    for other in earlier:  # earliest first: a document's representative is its copy in the earliest domain
        index = read_index(cfg, other)
        if index is None:
            missing.append(other)
            continue
        used.append(other)
        source = _cleaned(cfg, other)
        todo = [r for r in rows if r not in drops]
        if dcfg.exact and todo:
            by_hash = np.argsort(index["hashes"], kind="stable")
            sorted_hashes = np.asarray(index["hashes"])[by_hash]
            query = hashes[np.asarray(todo, dtype=np.int64)]
            lo = np.searchsorted(sorted_hashes, query, side="left")
            hi = np.searchsorted(sorted_hashes, query, side="right")
            hit = np.flatnonzero(hi > lo)
            entries = {k: np.asarray(index["rows"])[by_hash[lo[k]:hi[k]]] for k in hit.tolist()}
            ids = dedup_index.read_rows(source, np.concatenate([*entries.values(), np.zeros(0, np.int64)]), ["id"])
            for k, at in entries.items():  # the smallest id among the entries with this hash
                drops[todo[k]] = ("exact_duplicate_cross_domain", other, min(ids[int(r)]["id"] for r in at))
            todo = [r for r in todo if r not in drops]
        if dcfg.near and todo:
            qi, oj = candidates_against(dedup_index.fold32(keys[todo]), index["keys"])
            if len(qi) == 0:
                continue
            entries = np.unique(oj)
            at = np.asarray(index["rows"])[entries].astype(np.int64)
            recs = dedup_index.read_rows(source, at, ["id", "text"])
            other_sigs = hasher.signatures([recs[int(r)]["text"] or "" for r in at])
            ok = similar(sigs[todo], qi, other_sigs, np.searchsorted(entries, oj), dcfg.threshold)
            matches: dict[int, list[str]] = {}
            for q, j in zip(qi[ok].tolist(), oj[ok].tolist()):
                matches.setdefault(q, []).append(recs[int(index["rows"][j])]["id"])
            for q, kept_ids in matches.items():
                drops[todo[q]] = ("near_duplicate_cross_domain", other, str(min(kept_ids)))
    return drops, used, missing


def _embed_rows(embedder, src: Path, rows: list[int]) -> np.ndarray:
    """Embeddings of the documents at stream positions `rows`, in the order of `rows` (one more pass over the text)."""
    where = {r: k for k, r in enumerate(rows)}
    vectors = np.zeros((len(rows), embedder.dim), dtype=np.float32)
    row = 0
    for batch in iter_batches(src, columns=["text"], batch_size=READ_BATCH):
        wanted = [(where[row + k], r["text"] or "") for k, r in enumerate(batch) if row + k in where]
        row += len(batch)
        if wanted:
            vectors[[k for k, _ in wanted]] = embedder.embed([t for _, t in wanted])
    return vectors


def _upstream_kept(folder: Path) -> int | None:
    """Documents the upstream stage kept (its stats.json), for progress' total; None when unknown."""
    try:
        return int(json.loads((folder / "stats.json").read_text())["documents_kept"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Hashed:
    """Pass 1's per-document columns, in stream order: all the decisions need (the text is read again in pass 2)."""

    def __init__(self, ids, sources, lengths, hashes: np.ndarray, sigs: np.ndarray, bytes_in: int):
        self.ids, self.sources, self.lengths = ids, sources, lengths
        self.hashes, self.sigs, self.bytes_in = hashes, sigs, bytes_in

    @classmethod
    def concat(cls, parts: list["Hashed"]) -> "Hashed":
        return cls([i for p in parts for i in p.ids], [s for p in parts for s in p.sources],
                   [n for p in parts for n in p.lengths], np.concatenate([p.hashes for p in parts]),
                   np.concatenate([p.sigs for p in parts]), sum(p.bytes_in for p in parts))


def hash_pass(batches, hasher: MinHasher, need_sigs: bool, num_perm: int, meter=None) -> Hashed:
    """Pass 1: per-document id, source, length, exact hash and signature; row = position in the input stream."""
    ids: list[str] = []
    sources: list[str | None] = []
    lengths: list[int] = []
    hash_list: list[int] = []
    sig_blocks: list[np.ndarray] = []
    bytes_in = 0
    for batch in batches:
        texts = [r["text"] or "" for r in batch]
        ids.extend(r["id"] for r in batch)
        sources.extend(r.get("source") for r in batch)
        lengths.extend(len(t) for t in texts)
        hash_list.extend(exact_hash(t) for t in texts)
        bytes_in += sum(len(t.encode("utf-8")) for t in texts)
        if need_sigs:
            sig_blocks.append(hasher.signatures(texts))
        if meter is not None:
            meter.update(len(ids))
    n = len(ids)
    hashes = np.array(hash_list, dtype=np.uint64)
    sigs = np.concatenate(sig_blocks) if sig_blocks else np.zeros((n, num_perm if need_sigs else 0), dtype=np.uint32)
    return Hashed(ids, sources, lengths, hashes, sigs, bytes_in)


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    dcfg = cfg.deduped_shards
    src = inputs["cleaned_corpus"]
    hasher = MinHasher(dcfg.num_perm, dcfg.ngram, cfg.seed)
    embedder = load_embedder(cfg) if dcfg.semantic else None  # before any work: a missing model package stops here
    if cfg.compute.engine != "local":  # the same passes, as tasks over the cleaned shards on the engine
        from llm_pipeline.compute import dedup as distributed

        return distributed.run(cfg, inputs, output_dir, domain, embedder)

    meter = progress.meter(f"deduped_shards[{domain}] hashing", total=_upstream_kept(src), unit="doc")
    hashed = hash_pass(iter_batches(src, columns=["id", "source", "text"], batch_size=READ_BATCH), hasher, dcfg.near,
                       dcfg.num_perm, meter)
    meter.close()
    decided = decide(cfg, domain, hashed, src, embedder)
    with (
        split_writers(cfg, src, output_dir) as writers,
        open(output_dir / "dropped.jsonl", "w", encoding="utf-8") as dropped_f,
    ):
        written = write_pass(cfg, domain, iter_batches(src, batch_size=READ_BATCH), 0, decided, writers, dropped_f)
    return stage_output(domain, hashed, decided, [written])


@contextmanager
def split_writers(cfg: PipelineConfig, src: Path, output_dir: Path, task: str = ""):
    """One file series per split, named as the Hugging Face `datasets` loader names splits (`train-*`, `eval-*`, a
    task's as `train-<task>-*`): then `load_dataset("parquet", data_dir=<this folder>)` gives train and test splits
    and skips stats.json, dropped.jsonl and _manifest.json beside them (it reads every other file as Parquet
    otherwise). Both splits share the input's schema (plus `split`), so a column all null in one keeps its type."""
    first = next(iter(shard_files(src)), None)
    schema = None if first is None else pq.read_schema(first).append(pa.field("split", pa.string()))
    suffix = f"-{task}" if task else ""
    with (
        ShardWriter(output_dir, prefix=f"train{suffix}", max_rows=cfg.deduped_shards.shard_rows, schema=schema) as train,
        ShardWriter(output_dir, prefix=f"eval{suffix}", max_rows=cfg.deduped_shards.shard_rows, schema=schema) as held_out,
    ):
        yield {"train": train, "eval": held_out}


class Decided:
    """The decisions: drop reason and kept copy per dropped row, the preview's example pair, the indexes used."""

    def __init__(self, reason: dict[int, str], kept_as: dict[int, tuple[str, str]], pair: dict, used: list[str], missing: list[str]):
        self.reason, self.kept_as, self.pair, self.used, self.missing = reason, kept_as, pair, used, missing


def decide(cfg: PipelineConfig, domain: str, hashed: Hashed, src: Path, embedder, near=None, columns=None) -> Decided:
    """The decisions from pass 1's columns. `near(rows)` (clusters of `rows`, given in order of preference) and
    `columns(rows)` (those rows' signatures and band keys) replace the in-memory ones when the signatures live
    elsewhere (compute.dedup: in the files of the tasks that computed them)."""
    dcfg = cfg.deduped_shards
    ids, sources, lengths, hashes, sigs = hashed.ids, hashed.sources, hashed.lengths, hashed.hashes, hashed.sigs
    n = len(ids)
    need_sigs = dcfg.near
    bands, rows_per_band = dcfg.banding
    if near is None:
        keys = band_keys(sigs, bands, rows_per_band) if need_sigs else np.zeros((n, 0), dtype=np.uint64)
        near = lambda rows: near_duplicate_clusters(sigs[rows], keys[rows], dcfg.threshold)  # noqa: E731
        columns = lambda rows: (sigs[rows], keys[rows])  # noqa: E731

    by_pref = preference_order(dcfg.keep, ids, sources, lengths)
    reason: dict[int, str] = {}
    kept_as: dict[int, tuple[str, str]] = {}  # row -> (domain, id) of the copy that was kept

    if dcfg.exact:
        first: dict[int, int] = {}
        for i in by_pref:
            rep = first.setdefault(int(hashes[i]), i)
            if rep != i:
                reason[i], kept_as[i] = "exact_duplicate", (domain, ids[rep])
    if dcfg.near:
        rows = [i for i in by_pref if i not in reason]
        clusters = near(rows)
        for local, i in enumerate(rows):
            root = clusters.find(local)
            if root != local:
                reason[i], kept_as[i] = "near_duplicate", (domain, ids[rows[root]])
    if embedder is not None:
        rows = [i for i in by_pref if i not in reason]
        clusters = semantic_clusters(_embed_rows(embedder, src, rows), dcfg.semantic_threshold)
        for local, i in enumerate(rows):
            root = clusters.find(local)
            if root != local:
                reason[i], kept_as[i] = "semantic_duplicate", (domain, ids[rows[root]])
    survivors = [i for i in by_pref if i not in reason]

    index_used: list[str] = []
    index_missing: list[str] = []
    if dcfg.scope == "global":
        s_sigs, s_keys = columns(survivors)
        cross, index_used, index_missing = _cross_domain(cfg, domain, hashes[survivors], s_sigs, s_keys, list(range(len(survivors))))
        for k, (why, other, other_id) in cross.items():
            reason[survivors[k]], kept_as[survivors[k]] = why, (other, other_id)
        write_index(cfg, domain, survivors, hashes[survivors], s_keys)

    # The preview's example pair: the first near duplicate in order of preference, and its kept copy (when in this domain).
    near_rows = [i for i in by_pref if reason.get(i, "exact_duplicate") != "exact_duplicate"]
    pair: dict = {}
    if near_rows:
        ex = near_rows[0]
        pair = {"row": ex, "id": ids[ex], "reason": reason[ex], "kept_domain": kept_as[ex][0], "kept_id": kept_as[ex][1]}
    return Decided(reason, kept_as, pair, index_used, index_missing)


def write_pass(cfg: PipelineConfig, domain: str, batches, row: int, decided: Decided, writers: dict[str, ShardWriter],
               dropped_f) -> dict:
    """Pass 2 over rows from `row` on: the kept documents with their split, every drop with its kept copy."""
    reason, kept_as, pair = decided.reason, decided.kept_as, decided.pair
    splits: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    bytes_kept = 0
    texts: dict[str, str] = {}
    for batch in batches:
        for rec in batch:
            i, row = row, row + 1
            if i in reason:
                kd, kid = kept_as[i]
                dropped[reason[i]] += 1
                dropped_f.write(json.dumps({"id": rec["id"], "source": rec.get("source"), "reason": reason[i], "kept_id": kid, "kept_domain": kd}) + "\n")
                if pair and i == pair["row"]:
                    texts["text"] = rec["text"]
                continue
            rec["split"] = split_of(rec["id"], cfg.eval_fraction)
            splits[rec["split"]] += 1
            bytes_kept += len((rec["text"] or "").encode("utf-8"))
            writers[rec["split"]].write(rec)
            if pair and pair["kept_domain"] == domain and rec["id"] == pair["kept_id"]:
                texts["kept_text"] = rec["text"]
    return {"splits": splits, "dropped": dropped, "bytes_kept": bytes_kept, "texts": texts}


def stage_output(domain: str, hashed: Hashed, decided: Decided, parts: list[dict]) -> StageOutput:
    """Stats and preview from the decisions and the write passes (one, or one per task, in row order)."""
    n = len(hashed.ids)
    splits: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    pair = dict(decided.pair)
    for part in parts:
        splits.update(part["splits"])
        dropped.update(part["dropped"])
        for k, v in part["texts"].items():
            pair.setdefault(k, v)
    kept = n - sum(dropped.values())
    stats = {
        "documents_in": n,
        "documents_kept": kept,
        "dropped": dict(sorted(dropped.items())),
        "quarantined": 0,
        "bytes_in": hashed.bytes_in,
        "bytes_kept": sum(part["bytes_kept"] for part in parts),
        "clusters": len(set(decided.kept_as.values())),
        "train_documents": splits.get("train", 0),
        "eval_documents": splits.get("eval", 0),
        "index_domains_used": len(decided.used),
        "index_domains_missing": len(decided.missing),
    }
    assert stats["documents_in"] == kept + sum(dropped.values()) and kept == sum(splits.values()), stats
    metadata = {"index_domains_used": decided.used, "index_domains_missing": decided.missing}
    return StageOutput(stats=stats, preview=_preview(domain, stats, pair, decided.missing), metadata=metadata)


def _preview(domain: str | None, stats: dict, pair: dict, missing: list[str]) -> str:
    lines = [
        f"### deduped_shards `{domain}`",
        "",
        "| documents in | kept | train | eval | clusters |",
        "|---|---|---|---|---|",
        f"| {stats['documents_in']} | {stats['documents_kept']} | {stats['train_documents']} | {stats['eval_documents']} | {stats['clusters']} |",
        "",
        "| drop reason | documents |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | {v} |" for k, v in stats["dropped"].items()]
    if missing:
        lines += ["", f"Not yet indexed (cross-domain duplicates against them were not checked): {', '.join(missing)}"]
    if pair:
        lines += ["", f"Example `{pair['reason']}`: **{pair['id'][:12]}** duplicates kept **{pair['kept_domain']}/{pair['kept_id'][:12]}**"]
        lines += [f"> dropped: {pair.get('text', '')[:300]}".replace("\n", " ")]
        if pair.get("kept_text"):
            lines += [f"> kept: {pair['kept_text'][:300]!s}".replace("\n", " ")]
    return "\n".join(lines) + "\n"
