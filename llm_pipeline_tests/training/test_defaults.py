"""Training settings chosen per device and method, each with a reason, each overridable."""

import pytest

from llm_pipeline.training import defaults
from llm_pipeline.training.device import DevicePlan

CPU = DevicePlan("cpu", "fp32", "no native bf16")
GPU = DevicePlan("cuda", "bf16", "CUDA device supports bf16")


def test_every_setting_has_a_value_and_a_reason():
    s = defaults.choose("sft", "lora", CPU, n_params=1_000_000, memory_needed=10 * 2**20)
    meta = s.as_metadata()
    assert set(meta) >= {"precision", "device", "learning_rate", "warmup_ratio", "gradient_checkpointing", "cpu_threads"}
    assert all(v["reason"] for v in meta.values())


@pytest.mark.parametrize("stage, method, lr", [("sft", "lora", 1e-3), ("sft", "full", 1e-4), ("dpo", "lora", 1e-3), ("dpo", "full", 5e-6), ("sft", "ia3", 5e-3)])
def test_learning_rate_per_stage_and_method(stage, method, lr):
    s = defaults.choose(stage, method, CPU, n_params=10**6, memory_needed=0)
    assert s.value("learning_rate") == lr
    assert s.value("warmup_ratio") == defaults.WARMUP[stage]["full" if method == "full" else "adapter"]


def test_config_values_win():
    s = defaults.choose("sft", "lora", CPU, 10**6, 0, learning_rate=3e-4, warmup_ratio=0.2, gradient_checkpointing=True, cpu_threads=3)
    assert s.values().items() >= {"learning_rate": 3e-4, "warmup_ratio": 0.2, "gradient_checkpointing": True, "cpu_threads": 3}.items()
    assert {s.chosen[k]["reason"] for k in ("learning_rate", "warmup_ratio", "gradient_checkpointing", "cpu_threads")} == {"set in config"}


def test_gradient_checkpointing_only_when_memory_needs_it():
    free = defaults.available_memory_bytes(CPU)
    assert defaults.choose("sft", "lora", CPU, 10**6, memory_needed=free // 10).value("gradient_checkpointing") is False
    on = defaults.choose("sft", "lora", CPU, 10**6, memory_needed=free)
    assert on.value("gradient_checkpointing") is True and "exceeds" in on.chosen["gradient_checkpointing"]["reason"]


def test_threads_all_cores_for_real_models_one_for_tiny_ones():
    assert defaults.choose("sft", "lora", CPU, 100_000, 0).value("cpu_threads") == 1
    assert defaults.choose("sft", "lora", CPU, 135_000_000, 0).value("cpu_threads") == defaults.available_cores()


def test_threads_follow_the_size_of_a_pass_not_the_parameter_count():
    class Cfg:
        hidden_size = 256

    # A 4M-parameter model with 8 x 160 tokens a pass: 84M multiply-accumulates a projection, worth every core.
    big = defaults.choose("dpo", "lora", CPU, 4_000_000, 0, op_macs=defaults.projection_macs(Cfg, 8 * 160))
    assert big.value("cpu_threads") == defaults.available_cores() and "84M" in big.chosen["cpu_threads"]["reason"]
    # The same model on 2 x 32 tokens a pass: too small to split.
    small = defaults.choose("dpo", "lora", CPU, 4_000_000, 0, op_macs=defaults.projection_macs(Cfg, 2 * 32))
    assert small.value("cpu_threads") == 1 and "multiply-accumulates" in small.chosen["cpu_threads"]["reason"]
    assert defaults.choose("dpo", "lora", GPU, 4_000_000, 0, op_macs=1).value("cpu_threads") == min(defaults.available_cores(), 4)


def test_memory_estimate_grows_with_batch_and_vocabulary():
    class Cfg:
        hidden_size, num_hidden_layers, num_attention_heads, vocab_size = 576, 30, 9, 49152

    small = defaults.training_memory_bytes(Cfg, 135_000_000, 1_000_000, 1, 128, "fp32")
    big = defaults.training_memory_bytes(Cfg, 135_000_000, 1_000_000, 8, 512, "fp32")
    assert big > 10 * small - 135_000_000 * 4 * 10 and small > 135_000_000 * 4


def test_precision_reason_comes_from_the_device_plan():
    assert defaults.choose("dpo", "lora", GPU, 10**8, 0).chosen["precision"] == {"value": "bf16", "reason": GPU.reason}
