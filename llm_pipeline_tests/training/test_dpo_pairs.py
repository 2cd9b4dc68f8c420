"""Shared-prompt DPO rows give exactly the log-probs of separate sequences; the reference cache is keyed by data."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm_pipeline.training import dpo_pairs, dpo_train, ref_cache


def _tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _alone(model, prompt, answer):
    ids = torch.tensor([prompt + answer])
    lp = torch.log_softmax(model(ids, use_cache=False).logits[0, :-1].float(), -1)
    return lp.gather(-1, ids[0, 1:, None]).squeeze(-1)[len(prompt) - 1 :].sum().item()


PAIRS = [
    {"prompt_ids": [1, 5, 7, 9], "chosen_ids": [11, 12, 13], "rejected_ids": [21, 22], "length": 10},
    {"prompt_ids": [3, 4], "chosen_ids": [30], "rejected_ids": [40, 41, 42, 43, 44], "length": 9},
]


def test_one_row_per_pair_scores_both_answers_exactly():
    model = _tiny_llama()
    with torch.no_grad():
        chosen, rejected, n_c, n_r = dpo_pairs.answer_logps(model, dpo_pairs.PairCollator(0)(PAIRS))
    for i, p in enumerate(PAIRS):
        assert abs(chosen[i].item() - _alone(model, p["prompt_ids"], p["chosen_ids"])) < 1e-4
        assert abs(rejected[i].item() - _alone(model, p["prompt_ids"], p["rejected_ids"])) < 1e-4
    assert n_c.tolist() == [3, 1] and n_r.tolist() == [2, 5]


def test_reference_logps_follow_the_input_order():
    model = _tiny_llama()
    c, r = dpo_train.reference_logps(model, PAIRS, dpo_pairs.PairCollator(0), batch_size=1, reference="sft")
    assert abs(c[1] - _alone(model, [3, 4], [30])) < 1e-4 and abs(r[0] - _alone(model, [1, 5, 7, 9], [21, 22])) < 1e-4


def test_cache_is_reused_for_the_same_pairs_and_model_only(tmp_path):
    calls = []

    def compute(pairs):
        calls.append(len(pairs))
        return [0.5] * len(pairs), [-0.5] * len(pairs)

    ident = {"base": "a", "sft": "b", "reference": "sft"}
    assert ref_cache.load_or_compute(tmp_path, PAIRS, ident, compute)[2] is False
    assert ref_cache.load_or_compute(tmp_path, PAIRS, ident, compute)[2] is True
    assert ref_cache.load_or_compute(tmp_path, PAIRS, {**ident, "sft": "c"}, compute)[2] is False  # another model
    assert ref_cache.load_or_compute(tmp_path, PAIRS[:1], ident, compute)[2] is False  # another dataset version
    assert calls == [2, 2, 1]


def test_loss_types():
    c, r, n = torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([2.0])
    assert dpo_train.dpo_loss("sigmoid", 0.1, c, r, n, n).item() < 0.6931
    assert dpo_train.dpo_loss("hinge", 0.1, c, r, n, n).item() == pytest.approx(1 - 0.2)
    assert dpo_train.dpo_loss("ipo", 0.1, c, r, n, n).item() == pytest.approx((1.0 - 5.0) ** 2)
