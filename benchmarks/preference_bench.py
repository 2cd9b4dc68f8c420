"""Preference quality on outside pairs: held-out implicit-reward accuracy of our dpo_model against "the longer answer wins".

    .venv/bin/python benchmarks/preference_bench.py PAIRS [--work benchmarks/out/quality-work] [--steps 60]

PAIRS is a file of public preference pairs the dpo_model stage reads (jsonl / jsonl.gz; prompt/chosen/rejected, HH-RLHF
chosen/rejected transcripts, or ShareGPT-style), e.g. Anthropic's HH-RLHF `harmless-base/test.jsonl.gz` (MIT licence):

    git clone --depth 1 https://github.com/anthropics/hh-rlhf /tmp/src/hh-rlhf   # the file is stored in git, not LFS

`--work` is a work folder of `quality_bench.py` whose `ours` arm has run: its data folder holds the curated shards,
SmolLM2's base checkpoint and our SFT adapter, on which the dpo_model stage trains here (reference: that SFT model,
its config's defaults otherwise). The stage splits the pairs by a hash of the prompt (no held-out prompt is trained
on). Then, on up to `--eval-pairs` held-out pairs:

- our DPO model's implicit-reward accuracy: reward(y) = beta * (log pi(y|x) - log pi_ref(y|x)), right when
  reward(chosen) > reward(rejected);
- the length baseline: the longer answer is picked (ties count half). This is the bar to beat, not 0.5: in many
  preference sets one side is systematically longer;
- the SFT model's own log-likelihood preference (log pi_sft(chosen|x) > log pi_sft(rejected|x)), to show what DPO
  added over the model it started from.

Written to benchmarks/out/preference_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT_DIR, peak_rss_mb  # noqa: E402

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", type=Path)
    ap.add_argument("--work", type=Path, default=OUT_DIR / "quality-work")
    ap.add_argument("--steps", type=int, default=60, help="DPO optimizer steps")
    ap.add_argument("--batch-size", type=int, default=None, help="pairs per step (default: the config's)")
    ap.add_argument("--max-length", type=int, default=None, help="tokens per prompt + answer (default: the config's)")
    ap.add_argument("--max-pairs", type=int, default=None, help="use only the first N pairs of the file")
    ap.add_argument("--eval-pairs", type=int, default=200)
    ap.add_argument("--tag", default="")
    ap.add_argument("--reuse", action="store_true", help="score the dpo_model already in --work instead of training it again")
    a = ap.parse_args()

    import torch

    from llm_pipeline.config import load_config
    from llm_pipeline.evaluation import models, preference
    from llm_pipeline.evaluation.data import Notes, preference_pairs
    from llm_pipeline.runner import run_stage

    work = a.work.resolve()
    cfg = load_config(work / "train.yaml")
    if not (cfg.data_path / "lora_adapter" / "adapter_config.json").exists():
        raise SystemExit(f"{work} has no lora_adapter output: run quality_bench.py (arm ours) with --work {work} first")
    pairs = a.pairs.resolve()
    if a.max_pairs:
        import gzip

        opener = gzip.open if pairs.suffix == ".gz" else open
        with opener(pairs, "rt", encoding="utf-8") as f:
            lines = [line for _, line in zip(range(a.max_pairs), f)]
        pairs = work / f"pairs-first-{a.max_pairs}.jsonl"
        pairs.write_text("".join(lines), encoding="utf-8")
    cfg.allowed_roots = [*cfg.allowed_roots, str(pairs.parent)]
    dc = cfg.dpo_model
    update = {"data": [str(pairs)], "max_steps": a.steps}
    if a.batch_size:
        update["batch_size"] = a.batch_size
    if a.max_length:
        update["max_length"] = a.max_length
    cfg.dpo_model = dc.model_copy(update=update)

    started = time.perf_counter()
    if a.reuse and (cfg.data_path / "dpo_model" / "adapter_config.json").exists():
        from types import SimpleNamespace

        result = SimpleNamespace(stats=json.loads((cfg.data_path / "dpo_model" / "stats.json").read_text()))
    else:
        result = run_stage(cfg, "dpo_model")
    stage_seconds = time.perf_counter() - started
    dpo_dir, lora_dir, base_dir = cfg.data_path / "dpo_model", cfg.data_path / "lora_adapter", cfg.data_path / "base_checkpoint"
    notes = Notes()
    held = preference_pairs(dpo_dir / "pairs_eval.jsonl", notes)[: a.eval_pairs]
    train_n = sum(1 for _ in open(dpo_dir / "pairs_train.jsonl", encoding="utf-8"))
    loaded = models.load_models(base_dir, {"sft": lora_dir, "dpo": dpo_dir}, notes)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for lm in loaded.values():
        lm.model.to(device)
    t = time.perf_counter()
    with models.cpu_threads_for(loaded):
        dpo = preference.preference_accuracy(loaded["dpo"], loaded["base"], held, cfg.dpo_model.beta, cfg.eval_report.batch_size)
        items = [(p["prompt"], p["chosen"]) for p in held] + [(p["prompt"], p["rejected"]) for p in held]
        sft_lp = preference.completion_logprobs(loaded["sft"], items, cfg.eval_report.batch_size)
    n = len(held)
    sft_acc = sum(sft_lp[i] > sft_lp[n + i] for i in range(n)) / n if n else None
    out = {
        "pairs_file": str(a.pairs), "train_pairs": train_n, "heldout_pairs_scored": n, "device": device,
        "dpo_steps": result.stats.get("steps"), "dpo_train_seconds": result.stats.get("train_seconds"), "stage_seconds": round(stage_seconds, 1),
        "beta": cfg.dpo_model.beta, "dpo_accuracy": round(dpo["accuracy"], 4), "length_baseline_accuracy": round(dpo["length_baseline_accuracy"], 4),
        "sft_loglik_accuracy": round(sft_acc, 4) if sft_acc is not None else None, "mean_margin": round(dpo["mean_margin"], 4),
        "eval_seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        "train_log_last": json.loads((dpo_dir / "training_log.json").read_text())[-3:] if (dpo_dir / "training_log.json").exists() else None,
    }
    print(json.dumps(out, indent=2))
    print(f"\nheld-out pairs {n}: DPO implicit-reward accuracy {out['dpo_accuracy']:.3f} | longer answer {out['length_baseline_accuracy']:.3f} "
          f"| SFT log-likelihood {out['sft_loglik_accuracy']:.3f}")
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / ("preference_bench" + (f"_{a.tag}" if a.tag else "") + ".json")).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
