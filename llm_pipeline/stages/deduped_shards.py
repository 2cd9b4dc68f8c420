"""Stage deduped_shards: cleaned_corpus/<domain> -> exact- and near-duplicate-free shards with a train/eval split.

Two passes over the domain's shards. Pass 1 streams the text and writes, per document, fixed-width columns to files
beside the output: its id (bytes), source (the file's rank and the trailing line or row number), length and exact
hash, ~70 bytes (curation.dedup_columns), and its MinHash signature and LSH band keys (curation.dedup_spill). Each
step below reads back one column, one band or one block of pairs at a time; what stays in memory per document is
the decision (one byte) and, while a step runs, the columns it sorts (benchmarks/README.md, memory). The decisions
are made in the order of preference (``keep``; by default the longest text first, then the earliest source, then
the smallest id), so the kept set does not depend on input order and a partial copy never displaces the full
document:

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
import shutil
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
    band_match_codes,
    band_pair_codes,
    pair_clusters,
    similar,
)
from llm_pipeline.curation import dedup_index
from llm_pipeline.curation.dedup_columns import Hashed, hash_pass
from llm_pipeline.curation.dedup_spill import SPILL_DIR, Spilled, gather_sorted
from llm_pipeline.curation.semantic_dedup import load_embedder, semantic_clusters
from llm_pipeline.io import ShardWriter, iter_batches, shard_files
from llm_pipeline.memory import large_frees_returned, release_freed_memory
from llm_pipeline.splits import split_of
from llm_pipeline.stages import StageOutput

INDEX_DIR = ".dedup_index"
READ_BATCH = 1024


def index_path(cfg: PipelineConfig, domain: str) -> Path:
    return cfg.data_path / INDEX_DIR / f"{domain}.idx"


def _params(cfg: PipelineConfig) -> np.ndarray:
    d = cfg.deduped_shards
    return np.array([d.num_perm, d.ngram, *d.banding, cfg.seed, SIGNATURE_SCHEME], dtype=np.int64)


# Candidate pairs verified per block: their signatures gathered from the spill files, up to 2 x 8192 x 512 bytes at
# 128 permutations. 65,536 gathered ~140 MB at once, a peak a small corpus never reached and a large one always did.
_PAIR_BLOCK = 1 << 13
_CROSS_BLOCK = 4096  # another domain's indexed documents read and re-hashed per block


def _cleaned(cfg: PipelineConfig, domain: str) -> Path:
    return cfg.data_path / "cleaned_corpus" / domain


class _Bands:
    """Band keys of some rows (ascending), folded to 32 bits (dedup_index.fold32), read from the spill files one band
    at a time when asked (dedup_index.write)."""

    def __init__(self, spilled: Spilled | None, rows: np.ndarray, bands: int):
        self.spilled, self.rows, self.bands = spilled, rows, bands

    def __len__(self) -> int:
        return self.bands

    def __getitem__(self, b: int) -> np.ndarray:
        if self.spilled is None:  # a domain with no documents split into no tasks: no spill files, no keys
            return np.zeros(0, dtype=np.uint32)
        # Folded and gathered part by part (`rows` ascending): 4 bytes a row, no column over every row.
        parts = self.spilled.parts
        return gather_sorted(self.spilled.starts, self.rows, lambda k: dedup_index.fold32(parts[k].band(b)), np.uint32)


def write_index(cfg: PipelineConfig, domain: str, rows: np.ndarray, hashes, key_bands) -> None:
    """Replace a domain's index entries (curation.dedup_index): `rows` are the entries' rows in its cleaned_corpus,
    `hashes` their hashes or a function that reads them."""
    dedup_index.write(index_path(cfg, domain), rows, hashes, key_bands, _params(cfg).tolist(),
                      _cleaned(cfg, domain))


def read_index(cfg: PipelineConfig, domain: str) -> dict[str, np.ndarray] | None:
    """A domain's index, or None when it is missing, was built with other MinHash parameters (or an older signature
    scheme), or its cleaned_corpus changed since: its domain then counts as not indexed until it re-runs."""
    return dedup_index.read(index_path(cfg, domain), _params(cfg).tolist(), _cleaned(cfg, domain))


def _cross_domain(cfg, domain: str, hashed: Hashed, rows: np.ndarray) -> tuple[dict[int, tuple[str, str, str]], list[str], list[str]]:
    """Drops of `rows` (stream rows) against earlier domains: k (position in `rows`) -> (reason, kept domain, kept
    id); plus the domains used / missing. An earlier domain's index is read through its mapping: exact hits by binary
    search on its hash-sorted entries, near candidates one band at a time; only the candidates' ids and texts are
    read from its cleaned_corpus, a block at a time."""
    dcfg = cfg.deduped_shards
    order = cfg.domain_names
    earlier = order[: order.index(domain)]
    drops: dict[int, tuple[str, str, str]] = {}
    used, missing = [], []
    hasher = MinHasher(dcfg.num_perm, dcfg.ngram, cfg.seed) if dcfg.near else None
    alive = np.ones(len(rows), dtype=bool)
    for other in earlier:  # earliest first: a document's representative is its copy in the earliest domain
        index = read_index(cfg, other)
        if index is None:
            missing.append(other)
            continue
        used.append(other)
        source = _cleaned(cfg, other)
        if dcfg.exact and alive.any():
            todo = np.flatnonzero(alive)
            query = hashed.column("hashes", rows[todo])
            lo = np.searchsorted(index["hashes"], query, side="left")
            hi = np.searchsorted(index["hashes"], query, side="right")
            for block in range(0, len(todo), _CROSS_BLOCK):
                hit = block + np.flatnonzero(hi[block: block + _CROSS_BLOCK] > lo[block: block + _CROSS_BLOCK])
                entries = {int(k): np.asarray(index["rows"][lo[k]:hi[k]]) for k in hit}
                ids = dedup_index.read_rows(source, np.concatenate([*entries.values(), np.zeros(0, np.int64)]), ["id"])
                for k, at in entries.items():  # the smallest id among the entries with this hash
                    drops[int(todo[k])] = ("exact_duplicate_cross_domain", other, min(ids[int(r)]["id"] for r in at))
                    alive[todo[k]] = False
            dedup_index.release(index)
        if dcfg.near and alive.any():
            todo = np.flatnonzero(alive)
            m = len(index["rows"])
            codes = [np.zeros(0, dtype=np.int64)]
            for b in range(dcfg.banding[0]):
                codes.append(np.unique(band_match_codes(dedup_index.fold32(hashed.spilled.band(b, rows[todo])),
                                                        index["keys"][:, b])))
                dedup_index.release(index)  # one band of the other domain's keys resident at a time
            flat = np.unique(np.concatenate(codes))
            del codes
            qi, oj = flat // max(m, 1), flat % max(m, 1)
            matches: dict[int, list[str]] = {}
            entries = np.unique(oj)
            for block in range(0, len(entries), _CROSS_BLOCK):  # a block of the other domain's texts at a time
                chunk = entries[block: block + _CROSS_BLOCK]
                sel = np.flatnonzero(np.isin(oj, chunk))
                at = np.asarray(index["rows"][chunk], dtype=np.int64)
                recs = dedup_index.read_rows(source, at, ["id", "text"])
                other_sigs = hasher.signatures([recs[int(r)]["text"] or "" for r in at])
                ok = similar(hashed.spilled.sigs(rows[todo[qi[sel]]]), np.arange(len(sel)), other_sigs,
                             np.searchsorted(chunk, oj[sel]), dcfg.threshold)
                for q, j in zip(qi[sel][ok].tolist(), np.searchsorted(chunk, oj[sel][ok]).tolist()):
                    matches.setdefault(q, []).append(recs[int(at[j])]["id"])
            dedup_index.release(index)
            for q, kept_ids in matches.items():
                drops[int(todo[q])] = ("near_duplicate_cross_domain", other, str(min(kept_ids)))
                alive[todo[q]] = False
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


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    dcfg = cfg.deduped_shards
    src = inputs["cleaned_corpus"]
    hasher = MinHasher(dcfg.num_perm, dcfg.ngram, cfg.seed)
    embedder = load_embedder(cfg) if dcfg.semantic else None  # before any work: a missing model package stops here
    if cfg.compute.engine != "local":  # the same passes, as tasks over the cleaned shards on the engine
        from llm_pipeline.compute import dedup as distributed

        return distributed.run(cfg, inputs, output_dir, domain, embedder)

    meter = progress.meter(f"deduped_shards[{domain}] hashing", total=_upstream_kept(src), unit="doc")
    spill = output_dir / SPILL_DIR
    try:
        hashed = hash_pass(iter_batches(src, columns=["id", "source", "text"], batch_size=READ_BATCH), hasher,
                           dcfg.banding if dcfg.near else None, (spill, "all"), meter)
        meter.close()
        decided = decide(cfg, domain, hashed, src, embedder)
        with (
            split_writers(cfg, src, output_dir) as writers,
            open(output_dir / "dropped.jsonl", "w", encoding="utf-8") as dropped_f,
        ):
            written = write_pass(cfg, domain, iter_batches(src, batch_size=READ_BATCH), 0, decided, writers, dropped_f)
        return stage_output(domain, hashed, decided, [written])
    finally:  # the columns are read until the last kept id is written
        shutil.rmtree(spill, ignore_errors=True)


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


REASONS = ("", "exact_duplicate", "near_duplicate", "semantic_duplicate", "exact_duplicate_cross_domain",
           "near_duplicate_cross_domain")  # a row's code in Decided.reason: 0 = kept
_CODE = {name: k for k, name in enumerate(REASONS)}


class Decided:
    """The decisions: per row, the drop reason's code (REASONS; 0 = kept), one int8; per dropped row (`drops`,
    sorted), the row of its kept copy in this domain (`kept`; -1: one in another domain, in `cross`: row -> (domain,
    id)); the preview's example pair and the indexes used. `offset` is the stream row of `reason`'s first element; a
    slice for one task's rows carries its kept ids resolved (`kept_ids`) instead of the domain's columns."""

    def __init__(self, reason: np.ndarray, drops: np.ndarray, kept: np.ndarray, cross: dict[int, tuple[str, str]],
                 hashed: Hashed | None, domain: str, pair: dict, used: list[str], missing: list[str], offset: int = 0,
                 kept_ids: dict[int, tuple[str, str]] | None = None):
        self.reason, self.drops, self.kept, self.cross, self.hashed = reason, drops, kept, cross, hashed
        self.domain, self.pair, self.used, self.missing, self.offset, self.kept_ids = domain, pair, used, missing, offset, kept_ids

    def why(self, row: int) -> str:
        return REASONS[self.reason[row - self.offset]]

    def kept_in(self, lo: int, hi: int) -> dict[int, tuple[str, str]]:
        """(domain, id) of the kept copy of every dropped row in [lo, hi): the ids read in one go."""
        if self.kept_ids is not None:
            return {r: v for r, v in self.kept_ids.items() if lo <= r < hi}
        a, b = np.searchsorted(self.drops, [lo, hi])
        rows, kept = self.drops[a:b], self.kept[a:b]
        own = kept >= 0
        ids = iter(self.hashed.ids(kept[own]).tolist())
        return {int(r): (self.domain, next(ids).decode("utf-8")) if k >= 0 else self.cross[int(r)]
                for r, k in zip(rows.tolist(), kept.tolist())}

    def kept_as(self, row: int) -> tuple[str, str]:
        return self.kept_in(row, row + 1)[row]

    def rows(self, lo: int, hi: int) -> "Decided":
        """The decisions about rows [lo, hi) only: what a write task needs to be sent."""
        reason = self.reason[lo - self.offset: hi - self.offset]
        empty = np.zeros(0, np.int64)
        return Decided(reason, empty, empty, {}, None, self.domain, self.pair, self.used, self.missing, lo,
                       self.kept_in(lo, hi))

    def clusters(self) -> int:
        """Distinct kept copies that drops point to."""
        own = np.unique(self.kept[self.kept >= 0])
        return len(np.unique(self.hashed.ids(own))) + len(set(self.cross.values()))


def _mark(rows: np.ndarray, clusters: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose cluster root (the first of `rows` in the cluster, by preference) is another row, and that row, from
    the clusters' (moved positions, their roots' positions) in `rows`: (dropped rows, their kept rows)."""
    moved, roots = clusters
    return rows[moved], rows[roots]


def near_clusters(hashed: Hashed, rows: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of `rows` (stream rows in order of preference; cluster members by position in `rows`) from their
    spilled band keys, one band at a time, and their signatures, one block of pairs at a time: (positions whose
    root is another, those roots), as UnionFind.moved gives them."""
    n = len(rows)
    spilled = hashed.spilled
    flat = np.zeros(0, dtype=np.int64)
    for b in range(spilled.bands):  # merged band by band: a pair that shares every band is held once, not per band
        flat = np.union1d(flat, band_pair_codes(spilled.band(b, rows), None, n))
    verified = [np.zeros(0, dtype=np.int64)]
    for lo in range(0, len(flat), _PAIR_BLOCK):
        i, j = flat[lo: lo + _PAIR_BLOCK] // n, flat[lo: lo + _PAIR_BLOCK] % n
        at = np.unique(np.concatenate([i, j]))
        sigs = spilled.sigs(rows[at])
        verified.append(flat[lo: lo + _PAIR_BLOCK][similar(sigs, np.searchsorted(at, i), sigs, np.searchsorted(at, j), threshold)])
    ok = np.concatenate(verified)
    return pair_clusters(ok // max(n, 1), ok % max(n, 1))


_HASH_ROWS = 1 << 16  # rows per block when each row's hash is looked up among the repeated ones


def exact_groups(hashed: Hashed, by_pref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose normalized-text hash an earlier row in order of preference has, that row for each). The hash
    column is sorted in place to find the hashes that repeat (few), then read once more and looked up among those a
    block at a time: ~14 bytes a document at the peak (the column, a flag, the order of preference), not a stable sort's
    order, its buffer and a sorted copy of the column (~30)."""
    h = hashed.column("hashes")
    h.sort()
    repeated = np.unique(h[1:][h[1:] == h[:-1]])
    del h
    if not len(repeated):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    h = hashed.column("hashes")
    hit = np.zeros(len(h), dtype=bool)
    for lo in range(0, len(h), _HASH_ROWS):
        block = h[lo: lo + _HASH_ROWS]
        at = np.minimum(np.searchsorted(repeated, block), len(repeated) - 1)
        hit[lo: lo + len(block)] = repeated[at] == block
    rows = by_pref[hit[by_pref]].astype(np.int64)  # the rows of a repeated hash, in order of preference
    hashes = h[rows]
    del h, hit
    order = np.argsort(hashes, kind="stable")  # within a hash, the order of preference
    hashes = hashes[order]
    first = np.concatenate([[True], hashes[1:] != hashes[:-1]])
    group = np.cumsum(first) - 1
    return rows[order[~first]], rows[order[first]][group[~first]]


def decide(cfg: PipelineConfig, domain: str, hashed: Hashed, src: Path, embedder, near=None) -> Decided:
    """The decisions from pass 1's columns. `near(rows)` (clusters of `rows`, given in order of preference, as
    near_clusters returns them) replaces near_clusters when the pairs are found elsewhere (compute.dedup: by tasks
    over the hash tasks' files). Per document it holds the order of preference, the reason codes and, in one step at
    a time, a sort's key and order or a column (~20 bytes per document at the peak: the order of preference's packed
    key, its sort and the sort's buffer; the index's hashes, their order and its sort by the top byte); the rest
    follows the pairs and drops."""
    # Each step's arrays handed back to the system when freed, not kept in the heap under the next step's: the peak
    # is one step's (llm_pipeline.memory.large_frees_returned). Only here: the hash and write passes allocate and
    # free batch arrays by the thousand, which then cost a page fault each.
    with large_frees_returned():
        return _decide(cfg, domain, hashed, src, embedder, near)


def _decide(cfg: PipelineConfig, domain: str, hashed: Hashed, src: Path, embedder, near) -> Decided:
    dcfg = cfg.deduped_shards
    n = len(hashed)
    # Row numbers at 4 bytes below 2**31 rows (a domain's driver holds this column, and the rows and survivors taken
    # from it, through every step).
    by_pref = hashed.preference_order(dcfg.keep).astype(np.int32 if n < 2**31 else np.int64)
    release_freed_memory()  # each step's freed arrays handed back before the next step's: the peak is one step's
    reason = np.zeros(n, dtype=np.int8)
    drops: list[np.ndarray] = [np.zeros(0, np.int64)]  # dropped rows, and the row of each one's kept copy
    keeps: list[np.ndarray] = [np.zeros(0, np.int64)]

    if dcfg.exact and n:
        dup, rep = exact_groups(hashed, by_pref)
        reason[dup] = _CODE["exact_duplicate"]
        drops.append(dup)
        keeps.append(rep)
        del dup, rep
        release_freed_memory()
    for why, step in (("near_duplicate", dcfg.near and n), ("semantic_duplicate", embedder is not None)):
        if not step:
            continue
        rows = by_pref[reason[by_pref] == 0]
        if why == "near_duplicate":
            clusters = near(rows) if near is not None else near_clusters(hashed, rows, dcfg.threshold)
        else:
            clusters = semantic_clusters(_embed_rows(embedder, src, rows.tolist()), dcfg.semantic_threshold).moved()
        dup, kept = _mark(rows, clusters)
        del clusters, rows
        reason[dup] = _CODE[why]
        drops.append(dup)
        keeps.append(kept)
        release_freed_memory()
    cross_kept: dict[int, tuple[str, str]] = {}
    index_used: list[str] = []
    index_missing: list[str] = []
    if dcfg.scope == "global":
        survivors = by_pref[reason[by_pref] == 0]
        cross, index_used, index_missing = _cross_domain(cfg, domain, hashed, survivors)
        for k, (why, other, other_id) in cross.items():
            reason[survivors[k]] = _CODE[why]
            cross_kept[int(survivors[k])] = (other, other_id)
        drops.append(np.array(sorted(cross_kept), dtype=np.int64))
        keeps.append(np.full(len(cross_kept), -1, dtype=np.int64))
        # The index's entries in row order (they are stored by hash, so the order given does not matter): read
        # part by part below.
        entries = np.sort(survivors)
        del survivors
    dropped, kept = np.concatenate(drops), np.concatenate(keeps)
    del drops, keeps
    order = np.argsort(dropped, kind="stable")
    decided = Decided(reason, dropped[order], kept[order], cross_kept, hashed, domain, {}, index_used, index_missing)
    del order, dropped, kept
    # The preview's example pair: the first near duplicate in order of preference, and its kept copy (when in this domain).
    ordered = reason[by_pref]
    first = np.flatnonzero((ordered != 0) & (ordered != _CODE["exact_duplicate"]))[:1]
    del ordered
    if len(first):
        ex = int(by_pref[first[0]])
        kd, kid = decided.kept_as(ex)
        decided.pair = {"row": ex, "id": hashed.id_of(ex), "reason": decided.why(ex), "kept_domain": kd, "kept_id": kid}
    del by_pref
    if dcfg.scope == "global":  # last, with nothing per document held but the reasons: its sort is the step's peak
        release_freed_memory()
        write_index(cfg, domain, entries, lambda: hashed.column("hashes", entries),
                    _Bands(hashed.spilled, entries, dcfg.banding[0] if dcfg.near else 0))
        del entries
        release_freed_memory()
    return decided


def write_pass(cfg: PipelineConfig, domain: str, batches, row: int, decided: Decided, writers: dict[str, ShardWriter],
               dropped_f) -> dict:
    """Pass 2 over rows from `row` on: the kept documents with their split, every drop with its kept copy."""
    pair = decided.pair
    splits: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    bytes_kept = 0
    texts: dict[str, str] = {}
    for batch in batches:
        kept = decided.kept_in(row, row + len(batch))
        for rec in batch:
            i, row = row, row + 1
            why = decided.why(i)
            if why:
                kd, kid = kept[i]
                dropped[why] += 1
                dropped_f.write(json.dumps({"id": rec["id"], "source": rec.get("source"), "reason": why, "kept_id": kid, "kept_domain": kd}) + "\n")
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
    n = len(hashed)
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
        "clusters": decided.clusters(),
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
