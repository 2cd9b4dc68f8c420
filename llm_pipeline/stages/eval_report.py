"""eval_report: held-out comparison of the base, SFT, DPO and RL models, written as report.md, report.html and metrics.json.

Reads every upstream output (see docs/ARCHITECTURE.md), computes per-domain perplexity and bits per byte on the
eval-split documents (PII tags filled as training reads them, the surrogates read but not scored:
`evaluation/heldout.py`), DPO preference accuracy on held-out pairs, ROUGE-L / exact match of greedy completions on
sft_eval, a few-shot probe set, side-by-side samples, answers to adversarial prompts, an n-gram contamination check
and a PII canary search; shows what each model's training cost and bought (the settings each training stage chose and
why, data trained on against data available, wall time; `evaluation/compute.py`); draws the plots (on a background
thread, while the models run) and renders the report. A model's perplexity on a domain is read back from the result
cache (`evaluation/cache.py`) when the model's files, the domain's shard and the eval settings are unchanged. SFT,
DPO and RL (and base) also answer the same held-out preference prompts, scored by reward_model and by its judge (a
reward model RL never trained against), with each model's KL to SFT (`evaluation/policy_rewards.py`). rl_model and
reward_model are optional inputs: absent, or trained from another SFT model, they are reported as not run, with the
reason. Then it puts each tuned model (`promotion_order`: RL, DPO, then SFT) through the promotion gates (thresholds
in the config; `evaluation/gates.py`) and promotes the first that passes: `serving_manifest.json` is that model's,
with why the others were not chosen, and the stats carry a one-line verdict ("RL not promoted: judge reward +0.0012
≤ 0.0050 over SFT; DPO adapter promoted"). Every
model is compared with the original pretrained model (when base_checkpoint started from one; scored with its own
tokenizer) as well as with base_checkpoint, in bits per byte as well as perplexity. It also exports the hardest
held-out documents for human review (`review/`, an Argilla dataset). A failed gate never fails the stage; the
blocking Dagster check `promotion_gates` fails only when no candidate passes. A missing optional input (no held-out
pairs, no training log, no canaries file) becomes a note in the report, not a failure.

    llm-pipeline stage eval_report     # or llm_pipeline.runner.run_stage(cfg, "eval_report")
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from llm_pipeline.config import PipelineConfig
from llm_pipeline.evaluation import cache as cache_mod
from llm_pipeline.evaluation import canaries, compute, contamination, data, gates, generation, heldout, models, perplexity, plots, policy_rewards, policy_tables, preference, probes, report, report_checks, review
from llm_pipeline.io import dvc_hash, file_md5, write_json
from llm_pipeline.runner import code_version
from llm_pipeline.stages import StageOutput
from llm_pipeline.training import tag_fill

# Under a run budget the report's cost follows it: eval_report.max_seconds, else this share of
# training.max_train_seconds. The row caps come from that time and the training throughput the upstream stages
# measured: a forward pass of a token costs about a third of a training step's (forward and backward); 2x the
# training rate leaves room for padding, generation's one-token steps and a busier machine.
EVAL_REPORT_SHARE = 0.2
FORWARD_SPEEDUP = 2.0
CHARS_PER_TOKEN = 4  # English text in a BPE vocabulary: converts the document character cap into tokens
# How the time is spread: perplexity of every model on every domain, preference pairs and policy rewards (two
# sequences of up to max_length per pair), greedy generation of the task, probe and adversarial prompts.
SECTION_SHARES = {"perplexity": 0.45, "pairs": 0.2, "generation": 0.35}

PLOTS = ("training_loss.png", "perplexity_by_domain.png", "dpo_rewards.png", "training_compute.png", "policy_rewards.png")


def _clean(obj: Any) -> Any:
    """NaN/inf become null: metrics.json must be strict JSON for DVC and browsers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _shown_path(cfg: PipelineConfig, path: Path) -> str:
    """A path relative to the project root when it lies inside (the report must not name this machine's folders)."""
    try:
        return Path(path).resolve().relative_to(Path(cfg.root).resolve()).as_posix()
    except ValueError:
        return str(path)


def _lineage(cfg: PipelineConfig, inputs: dict[str, Path], domains: dict[str, Path]) -> dict:
    hashes = {f"deduped_shards/{d}": dvc_hash(p) for d, p in domains.items()}
    for name in ("tokenizer", "base_checkpoint", "lora_adapter", "dpo_model", "reward_model", "rl_model"):
        if name in inputs and Path(inputs[name]).exists():
            hashes[name] = dvc_hash(inputs[name])
    config_path = cfg.config_path
    canaries_file = cfg.resolve(cfg.eval_report.canaries_file) if cfg.eval_report.canaries_file else None
    if canaries_file is not None and canaries_file.is_file():
        hashes["canaries_file"] = file_md5(canaries_file)
    return {
        "inputs": hashes,
        "config_path": _shown_path(cfg, config_path) if config_path else None,
        "config_md5": file_md5(config_path) if config_path and Path(config_path).is_file() else None,
        "config_fingerprint": cfg.fingerprint(),
        "code_version": code_version(),
    }


def _training_summary(logs: dict[str, list[dict]]) -> dict:
    out = {}
    for name, rows in logs.items():
        train = [r for r in rows if isinstance(r.get("loss"), (int, float))]
        evals = [r for r in rows if isinstance(r.get("eval_loss"), (int, float))]
        if not train and not evals:
            continue
        s: dict[str, Any] = {"steps": max((r.get("step", 0) for r in rows), default=0)}
        if train:
            s["first_loss"], s["final_loss"] = train[0]["loss"], train[-1]["loss"]
        if evals:
            s["final_eval_loss"] = evals[-1]["eval_loss"]
        for key in ("rewards/margins", "rewards/accuracies"):
            vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            if vals:
                s[f"final_{key.split('/')[1]}"] = vals[-1]
        out[name] = s
    return out


def _perplexities(cfg: PipelineConfig, loaded: dict[str, models.LoadedModel], docs: dict[str, list[data.EvalDocument]],
                  domains: dict[str, Path], folders: dict[str, list[Path]], workers: int = 1,
                  identities: dict[str, str] | None = None, view: heldout.HeldOut | None = None) -> tuple[dict, dict, dict]:
    """Per model: perplexity and bits per byte by domain and overall, and the per-document scores.

    A model's scores on a domain are read from the result cache when neither the model's files nor the domain's
    shard nor the eval settings changed since they were computed (see evaluation/cache.py); otherwise the domain is
    scored and the result kept (`identities`: a name standing for a model that has no folder of its own, such as a
    hub id). Documents are tokenized once per distinct tokenizer, not once per model. With
    `workers` > 1 (small models on a CPU, one intra-op thread each) the (model, domain) scorings run in that many
    threads at once: the forward passes release the GIL, so each gets a core of its own.

    Every model reads the same text (`view`, evaluation/heldout.py): PII tags filled as training read them, and the
    surrogates (or, with filling off, the tags) left out of every model's score, so ratios between models compare
    like with like."""
    ec = cfg.eval_report
    view = view or heldout.HeldOut.for_config(cfg)
    # The text each document is scored as, and the spans left out of it: the same for every model.
    scored_text: dict[str, tuple[list[str], list[list[tuple[int, int]]]]] = {
        d: view.prepare([x.text for x in ds], group=d) for d, ds in docs.items()}
    # The key holds the text as scored and the spans left out, not the filler's settings: a change of seed or canaries
    # that draws other surrogates retires the entry, one that draws the same keeps it.
    scored_hash = {d: hashlib.sha256(json.dumps(v).encode()).hexdigest()[:32] for d, v in scored_text.items()}
    identities = identities or {}
    cache = cache_mod.ResultCache(cfg.data_path)
    code = cache_mod.source_version(perplexity, data, heldout, tag_fill)
    shard_hash = {d: dvc_hash(p) for d, p in domains.items()}
    # Per (tokenizer, domain): token ids and their character offsets (the spans left out need them).
    token_ids: dict[tuple[str, str], tuple[list[list[int]], list[list[tuple[int, int]]]]] = {}
    folder_ids = {f: cache_mod.model_identity(f) for f in {f for fs in folders.values() for f in fs}}  # each folder hashed once
    per_doc: dict[tuple[str, str], list[perplexity.Score]] = {}
    todo: list[tuple[str, str, str, tuple[str, str]]] = []  # (model, domain, cache key, token ids key)
    for name, lm in loaded.items():
        identity = cache_mod.ResultCache.key(folders=[folder_ids[f] for f in folders.get(name, [])], name=identities.get(name))
        vocab = hashlib.sha256(lm.tokenizer.backend_tokenizer.to_str().encode()).hexdigest() if hasattr(lm.tokenizer, "backend_tokenizer") else identity
        for d, ds in docs.items():
            if not ds:
                continue
            key = cache.key(model=identity, shard=shard_hash[d], window=lm.window, code=code, eval_fraction=cfg.eval_fraction,
                            max_eval_documents=ec.max_eval_documents, max_document_chars=ec.max_document_chars,
                            scoring=view.mode, scored=scored_hash[d])
            hit = cache.get("perplexity", key)
            if hit is not None and hit.get("ids") == [x.id for x in ds]:
                per_doc[(name, d)] = perplexity.from_rows(hit["scores"])
                continue
            if (vocab, d) not in token_ids:
                texts = scored_text[d][0]
                # A slow tokenizer has no offsets: its texts can be scored whole only (score_texts says so if asked more).
                token_ids[(vocab, d)] = (perplexity.encode(lm.tokenizer, texts) if hasattr(lm.tokenizer, "backend_tokenizer")
                                         else (perplexity.tokenize(lm.tokenizer, texts), None))
            todo.append((name, d, key, (vocab, d)))

    def score(job: tuple[str, str, str, tuple[str, str]]) -> list[perplexity.Score]:
        name, d, _, ids = job
        texts, spans = scored_text[d]
        ids_, offsets = token_ids[ids]
        return perplexity.score_texts(loaded[name], texts, ec.batch_size, token_ids=ids_, offsets=offsets, skip=spans)

    # Longest first, so that no thread is left with a large job at the end.
    todo.sort(key=lambda job: -sum(map(len, token_ids[job[3]][0])))
    results = models.parallel_map(score, todo, workers, "eval-ppl")
    for (name, d, key, _), scores in zip(todo, results):
        cache.put("perplexity", key, {"ids": [x.id for x in docs[d]], "scores": perplexity.to_rows(scores)})
        per_doc[(name, d)] = scores

    ppl: dict[str, dict] = {}
    doc_scores: dict[str, dict[str, list[perplexity.Score]]] = {}
    for name in loaded:
        by_domain, overall = {}, perplexity.Score()
        for d in docs:
            if (name, d) not in per_doc:
                continue
            doc_scores.setdefault(name, {})[d] = per_doc[(name, d)]
            s = perplexity.total(per_doc[(name, d)])
            by_domain[d] = s.as_dict()
            overall.add(s)
        ppl[name] = {"by_domain": by_domain, "overall": overall.as_dict()}
    return ppl, doc_scores, cache.stats()


def _skip_reason(folder: Path) -> str | None:
    """Why a training stage made no model, as its stats say (e.g. dpo_model with too few pairs), else None."""
    try:
        stats = json.loads((Path(folder) / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    why = stats.get("skipped") if isinstance(stats, dict) else None
    return f"{Path(folder).name} skipped training: {why}" if isinstance(why, str) and why else None


def _original_model(cfg: PipelineConfig, notes: data.Notes) -> tuple[models.LoadedModel | None, dict, list[Path], str | None]:
    """The pretrained model base_checkpoint started from, with its own (unextended) tokenizer: what the gates and the
    report compare every model with. (model, what it is or why it is absent, its folder for the result cache's key,
    a name standing for it when it has no local folder)."""
    bc = cfg.base_checkpoint
    if bc.source == "scratch":
        return None, {"why": "base_checkpoint was trained from scratch, so there is no original pretrained model"}, [], None
    from transformers import AutoTokenizer

    from llm_pipeline.training.model_source import ModelSourceError, load_base_model, load_from, model_location

    try:
        loc = model_location(cfg)
        # The tokenizer the model was released with, never the extended one: that is the model a user started from.
        tok = load_from(loc, AutoTokenizer, "base_checkpoint.model", weights=False, trust_remote_code=bc.trust_remote_code)
        model, origin = load_base_model(cfg, tok)
    except (ModelSourceError, OSError, ValueError) as exc:
        notes.add(f"the original pretrained model did not load ({exc}); models are compared with base_checkpoint only.")
        return None, {"why": f"the original pretrained model did not load ({type(exc).__name__})"}, [], None
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # padding positions are masked out; any id works
    folder = Path(loc.where)
    local = [folder] if not loc.hub_id and folder.is_dir() else []
    return models.LoadedModel("original", model.eval(), tok, is_adapter=False), {"origin": origin}, local, None if local else loc.describe()


def _serving_manifest(verdict: dict, folders: dict[str, Path], notes: data.Notes) -> dict:
    """The promoted model's own serving manifest (what its training stage wrote) with the verdict over every
    candidate; when nothing is promoted, the first candidate's, marked `promoted: false`."""
    shown = verdict["model"] or next((c["model"] for c in verdict["candidates"] if c.get("ran", True)), None)
    manifest = data.read_json_file(folders[shown] / "serving_manifest.json") if shown else None
    if shown and not isinstance(manifest, dict):
        notes.add(f"`{folders[shown].name}/serving_manifest.json` is missing or not a JSON object; eval_report/serving_manifest.json carries only the verdict.")
    not_chosen = {c["model"]: c["why"] for c in verdict["candidates"] if not c["chosen"]}
    return {**(manifest if isinstance(manifest, dict) else {}), "model": verdict["model"], "adapter_folder": verdict["folder"],
            "promoted": verdict["promoted"], "summary": verdict["summary"], "not_chosen": not_chosen,
            "failed_gates": verdict["failed_gates"], "gates": verdict["gates"], "candidates": verdict["candidates"]}


def _pair_text(rec: dict) -> str:
    return "\n".join((models.prompt_text(rec["prompt"]), rec["chosen"], rec["rejected"]))


def _sft_text(rec: dict) -> str:
    return f"{models.prompt_text(rec['prompt'])}\n{rec['completion']}"


def _round_robin(rows: list[dict], n: int) -> list[int]:
    """Indices of up to `n` rows taken in turn from each domain, so the samples do not all come from the first one."""
    by_domain: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_domain.setdefault(str(r.get("domain")), []).append(i)
    queues = list(by_domain.values())
    picked: list[int] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return sorted(picked)


def _worst_documents(docs: dict[str, list[data.EvalDocument]], scores: dict[str, list[perplexity.Score]], k: int) -> list[tuple[data.EvalDocument, perplexity.Score]]:
    """The K documents per domain with the highest mean NLL per token (total NLL would just pick the longest)."""
    out = []
    for d, ds in docs.items():
        ranked = sorted(zip(ds, scores.get(d, [])), key=lambda x: -x[1].mean_nll if x[1].tokens else 0.0)
        out += [x for x in ranked if x[1].tokens][:k]
    return out


def _review_items(cfg: PipelineConfig, lm: models.LoadedModel, base: models.LoadedModel, worst, notes: data.Notes) -> list[dict]:
    """Prompt, true continuation and the model's own continuation of each hard document, with the model's choice."""
    from llm_pipeline.training.preference_data import prompt_for, split_document  # the DPO stage's pair framing

    items = []
    for doc, score in worst:
        parts = split_document(doc.text)
        if parts is None:
            notes.add(f"document `{doc.id}` is too short to split into prompt and continuation; it is left out of the review set.")
            continue
        items.append({"doc_id": doc.id, "domain": doc.domain, "nll": score.mean_nll, "prompt": prompt_for(doc.domain, parts[0]), "response_a": parts[1]})
    if not items:
        return []
    ec = cfg.eval_report
    outs = generation.greedy(lm, [x["prompt"] for x in items], ec.sample_max_new_tokens, ec.batch_size)
    for x, out in zip(items, outs):
        x["response_b"] = out
    pairs = [(x["prompt"], x["response_a"]) for x in items] + [(x["prompt"], x["response_b"]) for x in items]
    if lm.is_adapter:
        rewards = preference.implicit_rewards(lm, base, pairs, cfg.dpo_model.beta, ec.batch_size)
    else:  # no reference to compare with: the model's own log-probabilities say which it prefers
        rewards = preference.completion_logprobs(lm, pairs, ec.batch_size)
    for i, x in enumerate(items):
        x["margin"] = rewards[i] - rewards[len(items) + i]
        x["suggestion"] = "response_a" if x["margin"] > 0 else "response_b"
    return items


def _canary_check(cfg: PipelineConfig, inputs: dict[str, Path], domains: dict[str, Path], generated: dict[str, list[str]], notes: data.Notes) -> dict:
    ec = cfg.eval_report
    path = cfg.resolve(ec.canaries_file) if ec.canaries_file else None
    found = canaries.load_canaries(path, notes, ec.canary_min_part_chars, shown=ec.canaries_file)
    if found is None:
        return {"checked": False, "why": "no canaries file configured" if path is None else f"canaries file {path.name} not found or unreadable"}
    scan = canaries.CanaryScan(found, ec.canary_common_part_max_documents)
    for d, folder in domains.items():
        for rec in data.iter_all_documents(folder):
            scan.scan_document(f"deduped_shards/{d}", str(rec.get("id")), rec["text"])
    for folder, pattern in ((Path(inputs["lora_adapter"]), "sft_*.jsonl"), (Path(inputs["dpo_model"]), "pairs_*.jsonl")):
        for f in sorted(folder.glob(pattern)):
            scan.scan_records(f"{folder.name}/{f.name}", f)
    tok_dir = inputs.get("tokenizer")
    if tok_dir and Path(tok_dir).is_dir():
        scan.scan_tokenizer(models.load_tokenizer(Path(tok_dir)))
    else:
        notes.add("no tokenizer folder: the canary vocabulary check is skipped.")
    for name, texts in generated.items():
        for i, text in enumerate(texts):
            scan.scan(f"generations/{name}", f"output {i}", text)
    return scan.results()


def _rl_input(inputs: dict[str, Path]) -> tuple[Path | None, str | None]:
    """The rl_model folder to evaluate, or why there is none: not materialized, or trained from another SFT model or
    base than the ones evaluated here (comparing it would credit RL with a different starting point)."""
    rl_dir = Path(inputs["rl_model"]) if inputs.get("rl_model") else None
    current = {k: Path(inputs[k]) for k in ("lora_adapter", "base_checkpoint") if k in inputs}
    why = policy_rewards.stale_reason(rl_dir, "rl_model", current)
    return (None, why) if why else (rl_dir, None)


def _scorers(cfg: PipelineConfig, inputs: dict[str, Path], tokenizer, notes: data.Notes) -> tuple[dict, dict]:
    """A loader for the reward model and one for its judge (each loads the model frozen, or returns None and says
    why), and what the report says of each (held-out accuracy, or why it is absent)."""
    from llm_pipeline.training.reward_scoring import load_reward_model

    rm_dir = Path(inputs["reward_model"]) if inputs.get("reward_model") else None
    current = {k: Path(inputs[k]) for k in ("lora_adapter", "base_checkpoint") if k in inputs}
    why = policy_rewards.stale_reason(rm_dir, "reward_model", current)
    if why:
        return {}, {"reward_model": {"why": why}, "judge": {"why": why}}
    stats = data.read_json_file(rm_dir / "stats.json") or {}
    if isinstance(stats.get("skipped"), str) and stats["skipped"]:  # e.g. the step floor: its part bought too few steps
        why = f"reward_model skipped training: {stats['skipped']}"
        return {}, {"reward_model": {"why": why}, "judge": {"why": why}}
    summary = (data.read_json_file(rm_dir / "training_summary.json") or {}).get("judge") or {}
    lora_dir = Path(inputs["lora_adapter"])
    scoring_base = Path(inputs["base_checkpoint"]) if (lora_dir / "adapter_config.json").exists() else lora_dir
    info = {"reward_model": {"eval_accuracy": stats.get("eval_accuracy"), "pairs_trained": stats.get("pairs")},
            "judge": {"eval_accuracy": stats.get("judge_eval_accuracy"), "pairs_trained": stats.get("judge_pairs"),
                      "split": summary.get("split")}}

    def loader(name: str, folder: Path):
        def load():
            try:
                return load_reward_model(scoring_base, folder, tokenizer.pad_token_id, cfg.base_checkpoint.trust_remote_code)
            except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
                notes.add(f"`{folder.relative_to(rm_dir.parent)}` did not load as a reward model ({type(exc).__name__}: {exc}).")
                info[name] = {"why": f"did not load ({type(exc).__name__})"}
                return None
        return load

    loaders = {}
    for name, folder in (("reward_model", rm_dir), ("judge", rm_dir / "judge")):
        if (folder / "adapter_config.json").is_file():
            loaders[name] = loader(name, folder)
        else:
            info[name] = {"why": summary.get("why") or f"no judge in {rm_dir.name}/ (reward_model.judge is off, or it was trained before judges)"}
    return loaders, info


def _policies(cfg: PipelineConfig, inputs: dict[str, Path], loaded: dict[str, models.LoadedModel], pairs_eval: list[dict],
              not_run: dict[str, str], notes: data.Notes, allowance: float | None = None) -> dict:
    """SFT, DPO and RL (and base) on the same held-out prompts: rewards under the reward model and its judge, KL to
    SFT, preference accuracy, answers side by side (evaluation/policy_rewards.py). Under a time cap (`allowance`
    seconds) the prompts are cut to what a timed sampling batch says the comparison affords (`cap` in the result)."""
    ec = cfg.eval_report
    if "sft" not in loaded:
        return {"why": "the SFT model did not load", "not_run": not_run}
    from llm_pipeline.training import rl_prompts

    source, pairs = f"{Path(inputs['dpo_model']).name}/pairs_eval.jsonl", pairs_eval
    if not pairs and inputs.get("reward_model"):
        source = f"{Path(inputs['reward_model']).name}/pairs_eval.jsonl"
        pairs = data.preference_pairs(Path(inputs["reward_model"]) / "pairs_eval.jsonl", notes)
    if not pairs:
        return {"why": "no held-out preference pairs to take prompts from", "not_run": not_run}
    tokenizer = loaded["sft"].tokenizer
    max_new = ec.reward_max_new_tokens or cfg.rl_model.max_new_tokens
    max_length = cfg.rl_model.max_length or cfg.dpo_model.max_length
    if max_new >= max_length:
        return {"why": f"{max_new} new tokens leave no room for a prompt in max_length {max_length}", "not_run": not_run}
    dropped: Counter = Counter()
    prompts = policy_rewards.fit(tokenizer, rl_prompts.unique([p["prompt"] for p in pairs]), max_length - max_new, dropped)[: ec.reward_prompts]
    if not prompts:
        return {"why": f"no held-out prompt fits max_length {max_length} with {max_new} new tokens", "not_run": not_run}
    scorers, scorer_info = _scorers(cfg, inputs, tokenizer, notes)
    policies = {}
    for m in ("base", "sft", "dpo", "rl"):
        if m not in loaded:
            continue
        gap = policy_rewards.vocabulary_gap(loaded[m], tokenizer)
        if gap:
            not_run[m] = f"cannot read the SFT prompts: {gap}"
            continue
        policies[m] = loaded[m]
    settings = policy_rewards.Settings(samples=ec.reward_samples, max_new_tokens=max_new, max_length=max_length, seed=cfg.seed)
    cap = None
    if allowance is not None and allowance <= 0:
        # Loading and the earlier sections spent the cap: not even the one timed sampling batch runs.
        cap = {"allowance_seconds": round(allowance, 3), "probe_seconds": 0.0, "probe_prompts": 0, "prompt_seconds": None,
               "prompts_available": len(prompts), "prompts": 0, "prompts_cut": len(prompts)}
        return {"why": "the time cap leaves no time for policy rewards (loading the models and the earlier sections spent it)",
                "not_run": not_run, "cap": cap}
    if allowance is not None and "sft" in policies:
        n, cap = policy_rewards.affordable_prompts(policies["sft"], tokenizer, prompts, settings, len(policies), allowance)
        if not n:
            return {"why": f"the time cap leaves {max(0.0, allowance):.1f} s for policy rewards; one prompt costs ~{cap['prompt_seconds']:.1f} s",
                    "not_run": not_run, "cap": cap}
        prompts = prompts[:n]
    result = policy_rewards.compare(policies, scorers, tokenizer, prompts, pairs[: ec.max_eval_pairs], settings, ec.batch_size)
    del scorers
    result.update(prompts=len(prompts), samples=ec.reward_samples, max_new_tokens=max_new, prompt_source=source,
                  kl=policy_rewards.KL_NOTE, scorers=scorer_info, not_run=not_run, dropped_prompts=dict(dropped),
                  gains=policy_rewards.gains_over_sft(result), cap=cap)
    return result


def _measured_tokens_per_second(inputs: dict[str, Path]) -> tuple[float | None, str | None]:
    """The training throughput an upstream stage measured (base_checkpoint's, else lora_adapter's), and whose."""
    from llm_pipeline.io import read_timed

    for name in ("base_checkpoint", "lora_adapter"):
        folder = inputs.get(name)
        try:
            value = read_timed(Path(folder)).get("tokens_per_second") if folder else None
        except (OSError, ValueError, AttributeError):
            value = None
        if isinstance(value, (int, float)) and value > 0:
            return float(value), name
    return None, None


def time_cap(cfg: PipelineConfig) -> float | None:
    """The stage's time cap in seconds, loading included: eval_report.max_seconds, else EVAL_REPORT_SHARE of
    training.max_train_seconds, else None."""
    budget_s = cfg.training.max_train_seconds
    return cfg.eval_report.max_seconds if cfg.eval_report.max_seconds is not None else (EVAL_REPORT_SHARE * budget_s if budget_s else None)


def budget_caps(cfg: PipelineConfig, inputs: dict[str, Path], models_scored: int, loading: dict | None = None):
    """(the eval_report settings with row caps lowered to what the time cap affords, a record of why). The cap
    (`time_cap`) covers the whole stage: `loading` (what loading the models took, and what the loads still to come
    are expected to take) is taken off it first, and the rows are sized from what is left. Without a cap the
    configured caps hold."""
    ec = cfg.eval_report
    cap = seconds = time_cap(cfg)
    if seconds is None:
        return ec, {"capped": False, "why": "neither eval_report.max_seconds nor training.max_train_seconds is set: the configured row caps hold"}
    if loading:
        seconds = max(0.0, cap - loading.get("load_seconds", 0.0) - loading.get("pending_load_seconds", 0.0))
    tps, measured_by = _measured_tokens_per_second(inputs)
    if tps is None:
        return ec, {"capped": False, "seconds": seconds, "cap_seconds": cap, **(loading or {}),
                    "why": "no upstream stage recorded its training tokens per second: the configured row caps hold"}
    tokens = seconds * tps * FORWARD_SPEEDUP / max(1, models_scored)  # forward tokens each model may score
    domains = max(1, len(cfg.domain_names))
    ppl_tokens = tokens * SECTION_SHARES["perplexity"] / domains
    doc_tokens = ec.max_document_chars / CHARS_PER_TOKEN
    docs = max(1, int(ppl_tokens // doc_tokens))
    chars = ec.max_document_chars if docs > 1 else max(256, min(ec.max_document_chars, int(ppl_tokens * CHARS_PER_TOKEN)))
    pair_tokens = 2 * (cfg.rl_model.max_length or cfg.dpo_model.max_length)
    pairs = max(2, int(tokens * SECTION_SHARES["pairs"] // pair_tokens))
    fixed = len(ec.probes) + len(ec.adversarial_prompts) + len(ec.prompts)  # asked of every model whatever the cap
    prompt_tokens = cfg.lora_adapter.max_length // 2 + ec.sample_max_new_tokens
    task = max(1, int(tokens * SECTION_SHARES["generation"] // prompt_tokens) - fixed)
    caps = {"max_eval_documents": docs, "max_document_chars": chars, "max_eval_pairs": pairs, "max_task_examples": task,
            "reward_prompts": max(2, pairs // (2 * ec.reward_samples))}
    lowered = {k: min(getattr(ec, k), v) for k, v in caps.items()}
    source = 'eval_report.max_seconds' if ec.max_seconds is not None else f'{EVAL_REPORT_SHARE:.0%} of training.max_train_seconds'
    left = (f"{seconds:,.0f} s left of the {cap:,.0f} s cap ({source}) after loading the models "
            f"({loading.get('load_seconds', 0.0):,.0f} s, {loading.get('pending_load_seconds', 0.0):,.0f} s more expected)"
            if loading else f"{seconds:,.0f} s ({source})")
    record = {"capped": any(lowered[k] < getattr(ec, k) for k in lowered), "seconds": round(seconds, 1), "cap_seconds": round(cap, 1),
              "tokens_per_second": tps, "measured_by": measured_by, "models": models_scored, **lowered, **(loading or {}),
              "why": f"{left} at {tps:,.0f} training tokens/s ({measured_by}) x {FORWARD_SPEEDUP:g} for a forward pass, over {models_scored} models"}
    return ec.model_copy(update=lowered), record


def size_generation(lm: models.LoadedModel, first: list, counts: dict[str, int], seconds: float, max_new_tokens: int,
                    batch_size: int, models_n: int, workers: int) -> tuple[dict[str, int], dict]:
    """How many prompts of each kind (`counts`: task, extra, probes, adversarial) the generation section can afford
    within its share of `seconds`, from a measured batch: `first` (up to a batch of the prompts) is generated by
    `lm` and timed. The estimate from training throughput let a 36 s cap's generation take 132 s on SmolLM2: greedy
    decoding is one token per forward, which training throughput does not tell.

    The task examples are cut first, then the probe and adversarial lists alike (the extra samples, a few prompts
    the report shows side by side, are kept); the record says what was cut."""
    from llm_pipeline.training import budget

    allowance = seconds * SECTION_SHARES["generation"]
    took = per_prompt = 0.0
    if allowance > 0:
        t = budget.now()
        generation.greedy(lm, first, max_new_tokens, batch_size)
        took = budget.now() - t
        per_prompt = took / max(1, len(first)) * -(-models_n // max(1, workers))  # models run `workers` at a time
        fit = int(max(0.0, allowance - took) // per_prompt) if per_prompt > 0 else sum(counts.values())
    else:  # loading spent the cap: no timed batch; only the few extra samples the report shows side by side stay
        fit = 0
    keep = dict(counts)
    over = sum(counts.values()) - fit
    cut = min(keep["task"], max(0, over))  # the task examples first
    keep["task"] -= cut
    over -= cut
    both = counts["probes"] + counts["adversarial"]
    if over > 0 and both:  # then the two fixed lists alike
        cut_p = min(counts["probes"], -(-over * counts["probes"] // both))
        cut_a = min(counts["adversarial"], over - cut_p)
        keep["probes"] -= cut_p
        keep["adversarial"] -= cut_a
    record = {"allowance_seconds": round(allowance, 3), "probe_seconds": round(took, 3), "probe_prompts": len(first) if allowance > 0 else 0,
              "prompt_seconds": round(per_prompt, 4), "prompts_affordable": fit, "kept": keep,
              "cut": {k: counts[k] - keep[k] for k in counts if counts[k] != keep[k]}}
    return keep, record


# Under a time cap, the original model (loaded after the trained ones) is left out when loading the trained ones
# already took this share of the cap: what is left must still score the models that can ship.
ORIGINAL_LOAD_SHARE = 0.5


def _reward_loads(inputs: dict[str, Path]) -> int:
    """Reward models the policy-rewards section will load (the reward model and its judge), 0 when they skipped."""
    rm_dir = Path(inputs["reward_model"]) if inputs.get("reward_model") else None
    if rm_dir is None:
        return 0
    return sum((folder / "adapter_config.json").is_file() for folder in (rm_dir, rm_dir / "judge"))


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    from llm_pipeline.training import budget

    # The time cap covers the whole stage: the models load first, on the budget's clock, and the rows each section
    # scores are sized from what is left (a real run's report took 282 s and 407 s against a 180 s cap that left
    # loading out).
    started = budget.now()
    notes = data.Notes()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    lora_dir, dpo_dir, base_dir = Path(inputs["lora_adapter"]), Path(inputs["dpo_model"]), Path(inputs["base_checkpoint"])
    rl_dir, rl_why = _rl_input(inputs)
    not_run: dict[str, str] = {"rl": rl_why} if rl_why else {}
    tuned = {"sft": lora_dir, "dpo": dpo_dir, **({"rl": rl_dir} if rl_dir else {})}
    loaded = models.load_models(base_dir, tuned, notes, tokenizer_dir=inputs.get("tokenizer"))
    trained_load = budget.now() - started
    cap = time_cap(cfg)
    if cap is not None and trained_load >= ORIGINAL_LOAD_SHARE * cap and cfg.base_checkpoint.source != "scratch":
        why = (f"not loaded: the time cap ({cap:,.0f} s) was {trained_load / cap:.0%} spent loading the trained models "
               f"({trained_load:,.1f} s)")
        notes.add(f"the original pretrained model is {why}; models are compared with base_checkpoint only.")
        original, original_info, original_folders, original_name = None, {"why": f"the original pretrained model was {why}"}, [], None
    else:
        original, original_info, original_folders, original_name = _original_model(cfg, notes)
    load_seconds = budget.now() - started
    per_model = load_seconds / max(1, len(loaded) + (original is not None))
    loading = {"load_seconds": round(load_seconds, 3), "models_loaded": len(loaded) + (original is not None),
               "pending_loads": _reward_loads(inputs), "pending_load_seconds": round(per_model * _reward_loads(inputs), 3)}
    # Original (unless trained from scratch or left out), base, SFT, DPO and RL when there is one: what every section scores.
    models_scored = len(loaded) + (original is not None)
    capped, caps = budget_caps(cfg, inputs, models_scored, loading if cap is not None else None)
    cfg = cfg.model_copy(update={"eval_report": capped})
    ec = cfg.eval_report

    # -- held-out data
    domains = data.domain_folders(inputs["deduped_shards"], cfg.domain_names, notes)
    docs = {d: data.eval_documents(p, d, cfg.eval_fraction, ec.max_eval_documents, ec.max_document_chars) for d, p in domains.items()}
    for d, ds in docs.items():
        if not ds:
            notes.add(f"domain `{d}` has no held-out (split = eval) documents; its perplexity is not measured.")
    sft_eval = data.sft_examples(lora_dir / "sft_eval.jsonl", notes)
    pairs_eval = data.preference_pairs(dpo_dir / "pairs_eval.jsonl", notes)

    # -- training logs and what each model's training cost (read now: the plots of them draw while models run)
    logs = {
        "base": data.read_training_log(base_dir / "training_log.json", notes),
        "sft": data.read_training_log(lora_dir / "training_log.json", notes),
        "dpo": data.read_training_log(dpo_dir / "training_log.json", notes),
        **({"rl": data.read_training_log(rl_dir / "training_log.json", notes)} if rl_dir else {}),
    }
    spent = compute.collect(cfg, base_dir, lora_dir, dpo_dir, notes)
    # Matplotlib draws on one background thread; the models' forward passes release the GIL and, for the small
    # models run on one intra-op thread, leave the other cores to it.
    drawing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-plots")
    plot_jobs = {"training_loss.png": drawing.submit(plots.loss_curves, logs, output_dir / "training_loss.png"),
                 "dpo_rewards.png": drawing.submit(plots.dpo_rewards, logs["dpo"], output_dir / "dpo_rewards.png")}

    # -- models (loaded above)
    for m, folder in tuned.items():
        if m not in loaded:
            not_run[m] = _skip_reason(folder) or f"{folder.name} did not load (see notes)"
    review_model = next(m for m in ("dpo", "sft", "base") if m in loaded)
    timings["load"] = time.perf_counter() - t0

    with models.cpu_threads_for(loaded) as threads:
        # -- 1. perplexity and bits per byte (per-document scores of the review model kept for the error analysis)
        t = time.perf_counter()
        tok_dir = [Path(inputs["tokenizer"])] if inputs.get("tokenizer") and Path(inputs["tokenizer"]).is_dir() else []
        folders = {"base": [base_dir, *tok_dir], **{m: [base_dir, *tok_dir, f] for m, f in tuned.items()}}
        folders["original"] = original_folders
        scored = {**loaded, **({"original": original} if original is not None else {})}
        view = heldout.HeldOut.for_config(cfg)
        ppl, doc_scores, ppl_cache = _perplexities(cfg, scored, docs, domains, folders, models.parallel_workers(scored, threads),
                                                   identities={"original": original_name} if original_name else None, view=view)
        del original, scored  # scored on held-out text only: the gates need its bits per byte, not its generations
        review_scores = doc_scores.get(review_model, {})
        timings["perplexity"] = time.perf_counter() - t
        # The plots show the models this pipeline trained; the original model is in the tables (bits per byte).
        trained_ppl = {m: r for m, r in ppl.items() if m in loaded}
        plot_jobs["perplexity_by_domain.png"] = drawing.submit(
            plots.perplexity_bars, {m: {d: v["perplexity"] for d, v in r["by_domain"].items()} for m, r in trained_ppl.items()}, output_dir / "perplexity_by_domain.png")
        plot_jobs["training_compute.png"] = drawing.submit(
            plots.training_compute, spent, {m: r["overall"]["perplexity"] for m, r in trained_ppl.items()}, output_dir / "training_compute.png")

        # -- 2. preference accuracy
        t = time.perf_counter()
        pref = None
        if "dpo" in loaded and pairs_eval:
            pref = preference.preference_accuracy(loaded["dpo"], loaded["base"], pairs_eval[: ec.max_eval_pairs], cfg.dpo_model.beta, ec.batch_size)
        elif "dpo" in loaded:
            notes.add("no held-out preference pairs: preference accuracy is not measured.")
        timings["preference"] = time.perf_counter() - t

        # -- 2b. SFT vs DPO vs RL on the same held-out prompts: rewards under the reward model and its judge, KL to SFT
        t = time.perf_counter()
        # Under a time cap the policy rewards get the pairs' share less what preference accuracy took.
        allowance = caps["seconds"] * SECTION_SHARES["pairs"] - timings["preference"] if caps.get("seconds") is not None and caps.get("tokens_per_second") else None
        policies = _policies(cfg, inputs, loaded, pairs_eval, not_run, notes, allowance)
        plot_jobs["policy_rewards.png"] = drawing.submit(plots.policy_rewards, policies, output_dir / "policy_rewards.png")
        timings["policies"] = time.perf_counter() - t

        # -- 3. task metrics, samples, probes and adversarial prompts: one batched greedy pass per model
        t = time.perf_counter()
        task_rows = sft_eval[: ec.max_task_examples]
        probe_list, adversarial_list = list(ec.probes), list(ec.adversarial_prompts)
        generation_cap = None
        if caps.get("seconds") is not None and caps.get("tokens_per_second"):
            # Under a time cap the prompts each model answers are sized from a timed batch (size_generation).
            counts = {"task": len(task_rows), "extra": len(ec.prompts) + (0 if task_rows else ec.samples),
                      "probes": len(probe_list), "adversarial": len(adversarial_list)}
            first = ([r["prompt"] for r in task_rows] + list(ec.adversarial_prompts))[: ec.batch_size]
            if first:
                keep, generation_cap = size_generation(loaded[review_model], first, counts, caps["seconds"], ec.sample_max_new_tokens,
                                                       ec.batch_size, len(loaded), models.parallel_workers(loaded, threads))
                task_rows, probe_list = task_rows[: keep["task"]], probe_list[: keep["probes"]]
                adversarial_list = adversarial_list[: keep["adversarial"]]
        picked = _round_robin(task_rows, ec.samples)
        sample_rows = [{"prompt": models.prompt_text(task_rows[i]["prompt"]), "reference": task_rows[i]["completion"], "domain": task_rows[i].get("domain"), "source": "sft_eval", "index": i} for i in picked]
        if not sample_rows and ec.samples:
            # Without SFT eval data, the opening words of held-out documents still show how each model continues text.
            for ds in docs.values():
                for x in ds[: max(1, ec.samples // max(1, len(docs)))]:
                    sample_rows.append({"prompt": " ".join(x.text.split()[:16]), "reference": None, "domain": x.domain, "source": "eval document"})
        sample_rows += [{"prompt": p, "reference": None, "domain": None, "source": "config"} for p in ec.prompts]
        extra = [r["prompt"] for r in sample_rows if r["source"] != "sft_eval"]
        probe_prompts = [probes.probe_messages(p, ec.probe_shots) for p in probe_list]
        batches = {"task": [r["prompt"] for r in task_rows], "extra": extra, "probes": probe_prompts, "adversarial": adversarial_list}
        tasks: dict[str, dict] = {}
        answers: dict[str, dict[str, list[str]]] = {k: {} for k in batches}
        generated: dict[str, list[str]] = {}
        every_prompt = [p for b in batches.values() for p in b]
        workers = models.parallel_workers(loaded, threads)

        def complete(lm: models.LoadedModel) -> list[str]:
            return generation.greedy(lm, every_prompt, ec.sample_max_new_tokens, ec.batch_size)

        all_completions = dict(zip(loaded, models.parallel_map(complete, list(loaded.values()), workers, "eval-gen")))
        for s in policies.get("side_by_side", []):  # the sampled answers are generations too: the canary scan reads them
            for m, text in s["answers"].items():
                generated.setdefault(f"{m} (sampled)", []).append(text)
        for name, lm in loaded.items():
            completions = all_completions[name]
            generated[name] = completions
            pos = 0
            for key, prompts in batches.items():
                answers[key][name], pos = completions[pos : pos + len(prompts)], pos + len(prompts)
            if task_rows:
                tasks[name] = generation.task_metrics(answers["task"][name], task_rows)
            extra_out = iter(answers["extra"][name])
            for r in sample_rows:
                r.setdefault("outputs", {})[name] = answers["task"][name][r["index"]] if r["source"] == "sft_eval" else next(extra_out)
        for r in sample_rows:
            r.pop("index", None)
        probe_report = {**probes.probe_results(probe_list, answers["probes"]), "shots": len(ec.probe_shots)}
        adversarial = probes.adversarial_results(adversarial_list, answers["adversarial"])
        timings["generation"] = time.perf_counter() - t

        # -- 4. error analysis: the hardest held-out documents, exported for review
        t = time.perf_counter()
        worst = _worst_documents(docs, review_scores, ec.review_per_domain)
        review_summary: dict[str, Any] = {"model": review_model, "per_domain": ec.review_per_domain, "records": 0}
        if worst and cap is not None and budget.now() - started >= cap:
            # Generating review suggestions is not sized by any cap: once the cap is spent, the export waits for a run
            # with more time.
            review_summary["why"] = f"not run: the time cap ({cap:,.0f} s) was spent before the error analysis"
            notes.add(f"the error analysis was {review_summary['why'].removeprefix('not run: ')}; no review items were exported.")
            worst = []
        items = _review_items(cfg, loaded[review_model], loaded["base"], worst, notes) if worst else []
        if items:
            review_summary.update(review.export_review(output_dir / "review", items, list(docs)))
            generated[f"{review_model} (review)"] = [x["response_b"] for x in items]
        review_summary["items"] = [{k: x[k] for k in ("domain", "doc_id", "nll", "prompt", "response_b", "suggestion")} for x in items]
        timings["review"] = time.perf_counter() - t

    # -- 5. contamination
    t = time.perf_counter()
    train = contamination.TrainingNgrams(ec.contamination_ngram, ec.contamination_max_item_share)
    for d, p in domains.items():
        train.add_source(f"documents/{d}", (r["text"] for r in data.iter_documents(p, "train", cfg.eval_fraction)))
    sft_train = data.sft_examples(lora_dir / "sft_train.jsonl", notes)
    pairs_train = data.preference_pairs(dpo_dir / "pairs_train.jsonl", notes)
    train.add_source("sft_train", (_sft_text(r) for r in sft_train))
    train.add_source("pairs_train", (_pair_text(r) for r in pairs_train))
    eval_sets = {"eval documents": [(x.id, x.text) for ds in docs.values() for x in ds]}
    if sft_eval:
        eval_sets["sft_eval"] = [(f"sft_eval:{i}", _sft_text(r)) for i, r in enumerate(sft_eval)]
    if pairs_eval:
        eval_sets["pairs_eval"] = [(f"pairs_eval:{i}", _pair_text(r)) for i, r in enumerate(pairs_eval)]
    contam = contamination.contamination_report(train, eval_sets, ec.contamination_threshold)
    timings["contamination"] = time.perf_counter() - t

    # -- 6. PII canaries
    t = time.perf_counter()
    canary_report = _canary_check(cfg, inputs, domains, generated, notes)
    timings["canaries"] = time.perf_counter() - t

    # -- plots: whatever the background thread has not finished yet
    t = time.perf_counter()
    drawing.shutdown(wait=True)
    plot_paths = [plot_jobs[name].result() for name in PLOTS]
    timings["plots_wait"] = time.perf_counter() - t

    metrics = {
        "pipeline": cfg.name,
        "models": list(loaded),
        "original": original_info,
        "eval_documents": {d: len(ds) for d, ds in docs.items()},
        "perplexity": ppl,
        # What the held-out scores left out, and why (the same text and spans for every model).
        "perplexity_scoring": {**view.summary(), "line": view.line()},
        "preference": pref,
        "policies": policies,
        "tasks": tasks,
        "probes": probe_report,
        "samples": sample_rows,
        "adversarial": adversarial,
        "contamination": contam,
        "canaries": canary_report,
        "review": review_summary,
        "training": _training_summary(logs),
        "compute": spent,
        "lineage": _lineage(cfg, inputs, domains),
        "evaluation_caps": caps,
        # Under a time cap: the generation section sized from a timed batch, and what it cut (size_generation).
        "generation_cap": generation_cap,
        "notes": notes.items,
    }
    metrics = _clean(metrics)
    # -- 7. promotion: every candidate through its gates, the first that passes ships; the verdict goes into
    # metrics.json, the report, the stage's stats (the CLI's summary line) and the serving manifest
    verdict = _clean(gates.choose(cfg, metrics))
    metrics.update(gates=verdict["gates"], promoted=verdict["promoted"], promoted_model=verdict["model"],
                   promotion_summary=verdict["summary"], candidates=verdict["candidates"])
    metrics["serving_manifest"] = _clean(_serving_manifest(verdict, tuned, notes))
    metrics["notes"] = notes.items
    write_json(output_dir / "serving_manifest.json", metrics["serving_manifest"])

    # What this run measured or found on this machine (not results) goes with the stats: the runner keeps them out
    # of the hashed output (io.TIMINGS), so a re-run on the same inputs writes the same report.
    stats = _clean({**report.headline(metrics), "timings_s": {k: round(v, 3) for k, v in timings.items()},
                    "perplexity_cache": ppl_cache, "cpu_threads": threads})
    write_json(output_dir / "metrics.json", metrics)
    md = report.render_markdown(metrics, [p.name for p in plot_paths])
    (output_dir / "report.md").write_text(md, encoding="utf-8")
    (output_dir / "report.html").write_text(report.render_html(metrics, plot_paths), encoding="utf-8")
    gate_md = report.md_table(report_checks.gates_table(metrics)) if metrics["gates"] else "No promotion gate is configured."
    # Plot paths are relative to the output folder: the runner renames this temp folder into place after we return.
    return StageOutput(stats=stats, preview=md, metadata={
        "plots": [p.name for p in plot_paths],
        "plots_md": report.plots_markdown(plot_paths),
        "gates_md": f"{report_checks.gates_intro(metrics)}\n\n{gate_md}",
        "compute_md": report.compute_markdown(metrics),
        "policies_md": policy_tables.policy_markdown(metrics, report.md_table),
        "training_seconds": metrics["compute"]["total_seconds"],
        "evaluation_caps": caps,
        "perplexity_scoring": metrics["perplexity_scoring"]["line"],
    })
