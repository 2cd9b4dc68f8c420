"""Loading the models the report compares: base, SFT (base + lora_adapter), DPO (base + dpo adapter) and RL (base +
rl_model adapter, when there is one).

Each adapter is loaded on its own copy of the base model, so no adapter state leaks between models; for the small
models this pipeline trains on a CPU the extra copies cost little. A folder holding a full model instead of an
adapter (`lora_adapter.method: full`) is loaded as a model of its own.

    models = load_models(base_dir, {"sft": lora_dir, "dpo": dpo_dir}, notes)
    with reference_of(models["dpo"], models["base"]) as ref: ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_pipeline.security import load_adapter, load_pretrained
from llm_pipeline.evaluation.data import Notes

MODEL_NAMES = ("base", "sft", "dpo", "rl")
MODEL_LABELS = {"original": "Original", "base": "Base", "sft": "SFT", "dpo": "DPO", "rl": "RL"}
# Longer windows than this gain little perplexity and make the fp32 logits of a 50k vocabulary run into gigabytes.
MAX_WINDOW = 1024
# Below this many parameters a CPU op is too small to split across threads: greedy decoding of the default tiny
# model measured 0.9 s on one thread and 10.6 s on two for 16 prompts while the machine had other work (threads
# spin-wait on each other), so small models run on one intra-op thread.
SMALL_MODEL_PARAMS = 20_000_000


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_adapter: bool

    @property
    def window(self) -> int:
        """Tokens one forward pass may see: the model's max positions, capped at MAX_WINDOW."""
        n = getattr(self.model.config, "max_position_embeddings", None) or MAX_WINDOW
        return int(min(n, MAX_WINDOW))


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token_id is None:
        # Padding positions are always masked out; any id works, and eos is the conventional choice.
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
    return tok


def _base_model(base_dir: Path, vocab: int) -> PreTrainedModel:
    model = load_pretrained(AutoModelForCausalLM, base_dir, dtype=torch.float32)
    if vocab > model.get_input_embeddings().num_embeddings:
        # The SFT stage may add chat tokens; the adapter then carries the resized embeddings.
        model.resize_token_embeddings(vocab)
    return model


def load_models(base_dir: Path, adapters: dict[str, Path], notes: Notes, tokenizer_dir: Path | None = None) -> dict[str, LoadedModel]:
    """The base model plus one model per adapter folder that loads; a folder that does not load is noted."""

    base_dir = Path(base_dir)
    tok_dir = base_dir if _has_tokenizer(base_dir) else tokenizer_dir
    if tok_dir is None:
        raise FileNotFoundError(f"no tokenizer in {base_dir} and no tokenizer folder given")
    base_tok = load_tokenizer(Path(tok_dir))
    out = {"base": LoadedModel("base", _base_model(base_dir, len(base_tok)).eval(), base_tok, is_adapter=False)}
    for name, folder in adapters.items():
        folder = Path(folder)
        tok = load_tokenizer(folder) if _has_tokenizer(folder) else base_tok
        try:
            if (folder / "adapter_config.json").is_file():
                model = load_adapter(_base_model(base_dir, len(tok)), folder)
                loaded = LoadedModel(name, model.eval(), tok, is_adapter=True)
            elif (folder / "config.json").is_file():
                model = load_pretrained(AutoModelForCausalLM, folder, dtype=torch.float32)
                loaded = LoadedModel(name, model.eval(), tok, is_adapter=False)
            else:
                notes.add(f"`{folder.name}` holds neither a PEFT adapter nor a model; the {MODEL_LABELS.get(name, name)} model is left out.")
                continue
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:  # a truncated or corrupt weights file too
            notes.add(f"`{folder.name}` did not load ({type(exc).__name__}: {exc}); the {MODEL_LABELS.get(name, name)} model is left out.")
            continue
        out[name] = loaded
    return out


@contextlib.contextmanager
def cpu_threads_for(loaded: dict[str, "LoadedModel"]) -> Iterator[int]:
    """One intra-op thread for small models on CPU, torch's default otherwise; restored afterwards."""
    before = torch.get_num_threads()
    on_cpu = all(next(lm.model.parameters()).device.type == "cpu" for lm in loaded.values())
    largest = max(sum(p.numel() for p in lm.model.parameters()) for lm in loaded.values())
    threads = 1 if on_cpu and largest < SMALL_MODEL_PARAMS else before
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def parallel_workers(loaded: dict[str, "LoadedModel"], threads: int) -> int:
    """How many models may run at once: one per free core when each runs on one intra-op thread on a CPU (small
    models, see `cpu_threads_for`), else 1 (a large model's own threads, or a GPU, already use the device)."""
    on_cpu = all(next(lm.model.parameters()).device.type == "cpu" for lm in loaded.values())
    if not on_cpu or threads != 1:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), 8))


def parallel_map(fn, items: list, workers: int, name: str) -> list:
    """`[fn(x) for x in items]`, in up to `workers` threads when that is more than one (see `parallel_workers`)."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix=name) as pool:
        return list(pool.map(fn, items))


def frame_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict]) -> str:
    """The prompt as the SFT and DPO trainers saw it: through the tokenizer's chat template when it has one.

    A prompt is a string (one user turn) or a list of {role, content} messages. Without a chat template the text is
    used as is, the way a plain pretrained model would be prompted.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(str(m.get("content", "")) for m in messages)


def prompt_text(prompt: str | list[dict]) -> str:
    """A prompt for display: the string, or the last user turn of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [str(m.get("content", "")) for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


@contextlib.contextmanager
def reference_of(policy: LoadedModel, fallback: LoadedModel) -> Iterator[LoadedModel]:
    """The DPO reference: the policy with its adapter disabled (what TRL uses with `ref_model=None`)."""
    if policy.is_adapter:
        with policy.model.disable_adapter():
            yield LoadedModel(f"{policy.name}-reference", policy.model, policy.tokenizer, is_adapter=False)
    else:
        yield fallback
