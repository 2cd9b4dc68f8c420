"""Reward model, DPO and RL on an outside preference set, at a stated CPU budget.

    python benchmarks/rlhf_bench.py --pipeline-data data --pairs /work/data/hh-rlhf/harmless-base-test.jsonl \
        --out /work/data/hh-rlhf/bench --max-pairs 1200

Takes the tokenizer, base checkpoint and SFT adapter of a finished pipeline run (`--pipeline-data`, e.g. the default
run's `data/`), and on the given pairs (any format dpo_model reads; held out by prompt as the stages do) runs, through
the same runner as `llm-pipeline stage`:

- reward_model: held-out pairwise accuracy against "the longer answer wins" and the SFT model's log-likelihood;
- dpo_model: held-out reward accuracy of DPO on the same pairs;
- rl_model: RLOO against the reward model on the pairs' prompts, held-out reward gain over SFT and KL to SFT;
- eval_report: SFT, DPO and RL on the same held-out prompts, mean reward under the reward model and under its judge
  (trained on the other half of the pairs, which RL never optimised), KL to SFT, and the promotion verdict.

The data stays outside the repository; results go to `<out>/results.json` and are printed as a table. Each stage's
seconds and the process's peak RSS are reported beside its figures.

    python benchmarks/rlhf_bench.py --pipeline-data data --compare-trl --out /tmp/rm-vs-trl

instead trains the reward model on the pipeline's own reward_model pairs twice, each in a fresh process: our loop
(`training/reward_loop.py`) and TRL's `RewardTrainer`, from the same initial model (SFT adapter + new head), with
the same steps, batch size, learning rate, centring term, precision (fp32) and threads, and reports seconds to train,
peak RSS and held-out accuracy of each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def _arm(arm: str, data: Path, steps: int, threads: int) -> dict:
    """One reward-model training arm in this process: 'ours' or 'trl'. Returns seconds, peak RSS and accuracy."""
    import torch
    from transformers import AutoTokenizer

    from llm_pipeline.memory import peak_rss_mb
    from llm_pipeline.training import dpo_pairs, reward_baselines, reward_loop, reward_scoring
    from llm_pipeline.training.device import plan_device
    from llm_pipeline.training.sft_data import read_jsonl

    torch.set_num_threads(threads)
    lora, base = data / "lora_adapter", data / "base_checkpoint"
    tok = AutoTokenizer.from_pretrained(lora)
    train = read_jsonl(data / "reward_model" / "pairs_train.jsonl")
    held = read_jsonl(data / "reward_model" / "pairs_eval.jsonl")
    torch.manual_seed(0)
    model, _ = reward_scoring.build_reward_model(base, lora, tok.pad_token_id)
    lr, batch = 3e-3, 8
    t0 = time.perf_counter()
    if arm == "ours":
        tok_train = [t for t in (dpo_pairs.tokenize_pair(p, tok, 128, {}) for p in train) if t]
        settings = reward_loop.RewardLoopSettings(steps=steps, batch_size=batch, learning_rate=lr, warmup_steps=0, seed=0,
                                                  eval_every=10**9, checkpoint_every=10**9, log_every=10)
        reward_loop.train(model, tok_train, [], dpo_pairs.PairCollator(tok.pad_token_id), settings, plan_device("fp32"),
                          data / ".bench-ckpt", "bench")
    else:
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        rows = [{"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": [{"role": "assistant", "content": p["chosen"]}],
                 "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in train]
        args = RewardConfig(output_dir=str(data / ".bench-trl"), max_steps=steps, per_device_train_batch_size=batch,
                            learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0, bf16=False, use_cpu=True,
                            gradient_checkpointing=False, center_rewards_coefficient=0.01, max_length=128, report_to="none",
                            save_strategy="no", logging_steps=10, seed=0, dataloader_num_workers=0)
        RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok).train()
    seconds = time.perf_counter() - t0
    chosen = reward_scoring.score(model, tok, [p["prompt"] for p in held], [p["chosen"] for p in held], 128)
    rejected = reward_scoring.score(model, tok, [p["prompt"] for p in held], [p["rejected"] for p in held], 128)
    return {"arm": arm, "steps": steps, "train_seconds": round(seconds, 2), "peak_rss_mb": peak_rss_mb(),
            "held_out_accuracy": reward_baselines.pairwise_accuracy(chosen, rejected), "held_out_pairs": len(held)}


def compare_trl(data: Path, out: Path, steps: int, threads: int) -> None:
    import subprocess
    import sys

    out.mkdir(parents=True, exist_ok=True)
    results = []
    for arm in ("ours", "trl"):
        code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import rlhf_bench; "
                f"print(json.dumps(rlhf_bench._arm({arm!r}, __import__('pathlib').Path({str(data)!r}), {steps}, {threads})))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"{arm} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    (out / "compare_trl.json").write_text(json.dumps(results, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline-data", required=True, type=Path, help="a data dir holding tokenizer, base_checkpoint, lora_adapter")
    ap.add_argument("--pairs", type=Path)
    ap.add_argument("--compare-trl", action="store_true", help="our reward loop against TRL's RewardTrainer")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--max-pairs", type=int, default=1200)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rm-steps", type=int, default=300)
    ap.add_argument("--dpo-steps", type=int, default=200)
    ap.add_argument("--rl-steps", type=int, default=30)
    ap.add_argument("--resume", action="store_true", help="keep <out>/data: a stage already finished there is not re-run")
    args = ap.parse_args()
    if args.compare_trl:
        compare_trl(args.pipeline_data.resolve(), args.out.resolve(), args.rm_steps, args.threads)
        return
    if args.pairs is None:
        ap.error("--pairs is required (unless --compare-trl)")

    from llm_pipeline.config import load_config
    from llm_pipeline.memory import peak_rss_mb
    from llm_pipeline.runner import run_stage

    out = args.out.resolve()
    data = out / "data"
    if not args.resume:
        shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer", "base_checkpoint", "lora_adapter", "deduped_shards"):
        if not (data / name).exists():
            shutil.copytree(args.pipeline_data / name, data / name)
    subset = out / "pairs.jsonl"
    with open(args.pairs, encoding="utf-8") as src, open(subset, "w", encoding="utf-8") as dst:
        for n, line in enumerate(src):
            if n >= args.max_pairs:
                break
            dst.write(line)

    overrides = {
        "data_dir": str(data), "allowed_roots": [str(out)], "tracking.wandb": False,
        "dpo_model.data": [str(subset)], "dpo_model.max_length": args.max_length, "dpo_model.max_steps": args.dpo_steps,
        "reward_model.max_steps": args.rm_steps, "rl_model.max_steps": args.rl_steps, "rl_model.max_new_tokens": 32,
        "rl_model.eval_prompts": 32, "eval_report.reward_prompts": 32, "eval_report.reward_samples": 2,
        "eval_report.max_task_examples": 8, "eval_report.review_per_domain": 0,
    }
    cfg = load_config(args.config, overrides=overrides)
    results: dict = {"pairs_file": str(args.pairs), "max_pairs": args.max_pairs, "max_length": args.max_length}
    for name in ("reward_model", "dpo_model", "rl_model", "eval_report"):
        if args.resume and (data / name / "_manifest.json").exists():  # finished by an earlier invocation
            timings = json.loads((data / name / ".timings.json").read_text()).get("stats.json", {})
            stats = json.loads((data / name / "stats.json").read_text())
            results[name] = {**stats, **timings, "seconds": "earlier run", "peak_rss_mb_so_far": timings.get("peak_rss_mb")}
            print(f"{name}: reused from an earlier run", flush=True)
            continue
        t0 = time.perf_counter()
        res = run_stage(cfg, name)
        results[name] = {**res.stats, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb_so_far": peak_rss_mb()}
        print(f"{name}: {results[name]['seconds']} s", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    rm, dpo, rl = results["reward_model"], results["dpo_model"], results["rl_model"]
    pol = json.loads((data / "eval_report" / "metrics.json").read_text())["policies"]
    results["policies"] = {k: v for k, v in pol.items() if k != "side_by_side"}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    reward = lambda m, s: (pol["models"].get(m) or {}).get("reward", {}).get(s)  # noqa: E731
    row = lambda s: " / ".join(f"{reward(m, s):+.4f}" if reward(m, s) is not None else "-" for m in ("sft", "dpo", "rl"))  # noqa: E731
    print(f"""
| figure (held-out, split by prompt) | value |
|---|---|
| pairs train / held-out | {rm['pairs']} / {rm['eval_pairs']} |
| reward model accuracy | {rm['eval_accuracy']} |
| longer answer wins | {rm['length_baseline_accuracy']} |
| SFT log-likelihood (sum / per token) | {rm['sft_loglik_accuracy']} / {rm['sft_loglik_per_token_accuracy']} |
| DPO reward accuracy | {dpo['eval_rewards_accuracies']} |
| RL reward SFT -> RL (gain) | {rl['eval_reward_sft']} -> {rl['eval_reward_rl']} ({rl['eval_reward_gain']}) |
| RL KL to SFT | {rl['eval_kl_to_sft']} |
| judge accuracy (other half of the pairs: {rm.get('judge_pairs')}) | {rm.get('judge_eval_accuracy')} |
| eval_report, {pol['prompts']} prompts x {pol['samples']}: reward model, SFT / DPO / RL | {row('reward_model')} |
| eval_report: judge, SFT / DPO / RL | {row('judge')} |
| eval_report: KL to SFT, DPO / RL | {pol['models'].get('dpo', {}).get('kl_to_sft')} / {pol['models'].get('rl', {}).get('kl_to_sft')} |
| verdict | {results['eval_report'].get('verdict')} |
| seconds: reward model + judge / DPO / RL / eval_report | {rm['seconds']} / {dpo['seconds']} / {rl['seconds']} / {results['eval_report']['seconds']} |
| peak RSS MB | {rl['peak_rss_mb_so_far']} |
""")


if __name__ == "__main__":
    main()
