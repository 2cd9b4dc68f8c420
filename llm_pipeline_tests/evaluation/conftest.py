"""A tiny tokenizer and model shared by the evaluation tests (built once per module: training a BPE takes a moment)."""

from __future__ import annotations

import random

import pytest

from evaluation.fixtures import DOMAINS, document, make_model, make_tokenizer
from llm_pipeline.evaluation.models import LoadedModel


@pytest.fixture(scope="module")
def tiny_lm() -> LoadedModel:
    rng = random.Random(0)
    tok = make_tokenizer([document(rng, d) for d in DOMAINS for _ in range(20)])
    return LoadedModel("base", make_model(len(tok), max_positions=64), tok, is_adapter=False)
