"""Documents for training, read from the deduped shards: the train split to learn from, the eval split held out.

Every training stage reads documents through this module so the train/eval rule (``split`` column written by the
deduped_shards stage from ``llm_pipeline.splits``) is applied in one place. Documents stream a batch at a time.
With a ``filler`` (``training.tag_fill.for_config``), each text comes with its PII tags filled with surrogates:
the training stages pass one, the tokenizer stage does not.
General text for continued pretraining (``base_checkpoint.general_data``) is read here too, split by the same
id-hash rule, so its held-out part can show whether the model forgets general text while it learns the domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import xxhash

from llm_pipeline.io import iter_batches, shard_files
from llm_pipeline.splits import split_of
from llm_pipeline.training.tag_fill import TagFiller

SPLITS = ("train", "eval")
COLUMNS = ["id", "domain", "text", "split"]


class CorpusError(ValueError):
    """The deduped shards cannot be used for training (missing domain, missing column, no documents)."""


def domain_folder(shards_dir: Path, domain: str) -> Path:
    folder = Path(shards_dir) / domain
    if not folder.is_dir() or not shard_files(folder):
        raise CorpusError(f"no deduped shards for domain {domain!r} under {folder}")
    return folder


def iter_documents(shards_dir: Path, domain: str, split: str, columns: list[str] | None = None,
                   filler: TagFiller | None = None) -> Iterator[dict]:
    """Stream one domain's documents of one split ('train' or 'eval'); empty texts are skipped (nothing to learn).
    With `filler`, each text's PII tags are filled with surrogates (the filler counts them)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    wanted = sorted(set(columns or COLUMNS) | {"split", "text"})
    folder = domain_folder(shards_dir, domain)
    for path in shard_files(folder):
        missing = set(wanted) - set(pq.read_schema(path).names)
        if missing:
            raise CorpusError(f"{path}: shard lacks column(s) {sorted(missing)} that the training stages need")
    for batch in iter_batches(folder, columns=wanted, batch_size=512):
        for rec in batch:
            if rec["split"] == split and rec["text"]:
                if filler is not None:
                    rec["text"] = filler.fill(rec["text"])
                yield rec


def iter_texts(shards_dir: Path, domains: list[str], split: str, filler: TagFiller | None = None) -> Iterator[tuple[str, str]]:
    """(domain, text) for every document of `split`, domain after domain (tags filled with `filler`, if given)."""
    for domain in domains:
        for rec in iter_documents(shards_dir, domain, split, columns=["id", "text", "split"], filler=filler):
            yield domain, rec["text"]


def weighted_texts(shards_dir: Path, domains: list[str], weights: dict[str, float], seed: int) -> Iterator[tuple[str, str]]:
    """Train texts with per-domain sampling weights: weight 2 repeats each document twice, 0.5 keeps about half.

    The keep/repeat decision hashes the document id with the seed, so the same config samples the same documents.
    """
    for domain in domains:
        w = float(weights.get(domain, 1.0))
        if w < 0:
            raise CorpusError(f"tokenizer.domain_weights[{domain!r}] is negative ({w})")
        whole, frac = int(w), w - int(w)
        for rec in iter_documents(shards_dir, domain, "train", columns=["id", "text", "split"]):
            copies = whole
            if frac and xxhash.xxh64_intdigest(f"{seed}:{rec['id']}".encode()) / 2**64 < frac:
                copies += 1
            for _ in range(copies):
                yield domain, rec["text"]


def count_documents(shards_dir: Path, domains: list[str]) -> dict[str, dict[str, int]]:
    """Documents per domain and split, for stats and for clear errors when a split is empty."""
    counts: dict[str, dict[str, int]] = {}
    for domain in domains:
        c = {s: 0 for s in SPLITS}
        for batch in iter_batches(domain_folder(shards_dir, domain), columns=["split"], batch_size=4096):
            for rec in batch:
                c[rec["split"]] = c.get(rec["split"], 0) + 1
        counts[domain] = c
    return counts


def require_train_documents(counts: dict[str, dict[str, int]]) -> None:
    if sum(c.get("train", 0) for c in counts.values()) == 0:
        raise CorpusError(f"the deduped shards hold no train-split documents (counts per domain: {counts})")


GENERAL = "general"  # the pseudo-domain name general documents carry in readers and stats


def iter_general(cfg, split: str, quarantined: dict[str, int] | None = None) -> Iterator[str]:
    """Texts of `split` from `base_checkpoint.general_data`, read as-is (no cleaning: it should be clean already).

    Unreadable input is never fatal and never silent: each item the readers quarantine is counted by reason in
    `quarantined` (shown in the stage's stats).
    """
    from llm_pipeline.curation.readers import Quarantined, read_source

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    for src in cfg.base_checkpoint.general_data:
        for item in read_source(cfg, GENERAL, src, licence=src.licence or "unknown"):
            if isinstance(item, Quarantined):
                if quarantined is not None:
                    quarantined[item.reason] = quarantined.get(item.reason, 0) + 1
                continue
            if item["text"].strip() and split_of(item["id"], cfg.eval_fraction) == split:
                yield item["text"]
