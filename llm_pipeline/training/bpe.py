"""Train a byte-level BPE tokenizer on the corpus and wrap it as a transformers tokenizer with a chat template.

Byte-level means every string is encodable (no unknown token): rare characters fall back to byte tokens. The first
special token is end-of-text (also used as bos); `<|pad|>` pads when present; `<|user|>`/`<|assistant|>` mark the
turns of the chat template that SFT and the eval report use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

USER, ASSISTANT = "<|user|>", "<|assistant|>"
WORD = re.compile(r"\w+(?:[-']\w+)*", re.UNICODE)

# One turn per message; the assistant turn ends with eos so generation learns to stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "\n{{ message['content'] }}{{ eos_token }}\n"
    "{% else %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "\n{% endif %}"
)


def special_tokens_with_chat(special: list[str]) -> list[str]:
    """The configured special tokens, plus the chat markers when the config left them out (the template needs them)."""
    out = list(dict.fromkeys(special))
    for tok in (USER, ASSISTANT):
        if tok not in out:
            out.append(tok)
    return out


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int, special: list[str]) -> PreTrainedTokenizerFast:
    specials = special_tokens_with_chat(special)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ValueError(f"tokenizer.vocab_size {vocab_size} is below the {len(alphabet)} byte tokens + {len(specials)} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok, specials)


def wrap(tok: Tokenizer, specials: list[str]) -> PreTrainedTokenizerFast:
    eos = specials[0]
    pad = "<|pad|>" if "<|pad|>" in specials else eos
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=pad, unk_token=None)
    fast.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in (eos, pad)]})
    fast.chat_template = CHAT_TEMPLATE
    # Right padding for training; generation code pads left explicitly where it batches.
    fast.padding_side = "right"
    return fast


def fertility(tokenizer, texts: Iterable[str]) -> dict[str, float]:
    """Tokens per word (lower = the vocabulary fits the text better) over `texts`."""
    words = tokens = docs = 0
    for text in texts:
        words += len(WORD.findall(text))
        tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        docs += 1
    return {"tokens_per_word": round(tokens / words, 4) if words else 0.0, "words": words, "tokens": tokens, "documents": docs}


def counting(texts: Iterable[tuple[str, str]], seen: dict[str, int]) -> Iterator[str]:
    """Pass texts through while counting documents per domain (the BPE trainer consumes a plain iterator)."""
    for domain, text in texts:
        seen[domain] = seen.get(domain, 0) + 1
        yield text


def preview_tokens(tokenizer, text: str, limit: int = 40) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:limit]
    pieces = [tokenizer.decode([i]) for i in ids]
    shown = " · ".join(p.replace("\n", "\\n").replace("|", "\\|") for p in pieces)
    return f"`{text[:120].strip()}`\n\n→ {len(ids)} tokens: {shown}"
