"""The lora_adapter stage: derived SFT data, a PEFT adapter that loads with plain PEFT, settings chosen with reasons,
every token of the split packed, user files in every format, each PEFT method, per-domain adapters, merged export,
and resuming after a crash."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llm_pipeline.runner import run_stage
from llm_pipeline.stages import lora_adapter
from llm_pipeline.training import finetune, sft_packing
from llm_pipeline.training.device import DevicePlan
from llm_pipeline.training.finetune import FinetuneError
from llm_pipeline_tests.training.fixtures import built_pipeline, tiny_config, write_deduped_shards


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return built_pipeline(tmp_path_factory, "lora_adapter")


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(pipeline, tmp_path, **lora):
    """The stage run directly (no runner) with changed lora_adapter settings, on the shared tiny base model."""
    cfg, results = pipeline
    cfg2 = cfg.model_copy(update={"lora_adapter": cfg.lora_adapter.model_copy(update={"max_steps": 1, **lora}), "allowed_roots": [str(tmp_path)]})
    inputs = {"base_checkpoint": results["base_checkpoint"].output_dir, "tokenizer": results["tokenizer"].output_dir,
              "deduped_shards": cfg.data_path / "deduped_shards"}
    out = tmp_path / "out"
    out.mkdir(parents=True)
    return lora_adapter.run(cfg2, inputs, out), out


def test_adapter_loads_with_plain_peft(pipeline):
    _, results = pipeline
    out = results["lora_adapter"].output_dir
    base = AutoModelForCausalLM.from_pretrained(results["base_checkpoint"].output_dir)
    model = PeftModel.from_pretrained(base, out)
    assert model.peft_config["default"].r == 4
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "training_log.json", "serving_manifest.json"} <= {p.name for p in out.iterdir()}


def test_sft_data_is_derived_from_the_right_split(pipeline):
    cfg, results = pipeline
    out = results["lora_adapter"].output_dir
    train, held = _jsonl(out / "sft_train.jsonl"), _jsonl(out / "sft_eval.jsonl")
    assert train and held
    for rec in train + held:
        assert {"prompt", "completion", "domain", "template"} <= set(rec) and rec["completion"].strip()
    # Document ids in the fixture: every 6th is held out (see fixtures.write_deduped_shards).
    assert all(int(r["source_id"].split("-")[1]) % 6 != 0 for r in train)
    assert all(int(r["source_id"].split("-")[1]) % 6 == 0 for r in held)
    assert {r["template"] for r in train} == {"continue", "summarise", "heading"}


def test_stats_and_settings_with_reasons(pipeline):
    res = pipeline[1]["lora_adapter"]
    s = res.stats
    assert s["steps"] == 3 and s["examples"] > 0
    assert 0 < s["trainable_share"] < 1 and s["trainable_params"] < s["total_params"]
    assert s["train_loss"] > 0 and s["eval_loss"] > 0 and s["peak_rss_mb"] > 0 and s["tokens_per_second"] > 0
    # Three steps timed: the first (warm-up) apart, the median of the other two for budgeting.
    assert s["first_step_seconds"] > 0 and 0 < s["step_seconds"] <= s["train_seconds"]
    settings = res.metadata["settings"]
    for name in ("precision", "gradient_checkpointing", "cpu_threads", "learning_rate", "warmup_ratio", "packing"):
        assert set(settings[name]) == {"value", "reason"} and settings[name]["reason"], name
    assert settings["learning_rate"]["value"] == 1e-3  # the LoRA default, not TRL's full-fine-tuning 2e-5
    assert settings["gradient_checkpointing"]["value"] is False  # a tiny model needs no activation recomputation
    assert settings["cpu_threads"]["value"] == 1 and "multiply-accumulates" in settings["cpu_threads"]["reason"]


def test_every_token_of_the_split_is_packed(pipeline):
    tokens = pipeline[1]["lora_adapter"].metadata["tokens"]
    assert set(tokens) == {"legal", "medicine"}
    for d, t in tokens.items():
        assert t["split_tokens"] > 0 and t["packed_tokens"] == t["split_tokens"], d
        assert t["trained_tokens"] + t["example_trained_tokens"] > 0
    assert pipeline[1]["lora_adapter"].metadata["settings"]["position_packing"]["value"] is True


def test_serving_manifest_lists_base_adapters_and_data(pipeline):
    out = pipeline[1]["lora_adapter"].output_dir
    m = json.loads((out / "serving_manifest.json").read_text())
    assert m["base_model"]["path"] == "base_checkpoint" and m["adapters"][0]["name"] == "combined"
    assert {"sft_train.jsonl", "deduped_shards/legal", "deduped_shards/medicine"} <= set(m["data_versions"])


@pytest.mark.parametrize("fmt, rows, field_map", [
    ("alpaca", [{"instruction": f"Define term {i}", "input": "", "output": f"Term {i} is a legal concept."} for i in range(20)], {}),
    ("prompt_completion", [{"question": f"What is clause {i}?", "answer": f"Clause {i} binds the tenant."} for i in range(20)],
     {"prompt": "question", "completion": "answer"}),
    ("messages", [{"messages": [{"role": "user", "content": f"Name {i}"}, {"role": "assistant", "content": f"Tenant {i}"}]} for i in range(20)], {}),
    ("text", [{"body": f"The landlord and tenant sign contract {i} under the statute."} for i in range(20)], {"text": "body"}),
])
def test_user_files_in_each_format(pipeline, tmp_path, fmt, rows, field_map):
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    res, out = _run(pipeline, tmp_path, data=[str(data)], data_format="auto", field_map=field_map)
    assert res.stats["derivation"] == "files" and res.stats["steps"] == 1 and res.stats["train_loss"] > 0
    assert len(_jsonl(out / "sft_train.jsonl")) + len(_jsonl(out / "sft_eval.jsonl")) == 20


def test_completion_only_labels_cover_the_answer_only(pipeline):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pipeline[1]["base_checkpoint"].output_dir)
    seg = sft_packing.encode({"prompt": "What binds the tenant?", "completion": "The contract clause.", "domain": "legal"}, tok, True)
    answer = tok.decode([t for t in seg.labels if t != sft_packing.IGNORE])
    assert "contract clause" in answer and "binds" not in answer


@pytest.mark.parametrize("method", ["dora", "ia3", "prefix", "full"])
def test_each_method_trains_and_saves(pipeline, tmp_path, method):
    res, out = _run(pipeline, tmp_path, method=method)
    assert res.stats["method"] == method and res.stats["steps"] == 1
    if method == "full":
        assert (out / "model.safetensors").exists() and res.stats["trainable_share"] == 1.0
        assert res.metadata["settings"]["learning_rate"]["value"] == 1e-4
    else:
        base = AutoModelForCausalLM.from_pretrained(pipeline[1]["base_checkpoint"].output_dir)
        PeftModel.from_pretrained(base, out)
    if method == "prefix":
        assert res.metadata["settings"]["packing"]["value"] is False


def test_qlora_on_cpu_stops_or_falls_back_as_configured(pipeline):
    cfg, _ = pipeline
    cpu = DevicePlan("cpu", "fp32", "test")
    with pytest.raises(FinetuneError, match="needs a CUDA GPU"):
        finetune.resolve_method(cfg.lora_adapter.model_copy(update={"method": "qlora"}), cpu)
    method, reason = finetune.resolve_method(cfg.lora_adapter.model_copy(update={"method": "qlora", "qlora_fallback": "lora"}), cpu)
    assert method == "lora" and "fell back" in reason


def test_per_domain_adapters_and_merged_export(pipeline, tmp_path):
    res, out = _run(pipeline, tmp_path, per_domain=True, merge=True)
    for d in ("legal", "medicine"):
        assert (out / "domains" / d / "adapter_model.safetensors").exists() and (out / "domains" / d / "merged" / "config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")  # plain weights: no PEFT needed
    assert merged.config.vocab_size > 0
    m = json.loads((out / "serving_manifest.json").read_text())
    assert [a["name"] for a in m["adapters"]] == ["combined", "legal", "medicine"]
    assert m["adapters"][0]["merged"] == "merged" and set(res.stats["per_domain"]) == {"legal", "medicine"}


def _crash_at_batch(monkeypatch, n: int):
    """Make the n-th training batch raise (a crash mid-run); returns a function that undoes it."""
    calls = {"n": 0}
    real = sft_packing.PackedCollator.__call__

    def crashing(self, rows):
        if rows[0]["split"] == "train":
            calls["n"] += 1
            if calls["n"] == n:
                raise RuntimeError("simulated crash")
        return real(self, rows)

    monkeypatch.setattr(sft_packing.PackedCollator, "__call__", crashing)
    return lambda: monkeypatch.setattr(sft_packing.PackedCollator, "__call__", real)


def test_resumes_from_the_latest_checkpoint_after_a_crash(pipeline, tmp_path, monkeypatch):
    undo = _crash_at_batch(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(pipeline, tmp_path, max_steps=3, checkpoint_every=1, eval_every=10)
    undo()
    cfg, _ = pipeline
    saved = sorted(int(p.name.split("-")[1]) for p in (cfg.data_path / ".checkpoints" / "lora_adapter" / "combined").glob("checkpoint-*"))
    assert saved and saved[-1] in (1, 2)
    res, _ = _run(pipeline, tmp_path / "again", max_steps=3, checkpoint_every=1, eval_every=10)
    assert res.stats["resumed_from_step"] == saved[-1] and res.stats["steps"] == 3
    assert not (cfg.data_path / ".checkpoints" / "lora_adapter" / "combined").exists()  # cleaned after success


def test_user_files_through_the_runner(tmp_path):
    rows = [{"instruction": f"Define term {i}", "input": "", "output": f"Term {i} is a legal concept."} for i in range(20)]
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = tiny_config(tmp_path, lora_adapter={"data": [str(data)], "max_steps": 1})
    write_deduped_shards(cfg.data_path)
    for stage in ("tokenizer", "base_checkpoint"):
        run_stage(cfg, stage)
    res = run_stage(cfg, "lora_adapter")
    train = _jsonl(res.output_dir / "sft_train.jsonl") + _jsonl(res.output_dir / "sft_eval.jsonl")
    assert len(train) == 20 and res.stats["derivation"] == "files"
    assert train[0]["prompt"].startswith("Define term") and train[0]["template"] == "file:sft.jsonl"


def test_documents_only_trains_on_the_split_text_alone(pipeline, tmp_path):
    res, out = _run(pipeline, tmp_path, examples_per_domain=0)
    assert res.stats["derivation"] == "documents" and res.stats["examples"] == 0 and res.stats["eval_examples"] == 0
    tokens = res.metadata["tokens"]
    assert all(t["example_tokens"] == 0 and t["example_trained_tokens"] == 0 for t in tokens.values())
    assert sum(t["trained_tokens"] for t in tokens.values()) > 0
    assert all("text" in r for r in _jsonl(out / "sft_train.jsonl"))


def test_documents_only_needs_the_documents():
    from pydantic import ValidationError

    from llm_pipeline.config import LoraAdapterConfig

    with pytest.raises(ValidationError, match="nothing to train on"):
        LoraAdapterConfig(examples_per_domain=0, corpus_text=False)


@pytest.fixture
def steady_clock(monkeypatch):
    """The budget's clock advanced a fixed 20 ms per reading: the schedule, the stop and the evaluations it plans are
    then the same on a quiet machine and a loaded one (a real clock made these tests fail under load)."""
    from llm_pipeline.training import budget

    ticks = iter(range(10**9))
    monkeypatch.setattr(budget, "now", lambda: 0.02 * next(ticks))


def test_a_time_budget_lays_the_schedule_over_its_seconds(pipeline, tmp_path, steady_clock):
    res, out = _run(pipeline, tmp_path, max_steps=None, max_train_seconds=4.0)
    s = res.stats
    assert s["stopped_by"] == "budget" and s["budget_seconds"] == 4.0
    assert s["steps"] > 3  # as many as the seconds allow, not the default 60 nor a guess
    # Stopped before a step that would end past the budget (a step takes a fraction of a second here).
    assert s["budget_spent_seconds"] <= 4.2  # the stop comes at a step end; the final evaluation fits the reserve
    log = json.loads((out / "training_log.json").read_text())
    rates = [e["learning_rate"] for e in log if "learning_rate" in e]
    peak = res.metadata["settings"]["learning_rate"]["value"]
    # Warmed up, then decayed to ~0 by the budget's end (the log samples every few steps, so the peak itself may fall between).
    assert max(rates) > 0.7 * peak and rates[-1] < 0.1 * peak
    # At a third, two thirds and the end of the budget, the intermediate ones only while evaluations stay within 10%
    # of it (budget.MAX_EVAL_SHARE); the final one always.
    evals = [e["step"] for e in log if "eval_loss" in e]
    assert 1 <= len(evals) <= 3 and evals[-1] == s["steps"]
    schedule = res.metadata["settings"]["schedule"]
    assert schedule["value"].startswith("4 s budget") and "share of the budget" in schedule["reason"]


def test_a_step_count_without_a_budget_says_so():
    from llm_pipeline.config import LoraAdapterConfig

    assert LoraAdapterConfig().step_cap == 60 and LoraAdapterConfig(max_steps=7).step_cap == 7
    assert LoraAdapterConfig(max_train_seconds=30).step_cap is None
    assert LoraAdapterConfig(max_train_seconds=30, max_steps=5).step_cap == 5


def test_a_budgeted_run_resumes_with_the_seconds_left(pipeline, tmp_path, monkeypatch, steady_clock):
    undo = _crash_at_batch(monkeypatch, 7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(pipeline, tmp_path, max_steps=None, max_train_seconds=6.0, checkpoint_every=3)
    undo()
    cfg, _ = pipeline
    folder = cfg.data_path / ".checkpoints" / "lora_adapter" / "combined"
    latest = max(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    spent = json.loads((latest / "budget_clock.json").read_text())["spent_seconds"]
    assert 0 < spent < 6.0
    res, _ = _run(pipeline, tmp_path / "again", max_steps=None, max_train_seconds=6.0, checkpoint_every=3)
    s = res.stats
    assert s["resumed_from_step"] == int(latest.name.split("-")[1]) and s["stopped_by"] == "budget"
    assert s["budget_spent_seconds"] >= spent  # the earlier run's seconds count
    # This run had only what was left; what it spent is read after the final evaluation (a clock reading later).
    assert s["budget_spent_seconds"] <= 6.0 + 0.05


def test_evaluations_under_a_small_budget_score_only_the_rows_they_afford(pipeline, tmp_path, steady_clock):
    """Every evaluation within its part of a tenth of the budget: estimated from the step time before the first one,
    so the first is capped too; the scored rows are counted, and the final evaluation still runs."""
    res, out = _run(pipeline, tmp_path, max_steps=None, max_train_seconds=1.0)
    s = res.stats
    assert s["eval_rows"] > 4 and 1 <= s["eval_rows_scored"] < s["eval_rows"]  # a batch is 4 rows here
    log = json.loads((out / "training_log.json").read_text())
    assert [e["step"] for e in log if "eval_loss" in e][-1] == s["steps"]
    assert s["budget_spent_seconds"] <= 1.0 + 0.2  # within the budget, one step's slack (a few clock readings)


def test_an_untied_models_new_rows_train_in_continued_pretraining_and_sft(tmp_path):
    """An extended vocabulary on a model whose output layer has rows of its own: LoRA continued pretraining trains
    the new rows of the embedding and of the LM head (the old rows of both stay as they were), and the SFT adapter
    trains them further, carries them, and reloads with plain PEFT to the same logits."""
    import torch
    from safetensors.torch import load_file

    from llm_pipeline.training.embeddings import added_rows
    from llm_pipeline_tests.training.pretrained_fixture import save_pretrained_folder

    original = save_pretrained_folder(tmp_path / "untied-base", tied=False)
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend", "extend_max_new_tokens": 8, "keep_extension": "always"},
                      base_checkpoint={"source": "pretrained", "model": str(original), "method": "lora", "lora_r": 4,
                                       "train_steps": 4, "batch_size": 4, "eval_every": 4, "lora_learning_rate": 1e-2},
                      lora_adapter={"r": 4, "alpha": 8, "max_steps": 3, "batch_size": 4, "max_length": 64,
                                    "examples_per_domain": 6, "learning_rate": 1e-2})
    write_deduped_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")
    base = run_stage(cfg, "base_checkpoint").output_dir
    old, new = load_file(original / "model.safetensors"), load_file(base / "model.safetensors")
    n_old = old["lm_head.weight"].shape[0]
    rows = added_rows(base)
    assert rows and rows[0] == n_old and rows[-1] == new["lm_head.weight"].shape[0] - 1
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        torch.testing.assert_close(new[key][:n_old], old[key])  # the old rows frozen
    pieces = json.loads((cfg.data_path / "tokenizer" / "domain_tokens.json").read_text())["tokens"]
    head_moved = [t for t in pieces if not torch.allclose(new["lm_head.weight"][t["token_id"]],
                                                           old["lm_head.weight"][t["base_piece_ids"]].mean(dim=0))]
    assert head_moved  # the LM head's new rows trained away from their mean initialisation

    res = run_stage(cfg, "lora_adapter")
    assert "embedding and untied output layer" in res.metadata["settings"]["new_token_rows"]["reason"]
    saved = load_file(res.output_dir / "adapter_model.safetensors")
    deltas = {k: v for k, v in saved.items() if "trainable_tokens_delta" in k}
    assert {k.split(".token_adapter")[0].rsplit(".", 1)[-1] for k in deltas} == {"embed_tokens", "lm_head"}
    assert all(v.shape[0] == len(rows) and v.abs().sum() > 0 for v in deltas.values())  # trained, carried by the adapter
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), res.output_dir).eval()
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), res.output_dir).eval()
    ids = torch.tensor([[1, *rows[:3], 5]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        torch.testing.assert_close(logits, again(input_ids=ids).logits)
        plain = AutoModelForCausalLM.from_pretrained(base).eval()(input_ids=ids).logits
    assert not torch.allclose(logits[..., rows], plain[..., rows])  # the new rows' logits moved
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged.get_output_embeddings().weight[:n_old], new["lm_head.weight"][:n_old])
    # DPO trains on from this adapter, its token rows included (its reference pass merges and restores them).
    dpo = run_stage(cfg, "dpo_model")
    assert dpo.stats.get("skipped") or any("trainable_tokens_delta" in k for k in load_file(dpo.output_dir / "adapter_model.safetensors"))


def test_an_evaluation_dearer_than_a_step_stays_within_its_share(pipeline, tmp_path, monkeypatch):
    """A held-out row costs 0.3 s on the budget's clock and a training step 0.1 s (on SmolLM2 the final evaluation
    was ~6x the half-step-per-batch guess). One row is timed before training: every evaluation scores the rows
    that fit, the intermediate ones are skipped once they and the final one would pass a tenth of the budget, and
    training stops early enough for the final one."""
    from llm_pipeline.training import budget, sft_train

    t = [0.0]
    monkeypatch.setattr(budget, "now", lambda: t[0])
    real = sft_train.next_token_loss

    def costed(model, inputs):
        t[0] += 0.1 if model.training else 0.3 * inputs["input_ids"].shape[0]
        return real(model, inputs)

    monkeypatch.setattr(sft_train, "next_token_loss", costed)
    res, out = _run(pipeline, tmp_path, max_steps=None, max_train_seconds=8.0)
    s = res.stats
    assert s["eval_probe_seconds"] == pytest.approx(0.3) and s["eval_rows_scored"] == 1 < s["eval_rows"]
    assert s["eval_seconds"] <= budget.MAX_EVAL_SHARE * 8.0 + 0.3  # a tenth of the budget, one row's slack
    assert s["budget_spent_seconds"] <= 8.0 + 0.1 + 1e-6  # the final evaluation fitted its reserve
    log = json.loads((out / "training_log.json").read_text())
    assert [e["step"] for e in log if "eval_loss" in e][-1] == s["steps"] and s["evals_skipped"] >= 1


def test_sft_records_read_the_shards_tags_filled_with_surrogates(pipeline, tmp_path):
    from transformers import AutoTokenizer

    from llm_pipeline_tests.training.fixtures import write_tagged_shards

    cfg, results = pipeline
    shards = write_tagged_shards(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(results["tokenizer"].output_dir)
    cfg2 = cfg.model_copy(update={"lora_adapter": cfg.lora_adapter.model_copy(update={"corpus_text": True})})
    train, held, how = lora_adapter.build_records(cfg2, shards, tokenizer)
    texts = [json.dumps(r) for r in train + held]
    assert train and held and not any("<PERSON>" in t or "<DATE_TIME>" in t for t in texts)
    filled = how["redaction_tags_filled"]
    assert filled["filled"]["PERSON"] >= len([r for r in train + held if "text" in r]) and filled["unfilled"] == {}
    documents = [r for r in train + held if "text" in r]
    # A document's surrogates are marked to be read, not predicted: each span holds the surrogate, not a tag.
    assert documents and all(r["no_loss"] and all(r["text"][a:b].strip() for a, b in r["no_loss"]) for r in documents)
    off = cfg2.model_copy(update={"training": cfg.training.model_copy(update={"fill_redaction_tags": False})})
    train, held, how = lora_adapter.build_records(off, shards, tokenizer)
    assert how["redaction_tags_filled"] is None and any("<PERSON>" in r.get("text", "") for r in train)
