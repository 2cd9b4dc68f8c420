import pytest
import torch
from peft import LoraConfig, get_peft_model

from llm_pipeline.evaluation.models import LoadedModel
from llm_pipeline.evaluation.preference import completion_logprobs, encode_pair, length_baseline, preference_accuracy

PAIRS = [
    {"prompt": "The tenant", "chosen": "shall pay the rent on time.", "rejected": "no.", "domain": "legal"},
    {"prompt": "The patient", "chosen": "ok.", "rejected": "has a fever and needs therapy.", "domain": "medicine"},
]


def _policy(tiny_lm, init: bool) -> LoadedModel:
    torch.manual_seed(3)
    base = type(tiny_lm.model)(tiny_lm.model.config)
    base.load_state_dict(tiny_lm.model.state_dict())
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=init)).eval()
    return LoadedModel("dpo", peft, tiny_lm.tokenizer, is_adapter=True)


@pytest.mark.parametrize("chosen, rejected, score", [("long answer", "short", 1.0), ("a", "bbb", 0.0), ("ab", "cd", 0.5)])
def test_length_baseline(chosen, rejected, score):
    assert length_baseline(chosen, rejected) == score


def test_encode_pair_keeps_the_completion_and_the_end_of_the_prompt(tiny_lm):
    tok = tiny_lm.tokenizer
    ids, cut = encode_pair(tok, "word " * 50, "the answer", window=12)
    completion = tok("the answer", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(ids) == 12 and ids[cut:] == completion


def test_an_adapter_that_changes_nothing_has_zero_margins(tiny_lm):
    # LoRA's default init (B = 0) leaves the model as it was: policy and reference agree, so every reward is 0 and
    # no pair is "right" (a tie counts as wrong, as in TRL).
    result = preference_accuracy(_policy(tiny_lm, init=True), tiny_lm, PAIRS, beta=0.1)
    assert result["pairs"] == 2 and result["accuracy"] == 0.0
    assert result["mean_margin"] == pytest.approx(0.0, abs=1e-6)
    assert result["length_baseline_accuracy"] == 0.5
    assert set(result["by_domain"]) == {"legal", "medicine"}


def test_margins_follow_the_implicit_reward(tiny_lm):
    policy = _policy(tiny_lm, init=False)
    result = preference_accuracy(policy, tiny_lm, PAIRS, beta=0.5)
    pol = completion_logprobs(policy, [(p["prompt"], p[k]) for p in PAIRS for k in ("chosen", "rejected")])
    ref = completion_logprobs(tiny_lm, [(p["prompt"], p[k]) for p in PAIRS for k in ("chosen", "rejected")])
    margins = [0.5 * ((pol[2 * i] - ref[2 * i]) - (pol[2 * i + 1] - ref[2 * i + 1])) for i in range(2)]
    assert result["mean_margin"] == pytest.approx(sum(margins) / 2, rel=1e-4)
    assert result["accuracy"] == sum(m > 0 for m in margins) / 2
