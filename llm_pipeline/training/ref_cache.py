"""Reference log-probabilities for DPO, computed once per pair and cached with the dataset version.

The reference policy never changes during DPO, so its log-probabilities of every chosen and rejected answer are
computed in one no-grad pass before training (instead of a reference forward at every step) and kept in
``<data_dir>/.checkpoints/dpo_model/ref_logps/<key>.json``. The key hashes the tokenized pairs (the dataset
version), the reference model's identity (base weights + adapter file hashes, and which reference: SFT or base) and
the code's format version, so a changed pair, model or reference never reuses a stale value; a resumed or repeated
run with the same pairs and model reads them back instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

FORMAT = 1  # bump when what is cached (or how it is computed) changes


def dataset_version(tokenized: list[dict]) -> str:
    """A hash of the token ids of every pair, in order: the version of the data the values belong to."""
    h = hashlib.sha256()
    for p in tokenized:
        h.update(json.dumps([p["prompt_ids"], p["chosen_ids"], p["rejected_ids"]]).encode())
    return h.hexdigest()[:16]


def cache_key(tokenized: list[dict], model_identity: dict) -> str:
    ident = json.dumps({"format": FORMAT, "data": dataset_version(tokenized), "model": model_identity}, sort_keys=True)
    return f"{dataset_version(tokenized)}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def load_or_compute(folder: Path, tokenized: list[dict], model_identity: dict,
                    compute: Callable[[list[dict]], tuple[list[float], list[float]]]) -> tuple[list[float], list[float], bool]:
    """(chosen, rejected, from_cache): the cached values for these pairs and model, or computed now and stored."""
    path = Path(folder) / f"{cache_key(tokenized, model_identity)}.json"
    if path.exists():
        data = json.loads(path.read_text())
        if len(data["chosen"]) == len(tokenized):
            return data["chosen"], data["rejected"], True
    chosen, rejected = compute(tokenized)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"chosen": chosen, "rejected": rejected, "model": model_identity}))
    tmp.replace(path)  # atomic: a crash mid-write leaves no half file that a later run would trust
    return chosen, rejected, False
