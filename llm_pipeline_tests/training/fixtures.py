"""Tiny inline corpora and configs for the training tests: two domains of short documents in deduped-shard form."""

from __future__ import annotations

import random
from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import MANIFEST, ShardWriter, iter_batches, shard_files, write_json

VOCAB = {
    "legal": ["contract", "tenant", "landlord", "clause", "liability", "agreement", "court", "statute", "party", "breach",
              "indemnity", "jurisdiction", "plaintiff", "defendant", "warranty", "termination"],
    "medicine": ["patient", "dosage", "hypertension", "diagnosis", "clinical", "symptom", "therapy", "cardiology",
                 "infection", "antibiotic", "prescription", "chronic", "treatment", "physician", "vaccine", "fever"],
}
GLUE = ["the", "of", "and", "a", "to", "is", "in", "for", "with", "shall", "may", "be", "on", "by", "each"]


def _document(rng: random.Random, domain: str, i: int) -> str:
    words = VOCAB[domain]
    heading = f"# {rng.choice(words).title()} {rng.choice(words)} {i}"
    sentences = []
    for _ in range(rng.randint(3, 6)):
        n = rng.randint(6, 12)
        s = " ".join(rng.choice(words) if rng.random() < 0.5 else rng.choice(GLUE) for _ in range(n))
        sentences.append(s.capitalize() + ".")
    return heading + "\n\n" + " ".join(sentences)


def write_deduped_shards(data_dir: Path, docs_per_domain: int = 40, eval_every: int = 6, seed: int = 0) -> Path:
    """A deduped_shards output folder (with manifests) holding two domains of short synthetic documents.

    Every `eval_every`-th document is held out, so each domain is sure to have both splits however few docs it has.
    """
    root = Path(data_dir) / "deduped_shards"
    rng = random.Random(seed)
    for domain in VOCAB:
        with ShardWriter(root / domain, max_rows=25) as writer:
            for i in range(docs_per_domain):
                doc_id = f"{domain}-{i:04d}"
                text = _document(rng, domain, i)
                writer.write({
                    "id": doc_id, "domain": domain, "source": "inline", "text": text, "licence": "CC0",
                    "language": "en", "format": "md", "n_words": len(text.split()), "pii_counts": "{}",
                    "split": "eval" if i % eval_every == 0 else "train",
                })
        write_json(root / domain / MANIFEST, {"stage": "deduped_shards", "domain": domain})
    return root


def tiny_config(tmp_path: Path, **sections) -> PipelineConfig:
    """A config sized for tests: vocab ~300, hidden 32, one layer, a handful of steps, tracking off."""
    data = {
        "name": "tiny",
        "data_dir": str(tmp_path / "data"),
        "seed": 7,
        "domains": {d: {"sources": [{"path": f"in/{d}"}]} for d in VOCAB},
        "tokenizer": {"vocab_size": 300, "min_frequency": 2},
        "base_checkpoint": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
                            "max_positions": 64, "train_steps": 6, "seq_len": 32, "batch_size": 4,
                            "eval_every": 3, "checkpoint_every": 3},
        "lora_adapter": {"r": 4, "alpha": 8, "max_steps": 3, "batch_size": 4, "max_length": 64, "examples_per_domain": 6},
        "dpo_model": {"max_steps": 2, "batch_size": 4, "max_length": 64, "pairs_per_domain": 4, "min_pairs": 2},
        "tracking": {"wandb": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    cfg = PipelineConfig.model_validate(data)
    cfg.root = tmp_path
    return cfg


STAGE_ORDER = ("tokenizer", "base_checkpoint", "lora_adapter", "dpo_model")
_BUILT: dict[str, tuple[PipelineConfig, dict]] = {}


def built_pipeline(tmp_path_factory, upto: str):
    """A tiny config whose training stages have run up to and including `upto`, built once per test session.

    Returns (cfg, results) where results maps stage name to its `StageResult`. Later stages reuse the earlier outputs,
    so the four stage test modules together train each tiny model once.
    """
    from llm_pipeline.runner import run_stage

    if "cfg" not in _BUILT:
        root = tmp_path_factory.mktemp("training-pipeline")
        cfg = tiny_config(root)
        write_deduped_shards(cfg.data_path)
        _BUILT["cfg"] = (cfg, {})
    cfg, results = _BUILT["cfg"]
    for name in STAGE_ORDER[: STAGE_ORDER.index(upto) + 1]:
        if name not in results:
            results[name] = run_stage(cfg, name)
    return cfg, results


TAGGED = " <PERSON> of <ORGANIZATION> signed it on <DATE_TIME> in <LOCATION>; write to <EMAIL_ADDRESS>."


def write_tagged_shards(data_dir: Path, docs_per_domain: int = 18) -> Path:
    """`write_deduped_shards`, with PII type tags in every document as cleaned_corpus's type_tag mode writes them."""
    root = write_deduped_shards(data_dir, docs_per_domain=docs_per_domain)
    for domain in VOCAB:
        rows = [rec for batch in iter_batches(root / domain) for rec in batch]
        for path in shard_files(root / domain):
            path.unlink()
        with ShardWriter(root / domain, max_rows=25) as writer:
            for rec in rows:
                head, _, body = rec["text"].partition("\n\n")
                writer.write({**rec, "text": f"{head}\n\n{body}{TAGGED}"})
        write_json(root / domain / MANIFEST, {"stage": "deduped_shards", "domain": domain})
    return root
