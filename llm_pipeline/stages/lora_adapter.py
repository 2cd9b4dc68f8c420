"""Stage `lora_adapter`: supervised fine-tuning of the base checkpoint with a PEFT adapter (TRL SFTTrainer).

    llm-pipeline stage lora_adapter

SFT data is the user's files (`lora_adapter.data`) or, when none are given, prompt/completion examples derived from
the train-split documents; held-out examples come from eval-split documents. Loss is on the completion only by
default. The adapter loads with plain `PeftModel.from_pretrained(base, <this folder>)`. method=full trains every
weight and saves a whole model instead of an adapter.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import write_json
from llm_pipeline.security import confine, load_pretrained
from llm_pipeline.stages import StageOutput
from llm_pipeline.training import finetune, sft_data
from llm_pipeline.training.device import cpu_threads_for, peak_rss_mb, plan_device, seed_everything
from llm_pipeline.training.tracking import report_to, tracked_run

ASSET = "lora_adapter"


def build_examples(cfg: PipelineConfig, shards: Path, tokenizer) -> tuple[list[dict], list[dict], dict]:
    lc = cfg.lora_adapter
    if lc.data:
        train, held = sft_data.read_user_examples([confine(cfg, p, "lora_adapter.data") for p in lc.data], lc.data_format)
        return train, held, {"derivation": "files", "files": list(lc.data)}
    skipped: Counter = Counter()
    train, held = [], []
    eval_per_domain = max(1, lc.examples_per_domain // 5)  # a fifth as many held out: enough for a stable eval loss
    for domain in cfg.domain_names:
        train += sft_data.derive_examples(shards, domain, "train", lc.examples_per_domain, cfg.seed, skipped)
        held += sft_data.derive_examples(shards, domain, "eval", eval_per_domain, cfg.seed, skipped)
    train = sft_data.fit_all(train, tokenizer, lc.max_length, skipped)
    held = sft_data.fit_all(held, tokenizer, lc.max_length, skipped)
    if not train:
        raise sft_data.SftDataError(f"no SFT examples could be derived from the train split (skipped: {dict(skipped)})")
    return train, held, {"derivation": "templates", "templates": list(sft_data.TEMPLATES), "skipped": dict(skipped)}


def _check_shape(records: list[dict]) -> None:
    shapes = {tuple(sorted(k for k in r if k in ("prompt", "completion", "messages", "text"))) for r in records}
    if len(shapes) > 1:
        raise sft_data.SftDataError(f"SFT files mix formats {sorted(shapes)}; give files of one format")


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    lc = cfg.lora_adapter
    plan = plan_device("auto")
    pcfg = finetune.peft_config(lc, plan)  # fails fast on methods this device cannot run
    lr, lr_reason = finetune.learning_rate(lc.learning_rate, lc.method, finetune.SFT_LEARNING_RATES)

    seed_everything(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(inputs["base_checkpoint"])
    train, held, derivation = build_examples(cfg, inputs["deduped_shards"], tokenizer)
    _check_shape(train + held)
    sft_data.write_jsonl(output_dir / "sft_train.jsonl", train)
    sft_data.write_jsonl(output_dir / "sft_eval.jsonl", held)

    base = load_pretrained(AutoModelForCausalLM, inputs["base_checkpoint"], dtype=torch.float32, trust_remote_code=cfg.base_checkpoint.trust_remote_code)
    base.config.use_cache = False
    model = get_peft_model(base, pcfg) if pcfg is not None else base
    counts = finetune.parameter_counts(model)

    work = cfg.data_path / ".checkpoints" / ASSET
    args = SFTConfig(
        **finetune.common_args(work, lc.max_steps, lc.batch_size, lr, cfg.seed, report_to(cfg), f"{cfg.name}-{ASSET}"),
        **finetune.trainer_precision(plan),
        max_length=lc.max_length,
        completion_only_loss=lc.completion_only_loss,
        packing=lc.packing,
        # A PeftModel's forward hides `labels` from the Trainer's signature check; without this no eval loss.
        label_names=["labels"],
    )
    to_ds = lambda recs: Dataset.from_list([sft_data.as_conversation(r) for r in recs])  # noqa: E731
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=to_ds(train), eval_dataset=to_ds(held) if held else None, processing_class=tokenizer,
    )
    if not held:
        trainer.args.eval_strategy = "no"
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; the log is saved to a file instead
    run_config = {**lc.model_dump(mode="json"), "learning_rate": lr, **plan.as_metadata()}
    started = time.perf_counter()
    with tracked_run(cfg, ASSET, run_config) as tracker, cpu_threads_for(counts["total_params"], plan) as threads:
        trainer.train()
        eval_metrics = finetune.final_eval(trainer) if held else {}
    seconds = time.perf_counter() - started
    log = trainer.state.log_history

    model.save_pretrained(output_dir)  # adapter_config.json + adapter_model.safetensors (whole model for method=full)
    tokenizer.save_pretrained(output_dir)
    write_json(output_dir / "training_log.json", log)
    shutil.rmtree(work, ignore_errors=True)

    stats = {
        "method": lc.method,
        "examples": len(train),
        "eval_examples": len(held),
        "derivation": derivation["derivation"],
        "first_train_loss": finetune.first_logged(log, "loss"),
        "train_loss": finetune.last_logged(log, "loss"),
        "eval_loss": round(eval_metrics["eval_loss"], 5) if "eval_loss" in eval_metrics else None,
        **counts,
        "steps": trainer.state.global_step,
        "learning_rate": lr,
        "seconds": round(seconds, 3),
        "tokens_per_second": finetune.tokens_per_second(log),
        "peak_rss_mb": peak_rss_mb(),
        "precision": plan.precision,
    }
    sample = train[0]
    shown = sample.get("prompt", str(sample)[:200])
    preview = (
        f"**{lc.method}** SFT on {len(train)} examples ({derivation['derivation']}), {stats['steps']} steps, "
        f"{counts['trainable_params']:,} of {counts['total_params']:,} parameters trained; "
        f"train loss {stats['first_train_loss']} → {stats['train_loss']}, held-out loss {stats['eval_loss']}\n\n"
        f"Example ({sample.get('template')}):\n\n```\n{shown}\n→ {sample.get('completion', '')}\n```"
    )
    metadata = {**plan.as_metadata(), **threads, "learning_rate_reason": lr_reason, "data": derivation, **tracker.metadata()}
    return StageOutput(stats=stats, preview=preview, metadata=metadata)
