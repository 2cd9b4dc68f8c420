"""Packed sequences for next-token pretraining: documents joined with eos and cut into fixed-length chunks.

Packing uses every token (no per-document truncation or padding, except the tail of the last chunk). The order of
chunks is a pure function of (seed, step), so a run resumed from a checkpoint at step k sees exactly the batches an
uninterrupted run would have seen from step k on. `MixedChunks` draws a fixed share of rows from domain chunks and
the rest from general-text chunks (continued pretraining), under the same rule.

A token stored as -(id + 1) in a stream is read but not predicted (its label is ignored): the tokens of the
surrogates that fill PII tags (training.tag_fill), so the model reads natural text without learning made-up values.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np
import torch

IGNORE_INDEX = -100  # labels the loss skips (the padded tail of the last chunk)
ENCODE_BATCH = 256


def special_strings(tokenizer) -> list[str]:
    """Every special token's text (eos, pad, chat markers, added specials), longest first."""
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            found.add(str(added))
    return sorted((t for t in found if t), key=len, reverse=True)


def plain_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of document texts, a special token's text inside a document tokenized as the plain characters it
    is: a scraped page holding "<|endoftext|>" or "<|assistant|>" must not end a document or open a chat turn in
    training. Only the packer's own separators (eos) are special ids."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def defuse_specials(text: str, specials: list[str]) -> str:
    """Text for a chat template's message: each special token's text broken by a space after its first character,
    since a template is rendered to one string and its markers are found by their text (``<|user|>`` becomes
    ``< |user|>``). Plain documents use `plain_ids` instead, which keeps their text as it is."""
    for tok in specials:
        if len(tok) > 1 and tok in text:
            text = text.replace(tok, f"{tok[0]} {tok[1:]}")
    return text


def defused_messages(tokenizer, messages: list[dict]) -> list[dict]:
    """`messages` with each text content passed through `defuse_specials` for this tokenizer's special tokens."""
    specials = special_strings(tokenizer)
    return [{**m, "content": defuse_specials(m["content"], specials)} if isinstance(m.get("content"), str) else m
            for m in messages]


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a conversation rendered by the tokenizer's chat template. Only the template's own markers are
    special ids: a special token's text inside a message (a prompt quoting "<|im_end|>", a scraped answer holding
    "<|endoftext|>") is defused first, so SFT examples, preference pairs, reward-model inputs and RL prompts never
    end a turn or a document where their author did not."""
    out = tokenizer.apply_chat_template(defused_messages(tokenizer, messages), tokenize=True,
                                        add_generation_prompt=add_generation_prompt, return_dict=False)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def masked_ids(tokenizer, texts: list[str], spans: list[list[tuple[int, int]]]) -> list[list[int]]:
    """`plain_ids`, each token that overlaps one of its text's character `spans` stored as -(id + 1) (read, not
    predicted). A tokenizer without offsets (not a fast one) gives the plain ids."""
    try:
        enc = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    except NotImplementedError:
        return plain_ids(tokenizer, texts)
    out = []
    for ids, offsets, marks in zip(enc["input_ids"], enc["offset_mapping"], spans):
        row, k = [], 0
        for t, (a, b) in zip(ids, offsets):
            while k < len(marks) and marks[k][1] <= a:
                k += 1
            row.append(-t - 1 if k < len(marks) and marks[k][0] < b and a < marks[k][1] else t)
        out.append(row)
    return out


def token_stream(tokenizer, texts: Iterable[str | tuple[str, list[tuple[int, int]]]], eos_id: int) -> np.ndarray:
    """All texts tokenized and concatenated, an eos after each document. An item may be (text, spans): the tokens
    of those character spans are stored as -(id + 1), read but not predicted (`PackedChunks`).

    Token ids are held in memory as one int32 array (4 bytes a token: 100M tokens = 400 MB); corpora beyond that
    want a memory-mapped token file, which this array can become without changing the chunk logic.
    """
    parts: list[np.ndarray] = []
    batch: list[str] = []
    marks: list[list[tuple[int, int]]] = []

    def flush() -> None:
        ids_list = masked_ids(tokenizer, batch, marks) if any(marks) else plain_ids(tokenizer, batch)
        for ids in ids_list:
            parts.append(np.asarray(ids + [eos_id], dtype=np.int32))
        batch.clear()
        marks.clear()

    for item in texts:
        text, spans = item if isinstance(item, tuple) else (item, [])
        batch.append(text)
        marks.append(spans)
        if len(batch) >= ENCODE_BATCH:
            flush()
    if batch:
        flush()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


class PackedChunks:
    """Fixed-length chunks over a token stream; the last chunk is padded and its padding masked from the loss."""

    def __init__(self, tokens: np.ndarray, seq_len: int, pad_id: int):
        self.tokens = tokens
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.n_chunks = -(-len(tokens) // seq_len)  # ceil: the tail is kept, not dropped

    def __len__(self) -> int:
        return self.n_chunks

    @property
    def n_tokens(self) -> int:
        return int(len(self.tokens))

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        ids = np.full((len(indices), self.seq_len), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        learn = np.zeros(ids.shape, dtype=bool)
        for row, i in enumerate(indices):
            piece = self.tokens[i * self.seq_len : (i + 1) * self.seq_len]
            ids[row, : len(piece)] = np.where(piece < 0, -piece.astype(np.int64) - 1, piece)
            mask[row, : len(piece)] = 1
            learn[row, : len(piece)] = piece >= 0
        input_ids = torch.from_numpy(ids)
        attention = torch.from_numpy(mask)
        labels = input_ids.masked_fill(torch.from_numpy(~learn), IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def batch_for_step(self, step: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        return self.batch(batch_indices(len(self), batch_size, step, seed))


class MixedChunks:
    """Domain chunks mixed with general chunks so that `domain_ratio` of all training rows come from the domain.

    Row p of the run (p = step * batch_size + row) is a domain row when floor((p + 1) * r) > floor(p * r): the
    share is exact over any window, the first row is general only when r < 1, and the choice depends on p alone,
    so a resumed run draws the same rows. Each side walks its own seeded epochs, as `batch_indices` does.
    """

    def __init__(self, domain: PackedChunks, general: PackedChunks, domain_ratio: float):
        if len(general) == 0:
            raise ValueError("general_data yielded no tokens to mix in")
        self.domain, self.general, self.ratio = domain, general, domain_ratio
        self.seq_len = domain.seq_len

    def __len__(self) -> int:
        return len(self.domain) + len(self.general)

    def _is_domain(self, pos: int) -> bool:
        return int((pos + 1) * self.ratio) > int(pos * self.ratio)

    def domain_rows_before(self, pos: int) -> int:
        """How many of rows 0..pos-1 came from the domain side."""
        return int(pos * self.ratio)

    def batch_for_step(self, step: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        rows = []
        for pos in range(step * batch_size, (step + 1) * batch_size):
            side = self.domain if self._is_domain(pos) else self.general
            k = self.domain_rows_before(pos) if side is self.domain else pos - self.domain_rows_before(pos)
            epoch, offset = divmod(k, len(side))
            # A different seed stream per side: the two permutations must not move in lockstep.
            index = _permutation(len(side), seed + (0 if side is self.domain else 7919), epoch)[offset]
            rows.append(side.batch([index]))
        return {key: torch.cat([r[key] for r in rows]) for key in rows[0]}


def batch_indices(n_chunks: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Chunk indices of the batch at `step`: epochs are seeded permutations of all chunks, read back to back."""
    if n_chunks == 0:
        raise ValueError("no chunks to draw a batch from")
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(pos, n_chunks)
        out.append(_permutation(n_chunks, seed, epoch)[offset])
    return out


@functools.lru_cache(maxsize=8)
def _permutation(n_chunks: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.random.default_rng([seed, epoch]).permutation(n_chunks))


def eval_batches(chunks: PackedChunks, batch_size: int, max_chunks: int) -> Iterable[dict[str, torch.Tensor]]:
    """The first `max_chunks` eval chunks, in order (the same chunks at every evaluation, so losses compare)."""
    n = min(len(chunks), max_chunks)
    for start in range(0, n, batch_size):
        yield chunks.batch(list(range(start, min(start + batch_size, n))))
