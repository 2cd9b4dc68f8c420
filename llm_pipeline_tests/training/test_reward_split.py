"""The split of the training pairs between the reward model and its judge: by prompt, deterministic, about half each."""

import random

from llm_pipeline.training.reward_split import judge_side, prompt_key, shared_prompts, split_by_prompt


def _pairs(n_prompts: int, per_prompt: int = 3) -> list[dict]:
    return [{"prompt": f"Explain clause {i}.", "chosen": f"Clause {i} binds both parties ({k}).", "rejected": "No."}
            for i in range(n_prompts) for k in range(per_prompt)]


def test_every_pair_of_a_prompt_goes_to_one_side_and_the_sides_share_no_prompt():
    pairs = _pairs(200)
    primary, judge = split_by_prompt(pairs)
    assert len(primary) + len(judge) == len(pairs) and shared_prompts(primary, judge) == 0
    assert 0.4 < len(judge) / len(pairs) < 0.6  # about half each
    for side in (primary, judge):
        counts = {}
        for p in side:
            counts[p["prompt"]] = counts.get(p["prompt"], 0) + 1
        assert set(counts.values()) == {3}


def test_the_split_depends_on_the_prompts_alone():
    pairs = _pairs(50)
    shuffled = pairs[:]
    random.Random(0).shuffle(shuffled)
    a, b = split_by_prompt(pairs)
    c, d = split_by_prompt(shuffled)
    key = lambda rows: sorted((p["prompt"], p["chosen"]) for p in rows)  # noqa: E731
    assert key(a) == key(c) and key(b) == key(d)


def test_conversation_prompts_split_by_their_whole_content():
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Rent?"}]
    same = [dict(m) for m in chat]
    assert prompt_key(chat) == prompt_key(same) and judge_side(chat) == judge_side(same)
    assert prompt_key(chat) != prompt_key(chat[:1])
