"""Where the base model comes from: a fresh Llama built from config, a local/hub pretrained model, or a GGUF file.

GGUF files are quantized; transformers dequantizes them on load, but that object cannot be saved as-is, so it is
re-created as a plain model of the same config with `quantization_config` removed (training refuses a model that
claims to be quantized).
"""

from __future__ import annotations

from pathlib import Path

from llm_pipeline.config import BaseCheckpointConfig, PipelineConfig
from llm_pipeline.security import confine, load_pretrained, looks_like_path


class ModelSourceError(ValueError):
    """The configured base model cannot be built or loaded."""


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


def _model_location(cfg: PipelineConfig) -> str:
    """A local folder (confined to the config's allowed roots) or, when no such folder exists, a hub id."""
    name = cfg.base_checkpoint.model
    if not name:
        raise ModelSourceError(f"base_checkpoint.source is {cfg.base_checkpoint.source!r} but base_checkpoint.model is not set")
    local = cfg.resolve(name)
    if local.exists() or looks_like_path(name):
        return str(confine(cfg, name, "base_checkpoint.model"))
    return name


def pretrained_model(cfg: PipelineConfig):
    from transformers import AutoModelForCausalLM

    where = _model_location(cfg)
    try:
        return load_pretrained(AutoModelForCausalLM, where, trust_remote_code=cfg.base_checkpoint.trust_remote_code, dtype="float32")
    except OSError as exc:
        raise ModelSourceError(f"base_checkpoint.model {where!r}: cannot load offline ({exc}); give a local save_pretrained folder") from None


def gguf_model(cfg: PipelineConfig):
    from transformers import AutoModelForCausalLM

    bc = cfg.base_checkpoint
    where = _model_location(cfg)
    if not bc.gguf_file:
        raise ModelSourceError("base_checkpoint.source is 'gguf' but base_checkpoint.gguf_file is not set")
    if not (Path(where) / bc.gguf_file).exists():
        raise ModelSourceError(f"GGUF file {bc.gguf_file!r} not found in {where}")
    loaded = load_pretrained(AutoModelForCausalLM, where, gguf_file=bc.gguf_file, dtype="float32", trust_remote_code=bc.trust_remote_code)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    return plain


def load_base_model(cfg: PipelineConfig, tokenizer):
    """The model the base_checkpoint stage starts from, and a one-line description of where it came from."""
    source = cfg.base_checkpoint.source
    if source == "scratch":
        return scratch_model(cfg.base_checkpoint, tokenizer, cfg.seed), "scratch: Llama built from config"
    if cfg.tokenizer.mode == "train":
        raise ModelSourceError(
            f"base_checkpoint.source is {source!r} but tokenizer.mode is 'train': a freshly trained vocabulary does not "
            "match the pretrained embeddings; use tokenizer.mode 'extend' with base_model set to the model's tokenizer"
        )
    if source == "pretrained":
        return pretrained_model(cfg), f"pretrained: {cfg.base_checkpoint.model}"
    return gguf_model(cfg), f"gguf: {cfg.base_checkpoint.model}/{cfg.base_checkpoint.gguf_file} (dequantized)"
