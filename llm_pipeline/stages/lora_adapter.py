"""Stage `lora_adapter`: supervised fine-tuning of the base checkpoint with a PEFT adapter (TRL SFTTrainer).

    llm-pipeline stage lora_adapter

SFT data is the user's files (`lora_adapter.data`, any of prompt/completion, messages, alpaca or text, with
`field_map` for other field names) or, when none are given, instruction examples derived from the train-split
documents with templates plus the documents themselves as plain text (`corpus_text`), every token packed into
training rows. Held-out data comes from the eval split. Loss is on completions only by default.

Output: the adapter (loads with plain `PeftModel.from_pretrained(base, <this folder>)`), `sft_train.jsonl`,
`sft_eval.jsonl`, `training_log.json`, optionally `merged/` (base + adapter merged) and `domains/<domain>/` (one
adapter per domain), and `serving_manifest.json` naming the base model, each adapter and the data versions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import MANIFEST, file_md5, write_json
from llm_pipeline.security import confine
from llm_pipeline.stages import StageOutput
from llm_pipeline.training import finetune, sft_data, tag_fill
from llm_pipeline.training.device import plan_device
from llm_pipeline.training.sft_train import train_adapter

ASSET = "lora_adapter"


def build_records(cfg: PipelineConfig, shards: Path, tokenizer) -> tuple[list[dict], list[dict], dict]:
    """Training and held-out records, and how they were made (for metadata)."""
    lc = cfg.lora_adapter
    if lc.data:
        paths = [confine(cfg, p, "lora_adapter.data") for p in lc.data]
        train, held = sft_data.read_user_examples(paths, lc.data_format, lc.field_map)
        return train, held, {"derivation": "files", "files": list(lc.data), "field_map": dict(lc.field_map)}
    skipped: Counter = Counter()
    filler = tag_fill.for_config(cfg)  # the shards' PII tags read as made-up values of their type
    train, held = [], []
    # A fifth as many held out: enough for a stable eval loss. None at all when the run is documents only.
    eval_per_domain = max(1, lc.examples_per_domain // 5) if lc.examples_per_domain else 0
    for domain in cfg.domain_names:
        train += sft_data.derive_examples(shards, domain, "train", lc.examples_per_domain, cfg.seed, skipped, filler)
        held += sft_data.derive_examples(shards, domain, "eval", eval_per_domain, cfg.seed, skipped, filler)
    train = sft_data.fit_all(train, tokenizer, lc.max_length, skipped)
    held = sft_data.fit_all(held, tokenizer, lc.max_length, skipped)
    if not train and lc.examples_per_domain:
        raise sft_data.SftDataError(f"no SFT examples could be derived from the train split (skipped: {dict(skipped)})")
    texts, held_texts = [], []
    if lc.corpus_text:
        for domain in cfg.domain_names:
            texts += sft_data.corpus_texts(shards, domain, "train", filler)
            held_texts += sft_data.corpus_texts(shards, domain, "eval", filler)
    if not train and not texts:
        raise sft_data.SftDataError("examples_per_domain is 0 and the train split holds no document text to train on")
    how = {"derivation": "templates" if lc.examples_per_domain else "documents",
           "templates": list(sft_data.TEMPLATES) if lc.examples_per_domain else [], "skipped": dict(skipped),
           "corpus_text_documents": len(texts), "corpus_text_eval_documents": len(held_texts),
           "redaction_tags_filled": filler.stats() if filler is not None else None}
    return train + texts, held + held_texts, how


def _check_shape(records: list[dict]) -> None:
    shapes = {tuple(sorted(k for k in r if k in ("prompt", "completion", "messages"))) for r in records if "text" not in r}
    if len(shapes) > 1:
        raise sft_data.SftDataError(f"SFT files mix formats {sorted(shapes)}; give files of one format")


def _fingerprint(cfg: PipelineConfig, inputs: dict[str, Path], tag: str) -> dict:
    """What a resumable checkpoint must match: the settings and the versions of every input."""
    manifests = {name: file_md5(Path(path) / MANIFEST) for name, path in inputs.items() if (Path(path) / MANIFEST).exists()}
    for d in cfg.domain_names:
        m = Path(inputs["deduped_shards"]) / d / MANIFEST
        if m.exists():
            manifests[f"deduped_shards/{d}"] = file_md5(m)
    return {"config": cfg.fingerprint("lora_adapter"), "seed": cfg.seed, "inputs": manifests, "adapter": tag,
            "tags_filled": cfg.training.fill_redaction_tags}


def serving_manifest(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, adapters: list[dict]) -> dict:
    data = cfg.data_path.resolve()
    base = Path(inputs["base_checkpoint"]).resolve()
    versions = {name: file_md5(output_dir / name) for name in ("sft_train.jsonl", "sft_eval.jsonl") if (output_dir / name).exists()}
    for d in cfg.domain_names:
        m = Path(inputs["deduped_shards"]) / d / MANIFEST
        if m.exists():
            versions[f"deduped_shards/{d}"] = file_md5(m)
    return {
        "base_model": {"path": str(base.relative_to(data)) if base.is_relative_to(data) else str(base),
                       "manifest_md5": file_md5(base / MANIFEST) if (base / MANIFEST).exists() else None},
        "adapters": adapters,
        "data_versions": versions,
        "load": "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model.path), <adapter path>)",
    }


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    from transformers import AutoTokenizer

    lc = cfg.lora_adapter
    plan = plan_device(lc.precision)
    method, method_reason = finetune.resolve_method(lc, plan)  # fails fast on what this device cannot run
    tokenizer = AutoTokenizer.from_pretrained(inputs["base_checkpoint"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is always masked; eos is the conventional stand-in
    train, held, derivation = build_records(cfg, inputs["deduped_shards"], tokenizer)
    _check_shape(train + held)
    examples = lambda recs: [r for r in recs if "text" not in r or lc.data]  # noqa: E731  (derived text is the split itself)
    sft_data.write_jsonl(output_dir / "sft_train.jsonl", examples(train))
    sft_data.write_jsonl(output_dir / "sft_eval.jsonl", examples(held))

    work = cfg.data_path / ".checkpoints" / ASSET
    base_dir = Path(inputs["base_checkpoint"])
    combined = train_adapter(cfg, plan, method, base_dir, tokenizer, train, held, output_dir, work / "combined",
                             _fingerprint(cfg, inputs, "combined"), "combined")
    adapters = [{"name": "combined", "path": ".", "method": method, "domains": cfg.domain_names}]
    per_domain = {}
    if lc.per_domain:
        for d in cfg.domain_names:
            tr, he = [r for r in train if r.get("domain") == d], [r for r in held if r.get("domain") == d]
            if not tr:
                per_domain[d] = {"skipped": "no training records for this domain"}
                continue
            res = train_adapter(cfg, plan, method, base_dir, tokenizer, tr, he, output_dir / "domains" / d, work / d, _fingerprint(cfg, inputs, d), d)
            per_domain[d] = {k: res.stats[k] for k in ("steps", "train_loss", "eval_loss", "seconds")}
            adapters.append({"name": d, "path": f"domains/{d}", "method": method, "domains": [d]})
    for a in adapters:
        if (output_dir / a["path"] / "merged").exists():
            a["merged"] = str(Path(a["path"]) / "merged")
    write_json(output_dir / "serving_manifest.json", serving_manifest(cfg, inputs, output_dir, adapters))

    stats = {**combined.stats, "examples": len(examples(train)), "eval_examples": len(examples(held)), "derivation": derivation["derivation"]}
    if per_domain:
        stats["per_domain"] = per_domain
    shown = next((r for r in train if "prompt" in r), train[0])
    s = combined.stats
    preview = (
        f"**{method}** SFT, {s['steps']} steps, {s['trainable_params']:,} of {s['total_params']:,} parameters trained "
        f"({s['precision']}, lr {s['learning_rate']}); train loss {s['first_train_loss']} → {s['train_loss']}, held-out loss "
        f"{s['eval_loss']}; {s['tokens_trained']:,} tokens at {s['tokens_per_second']} tokens/s, rows {s['row_fill']:.0%} full\n\n"
        f"Example ({shown.get('template', 'text')}):\n\n```\n{shown.get('prompt', str(shown)[:200])}\n→ {shown.get('completion', '')}\n```"
    )
    metadata = {**combined.metadata, "method": {"value": method, "reason": method_reason}, "data": derivation, **plan.as_metadata()}
    return StageOutput(stats=stats, preview=preview, metadata=metadata)
