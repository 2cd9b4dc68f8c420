"""Train / held-out split of documents, deterministic by id hash and therefore stratified by domain in expectation.

Every stage that needs held-out data (pretraining eval loss, SFT/DPO eval sets, the eval report) asks this module,
so no model ever trains on a document another stage treats as held out. The split happens after dedup, so a
near-duplicate of a held-out document cannot sit in the training split.
"""

from __future__ import annotations

import xxhash

SPLIT_SALT = "llm-pipeline/split/v1"


def heldout_score(doc_id: str) -> float:
    """A number in [0, 1) that depends only on the document id."""
    return xxhash.xxh64_intdigest(f"{SPLIT_SALT}:{doc_id}".encode("utf-8")) / 2**64


def is_heldout(doc_id: str, eval_fraction: float) -> bool:
    return heldout_score(doc_id) < eval_fraction


def split_of(doc_id: str, eval_fraction: float) -> str:
    return "eval" if is_heldout(doc_id, eval_fraction) else "train"
