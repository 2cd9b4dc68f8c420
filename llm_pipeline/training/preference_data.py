"""Preference pairs for DPO: the user's files, or synthetic pairs built from the corpus.

A synthetic pair takes a prefix of a document as the prompt ("Continue this <domain> text: ..."), the document's
true continuation as `chosen`, and as `rejected` either the continuation of another document of the same domain
(`other_document`: fluent but off-topic) or the SFT model's own greedy continuation (`model_sample`: what the model
already says, which DPO should move away from toward the real text). Which one is recorded per pair. Training
pairs come from train-split documents, held-out pairs from eval-split documents.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import xxhash

from llm_pipeline.training.corpus import iter_documents
from llm_pipeline.training.sft_data import _read_table

PROMPT_WORDS = 32
CONTINUATION_WORDS = 24
MIN_WORDS = 16  # a prompt and a continuation of at least a few words each
EVAL_SHARE = 0.15


class PreferenceDataError(ValueError):
    """Preference data that cannot be used."""


def split_document(text: str) -> tuple[str, str] | None:
    words = text.split()
    if len(words) < MIN_WORDS:
        return None
    cut = min(PROMPT_WORDS, len(words) // 2)
    return " ".join(words[:cut]), " ".join(words[cut : cut + CONTINUATION_WORDS])


def prompt_for(domain: str, prefix: str) -> str:
    # The same wording as the SFT `continue` template, so DPO refines a behaviour the SFT adapter already has.
    return f"Continue this {domain} text:\n{prefix}"


def synthetic_pairs(shards: Path, domain: str, split: str, limit: int, seed: int, skipped: Counter) -> list[dict]:
    """Up to `limit` pairs whose rejected side is another document's continuation (rotated by a seeded offset)."""
    pieces = []
    for rec in iter_documents(shards, domain, split):
        parts = split_document(rec["text"])
        if parts is None:
            skipped["too_short"] += 1
            continue
        pieces.append((rec["id"], *parts))
        if len(pieces) >= limit + 1:
            break
    if len(pieces) < 2:
        skipped["fewer_than_two_documents"] += len(pieces)
        return []
    n = len(pieces) if len(pieces) <= limit else limit
    shift = 1 + seed % (len(pieces) - 1)  # never 0: a document is never its own negative
    pairs = []
    for i in range(n):
        doc_id, prefix, continuation = pieces[i]
        other_id, _, other = pieces[(i + shift) % len(pieces)]
        if other.strip() == continuation.strip():
            skipped["identical_continuations"] += 1
            continue
        pairs.append({
            "prompt": prompt_for(domain, prefix), "chosen": continuation, "rejected": other, "domain": domain,
            "rejected_source": "other_document", "source_id": doc_id, "rejected_id": other_id,
        })
    return pairs


def model_rejections(pairs: list[dict], model, tokenizer, max_new_tokens: int) -> int:
    """Replace each pair's rejected side with the model's greedy continuation; returns how many were replaced.

    A sample that is empty (the model stopped at once) or equal to `chosen` is no negative: that pair keeps its
    other-document rejection, and `rejected_source` says which it got.
    """
    replaced = 0
    import torch

    model.eval()
    tokenizer.padding_side = "left"
    with torch.no_grad():
        for start in range(0, len(pairs), 16):
            chunk = pairs[start : start + 16]
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False, add_generation_prompt=True) for p in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            for p, ids in zip(chunk, out[:, enc["input_ids"].shape[1] :]):
                sample = tokenizer.decode(ids, skip_special_tokens=True).strip()
                if sample and sample != p["chosen"].strip():
                    p.update(rejected=sample, rejected_source="model_sample", rejected_id=None)
                    replaced += 1
    tokenizer.padding_side = "right"
    return replaced


def read_user_pairs(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    train, held = [], []
    for path in paths:
        if not path.exists():
            raise PreferenceDataError(f"preference data file not found: {path}")
        for n, row in enumerate(_read_table(path)):
            missing = {"prompt", "chosen", "rejected"} - set(row)
            if missing:
                raise PreferenceDataError(f"{path}:{n + 1}: a preference row needs prompt, chosen and rejected; lacks {sorted(missing)}")
            rec = {k: row[k] for k in ("prompt", "chosen", "rejected")}
            rec.update(domain=str(row.get("domain", "user")), rejected_source=f"file:{path.name}")
            key = json.dumps(rec, sort_keys=True, default=str).encode()
            (held if xxhash.xxh64_intdigest(key) / 2**64 < EVAL_SHARE else train).append(rec)
    if not train:
        raise PreferenceDataError(f"no preference pairs in {', '.join(map(str, paths))}")
    return train, held


def as_conversation(rec: dict) -> dict:
    """A pair in TRL's conversational shape (string fields are wrapped; message lists pass through)."""
    wrap = lambda role, v: v if isinstance(v, list) else [{"role": role, "content": str(v)}]  # noqa: E731
    return {"prompt": wrap("user", rec["prompt"]), "chosen": wrap("assistant", rec["chosen"]), "rejected": wrap("assistant", rec["rejected"])}
