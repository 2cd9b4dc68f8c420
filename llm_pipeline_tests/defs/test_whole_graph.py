"""A real Dagster materialization of all eight assets on the shipped sample, in a temp DAGSTER_HOME and data dir."""

from __future__ import annotations

import json

import dagster as dg
from rich.console import Console

from llm_pipeline.config import load_config
from llm_pipeline.defs.assets import build_assets
from llm_pipeline.defs.local_run import materialize_steps, plan
from llm_pipeline.defs.resources import PipelineConfigResource
from llm_pipeline.definitions import build_definitions
from llm_pipeline.io import MANIFEST, dvc_hash, shard_files
from llm_pipeline.stages import ORDER

import pyarrow.parquet as pq


def test_definitions_load_with_domain_partitions(fast_config):
    defs = build_definitions(str(fast_config))
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(ORDER) | {"domain_sources"}
    cfg = load_config(fast_config)
    raw = defs.resolve_assets_def("raw_corpus")
    assert raw.partitions_def.get_partition_keys() == cfg.domain_names
    assert defs.resolve_assets_def("tokenizer").partitions_def is None
    # dependency order
    deps = {k.to_user_string(): {d.to_user_string() for d in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert deps["cleaned_corpus"] == {"raw_corpus"}
    assert deps["deduped_shards"] == {"cleaned_corpus"}
    assert "deduped_shards" in deps["tokenizer"]
    assert "dpo_model" in deps["eval_report"]


def test_adding_a_domain_adds_a_partition(tmp_path, make_fast_config):
    write_fast_config = make_fast_config
    two = load_config(write_fast_config(tmp_path / "a", domains=["legal", "medicine"]))
    three = load_config(write_fast_config(tmp_path / "b"))
    p2 = build_assets(two)[0].partitions_def.get_partition_keys()
    p3 = build_assets(three)[0].partitions_def.get_partition_keys()
    assert p2 == ["legal", "medicine"] and p3 == ["legal", "medicine", "software"]


def test_whole_graph_materializes(tmp_path, fast_config):
    cfg = load_config(fast_config)
    resource = PipelineConfigResource(config_path=str(fast_config))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        ok = materialize_steps(cfg, resource, plan(cfg), instance, console=Console(width=120, record=True))
        assert ok

        data = cfg.data_path
        for name in ("raw_corpus", "cleaned_corpus", "deduped_shards"):
            for d in cfg.domain_names:
                folder = data / name / d
                assert (folder / MANIFEST).exists()
                files = shard_files(folder)
                assert files, f"{name}/{d} has no shards"
                cols = pq.read_schema(files[0]).names
                assert cols[:4] == ["id", "domain", "source", "text"]
        for name in ("tokenizer", "base_checkpoint", "lora_adapter", "dpo_model", "eval_report"):
            assert (data / name / MANIFEST).exists(), name
        assert list((data / "base_checkpoint").glob("*.safetensors"))
        assert (data / "lora_adapter" / "adapter_config.json").exists()
        assert (data / "dpo_model" / "adapter_config.json").exists()
        for f in ("report.md", "report.html", "metrics.json"):
            assert (data / "eval_report" / f).stat().st_size > 0
        metrics = json.loads((data / "eval_report" / "metrics.json").read_text())
        assert metrics
        # The judge trained beside the reward model; the report compares SFT, DPO and RL under both, in the UI too.
        assert (data / "reward_model" / "judge" / "adapter_config.json").exists()
        assert set(metrics["policies"]["models"]) == {"base", "sft", "dpo", "rl"}
        assert metrics["candidates"][0]["model"] == "rl" and metrics["promotion_summary"]
        ev_md = instance.get_latest_materialization_event(dg.AssetKey("eval_report")).asset_materialization.metadata
        assert "| RL |" in ev_md["policies_md"].value and "judge" in ev_md["policies_md"].value
        assert ev_md["reward_judge"].value["rl"] == metrics["policies"]["models"]["rl"]["reward"]["judge"]

        # Metadata on every materialization: counts, path, the DVC hash of the output (also its data version), preview.
        for name in ORDER:
            key = dg.AssetKey(name)
            partitions = cfg.domain_names if name in ("raw_corpus", "cleaned_corpus", "deduped_shards") else [None]
            for p in partitions:
                event = instance.get_latest_materialization_event(key) if p is None else None
                if p is not None:
                    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[p]), limit=1).records
                    event = records[0].event_log_entry
                mat = event.asset_materialization
                md = mat.metadata
                folder = data / name / p if p else data / name
                assert md["path"].value == str(folder)
                assert md["dvc_hash"].value == dvc_hash(folder)
                assert mat.tags["dagster/data_version"] == dvc_hash(folder)
                assert "preview" in md, name
        raw_md = instance.get_latest_materialization_event(dg.AssetKey("raw_corpus")).asset_materialization.metadata
        assert raw_md["documents_in"].value >= raw_md["documents_kept"].value > 0
        # Blocking checks ran and passed.
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("deduped_shards"), "great_expectations")]
        )
        assert checks

    # Lineage of the aligned model names every shard with its hash, the config, the code version and the seed.
    from llm_pipeline.lineage import lineage, render

    nodes = lineage(data / "dpo_model")
    stages = {(n["stage"], n["domain"]) for n in nodes}
    assert {("deduped_shards", d) for d in cfg.domain_names} <= stages
    assert ("tokenizer", None) in stages and ("raw_corpus", "legal") in stages
    text = render(nodes)
    assert "shard " in text and "seed 1234" in text and "code " in text


def test_cli_run_select_partition(tmp_path, fast_config, monkeypatch, capsys):
    """`llm-pipeline run --select ASSET --partition DOMAIN` materializes just that, through Dagster."""
    from llm_pipeline.cli import main

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["run", "--config", str(fast_config), "--select", "raw_corpus", "--partition", "legal"]) == 0
    cfg = load_config(fast_config)
    assert (cfg.data_path / "raw_corpus/legal" / MANIFEST).exists()
    assert not (cfg.data_path / "raw_corpus/medicine").exists()
    out = capsys.readouterr().out
    assert "raw_corpus[legal]" in out
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs_count() == 1
    # A stage whose inputs are missing stops with a clear message, not a traceback.
    assert main(["run", "--config", str(fast_config), "--select", "tokenizer"]) == 1
    assert "not materialized" in capsys.readouterr().out
