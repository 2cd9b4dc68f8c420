"""Preference accuracy of the DPO model on held-out pairs, from DPO's implicit reward.

reward(y) = beta * (log pi(y | x) - log pi_ref(y | x)), with pi_ref the policy with its adapter disabled, as in
training. A pair counts as right when reward(chosen) > reward(rejected) (a tie is wrong, as in TRL's
`rewards/accuracies`). Next to it stands the "longer answer wins" baseline: synthetic pairs often differ mostly in
length, and a model that only learned length should not look like it learned preferences.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from llm_pipeline.evaluation.models import LoadedModel, frame_prompt, reference_of


def encode_pair(tokenizer, prompt: str | list[dict], completion: str, window: int) -> tuple[list[int], int]:
    """Token ids of the chat-framed prompt + completion + EOS (framed as in training) and where the completion starts.

    When the whole does not fit the window the prompt loses tokens from its start: the completion is what is scored.
    """
    p = tokenizer(frame_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        c = c + [tokenizer.eos_token_id]
    if not c:  # an empty completion without EOS: nothing to score, log-probability 0
        p = p[-window:] or [0]
        return p, len(p)
    c = c[: window - 1]  # at least one prompt token stays as context
    p = p[-(window - len(c)) :] if p else []
    if not p:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        p = [bos if bos is not None else c[0]]
    return p + c, len(p)


@torch.inference_mode()
def completion_logprobs(lm: LoadedModel, items: list[tuple[str | list[dict], str]], batch_size: int = 8) -> list[float]:
    """Summed log-probability of each completion given its prompt."""
    tok = lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    encoded = [encode_pair(tok, p, c, lm.window) for p, c in items]
    out: list[float] = [0.0] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        longest = max(len(encoded[i][0]) for i in idx)
        ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        scored = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            seq, cut = encoded[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            attn[row, : len(seq)] = 1
            scored[row, cut : len(seq)] = 1
        device = next(lm.model.parameters()).device
        ids, attn, scored = ids.to(device), attn.to(device), scored.to(device)
        logits = lm.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        logp = -F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
        sums = (logp.view(len(idx), -1) * scored[:, 1:]).sum(dim=1).tolist()
        for row, i in enumerate(idx):
            out[i] = sums[row]
    return out


def length_baseline(chosen: str, rejected: str) -> float:
    """1 when the chosen answer is longer, 0 when shorter, 0.5 for a tie (a coin flip)."""
    if len(chosen) == len(rejected):
        return 0.5
    return 1.0 if len(chosen) > len(rejected) else 0.0


def implicit_rewards(policy: LoadedModel, fallback_ref: LoadedModel, items: list[tuple[str | list[dict], str]], beta: float, batch_size: int = 8) -> list[float]:
    """beta * (log pi(y|x) - log pi_ref(y|x)) for each (prompt, completion)."""
    pol = completion_logprobs(policy, items, batch_size)
    with reference_of(policy, fallback_ref) as ref:
        ref_lp = completion_logprobs(ref, items, batch_size)
    return [beta * (p - r) for p, r in zip(pol, ref_lp)]


def preference_accuracy(policy: LoadedModel, fallback_ref: LoadedModel, pairs: list[dict], beta: float, batch_size: int = 8) -> dict:
    """Implicit-reward accuracy, mean margin and the length baseline, overall and per domain."""
    items = [(p["prompt"], p["chosen"]) for p in pairs] + [(p["prompt"], p["rejected"]) for p in pairs]
    rewards = implicit_rewards(policy, fallback_ref, items, beta, batch_size)
    groups: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        margin = rewards[i] - rewards[len(pairs) + i]
        row = (float(margin > 0), margin, length_baseline(pair["chosen"], pair["rejected"]))
        groups["all"].append(row)
        groups[str(pair.get("domain") or "unknown")].append(row)

    def summary(rows: list[tuple[float, float, float]]) -> dict:
        n = len(rows)
        return {
            "pairs": n,
            "accuracy": sum(r[0] for r in rows) / n,
            "mean_margin": sum(r[1] for r in rows) / n,
            "length_baseline_accuracy": sum(r[2] for r in rows) / n,
        }

    result = summary(groups.pop("all")) if pairs else {"pairs": 0}
    result["beta"] = beta
    result["by_domain"] = {d: summary(rows) for d, rows in sorted(groups.items())}
    return result
