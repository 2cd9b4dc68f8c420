"""Special-token text inside preference pairs, preference files, reward-model inputs and RL prompts stays text: the
only special ids in what these stages train on are the markers the chat template renders itself."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch

from llm_pipeline.training import bpe, dpo_pairs, preference_data, reward_scoring, rl_prompts
from llm_pipeline.training.packing import special_strings

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _project_tokenizer():
    texts = ["The tenant wrote to the landlord about the heating and kept a copy of every letter. " * 20] * 10
    return bpe.train_bpe(texts, 340, 1, ["<|endoftext|>", "<|pad|>", "<|system|>"])


def _chatml_tokenizer():
    """A ChatML-style tokenizer (as many released chat models have): its markers are added special tokens."""
    tok = _project_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def _hostile(tok) -> str:
    """Every special token's text of `tok`, alone and glued together, inside otherwise ordinary text."""
    specials = special_strings(tok)
    assert len(specials) >= 5
    return " ".join(f"word {s} word" for s in specials) + " " + "".join(specials)


def _template_ids(tok, messages, add_generation_prompt=False) -> list[int]:
    """The special ids the template renders for these turns with harmless content: what a row may carry."""
    clean = [{**m, "content": "x"} for m in messages]
    out = tok.apply_chat_template(clean, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False)
    ids = list(out["input_ids"] if hasattr(out, "keys") else out)
    return [t for t in ids if t in set(tok.all_special_ids)]


def _specials_in(tok, ids) -> list[int]:
    return [t for t in ids if t in set(tok.all_special_ids)]


@pytest.fixture(scope="module")
def tokenizers():
    return {"project": _project_tokenizer(), "chatml": _chatml_tokenizer()}


@pytest.fixture(params=["project", "chatml"])
def tok(request, tokenizers):
    return copy.deepcopy(tokenizers[request.param])


def test_preference_pairs_from_a_file_carry_no_special_ids_of_their_own(tok, tmp_path):
    hostile = _hostile(tok)
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"Question {i} {hostile}", "chosen": f"Good answer {hostile}", "rejected": f"Bad {hostile} answer"}
            for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, held = preference_data.read_user_pairs([path])
    dropped = Counter()
    tokenized = [dpo_pairs.tokenize_pair(p, tok, 4096, dropped) for p in train + held]
    assert all(tokenized) and not dropped
    user, turn = [{"role": "user"}], [{"role": "user"}, {"role": "assistant"}]
    for t in tokenized:
        assert _specials_in(tok, t["prompt_ids"]) == _template_ids(tok, user, add_generation_prompt=True)
        answer_specials = _template_ids(tok, turn)[len(_template_ids(tok, user, add_generation_prompt=True)):]
        assert _specials_in(tok, t["chosen_ids"]) == answer_specials
        assert _specials_in(tok, t["rejected_ids"]) == answer_specials
    # The text survives as text.
    decoded = tok.decode(tokenized[0]["chosen_ids"])
    assert "word" in decoded and "Good answer" in decoded


def test_conversation_pairs_and_multi_turn_prompts(tok):
    hostile = _hostile(tok)
    prompt = [{"role": "system", "content": hostile}, {"role": "user", "content": hostile},
              {"role": "assistant", "content": hostile}, {"role": "user", "content": "And now?"}]
    t = dpo_pairs.tokenize_pair({"prompt": prompt, "chosen": hostile, "rejected": "No."}, tok, 8192, Counter())
    assert _specials_in(tok, t["prompt_ids"]) == _template_ids(tok, prompt, add_generation_prompt=True)


def test_reward_model_inputs_carry_no_special_ids_of_their_own(tok):
    hostile = _hostile(tok)
    ids = reward_scoring.chat_ids(tok, f"Rate this {hostile}", f"An answer {hostile}", 8192)
    assert _specials_in(tok, ids) == _template_ids(tok, [{"role": "user"}, {"role": "assistant"}])


def test_rl_prompts_carry_no_special_ids_of_their_own(tok, tmp_path):
    hostile = _hostile(tok)
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Prompt {i} {hostile}"}) + "\n" for i in range(8))
                    + json.dumps({"prompt": [{"role": "user", "content": hostile}]}) + "\n")
    train, held = rl_prompts.read_prompt_file(path)
    dropped = Counter()
    fitted = rl_prompts.fit_prompts(train + held, tok, 8192, dropped)
    assert len(fitted) == 9
    # Cut to fit: the shortened prompt is defused the same way.
    short = rl_prompts.fit_prompts([f"Prompt {hostile} " * 20], tok, 200, dropped)
    assert short and dropped["prompt_shortened"] == 1
    for p in fitted + short:
        assert _specials_in(tok, p["prompt_ids"]) == _template_ids(tok, [{"role": "user"}], add_generation_prompt=True)


def test_model_sampled_rejections_start_from_a_defused_prompt(tok):
    """The prompt a model continues (its sample becomes the rejected answer) holds only the template's markers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024))
    seen: list[list[int]] = []
    generate = model.generate

    def recording_generate(**kwargs):  # the real generate, with its input kept for the check below
        seen.extend(kwargs["input_ids"].tolist())
        return generate(**kwargs)

    model.generate = recording_generate
    hostile = _hostile(tok)
    pairs = [{"prompt": f"Continue {hostile}", "chosen": "The tenant kept a copy."} for _ in range(2)]
    preference_data.model_rejections(pairs, model, tok, max_new_tokens=4)
    want = _template_ids(tok, [{"role": "user"}], add_generation_prompt=True)
    pad = tok.pad_token_id
    assert seen and all([t for t in _specials_in(tok, ids) if t != pad] == want for ids in seen)
