"""Train one SFT adapter (or a full fine-tune) with TRL's SFTTrainer on packed rows; the lora_adapter stage calls it
once for the combined adapter and once per domain when `per_domain` is on.

    result = train_adapter(cfg, base_dir, tokenizer, train_records, eval_records, out_dir, work_dir, fingerprint)

Rows come from `sft_packing` (chat template, completion-only labels, best-fit packing, position ids restarting per
document); settings from `defaults.choose` (precision, checkpointing, threads, learning rate, warmup, with reasons).
Checkpoints go to `work_dir`; a crashed run with the same fingerprint resumes from the latest one.
"""

from __future__ import annotations

import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import write_json
from llm_pipeline.security import load_pretrained
from llm_pipeline.training import budget, defaults, embeddings, finetune, sft_packing
from llm_pipeline.training.device import DevicePlan, peak_rss_mb, seed_everything, torch_threads
from llm_pipeline.training.tracking import report_to, tracked_run

# Held-out text rows scored at each evaluation: enough for a stable loss, few enough that evaluation stays a small
# part of a short run (every held-out example is always scored).
EVAL_TEXT_ROWS = 24


def next_token_loss(model, inputs: dict) -> tuple["torch.Tensor", "torch.Tensor", int]:
    """Mean cross-entropy over the label tokens, the vocabulary projected only where a label is (not on prompts or
    padding), and the number of correct argmax predictions. TRL's tiled log-prob kernel spent over half of a small
    model's step on CPU; one plain projection of the labelled positions is several times faster there."""
    import torch
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {k: inputs[k] for k in ("attention_mask", "position_ids") if k in inputs}
    hidden = inner.get_decoder()(input_ids=inputs["input_ids"], use_cache=False, **kwargs).last_hidden_state
    target = inputs["labels"][:, 1:]
    keep = target != sft_packing.IGNORE
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep]).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2 caps logits inside its own forward, which is bypassed here
        logits = torch.tanh(logits / cap) * cap
    labels = target[keep]
    loss = F.cross_entropy(logits, labels) if labels.numel() else logits.sum() * 0.0
    return loss, (logits.argmax(-1) == labels).sum(), int(labels.numel())


def probe_eval(model, collator, rows: list[dict]) -> float:
    """Seconds one held-out row's evaluation takes, measured before training on the budget's clock.

    An evaluation's cost was guessed as half a step per batch; on SmolLM2 at a 180 s budget the final evaluation of
    4 rows took ~6x that and the stage ran 6x past its part. Held-out rows are full-length packed text where training
    rows hold short examples too, and a first forward carries warm-up: timing a real row is what tells."""
    import torch

    was_training = model.training
    device = next(model.parameters()).device
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collator(rows[:1]).items()}
    model.eval()
    try:
        t = budget.now()
        with torch.no_grad():
            float(next_token_loss(model, batch)[0])  # read back: on a GPU the forward is asynchronous until then
        return budget.now() - t
    finally:
        model.train(was_training)


def make_trainer_class():
    """SFTTrainer with `next_token_loss`; built on first use so that importing this module does not import TRL."""
    from trl import SFTTrainer

    class PackedSFTTrainer(SFTTrainer):
        use_plain_loss = True  # False for prompt-learning methods, whose forward adds virtual tokens
        lr_factor = None  # under a time budget: the multiplier from the clock (budget.lr_factor_fn)

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_factor is None or self.lr_scheduler is not None:
                return super().create_scheduler(num_training_steps, optimizer)
            from torch.optim.lr_scheduler import LambdaLR

            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, self.lr_factor)
            self._created_lr_scheduler = True
            return self.lr_scheduler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.use_plain_loss:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            loss, correct, n = next_token_loss(model, inputs)
            self._metrics[mode]["mean_token_accuracy"].append(correct.item() / n if n else 0.0)
            if mode == "train":
                self._total_train_tokens += int(inputs["input_ids"].numel())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, {"loss": loss}) if return_outputs else loss

    return PackedSFTTrainer


@dataclass
class AdapterResult:
    stats: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


def _segments(records: list[dict], tokenizer, max_length: int, completion_only: bool, dropped: Counter):
    whole = sft_packing.encode_all(records, tokenizer, completion_only)
    pieces = [p for s in whole for p in sft_packing.fit(s, max_length, dropped)]
    return whole, pieces


def build_rows(train: list[dict], held: list[dict], tokenizer, max_length: int, completion_only: bool, packing: bool) -> tuple[list[dict], list[dict], dict]:
    """Packed training and held-out rows, and the token accounting per domain (what the split holds vs what rows hold)."""
    dropped: Counter = Counter()
    whole, pieces = _segments(train, tokenizer, max_length, completion_only, dropped)
    text = [s for s in pieces if s.kind == "text"]
    examples = [s for s in pieces if s.kind == "example"]
    rows_text = sft_packing.pack(text, max_length, packing)
    rows_examples = sft_packing.pack(examples, max_length, packing)
    # The split's text would drown a few hundred instruction examples: repeat their rows so they are about half of
    # what training draws (each example is then seen a few times in a default run, as plain SFT would).
    repeat = max(1, round(len(rows_text) / len(rows_examples))) if rows_text and rows_examples else 1
    train_rows = sft_packing.as_records(rows_text + rows_examples * repeat, "train")
    _, held_pieces = _segments(held, tokenizer, max_length, completion_only, Counter())
    held_text = sft_packing.pack([s for s in held_pieces if s.kind == "text"], max_length, packing)[:EVAL_TEXT_ROWS]
    held_examples = sft_packing.pack([s for s in held_pieces if s.kind == "example"], max_length, packing)
    eval_rows = sft_packing.as_records(held_text + held_examples, "eval")
    accounting = {
        "split_tokens": dict(sft_packing.label_tokens_by_domain([s for s in whole if s.kind == "text"])),
        "packed_tokens": dict(sft_packing.label_tokens_by_domain(text)),
        "example_tokens": dict(sft_packing.label_tokens_by_domain([s for s in whole if s.kind == "example"])),
        "example_packed_tokens": dict(sft_packing.label_tokens_by_domain(examples)),
        "example_repeat": repeat,
        "dropped_tokens": dict(dropped),
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "fill": round(sum(len(r["input_ids"]) for r in train_rows) / (len(train_rows) * max_length), 4) if train_rows else 0.0,
    }
    return train_rows, eval_rows, accounting


def train_adapter(cfg: PipelineConfig, plan: DevicePlan, method: str, base_dir: Path, tokenizer, train: list[dict],
                  held: list[dict], out: Path, work: Path, fingerprint: dict, tag: str) -> AdapterResult:
    import torch
    from datasets import Dataset
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig

    lc = cfg.lora_adapter
    seed_everything(cfg.seed)
    quant = finetune.quantization_config(method)
    extra = {"quantization_config": quant} if quant is not None else {"dtype": torch.float32}
    model = load_pretrained(AutoModelForCausalLM, base_dir, trust_remote_code=cfg.base_checkpoint.trust_remote_code, **extra)
    model.config.use_cache = False
    new_rows = embeddings.added_rows(base_dir)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        new_rows += list(range(model.get_input_embeddings().num_embeddings, len(tokenizer)))
        model.resize_token_embeddings(len(tokenizer))
    if quant is not None:
        model = prepare_model_for_kbit_training(model)
    pcfg = finetune.peft_config(lc, method)
    rows_note = None
    if new_rows and pcfg is not None:
        # The rows the original model lacked (domain terms, chat turn markers) train beside the adapter, in the
        # embedding and the output layer, and are saved with it; with IA3 or prefix tuning they stay as they are.
        if getattr(pcfg, "peft_type", None) is not None and pcfg.peft_type.value == "LORA":
            pcfg.trainable_token_indices = embeddings.trainable_rows(model, sorted(set(new_rows)))
            rows_note = (f"{len(set(new_rows))} rows the original model lacked train with the adapter "
                         f"({'embedding and untied output layer' if isinstance(pcfg.trainable_token_indices, dict) else 'tied embedding'})")
        else:
            rows_note = f"{len(set(new_rows))} rows the original model lacked stay as they are: {method} trains no embedding rows"
    if pcfg is not None:
        model = get_peft_model(model, pcfg)
    counts = finetune.parameter_counts(model)

    # Prefix tuning prepends learned keys/values to every sequence, which position-restarting rows cannot share.
    packing = lc.packing and method != "prefix"
    position_packing, packing_reason = sft_packing.supports_position_packing(model)
    if not packing:
        position_packing, packing_reason = False, ("prefix tuning: one example per row" if method == "prefix" else "packing off in config") + ", padded"
    train_rows, eval_rows, accounting = build_rows(train, held, tokenizer, lc.max_length, lc.completion_only_loss, packing)
    if not train_rows:
        raise finetune.FinetuneError(f"{tag}: no SFT training rows (every record was empty)")

    settings = defaults.choose(
        "sft", method, plan, counts["total_params"],
        defaults.training_memory_bytes(model.config, counts["total_params"], counts["trainable_params"], lc.batch_size, lc.max_length, plan.precision),
        learning_rate=lc.learning_rate, warmup_ratio=lc.warmup_ratio, gradient_checkpointing=lc.gradient_checkpointing, cpu_threads=lc.cpu_threads,
        op_macs=defaults.projection_macs(model.config, lc.batch_size * lc.max_length),  # packed rows are full length
    )
    settings.set("packing", packing, packing_reason if packing else packing_reason)
    if rows_note is not None:
        settings.set("new_token_rows", len(set(new_rows)), rows_note)
    settings.set("position_packing", position_packing, packing_reason)
    if settings.value("gradient_checkpointing") and pcfg is not None:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input when the embeddings are frozen

    collator = sft_packing.PackedCollator(pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id, position_packing=position_packing)
    resume = finetune.prepare_work_dir(work, fingerprint)
    budget_seconds, budget_why = budget.stage_budget(cfg, "lora_adapter", {"base_checkpoint": base_dir})
    cap = lc.max_steps if lc.max_steps is not None else (None if budget_seconds is not None else lc.DEFAULT_STEPS)
    clock = None
    if budget_seconds is not None:
        clock = budget.Clock(budget_seconds, spent=budget.Clock.spent_in(resume))
        settings.set("schedule", f"{budget_seconds:g} s budget" + (f", at most {cap} steps" if cap else ""),
                     f"{budget_why}: warmup, cosine decay, evaluations and checkpoints follow the share of the "
                     "budget spent" + (" (or of max_steps, when further along)" if cap else "") + "; the run stops before a step "
                     "that would end past it")
    else:
        settings.set("schedule", f"{cap} steps", "max_steps" + (" set in config" if lc.max_steps is not None else
                     f" default ({lc.DEFAULT_STEPS}); set lora_adapter.max_train_seconds to train for a time instead"))
    args = SFTConfig(
        **finetune.trainer_args(settings, work, max_steps=cap or budget.BUDGET_STEP_CAP, batch_size=lc.batch_size, seed=cfg.seed,
                                report_to=report_to(cfg), run_name=f"{cfg.name}-lora_adapter-{tag}", eval_every=lc.eval_every,
                                checkpoint_every=lc.checkpoint_every, budgeted=clock is not None,
                                early_stopping=lc.early_stopping_patience is not None and bool(eval_rows)),
        max_length=None,  # rows are already cut to lora_adapter.max_length
        packing=False,  # packed here, with documents kept apart
        dataset_kwargs={"skip_prepare_dataset": True},
        label_names=["labels"],  # a PeftModel's forward hides `labels` from the Trainer's signature check
    )
    if not eval_rows:
        args.eval_strategy = "no"
    callbacks = [EarlyStoppingCallback(lc.early_stopping_patience)] if args.load_best_model_at_end else []
    budget_cb = None
    full_eval = Dataset.from_list(eval_rows) if eval_rows else None
    if clock is not None:  # evaluations at shares of the budget unless eval_every sets them in steps
        # Each evaluation scores the held-out rows it can afford within its part of the budget's evaluation share.
        budget_cb = budget.budget_callback(clock, eval_fractions=(1 / 3, 2 / 3), evaluate=lc.eval_every is None and bool(eval_rows),
                                           eval_rows=len(eval_rows), set_eval_rows=lambda keep: setattr(trainer, "eval_dataset", full_eval.select(keep)))
        callbacks.append(budget_cb)
    timer = finetune.step_timer_callback()
    callbacks.append(timer)
    callbacks.append(finetune.progress_callback("lora_adapter" if tag == "combined" else f"lora_adapter[{tag}]"))
    trainer = make_trainer_class()(
        model=model, args=args, train_dataset=Dataset.from_list(train_rows), eval_dataset=full_eval,
        processing_class=tokenizer, data_collator=collator, callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the log is saved to a file instead
    trainer.use_plain_loss = method != "prefix"
    if clock is not None:
        trainer.lr_factor = budget.lr_factor_fn(clock, cap, settings.value("warmup_ratio"))
    run_config = {**lc.model_dump(mode="json"), **settings.values(), "adapter": tag, "method_run": method}
    started = time.perf_counter()
    with tracked_run(cfg, f"lora_adapter-{tag}" if tag != "combined" else "lora_adapter", run_config) as tracker, torch_threads(settings.value("cpu_threads")):
        if clock is not None:
            clock.start()  # the budget is seconds of train(), the Trainer's own setup included
        if budget_cb is not None and budget_cb.total_rows and trainer.use_plain_loss and not getattr(trainer, "is_deepspeed_enabled", False):
            # Timed on the clock: what the evaluations may score, and the final one's reserve, follow from it.
            budget_cb.probed(1, probe_eval(model, collator, eval_rows))
        trainer.train(resume_from_checkpoint=resume)
        train_seconds = time.perf_counter() - started
        eval_metrics = finetune.final_eval(trainer) if eval_rows else {}
        # The final evaluation counts against the budget too (it ran inside train() unless early stopping reloads the
        # best weights and scores them again here).
        budget_spent = round(clock.spent(), 3) if clock is not None else None
        log = trainer.state.log_history
        steps_run = trainer.state.global_step - (int(Path(resume).name.split("-")[1]) if resume else 0)
        trained = dict(collator.trained(steps_run))
        input_tokens = sum(trained.values())
        summary = {
            "tokens_per_second": round(input_tokens / train_seconds, 1) if train_seconds else None,
            "peak_rss_mb": peak_rss_mb(), "trainable_share": counts["trainable_share"],
        }
        tracker.log(summary)
        tracker.summary(summary)
    seconds = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    if getattr(trainer, "is_deepspeed_enabled", False):
        # Under ZeRO-3 each rank holds a shard of every weight: the Trainer gathers them before writing (a plain
        # save_pretrained would write empty tensors).
        trainer.save_model(str(out))
    else:
        model.save_pretrained(out)  # adapter_config.json + adapter_model.safetensors (a whole model for method=full)
    tokenizer.save_pretrained(out)
    write_json(out / "training_log.json", log)
    if lc.merge and pcfg is not None and method in ("lora", "dora", "ia3"):
        finetune.merge_export(model, tokenizer, out / "merged")
    shutil.rmtree(work, ignore_errors=True)

    by_domain = {}
    for d in sorted(set(accounting["split_tokens"]) | set(accounting["example_tokens"])):
        by_domain[d] = {
            "split_tokens": accounting["split_tokens"].get(d, 0),
            "packed_tokens": accounting["packed_tokens"].get(d, 0),
            "trained_tokens": trained.get(f"text:{d}", 0),
            "example_tokens": accounting["example_tokens"].get(d, 0),
            "example_trained_tokens": trained.get(f"example:{d}", 0),
        }
    stats = {
        "method": method,
        "first_train_loss": finetune.first_logged(log, "loss"),
        "train_loss": finetune.last_logged(log, "loss"),
        "eval_loss": round(eval_metrics["eval_loss"], 5) if "eval_loss" in eval_metrics else None,
        "eval_perplexity": round(math.exp(min(eval_metrics["eval_loss"], 50)), 3) if "eval_loss" in eval_metrics else None,
        **counts,
        "steps": trainer.state.global_step,
        "stopped_by": ("budget" if budget_cb is not None and budget_cb.stopped_by_budget else
                       "max_steps" if trainer.state.global_step >= (cap or budget.BUDGET_STEP_CAP) else "early_stopping"),
        "budget_seconds": budget_seconds,
        "budget_spent_seconds": budget_spent,
        # Held-out rows: how many each evaluation scored of those there are (fewer under a budget, to keep the
        # evaluations within budget.MAX_EVAL_SHARE of it), and the seconds the evaluations took.
        "eval_rows": len(eval_rows),
        "eval_rows_scored": budget_cb.scored_rows if budget_cb is not None and budget_cb.total_rows else len(eval_rows),
        "eval_seconds": round(budget_cb.eval_seconds_total, 3) if budget_cb is not None else None,
        "evals_skipped": budget_cb.evals_skipped if budget_cb is not None else 0,
        # One held-out row timed before training (counted in eval_seconds): what sized the evaluations and the reserve.
        "eval_probe_seconds": round(budget_cb.probe_seconds, 3) if budget_cb is not None and budget_cb.probe_seconds is not None else None,
        "resumed_from_step": int(Path(resume).name.split("-")[1]) if resume else None,
        "learning_rate": settings.value("learning_rate"),
        "seconds": round(seconds, 3),
        "train_seconds": round(train_seconds, 3),
        **finetune.step_seconds(timer.durations),
        "tokens_trained": input_tokens,
        "tokens_per_second": summary["tokens_per_second"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "precision": settings.value("precision"),
        "train_rows": accounting["train_rows"],
        "row_fill": accounting["fill"],
    }
    metadata = {"settings": settings.as_metadata(), "tokens": by_domain, "packing": {k: accounting[k] for k in ("example_repeat", "dropped_tokens", "train_rows", "eval_rows", "fill")}}
    # On disk too (metadata only reaches Dagster): the eval report shows what each model's compute bought.
    write_json(out / "training_summary.json", {**metadata, "seconds": stats["seconds"], "tokens_trained": input_tokens, "steps": stats["steps"]})
    return AdapterResult(stats=stats, metadata={**metadata, **tracker.metadata()})
