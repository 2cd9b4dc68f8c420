"""Scale a training stage out to several GPUs or machines: the `accelerate launch` / `deepspeed` command line that runs
the same stage entry (``python -m llm_pipeline stage ASSET``) in every process, and the Accelerate config file it
reads. Nothing here starts a process; the command is printed (or returned) for the user or a scheduler to run.

    plan = launch_plan("lora_adapter", "configs/smollm2.yaml", num_processes=8, deepspeed="zero2")
    plan.write(Path("launch"))          # writes launch/accelerate.yaml
    print(plan.shell())                 # accelerate launch --config_file launch/accelerate.yaml -m llm_pipeline ...

Multi-node: give `num_machines`, `machine_rank` (0 on the main node) and `main_process_ip`; run the same command on
every node with its own `machine_rank`. The DeepSpeed JSON files under ``configs/deepspeed/`` use "auto" for every
value the Hugging Face Trainer knows (batch sizes, accumulation, clipping, precision), so the stage config stays the
one place those numbers are set; `pretrain_deepspeed_config` fills them for the base_checkpoint loop, which has no
Trainer. See docs/training.md.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEEPSPEED_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
DEEPSPEED_PRESETS = ("zero2", "zero3")
TRAINING_STAGES = ("base_checkpoint", "lora_adapter", "dpo_model")
DEFAULT_PORT = 29500  # torch.distributed's customary rendezvous port


class LaunchError(ValueError):
    """A launch that cannot work as asked (unknown stage or preset, inconsistent node settings)."""


def deepspeed_config_path(preset_or_path: str) -> Path:
    """`zero2` / `zero3` (files under configs/deepspeed/) or a path to a DeepSpeed JSON of one's own."""
    path = DEEPSPEED_DIR / f"{preset_or_path}.json" if preset_or_path in DEEPSPEED_PRESETS else Path(preset_or_path)
    if not path.is_file():
        raise LaunchError(f"DeepSpeed config {preset_or_path!r} not found (presets: {', '.join(DEEPSPEED_PRESETS)})")
    json.loads(path.read_text(encoding="utf-8"))  # a broken file fails here, not on 8 GPUs at once
    return path


def accelerate_config(
    num_processes: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
    main_process_port: int = DEFAULT_PORT,
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16",
    deepspeed_file: Path | None = None,
) -> dict[str, Any]:
    """The mapping `accelerate launch --config_file` reads (the format `accelerate config` writes)."""
    if num_processes < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise LaunchError(f"need num_processes >= 1, num_machines >= 1 and 0 <= machine_rank < num_machines "
                          f"(got {num_processes}, {num_machines}, {machine_rank})")
    if num_processes % num_machines:
        raise LaunchError(f"num_processes {num_processes} (all machines together) is not a multiple of num_machines {num_machines}")
    if num_machines > 1 and not main_process_ip:
        raise LaunchError("a multi-node launch needs main_process_ip (the address of the machine with machine_rank 0)")
    distributed = "DEEPSPEED" if deepspeed_file else ("MULTI_GPU" if num_processes > 1 else "NO")
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": distributed,
        "mixed_precision": mixed_precision,
        "use_cpu": False,
        "debug": False,
        "num_processes": num_processes,
        "num_machines": num_machines,
        "machine_rank": machine_rank,
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "enable_cpu_affinity": False,
        "downcast_bf16": "no",
    }
    if num_machines > 1:
        cfg.update(main_process_ip=main_process_ip, main_process_port=main_process_port)
    if deepspeed_file:
        # The JSON is the single source of DeepSpeed settings; accelerate only points at it.
        cfg["deepspeed_config"] = {"deepspeed_config_file": str(deepspeed_file), "deepspeed_multinode_launcher": "standard"}
        # accelerate refuses a config that sets precision both here and in the DeepSpeed file; the file decides.
        cfg.pop("mixed_precision", None)
    return cfg


@dataclass
class LaunchPlan:
    """A ready-to-run command line and the files it needs."""

    argv: list[str]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> content (YAML mapping)
    env: dict[str, str] = field(default_factory=dict)

    def write(self, folder: Path) -> dict[str, Path]:
        """Write the plan's files under `folder` and point the command at them; returns name -> path."""
        import yaml

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = {}
        for name, content in self.files.items():
            path = folder / name
            path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
            written[name] = path
        self.argv = [str(written[a]) if a in written else a for a in self.argv]
        return written

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


def stage_argv(asset: str, config: str | Path) -> list[str]:
    if asset not in TRAINING_STAGES:
        raise LaunchError(f"{asset!r} is not a training stage; scale-out applies to {', '.join(TRAINING_STAGES)}")
    return ["-m", "llm_pipeline", "stage", asset, "--config", str(config)]


def launch_plan(
    asset: str,
    config: str | Path,
    num_processes: int,
    *,
    launcher: Literal["accelerate", "deepspeed"] = "accelerate",
    deepspeed: str | None = None,
    num_machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
    main_process_port: int = DEFAULT_PORT,
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16",
    hostfile: str | None = None,
) -> LaunchPlan:
    """The command that runs `llm-pipeline stage ASSET` in `num_processes` processes (all machines together)."""
    ds_file = deepspeed_config_path(deepspeed) if deepspeed else None
    tail = stage_argv(asset, config)
    if launcher == "accelerate":
        acc = accelerate_config(num_processes, num_machines, machine_rank, main_process_ip, main_process_port, mixed_precision, ds_file)
        argv = ["accelerate", "launch", "--config_file", "accelerate.yaml", *tail]
        return LaunchPlan(argv, {"accelerate.yaml": acc})
    if launcher != "deepspeed":
        raise LaunchError(f"unknown launcher {launcher!r}; use accelerate or deepspeed")
    if ds_file is None:
        raise LaunchError("the deepspeed launcher needs a DeepSpeed config (deepspeed='zero2', 'zero3' or a path)")
    if num_processes % num_machines:
        raise LaunchError(f"num_processes {num_processes} is not a multiple of num_machines {num_machines}")
    argv = ["deepspeed", "--num_gpus", str(num_processes // num_machines)]
    if num_machines > 1:
        if not (hostfile and main_process_ip):
            raise LaunchError("a multi-node deepspeed launch needs hostfile and main_process_ip")
        argv += ["--num_nodes", str(num_machines), "--hostfile", hostfile, "--master_addr", main_process_ip,
                 "--master_port", str(main_process_port)]
    # --no_local_rank: the stage CLI takes no --local_rank; processes read LOCAL_RANK from the environment.
    argv += ["--no_local_rank", "--module", *tail[1:]]
    # The Trainer-based stages read the DeepSpeed file from here (accelerate sets its own variables instead).
    return LaunchPlan(argv, env={"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ds_file)})


def filled_deepspeed_config(preset_or_path: str, training_args, hidden_size: int, num_training_steps: int) -> dict[str, Any]:
    """The DeepSpeed config with every "auto" filled as the Hugging Face Trainer fills it at run time.

    Lets a launch be checked before any GPU is held: the result loads with DeepSpeed's own config class.
    """
    from types import SimpleNamespace

    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    hf = HfTrainerDeepSpeedConfig(json.loads(deepspeed_config_path(preset_or_path).read_text(encoding="utf-8")))
    hf.trainer_config_process(training_args)
    hf.trainer_config_finalize(training_args, SimpleNamespace(config=SimpleNamespace(hidden_size=hidden_size)), num_training_steps)
    return hf.config


def pretrain_deepspeed_config(config: dict[str, Any], *, batch_size: int, grad_clip: float, precision: str,
                              hidden_size: int, num_processes: int) -> dict[str, Any]:
    """A copy of a DeepSpeed config with every "auto" filled for the base_checkpoint loop (which has no Trainer).

    The loop takes one optimizer step per `batch_size` rows on each process and brings its own AdamW and schedule, so
    accumulation, an `optimizer` or a `scheduler` section are refused; a value set by hand must agree with the stage
    config. The bucket sizes follow the rule the Trainer and Accelerate use (from the model's hidden size).
    """
    import copy

    if precision not in ("fp32", "bf16", "fp16"):
        raise LaunchError(f"unknown precision {precision!r}")
    filled = copy.deepcopy(config)
    refused = [k for k in ("optimizer", "scheduler") if k in filled]
    if refused:
        raise LaunchError(f"the DeepSpeed config sets {', '.join(refused)}: base_checkpoint brings its own AdamW and "
                          "learning-rate schedule (remove those sections)")
    required = {  # set when absent: DeepSpeed would otherwise not clip, or guess the batch
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": batch_size * num_processes,
        "gradient_clipping": grad_clip,
    }
    present_only = {  # filled where the file has them
        "bf16.enabled": precision == "bf16",
        "fp16.enabled": precision == "fp16",
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    mismatches = []
    for key, value in [*required.items(), *present_only.items()]:
        *parents, leaf = key.split(".")
        node = filled
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or (leaf not in node and key in present_only):
            continue
        current = node.get(leaf, "auto")
        if current == "auto":
            node[leaf] = value
        elif not _agrees(current, value):
            mismatches.append(f"{key}={current!r} (base_checkpoint needs {value!r})")
    if precision in ("bf16", "fp16") and precision not in filled:
        filled[precision] = {"enabled": True}
    if mismatches:
        raise LaunchError("the DeepSpeed config disagrees with the base_checkpoint settings: " + "; ".join(mismatches)
                          + ' (set these to "auto")')
    left = [k for k, v in _flatten(filled).items() if v == "auto"]
    if left:
        raise LaunchError(f"the base_checkpoint loop cannot fill these \"auto\" DeepSpeed values: {', '.join(left)}")
    return filled


def _agrees(current: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool):  # DeepSpeed reads "true"/"false" strings as booleans too
        return str(current).lower() == str(wanted).lower()
    return current == wanted


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def distributed_rank() -> tuple[int, int]:
    """(global rank, world size) of this process as the launchers set them; (0, 1) when not launched."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
