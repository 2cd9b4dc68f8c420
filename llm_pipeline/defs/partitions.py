"""Domain partitions: the keys are the domains declared in the config, so a new domain is a new partition."""

from __future__ import annotations

import dagster as dg

from llm_pipeline.config import PipelineConfig


def domain_partitions(cfg: PipelineConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(cfg.domain_names)
