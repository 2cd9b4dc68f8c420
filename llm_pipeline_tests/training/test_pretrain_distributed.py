"""base_checkpoint scaled out: the real stage under `accelerate launch` in 2 processes (DDP over gloo on CPU) against
the same stage in one process, and the DeepSpeed JSON presets filled for the pretraining loop and checked with
DeepSpeed's own config class.

A real DeepSpeed run of the stage is here too but runs only on a CUDA machine (or with LLM_PIPELINE_DEEPSPEED_CPU=1):
on CPU, DeepSpeed compiles a C++ communication op on first use, which took over 4 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llm_pipeline.config import load_config
from llm_pipeline.io import MANIFEST, STATS, read_json
from llm_pipeline.runner import run_stage
from llm_pipeline.training.launch import DEEPSPEED_DIR, LaunchError, pretrain_deepspeed_config
from llm_pipeline_tests.training.fixtures import VOCAB, write_deduped_shards

BASE = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "max_positions": 64,
        "train_steps": 6, "seq_len": 32, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3}
LAUNCH_TIMEOUT = 300  # two processes importing torch and transformers on 2 busy cores: ~40 s seen, 300 s is a hang


def write_project(project: Path, name: str = "pipeline.yaml", **base_checkpoint) -> Path:
    project.mkdir(parents=True, exist_ok=True)
    config = project / name
    config.write_text(yaml.safe_dump({
        "data_dir": "data", "seed": 7,
        "domains": {d: {"sources": [{"path": f"in/{d}"}]} for d in VOCAB},
        "tokenizer": {"vocab_size": 300, "min_frequency": 2},
        "base_checkpoint": {**BASE, **base_checkpoint},
        "tracking": {"wandb": False},
    }))
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(scratch: Path, **extra: str) -> dict[str, str]:
    # Nothing of an outer launch may leak in; TMPDIR catches the scratch folders of the ranks other than 0.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    return {**env, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1", **extra}


def losses(output: Path) -> list[float]:
    return [e["loss"] for e in json.loads((output / "training_log.json").read_text())]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny pretraining in one process (batch 4 and batch 8) and under `accelerate launch` with 2 processes
    at batch 4 per process. The launch runs while the single-process stages train, to keep the wall time down."""
    root = tmp_path_factory.mktemp("pretrain-distributed")
    single = root / "single"
    cfg = load_config(write_project(single), root=single)
    write_deduped_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")
    launched = root / "launched"
    shutil.copytree(single, launched)  # same shards and tokenizer
    scratch = root / "scratch"
    scratch.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "llm_pipeline", "stage", "base_checkpoint", "--config", "pipeline.yaml"]
    proc = subprocess.Popen(cmd, cwd=launched, env=launch_env(scratch), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        one = run_stage(cfg, "base_checkpoint")
        one_stats, one_losses = dict(one.stats), losses(one.output_dir)
        one_weights = load_file(one.output_dir / "model.safetensors")
        wide = run_stage(load_config(write_project(single, "batch8.yaml", batch_size=8), root=single), "base_checkpoint")
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"single": (one_stats, one_losses, one_weights), "wide": (dict(wide.stats), losses(wide.output_dir)),
            "launch": (proc.returncode, out), "launched": launched, "scratch": scratch}


def test_two_process_launch_completes_and_rank_0_alone_writes_the_output(runs):
    rc, out = runs["launch"]
    assert rc == 0, out[-4000:]
    data = runs["launched"] / "data"
    output = data / "base_checkpoint"
    assert read_json(output / MANIFEST)["stage"] == "base_checkpoint"
    assert read_json(output / STATS)["processes"] == 2
    # One finished output and nothing half-written beside it; the other rank's scratch folder is gone.
    assert sorted(p.name for p in data.iterdir() if "base_checkpoint" in p.name) == ["base_checkpoint"]
    assert list(runs["scratch"].glob("llmp-rank*")) == []
    assert sorted((data / "metrics").rglob("*.json")) == [data / "metrics" / "base_checkpoint.json", data / "metrics" / "plots" / "base_checkpoint-eval_loss.json",
                                                          data / "metrics" / "plots" / "base_checkpoint-loss.json",
                                                          data / "metrics" / "tokenizer.json"]
    assert not (data / ".checkpoints" / "base_checkpoint").exists()  # rank 0 cleared the step-3 checkpoint at the end
    model = AutoModelForCausalLM.from_pretrained(output)
    assert model.config.hidden_size == 32 and model.config.use_cache


def test_each_rank_trains_its_own_slice_so_tokens_double(runs):
    one_stats, _, _ = runs["single"]
    stats = read_json(runs["launched"] / "data" / "base_checkpoint" / STATS)
    assert stats["steps"] == one_stats["steps"] == 6
    assert stats["train_tokens"] == 2 * one_stats["train_tokens"]
    assert stats["epochs"] == pytest.approx(2 * one_stats["epochs"], abs=2e-3)  # each rounded to 3 places


def test_two_processes_at_batch_4_follow_one_process_at_batch_8(runs):
    # The global batch of 2 x 4 rows is the single process's batch of 8 (same rows, same order), and DDP averages
    # the two ranks' gradients, so the loss curves agree up to float summation order.
    wide_stats, wide_losses = runs["wide"]
    launched = runs["launched"] / "data" / "base_checkpoint"
    stats = read_json(launched / STATS)
    assert stats["train_tokens"] == wide_stats["train_tokens"]
    assert losses(launched) == pytest.approx(wide_losses, abs=2e-4)
    assert stats["eval_loss"] == pytest.approx(wide_stats["eval_loss"], abs=2e-4)


@pytest.mark.parametrize("preset, stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_presets_are_filled_for_the_pretraining_loop(preset, stage):
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads((DEEPSPEED_DIR / f"{preset}.json").read_text())
    filled = pretrain_deepspeed_config(raw, batch_size=4, grad_clip=0.5, precision="bf16", hidden_size=64, num_processes=1)
    assert "auto" not in json.dumps(filled) and "auto" in json.dumps(raw)  # a copy: the file's mapping is untouched
    ds = DeepSpeedConfig(filled)  # DeepSpeed's own validation (world size 1 here)
    assert ds.zero_optimization_stage == stage
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.train_batch_size) == (4, 1, 4)
    assert ds.gradient_clipping == 0.5 and ds.bfloat16_config.enabled and not ds.float16_config.enabled
    assert filled["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    eight = pretrain_deepspeed_config(raw, batch_size=4, grad_clip=1.0, precision="fp32", hidden_size=64, num_processes=8)
    assert eight["train_batch_size"] == 32 and eight["bf16"]["enabled"] is False and eight["fp16"]["enabled"] is False


@pytest.mark.parametrize(
    "change, message",
    [
        ({"optimizer": {"type": "AdamW"}}, "brings its own AdamW"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps=2"),
        ({"train_micro_batch_size_per_gpu": 16}, "train_micro_batch_size_per_gpu=16"),
        ({"bf16": {"enabled": True}}, "bf16.enabled=True"),  # the device plan says fp32 below
        ({"zero_optimization": {"stage": 2, "sub_group_size": "auto"}}, "cannot fill"),
    ],
)
def test_deepspeed_settings_the_loop_cannot_honour_are_refused(change, message):
    raw = {**json.loads((DEEPSPEED_DIR / "zero2.json").read_text()), **change}
    with pytest.raises(LaunchError, match=message):
        pretrain_deepspeed_config(raw, batch_size=4, grad_clip=1.0, precision="fp32", hidden_size=64, num_processes=1)


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("LLM_PIPELINE_DEEPSPEED_CPU") == "1"),
                    reason="needs CUDA (DeepSpeed on CPU compiles a C++ op on first use: minutes); LLM_PIPELINE_DEEPSPEED_CPU=1 runs it")
def test_deepspeed_zero3_run_saves_the_gathered_fp32_weights(runs, tmp_path):
    project = tmp_path / "zero3"
    shutil.copytree(runs["launched"].parent / "single", project)
    shutil.rmtree(project / "data" / "base_checkpoint")
    env = launch_env(tmp_path, ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_CONFIG_FILE=str(DEEPSPEED_DIR / "zero3.json"))
    if not torch.cuda.is_available():  # the fp32 single-process run is the reference
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        cmd = [sys.executable, "-m", "llm_pipeline", "stage", "base_checkpoint", "--config", "pipeline.yaml"]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--use_deepspeed",
               "--main_process_port", str(free_port()), "-m", "llm_pipeline", "stage", "base_checkpoint", "--config", "pipeline.yaml"]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    output = project / "data" / "base_checkpoint"
    assert json.loads((output / "config.json").read_text())["dtype"] == "float32"
    weights = load_file(output / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    if not torch.cuda.is_available():
        _, one_losses, one_weights = runs["single"]
        assert losses(output) == pytest.approx(one_losses, abs=1e-4)
        for name, tensor in one_weights.items():
            torch.testing.assert_close(weights[name], tensor, atol=1e-5, rtol=1e-4)
