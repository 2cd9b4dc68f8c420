"""The base_checkpoint stage through the runner: pretraining from scratch, resuming after a crash, and loading a
pretrained model whose tokenizer was extended (new embedding rows = mean of their pieces)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llm_pipeline.io import read_timed
from llm_pipeline.runner import run_stage
from llm_pipeline.stages.base_checkpoint import checkpoint_dir
from llm_pipeline.training import checkpoints
from llm_pipeline_tests.training.fixtures import built_pipeline, tiny_config, write_deduped_shards


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return built_pipeline(tmp_path_factory, "base_checkpoint")


def test_scratch_model_is_saved_with_tokenizer_and_log(pipeline):
    cfg, results = pipeline
    out = results["base_checkpoint"].output_dir
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == cfg.tokenizer.vocab_size and model.config.hidden_size == 32
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    log = json.loads((out / "training_log.json").read_text())
    assert [e["step"] for e in log if "eval_loss" in e] == [3, 6]
    assert all({"step", "loss", "lr"} <= set(e) for e in log)
    assert not checkpoint_dir(cfg).exists()  # resume checkpoints are removed once the output is complete


def test_stats_report_held_out_loss_and_throughput(pipeline):
    s = pipeline[1]["base_checkpoint"].stats
    assert s["steps"] == 6 and s["resumed_from_step"] == 0
    assert s["train_tokens"] > 0 and s["tokens_per_second"] > 0 and s["parameters"] > 0
    assert s["eval_perplexity"] == pytest.approx(torch.exp(torch.tensor(s["eval_loss"])).item(), rel=1e-3)
    assert s["precision"] in ("fp32", "bf16")


class Crash(RuntimeError):
    pass


def test_resume_after_crash_continues_from_the_checkpoint(pipeline, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    write_deduped_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")
    real_save = checkpoints.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Crash("killed right after the first checkpoint")

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        run_stage(cfg, "base_checkpoint")
    assert [p.name for p in checkpoint_dir(cfg).glob("step-*.pt")] == ["step-0000003.pt"]
    assert not (cfg.data_path / "base_checkpoint").exists()  # a crashed run leaves no output that looks finished

    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    res = run_stage(cfg, "base_checkpoint")
    assert res.stats["resumed_from_step"] == 3 and res.metadata["resume"] == "resumed from step-0000003.pt"
    assert not checkpoint_dir(cfg).exists()
    # Data order and RNG are restored, so the resumed run ends where an uninterrupted one does.
    resumed = load_file(res.output_dir / "model.safetensors")
    straight = load_file(pipeline[1]["base_checkpoint"].output_dir / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor)


def test_checkpoint_from_another_config_is_ignored(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    write_deduped_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")
    folder = checkpoint_dir(cfg)
    folder.mkdir(parents=True)
    torch.save({"step": 3, "fingerprint": "someone-else"}, folder / "step-0000003.pt")
    res = run_stage(cfg, "base_checkpoint")
    assert res.stats["resumed_from_step"] == 0 and "different config" in res.metadata["resume"]


def test_pretrained_source_with_extended_tokenizer_mean_initialises_new_rows(pipeline, tmp_path):
    _, results = pipeline
    base_dir = results["base_checkpoint"].output_dir
    cfg = tiny_config(
        tmp_path,
        tokenizer={"mode": "extend", "base_model": str(base_dir), "extend_max_new_tokens": 4, "keep_extension": "always"},
        base_checkpoint={"source": "pretrained", "model": str(base_dir), "train_steps": 0},
        allowed_roots=[str(base_dir)],
    )
    write_deduped_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")
    res = run_stage(cfg, "base_checkpoint")
    ext = json.loads((cfg.data_path / "tokenizer" / "domain_tokens.json").read_text())
    old = load_file(base_dir / "model.safetensors")["model.embed_tokens.weight"]
    new = load_file(res.output_dir / "model.safetensors")["model.embed_tokens.weight"]
    assert new.shape[0] == res.stats["vocab_size"] > old.shape[0]
    torch.testing.assert_close(new[: old.shape[0]], old)
    for t in ext["tokens"]:
        torch.testing.assert_close(new[t["token_id"]], old[t["base_piece_ids"]].mean(dim=0))
    assert res.stats["embeddings_added"] == new.shape[0] - old.shape[0]


def test_an_extension_that_does_not_lower_bits_per_byte_enough_is_dropped(pipeline, tmp_path):
    """The stage measures both tokenizers on the same trained model; asked for a gain the terms do not bring (here
    90%), it ships the original tokenizer and drops the new rows again."""
    from transformers import AutoTokenizer

    base_dir = pipeline[1]["base_checkpoint"].output_dir
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend", "base_model": str(base_dir), "extend_max_new_tokens": 8, "extension_min_gain": 0.9},
                      base_checkpoint={"source": "pretrained", "model": str(base_dir), "train_steps": 0}, allowed_roots=[str(base_dir)])
    write_deduped_shards(cfg.data_path)
    extended = run_stage(cfg, "tokenizer").stats
    res = run_stage(cfg, "base_checkpoint")
    v = res.stats["vocab_extension"]
    assert v["checked"] and v["tokens_added"] == extended["tokens_added"] > 0 and v["documents"] > 0
    assert v["extended_bits_per_byte"] >= 0.1 * v["original_bits_per_byte"] and v["kept"] == "original"
    assert "do not lower held-out bits per byte by more than 90.0%" in v["why"]
    # The original vocabulary with the original rows ships.
    tok = AutoTokenizer.from_pretrained(res.output_dir)
    assert len(tok) == res.stats["vocab_size"] == extended["vocab_size"] - extended["tokens_added"] and tok.chat_template
    old = load_file(base_dir / "model.safetensors")["model.embed_tokens.weight"]
    new = load_file(res.output_dir / "model.safetensors")["model.embed_tokens.weight"]
    assert new.shape == old.shape
    torch.testing.assert_close(new, old)


def test_an_extension_that_lowers_bits_per_byte_is_kept(tmp_path):
    """A general model cuts the domain terms into many pieces it barely predicts: as one token each (mean-initialised
    rows) the same model spends fewer bits per byte, and the extended tokenizer ships."""
    from llm_pipeline_tests.training.pretrained_fixture import save_pretrained_folder

    base_dir = save_pretrained_folder(tmp_path / "general-base")
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend", "extend_max_new_tokens": 12},
                      base_checkpoint={"source": "pretrained", "model": str(base_dir), "train_steps": 0})
    write_deduped_shards(cfg.data_path)
    extended = run_stage(cfg, "tokenizer").stats
    res = run_stage(cfg, "base_checkpoint")
    v = res.stats["vocab_extension"]
    assert v["extended_bits_per_byte"] < v["original_bits_per_byte"] and v["kept"] == "extended" and v["change"] < 0
    assert res.stats["vocab_size"] == extended["vocab_size"]


def test_pretrained_source_refuses_a_freshly_trained_vocabulary(tmp_path):
    # The config alone shows the mismatch, so it stops the load, not base_checkpoint after the curation.
    with pytest.raises(ValueError, match="tokenizer.mode is 'train' but base_checkpoint.source is 'pretrained'"):
        tiny_config(tmp_path, base_checkpoint={"source": "pretrained", "model": str(tmp_path)})


# ---------------------------------------------------------------- pretrained sources of our own making
def test_local_pretrained_folder_extended_then_continued_on_a_domain_general_mix(tmp_path):
    from llm_pipeline_tests.training.pretrained_fixture import save_pretrained_folder, write_general_jsonl

    base_dir = save_pretrained_folder(tmp_path / "general-base")
    write_general_jsonl(tmp_path / "general" / "web.jsonl")
    common = dict(tokenizer={"mode": "extend", "extend_max_new_tokens": 12, "keep_extension": "always"})
    pretrained = {"source": "pretrained", "model": str(base_dir)}
    cfg = tiny_config(tmp_path, base_checkpoint={**pretrained, "train_steps": 0}, **common)
    write_deduped_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")  # base_model unset: the base checkpoint's own tokenizer is extended
    res = run_stage(cfg, "base_checkpoint")

    # New rows are the mean of the rows of the pieces the base tokenizer cut each term into; old rows are untouched.
    ext = json.loads((cfg.data_path / "tokenizer" / "domain_tokens.json").read_text())
    old = load_file(base_dir / "model.safetensors")["model.embed_tokens.weight"]
    new = load_file(res.output_dir / "model.safetensors")["model.embed_tokens.weight"]
    assert len(ext["tokens"]) == res.stats["embeddings_added"] == res.stats["embeddings_mean_initialised"] > 0
    torch.testing.assert_close(new[: old.shape[0]], old)
    for t in ext["tokens"]:
        torch.testing.assert_close(new[t["token_id"]], old[t["base_piece_ids"]].mean(dim=0))

    # Continued pretraining: 70% of the rows from the domain shards, 30% from the general text.
    mixed = tiny_config(
        tmp_path, **common,
        base_checkpoint={**pretrained, "train_steps": 5, "batch_size": 4, "eval_every": 5, "learning_rate": 1e-3,
                         "lr_schedule": "linear", "general_data": [str(tmp_path / "general")], "domain_ratio": 0.7},
    )
    s = run_stage(mixed, "base_checkpoint").stats
    assert s["steps"] == 5 and s["mix"]["domain_rows"] == 14 and s["mix"]["general_rows"] == 6
    assert s["mix"]["general_train_tokens"] > 0 and s["mix"]["general_eval_tokens"] > 0
    assert s["eval_perplexity"] > 1 and s["general_eval_perplexity"] > 1 and s["lr_schedule"] == "linear"


def test_gguf_source_extends_its_tokenizer_and_trains_with_tracking(tmp_path):
    from llm_pipeline_tests.training.pretrained_fixture import build_pretrained, write_gguf

    model, tok = build_pretrained()
    (tmp_path / "gguf").mkdir()
    write_gguf(tmp_path / "gguf" / "tiny.gguf", model, tok)
    cfg = tiny_config(
        tmp_path,
        tokenizer={"mode": "extend", "extend_max_new_tokens": 8},
        base_checkpoint={"source": "gguf", "model": str(tmp_path / "gguf"), "gguf_file": "tiny.gguf", "train_steps": 2,
                         "eval_every": 2, "learning_rate": 1e-3},
        tracking={"wandb": True, "wandb_mode": "offline"},
    )
    write_deduped_shards(cfg.data_path)
    tok_res = run_stage(cfg, "tokenizer")  # the tokenizer comes out of the GGUF file's metadata
    assert tok_res.stats["base_vocab_size"] == 300 and tok_res.stats["tokens_added"] > 0
    res = run_stage(cfg, "base_checkpoint")
    saved = json.loads((res.output_dir / "config.json").read_text())
    assert "quantization_config" not in saved and saved["vocab_size"] == tok_res.stats["vocab_size"]
    assert res.stats["steps"] == 2 and res.stats["source"] == "gguf" and res.stats["final_train_loss"] > 0
    assert AutoModelForCausalLM.from_pretrained(res.output_dir).config.hidden_size == 32
    # The wandb run of each stage is named in its metadata (what Dagster shows).
    for r in (tok_res, res):
        assert r.metadata["wandb_mode"] == "offline" and r.metadata["wandb_run_id"] in r.metadata["wandb_dir"]


def test_the_run_budget_stops_pretraining_and_keeps_evaluations_within_a_tenth(tmp_path):
    """training.max_train_seconds 4: base_checkpoint's share is 30% (1.2 s). With a step cap no machine reaches and an
    evaluation after every step, the budget ends the run, and the evaluations during it stay within 10% of it (the
    first one, which measures what an evaluation costs, and the final one always run)."""
    cfg = tiny_config(tmp_path, training={"max_train_seconds": 4},
                      base_checkpoint={"train_steps": 100_000, "eval_every": 1, "checkpoint_every": 100_000})
    write_deduped_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")
    res = run_stage(cfg, "base_checkpoint")
    s = res.stats
    assert s["budget_seconds"] == 1.2 and "training.max_train_seconds" in s["budget"]
    assert s["stopped_by_budget"] and 0 < s["steps"] < 100_000 and s["eval_loss"] is not None
    log = read_timed(res.output_dir, "training_log.json")  # eval seconds live in .timings.json, out of the hash
    evals = [e["eval_seconds"] for e in log if "eval_seconds" in e]
    assert len(evals) + s["evals_skipped"] == s["steps"]  # one per step: run or skipped
    # Another evaluation runs only while (evaluations so far + 1) x the longest one fits in 10% of the budget, so
    # the intermediate ones add up to at most that tenth plus one evaluation (a slow one on a busy machine).
    assert sum(evals[:-1]) <= 0.1 * 1.2 + max(evals) + 1e-6


def test_under_a_budget_the_vocabulary_check_and_the_evaluations_fit_in_a_tenth_of_it(tmp_path):
    """A budget far below one step, on a pretrained model whose tokenizer was extended: the evaluations score the
    chunks their part affords (one at least), the vocabulary check scores the least text it scores (its part is 3% of
    the budget) and says how much it scored, and the stage records what its clock counted."""
    from llm_pipeline.stages.base_checkpoint import VOCAB_CHECK_MIN_CHARS, VOCAB_CHECK_SHARE
    from llm_pipeline_tests.training.pretrained_fixture import save_pretrained_folder

    base_dir = save_pretrained_folder(tmp_path / "general-base")
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend", "extend_max_new_tokens": 12, "keep_extension": "always"},
                      base_checkpoint={"source": "pretrained", "model": str(base_dir), "train_steps": 1000, "batch_size": 2,
                                       "eval_every": 1000, "max_train_seconds": 0.01})
    write_deduped_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")
    res = run_stage(cfg, "base_checkpoint")
    s, v = res.stats, res.stats["vocab_extension"]
    # One step of the vocabulary trial (kept: its weights carry on), one of the main training.
    assert s["budget_seconds"] == 0.01 and s["stopped_by_budget"] and s["steps"] == 2 and v["trial_steps"] == 1
    assert s["loop_budget_seconds"] <= s["budget_seconds"] and s["eval_chunks_scored"] == 1  # the least: one chunk
    # The check's 0.3 ms afford less than the least text it scores: a few sentences.
    assert v["checked"] and v["max_chars"] == VOCAB_CHECK_MIN_CHARS and 0 < v["chars_scored"] <= VOCAB_CHECK_MIN_CHARS
    assert 1 <= v["documents"] <= v["documents_available"]
    assert v["allowance_seconds"] == round(VOCAB_CHECK_SHARE * 0.01, 1)
    timed = read_timed(res.output_dir)
    assert timed["budget_spent_seconds"] > 0 and timed["vocab_extension"]["seconds"] > 0


def test_lora_continued_pretraining_trains_the_new_rows_and_saves_a_plain_model(tmp_path):
    from llm_pipeline_tests.training.pretrained_fixture import save_pretrained_folder

    base_dir = save_pretrained_folder(tmp_path / "general-base")
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend", "extend_max_new_tokens": 12, "keep_extension": "always"},
                      base_checkpoint={"source": "pretrained", "model": str(base_dir), "method": "lora", "lora_r": 4,
                                       "train_steps": 4, "batch_size": 4, "eval_every": 4, "lora_learning_rate": 1e-2})
    write_deduped_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")
    res = run_stage(cfg, "base_checkpoint")
    s = res.stats
    assert s["method"] == "lora" and s["method_reason"] == "set in config" and s["learning_rate"] == 1e-2
    assert 0 < s["trainable_parameters"] < 0.5 * s["parameters"] and s["steps"] == 4
    assert not (res.output_dir / "adapter_config.json").exists()  # merged: downstream stages load a plain model
    model = AutoModelForCausalLM.from_pretrained(res.output_dir)
    ext = json.loads((cfg.data_path / "tokenizer" / "domain_tokens.json").read_text())
    old = load_file(base_dir / "model.safetensors")
    new = load_file(res.output_dir / "model.safetensors")
    emb_old, emb_new = old["model.embed_tokens.weight"], new["model.embed_tokens.weight"]
    torch.testing.assert_close(emb_new[: emb_old.shape[0]], emb_old)  # only the new rows are trainable
    moved = [t for t in ext["tokens"] if not torch.allclose(emb_new[t["token_id"]], emb_old[t["base_piece_ids"]].mean(dim=0))]
    assert moved  # the new rows trained away from their mean initialisation
    assert not torch.equal(new["model.layers.0.self_attn.q_proj.weight"], old["model.layers.0.self_attn.q_proj.weight"])  # LoRA merged
    assert model.get_input_embeddings().weight.shape[0] == s["vocab_size"]


def test_a_dropped_extension_costs_only_the_trial_and_the_main_training_uses_the_original_tokenizer(tmp_path):
    """The vocabulary is decided before the main training: a trial (a tenth of train_steps) trains LoRA and the new
    rows on the extended tokenization, the check finds no gain of 90%, and the main training then runs all its steps
    on text tokenized without the terms, with no new rows (trainable or saved)."""
    from transformers import AutoTokenizer

    from llm_pipeline_tests.training.pretrained_fixture import save_pretrained_folder

    base_dir = save_pretrained_folder(tmp_path / "general-base")
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend", "extend_max_new_tokens": 12, "extension_min_gain": 0.9},
                      base_checkpoint={"source": "pretrained", "model": str(base_dir), "method": "lora", "lora_r": 4,
                                       "train_steps": 10, "batch_size": 2, "eval_every": 10, "lora_learning_rate": 1e-2})
    write_deduped_shards(cfg.data_path)
    extended = run_stage(cfg, "tokenizer").stats
    res = run_stage(cfg, "base_checkpoint")
    s, v = res.stats, res.stats["vocab_extension"]
    assert v["kept"] == "original" and v["trial_steps"] == 1 and v["trial_tokens"] > 0
    assert v["decided"].startswith("before the main training") and v["original_bits_per_byte"] > 0
    assert s["steps"] == 10  # the trial's step is not counted: its weights were dropped with the terms
    assert s["vocab_size"] == extended["vocab_size"] - extended["tokens_added"] == len(AutoTokenizer.from_pretrained(res.output_dir))
    old = load_file(base_dir / "model.safetensors")["model.embed_tokens.weight"]
    new = load_file(res.output_dir / "model.safetensors")["model.embed_tokens.weight"]
    torch.testing.assert_close(new, old)  # LoRA trained the layers; no row was added, none trained
    assert not (res.output_dir / "added_rows.json").exists()
    # The main training read the text as the original tokenizer cuts it: more tokens than with the domain terms.
    from llm_pipeline.stages.base_checkpoint import _Data

    assert s["corpus_train_tokens"] > len(_Data(cfg, AutoTokenizer.from_pretrained(cfg.data_path / "tokenizer"), cfg.data_path / "deduped_shards", 64).train_tokens)


def test_auto_method_keeps_small_and_scratch_models_full(pipeline):
    s = pipeline[1]["base_checkpoint"].stats
    assert s["method"] == "full" and "from scratch" in s["method_reason"]


def test_training_reads_the_shards_tags_filled_and_counts_them(tmp_path):
    from llm_pipeline_tests.training.fixtures import write_tagged_shards

    cfg = tiny_config(tmp_path, base_checkpoint={"train_steps": 2, "eval_every": 2, "checkpoint_every": 2})
    write_tagged_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")
    res = run_stage(cfg, "base_checkpoint")
    filled = res.stats["redaction_tags_filled"]
    # Every document of both splits is read once for training or held-out loss; each holds one tag of each type.
    assert filled["documents"] == 36 and filled["filled"] == {t: 36 for t in ("DATE_TIME", "EMAIL_ADDRESS", "LOCATION",
                                                                              "ORGANIZATION", "PERSON")}
    # The surrogates' tokens are read, not predicted: the held-out loss counts the rest.
    assert res.stats["eval_loss"] is not None and res.stats["eval_loss"] == res.stats["eval_loss"]
