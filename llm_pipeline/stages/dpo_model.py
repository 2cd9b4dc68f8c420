"""Stage `dpo_model`: align the SFT model with DPO, training the SFT adapter further.

    llm-pipeline stage dpo_model

The policy is the base checkpoint with the lora_adapter loaded trainable (or the fully fine-tuned SFT model). The
reference is that same model, never a second copy: by default the SFT model as it is before the first update
(`reference: sft`), or with its adapter disabled (`reference: base`); its log-probs are computed once per pair and
cached with the dataset version (`training/ref_cache.py`). Each pair is one shared-prompt row (`dpo_pairs.py`) and
batches are grouped by length. One process trains with our loop (`training/dpo_loop.py`); a multi-process or
DeepSpeed launch with TRL's DPOTrainer carrying the same rows and loss (`training/dpo_train.py`). Pairs are the
user's files (prompt/chosen/rejected, HH-RLHF transcripts or ShareGPT conversations) or synthetic pairs from the
corpus. The output adapter holds SFT+DPO and loads with
`PeftModel.from_pretrained(base, <this folder>)`; `serving_manifest.json` names everything needed to serve it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import MANIFEST, dvc_hash, file_md5, write_json
from llm_pipeline.security import confine, load_adapter, load_pretrained
from llm_pipeline.stages import StageOutput
from llm_pipeline.training import budget, defaults, dpo_pairs, dpo_train, finetune, preference_data, ref_cache, step_floor, tag_fill
from llm_pipeline.training.device import peak_rss_mb, plan_device, seed_everything, torch_threads
from llm_pipeline.training.sft_data import fit_all, write_jsonl
from llm_pipeline.training.tracking import report_to, tracked_run

ASSET = "dpo_model"


def sample_cache(cfg: PipelineConfig, base_dir: Path, lora_dir: Path) -> Path:
    """The folder of the SFT model's sampled rejections, shared by dpo_model and reward_model (which sample the same
    prompts from the same model): keyed by the base checkpoint's and the SFT adapter's hashes."""
    base = file_md5(base_dir / MANIFEST) if (base_dir / MANIFEST).exists() else dvc_hash(base_dir)
    sft = file_md5(lora_dir / "adapter_model.safetensors") if (lora_dir / "adapter_model.safetensors").exists() else dvc_hash(lora_dir)
    return cfg.data_path / ".checkpoints" / "rejection_samples" / f"{base[:12]}-{sft[:12]}"


def build_pairs(cfg: PipelineConfig, shards: Path, model, tokenizer, should_stop=None, allowance=None,
                cache_dir: Path | None = None) -> tuple[list[dict], list[dict], dict]:
    """Training and held-out pairs, and how they were made. With `rejected: model_sample`, `allowance` (a
    `budget.Allowance`: the sampling's part of a budget) or `should_stop()` ends the sampling early: the pairs not
    sampled by then are dropped (counted in `skipped`); `cache_dir` (`sample_cache`) keeps the samples for the next
    stage that needs them."""
    dc = cfg.dpo_model
    skipped: Counter = Counter()
    if dc.data:
        paths = [confine(cfg, p, "dpo_model.data") for p in dc.data]
        train, held = preference_data.read_user_pairs(paths, dc.data_format, skipped)
        return train, held, {"derivation": "files", "files": list(dc.data), "format": dc.data_format, "skipped": dict(skipped)}
    train, held = [], []
    held_per_domain = max(2, dc.pairs_per_domain // 5)
    filler = tag_fill.for_config(cfg)  # the shards' PII tags read as made-up values of their type
    for domain in cfg.domain_names:
        train += preference_data.synthetic_pairs(shards, domain, "train", dc.pairs_per_domain, cfg.seed, skipped, filler)
        held += preference_data.synthetic_pairs(shards, domain, "eval", held_per_domain, cfg.seed, skipped, filler)
    keys = {"answer_keys": ("chosen", "rejected")}
    train, held = fit_all(train, tokenizer, dc.max_length, skipped, **keys), fit_all(held, tokenizer, dc.max_length, skipped, **keys)
    if not train:
        raise preference_data.PreferenceDataError(f"no preference pairs could be built from the train split (skipped: {dict(skipped)})")
    candidates = len(train) + len(held)
    if dc.rejected == "model_sample":
        # Held-out pairs first: a budget that runs out mid-way still leaves pairs to measure on.
        new_tokens = dc.max_length // 3
        held = preference_data.model_rejections(held, model, tokenizer, new_tokens, cfg.seed, skipped, should_stop, allowance, cache_dir)
        train = preference_data.model_rejections(train, model, tokenizer, new_tokens, cfg.seed + 1, skipped, should_stop, allowance, cache_dir)
        train, held = fit_all(train, tokenizer, dc.max_length, skipped, **keys), fit_all(held, tokenizer, dc.max_length, skipped, **keys)
    sources = Counter(p["rejected_source"] for p in train + held)
    return train, held, {"derivation": "synthetic", "rejected": dc.rejected, "rejected_sources": dict(sources),
                         "candidate_pairs": candidates, "skipped": dict(skipped),
                         "redaction_tags_filled": filler.stats() if filler is not None else None}


def separability(pairs: list[dict]) -> dict:
    """How far the reference (the model before DPO) already tells chosen from rejected, from the reference log-probs
    of each pair: the share of pairs whose chosen answer it finds more likely per token, and the mean per-token
    margin. Pairs it already separates (share near 1, a large margin) teach DPO little. On the default run the SFT
    model's own samples scored 0.12 (margin -0.82 nats a token: it prefers what it says), another document's
    continuation 0.39 (-0.01)."""
    if not pairs:
        return {"pairs": 0}
    margins = [p["ref_chosen_logps"] / max(1, len(p["chosen_ids"])) - p["ref_rejected_logps"] / max(1, len(p["rejected_ids"])) for p in pairs]
    return {"pairs": len(pairs), "reference_prefers_chosen": round(sum(m > 0 for m in margins) / len(margins), 4),
            "mean_per_token_margin": round(sum(margins) / len(margins), 4)}


def serving_manifest(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, lora_dir: Path, method: str) -> dict:
    data = cfg.data_path
    rel = lambda p: str(Path(p).resolve().relative_to(data.resolve())) if Path(p).resolve().is_relative_to(data.resolve()) else str(p)  # noqa: E731
    files = {name: file_md5(folder / name) for folder, names in ((lora_dir, ("sft_train.jsonl", "sft_eval.jsonl")), (output_dir, ("pairs_train.jsonl", "pairs_eval.jsonl"))) for name in names if (folder / name).exists()}
    adapter = {"name": ASSET, "path": ASSET, "method": method, "derived_from": rel(lora_dir)}
    if (output_dir / "merged").exists():
        adapter["merged"] = f"{ASSET}/merged"
    return {
        "base_model": {"path": rel(inputs["base_checkpoint"]), "hash": dvc_hash(inputs["base_checkpoint"])},
        "tokenizer": {"path": rel(inputs["base_checkpoint"]), "note": "the tokenizer is saved beside the base model and beside each adapter"},
        # The DPO adapter continues the SFT adapter's weights: serving needs the base plus this one adapter.
        "adapters": [adapter],
        "sft_adapter": {"path": rel(lora_dir), "hash": dvc_hash(lora_dir)},
        "data_versions": {**files, "deduped_shards": dvc_hash(inputs["deduped_shards"])},
        "load": "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model.path), adapters[0].path)",
    }


def _sft_method(lora_dir: Path) -> str | None:
    """The method lora_adapter actually ran (its stats.json), e.g. 'qlora', or None when it is not recorded."""
    try:
        return json.loads((lora_dir / "stats.json").read_text()).get("method")
    except (OSError, ValueError, AttributeError):
        return None


def _can_quantize() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def load_policy(cfg: PipelineConfig, base_dir: Path, lora_dir: Path):
    """(model, method): the SFT adapter on the base (trainable), or the fully fine-tuned SFT model."""
    import torch
    from transformers import AutoModelForCausalLM

    if (lora_dir / "adapter_config.json").exists():
        kind = json.loads((lora_dir / "adapter_config.json").read_text()).get("peft_type", "LORA")
        if kind == "PREFIX_TUNING":
            raise finetune.FinetuneError("dpo_model cannot train a prefix-tuning adapter further: use lora_adapter.method lora, dora or ia3")
        # A QLoRA adapter trains on further over the same 4-bit base it was trained on, so DPO fits where SFT did.
        # Without CUDA or bitsandbytes here, the adapter goes on the full-precision base (as it is served).
        quant = finetune.quantization_config("qlora") if _sft_method(lora_dir) == "qlora" and _can_quantize() else None
        extra = {"quantization_config": quant} if quant is not None else {"dtype": torch.float32}
        base = load_pretrained(AutoModelForCausalLM, base_dir, trust_remote_code=cfg.base_checkpoint.trust_remote_code, **extra)
        base.config.use_cache = False
        if quant is not None:
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base)
        model = load_adapter(base, lora_dir, is_trainable=True)
        return model, "qlora" if quant is not None else {"LORA": "lora", "IA3": "ia3"}.get(kind, kind.lower())
    if (lora_dir / "config.json").exists():  # method=full: the SFT model is a whole model
        model = load_pretrained(AutoModelForCausalLM, lora_dir, dtype=torch.float32, trust_remote_code=cfg.base_checkpoint.trust_remote_code)
        model.config.use_cache = False
        return model, "full"
    raise finetune.FinetuneError(f"{lora_dir} holds neither a PEFT adapter nor a model; run lora_adapter first")


def choose_engine(engine: str) -> tuple[str, str]:
    """Which trainer runs the steps, and why: our loop in one process, TRL's DPOTrainer under a multi-process launch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    multi = world > 1 or deepspeed
    if engine == "loop" and multi:
        raise finetune.FinetuneError("dpo_model.engine 'loop' trains in one process; under a multi-process or DeepSpeed "
                                     "launch use engine 'auto' or 'trl'")
    if engine != "auto":
        return engine, "set in config"
    if multi:
        return "trl", f"{world} processes{' under DeepSpeed' if deepspeed else ''}: TRL's DPOTrainer (with our rows and loss) runs them"
    return "loop", "one process: a plain loop with the same rows, loss and schedule, without importing TRL or datasets"


@dataclass
class Trained:
    model: object
    log: list
    global_step: int
    start_step: int
    tokens: int
    eval_metrics: dict
    train_seconds: float
    step_durations: list
    resume_note: str = ""
    deepspeed: bool = False
    trainer: object = None
    guard_step: int | None = None  # the step whose weights the held-out guard kept (None: no guard ran)
    guard_stopped: bool = False
    guard_backtracks: int = 0


def guard_evaluations(max_steps: int) -> int:
    """Held-out evaluations of a guarded run (an evaluation every eighth of it, the last at the end): the guard can
    only keep weights it has seen evaluated, so it looks more often than the three of an unguarded run."""
    return min(max_steps, GUARD_EVALUATIONS)


def chosen_perplexity_ratio(metrics: dict, pairs: list[dict]) -> float | None:
    """Held-out perplexity of the chosen (true) continuations under the policy over the reference's, from an
    evaluation's mean chosen log-prob and the pairs' reference log-probs and lengths."""
    if "eval_logps/chosen" not in metrics or not pairs:
        return None
    ref = sum(p["ref_chosen_logps"] for p in pairs) / len(pairs)
    tokens = sum(len(p["chosen_ids"]) for p in pairs) / len(pairs)
    return math.exp((ref - metrics["eval_logps/chosen"]) / max(1.0, tokens))


def _train_loop(cfg, model, tokenizer, settings, plan, tok_train, tok_held, collator, work, fingerprint, tracker, clock=None, reserve=0.0,
                guard=None) -> Trained:
    from llm_pipeline.training import dpo_loop

    dc = cfg.dpo_model
    early = dc.early_stopping_patience is not None and bool(tok_held)
    # The schedule the Trainer would get (evaluations, checkpoints, logging, warmup), so both engines train alike.
    eval_every = max(1, -(-dc.max_steps // guard_evaluations(dc.max_steps))) if guard is not None else None
    args = finetune.trainer_args(settings, work / "loop", max_steps=dc.max_steps, batch_size=dc.batch_size, seed=cfg.seed, report_to="none",
                                 run_name=f"{cfg.name}-{ASSET}", eval_every=eval_every, checkpoint_every=None, early_stopping=early)
    loop = dpo_loop.LoopSettings(
        steps=args["max_steps"], batch_size=dc.batch_size, learning_rate=args["learning_rate"], warmup_steps=args["warmup_steps"],
        beta=dc.beta, loss_type=dc.loss_type, seed=cfg.seed, eval_every=args["eval_steps"], checkpoint_every=args["save_steps"],
        log_every=args["logging_steps"], early_stopping_patience=dc.early_stopping_patience if early else None,
        gradient_checkpointing=args["gradient_checkpointing"], sft_weight=dc.sft_weight,
    )
    t0 = time.perf_counter()
    on_step = None
    if clock is not None:  # the schedule stays over max_steps; the budget stops the loop before a step past it
        clock.begin_steps()

        def on_step(step: int) -> bool:
            clock.step_done(reserve)  # room for the final evaluation
            return clock.must_stop

    result = dpo_loop.train(model, tok_train, tok_held, collator, loop, plan, work / "loop",
                            json.dumps(fingerprint, sort_keys=True), tracker, on_step=on_step, guard=guard)
    for entry in result.log:  # beside each evaluation: how the held-out chosen continuations moved
        ratio = chosen_perplexity_ratio(entry, tok_held)
        if ratio is not None:
            entry["eval_chosen_perplexity_ratio"] = round(ratio, 5)
    return Trained(model=model, log=result.log, global_step=result.global_step, start_step=result.start_step,
                   tokens=result.tokens_trained, eval_metrics=result.eval_metrics, train_seconds=time.perf_counter() - t0,
                   step_durations=result.step_durations, resume_note=result.resume_note if result.start_step else "",
                   guard_step=result.guard_step if guard is not None else None, guard_stopped=result.guard_stopped,
                   guard_backtracks=result.guard_backtracks)


def _train_trl(cfg, model, tokenizer, settings, plan, tok_train, tok_held, collator, work, fingerprint, tracker, clock=None, reserve=0.0,
               guard=None) -> Trained:
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import DPOConfig

    dc = cfg.dpo_model
    resume = finetune.prepare_work_dir(work / "trainer", fingerprint)
    early = dc.early_stopping_patience is not None and bool(tok_held)
    args = DPOConfig(
        **finetune.trainer_args(settings, work / "trainer", max_steps=dc.max_steps, batch_size=dc.batch_size, seed=cfg.seed, report_to=report_to(cfg),
                                run_name=f"{cfg.name}-{ASSET}", eval_every=None, checkpoint_every=None, early_stopping=early),
        beta=dc.beta, loss_type=[dc.loss_type], max_length=None, precompute_ref_log_probs=False,
        train_sampling_strategy="group_by_length", length_column_name="length",  # rows of similar length: little padding
    )
    if not tok_held:
        args.eval_strategy = "no"
    timer = finetune.step_timer_callback()
    callbacks = [timer] + ([EarlyStoppingCallback(dc.early_stopping_patience)] if early else [])
    if clock is not None:  # stops before a step past the budget; the schedule stays over max_steps
        clock.begin_steps()
        callbacks.append(budget.budget_callback(clock, evaluate=False))
    trainer = dpo_train.make_trainer(model, tokenizer, args, tok_train, tok_held, collator, callbacks)
    trainer.sft_weight = dc.sft_weight  # the chosen answers' NLL term, as the loop adds it (DPOConfig has no field for it)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; the log is saved to a file instead
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - t0
    eval_metrics = finetune.final_eval(trainer) if tok_held else {}
    return Trained(model=trainer.model, log=trainer.state.log_history, global_step=trainer.state.global_step,
                   start_step=int(Path(resume).name.split("-")[1]) if resume else 0, tokens=trainer._total_train_tokens,
                   eval_metrics=eval_metrics, train_seconds=train_seconds, step_durations=timer.durations,
                   resume_note=f"resumed from {Path(resume).name}" if resume else "",
                   deepspeed=bool(getattr(trainer, "is_deepspeed_enabled", False)), trainer=trainer)


# Sampling the rejections may take at most this share of the stage's budget: the pairs not sampled by then are
# dropped, and the rest of the budget is left for the reference pass, the steps and the evaluations.
SAMPLING_SHARE = 0.5
GUARD_EVALUATIONS = 8
SEPARABILITY_NOTE = ("held-out pairs: the share whose chosen answer the reference (the model before DPO) finds more likely per "
                     "token, and the mean per-token log-prob margin; near 1 and large means the pairs are trivially separable")


def pair_origin(derivation: dict, dropped: Counter) -> dict:
    """Where the training and held-out pairs' rejected sides came from, and what was dropped on the way, by reason."""
    sources = derivation.get("rejected_sources") or {}
    return {"pairs_from_samples": sources.get("model_sample", 0),
            "pairs_from_fallback": sum(v for k, v in sources.items() if k != "model_sample" and not k.startswith("file:")),
            "pairs_dropped": {**(derivation.get("skipped") or {}), **{f"tokenize:{k}": v for k, v in dropped.items()}}}


def _skipped(cfg: PipelineConfig, output_dir: Path, why: str, tok_train: list[dict], tok_held: list[dict], derivation: dict,
             dropped: Counter, clock, budget_seconds, budget_why: str, started: float, separable: dict | None = None) -> StageOutput:
    """DPO not trained, and why: the output holds the pairs and the reason but no adapter, so the eval report leaves
    DPO out and promotion considers SFT (a result of the run, not a failure)."""
    if not (output_dir / "training_log.json").exists():
        write_json(output_dir / "training_log.json", [])
    stats = {
        "skipped": why, "trained": False, "pairs": len(tok_train), "eval_pairs": len(tok_held), "derivation": derivation["derivation"],
        "steps": 0, "rejected_sources": derivation.get("rejected_sources"), "seconds": round(time.perf_counter() - started, 3),
        "budget_seconds": budget_seconds, "budget_spent_seconds": round(clock.spent(), 3) if clock is not None else None,
        **pair_origin(derivation, dropped), "separability": separable,
    }
    write_json(output_dir / "training_summary.json", {"skipped": why, "pairs": len(tok_train), "steps": 0, "seconds": stats["seconds"],
                                                      "tokens_trained": 0, "dropped_pairs": stats["pairs_dropped"]})
    metadata = {"skipped": why, "data": derivation, "dropped_pairs": dict(dropped), "budget": budget_why}
    return StageOutput(stats=stats, preview=f"DPO skipped: {why}. The SFT adapter stands as the tuned model.", metadata=metadata)


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    import torch
    from transformers import AutoTokenizer

    dc = cfg.dpo_model
    lora_dir, base_dir = Path(inputs["lora_adapter"]), Path(inputs["base_checkpoint"])
    plan = plan_device(dc.precision, varying_shapes=True)
    seed_everything(cfg.seed)
    # The stage's share of the run's budget, decided before anything loads: a share that cannot buy
    # training.min_steps steps skips the stage (training/step_floor.py).
    budget_seconds, budget_why = budget.stage_budget(cfg, ASSET, {"base_checkpoint": base_dir, "lora_adapter": lora_dir})
    floor_why, floor = step_floor.check(cfg, ASSET, budget_seconds, budget_why, {"base_checkpoint": base_dir, "lora_adapter": lora_dir})
    if floor_why:
        return step_floor.skipped_output(output_dir, ASSET, floor_why, floor, budget_seconds, budget_why, 0.0)
    tokenizer = AutoTokenizer.from_pretrained(lora_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, method = load_policy(cfg, base_dir, lora_dir)
    if method == "full" and dc.reference == "base":
        raise finetune.FinetuneError("dpo_model.reference 'base' disables an adapter; the SFT model here is a full fine-tune (use reference: sft)")

    if plan.device == "cuda" and next(model.parameters()).device.type == "cpu" and os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true":
        # Sampling and the reference pass run before the Trainer places the model: on the GPU, not the CPU it was loaded on.
        # (Under DeepSpeed the engine places and partitions the model itself.)
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
    # One clock for the stage's share of the run's budget: sampling the rejections, the reference pass, training and
    # the held-out evaluations all count against it.
    clock = budget.Clock(budget_seconds) if budget_seconds is not None else None
    if clock is not None:
        clock.start()
    started = time.perf_counter()
    # Sampling the rejections within its share of the budget, timed per sample (budget.Allowance).
    sampling = budget.Allowance(SAMPLING_SHARE * clock.budget - clock.spent() if clock is not None else None)
    train, held, derivation = build_pairs(cfg, inputs["deduped_shards"], model, tokenizer, allowance=sampling,
                                          cache_dir=sample_cache(cfg, base_dir, lora_dir))
    if dc.rejected == "model_sample" and not dc.data:
        # In the metadata only: whether the samples were drawn or read back depends on which stage ran first, and the
        # output's bytes must not.
        derivation["sampling"] = sampling.summary()
    pairs_seconds = time.perf_counter() - started
    write_jsonl(output_dir / "pairs_train.jsonl", train)
    write_jsonl(output_dir / "pairs_eval.jsonl", held)
    dropped: Counter = Counter()
    tok_train = [t for t in (dpo_pairs.tokenize_pair(p, tokenizer, dc.max_length, dropped) for p in train) if t]
    tok_held = [t for t in (dpo_pairs.tokenize_pair(p, tokenizer, dc.max_length, dropped) for p in held) if t]
    if not tok_train and dc.data:
        raise preference_data.PreferenceDataError(f"no preference pair fits dpo_model.max_length {dc.max_length} (dropped: {dict(dropped)})")
    if len(tok_train) < dc.min_pairs:
        why = (f"{len(tok_train)} training pairs, fewer than dpo_model.min_pairs {dc.min_pairs} (dropped while building: "
               f"{derivation.get('skipped') or 'none'}; while tokenizing: {dict(dropped) or 'none'})")
        return _skipped(cfg, output_dir, why, tok_train, tok_held, derivation, dropped, clock, budget_seconds, budget_why, started)

    counts = finetune.parameter_counts(model)
    settings = defaults.choose(
        "dpo", method, plan, counts["total_params"],
        defaults.training_memory_bytes(model.config, counts["total_params"], counts["trainable_params"], dc.batch_size, 2 * dc.max_length, plan.precision),
        learning_rate=dc.learning_rate, warmup_ratio=dc.warmup_ratio, gradient_checkpointing=dc.gradient_checkpointing, cpu_threads=dc.cpu_threads,
        op_macs=defaults.projection_macs(model.config, dpo_train.pass_tokens(model.config, tok_train, dc.batch_size, plan.device)),
    )
    settings.set("reference", dc.reference, "the SFT model before the first update: DPO measures change from what SFT learned"
                 if dc.reference == "sft" else "set in config: the base model (adapter disabled)")
    collator = dpo_pairs.PairCollator(tokenizer.pad_token_id)
    work = cfg.data_path / ".checkpoints" / ASSET
    identity = {
        "base": file_md5(base_dir / MANIFEST) if (base_dir / MANIFEST).exists() else dvc_hash(base_dir),
        "sft": file_md5(lora_dir / "adapter_model.safetensors") if (lora_dir / "adapter_model.safetensors").exists() else dvc_hash(lora_dir),
        "reference": dc.reference, "max_length": dc.max_length, "precision": plan.precision,
    }
    ref_started = time.perf_counter()
    autocast = plan.dtype if plan.precision != "fp32" else None
    with torch_threads(settings.value("cpu_threads")):
        ref_c, ref_r, cached = ref_cache.load_or_compute(
            work / "ref_logps", tok_train + tok_held, identity,
            lambda pairs: dpo_train.reference_logps(model, pairs, collator, dpo_train.reference_batch_size(dc.batch_size, plan.device),
                                                  dc.reference, autocast))
    ref_seconds = time.perf_counter() - ref_started
    for t, c, r in zip(tok_train + tok_held, ref_c, ref_r):
        t["ref_chosen_logps"], t["ref_rejected_logps"] = c, r
    settings.set("reference_logps", "cached" if cached else "computed once", f"{len(ref_c)} pairs; no reference forward during training")

    fingerprint = {"config": cfg.fingerprint("dpo_model", "lora_adapter"), "seed": cfg.seed, "model": identity,
                   "data": ref_cache.dataset_version(tok_train + tok_held)}
    engine, why = choose_engine(dc.engine)
    settings.set("engine", engine, why)
    settings.set("budget", f"{budget_seconds:g} s" if budget_seconds is not None else "none", budget_why +
                 ("; sampling the rejections, the reference pass, training and evaluations count against it" if clock is not None else ""))
    separable = separability(tok_held or tok_train)
    if clock is not None and clock.left() <= 0:
        why = f"the budget of {budget_seconds:g} s was spent before the first step (pairs {pairs_seconds:.1f} s, reference pass {ref_seconds:.1f} s)"
        return _skipped(cfg, output_dir, why, tok_train, tok_held, derivation, dropped, clock, budget_seconds, budget_why, started, separable)
    # Held-out evaluations (three: at a third, two thirds and the end; eight under the guard, plus its scoring of the
    # SFT model) within their share of the budget, half for the pairs and half for the guard's documents: the pairs
    # an evaluation can afford at the reference pass's measured seconds per pair (an evaluation is the same forward),
    # the documents at its seconds per token.
    guarded = dc.max_heldout_perplexity_ratio is not None and engine == "loop"
    measured = bool(ref_c) and not cached
    eval_pairs, per_pair = tok_held, (ref_seconds / len(ref_c) if measured else 0.0)
    guard_tokens = None
    if clock is not None:
        allowance = budget.eval_allowance(clock.budget, guard_evaluations(dc.max_steps) + 1 if guarded else 3)
        if tok_held:
            keep = budget.affordable(len(tok_held), per_pair, allowance / (2 if guarded else 1))
            eval_pairs = [tok_held[i] for i in budget.spread(len(tok_held), keep)]
        if measured:
            per_token = ref_seconds / max(1, sum(t["length"] for t in tok_train + tok_held))
            guard_tokens = max(1, int(allowance / 2 / per_token))
    guard = None
    if guarded:  # scores the SFT model's held-out documents once
        from llm_pipeline.training.corpus import iter_general
        from llm_pipeline.evaluation.heldout import HeldOut
        from llm_pipeline.training.dpo_guard import HeldOutGuard

        with torch_threads(settings.value("cpu_threads")):
            general = iter_general(cfg, "eval") if cfg.base_checkpoint.general_data and cfg.base_checkpoint.domain_ratio < 1 else ()
            guard = HeldOutGuard.build(model, tokenizer, inputs["deduped_shards"], cfg.domain_names, dc.max_heldout_perplexity_ratio,
                                       max_tokens=guard_tokens, general=general, view=HeldOut.for_config(cfg))
    run_config = {**dc.model_dump(mode="json"), **settings.values()}
    with tracked_run(cfg, ASSET, run_config) as tracker, torch_threads(settings.value("cpu_threads")):
        train_fn = _train_loop if engine == "loop" else _train_trl
        reserve = per_pair * len(eval_pairs) + (guard.seconds * len(guard.keep) / len(guard.texts) if guard is not None else 0.0)
        trained = train_fn(cfg, model, tokenizer, settings, plan, tok_train, eval_pairs, collator, work, fingerprint, tracker, clock,
                           reserve, guard)
        budget_spent = round(clock.spent(), 3) if clock is not None else None
        pairs_seen = (trained.global_step - trained.start_step) * dc.batch_size
        summary = {"pairs_per_second": round(pairs_seen / trained.train_seconds, 2) if trained.train_seconds else None,
                   "peak_rss_mb": peak_rss_mb(), "trainable_share": counts["trainable_share"]}
        tracker.log(summary)
        tracker.summary(summary)
    if trained.guard_step == 0:
        why = (f"every held-out evaluation found DPO's perplexity on a domain's held-out documents above "
               f"dpo_model.max_heldout_perplexity_ratio {dc.max_heldout_perplexity_ratio} x the SFT model's ("
               + ", ".join(f"{f['worst_domain']} {f['ratio']}" for f in guard.figures) + ")")
        for folder in ("trainer", "loop"):
            shutil.rmtree(work / folder, ignore_errors=True)
        write_json(output_dir / "training_log.json", trained.log)  # the evaluations that said no
        return _skipped(cfg, output_dir, why, tok_train, tok_held, derivation, dropped, clock, budget_seconds, budget_why, started, separable)
    seconds = time.perf_counter() - started
    log, eval_metrics, train_seconds = trained.log, trained.eval_metrics, trained.train_seconds
    if trained.resume_note:
        settings.set("resumed", trained.resume_note, "checkpoints of this run (same config, data and model) are continued")

    if trained.deepspeed:
        trained.trainer.save_model(str(output_dir))  # gathers ZeRO-3 shards before writing
    else:
        trained.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_json(output_dir / "training_log.json", log)
    if dc.merge and method != "full":
        finetune.merge_export(trained.model, tokenizer, output_dir / "merged")
    for folder in ("trainer", "loop"):  # the reference cache stays: it is keyed by data and model
        shutil.rmtree(work / folder, ignore_errors=True)
    write_json(output_dir / "serving_manifest.json", serving_manifest(cfg, inputs, output_dir, lora_dir, method))

    ev = lambda k: round(eval_metrics[k], 5) if k in eval_metrics else None  # noqa: E731
    stats = {
        "pairs": len(tok_train), "eval_pairs": len(tok_held), "derivation": derivation["derivation"],
        "first_train_loss": finetune.first_logged(log, "loss"), "train_loss": finetune.last_logged(log, "loss"),
        "rewards_accuracies": finetune.last_logged(log, "rewards/accuracies"), "rewards_margins": finetune.last_logged(log, "rewards/margins"),
        "eval_loss": ev("eval_loss"), "eval_rewards_accuracies": ev("eval_rewards/accuracies"), "eval_rewards_margins": ev("eval_rewards/margins"),
        "steps": trained.global_step, "step_seconds": finetune.step_seconds(trained.step_durations)["step_seconds"], "learning_rate": settings.value("learning_rate"), "beta": dc.beta, "loss_type": dc.loss_type,
        "sft_weight": dc.sft_weight, "rejected_sources": derivation.get("rejected_sources"),
        "seconds": round(seconds, 3), "train_seconds": round(train_seconds, 3), "reference_seconds": round(ref_seconds, 3),
        "pairs_per_second": summary["pairs_per_second"],
        "tokens_per_second": round(trained.tokens / train_seconds, 1) if train_seconds else None,
        "peak_rss_mb": summary["peak_rss_mb"], "trainable_params": counts["trainable_params"], "trainable_share": counts["trainable_share"],
        "precision": settings.value("precision"), "engine": engine,
        "budget_seconds": budget_seconds, "budget_spent_seconds": budget_spent, "pairs_seconds": round(pairs_seconds, 3),
        "eval_pairs_scored": len(eval_pairs), **pair_origin(derivation, dropped), "separability": separable,
        "guard": ({"kept_step": trained.guard_step, "stopped_training": trained.guard_stopped, "backtracks": trained.guard_backtracks,
                   **guard.summary()} if guard is not None and trained.guard_step is not None else None),
    }
    # Whether this run read the reference log-probs from the cache is a fact of the run (shown in the Dagster
    # metadata), not of the model: the file, hashed with the output, says the same either way.
    on_disk = settings.as_metadata()
    if "reference_logps" in on_disk:
        on_disk["reference_logps"] = {**on_disk["reference_logps"], "value": "computed once (or read from the cache)"}
    write_json(output_dir / "training_summary.json", {  # for the eval report: settings, reasons and what was trained
        "settings": on_disk, "dropped_pairs": dict(dropped), "pairs": len(tok_train), "steps": stats["steps"],
        "seconds": stats["seconds"], "tokens_trained": trained.tokens,
    })
    sample = train[0]
    preview = (
        f"DPO ({dc.loss_type}, beta {dc.beta}, lr {stats['learning_rate']}) on {len(tok_train)} pairs ({derivation['derivation']}), "
        f"{stats['steps']} steps; loss {stats['first_train_loss']} → {stats['train_loss']}, reward accuracy {stats['rewards_accuracies']}, "
        f"margin {stats['rewards_margins']}; held-out accuracy {stats['eval_rewards_accuracies']}; {stats['pairs_per_second']} pairs/s\n\n"
        f"Pair ({sample['rejected_source']}):\n\n```\n{sample['prompt']}\n+ {sample['chosen']}\n- {sample['rejected']}\n```"
    )
    metadata = {
        **plan.as_metadata(), "settings": settings.as_metadata(), "data": derivation, "dropped_pairs": dict(dropped),
        "separability": {**separable, "what": SEPARABILITY_NOTE},
        "reference": ("the SFT model itself before the first update" if dc.reference == "sft" else "the same model with the SFT adapter disabled")
        + "; log-probs computed once per pair and cached (no second model in memory)",
        **tracker.metadata(),
    }
    return StageOutput(stats=stats, preview=preview, metadata=metadata)
