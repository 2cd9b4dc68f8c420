"""A training budget in seconds: the schedule laid over wall time instead of a step count.

    clock = Clock(1200.0, spent=Clock.spent_in(resume_checkpoint))
    scheduler = LambdaLR(optimizer, lr_factor_fn(clock, max_steps=None, warmup=0.03))
    trainer callbacks += [budget_callback(clock, eval_fractions=(1/3, 2/3))]

"Train for twenty minutes" is how compute is usually given, and a step count only approximates it: a step's time
depends on the machine, its load and the data, and a schedule planned for too many steps is cut before its learning
rate decays (the adapter ends half-trained), one planned for too few leaves the rest of the budget unused. Here the
schedule's progress is the share of the budget spent (or of `max_steps` taken, when a cap is set and is further
along): warmup and cosine decay follow it, evaluations and checkpoints fall at fixed shares of it, and training stops
before a step that would end past the budget. The clock counts only time inside training; it is saved with every
checkpoint, so a resumed run goes on with what is left.

A budgeted run's step count depends on the machine; the stage records it, and `max_steps` set to it (without the
budget) repeats the run by steps.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

from llm_pipeline.io import write_json

CLOCK_FILE = "budget_clock.json"  # in each checkpoint folder: seconds spent when it was written
# The step a budget stops before is predicted from the median of the latest step times (the first, which carries the
# warm-up, is left out once there are others): one slow step must not end a run early.
RECENT_STEPS = 8


def now() -> float:
    """The clock every budget reads (tests replace it with one that advances per call, so that a schedule laid over
    seconds does not depend on how busy the machine is)."""
    return time.perf_counter()


def cosine_factor(progress: float, warmup: float) -> float:
    """The learning-rate multiplier at `progress` (0..1) of a run: linear warmup over the first `warmup` share, then
    cosine decay to zero at 1 (the shape of transformers' cosine schedule with warmup, in shares instead of steps)."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup)))


def rank_zero(values: list[float]) -> list[float]:
    """Rank 0's values on every rank of a distributed run (one small broadcast), the values as they are otherwise.

    Each process times its own steps; were each to follow its own clock, the ranks would set different learning rates
    (and the replicas drift apart) and stop after different steps (and the next collective would hang)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


class Clock:
    """Seconds of training spent against a budget, across resumes.

    `step_done()` marks the end of a step: from then until the next mark, the schedule and the stop decision use the
    seconds spent at that mark (rank 0's in a distributed run), so that every rank sets the same learning rate."""

    def __init__(self, budget_seconds: float, spent: float = 0.0):
        if budget_seconds <= 0:
            raise ValueError(f"a time budget must be positive, not {budget_seconds}")
        self.budget = float(budget_seconds)
        self._before = float(spent)  # spent by earlier runs this one resumes
        self._started: float | None = None
        self.step_times: list[float] = []
        self._last: float | None = None
        self.marked = float(spent)  # seconds spent at the latest step end
        self.must_stop = False  # set at a step end: the next step (and the reserve) would not fit

    def start(self) -> None:
        """Start counting (once: a caller that starts it before the trainer's own setup counts that setup too)."""
        if self._started is None:
            self._started = self._last = now()

    def begin_steps(self) -> None:
        """Time the first step from now: what the clock counted before it (sampling, a reference pass) is spent, but
        is no step's time, so it must not enter the step times the stop decision predicts from."""
        self.start()
        self._last = now()

    def spent(self) -> float:
        return self._before + (now() - self._started if self._started is not None else 0.0)

    def left(self) -> float:
        return self.budget - self.spent()

    def progress(self, step: int = 0, max_steps: int | None = None) -> float:
        """Share of the run done at the latest step end: of the budget, or of the step cap when further along."""
        by_time = self.marked / self.budget
        return max(by_time, step / max_steps) if max_steps else by_time

    def step_done(self, reserve: float = 0.0) -> None:
        """Mark a step's end: time it, and decide whether another (and then `reserve` seconds) fits."""
        t = now()
        if self._last is not None:
            self.step_times.append(t - self._last)
        self._last = t
        spent, stop = rank_zero([self.spent(), 0.0 if self.another_step_fits(reserve) else 1.0])
        self.marked, self.must_stop = spent, stop > 0

    def expected_step(self) -> float:
        """What the next step should take: the median of the latest steps (the first left out once there are others)."""
        times = self.step_times[1:] or self.step_times
        return statistics.median(times[-RECENT_STEPS:]) if times else 0.0

    def another_step_fits(self, reserve: float = 0.0) -> bool:
        """Whether the next step, and then `reserve` seconds (the final evaluation and checkpoint), end within budget."""
        return self.spent() + self.expected_step() + reserve <= self.budget

    def save(self, folder: Path) -> None:
        write_json(folder / CLOCK_FILE, {"spent_seconds": round(self.spent(), 3), "budget_seconds": self.budget})

    @staticmethod
    def spent_in(checkpoint: str | Path | None) -> float:
        """Seconds a checkpoint's run had spent (0 for none, or for a checkpoint written without a budget)."""
        if checkpoint is None or not (Path(checkpoint) / CLOCK_FILE).exists():
            return 0.0
        return float(json.loads((Path(checkpoint) / CLOCK_FILE).read_text())["spent_seconds"])


def lr_factor_fn(clock: Clock, max_steps: int | None, warmup: float):
    """A LambdaLR function: the multiplier from the clock's progress (a plain function, so that the scheduler's saved
    state holds only its step count, and a resumed run reads the clock from the checkpoint instead)."""

    def factor(step: int) -> float:
        return cosine_factor(clock.progress(step, max_steps), warmup)

    return factor


# An evaluation batch runs the forward pass of a training step without its backward: it is budgeted at half a
# step's time until the first evaluation has been timed (a forward is about a third of a step; half leaves room).
EVAL_BATCH_STEP_SHARE = 0.5


def budget_callback(clock: Clock, eval_fractions: tuple[float, ...] = (), evaluate: bool = True,
                    eval_rows: int = 0, set_eval_rows=None):
    """A TrainerCallback that starts the clock, evaluates and checkpoints at `eval_fractions` of the run and at its
    end (when `evaluate`), saves the clock beside every checkpoint, and stops training before a step that would not
    finish within the budget.

    With `eval_rows` held-out rows and `set_eval_rows(indices)` (which makes the Trainer score those rows only),
    every evaluation is kept within its part of MAX_EVAL_SHARE of the budget: before the first one, the rows it
    can afford are estimated from the step time; after it, from what it took; `scored_rows` says how many were
    scored (the same evenly spread rows at every evaluation unless a measured one ran over)."""
    from transformers import TrainerCallback

    planned = len(eval_fractions) + 1  # the final evaluation too

    class BudgetCallback(TrainerCallback):
        def __init__(self):
            self.pending = sorted(eval_fractions)
            self.stopped_by_budget = False
            # What the next evaluation and its checkpoint will take (from the ones measured): the final one must fit.
            self.eval_seconds = 0.0
            self.eval_seconds_total = 0.0
            self._eval_from: float | None = None
            self.evals = 0
            self.evals_skipped = 0
            self.total_rows = eval_rows
            self.scored_rows = eval_rows
            self._batch = 1
            self._row_seconds = 0.0  # an evaluation's seconds per scored row (the most measured)
            self._save_seconds = 0.0  # a checkpoint's seconds (the most measured)
            self._eval_took = 0.0
            self.probe_seconds = None  # the timed held-out rows before training, when probed

        def _batches(self, rows: int) -> int:
            return -(-rows // self._batch)

        def _cap_rows(self, seconds_per_batch: float) -> None:
            """Score only the rows an evaluation can afford at `seconds_per_batch`."""
            if set_eval_rows is None or not self.total_rows:
                return
            batches = affordable(self._batches(self.total_rows), seconds_per_batch, eval_allowance(clock.budget, planned))
            self._set_rows(min(self.total_rows, batches * self._batch))

        def _set_rows(self, rows: int) -> None:
            if rows != self.scored_rows:
                self.scored_rows = rows
                set_eval_rows(spread(self.total_rows, rows))

        def probed(self, rows: int, seconds: float) -> None:
            """An evaluation of `rows` held-out rows timed before training (`probe_eval`): the rows every evaluation
            scores and the final one's reserve follow from it, not from a guess at a step's share. Row by row, not
            batch by batch: a model whose one batch passes an evaluation's part scores fewer rows than a batch."""
            if not evaluate or rows <= 0:
                return
            self._row_seconds = max(self._row_seconds, seconds / rows)
            self.eval_seconds_total += seconds
            self.probe_seconds = seconds
            if set_eval_rows is not None and self.total_rows:
                self._set_rows(affordable(self.total_rows, self._row_seconds, eval_allowance(clock.budget, planned)))

        def _reserve(self) -> float:
            """Seconds the final evaluation and checkpoint need: as measured (by an evaluation, else by the probe),
            else as estimated from the steps."""
            if not evaluate:
                return 0.0
            if self.eval_seconds:
                return self.eval_seconds
            if self._row_seconds:
                return self._row_seconds * (self.scored_rows or 1)
            return self._batches(self.scored_rows or 1) * EVAL_BATCH_STEP_SHARE * clock.expected_step()

        def on_train_begin(self, args, state, control, **kwargs):
            clock.start()
            self._batch = max(1, args.per_device_eval_batch_size)
            done = clock.progress(state.global_step, args.max_steps if args.max_steps < BUDGET_STEP_CAP else None)
            self.pending = [f for f in self.pending if f > done]  # a resumed run has passed some already

        def on_step_end(self, args, state, control, **kwargs):
            if evaluate and not self.evals and not self._row_seconds and clock.step_times:
                self._cap_rows(EVAL_BATCH_STEP_SHARE * clock.expected_step())
            clock.step_done(self._reserve())
            cap = args.max_steps if args.max_steps < BUDGET_STEP_CAP else None
            done = clock.progress(state.global_step, cap)
            if clock.must_stop:
                control.should_training_stop = True
                self.stopped_by_budget = True
            final = control.should_training_stop or state.global_step >= args.max_steps
            if evaluate and (final or (self.pending and done >= self.pending[0])):
                self.pending = [f for f in self.pending if f > done]
                # Evaluations may take MAX_EVAL_SHARE of the budget: once one more would pass it, the intermediate
                # ones are skipped (the final one, reserved for in the stop decision, stays).
                # (Room is kept for the final one: this one and it must both fit.)
                if final or self.eval_seconds_total + 2 * self._reserve() <= MAX_EVAL_SHARE * clock.budget:
                    control.should_evaluate = control.should_save = True
                    self._eval_from = now()
                else:
                    self.evals_skipped += 1
            return control

        def on_evaluate(self, args, state, control, **kwargs):
            self.evals += 1
            if self._eval_from is None:
                return
            took = now() - self._eval_from
            self._eval_took = took
            self.eval_seconds_total += took
            self._row_seconds = max(self._row_seconds, took / (self.scored_rows or 1))
            # An evaluation that ran past its part (the estimate was low): the later ones score fewer rows.
            if took > 1.25 * eval_allowance(clock.budget, planned) and self.scored_rows > self._batch:
                self._cap_rows(took / self._batches(self.scored_rows))
            self.eval_seconds = self._row_seconds * (self.scored_rows or 1) + self._save_seconds

        def on_save(self, args, state, control, **kwargs):
            if self._eval_from is not None:  # the checkpoint after an evaluation: the final pair needs room for both
                self._save_seconds = max(self._save_seconds, now() - self._eval_from - self._eval_took)
                self.eval_seconds = self._row_seconds * (self.scored_rows or 1) + self._save_seconds
                self._eval_from = None
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():  # rank 0 writes the checkpoint, and the clock beside it
                clock.save(folder)

    return BudgetCallback()


# The Trainer needs a step count; under a budget with no cap this one is never reached.
BUDGET_STEP_CAP = 10**9


# ---------------------------------------------------------------- one budget for the run
# Every stage that trains, in run order. dpo_model and reward_model both follow lora_adapter and may run side by side;
# rl_model follows reward_model.
TRAINING_STAGES = ("base_checkpoint", "lora_adapter", "dpo_model", "reward_model", "rl_model")
# Evaluations inside a budget may take at most this share of it: past it, the intermediate ones are skipped (the
# final one stays). A real run's two SFT evaluations took 49% of a 900 s budget.
MAX_EVAL_SHARE = 0.1


def _recorded_seconds(folder: Path | None) -> float:
    """Seconds an upstream stage spent of its budget (its stats: `budget_spent_seconds`, what its own clock counted,
    evaluations included), else its training seconds (`train_seconds`, else `seconds`); 0 when absent. The runner
    moves wall-clock figures out of stats.json into `.timings.json` (they must not change the output's hash):
    `io.read_timed` puts them back, or every upstream stage would read as having spent nothing."""
    from llm_pipeline.io import read_timed

    if folder is None:
        return 0.0
    try:
        stats = read_timed(Path(folder))
    except (OSError, ValueError):
        return 0.0
    if not isinstance(stats, dict):
        return 0.0
    value = stats.get("budget_spent_seconds")
    if not isinstance(value, (int, float)):
        value = stats.get("train_seconds", stats.get("seconds"))
    return float(value) if isinstance(value, (int, float)) else 0.0


def stage_shares(cfg) -> dict[str, float]:
    """Each training stage's share of training.max_train_seconds (a base model kept as loaded has none)."""
    shares = {s: float(getattr(cfg.training, f"{s}_share")) for s in TRAINING_STAGES}
    if cfg.base_checkpoint.train_steps == 0:
        shares["base_checkpoint"] = 0.0  # a model kept as loaded spends nothing
    return shares


def stage_budget(cfg, stage: str, upstream: dict[str, Path] | None = None) -> tuple[float | None, str]:
    """(seconds, why) for one training stage: its own `max_train_seconds` when set; else its share of what is left
    of `training.max_train_seconds`, else (None, why).

    The rule: what is left is the budget less the seconds its upstream training stages (`upstream`: the ones it reads)
    recorded; the stage gets its share of that over the shares of itself and every training stage not upstream of it.
    Stages that run side by side (dpo_model and reward_model) then never count on each other's seconds, and each
    later stage inherits what an earlier one left unused (or loses what it overran), so the parts add up to the
    budget however the stages are ordered."""
    own = getattr(cfg, stage).max_train_seconds
    if own is not None:
        return float(own), f"{stage}.max_train_seconds set in config"
    tc = cfg.training
    if tc.max_train_seconds is None:
        return None, "no budget (neither training.max_train_seconds nor this stage's max_train_seconds is set)"
    shares = stage_shares(cfg)
    before = [s for s in TRAINING_STAGES if s in (upstream or {}) and s != stage]
    spent = {s: _recorded_seconds((upstream or {}).get(s)) for s in before}
    left = max(0.0, tc.max_train_seconds - sum(spent.values()))
    # Stages the step floor planned out once base_checkpoint had measured its speed (step_floor.plan): their shares
    # go to the stages that run. (The stage itself, if planned out, keeps its figure: it is skipped before training.)
    from llm_pipeline.training import step_floor

    out = [s for s in step_floor.plan(cfg, upstream or {}) if s != stage and s not in before]
    later = sum(v for s, v in shares.items() if s not in before and s not in out)
    if not shares[stage] or not later:
        return None, f"training.{stage}_share is 0: no budget of its own (its step cap alone ends it)"
    # A floor of a twentieth of the stage's planned part: an overrun upstream must not leave it no step at all.
    planned = tc.max_train_seconds * shares[stage] / sum(shares.values())
    seconds = max(left * shares[stage] / later, planned / 20)
    done = ", ".join(f"{s} {v:,.0f} s" for s, v in spent.items() if v) or "nothing yet"
    named = ", ".join(f"{s} {v:g}" for s, v in shares.items())
    moved = f"; planned out by training.min_steps: {', '.join(out)}" if out else ""
    return round(seconds, 3), (f"{shares[stage] / later:.0%} of the {left:,.0f} s left of training.max_train_seconds "
                               f"{tc.max_train_seconds:,.0f} (spent upstream: {done}; shares {named}{moved})")


# ---------------------------------------------------------------- evaluations within their share
def eval_allowance(budget_seconds: float, evaluations: int) -> float:
    """Seconds one of `evaluations` held-out evaluations may take: together they stay within MAX_EVAL_SHARE."""
    return MAX_EVAL_SHARE * budget_seconds / max(1, evaluations)


def affordable(total: int, seconds_each: float, allowance: float) -> int:
    """How many of `total` items (batches, pairs) an evaluation can score in `allowance` seconds at `seconds_each`:
    at least one, so that a held-out figure always exists."""
    if seconds_each <= 0:
        return total
    return max(1, min(total, int(allowance // seconds_each)))


def spread(n: int, k: int) -> list[int]:
    """`k` of the indices 0..n-1, evenly spaced (the first included): a subsample that keeps every part of an ordered
    held-out set (domains, text rows and examples) and is the same at every evaluation of a run."""
    if k >= n:
        return list(range(n))
    return [i * n // k for i in range(k)]


# ---------------------------------------------------------------- work done item by item within a part
class Allowance:
    """Work done item by item (sampled rejections, generations, scored prompts) within `seconds`.

        allowance = Allowance(30.0)
        while todo:
            n = allowance.fits(len(todo))   # 0: nothing more fits
            with allowance.timing(n):
                do(todo[:n])

    What an item costs is measured, not guessed: the first item runs alone (unmeasured, it is the one item a bounded
    part may pass its seconds by), after that `fits` counts the items whose measured cost ends within what is left.
    The latest measurement is used (a batch of several items costs less per item than one alone), so the error is
    at most that of one batch's estimate. `summary()` is what a stage records to show the part held."""

    def __init__(self, seconds: float | None):
        self.seconds = None if seconds is None else max(0.0, float(seconds))  # None: unbounded (timed only)
        self._start = now()
        self.per_item = 0.0  # seconds per item, as last measured
        self.items = 0  # items done (measured)
        self.cut = 0  # items asked for that did not fit
        self.reused = 0  # items an earlier run had done (read back, at no cost)

    def spent(self) -> float:
        return now() - self._start

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.spent()

    def fits(self, n: int) -> int:
        """How many of the next `n` items end within the allowance (one, to measure, while none has been timed)."""
        left = self.left()
        if n <= 0 or left <= 0:
            return 0
        if math.isinf(left):
            return n
        if not self.items:
            return 1
        return min(n, int(left // self.per_item)) if self.per_item > 0 else n

    def record(self, n: int, seconds: float) -> None:
        if n > 0:
            self.per_item = max(0.0, seconds) / n
            self.items += n

    @contextmanager
    def timing(self, n: int):
        """A context that measures `n` items' work (work that raised is not recorded)."""
        start = now()
        yield
        self.record(n, now() - start)

    def summary(self) -> dict:
        return {"allowance_seconds": None if self.seconds is None else round(self.seconds, 3), "spent_seconds": round(self.spent(), 3),
                "item_seconds": round(self.per_item, 4), "items": self.items, "items_cut": self.cut, "items_reused": self.reused}
