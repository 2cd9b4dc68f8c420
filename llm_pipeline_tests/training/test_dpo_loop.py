"""The one-process DPO loop: the Trainer's step, seeded length-grouped batches, exact resume, early stopping that
restores the best weights, a clear error on a non-finite loss, and a merged reference pass equal to the plain one."""

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from llm_pipeline.training import dpo_loop, dpo_pairs, dpo_train
from llm_pipeline.training.device import DevicePlan
from llm_pipeline_tests.training.pretrained_fixture import build_pretrained

FP32 = DevicePlan("cpu", "fp32", "test")


def _pairs(n: int = 8) -> list[dict]:
    out = []
    for i in range(n):
        prompt = [5 + i % 7, 9, 11 + i % 3, 14][: 2 + i % 3]
        chosen, rejected = [20 + i, 21, 22][: 1 + i % 3], [40 + i, 41, 42, 43][: 1 + (i + 1) % 4]
        out.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
                    "length": len(prompt) + len(chosen) + 1 + len(rejected),
                    "ref_chosen_logps": -8.0 - 0.1 * i, "ref_rejected_logps": -9.0 + 0.1 * i})
    return out


@pytest.fixture(scope="module")
def base():
    return build_pretrained(vocab_size=300)


def _policy(base_model):
    torch.manual_seed(0)
    return get_peft_model(copy.deepcopy(base_model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))


def _settings(**kw) -> dpo_loop.LoopSettings:
    values = dict(steps=4, batch_size=4, learning_rate=1e-2, warmup_steps=0, beta=0.1, loss_type="sigmoid", seed=3,
                  eval_every=2, checkpoint_every=2, log_every=1)
    return dpo_loop.LoopSettings(**{**values, **kw})


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_batch_order_covers_every_pair_once_groups_lengths_and_is_seeded():
    import random

    lengths = list(range(10, 70))
    random.Random(0).shuffle(lengths)
    order = dpo_loop.batch_order(lengths, 3, seed=1, epoch=0)
    assert sorted(i for b in order for i in b) == list(range(len(lengths)))
    assert max(lengths[i] for i in order[0]) == 69  # the longest row's batch first: memory fails at step 1 if at all
    assert order == dpo_loop.batch_order(lengths, 3, seed=1, epoch=0)
    assert order != dpo_loop.batch_order(lengths, 3, seed=1, epoch=1)
    width = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in order) / len(order)
    assert width < 12  # sorted within megabatches of 15 rows; three random rows of 10..69 span ~30 on average
    # A set of 8 batches or fewer is not sorted as one run: megabatches of one batch, so batches mix lengths.
    few = dpo_loop.batch_order(lengths[:24], 3, seed=1, epoch=0)
    assert sorted(i for b in few for i in b) == list(range(24))


def test_the_loop_takes_the_trainers_steps(base, tmp_path):
    """Two steps of the loop and of PackedDPOTrainer (AdamW, cosine, clipping at 1) on the same batches end at the same
    adapter weights and log the same loss."""
    from trl import DPOConfig

    model, tok = base
    pairs = _pairs(4)
    loop_model = _policy(model)
    result = dpo_loop.train(loop_model, pairs, [], dpo_pairs.PairCollator(tok.pad_token_id), _settings(steps=2, log_every=1),
                            FP32, tmp_path / "loop", "fp")
    trl_model = _policy(model)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                     lr_scheduler_type="cosine", optim="adamw_torch", use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                     remove_unused_columns=False, logging_steps=1, disable_tqdm=True, max_length=None, seed=3, beta=0.1)
    trainer = dpo_train.make_trainer(trl_model, tok, args, pairs, [], dpo_pairs.PairCollator(tok.pad_token_id))
    trainer.train()
    trl_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert [e["loss"] for e in result.log] == pytest.approx(trl_losses, rel=1e-4)
    for name, value in _trainable(trl_model).items():
        assert torch.allclose(value, _trainable(loop_model)[name], atol=1e-6), name
    assert result.global_step == 2 and result.tokens_trained == 2 * sum(p["length"] for p in pairs)  # padding is not counted
    assert {"rewards/accuracies", "rewards/margins", "logps/chosen", "grad_norm", "learning_rate"} <= set(result.log[-1])


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(base, tmp_path):
    model, tok = base
    pairs, held = _pairs(8), _pairs(3)
    collator = dpo_pairs.PairCollator(tok.pad_token_id)
    whole_model = _policy(model)
    whole = dpo_loop.train(whole_model, pairs, held, collator, _settings(steps=5), FP32, tmp_path / "whole", "fp")

    class Crash(Exception):
        pass

    def crash_at_3(step):
        if step == 3:
            raise Crash

    first = _policy(model)
    with pytest.raises(Crash):
        dpo_loop.train(first, pairs, held, collator, _settings(steps=5), FP32, tmp_path / "cut", "fp", on_step=crash_at_3)
    assert [p.name for p in (tmp_path / "cut").glob("step-*.pt")] == ["step-0000002.pt"]
    again = _policy(model)  # a fresh process: the adapter as it was before training
    resumed = dpo_loop.train(again, pairs, held, collator, _settings(steps=5), FP32, tmp_path / "cut", "fp")
    assert resumed.start_step == 2 and resumed.resume_note == "resumed from step-0000002.pt"
    for name, value in _trainable(whole_model).items():
        assert torch.allclose(value, _trainable(again)[name], atol=1e-6), name
    assert [e["step"] for e in resumed.log] == [e["step"] for e in whole.log]  # the log carries over the checkpoint
    figures = lambda log: [e.get("loss", e.get("eval_loss")) for e in log]  # noqa: E731
    assert figures(resumed.log) == pytest.approx(figures(whole.log), rel=1e-5)
    assert resumed.tokens_trained == whole.tokens_trained
    # A checkpoint of another run (other fingerprint) is not continued.
    other = dpo_loop.train(_policy(model), pairs, held, collator, _settings(steps=5), FP32, tmp_path / "cut", "other")
    assert other.start_step == 0 and "different config" in other.resume_note


def test_early_stopping_keeps_the_best_evaluated_weights(base, tmp_path, monkeypatch):
    model, tok = base
    pairs, held = _pairs(8), _pairs(3)
    real = dpo_loop.evaluate
    scripted = iter([0.50, 0.70, 0.90])  # held-out loss gets worse after the first evaluation
    snapshots = {}

    def evaluate(m, *a, **k):
        metrics = real(m, *a, **k)
        snapshots[len(snapshots)] = _trainable(m)
        return {**metrics, "eval_loss": next(scripted, 1.0)}

    monkeypatch.setattr(dpo_loop, "evaluate", evaluate)
    policy = _policy(model)
    result = dpo_loop.train(policy, pairs, held, dpo_pairs.PairCollator(tok.pad_token_id),
                            _settings(steps=10, eval_every=1, early_stopping_patience=2), FP32, tmp_path / "es", "fp")
    assert result.stopped_early and result.global_step == 3 and result.best_step == 1
    for name, value in snapshots[0].items():  # the weights evaluated at step 1 are the ones kept
        assert torch.equal(value, _trainable(policy)[name]), name


def test_a_non_finite_loss_stops_with_a_clear_error(base, tmp_path):
    model, tok = base
    pairs = [dict(p, ref_chosen_logps=math.nan) for p in _pairs(4)]
    with pytest.raises(FloatingPointError, match="learning_rate"):
        dpo_loop.train(_policy(model), pairs, [], dpo_pairs.PairCollator(tok.pad_token_id), _settings(steps=1), FP32, tmp_path / "nan", "fp")


def test_the_merged_reference_pass_equals_the_plain_one_and_restores_the_weights(base):
    model, tok = base
    policy = _policy(model).eval()  # init_lora_weights=False: the adapter changes the outputs
    assert dpo_train.can_merge(policy)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    pairs = _pairs(6)
    collator = dpo_pairs.PairCollator(tok.pad_token_id)
    with torch.no_grad():
        c, r, _, _ = dpo_pairs.answer_logps(policy, collator(pairs))  # the adapter as separate layers
    merged = dpo_train.reference_logps(policy, pairs, collator, 4, "sft")
    assert merged[0] == pytest.approx(c.tolist(), abs=1e-4) and merged[1] == pytest.approx(r.tolist(), abs=1e-4)
    assert not any(getattr(m, "merged", False) for m in policy.modules())  # taken out again
    for name, value in before.items():
        assert torch.allclose(value, dict(policy.named_parameters())[name], atol=1e-6), name
    policy.peft_config["default"].use_dora = True  # DoRA (and 4-bit or ZeRO-3 weights) run the plain pass
    assert not dpo_train.can_merge(policy)


def test_gradient_checkpointing_takes_the_same_steps(base, tmp_path):
    model, tok = base
    pairs = _pairs(4)
    collator = dpo_pairs.PairCollator(tok.pad_token_id)
    plain, checkpointed = _policy(model), _policy(model)
    dpo_loop.train(plain, pairs, [], collator, _settings(steps=2), FP32, tmp_path / "a", "fp")
    dpo_loop.train(checkpointed, pairs, [], collator, _settings(steps=2, gradient_checkpointing=True), FP32, tmp_path / "b", "fp")
    for name, value in _trainable(plain).items():
        assert torch.allclose(value, _trainable(checkpointed)[name], atol=1e-6), name
    assert not checkpointed.base_model.model.is_gradient_checkpointing  # switched off again for saving and serving


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_steps_run_under_autocast(base, tmp_path, precision):
    """The GPU precisions' code paths (autocast; for fp16 a loss scaler) on the CPU, where torch supports both."""
    model, tok = base
    result = dpo_loop.train(_policy(model), _pairs(4), _pairs(2), dpo_pairs.PairCollator(tok.pad_token_id),
                            _settings(steps=2), DevicePlan("cpu", precision, "test"), tmp_path / precision, "fp")
    assert result.global_step == 2 and all(math.isfinite(e.get("loss", e.get("eval_loss"))) for e in result.log)


def test_the_guard_backtracks_at_half_the_rate_and_keeps_only_weights_it_accepted(base, tmp_path):
    """A guard that accepts the first evaluation only: two returns to step 1's weights at half the learning rate,
    then the stop; the model leaves with step 1's weights."""
    model, tok = base
    pairs, held = _pairs(8), _pairs(3)
    seen, kept = [], {}

    def guard(metrics):
        seen.append(metrics["eval_loss"])
        if len(seen) == 1:
            kept.update(_trainable(policy))
            return True
        return False

    policy = _policy(model)
    result = dpo_loop.train(policy, pairs, held, dpo_pairs.PairCollator(tok.pad_token_id),
                            _settings(steps=10, eval_every=1), FP32, tmp_path / "g", "fp", guard=guard)
    assert result.guard_step == 1 and result.guard_backtracks == dpo_loop.GUARD_BACKTRACKS and result.guard_stopped
    assert result.global_step == 2 + dpo_loop.GUARD_BACKTRACKS  # step 1 accepted, then one rejection per step
    rates = [e["learning_rate"] for e in result.log if "learning_rate" in e]
    assert rates[-1] < rates[0]  # halved twice (under the schedule's own decay)
    assert [e["step"] for e in result.log if "guard" in e] == [2, 3]
    for name, value in kept.items():
        assert torch.equal(value, _trainable(policy)[name]), name


def test_a_guard_that_accepts_nothing_leaves_the_starting_weights(base, tmp_path):
    model, tok = base
    policy = _policy(model)
    start = _trainable(policy)
    result = dpo_loop.train(policy, _pairs(8), _pairs(3), dpo_pairs.PairCollator(tok.pad_token_id),
                            _settings(steps=6, eval_every=2), FP32, tmp_path / "n", "fp", guard=lambda m: False)
    assert result.guard_step == 0 and result.guard_backtracks == 2  # at steps 2 and 4; the final one said no too
    for name, value in start.items():
        assert torch.equal(value, _trainable(policy)[name]), name
