"""The pipeline config as a Dagster resource, so the UI's launchpad can point a run at another config or data dir."""

from __future__ import annotations

import dagster as dg

from llm_pipeline.config import PipelineConfig, load_config


class PipelineConfigResource(dg.ConfigurableResource):
    """Which config file drives the run, and (optionally) where its `data/` lives."""

    config_path: str = "configs/default.yaml"
    data_dir: str | None = None  # overrides the config's data_dir (tests point it at a temp folder)
    root: str | None = None  # folder that relative paths in the config resolve against; default: working dir

    def load(self) -> PipelineConfig:
        overrides = {"data_dir": self.data_dir} if self.data_dir else None
        return load_config(self.config_path, overrides=overrides, root=self.root)
