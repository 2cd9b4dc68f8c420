import pytest

from llm_pipeline.evaluation.generation import exact_match, greedy, lcs_length, rouge_l, task_metrics


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("The cat, sat!", "the cat sat", 1.0),  # case and punctuation do not count
        ("cat the", "the cat", 0.5),  # LCS 1 of 2 words each way
        ("the cat sat", "the cat sat on the mat", 2 * 1.0 * 0.5 / 1.5),  # P=3/3, R=3/6
        ("police killed the gunman", "police kill the gunman", 0.75),  # the textbook example: LCS 3 of 4
        ("", "anything", 0.0),
        ("something", "", 0.0),
        ("a b c", "x y z", 0.0),
    ],
)
def test_rouge_l(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize("a, b, n", [("abcbdab", "bdcaba", 4), ("", "abc", 0), ("abc", "abc", 3), ("abc", "cba", 1)])
def test_lcs_length(a, b, n):
    assert lcs_length(list(a), list(b)) == n


def test_exact_match_normalizes_case_punctuation_and_spaces():
    assert exact_match("  The Answer.", "the answer") == 1.0
    assert exact_match("the answer is", "the answer") == 0.0


def test_greedy_is_deterministic_and_independent_of_batching(tiny_lm):
    prompts = ["The tenant", "A much longer prompt about the patient and the clinical dosage", "Court"]
    batched = greedy(tiny_lm, prompts, max_new_tokens=5, batch_size=3)
    single = [greedy(tiny_lm, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == single  # left padding must not change what a prompt generates
    assert len(batched) == 3 and all(isinstance(s, str) for s in batched)


def test_task_metrics_by_domain():
    examples = [{"completion": "a b", "domain": "x"}, {"completion": "c d", "domain": "y"}]
    m = task_metrics(["a b", " \n "], examples)
    assert m["rouge_l"] == pytest.approx(0.5) and m["exact_match"] == pytest.approx(0.5)
    assert m["by_domain"]["x"]["exact_match"] == 1.0 and m["by_domain"]["y"]["rouge_l"] == 0.0
    assert m["blank"] == 0.5 and m["by_domain"]["y"]["blank"] == 1.0  # whitespace-only output is counted apart


def test_prompts_are_framed_with_the_chat_template(tiny_lm):
    from llm_pipeline.evaluation.models import frame_prompt, prompt_text

    framed = frame_prompt(tiny_lm.tokenizer, "Continue this text:\nThe tenant")
    assert framed.startswith("<|user|>\n") and framed.endswith("<|assistant|>\n")
    convo = [{"role": "user", "content": "Hi"}]
    assert frame_prompt(tiny_lm.tokenizer, convo) == "<|user|>\nHi\n<|assistant|>\n" and prompt_text(convo) == "Hi"


def test_the_generation_section_is_sized_from_a_timed_batch(tiny_lm, monkeypatch):
    """Under eval_report's time cap a batch of prompts is generated and timed (here the budget's clock reads a
    second per reading: the batch took 1 s), and the prompts each model answers are cut to what the section's share
    affords: the task examples first, then the probe and adversarial lists alike; the record says what was cut."""
    import itertools

    from llm_pipeline.stages.eval_report import SECTION_SHARES, size_generation
    from llm_pipeline.training import budget

    ticks = itertools.count()
    monkeypatch.setattr(budget, "now", lambda: float(next(ticks)))
    counts = {"task": 10, "extra": 1, "probes": 4, "adversarial": 4}
    first = ["the court held", "a tenant may", "the patient was", "dosage of"]
    # 20 s cap: the section's 7 s less the 1 s probe, at 0.25 s a prompt x 2 rounds (4 models on 2 workers): 12 fit.
    keep, record = size_generation(tiny_lm, first, counts, 20.0, 4, 4, models_n=4, workers=2)
    assert SECTION_SHARES["generation"] == 0.35 and record["prompt_seconds"] == 0.5 and record["prompts_affordable"] == 12
    assert keep == {"task": 3, "extra": 1, "probes": 4, "adversarial": 4} and record["cut"] == {"task": 7}
    # A cap the probe alone uses up: no task example, and the fixed lists are cut too (the extra samples stay).
    keep, record = size_generation(tiny_lm, first, counts, 4.0, 4, 4, models_n=4, workers=2)
    assert keep == {"task": 0, "extra": 1, "probes": 0, "adversarial": 0} and record["prompts_affordable"] == 0


def test_policy_reward_prompts_are_sized_from_a_timed_sampling_batch(tiny_lm, monkeypatch):
    """The comparison's prompts follow from one sampling batch timed on the budget's clock (a second a reading here):
    per prompt, its sampling share x the models compared x the scoring margin."""
    import itertools
    from collections import Counter

    from llm_pipeline.evaluation import policy_rewards
    from llm_pipeline.training import budget

    tok = tiny_lm.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    prompts = policy_rewards.fit(tok, ["the court held that", "a tenant may", "the patient was given", "dosage of"] * 3, 24, Counter())
    ticks = itertools.count()
    monkeypatch.setattr(budget, "now", lambda: float(next(ticks)))
    settings = policy_rewards.Settings(samples=2, max_new_tokens=4, max_length=32, batch_size=8)  # 4 prompts a batch
    n, cap = policy_rewards.affordable_prompts(tiny_lm, tok, prompts, settings, policies=3, allowance=10.0)
    per = 1.0 / 4 * 3 * policy_rewards.SCORING_MARGIN
    assert cap["probe_prompts"] == 4 and cap["prompt_seconds"] == per and n == int(9.0 // per) == 8
    assert cap["prompts_cut"] == len(prompts) - 8
    assert policy_rewards.affordable_prompts(tiny_lm, tok, prompts, settings, policies=3, allowance=0.5)[0] == 0
