"""Scale-out launch configuration, checked on CPU with the launchers' own parsers and config classes."""

import json
import shlex

import pytest

from llm_pipeline.training.launch import (
    DEEPSPEED_DIR, LaunchError, accelerate_config, filled_deepspeed_config, launch_plan,
)


@pytest.mark.parametrize("preset, stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_presets_are_valid_once_the_trainer_fills_auto(tmp_path, preset, stage):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments

    raw = json.loads((DEEPSPEED_DIR / f"{preset}.json").read_text())
    assert raw["train_micro_batch_size_per_gpu"] == "auto" and raw["zero_optimization"]["stage"] == stage
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             max_grad_norm=0.5, use_cpu=True, report_to="none")
    filled = filled_deepspeed_config(preset, args, hidden_size=576, num_training_steps=100)
    assert "auto" not in json.dumps(filled)
    ds = DeepSpeedConfig(filled)  # DeepSpeed's own validation (world size 1 here)
    assert ds.zero_optimization_stage == stage
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.train_batch_size) == (4, 2, 8)
    assert ds.gradient_clipping == 0.5 and filled["zero_optimization"]["reduce_bucket_size"] == 576 * 576


@pytest.mark.parametrize(
    "kwargs, distributed",
    [
        ({"num_processes": 4}, "MULTI_GPU"),
        ({"num_processes": 4, "deepspeed": "zero2"}, "DEEPSPEED"),
        ({"num_processes": 16, "num_machines": 2, "machine_rank": 1, "main_process_ip": "10.0.0.1", "deepspeed": "zero3"}, "DEEPSPEED"),
    ],
)
def test_accelerate_launch_command_and_config_parse_with_accelerate(tmp_path, kwargs, distributed):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    plan = launch_plan("lora_adapter", "configs/smollm2.yaml", **kwargs)
    files = plan.write(tmp_path)
    cluster = ClusterConfig.from_yaml_file(str(files["accelerate.yaml"]))
    assert cluster.distributed_type.value == distributed and cluster.num_processes == kwargs["num_processes"]
    assert cluster.num_machines == kwargs.get("num_machines", 1) and cluster.machine_rank == kwargs.get("machine_rank", 0)
    if "deepspeed" in kwargs:
        assert cluster.deepspeed_config["deepspeed_config_file"].endswith(f"{kwargs['deepspeed']}.json")
    argv = shlex.split(plan.shell())
    assert argv[:2] == ["accelerate", "launch"]
    args = launch_command_parser().parse_args(argv[2:])
    assert args.module and args.training_script == "llm_pipeline" and args.config_file == str(files["accelerate.yaml"])
    assert args.training_script_args == ["stage", "lora_adapter", "--config", "configs/smollm2.yaml"]


def test_deepspeed_launcher_command_parses_with_deepspeed():
    from deepspeed.launcher.runner import parse_args

    plan = launch_plan("dpo_model", "configs/default.yaml", 16, launcher="deepspeed", deepspeed="zero2",
                       num_machines=2, main_process_ip="10.0.0.1", hostfile="hostfile")
    argv = shlex.split(plan.shell())
    env = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_CONFIG_FILE"].endswith("zero2.json")
    args = parse_args(argv[argv.index("deepspeed") + 1:])
    assert (args.num_gpus, args.num_nodes, args.master_addr, args.module, args.no_local_rank) == (8, 2, "10.0.0.1", True, True)
    assert args.user_script == "llm_pipeline" and args.user_args == ["stage", "dpo_model", "--config", "configs/default.yaml"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: launch_plan("tokenizer", "c.yaml", 2), "not a training stage"),
        (lambda: launch_plan("lora_adapter", "c.yaml", 2, deepspeed="zero9"), "not found"),
        (lambda: accelerate_config(8, num_machines=2), "main_process_ip"),
        (lambda: accelerate_config(7, num_machines=2, main_process_ip="h"), "not a multiple"),
        (lambda: launch_plan("lora_adapter", "c.yaml", 2, launcher="deepspeed"), "needs a DeepSpeed config"),
    ],
)
def test_impossible_launches_are_refused_with_a_reason(call, message):
    with pytest.raises(LaunchError, match=message):
        call()
