"""DPO throughput and memory: our dpo_model training against TRL's DPOTrainer at its best settings, in one run.

Same model, same fresh LoRA adapter (r 16, alpha 32, all linear layers) as policy, same pairs, same batch size,
learning rate, beta and number of steps. The model is either the small random Llama of bench_model.py (hidden 256,
4 layers, the pipeline's tokenizer) or, with `--model DIR`, a real pretrained checkpoint folder (`save_pretrained`
output with its tokenizer, e.g. a `base_checkpoint`). Pairs are synthetic pairs from the train split of a
materialized `deduped_shards` (a document's prefix as prompt, its continuation chosen, another document's rejected),
tokenized with the model's own tokenizer, or the prompt/chosen/rejected records of `--pairs FILE` (jsonl). By default
there are as many pairs as the run trains on (steps x batch: one epoch), so both reference passes score what is
trained. Arms:

- `ours`: the dpo_model stage's training as it runs in one process (`training.dpo_loop`, which imports neither TRL nor
  datasets): pairs tokenized once, reference log-probs computed once with the LoRA merged into the weights (no cache
  is read: it starts empty), one shared-prompt row per pair, length-grouped batches, answer log-probs from vocabulary
  chunks (never the full logits of a batch), the stage's precision (fp32 on a CPU: DPO rows vary in width) and passes
  of a few rows on a CPU;
- `trl_best`: `DPOTrainer` with what helps on a CPU: fp32 (on a CPU with native bf16, TRL in bf16 ran no faster,
  10.0-11.2 pairs/s against 10.6-11.1, and peaked ~250 MB higher), no gradient checkpointing, `precompute_ref_log_probs`
  (one reference pass instead of one per step), the adapter-disabled reference (no model copy), length-grouped
  batches (a character-length column, `remove_unused_columns=False` so the sampler sees it), threads as torch's
  default. TRL 1.16 already projects through its LM head in tiles (`fused_lm_head`); its `padding_free` is disabled
  for DPO (it warns and pads), and it has no `use_logits_to_keep` option any more.

Pairs/s is pairs trained per second of wall time from the raw pairs to the end of training (tokenization and the
reference pass included, for both); each arm runs in its own process so its peak RSS is its own. Each arm also
reports the high-water mark after imports, after loading the model, after the reference pass and after the first
step (`rss_*` columns in the JSON), which says where the peak is reached.

    .venv/bin/python benchmarks/dpo_bench.py --data-dir data --steps 20
    .venv/bin/python benchmarks/dpo_bench.py --data-dir data --model data/base_checkpoint --steps 8 --batch 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import prepare  # noqa: E402
from common import OUT_DIR, emit, peak_rss_mb, run_child, table  # noqa: E402

R, ALPHA, BETA, LR = 16, 32, 0.1, 1e-3
ARMS = ("ours", "trl_best")


def make_pairs(data_dir: Path, work: Path, n_pairs: int, per_domain: int | None, pairs_file: Path | None) -> int:
    """Write `work/pairs.json` (prompt/chosen/rejected); returns how many pairs it holds."""
    from llm_pipeline.training.preference_data import synthetic_pairs

    if pairs_file:
        pairs = [json.loads(line) for line in pairs_file.read_text().splitlines() if line.strip()][:n_pairs]
    else:
        shards = data_dir / "deduped_shards"
        domains = sorted(p.name for p in shards.iterdir() if p.is_dir() and not p.name.startswith("."))
        by_domain = [synthetic_pairs(shards, d, "train", per_domain or n_pairs, 1234, Counter()) for d in domains]
        if per_domain:
            pairs = [p for ps in by_domain for p in ps]
        else:  # domains in turn, until there are enough (a small domain runs out first)
            pairs = [ps[i] for i in range(max(map(len, by_domain))) for ps in by_domain if i < len(ps)][:n_pairs]
    (work / "pairs.json").write_text(json.dumps([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]))
    return len(pairs)


def _policy(model_dir: Path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM"))


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _rss_callback(rss: dict):
    from transformers import TrainerCallback

    class FirstStepRss(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            rss.setdefault("rss_step1", round(peak_rss_mb()))

    return FirstStepRss()


def ours(model_dir: Path, work: Path, steps: int, batch: int, max_length: int, threads: int | None, rss: dict) -> dict:
    from llm_pipeline.training import defaults, dpo_loop, dpo_pairs, dpo_train, finetune
    from llm_pipeline.training.device import plan_device, torch_threads

    rss["rss_imports"] = round(peak_rss_mb())
    pairs = json.loads((work / "pairs.json").read_text())
    tokenizer = _tokenizer(model_dir)
    model = _policy(model_dir)
    rss["rss_model"] = round(peak_rss_mb())
    counts = finetune.parameter_counts(model)
    plan = plan_device("auto", varying_shapes=True)
    started = time.perf_counter()
    tokenized = [t for t in (dpo_pairs.tokenize_pair(p, tokenizer, max_length, Counter()) for p in pairs) if t]
    settings = defaults.choose("dpo", "lora", plan, counts["total_params"], 0, learning_rate=LR, cpu_threads=threads,
                               op_macs=defaults.projection_macs(model.config, dpo_train.pass_tokens(model.config, tokenized, batch, plan.device)))
    collator = dpo_pairs.PairCollator(tokenizer.pad_token_id)
    with torch_threads(settings.value("cpu_threads")):
        ref_c, ref_r = dpo_train.reference_logps(model, tokenized, collator, dpo_train.reference_batch_size(batch, plan.device), "sft")
        for t, c, r in zip(tokenized, ref_c, ref_r):
            t["ref_chosen_logps"], t["ref_rejected_logps"] = c, r
        rss["rss_reference"] = round(peak_rss_mb())
        # As the dpo_model stage runs it in one process (engine auto): the loop, with the stage's schedule.
        loop = dpo_loop.LoopSettings(steps=steps, batch_size=batch, learning_rate=LR, warmup_steps=int(round(settings.value("warmup_ratio") * steps)),
                                     beta=BETA, loss_type="sigmoid", seed=1234, eval_every=steps, checkpoint_every=steps, log_every=steps)
        step_rss = lambda step: rss.setdefault("rss_step1", round(peak_rss_mb())) and False  # noqa: E731
        result = dpo_loop.train(model, tokenized, [], collator, loop, plan, work / "ours-work", "dpo-bench", on_step=step_rss)
    seconds = time.perf_counter() - started
    loss = [e["loss"] for e in result.log if "loss" in e]
    return {"arm": "ours", "pairs": steps * batch, "seconds": round(seconds, 3), "final_loss": loss[-1] if loss else None,
            "threads": settings.value("cpu_threads")}


def trl_best(model_dir: Path, work: Path, steps: int, batch: int, max_length: int, threads: int | None, rss: dict) -> dict:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if threads:
        torch.set_num_threads(threads)
    rss["rss_imports"] = round(peak_rss_mb())
    pairs = json.loads((work / "pairs.json").read_text())
    tokenizer = _tokenizer(model_dir)
    model = _policy(model_dir)
    rss["rss_model"] = round(peak_rss_mb())
    args = DPOConfig(
        output_dir=str(work / "trl-out"), max_steps=steps, per_device_train_batch_size=batch, learning_rate=LR, beta=BETA,
        max_length=max_length, bf16=False, use_cpu=True, gradient_checkpointing=False, precompute_ref_log_probs=True,
        report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=steps, seed=1234,
        # Length-grouped batches, as ours: the sampler reads the "length" column, which must survive column pruning.
        train_sampling_strategy="group_by_length", length_column_name="length", remove_unused_columns=False,
    )
    conv = [{"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}],
             "length": len(p["prompt"]) + max(len(p["chosen"]), len(p["rejected"]))} for p in pairs]
    started = time.perf_counter()
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(conv), processing_class=tokenizer,
                         callbacks=[_rss_callback(rss)])
    rss["rss_reference"] = round(peak_rss_mb())
    trainer.train()
    seconds = time.perf_counter() - started
    loss = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"arm": "trl_best", "pairs": steps * batch, "seconds": round(seconds, 3), "final_loss": loss[-1] if loss else None,
            "threads": torch.get_num_threads()}


def child(step: str, model_dir: Path, work: Path, steps: int, batch: int, max_length: int, threads: int | None) -> None:
    os.environ["HF_DATASETS_CACHE"] = str(work / f"datasets-{step}")  # TRL's reference cache file: never reused
    rss: dict = {}
    result = (ours if step == "ours" else trl_best)(model_dir, work, steps, batch, max_length, threads, rss)
    result["pairs_per_s"] = round(result["pairs"] / result["seconds"], 2)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit({**result, **rss})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data"), help="materialized pipeline data (deduped_shards; tokenizer for the small model)")
    ap.add_argument("--model", type=Path, default=None, help="a save_pretrained checkpoint folder with its tokenizer (default: bench_model.py's small Llama)")
    ap.add_argument("--pairs", type=Path, default=None, help="jsonl of prompt/chosen/rejected records (default: synthetic pairs from --data-dir)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--pairs-per-domain", type=int, default=None, help="default: steps x batch pairs in all (one epoch)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both arms (default: ours picks by the size of a pass's matrix products, TRL takes torch's)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--child", default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--model-dir", type=Path, default=None)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.model_dir, a.work, a.steps, a.batch, a.max_length, a.threads)
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        work = Path(tmp)
        model_dir = a.model.resolve() if a.model else prepare(a.data_dir.resolve(), work)[0]
        n_pairs = make_pairs(a.data_dir.resolve(), work, a.steps * a.batch, a.pairs_per_domain, a.pairs.resolve() if a.pairs else None)
        common = ["--work", str(work), "--model-dir", str(model_dir), "--steps", str(a.steps), "--batch", str(a.batch),
                  "--max-length", str(a.max_length)] + (["--threads", str(a.threads)] if a.threads else [])
        rows = [run_child(Path(__file__), arm, common) for arm in a.arms.split(",")]
    print(table(rows, [("arm", "arm", ""), ("pairs", "pairs", "d"), ("seconds", "wall s", ".1f"), ("pairs_per_s", "pairs/s", ".2f"),
                       ("peak_rss_mb", "peak RSS MB", ".0f"), ("rss_model", "after load", ".0f"), ("rss_reference", "after ref", ".0f"),
                       ("final_loss", "loss", ".3f"), ("threads", "threads", "d")]))
    by = {r["arm"]: r for r in rows if "error" not in r}
    summary = {"model": str(a.model) if a.model else "bench_model", "pairs_file": str(a.pairs) if a.pairs else None, "pairs_built": n_pairs,
               "steps": a.steps, "batch": a.batch, "max_length": a.max_length, "threads": a.threads, "load_average": os.getloadavg(), "arms": rows}
    if len(by) == 2:
        o, t = by["ours"], by["trl_best"]
        summary["pairs_per_s_ratio"] = round(o["pairs_per_s"] / t["pairs_per_s"], 2)
        summary["peak_rss_ratio"] = round(o["peak_rss_mb"] / t["peak_rss_mb"], 2)
        # Above the model-loaded floor both arms share (interpreter, libraries, weights): what training itself adds.
        summary["training_rss_ratio"] = round((o["peak_rss_mb"] - o["rss_model"]) / max(1.0, t["peak_rss_mb"] - t["rss_model"]), 2)
        print(f"\nours / TRL best: {summary['pairs_per_s_ratio']}x pairs/s (target >= 2x), {summary['peak_rss_ratio']}x peak RSS "
              f"(target <= 0.5x); {summary['training_rss_ratio']}x of the RSS above the loaded model")
    OUT_DIR.mkdir(exist_ok=True)
    name = "dpo_bench.json" if not a.model else f"dpo_bench_{a.model.resolve().name}.json"
    (OUT_DIR / name).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
