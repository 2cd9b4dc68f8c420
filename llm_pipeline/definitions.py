"""Dagster entry point (workspace.yaml loads this module): one asset per stage over the config's domains.

The config file comes from LLM_PIPELINE_CONFIG (default configs/default.yaml); LLM_PIPELINE_DATA_DIR overrides its
data_dir. Run `dagster dev` in the repository root to see and materialize the graph.
"""

from __future__ import annotations

import os
import warnings

import dagster as dg

from llm_pipeline.config import load_config
from llm_pipeline.defs.assets import build_assets
from llm_pipeline.defs.automation import build_cron_sensor, build_sensor, build_source_asset
from llm_pipeline.defs.resources import PipelineConfigResource


# observable_source_asset is marked beta; we rely only on its stable behaviour (data versions by partition).
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def build_definitions(config_path: str | None = None, data_dir: str | None = None) -> dg.Definitions:
    config_path = config_path or os.environ.get("LLM_PIPELINE_CONFIG", "configs/default.yaml")
    data_dir = data_dir or os.environ.get("LLM_PIPELINE_DATA_DIR") or None
    resource = PipelineConfigResource(config_path=str(config_path), data_dir=data_dir)
    cfg = resource.load()
    partitions = dg.StaticPartitionsDefinition(cfg.domain_names)
    sensors = [build_sensor(cfg)]
    cron = build_cron_sensor(cfg)
    if cron is not None:
        sensors.append(cron)
    return dg.Definitions(
        assets=[build_source_asset(cfg, partitions), *build_assets(cfg)],
        sensors=sensors,
        resources={"pipeline": resource},
    )


defs = build_definitions()
