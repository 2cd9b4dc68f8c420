"""Preference pairs for DPO: the user's files, or synthetic pairs built from the corpus.

A synthetic pair takes a prefix of a document as the prompt ("Continue this <domain> text: ..."), the document's
true continuation as `chosen`, and as `rejected` either the continuation of another document of the same domain
(`other_document`: fluent but off-topic) or the SFT model's own sampled continuation (`model_sample`: what the model
already says, which DPO should move away from toward the real text; a pair whose sample is blank, too short or the
chosen text itself is dropped with that reason). Which one is recorded per pair. Training
pairs come from train-split documents, held-out pairs from eval-split documents.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import xxhash

from llm_pipeline.training.corpus import iter_documents
from llm_pipeline.training.tag_fill import TagFiller
from llm_pipeline.training.packing import defused_messages
from llm_pipeline.training.sft_data import _read_table

PROMPT_WORDS = 32
CONTINUATION_WORDS = 24
MIN_WORDS = 16  # a prompt and a continuation of at least a few words each
EVAL_SHARE = 0.15


class PreferenceDataError(ValueError):
    """Preference data that cannot be used."""


class UnpairedRow(PreferenceDataError):
    """A well-formed row that holds no comparison (its two answers do not share a prompt): skipped and counted."""

    reason = "prompts_differ"


def split_document(text: str) -> tuple[str, str] | None:
    words = text.split()
    if len(words) < MIN_WORDS:
        return None
    cut = min(PROMPT_WORDS, len(words) // 2)
    return " ".join(words[:cut]), " ".join(words[cut : cut + CONTINUATION_WORDS])


def prompt_for(domain: str, prefix: str) -> str:
    # The same wording as the SFT `continue` template, so DPO refines a behaviour the SFT adapter already has.
    return f"Continue this {domain} text:\n{prefix}"


def synthetic_pairs(shards: Path, domain: str, split: str, limit: int, seed: int, skipped: Counter,
                    filler: TagFiller | None = None) -> list[dict]:
    """Up to `limit` pairs whose rejected side is another document's continuation (rotated by a seeded offset); PII
    tags filled with `filler`, if given."""
    pieces = []
    for rec in iter_documents(shards, domain, split, filler=filler):
        parts = split_document(rec["text"])
        if parts is None:
            skipped["too_short"] += 1
            continue
        pieces.append((rec["id"], *parts))
        if len(pieces) >= limit + 1:
            break
    if len(pieces) < 2:
        skipped["fewer_than_two_documents"] += len(pieces)
        return []
    n = len(pieces) if len(pieces) <= limit else limit
    shift = 1 + seed % (len(pieces) - 1)  # never 0: a document is never its own negative
    pairs = []
    for i in range(n):
        doc_id, prefix, continuation = pieces[i]
        other_id, _, other = pieces[(i + shift) % len(pieces)]
        if other.strip() == continuation.strip():
            skipped["identical_continuations"] += 1
            continue
        pairs.append({
            "prompt": prompt_for(domain, prefix), "chosen": continuation, "rejected": other, "domain": domain,
            "rejected_source": "other_document", "source_id": doc_id, "rejected_id": other_id,
        })
    return pairs


SMALL_MODEL_PARAMS = 20_000_000  # as evaluation/models.py: below this, one intra-op thread decodes fastest on a CPU
# How a rejection is drawn from the SFT model. Greedy decoding of a small SFT model degenerates (the default tiny
# model wrote only newlines after the turn marker, so every pair fell back to another document's text); a sample
# at temperature 0.8 within the top 95% of the probability mass, with repeated tokens damped, is what the model
# says when it is asked, which is what DPO should move away from.
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "repetition_penalty": 1.3}
MIN_SAMPLE_WORDS = 4  # a rejection of fewer words than this is no continuation to compare against


def sample_problem(sample: str, chosen: str) -> str | None:
    """Why a sampled rejection is no negative (a named reason), or None when it is one."""
    if not sample.strip():
        return "sample_empty"
    if " ".join(sample.split()) == " ".join(chosen.split()):
        return "sample_equals_chosen"
    if len(sample.split()) < MIN_SAMPLE_WORDS:
        return "sample_too_short"
    return None


def model_rejections(pairs: list[dict], model, tokenizer, max_new_tokens: int, seed: int = 0,
                     dropped: Counter | None = None, should_stop=None, allowance=None, cache_dir: Path | None = None) -> list[dict]:
    """The pairs whose rejected side is now the SFT model's own sampled continuation (`rejected_source`
    `model_sample`), in order.

    A pair whose sample fails `sample_problem` is dropped and counted in `dropped` under that reason: falling back
    to another document's text would make the pair trivially separable. `should_stop()` is asked before each batch
    of prompts (e.g. a time budget spent); the pairs not sampled then are dropped as `sampling_budget_spent`.
    `allowance` (a `budget.Allowance`) bounds the sampling by measured time instead: the first prompt is sampled alone
    to time it, and each later batch is cut to the prompts that still fit (the rest dropped as above).

    Batches are fixed (the first prompt, then SAMPLE_BATCH at a time) and each is seeded from `seed` and its start, so
    the samples depend on the seed only, not on what ran before (a batch the budget cut short holds fewer prompts
    and samples differently). With `cache_dir` (one folder per SFT model) a sampled batch is kept there, and any
    stage that samples the same prompts from the same model reads it instead of sampling again.
    """
    import torch

    dropped = Counter() if dropped is None else dropped
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    threads = torch.get_num_threads()
    # A small model's decoding steps are too small to split across threads: on a busy 2-core machine the default
    # tiny model's samples took 24.7 s on two threads and 0.4 s on one (the threads spin-wait on each other).
    if next(model.parameters()).device.type == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            kept = _sample_rejections(pairs, model, tokenizer, max_new_tokens, seed, dropped, should_stop, allowance, cache_dir)
    finally:
        torch.set_num_threads(threads)
        tokenizer.padding_side = "right"
        model.train(was_training)
    return kept


SAMPLE_BATCH = 16


def _batches(n: int) -> list[tuple[int, int]]:
    """(start, end) of each sampling batch: the first prompt alone (it times a sample), then SAMPLE_BATCH at a time."""
    return [(0, min(1, n))] + [(s, min(n, s + SAMPLE_BATCH)) for s in range(1, n, SAMPLE_BATCH)] if n else []


def _cache_file(cache_dir: Path, seed: int, start: int, max_new_tokens: int, chunk: list[dict]) -> Path:
    key = json.dumps({"seed": seed, "start": start, "max_new_tokens": max_new_tokens, "sampling": SAMPLING,
                      "prompts": [p["prompt"] for p in chunk]}, sort_keys=True, default=str)
    return Path(cache_dir) / (xxhash.xxh3_128_hexdigest(key.encode("utf-8")) + ".json")


def _sample_rejections(pairs: list[dict], model, tokenizer, max_new_tokens: int, seed: int, dropped: Counter, should_stop,
                       allowance, cache_dir: Path | None) -> list[dict]:
    import torch

    from llm_pipeline.io import write_json

    def cached(start: int, chunk: list[dict]) -> tuple[Path | None, list[str] | None]:
        if cache_dir is None:
            return None, None
        path = _cache_file(cache_dir, seed, start, max_new_tokens, chunk)
        return path, (json.loads(path.read_text(encoding="utf-8"))["samples"] if path.exists() else None)

    kept = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start, end in _batches(len(pairs)):
            chunk = pairs[start:end]
            if should_stop is not None and should_stop():
                dropped["sampling_budget_spent"] += len(pairs) - start
                break
            path, samples = cached(start, chunk)
            if samples is None and allowance is not None:
                fit = allowance.fits(len(chunk))
                if fit < len(chunk):  # the budget ends the sampling in this batch: the prompts not sampled are dropped
                    allowance.cut += len(pairs) - start - fit
                    dropped["sampling_budget_spent"] += len(pairs) - start - fit
                    if not fit:
                        break
                    chunk = chunk[:fit]
                    path, samples = cached(start, chunk)
            if samples is None:
                torch.manual_seed(seed * 1_000_003 + start)
                if allowance is not None:
                    with allowance.timing(len(chunk)):
                        samples = _generate(chunk, model, tokenizer, max_new_tokens, device)
                else:
                    samples = _generate(chunk, model, tokenizer, max_new_tokens, device)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_json(path, {"samples": samples})
            elif allowance is not None:
                allowance.reused += len(chunk)
            kept += _keep(chunk, samples, dropped)
            if len(chunk) < end - start:
                break
    return kept


def _generate(chunk: list[dict], model, tokenizer, max_new_tokens: int, device) -> list[str]:
    # Rendered to text, then tokenized with the template's markers as special ids: the prompt's own text is
    # defused first, so a "<|im_end|>" quoted in it cannot close the turn the sample continues.
    texts = [tokenizer.apply_chat_template(defused_messages(tokenizer, [{"role": "user", "content": p["prompt"]}]), tokenize=False,
                                           add_generation_prompt=True) for p in chunk]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(device) for k, v in enc.items()}
    # At least a quarter of the budget: a model that has not learned to answer yet stops at once.
    out = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max(1, max_new_tokens // 4),
                         pad_token_id=tokenizer.pad_token_id, **SAMPLING)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out[:, enc["input_ids"].shape[1] :]]


def _keep(chunk: list[dict], samples: list[str], dropped: Counter) -> list[dict]:
    kept = []
    for p, sample in zip(chunk, samples):
        problem = sample_problem(sample, p["chosen"])
        if problem:
            dropped[problem] += 1
            continue
        kept.append({**p, "rejected": sample, "rejected_source": "model_sample", "rejected_id": None})
    return kept


HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def detect_pair_format(row: dict) -> str:
    if "conversations" in row and "chosen" in row and "rejected" in row:
        return "sharegpt"
    if "prompt" not in row and {"chosen", "rejected"} <= set(row) and "\n\nAssistant:" in str(row["chosen"]):
        return "hh_rlhf"
    if "prompt" in row:
        return "prompt_chosen_rejected"  # missing answers are named when the row is read
    raise PreferenceDataError(f"cannot tell the preference format of a row with fields {sorted(row)}; set dpo_model.data_format")


def hh_turns(transcript: str) -> list[dict]:
    """An HH-RLHF transcript ("\n\nHuman: ... \n\nAssistant: ...") as chat messages."""
    parts = HH_TURN.split(transcript)
    if len(parts) < 3 or parts[0].strip():
        raise PreferenceDataError("not an HH-RLHF transcript (it must start with '\\n\\nHuman:')")
    return [{"role": "user" if who == "Human" else "assistant", "content": text.strip()} for who, text in zip(parts[1::2], parts[2::2])]


def split_hh(chosen: str, rejected: str) -> dict:
    """The shared dialogue up to the last Assistant turn as the prompt, and each final Assistant answer."""
    c, r = hh_turns(chosen), hh_turns(rejected)
    if not c or c[-1]["role"] != "assistant" or not r or r[-1]["role"] != "assistant":
        raise PreferenceDataError("an HH-RLHF transcript must end with an Assistant turn")
    if c[:-1] != r[:-1]:
        raise UnpairedRow("the chosen and rejected transcripts differ before their last Assistant turn")
    return {"prompt": c[:-1], "chosen": c[-1]["content"], "rejected": r[-1]["content"]}


def _sharegpt_answer(value) -> str:
    if isinstance(value, dict):
        return str(value.get("value", value.get("content", "")))
    if isinstance(value, list) and value:
        return _sharegpt_answer(value[-1])
    return str(value)


def split_sharegpt(row: dict) -> dict:
    turns = []
    for t in row["conversations"]:
        role = SHAREGPT_ROLES.get(str(t.get("from", t.get("role", ""))).lower())
        if role is None:
            raise PreferenceDataError(f"unknown ShareGPT speaker {t.get('from', t.get('role'))!r} (expected human, gpt or system)")
        turns.append({"role": role, "content": str(t.get("value", t.get("content", "")))})
    if not turns or turns[-1]["role"] != "user":
        raise PreferenceDataError("a ShareGPT conversation must end with a human turn that chosen/rejected answer")
    return {"prompt": turns, "chosen": _sharegpt_answer(row["chosen"]), "rejected": _sharegpt_answer(row["rejected"])}


def normalise_pair(row: dict, fmt: str) -> dict:
    fmt = detect_pair_format(row) if fmt == "auto" else fmt
    if fmt == "hh_rlhf":
        return split_hh(str(row["chosen"]), str(row["rejected"]))
    if fmt == "sharegpt":
        return split_sharegpt(row)
    missing = {"prompt", "chosen", "rejected"} - set(row)
    if missing:
        raise PreferenceDataError(f"a preference row needs prompt, chosen and rejected; lacks {sorted(missing)}")
    return {k: row[k] for k in ("prompt", "chosen", "rejected")}


def read_user_pairs(paths: list[Path], fmt: str = "auto", skipped: Counter | None = None) -> tuple[list[dict], list[dict]]:
    """Train and held-out pairs from user files (held out by a hash of the prompt). A row that cannot be used stops the
    run with its file and line, except pairs whose chosen and rejected answers are the same (no preference in them),
    which are counted under `skipped` as `identical_answers`, and HH-RLHF rows whose two transcripts differ before the
    last answer, counted as `prompts_differ`."""
    skipped = skipped if skipped is not None else Counter()
    train, held = [], []
    for path in paths:
        if not path.exists():
            raise PreferenceDataError(f"preference data file not found: {path}")
        for n, row in enumerate(_read_table(path)):
            try:
                rec = normalise_pair(row, fmt)
            except UnpairedRow as exc:
                # Public sets have a few of these (HH-RLHF's harmless-base test split: 1 in ~2,300); the stage's
                # metadata shows the count under `skipped`.
                skipped[exc.reason] += 1
                continue
            except PreferenceDataError as exc:
                raise PreferenceDataError(f"{path}:{n + 1}: {exc}") from None
            if str(rec["chosen"]).strip() == str(rec["rejected"]).strip():
                skipped["identical_answers"] += 1
                continue
            rec.update(domain=str(row.get("domain", "user")), rejected_source=f"file:{path.name}")
            # Held out by prompt: pairs that share a prompt land on the same side, so no held-out prompt was trained on.
            key = json.dumps(rec["prompt"], sort_keys=True, default=str).encode()
            (held if xxhash.xxh64_intdigest(key) / 2**64 < EVAL_SHARE else train).append(rec)
    if not train:
        raise PreferenceDataError(f"no preference pairs in {', '.join(map(str, paths))}")
    return train, held


def as_conversation(rec: dict) -> dict:
    """A pair in TRL's conversational shape (string fields are wrapped; message lists pass through)."""
    wrap = lambda role, v: v if isinstance(v, list) else [{"role": role, "content": str(v)}]  # noqa: E731
    return {"prompt": wrap("user", rec["prompt"]), "chosen": wrap("assistant", rec["chosen"]), "rejected": wrap("assistant", rec["rejected"])}
