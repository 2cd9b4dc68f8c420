"""A reward model: the SFT model with a scalar head, scoring a prompt and answer at the answer's last token.

The model is the base checkpoint as `AutoModelForSequenceClassification` (one label: the head is `score`) with a LoRA
adapter that starts as the SFT adapter (same rank, targets and weights) and a new head; PEFT saves both (the head as
a `modules_to_save` copy), so the output loads with plain transformers and PEFT:

    base = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=1, pad_token_id=PAD)
    rm = PeftModel.from_pretrained(base, "data/reward_model")
    reward = rm(**tokenizer(chat_text, return_tensors="pt")).logits[0, 0]

where `chat_text` is the prompt and answer framed by the tokenizer's chat template (as it was trained). Training
scores both answers of a pair in one forward over the shared-prompt rows of `dpo_pairs` (the prompt is computed once);
the last chosen and the last rejected position see exactly what they would in their own sequences.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llm_pipeline.security import load_pretrained
from llm_pipeline.training import dpo_pairs


class RewardModelError(ValueError):
    """A reward model that cannot be built from what the earlier stages made."""


def _lora_config(adapter: dict | None, r: int, alpha: int):
    from peft import LoraConfig

    if adapter is None:  # a fully fine-tuned SFT model: a fresh adapter on it
        return LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear",
                          modules_to_save=["score"])
    # An SFT adapter that trained the rows of an extended vocabulary carries them as trainable tokens: the reward
    # model takes them over with the rest of the adapter (without them the SFT weights do not load).
    extra = {"trainable_token_indices": adapter["trainable_token_indices"]} if adapter.get("trainable_token_indices") else {}
    return LoraConfig(task_type="SEQ_CLS", r=adapter["r"], lora_alpha=adapter["lora_alpha"], lora_dropout=0.0,
                      target_modules=adapter["target_modules"], use_dora=bool(adapter.get("use_dora")),
                      modules_to_save=["score"], **extra)


def build_reward_model(base_dir: Path, sft_dir: Path, pad_token_id: int, *, r: int = 16, alpha: int = 32,
                       trust_remote_code: bool = False):
    """(model, init): a trainable sequence-scoring model initialised from the SFT model, and how it was."""
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    sft_dir = Path(sft_dir)
    cfg_path = sft_dir / "adapter_config.json"
    adapter = json.loads(cfg_path.read_text()) if cfg_path.exists() else None
    if adapter is not None and adapter.get("peft_type") != "LORA":
        raise RewardModelError(f"reward_model starts from a LoRA/DoRA SFT adapter or a full fine-tune; "
                               f"lora_adapter made a {adapter.get('peft_type')} adapter (use lora_adapter.method lora or dora)")
    source = base_dir if adapter is not None else sft_dir
    if adapter is None and not (sft_dir / "config.json").exists():
        raise RewardModelError(f"{sft_dir} holds neither a PEFT adapter nor a model; run lora_adapter first")
    base = load_pretrained(AutoModelForSequenceClassification, source, trust_remote_code=trust_remote_code,
                           num_labels=1, pad_token_id=pad_token_id, dtype=torch.float32)
    base.config.use_cache = False
    model = get_peft_model(base, _lora_config(adapter, r, alpha))
    if adapter is None:
        return model, "a new LoRA adapter on the fully fine-tuned SFT model, and a new scalar head"
    state = load_file(str(sft_dir / "adapter_model.safetensors"))
    # The new head is not in the SFT adapter; PEFT looks every saved module up, so it is given its own initial values.
    head = model.get_base_model().score.original_module.weight
    state.setdefault("base_model.model.score.weight", head.detach().clone())
    loaded = set_peft_model_state_dict(model, state)
    missing = [k for k in loaded.missing_keys if "lora_" in k]
    if getattr(loaded, "unexpected_keys", None) or missing:
        raise RewardModelError(f"the SFT adapter's weights do not fit the reward model (unexpected {list(loaded.unexpected_keys)[:3]}, "
                               f"missing {missing[:3]})")
    return model, "the SFT adapter's weights (continued), and a new scalar head"


def _parts(model):
    """(decoder, head) of a PEFT-wrapped or plain sequence-classification model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, inner.base_model_prefix), inner.score


def pair_rewards(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and rejected answer of each shared-prompt row (`dpo_pairs.PairCollator`), one forward."""
    decoder, head = _parts(model)
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    seg = batch["segment"]
    prompt = (seg == dpo_pairs.PROMPT).sum(dim=1)
    last_chosen = prompt + (seg == dpo_pairs.CHOSEN).sum(dim=1) - 1
    last_rejected = (seg != dpo_pairs.PAD).sum(dim=1) - 1
    rows = torch.arange(seg.shape[0], device=seg.device)
    chosen = head(hidden[rows, last_chosen]).squeeze(-1).float()
    rejected = head(hidden[rows, last_rejected]).squeeze(-1).float()
    return chosen, rejected


def chat_ids(tokenizer, prompt, answer: str, max_length: int) -> list[int]:
    """The prompt and answer framed as in training (`dpo_pairs.tokenize_pair`), cut to `max_length` tokens."""
    msgs = dpo_pairs._messages(prompt) + [{"role": "assistant", "content": str(answer)}]
    return dpo_pairs._chat(tokenizer, msgs)[:max_length]


@torch.no_grad()
def score(model, tokenizer, prompts: list, answers: list[str], max_length: int, batch_size: int = 16) -> list[float]:
    """The reward of each (prompt, answer), in order: one sequence each, scored at its last token."""
    decoder, head = _parts(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seqs = [chat_ids(tokenizer, p, a, max_length) for p, a in zip(prompts, answers)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[b, : len(seqs[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = mask.sum(dim=1) - 1
        values = head(hidden[torch.arange(len(idx), device=device), last]).squeeze(-1).float().tolist()
        for i, v in zip(idx, values):
            out[i] = v
    model.train(was_training)
    return out


def load_reward_model(base_dir: Path, rm_dir: Path, pad_token_id: int, trust_remote_code: bool = False):
    """The trained reward model, frozen, as a user would load it (plain transformers and PEFT)."""
    from transformers import AutoModelForSequenceClassification

    from llm_pipeline.security import load_adapter

    base = load_pretrained(AutoModelForSequenceClassification, base_dir, trust_remote_code=trust_remote_code,
                           num_labels=1, pad_token_id=pad_token_id, dtype=torch.float32)
    model = load_adapter(base, rm_dir).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
