"""Freshness: each domain's sources as an observable asset, a sensor that re-runs changed domains, a schedule.

The observable `domain_sources` asset's data version per partition is the content fingerprint of that domain's
files, so the UI marks exactly the changed domain's raw_corpus partition (and what depends on it) as stale. The
sensor compares fingerprints with its cursor and, for the changed domains only, requests a backfill of their
raw/cleaned/deduped partitions plus every unpartitioned asset downstream, which Dagster runs in dependency order.
"""

from __future__ import annotations

import json

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset  # no public constructor yet
from dagster._core.definitions.events import AssetKeyPartitionKey

from llm_pipeline.config import PipelineConfig
from llm_pipeline.defs.resources import PipelineConfigResource
from llm_pipeline.sources import fingerprints, stale_domains
from llm_pipeline.stages import ORDER, STAGES

SOURCES = "domain_sources"


def build_source_asset(cfg: PipelineConfig, partitions: dg.PartitionsDefinition) -> dg.SourceAsset:
    @dg.observable_source_asset(name=SOURCES, partitions_def=partitions, group_name="llm_pipeline",
                                description="Each domain's source files; data version = content fingerprint.")
    def domain_sources(pipeline: PipelineConfigResource) -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition({d: dg.DataVersion(v) for d, v in fingerprints(pipeline.load()).items()})

    return domain_sources


def refresh_request(asset_graph, domains: list[str], tags: dict[str, str]) -> dg.RunRequest:
    """A backfill of the given domains' partitions and every unpartitioned asset downstream."""
    keys = set()
    for name in ORDER:
        if STAGES[name].partitioned:
            keys |= {AssetKeyPartitionKey(dg.AssetKey(name), d) for d in domains}
        else:
            keys.add(AssetKeyPartitionKey(dg.AssetKey(name), None))
    subset = AssetGraphSubset.from_asset_partition_set(keys, asset_graph)
    return dg.RunRequest.for_asset_graph_subset(subset, tags=tags)


# The daemon accepts a backfill request from a sensor only when the sensor declares the assets it may request.
REFRESHED = dg.AssetSelection.assets(*ORDER)


def build_sensor(cfg: PipelineConfig) -> dg.SensorDefinition:
    @dg.sensor(name="source_change_sensor", minimum_interval_seconds=cfg.orchestration.sensor_interval_seconds,
               asset_selection=REFRESHED,
               default_status=dg.DefaultSensorStatus.RUNNING if cfg.orchestration.sensor else dg.DefaultSensorStatus.STOPPED,
               description="Re-materializes only the domains whose source files changed, then what depends on them.")
    def source_change_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineConfigResource):
        current_cfg = pipeline.load()
        requested = json.loads(context.cursor) if context.cursor else {}
        current = fingerprints(current_cfg)
        # Stale = sources differ from what the domain's raw_corpus was built from. The cursor remembers which
        # fingerprints were already requested, so a refresh still running is not requested twice.
        todo = [d for d in stale_domains(current_cfg) if requested.get(d) != current[d]]
        if not todo:
            return dg.SkipReason("no domain's sources changed")
        tags = {"llm_pipeline/trigger": "source_change", "llm_pipeline/domains": ",".join(todo)}
        cursor = {**requested, **{d: current[d] for d in todo}}
        return dg.SensorResult(run_requests=[refresh_request(context.repository_def.asset_graph, todo, tags)],
                               cursor=json.dumps(cursor, sort_keys=True))

    return source_change_sensor


def build_cron_sensor(cfg: PipelineConfig) -> dg.SensorDefinition | None:
    """The same refresh on a timetable (`orchestration.schedule_cron`). It is a sensor that acts on cron ticks rather
    than a ScheduleDefinition because only sensors can request a dependency-ordered backfill across partitions; it
    compares each domain's sources with the fingerprint its raw_corpus output was built from, so it needs no cursor."""
    cron = cfg.orchestration.schedule_cron
    if not cron:
        return None
    from dagster._utils.schedules import cron_string_iterator, is_valid_cron_string

    if not is_valid_cron_string(cron):
        raise ValueError(f"orchestration.schedule_cron: {cron!r} is not a valid cron string")

    @dg.sensor(name="source_refresh_schedule", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
               asset_selection=REFRESHED,
               description=f"On the cron schedule {cron!r} ({cfg.orchestration.timezone}), refresh stale domains.")
    def source_refresh_schedule(context: dg.SensorEvaluationContext, pipeline: PipelineConfigResource):
        import time

        now = time.time()
        last = float(context.cursor) if context.cursor else now - 60
        ticks = cron_string_iterator(last, cron, cfg.orchestration.timezone)
        due = next(ticks).timestamp() <= now
        if not due:
            return dg.SkipReason(f"next tick of {cron!r} not reached")
        stale = stale_domains(pipeline.load())
        if not stale:
            return dg.SensorResult(skip_reason=dg.SkipReason("all domains are fresh"), cursor=str(now))
        tags = {"llm_pipeline/trigger": "schedule", "llm_pipeline/domains": ",".join(stale)}
        return dg.SensorResult(run_requests=[refresh_request(context.repository_def.asset_graph, stale, tags)], cursor=str(now))

    return source_refresh_schedule
