import math

import pytest
import torch

from llm_pipeline.evaluation.perplexity import Score, score_texts, total, windows

TEXT = "The tenant pays. Ünï bytes."


@pytest.mark.parametrize(
    "n, size, expected",
    [
        (7, 3, [[0, 1, 2], [2, 3, 4], [4, 5, 6]]),
        (4, 10, [[0, 1, 2, 3]]),
        (5, 2, [[0, 1], [1, 2], [2, 3], [3, 4]]),
        (1, 4, []),  # a lone token predicts nothing
    ],
)
def test_windows_score_every_token_after_the_first_once(n, size, expected):
    got = windows(list(range(n)), size)
    assert got == expected
    assert sum(len(w) - 1 for w in got) == max(0, n - 1)


def _hand_nll(model, ids: list[int]) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    return -sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))


def test_bits_per_byte_matches_a_hand_computation(tiny_lm):
    ids = [tiny_lm.tokenizer.eos_token_id] + tiny_lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    nll = _hand_nll(tiny_lm.model, ids)
    assert len(ids) <= tiny_lm.window  # one window: the hand computation sees the same context
    (s,) = score_texts(tiny_lm, [TEXT])
    assert s.tokens == len(ids) - 1  # every document token is scored, the EOS context token is not
    assert s.bytes == len(TEXT.encode("utf-8")) > len(TEXT)
    assert s.nll == pytest.approx(nll, rel=1e-4)
    assert s.bits_per_byte == pytest.approx(nll / math.log(2) / len(TEXT.encode("utf-8")), rel=1e-4)
    assert s.perplexity == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)


def test_long_documents_are_scored_window_by_window(tiny_lm):
    ids = [tiny_lm.tokenizer.eos_token_id] + tiny_lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    expected = sum(_hand_nll(tiny_lm.model, w) for w in windows(ids, 6))
    (s,) = score_texts(tiny_lm, [TEXT], window=6)
    assert s.tokens == len(ids) - 1
    assert s.nll == pytest.approx(expected, rel=1e-4)


def test_batching_and_padding_do_not_change_scores(tiny_lm):
    texts = [TEXT, "Short one.", TEXT * 3]
    one_by_one = [score_texts(tiny_lm, [t], batch_size=1)[0].nll for t in texts]
    batched = [s.nll for s in score_texts(tiny_lm, texts, batch_size=3)]
    assert batched == pytest.approx(one_by_one, rel=1e-4)


def test_totals_are_token_weighted():
    t = total([Score(nll=10.0, tokens=10, bytes=40, documents=1), Score(nll=30.0, tokens=10, bytes=40, documents=1)])
    assert t.perplexity == pytest.approx(math.exp(2.0))
    assert t.bits_per_byte == pytest.approx(40 / math.log(2) / 80)
    assert math.isnan(Score().perplexity)
