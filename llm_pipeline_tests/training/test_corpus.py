"""Reading train/eval documents from deduped shards."""

from collections import Counter

import pytest

from llm_pipeline.io import ShardWriter
from llm_pipeline.training.corpus import CorpusError, count_documents, iter_documents, weighted_texts
from llm_pipeline_tests.training.fixtures import write_deduped_shards


@pytest.fixture
def shards(tmp_path):
    return write_deduped_shards(tmp_path, docs_per_domain=30)


def test_splits_are_disjoint_and_complete(shards):
    train = [r["id"] for r in iter_documents(shards, "legal", "train")]
    held = [r["id"] for r in iter_documents(shards, "legal", "eval")]
    assert not set(train) & set(held) and len(train) + len(held) == 30
    assert count_documents(shards, ["legal"]) == {"legal": {"train": len(train), "eval": len(held)}}


def test_weights_repeat_and_subsample_deterministically(shards):
    n_train = count_documents(shards, ["legal"])["legal"]["train"]
    doubled = Counter(d for d, _ in weighted_texts(shards, ["legal"], {"legal": 2.0}, seed=1))
    assert doubled["legal"] == 2 * n_train
    half = [t for _, t in weighted_texts(shards, ["legal"], {"legal": 0.5}, seed=1)]
    assert 0 < len(half) < n_train
    assert half == [t for _, t in weighted_texts(shards, ["legal"], {"legal": 0.5}, seed=1)]


def test_missing_domain_and_missing_column_are_clear_errors(tmp_path, shards):
    with pytest.raises(CorpusError, match="no deduped shards for domain 'software'"):
        list(iter_documents(shards, "software", "train"))
    with ShardWriter(tmp_path / "bad" / "legal") as w:
        w.write({"id": "a", "text": "no split column here"})
    with pytest.raises(CorpusError, match=r"lacks column.*'split'"):
        list(iter_documents(tmp_path / "bad", "legal", "train"))
