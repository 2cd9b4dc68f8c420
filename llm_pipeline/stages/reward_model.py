"""Stage `reward_model`: a sequence-scoring model trained on the preference pairs, for RL (`rl_model`) and evaluation.

    llm-pipeline stage reward_model

The model is the base checkpoint as a one-label sequence classifier with a LoRA adapter that starts as the SFT
adapter and a new scalar head (`training/reward_scoring.py`), trained with a Bradley-Terry loss by our loop
(`training/reward_loop.py`). The pairs are the ones dpo_model trains on, built by the same code from the same
settings (`dpo_model.build_pairs`: the user's files in any format it reads, a reviewed-records export written as
pairs, or synthetic pairs from the corpus), held out the same way. The metadata puts the held-out pairwise accuracy
beside two baselines: the longer answer wins, and the SFT model's own log-likelihood of each answer.

The output loads with plain transformers and PEFT (`serving_manifest.json` says how):
`PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, pad_token_id=P), dir)`.
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
from llm_pipeline.stages.dpo_model import build_pairs, load_policy
from llm_pipeline.training import defaults, dpo_pairs, finetune, preference_data, ref_cache, reward_baselines, reward_loop
from llm_pipeline.training.dpo_train import pass_tokens
from llm_pipeline.training.device import peak_rss_mb, plan_device, seed_everything, torch_threads
from llm_pipeline.training.reward_scoring import build_reward_model
from llm_pipeline.training.sft_data import write_jsonl
from llm_pipeline.training.tracking import tracked_run

ASSET = "reward_model"
# The head starts random and the adapter at the SFT weights. On the sample (90 synthetic pairs, 40 steps) 1e-3 left the
# training loss at 0.693 (0.6943 -> 0.6927); 3e-3 moved it within 80-120 steps; 2e-2 made it worse (0.705 -> 0.710).
ADAPTER_RATE, FULL_RATE = 3e-3, 1e-5
ADAPTER_WARMUP = 0.05


def _rel(cfg: PipelineConfig, path: Path) -> str:
    data, p = cfg.data_path.resolve(), Path(path).resolve()
    return str(p.relative_to(data)) if p.is_relative_to(data) else str(p)


def serving_manifest(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, scoring_base: Path, pad_id: int) -> dict:
    files = {name: file_md5(output_dir / name) for name in ("pairs_train.jsonl", "pairs_eval.jsonl") if (output_dir / name).exists()}
    return {
        "base_model": {"path": _rel(cfg, scoring_base), "hash": dvc_hash(scoring_base)},
        "tokenizer": {"path": ASSET, "note": "score prompt + answer framed by this tokenizer's chat template"},
        "adapters": [{"name": ASSET, "path": ASSET, "method": "lora", "task": "sequence_score", "head": "score (1 label)"}],
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

    # The SFT model builds the pairs (model-sampled rejections need it) and scores them for the likelihood baseline,
    # then leaves memory before the reward model is loaded.
    sft, method = load_policy(cfg, base_dir, lora_dir)
    train, held, derivation = build_pairs(cfg, inputs["deduped_shards"], sft, tokenizer)
    write_jsonl(output_dir / "pairs_train.jsonl", train)
    write_jsonl(output_dir / "pairs_eval.jsonl", held)
    dropped: Counter = Counter()
    tok_train = [t for t in (dpo_pairs.tokenize_pair(p, tokenizer, dc.max_length, dropped) for p in train) if t]
    tok_held = [t for t in (dpo_pairs.tokenize_pair(p, tokenizer, dc.max_length, dropped) for p in held) if t]
    if not tok_train:
        raise preference_data.PreferenceDataError(f"no preference pair fits dpo_model.max_length {dc.max_length} (dropped: {dict(dropped)})")
    collator = dpo_pairs.PairCollator(tokenizer.pad_token_id)
    sft_acc = reward_baselines.sft_likelihood_accuracy(sft, tok_held, collator, rc.batch_size)
    del sft
    gc.collect()

    model, init = build_reward_model(base_dir, lora_dir, tokenizer.pad_token_id, r=cfg.lora_adapter.r, alpha=cfg.lora_adapter.alpha,
                                     trust_remote_code=cfg.base_checkpoint.trust_remote_code)
    if plan.device == "cuda":
        model.to("cuda")
    settings, counts = _settings(cfg, model, method, plan, tok_train)
    settings.set("init", init, "the reward model starts from what SFT learned of the domain")
    work = cfg.data_path / ".checkpoints" / ASSET
    steps = rc.max_steps
    eval_every = rc.eval_every or max(1, steps // 3)
    loop = reward_loop.RewardLoopSettings(
        steps=steps, batch_size=rc.batch_size, learning_rate=settings.value("learning_rate"),
        warmup_steps=int(settings.value("warmup_ratio") * steps), seed=cfg.seed, eval_every=eval_every,
        checkpoint_every=rc.checkpoint_every or eval_every, log_every=max(1, min(10, steps // 10)),
        center_coefficient=rc.center_coefficient,
    )
    identity = {"base": file_md5(base_dir / MANIFEST) if (base_dir / MANIFEST).exists() else dvc_hash(base_dir),
                "sft": file_md5(lora_dir / "adapter_model.safetensors") if (lora_dir / "adapter_model.safetensors").exists() else dvc_hash(lora_dir)}
    fingerprint = {"config": cfg.fingerprint("reward_model", "dpo_model", "lora_adapter"), "seed": cfg.seed, "model": identity,
                   "data": ref_cache.dataset_version(tok_train + tok_held), "precision": plan.precision}
    with tracked_run(cfg, ASSET, {**rc.model_dump(mode="json"), **settings.values()}) as tracker, torch_threads(settings.value("cpu_threads")):
        t0 = time.perf_counter()
        result = reward_loop.train(model, tok_train, tok_held, collator, loop, plan, work, json.dumps(fingerprint, sort_keys=True), tracker)
        train_seconds = time.perf_counter() - t0
        tracker.summary({"eval_accuracy": result.eval_metrics.get("eval_accuracy"), "peak_rss_mb": peak_rss_mb()})
    if result.start_step:
        settings.set("resumed", result.resume_note, "checkpoints of this run (same config, data and model) are continued")

    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_json(output_dir / "training_log.json", result.log)
    shutil.rmtree(work, ignore_errors=True)
    scoring_base = base_dir if method != "full" else lora_dir
    write_json(output_dir / "serving_manifest.json", serving_manifest(cfg, inputs, output_dir, scoring_base, tokenizer.pad_token_id))

    ev = lambda k: round(result.eval_metrics[k], 4) if k in result.eval_metrics else None  # noqa: E731
    length_acc = reward_baselines.length_accuracy(tok_held)
    accuracy = ev("eval_accuracy")
    stats = {
        "pairs": len(tok_train), "eval_pairs": len(tok_held), "derivation": derivation["derivation"],
        "eval_accuracy": accuracy, "eval_margin": ev("eval_margin"), "eval_loss": ev("eval_loss"),
        "length_baseline_accuracy": length_acc, "sft_loglik_accuracy": sft_acc["sum"],
        "sft_loglik_per_token_accuracy": sft_acc["per_token"],
        "accuracy_over_length_baseline": round(accuracy - length_acc, 4) if accuracy is not None and length_acc is not None else None,
        "first_train_loss": finetune.first_logged(result.log, "loss"), "train_loss": finetune.last_logged(result.log, "loss"),
        "train_accuracy": finetune.last_logged(result.log, "accuracy"),
        "steps": result.global_step, "learning_rate": settings.value("learning_rate"),
        "trainable_params": counts["trainable_params"], "precision": plan.precision, "peak_rss_mb": peak_rss_mb(),
    }
    write_json(output_dir / "training_summary.json", {"settings": settings.as_metadata(), "dropped_pairs": dict(dropped),
                                                      "steps": result.global_step, "pairs": len(tok_train)})
    preview = (
        f"Reward model on {len(tok_train)} pairs ({derivation['derivation']}), {stats['steps']} steps; loss "
        f"{stats['first_train_loss']} → {stats['train_loss']}.\n\n| held-out pairwise accuracy | |\n|---|---|\n"
        f"| reward model | {accuracy} |\n| longer answer wins | {length_acc} |\n"
        f"| SFT log-likelihood (sum / per token) | {sft_acc['sum']} / {sft_acc['per_token']} |\n"
    )
    metadata = {**plan.as_metadata(), "settings": settings.as_metadata(), "data": derivation, "dropped_pairs": dict(dropped),
                "train_seconds": round(train_seconds, 2), "seconds": round(time.perf_counter() - started, 2), **tracker.metadata()}
    return StageOutput(stats=stats, preview=preview, metadata=metadata)
