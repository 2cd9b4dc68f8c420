"""Greedy completions and the task metrics computed on them: ROUGE-L F1 and exact match.

ROUGE-L is the F1 of the longest common subsequence of words (lower-cased, punctuation dropped) between a completion
and its reference; it is written out here because the usual packages fetch tokenizer data at run time. Exact match
compares the same normalized word sequences.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from llm_pipeline.evaluation.models import LoadedModel, frame_prompt

WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, in O(len(a) * len(b)) time and O(len(b)) memory."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over words; 0 when either side has no words (nothing to match is not a match)."""
    p, r = words(prediction), words(reference)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(words(prediction) == words(reference))


@torch.inference_mode()
def greedy(lm: LoadedModel, prompts: list[str | list[dict]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy completions of chat-framed prompts, batched with left padding; each stops at EOS or `max_new_tokens`."""
    tok = lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    keep = max(1, lm.window - max_new_tokens)  # the prompt keeps its end when it would not leave room to generate
    encoded = []
    for p in prompts:
        ids = tok(frame_prompt(tok, p), add_special_tokens=False)["input_ids"][-keep:]
        if not ids:
            ids = [tok.bos_token_id if tok.bos_token_id is not None else (tok.eos_token_id or 0)]
        encoded.append(ids)
    outputs: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        longest = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            seq = encoded[i]
            ids[row, longest - len(seq) :] = torch.tensor(seq)
            attn[row, longest - len(seq) :] = 1
        gen = lm.model.generate(
            input_ids=ids,
            attention_mask=attn,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
            eos_token_id=tok.eos_token_id,
        )
        for row, i in enumerate(idx):
            outputs[i] = tok.decode(gen[row, longest:], skip_special_tokens=True).strip()
    return outputs


def task_metrics(predictions: list[str], examples: list[dict]) -> dict:
    """Mean ROUGE-L F1, exact match and share of blank completions, overall and per domain."""
    groups: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for pred, ex in zip(predictions, examples):
        # A blank completion (whitespace only) is worth counting apart: tiny models often collapse into newlines.
        row = (rouge_l(pred, ex["completion"]), exact_match(pred, ex["completion"]), float(not words(pred)))
        groups["all"].append(row)
        groups[str(ex.get("domain") or "unknown")].append(row)

    def summary(rows: list[tuple[float, float, float]]) -> dict:
        n = len(rows)
        return {"examples": n, "rouge_l": sum(r[0] for r in rows) / n, "exact_match": sum(r[1] for r in rows) / n, "blank": sum(r[2] for r in rows) / n}

    overall = summary(groups.pop("all")) if predictions else {"examples": 0}
    overall["by_domain"] = {d: summary(rows) for d, rows in sorted(groups.items())}
    return overall
