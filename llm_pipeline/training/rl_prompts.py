"""Prompts for online RL: the preference pairs' prompts, or a prompt file; held out by a hash of the prompt.

A prompt must leave room for its completion: prompt tokens + `max_new_tokens` <= `max_length`. A plain-text prompt
that is too long loses words from its end until it fits (a continuation prompt keeps its instruction and the start
of its text); a conversation that is too long is dropped and counted as `prompt_too_long`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import xxhash

from llm_pipeline.training import dpo_pairs
from llm_pipeline.training.preference_data import EVAL_SHARE, PreferenceDataError
from llm_pipeline.training.sft_data import read_jsonl


def _key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True, default=str)


def read_prompt_file(path: Path) -> tuple[list, list]:
    """(train, held) prompts from .txt (one per line), .jsonl or .json (a `prompt` field: text or messages)."""
    if not path.exists():
        raise PreferenceDataError(f"rl_model.prompts_file not found: {path}")
    if path.suffix.lower() == ".txt":
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = read_jsonl(path) if path.suffix.lower() == ".jsonl" else json.loads(path.read_text(encoding="utf-8"))
        prompts = []
        for n, row in enumerate(rows):
            if not isinstance(row, dict) or "prompt" not in row:
                raise PreferenceDataError(f"{path}:{n + 1}: a prompt row needs a `prompt` field")
            prompts.append(row["prompt"])
    train, held = [], []
    for p in prompts:
        (held if xxhash.xxh64_intdigest(_key(p).encode()) / 2**64 < EVAL_SHARE else train).append(p)
    return train, held


def unique(prompts: list) -> list:
    seen, out = set(), []
    for p in prompts:
        k = _key(p)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out


def fit_prompts(prompts: list, tokenizer, max_prompt_tokens: int, dropped: Counter) -> list[dict]:
    """{prompt, prompt_ids} for each prompt that fits (or is cut to fit) `max_prompt_tokens` tokens."""
    out = []
    for prompt in prompts:
        ids = dpo_pairs._chat(tokenizer, dpo_pairs._messages(prompt), add_generation_prompt=True)
        if len(ids) > max_prompt_tokens and isinstance(prompt, str):
            words = prompt.split(" ")
            lo, hi = 1, len(words)  # the most words that fit: token counts grow with words
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if len(dpo_pairs._chat(tokenizer, dpo_pairs._messages(" ".join(words[:mid])), add_generation_prompt=True)) <= max_prompt_tokens:
                    lo = mid
                else:
                    hi = mid - 1
            prompt = " ".join(words[:lo])
            ids = dpo_pairs._chat(tokenizer, dpo_pairs._messages(prompt), add_generation_prompt=True)
            if len(ids) <= max_prompt_tokens:
                dropped["prompt_shortened"] += 1
        if len(ids) > max_prompt_tokens:
            dropped["prompt_too_long"] += 1
            continue
        out.append({"prompt": prompt, "prompt_ids": ids})
    return out
