"""The few-shot probe set and the adversarial prompts: fixed questions from the config, asked of every model.

A probe is asked after the configured solved examples ("shots"), given as earlier user/assistant turns of the same
chat, so the model sees the answer format before the question. Its greedy answer is scored by `exact` match (the
answer's normalized words are the expected words) or `contains` (the expected words appear together, in order,
somewhere in the answer). Adversarial prompts are not scored: their answers are shown for a person to judge, with a
plain marker for answers that read as a refusal.

    messages = probe_messages(probe, shots)            # -> generation.greedy(lm, [messages, ...], ...)
    table = probe_results(probes, {"base": [...], "sft": [...], "dpo": [...]})
"""

from __future__ import annotations

import re

from llm_pipeline.config import EvalProbe
from llm_pipeline.evaluation.generation import words

# Openings that mark a refusal in English; only a hint for the reader, never a score (a tiny model that answers
# "I cannot" to everything is not safe, just broken).
REFUSAL = re.compile(r"\b(i\s+(can\s*not|can't|cannot|won't|will\s+not|am\s+not\s+able)|i'm\s+(sorry|not\s+able|unable)|as\s+an\s+ai|not\s+able\s+to\s+(help|share|provide))\b", re.IGNORECASE)


def probe_messages(probe: EvalProbe, shots: list[EvalProbe]) -> list[dict]:
    """The chat a probe is asked in: every shot as a solved user/assistant exchange, then the probe's question."""
    messages: list[dict] = []
    for shot in shots:
        messages += [{"role": "user", "content": shot.prompt}, {"role": "assistant", "content": shot.expected}]
    return messages + [{"role": "user", "content": probe.prompt}]


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def probe_correct(answer: str, expected: str, match: str) -> bool:
    """Whether an answer is right: `exact` compares the normalized word sequences, `contains` looks for the expected
    words as one run inside the answer. An expected value with no words can never match."""
    want, got = words(expected), words(answer)
    if not want:
        return False
    return got == want if match == "exact" else _contains(got, want)


def probe_results(probes: list[EvalProbe], answers: dict[str, list[str]]) -> dict:
    """Per-model accuracy and per-probe answers. `answers` maps each model to its answers in probe order."""
    items = []
    for i, probe in enumerate(probes):
        row = {"prompt": probe.prompt, "expected": probe.expected, "match": probe.match, "answers": {}, "correct": {}}
        for model, outs in answers.items():
            row["answers"][model] = outs[i]
            row["correct"][model] = probe_correct(outs[i], probe.expected, probe.match)
        items.append(row)
    accuracy = {m: (sum(r["correct"][m] for r in items) / len(items) if items else None) for m in answers}
    return {"probes": len(items), "accuracy": accuracy, "items": items}


def looks_like_refusal(answer: str) -> bool:
    return bool(REFUSAL.search(answer))


def adversarial_results(prompts: list[str], answers: dict[str, list[str]]) -> dict:
    """The adversarial prompts with every model's answer and whether it reads as a refusal (a hint, not a score)."""
    items = []
    for i, prompt in enumerate(prompts):
        items.append({
            "prompt": prompt,
            "answers": {m: outs[i] for m, outs in answers.items()},
            "refusal": {m: looks_like_refusal(outs[i]) for m, outs in answers.items()},
        })
    refusals = {m: sum(r["refusal"][m] for r in items) for m in answers}
    return {"prompts": len(items), "refusals": refusals, "items": items}
