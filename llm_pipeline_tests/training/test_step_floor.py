"""The step floor: under training.max_train_seconds, dpo_model, reward_model and rl_model are skipped with the reason
when their part cannot buy training.min_steps steps at the step time estimated from what lora_adapter measured.
The upstream figures here are the ones a real 2-core run recorded (benchmarks/README.md, second measurement), written
as lora_adapter's stats; the tiny stages then run through the runner for real and skip before loading anything."""

import json

import pytest

from llm_pipeline.io import write_json
from llm_pipeline.runner import run_stage
from llm_pipeline.training import budget, step_floor
from llm_pipeline_tests.training.fixtures import built_pipeline, tiny_config

# lora_adapter on SmolLM2-135M, 2-core CPU: 22 steps of 8 x 128 tokens, a median step of 17.8 s.
REAL_SFT = {"steps": 22, "tokens_trained": 22 * 1024, "step_seconds": 17.8, "tokens_per_second": 57.5}


def _upstream(tmp_path, stats=REAL_SFT):
    folder = tmp_path / "lora_adapter"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "stats.json", stats)
    return {"lora_adapter": folder}


def test_a_share_that_buys_one_step_skips_the_stage_with_the_figures(tmp_path):
    cfg = tiny_config(tmp_path, training={"max_train_seconds": 900}, dpo_model={"batch_size": 8, "max_length": 128},
                      reward_model={"batch_size": 8})  # the defaults, as in that run
    why, record = step_floor.check(cfg, "dpo_model", 96.0, "", _upstream(tmp_path))
    # DPO: 8 pairs x 2 sequences x 128 tokens, forward and backward plus the reference forward = 2.67 SFT steps.
    assert record["estimated_step_seconds"] == pytest.approx(17.8 * 8 / 3, rel=1e-3)
    assert record["affordable_steps"] == 1 and record["min_steps"] == 5
    assert why == ("share 96 s buys ~1 step at ~47 s/step (estimated from lora_adapter's 17.8 s per step of 1,024 "
                   "tokens); needs >= 5 (training.min_steps)")
    for stage in ("reward_model", "rl_model"):
        why, record = step_floor.check(cfg, stage, 90.0, "", _upstream(tmp_path))
        assert why and record["affordable_steps"] < 5 and record["estimated_step_seconds"] > 17.8
    # A share that buys its steps runs.
    why, record = step_floor.check(cfg, "dpo_model", 600.0, "", _upstream(tmp_path))
    assert why is None and record["affordable_steps"] == 11


def test_the_floor_applies_to_a_part_of_the_run_budget_only(tmp_path):
    up = _upstream(tmp_path)
    off = tiny_config(tmp_path, training={"max_train_seconds": 900, "min_steps": 0})
    assert step_floor.check(off, "dpo_model", 10.0, "", up) == (None, {"checked": False, "why": "training.min_steps is 0"})
    own = tiny_config(tmp_path, training={"max_train_seconds": 900}, dpo_model={"max_train_seconds": 10})
    assert step_floor.check(own, "dpo_model", 10.0, "", up)[0] is None  # the user's own budget for the stage stands
    cfg = tiny_config(tmp_path)
    assert step_floor.check(cfg, "dpo_model", None, "", up)[0] is None  # no budget
    why, record = step_floor.check(tiny_config(tmp_path, training={"max_train_seconds": 900}), "dpo_model", 10.0, "", {})
    assert why is None and record == {"checked": False, "why": "no upstream stage recorded its speed"}
    # base_checkpoint's tokens per second stand in when SFT recorded no steps.
    base = tmp_path / "base_checkpoint"
    base.mkdir()
    write_json(base / "stats.json", {"tokens_per_second": 100.0})
    why, record = step_floor.check(tiny_config(tmp_path, training={"max_train_seconds": 900}), "dpo_model", 10.0, "", {"base_checkpoint": base})
    assert why and "base_checkpoint's 100 tokens/s" in why


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return built_pipeline(tmp_path_factory, "lora_adapter")


def test_skipped_stages_say_why_load_nothing_and_rl_follows_the_reward_model(pipeline, tmp_path):
    cfg, results = pipeline
    budgeted = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_train_seconds": 20.0})})
    lora = results["lora_adapter"].output_dir
    # What a real CPU measured, as lora_adapter's timings (the runner keeps wall-clock figures there).
    timings = json.loads((lora / ".timings.json").read_text()) if (lora / ".timings.json").exists() else {}
    timings.setdefault("stats.json", {}).update({k: REAL_SFT[k] for k in ("step_seconds", "tokens_trained", "steps")})
    (lora / ".timings.json").write_text(json.dumps(timings))
    # (The stages' parts follow from what base_checkpoint and lora_adapter recorded as spent: a few seconds here.)
    dpo = run_stage(budgeted, "dpo_model")
    # Planned out as soon as base_checkpoint recorded its speed, or by lora_adapter's measured steps: either way, why.
    assert dpo.stats["skipped"].startswith(("share ", "planned out")) and "needs >= 5 (training.min_steps)" in dpo.stats["skipped"]
    assert dpo.stats["budget_seconds"] == budget.stage_budget(budgeted, "dpo_model", {"base_checkpoint": results["base_checkpoint"].output_dir, "lora_adapter": lora})[0]
    assert not (dpo.output_dir / "adapter_config.json").exists() and dpo.stats["step_floor"]["affordable_steps"] < 5
    rm = run_stage(budgeted, "reward_model")
    assert "needs >= 5 (training.min_steps)" in rm.stats["skipped"] and not (rm.output_dir / "adapter_config.json").exists()
    rl = run_stage(budgeted, "rl_model")
    assert rl.stats["skipped"] and rl.stats["steps"] == 0
    from llm_pipeline.stages.eval_report import _skip_reason

    assert _skip_reason(dpo.output_dir) == f"dpo_model skipped training: {dpo.stats['skipped']}"
    assert _skip_reason(rl.output_dir).startswith("rl_model skipped training: ")
    # The CLI's line for the stage says it skipped, not a blank.
    from llm_pipeline.defs.local_run import _headline

    assert _headline(dpo.stats).startswith("skipped: ") and len(_headline(dpo.stats)) <= 99


def test_planned_up_front_the_shares_of_stages_that_cannot_run_go_to_lora_adapter(tmp_path):
    """As soon as base_checkpoint has recorded its speed (a real 2-core run: 67 tokens/s, 270 s of a 900 s budget),
    the stages whose part would buy too few steps are planned out, and lora_adapter gets what is left; each of them,
    when it starts, skips with the plan's reason. A budget that affords them plans nothing out."""
    base = tmp_path / "base_checkpoint"
    base.mkdir()
    write_json(base / "stats.json", {"tokens_per_second": 67.0, "budget_spent_seconds": 270.0})
    defaults = {"dpo_model": {"batch_size": 8, "max_length": 128}, "reward_model": {"batch_size": 8}}
    cfg = tiny_config(tmp_path, training={"max_train_seconds": 900}, **defaults)
    planned = step_floor.plan(cfg, {"base_checkpoint": base})
    assert {"dpo_model", "reward_model", "rl_model"} == set(planned)
    assert planned["dpo_model"]["planned_share_seconds"] == 90.0 and planned["dpo_model"]["affordable_steps"] == 1
    assert "the reward model it learns from is" in planned["rl_model"]["why"] or "affordable_steps" in planned["rl_model"]
    seconds, why = budget.stage_budget(cfg, "lora_adapter", {"base_checkpoint": base})
    assert seconds == 630.0 and "planned out by training.min_steps: dpo_model, reward_model, rl_model" in why
    skip, record = step_floor.check(cfg, "dpo_model", 4.5, "", {"base_checkpoint": base, "lora_adapter": tmp_path / "none"})
    assert skip.startswith("planned out after base_checkpoint: its share, ~90 s, buys ~1 step at ~41 s/step") and record["planned"]
    # Ten times the budget: every stage's part buys its steps, and the shares stay as configured.
    rich = tiny_config(tmp_path, training={"max_train_seconds": 9000}, **defaults)
    assert step_floor.plan(rich, {"base_checkpoint": base}) == {}
    assert budget.stage_budget(rich, "lora_adapter", {"base_checkpoint": base})[0] == round(8730 * 0.45 / 0.7, 3)
    # The floor off: nothing is planned out.
    off = tiny_config(tmp_path, training={"max_train_seconds": 900, "min_steps": 0}, **defaults)
    assert step_floor.plan(off, {"base_checkpoint": base}) == {}
