"""DPO throughput and memory: our dpo_model training against TRL's DPOTrainer at its best settings, in one run.

Same model (bench_model.py: Llama, hidden 256, 4 layers, the pipeline's tokenizer) with the same fresh LoRA adapter
(r 16, alpha 32, all linear layers) as policy, same pairs (synthetic pairs from the train split of a materialized
`deduped_shards`: a document's prefix as prompt, its continuation chosen, another document's rejected), same batch
size, learning rate, beta and number of steps. Arms:

- `ours`: `llm_pipeline.training.dpo_train` as the dpo_model stage uses it: pairs tokenized once, reference
  log-probs computed once (no cache is read: it starts empty), one shared-prompt row per pair, length-grouped batches;
- `trl_best`: `DPOTrainer` with what helps on a CPU: fp32, no gradient checkpointing, `precompute_ref_log_probs`
  (one reference pass instead of one per step), the adapter-disabled reference (no model copy), same threads policy
  as torch's default. (TRL 1.16's `padding_free` is disabled for DPO: it warns and pads.)

Pairs/s is pairs trained per second of wall time from the raw pairs to the end of training (tokenization and the
reference pass included, for both); each arm runs in its own process so its peak RSS is its own.

    .venv/bin/python benchmarks/dpo_bench.py --data-dir data --steps 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import prepare  # noqa: E402
from common import OUT_DIR, emit, peak_rss_mb, run_child, table  # noqa: E402

R, ALPHA, BETA, LR = 16, 32, 0.1, 1e-3


def make_pairs(data_dir: Path, work: Path, per_domain: int) -> None:
    from llm_pipeline.training.preference_data import synthetic_pairs

    shards = data_dir / "deduped_shards"
    domains = sorted(p.name for p in shards.iterdir() if p.is_dir() and not p.name.startswith("."))
    pairs = [p for d in domains for p in synthetic_pairs(shards, d, "train", per_domain, 1234, Counter())]
    (work / "pairs.json").write_text(json.dumps([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]))


def _policy(work: Path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM"))


def ours(work: Path, steps: int, batch: int, max_length: int) -> dict:
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from llm_pipeline.training import defaults, dpo_pairs, dpo_train, finetune
    from llm_pipeline.training.device import plan_device, torch_threads

    pairs = json.loads((work / "pairs.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    model = _policy(work)
    counts = finetune.parameter_counts(model)
    plan = plan_device("auto")
    settings = defaults.choose("dpo", "lora", plan, counts["total_params"], 0, learning_rate=LR)
    started = time.perf_counter()
    tokenized = [t for t in (dpo_pairs.tokenize_pair(p, tokenizer, max_length, Counter()) for p in pairs) if t]
    collator = dpo_pairs.PairCollator(tokenizer.pad_token_id)
    with torch_threads(settings.value("cpu_threads")):
        ref_c, ref_r = dpo_train.reference_logps(model, tokenized, collator, batch * 2, "sft")
        for t, c, r in zip(tokenized, ref_c, ref_r):
            t["ref_chosen_logps"], t["ref_rejected_logps"] = c, r
        args = DPOConfig(
            **finetune.trainer_args(settings, work / "ours-work", max_steps=steps, batch_size=batch, seed=1234, report_to="none",
                                    run_name="dpo-bench", eval_every=None, checkpoint_every=None, early_stopping=False),
            beta=BETA, max_length=None, train_sampling_strategy="group_by_length", length_column_name="length",
        )
        args.save_strategy, args.eval_strategy = "no", "no"
        trainer = dpo_train.make_trainer(model, tokenizer, args, tokenized, [], collator)
        trainer.train()
    seconds = time.perf_counter() - started
    loss = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"arm": "ours", "pairs": steps * batch, "seconds": round(seconds, 3), "final_loss": loss[-1] if loss else None,
            "threads": settings.value("cpu_threads")}


def trl_best(work: Path, steps: int, batch: int, max_length: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    pairs = json.loads((work / "pairs.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    model = _policy(work)
    args = DPOConfig(
        output_dir=str(work / "trl-out"), max_steps=steps, per_device_train_batch_size=batch, learning_rate=LR, beta=BETA,
        max_length=max_length, bf16=False, use_cpu=True, gradient_checkpointing=False, precompute_ref_log_probs=True,
        report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=steps, seed=1234,
    )
    conv = [{"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    started = time.perf_counter()
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(conv), processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - started
    loss = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"arm": "trl_best", "pairs": steps * batch, "seconds": round(seconds, 3), "final_loss": loss[-1] if loss else None,
            "threads": torch.get_num_threads()}


def child(step: str, work: Path, steps: int, batch: int, max_length: int) -> None:
    result = (ours if step == "ours" else trl_best)(work, steps, batch, max_length)
    result["pairs_per_s"] = round(result["pairs"] / result["seconds"], 2)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--pairs-per-domain", type=int, default=80)
    ap.add_argument("--child", default=None)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.work, a.steps, a.batch, a.max_length)
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        work = Path(tmp)
        prepare(a.data_dir.resolve(), work)
        make_pairs(a.data_dir.resolve(), work, a.pairs_per_domain)
        common = ["--work", str(work), "--steps", str(a.steps), "--batch", str(a.batch), "--max-length", str(a.max_length)]
        rows = [run_child(Path(__file__), arm, common) for arm in ("ours", "trl_best")]
    print(table(rows, [("arm", "arm", ""), ("pairs", "pairs", "d"), ("seconds", "wall s", ".1f"), ("pairs_per_s", "pairs/s", ".2f"),
                       ("peak_rss_mb", "peak RSS MB", ".0f"), ("final_loss", "loss", ".3f"), ("threads", "threads", "d")]))
    by = {r["arm"]: r for r in rows if "error" not in r}
    summary = {"steps": a.steps, "batch": a.batch, "max_length": a.max_length, "arms": rows}
    if len(by) == 2:
        summary["pairs_per_s_ratio"] = round(by["ours"]["pairs_per_s"] / by["trl_best"]["pairs_per_s"], 2)
        summary["peak_rss_ratio"] = round(by["ours"]["peak_rss_mb"] / by["trl_best"]["peak_rss_mb"], 2)
        print(f"\nours / TRL best: {summary['pairs_per_s_ratio']}x pairs/s (target >= 2x), {summary['peak_rss_ratio']}x peak RSS (target <= 0.5x)")
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "dpo_bench.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
