"""DPO with TRL's DPOTrainer, without its waste: shared-prompt rows and reference log-probs computed once.

`PackedDPOTrainer` keeps DPOTrainer's loop, logging, evaluation and checkpointing, and replaces how a batch is
scored: each pair is one row (`dpo_pairs`), and the reference log-probs come from the batch (cached per pair by
`ref_cache`) instead of a reference forward each step. The reference is the policy itself before the first update
(the SFT model) or the same model with its adapter disabled (the base): never a second model in memory. Memory stays
near the model's own size: answer log-probs come from vocabulary chunks (`dpo_pairs.token_logps`, never a batch's
full logits), and on a CPU a batch is backpropagated a few rows at a time (`rows_per_pass`), with the same gradients.

    trainer = make_trainer(model, tokenizer, args, train_pairs, eval_pairs, beta=0.1, loss_type="sigmoid")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from llm_pipeline.training import dpo_pairs

LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def dpo_loss(loss_type: str, beta: float, chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor,
             n_chosen: torch.Tensor, n_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair loss from the policy/reference log-ratios of both answers."""
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":  # DPO (Rafailov et al. 2023)
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":  # SLiC
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":  # IPO on per-token averages, as TRL does (keeps beta comparable across answer lengths)
        avg = chosen_ratio / n_chosen.clamp(min=1) - rejected_ratio / n_rejected.clamp(min=1)
        return (avg - 1 / (2 * beta)) ** 2
    raise ValueError(f"dpo_model.loss_type must be one of {LOSS_TYPES}, not {loss_type!r}")


def with_sft_term(losses: torch.Tensor, chosen_logps: torch.Tensor, n_chosen: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pair DPO losses plus `weight` x the chosen answer's mean NLL per token (RPO): the policy keeps raising the
    likelihood of the chosen text instead of only widening its margin over the rejected one."""
    if not weight:
        return losses
    return losses + weight * (-chosen_logps / n_chosen.clamp(min=1).to(chosen_logps))


@contextmanager
def reference_mode(model, reference: str) -> Iterator[None]:
    """The model as the reference: unchanged (the SFT policy before training) or with its adapter disabled."""
    if reference == "base":
        if not hasattr(model, "disable_adapter"):
            raise ValueError("dpo_model.reference 'base' needs a PEFT adapter to disable; this model has none")
        with model.disable_adapter():
            yield
    else:
        yield


def can_merge(model) -> bool:
    """Whether a no-grad pass may fold the LoRA weights into the base weights: a plain LoRA adapter (not DoRA) on
    full-precision weights that are not partitioned by ZeRO-3 (4-bit weights cannot take a merge back exactly)."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", "default"))
    if config is None or getattr(config, "peft_type", None) is None or config.peft_type.value != "LORA" or getattr(config, "use_dora", False):
        return False
    return all(p.is_floating_point() and p.dtype != torch.float16 and not hasattr(p, "ds_id") for p in model.parameters())


@contextmanager
def merged(model, enabled: bool = True) -> Iterator[None]:
    """The adapter folded into the base weights for the duration (one matmul per layer instead of three: the
    reference pass of a small model ran 1.4x faster), then taken out again, in a `finally`.

    Unmerging subtracts what merging added, which in floating point leaves the base weights a rounding error away
    from where they were; training then differs (in the 6th digit of the loss) from a run that read the reference
    log-probs from the cache and never merged. So the base weights the merge touches are copied to host memory first
    and put back bit for bit: a re-run gives the same adapter whether the reference pass ran or not."""
    if not (enabled and can_merge(model)):
        yield
        return
    saved = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if ".base_layer." in name}
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in saved:
                    p.copy_(saved[name].to(p.device))
        del saved


def reference_batch_size(batch_size: int, device_type: str) -> int:
    """Pairs per reference forward: twice the training batch on a GPU (no activations are kept), the training batch
    on a CPU, where larger batches ran no faster and raised the peak."""
    return batch_size * 2 if device_type == "cuda" else batch_size


@torch.no_grad()
def reference_logps(model, tokenized: list[dict], collator, batch_size: int, reference: str,
                    autocast_dtype: torch.dtype | None = None) -> tuple[list[float], list[float]]:
    """Summed reference log-probs of each pair's answers, in order; batches sorted by length to keep padding low.
    Runs where the model is; on a GPU under `autocast_dtype` (the training precision, so that the policy's first
    log-probs match the reference's)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device  # a 4-bit (QLoRA) base is placed on the GPU when it loads
    order = sorted(range(len(tokenized)), key=lambda i: tokenized[i]["length"])
    chosen, rejected = [0.0] * len(tokenized), [0.0] * len(tokenized)
    with reference_mode(model, reference), merged(model, enabled=reference == "sft"):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collator([tokenized[i] for i in idx]).items()}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None and device.type == "cuda"):
                c, r, _, _ = dpo_pairs.answer_logps(model, batch)
            for i, cv, rv in zip(idx, c.tolist(), r.tolist()):
                chosen[i], rejected[i] = cv, rv
    model.train(was_training)
    return chosen, rejected


# On a CPU a batch is trained in passes of a few rows whose saved activations stay under this many bytes: every
# pair's loss depends on its own row only, so the passes' summed gradients are the batch's, and peak memory follows
# one pass instead of the batch (a 135M model at batch 4 kept ~1.8 GB of activations for one step). Matmuls on a
# CPU are nearly as fast on two or three ~200-token rows as on eight: with a small Llama (hidden 256, fp32, 20 steps
# of 8 pairs) whole batches peaked at 753 MB in 4.9 s, passes of three rows at 594 MB in 5.1 s, one row at a time at
# 528 MB in 5.7 s. 48 MB takes two such rows.
# A GPU runs the whole batch at once.
PASS_ACTIVATION_BYTES = 48 * 2**20


def activation_bytes_per_token(config) -> int:
    """A rough count of what one token keeps for backward in a decoder layer stack (fp32): about ten hidden-size
    tensors (norm inputs and outputs, q/k/v, attention output) and four of the MLP's width per layer."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = config.hidden_size
    width = getattr(config, "intermediate_size", None) or 4 * hidden
    return config.num_hidden_layers * (10 * hidden + 4 * width) * 4


def rows_per_pass(config, row_width: int, device_type: str, budget: int = PASS_ACTIVATION_BYTES) -> int | None:
    """How many rows one forward/backward pass takes on a CPU (at least one); None (the whole batch) elsewhere."""
    if device_type != "cpu":
        return None
    return max(1, budget // max(1, row_width * activation_bytes_per_token(config)))


def pass_tokens(config, tokenized: list[dict], batch_size: int, device_type: str) -> int:
    """Tokens in one forward pass of training: a batch (on a CPU, `rows_per_pass` of its rows) of mean-length rows."""
    row = max(1, round(sum(t["length"] for t in tokenized) / max(1, len(tokenized))))
    return min(batch_size, rows_per_pass(config, row, device_type) or batch_size) * row


def make_trainer_class():
    """The trainer class, built on first use so that importing this module does not import TRL."""
    from trl import DPOTrainer

    class PackedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # tokenized and given reference log-probs by the stage (dpo_pairs, ref_cache)

        def _pair_losses(self, model, inputs):
            """Per-pair losses, and the detached terms the metrics are made of."""
            chosen, rejected, n_c, n_r = dpo_pairs.answer_logps(model, inputs)
            ref_c, ref_r = inputs["ref_chosen_logps"].to(chosen), inputs["ref_rejected_logps"].to(rejected)
            c_ratio, r_ratio = chosen - ref_c, rejected - ref_r
            losses = with_sft_term(dpo_loss(self.loss_types[0], self.beta, c_ratio, r_ratio, n_c, n_r), chosen, n_c, getattr(self, "sft_weight", 0.0))
            terms = torch.stack([chosen.detach(), rejected.detach(), self.beta * c_ratio.detach(), self.beta * r_ratio.detach()])
            return losses, terms

        def _record(self, mode: str, terms: torch.Tensor, inputs) -> None:
            chosen, rejected, cr, rr = terms
            m = self._metrics[mode]
            m["rewards/chosen"].append(cr.mean().item())
            m["rewards/rejected"].append(rr.mean().item())
            m["rewards/accuracies"].append((cr > rr).float().mean().item())
            m["rewards/margins"].append((cr - rr).mean().item())
            m["logps/chosen"].append(chosen.mean().item())
            m["logps/rejected"].append(rejected.mean().item())
            if mode == "train":
                self._total_train_tokens += int((inputs["segment"] != dpo_pairs.PAD).sum())
            m["num_tokens"] = [self._total_train_tokens]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            losses, terms = self._pair_losses(model, inputs)
            self._record("train" if self.model.training else "eval", terms, inputs)
            loss = losses.mean()
            return (loss, {"chosen_logps": terms[0]}) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            """The batch in passes of `rows_per_pass` rows, each pass's loss weighted by its share of the pairs and
            backpropagated at once, so that only one pass's activations are alive at a time."""
            rows = rows_per_pass(self.model.config, inputs["input_ids"].shape[1], self.args.device.type)
            if rows is None or rows >= inputs["input_ids"].shape[0] or self.accelerator.num_processes > 1 or self.is_deepspeed_enabled:
                return super().training_step(model, inputs, num_items_in_batch)
            model.train()
            if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
                self.optimizer.train()
            inputs = self._prepare_inputs(inputs)
            n = inputs["input_ids"].shape[0]
            total, all_terms = torch.zeros((), device=self.args.device), []
            for part in dpo_pairs.split_rows(inputs, rows):
                with self.maybe_activation_offload_context, self.compute_loss_context_manager():
                    losses, terms = self._pair_losses(model, part)
                loss = losses.sum() / (n * self.current_gradient_accumulation_steps)
                self.accelerator.backward(loss)
                total += loss.detach()
                all_terms.append(terms)
            self._record("train", torch.cat(all_terms, dim=1), inputs)
            return total

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

    return PackedDPOTrainer


def make_trainer(model, tokenizer, args, train, held, collator, callbacks=()):
    from datasets import Dataset

    cls = make_trainer_class()
    trainer = cls(
        model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(held) if held else None, processing_class=tokenizer, data_collator=collator,
        callbacks=list(callbacks),
    )
    # TRL keeps a frozen copy of a pretrained adapter as its reference; ours comes from the cached log-probs.
    peft_config = getattr(trainer.model, "peft_config", {})
    if "ref" in peft_config:
        trainer.model.delete_adapter("ref")
    return trainer
