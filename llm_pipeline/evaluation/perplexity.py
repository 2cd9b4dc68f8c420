"""Held-out perplexity and bits per byte, per document and per domain.

A document is tokenized whole, preceded by the tokenizer's BOS (or EOS, the pretraining document separator) as
context so that its first token is scored too, and cut into windows of the model's max positions. Each window after
the first starts with the last token of the one before, so every document token is predicted exactly once.

- perplexity = exp(total NLL / scored tokens): token-weighted, so long documents count for what they are.
- bits per byte = total NLL (nats) / ln 2 / UTF-8 bytes: comparable across tokenizers, unlike perplexity.

`skip` leaves character spans of each text out of the score (the surrogates that fill PII tags, or the tags
themselves: `evaluation/heldout.py`): a token whose characters touch a span is still read as context but not
scored, and the bytes inside the spans do not count. The bytes left out are the spans' own, whatever the tokenizer,
so bits per byte still compares across tokenizers (the few characters a token straddling a span's edge holds outside
it stay in the byte count without their NLL: the same bytes for every model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llm_pipeline.evaluation.models import LoadedModel


@dataclass
class Score:
    nll: float = 0.0  # nats, summed over scored tokens
    tokens: int = 0
    bytes: int = 0
    documents: int = 0

    def add(self, other: "Score") -> None:
        self.nll += other.nll
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.documents += other.documents

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes if self.bytes else float("nan")

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    def as_dict(self) -> dict[str, float | int]:
        return {
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "mean_nll": self.mean_nll,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "documents": self.documents,
        }


def context_token(tokenizer) -> int | None:
    """The id put before a document as context: BOS, else EOS (what separates documents in pretraining)."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return None


def windows(ids: list[int], size: int) -> list[list[int]]:
    """Cut a sequence into windows of at most `size` tokens, overlapping by one so each later token is a target once."""
    if size < 2:
        raise ValueError(f"a window needs at least 2 tokens, got {size}")
    out = []
    start = 0
    while start < len(ids) - 1:
        out.append(ids[start : start + size])
        start += size - 1
    return out


@torch.inference_mode()
def window_nll(model, batch: list[list[int]], pad_id: int, weights: list[list[int] | None] | None = None) -> list[float]:
    """Summed next-token NLL (nats) of each window in one padded forward pass. `weights`, per window, says for each
    target (the window's tokens after the first) whether it counts (1) or is only read (0); None counts them all."""
    longest = max(len(w) for w in batch)
    device = next(model.parameters()).device  # a model still on the GPU it trained on (base_checkpoint's check)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for i, w in enumerate(batch):
        input_ids[i, : len(w)] = torch.tensor(w, dtype=torch.long)
        mask[i, : len(w)] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none").view(targets.shape)
    keep = mask[:, 1:].clone()
    for i, w in enumerate(weights or []):
        if w is not None:
            keep[i, : len(w)] = torch.tensor(w, dtype=torch.long)
    nll = nll * keep.to(nll.device)
    return nll.sum(dim=1).tolist()


def tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens: one batched call into a fast tokenizer's Rust backend (the
    same ids as calling the tokenizer on each text, without the per-call overhead), else one call per text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def encode(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Token ids and their (start, end) character offsets in each text, without special tokens: what `score_texts`
    needs to leave spans out (`token_ids` and `offsets`). A fast tokenizer only: a slow one has no offsets."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"leaving spans out of a score needs a fast tokenizer's offsets; {type(tokenizer).__name__} has none")
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    return [e.ids for e in encodings], [[tuple(o) for o in e.offsets] for e in encodings]


def _merged(spans) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in spans if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def bytes_outside(text: str, spans) -> int:
    """UTF-8 bytes of `text` outside the character `spans`."""
    inside = sum(len(text[a:b].encode("utf-8")) for a, b in _merged(spans))
    return len(text.encode("utf-8")) - inside


def scored_flags(text_len: int, offsets: list[tuple[int, int]], spans) -> list[int]:
    """1 for each token scored, 0 for one whose characters touch a span (read as context only)."""
    merged = _merged(spans)
    if not merged:
        return [1] * len(offsets)
    inside = bytearray(text_len + 1)
    for a, b in merged:
        inside[a:b] = b"\x01" * (b - a)
    return [0 if b > a and inside.find(1, a, b) != -1 else 1 for a, b in offsets]


def score_texts(lm: LoadedModel, texts: list[str], batch_size: int = 8, window: int | None = None,
                token_ids: list[list[int]] | None = None, skip: list | None = None,
                offsets: list[list[tuple[int, int]]] | None = None) -> list[Score]:
    """One `Score` per text. Windows of all texts are batched together, shortest first, to waste little padding.
    `token_ids` are the texts already tokenized with `lm.tokenizer` (models sharing a tokenizer tokenize once).
    `skip`: per text, (start, end) character spans left out of the score (see the module docstring); it needs the
    tokens' `offsets` (`encode`), which are computed here when `token_ids` come without them."""
    tok = lm.tokenizer
    size = window or lm.window
    ctx = context_token(tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    skip = skip if skip is not None and any(skip) else None
    if skip is not None and len(skip) != len(texts):
        raise ValueError(f"skip has {len(skip)} entries for {len(texts)} texts")
    if skip is not None and offsets is None:
        token_ids, offsets = encode(tok, texts)
    all_ids = token_ids if token_ids is not None else tokenize(tok, texts)
    scores = [Score(bytes=bytes_outside(t, skip[i]) if skip is not None else len(t.encode("utf-8")), documents=1)
              for i, t in enumerate(texts)]
    jobs: list[tuple[int, list[int], list[int] | None]] = []
    for i, ids in enumerate(all_ids):
        lead = [ctx] if ctx is not None else []
        seq = lead + list(ids)
        flags = None
        if skip is not None and skip[i]:
            flags = [1] * len(lead) + scored_flags(len(texts[i]), offsets[i], skip[i])
        for k, w in enumerate(windows(seq, size)):
            start = k * (size - 1)
            weights = flags[start + 1 : start + len(w)] if flags is not None else None
            jobs.append((i, w, weights))
            scores[i].tokens += sum(weights) if weights is not None else len(w) - 1
    jobs.sort(key=lambda job: len(job[1]))
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        weights = [wt for _, _, wt in chunk]
        nlls = window_nll(lm.model, [w for _, w, _ in chunk], pad_id, weights if any(x is not None for x in weights) else None)
        for (i, _, _), nll in zip(chunk, nlls):
            scores[i].nll += nll
    return scores


def total(scores: list[Score]) -> Score:
    out = Score()
    for s in scores:
        out.add(s)
    return out


def to_rows(scores: list[Score]) -> list[list[float | int]]:
    """Per-document scores as plain rows (for the result cache)."""
    return [[s.nll, s.tokens, s.bytes] for s in scores]


def from_rows(rows: list[list[float | int]]) -> list[Score]:
    return [Score(nll=float(n), tokens=int(t), bytes=int(b), documents=1) for n, t, b in rows]
