"""The pure helpers of benchmarks/shipped_run.py: the held-out split, stage windows from Dagster events, per-stage
peak memory and the verdicts against the issue's targets."""

import pytest
from bench_scripts import load_benchmark


@pytest.fixture(scope="module")
def sr():
    return load_benchmark("shipped_run")


def test_split_holds_out_every_nth_file_and_trains_on_the_rest(sr):
    files = [f"d{i:02d}.md" for i in range(10)][::-1]
    train, held = sr.split_files(files, 4)
    assert held == ["d01.md", "d05.md", "d09.md"]
    assert sorted(train + held) == sorted(files) and not set(train) & set(held)
    assert sr.split_files(["only.md"], 7) == (["only.md"], [])


def test_spread_samples_evenly_and_keeps_short_lists(sr):
    assert sr.spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert sr.spread([1, 2], 5) == [1, 2]


def test_stage_windows_pair_starts_with_ends_per_partition(sr):
    events = [(10.0, "raw_corpus", "a", "STEP_START"), (12.0, "raw_corpus", "a", "STEP_SUCCESS"),
              (13.0, "raw_corpus", "b", "STEP_START"), (15.5, "raw_corpus", "b", "STEP_FAILURE"),
              (20.0, "tokenizer", None, "STEP_START"), (30.0, "tokenizer", None, "STEP_SUCCESS"),
              (31.0, "base_checkpoint", None, "STEP_START")]  # never finished: no window
    assert sr.stage_windows(events) == {"raw_corpus[a]": (10.0, 12.0), "raw_corpus[b]": (13.0, 15.5), "tokenizer": (20.0, 30.0)}
    # a stopped run: the stage it was in ends when the run ended
    assert sr.stage_windows(events, end=40.0)["base_checkpoint (unfinished)"] == (31.0, 40.0)


def test_peak_in_takes_the_largest_sample_inside_the_window(sr):
    samples = [(1.0, 100.0), (2.0, 900.0), (3.0, 300.0), (4.0, 200.0)]
    assert sr.peak_in(samples, 2.5, 4.0) == 300.0
    assert sr.peak_in(samples, 5.0, 6.0) is None


def _scores(orig, ship, trl, untrained=(10.0, 1.0)):
    def row(ppl, bpb, u):
        return {"med": {"perplexity": ppl, "bits_per_byte": bpb}, "fin": {"perplexity": u[0], "bits_per_byte": u[1]}}
    return {"original": row(*orig, untrained), "dpo": row(*ship[:2], ship[2]), "trl": row(*trl, untrained)}


def test_verdicts_meet_the_targets_when_the_shipped_model_halves_twice_as_much(sr):
    scores = _scores((20.0, 1.0), (12.0, 0.9, (10.05, 1.0)), (16.0, 0.95))
    v = sr.verdicts(scores, "dpo", ["med"], "fin")
    assert v["domains"]["med"]["ratio"] == 2.0 and v["domains"]["med"]["ppl_target_met"]
    assert v["untrained"]["target_met"] and v["met"]


@pytest.mark.parametrize("ship, why", [
    ((17.0, 0.9, (10.0, 1.0)), "ppl"),        # 15% reduction against TRL's 20%
    ((12.0, 1.01, (10.0, 1.0)), "bpb"),       # lower perplexity, more bits per byte (a longer-token vocabulary)
    ((12.0, 0.9, (10.2, 1.02)), "untrained"),  # 2% worse on the untrained domain
])
def test_verdicts_name_the_target_missed(sr, ship, why):
    v = sr.verdicts(_scores((20.0, 1.0), ship, (16.0, 0.95)), "dpo", ["med"], "fin")
    assert not v["met"]
    missed = {"ppl": not v["domains"]["med"]["ppl_target_met"], "bpb": not v["domains"]["med"]["bpb_target_met"],
              "untrained": not v["untrained"]["target_met"]}
    assert [k for k, m in missed.items() if m] == [why]


def test_verdicts_without_a_promoted_model_are_not_met(sr):
    assert sr.verdicts({}, None, ["med"], "fin") == {"shipped": None, "met": False, "why": "no model was promoted"}


def test_scoring_outside_pii_spans_leaves_their_tokens_and_bytes_out(sr):
    """Without spans the outside-PII score is score_texts' own (windows and all); with a span, the tokens touching it
    and its bytes are not counted."""
    import math
    import random

    from evaluation.fixtures import DOMAINS, document, make_model, make_tokenizer

    from llm_pipeline.evaluation.models import LoadedModel
    from llm_pipeline.evaluation.perplexity import score_texts, total

    rng = random.Random(0)
    tok = make_tokenizer([document(rng, d) for d in DOMAINS for _ in range(20)])
    lm = LoadedModel("base", make_model(len(tok), max_positions=16), tok, is_adapter=False)
    texts = [document(rng, "legal"), "Ada Quill signed the minutes on behalf of the committee."]
    full = total(score_texts(lm, texts))
    bare = sr.score_outside(lm, texts, [[], []])
    assert bare.tokens == full.tokens and bare.bytes == full.bytes and math.isclose(bare.nll, full.nll, rel_tol=1e-4)
    outside = sr.score_outside(lm, texts, [[], [[0, 8]]])  # "Ada Quill"
    assert outside.bytes == full.bytes - 8 and 0 < outside.tokens < full.tokens
