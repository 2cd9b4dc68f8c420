"""Per-domain evaluation results kept between eval_report runs, keyed by content hashes of what made them.

Scoring one model on one domain's held-out documents depends only on the model's files, that domain's deduped shard
and the eval settings. When a refresh changes one domain but leaves a model as it was (a pretrained base kept as
loaded, or a re-run after only the DPO settings changed), its scores on the other domains are read back instead of
computed again. The key holds every input by hash, so a stale entry is never found: it is just never asked for.

Entries live under ``<data_dir>/.cache/eval_report/<kind>/<key>.json``, beside (never inside) the outputs DVC and
Dagster hash, and are written atomically.

    cache = ResultCache(cfg.data_path)
    key = cache.key(model=model_identity(base_dir), shard=dvc_hash(shard_dir), ...)
    cache.get("perplexity", key) or cache.put("perplexity", key, value)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llm_pipeline.io import MANIFEST, STATS, file_md5, read_json, write_json

FOLDER = Path(".cache") / "eval_report"
# Files a training stage writes beside the model that do not change what the model computes.
NOT_MODEL = {MANIFEST, STATS, "training_log.json", "training_summary.json", "serving_manifest.json"}


def model_identity(*folders: Path) -> str:
    """A hash of the files that define a model (weights, configs, tokenizer) in each folder, top level only: an
    adapter's identity is its base folder's and its own together. Logs, stats and data files do not count."""
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(Path(folder).iterdir()):
            if f.is_file() and f.name not in NOT_MODEL and not f.name.endswith(".jsonl") and not f.name.startswith("."):
                h.update(f"{f.name}:{file_md5(f)}\n".encode())
        h.update(b"--\n")
    return h.hexdigest()[:32]


def source_version(*modules) -> str:
    """A hash of the code that computes a result, so that changing it retires the old entries."""
    h = hashlib.sha256()
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()[:16]


class ResultCache:
    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / FOLDER
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(**parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]

    def get(self, kind: str, key: str) -> Any | None:
        path = self.root / kind / f"{key}.json"
        try:
            value = read_json(path)
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, kind: str, key: str, value: Any) -> None:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"{key}.json", value)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}
