"""The source sensor requests only the changed domain's partitions plus the unpartitioned assets downstream."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import yaml

from llm_pipeline.config import load_config
from llm_pipeline.definitions import build_definitions
from llm_pipeline.io import MANIFEST, write_json
from llm_pipeline.sources import domain_fingerprint, stale_domains
from llm_pipeline.stages import ORDER, STAGES

REPO = Path(__file__).resolve().parents[2]


def make_project(tmp_path: Path) -> Path:
    sample = tmp_path / "sample"
    for d in ("legal", "medicine"):
        shutil.copytree(REPO / "data/sample" / d, sample / d)
    cfg = {"data_dir": str(tmp_path / "data"),
           "domains": {d: {"sources": [{"path": str(sample / d)}]} for d in ("legal", "medicine")}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def mark_built(cfg) -> None:
    for d in cfg.domain_names:
        folder = cfg.data_path / "raw_corpus" / d
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / MANIFEST, {"stage": "raw_corpus", "domain": d, "inputs": {"sources": domain_fingerprint(cfg, d)}})


def test_fingerprint_changes_with_one_file(tmp_path):
    cfg = load_config(make_project(tmp_path))
    before = {d: domain_fingerprint(cfg, d) for d in cfg.domain_names}
    victim = next(p for p in sorted((tmp_path / "sample/legal").rglob("*")) if p.is_file())
    victim.write_bytes(victim.read_bytes() + b"\nA new closing paragraph.\n")
    after = {d: domain_fingerprint(cfg, d) for d in cfg.domain_names}
    assert before["legal"] != after["legal"] and before["medicine"] == after["medicine"]


def test_sensor_requests_only_the_changed_domain(tmp_path):
    path = make_project(tmp_path)
    cfg = load_config(path)
    mark_built(cfg)
    defs = build_definitions(str(path))
    sensor = defs.resolve_sensor_def("source_change_sensor")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, definitions=defs, resources={"pipeline": defs.resources["pipeline"]})
        first = sensor(ctx)
        assert isinstance(first, dg.SkipReason), "nothing changed: nothing requested"

        victim = next(p for p in sorted((tmp_path / "sample/legal").rglob("*")) if p.is_file())
        victim.write_bytes(victim.read_bytes() + b"\nAn amendment to the agreement.\n")
        assert stale_domains(cfg) == ["legal"]
        result = sensor(dg.build_sensor_context(instance=instance, definitions=defs, cursor=None,
                                                resources={"pipeline": defs.resources["pipeline"]}))
        assert len(result.run_requests) == 1
        subset = result.run_requests[0].asset_graph_subset
        requested = {(k.asset_key.to_user_string(), k.partition_key) for k in subset.iterate_asset_partitions()}
        expected = {(n, "legal") for n in ORDER if STAGES[n].partitioned} | {(n, None) for n in ORDER if not STAGES[n].partitioned}
        assert requested == expected
        assert json.loads(result.cursor)["legal"] == domain_fingerprint(cfg, "legal")

        # The same change is not requested twice while its refresh runs.
        again = sensor(dg.build_sensor_context(instance=instance, definitions=defs, cursor=result.cursor,
                                               resources={"pipeline": defs.resources["pipeline"]}))
        assert isinstance(again, dg.SkipReason)
