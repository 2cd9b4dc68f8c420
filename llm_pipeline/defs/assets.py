"""One Dagster asset per stage, built from the stage registry; each calls `runner.run_stage` and nothing more.

Partitioned stages take the run's partition key as their domain. The asset's data version is the DVC hash of its
output folder, so Dagster's staleness and `dvc status` speak of the same bytes.
"""


import hashlib
from pathlib import Path

import dagster as dg

from llm_pipeline import progress
from llm_pipeline.config import ConfigError, PipelineConfig
from llm_pipeline.defs.automation import SOURCES
from llm_pipeline.defs.checks import check_results, check_specs
from llm_pipeline.defs.metadata import result_metadata
from llm_pipeline.defs.resources import PipelineConfigResource
from llm_pipeline.runner import StageInputError, run_stage
from llm_pipeline.stages import STAGES, Stage
from llm_pipeline.stages.raw_corpus import SourceError


def permanent_errors() -> tuple[type[Exception], ...]:
    """Errors that say the config, the inputs or this machine must change: a retry would fail the same way, after
    waiting out the backoff. Imported here, not at module level, so loading the definitions stays light."""
    from llm_pipeline.io import NotAnOutput, OutputWriteError
    from llm_pipeline.training.finetune import FinetuneError
    from llm_pipeline.training.model_source import ModelSourceError
    from llm_pipeline.training.preference_data import PreferenceDataError
    from llm_pipeline.training.sft_data import SftDataError

    # OutputWriteError: a full disk stays full until someone frees space; retrying at once would only fill it again.
    return (StageInputError, ConfigError, SourceError, ModelSourceError, FinetuneError, SftDataError, PreferenceDataError,
            NotAnOutput, OutputWriteError)

PACKAGE = Path(__file__).resolve().parent.parent
GROUPS = {
    "raw_corpus": "curation", "cleaned_corpus": "curation", "deduped_shards": "curation",
    "tokenizer": "training", "base_checkpoint": "training", "lora_adapter": "training", "dpo_model": "training",
    "reward_model": "training", "rl_model": "training", "eval_report": "evaluation",
}
# The library folders a phase's stages run: the curation stages' task split and engines live in compute/; the eval
# report samples and scores policies with the training code's RL sampling and reward scoring.
LIBRARY = {"curation": ["curation", "compute"], "training": ["training"], "evaluation": ["evaluation", "training"]}


def stage_code_version(name: str) -> str:
    """Hash of the stage module and its library folders: a code change marks the asset stale in the UI."""
    h = hashlib.sha256()
    files = [PACKAGE / "stages" / f"{name}.py", PACKAGE / "runner.py"]
    for lib in LIBRARY[GROUPS[name]]:
        files += sorted((PACKAGE / lib).rglob("*.py"))
    for f in files:
        if f.exists():
            h.update(f.relative_to(PACKAGE).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _make_asset(stage: Stage, partitions: dg.PartitionsDefinition, cfg: PipelineConfig) -> dg.AssetsDefinition:
    deps = [dg.AssetDep(dep) for dep in stage.deps]
    if stage.name == "raw_corpus":
        deps.append(dg.AssetDep(SOURCES))
    retry = dg.RetryPolicy(max_retries=cfg.orchestration.retries, delay=cfg.orchestration.retry_delay_seconds,
                           backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
    specs = check_specs(stage.name, partitions if stage.partitioned else None)

    @dg.asset(
        name=stage.name,
        description=stage.description,
        deps=deps,
        retry_policy=retry,
        partitions_def=partitions if stage.partitioned else None,
        # One group, so the UI's lineage page shows the whole graph at once; the phase is a tag instead.
        group_name="llm_pipeline",
        code_version=stage_code_version(stage.name),
        check_specs=specs or None,
        kinds={"python", "parquet"} if stage.partitioned else {"python", "pytorch"},
        tags={"llm_pipeline/stage": stage.name, "llm_pipeline/phase": GROUPS[stage.name]},
    )
    def _asset(context: dg.AssetExecutionContext, pipeline: PipelineConfigResource) -> dg.MaterializeResult:
        cfg: PipelineConfig = pipeline.load()
        domain = context.partition_key if stage.partitioned else None
        context.log.info(f"running stage {stage.name}" + (f" for domain {domain}" if domain else ""))
        try:
            # Progress lines of long stages (training steps, curated documents) go to the run's log as they come.
            with progress.sink(lambda update: context.log.info(update.line())):
                result = run_stage(cfg, stage.name, domain)
        except permanent_errors() as exc:
            # Not transient: retrying cannot help, so fail at once with the message a person needs.
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        return dg.MaterializeResult(
            metadata=result_metadata(result),
            data_version=dg.DataVersion(result.dvc_hash),
            check_results=check_results(stage.name, cfg, result) or None,
        )

    return _asset


def build_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    partitions = dg.StaticPartitionsDefinition(cfg.domain_names)
    return [_make_asset(stage, partitions, cfg) for stage in STAGES.values()]
