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
