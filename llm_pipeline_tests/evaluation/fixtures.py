"""Tiny upstream outputs for the eval report: a tokenizer, a 1-layer Llama, two LoRA adapters and deduped shards.

Everything is built inline in a temp folder with the real libraries (tokenizers, transformers, peft, pyarrow): no
download. The adapters are untrained but randomly initialised, so base, SFT and DPO give different numbers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import MANIFEST, ShardWriter, write_json

DOMAINS = {
    "legal": ["contract", "tenant", "landlord", "clause", "liability", "agreement", "court", "statute", "party", "breach"],
    "medicine": ["patient", "dosage", "diagnosis", "clinical", "symptom", "therapy", "infection", "treatment", "fever", "vaccine"],
}
GLUE = ["the", "of", "and", "a", "to", "is", "in", "for", "with", "shall", "may", "be", "on", "by", "each"]
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"]
# The same framing the SFT and DPO stages train with: a user turn, then the assistant's answer closed by EOS.
CHAT = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% else %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# A sentence planted in one training and one held-out document: the contamination check must find it.
PLANTED = "the tenant shall return every key to the landlord on the final day of the lease"
# A PII canary that redaction "missed": planted in one medicine training document when asked for.
CANARY = "Leontyne Harrowgate"


def sentence(rng: random.Random, domain: str) -> str:
    n = rng.randint(6, 12)
    return " ".join(rng.choice(DOMAINS[domain]) if rng.random() < 0.5 else rng.choice(GLUE) for _ in range(n)).capitalize() + "."


def document(rng: random.Random, domain: str) -> str:
    return " ".join(sentence(rng, domain) for _ in range(rng.randint(3, 6)))


def make_tokenizer(texts: list[str], vocab_size: int = 200) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")
    fast.chat_template = CHAT
    return fast


def make_model(vocab: int, max_positions: int = 64, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=max_positions, eos_token_id=0, pad_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(config).eval()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _finish(folder: Path, stage: str, stats: dict | None = None) -> None:
    write_json(folder / "stats.json", stats or {})
    write_json(folder / MANIFEST, {"stage": stage})


def _adapter(base_dir: Path, out: Path, seed: int) -> None:
    torch.manual_seed(seed)
    base = LlamaForCausalLM.from_pretrained(str(base_dir))
    # init_lora_weights=False: random B as well as A, so the untrained adapter changes the model's outputs.
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(str(out))


def _chosen(stage: str) -> dict:
    """Settings with reasons as the SFT and DPO stages record them (the real chooser, on this machine)."""
    from llm_pipeline.training import defaults
    from llm_pipeline.training.device import plan_device

    return defaults.choose(stage, "lora", plan_device(), 60_000, 10**6).as_metadata()


def _training_records(base_dir: Path, lora_dir: Path, dpo_dir: Path) -> None:
    """stats.json / training_summary.json with the keys the training stages write (numbers made up but consistent)."""
    write_json(base_dir / "stats.json", {"source": "scratch", "steps": 30, "train_tokens": 3840, "corpus_train_tokens": 1920, "epochs": 2.0,
                                         "seconds": 2.5, "tokens_per_second": 1536.0, "precision": "fp32", "device": "cpu"})
    tokens = {d: {"split_tokens": 900, "packed_tokens": 880, "trained_tokens": 600, "example_tokens": 120, "example_trained_tokens": 240} for d in DOMAINS}
    write_json(lora_dir / "training_summary.json", {"settings": _chosen("sft"), "tokens": tokens, "seconds": 3.0, "tokens_trained": 2400, "steps": 10,
                                                    "packing": {"example_repeat": 2, "dropped_tokens": {}, "train_rows": 12, "eval_rows": 4, "fill": 0.9}})
    write_json(lora_dir / "stats.json", {"method": "lora", "steps": 10, "seconds": 3.0, "train_seconds": 2.6, "tokens_trained": 2400, "tokens_per_second": 923.1})
    write_json(dpo_dir / "training_summary.json", {"settings": _chosen("dpo"), "dropped_pairs": {"too_long": 1}, "pairs": 24, "steps": 8, "seconds": 1.5, "tokens_trained": 3000})
    write_json(dpo_dir / "stats.json", {"pairs": 24, "steps": 8, "seconds": 1.5, "train_seconds": 1.2, "reference_seconds": 0.2, "tokens_per_second": 2500.0})


def build_upstream(data_dir: Path, docs_per_domain: int = 16, with_pairs_eval: bool = True, plant_canary: bool = False,
                   training_records: bool = True) -> dict[str, Path]:
    """Every input folder eval_report reads, each finished with a `_manifest.json` as the runner expects."""
    rng = random.Random(0)
    data_dir = Path(data_dir)
    all_texts, sft_rows, pair_rows = [], [], []
    shards = data_dir / "deduped_shards"
    for domain in DOMAINS:
        with ShardWriter(shards / domain, max_rows=10) as w:
            for i in range(docs_per_domain):
                split = "eval" if i % 4 == 0 else "train"
                text = document(rng, domain)
                if domain == "legal" and i in (0, 1):  # doc 0 is held out, doc 1 trains: the planted overlap
                    text += " " + PLANTED.capitalize() + "."
                if plant_canary and domain == "medicine" and i == 2:
                    text += f" The patient {CANARY} was discharged."
                all_texts.append(text)
                w.write({"id": f"{domain}-{i}", "domain": domain, "source": "inline", "text": text, "licence": "CC0", "language": "en", "split": split})
                prompt, completion = text.split(". ", 1)[0] + ".", sentence(rng, domain)
                sft_rows.append({"prompt": prompt, "completion": completion, "domain": domain, "split": split})
                pair_rows.append({"prompt": prompt, "chosen": completion, "rejected": completion.split()[0] + ".", "domain": domain, "split": split})
        write_json(shards / domain / MANIFEST, {"stage": "deduped_shards", "domain": domain})

    tok = make_tokenizer(all_texts)
    tok_dir = data_dir / "tokenizer"
    tok.save_pretrained(str(tok_dir))
    _finish(tok_dir, "tokenizer")

    base_dir = data_dir / "base_checkpoint"
    make_model(len(tok)).save_pretrained(str(base_dir))
    tok.save_pretrained(str(base_dir))
    write_json(base_dir / "training_log.json", [{"step": s, "loss": 6.0 - s / 10, **({"eval_loss": 6.1 - s / 10} if s % 10 == 0 else {})} for s in range(1, 31)])
    _finish(base_dir, "base_checkpoint")

    lora_dir = data_dir / "lora_adapter"
    _adapter(base_dir, lora_dir, seed=1)
    tok.save_pretrained(str(lora_dir))
    write_jsonl(lora_dir / "sft_train.jsonl", [r for r in sft_rows if r["split"] == "train"])
    write_jsonl(lora_dir / "sft_eval.jsonl", [r for r in sft_rows if r["split"] == "eval"])
    write_json(lora_dir / "training_log.json", [{"loss": 3.0 - s / 20, "step": s} for s in range(1, 11)] + [{"eval_loss": 2.7, "step": 10}, {"train_loss": 2.8, "step": 10}])
    _finish(lora_dir, "lora_adapter")

    dpo_dir = data_dir / "dpo_model"
    _adapter(base_dir, dpo_dir, seed=2)
    write_jsonl(dpo_dir / "pairs_train.jsonl", [r for r in pair_rows if r["split"] == "train"])
    if with_pairs_eval:
        write_jsonl(dpo_dir / "pairs_eval.jsonl", [r for r in pair_rows if r["split"] == "eval"])
    write_json(dpo_dir / "training_log.json", [{"loss": 0.69 - s / 100, "step": s, "rewards/margins": s / 50, "rewards/accuracies": min(1.0, 0.5 + s / 20)} for s in range(1, 9)])
    write_json(dpo_dir / "serving_manifest.json", {"base": "base_checkpoint", "adapter": "dpo_model"})
    _finish(dpo_dir, "dpo_model")
    if training_records:
        _training_records(base_dir, lora_dir, dpo_dir)
    return {"deduped_shards": shards, "tokenizer": tok_dir, "base_checkpoint": base_dir, "lora_adapter": lora_dir, "dpo_model": dpo_dir}


def _built_from(data_dir: Path, *deps: str) -> dict:
    from llm_pipeline.io import dvc_hash

    return {"inputs": {d: dvc_hash(data_dir / d) for d in deps}}


def add_rlhf_outputs(data_dir: Path, rl: bool = True, judge: bool = True) -> dict[str, Path]:
    """A reward_model folder (the SFT adapter as a sequence scorer with a random head, and a judge with another) and an
    rl_model adapter (random, like the others), each with the manifest inputs the runner writes."""
    from llm_pipeline.training.reward_scoring import build_reward_model

    data_dir = Path(data_dir)
    base_dir, lora_dir = data_dir / "base_checkpoint", data_dir / "lora_adapter"
    tok = PreTrainedTokenizerFast.from_pretrained(str(lora_dir))
    rm_dir = data_dir / "reward_model"
    for seed, folder in ((3, rm_dir), *(((4, rm_dir / "judge"),) if judge else ())):
        torch.manual_seed(seed)
        model, _ = build_reward_model(base_dir, lora_dir, tok.pad_token_id)
        model.save_pretrained(str(folder))
    tok.save_pretrained(str(rm_dir))
    pairs = [json.loads(line) for line in (data_dir / "dpo_model" / "pairs_eval.jsonl").read_text().splitlines()] \
        if (data_dir / "dpo_model" / "pairs_eval.jsonl").exists() else []
    write_jsonl(rm_dir / "pairs_eval.jsonl", pairs)
    write_json(rm_dir / "stats.json", {"eval_accuracy": 0.625, "pairs": 12, **({"judge_eval_accuracy": 0.5, "judge_pairs": 12} if judge else {})})
    write_json(rm_dir / "training_summary.json", {"judge": {"trained": judge, "split": "by prompt"} if judge else
                                                  {"trained": False, "why": "reward_model.judge is off"}})
    write_json(rm_dir / MANIFEST, {"stage": "reward_model", **_built_from(data_dir, "base_checkpoint", "lora_adapter")})
    out = {"reward_model": rm_dir}
    if rl:
        rl_dir = data_dir / "rl_model"
        _adapter(base_dir, rl_dir, seed=5)
        write_json(rl_dir / "training_log.json", [{"loss": 0.1 - s / 100, "reward": s / 100, "kl": s / 50, "step": s} for s in range(1, 5)])
        write_json(rl_dir / "serving_manifest.json", {"base": "base_checkpoint", "adapter": "rl_model"})
        write_json(rl_dir / MANIFEST, {"stage": "rl_model", **_built_from(data_dir, "base_checkpoint", "lora_adapter", "reward_model")})
        out["rl_model"] = rl_dir
    return out


def tiny_config(tmp_path: Path, **eval_report) -> PipelineConfig:
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text("name: tiny\n", encoding="utf-8")
    cfg = PipelineConfig.model_validate({
        "name": "tiny",
        "data_dir": str(tmp_path / "data"),
        "domains": {d: {"sources": [{"path": f"in/{d}"}]} for d in DOMAINS},
        "eval_report": {"samples": 2, "sample_max_new_tokens": 8, "prompts": ["The court"], **eval_report},
    })
    cfg.root = tmp_path
    cfg.config_path = config_path
    return cfg
