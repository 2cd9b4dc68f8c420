"""Extend a pretrained tokenizer with frequent domain terms it splits into many pieces.

A term the base vocabulary cuts into 4+ pieces costs context and makes the model assemble it every time; adding it
as one token (embedding initialised from its pieces, see `embeddings.py`) shortens domain text. The terms and their
pieces under the base tokenizer are written to `domain_tokens.json` beside the tokenizer, so the base_checkpoint
stage can initialise the new embedding rows without the base tokenizer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken

from llm_pipeline.training.bpe import WORD

EXTENSION_FILE = "domain_tokens.json"
MIN_PIECES = 3  # a word in 1-2 pieces is already cheap; adding it buys little and costs an embedding row
MIN_CHARS = 4
# The tags PII redaction writes (`<PERSON>`, `<EMAIL_ADDRESS:9f3c...>`; curation/pii.py's TYPE_TAG, repeated here so
# the tokenizer stage does not import Presidio). They recur in every domain, so they would top the saving ranking,
# but they are the redaction's vocabulary, not the domain's: a real run's first two "domain terms" were PERSON and
# LOCATION.
REDACTION_TAG = re.compile(r"<[A-Z_]+(?::[0-9a-f]{16})?>")


def is_domain_term(word: str) -> bool:
    """Whether a word may become a token: it has a letter (numbers and whole years are not terms; a number as one
    token also hides its digits from the model) and is long enough to be worth a row."""
    return len(word) >= MIN_CHARS and any(c.isalpha() for c in word)


def count_words(texts: Iterable[str]) -> Counter:
    """Word counts of the texts with redaction tags taken out first."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(WORD.findall(REDACTION_TAG.sub(" ", text)))
    return counts


def mine_terms(base_tokenizer, counts: Counter, min_frequency: int, max_new: int) -> list[dict]:
    """Frequent words the base tokenizer splits into many pieces, best saving first.

    The saving of a word is (pieces - 1) * frequency: the tokens its occurrences would no longer cost.
    """
    vocab = base_tokenizer.get_vocab()
    scored = []
    for word, freq in counts.items():
        if freq < min_frequency or not is_domain_term(word) or word in vocab:
            continue
        # Mid-sentence a word follows a space; byte-level vocabularies store that space in the first piece.
        pieces = base_tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(pieces) >= MIN_PIECES:
            scored.append({"term": word, "frequency": freq, "pieces": len(pieces), "piece_ids": pieces, "saving": (len(pieces) - 1) * freq})
    scored.sort(key=lambda t: (-t["saving"], t["term"]))
    return scored[:max_new]


def finish(tokenizer) -> None:
    """What every pretrained tokenizer gets for the later stages, extended or not: chat turn markers and a template
    when it has none, and a pad token."""
    from llm_pipeline.training import bpe

    if tokenizer.chat_template is None:
        tokenizer.add_special_tokens({"additional_special_tokens": [bpe.USER, bpe.ASSISTANT]})
        tokenizer.chat_template = bpe.CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def row_map(extended, original) -> list[int]:
    """For each id of `original` (the base tokenizer after `finish`), the id of the same token in `extended`: the
    embedding rows to keep when the domain terms are dropped again."""
    vocab = extended.get_vocab()
    return [vocab[original.convert_ids_to_tokens(i)] for i in range(len(original))]


def add_terms(tokenizer, terms: list[dict]) -> int:
    """Add terms as whole-word tokens; returns how many were new to the tokenizer."""
    # single_word: never match inside a longer word; normalized=False: match the raw text as written.
    return tokenizer.add_tokens([AddedToken(t["term"], single_word=True, normalized=False) for t in terms])


def write_extension(folder: Path, base_model: str, base_vocab_size: int, tokenizer, terms: list[dict]) -> None:
    from llm_pipeline.io import write_json

    records = [
        {"token_id": tokenizer.convert_tokens_to_ids(t["term"]), "term": t["term"], "frequency": t["frequency"], "base_piece_ids": t["piece_ids"]}
        for t in terms
    ]
    write_json(Path(folder) / EXTENSION_FILE, {"base_model": base_model, "base_vocab_size": base_vocab_size, "tokens": records})
