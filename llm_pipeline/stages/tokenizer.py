"""Stage `tokenizer`: a byte-level BPE trained on every domain's train split, or a pretrained tokenizer extended
with domain terms.

    llm-pipeline stage tokenizer

Mode `train` learns `vocab_size` tokens from the train-split documents (per-domain sampling weights from
`tokenizer.domain_weights`). Mode `extend` loads the base tokenizer (`tokenizer.base_model`, or when unset the
base_checkpoint's model: a local folder, a hub id, or the tokenizer inside a GGUF file) and adds up to
`extend_max_new_tokens` frequent domain terms that it splits into many pieces (never PII redaction tags such as
`<PERSON>`, nor numbers). Whether the terms pay is measured later, by base_checkpoint, in bits per byte on held-out
text after training; it drops them again when they do not. Fertility (tokens per word) is
measured per domain on the held-out split, for the new tokenizer and the base one (in train mode the base is
`tokenizer.base_model` when set), and shown with a tokenized sample in the stage's metadata and wandb run.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.security import confine, looks_like_path
from llm_pipeline.stages import StageOutput
from llm_pipeline.training import bpe, vocab_extension
from llm_pipeline.training.corpus import count_documents, iter_texts, require_train_documents, weighted_texts
from llm_pipeline.training.model_source import ModelLocation, load_from, model_location
from llm_pipeline.training.tracking import tracked_run

FERTILITY_DOCS = 200  # held-out documents per domain for the fertility figure: enough for a stable ratio


def _fertility_texts(shards: Path, domain: str, counts: dict) -> list[str]:
    # Held-out text measures how the vocabulary generalises; fall back to train text when a domain has no eval docs.
    split = "eval" if counts[domain].get("eval", 0) else "train"
    return [t for _, t in itertools.islice(iter_texts(shards, [domain], split), FERTILITY_DOCS)]


def count_tokens(tokenizer, texts: Iterable[str], batch: int = 512) -> int:
    """Tokens in `texts` (no special tokens), a batch at a time through the fast tokenizer's Rust backend, which
    encodes a batch on every core; one call per document spent a third of its time in Python on one core."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    texts = iter(texts)
    total = 0
    for chunk in iter(lambda: list(itertools.islice(texts, batch)), []):
        if backend is not None:
            total += sum(len(e.ids) for e in backend.encode_batch(chunk, add_special_tokens=False))
        else:
            total += sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in chunk)
    return total


def base_tokenizer_location(cfg: PipelineConfig) -> ModelLocation | None:
    """Where the base tokenizer lives: tokenizer.base_model, else (extend mode) the base_checkpoint's model."""
    name = cfg.tokenizer.base_model
    if name:
        local = cfg.resolve(name)
        if local.exists() or looks_like_path(name):
            folder = confine(cfg, name, "tokenizer.base_model")
            gguf = cfg.base_checkpoint.gguf_file
            # A GGUF base carries its tokenizer inside the file.
            return ModelLocation(str(folder), gguf if gguf and (folder / gguf).is_file() else None)
        return ModelLocation(name, None, hub_id=True)
    if cfg.tokenizer.mode == "train":
        return None
    if cfg.base_checkpoint.source == "scratch":
        raise ValueError(
            "tokenizer.mode is 'extend' but tokenizer.base_model is not set and base_checkpoint.source is 'scratch': "
            "name the tokenizer to extend (a local folder or hub id), or the pretrained base model"
        )
    return model_location(cfg)


def load_base_tokenizer(cfg: PipelineConfig):
    from transformers import AutoTokenizer

    loc = base_tokenizer_location(cfg)
    if loc is None:
        return None, None
    return loc.describe(), load_from(loc, AutoTokenizer, "tokenizer.base_model", weights=False, trust_remote_code=cfg.base_checkpoint.trust_remote_code)


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    tc = cfg.tokenizer
    shards = inputs["deduped_shards"]
    counts = count_documents(shards, cfg.domain_names)
    require_train_documents(counts)
    started = time.perf_counter()
    seen: dict[str, int] = {}
    stats: dict = {"mode": tc.mode}
    base_name, base = load_base_tokenizer(cfg)

    if tc.mode == "train":
        texts = bpe.counting(weighted_texts(shards, cfg.domain_names, tc.domain_weights, cfg.seed), seen)
        tokenizer = bpe.train_bpe(texts, tc.vocab_size, tc.min_frequency, tc.special_tokens)
    else:
        counts_words = vocab_extension.count_words(bpe.counting(weighted_texts(shards, cfg.domain_names, tc.domain_weights, cfg.seed), seen))
        terms = vocab_extension.mine_terms(base, counts_words, tc.min_frequency, tc.extend_max_new_tokens)
        _, tokenizer = load_base_tokenizer(cfg)  # a second copy to extend; `base` stays as it was for comparison
        base_vocab = len(tokenizer)
        added = vocab_extension.add_terms(tokenizer, terms)
        vocab_extension.finish(tokenizer)
        vocab_extension.write_extension(output_dir, base_name, base_vocab, tokenizer, terms)
        stats.update(base_vocab_size=base_vocab, tokens_added=added, terms_considered=len(counts_words))

    tokenizer.save_pretrained(output_dir)

    fert, fert_base = {}, {}
    for d in cfg.domain_names:
        texts = _fertility_texts(shards, d, counts)
        fert[d] = bpe.fertility(tokenizer, texts)["tokens_per_word"]
        if base is not None:
            fert_base[d] = bpe.fertility(base, texts)["tokens_per_word"]
    tokens_seen = count_tokens(tokenizer, (t for _, t in weighted_texts(shards, cfg.domain_names, tc.domain_weights, cfg.seed)))
    sample = next(iter_texts(shards, cfg.domain_names[:1], "train"))[1]
    stats.update(
        vocab_size=len(tokenizer),
        fertility=fert,
        documents_seen=sum(seen.values()),
        documents_seen_per_domain=seen,
        tokens_seen=tokens_seen,
        documents_per_split={d: c for d, c in counts.items()},
        seconds=round(time.perf_counter() - started, 3),
    )
    if fert_base:
        stats["fertility_base"] = fert_base
        stats["base_tokenizer"] = base_name
    table = "| domain | tokens/word |" + (" base tokens/word |" if fert_base else "") + "\n|---|---|" + ("---|" if fert_base else "")
    for d in cfg.domain_names:
        table += f"\n| {d} | {fert[d]} |" + (f" {fert_base[d]} |" if fert_base else "")
    sample_md = bpe.preview_tokens(tokenizer, sample)
    preview = f"**{tc.mode}** tokenizer, vocabulary {len(tokenizer)}\n\n{sample_md}\n\n{table}"

    with tracked_run(cfg, "tokenizer", tc.model_dump(mode="json"), inputs) as tracker:
        tracker.log({"vocab_size": len(tokenizer), **{f"fertility/{d}": v for d, v in fert.items()},
                     **{f"fertility_base/{d}": v for d, v in fert_base.items()}})
        tracker.summary({k: v for k, v in stats.items() if isinstance(v, (int, float, str))})
    metadata = {
        "vocab_size": len(tokenizer),
        "fertility": table,
        "tokenized_sample": sample_md,
        "special_tokens": tokenizer.all_special_tokens,
        **tracker.metadata(),
    }
    return StageOutput(stats=stats, preview=preview, metadata=metadata)
