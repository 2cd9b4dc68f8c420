from llm_pipeline.training.finetune import step_seconds


def test_step_seconds_sets_the_warm_up_step_apart():
    assert step_seconds([9.0, 2.0, 4.0, 3.0]) == {"first_step_seconds": 9.0, "step_seconds": 3.0}
    assert step_seconds([9.0, 2.0, 4.0]) == {"first_step_seconds": 9.0, "step_seconds": 3.0}
    assert step_seconds([5.0]) == {"first_step_seconds": 5.0, "step_seconds": 5.0}
    assert step_seconds([]) == {"first_step_seconds": None, "step_seconds": None}
