"""Stage `rl_model`: train the SFT model online against the reward model (RLOO or GRPO), beside DPO.

    llm-pipeline stage rl_model

The policy is the base checkpoint with the lora_adapter loaded trainable (as in dpo_model); the reference for the KL
penalty is that same model before the first update (`training/rl_loop.py`). Under a time budget (rl_model.max_train_seconds,
or its share of training.max_train_seconds) loading, sampling, the steps and both evaluations count against it:
training stops before a step that would leave no room for the evaluations, and they score only the held-out prompts
that keep them within a tenth of the budget (the SFT model is evaluated after training, with its weights swapped in,
so that the number scored is known from the measured steps). The reward is the reward_model's score
plus any rule rewards the config names (`training/rl_rewards.py`). Prompts are the reward model's preference-pair
prompts (train pairs, both the reward model's and its judge's half, for training; held-out pairs for
evaluation) or `rl_model.prompts_file`. Before and after
training the same held-out prompts are sampled once each with the same seed: the metadata gives the SFT model's and
the RL model's mean reward, the gain, and the RL model's KL to SFT, with the samples side by side.

The output adapter loads as dpo_model's does: `PeftModel.from_pretrained(base, <this folder>)`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import MANIFEST, dvc_hash, file_md5, read_timed, write_json
from llm_pipeline.security import confine
from llm_pipeline.stages import StageOutput
from llm_pipeline.stages.dpo_model import load_policy
from llm_pipeline.training import budget, defaults, finetune, rl_loop, rl_prompts, step_floor
from llm_pipeline.training.device import peak_rss_mb, plan_device, seed_everything, torch_threads
from llm_pipeline.training.preference_data import PreferenceDataError
from llm_pipeline.training.reward_scoring import load_reward_model
from llm_pipeline.training.rl_rewards import Reward
from llm_pipeline.training.sft_data import read_jsonl, write_jsonl
from llm_pipeline.training.tracking import tracked_run

ASSET = "rl_model"
# Policy-gradient steps on an adapter: 5e-4 raised the tiny sample model's held-out reward within 16 steps; online
# RL is noisier than DPO (each step's gradient comes from a few samples), so it stays below DPO's 1e-3.
LEARNING_RATES = {"adapter": 5e-4, "full": 1e-6}


def _prompts(cfg: PipelineConfig, rm_dir: Path) -> tuple[list, list, str]:
    rl = cfg.rl_model
    if rl.prompts_file:
        train, held = rl_prompts.read_prompt_file(confine(cfg, rl.prompts_file, "rl_model.prompts_file"))
        return rl_prompts.unique(train), rl_prompts.unique(held), f"file:{Path(rl.prompts_file).name}"
    # Both halves of the training pairs (the reward model's and its judge's): RL never sees the judge's scores, and
    # every held-out prompt stays held out.
    files = [rm_dir / "pairs_train.jsonl", rm_dir / "judge" / "pairs_train.jsonl"]
    train = [p["prompt"] for f in files if f.exists() for p in read_jsonl(f)]
    held = [p["prompt"] for p in read_jsonl(rm_dir / "pairs_eval.jsonl")] if (rm_dir / "pairs_eval.jsonl").exists() else []
    return rl_prompts.unique(train), rl_prompts.unique(held), "preference pairs"


def _per_device(settings, rl, plan) -> None:
    gpu = plan.device == "cuda"
    if rl.generations_per_prompt is not None:
        settings.set("generations_per_prompt", rl.generations_per_prompt, "set in config")
    else:
        settings.set("generations_per_prompt", 8 if gpu else 4,
                     "GPU: a batch of samples decodes nearly as fast as one; 8 give a steadier baseline" if gpu else
                     "CPU: each completion is decoded step by step; 4 give every sample a baseline of 3 others")
    if rl.prompts_per_step is not None:
        settings.set("prompts_per_step", rl.prompts_per_step, "set in config")
    else:
        settings.set("prompts_per_step", 8 if gpu else 4, "GPU: larger batches of prompts cost little more" if gpu else
                     "CPU: 4 prompts x the generations keep a step to one short decode and one forward/backward")


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    from transformers import AutoTokenizer

    rl = cfg.rl_model
    rm_dir, lora_dir, base_dir = Path(inputs["reward_model"]), Path(inputs["lora_adapter"]), Path(inputs["base_checkpoint"])
    max_length = rl.max_length or cfg.dpo_model.max_length
    if rl.max_new_tokens >= max_length:
        raise PreferenceDataError(f"rl_model.max_new_tokens {rl.max_new_tokens} leaves no room for a prompt in max_length {max_length}")
    plan = plan_device(rl.precision, varying_shapes=True)
    seed_everything(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(lora_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    started = time.perf_counter()
    budget_seconds, budget_why = budget.stage_budget(cfg, ASSET, {"base_checkpoint": base_dir, "lora_adapter": lora_dir, "reward_model": rm_dir})
    floor_why, floor = step_floor.check(cfg, ASSET, budget_seconds, budget_why, {"base_checkpoint": base_dir, "lora_adapter": lora_dir})
    rm_skipped = (read_timed(rm_dir) or {}).get("skipped") if (rm_dir / "stats.json").exists() else None
    if not floor_why and rm_skipped and rl.reward_model_weight:
        floor_why = f"reward_model skipped training ({rm_skipped}): no reward model to learn from"
    if floor_why:  # before the policy and the reward model load (training/step_floor.py)
        return step_floor.skipped_output(output_dir, ASSET, floor_why, floor, budget_seconds, budget_why, time.perf_counter() - started)
    clock = budget.Clock(budget_seconds) if budget_seconds is not None else None
    if clock is not None:
        clock.start()

    train_p, held_p, prompt_source = _prompts(cfg, rm_dir)
    dropped: Counter = Counter()
    train = rl_prompts.fit_prompts(train_p, tokenizer, max_length - rl.max_new_tokens, dropped)
    held = rl_prompts.fit_prompts(held_p, tokenizer, max_length - rl.max_new_tokens, dropped)[: rl.eval_prompts]
    if not train:
        raise PreferenceDataError(f"no RL prompt fits max_length {max_length} with {rl.max_new_tokens} new tokens (dropped: {dict(dropped)})")
    if not held:  # a small prompt set may hash every prompt to the train side: evaluate on a few train prompts then
        held = train[: rl.eval_prompts]
        dropped["eval_prompts_from_train"] += len(held)

    policy, method = load_policy(cfg, base_dir, lora_dir)
    reward_model = None
    if rl.reward_model_weight:
        scoring_base = base_dir if (lora_dir / "adapter_config.json").exists() else lora_dir
        reward_model = load_reward_model(scoring_base, rm_dir, tokenizer.pad_token_id, cfg.base_checkpoint.trust_remote_code)
    if plan.device == "cuda":
        policy.to("cuda")
        if reward_model is not None:
            reward_model.to("cuda")
    reward = Reward(rl.rule_rewards, reward_model, tokenizer, rl.reward_model_weight, max_length, rl.length_target_words)

    counts = finetune.parameter_counts(policy)
    # Most of a CPU step is sampling, one token per completion at a time: threads are sized for that pass.
    per_token_pass = (rl.prompts_per_step or 4) * (rl.generations_per_prompt or 4)
    settings = defaults.choose("dpo", method, plan, counts["total_params"], 0, learning_rate=rl.learning_rate, warmup_ratio=0.0,
                               gradient_checkpointing=False, cpu_threads=rl.cpu_threads,
                               op_macs=defaults.projection_macs(policy.config, per_token_pass))
    kind = "adapter" if method != "full" else "full"
    if rl.learning_rate is None:
        settings.set("learning_rate", LEARNING_RATES[kind], f"default for {kind} RL: policy-gradient steps are noisy, so "
                     "below DPO's rate" + (" (5e-4 raised the sample model's held-out reward in 16 steps)" if kind == "adapter" else ""))
    settings.set("warmup_ratio", 0.0, "the policy starts as the reference (KL 0): nothing to protect with a warmup")
    settings.set("gradient_checkpointing", False, "completions are short: activations are small")
    _per_device(settings, rl, plan)
    settings.set("kl_coef", rl.kl_coef, "weight of the KL to the SFT model: keeps the policy near what SFT learned while the reward pulls it")
    settings.set("reference", "sft", "the SFT adapter before the first update, swapped in for a no-grad pass (no second model in memory)")
    steps = rl.max_steps
    loop = rl_loop.RlSettings(
        steps=steps, prompts_per_step=settings.value("prompts_per_step"), generations=settings.value("generations_per_prompt"),
        max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, kl_coef=rl.kl_coef, learning_rate=settings.value("learning_rate"),
        algorithm=rl.algorithm, seed=cfg.seed, checkpoint_every=rl.checkpoint_every or max(1, steps // 4),
        log_every=max(1, steps // 20),
    )
    work = cfg.data_path / ".checkpoints" / ASSET
    identity = {"base": file_md5(base_dir / MANIFEST) if (base_dir / MANIFEST).exists() else dvc_hash(base_dir),
                "sft": dvc_hash(lora_dir), "reward_model": dvc_hash(rm_dir)}
    fingerprint = {"config": cfg.fingerprint("rl_model", "reward_model", "dpo_model", "lora_adapter"), "seed": cfg.seed,
                   "model": identity, "prompts": hashlib.sha256(json.dumps([p["prompt_ids"] for p in train]).encode()).hexdigest()[:16],
                   "precision": plan.precision}
    reference = rl_loop.Reference(policy)
    scored = {"prompts": len(held)}
    on_step = None
    if clock is not None:
        settings.set("budget", f"{budget_seconds:g} s", budget_why + "; loading, sampling, the steps and the evaluations count against it")
        clock.begin_steps()
        per_step = loop.prompts_per_step * loop.generations

        def on_step(step: int) -> bool:
            # An evaluation samples one completion per prompt and scores it as a step does, without the backward: a
            # step's seconds per completion bound what a prompt costs it. Two evaluations (SFT and RL) share the tenth.
            clock.step_done()
            per_prompt = clock.expected_step() / per_step
            scored["prompts"] = budget.affordable(len(held), per_prompt, budget.eval_allowance(clock.budget, 2))
            return clock.must_stop or not clock.another_step_fits(2 * per_prompt * scored["prompts"])

    with tracked_run(cfg, ASSET, {**rl.model_dump(mode="json"), **settings.values()}) as tracker, torch_threads(settings.value("cpu_threads")):
        t0 = time.perf_counter()
        result = rl_loop.train(policy, tokenizer, train, reward, loop, plan, work, json.dumps(fingerprint, sort_keys=True), reference, tracker,
                               on_step=on_step)
        train_seconds = time.perf_counter() - t0
        held_all, held = held, [held[i] for i in budget.spread(len(held), scored["prompts"])]
        t_eval = time.perf_counter()
        with reference.active():  # the SFT model: the policy's weights before its first update
            before = rl_loop.evaluate(policy, tokenizer, held, reward, reference, loop, plan, cfg.seed)
        after = rl_loop.evaluate(policy, tokenizer, held, reward, reference, loop, plan, cfg.seed)
        eval_seconds = time.perf_counter() - t_eval
        tracker.summary({"eval/reward_sft": before["reward"], "eval/reward_rl": after["reward"], "eval/kl": after["kl"]})
    if result.start_step:
        settings.set("resumed", result.resume_note, "checkpoints of this run (same config, prompts and models) are continued")

    policy.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_json(output_dir / "training_log.json", result.log)
    shutil.rmtree(work, ignore_errors=True)
    samples = [{"prompt": p["prompt"], "sft": a, "rl": b} for p, a, b in zip(held, before.pop("texts"), after.pop("texts"))]
    write_jsonl(output_dir / "samples.jsonl", samples)
    write_json(output_dir / "serving_manifest.json", {
        "base_model": {"path": str(base_dir.name), "hash": dvc_hash(base_dir)},
        "adapters": [{"name": ASSET, "path": ASSET, "method": method, "algorithm": rl.algorithm, "derived_from": lora_dir.name}],
        "reward_model": {"path": rm_dir.name, "hash": dvc_hash(rm_dir)},
        "load": "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model.path), adapters[0].path)",
    })

    stats = {
        "algorithm": rl.algorithm, "steps": result.global_step, "prompts": len(train), "eval_prompts": len(held),
        "completions": result.completions, "eval_reward_sft": before["reward"], "eval_reward_rl": after["reward"],
        "eval_reward_gain": round(after["reward"] - before["reward"], 5), "eval_kl_to_sft": after["kl"],
        **{f"eval_{k.replace('/', '_')}_sft": v for k, v in before.items() if k.startswith("reward/")},
        **{f"eval_{k.replace('/', '_')}_rl": v for k, v in after.items() if k.startswith("reward/")},
        "first_train_reward": finetune.first_logged(result.log, "reward"), "train_reward": finetune.last_logged(result.log, "reward"),
        "train_kl": finetune.last_logged(result.log, "kl"), "learning_rate": settings.value("learning_rate"),
        "kl_coef": rl.kl_coef, "generations_per_prompt": loop.generations, "prompts_per_step": loop.prompts_per_step,
        "trainable_params": counts["trainable_params"], "precision": plan.precision, "peak_rss_mb": peak_rss_mb(),
        "eval_prompts_held_out": len(held_all), "budget_seconds": budget_seconds,
        "budget_spent_seconds": round(clock.spent(), 3) if clock is not None else None,
        "stopped_by_budget": bool(clock is not None and result.global_step < steps), "eval_seconds": round(eval_seconds, 3),
    }
    rows = "\n".join(f"| {s['prompt'][:60]!r} | {s['sft'][:60]!r} | {s['rl'][:60]!r} |" for s in samples[:3])
    preview = (
        f"{rl.algorithm.upper()} on {len(train)} prompts ({prompt_source}), {stats['steps']} steps x {loop.prompts_per_step} prompts x "
        f"{loop.generations} samples; held-out reward SFT {before['reward']} → RL {after['reward']} "
        f"(gain {stats['eval_reward_gain']}), KL to SFT {after['kl']}\n\n| prompt | SFT | RL |\n|---|---|---|\n{rows}"
    )
    rewards = {"reward_model_weight": rl.reward_model_weight, "rule_rewards": dict(rl.rule_rewards)}
    metadata = {**plan.as_metadata(), "settings": settings.as_metadata(), "reward": rewards, "prompts": prompt_source,
                "dropped_prompts": dict(dropped), "train_seconds": round(train_seconds, 2),
                "budget": {"seconds": budget_seconds, "why": budget_why,
                           "eval_prompts": f"{len(held)} of {len(held_all)} held-out prompts scored for SFT and for RL"
                           + (" (evaluations kept within a tenth of the budget)" if len(held) < len(held_all) else "")},
                "seconds": round(time.perf_counter() - started, 2), **tracker.metadata()}
    return StageOutput(stats=stats, preview=preview, metadata=metadata)
