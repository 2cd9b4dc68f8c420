"""Reward model, DPO and RL on an outside preference set, at a stated CPU budget.

    python benchmarks/rlhf_bench.py --pipeline-data data --pairs /work/data/hh-rlhf/harmless-base-test.jsonl \
        --out /work/data/hh-rlhf/bench --max-pairs 1200

Takes the tokenizer, base checkpoint and SFT adapter of a finished pipeline run (`--pipeline-data`, e.g. the default
run's `data/`), and on the given pairs (any format dpo_model reads; held out by prompt as the stages do) runs, through
the same runner as `llm-pipeline stage`:

- reward_model: held-out pairwise accuracy against "the longer answer wins" and the SFT model's log-likelihood;
- dpo_model: held-out reward accuracy of DPO on the same pairs;
- rl_model: RLOO against the reward model on the pairs' prompts, held-out reward gain over SFT and KL to SFT.

The data stays outside the repository; results go to `<out>/results.json` and are printed as a table. Each stage's
seconds and the process's peak RSS are reported beside its figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline-data", required=True, type=Path, help="a data dir holding tokenizer, base_checkpoint, lora_adapter")
    ap.add_argument("--pairs", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--max-pairs", type=int, default=1200)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rm-steps", type=int, default=300)
    ap.add_argument("--dpo-steps", type=int, default=200)
    ap.add_argument("--rl-steps", type=int, default=30)
    args = ap.parse_args()

    from llm_pipeline.config import load_config
    from llm_pipeline.memory import peak_rss_mb
    from llm_pipeline.runner import run_stage

    out = args.out.resolve()
    data = out / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    for name in ("tokenizer", "base_checkpoint", "lora_adapter", "deduped_shards"):
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
        "rl_model.eval_prompts": 32,
    }
    cfg = load_config(args.config, overrides=overrides)
    results: dict = {"pairs_file": str(args.pairs), "max_pairs": args.max_pairs, "max_length": args.max_length}
    for name in ("reward_model", "dpo_model", "rl_model"):
        t0 = time.perf_counter()
        res = run_stage(cfg, name)
        results[name] = {**res.stats, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb_so_far": peak_rss_mb()}
        print(f"{name}: {results[name]['seconds']} s", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    rm, dpo, rl = results["reward_model"], results["dpo_model"], results["rl_model"]
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
| seconds: reward model / DPO / RL | {rm['seconds']} / {dpo['seconds']} / {rl['seconds']} |
| peak RSS MB | {rl['peak_rss_mb_so_far']} |
""")


if __name__ == "__main__":
    main()
