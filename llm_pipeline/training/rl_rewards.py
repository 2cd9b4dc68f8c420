"""The reward rl_model optimises: the reward model's score plus rule rewards the config names, each weighted.

A rule is a small function of the answer text returning a number in [0, 1]; `RULES` is the registry the config's
`rl_model.rule_rewards` names come from (config.RULE_REWARDS lists the same names, so a typo stops the load).

    reward = Reward(rules={"ends_with_period": 0.5}, model=rm, tokenizer=tok, model_weight=1.0, max_length=128)
    totals, parts = reward(prompts, answers)   # parts: {"reward_model": [...], "ends_with_period": [...]}
"""

from __future__ import annotations

from collections.abc import Callable

from llm_pipeline.training import reward_scoring


def ends_with_period(text: str, **_) -> float:
    return 1.0 if text.rstrip().endswith(".") else 0.0


def ends_with_punctuation(text: str, **_) -> float:
    return 1.0 if text.rstrip().endswith((".", "!", "?")) else 0.0


def length(text: str, target_words: int = 20, **_) -> float:
    """1 at `target_words` words, falling linearly to 0 at none or at twice as many."""
    return max(0.0, 1.0 - abs(len(text.split()) - target_words) / target_words)


def distinct_words(text: str, **_) -> float:
    """Share of distinct words: 1 for no repetition, near 0 for a loop of one word (an empty answer scores 0)."""
    words = text.lower().split()
    return len(set(words)) / len(words) if words else 0.0


RULES: dict[str, Callable[..., float]] = {
    "ends_with_period": ends_with_period,
    "ends_with_punctuation": ends_with_punctuation,
    "length": length,
    "distinct_words": distinct_words,
}


class Reward:
    """Weighted sum of the reward model's score (when a model and a non-zero weight are given) and rule rewards."""

    def __init__(self, rules: dict[str, float], model=None, tokenizer=None, model_weight: float = 1.0,
                 max_length: int = 512, target_words: int = 20):
        unknown = sorted(set(rules) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rule reward {', '.join(unknown)}; rules are: {', '.join(RULES)}")
        self.rules = {k: w for k, w in rules.items() if w}
        self.model = model if model_weight else None
        self.tokenizer, self.model_weight, self.max_length, self.target_words = tokenizer, model_weight, max_length, target_words

    def __call__(self, prompts: list, answers: list[str]) -> tuple[list[float], dict[str, list[float]]]:
        parts: dict[str, list[float]] = {}
        totals = [0.0] * len(answers)
        if self.model is not None:
            parts["reward_model"] = reward_scoring.score(self.model, self.tokenizer, prompts, answers, self.max_length)
            totals = [t + self.model_weight * v for t, v in zip(totals, parts["reward_model"])]
        for name, weight in self.rules.items():
            parts[name] = [RULES[name](a, target_words=self.target_words) for a in answers]
            totals = [t + weight * v for t, v in zip(totals, parts[name])]
        return totals, parts
