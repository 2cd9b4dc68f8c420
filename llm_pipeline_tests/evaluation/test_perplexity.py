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


# -- spans left out of the score (the surrogates that fill PII tags)

NAMED = "The tenant Zorblax Quint pays the landlord."


def test_empty_spans_change_nothing(tiny_lm):
    from llm_pipeline.evaluation.perplexity import encode

    texts = [TEXT, NAMED, "Short one."]
    plain = score_texts(tiny_lm, texts, window=6)
    ids, offsets = encode(tiny_lm.tokenizer, texts)
    for got in (score_texts(tiny_lm, texts, window=6, skip=[[], [], []]),
                score_texts(tiny_lm, texts, window=6, token_ids=ids, offsets=offsets, skip=[[], [], []])):
        assert [(s.nll, s.tokens, s.bytes) for s in got] == [(s.nll, s.tokens, s.bytes) for s in plain]


@pytest.mark.parametrize("size", [64, 6, 2])
def test_tokens_touching_a_span_are_read_but_not_scored(tiny_lm, size):
    """By hand: the tokens whose characters overlap "Zorblax Quint" are context only; the bytes inside the span do
    not count. The same for any window size (windows after the first start with the token before them)."""
    from llm_pipeline.evaluation.perplexity import encode

    start = NAMED.index("Zorblax")
    span = (start, start + len("Zorblax Quint"))
    (ids,), (offsets,) = encode(tiny_lm.tokenizer, [NAMED])
    touching = [a < span[1] and span[0] < b for a, b in offsets]
    assert 0 < sum(touching) < len(ids)  # the span is some tokens, not all
    seq = [tiny_lm.tokenizer.eos_token_id] + ids
    with torch.no_grad():
        expected = 0.0
        for k, w in enumerate(windows(seq, size)):
            logp = torch.log_softmax(tiny_lm.model(input_ids=torch.tensor([w])).logits[0].double(), dim=-1)
            for j in range(len(w) - 1):
                if not touching[k * (size - 1) + j]:  # target j+1 of the window is document token k*(size-1)+j
                    expected -= logp[j, w[j + 1]].item()
    (s,) = score_texts(tiny_lm, [NAMED], window=size, skip=[[span]])
    assert s.tokens == len(ids) - sum(touching)
    assert s.bytes == len(NAMED.encode("utf-8")) - len("Zorblax Quint")
    assert s.nll == pytest.approx(expected, rel=1e-4)
    # Scored tokens are those outside the span; the ones inside still shape what follows them as context.
    (whole,) = score_texts(tiny_lm, [NAMED], window=size)
    assert whole.tokens == s.tokens + sum(touching) and whole.nll > s.nll


def test_spans_in_a_batch_apply_to_their_own_text_only(tiny_lm):
    texts = [NAMED, TEXT, NAMED]
    start = NAMED.index("Zorblax")
    skip = [[(start, start + 7)], [], []]
    batched = score_texts(tiny_lm, texts, batch_size=3, skip=skip)
    alone = [score_texts(tiny_lm, [t], batch_size=1, skip=[sp])[0] for t, sp in zip(texts, skip)]
    assert [(s.tokens, s.bytes) for s in batched] == [(s.tokens, s.bytes) for s in alone]
    assert [s.nll for s in batched] == pytest.approx([s.nll for s in alone], rel=1e-4)
    assert batched[0].tokens < batched[2].tokens
