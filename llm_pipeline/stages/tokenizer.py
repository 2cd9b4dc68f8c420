"""Stage `tokenizer`: a byte-level BPE trained on every domain's train split, or a pretrained tokenizer extended
with domain terms.

    llm-pipeline stage tokenizer

Mode `train` learns `vocab_size` tokens from the train-split documents (per-domain sampling weights from
`tokenizer.domain_weights`). Mode `extend` loads `tokenizer.base_model` (a local folder; nothing is downloaded) and
adds up to `extend_max_new_tokens` frequent domain terms that it splits into many pieces. Fertility (tokens per
word) is measured on the held-out split of each domain.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.security import confine, looks_like_path
from llm_pipeline.stages import StageOutput
from llm_pipeline.training import bpe, vocab_extension
from llm_pipeline.training.corpus import count_documents, iter_texts, require_train_documents, weighted_texts

FERTILITY_DOCS = 200  # held-out documents per domain for the fertility figure: enough for a stable ratio


def _fertility_texts(shards: Path, domain: str, counts: dict) -> list[str]:
    # Held-out text measures how the vocabulary generalises; fall back to train text when a domain has no eval docs.
    split = "eval" if counts[domain].get("eval", 0) else "train"
    return [t for _, t in itertools.islice(iter_texts(shards, [domain], split), FERTILITY_DOCS)]


def load_base_tokenizer(cfg: PipelineConfig):
    from transformers import AutoTokenizer

    name = cfg.tokenizer.base_model
    if not name:
        raise ValueError("tokenizer.mode is 'extend' but tokenizer.base_model is not set (a local tokenizer folder)")
    local = cfg.resolve(name)
    source = str(confine(cfg, name, "tokenizer.base_model")) if local.exists() or looks_like_path(name) else name
    kwargs = {}
    gguf = cfg.base_checkpoint.gguf_file
    if gguf and (Path(source) / gguf).is_file():
        kwargs["gguf_file"] = gguf  # a GGUF base carries its tokenizer inside the file
    try:
        return source, AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.base_checkpoint.trust_remote_code, **kwargs)
    except OSError as exc:
        raise ValueError(f"tokenizer.base_model {name!r}: cannot load a tokenizer from it offline ({exc})") from None


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    tc = cfg.tokenizer
    shards = inputs["deduped_shards"]
    counts = count_documents(shards, cfg.domain_names)
    require_train_documents(counts)
    started = time.perf_counter()
    seen: dict[str, int] = {}
    stats: dict = {"mode": tc.mode}

    if tc.mode == "train":
        texts = bpe.counting(weighted_texts(shards, cfg.domain_names, tc.domain_weights, cfg.seed), seen)
        tokenizer = bpe.train_bpe(texts, tc.vocab_size, tc.min_frequency, tc.special_tokens)
        base = None
    else:
        base_name, base = load_base_tokenizer(cfg)
        counts_words = vocab_extension.count_words(bpe.counting(weighted_texts(shards, cfg.domain_names, tc.domain_weights, cfg.seed), seen))
        terms = vocab_extension.mine_terms(base, counts_words, tc.min_frequency, tc.extend_max_new_tokens)
        _, tokenizer = load_base_tokenizer(cfg)
        base_vocab = len(tokenizer)
        added = vocab_extension.add_terms(tokenizer, terms)
        if tokenizer.chat_template is None:
            tokenizer.add_special_tokens({"additional_special_tokens": [bpe.USER, bpe.ASSISTANT]})
            tokenizer.chat_template = bpe.CHAT_TEMPLATE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        vocab_extension.write_extension(output_dir, base_name, base_vocab, tokenizer, terms)
        stats.update(base_vocab_size=base_vocab, tokens_added=added, terms_considered=len(counts_words))

    tokenizer.save_pretrained(output_dir)

    fert, fert_base = {}, {}
    for d in cfg.domain_names:
        texts = _fertility_texts(shards, d, counts)
        fert[d] = bpe.fertility(tokenizer, texts)["tokens_per_word"]
        if base is not None:
            fert_base[d] = bpe.fertility(base, texts)["tokens_per_word"]
    tokens_seen = sum(
        len(ids) for _, text in weighted_texts(shards, cfg.domain_names, tc.domain_weights, cfg.seed)
        for ids in [tokenizer(text, add_special_tokens=False)["input_ids"]]
    )
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
    preview = f"**{tc.mode}** tokenizer, vocabulary {len(tokenizer)}\n\n" + bpe.preview_tokens(tokenizer, sample)
    preview += "\n\n| domain | tokens/word |" + (" base |" if fert_base else "") + "\n|---|---|" + ("---|" if fert_base else "")
    for d in cfg.domain_names:
        preview += f"\n| {d} | {fert[d]} |" + (f" {fert_base[d]} |" if fert_base else "")
    return StageOutput(stats=stats, preview=preview, metadata={"special_tokens": tokenizer.all_special_tokens})
