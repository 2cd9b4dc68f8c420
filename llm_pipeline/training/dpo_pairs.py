"""Preference pairs as single shared-prompt rows, and the summed log-probabilities of both answers in one forward.

TRL's DPOTrainer runs every pair as two padded sequences, prompt + chosen and prompt + rejected, so the prompt is
computed twice and both are padded to the longest sequence in the batch. Here a pair is one row:

    [prompt p_1..p_P | chosen c_1..c_C | p_P again | rejected r_1..r_R]
    positions  0..P-1 | P..P+C-1       | P-1       | P..P+R-1

with an attention mask under which the chosen tokens see the prompt and themselves, and the rejected part sees the
prompt without its last token, then the repeated last prompt token and itself. Every token therefore computes exactly
what it would in its own sequence (the repeated token stands in for the prompt's last token, whose hidden state
predicts the first answer token), for P + C + R + 1 tokens instead of 2(P + max(C, R)). Log-probabilities come from
the hidden states of the positions that predict an answer token only, so the vocabulary projection never covers
prompt tokens. Rows are grouped by length into batches, so little padding remains.
"""

from __future__ import annotations

from collections import Counter

import torch

IGNORE = -100
PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3


def _chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _messages(prompt) -> list[dict]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(pair: dict, tokenizer, max_length: int, dropped: Counter) -> dict | None:
    """{prompt_ids, chosen_ids, rejected_ids, length} framed by the chat template, answers cut so that prompt +
    answer fits `max_length` (as TRL's keep_start truncation); None (counted) when the prompt alone fills it."""
    msgs = _messages(pair["prompt"])
    prompt_ids = _chat(tokenizer, msgs, add_generation_prompt=True)
    full_c = _chat(tokenizer, msgs + [{"role": "assistant", "content": str(pair["chosen"])}])
    full_r = _chat(tokenizer, msgs + [{"role": "assistant", "content": str(pair["rejected"])}])
    # Templates may merge tokens across the boundary: the answer starts where prompt and prompt+answer diverge.
    p = min(len(prompt_ids), _common_prefix(prompt_ids, full_c), _common_prefix(prompt_ids, full_r))
    if p < 1 or p >= max_length:
        dropped["prompt_fills_max_length" if p else "empty_prompt"] += 1
        return None
    chosen, rejected = full_c[p:][: max_length - p], full_r[p:][: max_length - p]
    if not chosen or not rejected:
        dropped["empty_answer"] += 1
        return None
    return {"prompt_ids": full_c[:p], "chosen_ids": chosen, "rejected_ids": rejected, "length": p + len(chosen) + 1 + len(rejected)}


def build_row(prompt: list[int], chosen: list[int], rejected: list[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    """ids, positions, segment kinds and pre-shifted targets (target[t] = the token hidden state t predicts)."""
    P, C, R = len(prompt), len(chosen), len(rejected)
    ids = prompt + chosen + [prompt[-1]] + rejected
    pos = list(range(P + C)) + [P - 1] + list(range(P, P + R))
    seg = [PROMPT] * P + [CHOSEN] * C + [REJECTED] * (R + 1)
    target = [IGNORE] * len(ids)
    target[P - 1 : P - 1 + C] = chosen  # the prompt's last token predicts c_1, c_i predicts c_{i+1}
    target[P + C : P + C + R] = rejected  # the repeated prompt token predicts r_1
    return ids, pos, seg, target


def attention_bias(seg: torch.Tensor, prompt_len: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, W, W] additive mask (0 = may attend, dtype min = may not) for shared-prompt rows."""
    B, W = seg.shape
    idx = torch.arange(W)
    causal = idx[None, :, None] >= idx[None, None, :]
    q, k = seg[:, :, None], seg[:, None, :]
    k_prompt = k == PROMPT
    k_before_last = idx[None, None, :] < (prompt_len[:, None, None] - 1)
    allowed = (
        ((q == PROMPT) & k_prompt)
        | ((q == CHOSEN) & (k_prompt | (k == CHOSEN)))
        | ((q == REJECTED) & ((k_prompt & k_before_last) | (k == REJECTED)))
        | ((q == PAD) & (idx[None, :, None] == idx[None, None, :]))
    ) & causal
    bias = torch.zeros((B, 1, W, W), dtype=dtype)
    return bias.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


class PairCollator:
    """Batches of shared-prompt rows, with the cached reference log-probs of each pair when present."""

    def __init__(self, pad_id: int, dtype: torch.dtype = torch.float32):
        self.pad_id = pad_id
        self.dtype = dtype

    def __call__(self, pairs: list[dict]) -> dict[str, torch.Tensor]:
        rows = [build_row(p["prompt_ids"], p["chosen_ids"], p["rejected_ids"]) for p in pairs]
        W = max(len(r[0]) for r in rows)
        B = len(rows)
        ids = torch.full((B, W), self.pad_id, dtype=torch.long)
        pos = torch.zeros((B, W), dtype=torch.long)
        seg = torch.full((B, W), PAD, dtype=torch.long)
        target = torch.full((B, W), IGNORE, dtype=torch.long)
        for b, (i, p, s, t) in enumerate(rows):
            n = len(i)
            ids[b, :n], pos[b, :n], seg[b, :n], target[b, :n] = torch.tensor(i), torch.tensor(p), torch.tensor(s), torch.tensor(t)
            pos[b, n:] = torch.arange(W - n)
        prompt_len = torch.tensor([len(p["prompt_ids"]) for p in pairs])
        out = {
            "input_ids": ids, "position_ids": pos, "attention_mask": attention_bias(seg, prompt_len, self.dtype),
            "target": target, "segment": seg,
        }
        if "ref_chosen_logps" in pairs[0]:
            out["ref_chosen_logps"] = torch.tensor([p["ref_chosen_logps"] for p in pairs], dtype=torch.float32)
            out["ref_rejected_logps"] = torch.tensor([p["ref_rejected_logps"] for p in pairs], dtype=torch.float32)
        return out


def answer_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and rejected answers per pair, and their token counts, from one forward.

    The decoder runs on the whole row; the vocabulary projection only on the hidden states that predict an answer
    token (a PEFT model's injected adapter layers are inside both, so this is the adapted model).
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False,
    ).last_hidden_state
    target, seg = batch["target"], batch["segment"]
    keep = target != IGNORE
    logits = inner.get_output_embeddings()(hidden[keep]).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2 caps its logits in its own forward, which is bypassed here
        logits = torch.tanh(logits / cap) * cap
    lp = torch.log_softmax(logits, dim=-1).gather(-1, target[keep][:, None]).squeeze(-1)
    # The kind of answer each kept position scores: the target after the repeated prompt token is rejected's first.
    side = torch.where(seg == PROMPT, CHOSEN, seg)[keep]
    rows = torch.arange(target.shape[0], device=target.device)[:, None].expand_as(target)[keep]
    B = target.shape[0]
    chosen = torch.zeros(B, dtype=lp.dtype, device=lp.device).index_add(0, rows[side == CHOSEN], lp[side == CHOSEN])
    rejected = torch.zeros(B, dtype=lp.dtype, device=lp.device).index_add(0, rows[side == REJECTED], lp[side == REJECTED])
    n_c = torch.zeros(B, device=lp.device).index_add(0, rows[side == CHOSEN], torch.ones_like(lp[side == CHOSEN]))
    n_r = torch.zeros(B, device=lp.device).index_add(0, rows[side == REJECTED], torch.ones_like(lp[side == REJECTED]))
    return chosen, rejected, n_c, n_r
