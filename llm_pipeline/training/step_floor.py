"""The step floor: a training stage whose part of the run budget cannot buy `training.min_steps` steps is skipped.

    why, record = step_floor.check(cfg, "dpo_model", budget_seconds, budget_why, {"lora_adapter": lora_dir, ...})
    if why: return step_floor.skipped_output(output_dir, "dpo_model", why, record, budget_seconds, budget_why, seconds)

On a 2-core CPU with training.max_train_seconds 900, dpo_model, reward_model and rl_model got 43-96 s each: one step
or none of a 135M model with its reference or reward model (40-80 s per step). Such a stage spends its part without
teaching anything, and the promotion gates then fall back to SFT anyway. So, before a stage loads anything, its step
time is estimated from what the run measured upstream (lora_adapter's median step seconds and tokens per step, else
base_checkpoint's tokens per second: seconds per trained token, a forward and a backward) times the tokens one of its
steps processes, in forward-and-backward units:

- dpo_model: the chosen and the rejected sequence of `batch_size` pairs (2 x batch_size x max_length tokens), forward
  and backward, plus the reference model's forward of both (a third of that): 2 x B x L x 4/3.
- reward_model: 2 x B x L forward and backward per model, twice when the judge trains too (each model must get its
  steps).
- rl_model: the update and its reference and reward forwards over prompts x generations sequences of max_length
  (P x G x L x (3 + 1 + 1)/3), plus sampling: max_new_tokens decoding passes, each costing about a forward of
  DECODE_PASS_TOKENS tokens (a small batch's decoding pass reads every weight like a longer forward does).

Against the second whole-run measurement (benchmarks/README.md; SFT 15-18 s per step of 8 x 128 tokens on SmolLM2-135M)
these give DPO ~2.7x, the reward model and its judge ~4x and RL ~3.8x an SFT step (45 / 68 / 65 s), where the run
measured 40-80 s per step of each: the estimates are on the low side, so a stage is skipped only when even an
optimistic count falls short. The steps may use the part less the evaluations' MAX_EVAL_SHARE (sampling the DPO
rejections is not subtracted: samples cached by a sibling stage cost nothing).

Up front (`plan`): once base_checkpoint has recorded its tokens per second, the stages whose prospective part would
fall short are planned out and `budget.stage_budget` gives their shares to the stages that run (lora_adapter first).

The floor applies to a part of training.max_train_seconds only: a stage's own `max_train_seconds` is the user's
explicit choice and is honoured. `training.min_steps: 0` turns the floor off. Without an upstream measurement (a
stage run alone on an old output) nothing is estimated and the stage runs.
"""

from __future__ import annotations

from pathlib import Path

from llm_pipeline.io import read_timed, write_json
from llm_pipeline.stages import StageOutput
from llm_pipeline.training.budget import MAX_EVAL_SHARE

DECODE_PASS_TOKENS = 64  # a decoding pass of a small batch costs about a forward of this many tokens on a CPU
LABELS = {"dpo_model": "DPO", "reward_model": "reward model", "rl_model": "RL"}


def seconds_per_token(upstream: dict[str, Path]) -> tuple[float | None, str]:
    """Seconds per trained token (forward and backward) as measured upstream, and where the figure came from."""
    for stage in ("lora_adapter", "base_checkpoint"):
        stats = _recorded(upstream.get(stage))
        step, tokens, steps = stats.get("step_seconds"), stats.get("tokens_trained"), stats.get("steps")
        if stage == "lora_adapter" and all(isinstance(v, (int, float)) and v > 0 for v in (step, tokens, steps)):
            per_step = tokens / steps
            return step / per_step, f"lora_adapter's {step:.1f} s per step of {per_step:,.0f} tokens"
        tps = stats.get("tokens_per_second")
        if isinstance(tps, (int, float)) and tps > 0:
            return 1.0 / tps, f"{stage}'s {tps:,.0f} tokens/s"
    return None, "no upstream stage recorded its speed"


def step_tokens(cfg, stage: str) -> float:
    """Forward-and-backward token units one step of `stage` costs (see the module docstring)."""
    dc = cfg.dpo_model
    if stage == "dpo_model":
        return 2 * dc.batch_size * dc.max_length * 4 / 3
    if stage == "reward_model":
        rc = cfg.reward_model
        return 2 * rc.batch_size * dc.max_length * (2 if rc.judge else 1)
    if stage == "rl_model":
        rl = cfg.rl_model
        sequences = (rl.prompts_per_step or 4) * (rl.generations_per_prompt or 4)
        length = rl.max_length or dc.max_length
        reward_forward = 1 if rl.reward_model_weight else 0
        return sequences * length * (3 + 1 + reward_forward) / 3 + rl.max_new_tokens * DECODE_PASS_TOKENS / 3
    raise ValueError(f"no step floor for stage {stage!r}")


def _seconds(value: float) -> str:
    """A step time for a reason line: whole seconds on a real model, two significant figures on a tiny one."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _recorded(folder: Path | None) -> dict:
    try:
        stats = read_timed(Path(folder)) if folder is not None else None
    except (OSError, ValueError):
        stats = None
    return stats if isinstance(stats, dict) else {}


def plan(cfg, upstream: dict[str, Path]) -> dict[str, dict]:
    """The stages planned out as soon as base_checkpoint has trained: {stage: record with `why`}.

    From base_checkpoint's measured tokens per second and the seconds it spent, each of dpo_model, reward_model and
    rl_model gets the part it would get if every later stage ran (what is left x its share over the shares of
    lora_adapter and the three); one whose part buys fewer than min_steps steps is out (and rl_model with the reward
    model it learns from), and `budget.stage_budget` hands its share to the stages that run (lora_adapter, and a
    sibling that clears the floor). Computed from base_checkpoint's record alone, so every later stage reads the same
    plan."""
    tc = cfg.training
    base = upstream.get("base_checkpoint")
    if tc.max_train_seconds is None or not tc.min_steps or base is None:
        return {}
    stats = _recorded(base)
    tps = stats.get("tokens_per_second")
    if not isinstance(tps, (int, float)) or tps <= 0:
        return {}
    spent = stats.get("budget_spent_seconds")
    if not isinstance(spent, (int, float)):
        spent = stats.get("seconds") if isinstance(stats.get("seconds"), (int, float)) else 0.0
    from llm_pipeline.training.budget import stage_shares

    shares = stage_shares(cfg)
    left = max(0.0, tc.max_train_seconds - spent)
    later = sum(v for s, v in shares.items() if s != "base_checkpoint")
    out: dict[str, dict] = {}
    for stage in ("dpo_model", "reward_model", "rl_model"):
        if getattr(cfg, stage).max_train_seconds is not None or not shares[stage] or not later:
            continue
        part = left * shares[stage] / later
        step = step_tokens(cfg, stage) / tps
        steps = int(part * (1 - MAX_EVAL_SHARE) // step) if step > 0 else tc.min_steps
        if steps < tc.min_steps:
            out[stage] = {"planned_share_seconds": round(part, 1), "estimated_step_seconds": round(step, 3), "affordable_steps": steps,
                          "why": (f"planned out after base_checkpoint: its share, ~{part:,.0f} s, buys ~{steps} step{'s' if steps != 1 else ''} "
                                  f"at ~{_seconds(step)} s/step (estimated from base_checkpoint's {tps:,.0f} tokens/s); needs >= "
                                  f"{tc.min_steps} (training.min_steps), so the share went to the stages that run")}
    if "reward_model" in out and "rl_model" not in out and cfg.rl_model.reward_model_weight and cfg.rl_model.max_train_seconds is None:
        out["rl_model"] = {"why": "planned out after base_checkpoint: the reward model it learns from is (" + out["reward_model"]["why"] + ")"}
    return out


def check(cfg, stage: str, budget_seconds: float | None, budget_why: str, upstream: dict[str, Path]) -> tuple[str | None, dict]:
    """(why the stage is skipped, or None; the estimate, for the stats)."""
    min_steps = cfg.training.min_steps
    if budget_seconds is None or not min_steps or getattr(cfg, stage).max_train_seconds is not None:
        return None, {"checked": False, "why": "no part of training.max_train_seconds" if budget_seconds is None or min_steps
                      else "training.min_steps is 0"}
    planned = plan(cfg, upstream).get(stage)
    if planned is not None:
        return planned["why"], {"checked": True, "min_steps": min_steps, "planned": True, **planned}
    per_token, source = seconds_per_token(upstream)
    if per_token is None:
        return None, {"checked": False, "why": source}
    step = per_token * step_tokens(cfg, stage)
    steps = int(budget_seconds * (1 - MAX_EVAL_SHARE) // step) if step > 0 else min_steps
    record = {"checked": True, "min_steps": min_steps, "estimated_step_seconds": round(step, 3), "affordable_steps": steps,
              "share_seconds": round(budget_seconds, 1), "from": source}
    if steps >= min_steps:
        return None, record
    why = (f"share {budget_seconds:,.0f} s buys ~{steps} step{'s' if steps != 1 else ''} at ~{_seconds(step)} s/step "
           f"(estimated from {source}); needs >= {min_steps} (training.min_steps)")
    return why, record


def skipped_output(output_dir: Path, stage: str, why: str, record: dict, budget_seconds: float | None, budget_why: str,
                   seconds: float) -> StageOutput:
    """The stage's output when the floor skips it: its reason (eval_report shows it and promotion passes over the
    stage), no model."""
    write_json(output_dir / "training_log.json", [])
    write_json(output_dir / "training_summary.json", {"skipped": why, "steps": 0, "seconds": round(seconds, 3), "tokens_trained": 0})
    stats = {"skipped": why, "trained": False, "steps": 0, "seconds": round(seconds, 3), "budget_seconds": budget_seconds,
             "budget_spent_seconds": round(seconds, 3), "step_floor": record}
    label = LABELS.get(stage, stage)
    return StageOutput(stats=stats, preview=f"{label} skipped: {why}.", metadata={"skipped": why, "budget": budget_why, "step_floor": record})
