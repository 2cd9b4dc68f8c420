"""The tokenizer stage through the runner: train mode on a tiny two-domain corpus, and extend mode on top of it."""

import json

import pytest
from transformers import AutoTokenizer

from llm_pipeline.runner import run_stage
from llm_pipeline_tests.training.fixtures import built_pipeline, tiny_config, write_deduped_shards


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg, results = built_pipeline(tmp_path_factory, "tokenizer")
    return cfg, results["tokenizer"]


def test_train_mode_writes_a_loadable_tokenizer(trained):
    cfg, res = trained
    tok = AutoTokenizer.from_pretrained(res.output_dir)
    assert len(tok) == cfg.tokenizer.vocab_size
    assert tok.eos_token == "<|endoftext|>" and tok.bos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    text = "The tenant shall pay the landlord."
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless round trip


def test_chat_template_uses_the_turn_markers(trained):
    tok = AutoTokenizer.from_pretrained(trained[1].output_dir)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], tokenize=False
    )
    assert rendered == "<|user|>\nHi\n<|assistant|>\nHello<|endoftext|>\n"
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    assert len(tok("<|user|>", add_special_tokens=False)["input_ids"]) == 1


def test_stats_count_train_documents_only(trained):
    _, res = trained
    s = res.stats
    per_split = s["documents_per_split"]
    assert s["documents_seen"] == sum(c["train"] for c in per_split.values())
    assert set(s["fertility"]) == {"legal", "medicine"} and all(v > 0 for v in s["fertility"].values())
    assert s["tokens_seen"] > s["documents_seen"]
    assert "tokens" in res.preview


def test_domain_weights_resample_documents(tmp_path):
    cfg = tiny_config(tmp_path, tokenizer={"vocab_size": 300, "domain_weights": {"legal": 2.0, "medicine": 0.0}})
    write_deduped_shards(cfg.data_path)
    res = run_stage(cfg, "tokenizer")
    seen = res.stats["documents_seen_per_domain"]
    assert seen["legal"] == 2 * res.stats["documents_per_split"]["legal"]["train"]
    assert seen.get("medicine", 0) == 0


def test_extend_mode_adds_domain_terms(trained, tmp_path):
    _, base = trained
    cfg = tiny_config(
        tmp_path,
        tokenizer={"mode": "extend", "base_model": str(base.output_dir), "extend_max_new_tokens": 5},
        allowed_roots=[str(base.output_dir)],
    )
    write_deduped_shards(cfg.data_path)
    res = run_stage(cfg, "tokenizer")
    s = res.stats
    assert 0 < s["tokens_added"] <= 5
    assert s["vocab_size"] == s["base_vocab_size"] + s["tokens_added"]
    # Terms the base split into many pieces are now single tokens, so the domain text costs fewer tokens per word.
    assert all(s["fertility"][d] < s["fertility_base"][d] for d in s["fertility"])
    ext = json.loads((res.output_dir / "domain_tokens.json").read_text())
    tok = AutoTokenizer.from_pretrained(res.output_dir)
    for t in ext["tokens"]:
        assert tok.convert_ids_to_tokens(t["token_id"]) == t["term"] and len(t["base_piece_ids"]) >= 3


def test_extend_without_base_model_is_a_clear_error(tmp_path):
    # The config alone shows it, so it stops the load rather than the stage after the curation.
    with pytest.raises(ValueError, match="base_model is not set"):
        tiny_config(tmp_path, tokenizer={"mode": "extend"})


def test_extend_from_outside_the_allowed_roots_is_refused(trained, tmp_path):
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend", "base_model": str(trained[1].output_dir)})
    write_deduped_shards(cfg.data_path)
    with pytest.raises(ValueError, match="tokenizer.base_model: path_outside_root"):
        run_stage(cfg, "tokenizer")


# ---------------------------------------------------------------- a general-purpose base tokenizer of our own
@pytest.fixture(scope="module")
def general_base(tmp_path_factory):
    from llm_pipeline_tests.training.pretrained_fixture import save_pretrained_folder

    return save_pretrained_folder(tmp_path_factory.mktemp("general-base"))


def test_extend_a_general_tokenizer_lowers_fertility_per_domain(general_base, tmp_path):
    cfg = tiny_config(
        tmp_path,
        tokenizer={"mode": "extend", "base_model": str(general_base), "extend_max_new_tokens": 20},
        allowed_roots=[str(general_base)],
    )
    write_deduped_shards(cfg.data_path)
    res = run_stage(cfg, "tokenizer")
    s = res.stats
    assert s["base_vocab_size"] == 300 and 0 < s["tokens_added"] <= 20 and s["vocab_size"] == 300 + s["tokens_added"]
    # Domain terms cost a general tokenizer many pieces; as single tokens they cut tokens per word in every domain.
    for d in ("legal", "medicine"):
        assert s["fertility"][d] < 0.8 * s["fertility_base"][d]
    tok = AutoTokenizer.from_pretrained(res.output_dir)
    assert len(tok("hypertension", add_special_tokens=False)["input_ids"]) == 1
    meta = res.metadata
    assert meta["vocab_size"] == s["vocab_size"] and "base tokens/word" in meta["fertility"]
    assert "tokens:" in meta["tokenized_sample"]


def test_train_mode_reports_fertility_against_a_reference_tokenizer(general_base, tmp_path):
    cfg = tiny_config(tmp_path, tokenizer={"base_model": str(general_base)}, allowed_roots=[str(general_base)])
    write_deduped_shards(cfg.data_path)
    s = run_stage(cfg, "tokenizer").stats
    assert set(s["fertility_base"]) == {"legal", "medicine"}
    assert all(s["fertility"][d] < s["fertility_base"][d] for d in s["fertility"])  # a domain vocabulary fits better
