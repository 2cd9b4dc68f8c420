"""The training pairs split in two halves by prompt: one for the reward model, one for its judge.

A judge is only independent of the reward model when it learned from other preferences: were a prompt's pairs on
both sides, both models would have seen the same labels for it. So the split is by prompt, never by pair: every pair
of a prompt goes to the same half, chosen by a hash of the prompt (as the held-out split is), salted so that the
halves are not simply the held-out hash's neighbours. The split depends on the prompts alone: the same pairs give
the same halves on any machine and in any order.

    primary, judge = split_by_prompt(train_pairs)
"""

from __future__ import annotations

import json

import xxhash

# A fixed salt, not the run's seed: changing the seed (to retrain) must not move pairs between the two models.
SALT = "reward_model/judge"
RULE = "by prompt: xxh64(salt + prompt) / 2^64 < 0.5 -> reward model, else judge (every pair of a prompt on one side)"


def prompt_key(prompt) -> str:
    """One string per prompt, whether it is text or a list of messages."""
    return json.dumps(prompt, sort_keys=True, default=str)


def judge_side(prompt) -> bool:
    return xxhash.xxh64_intdigest((SALT + prompt_key(prompt)).encode()) / 2**64 >= 0.5


def split_by_prompt(pairs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(reward model's pairs, judge's pairs), each in the input order."""
    primary, judge = [], []
    for p in pairs:
        (judge if judge_side(p["prompt"]) else primary).append(p)
    return primary, judge


def shared_prompts(a: list[dict], b: list[dict]) -> int:
    """How many distinct prompts two pair sets have in common (0 for the two halves of a split)."""
    return len({prompt_key(p["prompt"]) for p in a} & {prompt_key(p["prompt"]) for p in b})
