"""A tiny "pretrained" model of our own, saved the ways a real one arrives: a save_pretrained folder, a GGUF file,
and a Hugging Face cache entry for a hub id. Its tokenizer is trained on general English, so domain terms
(hypertension, indemnity) cost it many pieces, as they do a real general-purpose tokenizer.

The GGUF writer follows what transformers' GGUF loader reads for `llama` (integrations/ggml.py,
modeling_gguf_pytorch_utils.py): `llama.*` shape keys, a `gpt2` (byte-level BPE) tokenizer with tokens, token types
and merges, and tensors under llama.cpp's names with q/k rows permuted the way llama.cpp's converter does (the loader
undoes it).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

GENERAL_WORDS = ["the", "of", "and", "a", "to", "is", "in", "for", "with", "on", "by", "each", "people", "time", "year",
                 "house", "water", "city", "school", "music", "garden", "river", "morning", "friend", "story", "road"]


def general_texts(n: int = 120, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(GENERAL_WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "." for _ in range(n)]


def write_general_jsonl(path: Path, n: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in general_texts(n)), encoding="utf-8")
    return path


def build_pretrained(seed: int = 0, vocab_size: int = 300, layers: int = 1, tied: bool = True):
    """(model, tokenizer): a tiny Llama with a general-English byte-level BPE (`tied`: the output layer shares the
    input embedding, as in SmolLM2; untied, as in Llama 3 8B, it has rows of its own)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_pipeline.training.bpe import train_bpe

    tok = train_bpe(general_texts(), vocab_size, 2, ["<|endoftext|>", "<|pad|>"])
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tok


def save_pretrained_folder(folder: Path, **kwargs) -> Path:
    model, tok = build_pretrained(**kwargs)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_in_hub_cache(hf_home: Path, repo_id: str, **kwargs) -> Path:
    """Lay a model out as huggingface_hub caches a download, so `from_pretrained(repo_id)` finds it offline."""
    org, name = repo_id.split("/")
    repo = Path(hf_home) / "hub" / f"models--{org}--{name}"
    commit = "0" * 40
    snapshot = save_pretrained_folder(repo / "snapshots" / commit, **kwargs)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp interleaves the two rotary halves of each head; transformers' loader reverses exactly this.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, tok, f16: bool = False) -> Path:
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-general")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(len(tok))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    # The tokenizer travels inside the file, as in every GGUF llama.cpp produces.
    inverse = {i: t for t, i in tok.get_vocab().items()}
    special = set(tok.all_special_ids)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([inverse[i] for i in range(len(tok))])
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tok))])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":  # tied: llama.cpp writes no output.weight, and the loader ties it back
            continue
        a = tensor.detach().float().numpy()
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        else:
            _, _, layer, *rest = key.split(".")
            module = ".".join(rest[:-1])
            name = f"blk.{layer}.{_GGUF_NAMES[module]}.weight"
            if module == "self_attn.q_proj":
                a = _llama_cpp_permute(a, c.num_attention_heads)
            elif module == "self_attn.k_proj":
                a = _llama_cpp_permute(a, c.num_key_value_heads)
        # Norm vectors stay F32 (as llama.cpp keeps them); matrices go F16 when asked.
        w.add_tensor(name, a.astype(np.float16) if f16 and a.ndim == 2 else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
