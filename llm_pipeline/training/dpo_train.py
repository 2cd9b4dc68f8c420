"""DPO with TRL's DPOTrainer, without its waste: shared-prompt rows and reference log-probs computed once.

`PackedDPOTrainer` keeps DPOTrainer's loop, logging, evaluation and checkpointing, and replaces how a batch is
scored: each pair is one row (`dpo_pairs`), and the reference log-probs come from the batch (cached per pair by
`ref_cache`) instead of a reference forward each step. The reference is the policy itself before the first update
(the SFT model) or the same model with its adapter disabled (the base): never a second model in memory.

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


@torch.no_grad()
def reference_logps(model, tokenized: list[dict], collator, batch_size: int, reference: str) -> tuple[list[float], list[float]]:
    """Summed reference log-probs of each pair's answers, in order; batches sorted by length to keep padding low."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(tokenized)), key=lambda i: tokenized[i]["length"])
    chosen, rejected = [0.0] * len(tokenized), [0.0] * len(tokenized)
    with reference_mode(model, reference):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            c, r, _, _ = dpo_pairs.answer_logps(model, collator([tokenized[i] for i in idx]))
            for i, cv, rv in zip(idx, c.tolist(), r.tolist()):
                chosen[i], rejected[i] = cv, rv
    model.train(was_training)
    return chosen, rejected


def make_trainer_class():
    """The trainer class, built on first use so that importing this module does not import TRL."""
    from trl import DPOTrainer

    class PackedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # tokenized and given reference log-probs by the stage (dpo_pairs, ref_cache)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            chosen, rejected, n_c, n_r = dpo_pairs.answer_logps(model, inputs)
            ref_c, ref_r = inputs["ref_chosen_logps"].to(chosen), inputs["ref_rejected_logps"].to(rejected)
            c_ratio, r_ratio = chosen - ref_c, rejected - ref_r
            loss = dpo_loss(self.loss_types[0], self.beta, c_ratio, r_ratio, n_c, n_r).mean()
            cr, rr = self.beta * c_ratio.detach(), self.beta * r_ratio.detach()
            m = self._metrics[mode]
            m["rewards/chosen"].append(cr.mean().item())
            m["rewards/rejected"].append(rr.mean().item())
            m["rewards/accuracies"].append((cr > rr).float().mean().item())
            m["rewards/margins"].append((cr - rr).mean().item())
            m["logps/chosen"].append(chosen.detach().mean().item())
            m["logps/rejected"].append(rejected.detach().mean().item())
            if mode == "train":
                self._total_train_tokens += int((inputs["segment"] != dpo_pairs.PAD).sum())
            m["num_tokens"] = [self._total_train_tokens]
            return (loss, {"chosen_logps": chosen}) if return_outputs else loss

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
