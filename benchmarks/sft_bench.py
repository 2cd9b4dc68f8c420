"""SFT throughput: our lora_adapter training against TRL's SFTTrainer with its default settings, in one run.

Same model (bench_model.py: Llama, hidden 256, 4 layers, the pipeline's tokenizer), same data (the train-split
documents of a materialized `deduped_shards`, as plain text), same LoRA (r 16, alpha 32, all linear layers), same
batch size (8, TRL's default) and sequence length (--max-length, 256 by default so that TRL's bf16 arm finishes on a
CPU), same number of optimizer steps. Arms:

- `ours`: `llm_pipeline.training.sft_train.train_adapter` with the pipeline's defaults (packed rows with position
  ids restarting per document, fp32 on CPUs without native bf16, no gradient checkpointing, threads per op size);
- `trl_default`: `SFTTrainer(model, args=SFTConfig(output_dir, max_steps, max_length, use_cpu=True), peft_config=...)`,
  nothing else set (TRL 1.16: bf16 on, gradient checkpointing on, no packing: each document truncated at max_length;
  `use_cpu` only because SFTConfig refuses to start on a machine without a GPU otherwise);
- `trl_tuned` (--tuned): TRL with the device's precision (fp32 on CPUs without native bf16), no checkpointing and
  BFD packing, to show where our margin comes from.

Tokens/s counts tokens that reached the loss (label tokens) per second of `train()`; each arm runs in its own
process so its peak RSS is its own.

    .venv/bin/python benchmarks/sft_bench.py --data-dir data --steps 6
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import load_texts, prepare  # noqa: E402
from common import OUT_DIR, emit, peak_rss_mb, run_child, table  # noqa: E402

R, ALPHA, BATCH = 16, 32, 8


def ours(work: Path, steps: int, max_length: int) -> dict:
    from transformers import AutoTokenizer

    from llm_pipeline.config import PipelineConfig
    from llm_pipeline.training.device import plan_device
    from llm_pipeline.training.sft_train import train_adapter

    texts = load_texts(work)
    cfg = PipelineConfig.model_validate({
        "name": "sft-bench", "data_dir": str(work / "data"), "domains": {d: {"sources": [{"path": "unused"}]} for d in texts},
        "lora_adapter": {"r": R, "alpha": ALPHA, "max_steps": steps, "batch_size": BATCH, "max_length": max_length},
        "tracking": {"wandb": False},
    })
    cfg.root = work
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    records = [{"text": t, "domain": d} for d, ts in texts.items() for t in ts]
    res = train_adapter(cfg, plan_device("auto"), "lora", work / "model", tokenizer, records, [], work / "ours-out",
                        work / "ours-work", {"bench": 1}, "bench")
    s = res.stats
    return {"arm": "ours", "tokens": s["tokens_trained"], "seconds": s["train_seconds"], "final_loss": s["train_loss"],
            "settings": {k: v["value"] for k, v in res.metadata["settings"].items()}}


class CountingCollator:
    """Wraps TRL's collator and counts the label tokens of each batch it builds (all are training batches here);
    the loader builds one batch ahead, so the first `steps` batches are the ones trained on."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __call__(self, examples):
        batch = self.inner(examples)
        self.batches.append(int((batch["labels"][:, 1:] != -100).sum()))
        return batch


def trl(work: Path, steps: int, max_length: int, tuned: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    texts = load_texts(work)
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    # use_cpu is the one setting the defaults need on a machine without a GPU: without it SFTConfig refuses to start
    # ("Your setup doesn't support bf16/gpu").
    from llm_pipeline.training.device import plan_device

    native_bf16 = plan_device("auto").precision == "bf16"  # as ours: bf16 only where the CPU computes it natively
    extra = {"bf16": native_bf16, "gradient_checkpointing": False, "packing": True} if tuned else {}
    args = SFTConfig(use_cpu=True, output_dir=str(work / "trl-out"), max_steps=steps, max_length=max_length, report_to="none",
                     save_strategy="no", disable_tqdm=True, logging_steps=steps, **extra)
    ds = Dataset.from_list([{"text": t} for ts in texts.values() for t in ts])
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                         peft_config=LoraConfig(r=R, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM"))
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    loss = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"arm": "trl_tuned" if tuned else "trl_default", "tokens": sum(counter.batches[:steps]), "seconds": round(seconds, 3),
            "final_loss": loss[-1] if loss else None,
            "settings": {"bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing, "packing": args.packing,
                         "learning_rate": args.learning_rate, "torch_threads": torch.get_num_threads()}}


def child(step: str, work: Path, steps: int, max_length: int) -> None:
    result = ours(work, steps, max_length) if step == "ours" else trl(work, steps, max_length, tuned=step == "trl_tuned")
    result["tokens_per_s"] = round(result["tokens"] / result["seconds"], 1)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--tuned", action="store_true", help="also run TRL with fp32, no checkpointing and packing")
    ap.add_argument("--child", default=None)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.work, a.steps, a.max_length)
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as tmp:
        work = Path(tmp)
        prepare(a.data_dir.resolve(), work)
        arms = ["ours", "trl_default"] + (["trl_tuned"] if a.tuned else [])
        rows = [run_child(Path(__file__), arm, ["--work", str(work), "--steps", str(a.steps), "--max-length", str(a.max_length)]) for arm in arms]
    print(table(rows, [("arm", "arm", ""), ("tokens", "tokens", "d"), ("seconds", "train s", ".1f"), ("tokens_per_s", "tokens/s", ".0f"),
                       ("peak_rss_mb", "peak RSS MB", ".0f"), ("final_loss", "loss", ".3f")]))
    by = {r["arm"]: r for r in rows if "error" not in r}
    summary = {"steps": a.steps, "max_length": a.max_length, "batch_size": BATCH, "arms": rows}
    if "ours" in by and "trl_default" in by:
        summary["tokens_per_s_ratio"] = round(by["ours"]["tokens_per_s"] / by["trl_default"]["tokens_per_s"], 2)
        summary["peak_rss_ratio"] = round(by["ours"]["peak_rss_mb"] / by["trl_default"]["peak_rss_mb"], 2)
        print(f"\nours / TRL default: {summary['tokens_per_s_ratio']}x tokens/s (target >= 1.3x), {summary['peak_rss_ratio']}x peak RSS")
    if "ours" in by and "trl_tuned" in by:
        summary["tokens_per_s_ratio_vs_tuned"] = round(by["ours"]["tokens_per_s"] / by["trl_tuned"]["tokens_per_s"], 2)
        print(f"ours / TRL tuned: {summary['tokens_per_s_ratio_vs_tuned']}x tokens/s")
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "sft_bench.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
