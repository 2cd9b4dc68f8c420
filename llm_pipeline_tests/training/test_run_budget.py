"""One budget over the whole run: every training stage of a tiny pipeline, run through the runner in order under
training.max_train_seconds, takes its part by the documented rule from what its upstream stages recorded as spent,
and records its part and what its clock counted. The figures asserted are the stages' own records, not wall time."""

import pytest

from llm_pipeline.io import read_timed
from llm_pipeline.runner import run_stage
from llm_pipeline.training import budget
from llm_pipeline_tests.training.fixtures import tiny_config, write_deduped_shards

TRAINING = ("base_checkpoint", "lora_adapter", "dpo_model", "reward_model", "rl_model")
UPSTREAM = {"base_checkpoint": (), "lora_adapter": ("base_checkpoint",), "dpo_model": ("base_checkpoint", "lora_adapter"),
            "reward_model": ("base_checkpoint", "lora_adapter"), "rl_model": ("base_checkpoint", "lora_adapter", "reward_model")}


@pytest.mark.parametrize("seconds", [600.0, 2.0])
def test_every_training_stage_takes_its_part_of_one_budget(tmp_path, seconds):
    """600 s: the step caps end every stage first, and each later stage inherits what the earlier ones left.
    2 s: the budget ends them, each after at least the one step a run always takes."""
    # The step floor off: at 2 s every part is below it, and this test is about how the parts are handed out.
    cfg = tiny_config(tmp_path, training={"max_train_seconds": seconds, "min_steps": 0}, dpo_model={"rejected": "other_document"},
                      reward_model={"max_steps": 4, "batch_size": 4}, rl_model={"max_steps": 2, "max_new_tokens": 8, "eval_prompts": 4})
    write_deduped_shards(cfg.data_path)
    out = {}
    for name in ("tokenizer", *TRAINING):
        out[name] = run_stage(cfg, name).output_dir
    recorded = {s: read_timed(out[s]) for s in TRAINING}
    for stage in TRAINING:
        expected, why = budget.stage_budget(cfg, stage, {u: out[u] for u in UPSTREAM[stage]})
        assert recorded[stage]["budget_seconds"] == expected, (stage, why)
        assert recorded[stage]["budget_spent_seconds"] > 0, stage
        # On a loaded machine a 2 s budget can be gone before DPO's first step (building the pairs and the reference
        # pass count against it): the stage then says so instead of training.
        skipped = recorded[stage].get("skipped") or ""
        assert recorded[stage]["steps"] >= 1 or "spent before the first step" in skipped, (stage, skipped)
    base, lora = (recorded[s]["budget_spent_seconds"] for s in ("base_checkpoint", "lora_adapter"))
    # The siblings split what SFT left by their shares; RL takes its share of what the reward model left of it.
    left = max(0.0, seconds - base - lora)
    floor = {s: seconds * v / sum(budget.stage_shares(cfg).values()) / 20 for s, v in budget.stage_shares(cfg).items()}
    assert recorded["dpo_model"]["budget_seconds"] == pytest.approx(max(left * 0.1 / 0.25, floor["dpo_model"]), abs=0.1)
    assert recorded["reward_model"]["budget_seconds"] == pytest.approx(max(left * 0.05 / 0.25, floor["reward_model"]), abs=0.1)
    if seconds == 600.0:
        # Nothing overran: the parts handed out never exceed the budget left after what was spent before them.
        handed = base + lora + recorded["dpo_model"]["budget_seconds"] + recorded["reward_model"]["budget_spent_seconds"] \
            + recorded["rl_model"]["budget_seconds"]
        assert handed <= seconds + 0.5
