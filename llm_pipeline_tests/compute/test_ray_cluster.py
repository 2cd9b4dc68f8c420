"""The curation stages of one domain through Dagster on a real two-node Ray cluster (two `ray start` processes on
this machine), compared document for document with the local engine."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from llm_pipeline.config import load_config
from llm_pipeline.defs.assets import build_assets
from llm_pipeline.defs.resources import PipelineConfigResource
from llm_pipeline.io import iter_records
from llm_pipeline.runner import run_stage

from compute.ray_cluster import local_cluster

pytest.importorskip("ray", reason="the ray extra is not installed (scripts/setup.sh installs it)")

STAGES = ("raw_corpus", "cleaned_corpus", "deduped_shards")


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else None


def test_a_domain_on_two_ray_nodes_matches_the_local_engine(tmp_path, make_fast_config, repo, monkeypatch):
    monkeypatch.setenv("LLM_PIPELINE_PROGRESS_SECONDS", "0")  # every task's progress line, not one per 5 s
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # as the test cluster's nodes (compute/ray_cluster.py)
    with local_cluster(env={"PYTHONPATH": str(repo)}) as cluster:
        # The local engine's run while the two nodes start.
        local_cfg = load_config(make_fast_config(tmp_path / "local", domains=["medicine"]))
        local = {name: run_stage(local_cfg, name, "medicine") for name in STAGES}
        cluster.wait()
        path = make_fast_config(tmp_path / "ray", domains=["medicine"],
                                compute={"engine": "ray", "address": cluster.address, "workers": 2, "task_rows": 8})
        cfg = load_config(path)
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                build_assets(cfg), selection=dg.AssetSelection.assets(*STAGES), partition_key="medicine",
                instance=instance, resources={"pipeline": PipelineConfigResource(config_path=str(path))},
            )
            assert result.success
            messages = [e.user_message for e in instance.all_logs(result.run_id)]
    materialized = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    meta = {m.asset_key.path[-1]: m.metadata for m in materialized}

    for name in STAGES:
        out = cfg.data_path / name / "medicine"
        assert list(iter_records(out)) == list(iter_records(local[name].output_dir)), name
        for listing in ("dropped.jsonl", "quarantine.jsonl"):
            assert _lines(out / listing) == _lines(local[name].output_dir / listing), (name, listing)
        stats = json.loads((out / "stats.json").read_text())
        assert {k: v for k, v in stats.items() if k != "shards"} == {k: v for k, v in local[name].stats.items() if k != "shards"}
        assert stats["documents_in"] == stats["documents_kept"] + sum(stats["dropped"].values()) + stats["quarantined"]
        # Both nodes worked; each worker process built its models once, however many tasks it ran.
        assert meta[name]["nodes"].value == 2, name
        assert meta[name]["model_loads"].value <= meta[name]["worker_processes"].value < meta[name]["tasks"].value, name
    assert meta["cleaned_corpus"]["model_loads"].value == 2
    assert any("cleaned_corpus[medicine] tasks" in m and "task" in m for m in messages)  # progress in the run log
    assert sum(local["deduped_shards"].stats["dropped"].values()) > 0
