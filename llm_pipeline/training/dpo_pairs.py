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

import contextlib

from collections import Counter

import torch

from llm_pipeline.training.packing import chat_ids

IGNORE = -100
PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3


# Pairs, reward-model inputs and RL prompts are framed here: a special token's text inside them stays text.
_chat = chat_ids


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


def split_rows(batch: dict[str, torch.Tensor], rows: int) -> list[dict[str, torch.Tensor]]:
    """The batch as consecutive groups of `rows` pairs, each cut to its own longest row (rows are padded on the right)."""
    n = batch["input_ids"].shape[0]
    if rows >= n:
        return [batch]
    parts = []
    for s in range(0, n, rows):
        seg = batch["segment"][s : s + rows]
        w = int((seg != PAD).sum(dim=1).max())
        part = {}
        for key, value in batch.items():
            if key == "attention_mask":
                part[key] = value[s : s + rows, :, :w, :w]
            elif value.dim() == 2:
                part[key] = value[s : s + rows, :w]
            else:
                part[key] = value[s : s + rows]
        parts.append(part)
    return parts


# Positions per vocabulary projection: a chunk's fp32 logits hold about this many numbers (64 MB), so a 49k-token
# vocabulary is projected ~340 positions at a time and a small one in a single pass.
CHUNK_ELEMENTS = 1 << 24


def _chunk_logits(head, hidden: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    return torch.tanh(logits / cap) * cap if cap else logits  # Gemma 2 caps its logits in its own forward


def _plain_logps(head, hidden: torch.Tensor, targets: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = _chunk_logits(head, hidden, cap)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


class _FrozenHeadLogps(torch.autograd.Function):
    """log p(target) through a frozen linear head, one chunk of positions at a time.

    A position's log-prob depends on its own hidden state only, so its gradient with respect to that state,
    (onehot(target) - softmax) @ W, is computed while the chunk's logits exist; backward only scales it by the
    incoming gradient. The graph keeps an [N, hidden] tensor instead of [N, vocab] logits and softmax, and no
    projection is recomputed.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, cap, chunk):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s : s + chunk], targets[s : s + chunk]
            z = torch.nn.functional.linear(h, weight, bias).float()
            capped = torch.tanh(z / cap) if cap else None
            logits = capped * cap if cap else z
            lse = torch.logsumexp(logits, dim=-1)
            out[s : s + chunk] = logits.gather(-1, t[:, None]).squeeze(-1) - lse
            d = logits.sub_(lse[:, None]).exp_().neg_()  # -softmax, in place of the logits
            d.scatter_add_(-1, t[:, None], torch.ones_like(lse[:, None]))
            if cap:
                d.mul_(1 - capped.square_())  # through tanh: d(cap * tanh(z / cap)) / dz
            grad[s : s + chunk] = (d.to(weight.dtype) @ weight).to(grad.dtype)
            del z, capped, logits, d
        ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out[:, None].to(grad.dtype), None, None, None, None, None


def _gathered(params: list):
    """Under DeepSpeed ZeRO-3 a parameter outside its module's forward is an empty partition (shape (0,)); this
    gathers the full tensors for a read-only use and frees them after. Without ZeRO-3, nothing."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


def token_logps(head, hidden: torch.Tensor, targets: torch.Tensor, cap: float | None = None,
                chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for [N, hidden] states, the vocabulary projected a chunk of positions at a time.

    Equals log_softmax(head(hidden)).gather(targets) without ever holding the [N, vocab] logits (or their softmax and
    gradient) of all positions at once. Without a graph to build the chunks are simply looped; a frozen linear head
    (LoRA policies) uses `_FrozenHeadLogps`; a trainable head recomputes each chunk in backward instead of storing it.
    """
    chunk = max(1, chunk_elements // (getattr(head, "out_features", None) or head.weight.shape[0]))
    params = list(head.parameters())
    if not torch.is_grad_enabled() or not (hidden.requires_grad or any(p.requires_grad for p in params)):
        return torch.cat([_plain_logps(head, h, t, cap) for h, t in zip(hidden.split(chunk), targets.split(chunk))]) \
            if hidden.shape[0] else hidden.new_zeros(0, dtype=torch.float32)
    if type(head) is torch.nn.Linear and not any(p.requires_grad for p in params):
        with _gathered(params):  # the weight is read here, outside the head's forward
            return _FrozenHeadLogps.apply(hidden, head.weight, head.bias, targets, cap, chunk)
    from torch.utils.checkpoint import checkpoint

    return torch.cat([checkpoint(_plain_logps, head, h, t, cap, use_reentrant=False)
                      for h, t in zip(hidden.split(chunk), targets.split(chunk))])


def answer_logps(model, batch: dict[str, torch.Tensor], chunk_elements: int = CHUNK_ELEMENTS
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and rejected answers per pair, and their token counts, from one forward.

    The decoder runs on the whole row; the vocabulary projection only on the hidden states that predict an answer
    token, in chunks (`token_logps`; a PEFT model's injected adapter layers are inside both, so this is the adapted
    model).
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False,
    ).last_hidden_state
    target, seg = batch["target"], batch["segment"]
    keep = target != IGNORE
    cap = getattr(inner.config, "final_logit_softcapping", None)
    lp = token_logps(inner.get_output_embeddings(), hidden[keep], target[keep], cap, chunk_elements)
    # The kind of answer each kept position scores: the target after the repeated prompt token is rejected's first.
    side = torch.where(seg == PROMPT, CHOSEN, seg)[keep]
    rows = torch.arange(target.shape[0], device=target.device)[:, None].expand_as(target)[keep]
    B = target.shape[0]
    chosen = torch.zeros(B, dtype=lp.dtype, device=lp.device).index_add(0, rows[side == CHOSEN], lp[side == CHOSEN])
    rejected = torch.zeros(B, dtype=lp.dtype, device=lp.device).index_add(0, rows[side == REJECTED], lp[side == REJECTED])
    n_c = torch.zeros(B, device=lp.device).index_add(0, rows[side == CHOSEN], torch.ones_like(lp[side == CHOSEN]))
    n_r = torch.zeros(B, device=lp.device).index_add(0, rows[side == REJECTED], torch.ones_like(lp[side == REJECTED]))
    return chosen, rejected, n_c, n_r
