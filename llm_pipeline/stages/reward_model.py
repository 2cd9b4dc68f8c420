"""Stage `reward_model`: a sequence-scoring model trained on the preference pairs, for RL (`rl_model`) and evaluation.

    llm-pipeline stage reward_model

The model is the base checkpoint as a one-label sequence classifier with a LoRA adapter that starts as the SFT
adapter and a new scalar head (`training/reward_scoring.py`), trained with a Bradley-Terry loss by our loop
(`training/reward_loop.py`). The pairs are the ones dpo_model trains on, built by the same code from the same
settings (`dpo_model.build_pairs`: the user's files in any format it reads, a reviewed-records export written as
pairs, or synthetic pairs from the corpus), held out the same way. The metadata puts the held-out pairwise accuracy
beside two baselines: the longer answer wins, and the SFT model's own log-likelihood of each answer.

With `judge: true` (the default) a second reward model, the judge, is trained the same way on the other half of the
training pairs, split by prompt (`training/reward_split.py`): the reward model learns from one half, the judge from
the other, both are held out on the same pairs. rl_model optimises the reward model only; eval_report scores SFT,
DPO and RL with both, so a gain the judge confirms is not the policy gaming the model it trained against. The judge
is saved in `judge/` (its own pairs in `judge/pairs_train.jsonl`) and checkpoints on its own, so a killed run resumes
each model where it stopped.

The output loads with plain transformers and PEFT (`serving_manifest.json` says how):
`PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, pad_token_id=P), dir)`
(`dir/judge` for the judge).
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections import Counter
from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import MANIFEST, dvc_hash, file_md5, write_json
from llm_pipeline.stages import StageOutput
from llm_pipeline.stages.dpo_model import SAMPLING_SHARE, build_pairs, load_policy, sample_cache
from llm_pipeline.training import budget, defaults, dpo_pairs, finetune, preference_data, ref_cache, reward_baselines, reward_loop, reward_split, step_floor
from llm_pipeline.training.dpo_train import pass_tokens
from llm_pipeline.training.device import peak_rss_mb, plan_device, seed_everything, torch_threads
from llm_pipeline.training.reward_scoring import build_reward_model
from llm_pipeline.training.sft_data import write_jsonl
from llm_pipeline.training.tracking import tracked_run

ASSET = "reward_model"
JUDGE = "judge"  # the judge's folder inside the output, and its role
# The head starts random and the adapter at the SFT weights. On the sample (90 synthetic pairs, 40 steps) 1e-3 left the
# training loss at 0.693 (0.6943 -> 0.6927); 3e-3 moved it within 80-120 steps; 2e-2 made it worse (0.705 -> 0.710).
ADAPTER_RATE, FULL_RATE = 3e-3, 1e-5
ADAPTER_WARMUP = 0.05
EVALS_PER_MODEL = 3  # eval_every defaults to a third of the steps: two intermediate evaluations and the final one


def _rel(cfg: PipelineConfig, path: Path) -> str:
    data, p = cfg.data_path.resolve(), Path(path).resolve()
    return str(p.relative_to(data)) if p.is_relative_to(data) else str(p)


def serving_manifest(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, scoring_base: Path, pad_id: int) -> dict:
    names = ("pairs_train.jsonl", "pairs_eval.jsonl", f"{JUDGE}/pairs_train.jsonl")
    files = {name: file_md5(output_dir / name) for name in names if (output_dir / name).exists()}
    judge = (output_dir / JUDGE / "adapter_config.json").exists()
    return {
        "base_model": {"path": _rel(cfg, scoring_base), "hash": dvc_hash(scoring_base)},
        "tokenizer": {"path": ASSET, "note": "score prompt + answer framed by this tokenizer's chat template"},
        "adapters": [{"name": ASSET, "path": ASSET, "method": "lora", "task": "sequence_score", "head": "score (1 label)"}]
        + ([{"name": JUDGE, "path": f"{ASSET}/{JUDGE}", "method": "lora", "task": "sequence_score", "head": "score (1 label)",
             "note": "trained on the other half of the training pairs (split by prompt), for evaluation; rl_model does not use it"}]
           if judge else []),
        "sft_adapter": {"path": _rel(cfg, inputs["lora_adapter"]), "hash": dvc_hash(inputs["lora_adapter"])},
        "data_versions": {**files, "deduped_shards": dvc_hash(inputs["deduped_shards"])},
        "pad_token_id": pad_id,
        "load": "PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base_model.path, num_labels=1, "
                "pad_token_id=pad_token_id), adapters[0].path); the reward is .logits[:, 0] at the last token",
    }


def _settings(cfg: PipelineConfig, model, method: str, plan, tok_train: list[dict]):
    rc = cfg.reward_model
    counts = finetune.parameter_counts(model)
    settings = defaults.choose(
        "dpo", method, plan, counts["total_params"],
        defaults.training_memory_bytes(model.config, counts["total_params"], counts["trainable_params"], rc.batch_size,
                                       2 * cfg.dpo_model.max_length, plan.precision),
        learning_rate=rc.learning_rate, warmup_ratio=rc.warmup_ratio, gradient_checkpointing=False, cpu_threads=rc.cpu_threads,
        op_macs=defaults.projection_macs(model.config, pass_tokens(model.config, tok_train, rc.batch_size, plan.device)),
    )
    settings.set("gradient_checkpointing", False, "not used: the reward model trains on short rows a few at a time")
    adapter = method != "full"
    if rc.learning_rate is None:
        settings.set("learning_rate", ADAPTER_RATE if adapter else FULL_RATE,
                     "default for an adapter reward model: the head starts random, the adapter at the SFT weights; 3e-3 "
                     "moved the loss where 1e-3 barely did in a short run" if adapter else "full fine-tune: small steps keep the SFT model intact")
    if rc.warmup_ratio is None:
        settings.set("warmup_ratio", ADAPTER_WARMUP if adapter else 0.1,
                     "a short warmup: the first steps' gradients come from a random head")
    return settings, counts


class _Judged:
    """The judge's training log in the stage's tracking run: its own key prefix, its steps after the reward model's."""

    def __init__(self, tracker, offset: int):
        self.tracker, self.offset = tracker, offset

    def log(self, values: dict, step: int) -> None:
        self.tracker.log({f"judge/{k}": v for k, v in values.items()}, step=step + self.offset)

    def summary(self, values: dict) -> None:
        self.tracker.summary({f"judge/{k}": v for k, v in values.items()})


def _train_one(cfg: PipelineConfig, role: str, paths: tuple[Path, Path], tokenizer, plan, method: str, tok_train: list[dict],
               tok_held: list[dict], collator, steps: int, tracker, data_version: dict, part: "Part | None" = None):
    """Build one reward model from the SFT model and train it: (model, loop result, settings, parameter counts,
    seconds). `role` is "reward_model" or "judge"; each has its own checkpoints, so a killed run resumes each. With a
    `part` of the stage's budget, training stops before a step that would leave no room for the final evaluation,
    and the intermediate evaluations are skipped once they would pass their share of it."""
    rc = cfg.reward_model
    base_dir, lora_dir = paths
    model, init = build_reward_model(base_dir, lora_dir, tokenizer.pad_token_id, r=cfg.lora_adapter.r, alpha=cfg.lora_adapter.alpha,
                                     trust_remote_code=cfg.base_checkpoint.trust_remote_code)
    if plan.device == "cuda":
        model.to("cuda")
    settings, counts = _settings(cfg, model, method, plan, tok_train)
    settings.set("init", init, "the reward model starts from what SFT learned of the domain")
    tracker.summary({f"settings/{k}": v for k, v in settings.values().items()})
    eval_every = rc.eval_every or max(1, steps // 3)
    loop = reward_loop.RewardLoopSettings(
        steps=steps, batch_size=rc.batch_size, learning_rate=settings.value("learning_rate"),
        warmup_steps=int(settings.value("warmup_ratio") * steps), seed=cfg.seed, eval_every=eval_every,
        checkpoint_every=rc.checkpoint_every or eval_every, log_every=max(1, min(10, steps // 10)),
        center_coefficient=rc.center_coefficient,
    )
    fingerprint = {"config": cfg.fingerprint("reward_model", "dpo_model", "lora_adapter"), "seed": cfg.seed, "role": role,
                   "model": data_version["model"], "data": ref_cache.dataset_version(tok_train + tok_held), "precision": plan.precision}
    on_step = eval_allowed = None
    if part is not None:
        clock = part.clock
        clock.begin_steps()

        def on_step(step: int) -> bool:
            clock.step_done(part.eval_seconds)  # room for the final evaluation
            return clock.must_stop

        def eval_allowed(spent: float) -> bool:
            return spent + 2 * part.eval_seconds <= budget.MAX_EVAL_SHARE * clock.budget  # this one and the final one

    with torch_threads(settings.value("cpu_threads")):
        t0 = time.perf_counter()
        result = reward_loop.train(model, tok_train, tok_held, collator, loop, plan, checkpoint_dir(cfg, role),
                                   json.dumps(fingerprint, sort_keys=True), tracker, on_step=on_step, eval_allowed=eval_allowed)
        seconds = time.perf_counter() - t0
    if result.start_step:
        settings.set("resumed", result.resume_note, "checkpoints of this run (same config, data and model) are continued")
    return model, result, settings, counts, seconds


class Part:
    """One model's part of the stage's budget: its own clock, and what one held-out evaluation is expected to take."""

    def __init__(self, seconds: float, eval_seconds: float):
        self.clock = budget.Clock(max(seconds, 1e-3))
        self.clock.start()  # building the model counts too
        self.eval_seconds = eval_seconds


def checkpoint_dir(cfg: PipelineConfig, role: str) -> Path:
    """Where a model's checkpoints go: side by side (never one inside the other), so each resumes on its own."""
    return cfg.data_path / ".checkpoints" / (ASSET if role == ASSET else f"{ASSET}-{role}")


def _held_out(result) -> dict:
    return {k: round(result.eval_metrics[k], 4) for k in ("eval_accuracy", "eval_margin", "eval_loss") if k in result.eval_metrics}


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    from transformers import AutoTokenizer

    rc, dc = cfg.reward_model, cfg.dpo_model
    lora_dir, base_dir = Path(inputs["lora_adapter"]), Path(inputs["base_checkpoint"])
    plan = plan_device(rc.precision, varying_shapes=True)
    seed_everything(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(lora_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    started = time.perf_counter()
    # One clock for the stage's share of the run's budget: sampling the rejections, the SFT baseline, both models'
    # training and their evaluations count against it.
    budget_seconds, budget_why = budget.stage_budget(cfg, ASSET, {"base_checkpoint": base_dir, "lora_adapter": lora_dir})
    floor_why, floor = step_floor.check(cfg, ASSET, budget_seconds, budget_why, {"base_checkpoint": base_dir, "lora_adapter": lora_dir})
    if floor_why:  # before the SFT model loads: a share that buys too few steps buys nothing (training/step_floor.py)
        return step_floor.skipped_output(output_dir, ASSET, floor_why, floor, budget_seconds, budget_why, time.perf_counter() - started)
    clock = budget.Clock(budget_seconds) if budget_seconds is not None else None
    if clock is not None:
        clock.start()

    # The SFT model builds the pairs (model-sampled rejections need it) and scores them for the likelihood baseline,
    # then leaves memory before the reward model is loaded.
    sft, method = load_policy(cfg, base_dir, lora_dir)
    # The samples dpo_model drew from the same SFT model are read from their shared folder (`sample_cache`), not
    # drawn again; what is not there yet is sampled within this stage's sampling share, timed per sample.
    sampling = budget.Allowance(SAMPLING_SHARE * clock.budget - clock.spent() if clock is not None else None)
    train, held, derivation = build_pairs(cfg, inputs["deduped_shards"], sft, tokenizer, allowance=sampling,
                                          cache_dir=sample_cache(cfg, base_dir, lora_dir))
    if dc.rejected == "model_sample" and not dc.data:
        derivation["sampling"] = sampling.summary()
    if clock is not None and len(train) < dc.min_pairs and derivation.get("skipped", {}).get("sampling_budget_spent"):
        # The budget ended the sampling with too few pairs to learn from. Unlike DPO, which then leaves the SFT model
        # to stand, rl_model needs a reward model: other documents' text as the rejected side costs no sampling.
        why = (f"the budget ended sampling the rejections with {len(train)} training pairs (fewer than dpo_model.min_pairs "
               f"{dc.min_pairs}): other documents' text is the rejected side instead")
        fallback = cfg.model_copy(update={"dpo_model": dc.model_copy(update={"rejected": "other_document"})})
        sampled = derivation
        train, held, derivation = build_pairs(fallback, inputs["deduped_shards"], sft, tokenizer)
        derivation = {**derivation, "fallback": why, "sampled": sampled}
    dropped: Counter = Counter()
    tokenize = lambda rows: [t for t in (dpo_pairs.tokenize_pair(p, tokenizer, dc.max_length, dropped) for p in rows) if t]  # noqa: E731
    judge_train: list[dict] = []
    judge_note = "reward_model.judge is off"
    if rc.judge:
        primary_train, judge_train = reward_split.split_by_prompt(train)
        tok_primary, tok_judge = tokenize(primary_train), tokenize(judge_train)
        if tok_primary and tok_judge:
            train, tok_train = primary_train, tok_primary
            judge_note = ""
        else:  # too few prompts (or too few that fit) to give each model some: the reward model keeps every pair
            judge_note = (f"not trained: of the training pairs split by prompt, {len(tok_primary)} / {len(tok_judge)} fit "
                          f"dpo_model.max_length {dc.max_length} on the two sides")
            judge_train, tok_judge = [], []
            dropped.clear()
            tok_train = tokenize(train)
    else:
        tok_train, tok_judge = tokenize(train), []
    tok_held = tokenize(held)
    write_jsonl(output_dir / "pairs_train.jsonl", train)
    write_jsonl(output_dir / "pairs_eval.jsonl", held)
    if not tok_train:
        raise preference_data.PreferenceDataError(f"no preference pair fits dpo_model.max_length {dc.max_length} (dropped: {dict(dropped)})")
    collator = dpo_pairs.PairCollator(tokenizer.pad_token_id)
    t_base = time.perf_counter()
    sft_acc = reward_baselines.sft_likelihood_accuracy(sft, tok_held, collator, rc.batch_size)
    baseline_seconds = time.perf_counter() - t_base
    del sft
    gc.collect()
    # Held-out pairs scored at each evaluation: all of them, or under a budget the evenly spread ones that keep every
    # model's evaluations within MAX_EVAL_SHARE of it (a pair costs what it cost the SFT baseline: one forward of
    # both answers).
    eval_pairs, per_pair = tok_held, baseline_seconds / max(1, len(tok_held))
    models = 2 if tok_judge else 1
    if clock is not None and tok_held:
        keep = budget.affordable(len(tok_held), per_pair, budget.eval_allowance(clock.budget, models * EVALS_PER_MODEL))
        eval_pairs = [tok_held[i] for i in budget.spread(len(tok_held), keep)]
    judge_steps = rc.judge_max_steps or rc.max_steps

    def part(role: str) -> Part | None:
        """The rest of the budget, split between the models still to train by their step caps."""
        if clock is None:
            return None
        steps_left = rc.max_steps + (judge_steps if tok_judge else 0) if role == ASSET else judge_steps
        mine = rc.max_steps if role == ASSET else judge_steps
        return Part(max(0.0, clock.left()) * mine / steps_left, per_pair * len(eval_pairs))

    identity = {"model": {"base": file_md5(base_dir / MANIFEST) if (base_dir / MANIFEST).exists() else dvc_hash(base_dir),
                          "sft": file_md5(lora_dir / "adapter_model.safetensors") if (lora_dir / "adapter_model.safetensors").exists() else dvc_hash(lora_dir)}}
    steps = rc.max_steps
    judged = None
    with tracked_run(cfg, ASSET, {**rc.model_dump(mode="json")}) as tracker:
        rm_part = part(ASSET)
        model, result, settings, counts, train_seconds = _train_one(
            cfg, ASSET, (base_dir, lora_dir), tokenizer, plan, method, tok_train, eval_pairs, collator, steps, tracker, identity, rm_part)
        model.save_pretrained(output_dir)
        del model
        gc.collect()
        if tok_judge:
            judge_dir = output_dir / JUDGE
            judge_dir.mkdir()
            judge_part = part(JUDGE)
            judge_model, judge_result, judge_settings, _, judge_seconds = _train_one(
                cfg, JUDGE, (base_dir, lora_dir), tokenizer, plan, method, tok_judge, eval_pairs, collator,
                judge_steps, _Judged(tracker, result.global_step), identity, judge_part)
            judge_model.save_pretrained(judge_dir)
            tokenizer.save_pretrained(judge_dir)
            write_jsonl(judge_dir / "pairs_train.jsonl", judge_train)
            write_json(judge_dir / "training_log.json", judge_result.log)
            del judge_model
            gc.collect()
            judged = (judge_result, judge_settings, judge_seconds, judge_part)
        tracker.summary({"eval_accuracy": result.eval_metrics.get("eval_accuracy"), "peak_rss_mb": peak_rss_mb(),
                         **({"judge/eval_accuracy": judged[0].eval_metrics.get("eval_accuracy")} if judged else {})})

    tokenizer.save_pretrained(output_dir)
    write_json(output_dir / "training_log.json", result.log)
    for role in (ASSET, JUDGE):
        shutil.rmtree(checkpoint_dir(cfg, role), ignore_errors=True)
    scoring_base = base_dir if method != "full" else lora_dir
    write_json(output_dir / "serving_manifest.json", serving_manifest(cfg, inputs, output_dir, scoring_base, tokenizer.pad_token_id))

    budget_spent = round(clock.spent(), 3) if clock is not None else None
    ev = _held_out(result)
    length_acc = reward_baselines.length_accuracy(tok_held)
    accuracy = ev.get("eval_accuracy")
    stats = {
        "pairs": len(tok_train), "eval_pairs": len(tok_held), "derivation": derivation["derivation"],
        "eval_accuracy": accuracy, "eval_margin": ev.get("eval_margin"), "eval_loss": ev.get("eval_loss"),
        "length_baseline_accuracy": length_acc, "sft_loglik_accuracy": sft_acc["sum"],
        "sft_loglik_per_token_accuracy": sft_acc["per_token"],
        "accuracy_over_length_baseline": round(accuracy - length_acc, 4) if accuracy is not None and length_acc is not None else None,
        "first_train_loss": finetune.first_logged(result.log, "loss"), "train_loss": finetune.last_logged(result.log, "loss"),
        "train_accuracy": finetune.last_logged(result.log, "accuracy"),
        "steps": result.global_step, "learning_rate": settings.value("learning_rate"),
        "trainable_params": counts["trainable_params"], "precision": plan.precision, "peak_rss_mb": peak_rss_mb(),
        "budget_seconds": budget_seconds, "budget_spent_seconds": budget_spent,
        "stopped_by_budget": bool(rm_part and rm_part.clock.must_stop and result.global_step < steps),
        "eval_pairs_scored": len(eval_pairs), "eval_seconds": round(result.eval_seconds, 3), "evals_skipped": result.evals_skipped,
        "baseline_seconds": round(baseline_seconds, 3),
    }
    judge_md: dict = {"trained": judged is not None, "split": reward_split.RULE}
    if judged is not None:
        jr, js, jsec, jpart = judged
        jev = _held_out(jr)
        stats.update({"judge_pairs": len(tok_judge), "judge_steps": jr.global_step, "judge_eval_accuracy": jev.get("eval_accuracy"),
                      "judge_eval_margin": jev.get("eval_margin"), "judge_train_loss": finetune.last_logged(jr.log, "loss"),
                      "judge_shared_prompts": reward_split.shared_prompts(train, judge_train),
                      "judge_eval_seconds": round(jr.eval_seconds, 3),
                      "judge_stopped_by_budget": bool(jpart and jpart.clock.must_stop and jr.global_step < judge_steps)})
        judge_md.update({"path": f"{ASSET}/{JUDGE}", "pairs": len(tok_judge), "reward_model_pairs": len(tok_train),
                         "shared_prompts": stats["judge_shared_prompts"], "eval_pairs": len(tok_held),
                         "eval_accuracy": jev.get("eval_accuracy"), "settings": js.as_metadata(), "train_seconds": round(jsec, 2)})
    else:
        judge_md["why"] = judge_note
    write_json(output_dir / "training_summary.json", {"settings": settings.as_metadata(), "dropped_pairs": dict(dropped),
                                                      "steps": result.global_step, "pairs": len(tok_train),
                                                      "judge": {k: v for k, v in judge_md.items() if k != "settings"}})
    judge_row = (f"| judge (other half of the pairs, {len(tok_judge)}) | {stats['judge_eval_accuracy']} |\n" if judged is not None
                 else "")
    preview = (
        f"Reward model on {len(tok_train)} pairs ({derivation['derivation']}), {stats['steps']} steps; loss "
        f"{stats['first_train_loss']} → {stats['train_loss']}.\n\n| held-out pairwise accuracy | |\n|---|---|\n"
        f"| reward model | {accuracy} |\n{judge_row}| longer answer wins | {length_acc} |\n"
        f"| SFT log-likelihood (sum / per token) | {sft_acc['sum']} / {sft_acc['per_token']} |\n"
    )
    if judged is None:
        preview += f"\nJudge: {judge_note}.\n"
    budget_md = {"seconds": budget_seconds, "why": budget_why,
                 "parts": {"reward_model": round(rm_part.clock.budget, 1) if rm_part else None,
                           "judge": round(judged[3].clock.budget, 1) if judged and judged[3] else None},
                 "eval_pairs": f"{len(eval_pairs)} of {len(tok_held)} held-out pairs scored at each evaluation"
                 + (" (evaluations kept within a tenth of the budget)" if len(eval_pairs) < len(tok_held) else "")}
    metadata = {**plan.as_metadata(), "settings": settings.as_metadata(), "data": derivation, "dropped_pairs": dict(dropped),
                "judge": judge_md, "train_seconds": round(train_seconds, 2), "budget": budget_md,
                "seconds": round(time.perf_counter() - started, 2), **tracker.metadata()}
    return StageOutput(stats=stats, preview=preview, metadata=metadata)
