"""llm_pipeline.progress: what a meter reports, how often, and to whom."""

from __future__ import annotations

from llm_pipeline import progress


def collect(fn):
    seen: list[progress.Update] = []
    with progress.sink(seen.append):
        fn()
    return seen


def test_a_slow_interval_still_reports_the_first_and_the_last_step():
    def train():
        meter = progress.Meter("base_checkpoint", total=50, unit="step", rate_unit="tokens", interval=10**9)
        for step in range(1, 51):
            meter.update(step, tokens=step * 100, loss=3.0 - step / 50)
        meter.close()

    seen = collect(train)
    assert [u.done for u in seen] == [1, 50]
    first, last = seen
    assert first.seconds_left is not None and not first.final
    assert last.final and last.figures["loss"] == 2.0
    assert first.line().startswith("base_checkpoint: step 1/50 · loss 2.98 · ") and " tokens/s · " in first.line()
    assert first.line().endswith(" left") and "done in" in last.line()


def test_every_update_with_no_interval_and_none_without_a_sink():
    meter = progress.Meter("cleaned_corpus[legal]", total=3, unit="doc", interval=0)
    meter.update(1)  # no sink installed: nothing to call, nothing raised

    def curate():
        m = progress.Meter("cleaned_corpus[legal]", total=3, unit="doc", interval=0)
        for done in (1, 2, 3):
            m.update(done, kept=done)
        m.close()  # the last update already closed it

    seen = collect(curate)
    assert [u.done for u in seen] == [1, 2, 3]
    assert seen[-1].line().startswith("cleaned_corpus[legal]: doc 3/3 · kept 3 · ") and "docs/s" in seen[-1].line()


def test_a_failing_display_never_stops_the_stage_and_other_ranks_stay_quiet(monkeypatch):
    def broken(update):
        raise RuntimeError("terminal gone")

    got: list[progress.Update] = []
    with progress.sink(broken), progress.sink(got.append):
        progress.Meter("dpo_model", total=2, interval=0).update(1)
    assert len(got) == 1

    monkeypatch.setenv("RANK", "1")
    assert collect(lambda: progress.Meter("dpo_model", total=2, interval=0).update(2)) == []


def test_unknown_total_closes_with_the_count():
    def stream():
        m = progress.Meter("deduped_shards[legal] hashing", unit="doc", interval=10**9)
        m.update(10)
        m.update(20)
        m.close()

    seen = collect(stream)
    assert [u.done for u in seen] == [10, 20] and seen[-1].final
    assert seen[-1].line().startswith("deduped_shards[legal] hashing: 20 docs · ")
