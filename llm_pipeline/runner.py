"""Run one stage: resolve its input folders, call its `run` in a temp folder, write stats and manifest, rename.

This is the single entry the CLI (`llm-pipeline stage`), `dvc repro`, the Dagster assets and the tests share.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_pipeline import __version__
from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import (
    MANIFEST, STATS, OutputWriteError, atomic_dir, clean_stale_temps, dvc_hash, free_space, move_measured,
    no_room_reason, output_lock, publish_lock, read_json, read_lock, split_measured, write_json,
)
from llm_pipeline.metrics import key_metrics, write_metrics
from llm_pipeline.security import check_data_dir
from llm_pipeline.training.launch import distributed_rank
from llm_pipeline.stages import STAGES, StageOutput, output_dir, stage_function


LOCK_DIR = ".locks"  # under data_dir, beside (never inside) the outputs that DVC and Dagster hash


class StageInputError(RuntimeError):
    """An upstream output the stage needs is missing or unfinished."""


@dataclass
class StageResult:
    name: str
    domain: str | None
    output_dir: Path
    stats: dict[str, Any]
    preview: str
    dvc_hash: str
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)


def code_version(root: Path | None = None) -> str:
    """The package version plus the git commit of the checkout (with '+dirty' when it has uncommitted changes)."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return __version__
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "llm_pipeline"], cwd=root, capture_output=True, text=True, timeout=10)
        return f"{__version__}+g{sha.stdout.strip()}{'.dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def check_sources_reachable(cfg: PipelineConfig, domain: str) -> None:
    """Stop with the key to set when every source of a domain lies outside the allowed roots.

    One such source among others is quarantined (`path_outside_root`) and the rest still run; when none is left the
    stage would only produce an empty domain, which is the config's mistake, not the corpus's: say so in one line.
    """
    from llm_pipeline.security import PathOutsideRoot, allowed_roots, is_inside, real

    sources = cfg.domains[domain].sources
    paths = [cfg.resolve(s.path) for s in sources if s.path]
    if not paths or len(paths) < len(sources):
        return
    roots = allowed_roots(cfg)
    if any(is_inside(p, roots) for p in paths):
        return
    where = cfg.config_path or "config"
    first = real(paths[0])
    folder = first if first.is_dir() or not first.exists() else first.parent
    raise PathOutsideRoot(f"{where}: domains.{domain}.sources: {first} and every other source of the domain lie outside "
                          f"the allowed roots ({', '.join(map(str, roots))}); set allowed_roots: [{folder}] to read them")


def stage_inputs(cfg: PipelineConfig, name: str, domain: str | None) -> dict[str, Path]:
    stage = STAGES[name]
    inputs: dict[str, Path] = {}
    for dep in stage.deps:
        dep_stage = STAGES[dep]
        if dep_stage.partitioned and stage.partitioned:
            path = output_dir(cfg.data_path, dep, domain)
            missing = [] if (path / MANIFEST).exists() else [domain]
        elif dep_stage.partitioned:
            path = output_dir(cfg.data_path, dep)
            missing = [d for d in cfg.domain_names if not (path / d / MANIFEST).exists()]
        else:
            path = output_dir(cfg.data_path, dep)
            missing = [] if (path / MANIFEST).exists() else ["(all)"]
        if missing and dep in stage.optional:
            continue  # read when there, reported as not run when not
        if missing:
            raise StageInputError(
                f"stage {name!r} needs {dep!r} for {', '.join(str(m) for m in missing)}, which is not materialized "
                f"(no {MANIFEST} under {path}); run it first"
            )
        inputs[dep] = path
    return inputs


def _input_hashes(cfg: PipelineConfig, name: str, inputs: dict[str, Path], domain: str | None) -> dict[str, str]:
    hashes = {}
    if name == "raw_corpus":  # the first stage's input is the domain's source files
        from llm_pipeline.sources import domain_fingerprint

        hashes["sources"] = domain_fingerprint(cfg, domain)
    for dep, path in inputs.items():
        if STAGES[dep].partitioned and not STAGES[name].partitioned:
            for d in cfg.domain_names:
                hashes[f"{dep}/{d}"] = dvc_hash(path / d)
        else:
            hashes[dep] = dvc_hash(path)
    return hashes


def _input_lock_keys(cfg: PipelineConfig, name: str, domain: str | None) -> list[str]:
    """The lock keys (as output_lock names them) of every upstream output the stage reads."""
    keys = []
    for dep in STAGES[name].deps:
        if STAGES[dep].partitioned:
            keys += [f"{dep}-{d}" for d in ([domain] if STAGES[name].partitioned else cfg.domain_names)]
        else:
            keys.append(dep)
    return keys


class InputChanged(StageInputError):
    """An input of the stage changed while it ran: the output would not be what its manifest says it was built from."""


def _check_pinned(before: dict[str, str], after: dict[str, str], name: str, domain: str | None) -> None:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        what = f"{name}[{domain}]" if domain else name
        raise InputChanged(f"{what}: its input {', '.join(changed)} changed while it ran; nothing was written "
                           f"(the earlier output, if any, is untouched): run it again")


def run_stage(cfg: PipelineConfig, name: str, domain: str | None = None) -> StageResult:
    stage = STAGES.get(name)
    if stage is None:
        raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    if stage.partitioned:
        if domain is None:
            raise ValueError(f"stage {name!r} is partitioned by domain: give a domain ({', '.join(cfg.domain_names)})")
        if domain not in cfg.domains:
            raise ValueError(f"unknown domain {domain!r}; the config declares: {', '.join(cfg.domain_names)}")
    elif domain is not None:
        raise ValueError(f"stage {name!r} is not partitioned: it reads every domain; drop the domain")

    check_data_dir(cfg)  # before anything is written: a config must not point the outputs outside its roots
    if name == "raw_corpus":
        check_sources_reachable(cfg, domain)
    inputs = stage_inputs(cfg, name, domain)
    final = output_dir(cfg.data_path, name, domain)
    fn = stage_function(name)
    started = time.perf_counter()
    rank, world = distributed_rank()
    if world > 1 and rank != 0:
        # Under `accelerate launch`/`deepspeed`, every rank runs the stage (the trainer needs them all), but only
        # rank 0 owns the output: the others work in a scratch folder that is thrown away.
        import tempfile

        with tempfile.TemporaryDirectory(prefix=f"llmp-rank{rank}-") as scratch:
            out = fn(cfg, inputs, Path(scratch), domain=domain)
        return StageResult(name, domain, final, out.stats, out.preview, "", time.perf_counter() - started, out.metadata)
    try:
        return _run_owned(cfg, name, domain, inputs, final, fn, started)
    except OutputWriteError:
        raise
    except Exception as exc:
        # A full disk (or quota, or file-size limit) met by any writer (a model's safetensors, a tokenizer's
        # files, a shard, a report) is one line; the temp folder is gone by now (atomic_dir), so nothing partial
        # is left at or beside the output.
        reason = no_room_reason(exc)
        if reason is None:
            raise
        raise OutputWriteError(f"cannot write the {name} output in {final.parent}: {reason} "
                               f"({free_space(final.parent)} free); free some space and run it again") from exc


def _run_owned(cfg: PipelineConfig, name: str, domain: str | None, inputs: dict[str, Path], final: Path, fn,
               started: float) -> StageResult:
    """run_stage's part on the rank that owns the output: locked, atomic, manifest last."""
    # One run per output at a time; inside the lock, any temp folder of this output is a dead run's leftover.
    lock_dir = cfg.data_path / LOCK_DIR
    key = f"{name}-{domain}" if domain else name
    # Inputs are pinned: their hashes are taken before the stage reads them, and again when it is done; the shared
    # read locks make a rebuild of an upstream output wait, and the second hash catches what no lock covers (the
    # raw sources, an edit by hand, a `dvc checkout`). A manifest never names inputs the stage did not read.
    with output_lock(lock_dir, key), read_lock(lock_dir, _input_lock_keys(cfg, name, domain)):
        clean_stale_temps(final.parent, final.name)
        pinned = _input_hashes(cfg, name, inputs, domain)
        with atomic_dir(final, stage=name, swap_guard=lambda: publish_lock(lock_dir, key)) as tmp:
            out: StageOutput = fn(cfg, inputs, tmp, domain=domain)
            _check_pinned(pinned, _input_hashes(cfg, name, inputs, domain), name, domain)
            write_json(tmp / STATS, out.stats)
            # Re-running a stage on the same inputs must give the same bytes (and DVC hash): wall-clock figures go to
            # a file beside the output that neither DVC nor `dvc_hash` reads; `read_timed` puts them back.
            move_measured(tmp)
            portable_adapter_configs(cfg, tmp)
            # The manifest is written last: its presence marks a finished output. It holds nothing time-dependent,
            # so an uninterrupted run and a resumed one produce byte-identical folders.
            write_json(
                tmp / MANIFEST,
                {
                    "stage": name,
                    "domain": domain,
                    "config": str(cfg.config_path.name if cfg.config_path else None),
                    "config_fingerprint": cfg.fingerprint(),
                    "code_version": code_version_for_manifest(),
                    "seed": cfg.seed,
                    "inputs": pinned,
                },
            )
    seconds = time.perf_counter() - started
    # The stage's key results outside the output folder: DVC tracks them as its metrics (`dvc metrics show`), and the
    # plots' data beside them (`dvc plots show`). Both are byte-stable like the output; timings stay out of them.
    write_metrics(cfg.data_path, name, domain, key_metrics(name, split_measured(out.stats)[0]), final)
    return StageResult(
        name=name,
        domain=domain,
        output_dir=final,
        stats=out.stats,
        preview=out.preview,
        dvc_hash=dvc_hash(final),
        seconds=seconds,
        metadata=out.metadata,
    )


def portable_adapter_configs(cfg: PipelineConfig, folder: Path) -> None:
    """Make every PEFT adapter in the output loadable in another clone and byte-stable across runs.

    PEFT writes the base model's absolute path into `adapter_config.json` (and the model card) and its target
    modules in set order, which differs from one process to the next. The base path is rewritten relative to the
    project root (the folder `dvc.yaml` and the CLI run in), the convention DVC uses for every path, so
    `AutoPeftModelForCausalLM.from_pretrained("data/dpo_model")` works from any clone's root; a data_dir outside the
    project keeps its absolute path (it cannot travel with a clone anyway).
    """
    from llm_pipeline.io import write_json as _write

    root = Path(cfg.root).resolve()
    for path in sorted(Path(folder).rglob("adapter_config.json")):
        conf = read_json(path)
        changed = False
        for key in ("target_modules", "modules_to_save", "exclude_modules"):
            if isinstance(conf.get(key), list):
                ordered = sorted(conf[key])
                changed |= ordered != conf[key]
                conf[key] = ordered
        base = conf.get("base_model_name_or_path")
        if isinstance(base, str) and os.path.isabs(base):
            try:
                rel = Path(base).resolve().relative_to(root).as_posix()
            except ValueError:
                rel = None
            if rel is not None:
                conf["base_model_name_or_path"] = rel
                changed = True
                card = path.parent / "README.md"
                if card.is_file():
                    card.write_text(card.read_text(encoding="utf-8").replace(base, rel), encoding="utf-8")
        if changed:
            _write(path, conf)


def code_version_for_manifest() -> str:
    # The same code and inputs give byte-identical outputs; another commit is another version of the output.
    return os.environ.get("LLM_PIPELINE_CODE_VERSION") or code_version()


def read_manifest(path: Path) -> dict[str, Any]:
    return read_json(Path(path) / MANIFEST)
