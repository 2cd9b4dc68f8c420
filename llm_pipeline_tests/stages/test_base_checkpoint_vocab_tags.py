"""base_checkpoint's vocabulary check on held-out text with PII tags: both tokenizers are scored outside them."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_pipeline.runner import run_stage
from llm_pipeline.stages.base_checkpoint import vocab_check
from llm_pipeline_tests.training.fixtures import tiny_config, write_tagged_shards


def test_the_check_leaves_surrogates_or_tags_out_of_both_scores(tmp_path):
    from llm_pipeline_tests.training.pretrained_fixture import save_pretrained_folder

    base_dir = save_pretrained_folder(tmp_path / "general-base")
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend", "extend_max_new_tokens": 12},
                      base_checkpoint={"source": "pretrained", "model": str(base_dir), "train_steps": 0})
    shards = write_tagged_shards(cfg.data_path)
    added = run_stage(cfg, "tokenizer").stats["tokens_added"]
    v = run_stage(cfg, "base_checkpoint").stats["vocab_extension"]
    # Five tags a document (training.fixtures.TAGGED), each read as a surrogate and left out of both scores.
    assert v["checked"] and v["left_out_of_score"]["mode"] == "surrogates"
    assert v["left_out_of_score"]["spans"] == 5 * v["documents"] > 0 and v["left_out_of_score"]["chars"] > 0

    tok = AutoTokenizer.from_pretrained(cfg.data_path / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model.resize_token_embeddings(len(tok))
    filled, _ = vocab_check(cfg, model, tok, shards, added)
    again, _ = vocab_check(cfg, model, tok, shards, added)
    assert filled == {**again, "seconds": filled["seconds"]}  # deterministic surrogates, the same figures
    cfg.training.fill_redaction_tags = False
    tags, _ = vocab_check(cfg, model, tok, shards, added)
    assert tags["left_out_of_score"]["mode"] == "tags" and tags["left_out_of_score"]["spans"] == filled["left_out_of_score"]["spans"]
    assert tags["left_out_of_score"]["chars"] == tags["documents"] * len(" <PERSON> <ORGANIZATION> <DATE_TIME> <LOCATION> <EMAIL_ADDRESS>")
