"""Stage `dpo_model`: align the SFT model with DPO (TRL DPOTrainer), training the SFT adapter further.

    llm-pipeline stage dpo_model

The policy is the base checkpoint with the lora_adapter loaded trainable. With `ref_model=None` TRL freezes a copy
of that adapter as the reference (an adapter, not a second model), so DPO measures against the SFT model. Pairs are
the user's files (`dpo_model.data`) or synthetic pairs from the corpus. The output adapter holds SFT+DPO and loads
with `PeftModel.from_pretrained(base, <this folder>)`; `serving_manifest.json` names everything needed to serve it.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import dvc_hash, file_md5, write_json
from llm_pipeline.security import confine, load_adapter, load_pretrained
from llm_pipeline.stages import StageOutput
from llm_pipeline.training import finetune, preference_data
from llm_pipeline.training.device import cpu_threads_for, peak_rss_mb, plan_device, seed_everything
from llm_pipeline.training.sft_data import fit_all, write_jsonl
from llm_pipeline.training.tracking import report_to, tracked_run

ASSET = "dpo_model"


def build_pairs(cfg: PipelineConfig, shards: Path, model, tokenizer) -> tuple[list[dict], list[dict], dict]:
    dc = cfg.dpo_model
    if dc.data:
        train, held = preference_data.read_user_pairs([confine(cfg, p, "dpo_model.data") for p in dc.data])
        return train, held, {"derivation": "files", "files": list(dc.data)}
    skipped: Counter = Counter()
    train, held = [], []
    held_per_domain = max(2, dc.pairs_per_domain // 5)
    for domain in cfg.domain_names:
        train += preference_data.synthetic_pairs(shards, domain, "train", dc.pairs_per_domain, cfg.seed, skipped)
        held += preference_data.synthetic_pairs(shards, domain, "eval", held_per_domain, cfg.seed, skipped)
    keys = {"answer_keys": ("chosen", "rejected")}
    train, held = fit_all(train, tokenizer, dc.max_length, skipped, **keys), fit_all(held, tokenizer, dc.max_length, skipped, **keys)
    if not train:
        raise preference_data.PreferenceDataError(f"no preference pairs could be built from the train split (skipped: {dict(skipped)})")
    if dc.rejected == "model_sample":
        preference_data.model_rejections(train + held, model, tokenizer, max_new_tokens=dc.max_length // 3)
        train, held = fit_all(train, tokenizer, dc.max_length, skipped, **keys), fit_all(held, tokenizer, dc.max_length, skipped, **keys)
    sources = Counter(p["rejected_source"] for p in train + held)
    return train, held, {"derivation": "synthetic", "rejected": dc.rejected, "rejected_sources": dict(sources), "skipped": dict(skipped)}


def serving_manifest(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, lora_dir: Path) -> dict:
    data = cfg.data_path
    rel = lambda p: str(Path(p).resolve().relative_to(data.resolve())) if Path(p).resolve().is_relative_to(data.resolve()) else str(p)  # noqa: E731
    files = {name: file_md5(folder / name) for folder, names in ((lora_dir, ("sft_train.jsonl", "sft_eval.jsonl")), (output_dir, ("pairs_train.jsonl", "pairs_eval.jsonl"))) for name in names if (folder / name).exists()}
    return {
        "base_model": {"path": rel(inputs["base_checkpoint"]), "hash": dvc_hash(inputs["base_checkpoint"])},
        "tokenizer": {"path": rel(inputs["base_checkpoint"]), "note": "the tokenizer is saved beside the base model and beside each adapter"},
        # The DPO adapter continues the SFT adapter's weights: serving needs the base plus this one adapter.
        "adapters": [{"name": ASSET, "path": ASSET, "method": cfg.lora_adapter.method, "derived_from": rel(lora_dir)}],
        "sft_adapter": {"path": rel(lora_dir), "hash": dvc_hash(lora_dir)},
        "data_versions": {**files, "deduped_shards": dvc_hash(inputs["deduped_shards"])},
        "load": "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model.path), adapters[0].path)",
    }


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    dc, lc = cfg.dpo_model, cfg.lora_adapter
    lora_dir = inputs["lora_adapter"]
    if not (lora_dir / "adapter_config.json").exists():
        raise finetune.FinetuneError(f"{lora_dir} holds no PEFT adapter (adapter_config.json); DPO trains the SFT adapter further")
    plan = plan_device("auto")
    lr, lr_reason = finetune.learning_rate(dc.learning_rate, lc.method, finetune.DPO_LEARNING_RATES)

    seed_everything(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(lora_dir)
    base = load_pretrained(AutoModelForCausalLM, inputs["base_checkpoint"], dtype=torch.float32, trust_remote_code=cfg.base_checkpoint.trust_remote_code)
    base.config.use_cache = False
    model = load_adapter(base, lora_dir, is_trainable=True)

    train, held, derivation = build_pairs(cfg, inputs["deduped_shards"], model, tokenizer)
    write_jsonl(output_dir / "pairs_train.jsonl", train)
    write_jsonl(output_dir / "pairs_eval.jsonl", held)

    work = cfg.data_path / ".checkpoints" / ASSET
    args = DPOConfig(
        **finetune.common_args(work, dc.max_steps, dc.batch_size, lr, cfg.seed, report_to(cfg), f"{cfg.name}-{ASSET}"),
        **finetune.trainer_precision(plan),
        beta=dc.beta,
        loss_type=dc.loss_type,
        max_length=dc.max_length,
    )
    if not held:
        args.eval_strategy = "no"
    to_ds = lambda recs: Dataset.from_list([preference_data.as_conversation(r) for r in recs])  # noqa: E731
    trainer = DPOTrainer(
        model=model, ref_model=None, args=args, train_dataset=to_ds(train), eval_dataset=to_ds(held) if held else None,
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; the log is saved to a file instead
    counts = finetune.parameter_counts(trainer.model)
    run_config = {**dc.model_dump(mode="json"), "learning_rate": lr, **plan.as_metadata()}
    started = time.perf_counter()
    with tracked_run(cfg, ASSET, run_config) as tracker, cpu_threads_for(counts["total_params"], plan) as threads:
        trainer.train()
        eval_metrics = finetune.final_eval(trainer) if held else {}
    seconds = time.perf_counter() - started
    log = trainer.state.log_history

    # Only the trained adapter: the frozen "ref" copy TRL added is training scaffolding, not part of the model.
    trainer.model.save_pretrained(output_dir, selected_adapters=["default"])
    tokenizer.save_pretrained(output_dir)
    write_json(output_dir / "training_log.json", log)
    shutil.rmtree(work, ignore_errors=True)
    write_json(output_dir / "serving_manifest.json", serving_manifest(cfg, inputs, output_dir, lora_dir))

    stats = {
        "pairs": len(train),
        "eval_pairs": len(held),
        "derivation": derivation["derivation"],
        "train_loss": finetune.last_logged(log, "loss"),
        "first_train_loss": finetune.first_logged(log, "loss"),
        "rewards_accuracies": finetune.last_logged(log, "rewards/accuracies"),
        "rewards_margins": finetune.last_logged(log, "rewards/margins"),
        "eval_loss": round(eval_metrics["eval_loss"], 5) if "eval_loss" in eval_metrics else None,
        "eval_rewards_accuracies": round(eval_metrics["eval_rewards/accuracies"], 5) if "eval_rewards/accuracies" in eval_metrics else None,
        "eval_rewards_margins": round(eval_metrics["eval_rewards/margins"], 5) if "eval_rewards/margins" in eval_metrics else None,
        "steps": trainer.state.global_step,
        "learning_rate": lr,
        "beta": dc.beta,
        "seconds": round(seconds, 3),
        "peak_rss_mb": peak_rss_mb(),
        "trainable_params": counts["trainable_params"],
        "precision": plan.precision,
    }
    sample = train[0]
    preview = (
        f"DPO ({dc.loss_type}, beta {dc.beta}) on {len(train)} pairs ({derivation['derivation']}), {stats['steps']} steps; "
        f"loss {stats['first_train_loss']} → {stats['train_loss']}, reward accuracy {stats['rewards_accuracies']}, "
        f"margin {stats['rewards_margins']}; held-out accuracy {stats['eval_rewards_accuracies']}\n\n"
        f"Pair ({sample['rejected_source']}):\n\n```\n{sample['prompt']}\n+ {sample['chosen']}\n- {sample['rejected']}\n```"
    )
    metadata = {
        **plan.as_metadata(), "learning_rate_reason": lr_reason, "data": derivation,
        "reference": "frozen copy of the SFT adapter (TRL adds a 'ref' adapter; no second model in memory)",
        **tracker.metadata(),
    }
    return StageOutput(stats=stats, preview=preview, metadata=metadata)
