"""Stage `base_checkpoint`: the base model, trained from scratch on packed train-split text or loaded pretrained.

    llm-pipeline stage base_checkpoint

source=scratch builds a small Llama (vocabulary from the tokenizer stage) and pretrains it by next-token prediction;
source=pretrained (local folder or hub id) / gguf loads a model (new domain tokens get mean-initialised embeddings)
and continues pretraining for `train_steps` steps (0 = keep it as loaded), on domain text alone or mixed with
`general_data` at `domain_ratio`. When the tokenizer stage extended the vocabulary, a short trial first trains LoRA
and the new rows on the extended tokenization (VOCAB_TRIAL_SHARE of the stage), and that model scores held-out text
in bits per byte with the extended and with the original tokenizer; unless the extension lowers it
(`tokenizer.keep_extension`), the original tokenizer is saved, the new rows dropped and the main training runs on
text tokenized without them (stats: `vocab_extension`). A crash mid-training resumes from the last checkpoint under
`<data_dir>/.checkpoints/base_checkpoint/`. Eval loss and perplexity come from the domains' held-out split (and,
when general text is mixed in, from its held-out part too, to show forgetting).

Scale-out: the same command under `accelerate launch` / `torchrun` / `deepspeed` trains in every process (see
training/pretrain.py); rank 0 alone tracks and writes the output, the other ranks' runs are thrown away.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from pathlib import Path

import torch
from transformers import AutoTokenizer

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import write_json
from llm_pipeline.stages import StageOutput
from llm_pipeline.training import checkpoints
from llm_pipeline.training import tag_fill
from llm_pipeline.training.corpus import count_documents, iter_general, iter_texts, require_train_documents
from llm_pipeline.training.device import cpu_threads_for, plan_device, projection_macs
from llm_pipeline.training import budget, vocab_extension
from llm_pipeline.training.embeddings import extension_pieces, keep_rows, resize_with_mean_init, trainable_rows, write_added_rows
from llm_pipeline.training.launch import distributed_rank
from llm_pipeline.training.model_source import load_base_model
from llm_pipeline.training.packing import MixedChunks, PackedChunks, token_stream
from llm_pipeline.training.pretrain import EVAL_MAX_CHUNKS, LoopSettings, evaluate, save_trained_model, train
from llm_pipeline.training.tracking import Tracker, tracked_run

ASSET = "base_checkpoint"


def checkpoint_dir(cfg: PipelineConfig) -> Path:
    return cfg.data_path / ".checkpoints" / ASSET


def _fingerprint(cfg: PipelineConfig, n_train_tokens: int, n_eval_tokens: int, vocab: int, n_general: int = 0, world: int = 1) -> str:
    # What must match for a checkpoint to be continued: the config that shapes training and the data it sees.
    blob = f"{cfg.fingerprint('base_checkpoint', 'tokenizer')}:{cfg.seed}:{n_train_tokens}:{n_eval_tokens}:{vocab}"
    if n_general:  # only when mixing, so checkpoints of domain-only runs keep their fingerprints
        blob += f":{n_general}"
    if world > 1:  # the batches each step draws depend on the number of processes
        blob += f":world{world}"
    if not cfg.training.fill_redaction_tags:  # the text read as the shards hold it (training.tag_fill)
        blob += ":tags"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


VOCAB_CHECK_DOCUMENTS = 48  # held-out documents per check: a stable bits-per-byte figure at two scoring passes' cost
VOCAB_CHECK_CHARS = 4_000
VOCAB_CHECK_GROUP = 4  # documents scored with both tokenizers between two looks at the clock
# Under a budget, the stage's held-out work (its evaluations during training, the one of general text after it, and
# the vocabulary check) stays within budget.MAX_EVAL_SHARE of its share: the check takes this part of it, the
# evaluations the rest. A real run's check of 19 documents x 4,000 chars took ~700 s on one core after a 270 s share.
VOCAB_CHECK_SHARE = 0.03
EVALS_PLANNED = 3  # evaluations an eval chunk cap is sized for (the loop skips intermediate ones past its share)
VOCAB_CHECK_MIN_CHARS = 400  # the least text a check scores: a few sentences per tokenizer, a figure at all
CHARS_PER_TOKEN = 4  # English text in a BPE vocabulary: turns the tokens a check affords into characters


def vocab_check(cfg: PipelineConfig, model, tokenizer, shards: Path, added: int, allowance: float | None = None,
                max_chars: int | None = None) -> tuple[dict, object | None]:
    """Does the vocabulary extension pay? Held-out bits per byte of the trained model with the extended tokenizer
    and with the original one, on the same documents. With an `allowance` in seconds, documents are scored a few at a
    time, both ways, until the next group would pass it (at least one group is scored); `max_chars` (what the
    allowance affords at the measured forward speed) shortens the documents first, spread over as many as it covers
    at VOCAB_CHECK_MIN_CHARS each. The documents' PII tags are read as training reads them (filled with surrogates)
    and the surrogates left out of both scores (with filling off, the tags: `evaluation/heldout.py`): the terms never
    include them, and how either tokenizer spells a made-up name or a `<PERSON>` says nothing about the domain.
    Returns the record for the
    stats (what was scored, in what time), and the original tokenizer (finished for the later stages) when the
    extension is to be dropped, else None."""
    import itertools
    import time

    from llm_pipeline import progress
    from llm_pipeline.evaluation.heldout import HeldOut
    from llm_pipeline.evaluation.models import LoadedModel
    from llm_pipeline.evaluation.perplexity import score_texts, total
    from llm_pipeline.stages.tokenizer import load_base_tokenizer
    from llm_pipeline.training import vocab_extension

    view = HeldOut.for_config(cfg)
    raw = [t for _, t in itertools.islice(iter_texts(shards, cfg.domain_names, "eval"), VOCAB_CHECK_DOCUMENTS)]
    if not raw:
        return {"checked": False, "why": "no held-out documents to measure the extension on", "kept": "extended"}, None
    available = len(raw)
    prepared = [view.prepare_one(t, VOCAB_CHECK_CHARS) for t in raw]
    if max_chars is not None and max_chars < sum(len(t) for t, _ in prepared):
        per_doc = min(VOCAB_CHECK_CHARS, max(VOCAB_CHECK_MIN_CHARS, max_chars // len(raw)))
        prepared = [view.prepare_one(raw[i], per_doc) for i in budget.spread(len(raw), max(1, max_chars // per_doc))]
    texts, skip = [t for t, _ in prepared], [sp for _, sp in prepared]
    name, original = load_base_tokenizer(cfg)
    vocab_extension.finish(original)
    was_training = model.training
    model.eval()
    scores: dict[str, list] = {"extended": [], "original": []}
    started = time.perf_counter()
    meter = progress.meter("base_checkpoint vocabulary check", total=len(texts), unit="document")
    scored = 0
    try:
        while scored < len(texts):
            group, spans = texts[scored : scored + VOCAB_CHECK_GROUP], skip[scored : scored + VOCAB_CHECK_GROUP]
            for label, tok in (("extended", tokenizer), ("original", original)):
                scores[label] += score_texts(LoadedModel(label, model, tok, is_adapter=False), group, batch_size=4, skip=spans)
            scored += len(group)
            meter.update(scored)
            spent = time.perf_counter() - started
            if allowance is not None and spent + spent / scored * min(VOCAB_CHECK_GROUP, len(texts) - scored) > allowance:
                break
    finally:
        meter.close()
        model.train(was_training)
    bpb = {label: total(s).bits_per_byte for label, s in scores.items()}
    gain = cfg.tokenizer.extension_min_gain
    lower = bpb["extended"] < bpb["original"] * (1 - gain)
    keep = lower or cfg.tokenizer.keep_extension == "always"
    record = {
        "checked": True, "documents": scored, "documents_available": available,
        "chars_scored": sum(len(t) for t in texts[:scored]), "seconds": round(time.perf_counter() - started, 3),
        "allowance_seconds": round(allowance, 1) if allowance is not None else None, "max_chars": max_chars,
        "tokens_added": added, "original_tokenizer": name,
        "extended_bits_per_byte": round(bpb["extended"], 5), "original_bits_per_byte": round(bpb["original"], 5),
        "change": round(bpb["extended"] / bpb["original"] - 1, 5), "kept": "extended" if keep else "original",
        # The same spans for both tokenizers, so the two figures divide the same bytes.
        "left_out_of_score": {"mode": view.mode, "spans": sum(map(len, skip[:scored])),
                              "chars": sum(b - a for sp in skip[:scored] for a, b in sp)},
        "why": (f"the {added} domain terms {'lower' if lower else 'do not lower'} held-out bits per byte"
                f"{f' by more than {gain:.1%}' if gain else ''} ({bpb['extended']:.4f} vs {bpb['original']:.4f} with the original tokenizer"
                f" on {scored} of {available} held-out documents, {sum(len(t) for t in texts[:scored]):,} characters)"
                + ("" if keep == lower else "; kept because tokenizer.keep_extension is 'always'")),
    }
    return record, None if keep else original


def eval_cap(model, eval_tokens, seq_len: int, pad_id: int, batch_size: int, plan, allowance: float) -> tuple[int, float]:
    """(chunks, seconds per chunk): how many held-out chunks one evaluation can score in `allowance` seconds (at least
    one), timed on one chunk now (its seconds count against the budget like any evaluation's; a chunk alone is
    slower per chunk than in a batch, so the estimate errs on the cheap side)."""
    import time

    from llm_pipeline.training.pretrain import EVAL_MAX_CHUNKS

    probe = PackedChunks(eval_tokens[:seq_len], seq_len, pad_id)
    model.to(plan.device)  # where training will put it (and evaluate sends the batches)
    t0 = time.perf_counter()
    evaluate(model, probe, 1, plan)
    per_chunk = time.perf_counter() - t0
    return budget.affordable(min(EVAL_MAX_CHUNKS, -(-len(eval_tokens) // seq_len)), per_chunk, allowance), per_chunk


def check_chars(allowance: float, seconds_per_token: float) -> int:
    """Characters the vocabulary check can score in `allowance` seconds: each is scored twice (both tokenizers)."""
    return max(VOCAB_CHECK_MIN_CHARS, int(allowance / (2 * seconds_per_token) * CHARS_PER_TOKEN)) if seconds_per_token > 0 else 0


LORA_MIN_PARAMS = 20_000_000  # below this a full step is cheap on a CPU too, and LoRA's overhead is not worth it


def choose_method(cfg: PipelineConfig, plan, n_params: int) -> tuple[str, str]:
    """Full-parameter or LoRA continued pretraining, and why."""
    bc = cfg.base_checkpoint
    if bc.method != "auto":
        return bc.method, "set in config"
    if bc.source == "scratch":
        return "full", "a model trained from scratch trains every weight"
    if plan.device == "cpu" and n_params >= LORA_MIN_PARAMS:
        return "lora", (f"a pretrained model of {n_params / 1e6:.0f}M parameters on a CPU: LoRA (r={bc.lora_r}, every linear "
                        "layer, plus the new vocabulary rows) keeps neither gradients nor AdamW state for the frozen weights, so a "
                        "CPU budget buys more steps than full-parameter training gets from it")
    return "full", (f"{plan.device}: full-parameter steps are affordable" if plan.device != "cpu" else
                    f"{n_params / 1e6:.1f}M parameters: a full step is cheap at this size")


def with_lora(model, cfg: PipelineConfig, new_rows: list[int]):
    """The model with LoRA adapters on every linear layer and the new vocabulary rows trainable (the embedding's and
    the output layer's, tied or not: extended terms must learn to be read and written, not stay at their initial
    mean). The rest of both matrices stays frozen."""
    from peft import LoraConfig, get_peft_model

    r = cfg.base_checkpoint.lora_r
    extra = {"trainable_token_indices": trainable_rows(model, new_rows)} if new_rows else {}
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM", **extra))


class _Data:
    """The stage's text tokenized with one tokenizer: packed train chunks (domain, or domain mixed with general text)
    and held-out chunks. Built again with the original tokenizer when the vocabulary check drops the extension."""

    def __init__(self, cfg: PipelineConfig, tokenizer, shards: Path, seq_len: int):
        bc = cfg.base_checkpoint
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = tokenizer.eos_token_id
        # The shards' PII tags are read as made-up values of their type, whose tokens the model reads but is not
        # taught to predict (training.tag_fill; benchmarks/README.md "Training on redacted text": predicting them
        # cost an untrained domain 6-9% perplexity, reading them nothing).
        self.filler = filler = tag_fill.for_config(cfg)

        def texts(split: str):
            docs = (t for _, t in iter_texts(shards, cfg.domain_names, split))
            return docs if filler is None else (filler.fill_with_spans(t) for t in docs)

        self.train_tokens = token_stream(tokenizer, texts("train"), eos)
        self.eval_tokens = token_stream(tokenizer, texts("eval"), eos)
        self.eval_chunks = PackedChunks(self.eval_tokens, seq_len, self.pad_id) if len(self.eval_tokens) else None
        self.general_quarantined: dict[str, int] = {}
        self.general_tokens = self.general_eval_tokens = None
        self.train_chunks: PackedChunks | MixedChunks = PackedChunks(self.train_tokens, seq_len, self.pad_id)
        if bc.general_data and bc.domain_ratio < 1:
            self.general_tokens = token_stream(tokenizer, iter_general(cfg, "train", self.general_quarantined), eos)
            self.general_eval_tokens = token_stream(tokenizer, iter_general(cfg, "eval"), eos)
            if not len(self.general_tokens):
                raise ValueError(f"base_checkpoint.general_data yielded no train-split text (quarantined: {self.general_quarantined or 'none'})")
            self.train_chunks = MixedChunks(self.train_chunks, PackedChunks(self.general_tokens, seq_len, self.pad_id), bc.domain_ratio)


# The vocabulary is decided before the main training spends the budget: a short trial trains LoRA and the new rows on
# the extended tokenization, then the check scores it with both tokenizers, and the main training runs with the one
# that won. A real run that trained its whole share on the extension and then dropped it kept an adapter trained for
# another tokenization (-4.7%/-16% on its domains instead of -18%/-27%) at 67 tokens/s instead of 116: a dropped
# extension now costs only the trial. The trial (check included) takes this share of the stage's budget, or of its
# train_steps without one.
VOCAB_TRIAL_SHARE = 0.1


def vocab_trial(cfg: PipelineConfig, model, tokenizer, data: _Data, shards: Path, plan, added: int, new_rows: list[int],
                budget_seconds: float | None) -> tuple[object, dict, object | None, object]:
    """Train LoRA and the new rows for VOCAB_TRIAL_SHARE of the stage, then run `vocab_check` on that model.
    Returns (the trial's PEFT model, the check's record, the original tokenizer when the extension is dropped, the
    trial's LoopResult)."""
    bc = cfg.base_checkpoint
    steps = max(1, min(bc.train_steps, round(VOCAB_TRIAL_SHARE * bc.train_steps)))
    check_allowance = max_chars = None
    trial_seconds = None
    if budget_seconds is not None:
        check_allowance = VOCAB_CHECK_SHARE * budget_seconds
        trial_seconds = (VOCAB_TRIAL_SHARE - VOCAB_CHECK_SHARE) * budget_seconds
        steps = bc.train_steps  # the clock ends the trial
    peft_model = with_lora(model, cfg, new_rows)
    # No warmup: the trial is a few steps, and under a budget the first would run at a sliver of the rate (the new rows
    # must move for the check to mean anything); the decay still ends it low.
    settings = LoopSettings(
        max_seconds=trial_seconds, steps=steps, batch_size=bc.batch_size, learning_rate=bc.lora_learning_rate,
        warmup_ratio=0.0, weight_decay=bc.weight_decay, grad_clip=bc.grad_clip, eval_every=steps + 1,
        checkpoint_every=steps + 1, seed=cfg.seed, schedule=bc.lr_schedule,
    )
    # No evaluation, no checkpoint and no tracked steps (the main training's step numbers start again at 1): the trial
    # is short, and the check after it is its evaluation.
    quiet = Tracker(None, "disabled", "the vocabulary trial is not tracked")
    result = train(peft_model, data.train_chunks, None, settings, plan, checkpoint_dir(cfg) / "vocab-trial", "vocab-trial", quiet)
    if check_allowance is not None:
        max_chars = check_chars(check_allowance, result.seconds / max(1, result.session_tokens) / 3)  # a forward ~ 1/3 of a step
    record, original = vocab_check(cfg, peft_model, tokenizer, shards, added, check_allowance, max_chars)
    record["decided"] = ("before the main training, on a trial of LoRA and the new rows "
                         f"({result.steps_done} step{'s' if result.steps_done != 1 else ''}, {result.session_tokens:,} tokens, {result.seconds:.1f} s)")
    record.update(trial_steps=result.steps_done, trial_tokens=result.session_tokens, trial_seconds=round(result.seconds, 3),
                  trial_loss=result.log[-1]["loss"] if result.log else None)
    return peft_model, record, original, result


def run(cfg: PipelineConfig, inputs: dict[str, Path], output_dir: Path, domain: str | None = None) -> StageOutput:
    bc = cfg.base_checkpoint
    shards = inputs["deduped_shards"]
    counts = count_documents(shards, cfg.domain_names)
    require_train_documents(counts)
    tokenizer = AutoTokenizer.from_pretrained(inputs["tokenizer"])
    plan = plan_device(bc.precision)

    model, origin = load_base_model(cfg, tokenizer)
    resize = resize_with_mean_init(model, len(tokenizer), extension_pieces(inputs["tokenizer"]))

    seq_len = min(bc.seq_len, model.config.max_position_embeddings)
    data = _Data(cfg, tokenizer, shards, seq_len)

    budget_seconds, budget_why = budget.stage_budget(cfg, ASSET)
    stage_clock = budget.Clock(budget_seconds) if budget_seconds is not None else None
    if stage_clock is not None:
        stage_clock.start()
    n_params = sum(p.numel() for p in model.parameters())
    method, method_why = choose_method(cfg, plan, n_params)
    new_rows = list(range(resize["old_vocab_size"], resize["new_vocab_size"]))
    added_terms = len(extension_pieces(inputs["tokenizer"]))
    checks_vocab = bool(added_terms and resize["new_vocab_size"] > resize["old_vocab_size"])
    rank, world = distributed_rank()
    vocab = {"checked": False, "why": "the tokenizer was not extended", "kept": "extended"}
    trial = None  # the trial's LoopResult when its training carries on into the main one
    run_config = {**bc.model_dump(mode="json"), "origin": origin, **plan.as_metadata(), "processes": world, "method": method}
    # One tracked run per training, from rank 0; the other ranks' trackers are off.
    tracking = tracked_run(cfg, ASSET, run_config, inputs) if rank == 0 else \
        contextlib.nullcontext(Tracker(None, "disabled", f"rank {rank}: rank 0 tracks the run"))
    with contextlib.ExitStack() as stack:
        tracker = stack.enter_context(tracking)
        threads = stack.enter_context(cpu_threads_for(n_params, plan, projection_macs(model.config, bc.batch_size * seq_len)))
        if checks_vocab and world > 1:
            vocab["why"] = "not measured under a multi-process launch"
        elif checks_vocab and bc.train_steps == 0:  # the model as loaded, new rows at their mean initialisation
            vocab, original_tokenizer = vocab_check(cfg, model, tokenizer, shards, added_terms)
            if original_tokenizer is not None:
                keep_rows(model, vocab_extension.row_map(tokenizer, original_tokenizer))
                tokenizer = original_tokenizer
                data = _Data(cfg, tokenizer, shards, seq_len)
        elif checks_vocab:
            peft_model, vocab, original_tokenizer, trial_result = vocab_trial(
                cfg, model, tokenizer, data, shards, plan, added_terms, new_rows, budget_seconds)
            if original_tokenizer is None:  # kept: the main training carries the trial's weights on
                trial = trial_result
                model = peft_model if method == "lora" else peft_model.merge_and_unload()
            else:  # dropped: the trial's adapter and rows go, and the text is tokenized again without the terms
                model = peft_model.unload()
                keep_rows(model, vocab_extension.row_map(tokenizer, original_tokenizer))
                tokenizer = original_tokenizer
                new_rows = []
                data = _Data(cfg, tokenizer, shards, seq_len)
            if method == "full":  # PEFT froze the base weights for the trial
                model.requires_grad_(True)
        if method == "lora" and bc.train_steps > 0 and not hasattr(model, "peft_config"):
            model = with_lora(model, cfg, new_rows)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        train_tokens, eval_tokens, train_chunks, eval_chunks = data.train_tokens, data.eval_tokens, data.train_chunks, data.eval_chunks
        general_tokens, general_eval_tokens, general_quarantined, pad_id = data.general_tokens, data.general_eval_tokens, data.general_quarantined, data.pad_id
        # Under a budget the held-out work stays within MAX_EVAL_SHARE of it: each evaluation scores only the chunks its
        # part affords (timed on one batch now; the vocabulary check had VOCAB_CHECK_SHARE inside the trial), and the
        # loop trains within what is left once one evaluation (the final one, unmeasured until the first has run) is
        # set aside.
        loop_seconds, eval_chunks_cap, eval_share = budget_seconds, None, None
        # A multi-process launch keeps the uncapped evaluation: every rank must score the same chunks, and each would
        # time its own probe.
        if budget_seconds is not None and bc.train_steps > 0 and world == 1:
            eval_share = budget.MAX_EVAL_SHARE - (VOCAB_CHECK_SHARE if checks_vocab else 0.0)
            eval_seconds = 0.0
            if eval_chunks is not None:
                eval_chunks_cap, per_chunk = eval_cap(model, eval_tokens, seq_len, pad_id, bc.batch_size, plan,
                                                      eval_share * budget_seconds / EVALS_PLANNED)
                eval_chunks = PackedChunks(eval_tokens[: eval_chunks_cap * seq_len], seq_len, pad_id)
                eval_seconds = per_chunk * eval_chunks_cap
            loop_seconds = max(budget_seconds - stage_clock.spent() - eval_seconds, budget_seconds / 20)
        main_steps = bc.train_steps - (trial.steps_done if trial is not None and budget_seconds is None else 0)
        settings = LoopSettings(
            max_seconds=loop_seconds, eval_share=eval_share,
            steps=max(0, main_steps), batch_size=bc.batch_size,
            learning_rate=bc.lora_learning_rate if method == "lora" else bc.learning_rate, warmup_ratio=bc.warmup_ratio,
            weight_decay=bc.weight_decay, grad_clip=bc.grad_clip, eval_every=bc.eval_every,
            checkpoint_every=bc.checkpoint_every, seed=cfg.seed, early_stopping_patience=bc.early_stopping_patience,
            schedule=bc.lr_schedule,
        )
        n_general = 0 if general_tokens is None else len(general_tokens)
        fingerprint = _fingerprint(cfg, len(train_tokens), len(eval_tokens), len(tokenizer), n_general, world)
        general_eval = None
        result = train(model, train_chunks, eval_chunks, settings, plan, checkpoint_dir(cfg), fingerprint, tracker)
        eval_ppl = math.exp(min(result.eval_loss, 50)) if result.eval_loss is not None else None
        if general_eval_tokens is not None and len(general_eval_tokens):
            general_cap = (eval_chunks_cap or len(general_eval_tokens)) * seq_len  # as many chunks as the domain evaluation
            general_eval = evaluate(model, PackedChunks(general_eval_tokens[:general_cap], seq_len, pad_id), bc.batch_size, plan, result.accelerator)
        tracker.summary({"eval_loss": result.eval_loss, "eval_perplexity": eval_ppl, "general_eval_loss": general_eval})

    if hasattr(model, "merge_and_unload"):  # LoRA: the adapters and trained rows folded in, saved as a plain model
        model = model.merge_and_unload()
    if trial is not None:  # the trial's steps and tokens are part of the model's training
        result.steps_done += trial.steps_done
        result.tokens_trained += trial.tokens_trained

    budget_spent = round(stage_clock.spent(), 3) if stage_clock is not None else None  # saving is not training
    save_trained_model(result, model, output_dir)  # every rank: a gather under DeepSpeed, then a barrier
    if result.is_main:
        tokenizer.save_pretrained(output_dir)
        # The matrix holds a row per token of the tokenizer saved here once it grew (read from the tokenizer: under
        # ZeRO-3 the weight itself is a partition).
        if resize["new_vocab_size"] > resize["old_vocab_size"] and len(tokenizer) > resize["old_vocab_size"]:
            write_added_rows(output_dir, resize["old_vocab_size"], len(tokenizer))  # for SFT, which trains these rows too
        write_json(output_dir / "training_log.json", result.log)
        # The output is complete (the runner only renames it now): the resume checkpoints have served their purpose.
        checkpoints.clear_checkpoints(checkpoint_dir(cfg))

    stats = {
        "source": bc.source,
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_tokens": result.tokens_trained,
        "corpus_train_tokens": int(len(train_tokens)),
        "corpus_eval_tokens": int(len(eval_tokens)),
        "train_chunks": len(train_chunks),
        "epochs": round(result.steps_done * bc.batch_size * result.world_size / max(1, len(train_chunks)), 3),  # over domain + general chunks
        "steps": result.steps_done,
        "stopped_early": result.stopped_early,
        "method": method,
        "method_reason": method_why,
        "trainable_parameters": trainable,
        "learning_rate": settings.learning_rate,
        "budget_seconds": budget_seconds,
        "budget": budget_why,
        # What the stage's clock counted: the eval probe, training with its evaluations, the evaluation of general
        # text, the vocabulary check and the merge (the next training stages' shares are taken from what is left).
        "budget_spent_seconds": budget_spent,
        "loop_budget_seconds": round(loop_seconds, 1) if loop_seconds is not None else None,
        "eval_chunks_scored": min(len(eval_chunks), eval_chunks_cap or EVAL_MAX_CHUNKS) if eval_chunks is not None else 0,
        "stopped_by_budget": result.stopped_by_budget,
        "eval_seconds": round(result.eval_seconds, 3),
        "evals_skipped": result.evals_skipped,
        "resumed_from_step": result.resumed_from,
        "final_train_loss": result.log[-1]["loss"] if result.log else None,
        "eval_loss": round(result.eval_loss, 5) if result.eval_loss is not None else None,
        "eval_perplexity": round(eval_ppl, 3) if eval_ppl is not None else None,
        "seconds": round(result.seconds, 3),
        "tokens_per_second": round(result.session_tokens / result.seconds, 1) if result.seconds > 0 else None,
        "precision": plan.precision,
        "device": plan.device,
        "embeddings_added": resize["new_vocab_size"] - resize["old_vocab_size"],
        "embeddings_mean_initialised": resize["mean_initialised"],
        "vocab_extension": vocab,
        "redaction_tags_filled": data.filler.stats() if data.filler is not None else None,
        "lr_schedule": bc.lr_schedule,
        "processes": result.world_size,
    }
    if plan.device == "cuda":  # this process's peak; every rank holds about as much (less under ZeRO)
        stats["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if isinstance(train_chunks, MixedChunks):
        rows = result.steps_done * bc.batch_size * result.world_size
        stats["mix"] = {
            "domain_ratio": bc.domain_ratio,
            "domain_rows": train_chunks.domain_rows_before(rows),
            "general_rows": rows - train_chunks.domain_rows_before(rows),
            "general_train_tokens": int(n_general),
            "general_eval_tokens": int(len(general_eval_tokens)),
            "general_quarantined": general_quarantined,
        }
        stats["general_eval_loss"] = round(general_eval, 5) if general_eval is not None else None
        stats["general_eval_perplexity"] = round(math.exp(min(general_eval, 50)), 3) if general_eval is not None else None
    preview = (
        f"**{origin}** — {n_params:,} parameters, {plan.device}/{plan.precision} ({plan.reason})\n\n"
        f"{result.steps_done} steps{' (stopped early)' if result.stopped_early else ''}{f' (budget of {budget_seconds:g} s reached)' if result.stopped_by_budget else ''} on {len(train_tokens):,} packed train tokens ({stats['epochs']} epochs); "
        f"held-out loss **{stats['eval_loss']}**, perplexity **{stats['eval_perplexity']}**; "
        f"{result.resume_note}."
    )
    metadata = {**plan.as_metadata(), **threads, "origin": origin, "resume": result.resume_note, **tracker.metadata()}
    return StageOutput(stats=stats, preview=preview, metadata=metadata)
