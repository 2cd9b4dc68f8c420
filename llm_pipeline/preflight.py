"""What a valid config still needs from this machine: its source paths, its base model and tokenizer, offline.

`load_config` checks what the file alone shows; these checks look at the disk and the Hugging Face cache, so they
run where a run would run: `llm-pipeline check-config` (all of them) and `llm-pipeline run` (the model sources,
before minutes of curation are spent on a run that would stop at base_checkpoint). Each problem is one line.

    problems = preflight(cfg)            # [] when the run can start
"""

from __future__ import annotations

from llm_pipeline.config import PipelineConfig


def source_problems(cfg: PipelineConfig, domains: list[str] | None = None) -> list[str]:
    """Local source paths that do not exist (raw_corpus would stop on them)."""
    from llm_pipeline.stages.raw_corpus import SourceError, check_sources_exist

    problems = []
    for domain in domains or cfg.domain_names:
        try:
            check_sources_exist(cfg, domain)
        except SourceError as exc:
            problems.append(str(exc))
    return problems


def _cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def model_problems(cfg: PipelineConfig) -> list[str]:
    """A base model or tokenizer the config names that cannot be found: a missing package, folder or GGUF file, or
    a hub id that is neither in the local cache nor downloadable (the hub is off by default)."""
    from llm_pipeline.training.model_source import ModelSourceError, hub_offline, model_location

    wanted = []
    try:
        if cfg.base_checkpoint.source != "scratch":
            wanted.append(("base_checkpoint.model", model_location(cfg), "config.json"))
        if cfg.tokenizer.mode == "extend" or cfg.tokenizer.base_model:
            from llm_pipeline.stages.tokenizer import base_tokenizer_location

            loc = base_tokenizer_location(cfg)
            if loc is not None:
                wanted.append(("tokenizer.base_model", loc, "tokenizer_config.json"))
    except (ModelSourceError, ValueError) as exc:
        return [str(exc)]
    problems = []
    for what, loc, filename in wanted:
        if loc.hub_id and hub_offline() and not _cached(loc.where, filename):
            problems.append(
                f"{what} {loc.where!r} is a hub id, but the hub is off (HF_HUB_OFFLINE=1, the pipeline's default) and "
                "it is not in the local Hugging Face cache: export HF_HUB_OFFLINE=0 to download it, or give a local "
                "save_pretrained folder")
    return list(dict.fromkeys(problems))


def preflight(cfg: PipelineConfig, sources: bool = True, models: bool = True) -> list[str]:
    return (source_problems(cfg) if sources else []) + (model_problems(cfg) if models else [])
