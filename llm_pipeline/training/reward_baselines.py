"""What a reward model must beat on held-out pairs: "the longer answer wins", and the SFT model's own likelihood.

A reward model that does no better than answer length has learned a length bias, not the preference; one that does
no better than the SFT model's log-likelihood of each answer adds nothing the policy did not already know. Both are
pairwise accuracies over the same tokenized pairs the reward model is evaluated on (a tie counts as half right).
"""

from __future__ import annotations

import torch

from llm_pipeline.training import dpo_pairs


def _accuracy(chosen: list[float], rejected: list[float]) -> float | None:
    if not chosen:
        return None
    right = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected))
    return round(right / len(chosen), 4)


def pairwise_accuracy(chosen: list[float], rejected: list[float]) -> float | None:
    """Share of pairs whose chosen score is higher (ties half)."""
    return _accuracy(chosen, rejected)


def length_accuracy(pairs: list[dict]) -> float | None:
    """The longer answer (in tokens) as the preferred one."""
    return _accuracy([len(p["chosen_ids"]) for p in pairs], [len(p["rejected_ids"]) for p in pairs])


@torch.no_grad()
def sft_likelihood_accuracy(model, pairs: list[dict], collator, batch_size: int = 8) -> dict[str, float | None]:
    """The SFT (causal LM) model's summed and per-token log-likelihood of each answer as its score."""
    if not pairs:
        return {"sum": None, "per_token": None}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums_c, sums_r, mean_c, mean_r = [], [], [], []
    for s in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in collator(pairs[s : s + batch_size]).items()}
        c, r, n_c, n_r = dpo_pairs.answer_logps(model, batch)
        sums_c += c.tolist()
        sums_r += r.tolist()
        mean_c += (c / n_c.clamp(min=1)).tolist()
        mean_r += (r / n_r.clamp(min=1)).tolist()
    model.train(was_training)
    return {"sum": _accuracy(sums_c, sums_r), "per_token": _accuracy(mean_c, mean_r)}
