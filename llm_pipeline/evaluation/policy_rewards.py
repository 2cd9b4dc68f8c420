"""SFT, DPO and RL (and the base model) on the same held-out prompts: reward under the reward model and its judge,
KL to the SFT model, and preference accuracy; the numbers the RL promotion gate reads.

Every model samples `samples` answers to each held-out preference prompt, framed by the SFT tokenizer's chat template
as in training, with plain sampling at temperature 1 (no top-k or top-p: the samples are the model's own
distribution) and the same seed for every model. Each answer is scored by `reward_model` and by its judge (trained on
the other half of the pairs; RL never optimised it). The KL of a model to SFT is the sampled-token estimate
KL(model || SFT) = E_{y ~ model}[sum_t log p_model(y_t) - log p_SFT(y_t)], in nats per answer, averaged over the
model's own samples: unbiased, and on a few samples it can come out slightly negative. Preference accuracy is the
share of held-out pairs whose chosen answer the model gives the higher summed log-likelihood (ties half): one
measure for every model (DPO's implicit-reward accuracy stands in the report's Preference accuracy section).

    result = compare(policies, scorers, tokenizer, prompts, pairs, settings)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from llm_pipeline.evaluation.models import MODEL_LABELS, LoadedModel
from llm_pipeline.evaluation.preference import completion_logprobs
from llm_pipeline.io import MANIFEST, dvc_hash, read_json

SCORERS = ("reward_model", "judge")
KL_NOTE = ("sampled-token estimate: mean over the model's own samples of sum_t log p_model(y_t) - log p_SFT(y_t), nats "
           "per answer (temperature 1, no top-k/top-p)")


@dataclass
class Settings:
    samples: int = 2
    max_new_tokens: int = 24
    max_length: int = 128
    seed: int = 1234
    batch_size: int = 32  # answers decoded at once


def stale_reason(folder: Path, name: str, current: dict[str, Path]) -> str | None:
    """Why an output cannot be used beside the models it is compared with: it is not materialized, or it was built
    from other upstream outputs than the ones evaluated now (`current`: input name -> folder). None when usable."""
    folder = Path(folder) if folder is not None else None
    if folder is None or not (folder / MANIFEST).is_file():
        return f"{name} is not materialized (run it, or the whole graph, before eval_report)"
    built_from = (read_json(folder / MANIFEST) or {}).get("inputs") or {}
    for dep, path in current.items():
        if dep in built_from and Path(path).exists() and built_from[dep] != dvc_hash(path):
            return f"{name} was built from another {dep} than the one evaluated here (re-run {name})"
    return None


def fit(tokenizer, prompts: list, max_prompt_tokens: int, dropped: Counter) -> list[dict]:
    """{prompt, prompt_ids} for each prompt, framed and cut as rl_model frames its prompts."""
    from llm_pipeline.training import rl_prompts

    return rl_prompts.fit_prompts(prompts, tokenizer, max_prompt_tokens, dropped)


def _plan(model):
    from llm_pipeline.training.device import DevicePlan

    return DevicePlan(next(model.parameters()).device.type, "fp32", "evaluation runs in fp32")


def _sample(lm: LoadedModel, tokenizer, prompts: list[dict], settings: Settings) -> list[dict]:
    """Batches of sampled answers ({input_ids, masks, texts}), every prompt `samples` times, seeded per batch."""
    from llm_pipeline.training import rl_loop

    rows = [p["prompt_ids"] for p in prompts for _ in range(settings.samples)]
    how = SimpleNamespace(temperature=1.0, max_new_tokens=settings.max_new_tokens)  # what rl_loop.sample reads
    batches = []
    for n, start in enumerate(range(0, len(rows), settings.batch_size)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed + n)
            batches.append(rl_loop.sample(lm.model, tokenizer, rows[start : start + settings.batch_size], how, _plan(lm.model)))
    return batches


# A prompt's KL to SFT (two forwards of its samples) and its scoring by each reward model (a forward each) are counted
# at half its sampling, which decodes the same tokens one forward per token: an allowance, not a measurement.
SCORING_MARGIN = 1.5


def affordable_prompts(lm: LoadedModel, tokenizer, prompts: list[dict], settings: Settings, policies: int,
                       allowance: float) -> tuple[int, dict]:
    """How many of `prompts` the comparison of `policies` models can afford in `allowance` seconds, from one
    sampling batch of `lm` timed on the budget's clock (a capped report's policy rewards took 324 s of a 36 s cap
    when their prompts were sized from training throughput: sampling is one forward per token)."""
    from llm_pipeline.training import budget

    k = min(len(prompts), max(1, settings.batch_size // max(1, settings.samples)))
    t = budget.now()
    _sample(lm, tokenizer, prompts[:k], settings)
    took = budget.now() - t
    per_prompt = took / max(1, k) * max(1, policies) * SCORING_MARGIN
    n = min(len(prompts), int(max(0.0, allowance - took) // per_prompt)) if per_prompt > 0 else len(prompts)
    return n, {"allowance_seconds": round(allowance, 3), "probe_seconds": round(took, 3), "probe_prompts": k,
               "prompt_seconds": round(per_prompt, 4), "prompts_available": len(prompts), "prompts": n,
               "prompts_cut": len(prompts) - n}


@torch.no_grad()
def _sequence_logps(lm: LoadedModel, batch: dict) -> torch.Tensor:
    from llm_pipeline.training import rl_loop

    lp = rl_loop.completion_logps(lm.model, batch, _plan(lm.model))
    return (lp * batch["completion_mask"].float()).sum(dim=1).float()


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 5) if xs else None


def _pair_accuracy(lm: LoadedModel, pairs: list[dict], batch_size: int) -> float | None:
    if not pairs:
        return None
    lps = completion_logprobs(lm, [(p["prompt"], p["chosen"]) for p in pairs] + [(p["prompt"], p["rejected"]) for p in pairs], batch_size)
    n = len(pairs)
    right = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(lps[:n], lps[n:]))
    return round(right / n, 4)


def vocabulary_gap(lm: LoadedModel, tokenizer) -> str | None:
    """Why a model cannot read the SFT tokenizer's ids (the SFT stage may add chat tokens the base model lacks)."""
    rows = lm.model.get_input_embeddings().weight.shape[0]  # PEFT's trainable-token wrapper has no num_embeddings
    return None if rows >= len(tokenizer) else f"its embeddings have {rows} rows, the SFT tokenizer {len(tokenizer)} tokens"


def compare(policies: dict[str, LoadedModel], scorers: dict[str, Callable[[], object]], tokenizer, prompts: list[dict],
            pairs: list[dict], settings: Settings, pair_batch_size: int = 8) -> dict:
    """Per model: mean reward under each scorer, KL to SFT, answer length, preference accuracy, and its answers.

    `policies` must hold "sft" (the KL reference); `scorers` maps "reward_model"/"judge" to a function that loads that
    reward model (or returns None when it cannot): each is loaded only while it scores every model's answers, so at
    most one reward model sits beside the policies in memory. `prompts` are `fit` rows; `pairs` the held-out pairs."""
    from llm_pipeline.training import reward_scoring

    sft = policies["sft"]
    prompt_of = [p["prompt"] for p in prompts for _ in range(settings.samples)]
    out: dict[str, dict] = {}
    answers: dict[str, list[str]] = {}
    for name, lm in policies.items():
        batches = _sample(lm, tokenizer, prompts, settings)
        answers[name] = [t for b in batches for t in b["texts"]]
        kls: list[float] = []
        if name != "sft":
            for b in batches:
                kls += (_sequence_logps(lm, b) - _sequence_logps(sft, b)).tolist()
        out[name] = {
            "reward": {},
            "kl_to_sft": 0.0 if name == "sft" else _mean(kls),
            "answer_tokens": _mean([float(n) for b in batches for n in b["completion_mask"].sum(dim=1).tolist()]),
            "preference_accuracy": _pair_accuracy(lm, pairs, pair_batch_size),
        }
    per_answer: dict[str, dict[str, list[float]]] = {m: {} for m in policies}
    for s, load in scorers.items():
        model = load()
        if model is None:
            continue
        for m in policies:
            values = reward_scoring.score(model, tokenizer, prompt_of, answers[m], settings.max_length)
            per_answer[m][s] = [round(x, 5) for x in values]
            out[m]["reward"][s] = _mean(values)
        del model
    side_by_side = []
    for i, p in enumerate(prompts):
        k = i * settings.samples  # each model's first sample of the prompt
        side_by_side.append({"prompt": p["prompt"], "answers": {m: answers[m][k] for m in policies},
                             "rewards": {m: {s: v[k] for s, v in per_answer[m].items()} for m in policies}})
    return {"models": out, "side_by_side": side_by_side}


def gains_over_sft(result: dict) -> dict[str, dict[str, float]]:
    """Per model and scorer, mean reward minus SFT's (where both were measured)."""
    models = result.get("models") or {}
    sft = (models.get("sft") or {}).get("reward") or {}
    out: dict[str, dict[str, float]] = {}
    for m, r in models.items():
        if m == "sft":
            continue
        for s, v in (r.get("reward") or {}).items():
            if v is not None and sft.get(s) is not None:
                out.setdefault(m, {})[s] = round(v - sft[s], 5)
    return out


def label(m: str) -> str:
    return MODEL_LABELS.get(m, m)
