"""The time-budget schedule: the cosine-with-warmup shape in shares of a run, the clock across resumes, and the
prediction of whether another step fits."""

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from llm_pipeline.training import budget
from llm_pipeline.training.budget import Clock, cosine_factor, lr_factor_fn


@pytest.mark.parametrize("warmup_steps", [0, 3, 10])
def test_cosine_factor_is_the_transformers_schedule_in_shares(warmup_steps):
    total = 100
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_cosine_schedule_with_warmup(opt, warmup_steps, total)
    for step in range(total + 1):
        expected = sched.lr_lambdas[0](step)
        assert cosine_factor(step / total, warmup_steps / total) == pytest.approx(expected, abs=1e-9), step


def test_cosine_factor_clamps_outside_the_run():
    assert cosine_factor(-0.5, 0.1) == 0.0
    assert cosine_factor(1.7, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert cosine_factor(0.0, 0.0) == 1.0


def test_the_expected_step_leaves_out_the_warm_up_and_one_slow_step():
    clock = Clock(100.0)
    clock.step_times = [5.0, 1.0, 1.1, 0.9, 9.0, 1.0]
    assert clock.expected_step() == pytest.approx(1.0)
    clock.step_times = [5.0]  # only the first so far
    assert clock.expected_step() == 5.0


def test_another_step_fits_only_within_the_budget():
    clock = Clock(10.0, spent=8.5)
    clock.step_times = [3.0, 1.0, 1.0]
    assert clock.another_step_fits()  # 8.5 + 1.0 <= 10
    clock.step_times = [3.0, 2.0, 2.0]
    assert not clock.another_step_fits()


def test_the_clock_resumes_from_a_checkpoint(tmp_path):
    clock = Clock(60.0, spent=12.0)
    clock.start()
    clock.save(tmp_path)
    spent = Clock.spent_in(tmp_path)
    assert 12.0 <= spent < 13.0
    assert Clock.spent_in(None) == 0.0 and Clock.spent_in(tmp_path / "none") == 0.0
    assert Clock(60.0, spent=spent).left() == pytest.approx(60.0 - spent, abs=0.1)


def test_progress_is_time_or_steps_whichever_is_further():
    clock = Clock(100.0, spent=25.0)
    assert clock.progress() == 0.25
    assert clock.progress(step=10, max_steps=20) == 0.5  # the step cap is further along
    assert clock.progress(step=1, max_steps=20) == 0.25
    f = lr_factor_fn(clock, max_steps=20, warmup=0.0)
    assert f(10) == pytest.approx(cosine_factor(0.5, 0.0))


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        Clock(0)
    assert budget.BUDGET_STEP_CAP > 10**6


def test_a_step_end_decides_whether_another_fits():
    clock = Clock(10.0, spent=8.0)
    clock.step_times = [3.0, 1.5]
    clock.step_done(reserve=0.0)  # the first mark only starts timing here
    assert clock.marked >= 8.0 and not clock.must_stop  # 8 + 1.5 <= 10
    clock.step_done(reserve=5.0)
    assert clock.must_stop  # the final evaluation's reserve would not fit


def _rank(rank: int, world: int, init: str, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        clock = Clock(10.0, spent=4.0 + rank)  # each rank timed a different run so far
        clock.step_times = [1.0, 0.5] if rank == 0 else [1.0, 9.0]  # and rank 1's steps look slow
        clock.step_done()
        out.put((rank, clock.marked, clock.must_stop, lr_factor_fn(clock, None, 0.0)(3)))
    finally:
        dist.destroy_process_group()


def test_every_rank_follows_rank_zeros_clock(tmp_path):
    """Ranks that set different learning rates drift apart, and ranks that stop after different steps hang."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_rank, args=(r, 2, init, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    (_, marked0, stop0, lr0), (_, marked1, stop1, lr1) = results
    assert marked0 == marked1 and 4.0 <= marked0 < 5.0  # rank 0's seconds, not rank 1's 5+
    assert stop0 is stop1 is False  # rank 1 alone would have stopped (5 + 9 > 10)
    assert lr0 == lr1


# ---------------------------------------------------------------- one budget for the run
def _cfg(**sections):
    from llm_pipeline.config import PipelineConfig

    return PipelineConfig.model_validate({"domains": {"legal": {"sources": [{"path": "in/legal"}]}}, **sections})


# The three-stage split these tests were written for (base 0.3, SFT 0.5, DPO 0.2; no reward model or RL share).
THREE = {"lora_adapter_share": 0.5, "dpo_model_share": 0.2, "reward_model_share": 0, "rl_model_share": 0}


def _stats(folder, **stats):
    import json

    folder.mkdir(parents=True)
    (folder / "stats.json").write_text(json.dumps(stats))
    return folder


def test_without_a_budget_no_stage_has_one():
    seconds, why = budget.stage_budget(_cfg(), "lora_adapter")
    assert seconds is None and "no budget" in why


def test_a_stages_own_budget_wins():
    cfg = _cfg(training={"max_train_seconds": 1000, **THREE}, dpo_model={"max_train_seconds": 30})
    assert budget.stage_budget(cfg, "dpo_model") == (30.0, "dpo_model.max_train_seconds set in config")


def test_the_run_budget_is_split_by_share_over_what_is_left(tmp_path):
    cfg = _cfg(training={"max_train_seconds": 1000, **THREE})
    assert budget.stage_budget(cfg, "base_checkpoint")[0] == 300.0  # 0.3 of 1000
    # base_checkpoint spent 200 s instead of its 300: SFT gets 0.5 / (0.5 + 0.2) of the 800 s left.
    base = _stats(tmp_path / "base_checkpoint", seconds=200.0)
    seconds, why = budget.stage_budget(cfg, "lora_adapter", {"base_checkpoint": base})
    assert seconds == pytest.approx(800 * 0.5 / 0.7, abs=0.1) and "base_checkpoint 200 s" in why
    # SFT recorded 600 s of training: DPO gets what is left.
    lora = _stats(tmp_path / "lora_adapter", seconds=640.0, train_seconds=600.0)
    assert budget.stage_budget(cfg, "dpo_model", {"base_checkpoint": base, "lora_adapter": lora})[0] == 200.0


def test_a_model_kept_as_loaded_leaves_its_share_to_the_others():
    cfg = _cfg(training={"max_train_seconds": 700, **THREE}, base_checkpoint={"train_steps": 0})
    assert budget.stage_budget(cfg, "lora_adapter")[0] == 500.0  # 0.5 / (0.5 + 0.2) of 700
    assert budget.stage_budget(cfg, "base_checkpoint")[0] is None


def test_an_overrun_upstream_still_leaves_a_floor(tmp_path):
    cfg = _cfg(training={"max_train_seconds": 100, **THREE})
    base = _stats(tmp_path / "base_checkpoint", seconds=500.0)
    assert budget.stage_budget(cfg, "lora_adapter", {"base_checkpoint": base})[0] == pytest.approx(100 * 0.5 / 20)


def test_a_stage_records_what_its_clock_counted_before_its_training_seconds(tmp_path):
    """DPO's sampling and reference pass, and SFT's final evaluation, count against the run's budget: the next stage's
    share comes from `budget_spent_seconds` where a stage recorded it."""
    cfg = _cfg(training={"max_train_seconds": 1000, **THREE})
    up = {"base_checkpoint": _stats(tmp_path / "b", train_seconds=100.0),
          "lora_adapter": _stats(tmp_path / "l", train_seconds=300.0, budget_spent_seconds=400.0)}
    seconds, why = budget.stage_budget(cfg, "dpo_model", up)
    assert seconds == 500.0 and "lora_adapter 400 s" in why


@pytest.mark.parametrize("n,k,expected", [(10, 3, [0, 3, 6]), (5, 5, [0, 1, 2, 3, 4]), (4, 9, [0, 1, 2, 3]), (7, 1, [0])])
def test_a_capped_evaluation_scores_evenly_spread_rows(n, k, expected):
    assert budget.spread(n, k) == expected


def test_an_evaluation_scores_what_its_share_of_the_budget_affords():
    allowance = budget.eval_allowance(300.0, 3)
    assert allowance == pytest.approx(budget.MAX_EVAL_SHARE * 100.0)  # three evaluations share a tenth of 300 s
    assert budget.affordable(50, 2.0, allowance) == 5
    assert budget.affordable(50, 100.0, allowance) == 1  # at least one: a held-out figure always exists
    assert budget.affordable(3, 0.1, allowance) == 3 and budget.affordable(3, 0.0, allowance) == 3


def test_time_before_the_first_step_is_spent_but_no_step_time(monkeypatch):
    ticks = iter(range(10**6))
    monkeypatch.setattr(budget, "now", lambda: float(next(ticks)))
    clock = Clock(100.0)
    clock.start()
    for _ in range(30):  # a reference pass: the clock read 30 times
        clock.spent()
    clock.begin_steps()
    clock.step_done()
    assert clock.step_times and max(clock.step_times) < 5 and clock.spent() > 30


def test_seconds_the_runner_moved_out_of_stats_still_count(tmp_path):
    """The runner keeps wall-clock figures out of the hashed stats.json (in .timings.json): a stage that read only
    stats.json saw its upstream stages spend nothing, and SFT and DPO each got the whole run's budget."""
    from llm_pipeline.io import move_measured

    cfg = _cfg(training={"max_train_seconds": 1000, **THREE})
    up = {"base_checkpoint": _stats(tmp_path / "b", steps=3, seconds=250.0),
          "lora_adapter": _stats(tmp_path / "l", steps=9, train_seconds=300.0, budget_spent_seconds=350.0)}
    for folder in up.values():
        move_measured(folder)
        assert "seconds" not in (folder / "stats.json").read_text()
    seconds, why = budget.stage_budget(cfg, "dpo_model", up)
    assert seconds == 400.0 and "base_checkpoint 250 s, lora_adapter 350 s" in why


def test_every_training_stage_has_a_share_and_the_parts_add_up_to_the_budget(tmp_path):
    """Five training stages, dpo_model and reward_model side by side after SFT, rl_model after the reward model: each
    spends exactly its part, and the parts sum to the run's budget whichever of the two siblings runs first."""
    cfg = _cfg(training={"max_train_seconds": 1000})
    shares = budget.stage_shares(cfg)
    assert set(shares) == set(budget.TRAINING_STAGES) == {"base_checkpoint", "lora_adapter", "dpo_model", "reward_model", "rl_model"}
    assert shares["base_checkpoint"] + shares["lora_adapter"] > 0.5 * sum(shares.values())  # most goes where perplexity drops
    parts = {"base_checkpoint": budget.stage_budget(cfg, "base_checkpoint")[0]}
    base = _stats(tmp_path / "b", budget_spent_seconds=parts["base_checkpoint"])
    parts["lora_adapter"] = budget.stage_budget(cfg, "lora_adapter", {"base_checkpoint": base})[0]
    lora = _stats(tmp_path / "l", budget_spent_seconds=parts["lora_adapter"])
    up = {"base_checkpoint": base, "lora_adapter": lora}
    parts["dpo_model"] = budget.stage_budget(cfg, "dpo_model", up)[0]
    parts["reward_model"] = budget.stage_budget(cfg, "reward_model", up)[0]
    rm = _stats(tmp_path / "r", budget_spent_seconds=parts["reward_model"])
    parts["rl_model"] = budget.stage_budget(cfg, "rl_model", {**up, "reward_model": rm})[0]
    assert sum(parts.values()) == pytest.approx(1000, abs=0.5)
    for stage, seconds in parts.items():
        assert seconds == pytest.approx(1000 * shares[stage] / sum(shares.values()), abs=0.2)


def test_seconds_a_sibling_leaves_unused_are_not_counted_on_twice(tmp_path):
    """The reward model finished early: RL inherits its unused seconds, DPO's part (unknown to RL) stays reserved."""
    cfg = _cfg(training={"max_train_seconds": 1000})
    up = {"base_checkpoint": _stats(tmp_path / "b", budget_spent_seconds=300.0),
          "lora_adapter": _stats(tmp_path / "l", budget_spent_seconds=450.0),
          "reward_model": _stats(tmp_path / "r", budget_spent_seconds=10.0)}
    seconds, why = budget.stage_budget(cfg, "rl_model", up)
    # 240 s left; DPO's and RL's shares (0.1 each) split it: DPO planned 100, RL gets 120 (its 100 + the 40 less DPO's 20).
    assert seconds == pytest.approx(240 * 0.1 / 0.2) and "reward_model 10 s" in why


def test_an_allowance_times_the_first_item_then_counts_what_fits(monkeypatch):
    t = [0.0]
    monkeypatch.setattr(budget, "now", lambda: t[0])
    allowance = budget.Allowance(10.0)
    assert allowance.fits(16) == 1  # nothing measured yet: one item, to time it
    with allowance.timing(1):
        t[0] += 2.0
    assert allowance.fits(16) == 4  # 8 s left at 2 s an item
    with allowance.timing(4):
        t[0] += 6.0  # a batch costs less per item than one alone: the latest measurement counts
    assert allowance.per_item == 1.5 and allowance.fits(16) == 1
    t[0] += 1.0
    assert allowance.fits(16) == 0 and allowance.left() == 1.0  # less than an item left
    summary = allowance.summary()
    assert summary["items"] == 5 and summary["spent_seconds"] == 9.0 and summary["item_seconds"] == 1.5
    unbounded = budget.Allowance(None)
    assert unbounded.fits(16) == 16 and unbounded.summary()["allowance_seconds"] is None
    assert budget.Allowance(0.0).fits(3) == 0
