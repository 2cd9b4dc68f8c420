"""The model and data the training benchmarks share: a Llama built from a config (hidden 256, 4 layers, random
weights: throughput and memory do not depend on what the weights know) with the pipeline's own tokenizer, and the
documents of a materialized `deduped_shards` output.

    prepare(data_dir, work) -> (model_dir, texts_by_domain)
"""

from __future__ import annotations

import json
from pathlib import Path

HIDDEN, LAYERS, HEADS, INTERMEDIATE, MAX_POSITIONS = 256, 4, 4, 768, 1024


def prepare(data_dir: Path, work: Path) -> tuple[Path, dict[str, list[str]]]:
    """Save the benchmark model (with the pipeline's tokenizer) under `work/model`; return it and the train texts."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llm_pipeline.training.corpus import iter_documents

    tok_dir = data_dir / "tokenizer"
    shards = data_dir / "deduped_shards"
    if not (tok_dir / "tokenizer.json").exists() or not shards.exists():
        raise SystemExit(f"{data_dir} needs materialized tokenizer and deduped_shards outputs (llm-pipeline run --select raw_corpus,cleaned_corpus,deduped_shards,tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=MAX_POSITIONS,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        LlamaForCausalLM(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    domains = sorted(p.name for p in shards.iterdir() if p.is_dir() and not p.name.startswith("."))
    texts = {d: [r["text"] for r in iter_documents(shards, d, "train")] for d in domains}
    (work / "texts.json").write_text(json.dumps(texts))
    return model_dir, texts


def load_texts(work: Path) -> dict[str, list[str]]:
    return json.loads((work / "texts.json").read_text())
