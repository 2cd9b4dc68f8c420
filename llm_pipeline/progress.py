"""Progress inside long stages: the stages report it, whoever runs them decides where it shows.

A stage opens a meter and updates it as it goes; the meter turns updates into one-line `Update`s, at most one every
`interval` seconds (plus the first and the last), and hands them to the sinks installed at that moment:

    meter = progress.meter("lora_adapter", total=120, unit="step")
    for step in ...:
        meter.update(step + 1, tokens=seen, loss=loss)
    meter.close()

The CLI installs a sink that prints with rich, the Dagster asset one that forwards to `context.log`
(llm_pipeline/defs/assets.py); with no sink a meter costs a clock read per update. This module imports nothing
but the standard library, so stage code can use it anywhere, Dagster or not.

Under a multi-process launch only rank 0 reports: every rank runs the same loop, and one line per step is enough.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# The promise is a line at least every 10 s while a stage works; 5 s keeps it with room for a slow step, and
# is rare enough that a run's log stays readable. LLM_PIPELINE_PROGRESS_SECONDS overrides it (0: every update).
DEFAULT_INTERVAL = 5.0

Sink = Callable[["Update"], None]
_sinks: list[Sink] = []
_lock = threading.Lock()


def interval_seconds() -> float:
    raw = os.environ.get("LLM_PIPELINE_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


@dataclass(frozen=True)
class Update:
    """One progress report: `done` of `total` units after `elapsed` seconds, with a rate and named figures."""

    label: str
    done: int
    total: int | None
    unit: str
    elapsed: float
    rate: float | None  # units per second, or `rate_unit` per second when the meter counts tokens
    rate_unit: str
    seconds_left: float | None
    figures: dict[str, float] = field(default_factory=dict)
    final: bool = False

    def line(self) -> str:
        count = f"{self.unit} {self.done:,}/{self.total:,}" if self.total else f"{self.done:,} {self.unit}s"
        parts = [f"{self.label}: {count}"]
        for name, value in self.figures.items():
            parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
        if self.rate is not None:
            parts.append(f"{self.rate:,.0f} {self.rate_unit}/s" if self.rate >= 10 else f"{self.rate:.2f} {self.rate_unit}/s")
        if self.final:
            parts.append(f"done in {_duration(self.elapsed)}")
        elif self.seconds_left is not None:
            parts.append(f"{_duration(self.seconds_left)} left")
        return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


@contextmanager
def sink(fn: Sink) -> Iterator[None]:
    """Send every update made inside the block to `fn` too (sinks nest: the CLI's and Dagster's both see them)."""
    with _lock:
        _sinks.append(fn)
    try:
        yield
    finally:
        with _lock:
            _sinks.remove(fn)


def _emit(update: Update) -> None:
    with _lock:
        targets = list(_sinks)
    for fn in targets:
        try:
            fn(update)
        except Exception:  # noqa: BLE001 - a display must never stop the stage it displays
            pass


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


class Meter:
    """Counts units of one stage's work and reports at most every `interval` seconds (first and last always)."""

    def __init__(self, label: str, total: int | None = None, unit: str = "step", rate_unit: str | None = None,
                 interval: float | None = None, start: int = 0):
        self.label, self.total, self.unit = label, total, unit
        # Training reports tokens/s (the figure comparable across batch sizes); curation reports docs/s.
        self.rate_unit = rate_unit or f"{unit}s"
        self.counts_tokens = rate_unit is not None  # the rate comes from `tokens=`, not from the units done
        self.interval = interval_seconds() if interval is None else interval
        self.active = _is_main_rank()
        self.start = start  # a resumed run counts its rate and time left from where it resumed
        self.started = time.perf_counter()
        self.last_emit: float | None = None
        self.done = start
        self.closed = False
        self.token_rate: float | None = None

    def update(self, done: int, *, tokens: int | None = None, **figures: float) -> None:
        """`done`: units finished so far; `tokens`: tokens processed since the meter started (for tokens/s)."""
        self.done = done
        if not self.active:
            return
        now = time.perf_counter()
        last = self.total is not None and done >= self.total
        if self.closed or (self.last_emit is not None and not last and now - self.last_emit < self.interval):
            return
        self.closed = last
        self._emit(now, tokens, figures, final=last)

    def close(self, **figures: float) -> None:
        """The closing line (`done in ...`), unless the last update already said everything."""
        if self.closed or not self.active:
            return
        self.closed = True
        self._emit(time.perf_counter(), None, figures, final=True)

    def _emit(self, now: float, tokens: int | None, figures: dict[str, float], final: bool) -> None:
        self.last_emit = now
        elapsed = now - self.started
        work = self.done - self.start
        if tokens is not None:
            self.token_rate = tokens / elapsed if elapsed > 0 and tokens > 0 else None
            rate = self.token_rate
        elif self.counts_tokens:
            rate = self.token_rate  # an update without a token count repeats the last tokens/s
        else:
            rate = work / elapsed if elapsed > 0 and work > 0 else None
        left = None
        if self.total is not None and work > 0 and self.done < self.total:
            left = (self.total - self.done) * elapsed / work
        _emit(Update(self.label, self.done, self.total, self.unit, elapsed, rate, self.rate_unit, left,
                     {k: v for k, v in figures.items() if v is not None}, final))


def meter(label: str, total: int | None = None, unit: str = "step", rate_unit: str | None = None,
          start: int = 0) -> Meter:
    return Meter(label, total=total, unit=unit, rate_unit=rate_unit, start=start)
