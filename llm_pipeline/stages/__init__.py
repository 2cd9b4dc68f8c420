"""The stages, in dependency order, and the contract each stage module keeps.

A stage module (``llm_pipeline.stages.<name>``) has one function::

    def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput

``inputs`` maps each upstream stage name to its output folder (the domain's subfolder for partitioned stages, the
folder holding every domain's subfolder for an unpartitioned stage reading a partitioned one). ``output_dir`` is an
empty temporary folder that the runner renames into place when ``run`` returns. The stage never imports dagster.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    partitioned: bool  # by domain
    description: str
    # Deps the stage reads when they are materialized and reports as "not run" when they are not (eval_report compares
    # the RL model when there is one). They stay in `deps`, so Dagster and dvc.yaml order them before the stage.
    optional: tuple[str, ...] = ()


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("raw_corpus", (), True, "Documents read from each domain's sources, with stable ids and metadata."),
        Stage("cleaned_corpus", ("raw_corpus",), True, "Cleaned, quality-filtered, language-checked, PII-redacted text."),
        Stage("deduped_shards", ("cleaned_corpus",), True, "Exact and near-duplicate free shards, validated."),
        Stage("tokenizer", ("deduped_shards",), False, "A domain tokenizer trained or extended on all domains."),
        Stage("base_checkpoint", ("tokenizer", "deduped_shards"), False, "The base model: pretrained, or trained from scratch."),
        Stage("lora_adapter", ("base_checkpoint", "tokenizer", "deduped_shards"), False, "A LoRA SFT adapter on the base model."),
        Stage("dpo_model", ("lora_adapter", "base_checkpoint", "tokenizer", "deduped_shards"), False, "The SFT model aligned with DPO."),
        Stage("reward_model", ("lora_adapter", "base_checkpoint", "tokenizer", "deduped_shards"), False, "A reward model (the SFT model with a scalar head) trained on the preference pairs."),
        Stage("rl_model", ("reward_model", "lora_adapter", "base_checkpoint", "deduped_shards"), False, "The SFT model trained online (RLOO/GRPO) against the reward model, with a KL penalty to SFT."),
        Stage("eval_report", ("dpo_model", "lora_adapter", "base_checkpoint", "tokenizer", "deduped_shards", "reward_model", "rl_model"), False,
              "Held-out comparison of base, SFT, DPO and RL models, and which one ships.", optional=("reward_model", "rl_model")),
    ]
}
ORDER = list(STAGES)


@dataclass
class StageOutput:
    """What a stage returns: numbers (become stats.json, DVC metrics and Dagster metadata) and a markdown preview."""

    stats: dict[str, Any]
    preview: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # extra Dagster metadata: plain values, md, paths


def stage_function(name: str) -> Callable[..., StageOutput]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(ORDER)}")
    return importlib.import_module(f"llm_pipeline.stages.{name}").run


def output_dir(data_dir: Path, name: str, domain: str | None = None) -> Path:
    base = Path(data_dir) / name
    return base / domain if domain is not None else base
