"""A tiny pipeline for the reward-model and RL tests, trained once per session up to the requested stage.

Its base model trains for 80 steps (the shared training fixture's takes 6): a base that has seen the corpus puts a
little probability on sentence ends, which the rule-reward test needs to have something to reinforce.
"""

from __future__ import annotations

from llm_pipeline.config import PipelineConfig
from llm_pipeline_tests.training.fixtures import tiny_config, write_deduped_shards

ORDER = ("tokenizer", "base_checkpoint", "lora_adapter", "reward_model", "rl_model")
_BUILT: dict[str, tuple[PipelineConfig, dict]] = {}


def rlhf_config(root) -> PipelineConfig:
    return tiny_config(
        root,
        base_checkpoint={"train_steps": 80, "learning_rate": 1e-2, "eval_every": 40, "checkpoint_every": 40},
        # Another document's text as the rejected side: six pairs the tiny reward model separates in 12 steps. Its
        # own samples (the default) are gibberish it scores the same as the chosen text for longer than a test runs.
        dpo_model={"rejected": "other_document"},
        reward_model={"max_steps": 12, "batch_size": 4},
        rl_model={"max_steps": 4, "max_new_tokens": 8, "eval_prompts": 6},
    )


def rlhf_pipeline(tmp_path_factory, upto: str):
    """(cfg, results): the stages up to and including `upto`, each run once per session through the runner."""
    from llm_pipeline.runner import run_stage

    if "cfg" not in _BUILT:
        cfg = rlhf_config(tmp_path_factory.mktemp("rlhf-pipeline"))
        write_deduped_shards(cfg.data_path)
        _BUILT["cfg"] = (cfg, {})
    cfg, results = _BUILT["cfg"]
    for name in ORDER[: ORDER.index(upto) + 1]:
        if name not in results:
            results[name] = run_stage(cfg, name)
    return cfg, results
