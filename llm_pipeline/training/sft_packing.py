"""SFT records as token rows that use every token: tokenized with the chat template, packed, documents kept apart.

A record becomes one *segment* (token ids + labels): prompt/completion and messages records through the tokenizer's
chat template, with the loss on the answer only (`completion_only`); text records as plain tokens + eos, loss on
every token. A text segment longer than a row is cut into row-long chunks that overlap by one token, so every token
is predicted exactly once; an example segment longer than a row keeps its start and the cut tokens are counted.

Segments are packed best-fit-decreasing into rows of `max_length`. The collator gives each segment position ids
that restart at 0 and passes no attention mask: transformers then builds a block-diagonal causal mask from the
position ids (Llama-family models with sdpa/eager/flash attention), so documents in one row never see each other.
Models without that support get rows with a plain mask instead (documents separated by eos only), which is recorded.

The collator counts, per domain, the label tokens of every training batch it builds, batch by batch; the loader
builds one batch ahead of the step, so the tokens that reached training are those of the first `steps` batches.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

import torch

from llm_pipeline.training.packing import chat_ids, masked_ids, plain_ids

IGNORE = -100
# Architectures whose transformers 5 implementation builds its mask with `masking_utils.create_causal_mask`, which
# turns position ids that restart into a per-document block mask when no attention mask is given.
POSITION_PACKING_MODELS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "smollm3", "granite"}
POSITION_PACKING_ATTENTION = {"sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"}


@dataclass
class Segment:
    ids: list[int]
    labels: list[int]
    domain: str
    kind: str  # "text" or "example"

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def supports_position_packing(model) -> tuple[bool, str]:
    """Whether documents packed in one row can be kept apart by position ids alone, and why (for metadata)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    attn = getattr(config, "_attn_implementation", None)
    if kind in POSITION_PACKING_MODELS and attn in POSITION_PACKING_ATTENTION:
        return True, f"{kind} with {attn} attention: position ids restart per document and the mask keeps documents apart"
    return False, f"{kind} with {attn} attention has no position-id packing here: rows use a plain mask, documents separated by eos"


_chat_ids = chat_ids


def _plain(rec: dict) -> bool:
    return "text" in rec and "prompt" not in rec and "messages" not in rec


def _text_segment(rec: dict, ids: list[int], tokenizer) -> Segment:
    """A plain-text record's segment: its ids and an end-of-text token, every one of them a label but the tokens
    stored as -(id + 1) (a surrogate's, from the record's `no_loss` spans: read, not predicted)."""
    ids = list(ids) + [tokenizer.eos_token_id]
    return Segment([t if t >= 0 else -t - 1 for t in ids], [t if t >= 0 else IGNORE for t in ids],
                   str(rec.get("domain", "user")), "text")


def _text_ids(records: list[dict], tokenizer) -> list[list[int]]:
    texts = [r["text"] for r in records]
    if any(r.get("no_loss") for r in records):
        return masked_ids(tokenizer, texts, [[tuple(s) for s in r.get("no_loss") or []] for r in records])
    return plain_ids(tokenizer, texts)


def encode(rec: dict, tokenizer, completion_only: bool) -> Segment:
    """One record as a segment; labels are IGNORE on what the loss must skip (prompt, user turns)."""
    domain = str(rec.get("domain", "user"))
    if _plain(rec):
        return _text_segment(rec, _text_ids([rec], tokenizer)[0], tokenizer)
    if "prompt" in rec:
        messages = [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["completion"]}]
    else:
        messages = rec["messages"]
    ids = _chat_ids(tokenizer, messages)
    if not completion_only:
        return Segment(ids, list(ids), domain, "example")
    labels = [IGNORE] * len(ids)
    # The answer tokens of each assistant turn: what the rendered conversation gains from the turn, beyond the
    # prompt that asks for it. Templates render a prefix of the conversation as a prefix of the whole.
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_chat_ids(tokenizer, messages[:i], add_generation_prompt=True))
        end = len(_chat_ids(tokenizer, messages[: i + 1]))
        for j in range(start, min(end, len(ids))):
            labels[j] = ids[j]
    return Segment(ids, labels, domain, "example")


def encode_all(records: list[dict], tokenizer, completion_only: bool) -> list[Segment]:
    """`encode` for every record, the plain-text ones tokenized in one batched call (the same ids, without a
    tokenizer call per document, which dominated on corpora of thousands of documents)."""
    plain = [i for i, r in enumerate(records) if _plain(r)]
    ids = _text_ids([records[i] for i in plain], tokenizer) if plain else []
    out: list[Segment | None] = [None] * len(records)
    for i, seq in zip(plain, ids):
        out[i] = _text_segment(records[i], seq, tokenizer)
    return [seg if seg is not None else encode(r, tokenizer, completion_only) for seg, r in zip(out, records)]


def fit(seg: Segment, max_length: int, dropped: Counter) -> list[Segment]:
    """Row-sized pieces of a segment: text in chunks overlapping by one token, examples cut at the end."""
    if len(seg.ids) <= max_length:
        return [seg]
    if seg.kind == "example":
        cut = Segment(seg.ids[:max_length], seg.labels[:max_length], seg.domain, seg.kind)
        dropped[f"{seg.domain}:example_tokens_past_max_length"] += seg.n_labels - cut.n_labels
        return [cut]
    pieces, step = [], max_length - 1
    for start in range(0, len(seg.ids) - 1, step):
        ids = seg.ids[start : start + max_length]
        labels = list(seg.labels[start : start + max_length])
        if start:
            labels[0] = IGNORE  # predicted as the last token of the previous chunk
        pieces.append(Segment(ids, labels, seg.domain, seg.kind))
    return pieces


def pack(segments: list[Segment], max_length: int, enabled: bool = True) -> list[list[Segment]]:
    """Rows of segments, best-fit decreasing (fewest rows, least padding); one segment a row when disabled."""
    if not enabled:
        return [[s] for s in segments]
    rows: list[list[Segment]] = []
    free: list[tuple[int, int]] = []  # (space left, row index), sorted
    for seg in sorted(segments, key=lambda s: len(s.ids), reverse=True):
        need = len(seg.ids)
        k = bisect.bisect_left(free, (need, -1))
        if k < len(free):
            space, row = free.pop(k)
            rows[row].append(seg)
            bisect.insort(free, (space - need, row))
        else:
            rows.append([seg])
            bisect.insort(free, (max_length - need, len(rows) - 1))
    return rows


def as_records(rows: list[list[Segment]], split: str) -> list[dict]:
    """Rows in the shape the dataset and collator use (plain lists, so `datasets` can hold them)."""
    out = []
    for row in rows:
        out.append({
            "input_ids": [t for s in row for t in s.ids],
            "labels": [t for s in row for t in s.labels],
            "seq_lengths": [len(s.ids) for s in row],
            "seq_domains": [f"{s.kind}:{s.domain}" for s in row],  # what the collator counts trained tokens by
            "split": split,
        })
    return out


def label_tokens_by_domain(segments: list[Segment]) -> Counter:
    counts: Counter = Counter()
    for s in segments:
        counts[s.domain] += s.n_labels - 1 if s.labels and s.labels[0] != IGNORE else s.n_labels
    return counts


@dataclass
class PackedCollator:
    """Batches of packed rows: position ids restart per segment, padding is a segment of its own with no labels."""

    pad_id: int
    position_packing: bool
    batches: list[Counter] = field(default_factory=list)  # label tokens per domain of each training batch, in order

    def trained(self, steps: int | None = None) -> Counter:
        """Label tokens per domain of the first `steps` training batches (all when None)."""
        total: Counter = Counter()
        for c in self.batches[:steps]:
            total.update(c)
        return total

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        counts: Counter = Counter()
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[b, :n] = torch.tensor(r["input_ids"])
            lab = torch.tensor(r["labels"])
            start = 0
            for length, domain in zip(r["seq_lengths"], r["seq_domains"]):
                positions[b, start : start + length] = torch.arange(length)
                lab[start] = IGNORE  # a segment's first token has nothing of its own before it
                if r.get("split") == "train":
                    counts[domain] += int((lab[start : start + length] != IGNORE).sum())
                start += length
            labels[b, :n] = lab
            positions[b, n:] = torch.arange(width - n)
            mask[b, :n] = 1
        if rows[0].get("split") == "train":
            self.batches.append(counts)
        if self.position_packing:
            return {"input_ids": ids, "labels": labels, "position_ids": positions}
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
