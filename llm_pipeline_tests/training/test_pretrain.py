"""Pieces of the pretraining loop: the learning-rate schedule and early stopping."""

import pytest

from llm_pipeline.training.pretrain import MIN_LR_RATIO, LoopResult, _should_stop, lr_lambda


def test_schedule_warms_up_then_decays_to_the_floor():
    f = lr_lambda(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) < f(20) and f(100) == pytest.approx(MIN_LR_RATIO)


def test_early_stopping_counts_evaluations_without_improvement():
    r = LoopResult()
    assert [_should_stop(r, loss, patience=2) for loss in (3.0, 2.5, 2.6, 2.4, 2.5, 2.45)] == [False, False, False, False, False, True]
    assert r.best_eval_loss == 2.4
    assert not _should_stop(LoopResult(), 1.0, patience=None)


def test_linear_schedule_decays_in_a_straight_line_to_the_floor():
    f = lr_lambda(110, 10 / 110, "linear")
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5) and f(110) == pytest.approx(MIN_LR_RATIO)
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_lambda(10, 0.1, "step")
