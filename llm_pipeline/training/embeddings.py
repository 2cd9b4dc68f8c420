"""Grow a model's embedding matrix for tokens added to its tokenizer, each new row the mean of its sub-tokens.

A new row initialised at random starts as noise the model has to unlearn; the mean of the embeddings of the pieces
the base tokenizer used for the same term starts it where the model already understands that term.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llm_pipeline.io import read_json, write_json
from llm_pipeline.training.vocab_extension import EXTENSION_FILE

# Beside a base checkpoint whose embedding matrix grew for tokens the original model never had (domain terms, chat
# turn markers): which rows, so that SFT trains them too (they may never have trained, e.g. with train_steps 0, and
# turn markers only appear in SFT's chat-framed rows).
ADDED_ROWS_FILE = "added_rows.json"


def resize_with_mean_init(model, new_vocab_size: int, pieces: dict[int, list[int]]) -> dict[str, int]:
    """Resize input (and untied output) embeddings to `new_vocab_size`; rows in `pieces` get their sub-token mean.

    Rows added beyond those named in `pieces` keep the mean of all old rows (a neutral start).
    """
    old = model.get_input_embeddings().weight.shape[0]
    if new_vocab_size <= old:
        return {"old_vocab_size": old, "new_vocab_size": old, "mean_initialised": 0}
    model.resize_token_embeddings(new_vocab_size, mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(out.weight)
    initialised = 0
    with torch.no_grad():
        for w in matrices:
            mean_all = w[:old].mean(dim=0)
            for row in range(old, new_vocab_size):
                ids = [i for i in pieces.get(row, []) if i < old]
                w[row] = w[ids].mean(dim=0) if ids else mean_all
        initialised = sum(1 for row in range(old, new_vocab_size) if any(i < old for i in pieces.get(row, [])))
    return {"old_vocab_size": old, "new_vocab_size": new_vocab_size, "mean_initialised": initialised}


def extension_pieces(tokenizer_dir: Path) -> dict[int, list[int]]:
    """token id -> base piece ids, from the tokenizer stage's extension record (empty when it trained from scratch)."""
    path = Path(tokenizer_dir) / EXTENSION_FILE
    if not path.exists():
        return {}
    return {int(t["token_id"]): list(t["base_piece_ids"]) for t in read_json(path)["tokens"]}


def keep_rows(model, keep: list[int]) -> None:
    """Shrink the input (and untied output) embeddings to the rows `keep`, in that order: drops added tokens again
    (row i of the result is row keep[i] of the matrix as it was)."""
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is not None and out.weight.data_ptr() == emb.weight.data_ptr()
    with torch.no_grad():
        rows_in = emb.weight[keep].clone()
        rows_out = None if out is None or tied else out.weight[keep].clone()
        model.resize_token_embeddings(len(keep), mean_resizing=False)
        model.get_input_embeddings().weight.copy_(rows_in)
        if rows_out is not None:
            model.get_output_embeddings().weight.copy_(rows_out)


def trainable_rows(model, rows: list[int]) -> list[int] | dict[str, list[int]]:
    """PEFT's `trainable_token_indices` for `rows` of `model`: the row ids alone when the output layer shares the
    input embedding (PEFT ties the output rows to the input ones), else the same rows of both matrices by module
    name, so that an untied LM head learns to predict the new tokens too (its new rows would otherwise stay at their
    initial value, and the model could read the new tokens but never write them)."""
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight.data_ptr() == emb.weight.data_ptr():
        return list(rows)
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(emb)]: list(rows), names[id(out)]: list(rows)}


def write_added_rows(folder: Path, original_rows: int, rows_now: int) -> None:
    write_json(Path(folder) / ADDED_ROWS_FILE, {"original_vocab_rows": original_rows, "vocab_rows": rows_now,
                                                "rows": list(range(original_rows, rows_now))})


def added_rows(folder: Path) -> list[int]:
    """The embedding rows the base checkpoint added to the original model (none for a model trained from scratch)."""
    path = Path(folder) / ADDED_ROWS_FILE
    return [int(r) for r in read_json(path)["rows"]] if path.exists() else []
