"""Packing documents into fixed-length chunks and the resumable batch order."""

import numpy as np

from llm_pipeline.training.packing import IGNORE_INDEX, PackedChunks, batch_indices


def test_every_token_lands_in_exactly_one_chunk():
    tokens = np.arange(1, 24, dtype=np.int32)  # 23 tokens, seq_len 5 -> 5 chunks, the last one 3 tokens long
    chunks = PackedChunks(tokens, seq_len=5, pad_id=0)
    batch = chunks.batch(list(range(len(chunks))))
    kept = batch["input_ids"][batch["attention_mask"] == 1]
    assert len(chunks) == 5 and kept.tolist() == tokens.tolist()
    assert batch["labels"][4].tolist() == [21, 22, 23, IGNORE_INDEX, IGNORE_INDEX]


def test_batch_order_depends_only_on_seed_and_step():
    first_epoch = [i for step in range(5) for i in batch_indices(10, 2, step, seed=3)]
    assert sorted(first_epoch) == list(range(10))  # one epoch sees each chunk once
    assert batch_indices(10, 2, 7, seed=3) == batch_indices(10, 2, 7, seed=3)
    assert first_epoch != [i for step in range(5) for i in batch_indices(10, 2, step + 5, seed=3)]
