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


def _separate_sequences_objective(model, pairs, weights):
    """sum_i w_i * (log p(chosen_i) - log p(rejected_i)), each answer scored in its own sequence with full logits."""
    total = 0.0
    for p, w in zip(pairs, weights):
        for answer, sign in ((p["chosen_ids"], 1.0), (p["rejected_ids"], -1.0)):
            ids = torch.tensor([p["prompt_ids"] + answer])
            lp = torch.log_softmax(model(ids, use_cache=False).logits[0, :-1].float(), -1)
            total = total + sign * w * lp.gather(-1, ids[0, 1:, None]).squeeze(-1)[len(p["prompt_ids"]) - 1 :].sum()
    return total


@pytest.mark.parametrize(("frozen_head", "chunk_positions"), [(True, 1), (True, 1000), (False, 3)])
def test_chunked_log_probs_and_gradients_equal_full_logits(frozen_head, chunk_positions):
    model = _tiny_llama().train()
    model.lm_head.requires_grad_(not frozen_head)  # frozen: the LoRA case; trainable: full fine-tuning
    weights = [0.7, -1.3]
    params = [p for p in model.parameters() if p.requires_grad]

    _separate_sequences_objective(model, PAIRS, weights).backward()
    expected = [p.grad.clone() for p in params]
    model.zero_grad()
    chosen, rejected, _, _ = dpo_pairs.answer_logps(model, dpo_pairs.PairCollator(0)(PAIRS), chunk_elements=100 * chunk_positions)
    (torch.tensor(weights) * (chosen - rejected)).sum().backward()
    for p, e in zip(params, expected):
        assert torch.allclose(p.grad, e, atol=1e-5, rtol=1e-4)
    for i, p in enumerate(PAIRS):
        assert abs(chosen[i].item() - _alone(model, p["prompt_ids"], p["chosen_ids"])) < 1e-4


def test_token_log_probs_through_a_capped_head():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 30).requires_grad_(False)
    hidden, targets = torch.randn(7, 8, requires_grad=True), torch.randint(0, 30, (7,))
    full = torch.log_softmax(torch.tanh(head(hidden) / 2.0) * 2.0, -1).gather(-1, targets[:, None]).squeeze(-1)
    (full * torch.arange(7.0)).sum().backward()
    expected, hidden.grad = hidden.grad.clone(), None
    chunked = dpo_pairs.token_logps(head, hidden, targets, cap=2.0, chunk_elements=60)
    (chunked * torch.arange(7.0)).sum().backward()
    assert torch.allclose(chunked, full, atol=1e-6) and torch.allclose(hidden.grad, expected, atol=1e-6)


def test_split_rows_cut_each_group_to_its_own_width():
    batch = dpo_pairs.PairCollator(0)([dict(p, ref_chosen_logps=-1.0, ref_rejected_logps=-2.0) for p in PAIRS])
    first, second = dpo_pairs.split_rows(batch, 1)
    assert first["input_ids"].shape == (1, 10) and second["input_ids"].shape == (1, 9)
    assert second["attention_mask"].shape == (1, 1, 9, 9) and second["ref_chosen_logps"].shape == (1,)
    assert torch.equal(second["target"][0], batch["target"][1, :9])
    assert dpo_pairs.split_rows(batch, 2) == [batch]


def test_pass_tokens_follow_the_rows_a_cpu_pass_takes():
    config = _tiny_llama().config
    assert dpo_train.pass_tokens(config, PAIRS, 4, "cuda") == 4 * 10  # mean row 9.5 rounds to 10; the whole batch
    assert dpo_train.pass_tokens(config, PAIRS, 4, "cpu") == 4 * 10  # tiny rows: the batch fits one pass
    per_token = dpo_train.activation_bytes_per_token(config)
    long_rows = [dict(PAIRS[0], length=dpo_train.PASS_ACTIVATION_BYTES // (3 * per_token))]
    assert dpo_train.pass_tokens(config, long_rows, 8, "cpu") == 3 * long_rows[0]["length"]


def test_training_in_passes_of_rows_takes_the_same_step_as_the_whole_batch(tmp_path, monkeypatch):
    import copy

    from peft import LoraConfig, get_peft_model
    from trl import DPOConfig

    from llm_pipeline_tests.training.pretrained_fixture import build_pretrained

    pairs = [dict(p, ref_chosen_logps=-5.0 - i, ref_rejected_logps=-6.0 + i) for i, p in enumerate(PAIRS * 2)]
    base, tok = build_pretrained(vocab_size=300)

    def one_step(rows):
        monkeypatch.setattr(dpo_train, "rows_per_pass", lambda *a, **k: rows)
        torch.manual_seed(0)
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        args = DPOConfig(output_dir=str(tmp_path / str(rows)), max_steps=1, per_device_train_batch_size=4, learning_rate=0.5,
                         optim="sgd", lr_scheduler_type="constant", use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                         remove_unused_columns=False, logging_steps=1, disable_tqdm=True, max_length=None, seed=0)
        trainer = dpo_train.make_trainer(model, tok, args, pairs, [], dpo_pairs.PairCollator(tok.pad_token_id))
        trainer.train()
        log = next(e for e in trainer.state.log_history if "loss" in e)
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, log

    whole, whole_log = one_step(None)
    passes, passes_log = one_step(1)
    assert whole_log["loss"] == pytest.approx(passes_log["loss"], rel=1e-5)
    assert whole_log["rewards/margins"] == pytest.approx(passes_log["rewards/margins"], rel=1e-4, abs=1e-6)
    for name, value in whole.items():
        assert torch.allclose(value, passes[name], atol=1e-6), name
