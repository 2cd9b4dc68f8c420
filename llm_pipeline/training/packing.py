"""Packed sequences for next-token pretraining: documents joined with eos and cut into fixed-length chunks.

Packing uses every token (no per-document truncation or padding, except the tail of the last chunk). The order of
chunks is a pure function of (seed, step), so a run resumed from a checkpoint at step k sees exactly the batches an
uninterrupted run would have seen from step k on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np
import torch

IGNORE_INDEX = -100  # labels the loss skips (the padded tail of the last chunk)
ENCODE_BATCH = 256


def token_stream(tokenizer, texts: Iterable[str], eos_id: int) -> np.ndarray:
    """All texts tokenized and concatenated, an eos after each document.

    Token ids are held in memory as one int32 array (4 bytes a token: 100M tokens = 400 MB); corpora beyond that
    want a memory-mapped token file, which this array can become without changing the chunk logic.
    """
    parts: list[np.ndarray] = []
    batch: list[str] = []

    def flush() -> None:
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            parts.append(np.asarray(ids + [eos_id], dtype=np.int32))
        batch.clear()

    for text in texts:
        batch.append(text)
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
        for row, i in enumerate(indices):
            piece = self.tokens[i * self.seq_len : (i + 1) * self.seq_len]
            ids[row, : len(piece)] = piece
            mask[row, : len(piece)] = 1
        input_ids = torch.from_numpy(ids)
        attention = torch.from_numpy(mask)
        labels = input_ids.masked_fill(attention == 0, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def batch_indices(n_chunks: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Chunk indices of the batch at `step`: epochs are seeded permutations of all chunks, read back to back."""
    if n_chunks == 0:
        raise ValueError("no chunks to draw a batch from")
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(pos, n_chunks)
        out.append(_permutation(n_chunks, seed, epoch)[offset])
    return out


@functools.lru_cache(maxsize=4)
def _permutation(n_chunks: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.random.default_rng([seed, epoch]).permutation(n_chunks))


def eval_batches(chunks: PackedChunks, batch_size: int, max_chunks: int) -> Iterable[dict[str, torch.Tensor]]:
    """The first `max_chunks` eval chunks, in order (the same chunks at every evaluation, so losses compare)."""
    n = min(len(chunks), max_chunks)
    for start in range(0, n, batch_size):
        yield chunks.batch(list(range(start, min(start + batch_size, n))))
